"""Pascal VOC2012 data (D2L 10.10.4): readers, crops, VOCSegDataset, samplers, loaders, bad input.

Classes and colours: tests/test_palette.py (the ``c2l`` fixtures are in conftest.py)."""
import io
import logging
import os
import random
import shutil
import sys

import mxnet as mx
import numpy as np
import pytest
from mxnet import image, nd
from PIL import Image

from d2lseg.core.errors import D2lsegError
from d2lseg.data.images import save_label_png
from d2lseg.data.palette import IGNORE_INDEX, voc_label_indices, voc_palette
from d2lseg.data.voc import VOCSegDataset, iter_split, load_data_voc, read_voc_images, voc_rand_crop

MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)


def split_names(voc_dir, split):
    with open(os.path.join(voc_dir, 'ImageSets', 'Segmentation', split + '.txt')) as f:
        return f.read().split()


def raw_label(voc_dir, name):
    """Palette indices of a label PNG, read with PIL alone."""
    with Image.open(os.path.join(voc_dir, 'SegmentationClass', name + '.png')) as im:
        assert im.mode == 'P'
        return np.asarray(im).copy()


def image_size(voc_dir, name):
    with Image.open(os.path.join(voc_dir, 'JPEGImages', name + '.jpg')) as im:
        return im.size[1], im.size[0]


@pytest.fixture
def tree(voc_dir, tmp_path):
    """A private copy of the tiny VOC tree that a test may damage."""
    dst = str(tmp_path / 'VOC2012')
    shutil.copytree(voc_dir, dst)
    return dst


# ---------------------------------------------------------------- readers

def test_read_voc_images_returns_uint8_images_and_colour_labels(voc_dir, c2l_void):
    features, labels = read_voc_images(voc_dir, is_train=False)
    names = split_names(voc_dir, 'val')
    assert len(features) == len(labels) == len(names) == 8
    pal = voc_palette()
    for name, f, lab in zip(names, features, labels):
        assert isinstance(f, nd.NDArray) and f.dtype == np.uint8 and f.ndim == 3 and f.shape[2] == 3
        assert lab.dtype == np.uint8 and lab.shape == f.shape
        with Image.open(os.path.join(voc_dir, 'JPEGImages', name + '.jpg')) as im:
            np.testing.assert_array_equal(f.asnumpy(), np.asarray(im.convert('RGB')))
        raw = raw_label(voc_dir, name)
        np.testing.assert_array_equal(lab.asnumpy(), pal[raw])  # RGB colours, as the book
        np.testing.assert_array_equal(voc_label_indices(lab, c2l_void).asnumpy(), raw)
    train_f, _ = read_voc_images(voc_dir, is_train=True)
    assert len(train_f) == len(split_names(voc_dir, 'train')) == 24


def test_labels_agree_with_gluoncv_reader(data_root, voc_dir, monkeypatch):
    # gluoncv 0.11's __init__ refuses torch >= 2 when torch is importable; it needs only its mxnet half here
    monkeypatch.setitem(sys.modules, 'torch', None)
    VOCSegmentation = pytest.importorskip(
        'gluoncv.data', reason='gluoncv is not installed (it needs numpy 1.x: Python 3.9-3.12)').VOCSegmentation
    # gluoncv wants the VOCdevkit folder; its 'val' split reads ImageSets/Segmentation/val.txt
    ref = VOCSegmentation(root=os.path.join(data_root, 'VOCdevkit'), split='val', mode='testval')
    ours = list(iter_split(voc_dir, is_train=False, ignore_boundary=True))
    assert len(ref) == len(ours) == 8
    n_void = 0
    for i, (name, img, lab) in enumerate(ours):
        ref_img, ref_mask = ref[i]
        assert os.path.basename(ref.images[i]) == name + '.jpg'
        np.testing.assert_array_equal(img, ref_img.asnumpy())
        mask = ref_mask.asnumpy()  # int32, void as -1
        np.testing.assert_array_equal(lab.astype(np.int32), np.where(mask == -1, IGNORE_INDEX, mask))
        n_void += int((mask == -1).sum())
        assert set(np.unique(lab)) <= set(range(21)) | {255}
    assert n_void > 0  # the comparison covered void pixels


# ---------------------------------------------------------------- crops

def coord_image(h, w):
    """(h, w, 3) float32 image whose pixels hold (row, column, 0)."""
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    return np.stack([yy, xx, np.zeros_like(yy)], -1)


def test_voc_rand_crop_cuts_the_same_rectangle():
    h, w = 37, 53
    feat = coord_image(h, w)
    lab = feat * 2 + 1  # another encoding of the same coordinates
    random.seed(0)
    corners = set()
    for _ in range(30):
        f, lab_c = voc_rand_crop(nd.array(feat), nd.array(lab), 11, 17)
        f, lab_c = f.asnumpy(), lab_c.asnumpy()
        assert f.shape == (11, 17, 3) and lab_c.shape == (11, 17, 3)
        y0, x0 = int(f[0, 0, 0]), int(f[0, 0, 1])
        np.testing.assert_array_equal(f, feat[y0:y0 + 11, x0:x0 + 17])
        np.testing.assert_array_equal(lab_c, lab[y0:y0 + 11, x0:x0 + 17])
        corners.add((y0, x0))
    assert len(corners) > 10  # really random


def test_voc_rand_crop_refuses_images_smaller_than_the_crop():
    with pytest.raises(D2lsegError, match='smaller than the crop 17x11'):
        voc_rand_crop(nd.zeros((10, 40, 3)), nd.zeros((10, 40, 3)), 11, 17)
    with pytest.raises(D2lsegError, match='same size'):
        voc_rand_crop(nd.zeros((20, 40, 3)), nd.zeros((20, 41, 3)), 11, 17)


def test_dataset_crops_are_aligned(voc_dir):
    ds = VOCSegDataset(True, (64, 96), voc_dir, seed=5, verbose=False)
    for i in range(len(ds)):  # replace the stored arrays by coordinate encodings
        h, w = ds.labels[i].shape
        yy, xx = np.mgrid[:h, :w]
        ds.features[i] = np.stack([yy % 256, xx % 256, (yy // 256) * 16 + xx // 256], -1).astype(np.uint8)
        ds.labels[i] = ((yy * 3 + xx * 7) % 256).astype(np.uint8)
    starts = set()
    for i in range(len(ds)):
        x, y = ds[i]
        assert x.shape == (3, 64, 96) and y.shape == (64, 96)
        rgb = np.rint((x.asnumpy().transpose(1, 2, 0) * STD + MEAN) * 255).astype(np.int64)
        yy = rgb[..., 0] + (rgb[..., 2] // 16) * 256
        xx = rgb[..., 1] + (rgb[..., 2] % 16) * 256
        y0, x0 = yy[0, 0], xx[0, 0]
        np.testing.assert_array_equal(yy, y0 + np.arange(64)[:, None] + 0 * xx)
        np.testing.assert_array_equal(xx, x0 + np.arange(96)[None, :] + 0 * yy)
        np.testing.assert_array_equal(y.asnumpy(), (yy * 3 + xx * 7) % 256)
        starts.add((int(y0), int(x0)))
    assert len(starts) > len(ds) // 2


def test_seeded_crops_depend_on_seed_epoch_and_index(voc_dir):
    a = VOCSegDataset(True, (64, 96), voc_dir, seed=7, verbose=False)
    b = VOCSegDataset(True, (64, 96), voc_dir, seed=7, verbose=False)
    c = VOCSegDataset(True, (64, 96), voc_dir, seed=8, verbose=False)
    rects_a = [a.crop_rect(i) for i in range(len(a))]
    assert rects_a == [b.crop_rect(i) for i in range(len(b))]
    for i in (0, 3, 11):
        np.testing.assert_array_equal(a[i][0].asnumpy(), b[i][0].asnumpy())
        np.testing.assert_array_equal(a[i][1].asnumpy(), b[i][1].asnumpy())
    assert rects_a != [c.crop_rect(i) for i in range(len(c))]
    a.set_epoch(1)
    rects_a1 = [a.crop_rect(i) for i in range(len(a))]
    assert sum(r0 != r1 for r0, r1 in zip(rects_a, rects_a1)) > len(a) // 2
    a.set_epoch(0)
    assert [a.crop_rect(i) for i in range(len(a))] == rects_a  # back to epoch 0: the same crops again


def test_samplers_shuffle_per_epoch_and_shard_by_rank(voc_dir):
    ds = VOCSegDataset(True, (64, 96), voc_dir, seed=2, verbose=False)
    n = len(ds)
    assert n == 24
    p0 = list(ds.sampler())
    assert sorted(p0) == list(range(n)) and p0 != list(range(n))
    assert list(ds.sampler()) == p0 and len(ds.sampler()) == n
    ds.set_epoch(1)
    p1 = list(ds.sampler())
    assert sorted(p1) == list(range(n)) and p1 != p0
    for parts in (2, 5):
        shards = [list(ds.sampler(rank, parts)) for rank in range(parts)]
        keep = n // parts * parts
        assert all(len(s) == n // parts for s in shards)
        flat = [s[k] for k in range(n // parts) for s in shards]  # re-interleave
        assert flat == p1[:keep]
        assert len(set(flat)) == keep
        ev = [list(ds.shard_sampler(rank, parts)) for rank in range(parts)]
        assert sorted(i for s in ev for i in s) == list(range(n))  # every index once across ranks
        assert sum(len(s) for s in ev) == n and ev[0] == list(range(0, n, parts))


# ---------------------------------------------------------------- VOCSegDataset contents

def test_filter_drops_images_smaller_than_the_crop(voc_dir, capsys):
    names = split_names(voc_dir, 'train')
    sizes = [image_size(voc_dir, n) for n in names]
    crop = (160, 224)
    keep = [n for n, (h, w) in zip(names, sizes) if h >= crop[0] and w >= crop[1]]
    assert 0 < len(keep) < len(names)  # the fixture has both kinds
    ds = VOCSegDataset(True, crop, voc_dir)
    assert len(ds) == len(keep) and ds.names == keep
    assert ds.num_dropped == len(names) - len(keep)
    out = capsys.readouterr().out
    assert out == f'read {len(keep)} examples\n'   # the book's line; the dropped count is num_dropped
    imgs = [nd.zeros((h, w, 3)) for h, w in sizes]
    assert len(ds.filter(imgs)) == len(keep)  # the chapter's filter on NDArrays


def test_void_is_background_by_default_and_255_with_ignore_boundary(voc_dir):
    plain = VOCSegDataset(False, (64, 96), voc_dir, verbose=False)
    void = VOCSegDataset(False, (64, 96), voc_dir, ignore_boundary=True, verbose=False)
    assert plain.names == void.names == split_names(voc_dir, 'val')
    n_outline = 0
    for name, lp, lv in zip(plain.names, plain.labels, void.labels):
        raw = raw_label(voc_dir, name)
        outline = raw == 255
        n_outline += int(outline.sum())
        np.testing.assert_array_equal(lv == 255, outline)
        np.testing.assert_array_equal(lv, raw)
        np.testing.assert_array_equal(lp, np.where(outline, 0, raw))
        assert lp.max() <= 20
    assert n_outline > 0


def test_items_match_the_chapters_normalise_then_crop(voc_dir, c2l):
    ds = VOCSegDataset(True, (64, 96), voc_dir, seed=11, verbose=False)
    features, labels = read_voc_images(voc_dir, is_train=True)
    mean, std = nd.array(MEAN), nd.array(STD)
    for idx in (0, 5, 17):
        x, y = ds[idx]
        assert x.dtype == np.float32 and y.dtype == np.float32
        assert x.shape == (3, 64, 96) and y.shape == (64, 96)
        x0, y0, w, h = ds.crop_rect(idx)
        k = split_names(voc_dir, 'train').index(ds.names[idx])
        full = (features[k].astype('float32') / 255 - mean) / std  # the chapter's normalize_image
        want_x = image.fixed_crop(full, x0, y0, w, h).transpose((2, 0, 1))
        want_y = voc_label_indices(image.fixed_crop(labels[k], x0, y0, w, h), c2l)
        assert np.array_equal(x.asnumpy(), want_x.asnumpy())  # bit-exact
        assert np.array_equal(y.asnumpy(), want_y.asnumpy())


def test_storage_is_uint8_four_times_smaller(voc_dir):
    ds = VOCSegDataset(True, (64, 96), voc_dir, verbose=False)
    pixels = sum(f.shape[0] * f.shape[1] for f in ds.features)
    assert all(f.dtype == np.uint8 and lab.dtype == np.uint8 for f, lab in zip(ds.features, ds.labels))
    assert ds.nbytes() == pixels * 4  # 3 image bytes + 1 label byte per pixel
    float32_storage = pixels * (3 + 1) * 4  # the chapter: float32 images and float32 labels
    assert float32_storage == 4 * ds.nbytes()


def test_load_data_voc_discards_the_last_batch(voc_dir):
    train_iter, test_iter = load_data_voc(5, (64, 96), voc_dir, seed=1)
    assert isinstance(train_iter, mx.gluon.data.DataLoader)
    assert len(train_iter) == 24 // 5 and len(test_iter) == 8 // 5
    batches = list(train_iter)
    assert len(batches) == 4
    for x, y in batches:
        assert x.shape == (5, 3, 64, 96) and y.shape == (5, 64, 96)
    assert len(list(test_iter)) == 1
    again, _ = load_data_voc(5, (64, 96), voc_dir, seed=1)  # seeded: the same batches again
    np.testing.assert_array_equal(next(iter(again))[1].asnumpy(), batches[0][1].asnumpy())


# ---------------------------------------------------------------- bad input

def _write_list(tree, split, names):
    with open(os.path.join(tree, 'ImageSets', 'Segmentation', split + '.txt'), 'w') as f:
        f.write(''.join(n + '\n' for n in names))


def test_missing_root(tmp_path):
    root = str(tmp_path / 'nowhere')
    for call in (lambda: VOCSegDataset(True, (64, 96), root), lambda: read_voc_images(root),
                 lambda: list(iter_split(root))):
        with pytest.raises(D2lsegError, match='nowhere: no VOC2012 tree here; run `d2lseg synth'):
            call()


def test_missing_and_empty_list_files(tree, data_root):
    os.remove(os.path.join(tree, 'ImageSets', 'Segmentation', 'val.txt'))
    with pytest.raises(D2lsegError, match=r'val\.txt: list file missing.*d2lseg synth'):
        VOCSegDataset(False, (64, 96), tree)
    with pytest.raises(D2lsegError, match=r'list file missing; .* is the data folder, pass .*VOC2012'):
        read_voc_images(data_root)  # the parent of VOCdevkit given by mistake
    _write_list(tree, 'train', [])
    with open(os.path.join(tree, 'ImageSets', 'Segmentation', 'train.txt'), 'a') as f:
        f.write('\n  \n')
    with pytest.raises(D2lsegError, match=r'train\.txt: list file is empty'):
        read_voc_images(tree, is_train=True)


@pytest.mark.fault
@pytest.mark.parametrize('bad', ['../../../outside', '/etc/hostname', 'sub\\..\\x', '..'])
def test_list_file_ids_that_are_paths_are_refused(tree, tmp_path, bad):
    names = split_names(tree, 'val')
    # an image and label that would be found by following the path out of the tree
    _write_list(tree, 'val', names[:2] + [bad] + names[2:])
    with pytest.raises(D2lsegError, match=r"val\.txt: entry 3 .* is a path, not an image id"):
        VOCSegDataset(False, (64, 96), tree)
    with pytest.raises(D2lsegError, match=r"val\.txt: entry 3"):
        list(iter_split(tree, is_train=False))


def test_missing_image_and_label(tree):
    names = split_names(tree, 'val')
    os.remove(os.path.join(tree, 'JPEGImages', names[2] + '.jpg'))
    with pytest.raises(D2lsegError, match=names[2] + r'\.jpg: file missing.*remove its name'):
        VOCSegDataset(False, (64, 96), tree)
    os.remove(os.path.join(tree, 'SegmentationClass', names[4] + '.png'))
    _write_list(tree, 'val', names[3:])
    with pytest.raises(D2lsegError, match=names[4] + r'\.png: file missing'):
        read_voc_images(tree, is_train=False)


def test_truncated_and_non_image_files(tree, monkeypatch):
    from PIL import ImageFile
    monkeypatch.setattr(ImageFile, 'LOAD_TRUNCATED_IMAGES', True)  # as importing gluoncv does
    names = split_names(tree, 'val')
    jpg = os.path.join(tree, 'JPEGImages', names[1] + '.jpg')
    data = open(jpg, 'rb').read()
    open(jpg, 'wb').write(data[:len(data) // 2])
    with pytest.raises(D2lsegError, match=names[1] + r'\.jpg: not a readable image'):
        VOCSegDataset(False, (64, 96), tree, verbose=False)
    with pytest.raises(D2lsegError, match=names[1] + r'\.jpg: not a readable image'):
        read_voc_images(tree, is_train=False)
    open(jpg, 'wb').write(data[:-2])  # only the end marker lost
    with pytest.raises(D2lsegError, match=names[1] + r'\.jpg: not a readable image \(OSError: image file is trunc'):
        list(iter_split(tree, is_train=False))
    # corrupted and cut: libjpeg decodes some such files without an error; the missing end marker gives them away
    monkeypatch.setattr(ImageFile, 'LOAD_TRUNCATED_IMAGES', False)  # PIL's default, for the search
    for pos in range(20, len(data) // 2, 7):
        bad = bytearray(data[:len(data) * 3 // 4])
        bad[pos] = 0
        try:
            with Image.open(io.BytesIO(bytes(bad))) as im:
                im.load()
            break  # PIL alone accepts this one
        except OSError:
            continue
    else:
        pytest.fail('no corrupted+cut JPEG that PIL accepts found')
    monkeypatch.setattr(ImageFile, 'LOAD_TRUNCATED_IMAGES', True)
    open(jpg, 'wb').write(bytes(bad))
    with pytest.raises(D2lsegError, match=names[1] + r'\.jpg: JPEG is truncated \(no end-of-image marker\)'):
        list(iter_split(tree, is_train=False))
    open(jpg, 'wb').write(data)
    png = os.path.join(tree, 'SegmentationClass', names[3] + '.png')
    open(png, 'w').write('this is not a PNG\n')
    with pytest.raises(D2lsegError, match=names[3] + r'\.png: not a readable image'):
        list(iter_split(tree, is_train=False))
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # the global is left as it was


def test_image_and_label_of_different_sizes_names_both(tree):
    names = split_names(tree, 'val')
    png = os.path.join(tree, 'SegmentationClass', names[0] + '.png')
    lab = raw_label(tree, names[0])
    save_label_png(np.ascontiguousarray(lab[:-3]), png)
    h, w = lab.shape
    msg = rf"{names[0]}\.jpg is {w}x{h} but .*{names[0]}\.png is {w}x{h - 3}: image and label must have the same size"
    for call in (lambda: VOCSegDataset(False, (64, 96), tree), lambda: read_voc_images(tree, False),
                 lambda: list(iter_split(tree, False))):
        with pytest.raises(D2lsegError, match=msg):
            call()


def test_all_images_smaller_than_the_crop(voc_dir):
    with pytest.raises(D2lsegError, match=r'all 8 images are smaller than the crop 400x512; use a smaller --crop'):
        VOCSegDataset(False, (400, 512), voc_dir)


def test_unknown_colours_become_background_counted_and_warned_once(tree, caplog):
    names = split_names(tree, 'val')
    lab0 = raw_label(tree, names[0])
    rgb = voc_palette()[lab0]
    rgb[:5, :7] = (10, 200, 30)  # 35 pixels of a colour outside VOC_COLORMAP, as an RGB PNG
    Image.fromarray(rgb).save(os.path.join(tree, 'SegmentationClass', names[0] + '.png'))
    lab1 = raw_label(tree, names[1])
    lab1[-2:, -4:] = 40  # 8 pixels of palette index 40 (not a VOC class)
    save_label_png(lab1, os.path.join(tree, 'SegmentationClass', names[1] + '.png'))
    with caplog.at_level(logging.WARNING, logger='d2lseg.data.voc'):
        ds = VOCSegDataset(False, (64, 96), tree, ignore_boundary=True, verbose=False, unknown='background')
    assert ds.unknown_pixels == 35 + 8
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and '43 label pixels' in warnings[0].getMessage()
    assert tree in warnings[0].getMessage()
    want0 = lab0.copy()
    want0[:5, :7] = 0
    np.testing.assert_array_equal(ds.labels[0], want0)  # RGB labels keep the void colour as 255 too
    want1 = lab1.copy()
    want1[-2:, -4:] = 0
    np.testing.assert_array_equal(ds.labels[1], want1)


def test_grey_index_labels_read_like_palette_labels(tree):
    names = split_names(tree, 'val')
    lab = raw_label(tree, names[2])
    Image.fromarray(lab, mode='L').save(os.path.join(tree, 'SegmentationClass', names[2] + '.png'))
    ds = VOCSegDataset(False, (64, 96), tree, ignore_boundary=True, verbose=False)
    np.testing.assert_array_equal(ds.labels[2], lab)
    _, labels = read_voc_images(tree, is_train=False)
    np.testing.assert_array_equal(labels[2].asnumpy(), voc_palette()[lab])


def test_augmented_items_are_seeded_by_epoch_and_keep_the_crop(voc_dir):
    ds = VOCSegDataset(True, (64, 96), voc_dir, seed=1, verbose=False, augment=True)
    plain = VOCSegDataset(True, (64, 96), voc_dir, seed=1, verbose=False)
    x, y = ds[0]
    assert x.shape == (3, 64, 96) and y.shape == (64, 96)
    again = ds[0]
    assert (again[0] == x).min().asscalar() == 1 and (again[1] == y).min().asscalar() == 1
    ds.set_epoch(1)
    assert (ds[0][0] != x).max().asscalar() == 1            # another epoch, another scale, flip and crop
    values = set(np.unique(y.asnumpy()).tolist())
    assert values <= set(range(21)) | {255}                  # nearest-neighbour labels: classes, never blends
    assert not (plain[0][0] == x).min().asscalar()           # the plain crop is not the augmented one
