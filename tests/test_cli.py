"""The ``d2lseg`` command end to end on the tiny synthetic set: train, resume, evaluate, predict, flag errors."""
import io
import json
import os
import shutil
import subprocess
import sys

import mxnet as mx
import numpy as np
import pytest
from PIL import Image

from d2lseg.training import checkpoint
from d2lseg.command.cli import main
from d2lseg.fcn.model import build_fcn
from d2lseg.core.outputs import MANIFEST
from d2lseg.data.palette import VOC_CLASSES
from d2lseg.data.voc import VOC_SUBDIR, read_split
from recipes import copy_of, run_main, tiny_train_argv as tiny_flags

EPOCH_FIGURES = {'epoch', 'loss', 'train_acc', 'test_acc', 'val_miou', 'val_mean_acc', 'val_fwiou', 'val_iou',
                 'lr', 'train_time', 'time', 'img_s'}


@pytest.fixture(scope='module')
def trained(tiny_run, tmp_path_factory):
    """A copy of the session's tiny run (2 epochs) and what its training printed."""
    return copy_of(tiny_run[0], tmp_path_factory.mktemp('cli')), tiny_run[1]


def test_train_writes_history_curves_checkpoints_and_params(trained):
    out, stdout = trained
    assert 'training on [cpu(0)]: 4 train / 4 val images, crop 64x96' in stdout
    assert stdout.count('\nepoch ') + stdout.startswith('epoch ') == 2
    assert 'final val mIoU' in stdout and '(untrained network: ' in stdout
    with open(os.path.join(out, 'history.json')) as f:
        history = json.load(f)
    assert [r['epoch'] for r in history['epochs']] == [1, 2]
    for r in history['epochs']:
        assert EPOCH_FIGURES <= set(r) and len(r['val_iou']) == 21
        assert r['time'] >= r['train_time'] > 0 and r['img_s'] > 0
    assert history['recipe']['crop'] == [64, 96] and history['recipe']['pretrained'] is False
    assert history['recipe']['seed'] == 0 and history['recipe']['epochs'] == 2
    env = history['environment']  # what produced it: CPU, oneDNN's ISA, threads, kernels, versions
    assert {'d2lseg', 'mxnet', 'numpy', 'python'} <= set(env['versions'])
    assert env['cpu'] and env['onednn_isa'] and env['mxnet_threads'] == int(os.environ['OMP_NUM_THREADS'])
    assert env['native_kernels']['used'] in (True, False)
    assert f"machine: {env['cpu']}; oneDNN {env['onednn_isa']}; {env['mxnet_threads']} thread(s)" in stdout
    assert set(history['untrained']) == {'pixel_acc', 'mean_acc', 'miou', 'fwiou'}
    with open(os.path.join(out, 'curves.png'), 'rb') as f:
        assert f.read(8) == b'\x89PNG\r\n\x1a\n'
    meta = checkpoint.load_meta(out)
    assert meta['epoch'] == 2 and os.path.isfile(os.path.join(out, meta['params']))
    net = build_fcn(21, 'fcn32s', pretrained=False)
    net.load_parameters(os.path.join(out, 'model.params'))
    assert net(mx.nd.zeros((1, 3, 64, 96))).shape == (1, 21, 64, 96)
    # the best epoch by val mIoU: named in the history, its parameters in best.params (= that checkpoint)
    mious = [r['val_miou'] for r in history['epochs']]
    best = history['best']
    assert best['epoch'] == 1 + mious.index(max(mious)) and best['val_miou'] == max(mious)
    kept = mx.nd.load(os.path.join(out, f"ckpt-epoch{best['epoch']:04d}.params"))
    for k, v in mx.nd.load(os.path.join(out, 'best.params')).items():
        assert (v == kept[k]).min().asscalar() == 1, k
    # train.log: what was printed, epoch lines and the final line included
    with open(os.path.join(out, 'train.log')) as f:
        log = f.read()
    assert log.count('\nepoch ') == 2 and 'final val mIoU' in log and 'machine: ' in log


@pytest.mark.skipif(mx.context.num_gpus() > 0, reason='a GPU is visible: --ctx auto trains on it, without a note')
def test_the_device_note_of_ctx_auto_is_in_the_log(data_root, tmp_path):
    out = str(tmp_path / 'run')
    flags = tiny_flags(data_root, out, epochs=1)
    flags[flags.index('--ctx') + 1] = 'auto'
    code, _, stderr = run_main(flags)
    assert code == 0, stderr
    assert 'no GPU visible to MXNet: training on cpu' in stderr.splitlines()[0]
    with open(os.path.join(out, 'train.log')) as f:
        assert f.readline().strip() == 'no GPU visible to MXNet: training on cpu'


def test_log_interval_and_the_log_file_keep_batch_lines_and_errors(data_root, tmp_path):
    out = str(tmp_path / 'run')
    code, stdout, stderr = run_main(tiny_flags(data_root, out, epochs=1) + ['--log-interval', '1'])
    assert code == 0, stderr
    batch_lines = [line for line in stdout.splitlines() if ', batch ' in line]
    assert [line.split(',')[1].strip() for line in batch_lines] == ['batch 1/2', 'batch 2/2']
    with open(os.path.join(out, 'train.log')) as f:
        log = f.read().splitlines()
    assert [line for line in log if ', batch ' in line] == batch_lines
    code, _, stderr = run_main(['train', '--resume', out, '--epochs', '2', '--lr', '1e9', '--no-progress'])
    with open(os.path.join(out, 'train.log')) as f:
        log = f.read()
    assert 'ignoring --lr' in log and log.count('training on [cpu(0)]') == 2   # appended, warnings kept


def test_the_synthetic_set_is_never_taken_for_voc_nor_voc_for_it(data_root, voc_dir, tmp_path):
    out = str(tmp_path / 'run')
    flags = tiny_flags(data_root, out, epochs=2)
    flags.remove('--synthetic')
    code, _, stderr = run_main(flags)
    lines = stderr.strip().splitlines()
    assert code == 2 and len(lines) == 1 and 'holds the synthetic set' in lines[0] and '--synthetic' in lines[0]
    real = tmp_path / 'real'
    shutil.copytree(voc_dir, real / VOC_SUBDIR)                 # the same tree without the synthetic marker
    code, _, stderr = run_main(tiny_flags(str(real), out, epochs=2))
    assert code == 2 and 'not the synthetic set' in stderr and not os.path.exists(out)
    code, _, stderr = run_main(['reproduce', '--data-dir', data_root, '--out', out, '--no-pretrained'])
    assert code == 2 and 'holds the synthetic set' in stderr and not os.path.exists(out)


def test_resume_continues_to_the_same_parameters(trained, data_root, tmp_path):
    out_full, _ = trained
    out = str(tmp_path / 'half')
    assert run_main(tiny_flags(data_root, out, epochs=1))[0] == 0
    assert checkpoint.load_meta(out)['epoch'] == 1
    code, stdout, stderr = run_main(['train', '--resume', out, '--epochs', '2', '--ctx', 'cpu', '--workers', '0',
                                     '--no-progress'])
    assert code == 0, stderr
    assert stdout.count('epoch 2,') == 1 and 'epoch 1,' not in stdout
    with open(os.path.join(out, 'history.json')) as f:
        resumed = json.load(f)
    assert [r['epoch'] for r in resumed['epochs']] == [1, 2] and resumed['recipe']['epochs'] == 2
    # constant learning rate: 1 epoch + 1 resumed epoch == 2 epochs straight
    a, b = mx.nd.load(os.path.join(out, 'model.params')), mx.nd.load(os.path.join(out_full, 'model.params'))
    assert a.keys() == b.keys()
    assert max(float(np.abs(a[k].asnumpy() - b[k].asnumpy()).max()) for k in a) <= 1e-6


@pytest.mark.parametrize('protocol', ['chapter', 'published'])
def test_evaluate_prints_metrics_table_and_writes_json(trained, data_root, tmp_path, protocol):
    out, _ = trained
    path, plot = str(tmp_path / f'{protocol}.json'), str(tmp_path / 'confusion.png')
    argv = ['evaluate', '--params', os.path.join(out, 'model.params'), '--data-dir', data_root, '--crop', '64x96',
            '--json', path, '--plot', plot, '--no-progress'] + (['--chapter-protocol'] if protocol == 'chapter' else [])
    code, stdout, stderr = run_main(argv)
    assert code == 0, stderr
    header, first = stdout.splitlines()[:2]
    assert header.startswith(f'protocol: {protocol}: ') and (
        'void border ignored' if protocol == 'published' else 'void border counted as background') in header
    for name in ('pixel acc', 'mean acc', 'mIoU', 'f.w. IoU'):
        assert name in first
    for cls in VOC_CLASSES:
        assert any(line.split()[0] == cls.split()[0] for line in stdout.splitlines()[2:]), cls
    with open(path) as f:
        result = json.load(f)
    assert result['protocol'] == protocol and result['images'] == 8 and result['classes'] == VOC_CLASSES
    assert result['ignore_boundary'] == (protocol == 'published')
    for key in ('pixel_acc', 'mean_acc', 'miou', 'fwiou'):
        assert 0 <= result[key] <= 1
        assert f'{result[key]:.4f}' in first
    assert len(result['iou']) == 21
    mat = np.array(result['confusion'])
    assert mat.shape == (21, 21) and result['pixel_acc'] == pytest.approx(np.trace(mat) / mat.sum())
    voc_dir = os.path.join(data_root, VOC_SUBDIR)
    pixels = sum(np.prod(Image.open(os.path.join(voc_dir, 'SegmentationClass', n + '.png')).size)
                 for n in read_split(voc_dir, is_train=False))
    if protocol == 'chapter':
        assert mat.sum() == 8 * 64 * 96                   # the top-left crops, void pixels counted
    else:
        assert 0.8 * pixels < mat.sum() < pixels          # whole images, the void border left out
    assert Image.open(plot).size[0] > 300                 # the confusion matrix figure


def test_predict_writes_palette_pngs_overlays_a_legend_and_what_it_found(trained, voc_dir, tmp_path):
    out, _ = trained
    names = sorted(os.listdir(os.path.join(voc_dir, 'JPEGImages')))[:2]
    images = [os.path.join(voc_dir, 'JPEGImages', n) for n in names]
    bad = tmp_path / 'broken.jpg'
    bad.write_bytes(b'not an image at all')
    pred_dir, report = str(tmp_path / 'pred'), str(tmp_path / 'pred' / 'found.json')   # --json into --out, new
    code, stdout, stderr = run_main(['predict', images[0], str(bad), images[1], '--params',
                                     os.path.join(out, 'model.params'), '--out', pred_dir, '--json', report,
                                     '--no-progress'])
    assert code == 1
    errors = [line for line in (stdout + stderr).splitlines() if 'error' in line]
    assert len(errors) == 1 and str(bad) in errors[0]
    warnings = [line for line in stderr.splitlines() if 'warning' in line]  # the model trained on synthetic shapes
    assert len(warnings) == 1 and 'synthetic' in warnings[0] and 'history.json' in warnings[0]
    with open(report) as f:
        found = json.load(f)['images']
    assert [r['image'] for r in found] == [images[0], str(bad), images[1]] and 'error' in found[1]
    for path, record in zip(images, (found[0], found[2])):
        stem = os.path.splitext(os.path.basename(path))[0]
        h, w = np.asarray(Image.open(path)).shape[:2]
        label = Image.open(os.path.join(pred_dir, f'{stem}.png'))
        assert label.mode == 'P' and label.size == (w, h)               # class indices, VOC's palette
        assert label.getpalette()[:6] == [0, 0, 0, 128, 0, 0]
        assert Image.open(os.path.join(pred_dir, f'{stem}_overlay.png')).size == (w, h)
        idx = np.asarray(label)
        shares = {VOC_CLASSES[c]: np.mean(idx == c) for c in np.unique(idx)}
        assert record['classes'] == pytest.approx(shares) and record['size'] == [h, w]
        line = next(line for line in stdout.splitlines() if line.startswith(path + ':'))
        top = max(shares, key=shares.get)
        assert f'{top} {shares[top]:.1%}' in line
    assert sorted(os.listdir(pred_dir)) == sorted([f'{os.path.splitext(n)[0]}{k}.png' for n in names
                                                   for k in ('', '_overlay')] + ['legend.png', 'found.json', MANIFEST])


def test_predict_takes_folders_and_names_any_crop(trained, voc_dir, tmp_path):
    out, _ = trained
    photos = tmp_path / 'photos'
    (photos / 'more').mkdir(parents=True)
    names = sorted(os.listdir(os.path.join(voc_dir, 'JPEGImages')))[:2]
    shutil.copy(os.path.join(voc_dir, 'JPEGImages', names[0]), photos / 'a.jpg')
    shutil.copy(os.path.join(voc_dir, 'JPEGImages', names[1]), photos / 'more' / 'b.jpg')
    img = np.random.default_rng(0).integers(0, 256, (100, 70, 3), dtype=np.uint8)
    Image.fromarray(img).save(photos / 'more' / 'c.png')          # 70x100: sides not multiples of 32
    (photos / 'notes.txt').write_text('not an image')
    pred = tmp_path / 'pred'
    code, _, stderr = run_main(['predict', str(photos), '--params', os.path.join(out, 'model.params'), '--out',
                                str(pred), '--crop'])  # the old spelling of the switch: one line naming the new one
    assert code == 2 and stderr.count('\n') == 1 and '--crop is now --chapter-crop' in stderr and not pred.exists()
    code, stdout, stderr = run_main(['predict', str(photos), '--params', os.path.join(out, 'model.params'),
                                     '--out', str(pred), '--chapter-crop', '--no-progress'])
    assert code == 0, stderr
    assert sorted(os.listdir(pred)) == [MANIFEST, 'a.png', 'a_overlay.png', 'b.png', 'b_overlay.png', 'c.png',
                                        'c_overlay.png', 'legend.png']  # the manifest: what predict wrote there
    notice = [line for line in stdout.splitlines() if 'cropped' in line]
    assert len(notice) == 1 and '70x100 cropped to its top-left 64x96' in notice[0]
    assert Image.open(pred / 'c.png').size == (64, 96)
    code, _, stderr = run_main(['predict', str(photos / 'more'), '--params', os.path.join(out, 'model.params'),
                                '--out', str(photos / 'more'), '--no-progress'])       # outputs beside the inputs
    assert code == 2 and 'holds images being predicted' in stderr
    assert sorted(os.listdir(photos / 'more')) == ['b.jpg', 'c.png']
    empty = tmp_path / 'empty'
    empty.mkdir()
    code, _, stderr = run_main(['predict', str(empty), '--params', os.path.join(out, 'model.params'),
                                '--out', str(pred), '--no-progress'])
    assert code == 2 and len(stderr.strip().splitlines()) == 1 and 'no image files' in stderr


BAD_FLAGS = [
    (['--crop', '100x96'], '--crop 100x96'),
    (['--crop', 'big'], '--crop'),
    (['--batch-size', '0'], '--batch-size'),
    (['--batch-size', '-4'], '--batch-size'),
    (['--epochs', '0'], '--epochs'),
    (['--variant', 'fcn4s'], '--variant fcn4s'),
    (['--ctx', 'gpu'], '--ctx gpu'),
    (['--ctx', 'tpu'], '--ctx tpu'),
]


@pytest.mark.parametrize('flags, named', BAD_FLAGS, ids=[' '.join(f) for f, _ in BAD_FLAGS])
def test_bad_flags_one_line_exit_2_nothing_written(data_root, tmp_path, flags, named):
    if flags == ['--ctx', 'gpu'] and mx.context.num_gpus():
        pytest.skip('this machine has a GPU')
    out = str(tmp_path / 'never')
    code, stdout, stderr = run_main(tiny_flags(data_root, out, epochs=2) + flags)
    assert code == 2
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and named in lines[0] and 'error' in lines[0], stderr
    assert not os.path.exists(out)


def test_missing_data_dir_one_line_exit_2(tmp_path):
    out, missing = str(tmp_path / 'never'), str(tmp_path / 'nowhere')
    flags = tiny_flags(missing, out, epochs=2)
    flags.remove('--synthetic')
    code, stdout, stderr = run_main(flags)
    assert code == 2
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and missing in lines[0] and '--synthetic' in lines[0]
    assert not os.path.exists(out) and not os.path.exists(missing)


def test_console_script_exit_codes(data_root, tmp_path, trained):
    exe = os.path.join(os.path.dirname(sys.executable), 'd2lseg')
    out = str(tmp_path / 'never')
    p = subprocess.run([exe] + tiny_flags(data_root, out, epochs=2) + ['--crop', '96x100'], capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 2
    assert p.stderr.strip().splitlines() == [p.stderr.strip()] and '--crop 96x100' in p.stderr
    assert not os.path.exists(out)
    p = subprocess.run([exe, 'compare', os.path.join(trained[0], 'history.json'),
                        '--against', os.path.join(trained[0], 'history.json')], capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, p.stderr
    assert 'verdict: within the band' in p.stdout


def test_bfloat16_evaluate_and_predict_agree_with_float32(trained, data_root, voc_dir, tmp_path):
    from d2lseg.deploy.quantization import bfloat16_unavailable
    why = bfloat16_unavailable()  # oneDNN needs AVX-512
    if why:
        pytest.skip(f'no bfloat16 here (oneDNN here has no AVX-512): {why}')
    out, _ = trained
    params = os.path.join(out, 'model.params')
    results = {}
    for dtype in ('float32', 'bfloat16'):
        path = str(tmp_path / f'{dtype}.json')
        code, _, stderr = run_main(['evaluate', '--params', params, '--data-dir', data_root, '--json', path,
                                    '--dtype', dtype, '--no-progress'])
        assert code == 0, stderr
        with open(path) as f:
            results[dtype] = json.load(f)
        assert results[dtype]['dtype'] == dtype
    # stated thresholds: within 1 point of pixel accuracy and 2 points of mIoU on the trained tiny run
    assert abs(results['bfloat16']['pixel_acc'] - results['float32']['pixel_acc']) <= 0.01
    assert abs(results['bfloat16']['miou'] - results['float32']['miou']) <= 0.02
    names = sorted(os.listdir(os.path.join(voc_dir, 'JPEGImages')))[:3]
    images = [os.path.join(voc_dir, 'JPEGImages', n) for n in names]
    labels = {}
    for dtype in ('float32', 'bfloat16'):
        code, _, stderr = run_main(['predict', *images, '--params', params, '--out', str(tmp_path / dtype),
                                    '--dtype', dtype, '--no-progress'])
        assert code == 0, stderr
        labels[dtype] = np.concatenate([np.asarray(Image.open(tmp_path / dtype / f'{os.path.splitext(n)[0]}.png'))
                                        .reshape(-1) for n in names])
    agree = (labels['float32'] == labels['bfloat16']).mean()
    assert agree >= 0.98, agree  # stated threshold: 98 % of pixels get the float32 class


@pytest.mark.parametrize('case', ['avx2', 'int8'])
def test_bfloat16_refused_with_one_line_and_nothing_written(trained, voc_dir, tmp_path, case):
    out, _ = trained
    image = os.path.join(voc_dir, 'JPEGImages', sorted(os.listdir(os.path.join(voc_dir, 'JPEGImages')))[0])
    pred_dir = str(tmp_path / 'pred')
    env = dict(os.environ, DNNL_MAX_CPU_ISA='AVX2') if case == 'avx2' else dict(os.environ)
    p = subprocess.run([sys.executable, '-m', 'd2lseg', 'predict', image, '--params', os.path.join(out, 'model.params'),
                        '--out', pred_dir, '--dtype', 'bfloat16'] + (['--int8'] if case == 'int8' else []),
                       capture_output=True, text=True, timeout=300, env=env)
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and '--dtype bfloat16' in lines[0] and lines[0].startswith('d2lseg predict: error:'), lines
    assert ('AVX-512' in lines[0]) if case == 'avx2' else ('--int8' in lines[0])
    assert not os.path.exists(pred_dir)


def test_every_flag_has_help_and_there_is_a_version(capsys):
    import argparse
    from d2lseg import __version__
    from d2lseg.command.cli import build_parser
    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    blank = [f'{name} {a.option_strings or a.dest}' for name, sub in subparsers.choices.items()
             for a in sub._actions if not a.help and not isinstance(a, argparse._HelpAction)]
    assert blank == []
    switches = (argparse._StoreTrueAction, argparse._StoreFalseAction, argparse._HelpAction)
    no_default = [f'{name} {a.option_strings}' for name, sub in subparsers.choices.items() for a in sub._actions
                  if a.option_strings and not a.required and not isinstance(a, switches) and 'default' not in a.help
                  and a.help != argparse.SUPPRESS]  # a renamed flag is hidden: it only names its new spelling
    assert no_default == []                          # every flag's help names its default
    assert all(sub.description for sub in subparsers.choices.values())
    with pytest.raises(SystemExit) as exit_info:
        main(['--version'])
    assert exit_info.value.code == 0 and capsys.readouterr().out.strip() == f'd2lseg {__version__}'


def test_progress_bars_stay_out_of_pipes_and_logs(data_root, tmp_path):
    """Piped (CI, `> log`), train writes its per-epoch lines and no tqdm refreshes."""
    p = subprocess.run([os.path.join(os.path.dirname(sys.executable), 'd2lseg')]
                       + [a for a in tiny_flags(data_root, str(tmp_path / 'run'), epochs=2) if a != '--no-progress'],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert '--no-progress' not in p.args and 'epoch 2,' in p.stdout
    assert '\r' not in p.stderr and 'batch/s' not in p.stderr and 'it/s' not in p.stderr
    from d2lseg.core.progress import watched
    assert not watched(io.StringIO())


def test_evaluate_averages_scales_and_flips_on_request(trained, data_root, tmp_path):
    out, _ = trained
    params = os.path.join(out, 'model.params')
    path = str(tmp_path / 'tta.json')
    code, stdout, stderr = run_main(['evaluate', '--params', params, '--data-dir', data_root, '--json', path,
                                     '--scales', '0.75,1,1.25', '--flip', '--max-images', '2', '--no-progress'])
    assert code == 0, stderr
    with open(path) as f:
        record = json.load(f)
    assert record['scales'] == [0.75, 1.0, 1.25] and record['flip'] is True and record['images'] == 2
    assert 'scores averaged over scales 0.75, 1, 1.25 and flips' in stdout.splitlines()[0]
    code, _, stderr = run_main(['evaluate', '--params', params, '--data-dir', data_root, '--chapter-protocol',
                                '--flip', '--no-progress'])
    assert code == 2 and 'whole-image evaluation only' in stderr


def test_train_with_augmentation_and_median_frequency_class_weights(data_root, voc_dir, tmp_path):
    out = str(tmp_path / 'run')
    cache = os.path.join(voc_dir, 'd2lseg-class-weights.json')
    if os.path.exists(cache):
        os.remove(cache)
    code, stdout, stderr = run_main(tiny_flags(data_root, out, epochs=1) + ['--augment', '--class-weights', 'auto'])
    assert code == 0, stderr
    line = next(line for line in stdout.splitlines() if line.startswith('class weights (median frequency'))
    printed = [float(v) for v in line.split('): ')[1].split(', ')]
    with open(cache) as f:
        cached = next(iter(json.load(f).values()))
    assert len(printed) == 21 and printed == pytest.approx(cached, rel=1e-2) and max(cached) > 1 > min(cached)
    with open(os.path.join(out, 'history.json')) as f:
        recipe = json.load(f)['recipe']
    assert recipe['augment'] is True and recipe['class_weights'] == 'auto'
    code, stdout, _ = run_main(tiny_flags(data_root, str(tmp_path / 'again'), epochs=1) + ['--class-weights', 'auto'])
    assert code == 0 and line in stdout                   # the cached weights, the same line
    bad = tmp_path / 'w.txt'
    bad.write_text('1 2 3')
    code, _, stderr = run_main(tiny_flags(data_root, str(tmp_path / 'bad'), epochs=1) + ['--class-weights', str(bad)])
    assert code == 2 and 'needs 21 non-negative numbers' in stderr and not os.path.exists(tmp_path / 'bad')


def test_predict_and_evaluate_never_replace_a_file_without_overwrite(trained, data_root, voc_dir, tmp_path):
    """A user's own file, and an earlier predict's or evaluate's output, are refused in one line (exit 2) before
    any work; --overwrite replaces them."""
    out, _ = trained
    params = os.path.join(out, 'model.params')
    photos = tmp_path / 'photos'
    photos.mkdir()
    shutil.copy(os.path.join(voc_dir, 'JPEGImages', sorted(os.listdir(os.path.join(voc_dir, 'JPEGImages')))[0]),
                photos / 'board.jpg')
    mine = tmp_path / 'mine_out'
    mine.mkdir()
    (mine / 'board.png').write_bytes(b'my own drawing')
    code, stdout, stderr = run_main(['predict', str(photos), '--params', params, '--out', str(mine), '--no-progress'])
    assert code == 2 and stderr.count('\n') == 1 and 'board.png' in stderr and '--overwrite' in stderr
    assert (mine / 'board.png').read_bytes() == b'my own drawing' and os.listdir(mine) == ['board.png']
    pred = tmp_path / 'pred'
    predict = ['predict', str(photos), '--params', params, '--out', str(pred), '--no-progress', '--tile', '64x96']
    assert run_main(predict)[0] == 0
    first = (pred / 'board.png').read_bytes()
    code, _, stderr = run_main(predict)
    assert code == 2 and 'an earlier d2lseg predict wrote it' in stderr and '--overwrite' in stderr
    assert (pred / 'board.png').read_bytes() == first
    assert run_main(predict + ['--overwrite'])[0] == 0
    code, _, stderr = run_main(predict[:-1] + ['50x50', '--overwrite'])
    assert code == 2 and '--tile 50x50: both sides must be positive multiples of 32' in stderr
    metrics = tmp_path / 'eval.json'
    evaluate = ['evaluate', '--params', params, '--data-dir', data_root, '--json', str(metrics), '--no-progress',
                '--tile', '64x96']
    code, stdout, _ = run_main(evaluate)
    assert code == 0 and 'the figure to report for this model' in stdout
    record = json.loads(metrics.read_text())
    assert record['tile'] == [64, 96] and record['protocol'] == 'published'
    metrics.write_text('{"kept": "a multi-scale result"}')
    code, _, stderr = run_main(evaluate)
    assert code == 2 and 'an earlier d2lseg evaluate wrote it' in stderr
    assert json.loads(metrics.read_text()) == {'kept': 'a multi-scale result'}
    assert run_main(evaluate + ['--overwrite'])[0] == 0 and json.loads(metrics.read_text())['tile'] == [64, 96]


def test_keep_checkpoints_keeps_the_last_n(data_root, tmp_path):
    out = str(tmp_path / 'run')
    code, _, stderr = run_main(tiny_flags(data_root, out, epochs=3) + ['--keep-checkpoints', '1'])
    assert code == 0, stderr
    assert sorted(n for n in os.listdir(out) if n.startswith('ckpt-')) == ['ckpt-epoch0003.optimizer',
                                                                          'ckpt-epoch0003.params']
    assert '.d2lseg.lock' not in os.listdir(out)


def test_predict_names_the_synthetic_classes_stand_ins_on_its_legend(trained, voc_dir, tmp_path, monkeypatch):
    from d2lseg.command import photos
    out, _ = trained
    titles, real = [], photos.legend_figure
    monkeypatch.setattr(photos, 'legend_figure', lambda *a: titles.append(a[3]) or real(*a))
    image = os.path.join(voc_dir, 'JPEGImages', sorted(os.listdir(os.path.join(voc_dir, 'JPEGImages')))[0])
    code, _, stderr = run_main(['predict', image, '--params', os.path.join(out, 'model.params'), '--out',
                                str(tmp_path / 'p'), '--no-progress'])
    assert code == 0 and 'was trained on the synthetic shapes' in stderr
    assert titles == ['class colours (synthetic stand-ins)']
