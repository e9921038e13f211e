"""d2lseg.core.compat: the numpy names MXNet 1.9.1 uses, restored exactly where the installed numpy lacks them."""
import ast
import importlib.util
import math
import os
import subprocess
import sys
import types
import warnings

import numpy as np
import pytest

from d2lseg.core import compat

pytestmark = pytest.mark.tier
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _numpy_aliases(tree):
    return {a.asname or a.name for node in ast.walk(tree) if isinstance(node, ast.Import)
            for a in node.names if a.name == 'numpy'}


def numpy_names_used(package_dir):
    """{name: files} of the attributes MXNet's Python sources look up on numpy: ``np.X`` and ``np.X.Y`` on a
    name bound by ``import numpy``, ``from numpy import X``, ``getattr(np, 'X')``, and, in a file that calls
    ``getattr(np, variable)``, every string of its module-level lists (numpy_dispatch_protocol.py's)."""
    used = {}
    for folder, _, files in os.walk(package_dir):
        for f in (f for f in files if f.endswith('.py')):
            path = os.path.join(folder, f)
            with open(path, encoding='utf-8') as fh, warnings.catch_warnings():
                warnings.simplefilter('ignore')  # MXNet's invalid escape sequences
                tree = ast.parse(fh.read())
            aliases, dynamic, names = _numpy_aliases(tree), False, set()
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom) and node.module == 'numpy' and node.level == 0:
                    names |= {a.name for a in node.names}
                elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases:
                    names.add(node.attr)
                elif (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute)
                      and isinstance(node.value.value, ast.Name) and node.value.value.id in aliases):
                    names.add(f'{node.value.attr}.{node.attr}')
                elif (isinstance(node, ast.Call) and getattr(node.func, 'id', None) in ('getattr', 'hasattr')
                      and len(node.args) >= 2 and getattr(node.args[0], 'id', None) in aliases):
                    if isinstance(node.args[1], ast.Constant):
                        names.add(node.args[1].value)
                    else:
                        dynamic = True
            if dynamic:
                for node in tree.body:
                    if isinstance(node, ast.Assign) and isinstance(node.value, (ast.List, ast.Tuple)):
                        names |= {e.value.split('.')[0] for e in node.value.elts
                                  if isinstance(e, ast.Constant) and isinstance(e.value, str)}
            for name in names:
                used.setdefault(name, set()).add(os.path.relpath(path, package_dir))
    return used


def _numpy_has(dotted):
    obj = np
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        for part in dotted.split('.'):
            if not hasattr(obj, part):
                return False
            obj = getattr(obj, part)
    return True


@pytest.fixture(scope='module')
def used():
    return numpy_names_used(os.path.dirname(importlib.util.find_spec('mxnet').origin))


def test_the_scan_finds_what_mxnet_is_known_to_use(used):
    # names of each kind the scan must see (else it would pass by seeing nothing)
    for name in ('bool', 'float32', 'PZERO', 'alltrue', 'mirr', 'round_', 'product', 'compat.basestring'):
        assert name in used, name
    assert len(used) > 200


def test_every_numpy_name_mxnet_uses_is_there_after_import_d2lseg(used):
    missing = sorted(n for n in used if not _numpy_has(n))
    assert not missing, (f'numpy {np.__version__} lacks names MXNet uses that d2lseg.core.compat does not restore: '
                         f'{[(n, sorted(used[n])[:2]) for n in missing]}')


def test_compat_restores_only_names_mxnet_uses(used):
    table = {n for names in compat.GROUPS.values() for n in names}
    assert table <= set(used), sorted(table - set(used))
    assert set(compat.RESTORED) <= table


def test_a_name_numpy_has_is_never_replaced(monkeypatch):
    fake = types.ModuleType('numpy')
    fake.int = 'numpy-own'
    fake.all, fake.any, fake.prod, fake.round, fake.sort = np.all, np.any, np.prod, np.round, np.sort
    monkeypatch.setattr(compat, 'np', fake)
    monkeypatch.setattr(compat, 'RESTORED', [])
    restored = compat.restore_numpy_names()
    assert fake.int == 'numpy-own' and 'int' not in restored
    assert 'bool' in restored and fake.bool is bool and 'PZERO' in restored
    assert compat.restore_numpy_names() == restored  # idempotent


def test_restored_values_behave_as_numpy_1_did():
    g = {k: v for names in compat.GROUPS.values() for k, v in names.items()}
    assert g['alltrue']([True, False]) is np.False_ and g['sometrue']([False, True]) is np.True_
    assert g['product']([2, 3, 4]) == 24 and g['round_'](2.567, 1) == 2.6
    assert math.copysign(1, g['NZERO']) == -1 and g['PZERO'] == 0 and g['NINF'] == -math.inf
    assert math.isnan(g['NaN']) and g['Inf'] == math.inf
    np.testing.assert_array_equal(g['msort'](np.array([[3, 1], [1, 2]])), [[1, 1], [3, 2]])
    with pytest.raises(RuntimeError, match='numpy_financial'):
        g['npv'](0.1, [1, 2])
    assert g['compat'].basestring is str and g['int'] is int and g['bool'] is bool


def _run(code, **env):
    return subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300, cwd=ROOT,
                          env={**os.environ, **env})


def test_mxnet_runs_what_the_chapter_needs_after_import_d2lseg():
    # a fresh process: d2lseg first, then MXNet's numpy front end and the modules that bind the old names
    code = ('import d2lseg, numpy, mxnet as mx; from mxnet.numpy import fallback; import mxnet.numpy.utils; '
            'from mxnet.gluon.contrib import estimator; from mxnet.gluon.model_zoo import vision; '
            'from mxnet import autograd; net = vision.resnet18_v2(); net.initialize(); x = mx.nd.random.uniform(shape=(1, 3, 64, 64)); '
            'x.attach_grad()\nwith autograd.record(): y = net(x)\ny.backward(); '
            'print(y.shape, float(x.grad.abs().sum().asscalar()) > 0, fallback.alltrue is numpy.alltrue)')
    out = _run(code)
    assert out.returncode == 0, out.stderr[-800:]
    assert out.stdout.split('\n')[-2] == '(1, 1000) True True'


def test_a_missing_mxnet_is_one_line_naming_the_command():
    hide = "import sys; sys.modules['mxnet'] = None; "
    out = _run(hide + 'import d2lseg as d2l; d2l.train')  # import d2lseg itself works (d2lseg.deploy.onnxrun needs no MXNet)
    assert out.returncode == 1
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith('ImportError: d2lseg.train needs MXNet: MXNet 1.9.1 is not installed for this Python')
    assert 'make venv' in last
    assert compat.MXNET_INSTALL in last
    # the command: one line, exit 2; doctor runs and names the problem (exit 1)
    cmd = hide + "sys.argv = ['d2lseg'] + sys.argv[1:]; from d2lseg.__main__ import main; sys.exit(main(%r))"
    out = _run(cmd % (['train'],))
    assert out.returncode == 2 and out.stderr.count('\n') == 1, out.stderr
    assert out.stderr.startswith('d2lseg: error: MXNet 1.9.1 is not installed') and 'd2lseg doctor' in out.stderr
    out = _run(cmd % (['doctor'],))
    assert out.returncode == 1, out.stderr
    assert 'FAIL  MXNet 1.9.1 is not installed' in out.stdout and 'problem(s) to fix' in out.stdout
    assert 'Traceback' not in out.stderr
