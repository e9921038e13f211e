"""Every number that steers training is checked where it enters (classes-file colours, class weights from a
file, the cache or a checkpoint, --init-from parameters, OMP_NUM_THREADS), and the messages name the cause:
MXNet's reason instead of its C++ source position, divergence advice that looks at the inputs first."""
import json
import os
import subprocess
import sys
from types import SimpleNamespace

import mxnet as mx
import numpy as np
import pytest

from d2lseg.training import checkpoint
from d2lseg.core import startup
from d2lseg.data.classes import check_weights, read_classes, read_weights
from d2lseg.command.cli import main
from d2lseg.training.config import Recipe
from d2lseg.training.engine import divergence_advice
from d2lseg.core.errors import D2lsegError, first_line
from d2lseg.fcn.model import build_fcn, load_params

from recipes import copy_of, run_cli as run, tiny_train_argv as tiny

pytestmark = pytest.mark.fault


@pytest.fixture(scope='module')
def done(tiny_run, tmp_path_factory):
    """A copy of the session's tiny run."""
    return copy_of(tiny_run[0], tmp_path_factory.mktemp('numbers'))


@pytest.mark.parametrize('line, says', [
    ('road 1.5 0 0', 'line 2: the colour 1.5 0 0 after the name \'road\' is not three whole numbers'),
    ('road 1 2', 'line 2: the colour 1 2 after'), ('road 1 2 3 4', 'the colour 1 2 3 4'),
    ('road 0 0 -1', 'the colour 0 0 -1'), ('road 256 0 0', 'the colour 256 0 0'), ('class 2', 'the colour 2'),
    ('road 1e2 0 0', 'the colour 1e2 0 0'), ('x' * 200, 'a class name of 200 characters'),
])
def test_what_follows_a_class_name_is_exactly_its_colour(tmp_path, line, says):
    path = tmp_path / 'classes.txt'
    path.write_text(f'background\n{line}\nperson\n')
    with pytest.raises(D2lsegError, match=f'--classes {path}, ') as e:
        read_classes(str(path))
    assert says in str(e.value), str(e.value)
    path.write_text('background\npotted plant\nroad 0 0 255\nR2 D2 1 2 3\n')
    assert read_classes(str(path)).names == ('background', 'potted plant', 'road', 'R2 D2')


@pytest.mark.parametrize('values, says', [
    ([0, 0, 0], 'every weight is 0'), ([1, float('nan'), 1], 'nan'), ([1, -1e30, 1], '-1e+30'),
    ([1, float('inf'), 1], 'inf'), ([1, 1], 'needs 3 non-negative numbers'), ('1 1 1', 'a list of 3 numbers'),
    ([1, True, 1], 'every weight must be a number'),
])
def test_class_weights_are_checked_wherever_they_come_from(tmp_path, values, says):
    with pytest.raises(D2lsegError, match='^the checkpoint: class weights: ') as e:
        check_weights(values, 3, 'the checkpoint')
    assert says in str(e.value)
    if isinstance(values, list) and all(isinstance(v, float) or type(v) is int for v in values):
        path = tmp_path / 'w.txt'
        path.write_text(' '.join(map(str, values)))
        with pytest.raises(D2lsegError, match=f'--class-weights {path}: class weights: '):
            read_weights(str(path), 3)


def test_all_zero_weights_refuse_to_train(data_root, tmp_path, capsys):
    weights = tmp_path / 'w.txt'
    weights.write_text(' '.join(['0'] * 21))
    out = tmp_path / 'run'
    code, _, err = run(tiny(data_root, str(out), '--class-weights', str(weights)), capsys)
    assert code == 2 and len(err) == 1 and 'every weight is 0' in err[0] and not out.exists(), err


def test_a_crafted_weights_cache_is_computed_again(data_root, tmp_path, capsys):
    import shutil
    root = tmp_path / 'data'
    shutil.copytree(data_root, root)
    cache = root / 'VOCdevkit' / 'VOC2012' / 'd2lseg-class-weights.json'
    assert main(tiny(str(root), str(tmp_path / 'a'), '--class-weights', 'auto')) == 0
    stored = json.loads(cache.read_text())
    key = next(iter(stored))
    cache.write_text(json.dumps({key: [float('nan')] + [-1e30] * 20}))
    code, out, err = run(tiny(str(root), str(tmp_path / 'b'), '--class-weights', 'auto'), capsys)
    assert code == 0 and any('cached class weights are unusable' in line for line in err), err
    history = json.loads((tmp_path / 'b' / 'history.json').read_text())
    assert history['class_weights'] == stored[key]  # the weights computed again, not the crafted ones


def test_crafted_weights_in_a_checkpoint_are_one_line(data_root, tmp_path, capsys):
    out = tmp_path / 'run'
    weights = tmp_path / 'w.txt'
    weights.write_text(' '.join(['1'] * 21))
    assert main(tiny(data_root, str(out), '--class-weights', str(weights))) == 0
    pointer = out / checkpoint.POINTER
    meta = json.loads(pointer.read_text())
    meta['history']['class_weights'] = [float('nan')] + [1.0] * 20
    pointer.write_text(json.dumps(meta))
    code, _, err = run(['train', '--resume', str(out), '--epochs', '2', '--ctx', 'cpu', '--workers', '0',
                        '--no-progress'], capsys)
    assert code == 2 and len(err) == 1 and "checkpoint's history: class weights: weight nan" in err[0], err


def test_init_from_converts_other_float_types_and_refuses_the_rest(done, data_root, tmp_path, capsys):
    source = mx.nd.load(os.path.join(done, 'model.params'))
    for dtype, code_wanted, says in (('float16', 0, 'init from'), ('float64', 0, 'init from'),
                                     ('int32', 2, 'is int32, not floating point')):
        path = str(tmp_path / f'{dtype}.params')
        mx.nd.save(path, {k: v.astype(dtype) for k, v in source.items()})
        code, stdout, err = run(tiny(data_root, str(tmp_path / dtype), '--init-from', path), capsys)
        assert code == code_wanted and says in stdout + '\n'.join(err), (dtype, err)
        assert code == 0 or (len(err) == 1 and f'--init-from {path}' in err[0])
    nan = {k: v.copy() for k, v in source.items()}
    first = sorted(nan)[0]
    nan[first][:] = float('nan')
    path = str(tmp_path / 'nan.params')
    mx.nd.save(path, nan)
    code, _, err = run(tiny(data_root, str(tmp_path / 'nan'), '--init-from', path), capsys)
    assert code == 2 and len(err) == 1 and f'parameter {first} holds NaN' in err[0] and 'lower --lr' not in err[0]


def test_divergence_advice_looks_at_the_inputs_before_the_learning_rate(data_root, tmp_path, capsys):
    recipe = Recipe(class_weights='w.txt', init_from='big.params')
    assert 'class weights (w.txt) reach 1e+30' in divergence_advice(SimpleNamespace(class_weights=[1e30, 1]), recipe)
    assert '--init-from big.params' in divergence_advice(SimpleNamespace(class_weights=None), recipe, 3e5)
    assert divergence_advice(SimpleNamespace(class_weights=[1, 2]), recipe, 10.0) == 'lower --lr'
    weights = tmp_path / 'w.txt'
    weights.write_text(' '.join(['1e30'] + ['1'] * 20))
    code, _, err = run(tiny(data_root, str(tmp_path / 'run'), '--class-weights', str(weights), epochs=2), capsys)
    assert code == 1 and 'class weights' in err[-1] and 'reach 1e+30' in err[-1], err


def test_mxnet_errors_are_reduced_to_their_reason(done, tmp_path):
    data = open(os.path.join(done, 'model.params'), 'rb').read()
    cut = tmp_path / 'cut.params'
    cut.write_bytes(data[:len(data) // 2])
    with pytest.raises(D2lsegError) as e:
        load_params(build_fcn(21, pretrained=False), str(cut))
    assert 'Invalid NDArray file format' in str(e.value) and '.cc' not in str(e.value), str(e.value)
    error = mx.base.MXNetError('Traceback (most recent call last):\n  File "../src/ndarray/ndarray.cc", line 1860\n'
                               'MXNetError: Check failed: fi->Read(data): Invalid NDArray file format')
    assert first_line(error) == 'Invalid NDArray file format'
    assert first_line(OSError(28, 'No space left on device')) == '[Errno 28] No space left on device'


@pytest.mark.parametrize('value', ['abc', '0', '100000', '1.5', '4,2'])
def test_a_bad_omp_num_threads_is_replaced_before_mxnet_loads(value):
    code = 'import d2lseg, os, mxnet as mx; print(mx.nd.ones((2, 2)).sum().asscalar(), os.environ["OMP_NUM_THREADS"])'
    p = subprocess.run([sys.executable, '-c', code], env=dict(os.environ, OMP_NUM_THREADS=value), capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-500:]
    assert p.stdout.split() == ['4.0', str(startup.default_threads())]
    warnings = [line for line in p.stderr.splitlines() if 'OMP_NUM_THREADS' in line]
    assert len(warnings) == 1 and f"OMP_NUM_THREADS={value!r} is not a whole number" in warnings[0], p.stderr
    assert startup.checked_threads(' 3 ') == ('3', None) and startup.checked_threads(None)[1] is None


def test_a_checkpoint_with_nan_parameters_is_refused_naming_it(data_root, tmp_path, capsys):
    out = tmp_path / 'run'
    assert main(tiny(data_root, str(out))) == 0
    params = str(out / json.loads((out / checkpoint.POINTER).read_text())['params'])
    arrays = mx.nd.load(params)
    name = sorted(arrays)[0]
    arrays[name][:] = float('nan')
    mx.nd.save(params, arrays)
    code, _, err = run(['train', '--resume', str(out), '--epochs', '2', '--ctx', 'cpu', '--workers', '0',
                        '--no-progress'], capsys)
    assert code == 2 and len(err) == 1 and 'holds NaN or infinite values before training, from the checkpoint' in err[0]
    assert 'lower --lr' not in err[0]


@pytest.mark.parametrize('epoch', ['two', None, 1.5, [2]])
def test_compare_on_a_history_whose_epoch_is_not_a_number_is_one_line(done, tmp_path, capsys, epoch):
    """At d0eafc3 such a history as --against ended in a traceback (TypeError: '>' not supported...), and as the
    history compared a misleading line ("epoch 2 missing"): now one line naming the record and the field."""
    history = json.loads(open(os.path.join(done, 'history.json'), encoding='utf-8').read())
    for record in history['epochs'][-1:]:
        record['epoch'] = epoch
    path = tmp_path / 'history.json'
    path.write_text(json.dumps(history))
    original = os.path.join(done, 'history.json')  # the same recipe: compared epoch by epoch
    for argv in (['compare', str(path), '--against', original], ['compare', original, '--against', str(path)]):
        code, out, err = run(argv, capsys)
        says = f'{path}: record {len(history["epochs"])}: "epoch" must be a whole'
        assert code == 2 and len(err) == 1 and says in err[0], err
        assert 'Traceback' not in out + ''.join(err)


def test_an_unloadable_kernel_library_is_named_by_its_reason(monkeypatch):
    """The warning for a kernel library MXNet cannot load states MXNet's reason, not its source position."""
    from d2lseg.native import library
    monkeypatch.setenv('D2LSEG_NATIVE', '1')
    monkeypatch.setattr(library, '_state', {})
    monkeypatch.setattr(library, 'build', lambda path: path)

    def refuse(path, verbose=True):
        raise mx.base.MXNetError('Traceback (most recent call last):\n  File "../src/initialize.cc", line 168\n'
                                 'MXNetError: Check failed: lib: Unable to load library: undefined symbol: d2lseg_x')
    monkeypatch.setattr(library.mx.library, 'load', refuse)
    with pytest.warns(RuntimeWarning) as caught:
        assert library.load() is False
    message = next(str(w.message) for w in caught if w.category is RuntimeWarning)
    assert 'Unable to load library: undefined symbol: d2lseg_x' in message and '.cc' not in message, message
    assert '\n' not in message and 'using MXNet operators' in message
