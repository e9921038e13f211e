"""The configuration (``d2lseg.training.config``): the chapter's defaults, one-line validation naming the flag, and
everything derived from the Recipe fields (the train flags, the chapter's recipe, the docs' flag table)."""
import dataclasses
import json
import os

import pytest

from d2lseg.command import cli
from d2lseg.training import config
from d2lseg.training.config import Recipe
from d2lseg.training.reference import CHAPTER_RECIPE, RECIPE_KEYS

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..')


def test_recipe_defaults_are_the_chapters():
    r = Recipe()
    assert (r.crop, r.batch_size, r.epochs, r.lr, r.wd) == ((320, 480), 32, 5, 0.1, 1e-3)
    assert (r.variant, r.pretrained, r.momentum, r.lr_schedule) == ('fcn32s', True, 0.0, 'constant')
    assert r.validate() is r
    assert Recipe.from_dict(json.loads(json.dumps(r.to_dict()))) == r


@pytest.mark.parametrize('change, flag', [
    (dict(crop=(100, 480)), '--crop 100x480'), (dict(crop=(320, 0)), '--crop'),
    (dict(batch_size=0), '--batch-size 0'), (dict(epochs=-1), '--epochs -1'),
    (dict(lr=0.0), '--lr'), (dict(lr=float('nan')), '--lr nan'), (dict(wd=-1.0), '--wd'),
    (dict(variant='fcn4s'), '--variant fcn4s'), (dict(lr_schedule='cosine'), '--lr-schedule cosine'),
    (dict(workers=-1), '--workers'), (dict(warmup_epochs=-1), '--warmup-epochs -1'),
    (dict(warmup_epochs=6), '--warmup-epochs 6'), (dict(warmup_epochs=float('nan')), '--warmup-epochs nan'),
])
def test_recipe_validate_names_the_flag(change, flag):
    from d2lseg.core.errors import D2lsegError
    with pytest.raises(D2lsegError) as e:
        Recipe(**change).validate()
    msg = str(e.value)
    assert msg.startswith(flag) and '\n' not in msg


def _train_options():
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == 'command')
    return sub.choices['train']


def _recipe_from(args):
    return cli.preset(getattr(args, 'preset', 'chapter'), cli._given(args))


def test_train_flags_are_generated_from_the_recipe_fields():
    train = _train_options()
    defaults = Recipe()
    assert _recipe_from(train.parse_args([])) == defaults       # no flag: the chapter preset, the Recipe's defaults
    assert cli._given(train.parse_args([])) == {}               # no flag has a default: the parsed values are the given
    for f in config.recipe_fields(flag=True):
        assert ('--' + f.name.replace('_', '-')) in train.format_help() or f.name in ('pretrained', 'backbone_params')
    assert _recipe_from(train.parse_args(['--synthetic'])).data_folder == os.path.join('data', 'synthetic')
    assert dataclasses.replace(Recipe(), synthetic=True).data_folder == os.path.join('data', 'synthetic')
    aliased = train.parse_args(['-b', '4', '-j', '1', '--weight-decay', '0.5'])
    assert (aliased.batch_size, aliased.workers, aliased.wd) == (4, 1, 0.5)
    args = train.parse_args(['--lr', '0.02', '--crop', '64x96', '--max-images', '3', '--ignore-boundary',
                             '--no-pretrained', '--ctx', 'cpu'])
    recipe = _recipe_from(args)
    assert (recipe.lr, recipe.crop, recipe.max_images, recipe.ignore_boundary, recipe.pretrained, recipe.ctx) == \
        (0.02, (64, 96), 3, True, False, 'cpu')
    assert recipe.epochs == defaults.epochs and recipe.num_classes == 21   # not a flag: the field's default
    help_text = train.format_help()
    for f in config.recipe_fields(flag=True):
        assert config.help_text(f).split('(')[0].strip()[:30] in ' '.join(help_text.split()), f.name


def test_reproduce_flags_come_from_the_recipe_fields_with_its_own_two_defaults():
    parser = cli.build_parser()
    reproduce = next(a for a in parser._actions if a.dest == 'command').choices['reproduce']
    args = reproduce.parse_args([])
    assert (args.data_dir, args.ctx, args.workers) == ('data', Recipe().ctx, 4) and Recipe().workers == 2
    assert reproduce.parse_args(['-j', '1', '--ctx', 'cpu']).workers == 1   # the Recipe field's alias and type
    shown = ' '.join(reproduce.format_help().split())
    assert config.help_text(config.recipe_field('ctx')) in shown
    assert "data-loading threads (default 4: train's is 2;" in shown and '(default data: where reproduce' in shown
    with pytest.raises(SystemExit):
        reproduce.parse_args(['--workers', 'many'])


def test_a_preset_is_a_recipe_and_explicit_flags_override_it():
    train = _train_options()
    small = _recipe_from(train.parse_args(['--preset', 'small']))
    assert (small.pretrained, small.crop, small.batch_size, small.lr, small.momentum, small.augment) == \
        (False, (160, 160), 4, 0.05, 0.9, True) and small.epochs > Recipe().epochs
    mine = _recipe_from(train.parse_args(['--preset', 'small', '--lr', '0.01', '--crop', '128x128', '--pretrained']))
    assert (mine.lr, mine.crop, mine.pretrained, mine.batch_size, mine.momentum) == (0.01, (128, 128), True, 4, 0.9)
    # a flag given with the chapter's value still wins over the preset's (given, not "different from the default")
    assert _recipe_from(train.parse_args(['--preset', 'demo', '--momentum', '0.0'])).momentum == 0.0
    assert _recipe_from(train.parse_args(['--preset', 'chapter'])) == Recipe()
    with pytest.raises(SystemExit):
        train.parse_args(['--preset', 'huge'])


def test_the_chapters_recipe_and_the_compared_keys_derive_from_the_fields():
    assert CHAPTER_RECIPE == {'crop': [320, 480], 'batch_size': 32, 'lr': 0.1, 'wd': 1e-3, 'momentum': 0.0,
                              'variant': 'fcn32s', 'pretrained': True, 'ignore_boundary': False, 'synthetic': False,
                              'lr_schedule': 'constant', 'warmup_epochs': 0, 'num_classes': 21, 'augment': False,
                              'class_weights': None, 'classes': None, 'train_split': 'train', 'val_split': 'val',
                              'label_dir': 'SegmentationClass', 'init_from': None}
    assert set(RECIPE_KEYS) == set(CHAPTER_RECIPE) | {'epochs', 'max_images'}
    assert config.ADDED_FIELDS == {'warmup_epochs': 0, 'augment': False, 'train_split': 'train', 'val_split': 'val',
                                   'label_dir': 'SegmentationClass', 'unknown_label': 'background', 'dtype': 'float32'}
    # the arithmetic's precision is no result key: a bfloat16 history is judged against float32's band and figures
    assert 'dtype' not in RECIPE_KEYS


def test_auto_ctx_falls_back_to_the_cpu_and_an_explicit_gpu_is_an_error():
    import mxnet as mx
    from d2lseg.core.errors import D2lsegError
    if mx.context.num_gpus():
        pytest.skip('this machine has a GPU: auto picks it')
    spec, ctx, note = config.resolve_ctx('auto')
    assert (spec, ctx, note) == ('cpu', [mx.cpu()], 'no GPU visible to MXNet: training on cpu')
    assert config.resolve_ctx('cpu:2')[1:] == ([mx.cpu(0), mx.cpu(1)], None)
    with pytest.raises(D2lsegError, match='--ctx gpu: this machine has 0 GPU'):
        config.resolve_ctx('gpu')


def test_docs_flag_table_is_the_recipes():
    with open(os.path.join(ROOT, 'docs', 'chapter.md')) as f:
        text = f.read()
    start, end = (text.index(m) for m in config.FLAG_TABLE_MARKERS)
    stored = text[start + len(config.FLAG_TABLE_MARKERS[0]):end].strip()
    assert stored == config.flag_table(), 'docs/chapter.md flag table is stale: run make flags'
    for f in config.recipe_fields(flag=True):  # the table names every flag field, once
        assert stored.count(f'| {f.name} |') == 1, f.name
