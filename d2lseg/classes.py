"""A data set's classes, names and colours (VOC's 21, the chapter's, or a classes file of your own), and
per-class loss weights (median-frequency balancing or a file).

A classes file has one class per line, background first: ``name`` or ``name R G B`` (0-255; a name may
hold spaces, the last three whole numbers of a line are its colour). Blank
lines and ``#`` comments are skipped. A class without a colour gets VOC's (the standard bit-interleaved
palette, so the first 21 are ``VOC_COLORMAP``). Index 255 is "ignore" in labels, so at most 255 classes.
"""
import contextlib
import json
import os
from dataclasses import dataclass
from typing import Tuple

import numpy as np

from . import checkpoint
from .errors import D2lsegError
from .palette import VOC_CLASSES, VOC_COLORMAP, VOID_COLOR, voc_palette

MAX_CLASSES = 255  # label value 255 means "ignore"


@dataclass(frozen=True)
class ClassList:
    """Class names and their (R, G, B) colours, index = position."""
    names: Tuple[str, ...]
    colors: Tuple[Tuple[int, int, int], ...]

    def __len__(self):
        return len(self.names)

    @classmethod
    def voc(cls):
        """The chapter's 21 VOC classes and colours."""
        return cls(tuple(VOC_CLASSES), tuple(tuple(c) for c in VOC_COLORMAP))

    def palette(self):
        """(256, 3) uint8: the classes' colours, VOC's for the indices after them, the void colour at 255."""
        pal = voc_palette()
        pal[:len(self)] = np.asarray(self.colors, dtype=np.uint8)
        pal[255] = VOID_COLOR
        return pal

    def to_dict(self):
        return {'names': list(self.names), 'colors': [list(c) for c in self.colors]}

    @classmethod
    def from_dict(cls, d, source='classes'):
        """A ClassList from ``to_dict``'s output; a one-line D2lsegError naming ``source`` otherwise."""
        try:
            names, colors = d['names'], d['colors']
            if len(names) != len(colors) or not names:
                raise ValueError
            result = cls(tuple(str(n) for n in names), tuple(_color(c) for c in colors))
        except (KeyError, TypeError, ValueError):
            raise D2lsegError(f"{source}: the classes must be {{'names': [...], 'colors': [[R, G, B], ...]}} of "
                              "equal length") from None
        return result


def numbered(num_classes):
    """A ClassList for a class count without names: '0', '1', ... in VOC's palette colours."""
    pal = voc_palette()
    return ClassList(tuple(str(i) for i in range(num_classes)), tuple(tuple(int(v) for v in pal[i]) for i in
                                                                       range(num_classes)))


def model_classes(params, variant=None, num_classes=None):
    """What a trained model is -> (variant, ClassList): from ``model.json`` beside ``params`` (written by
    d2lseg train), ``variant`` / ``num_classes`` when given (they must agree with it), else fcn32s and
    VOC's 21 classes."""
    path = os.path.join(os.path.dirname(os.path.abspath(params)), 'model.json')
    try:
        with open(path) as f:
            info = json.load(f)
    except (OSError, ValueError):
        info = {}
    info = info if isinstance(info, dict) else {}
    classes = ClassList.from_dict(info['classes'], source=path) if isinstance(info.get('classes'), dict) else None
    if classes is None:
        n = num_classes or info.get('num_classes') or len(VOC_CLASSES)
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_CLASSES:
            raise D2lsegError(f"{path}: num_classes {n!r} is not a class count; remake it or pass --num-classes")
        classes = ClassList.voc() if n == len(VOC_CLASSES) else numbered(n)
    elif num_classes and num_classes != len(classes):
        raise D2lsegError(f"--num-classes {num_classes}: {path} says the model has {len(classes)} classes; drop "
                          "--num-classes")
    return variant or info.get('variant') or 'fcn32s', classes


def _color(values):
    rgb = tuple(int(v) for v in values)
    if len(rgb) != 3 or not all(0 <= v <= 255 for v in rgb) or any(float(v) != int(v) for v in values):
        raise ValueError(f'{values}')
    return rgb


def read_classes(path):
    """The ClassList of a classes file; a one-line D2lsegError naming the file and line otherwise."""
    try:
        with open(path, encoding='utf-8') as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        raise D2lsegError(f"--classes {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise D2lsegError(f"--classes {path}: cannot be read as text ({type(e).__name__})") from None
    names, colors, fallback = [], [], voc_palette()
    for n, line in enumerate(lines, 1):
        words = line.split('#', 1)[0].split()
        if not words:
            continue
        if len(names) == MAX_CLASSES:
            raise D2lsegError(f"--classes {path}: more than {MAX_CLASSES} classes (label 255 means ignore)")
        has_rgb = len(words) >= 4 and all(_is_int(w) for w in words[-3:])
        name = ' '.join(words[:-3] if has_rgb else words)
        try:
            rgb = _color(words[-3:]) if has_rgb else tuple(int(v) for v in fallback[len(names)])
        except ValueError:
            raise D2lsegError(f"--classes {path}, line {n}: the colour {' '.join(words[-3:])} is not three whole "
                              "numbers from 0 to 255") from None
        if rgb == tuple(VOID_COLOR):
            raise D2lsegError(f"--classes {path}, line {n}: {rgb} is VOC's void colour (ignored in labels); choose "
                              "another colour for the class")
        if name in names:
            raise D2lsegError(f"--classes {path}, line {n}: class {name!r} is named twice")
        names.append(name)
        colors.append(rgb)
    if len(names) < 2:
        raise D2lsegError(f"--classes {path}: needs at least two classes, background first (it has {len(names)})")
    if len(set(colors)) < len(colors):
        raise D2lsegError(f"--classes {path}: two classes share a colour; colour labels could not tell them apart")
    return ClassList(tuple(names), tuple(colors))


def _is_int(word):
    return word.lstrip('-').isdigit()


def median_frequency_weights(labels, num_classes):
    """Per-class loss weights by median-frequency balancing: freq(c) = pixels of c / pixels of the images
    holding c, weight(c) = median of the freqs / freq(c); 0 for a class no image holds. labels: (H, W)
    index arrays (255 ignored). Source: Eigen & Fergus, ICCV 2015 (as in SegNet)."""
    count = np.zeros(num_classes, np.int64)
    seen = np.zeros(num_classes, np.int64)
    for label in labels:
        hist = np.bincount(label[label != 255].ravel().astype(np.int64), minlength=num_classes)[:num_classes]
        count += hist
        seen += (hist > 0) * int((label != 255).sum())
    present = count > 0
    freq = np.where(present, count / np.maximum(seen, 1), 0.0)
    return np.where(present, np.median(freq[present]) / np.where(present, freq, 1.0), 0.0)


def read_weights(path, num_classes):
    """Class weights from a file of ``num_classes`` numbers (whitespace or commas; ``#`` comments)."""
    try:
        with open(path, encoding='utf-8') as f:
            text = ' '.join(line.split('#', 1)[0] for line in f)
        values = [float(v) for v in text.replace(',', ' ').split()]
    except FileNotFoundError:
        raise D2lsegError(f"--class-weights {path}: neither auto nor an existing file; give auto or a file with "
                          "one weight per class") from None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise D2lsegError(f"--class-weights {path}: not a list of numbers ({type(e).__name__})") from None
    if len(values) != num_classes or not all(np.isfinite(values)) or min(values) < 0:
        raise D2lsegError(f"--class-weights {path}: needs {num_classes} non-negative numbers, one per class, "
                          f"has {len(values)}")
    return np.asarray(values)


def class_weights(recipe, dataset, voc_dir, colors):
    """A recipe's per-class loss weights (None: none). 'auto' is computed once over the training split
    and cached in ``voc_dir`` (beside the data), keyed by ``colors`` (the run's classes) among others,
    and printed."""
    if recipe.class_weights is None:
        return None
    if recipe.class_weights != 'auto':
        return read_weights(recipe.class_weights, recipe.num_classes)
    cache = os.path.join(voc_dir, 'd2lseg-class-weights.json')
    colors = ';'.join(','.join(map(str, c)) for c in colors)
    key = (f'{recipe.train_split}|{recipe.label_dir}|{recipe.num_classes}|{recipe.ignore_boundary}|'
           f'{recipe.max_images}|{len(dataset)}|{colors}')
    try:
        with open(cache) as f:
            stored = json.load(f)
    except (OSError, ValueError):
        stored = {}
    weights = stored.get(key) if isinstance(stored, dict) else None
    if not (isinstance(weights, list) and len(weights) == recipe.num_classes):
        weights = median_frequency_weights(dataset.labels, recipe.num_classes).tolist()
        with contextlib.suppress(OSError):  # a read-only data folder: computed again next time
            checkpoint.atomic_write_json(cache, dict(stored if isinstance(stored, dict) else {}, **{key: weights}))
    print('class weights (median frequency, ' + cache + '): ' + ', '.join(f'{w:.3g}' for w in weights), flush=True)
    return np.asarray(weights)
