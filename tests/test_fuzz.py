"""Fuzzed VOC readers: broken, truncated, oddly-typed and mis-sized files and list files.

Only D2lsegError may come out of VOCSegDataset, read_voc_images and iter_split. Policy (voc.py):
images of any 8-bit mode (RGB, L, P, RGBA, LA, CMYK, ...) are converted to RGB and accepted; labels
in 'P' or 'L' mode hold class indices and 'RGB'/'RGBA' hold VOC colours (alpha ignored), all accepted;
1-bit, 16-bit and float files would be mangled silently, so they are refused with a D2lsegError.
"""
import os
import shutil
import tempfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from d2lseg.core.errors import D2lsegError
from d2lseg.data.synthetic import make_synthetic_voc
from d2lseg.data.palette import voc_palette
from d2lseg.data.voc import VOCSegDataset, iter_split, read_voc_images

pytestmark = pytest.mark.fault
FUZZ = settings(max_examples=25, deadline=None, database=None, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow])
CROP = (32, 48)


@pytest.fixture(scope='module')
def base(tmp_path_factory):
    """A 3-image train split (48x64) to copy and damage."""
    root = str(tmp_path_factory.mktemp('fuzzbase'))
    return make_synthetic_voc(root, n_train=3, n_val=1, sizes=((48, 64),), seed=9, progress=False)


def readers(tree):
    """Run every reader over the train split; return what VOCSegDataset built (or raise)."""
    features, labels = read_voc_images(tree, is_train=True)
    items = list(iter_split(tree, is_train=True, ignore_boundary=True, unknown='background'))
    ds = VOCSegDataset(True, CROP, tree, ignore_boundary=True, verbose=False, unknown='background')
    assert len(features) == len(labels) == len(items)
    for f, lab in zip(features, labels):
        assert f.dtype == np.uint8 and f.shape == lab.shape and f.shape[2] == 3
    for _, img, lab in items:
        assert img.dtype == np.uint8 and img.shape[:2] == lab.shape
        assert set(np.unique(lab).tolist()) <= set(range(21)) | {255}
    for i in range(len(ds)):
        x, y = ds[i]
        assert x.shape == (3,) + CROP and y.shape == CROP
    return ds


def only_user_errors(base, damage):
    """Copy the base tree, damage it, run the readers: a D2lsegError (one line) or a valid data set."""
    with tempfile.TemporaryDirectory() as tmp:
        tree = os.path.join(tmp, 'VOC2012')
        shutil.copytree(base, tree)
        names = open(os.path.join(tree, 'ImageSets', 'Segmentation', 'train.txt')).read().split()
        damage(tree, names)
        try:
            return readers(tree), None
        except D2lsegError as e:
            msg = str(e)
            assert msg and '\n' not in msg
            return None, msg


def jpg(tree, name):
    return os.path.join(tree, 'JPEGImages', name + '.jpg')


def png(tree, name):
    return os.path.join(tree, 'SegmentationClass', name + '.png')


@FUZZ
@given(data=st.binary(max_size=2048), which=st.sampled_from(['jpg', 'png']), idx=st.integers(0, 2))
def test_random_bytes_as_image_or_label(base, data, which, idx):
    def damage(tree, names):
        path = (jpg if which == 'jpg' else png)(tree, names[idx])
        open(path, 'wb').write(data)
    ds, msg = only_user_errors(base, damage)
    assert ds is None and 'not a readable image' in msg and f'{names_of(base)[idx]}.{which}' in msg


def names_of(tree):
    return open(os.path.join(tree, 'ImageSets', 'Segmentation', 'train.txt')).read().split()


@FUZZ
@given(which=st.sampled_from(['jpg', 'png']), idx=st.integers(0, 2), cut=st.floats(0.0, 0.95),
       flips=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), max_size=6))
def test_truncated_or_corrupted_files(base, which, idx, cut, flips):
    lost = [0]

    def damage(tree, names):
        path = (jpg if which == 'jpg' else png)(tree, names[idx])
        data = bytearray(open(path, 'rb').read())
        for pos, val in flips:
            data[int(pos * len(data))] = val
        keep = int(len(data) * (1 - cut))
        lost[0] = len(data) - keep
        open(path, 'wb').write(bytes(data[:keep]))
    ds, msg = only_user_errors(base, damage)
    if lost[0] > 16 and not flips:  # a plain cut past the end markers (JPEG EOI, PNG IEND) loses pixels:
        assert ds is None and names_of(base)[idx] in msg  # refused, never padded with grey
    # with flipped bytes too, a decoder may legitimately see garbage pixels (e.g. a flip that forges an
    # end marker): then only "D2lsegError or a valid data set" is required, which only_user_errors checks


LABEL_MODES = ('L', 'RGBA', '1', 'I;16', 'LA', 'RGB')
VOC_INDEX = {tuple(c): i for i, c in enumerate(voc_palette()[:21].tolist())}
VOC_INDEX[(224, 224, 192)] = 255


@FUZZ
@given(mode=st.sampled_from(LABEL_MODES), idx=st.integers(0, 2), dh=st.integers(-2, 2),
       dw=st.integers(-2, 2), seed=st.integers(0, 2 ** 16))
def test_labels_of_other_modes_or_sizes(base, mode, idx, dh, dw, seed):
    rng = np.random.default_rng(seed)
    h, w = 48 + dh, 64 + dw
    if mode == 'L':  # grey index labels: 77 is not a class
        arr = rng.choice(np.array([0, 3, 15, 20, 255, 77], np.uint8), size=(h, w))
        want, unknown = np.where(arr == 77, 0, arr), int((arr == 77).sum())
        im = Image.fromarray(arr, 'L')
    elif mode == 'I;16':
        im = Image.fromarray(rng.integers(0, 65536, (h, w)).astype(np.uint16))
    elif mode == '1':
        im = Image.fromarray((rng.integers(0, 2, (h, w)) * 255).astype(np.uint8)).convert('1')
    else:  # colours: a few VOC ones, the void colour, and random others
        chans = {'RGBA': 4, 'RGB': 3, 'LA': 2}[mode]
        arr = rng.integers(0, 256, (h, w, chans)).astype(np.uint8)
        if chans >= 3:
            arr[::3, ::2, :3] = voc_palette()[rng.choice([1, 7, 15, 20, 255], size=arr[::3, ::2].shape[:2])]
            idx_of = [VOC_INDEX.get(tuple(c), -1) for c in arr[..., :3].reshape(-1, 3).tolist()]
            idx_of = np.array(idx_of).reshape(h, w)
            want, unknown = np.where(idx_of < 0, 0, idx_of), int((idx_of < 0).sum())
        im = Image.fromarray(arr)
    assert im.mode == mode

    def damage(tree, names):
        im.save(png(tree, names[idx]))
    ds, msg = only_user_errors(base, damage)
    name = names_of(base)[idx] + '.png'
    if mode in ('1', 'I;16', 'LA'):
        assert ds is None and name in msg and f"mode {mode!r} is not supported" in msg
    elif (dh, dw) != (0, 0):
        assert ds is None and name in msg and 'must have the same size' in msg
    else:  # accepted: indices or colours read, the unknown ones made background and counted
        assert ds is not None and len(ds) == 3
        np.testing.assert_array_equal(ds.labels[idx], want)
        assert ds.unknown_pixels == unknown


IMAGE_MODES = ('L', 'RGBA', 'CMYK', 'P', '1', 'I;16')


@FUZZ
@given(mode=st.sampled_from(IMAGE_MODES), idx=st.integers(0, 2), fmt=st.sampled_from(['JPEG', 'PNG']),
       seed=st.integers(0, 2 ** 16))
def test_images_of_other_modes(base, mode, idx, fmt, seed):
    rng = np.random.default_rng(seed)

    def damage(tree, names):
        if mode == 'I;16':
            im = Image.fromarray(rng.integers(0, 65536, (48, 64)).astype(np.uint16))
        else:
            im = Image.fromarray(rng.integers(0, 256, (48, 64, 3)).astype(np.uint8)).convert(mode)
        # JPEG holds L, RGB, CMYK (and 1 as L); PNG holds L, RGB(A), P, 1 and I;16: use the one that can
        can = {'JPEG': ('L', 'RGB', 'CMYK', '1'), 'PNG': ('L', 'RGB', 'RGBA', 'P', '1', 'I;16')}
        im.save(jpg(tree, names[idx]), format=fmt if im.mode in can[fmt] else ({'JPEG', 'PNG'} - {fmt}).pop())
        with Image.open(jpg(tree, names[idx])) as back:
            written[0] = back.mode
    written = [None]
    ds, msg = only_user_errors(base, damage)
    if written[0] in ('1', 'I;16'):
        assert ds is None and f"mode {written[0]!r} is not supported" in msg
    else:
        assert ds is not None and ds.features[idx].shape == (48, 64, 3)


@FUZZ
@given(lines=st.lists(st.text(alphabet=st.characters(blacklist_categories=('Cs',)), max_size=12), max_size=5),
       split_bytes=st.one_of(st.none(), st.binary(max_size=64)))
def test_list_files_naming_missing_images_or_empty(base, lines, split_bytes):
    def damage(tree, names):
        path = os.path.join(tree, 'ImageSets', 'Segmentation', 'train.txt')
        if split_bytes is not None:
            open(path, 'wb').write(split_bytes)
        else:
            with open(path, 'w', encoding='utf-8') as f:
                f.write('\n'.join(lines))
    ds, msg = only_user_errors(base, damage)
    if split_bytes is None and not any(s.strip() for s in lines):
        assert ds is None and 'train.txt: list file is empty' in msg
    elif ds is None:
        assert 'train.txt' in msg or 'file missing' in msg or 'not a readable image' in msg


def test_list_naming_a_folder_or_a_path_outside(base):
    def damage(tree, names):
        os.makedirs(jpg(tree, 'adir'))
        with open(os.path.join(tree, 'ImageSets', 'Segmentation', 'train.txt'), 'w') as f:
            f.write('adir\n')
    ds, msg = only_user_errors(base, damage)
    assert ds is None and 'adir.jpg: a folder, not a regular file' in msg
