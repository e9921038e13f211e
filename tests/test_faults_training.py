"""Training faults: runs killed mid-epoch and mid-checkpoint, bad checkpoint/params files, divergence."""
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time

import mxnet as mx
import numpy as np
import pytest

from d2lseg.training import checkpoint
from d2lseg.command.cli import main
from d2lseg.core.errors import D2lsegError
from d2lseg.fcn.model import build_fcn, load_params
from d2lseg.training.config import Recipe
from d2lseg.training.engine import prepare

pytestmark = pytest.mark.fault

EXE = os.path.join(os.path.dirname(sys.executable), 'd2lseg')
EPOCHS = 4


def train_cmd(data_root, out, *extra):
    """4 epochs of 4 steps (8 images, batch 2) at 64x96; momentum, so the trainer states must survive too."""
    return [EXE, 'train', '--data-dir', data_root, '--synthetic', '--no-pretrained', '--ctx', 'cpu',
            '--crop', '64x96', '--batch-size', '2', '--epochs', str(EPOCHS), '--max-images', '8', '--workers', '0',
            '--seed', '0', '--lr', '0.05', '--momentum', '0.9', '--no-progress', '--out', out, *extra]


def pointer_epoch(out):
    try:
        with open(os.path.join(out, checkpoint.POINTER)) as f:
            return json.load(f)['epoch']
    except (OSError, ValueError):
        return 0


def params_of(path):
    return {k: v.asnumpy() for k, v in mx.nd.load(path).items()}


def assert_same_params(a_path, b_path, atol=1e-6):
    a, b = params_of(a_path), params_of(b_path)
    assert a.keys() == b.keys()
    worst = max(float(np.abs(a[k] - b[k]).max()) for k in a)
    assert worst <= atol, f'{a_path} vs {b_path}: largest difference {worst}'


def assert_last_checkpoint_loadable(out):
    meta = checkpoint.load_meta(out)
    assert 1 <= meta['epoch'] < EPOCHS and len(meta['history']['epochs']) == meta['epoch']
    net = build_fcn(21, 'fcn32s', pretrained=False)
    load_params(net, os.path.join(out, meta['params']))
    return meta


def resume(out):
    p = subprocess.run([EXE, 'train', '--resume', out, '--ctx', 'cpu', '--workers', '0', '--no-progress'],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    with open(os.path.join(out, 'history.json')) as f:
        assert [r['epoch'] for r in json.load(f)['epochs']] == list(range(1, EPOCHS + 1))
    return p


@pytest.fixture(scope='module')
def straight(data_root, tmp_path_factory):
    """model.params of the uninterrupted run."""
    out = str(tmp_path_factory.mktemp('straight'))
    p = subprocess.run(train_cmd(data_root, out), capture_output=True, text=True, timeout=180)
    assert p.returncode == 0, p.stderr
    return os.path.join(out, 'model.params')


def test_sigkill_during_an_epoch_then_resume(data_root, tmp_path, straight):
    out = str(tmp_path / 'run')
    delay = random.Random().uniform(0.0, 1.0)
    proc = subprocess.Popen(train_cmd(data_root, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while pointer_epoch(out) < 1 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    time.sleep(delay)  # somewhere in epoch 2 (or 3)
    assert proc.poll() is None, 'the run ended before it could be killed'
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert not os.path.exists(os.path.join(out, 'model.params'))
    meta = assert_last_checkpoint_loadable(out)
    p = resume(out)
    assert f"epoch {meta['epoch'] + 1}," in p.stdout and f"epoch {meta['epoch']}," not in p.stdout
    assert_same_params(os.path.join(out, 'model.params'), straight)


def test_sigkill_during_a_checkpoint_write_then_resume(data_root, tmp_path, straight):
    out = str(tmp_path / 'run')
    proc = subprocess.Popen(train_cmd(data_root, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline, caught = time.time() + 120, None
    while proc.poll() is None and time.time() < deadline:   # the write of checkpoint 2 begins
        names = os.listdir(out) if os.path.isdir(out) else []
        caught = next((n for n in names if n.startswith('ckpt-epoch0002') and '.tmp-' in n), None)
        if caught:
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=30)
    assert caught, 'never saw the checkpoint being written'
    assert proc.returncode == -signal.SIGKILL
    meta = assert_last_checkpoint_loadable(out)
    assert meta['epoch'] in (1, 2)  # 1 unless the pointer's rename landed before the kill
    resume(out)
    assert_same_params(os.path.join(out, 'model.params'), straight)
    assert not [n for n in os.listdir(out) if '.tmp-' in n], 'half-written files of the killed run remain'
    assert checkpoint.load_meta(out)['epoch'] == EPOCHS


def run_main(argv, capsys):
    code = main(argv)
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def test_truncated_or_foreign_params_give_one_clear_error(straight, data_root, tmp_path, capsys):
    truncated = tmp_path / 'truncated.params'
    data = open(straight, 'rb').read()
    truncated.write_bytes(data[:len(data) // 2])
    foreign = tmp_path / 'foreign.params'
    dense = mx.gluon.nn.Dense(3, in_units=4)
    dense.initialize()
    dense.save_parameters(str(foreign))
    text = tmp_path / 'text.params'
    text.write_text('model weights\n')
    for path in (truncated, foreign, text):
        with pytest.raises(D2lsegError) as e:
            load_params(build_fcn(21, 'fcn32s', pretrained=False), str(path))
        assert str(e.value).startswith(f'{path}: ') and '\n' not in str(e.value)
        code, out, err = run_main(['evaluate', '--params', str(path), '--data-dir', data_root, '--crop', '64x96',
                                   '--no-progress', '--json', str(tmp_path / 'never.json')], capsys)
        assert code == 2 and out == ''
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f'd2lseg evaluate: error: {path}: ')
    assert not (tmp_path / 'never.json').exists()
    # fcn16s parameters into the chapter's fcn32s: refused, naming the file
    fcn16 = tmp_path / 'fcn16s.params'
    net16 = build_fcn(21, 'fcn16s', pretrained=False)
    net16(mx.nd.zeros((1, 3, 64, 64)))
    net16.save_parameters(str(fcn16))
    code, _, err = run_main(['evaluate', '--params', str(fcn16), '--data-dir', data_root, '--no-progress'], capsys)
    assert code == 2 and str(fcn16) in err and '--variant' in err


def test_broken_checkpoints_give_one_clear_error(straight, tmp_path, capsys):
    src = os.path.dirname(straight)
    cases = {}
    for case in ('pointer-truncated', 'pointer-foreign', 'params-missing', 'params-truncated', 'states-truncated',
                 'empty'):
        d = tmp_path / case
        shutil.copytree(src, d)
        cases[case] = d
    meta = checkpoint.load_meta(src)
    pointer = cases['pointer-truncated'] / checkpoint.POINTER
    pointer.write_text(pointer.read_text()[:40])
    (cases['pointer-foreign'] / checkpoint.POINTER).write_text(json.dumps({'epoch': 3}))
    os.remove(cases['params-missing'] / meta['params'])
    for case, name in (('params-truncated', meta['params']), ('states-truncated', meta['states'])):
        p = cases[case] / name
        p.write_bytes(p.read_bytes()[:100])
    os.remove(cases['empty'] / checkpoint.POINTER)

    expect = {'pointer-truncated': checkpoint.POINTER, 'pointer-foreign': checkpoint.POINTER,
              'params-missing': meta['params'], 'params-truncated': meta['params'],
              'states-truncated': meta['states'], 'empty': checkpoint.POINTER}
    for case, d in cases.items():
        named = os.path.join(str(d), expect[case])
        code, out, err = run_main(['train', '--resume', str(d), '--epochs', str(EPOCHS + 1), '--ctx', 'cpu',
                                   '--workers', '0', '--no-progress'], capsys)  # a resume with work to do
        assert code == 2, (case, out, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f'd2lseg train: error: {named}: '), (case, err)
    # the pointer alone is checked by load_meta; the files it names by restore()
    with pytest.raises(D2lsegError, match='not a d2lseg checkpoint pointer'):
        checkpoint.load_meta(str(cases['pointer-foreign']))
    m = checkpoint.load_meta(str(cases['states-truncated']))
    run = prepare(Recipe.from_dict(dict(m['recipe'], ctx='cpu')), data=False)
    with pytest.raises(D2lsegError, match='cannot load trainer states'):
        checkpoint.restore(str(cases['states-truncated']), m, run.net, run.trainer, run.ctx)


def test_divergence_stops_with_exit_1_and_keeps_the_checkpoint(data_root, tmp_path):
    out = str(tmp_path / 'diverge')
    cmd = train_cmd(data_root, out)
    cmd[cmd.index('--lr') + 1] = '100'   # finite through epoch 1, infinite in epoch 2 (so from 30 to 200, with
    #                                      the kernels off and under an AVX2 cap on 1 thread too)
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert p.returncode == 1
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('d2lseg train: error: ')
    assert re.search(r'became (nan|inf|-inf|NaN or infinite) in epoch 2,? (\(by )?batch \d', lines[0]), lines[0]
    assert '--lr' in lines[0]
    assert 'epoch 1, loss' in p.stdout and not os.path.exists(os.path.join(out, 'model.params'))
    meta = checkpoint.load_meta(out)
    assert meta['epoch'] == 1
    net = build_fcn(21, 'fcn32s', pretrained=False)
    load_params(net, os.path.join(out, meta['params']))
    assert all(np.isfinite(prm.data().asnumpy()).all() for prm in net.collect_params().values())
