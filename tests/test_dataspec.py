"""DataSpec: the data-reading options in one object, one set of defaults, the same reads wherever it is built."""
import dataclasses
import os

import numpy as np
import pytest

from d2lseg.command import cli
from d2lseg.training.config import Recipe
from d2lseg.data.dataspec import DataSpec, UNKNOWN
from d2lseg.core.errors import D2lsegError
from d2lseg.data.images import save_label_png
from d2lseg.data.voc import VOCSegDataset, iter_split, read_split


def test_one_set_of_defaults():
    """The Recipe, evaluate's flags and the library read with the same defaults ('error' for unknown labels)."""
    spec, recipe = DataSpec(), Recipe()
    assert (spec.unknown, spec.label_dir, spec.ignore_boundary, spec.max_images) == \
        (recipe.unknown_label, recipe.label_dir, recipe.ignore_boundary, recipe.max_images) == \
        ('error', 'SegmentationClass', False, None)
    args = cli.build_parser().parse_args(['evaluate', '--params', 'x.params'])
    assert (args.unknown_label, args.label_dir, args.max_images) == (spec.unknown, spec.label_dir, spec.max_images)
    assert UNKNOWN == ('error', 'background')
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.split = 'val'


def test_from_recipe_takes_each_split_and_every_option():
    recipe = Recipe(train_split='trainaug', val_split='minival', label_dir='SegmentationClassAug',
                    unknown_label='background', ignore_boundary=True, max_images=7)
    colours = ((0, 0, 0), (128, 0, 0))
    train, val = DataSpec.from_recipe(recipe, True, colours), DataSpec.from_recipe(recipe, False, colours)
    assert train == DataSpec('trainaug', 'SegmentationClassAug', colours, 'background', True, 7, None)
    assert val == train.replace(split='minival')


def test_a_spec_and_its_options_read_the_same(voc_dir):
    spec = DataSpec(split='val', ignore_boundary=True, max_images=3)
    by_spec = list(iter_split(voc_dir, spec=spec))
    by_options = list(iter_split(voc_dir, split='val', ignore_boundary=True, max_images=3))
    assert [n for n, _, _ in by_spec] == [n for n, _, _ in by_options] == read_split(voc_dir, False)[:3]
    for (_, a, la), (_, b, lb) in zip(by_spec, by_options):
        assert np.array_equal(a, b) and np.array_equal(la, lb) and (la == 255).any()  # the void border kept
    ds = VOCSegDataset(False, (64, 96), voc_dir, spec=spec, verbose=False)
    assert ds.names == [n for n, img, _ in by_spec if img.shape[0] >= 64 and img.shape[1] >= 96]


def test_an_unknown_label_is_an_error_unless_background_is_asked(voc_dir, tmp_path):
    import shutil
    tree = str(tmp_path / 'voc')
    shutil.copytree(voc_dir, tree)
    name = read_split(tree, False)[0]
    path = os.path.join(tree, 'SegmentationClass', name + '.png')
    lab = next(lab for n, _, lab in iter_split(tree, max_images=1))
    lab[:2, :3] = 40  # 6 pixels of index 40: no VOC class
    save_label_png(lab, path)
    with pytest.raises(D2lsegError, match=f'{name}.png: label value 40 is no class'):
        list(iter_split(tree, max_images=1))
    stats = {}
    (_, _, read), = iter_split(tree, stats=stats, max_images=1, unknown='background')
    assert stats['unknown_pixels'] == 6 and (read[:2, :3] == 0).all()


def test_limit_is_still_max_images(voc_dir):
    """``limit=`` (notebooks/07_own_data's stored cells) reads what ``max_images=`` reads."""
    assert [n for n, _, _ in iter_split(voc_dir, limit=2)] == [n for n, _, _ in iter_split(voc_dir, max_images=2)] \
        == read_split(voc_dir, False)[:2]
