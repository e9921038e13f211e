"""What produced a result: CPU, the instruction set oneDNN dispatched to, threads, kernels, versions.

Float results and whole training trajectories depend on the CPU's instruction set (oneDNN and the
native kernels take different code paths) and on MXNet's thread count, so every ``history.json``,
stored baseline and benchmark JSON carries ``environment()``. Simulate another machine with
``DNNL_MAX_CPU_ISA=AVX2`` (or ``AVX512_CORE``), ``D2LSEG_NATIVE=0`` and ``OMP_NUM_THREADS=1``; the
cap recorded is the user's (``DNNL_MAX_CPU_ISA``), the AMX decision ``startup``'s.
"""
import ctypes
import functools
import os
import platform
import subprocess
import sys

import mxnet as mx
import numpy as np
import PIL

from ..core import compat, startup
from .. import native
from ..core.version import __version__

# The CPU flags that decide oneDNN's and the kernels' code paths.
ISA_FLAGS = ('avx2', 'fma', 'avx512f', 'avx512bw', 'avx512_vnni', 'avx512_bf16', 'amx_tile', 'amx_int8',
             'amx_bf16')

# Runs one convolution with oneDNN's verbose mode on and prints its "isa:" info line.
_ISA_PROBE = ("import mxnet as mx; x = mx.nd.ones((1, 3, 8, 8)); "
              "mx.nd.Convolution(x, mx.nd.ones((2, 3, 3, 3)), kernel=(3, 3), num_filter=2, "
              "no_bias=True).wait_to_read()")
# Under an AMX cap the child asks for the AMX permission first, as ``startup`` did in this process.
_AMX_PERMISSION = (f"import ctypes; ctypes.CDLL(None).syscall({startup._SYS_ARCH_PRCTL}, "
                   f"{startup._ARCH_REQ_XCOMP_PERM}, {startup._XFEATURE_XTILEDATA}); ")


@functools.lru_cache(maxsize=None)
def cpu_info():
    """(model name, the ISA_FLAGS this CPU has), from /proc/cpuinfo where there is one (read once)."""
    fields = startup.cpuinfo()
    flags = startup.cpu_flags()
    return (fields.get('model name') or platform.processor() or platform.machine(),
            tuple(f for f in ISA_FLAGS if f in flags))


def mxnet_threads():
    """The OpenMP thread count MXNet's operators run with in this process.

    MXNet reads ``OMP_NUM_THREADS`` once, when it loads, and sets OpenMP's thread count from it (half
    the cores when it is unset), so this reads OpenMP's own setting (libgomp, which MXNet and the
    native kernels share) rather than the environment variable.
    """
    try:
        return int(ctypes.CDLL('libgomp.so.1').omp_get_max_threads())
    except (OSError, AttributeError):  # another OpenMP runtime: the variable is the best evidence left
        value = os.environ.get('OMP_NUM_THREADS', '')
        return int(value) if value.isdigit() else None


@functools.lru_cache(maxsize=None)
def onednn_isa():
    """The instruction set oneDNN dispatches to under this process's environment, as its verbose mode names it.

    Asked of a child process with the same environment (about a second, once per process): oneDNN
    prints it only in verbose mode, at its first primitive.
    """
    env = {k: v for k, v in os.environ.items() if k not in startup.CAP_VARS}
    cap = startup.onednn_cap()
    if cap:
        env['DNNL_MAX_CPU_ISA'] = cap
    env.update(DNNL_VERBOSE='1', MKLDNN_VERBOSE='1')
    probe = compat.CHILD_PRELUDE + (_AMX_PERMISSION if startup.amx()['enabled'] else '') + _ISA_PROBE
    try:
        out = subprocess.run([sys.executable, '-c', probe], env=env, capture_output=True, text=True,
                             timeout=120).stdout
    except (OSError, subprocess.SubprocessError) as e:
        return f'unknown ({type(e).__name__})'
    for line in out.splitlines():
        if ',info,cpu,isa:' in line:
            return line.split(',info,cpu,isa:', 1)[1].strip()
    return 'unknown (oneDNN printed no isa line)'


def native_kernels(ctx=None):
    """{'used': bool, 'isa': what the kernels were compiled for, or 'reason': why they are not used}
    for layers on ``ctx`` (a Context or list; None: CPU)."""
    if not native.load():
        disabled = os.environ.get('D2LSEG_NATIVE', '1') == '0'
        return {'used': False,
                'reason': 'D2LSEG_NATIVE=0' if disabled else 'the build or load failed (see the warning)'}
    if ctx is not None and not native.enabled(ctx):
        return {'used': False, 'reason': 'not a CPU context'}
    return {'used': True, 'isa': native.compiled_isa(), 'library': os.path.basename(native.library_path())}


@functools.lru_cache(maxsize=None)
def git_commit():
    """The package's git commit (with '-dirty' for uncommitted changes), or None outside a checkout."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        rev = subprocess.run(['git', '-C', here, 'rev-parse', 'HEAD'], capture_output=True, text=True, timeout=10)
        if rev.returncode != 0:
            return None
        dirty = subprocess.run(['git', '-C', here, 'status', '--porcelain', '--untracked-files=no'],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return rev.stdout.strip() + ('-dirty' if dirty else '')


def versions():
    return {'d2lseg': __version__, 'mxnet': mx.__version__, 'numpy': np.__version__,
            'python': platform.python_version(), 'pillow': PIL.__version__}


def environment(ctx=None):
    """Everything above as one JSON-ready dict (stored under ``environment`` in histories and benchmarks);
    ``ctx``: the contexts the run uses (the native kernels serve CPU contexts only)."""
    model, flags = cpu_info()
    return {'cpu': model, 'cpu_flags': list(flags), 'cpus_usable': len(os.sched_getaffinity(0))
            if hasattr(os, 'sched_getaffinity') else os.cpu_count(),
            'onednn_isa': onednn_isa(), 'dnnl_max_cpu_isa': startup.user_cap(), 'amx': startup.amx(),
            'mxnet_threads': mxnet_threads(), 'omp_num_threads': os.environ.get('OMP_NUM_THREADS'),
            'native_kernels': native_kernels(ctx), 'versions': versions(), 'git_commit': git_commit(),
            'machine': platform.machine()}


def summary(env):
    """One line naming what matters for reproducibility, e.g. for a table header."""
    kernels = env['native_kernels']
    return (f"{env['cpu']}; oneDNN {env['onednn_isa']}; {env['mxnet_threads']} thread(s); native kernels "
            + (f"on ({kernels['isa']})" if kernels['used'] else f"off ({kernels['reason']})"))
