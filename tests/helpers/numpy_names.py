"""For helpers that import MXNet *before* d2lseg (to test what happens then): restore the numpy names MXNet
1.9.1 uses, as ``import d2lseg`` would, without importing d2lseg (d2lseg/core/compat.py loaded by its path).
Without this, such a child cannot import MXNet at all on numpy >= 1.24 (Python 3.12, 3.13)."""
import importlib.util
import os

_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..', 'd2lseg', 'core', 'compat.py')


def restore():
    spec = importlib.util.spec_from_file_location('_d2lseg_compat', _PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.restore_numpy_names()
