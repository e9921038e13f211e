"""A data set's classes, names and colours (VOC's 21, the chapter's, or a classes file of your own), and
per-class loss weights (median-frequency balancing or a file), checked where they enter.

A classes file has one class per line, background first: ``name`` or ``name R G B`` (three whole numbers
0-255). A name may hold spaces but no number after its first word: whatever follows a name must be
exactly its colour (``road 1.5 0 0`` is an error naming the line, not a class called that). Blank lines
and ``#`` comments are skipped; lines end only at a newline (``textfiles``). A class without a colour gets
VOC's (the standard bit-interleaved palette, so the first 21 are ``VOC_COLORMAP``). Index 255 is
"ignore" in labels, so at most 255 classes. Class weights, from a file, the cache of ``auto`` or a
checkpoint, are one finite number >= 0 per class, at least one of them positive (``check_weights``).
"""
import contextlib
import math
import os
import re
import sys
from dataclasses import dataclass
from typing import Tuple

import numpy as np

from ..core import outputs
from ..core.constants import VARIANTS
from ..core.errors import D2lsegError
from ..core.textfiles import FileMissing, read_json, read_lines
from .palette import VOC_CLASSES, VOC_COLORMAP, VOID_COLOR, voc_palette

MAX_CLASSES = 255  # label value 255 means "ignore"
MAX_NAME = 100  # characters of a class name: legends and tables show it whole
_NUMBER = re.compile(r'[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$', re.ASCII)
_BYTE = re.compile(r'\d{1,3}$', re.ASCII)


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
            if len(names) != len(colors) or not names or not all(isinstance(n, str) for n in names):
                raise ValueError
            result = cls(tuple(names), tuple(_color(c) for c in colors))
        except (KeyError, TypeError, ValueError):
            raise D2lsegError(f"{source}: the classes must be {{'names': [...], 'colors': [[R, G, B], ...]}} of "
                              "equal length") from None
        if len(names) > MAX_CLASSES or max(map(len, names)) > MAX_NAME:
            raise D2lsegError(f"{source}: {len(names)} classes, the longest name {max(map(len, names))} characters: "
                              f"at most {MAX_CLASSES} classes of at most {MAX_NAME} characters")
        return result


def numbered(num_classes):
    """A ClassList for a class count without names: '0', '1', ... in VOC's palette colours."""
    pal = voc_palette()
    return ClassList(tuple(str(i) for i in range(num_classes)), tuple(tuple(int(v) for v in pal[i]) for i in
                                                                       range(num_classes)))


def model_inputs(params):
    """The files a trained model is read from -> [(what, path)]: ``params``, and model.json and history.json
    beside it (the inputs that ``outputs.check_paths`` keeps outputs off)."""
    folder = os.path.dirname(os.path.abspath(params))
    return [('the parameters file', params), ('the model description', os.path.join(folder, 'model.json')),
            ('the run history', os.path.join(folder, 'history.json'))]


def _model_info(path):
    """model.json as a dict ({} when there is none); a one-line D2lsegError naming it when it is damaged."""
    try:
        info = read_json(path, limit=4 << 20, what="a model.json of d2lseg train (it is damaged: restore it from the "
                         "run, or remove it and pass --variant and --num-classes)")
    except FileMissing:
        return {}
    if not isinstance(info, dict):
        raise D2lsegError(f"{path}: not a model.json of d2lseg train (a JSON object was expected, not "
                          f"{type(info).__name__}); restore it, or remove it and pass --variant and --num-classes")
    return info


def model_classes(params, variant=None, num_classes=None):
    """What a trained model is -> (variant, ClassList): from ``model.json`` beside ``params`` (written by
    d2lseg train), ``variant`` / ``num_classes`` when given (they must agree with it), else fcn32s and
    VOC's 21 classes. A damaged model.json is a one-line D2lsegError naming it (never silently ignored)."""
    path = os.path.join(os.path.dirname(os.path.abspath(params)), 'model.json')
    info = _model_info(path)
    classes = ClassList.from_dict(info['classes'], source=path) if 'classes' in info else None
    if classes is None:
        n = num_classes or info.get('num_classes') or len(VOC_CLASSES)
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_CLASSES:
            raise D2lsegError(f"{path}: num_classes {n!r} is not a class count; remake it or pass --num-classes")
        classes = ClassList.voc() if n == len(VOC_CLASSES) else numbered(n)
    elif num_classes and num_classes != len(classes):
        raise D2lsegError(f"--num-classes {num_classes}: {path} says the model has {len(classes)} classes; drop "
                          "--num-classes")
    stored = info.get('variant')
    if not variant and stored is not None and stored not in VARIANTS:
        raise D2lsegError(f"{path}: variant {repr(stored)[:40]} is none of {', '.join(VARIANTS)}; restore it, or "
                          "pass --variant")
    return variant or stored or 'fcn32s', classes


def _color(values):
    if not all(isinstance(v, (int, float, str)) and not isinstance(v, bool) for v in values):
        raise ValueError(f'{values}')
    rgb = tuple(int(v) for v in values)
    if len(rgb) != 3 or not all(0 <= v <= 255 for v in rgb) or any(float(v) != int(v) for v in values):
        raise ValueError(f'{values}')
    return rgb


def _class_line(words, where):
    """(name, (R, G, B) or None) of a classes-file line's words; one-line D2lsegError naming ``where``
    when what follows the name is not exactly three whole numbers 0-255."""
    first = next((i for i, w in enumerate(words) if i and _NUMBER.match(w)), None)
    if first is None:
        name, rgb = ' '.join(words), None
    else:
        name, rest = ' '.join(words[:first]), words[first:]
        if len(rest) != 3 or not all(_BYTE.match(w) and int(w) <= 255 for w in rest):
            raise D2lsegError(f"{where}: the colour {' '.join(rest)[:40]} after the name {name[:40]!r} is not three "
                              "whole numbers from 0 to 255 (R G B); a name holds no numbers after its first word")
        rgb = tuple(int(w) for w in rest)
    if len(name) > MAX_NAME:
        raise D2lsegError(f"{where}: a class name of {len(name)} characters; at most {MAX_NAME}")
    return name, rgb


def read_classes(path):
    """The ClassList of a classes file; a one-line D2lsegError naming the file and line otherwise."""
    names, colors, fallback = [], [], voc_palette()
    for n, line in enumerate(read_lines(path, '--classes', limit=1 << 20), 1):
        words = line.split('#', 1)[0].split()
        if not words:
            continue
        if len(names) == MAX_CLASSES:
            raise D2lsegError(f"--classes {path}: more than {MAX_CLASSES} classes (label 255 means ignore)")
        name, rgb = _class_line(words, f'--classes {path}, line {n}')
        rgb = rgb or tuple(int(v) for v in fallback[len(names)])
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


def weights_problem(values, num_classes):
    """What is wrong with per-class loss weights (one phrase), or None: one finite number >= 0 per class, at
    least one positive (all zeros would train to a loss of 0 and learn nothing)."""
    if not isinstance(values, (list, tuple, np.ndarray)):
        return f'a list of {num_classes} numbers was expected, not {type(values).__name__}'
    if len(values) != num_classes:
        return f'needs {num_classes} non-negative numbers, one per class, has {len(values)}'
    if not all(isinstance(v, (int, float, np.number)) and not isinstance(v, bool) for v in values):
        return 'every weight must be a number'
    bad = next((v for v in values if not _finite_and_not_negative(v)), None)
    if bad is not None:
        return f'weight {str(bad)[:40]} is not a finite number >= 0'
    if not any(v > 0 for v in values):
        return 'every weight is 0: at least one class must count'
    return None


def _finite_and_not_negative(v):
    try:
        return math.isfinite(v) and v >= 0
    except OverflowError:  # an integer too large for a float (JSON may hold one)
        return False


def check_weights(values, num_classes, source):
    """``values`` as a float64 array when ``weights_problem`` finds nothing; a one-line D2lsegError naming
    ``source`` (the file, cache or checkpoint they came from) otherwise."""
    problem = weights_problem(values, num_classes)
    if problem:
        raise D2lsegError(f"{source}: class weights: {problem}")
    return np.asarray([float(v) for v in values])


def read_weights(path, num_classes):
    """Class weights from a file of ``num_classes`` numbers (whitespace or commas; ``#`` comments)."""
    try:
        text = ' '.join(line.split('#', 1)[0] for line in read_lines(path, '--class-weights', limit=1 << 20))
    except FileMissing:
        raise D2lsegError(f"--class-weights {path}: neither auto nor an existing file; give auto or a file with "
                          "one weight per class") from None
    try:
        values = [float(v) for v in text.replace(',', ' ').split()]
    except ValueError as e:
        raise D2lsegError(f"--class-weights {path}: not a list of numbers ({str(e)[:80]})") from None
    return check_weights(values, num_classes, f'--class-weights {path}')


def _cached_weights(cache, key, num_classes):
    """The weights stored under ``key`` in the cache of ``auto`` (None when absent or unusable) and the cache."""
    try:
        stored = read_json(cache, limit=16 << 20)
    except D2lsegError:  # missing, damaged or not a file: computed again
        stored = {}
    stored = stored if isinstance(stored, dict) else {}
    weights = stored.get(key)
    if weights is not None and weights_problem(weights, num_classes):
        print(f"d2lseg: warning: {cache}: the cached class weights are unusable "
              f"({weights_problem(weights, num_classes)}); computed again", file=sys.stderr)
        weights = None
    return weights, stored


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
    weights, stored = _cached_weights(cache, key, recipe.num_classes)
    if weights is None:
        weights = check_weights(median_frequency_weights(dataset.labels, recipe.num_classes).tolist(),
                                recipe.num_classes, f'--class-weights auto over {voc_dir}').tolist()
        with contextlib.suppress(D2lsegError):  # a read-only data folder: computed again next time
            outputs.atomic_write_json(cache, dict(stored, **{key: weights}))
    print('class weights (median frequency, ' + cache + '): ' + ', '.join(f'{w:.3g}' for w in weights), flush=True)
    return np.asarray(weights, dtype=np.float64)
