"""Compiling, caching and loading the native kernels (``csrc/kernels.cc``): the machine's C++ compiler, once.

The library is compiled once per machine (about 15 s; ``g++ -O3 -march=native -fopenmp``, plus
``-mno-avx512f`` under ``DNNL_MAX_CPU_ISA=AVX2``: ``isa_flags``) into ``$D2LSEG_CACHE`` (default
``~/.cache/d2lseg``), keyed by the source, MXNet's version, the CPU's features and the flags, and
loaded through MXNet's extension library API (``mx.library.load``, MXNet >= 1.7).

Loading a shared library runs its code, so the cache is guarded. Against other users: the folder is
created 0700, tightened to 0700 when it is the user's own and group-writable (older versions made it
with the umask), and refused when another user owns it or anyone may write to it. Against anything
at the predictable file name that the build did not write (a planted, truncated or empty file): a
library is loaded only when its SHA-256 equals the digest the build wrote beside it
(``kernels-*.so.sha256``), else it is rebuilt. Builds write to a temporary name and rename; the build
lock is opened without following links or truncating.
"""
import ctypes
import fcntl
import hashlib
import os
import stat
import subprocess
import tempfile
import warnings

import mxnet as mx

from ..core import startup
from ..core.errors import D2lsegError, first_line
from ..core.textfiles import read_text, sha256_of

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'csrc', 'kernels.cc')
_state = {}


def cache_dir():
    """Folder of built libraries: ``$D2LSEG_CACHE`` or ``~/.cache/d2lseg``."""
    return os.environ.get('D2LSEG_CACHE') or os.path.join(os.path.expanduser('~'), '.cache', 'd2lseg')


def _mxnet_root():
    return os.path.dirname(os.path.abspath(mx.__file__))


# oneDNN's instruction-set caps below AVX-512 (``ALL`` and the AVX512_* ones leave the kernels alone)
CAPS_BELOW_AVX512 = ('SSE41', 'AVX', 'AVX2', 'AVX2_VNNI', 'AVX2_VNNI_2')


def isa_flags():
    """Compiler flags for the machine the user simulates: with ``DNNL_MAX_CPU_ISA`` below AVX-512
    (``CAPS_BELOW_AVX512``) the kernels are built without AVX-512 too, so that one variable simulates an AVX2
    CPU for oneDNN and the kernels alike (their AVX-512 paths give the AVX2 paths' bits: tests/test_kernels.py)."""
    cap = (startup.user_cap() or '').strip().upper()
    return ['-mno-avx512f'] if cap in CAPS_BELOW_AVX512 else []


def _flags():
    """The compiler and its flags: everything about a build but the file names."""
    return [os.environ.get('CXX', 'g++'), '-O3', '-march=native', *isa_flags(), '-fopenmp', '-shared', '-fPIC',
            '-std=c++17']


def _compile_command(out):
    root = _mxnet_root()
    return [*_flags(), '-I', os.path.join(root, 'include'), SOURCE, os.path.join(root, 'src', 'lib_api.cc'),
            '-o', out]


def library_path():
    """Where this machine's build of the kernels lives (the name changes with anything that matters)."""
    h = hashlib.sha1()
    with open(SOURCE, 'rb') as f:
        source = f.read()
    for part in (source, mx.__version__.encode(), startup.cpuinfo().get('flags', '').encode(),
                 ' '.join([*_flags(), '-I']).encode()):
        h.update(part)
    return os.path.join(cache_dir(), f'kernels-{h.hexdigest()[:16]}.so')


def verified(path):
    """True when ``path`` is a regular file (not a link) whose SHA-256 is the digest its build wrote."""
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):
            return False
        return read_text(path + '.sha256', limit=1024).strip() == sha256_of(path)  # bounded: a FIFO there never hangs
    except (OSError, D2lsegError):
        return False


def _private_dir(folder):
    """Create ``folder`` 0700 when missing; RuntimeError naming it when another user owns it or others
    may write to it (then a library found there could be anyone's)."""
    os.makedirs(folder, mode=0o700, exist_ok=True)
    st = os.stat(folder)
    if hasattr(os, 'getuid') and st.st_uid != os.getuid():
        raise RuntimeError(f'{folder}: the kernel cache belongs to another user; set D2LSEG_CACHE to a folder of yours')
    if st.st_mode & stat.S_IWOTH:
        raise RuntimeError(f'{folder}: the kernel cache is writable by other users; chmod 700 it '
                           f'(or set D2LSEG_CACHE to a private folder)')
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        os.chmod(folder, 0o700)


def build(path=None):
    """Compile the kernels to ``path`` unless a verified build is there -> path. Safe with concurrent
    processes. Raises RuntimeError naming the file or folder (or with the compiler's first error line)."""
    path = path or library_path()
    folder = os.path.dirname(path)
    _private_dir(folder)
    if verified(path):
        return path
    fd = os.open(path + '.lock', os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        if verified(path):  # another process built it while this one waited
            return path
        fd_so, tmp = tempfile.mkstemp(suffix='.so', dir=folder)
        os.close(fd_so)
        try:
            try:
                proc = subprocess.run(_compile_command(tmp), capture_output=True, text=True, timeout=600)
            except (OSError, subprocess.TimeoutExpired) as e:
                raise RuntimeError(f'cannot run the C++ compiler: {e}') from None
            if proc.returncode != 0:
                errors = [line for line in proc.stderr.splitlines() if 'error' in line] or ['unknown error']
                raise RuntimeError(f'compiling {SOURCE} failed: {errors[0].strip()}')
            digest = sha256_of(tmp)
            os.replace(tmp, path)  # replaces a planted or broken file (a link is replaced, not followed)
            _write_private(path + '.sha256', digest + '\n')
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    finally:
        os.close(fd)
    return path


def _write_private(path, text):
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path))
    try:
        with os.fdopen(fd, 'w') as f:
            f.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def load():
    """Build (once per machine) and load the kernels -> True; False (one warning) when they cannot be."""
    if 'ok' not in _state:
        _state['ok'] = False
        if os.environ.get('D2LSEG_NATIVE', '1') != '0':
            path = os.path.join(cache_dir(), 'kernels-*.so')  # named in the warning if even this fails
            try:
                path = library_path()
                path = build(path)
                mx.library.load(path, verbose=False)
                _state['ok'] = True
            except Exception as e:  # any failure leaves MXNet's operators in use
                first = first_line(e, 300)
                warnings.warn(f'd2lseg: native kernels unavailable ({path}: {first}); using MXNet operators '
                              f'(slower). D2LSEG_NATIVE=0 skips the build.', RuntimeWarning, stacklevel=2)
    return _state['ok']


def compiled_isa():
    """The instruction sets the loaded library was compiled for, e.g. 'fma avx2 avx512f' (None if not loaded)."""
    if not _state.get('ok'):
        return None
    fn = ctypes.CDLL(library_path()).d2lseg_isa  # the library mx.library.load opened: dlopen shares it
    fn.restype = ctypes.c_char_p
    return fn().decode()
