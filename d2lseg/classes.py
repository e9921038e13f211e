"""A data set's classes, names and colours: VOC's 21 (the chapter's), or a classes file of your own.

A classes file has one class per line, background first: ``name`` or ``name R G B`` (0-255; a name may
hold spaces, the last three whole numbers of a line are its colour). Blank
lines and ``#`` comments are skipped. A class without a colour gets VOC's (the standard bit-interleaved
palette, so the first 21 are ``VOC_COLORMAP``). Index 255 is "ignore" in labels, so at most 255 classes.
"""
from dataclasses import dataclass
from typing import Tuple

import numpy as np

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
        has_rgb = len(words) >= 4 and all(_is_int(w) for w in words[-3:])
        name = ' '.join(words[:-3] if has_rgb else words)
        try:
            rgb = _color(words[-3:]) if has_rgb else tuple(int(v) for v in fallback[len(names)])
        except ValueError:
            raise D2lsegError(f"--classes {path}, line {n}: the colour {' '.join(words[-3:])} is not three whole "
                              "numbers from 0 to 255") from None
        if name in names:
            raise D2lsegError(f"--classes {path}, line {n}: class {name!r} is named twice")
        names.append(name)
        colors.append(rgb)
    if len(names) < 2:
        raise D2lsegError(f"--classes {path}: needs at least two classes, background first (it has {len(names)})")
    if len(names) > MAX_CLASSES:
        raise D2lsegError(f"--classes {path}: {len(names)} classes; at most {MAX_CLASSES} (label 255 means ignore)")
    if len(set(colors)) < len(colors):
        raise D2lsegError(f"--classes {path}: two classes share a colour; colour labels could not tell them apart")
    return ClassList(tuple(names), tuple(colors))


def _is_int(word):
    return word.lstrip('-').isdigit()
