"""The thread count MXNet really uses, and the environment record every history and benchmark carries."""
import ast
import glob
import json
import os
import subprocess
import sys

import pytest

from d2lseg.native import environment
from d2lseg import native

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
THREADS = os.path.join(ROOT, 'tests', 'helpers', 'threads.py')
ISA = os.path.join(ROOT, 'tests', 'helpers', 'environment_isa.py')


def threads_in_child(order, **env):
    """MXNet's OpenMP thread count in a fresh process importing d2lseg and mxnet in ``order``."""
    child_env = {k: v for k, v in os.environ.items() if k != 'OMP_NUM_THREADS'}
    child_env.update(env)
    out = subprocess.run([sys.executable, THREADS, order], env=child_env, capture_output=True, text=True, check=True)
    return int(out.stdout.split()[-1])


def test_this_suite_runs_mxnet_with_the_threads_d2lseg_sets():
    # conftest imports d2lseg before mxnet: OpenMP got the variable d2lseg set (or the user's)
    assert environment.mxnet_threads() == int(os.environ['OMP_NUM_THREADS'])


def test_d2lseg_first_gives_mxnet_every_usable_cpu_and_the_evidence_can_tell():
    cpus = len(os.sched_getaffinity(0))
    assert threads_in_child('d2lseg-first') == cpus
    assert threads_in_child('d2lseg-first', OMP_NUM_THREADS='1') == 1
    # MXNet loaded first reads no variable and takes its own default (half the cores, at least 1):
    # the check above would catch an import order that loses the setting
    assert threads_in_child('mxnet-first') == max(1, cpus // 2)


def test_environment_names_cpu_isa_threads_kernels_and_versions():
    env = environment.environment()
    model, flags = environment.cpu_info()
    assert env['cpu'] == model and model and set(flags) <= set(environment.ISA_FLAGS)
    assert env['mxnet_threads'] == environment.mxnet_threads() and env['cpus_usable'] >= 1
    assert env['versions']['mxnet'] == '1.9.1' and env['versions']['d2lseg']
    assert 'AVX' in env['onednn_isa'] or 'SSE' in env['onednn_isa'], env['onednn_isa']
    assert env['git_commit'] is None or len(env['git_commit'].split('-')[0]) == 40
    kernels = env['native_kernels']
    assert kernels['used'] == native.load()
    if kernels['used']:
        assert kernels['isa'].split()[:2] == ['fma', 'avx2'] and kernels['library'].endswith('.so')
    json.dumps(env)  # JSON-ready
    assert environment.summary(env).startswith(model)


def test_the_isa_record_follows_the_cap_and_the_kernels_switch():
    child = {**os.environ, 'DNNL_MAX_CPU_ISA': 'AVX2', 'D2LSEG_NATIVE': '0'}
    isa, native, cap = json.loads(subprocess.run([sys.executable, ISA], env=child, capture_output=True,
                                                 text=True, check=True).stdout)
    assert isa == 'Intel AVX2' and cap == 'AVX2'
    assert native == {'used': False, 'reason': 'D2LSEG_NATIVE=0'}


def _imports(tree):
    """Top-level module names imported, in order of appearance."""
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [(node.lineno, a.name.split('.')[0]) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append((node.lineno, node.module.split('.')[0]))
    return [name for _, name in sorted(names)]


def _first_of(names):
    return next((n for n in names if n in ('d2lseg', 'mxnet')), None)


@pytest.mark.parametrize('path', sorted(glob.glob(os.path.join(ROOT, 'bench', '*.py')))
                         + [os.path.join(ROOT, 'tests', 'conftest.py')])
def test_scripts_import_d2lseg_before_mxnet(path):
    with open(path) as f:
        names = _imports(ast.parse(f.read()))
    assert _first_of(names) in ('d2lseg', None), f'{path} imports mxnet before d2lseg'


@pytest.mark.parametrize('path', sorted(glob.glob(os.path.join(ROOT, 'notebooks', '*.ipynb'))))
def test_notebooks_import_d2lseg_before_mxnet(path):
    with open(path) as f:
        cells = [''.join(c['source']) for c in json.load(f)['cells'] if c['cell_type'] == 'code']
    source = '\n'.join(line for cell in cells for line in cell.splitlines() if not line.startswith(('%', '!')))
    assert _first_of(_imports(ast.parse(source))) == 'd2lseg', path
