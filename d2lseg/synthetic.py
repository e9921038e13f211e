"""A synthetic data set in Pascal VOC2012's on-disk format, for offline training and tests.

Scenes: objects of the 20 VOC classes (rectangles, ellipses, stars; several per image, partly
occluding) over textured, noisy, unevenly lit backgrounds. Classes share colours in pairs and differ
by texture (stripes or dots, with a class-specific period); background patches carry class colours
too, so a per-pixel colour lookup cannot solve the set. Labels are palette PNGs with the VOC palette
and void (255) outlines, exactly as the real data set stores them.

Also which data a run uses: ``choose_data`` (the notebooks: the real VOC2012 when it is there, else
this set) and ``resolve_data_dir`` (a training recipe: never the synthetic set for the real one).
"""
import json
import os
import tempfile

import cv2
import numpy as np
from PIL import Image

from .errors import D2lsegError
from .progress import bar
from .runfolder import writable_folder
from .images import save_label_png
from .palette import IGNORE_INDEX
from .voc import (DATA_DIR, MARKER, SYNTHETIC_DIR, VOC_SUBDIR, has_real_voc, has_voc, require_real_voc, split_lists,
                  synthetic_marker, voc_root)

# Two sizes hold the chapter's 320x480 crop; the others are nearer the demo's 128x192 crop, so that a
# crop shows a good part of a scene (and of its objects).
DEFAULT_SIZES = ((320, 480), (352, 512), (192, 256), (160, 240), (224, 320), (176, 288))

# Ten base colours, one per pair of classes (class 2j+1 striped, class 2j+2 dotted).
PAIR_COLORS = np.array([[200, 60, 50], [60, 170, 70], [60, 80, 200], [210, 190, 60], [170, 70, 180],
                        [70, 180, 190], [220, 130, 60], [130, 130, 130], [140, 90, 50], [230, 120, 170]],
                       dtype=np.float32)
PAIR_PERIODS = (6, 9, 12, 7, 10, 13, 8, 11, 14, 6)


def class_style(cls):
    """(colour RGB float, texture name, period in pixels) of class 1..20."""
    j = (cls - 1) // 2
    return PAIR_COLORS[j], ('stripes' if cls % 2 else 'dots'), PAIR_PERIODS[j] + (cls % 2)


def _smooth_noise(rng, h, w, cells, channels):
    small = rng.standard_normal((cells, cells, channels)).astype(np.float32)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC).reshape(h, w, channels)


def _shape_mask(rng, h, w, min_side, max_side):
    kind = rng.integers(3)
    sh, sw = rng.integers(min_side, max_side + 1, size=2)
    cy, cx = rng.integers(0, h), rng.integers(0, w)
    mask = np.zeros((h, w), np.uint8)
    if kind == 0:
        angle = rng.uniform(0, 180)
        box = cv2.boxPoints(((float(cx), float(cy)), (float(sw), float(sh)), angle))
        cv2.fillPoly(mask, [np.int32(box)], 1)
    elif kind == 1:
        cv2.ellipse(mask, (int(cx), int(cy)), (int(sw) // 2, int(sh) // 2), rng.uniform(0, 180), 0, 360, 1, -1)
    else:
        n = int(rng.integers(5, 8))
        r_out, r_in = max(sh, sw) / 2, max(sh, sw) / 2 * rng.uniform(0.45, 0.7)
        t = np.arange(2 * n) * np.pi / n + rng.uniform(0, np.pi)
        r = np.where(np.arange(2 * n) % 2 == 0, r_out, r_in)
        pts = np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], 1)
        cv2.fillPoly(mask, [np.int32(pts)], 1)
    return mask.astype(bool)


def _texture(rng, h, w, kind, period):
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    if kind == 'stripes':
        theta = rng.uniform(0, np.pi)
        phase = (xx * np.cos(theta) + yy * np.sin(theta)) / period + rng.uniform()
        return (np.sin(2 * np.pi * phase) > 0).astype(np.float32)
    oy, ox = rng.uniform(0, period, size=2)
    dy = (yy + oy) % period - period / 2
    dx = (xx + ox) % period - period / 2
    return (dy ** 2 + dx ** 2 > (period * 0.3) ** 2).astype(np.float32)


def make_scene(rng, h, w):
    """One synthetic scene -> (image (h, w, 3) uint8, label (h, w) uint8 with 255 outlines)."""
    base = rng.uniform(70, 190, size=3).astype(np.float32)
    img = base + 35 * _smooth_noise(rng, h, w, int(rng.integers(3, 9)), 3)
    img += 12 * _smooth_noise(rng, h, w, int(rng.integers(20, 40)), 3)
    label = np.zeros((h, w), np.uint8)
    side = min(h, w)
    for _ in range(int(rng.integers(2, 6))):  # distractors: class colours, no texture, background label
        m = _shape_mask(rng, h, w, side // 6, side // 2)
        color = PAIR_COLORS[rng.integers(len(PAIR_COLORS))] + rng.normal(0, 15, 3)
        img[m] = color * (0.85 + 0.3 * rng.uniform()) + 8 * rng.standard_normal((int(m.sum()), 3))
    for _ in range(int(rng.integers(2, 5))):
        cls = int(rng.integers(1, 21))
        color, kind, period = class_style(cls)
        m = _shape_mask(rng, h, w, side // 3, int(side * 0.8))
        if m.sum() < 64:
            continue
        color = color * rng.uniform(0.75, 1.25) + rng.normal(0, 20, 3)
        tex = _texture(rng, h, w, kind, period)[..., None]
        obj = color * (0.45 + 0.55 * tex)
        img[m] = obj[m]
        label[m] = cls
    light = 1 + 0.3 * _smooth_noise(rng, h, w, 2, 1)
    img = img * light + rng.normal(0, 10, size=img.shape)
    img = np.clip(img, 0, 255).astype(np.uint8)
    edge = cv2.morphologyEx(label, cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)) > 0
    edge = cv2.dilate(edge.astype(np.uint8), np.ones((2, 2), np.uint8)) > 0
    label[edge] = IGNORE_INDEX
    return img, label


def make_synthetic_voc(root=os.path.join('..', SYNTHETIC_DIR), n_train=600, n_val=150, sizes=DEFAULT_SIZES, seed=0, progress=True,
                       overwrite=False):
    """Write a VOC2012-format tree under ``root/VOCdevkit/VOC2012`` and return its path.

    Deterministic by seed; ``sizes`` are the (height, width) the scenes are drawn from, some
    smaller than the chapter's 320x480 crop (the data set's filter drops those at that crop).
    The tree records how it was made (``MARKER``): a complete tree made with the same arguments is
    returned as it is; any other tree with a split list (real VOC, an earlier or half-written set) is
    refused, one line, unless ``overwrite``; a root that cannot be written is one line too.
    """
    voc_dir = os.path.join(root, VOC_SUBDIR)
    seg = os.path.join(voc_dir, 'ImageSets', 'Segmentation')
    made_with = {'n_train': n_train, 'n_val': n_val, 'sizes': [list(s) for s in sizes], 'seed': seed}
    if not overwrite and split_lists(root):
        if has_voc(root) and synthetic_marker(root) == made_with:
            return voc_dir
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
