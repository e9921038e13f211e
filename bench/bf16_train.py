"""bfloat16 training against float32 (``d2lseg train --dtype bfloat16``, issue 32): the package's side.

``run.py --bf16-train`` adds these keys (bench/README.md): the package's float32 and bfloat16 training
steps and the peer's float32 and bfloat16-autocast steps, each warm in its own process and timed call for
call in alternation (``protocol.alternate``), the bfloat16 GEMM bound timed in the same alternation, the
peak memory of a process that trains in each dtype, and what oneDNN ran (``DNNL_VERBOSE``: AMX
primitives, reorders) in one step of each side, with the package's step time shared out by kind (oneDNN's
own timings of its primitives, MXNet's profiler for the operators outside oneDNN). d2lseg is imported first (threads, AMX).
"""
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time

from d2lseg.training import engine
from d2lseg.training.config import Recipe
from d2lseg.deploy.quantization import bfloat16_unavailable
from d2lseg.native import LOSS_OPERATORS, UPSAMPLING_OPERATORS
import mxnet as mx
from mxnet import nd
from mxnet.contrib import amp

from protocol import BATCH, CROP, NUM_CLASSES, RUN_PY, ROOT, Server, alternate, marked_steps, serve, split_steps

CONV = ((8, 512, 60, 80), 512)  # the GEMM bound: a 1x1 convolution, (N, C, H, W) x filters, as timing.gemm_gflops


def _run(dtype):
    run = engine.prepare(Recipe(crop=CROP, batch_size=BATCH, pretrained=False, ctx='cpu', dtype=dtype), data=False)
    X = nd.random.normal(shape=(BATCH, 3) + CROP)
    y = nd.random.randint(0, NUM_CLASSES, shape=(BATCH,) + CROP).astype('float32')
    return run, (X, y)


def bf16_conv():
    """A call running the 1x1 convolution of ``CONV`` in bfloat16 (amp-converted, as training's) and its FLOPs."""
    (n, c, h, w), f = CONV
    data = mx.sym.var('data')
    sym = mx.sym.Convolution(data, kernel=(1, 1), num_filter=f, no_bias=True, name='conv')
    block = mx.gluon.SymbolBlock(amp.convert_symbol(sym, 'bfloat16', data_names=['data']), data)
    block.initialize()
    block.hybridize(static_alloc=True, static_shape=True)
    x = nd.random.uniform(shape=(n, c, h, w))
    return (lambda: block(x).wait_to_read()), 2 * n * c * f * h * w


def serve_mxnet_bf16(args):
    """Timing server: float32 and bfloat16 ``engine.train_step`` on an in-memory batch, the bfloat16 GEMM bound."""
    fns = {}
    for dtype in ('float32', 'bfloat16'):
        run, batch = _run(dtype)
        fns[dtype] = (lambda r, b: lambda: engine.train_step(r, b))(run, batch)
    fns['gemm_bf16'] = bf16_conv()[0]
    return serve(fns, {'conv_flop': bf16_conv()[1]})


def part_mxnet_train_rss(args):
    """Peak RSS of a process that only trains in ``args.dtype`` (prepare + three steps)."""
    run, batch = _run(args.dtype)
    for _ in range(3):
        engine.train_step(run, batch)
    return {'peak_rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def part_mxnet_train_step(args):
    """``args.steps`` marked train steps in ``args.dtype`` (``onednn_steps`` runs them under DNNL_VERBOSE),
    each waited for (``nd.waitall``: the optimizer's update is asynchronous); MXNet's profiler records the
    steps after the first -> {'ops_ms': {operator: milliseconds per profiled step}} (operators run in
    bulk, as a list of names, are left out)."""
    run, batch = _run(args.dtype)
    step = (lambda: engine.train_step(run, batch))
    marked_steps(step, 1, nd.waitall)
    # dumps() replaces its file with a regular one: never point it at os.devnull (as root, that replaces the
    # machine's /dev/null), but at a file in a folder of our own, removed afterwards
    with tempfile.TemporaryDirectory(prefix='d2lseg-profile-') as tmp:
        mx.profiler.set_config(profile_imperative=True, profile_symbolic=True, aggregate_stats=True,
                               filename=os.path.join(tmp, 'profile.json'))
        mx.profiler.set_state('run')
        marked_steps(step, args.steps - 1, nd.waitall)
        mx.profiler.set_state('stop')
        ops = json.loads(mx.profiler.dumps(format='json'))['Time'].get('operator', {})
    return {'ops_ms': {name: v['Total'] / (args.steps - 1) for name, v in ops.items() if ',' not in name}}


def _child(python, part, args, extra=(), env=None):
    """stdout lines of ``run.py --part part`` in a fresh interpreter."""
    cmd = [python, RUN_PY, '--part', part, '--threads', str(args.threads), *extra]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f'bench part {part} failed (exit {proc.returncode}): ' + ' | '.join(
            (proc.stderr or proc.stdout).strip().splitlines()[-3:]))
    return proc.stdout.splitlines()


def onednn_steps(python, part, args, extra=()):
    """([(seconds, [oneDNN exec lines]) per step after the first], the part's JSON) of ``args.steps`` marked
    training steps of ``part`` in a fresh interpreter under verbose mode (MXNet's DNNL_VERBOSE, PyTorch's
    ONEDNN_VERBOSE); the first step (one-time weight reorders, graph building) is dropped."""
    steps = max(2, args.steps)
    env = dict(os.environ, DNNL_VERBOSE='1', ONEDNN_VERBOSE='1', MKLDNN_VERBOSE='1')
    lines = _child(python, part, args, [*extra, '--steps', str(steps)], env)
    done = split_steps(lines)
    if len(done) != steps:
        raise RuntimeError(f'bench part {part}: {len(done)} step marks, not {steps}')
    return done[1:], json.loads(lines[-1])


def onednn_counts(steps):
    """{'amx_primitives', 'reorders', 'primitives'}: oneDNN primitives executed per step of ``onednn_steps``."""
    execs = [line for _, lines in steps for line in lines]
    return {'amx_primitives': sum('amx' in line for line in execs) / len(steps),
            'reorders': sum(',reorder,' in line for line in execs) / len(steps), 'primitives': len(execs) / len(steps)}


_CONV = {'forward_training': 'conv_fwd', 'forward_inference': 'conv_fwd', 'backward_data': 'conv_bwd_data',
         'backward_weights': 'conv_bwd_weights'}


def onednn_kind(line):
    """(kind, milliseconds) of a oneDNN verbose 'exec' line (``dnnl_verbose,exec,cpu,<primitive>,<impl>,
    <propagation>,...,<ms>``): convolutions by direction (``_amx`` when on AMX kernels), deconvolution,
    reorder, batch_normalization, eltwise, the others as ``onednn_other``."""
    fields = line.split(',')
    primitive, impl, prop = fields[3:6]
    if primitive == 'convolution':
        kind = _CONV[prop] + ('_amx' if 'amx' in impl else '')
    else:
        kind = primitive if primitive in ('deconvolution', 'reorder', 'batch_normalization', 'eltwise') else 'onednn_other'
    return kind, float(fields[-1])


def mxnet_op_kind(name):
    """The kind of an MXNet operator whose work is not oneDNN's (None for the others): the native
    upsampling and loss (d2lseg/native), the optimizer's update."""
    if any(op in name for op in UPSAMPLING_OPERATORS):
        return 'upsampling_native'
    if any(op in name for op in LOSS_OPERATORS):
        return 'loss_native'
    return 'optimizer_update' if name.endswith('_update') else None


def step_profile(steps, ops_ms):
    """{'step_ms', 'share': {kind: fraction of the step}, 'reorder_ms', 'reorder_cast_ms'} from
    ``onednn_steps``'s steps and the MXNet operators' milliseconds per step: oneDNN primitives by
    ``onednn_kind``, non-oneDNN operators by ``mxnet_op_kind``, and ``rest``, the wall time none of
    them accounts for (MXNet's operators outside oneDNN, its engine, Python)."""
    step_ms = 1000 * sum(seconds for seconds, _ in steps) / len(steps)
    ms, cast = {}, 0.0
    for _, lines in steps:
        for line in lines:
            kind, t = onednn_kind(line)
            ms[kind] = ms.get(kind, 0.0) + t / len(steps)
            # a reorder that changes the data type ('src_f32::... dst_bf16::...' or back), not only the layout
            cast += t / len(steps) if kind == 'reorder' and len(set(re.findall(r'(?:src|dst)_(\w+?)::', line))) > 1 else 0
    for name, t in ops_ms.items():
        kind = mxnet_op_kind(name)
        if kind:
            ms[kind] = ms.get(kind, 0.0) + t
    ms['rest'] = step_ms - sum(ms.values())
    return {'step_ms': step_ms, 'share': {k: v / step_ms for k, v in sorted(ms.items())},
            'reorder_ms': ms.get('reorder', 0.0), 'reorder_cast_ms': cast}


def paired_bf16(args):
    """The package's float32 and bfloat16 training steps against the peer's (float32 eager and bfloat16
    autocast), in alternation -> images/s and ratios (medians of the within-repetition ratios)."""
    tic = time.perf_counter()
    ours = Server(sys.executable, 'serve-mxnet-bf16', args)
    peer = Server(args.peer_python, 'serve-torch-bf16', args) if args.peer_python else None
    try:
        info = ours.ready()
        peer_info = peer.ready() if peer else {}
        plan = [(ours, 'float32'), (ours, 'bfloat16'), (ours, 'gemm_bf16')]
        plan += [(peer, 'float32'), (peer, 'bfloat16')] if peer else []
        times = alternate(plan, args.pairs)
    finally:
        ours.close()
        if peer:
            peer.close()
    res = _figures(times, info['conv_flop'], peer is not None)
    res['bf16_peer_torch'] = peer_info.get('torch')
    print(f'  paired bf16 training: {time.perf_counter() - tic:.0f} s', file=sys.stderr, flush=True)
    return res


def _figures(times, conv_flop, with_peer):
    ours = {k: times['serve-mxnet-bf16', k] for k in ('float32', 'bfloat16', 'gemm_bf16')}

    def ratio(slow, fast):
        return statistics.median(s / f for s, f in zip(slow, fast))
    res = {'bf16_train_img_s': BATCH / min(ours['bfloat16']), 'bf16_paired_fp32_train_img_s': BATCH / min(ours['float32']),
           'bf16_train_vs_fp32': ratio(ours['float32'], ours['bfloat16']),
           'bf16_gemm_gflops': conv_flop / min(ours['gemm_bf16']) / 1e9}
    if with_peer:
        peer = {k: times['serve-torch-bf16', k] for k in ('float32', 'bfloat16')}
        res.update({'peer_train_fp32_img_s': BATCH / min(peer['float32']),
                    'peer_train_bf16_img_s': BATCH / min(peer['bfloat16']),
                    'bf16_train_vs_peer_fp32': ratio(peer['float32'], ours['bfloat16']),
                    'bf16_train_vs_peer_bf16': ratio(peer['bfloat16'], ours['bfloat16']),
                    'peer_bf16_vs_fp32': ratio(peer['float32'], peer['bfloat16'])})
    return res


def _profile_keys(profile, dtype):
    short = 'fp32' if dtype == 'float32' else 'bf16'
    return {f'{short}_step_ms': profile['step_ms'], f'{short}_step_share': profile['share'],
            f'{short}_reorder_ms_per_step': profile['reorder_ms'],
            f'{short}_reorder_cast_ms_per_step': profile['reorder_cast_ms']}


def bf16_training(args, forward_gflop_per_img):
    """Every --bf16-train key: paired speeds, the GEMM fraction, peak memory per dtype, oneDNN counts."""
    why = bfloat16_unavailable()
    if why:
        return {'bf16_train_unavailable': why}
    res = paired_bf16(args)
    res['bf16_train_gemm_fraction'] = 3 * forward_gflop_per_img * res['bf16_train_img_s'] / res['bf16_gemm_gflops']
    for dtype in ('float32', 'bfloat16'):
        rss = json.loads(_child(sys.executable, 'mxnet-train-rss', args, ['--dtype', dtype])[-1])
        res[f'train_peak_rss_mb_{dtype}'] = rss['peak_rss_mb']
        steps, out = onednn_steps(sys.executable, 'mxnet-train-step', args, ['--dtype', dtype])
        res.update({f'onednn_{k}_{dtype}': v for k, v in onednn_counts(steps).items()})
        res.update(_profile_keys(step_profile(steps, out['ops_ms']), dtype))
    res['bf16_vs_fp32_without_extra_reorders'] = res['fp32_step_ms'] / (
        res['bf16_step_ms'] - max(0.0, res['bf16_reorder_ms_per_step'] - res['fp32_reorder_ms_per_step']))
    res['bf16_rss_vs_fp32'] = res['train_peak_rss_mb_bfloat16'] / res['train_peak_rss_mb_float32']
    if args.peer_python:
        counts = onednn_counts(onednn_steps(args.peer_python, 'torch-bf16-step', args)[0])
        res.update({f'peer_onednn_{k}_bfloat16': v for k, v in counts.items()})
    return res
