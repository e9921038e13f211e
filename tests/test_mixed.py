"""bfloat16 training (``--dtype bfloat16``, ``d2lseg.deploy.mixed``): float32 master weights and gradients, bfloat16
arithmetic in the body, everything the float32 path has (resume, contexts, class weights, augmentation, own
classes, FCN-16s/8s), refused in one line where it cannot run.

The bfloat16 tests are skipped, with the reason, where oneDNN has no bfloat16 (below AVX-512, e.g. under
DNNL_MAX_CPU_ISA=AVX2); the refusals are tested everywhere."""
import os
import subprocess
import sys

import mxnet as mx
import numpy as np
import pytest

from d2lseg.training import checkpoint
from d2lseg.training.callbacks import Checkpointer
from d2lseg.training.engine import fit, prepare, resume, train_step
from d2lseg.core.errors import D2lsegError
from d2lseg.deploy.mixed import check_dtype, default_layout, training_net
from d2lseg.fcn.model import build_fcn, load_params
from recipes import needs_bf16, run_cli, same_params, tiny_recipe, tiny_train_argv, trainable


def _first_batch(run):
    return next(iter(run.train_iter))


def _one_step(recipe):
    """(run, its StepResult) after one step from the seeded initialisation."""
    run = prepare(recipe)
    return run, train_step(run, _first_batch(run))


def _bf16_start_and_step(recipe):
    """(run, its parameters before the step, StepResult) of a bfloat16 recipe (initialised by ``prepare``)."""
    run = prepare(recipe)
    before = trainable(run.net)
    return run, before, train_step(run, _first_batch(run))


@needs_bf16
def test_a_bfloat16_step_keeps_float32_weights_and_gradients_and_follows_float32(data_root):
    r32, s32 = _one_step(tiny_recipe(data_root))
    r16, fresh, s16 = _bf16_start_and_step(tiny_recipe(data_root, dtype='bfloat16'))
    assert r16.train_net is not r16.net and r32.train_net is r32.net
    params = list(r16.net.collect_params().values())
    assert all(np.dtype(p.dtype) == np.float32 for p in params)
    assert all(np.dtype(p.grad().dtype) == np.float32 for p in params if p.grad_req != 'null')
    # the same seeded start: one step's loss and the updated weights close to float32's, not equal
    assert s16.loss_sum == pytest.approx(s32.loss_sum, rel=0.01) and s16.loss_sum != s32.loss_sum
    after32, after16 = trainable(r32.net), trainable(r16.net)
    diffs = [float(np.abs(a - b).max()) for a, b in zip(after32, after16)]
    assert 0 < max(diffs) < 0.05
    # BatchNorm running statistics moved (updated through the bfloat16 graph), as in float32
    names = list(r16.net.collect_params())
    # (all but the input's, batchnorm0, which keeps its mean in float32 too: measured)
    means = [i for i, n in enumerate(names) if n.endswith('running_mean')]
    kept = [names[i] for i in means if np.allclose(fresh[i], after16[i])]
    assert len(means) > 5 and len(kept) == 1 and kept[0].endswith('_batchnorm0_running_mean')


@needs_bf16
def test_bfloat16_resume_equals_the_uninterrupted_bfloat16_run(data_root, tmp_path):
    recipe = dict(epochs=3, lr_schedule='poly', dtype='bfloat16')
    run = prepare(tiny_recipe(data_root, **recipe))
    straight = fit(tiny_recipe(data_root, **recipe), progress=False, run=run)
    final = trainable(run.net)
    out = str(tmp_path / 'resumed')

    def stop_after_first(state):
        state.stop = state.epoch == 1
    fit(tiny_recipe(data_root, **recipe), [Checkpointer(out), stop_after_first], progress=False)
    here = tiny_recipe(data_root, epochs=3)
    resumed = resume(out, dict(ctx=here.ctx, workers=here.workers, epochs=3)).recipe  # the stored dtype wins
    with pytest.raises(D2lsegError, match='--dtype float32: the run in .* trains in bfloat16'):
        resume(out, dict(dtype='float32'))
    assert resumed.dtype == 'bfloat16' and checkpoint.load_meta(out)['recipe']['dtype'] == 'bfloat16'
    run2 = prepare(resumed)
    h2 = fit(resumed, [Checkpointer(out)], resume=out, progress=False, run=run2)
    assert [r['loss'] for r in h2['epochs']] == [r['loss'] for r in straight['epochs']]
    same_params(trainable(run2.net), final, atol=0)
    assert h2['recipe']['dtype'] == 'bfloat16'


@needs_bf16
def test_bfloat16_on_two_contexts_updates_both_alike_and_follows_float32(data_root):
    r32, s32 = _one_step(tiny_recipe(data_root, ctx='cpu:2', batch_size=4))
    r16, s16 = _one_step(tiny_recipe(data_root, ctx='cpu:2', batch_size=4, dtype='bfloat16'))
    assert len(r16.ctx) == 2
    for p in r16.net.collect_params().values():
        a, b = (p.data(c).asnumpy() for c in r16.ctx)
        if p.grad_req != 'null':
            np.testing.assert_array_equal(a, b, err_msg=p.name)
    assert s16.loss_sum == pytest.approx(s32.loss_sum, rel=0.01)


def _sendable(arr):
    """Whether MXNet can hand ``arr``'s memory out as is (what its kvstore does), probed by a write of its own values."""
    try:
        arr[:] = arr.asnumpy()
        return True
    except mx.base.MXNetError as e:
        assert 'MKLDNN data' in str(e)
        return False


@needs_bf16
def test_weights_a_float32_inference_pass_left_in_onednn_layout_are_rewritten_for_the_kvstore(data_root):
    # Without static_alloc (a distributed worker's graphs), a float32 inference pass leaves oneDNN's blocked layout in
    # the convolution weights; in bfloat16 training only casts read them after that, and MXNet 1.9's dist kvstore
    # could not send them (its server aborted with 'init 16 first'). training_net rewrites them after its own
    # initialisation pass, and broadcast_parameters before the first broadcast.
    run = prepare(tiny_recipe(data_root, dtype='bfloat16'), data=False)
    run.net.hybridize()
    params = run.net.collect_params()
    before = {name: p.data().asnumpy() for name, p in params.items()}
    run.net(mx.nd.zeros((1, 3, 64, 96))).wait_to_read()
    blocked = [name for name, p in params.items() if not _sendable(p.data())]
    assert blocked and all('_conv' in name and name.endswith('_weight') for name in blocked), blocked
    default_layout(params.values())
    assert [name for name, p in params.items() if not _sendable(p.data())] == []
    for name, p in params.items():
        np.testing.assert_array_equal(p.data().asnumpy(), before[name], err_msg=name)
    run.net(mx.nd.zeros((1, 3, 64, 96))).wait_to_read()
    assert not all(_sendable(p.data()) for p in params.values())
    training_net(run.net, 'bfloat16', run.ctx)       # as a distributed worker's: no static_alloc
    assert [name for name, p in params.items() if not _sendable(p.data())] == []


def _classes_file(tmp_path):
    path = tmp_path / 'classes.txt'
    path.write_text('background 0 0 0\naeroplane 128 0 0\nbicycle 0 128 0\n')
    return str(path)


def _weights_file(tmp_path):
    path = tmp_path / 'weights.txt'
    path.write_text('\n'.join(str(0.5 + i / 20) for i in range(21)) + '\n')
    return str(path)


@needs_bf16
@pytest.mark.parametrize('option', ['fcn16s', 'fcn8s', 'class_weights', 'augment', 'classes'])
def test_bfloat16_trains_every_option_as_float32_does(option, data_root, tmp_path):
    kw = {'fcn16s': dict(variant='fcn16s'), 'fcn8s': dict(variant='fcn8s'), 'augment': dict(augment=True),
          'class_weights': dict(class_weights=_weights_file(tmp_path)),
          'classes': dict(classes=_classes_file(tmp_path), unknown_label='background')}[option]
    h32 = fit(tiny_recipe(data_root, epochs=1, **kw), progress=False)
    h16 = fit(tiny_recipe(data_root, epochs=1, dtype='bfloat16', **kw), progress=False)
    assert len(h16['epochs'][0]['val_iou']) == (3 if option == 'classes' else 21)
    assert h16['untrained']['miou'] == pytest.approx(h32['untrained']['miou'], abs=0.02)
    assert h16['epochs'][0]['loss'] == pytest.approx(h32['epochs'][0]['loss'], rel=0.05)  # 2.2% seen (augment)
    assert h16['epochs'][0]['loss'] != h32['epochs'][0]['loss']  # bfloat16 really ran
    assert h16['recipe']['dtype'] == 'bfloat16' and h32['recipe']['dtype'] == 'float32'


def test_gpus_are_refused_in_one_line():
    with pytest.raises(D2lsegError, match=r'^--dtype bfloat16: .*CPU only, not gpu\(0\); use float32 on GPUs$'):
        check_dtype('bfloat16', [mx.gpu(0)])
    assert check_dtype('float32', [mx.gpu(0)]) is None


def _train_child(data_root, out, *extra, **env):
    child = {k: v for k, v in os.environ.items() if k not in ('DNNL_MAX_CPU_ISA', 'D2LSEG_AMX')}
    child.update(env)
    return subprocess.run([sys.executable, '-m', 'd2lseg', *tiny_train_argv(data_root, out, *extra)], env=child,
                          capture_output=True, text=True, timeout=600)


def test_a_cpu_without_bfloat16_is_refused_before_anything_is_written(data_root, tmp_path):
    out = str(tmp_path / 'run')
    p = _train_child(data_root, out, '--dtype', 'bfloat16', DNNL_MAX_CPU_ISA='AVX2')
    assert p.returncode == 2, p.stderr
    last = p.stderr.strip().splitlines()[-1]
    assert last.endswith('error: --dtype bfloat16: oneDNN has no bfloat16 convolutions on this CPU (Intel AVX2); '
                         'they need AVX-512 (fast with AMX): use float32 or --int8'), p.stderr
    assert 'Traceback' not in p.stderr and not os.path.exists(out)


@needs_bf16
@pytest.mark.skipif(not os.path.exists('/proc/cpuinfo') or 'avx512_bf16' not in open('/proc/cpuinfo').read(),
                    reason='needs a CPU with AVX512-BF16 (then simulated without AMX)')
def test_without_amx_a_note_says_what_speed_to_expect_and_it_runs(data_root, tmp_path):
    p = _train_child(data_root, str(tmp_path / 'run'), '--dtype', 'bfloat16', D2LSEG_AMX='0')
    assert p.returncode == 0, p.stderr
    notes = [line for line in p.stderr.splitlines() if line.startswith('--dtype bfloat16: AMX is off')]
    assert len(notes) == 1 and 'D2LSEG_AMX=0' in notes[0] and "float32's training speed" in notes[0]


@needs_bf16
def test_cli_records_the_dtype_refuses_changing_it_on_resume_and_checkpoints_load_in_float32(data_root, tmp_path,
                                                                                           capsys):
    out = str(tmp_path / 'run')
    code, _, err = run_cli(tiny_train_argv(data_root, out, '--dtype', 'bfloat16'), capsys)
    assert code == 0, err
    meta = checkpoint.load_meta(out)
    assert meta['recipe']['dtype'] == 'bfloat16' and meta['history']['recipe']['dtype'] == 'bfloat16'
    code, _, err = run_cli(['train', '--resume', out, '--epochs', '2', '--dtype', 'float32', '--no-progress'], capsys)
    assert code == 2 and len(err) == 1 and err[0].startswith(
        f'd2lseg train: error: --dtype float32: the run in {out} trains in bfloat16'), err
    assert checkpoint.load_meta(out)['epoch'] == 1  # nothing changed
    code, _, err = run_cli(['train', '--resume', out, '--epochs', '2', '--dtype', 'bfloat16', '--no-progress'], capsys)
    assert code == 0 and not [line for line in err if 'ignoring' in line], err
    net = build_fcn(21, 'fcn32s', pretrained=False)  # a float32 network loads the bfloat16 run's weights
    load_params(net, os.path.join(out, 'model.params'))
    assert all(np.dtype(p.dtype) == np.float32 for p in net.collect_params().values())
