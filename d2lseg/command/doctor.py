"""``d2lseg doctor``: what this machine has for d2lseg, one line each, every problem with its fix.

Runs without MXNet (it says how to install it): the MXNet-dependent checks import it only when
``import d2lseg`` found it. Exit status 1 when something required is missing (a supported Python,
MXNet 1.9.1, the numpy names MXNet uses), else 0; optional things (the native kernels' compiler,
Chromium for the book, free disk) are warnings.
"""
import os
import platform
import shutil
import sys

import numpy as np

from ..core import compat, startup

OK, WARN, FAIL = 'ok', 'warn', 'FAIL'
FREE_DISK_WARN = 2 * 1024 ** 3  # a run folder is 130-300 MB, the demo's data set about 40 MB, the venv 1 GB

# The numpy each supported Python gets (setup.py); others may work but were not tested.
TESTED_NUMPY = {'3.9': '1.23.5', '3.10': '1.23.5', '3.11': '1.23.5', '3.12': '1.26.4', '3.13': '2.2'}


def _python():
    v = compat.python_version()
    if v in compat.SUPPORTED_PYTHONS:
        return OK, f'Python {platform.python_version()} ({sys.executable})', None
    return FAIL, f'Python {platform.python_version()} is not supported', \
        'use Python 3.9-3.13: make venv PYTHON=python3.12 (pyenv install 3.12, apt install python3.12-venv)'


def _numpy():
    v = compat.python_version()
    tested = TESTED_NUMPY.get(v)
    restored = ', '.join(compat.RESTORED) or 'none needed'
    line = f'numpy {np.__version__}; names restored for MXNet: {restored}'
    if tested and not np.__version__.startswith(tested):
        return WARN, line, f'CI tests numpy {tested} on Python {v}: make venv installs it'
    return OK, line, None


def _mxnet(error):
    if error:
        return FAIL, error, None
    import mxnet as mx
    if mx.__version__ != '1.9.1':
        return WARN, f'MXNet {mx.__version__} (d2lseg is tested with 1.9.1)', 'pip install mxnet==1.9.1'
    gpus = mx.context.num_gpus()
    return OK, f'MXNet {mx.__version__} ({mx.__file__.rsplit(os.sep, 2)[0]}), {gpus} GPU(s) visible', None


def _threads():
    usable = startup.default_threads()
    value = os.environ.get('OMP_NUM_THREADS', '')
    line = f'threads: OMP_NUM_THREADS={value or "unset"}, {usable} CPU(s) usable'
    if value and (not value.isdigit() or int(value) < 1):
        return WARN, line + ' (not a positive whole number)', f'export OMP_NUM_THREADS={usable}, or unset it'
    if value.isdigit() and int(value) > usable:
        return WARN, line + ' (more threads than CPUs: slower)', f'export OMP_NUM_THREADS={usable}, or unset it'
    return OK, line, None


def _onednn():
    from ..native import environment
    amx = startup.amx()
    cap = startup.user_cap()
    line = (f'oneDNN: {environment.onednn_isa()}' + (f' (DNNL_MAX_CPU_ISA={cap})' if cap else '')
            + f"; AMX {'on' if amx['enabled'] else 'off'} ({amx['reason']})")
    return OK, line, None


def _native():
    from ..native import library
    compiler = os.environ.get('CXX', 'g++')
    if os.environ.get('D2LSEG_NATIVE', '1') == '0':
        return OK, 'native kernels: off (D2LSEG_NATIVE=0)', None
    if shutil.which(compiler) is None:
        return WARN, f'native kernels: no C++ compiler ({compiler}); MXNet operators used (slower)', \
            'apt install g++ (or set CXX), then make kernels'
    if not library.load():
        return WARN, 'native kernels: the build or load failed (the warning above says why)', \
            'fix the compiler, or D2LSEG_NATIVE=0 to skip the build'
    return OK, f'native kernels: on, compiled for {library.compiled_isa()} by {compiler} ' \
               f'({os.path.dirname(library.library_path())})', None


def _disk(folders):
    results = []
    for label, folder in folders:
        probe = folder
        while probe and not os.path.exists(probe):
            probe = os.path.dirname(probe)
        try:
            free = shutil.disk_usage(probe or '.').free
        except OSError as e:
            results.append((WARN, f'free disk for {label} ({folder}): unknown ({e.strerror})', None))
            continue
        line = f'free disk for {label} ({folder}): {free / 1024 ** 3:.1f} GB'
        fix = 'free space: a run folder takes 130-300 MB' if free < FREE_DISK_WARN else None
        results.append((WARN if fix else OK, line, fix))
    return results


def _chromium():
    found = next((shutil.which(n) for n in ('chromium', 'chromium-browser', 'google-chrome') if shutil.which(n)), None)
    if found:
        return OK, f'Chromium for the book test: {found}', None
    return WARN, 'no Chromium: make book works; its browser test is skipped', 'apt install chromium (optional)'


def checks(mxnet_error=None):
    """[(status, line, fix or None)] for this process."""
    results = [_python(), _numpy(), _mxnet(mxnet_error), _threads()]
    folders = [('runs', os.path.abspath('runs')), ('data', os.path.abspath('data'))]
    if not mxnet_error:
        from ..native.library import cache_dir
        results += [_onednn(), _native()]
        folders.append(('the kernel cache', cache_dir()))
    results += _disk(folders)
    results.append(_chromium())
    return results


def main(mxnet_error=None, out=sys.stdout):
    """Print the checks; -> 1 when one FAILed, else 0."""
    results = checks(mxnet_error)
    for status, line, fix in results:
        print(f'{status:>4}  {line}' + (f' -- fix: {fix}' if fix else ''), file=out)
    failed = sum(s == FAIL for s, _, _ in results)
    warned = sum(s == WARN for s, _, _ in results)
    print(f"d2lseg doctor: {'%d problem(s) to fix' % failed if failed else 'ready'}"
          + (f', {warned} warning(s)' if warned else ''), file=out)
    return 1 if failed else 0

