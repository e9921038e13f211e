"""The synthetic VOC-format data set: layout, palette PNG labels, void outlines, sizes, determinism, CLI."""
import hashlib
import json
import os
import shutil

import cv2
import numpy as np
import pytest
from PIL import Image

from d2lseg.command.cli import main
from d2lseg.core.errors import D2lsegError
from d2lseg.data.synthetic import DEFAULT_SIZES, GENERATOR, choose_data, make_synthetic_voc, scenes_digest, tree_digest
from d2lseg.data.voc import has_real_voc, has_voc
from d2lseg.data.palette import voc_palette
from d2lseg.data.voc import VOCSegDataset, VOC_SUBDIR

SIZES = ((64, 96), (96, 128), (80, 112))


def listing(voc_dir, split):
    with open(os.path.join(voc_dir, 'ImageSets', 'Segmentation', split + '.txt')) as f:
        return f.read().split()


def read_label(voc_dir, name):
    with Image.open(os.path.join(voc_dir, 'SegmentationClass', name + '.png')) as im:
        return im.mode, im.getpalette(), np.asarray(im).copy()


def label_digest(voc_dir):
    h = hashlib.sha1()
    for name in sorted(os.listdir(os.path.join(voc_dir, 'SegmentationClass'))):
        with open(os.path.join(voc_dir, 'SegmentationClass', name), 'rb') as f:
            h.update(name.encode() + f.read())
    return h.hexdigest()


@pytest.fixture(scope='module')
def small_set(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('synth'))
    return make_synthetic_voc(root, n_train=7, n_val=3, sizes=SIZES, seed=0, progress=False)


def test_exact_voc_layout(small_set):
    voc_dir = small_set
    assert voc_dir.endswith(os.path.join('VOCdevkit', 'VOC2012'))
    assert sorted(os.listdir(voc_dir)) == ['ImageSets', 'JPEGImages', 'SegmentationClass']
    assert os.listdir(os.path.join(voc_dir, 'ImageSets')) == ['Segmentation']
    train, val = listing(voc_dir, 'train'), listing(voc_dir, 'val')
    assert len(train) == 7 and len(val) == 3 and not set(train) & set(val)
    names = sorted(train + val)
    assert sorted(os.listdir(os.path.join(voc_dir, 'JPEGImages'))) == [n + '.jpg' for n in names]
    assert sorted(os.listdir(os.path.join(voc_dir, 'SegmentationClass'))) == [n + '.png' for n in names]
    pal = voc_palette().reshape(-1).tolist()
    for name in names:
        with Image.open(os.path.join(voc_dir, 'JPEGImages', name + '.jpg')) as im:
            assert im.format == 'JPEG' and im.mode == 'RGB'
            size = im.size[::-1]
        assert size in SIZES
        mode, palette, lab = read_label(voc_dir, name)
        assert mode == 'P' and palette[:768] == pal  # the VOC palette, so viewers show VOC colours
        assert lab.shape == size and lab.dtype == np.uint8


def test_labels_hold_classes_and_void_outlines_around_objects(small_set):
    voc_dir = small_set
    n_objects = 0
    for name in listing(voc_dir, 'train') + listing(voc_dir, 'val'):
        lab = read_label(voc_dir, name)[2]
        values = set(np.unique(lab).tolist())
        assert values <= set(range(21)) | {255}
        if values - {0, 255}:
            n_objects += 1
            assert 255 in values
        # no two different classes (background included) touch: a 255 outline always lies between
        for a, b in ((lab[1:], lab[:-1]), (lab[:, 1:], lab[:, :-1])):
            touching = (a != b) & (a != 255) & (b != 255)
            assert not touching.any(), name
        # every outline borders an object: each connected piece of 255 touches a pixel of class 1..20
        n, comp = cv2.connectedComponents((lab == 255).astype(np.uint8), connectivity=8)
        obj = ((lab > 0) & (lab < 255)).astype(np.uint8)
        near_obj = cv2.dilate(obj, np.ones((3, 3), np.uint8)) > 0
        assert set(np.unique(comp[near_obj & (lab == 255)]).tolist()) == set(range(1, n)), name
    assert n_objects >= 8  # most scenes hold objects


def test_some_default_sizes_are_smaller_than_the_chapters_crop(tmp_path, capsys):
    assert any(h < 320 or w < 480 for h, w in DEFAULT_SIZES)
    assert any(h >= 320 and w >= 480 for h, w in DEFAULT_SIZES)
    voc_dir = make_synthetic_voc(str(tmp_path), n_train=8, n_val=1, seed=0, progress=False)
    sizes = []
    for name in listing(voc_dir, 'train'):
        with Image.open(os.path.join(voc_dir, 'JPEGImages', name + '.jpg')) as im:
            sizes.append(im.size[::-1])
    small = sum(h < 320 or w < 480 for h, w in sizes)
    assert 0 < small < len(sizes)
    ds = VOCSegDataset(True, (320, 480), voc_dir)
    assert ds.num_dropped == small and len(ds) == len(sizes) - small
    assert capsys.readouterr().out == f'read {len(sizes) - small} examples\n'   # the book's line, exactly


def test_deterministic_by_seed(tmp_path, small_set):
    again = make_synthetic_voc(str(tmp_path / 'a'), n_train=7, n_val=3, sizes=SIZES, seed=0, progress=False)
    other = make_synthetic_voc(str(tmp_path / 'b'), n_train=7, n_val=3, sizes=SIZES, seed=1, progress=False)
    assert label_digest(again) == label_digest(small_set)
    assert label_digest(other) != label_digest(small_set)
    name = listing(small_set, 'train')[0]
    with Image.open(os.path.join(small_set, 'JPEGImages', name + '.jpg')) as a, \
            Image.open(os.path.join(again, 'JPEGImages', name + '.jpg')) as b:
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_has_voc_needs_both_lists(tmp_path, small_set):
    assert has_voc(os.path.dirname(os.path.dirname(small_set)))
    assert not has_voc(str(tmp_path))
    seg = tmp_path / VOC_SUBDIR / 'ImageSets' / 'Segmentation'
    seg.mkdir(parents=True)
    (seg / 'train.txt').write_text('x\n')
    assert not has_voc(str(tmp_path))


def test_cli_synth(tmp_path, capsys):
    root = str(tmp_path / 'data')
    assert main(['synth', '--root', root, '--n-train', '3', '--n-val', '2']) == 0
    voc_dir = os.path.join(root, VOC_SUBDIR)
    assert capsys.readouterr().out.strip().endswith(voc_dir)
    assert len(listing(voc_dir, 'train')) == 3 and len(listing(voc_dir, 'val')) == 2
    assert len(os.listdir(os.path.join(voc_dir, 'JPEGImages'))) == 5
    assert has_voc(root)


def test_synth_defaults_to_its_own_folder_and_choose_data_says_what_it_found(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(['synth', '--n-train', '3', '--n-val', '2']) == 0
    assert has_voc(os.path.join('data', 'synthetic')) and not has_voc('data')   # never where VOC belongs
    capsys.readouterr()
    assert choose_data('data') == os.path.join('data', 'synthetic')            # no real VOC: the synthetic set
    line = capsys.readouterr().out.strip()
    assert line.startswith('data: the synthetic VOC-format set under data/synthetic (no real VOC2012 under data')
    shutil.copytree(os.path.join('data', 'synthetic', 'VOCdevkit', 'VOC2012'), os.path.join('data', VOC_SUBDIR))
    assert has_real_voc('data') and not has_real_voc(os.path.join('data', 'synthetic'))
    assert choose_data('data') == 'data'                                       # a VOC tree without the marker
    assert capsys.readouterr().out.strip() == 'data: the real Pascal VOC2012 under data'


DIGESTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'd2lseg', 'baselines',
                       'synthetic-digests.json')


def _stored(name):
    with open(DIGESTS) as f:
        return json.load(f)[name]


@pytest.mark.tier
def test_the_regression_set_is_bit_for_bit_the_stored_one(tmp_path, capsys):
    """Drawn with numpy's elementwise float64 arithmetic and PCG64 only: the same arrays and files on every
    supported Python, numpy and CPU (the digests were made on 3.11 / numpy 1.23.5)."""
    ref = _stored('regression')
    assert scenes_digest(ref['n_train'], ref['n_val'], seed=ref['seed']) == ref['scenes_sha256']
    root = str(tmp_path / 'reg')
    assert main(['synth', '--root', root, '--n-train', str(ref['n_train']), '--n-val', str(ref['n_val']),
                 '--seed', str(ref['seed']), '--digest']) == 0
    assert capsys.readouterr().out.split()[-1] == ref['tree_sha256'] == tree_digest(root)


@pytest.mark.tier
@pytest.mark.slow   # 750 scenes, ~30 s: out of make test-fast and the quick tiers (3.9, 3.10), which check the regression set
def test_the_demo_sets_scenes_are_bit_for_bit_the_stored_ones():
    ref = _stored('demo')
    assert (ref['n_train'], ref['n_val'], ref['seed']) == (600, 150, 0)   # make demo's set: d2lseg synth's defaults
    assert scenes_digest(ref['n_train'], ref['n_val'], seed=ref['seed']) == ref['scenes_sha256']


def test_digests_tell_sets_apart():
    a, b = scenes_digest(2, 1, seed=0), scenes_digest(2, 1, seed=1)
    assert a != b and len(a) == 64 and scenes_digest(2, 1, seed=0) == a


def test_a_set_drawn_by_the_older_generator_is_named_as_such(tmp_path):
    root = str(tmp_path)
    make_synthetic_voc(root, n_train=2, n_val=1, sizes=SIZES, seed=0, progress=False)
    marker = os.path.join(root, 'VOCdevkit', 'd2lseg-synthetic.json')
    with open(marker) as f:
        made = json.load(f)
    assert made['generator'] == GENERATOR
    del made['generator']  # as the opencv-based generator (d2lseg before generator 2) wrote it
    with open(marker, 'w') as f:
        json.dump(made, f)
    with pytest.raises(D2lsegError, match=r'drawn by an older d2lseg .* d2lseg synth --root .* --overwrite'):
        make_synthetic_voc(root, n_train=2, n_val=1, sizes=SIZES, seed=0, progress=False)
    make_synthetic_voc(root, n_train=2, n_val=1, sizes=SIZES, seed=0, progress=False, overwrite=True)


def test_the_generator_uses_no_opencv_and_no_vectorised_transcendental():
    import inspect
    from d2lseg.data import synthetic
    source = inspect.getsource(synthetic)
    assert 'cv2' not in source
    for fn in ('np.sin', 'np.cos', 'np.exp', 'np.log', 'np.sqrt', '@', 'np.dot', 'np.matmul', '.sum('):
        assert fn not in source, fn
