"""Your own data and classes: a VOC-format data set written here (not by ``synthetic``), with 3 classes plus
background of its own names and colours, .png images, colour and palette masks and an ignore border,
trained, evaluated and predicted with ``d2lseg``; fine-tuning a 21-class model into a 4-class one."""
import contextlib
import io
import json
import os

import mxnet as mx
import numpy as np
import pytest
from PIL import Image

from d2lseg.data.classes import ClassList, read_classes
from d2lseg.command.cli import main
from d2lseg.fcn.model import build_fcn, init_from
from d2lseg.fcn.ops import bilinear_kernel

CLASSES = [('sky', (0, 0, 0)), ('tree', (20, 160, 40)), ('house', (200, 60, 20)), ('car', (240, 220, 0))]


def _scene(rng, h=96, w=128):
    """An image and its class indices: noise, with a rectangle of each class in its own colour."""
    img = rng.integers(60, 120, (h, w, 3)).astype(np.uint8)
    label = np.zeros((h, w), np.uint8)
    for c in (1, 2, 3):
        y, x = rng.integers(0, h - 32), rng.integers(0, w - 40)
        label[y:y + 32, x:x + 40] = c
        img[y:y + 32, x:x + 40] = np.array(CLASSES[c][1]) // 2 + 60
    label[:2], label[:, :2] = 255, 255  # an ignore border, as VOC's void
    return img, label


@pytest.fixture(scope='module')
def own(tmp_path_factory):
    """A VOC-format root (no VOCdevkit above it): 8 train / 4 val, half the masks RGB colours, half palette."""
    root = tmp_path_factory.mktemp('own')
    for sub in ('JPEGImages', 'SegmentationClass', os.path.join('ImageSets', 'Segmentation')):
        (root / sub).mkdir(parents=True)
    rng = np.random.default_rng(0)
    palette = np.zeros((256, 3), np.uint8)
    palette[:4] = [c for _, c in CLASSES]
    names = []
    for i in range(12):
        img, label = _scene(rng)
        name = f'img{i:02d}'
        Image.fromarray(img).save(root / 'JPEGImages' / f'{name}.png')
        if i % 2:
            rgb = palette[label]
            rgb[label == 255] = (224, 224, 192)     # the void colour
            Image.fromarray(rgb).save(root / 'SegmentationClass' / f'{name}.png')
        else:
            mask = Image.fromarray(label, mode='P')
            mask.putpalette(palette.reshape(-1).tolist())
            mask.save(root / 'SegmentationClass' / f'{name}.png')
        names.append(name)
    (root / 'ImageSets' / 'Segmentation' / 'train.txt').write_text('\n'.join(names[:8]) + '\n')
    (root / 'ImageSets' / 'Segmentation' / 'val.txt').write_text('\n'.join(names[8:]) + '\n')
    classes = root / 'classes.txt'
    classes.write_text(''.join(f'{n} {r} {g} {b}\n' for n, (r, g, b) in CLASSES))
    return root, classes


def run(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def _train_flags(root, classes, out):
    return ['train', '--data-dir', str(root), '--classes', str(classes), '--no-pretrained', '--ctx', 'cpu',
            '--crop', '64x96', '--batch-size', '2', '--epochs', '2', '--workers', '0', '--lr', '0.05',
            '--momentum', '0.9', '--no-progress', '--out', str(out), '--ignore-boundary']


@pytest.fixture(scope='module')
def trained(own, tmp_path_factory):
    root, classes = own
    out = tmp_path_factory.mktemp('runs') / 'own'
    code, stdout, stderr = run(_train_flags(root, classes, out))
    assert code == 0, stderr
    return out


def test_train_evaluate_predict_with_own_classes(own, trained, tmp_path):
    root, classes = own
    with open(trained / 'model.json') as f:
        info = json.load(f)
    assert info['num_classes'] == 4 and ClassList.from_dict(info['classes']) == read_classes(str(classes))
    with open(trained / 'history.json') as f:
        history = json.load(f)
    assert len(history['epochs'][-1]['val_iou']) == 4 and history['classes']['names'] == [n for n, _ in CLASSES]
    # evaluate: the classes come from model.json; per-class rows carry the names
    code, stdout, stderr = run(['evaluate', '--params', str(trained / 'model.params'), '--data-dir', str(root),
                                '--json', str(tmp_path / 'e.json'), '--no-progress'])
    assert code == 0, stderr
    rows = [line.split()[0] for line in stdout.splitlines()[3:7]]
    assert rows == ['sky', 'tree', 'house', 'car']
    with open(tmp_path / 'e.json') as f:
        assert json.load(f)['classes'] == ['sky', 'tree', 'house', 'car']
    # predict: the label PNG's palette and the legend are the classes' own
    pred = tmp_path / 'pred'
    code, stdout, stderr = run(['predict', str(root / 'JPEGImages' / 'img08.png'), '--params',
                                str(trained / 'model.params'), '--out', str(pred), '--no-progress'])
    assert code == 0, stderr
    label = Image.open(pred / 'img08.png')
    assert label.mode == 'P' and label.getpalette()[:12] == [v for _, c in CLASSES for v in c]
    assert set(np.unique(np.asarray(label))) <= {0, 1, 2, 3}
    assert any(name in stdout for name in ('sky', 'tree', 'house', 'car'))


def test_a_label_value_that_is_no_class_is_an_error_unless_asked(own, tmp_path):
    root, classes = own
    bad = tmp_path / 'bad'
    import shutil
    shutil.copytree(root, bad)
    mask = Image.open(bad / 'SegmentationClass' / 'img00.png')
    values = np.asarray(mask).copy()
    values[10, 10] = 7                           # 4 classes: 7 is none of them
    fixed = Image.fromarray(values, mode='P')
    fixed.putpalette(mask.getpalette())
    fixed.save(bad / 'SegmentationClass' / 'img00.png')
    code, _, stderr = run(_train_flags(bad, classes, tmp_path / 'run') + ['--epochs', '1'])
    lines = stderr.strip().splitlines()
    assert code == 2 and len(lines) == 1 and 'img00.png: label value 7 is no class' in lines[0]
    assert not (tmp_path / 'run').exists()
    code, _, stderr = run(_train_flags(bad, classes, tmp_path / 'run') + ['--epochs', '1', '--unknown-label',
                                                                           'background'])
    assert code == 0, stderr


def test_fine_tune_a_21_class_model_into_4_classes(tmp_path, capsys):
    mx.random.seed(0)
    source = build_fcn(21, 'fcn32s', pretrained=False, fast_upsampling=True)
    source(mx.nd.zeros((1, 3, 64, 96)))
    source.save_parameters(str(tmp_path / 'voc.params'))
    net = build_fcn(4, 'fcn32s', pretrained=False, fast_upsampling=True)
    net(mx.nd.zeros((1, 3, 64, 96)))
    message = init_from(net, str(tmp_path / 'voc.params'))
    net.save_parameters(str(tmp_path / 'mine.params'))
    src, mine = mx.nd.load(str(tmp_path / 'voc.params')), mx.nd.load(str(tmp_path / 'mine.params'))
    copied = [k for k in mine if k in src and src[k].shape == mine[k].shape]
    assert len(copied) == len(mine) - 4 and message.startswith(f'init from {tmp_path / "voc.params"}: copied '
                                                                f'{len(copied)} of {len(mine)} parameter arrays')
    for k in copied:                                               # the backbone: bit-identical
        assert (src[k] == mine[k]).min().asscalar() == 1, k
    fresh = sorted(k for k in mine if k not in copied)
    assert fresh == ['11.bias', '11.weight', '12.bias', '12.weight']
    assert message.endswith('initialised anew (another class count): the 1x1 class-score convolution (layer 11), '
                            'the bilinear upsampling transposed convolution (layer 12)')  # layers, not indices
    np.testing.assert_array_equal(mine['12.weight'].asnumpy(), bilinear_kernel(4, 4, 64).asnumpy())  # bilinear
    assert mine['11.weight'].shape == (4, 512, 1, 1) and float(mine['11.weight'].abs().sum().asscalar()) > 0


def test_fine_tune_on_the_command_line(own, trained, tmp_path):
    root, classes = own
    code, stdout, stderr = run(_train_flags(root, classes, tmp_path / 'tuned') + [
        '--epochs', '1', '--init-from', str(trained / 'model.params')])
    assert code == 0, stderr
    line = next(line for line in stdout.splitlines() if line.startswith('init from '))
    n = int(line.split(' of ')[1].split()[0])
    assert f'copied {n} of {n} parameter arrays' in line         # the same classes: every layer copied
    code, _, stderr = run(_train_flags(root, classes, tmp_path / 'x') + ['--init-from', str(tmp_path / 'none')])
    assert code == 2 and '--init-from' in stderr and 'no such file' in stderr


def test_resume_keeps_the_runs_classes_when_the_file_is_gone(own, tmp_path):
    root, classes = own
    mine = tmp_path / 'classes.txt'
    mine.write_text(classes.read_text())
    out = tmp_path / 'run'
    code, _, stderr = run(_train_flags(root, mine, out) + ['--epochs', '1'])
    assert code == 0, stderr
    assert json.loads((out / 'model.json').read_text())['classes']['names'] == [n for n, _ in CLASSES]
    mine.unlink()                                               # the file the run was started with is gone
    code, _, stderr = run(['train', '--resume', str(out), '--epochs', '2', '--no-progress'])
    assert code == 0, stderr
    history = json.loads((out / 'history.json').read_text())
    assert len(history['epochs']) == 2 and history['classes']['names'] == [n for n, _ in CLASSES]


def test_the_small_preset_works_first_time_on_a_few_images_on_a_cpu(own, tmp_path, monkeypatch):
    """The chapter's GPU recipe on 8 small images: every problem in one line, nothing made; --preset small:
    trains offline (no backbone fetched), with the largest crop the images hold and a batch they fill."""
    import d2lseg.fcn.model
    root, classes = own
    monkeypatch.setenv('MXNET_HOME', str(tmp_path / 'mxnet-home'))  # nothing cached
    code, _, stderr = run(['train', '--data-dir', str(root), '--classes', str(classes), '--ctx', 'cpu', '--out',
                           str(tmp_path / 'x')])
    lines = stderr.strip().splitlines()
    assert code == 2 and len(lines) == 1 and not (tmp_path / 'x').exists()
    assert '3 problems: (1) --crop 320x480: all 8 images of the train split are smaller (a crop every one holds: ' \
           '--crop 96x128); (2) --batch-size 32: larger than the 8 training images; use --batch-size 8 or less; ' \
           '(3) --crop 320x480: all 4 images of the val split are smaller' in lines[0]
    assert 'download the ImageNet backbone' in lines[0] and '--preset small' in lines[0]
    fetched = []
    real = d2lseg.fcn.model.load_backbone
    monkeypatch.setattr(d2lseg.fcn.model, 'load_backbone', lambda pretrained, *a, **k: fetched.append(pretrained) or
                        real(pretrained, *a, **k))
    out = tmp_path / 'small'
    code, stdout, stderr = run(['train', '--data-dir', str(root), '--classes', str(classes), '--preset', 'small',
                                '--epochs', '2', '--ctx', 'cpu', '--workers', '0', '--no-progress', '--out', str(out)])
    assert code == 0, stderr
    assert fetched == [False] and '--preset small: crop 96x128, the largest (up to 256x256)' in stderr
    history = json.loads((out / 'history.json').read_text())
    r = history['recipe']
    assert (r['pretrained'], r['crop'], r['batch_size'], r['lr'], r['momentum'], r['augment']) == \
        (False, [96, 128], 4, 0.05, 0.9, True)
    assert history['provenance'] == {'init_from': None, 'backbone': 'random (--no-pretrained)'}
    assert history['val_metrics'].startswith('val_*: 96x128 crops of the validation images')
    assert 'val mIoU' in stdout and '(96x128 crops)' in stdout and 'the figure to report: d2lseg evaluate' in stdout
    assert '.d2lseg.lock' not in os.listdir(out)  # a clean end leaves no lock file


def test_init_from_fetches_no_backbone_and_predict_knows_it_was_fine_tuned(own, trained, tmp_path, monkeypatch):
    import d2lseg.fcn.model
    from d2lseg.command.photos import training_caveat
    root, classes = own
    fetched = []
    real = d2lseg.fcn.model.load_backbone
    monkeypatch.setattr(d2lseg.fcn.model, 'load_backbone', lambda pretrained, *a, **k: fetched.append(pretrained) or
                        real(pretrained, *a, **k))
    flags = [f for f in _train_flags(root, classes, tmp_path / 'tuned') if f != '--no-pretrained']  # pretrained on
    code, stdout, stderr = run(flags + ['--epochs', '1', '--init-from', str(trained / 'model.params')])
    assert code == 0, stderr
    assert fetched == [False]  # every backbone array comes from --init-from: nothing downloaded
    history = json.loads((tmp_path / 'tuned' / 'history.json').read_text())
    assert history['provenance']['init_from'] == str(trained / 'model.params')
    assert history['provenance']['backbone'].startswith(f"the trained model {trained / 'model.params'}")
    assert training_caveat(str(trained / 'model.params')).endswith('expect rough results')  # random start: said
    assert training_caveat(str(tmp_path / 'tuned' / 'model.params')) is None  # fine-tuned: not "random backbone"


def test_prepare_leaves_the_given_recipe_and_the_run_takes_the_classes_files_count(own):
    """engine.prepare works on a copy: the Recipe given keeps num_classes 21, while the run (its network, its
    ``run.recipe`` and the history fit writes from it) has the classes file's 4."""
    import dataclasses
    import mxnet as mx
    from d2lseg.training.config import Recipe
    from d2lseg.training.engine import fit, prepare
    root, classes = own
    recipe = Recipe(data_dir=str(root), classes=str(classes), pretrained=False, crop=(64, 96), batch_size=2, epochs=1,
                    workers=0, ctx='cpu', lr=0.05)
    before = dataclasses.asdict(recipe)
    run = prepare(recipe)
    assert dataclasses.asdict(recipe) == before and recipe.num_classes == 21
    assert run.recipe.num_classes == 4 and run.recipe == dataclasses.replace(recipe, num_classes=4)
    assert run.net(mx.nd.zeros((1, 3, 64, 96))).shape == (1, 4, 64, 96)
    history = fit(recipe, run=run, progress=False)
    assert history['recipe']['num_classes'] == 4 and len(history['epochs'][0]['val_iou']) == 4
    assert dataclasses.asdict(recipe) == before


def test_run_training_leaves_the_callers_recipe_as_it_was(own, tmp_path):
    """run_training resolves the device and takes the class count from the classes file on a copy: the Recipe a
    notebook or script holds is not changed (ctx stays 'auto', num_classes 21 although the file has 4)."""
    import dataclasses
    from d2lseg.command.app import run_training
    from d2lseg.training.config import Recipe
    root, classes = own
    recipe = Recipe(data_dir=str(root), classes=str(classes), pretrained=False, crop=(64, 96), batch_size=2, epochs=1,
                    workers=0, lr=0.05)
    before = dataclasses.replace(recipe)
    history = run_training(recipe, str(tmp_path / 'run'), progress=False)
    assert recipe == before and (recipe.ctx, recipe.num_classes) == ('auto', 21)
    assert history['recipe']['num_classes'] == 4 and history['recipe']['ctx'] in ('cpu', 'gpu')
