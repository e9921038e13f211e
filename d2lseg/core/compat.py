"""MXNet 1.9.1 on today's numpy: the numpy names it uses that numpy has since removed, restored.

MXNet 1.9.1 (2022, archived, no new release) looks these names up on ``numpy`` when it is imported or
when its operators run. numpy removed them in 1.24 (the builtin aliases) and 2.0 (NEP 52), so on
Python 3.12 (numpy 1.26) ``import mxnet`` stops at ``np.bool`` and on 3.13 (numpy 2.x) at ``np.PZERO``.
``restore_numpy_names`` puts back exactly the names MXNet uses (``tests/test_compat.py`` scans MXNet's
sources and fails when the installed numpy lacks one this table does not restore), each only where
the installed numpy lacks it, before MXNet is imported (``import d2lseg`` calls it first). The names
stay on ``numpy`` for the process, so your own code sees them too (docs/pythons.md lists them).

A leaf module: imports only numpy and the standard library, never MXNet or the rest of the package.
"""
import sys
import types
import warnings

import numpy as np


def _removed_financial(name):
    """numpy 1.20-1.26 kept these as stubs that raise (NEP 32); MXNet's fallback table only refers to them."""
    def stub(*args, **kwargs):
        raise RuntimeError(f"numpy.{name} was removed from numpy in 1.20 (NEP 32); use the numpy_financial package")
    stub.__name__ = name
    return stub


def _msort(a):
    """numpy < 2's ``msort``: a copy sorted along the first axis."""
    return np.sort(a, axis=0)


# name -> value, grouped by why numpy no longer has it. Values are what numpy < 1.24 / < 2 held.
GROUPS = {
    # numpy 1.24 removed the aliases of Python's builtins (deprecated in 1.20). MXNet uses np.bool and
    # np.int as dtypes (mxnet/numpy/multiarray.py, ndarray/numpy/_op.py, test_utils.py). numpy 2 brought
    # np.bool back (as np.bool_), so there only np.int is restored.
    'builtin aliases (removed in numpy 1.24)': {'bool': bool, 'int': int},
    # numpy 2.0 (NEP 52) removed the constants' aliases; mxnet/numpy/utils.py re-exports them and
    # gluon/contrib/estimator uses np.Inf.
    'constant aliases (removed in numpy 2.0)': {
        'Inf': float('inf'), 'PINF': float('inf'), 'NINF': float('-inf'), 'NaN': float('nan'),
        'NAN': float('nan'), 'PZERO': 0.0, 'NZERO': -0.0},
    # numpy 2.0 removed these function aliases; MXNet's fallback table (mxnet/numpy/fallback.py) and its
    # __array_function__ registration (numpy_dispatch_protocol.py) look them up when mxnet is imported.
    'function aliases (removed in numpy 2.0)': {
        'alltrue': np.all, 'sometrue': np.any, 'product': np.prod, 'round_': np.round,
        'msort': _msort},
    # Removed in numpy 1.20 (NEP 32) but kept as raising stubs until numpy 2.0; mxnet/numpy/fallback.py
    # binds them at import.
    'financial functions (stubs; removed in numpy 2.0)': {
        n: _removed_financial(n) for n in ('mirr', 'npv', 'pmt', 'ppmt', 'pv', 'rate')},
    # numpy 2.0 removed numpy.compat; MXNet's pad checks isinstance(mode, np.compat.basestring).
    'numpy.compat (removed in numpy 2.0)': {'compat': types.SimpleNamespace(basestring=str)},
}

# The names ``restore_numpy_names`` set in this process (empty where numpy had them all).
RESTORED = []


# Python code that restores the names in a child process that imports MXNet without d2lseg (this file is
# loaded by path: importing d2lseg.core.compat would import the whole package).
CHILD_PRELUDE = ("import importlib.util as _u; _s = _u.spec_from_file_location('_d2lseg_compat', %r); "
                 "_m = _u.module_from_spec(_s); _s.loader.exec_module(_m); _m.restore_numpy_names(); " % __file__)


def _has(name):
    with warnings.catch_warnings():  # numpy 1.2x warns on the deprecated names it still answers
        warnings.simplefilter('ignore')
        return hasattr(np, name)


def restore_numpy_names():
    """Set every name of ``GROUPS`` that the installed numpy lacks; -> the names set (also in ``RESTORED``).
    Idempotent; a name numpy has is never replaced."""
    for names in GROUPS.values():
        for name, value in names.items():
            if name not in RESTORED and not _has(name):
                setattr(np, name, value)
                RESTORED.append(name)
    return list(RESTORED)


def python_version():
    """'3.12' for this interpreter."""
    return '%d.%d' % sys.version_info[:2]


SUPPORTED_PYTHONS = ('3.9', '3.10', '3.11', '3.12', '3.13')

# The command that installs MXNet 1.9.1 on this Python: on 3.13 pip cannot satisfy MXNet's declared
# numpy<2 (numpy 1.26 has no 3.13 wheel), so MXNet is installed without its declared dependencies.
MXNET_INSTALL = ('pip install --no-deps mxnet==1.9.1 requests' if sys.version_info >= (3, 13)
                 else 'pip install mxnet==1.9.1')


def mxnet_missing_message():
    """The one line shown when MXNet cannot be imported."""
    return (f"MXNet 1.9.1 is not installed for this Python ({sys.executable}, {python_version()}): "
            f"run `make venv` in the d2lseg checkout, or `{MXNET_INSTALL}` (GPU: mxnet-cu112==1.9.1)")


# A missing MXNet is recorded here instead of raised (``import_mxnet``): ``import d2lseg`` still works for the
# parts that need no MXNet (``d2lseg.deploy.onnxrun``, ``d2lseg predict --onnx``), the names that need it raise an
# ImportError of this line when first used, and the command says it in one line or runs `d2lseg doctor`.
MXNET_ERROR = None


def import_mxnet():
    """Import MXNet -> True; when it cannot be imported, record the one line naming the command that fixes it
    in ``MXNET_ERROR`` and return False."""
    global MXNET_ERROR
    try:
        _import_mxnet()
    except ImportError as e:
        MXNET_ERROR = str(e)
        return False
    return True


def _import_mxnet():
    try:
        import mxnet  # noqa: F401
    except ImportError as e:
        if e.name == 'mxnet':
            raise ImportError(mxnet_missing_message()) from None
        if e.name == 'distutils':
            raise ImportError(f"MXNet 1.9.1 imports distutils, which Python {python_version()} no longer ships: "
                              "`pip install setuptools` (make venv does)") from None
        raise

