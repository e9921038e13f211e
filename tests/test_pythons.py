"""Today's Pythons: which Python the two commands pick, when .venv is rebuilt, `make clean`, `d2lseg doctor`,
the per-Python pins, and the same training numbers on another Python as on the default one."""
import json
import os
import re
import shutil
import stat
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV_SH = os.path.join(ROOT, 'tools', 'venv.sh')


def fake_python(folder, name, version):
    """An executable ``name`` in ``folder`` that answers the version probe with ``version``."""
    path = os.path.join(folder, name)
    with open(path, 'w') as f:
        f.write(f'#!/bin/sh\necho {version}\n')
    os.chmod(path, os.stat(path).st_mode | stat.S_IEXEC)
    return path


def plan(tmp_path, venv, python='', path=None):
    env = {**os.environ, 'PATH': path if path is not None else os.environ['PATH']}
    out = subprocess.run(['bash', VENV_SH, str(venv), python, 'cpu', 'plan'], capture_output=True, text=True,
                         cwd=ROOT, env=env, timeout=60)
    return out.returncode, out.stdout.strip(), out.stderr.strip()


@pytest.fixture
def bin_dir(tmp_path):
    folder = tmp_path / 'bin'
    folder.mkdir()
    for tool in ('bash', 'cat', 'cksum', 'cut', 'rm', 'dirname'):   # what venv.sh runs besides Python
        os.symlink(shutil.which(tool), folder / tool)
    return str(folder)


def test_python_choice_python_given_then_python3_then_newest_supported(tmp_path, bin_dir):
    venv = tmp_path / 'venv'
    fake_python(bin_dir, 'python3', '3.14')        # today's newest Python: not supported by MXNet 1.9.1
    fake_python(bin_dir, 'python3.12', '3.12')
    fake_python(bin_dir, 'python3.13', '3.13')
    fake_python(bin_dir, 'python3.9', '3.9')
    assert plan(tmp_path, venv, path=bin_dir)[1] == 'python=python3.13 version=3.13 action=create'
    assert plan(tmp_path, venv, os.path.join(bin_dir, 'python3.12'), path=bin_dir)[1] == \
        f'python={bin_dir}/python3.12 version=3.12 action=create'
    fake_python(bin_dir, 'python3', '3.11')
    assert plan(tmp_path, venv, path=bin_dir)[1] == 'python=python3 version=3.11 action=create'


def test_no_supported_python_is_one_line_naming_the_versions(tmp_path, bin_dir):
    fake_python(bin_dir, 'python3', '3.14')
    code, out, err = plan(tmp_path, tmp_path / 'venv', path=bin_dir)
    assert code == 2 and out == '' and err.count('\n') == 0
    assert 'no Python 3.9-3.13 found (python3 is 3.14)' in err and 'PYTHON=' in err
    code, _, err = plan(tmp_path, tmp_path / 'venv', fake_python(bin_dir, 'py38', '3.8'), path=bin_dir)
    assert code == 2 and 'is Python 3.8; d2lseg runs on Python 3.9-3.13' in err
    code, _, err = plan(tmp_path, tmp_path / 'venv', os.path.join(bin_dir, 'nothing'), path=bin_dir)
    assert code == 2 and 'does not run here' in err


def test_a_venv_of_another_python_or_half_made_is_rebuilt(tmp_path, bin_dir):
    """After `make venv PYTHON=python3.12` failed, PYTHON=python3.11 must not keep the 3.12 venv (the trap of
    the old Makefile, whose only way out was make clean, which also deleted runs/)."""
    venv = tmp_path / 'venv'
    (venv / 'bin').mkdir(parents=True)
    fake_python(str(venv / 'bin'), 'python', '3.12')
    py311 = fake_python(bin_dir, 'python3.11', '3.11')
    assert plan(tmp_path, venv, py311, path=bin_dir)[1].endswith('version=3.11 action=rebuild')
    # no PYTHON: a complete venv of a supported Python is kept; a half-made one is rebuilt
    assert plan(tmp_path, venv, path=bin_dir + ':' + os.environ['PATH'])[1].endswith('action=rebuild')
    (venv / '.installing').write_text('')
    assert plan(tmp_path, venv, os.path.join(venv, 'bin', 'python'), path=bin_dir)[1].endswith('action=install')
    os.remove(venv / '.installing')
    cksum = subprocess.run('cksum < setup.py', shell=True, cwd=ROOT, capture_output=True, text=True).stdout.split()[0]
    (venv / '.installed').write_text(f'python=3.12 extra=cpu setup={cksum}\n')
    assert plan(tmp_path, venv, path=bin_dir)[1] == f'python={venv}/bin/python version=3.12 action=keep'
    (venv / '.installed').write_text('python=3.12 extra=cpu setup=0\n')
    assert plan(tmp_path, venv, path=bin_dir)[1].endswith('action=install')
    os.remove(venv / 'bin' / 'python')
    assert plan(tmp_path, venv, py311, path=bin_dir)[1].endswith('action=rebuild')


def test_a_folder_that_is_no_venv_is_never_removed(tmp_path):
    folder = tmp_path / 'mine'
    folder.mkdir()
    (folder / 'notes.txt').write_text('mine')
    out = subprocess.run(['bash', VENV_SH, str(folder), sys.executable, 'cpu'], capture_output=True, text=True,
                         cwd=ROOT, timeout=60)
    assert out.returncode == 2 and 'is no virtual environment' in out.stderr and out.stderr.count('\n') == 1
    assert (folder / 'notes.txt').read_text() == 'mine'


def test_make_clean_never_removes_runs_or_data():
    env = {k: v for k, v in os.environ.items() if k not in ('MAKEFLAGS', 'MAKELEVEL', 'MFLAGS')}  # under make test
    out = subprocess.run(['make', '--no-print-directory', '-n', 'clean'], cwd=ROOT, capture_output=True, text=True,
                         timeout=60, env=env).stdout
    assert out.strip() == 'rm -rf .venv build'


def test_setup_pins_one_numpy_per_python_and_mxnet_where_pip_can_install_it():
    with open(os.path.join(ROOT, 'setup.py')) as f:
        setup = f.read()
    assert "python_requires='>=3.9,<3.14'" in setup
    pins = dict(re.findall(r"'numpy([^;']+); python_version ([^']+)'", setup))
    assert pins == {'==1.23.5': '< "3.12"', '==1.26.4': '== "3.12"', '>=2.1,<2.3': '>= "3.13"'}
    assert "'mxnet==1.9.1; {MXNET_PYTHONS}'" in setup and 'MXNET_PYTHONS = \'python_version < "3.13"\'' in setup


@pytest.mark.tier
def test_doctor_is_clean_here():
    out = subprocess.run([sys.executable, '-m', 'd2lseg', 'doctor'], capture_output=True, text=True, timeout=300,
                         cwd=ROOT)
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith('  ok  Python %d.%d' % sys.version_info[:2])
    assert any(line.startswith('  ok  MXNet 1.9.1') for line in lines)
    assert any(line.startswith('  ok  numpy ') and 'names restored for MXNet' in line for line in lines)
    for part in ('oneDNN: ', 'native kernels: ', 'free disk for runs', 'threads: '):
        assert any(part in line for line in lines), part
    assert lines[-1].startswith('d2lseg doctor: ready')
    assert not any(line.startswith('FAIL') for line in lines)


def test_doctor_names_a_bad_thread_count_with_its_fix(monkeypatch, capsys):
    from d2lseg.command import doctor
    monkeypatch.setenv('OMP_NUM_THREADS', '4096')
    status, line, fix = doctor._threads()
    assert status == 'warn' and 'more threads than CPUs' in line and fix.startswith('export OMP_NUM_THREADS=')
    assert doctor._python()[0] == 'ok'
    monkeypatch.setattr(doctor.compat, 'python_version', lambda: '3.14')
    status, _, fix = doctor._python()
    assert status == 'FAIL' and 'PYTHON=python3.12' in fix


TINY = ['--no-pretrained', '--ctx', 'cpu', '--crop', '96x128', '--batch-size', '4', '--epochs', '2', '--seed', '3',
        '--workers', '0', '--no-progress']
FIGURES = ('loss', 'train_acc', 'test_acc', 'val_miou', 'val_mean_acc', 'val_fwiou', 'val_iou')


def _train(python, data_dir, out):
    proc = subprocess.run([python, '-m', 'd2lseg', 'train', '--synthetic', '--data-dir', data_dir, *TINY,
                           '--out', out], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-1500:]
    with open(os.path.join(out, 'history.json')) as f:
        return json.load(f)


@pytest.mark.tier
def test_a_tiny_recipe_gives_the_default_pythons_numbers(data_root, tmp_path):
    """MXNet is the same binary on every Python and the data the same bits, so the history is equal to the
    last digit: loss and accuracies are summed in float64 on numpy 2 as on numpy 1 (chapter.step_figures)."""
    reference = os.environ.get('D2LSEG_REFERENCE_PYTHON', os.path.join(ROOT, '.venv', 'bin', 'python'))
    if not os.path.exists(reference) or os.path.realpath(reference) == os.path.realpath(sys.executable):
        pytest.skip(f'the default Python ({reference}) is this one or missing: nothing to compare with')
    ours = _train(sys.executable, data_root, str(tmp_path / 'ours'))
    theirs = _train(reference, data_root, str(tmp_path / 'theirs'))
    assert ours['environment']['versions']['python'] != theirs['environment']['versions']['python']
    for a, b in zip(ours['epochs'], theirs['epochs']):
        assert json.dumps([a[k] for k in FIGURES]) == json.dumps([b[k] for k in FIGURES])
