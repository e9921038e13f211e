"""A synthetic data set in Pascal VOC2012's on-disk format, for offline training and tests.

Scenes: objects of the 20 VOC classes (rectangles, ellipses, stars; several per image, partly
occluding) over textured, noisy, unevenly lit backgrounds. Classes share colours in pairs and differ
by texture (stripes or dots, with a class-specific period); background patches carry class colours
too, so a per-pixel colour lookup cannot solve the set. Labels are palette PNGs with the VOC palette
and void (255) outlines, exactly as the real data set stores them.

Also which data a run uses: ``choose_data`` (the notebooks: the real VOC2012 when it is there, else
this set) and ``resolve_data_dir`` (a training recipe: never the synthetic set for the real one).
"""
import hashlib
import json
import math
import os
import tempfile

import numpy as np
from PIL import Image

from ..core.constants import CHAPTER_CROP, DATA_DIR, SYNTHETIC_DIR
from ..core.errors import D2lsegError
from ..core.progress import bar
from ..core.runfolder import writable_folder
from .images import save_label_png
from .palette import IGNORE_INDEX
from .voc import (MARKER, VOC_SUBDIR, has_real_voc, has_voc, require_real_voc, split_lists,
                  synthetic_marker, voc_root)

# Two sizes hold the chapter's 320x480 crop; the others are nearer the demo's 128x192 crop, so that a
# crop shows a good part of a scene (and of its objects).
DEFAULT_SIZES = (CHAPTER_CROP, (352, 512), (192, 256), (160, 240), (224, 320), (176, 288))

# Ten base colours, one per pair of classes (class 2j+1 striped, class 2j+2 dotted).
PAIR_COLORS = np.array([[200, 60, 50], [60, 170, 70], [60, 80, 200], [210, 190, 60], [170, 70, 180],
                        [70, 180, 190], [220, 130, 60], [130, 130, 130], [140, 90, 50], [230, 120, 170]],
                       dtype=np.float64)
PAIR_PERIODS = (6, 9, 12, 7, 10, 13, 8, 11, 14, 6)


def class_style(cls):
    """(colour RGB float, texture name, period in pixels) of class 1..20."""
    j = (cls - 1) // 2
    return PAIR_COLORS[j], ('stripes' if cls % 2 else 'dots'), PAIR_PERIODS[j] + (cls % 2)


# Every value below is computed with numpy's elementwise float64 arithmetic (+ - * / floor, exact in IEEE 754
# whatever the SIMD path), numpy's random Generator (its PCG64 stream and these methods are the same on
# numpy 1.23-2.2, tests/test_synthetic.py checks it through the digests) and scalar trigonometry from
# Python's math module. No OpenCV, no BLAS, no vectorised transcendental function (their results differ
# between versions and CPUs), no float reduction: the scenes are the same bit for bit on every supported
# Python, numpy and CPU. GENERATOR names this way of drawing; a set made by another is remade, not reused.
GENERATOR = 2


def _cubic_taps(n_out, n_in):
    """Bicubic resampling of n_in samples to n_out (half-pixel centres, Keys a=-0.75, edges replicated)
    -> (indices (4, n_out), weights (4, n_out))."""
    src = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
    base = np.floor(src)
    t = src - base
    a = -0.75
    u, v = t + 1, 1 - t
    weights = np.stack([((a * u - 5 * a) * u + 8 * a) * u - 4 * a,
                        ((a + 2) * t - (a + 3)) * t * t + 1,
                        ((a + 2) * v - (a + 3)) * v * v + 1,
                        0.0 * t])
    weights[3] = 1 - weights[0] - weights[1] - weights[2]
    idx = np.clip(base.astype(np.int64) + np.arange(-1, 3)[:, None], 0, n_in - 1)
    return idx, weights


def _smooth_noise(rng, h, w, cells, channels):
    """Normal noise on a cells x cells grid, resampled bicubically to (h, w, channels): four taps summed in
    a fixed order, first along rows, then along columns."""
    small = rng.standard_normal((cells, cells, channels))
    iy, wy = _cubic_taps(h, cells)
    rows = sum(wy[k][:, None, None] * small[iy[k]] for k in range(4))
    ix, wx = _cubic_taps(w, cells)
    return sum(wx[k][None, :, None] * rows[:, ix[k]] for k in range(4))


def _unit(rng):
    """A random direction (cos, sin) from a uniform angle in [0, pi)."""
    angle = rng.uniform(0, math.pi)
    return math.cos(angle), math.sin(angle)


def _inside_triangle(x, y, a, b, c):
    """Pixels (x, y) inside or on the triangle a, b, c (any orientation): signs of three cross products."""
    def cross(p, q):
        return (q[0] - p[0]) * (y - p[1]) - (q[1] - p[1]) * (x - p[0])
    d1, d2, d3 = cross(a, b), cross(b, c), cross(c, a)
    return ~(((d1 < 0) | (d2 < 0) | (d3 < 0)) & ((d1 > 0) | (d2 > 0) | (d3 > 0)))


def _shape_mask(rng, h, w, min_side, max_side):
    """A filled rotated rectangle, ellipse or star at a random place -> boolean (h, w) mask. A pixel is
    inside when its centre (x, y) is; only the shape's bounding square is computed."""
    kind = rng.integers(3)
    sh, sw = (int(v) for v in rng.integers(min_side, max_side + 1, size=2))
    cy, cx = int(rng.integers(0, h)), int(rng.integers(0, w))
    reach = math.ceil(math.hypot(sh, sw) / 2) + 1  # no point of any of the three shapes lies farther
    y0, y1, x0, x1 = max(cy - reach, 0), min(cy + reach + 1, h), max(cx - reach, 0), min(cx + reach + 1, w)
    mask = np.zeros((h, w), bool)
    y, x = np.mgrid[y0:y1, x0:x1].astype(np.float64)
    if kind == 0 or kind == 1:
        c, s = _unit(rng)
        dx, dy = x - cx, y - cy
        u, v = dx * c + dy * s, dy * c - dx * s
        if kind == 0:
            mask[y0:y1, x0:x1] = (np.abs(u) <= sw / 2) & (np.abs(v) <= sh / 2)
        else:
            a, b = max(sw / 2, 0.5), max(sh / 2, 0.5)
            mask[y0:y1, x0:x1] = (u / a) * (u / a) + (v / b) * (v / b) <= 1
        return mask
    n = int(rng.integers(5, 8))
    r_out = max(sh, sw) / 2
    r_in = r_out * rng.uniform(0.45, 0.7)
    phase = rng.uniform(0, math.pi)
    pts = [(cx + r * math.cos(k * math.pi / n + phase), cy + r * math.sin(k * math.pi / n + phase))
           for k, r in ((k, r_out if k % 2 == 0 else r_in) for k in range(2 * n))]
    box = mask[y0:y1, x0:x1]
    for k in range(2 * n):
        box |= _inside_triangle(x, y, (cx, cy), pts[k], pts[(k + 1) % (2 * n)])
    return mask


def _texture(rng, h, w, kind, period):
    """Stripes (1 on half of each period along a random direction) or dots (0 inside discs)."""
    y, x = np.mgrid[:h, :w].astype(np.float64)
    if kind == 'stripes':
        c, s = _unit(rng)
        phase = (x * c + y * s) / period + rng.uniform()
        return (phase - np.floor(phase) < 0.5).astype(np.float64)
    oy, ox = rng.uniform(0, period, size=2)
    dy = (y + oy) % period - period / 2
    dx = (x + ox) % period - period / 2
    return (dy * dy + dx * dx > (period * 0.3) ** 2).astype(np.float64)


def _void_outlines(label):
    """Pixels whose 3x3 neighbourhood (inside the image) holds two labels, grown by one pixel up and left
    (a morphological gradient, then a 2x2 dilation)."""
    h, w = label.shape
    pad = np.pad(label, 1, mode='edge')
    edge = np.zeros((h, w), bool)
    for dy in range(3):
        for dx in range(3):
            edge |= pad[dy:dy + h, dx:dx + w] != label
    grown = edge.copy()
    grown[1:, :] |= edge[:-1, :]
    grown[:, 1:] |= edge[:, :-1]
    grown[1:, 1:] |= edge[:-1, :-1]
    return grown


def make_scene(rng, h, w):
    """One synthetic scene -> (image (h, w, 3) uint8, label (h, w) uint8 with 255 outlines)."""
    base = rng.uniform(70, 190, size=3)
    img = base + 35 * _smooth_noise(rng, h, w, int(rng.integers(3, 9)), 3)
    img += 12 * _smooth_noise(rng, h, w, int(rng.integers(20, 40)), 3)
    label = np.zeros((h, w), np.uint8)
    side = min(h, w)
    for _ in range(int(rng.integers(2, 6))):  # distractors: class colours, no texture, background label
        m = _shape_mask(rng, h, w, side // 6, side // 2)
        color = PAIR_COLORS[rng.integers(len(PAIR_COLORS))] + rng.normal(0, 15, 3)
        img[m] = color * (0.85 + 0.3 * rng.uniform()) + 8 * rng.standard_normal((int(np.count_nonzero(m)), 3))
    for _ in range(int(rng.integers(2, 5))):
        cls = int(rng.integers(1, 21))
        color, kind, period = class_style(cls)
        m = _shape_mask(rng, h, w, side // 3, int(side * 0.8))
        if np.count_nonzero(m) < 64:
            continue
        color = color * rng.uniform(0.75, 1.25) + rng.normal(0, 20, 3)
        tex = _texture(rng, h, w, kind, period)[..., None]
        obj = color * (0.45 + 0.55 * tex)
        img[m] = obj[m]
        label[m] = cls
    light = 1 + 0.3 * _smooth_noise(rng, h, w, 2, 1)
    img = img * light + rng.normal(0, 10, size=img.shape)
    img = np.clip(img, 0, 255).astype(np.uint8)
    label[_void_outlines(label)] = IGNORE_INDEX
    return img, label


def make_synthetic_voc(root=os.path.join('..', SYNTHETIC_DIR), n_train=600, n_val=150, sizes=DEFAULT_SIZES, seed=0,
                       progress=True, overwrite=False):
    """Write a VOC2012-format tree under ``root/VOCdevkit/VOC2012`` and return its path.

    Deterministic by seed; ``sizes`` are the (height, width) the scenes are drawn from, some
    smaller than the chapter's 320x480 crop (the data set's filter drops those at that crop).
    The tree records how it was made (``MARKER``): a complete tree made with the same arguments is
    returned as it is; any other tree with a split list (real VOC, an earlier or half-written set) is
    refused, one line, unless ``overwrite``; a root that cannot be written is one line too.
    """
    voc_dir = os.path.join(root, VOC_SUBDIR)
    seg = os.path.join(voc_dir, 'ImageSets', 'Segmentation')
    made_with = {'n_train': n_train, 'n_val': n_val, 'sizes': [list(s) for s in sizes], 'seed': seed,
                 'generator': GENERATOR}
    if not overwrite and split_lists(root):
        marker = synthetic_marker(root)
        if has_voc(root) and marker == made_with:
            return voc_dir
        if marker is not None and marker.get('generator') != GENERATOR:
            raise D2lsegError(f"--root {root}: holds a synthetic set drawn by an older d2lseg (its scenes differed "
                              f"between Python stacks); remake it: d2lseg synth --root {root} --overwrite")
        raise D2lsegError(f"--root {root}: already holds a VOC tree ({voc_dir}), not the synthetic set these "
                          "arguments make; use it, choose another --root, or replace its lists with --overwrite")
    writable_folder(root, '--root')
    for sub in ('JPEGImages', 'SegmentationClass', os.path.join('ImageSets', 'Segmentation')):
        os.makedirs(os.path.join(voc_dir, sub), exist_ok=True)
    rng = np.random.default_rng(seed)
    names = {'train': [], 'val': []}
    splits = ['train'] * n_train + ['val'] * n_val
    try:
        for i, split in enumerate(bar(splits, progress, desc='synthetic VOC')):
            h, w = sizes[int(rng.integers(len(sizes)))]
            img, label = make_scene(rng, h, w)
            name = f'synth_{i:06d}'
            Image.fromarray(img).save(os.path.join(voc_dir, 'JPEGImages', name + '.jpg'), quality=92)
            save_label_png(label, os.path.join(voc_dir, 'SegmentationClass', name + '.png'))
            names[split].append(name)
        for split, lst in names.items():  # list files last: a tree with them is complete
            with open(os.path.join(seg, split + '.txt'), 'w') as f:
                f.write(''.join(n + '\n' for n in lst))
        with open(os.path.join(root, MARKER), 'w') as f:
            json.dump(made_with, f)
    except OSError as e:  # e.g. the disk is full: no list file is written, so no half tree is ever used
        raise D2lsegError(f"--root {root}: writing the data set failed ({e.strerror}); free space or choose "
                          "another --root, then run again with --overwrite") from None
    return voc_dir


def scenes_digest(n_train=600, n_val=150, sizes=DEFAULT_SIZES, seed=0):
    """SHA-256 of the scenes ``make_synthetic_voc`` draws with these arguments (images and labels as
    arrays, before any file is written): the same on every supported stack (tests/test_synthetic.py)."""
    rng = np.random.default_rng(seed)
    digest = hashlib.sha256()
    for _ in range(n_train + n_val):
        h, w = sizes[int(rng.integers(len(sizes)))]
        img, label = make_scene(rng, h, w)
        digest.update(np.array([h, w], np.int64).tobytes())
        digest.update(img.tobytes())
        digest.update(label.tobytes())
    return digest.hexdigest()


def tree_digest(root):
    """SHA-256 of a VOC tree as training reads it: each split list, then every listed image and label decoded
    to arrays, in list order (JPEG bytes may differ between libjpeg versions; the arrays are what counts)."""
    voc_dir = voc_root(root)
    digest = hashlib.sha256()
    for split in ('train', 'val'):
        with open(os.path.join(voc_dir, 'ImageSets', 'Segmentation', split + '.txt'), 'rb') as f:
            names = f.read()
        digest.update(names)
        for name in names.decode().split():
            with Image.open(os.path.join(voc_dir, 'JPEGImages', name + '.jpg')) as im:
                digest.update(np.asarray(im.convert('RGB')).tobytes())
            with Image.open(os.path.join(voc_dir, 'SegmentationClass', name + '.png')) as im:
                digest.update(np.asarray(im).tobytes())
    return digest.hexdigest()


def choose_data(root=os.path.join('..', DATA_DIR), quick=False):
    """The data a notebook uses -> the folder holding VOCdevkit/VOC2012, saying which in one line: the
    real Pascal VOC2012 under ``root`` when it is there, else the synthetic set under ``root/synthetic``
    (made once; ``quick``: a tiny one in a temporary folder)."""
    if quick:
        data_dir = tempfile.mkdtemp(prefix='d2lseg-nb-')
        make_synthetic_voc(data_dir, n_train=8, n_val=4, sizes=((128, 192), (160, 224)), progress=False)
        print(f'data: a tiny synthetic set (quick mode), {data_dir}')
        return data_dir
    if has_real_voc(root):
        print(f'data: the real Pascal VOC2012 under {root}')
        return root
    data_dir = os.path.join(root, 'synthetic')
    if not has_voc(data_dir):
        make_synthetic_voc(data_dir)
    print(f'data: the synthetic VOC-format set under {data_dir} (no real VOC2012 under {root}; '
          f'd2l.download_voc_pascal({root!r}) downloads it, 2 GB)')
    return data_dir


def resolve_data_dir(recipe):
    """The VOC2012 folder a recipe trains on; makes the synthetic set when asked and missing. The synthetic
    set is never taken for the real data, nor the real data for the synthetic set."""
    data_dir = recipe.data_folder
    if recipe.synthetic:
        if has_voc(data_dir) and synthetic_marker(data_dir) is None:
            raise D2lsegError(f"--data-dir {data_dir}: holds a VOC tree that is not the synthetic set; "
                              f"--synthetic trains on the synthetic set only (default {SYNTHETIC_DIR}): drop "
                              "--synthetic to train on it, or choose another --data-dir")
        if not has_voc(data_dir):
            if split_lists(data_dir):
                raise D2lsegError(f"--data-dir {data_dir}: an incomplete VOC tree (one split list of "
                                  f"two); remove it, or remake it: d2lseg synth --root {data_dir} --overwrite")
            make_synthetic_voc(data_dir, seed=recipe.seed)
        return voc_root(data_dir)
    require_real_voc(data_dir)
    splits = (recipe.train_split, recipe.val_split)
    if not has_voc(data_dir, splits):
        raise D2lsegError(f"--data-dir {data_dir}: no VOCdevkit/VOC2012 there, nor a VOC-format tree with "
                          f"ImageSets/Segmentation/{{{','.join(splits)}}}.txt; download VOC2012 (d2lseg reproduce "
                          "downloads) or train on the synthetic set with --synthetic")
    return voc_root(data_dir)
