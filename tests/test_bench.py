"""bench/run.py's bookkeeping of the paired timing (no timing here; bench/protocol.py): alternation order and
figures, what its measuring processes run with, and that every part it can run exists."""
import importlib
import json
import os
import stat
import subprocess
import sys

import pytest

from d2lseg.core import startup

from bench import protocol as bench

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class FakeServer:
    def __init__(self, part, log):
        self.part, self.log, self.calls = part, log, 0

    def time(self, kind):
        self.log.append((self.part, kind))
        self.calls += 1
        return float(self.calls)


def test_alternation_reverses_the_order_every_other_repetition(monkeypatch):
    monkeypatch.setattr(bench.time, 'sleep', lambda s: None)
    log = []
    a, b = FakeServer('serve-mxnet', log), FakeServer('serve-torch', log)
    times = bench.alternate([(a, 'train'), (b, 'train'), (a, 'infer')], reps=3)
    assert log == [('serve-mxnet', 'train'), ('serve-torch', 'train'), ('serve-mxnet', 'infer'),
                   ('serve-mxnet', 'infer'), ('serve-torch', 'train'), ('serve-mxnet', 'train'),
                   ('serve-mxnet', 'train'), ('serve-torch', 'train'), ('serve-mxnet', 'infer')]
    assert times == {('serve-mxnet', 'train'): [1.0, 4.0, 5.0], ('serve-torch', 'train'): [1.0, 2.0, 3.0],
                     ('serve-mxnet', 'infer'): [2.0, 3.0, 6.0]}


def test_paired_figures_take_best_calls_and_per_repetition_ratios():
    times = {('serve-mxnet', 'train'): [4.0, 2.0, 2.5], ('serve-torch', 'train'): [5.0, 4.0, 3.0],
             ('serve-mxnet', 'infer'): [1.0, 0.8, 0.5], ('serve-mxnet', 'int8'): [0.4, 0.5, 0.5],
             ('serve-torch', 'infer_eager'): [1.0, 0.9, 1.0], ('serve-torch', 'infer_compiled'): [0.8, 1.2, 1.0],
             ('serve-mxnet', 'gemm'): [0.2, 0.1, 0.4]}
    res = bench.paired_figures(times)
    batch = bench.BATCH
    assert res['paired_gemm_gflops'] == pytest.approx(2 * 2048 ** 3 / 0.1 / 1e9)
    assert res['paired_train_img_s'] == batch / 2.0 and res['peer_train_img_s'] == batch / 3.0
    assert res['peer_infer_img_s'] == batch / 0.8 and res['peer_infer_config'] == 'compiled, channels_last'
    assert res['peer_infer_img_s_eager'] == batch / 0.9 and res['peer_infer_img_s_compiled'] == batch / 0.8
    assert res['train_vs_peer_best'] == pytest.approx(1.5)            # best 2.0 s vs best 3.0 s
    assert res['infer_vs_peer_best'] == pytest.approx(0.8 / 0.5)
    assert res['int8_vs_peer_best'] == pytest.approx(0.8 / 0.4)
    # median within repetitions: the peer's faster inference call (0.8, 0.9, 1.0) over ours
    assert res['train_vs_peer'] == pytest.approx(1.25)                # 5/4, 4/2, 3/2.5
    assert res['infer_vs_peer'] == pytest.approx(1.125)               # 0.8/1, 0.9/0.8, 1/0.5
    assert res['int8_vs_peer'] == pytest.approx(2.0)                  # 0.8/0.4, 0.9/0.5, 1/0.5
    assert 'bf16_vs_peer' not in res and 'bf16_vs_fp32' not in res    # no bfloat16 served (e.g. AVX2)
    # with bfloat16: against the peer as INT8 is, and against the package's own float32 inference
    res = bench.paired_figures({**times, ('serve-mxnet', 'bf16'): [0.5, 0.4, 0.2]})
    assert res['paired_bf16_img_s'] == batch / 0.2
    assert res['bf16_vs_peer'] == pytest.approx(2.25)                 # 0.8/0.5, 0.9/0.4, 1/0.2
    assert res['bf16_vs_peer_best'] == pytest.approx(0.8 / 0.2)
    assert res['bf16_vs_fp32'] == pytest.approx(2.0)                  # 1/0.5, 0.8/0.4, 0.5/0.2


def test_without_the_compiled_peer_the_eager_one_counts():
    times = {('serve-mxnet', 'train'): [2.0], ('serve-torch', 'train'): [3.0], ('serve-mxnet', 'infer'): [0.5],
             ('serve-mxnet', 'int8'): [0.25], ('serve-torch', 'infer_eager'): [1.0], ('serve-mxnet', 'gemm'): [0.1]}
    res = bench.paired_figures(times)
    assert res['peer_infer_config'] == 'eager, channels_last' and 'peer_infer_img_s_compiled' not in res
    assert res['infer_vs_peer'] == pytest.approx(2.0) and res['int8_vs_peer_best'] == pytest.approx(4.0)


def test_the_measuring_processes_load_d2lseg_before_mxnet():
    # a part's process imports d2lseg first: the thread count given and the same AMX decision as here
    out = subprocess.run([sys.executable, os.path.join(ROOT, 'bench', 'run.py'), '--part', 'mxnet-env',
                          '--threads', '1'], capture_output=True, text=True, timeout=300, check=True).stdout
    res = json.loads(out.strip().splitlines()[-1])
    assert res['mxnet_threads'] == 1
    assert res['amx'] == startup.amx() and res['amx']['reason'] != 'MXNet was imported before d2lseg'


def test_every_part_names_a_function_of_its_module():
    # run.py imports a part's module only in the process that runs it: check the table here, in a
    # fresh interpreter with bench/ first on the path as when run.py runs as a script
    code = ('import importlib, sys; sys.path.insert(0, sys.argv[1]); import run; '
            'print(sorted(part for part, (module, name) in run.PARTS.items()'
            '             if not callable(getattr(importlib.import_module(module), name))))')
    out = subprocess.run([sys.executable, '-c', code, os.path.join(ROOT, 'bench')], cwd=ROOT, capture_output=True,
                         text=True, timeout=300, check=True).stdout
    assert out.strip().splitlines()[-1] == '[]'


def _bench_run():
    return importlib.import_module('bench.run')  # as python -m bench.run imports it


def test_onnxruntime_figures_sit_beside_mxnets_and_the_peers(monkeypatch):
    from argparse import Namespace
    run = _bench_run()
    monkeypatch.setattr(run, 'child', lambda part, args: {'onnxruntime_infer_img_s': 6.0, 'part': part})
    res = run._onnx(Namespace(no_onnx=False), {'infer_img_s': 4.0, 'peer_infer_img_s': 3.0})
    assert res['part'] == 'onnx' and res['onnxruntime_vs_mxnet'] == 1.5 and res['onnxruntime_vs_peer'] == 2.0
    res = run._onnx(Namespace(no_onnx=False), {'infer_img_s': 4.0, 'peer_infer_img_s': None})  # no peer
    assert res['onnxruntime_vs_peer'] is None and res['onnxruntime_vs_mxnet'] == 1.5
    res = run._onnx(Namespace(no_onnx=True), {'infer_img_s': 4.0})
    assert res == {'onnxruntime_infer_img_s': None, 'onnxruntime_unavailable': '--no-onnx'}


@pytest.mark.slow
def test_the_onnx_part_reports_float32_and_int8_in_quick_mode(tmp_path):
    pytest.importorskip('onnxruntime.quantization', reason='needs onnxruntime (the onnx extra)')
    out = subprocess.run([sys.executable, os.path.join(ROOT, 'bench', 'run.py'), '--part', 'onnx', '--quick',
                          '--threads', '1', '--data-dir', str(tmp_path)], capture_output=True, text=True,
                         timeout=900, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res['onnxruntime_infer_img_s'] > 0 and res['onnxruntime_int8_img_s'] > 0
    assert res['onnxruntime_int8_val_images'] == 4 and 0 <= res['onnxruntime_int8_miou'] <= 1
    assert res['onnxruntime_int8_delta_points'] == pytest.approx(
        100 * (res['onnxruntime_int8_miou'] - res['onnxruntime_fp32_miou']))
    assert res['onnxruntime_int8_within_half_point'] is (abs(res['onnxruntime_int8_delta_points']) <= 0.5)


def test_bf16_training_figures_are_best_calls_and_per_repetition_ratios(monkeypatch):
    monkeypatch.syspath_prepend(os.path.join(ROOT, 'bench'))  # as when run.py runs: its sibling modules
    from bf16_train import _figures
    times = {('serve-mxnet-bf16', 'float32'): [2.0, 1.0, 4.0], ('serve-mxnet-bf16', 'bfloat16'): [1.0, 0.8, 1.0],
             ('serve-mxnet-bf16', 'gemm_bf16'): [0.5, 0.25, 1.0],
             ('serve-torch-bf16', 'float32'): [3.0, 3.0, 3.0], ('serve-torch-bf16', 'bfloat16'): [6.0, 4.0, 8.0]}
    res = _figures(times, conv_flop=1e9, with_peer=True)
    assert res['bf16_train_img_s'] == 8 / 0.8 and res['bf16_paired_fp32_train_img_s'] == 8 / 1.0
    assert res['bf16_train_vs_fp32'] == 2.0            # median of 2/1, 1/0.8, 4/1
    assert res['bf16_train_vs_peer_fp32'] == 3.0       # median of 3, 3.75, 3
    assert res['bf16_train_vs_peer_bf16'] == 6.0       # median of 6, 5, 8
    assert res['peer_bf16_vs_fp32'] == 0.5 and res['bf16_gemm_gflops'] == 4.0
    assert set(_figures(times, 1e9, with_peer=False)) == {'bf16_train_img_s', 'bf16_paired_fp32_train_img_s',
                                                          'bf16_train_vs_fp32', 'bf16_gemm_gflops'}


def test_the_step_profile_shares_a_step_out_by_kind_from_onednn_lines_and_mxnet_operators(monkeypatch):
    monkeypatch.syspath_prepend(os.path.join(ROOT, 'bench'))
    from bf16_train import step_profile
    # lines as MXNet 1.9.1's oneDNN 2.x prints them (DNNL_VERBOSE=1), times in ms last
    amx = ('dnnl_verbose,exec,cpu,convolution,brgconv:avx512_core_amx_bf16,forward_training,src_bf16::blocked:acdb:f0 '
           'wei_bf16::blocked:AcdB16b32a2b:f0 bia_undef::undef::f0 dst_bf16::blocked:acdb:f0,,alg:convolution_direct,'
           'mb8_ic64oc64_ih80oh80kh3sh1dh0ph1_iw120ow120kw3sw1dw0pw1,100')
    wgt = ('dnnl_verbose,exec,cpu,convolution,jit_bf16:avx512_core_bf16,backward_weights,src_bf16::blocked:abcd:f0 '
           'wei_bf16::blocked:Acdb16a:f0,,alg:convolution_direct,mb8_ic3oc64_ih320oh160kh7sh2dh0ph3_iw480ow240kw7sw2dw0pw3,50')
    cast = 'dnnl_verbose,exec,cpu,reorder,jit:uni,undef,src_f32::blocked:abcd:f0 dst_bf16::blocked:abcd:f0,,,8x3x320x480,30'
    layout = ('dnnl_verbose,exec,cpu,reorder,jit:uni,undef,src_bf16::blocked:acdb:f0 dst_bf16::blocked:abcd:f0,,,'
              '8x64x160x240,70')
    bn = ('dnnl_verbose,exec,cpu,batch_normalization,bnorm_jit:avx512_core_bf16,forward_training,data_bf16::blocked:acdb:f0 '
          'diff_undef::undef::f0,,flags:S,mb8ic64ih160iw240,40')
    pool = 'dnnl_verbose,exec,cpu,pooling_v2,jit:avx512_core_bf16,forward_training,src_bf16::blocked:acdb:f0,,,x,10'
    steps = [(1.0, [amx, wgt, cast, layout, bn, pool]), (1.2, [amx, wgt, cast, layout, bn, pool])]
    ops = {'d2lseg_upsample': 200.0, '_backward_d2lseg_upsample': 100.0, 'd2lseg_softmax_ce': 60.0,
           '_backward_d2lseg_softmax_ce': 40.0, 'multi_sgd_update': 150.0, 'BatchNorm': 5.0}
    res = step_profile(steps, ops)
    assert res['step_ms'] == pytest.approx(1100) and res['reorder_ms'] == 100 and res['reorder_cast_ms'] == 30
    share = {k: round(v * 1100, 6) for k, v in res['share'].items()}
    assert share == {'conv_fwd_amx': 100, 'conv_bwd_weights': 50, 'reorder': 100, 'batch_normalization': 40,
                     'onednn_other': 10, 'upsampling_native': 300, 'loss_native': 100, 'optimizer_update': 150,
                     'rest': 250}                          # 1100 - the 850 accounted for
    assert sum(res['share'].values()) == pytest.approx(1)


@pytest.mark.slow
def test_the_bf16_step_profile_of_a_real_step_is_shares_that_sum_to_one(monkeypatch):
    from d2lseg.deploy.quantization import bfloat16_unavailable
    why = bfloat16_unavailable()
    if why:
        pytest.skip(f'no bfloat16 training here: {why}')
    monkeypatch.syspath_prepend(os.path.join(ROOT, 'bench'))
    from argparse import Namespace
    from bf16_train import onednn_counts, onednn_steps, step_profile
    steps, out = onednn_steps(sys.executable, 'mxnet-train-step', Namespace(threads=1, steps=2), ['--dtype', 'bfloat16'])
    assert len(steps) == 1 and steps[0][0] > 0
    counts = onednn_counts(steps)
    assert counts['reorders'] > 0 and counts['amx_primitives'] > 0 and counts['primitives'] > counts['reorders']
    res = step_profile(steps, out['ops_ms'])
    assert all(0 <= v <= 1 for v in res['share'].values()), res['share']
    assert sum(res['share'].values()) == pytest.approx(1)
    assert res['share']['conv_fwd_amx'] > 0 and res['share']['reorder'] > 0 and res['share']['optimizer_update'] > 0
    assert 0 < res['reorder_cast_ms'] <= res['reorder_ms'] < res['step_ms']
    # MXNet's profiler replaces the file it dumps to with a regular file: the part must not aim it at /dev/null
    assert stat.S_ISCHR(os.stat(os.devnull).st_mode), f'{os.devnull} is no longer a device after the profiled step'
