"""Native CPU kernels for the FCN's head, built with the machine's C++ compiler on first use.

``csrc/kernels.cc`` registers four MXNet operators through MXNet's extension library API
(``mx.library.load``, MXNet >= 1.7):

- ``d2lseg_upsample``: ``FastUpsampling``'s transposed convolution in one pass (no padding,
  slicing, concatenation or intermediate arrays), forward and backward;
- ``d2lseg_upsample_argmax``: the argmax over classes of that upsampling's output, without writing
  the output (``inference.predict_batch``, so ``evaluate`` and ``predict``);
- ``d2lseg_softmax_ce``: ``training.SegmentationLoss`` (per-sample mean softmax cross-entropy
  over axis 1, label 255 skipped), whose backward recomputes the softmax instead of storing it;
- ``d2lseg_argmax``: argmax over axis 1 (the first maximum wins, as ``nd.argmax``).

tests/test_kernels.py checks every output and gradient against MXNet's own operators. The library
is compiled once per machine (about 10 s; ``g++ -O3 -march=native -fopenmp``) into
``$D2LSEG_CACHE`` (default ``~/.cache/d2lseg``), keyed by the source, MXNet's version and the
CPU's features. Without a compiler, AVX2/FMA or a CPU context the package keeps MXNet's operators
(one warning says why); ``D2LSEG_NATIVE=0`` turns the kernels off.
"""
import ctypes
import fcntl
import hashlib
import os
import subprocess
import tempfile
import warnings

import mxnet as mx
from mxnet import nd

from .errors import first_line

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'csrc', 'kernels.cc')
_state = {}


def cache_dir():
    """Folder of built libraries: ``$D2LSEG_CACHE`` or ``~/.cache/d2lseg``."""
    return os.environ.get('D2LSEG_CACHE') or os.path.join(os.path.expanduser('~'), '.cache', 'd2lseg')


def _mxnet_root():
    return os.path.dirname(os.path.abspath(mx.__file__))


def _compile_command(out):
    root = _mxnet_root()
    return [os.environ.get('CXX', 'g++'), '-O3', '-march=native', '-fopenmp', '-shared', '-fPIC', '-std=c++17',
            '-I', os.path.join(root, 'include'), SOURCE, os.path.join(root, 'src', 'lib_api.cc'), '-o', out]


def _cpu_features():
    try:
        with open('/proc/cpuinfo') as f:
            return next((line for line in f if line.startswith('flags')), '')
    except OSError:
        return ''


def library_path():
    """Where this machine's build of the kernels lives (the name changes with anything that matters)."""
    h = hashlib.sha1()
    for part in (open(SOURCE, 'rb').read(), mx.__version__.encode(), _cpu_features().encode(),
                 ' '.join(_compile_command('')[:8]).encode()):
        h.update(part)
    return os.path.join(cache_dir(), f'kernels-{h.hexdigest()[:16]}.so')


def build(path=None):
    """Compile the kernels to ``path`` unless it exists -> path. Safe with concurrent processes.

    Raises RuntimeError with the compiler's first error line when the build fails.
    """
    path = path or library_path()
    if os.path.isfile(path):
        return path
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + '.lock', 'w') as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if os.path.isfile(path):  # another process built it while this one waited
            return path
        fd, tmp = tempfile.mkstemp(suffix='.so', dir=os.path.dirname(path))
        os.close(fd)
        try:
            try:
                proc = subprocess.run(_compile_command(tmp), capture_output=True, text=True, timeout=600)
            except (OSError, subprocess.TimeoutExpired) as e:
                raise RuntimeError(f'cannot run the C++ compiler: {e}') from None
            if proc.returncode != 0:
                errors = [line for line in proc.stderr.splitlines() if 'error' in line] or ['unknown error']
                raise RuntimeError(f'compiling {SOURCE} failed: {errors[0].strip()}')
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    return path


def load():
    """Build (once per machine) and load the kernels -> True; False (one warning) when they cannot be."""
    if 'ok' not in _state:
        _state['ok'] = False
        if os.environ.get('D2LSEG_NATIVE', '1') != '0':
            try:
                mx.library.load(build(), verbose=False)
                _state['ok'] = True
            except Exception as e:  # any failure leaves MXNet's operators in use
                first = first_line(e, 300)
                warnings.warn(f'd2lseg: native kernels unavailable ({first}); using MXNet operators '
                              f'(slower). D2LSEG_NATIVE=0 skips the build.', RuntimeWarning, stacklevel=2)
    return _state['ok']


def compiled_isa():
    """The instruction sets the loaded library was compiled for, e.g. 'fma avx2 avx512f' (None if not loaded)."""
    if not _state.get('ok'):
        return None
    fn = ctypes.CDLL(library_path()).d2lseg_isa  # the library mx.library.load opened: dlopen shares it
    fn.restype = ctypes.c_char_p
    return fn().decode()


def wanted(native):
    """Whether a layer whose ``native`` is None (when the kernels load), True or False uses them."""
    return load() if native is None else bool(native and load())


def _all_cpu(ctx):
    return all(c.device_type == 'cpu' for c in (ctx if isinstance(ctx, (list, tuple)) else [ctx]))


def native_default(ctx):
    """The ``native`` setting for layers on ``ctx`` (a list of Contexts): None on CPUs, False otherwise."""
    return None if _all_cpu(ctx) else False


def usable(ctx=None):
    """True when the kernels are loaded and every context of ``ctx`` (a Context or list) is a CPU."""
    return (ctx is None or _all_cpu(ctx)) and load()


def argmax_channel(scores):
    """Class index per pixel: (N, C, H, W) scores -> (N, H, W) float32, as ``scores.argmax(axis=1)``."""
    if usable(scores.context):
        return nd.d2lseg_argmax(scores)
    return scores.argmax(axis=1)
