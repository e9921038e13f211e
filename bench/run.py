"""Speed benchmark: the package's FCN (fcn32s, 320x480, batch 8, float32) against the same FCN in PyTorch.

Run from the repo root in the venv (machine otherwise idle):

    .venv/bin/python bench/run.py [--quick]

Every figure goes through the package's own code: ``engine.prepare`` + ``engine.train_step`` (the
step ``fit`` runs) fed by ``prepare``'s DataLoader, ``engine.evaluate`` (batch inference),
``inference.predict_full`` (whole VOC-sized images by tiles), ``quantization.quantize`` (INT8) and
``quantization.to_bfloat16`` (bfloat16; fast on CPUs with AMX, which ``import d2lseg`` enables).
Each measurement runs in its own subprocess (MXNet and PyTorch never share a process; peak RSS is
that of a process that only trains). The ratios to the peer come from a paired timing: both warm in
their own processes, timed call for call in alternation, so that the machine's drift hits both alike.
The LAST line printed is one JSON object; see bench/README.md.

This file is the driver: the flags, which parts run, and the JSON. The parts are in timing.py (the
package's), peer_torch.py (the peer's) and flops.py; protocol.py runs them and pairs their timings.
"""
import argparse
import importlib
import json
import os
import subprocess
import sys
import tempfile
import time

if __package__:  # imported as bench.run (python -m bench.run, the tests): the parts' modules import their
    # siblings by name (from protocol import ...), as they must in the processes that run this file, the PyTorch
    # peer's interpreter among them (it has neither d2lseg nor this checkout on its path)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from protocol import BATCH, CROP, HERE, child, paired  # noqa: E402

# part -> (module, function), run as `run.py --part NAME` in a process of its own. The module is imported
# only there and only once main has set OMP_NUM_THREADS from --threads: timing loads d2lseg and MXNet,
# which read the thread count when they load, and peer_torch runs in the peer's interpreter, which has
# neither d2lseg nor MXNet.
PARTS = {'mxnet-env': ('timing', 'part_mxnet_env'), 'mxnet-ab': ('timing', 'part_mxnet_ab'),
         'mxnet': ('timing', 'part_mxnet'), 'mxnet-rss': ('timing', 'part_mxnet_rss'),
         'torch-rss': ('peer_torch', 'part_torch_rss'),
         'serve-mxnet': ('timing', 'serve_mxnet'), 'serve-torch': ('peer_torch', 'serve_torch'),
         'onnx': ('onnx_speed', 'part_onnx')}
PARTS.update({'serve-mxnet-bf16': ('bf16_train', 'serve_mxnet_bf16'),  # --bf16-train (bench/bf16_train.py)
              'mxnet-train-rss': ('bf16_train', 'part_mxnet_train_rss'),
              'mxnet-train-step': ('bf16_train', 'part_mxnet_train_step'),
              'serve-torch-bf16': ('peer_torch', 'serve_torch_bf16'),
              'torch-bf16-step': ('peer_torch', 'part_torch_bf16_step')})
PEER_VENV_PYTHON = os.path.join(HERE, '.venv-peer', 'bin', 'python')


def _threads():
    # imported here, not at the top: d2lseg reads OMP_NUM_THREADS, which main sets from --threads first
    import d2lseg  # noqa: F401  (sets OMP_NUM_THREADS and AMX before MXNet loads)
    return int(os.environ['OMP_NUM_THREADS'])


def _peer_python(arg):
    """The interpreter that has PyTorch: --peer-python, $D2LSEG_PEER_PYTHON, bench/.venv-peer, or this one.

    PyTorch >= 2 must not share the package's venv: gluoncv refuses to import beside it.
    """
    for candidate in (arg, os.environ.get('D2LSEG_PEER_PYTHON'), PEER_VENV_PYTHON):
        if candidate and os.path.exists(candidate):
            return candidate
    return sys.executable


def _have_torch(python):
    return subprocess.run([python, '-c', 'import torch'], capture_output=True).returncode == 0


def _onnx(args, res):
    """The onnxruntime_* keys, beside MXNet's and the peer's figures in ``res``: its part's figures and their
    ratios, or null with the reason when onnxruntime is missing or --no-onnx."""
    try:
        if args.no_onnx:
            raise ImportError('--no-onnx')
        import onnxruntime  # noqa: F401  (the d2lseg[onnx] extra)
    except ImportError as e:
        print(f'onnx: {e}; onnxruntime figures are null (pip install -e ".[onnx]")', flush=True)
        return {'onnxruntime_infer_img_s': None, 'onnxruntime_unavailable': str(e)}
    found = child('onnx', args)
    for key, base in (('onnxruntime_vs_mxnet', 'infer_img_s'), ('onnxruntime_vs_peer', 'peer_infer_img_s')):
        found[key] = found['onnxruntime_infer_img_s'] / res[base] if res.get(base) else None
    return found


def _parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--quick', action='store_true', help='fewer repetitions (about half the time)')
    p.add_argument('--ab', action='store_true',
                   help='also time the chapter vs the fast upsampling vs the kernels, and the fused argmax')
    p.add_argument('--bf16-train', action='store_true',
                   help='also bfloat16 training: against float32 and the peer\'s float32 and bf16 autocast (bf16_* keys)')
    p.add_argument('--bf16-only', action='store_true', help='only the --bf16-train keys (and the environment)')
    p.add_argument('--part', choices=sorted(PARTS), help=argparse.SUPPRESS)
    p.add_argument('--dtype', default='float32', help=argparse.SUPPRESS)  # of the bf16_train parts
    p.add_argument('--steps', type=int, default=None, help='timed training steps (default 6, --quick 3)')
    p.add_argument('--pairs', type=int, default=None,
                   help='repetitions of the paired timing against the peer (default 10, --quick 4)')
    p.add_argument('--threads', type=int, default=None, help='threads for both frameworks (default: all CPUs)')
    p.add_argument('--data-dir', default=os.path.join(tempfile.gettempdir(), 'd2lseg-bench-data'),
                   help='synthetic VOC-sized data set (made when missing, default %(default)s)')
    p.add_argument('--no-onnx', action='store_true', help='skip ONNX Runtime (onnxruntime_* keys null)')
    p.add_argument('--onnx-run', help='a d2lseg train --out folder for ONNX Runtime\'s INT8 mIoU (default: runs/demo '
                   'when there, else random weights)')
    p.add_argument('--onnx-data-dir', help=argparse.SUPPRESS)  # validation data of --onnx-run (default: its own)
    p.add_argument('--peer-python', help='python with torch for the peer (default: $D2LSEG_PEER_PYTHON, '
                   'bench/.venv-peer/bin/python, else this one)')
    args = p.parse_args(argv)
    args.steps = args.steps or (3 if args.quick else 6)
    args.pairs = args.pairs or (4 if args.quick else 10)
    return args


def _run_part(args):
    """Run ``args.part`` in this process; a dict it returns is printed as the JSON line."""
    module, name = PARTS[args.part]
    out = getattr(importlib.import_module(module), name)(args)
    if out is not None:  # serve-* parts answer on stdout as they go
        print(json.dumps(out))


def main(argv=None):
    args = _parse_args(argv)
    if args.threads:
        os.environ['OMP_NUM_THREADS'] = str(args.threads)
    if not (args.part or '').startswith(('torch', 'serve-torch')):  # those run in the peer's Python
        threads = _threads()  # d2lseg before MXNet: threads and AMX (d2lseg.core.startup), in every process
        args.threads = args.threads or threads
    if args.part:
        _run_part(args)
        return 0

    tic = time.perf_counter()
    res = {}
    res.update(child('mxnet-env', args))  # 'amx': whether the measuring processes could use it, and why
    if args.bf16_only:
        return _bf16_only(args, res, tic)
    res.update(child('mxnet', args))
    res.update(child('mxnet-rss', args))
    if args.ab:
        res.update(child('mxnet-ab', args))
    res['train_gflops_fraction'] = 3 * res['forward_gflop_per_img'] * res['train_img_s'] / res['gemm_gflops']
    peer_keys = ('peer_train_img_s', 'peer_infer_img_s', 'peer_peak_rss_mb')
    args.peer_python = _peer_python(args.peer_python)
    if _have_torch(args.peer_python):
        res.update(paired(args))
        res.update(child('torch-rss', args))
        res['rss_vs_peer'] = res['peak_rss_mb'] / res['peer_peak_rss_mb']
    else:
        print(f'peer: PyTorch is not importable from {args.peer_python} (make bench/.venv-peer, see '
              'bench/README.md); peer figures are null', flush=True)
        res.update({k: None for k in peer_keys})
    res.update(_onnx(args, res))
    if args.bf16_train:
        res.update(_bf16_keys(args, res['forward_gflop_per_img']))
    return _finish(args, res, tic)


def _bf16_keys(args, forward_gflop_per_img):
    """The --bf16-train keys (bench/bf16_train.py), the peer's where PyTorch is importable."""
    from bf16_train import bf16_training
    args.peer_python = _peer_python(args.peer_python)
    args.peer_python = args.peer_python if _have_torch(args.peer_python) else None
    return bf16_training(args, forward_gflop_per_img)


def _bf16_only(args, res, tic):
    from flops import forward_flops
    from d2lseg.fcn.model import build_fcn
    res['forward_gflop_per_img'] = forward_flops(build_fcn(21, pretrained=False), (3,) + CROP) / 1e9
    res.update(_bf16_keys(args, res['forward_gflop_per_img']))
    return _finish(args, res, tic)


def _finish(args, res, tic):
    res['batch'], res['crop'], res['variant'], res['quick'] = BATCH, list(CROP), 'fcn32s', args.quick
    res['bench_seconds'] = time.perf_counter() - tic
    from d2lseg.native.environment import environment  # loaded by _threads already (after --threads took effect)
    res['environment'] = environment()  # what produced these figures (CPU, oneDNN ISA, threads, kernels)
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in res.items()}))
    return 0


if __name__ == '__main__':
    sys.exit(main())
