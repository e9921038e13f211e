"""Every notebook under notebooks/ runs without an error in quick mode (D2LSEG_QUICK=1), and is stored clean.

The kernel is this interpreter's ipykernel (its built-in ``python3`` spec), so no kernelspec needs
installing: a fresh ``pip install -e .[cpu,test]`` venv runs these as they are.
"""
import glob
import json
import os
import re

import pytest

from nbrun import execute_notebook

import d2lseg

NOTEBOOK_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'notebooks')
NOTEBOOKS = sorted(glob.glob(os.path.join(NOTEBOOK_DIR, '*.ipynb')))
NAMES = [os.path.basename(p) for p in NOTEBOOKS]


def _read(name):
    import nbformat
    with open(os.path.join(NOTEBOOK_DIR, name)) as f:
        return nbformat.read(f, as_version=4)


def _text(nb):
    """All text the notebook's code cells produced."""
    parts = []
    for cell in nb.cells:
        for out in cell.get('outputs', []):
            if out.output_type == 'stream':
                parts.append(out.text)
            elif out.output_type in ('execute_result', 'display_data'):
                parts.append(out.data.get('text/plain', '') + '\n')
    return ''.join(parts)


def _figures(nb):
    return sum(1 for c in nb.cells for o in c.get('outputs', [])
               if any(k in o.get('data', {}) for k in ('image/png', 'image/svg+xml')))


def _run(name, monkeypatch, **env):
    monkeypatch.setenv('D2LSEG_QUICK', '1')
    monkeypatch.delenv('MPLBACKEND', raising=False)  # the kernel's default: inline figures
    monkeypatch.delenv('D2LSEG_HISTORY', raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    before = sorted(os.listdir(NOTEBOOK_DIR))
    nb = execute_notebook(_read(name), NOTEBOOK_DIR)  # raises CellExecutionError naming the failing cell
    assert sorted(os.listdir(NOTEBOOK_DIR)) == before, 'a notebook wrote into notebooks/'
    return nb


def test_there_are_six_notebooks():
    assert NAMES == ['01_transposed_convolution.ipynb', '02_fcn_model.ipynb', '03_voc_dataset.ipynb',
                     '04_training.ipynb', '05_prediction.ipynb', '06_reproduce.ipynb']


@pytest.mark.parametrize('name', NAMES)
def test_stored_without_outputs(name):
    import nbformat
    nb = _read(name)
    nbformat.validate(nb)
    assert nb.metadata.kernelspec.name == 'python3'
    code = [c for c in nb.cells if c.cell_type == 'code']
    assert code and all(c.execution_count is None and c.outputs == [] for c in code)
    assert any('d2lseg' in c.source for c in code)


@pytest.mark.notebook
def test_01_transposed_convolution(monkeypatch):
    nb = _run('01_transposed_convolution.ipynb', monkeypatch)
    out = _text(nb)
    assert 'same matrix: True' in out
    assert '[[348. 393.]' in out and '[528. 573.]]' in out
    assert 'conv  == W x:   True' in out and 'trans == W.T y: True' in out
    assert '(1, 3, 64, 64) -> (1, 10, 32, 32) -> (1, 3, 64, 64)' in out
    assert 'output image shape: (1200, 1024, 3)' in out
    inside = float(re.search(r'inside: (\S+),', out).group(1))
    assert inside < 1e-5
    rows = re.findall(r'^\s*(\d+)\s+([\d,]+)\s+36\s+(\S+)\s+(\S+)$', out, re.M)
    assert [int(r[0]) for r in rows] == [8, 16, 32, 64]
    assert [int(r[1].replace(',', '')) for r in rows] == [4 * n ** 4 for n in (8, 16, 32, 64)]
    assert _figures(nb) >= 2


@pytest.mark.notebook
def test_02_fcn_model(monkeypatch):
    nb = _run('02_fcn_model.ipynb', monkeypatch)
    out = _text(nb)
    assert '(1, 512, 10, 15)' in out and '(1, 21, 320, 480)' in out
    for variant in ('fcn32s', 'fcn16s', 'fcn8s'):
        assert f'{variant}: output (1, 21, 320, 480)' in out
    losses = []
    for init_name in ('bilinear', 'xavier'):
        m = re.search(rf'^{init_name}\s+loss (\S+)\s+val pixel acc (\S+)\s+val mIoU (\S+)', out, re.M)
        assert m, out
        loss, acc, miou = map(float, m.groups())
        assert 0 < loss < 20 and 0 <= acc <= 1 and 0 <= miou <= 1
        losses.append(loss)
    assert losses[0] != losses[1], 'the two initialisations trained identically'
    assert _figures(nb) >= 2


@pytest.mark.notebook
def test_03_voc_dataset(monkeypatch):
    nb = _run('03_voc_dataset.ipynb', monkeypatch)
    out = _text(nb)
    assert '8 training images' in out
    assert '(4, 3, 64, 96)\n(4, 64, 96)\n' in out
    m = re.search(r'pixels labelled 255: chapter (\d+), ignore_boundary (\d+)', out)
    assert m and int(m.group(1)) == 0 and int(m.group(2)) > 0
    assert float(re.search(r'background: (\S+)% of labelled pixels', out).group(1)) > 10
    assert _figures(nb) >= 4


@pytest.mark.notebook
def test_04_training(monkeypatch):
    nb = _run('04_training.ipynb', monkeypatch)
    out = _text(nb)
    assert 'training on [cpu(0)]' in out
    assert re.search(r'^epoch 1, loss \d+\.\d{4}, train acc [01]\.\d{3}, test acc [01]\.\d{3}, time \S+ sec$',
                     out, re.M), out
    lrs = re.findall(r'^lr (\S+)\s+loss (\S+)', out, re.M)
    assert [float(lr) for lr, _ in lrs] == [0.01, 0.1, 1.0]
    assert _figures(nb) >= 2


@pytest.mark.notebook
def test_05_prediction(monkeypatch):
    nb = _run('05_prediction.ipynb', monkeypatch)
    out = _text(nb)
    rows = dict(re.findall(r'^(crop|full)\s+([01]\.\d{4}\s+.*)$', out, re.M))
    assert set(rows) == {'crop', 'full'}
    crop_px = int(re.search(r'crop: ([\d,]+) pixels scored', out).group(1).replace(',', ''))
    full_px = int(re.search(r'full: ([\d,]+) pixels scored', out).group(1).replace(',', ''))
    assert 0 < crop_px < full_px <= 4 * 160 * 224   # full mode scores every non-void pixel
    assert _figures(nb) >= 2


@pytest.mark.notebook
def test_06_reproduce(monkeypatch, tmp_path):
    with open(os.path.join(os.path.dirname(d2lseg.__file__), 'baselines', 'regression-band.json')) as f:
        band = json.load(f)
    run = band['runs'][0]
    worse = {'recipe': run['recipe'], 'epochs': run['epochs']}  # a stored run, 0.2 worse in the judged epochs
    for e in band['judged_epochs']:
        worse['epochs'][e - 1]['test_acc'] = band['judged']['test_acc']['min'] - 0.2
    path = tmp_path / 'history.json'
    path.write_text(json.dumps(worse))
    nb = _run('06_reproduce.ipynb', monkeypatch, D2LSEG_HISTORY=str(path))
    out = _text(nb)
    assert 'd2l-mxnet-en' in out and '1.2733' in out and 'FCN-8s' in out
    assert f"{len(band['runs'])} runs on:" in out and 'another recipe, not compared' in out
    assert 'verdict: REGRESSION' in out and _figures(nb) >= 2
