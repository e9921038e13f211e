"""Every notebook under notebooks/ runs in quick mode (its parameters cell swapped for a tiny run) and
computes what it teaches, and is stored with the outputs of one full run of its current code cells (`make notebooks`).

The kernel is this interpreter's ipykernel (its built-in ``python3`` spec), so no kernelspec needs
installing: a fresh ``pip install -e .[cpu,test]`` venv runs these as they are.
"""
import collections
import glob
import json
import math
import os

import pytest
from PIL import Image

from nbrun import NotebookReportError, execute_notebook

import d2lseg

NOTEBOOK_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'notebooks')
NOTEBOOKS = sorted(glob.glob(os.path.join(NOTEBOOK_DIR, '*.ipynb')))
NAMES = [os.path.basename(p) for p in NOTEBOOKS]


def _read(name):
    import nbformat
    with open(os.path.join(NOTEBOOK_DIR, name)) as f:
        return nbformat.read(f, as_version=4)


def _figures(nb):
    return sum(1 for c in nb.cells for o in c.get('outputs', [])
               if any(k in o.get('data', {}) for k in ('image/png', 'image/jpeg', 'image/svg+xml')))


def _run(name, monkeypatch, report, parameters=None):
    """Run notebook ``name`` in quick mode (its parameters cell swapped for its quick version, or for
    ``parameters``); returns it with outputs and the values of ``report`` (variables of the notebook, or
    attribute paths from one) as the notebook left them."""
    monkeypatch.delenv('MPLBACKEND', raising=False)  # the kernel's default: inline figures
    before = sorted(os.listdir(NOTEBOOK_DIR))
    # raises CellExecutionError naming the failing cell, NotebookReportError naming a missing variable
    nb, values = execute_notebook(_read(name), NOTEBOOK_DIR, report=report, name=name, quick=True,
                                  parameters=parameters)
    assert sorted(os.listdir(NOTEBOOK_DIR)) == before, 'a notebook wrote into notebooks/'
    return nb, values


def _self_check_matches(nb, computed):
    """The numbers of the Self-check answers (bold, in order) are those the notebook computed."""
    import re
    cell = next(c.source for c in nb.cells if c.cell_type == 'markdown' and c.source.startswith('## Self-check'))
    answers = re.findall(r'<details><summary>Answer \d</summary>(.*?)</details>', cell, re.S)
    numbers = [float(m) for a in answers for m in re.findall(r'\*\*(-?[\d.]+)\*\*', a)]
    assert numbers == pytest.approx(computed, rel=1e-3), (numbers, computed)


def test_the_notebooks_are_the_chapters_seven():
    assert NAMES == ['01_transposed_convolution.ipynb', '02_fcn_model.ipynb', '03_voc_dataset.ipynb',
                     '04_training.ipynb', '05_prediction.ipynb', '06_reproduce.ipynb', '07_own_data.ipynb']


@pytest.mark.parametrize('name', NAMES)
def test_stored_with_outputs_of_their_current_cells(name):
    """Stored as `make notebooks` leaves them: every code cell executed in one top-to-bottom full run,
    its source unchanged since (its hash in the cell's metadata), no errors, the run-info cell under the
    title. A code change without re-execution fails here."""
    import nbformat
    from notebooks_tool import RUN_INFO, source_hash, stale_cells
    nb = _read(name)
    nbformat.validate(nb)
    assert nb.metadata.kernelspec.name == 'python3'
    code = [c for c in nb.cells if c.cell_type == 'code']
    assert code and any('d2lseg' in c.source for c in code)
    stale = stale_cells(nb)
    assert not stale, (f'{name}: cells {stale} changed since the stored run (or never ran); '
                       'run `make notebooks` and commit the result')
    assert [c.execution_count for c in code] == list(range(1, len(code) + 1))  # one run, top to bottom
    assert all(c.metadata['d2lseg']['source_sha256'] == source_hash(c.source) for c in code)
    assert not [o for c in code for o in c.outputs if o.output_type == 'error']
    executed = nb.metadata['d2lseg']['executed']
    assert executed['quick'] is False and executed['seconds'] > 0
    info = nb.cells[1]
    assert info.metadata['d2lseg']['role'] == RUN_INFO
    assert executed['machine'] in info.source and executed['date'] in info.source
    assert nb.metadata['d2lseg']['needs'] in info.source
    assert nb.cells[-1].cell_type == 'markdown' and nb.cells[-1].source.startswith('## References')


REFERENCES = ('arxiv.org/abs/1411.4038', 'arxiv.org/abs/1605.06211', 'arxiv.org/abs/1603.07285',
              'd2l.ai/chapter_computer-vision/fcn.html')


@pytest.mark.parametrize('name', NAMES)
def test_students_view(name):
    """What a student reads: no test-mode branch or environment switch in any cell (quick mode swaps the
    one parameters cell, from outside), no stdout redirection, no plumbing in the text, no code cell over
    20 lines without its reason in metadata.d2lseg.long (the chapter's code, or a computation to read); then 3-5 self-check questions whose
    answers open on a click, and the references with their links."""
    import re
    nb = _read(name)
    code = [c.source for c in nb.cells if c.cell_type == 'code']
    text = [c.source for c in nb.cells if c.cell_type == 'markdown']
    assert not [c for c in code if re.search(r'QUICK|D2LSEG_|os\.environ|redirect_stdout', c)], name
    assert not [c for c in text if re.search(r'D2LSEG_|tests/|Notes for instructors', c)], name
    params = [c for c in nb.cells if c.cell_type == 'code' and c.metadata.get('d2lseg', {}).get('role') == 'parameters']
    assert len(params) <= 1 and (not params or nb.metadata['d2lseg'].get('quick_parameters') or name.startswith('06'))
    from notebooks_tool import tool
    assert not tool.long_cells(nb), f'{name}: (cell, lines, problem) {tool.long_cells(nb)}'
    check = next(c for c in text if c.startswith('## Self-check'))
    answers = re.findall(r'<details><summary>Answer (\d)</summary>', check)
    assert 3 <= len(answers) <= 5 and answers == [str(k) for k in range(1, len(answers) + 1)]
    assert check.count('</details>') == len(answers)
    assert any(re.search(r'^self_check = ', c, re.M) for c in code)
    assert all(ref in text[-1] for ref in REFERENCES) and text[-1].startswith('## References')


def test_long_cells_need_a_reason():
    """The rule test_students_view applies: a code cell over 20 lines fails unless its metadata.d2lseg.long
    says why it stays long; a reason left on a cell that got short fails too; markdown is never counted."""
    import nbformat
    from notebooks_tool import tool
    lines = lambda n: '\n'.join(f'x{i} = {i}' for i in range(n))  # noqa: E731
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(lines(20)), nbformat.v4.new_code_cell(lines(21)),
                nbformat.v4.new_code_cell(lines(30)), nbformat.v4.new_code_cell(lines(5)),
                nbformat.v4.new_markdown_cell(lines(40)), nbformat.v4.new_code_cell(lines(25))]
    nb.cells[2].metadata['d2lseg'] = {'long': "the chapter's training loop, as printed"}
    nb.cells[3].metadata['d2lseg'] = {'long': 'was long once'}
    nb.cells[5].metadata['d2lseg'] = {'long': '  '}
    assert [(i, n) for i, n, _ in tool.long_cells(nb)] == [(1, 21), (3, 5), (5, 25)]
    assert 'without a reason' in tool.long_cells(nb)[0][2] and 'stale' in tool.long_cells(nb)[1][2]
    assert [(i, n) for i, n, _ in tool.long_cells(nb, limit=30)] == [(2, 30), (3, 5), (5, 25)]   # none long now


@pytest.mark.notebook
def test_report_reads_values_and_names_what_is_missing(tmp_path):
    """The harness behind the tests below: values come back as JSON types, the report cell never stays
    in the notebook, and a variable the notebook does not define fails naming notebook and variable."""
    import nbformat
    nb = nbformat.v4.new_notebook()
    nb.metadata['kernelspec'] = {'name': 'python3', 'display_name': 'Python 3', 'language': 'python'}
    # d2lseg first, as the notebooks do: on numpy >= 1.24 MXNet needs the names d2lseg.core.compat restores
    nb.cells = [nbformat.v4.new_code_cell('import d2lseg\nimport numpy as np\nfrom mxnet import cpu, nd\n'
                                          'a, ok, s = np.float32(0.5), np.bool_(True), (2, 3)\n'
                                          'big, d = nd.zeros((3, 200, 200)), {0.1: [np.int64(7)], "c": [cpu()]}')]
    nb, values = execute_notebook(nb, tmp_path, report=['a', 'ok', 's', 'big.shape', 'd'], name='tiny.ipynb')
    assert values == {'a': 0.5, 'ok': True, 's': [2, 3], 'big.shape': [3, 200, 200],
                      'd': {'0.1': [7], 'c': ['cpu(0)']}}
    assert len(nb.cells) == 1  # the report cell is gone again
    with pytest.raises(NotebookReportError) as e:
        execute_notebook(nb, tmp_path, report=['a', 'same', 'big'], name='tiny.ipynb')
    msg = str(e.value)
    assert 'tiny.ipynb' in msg and "no variable 'same'" in msg and 'big is an array of shape (3, 200, 200)' in msg
    assert "'a'" not in msg and len(nb.cells) == 1 and os.listdir(tmp_path) == []


@pytest.mark.notebook
def test_01_transposed_convolution(monkeypatch):
    nb, r = _run('01_transposed_convolution.ipynb', monkeypatch,
                 report=['same', 'Y_mat', 'x.grad', 'u.grad', 'grad_is_trans', 'grad_is_WT', 'trans_grad_is_conv',
                         'conv_is_Wx', 'trans_is_WTy', 'grad_is_trans_s2', 'scatter_ok', 'trans_conv_ok', 'shapes',
                         'fractional_ok', 'correspond', 'reads', 'rule_rows', 'magnifies', 'fcn_shape', 'rows',
                         'exp_W', 'exp_conv', 'out', 'im2col_ok', 'self_check'])
    assert r['self_check'] == [4, 16, 64, 320]
    _self_check_matches(nb, r['self_check'])
    assert r['same'] is True                                     # d2l.kernel2matrix == the chapter's W
    assert r['Y_mat'] == [[[[348, 393], [528, 573]]]]            # W x, the chapter's conv output
    # conv's input gradient for dy = [[1, 2], [3, 4]] is W.T dy: dy scattering the chapter's K
    K, dy, expected = [[1, 2, 3], [4, 5, 6], [7, 8, 9]], [[1, 2], [3, 4]], [[0] * 4 for _ in range(4)]
    for i, j, a, b in [(i, j, a, b) for i in range(2) for j in range(2) for a in range(3) for b in range(3)]:
        expected[i + a][j + b] += dy[i][j] * K[a][b]
    assert r['x.grad'] == [[expected]]
    assert r['u.grad'] == [[[[348, 393], [528, 573]]]]           # Conv2DTranspose backward = Conv2D forward
    assert r['grad_is_trans'] is r['grad_is_WT'] is r['trans_grad_is_conv'] is True
    assert r['conv_is_Wx'] is r['trans_is_WTy'] is r['grad_is_trans_s2'] is True
    assert r['scatter_ok'] == {'1': True, '2': True} and r['trans_conv_ok'] is True
    assert r['shapes'] == [[1, 3, 64, 64], [1, 10, 32, 32], [1, 3, 64, 64]]
    assert r['fractional_ok'] is True
    assert r['correspond'] is True and len(r['reads']) == 16    # a 4x4 window: rows 1..4, cols 1..4
    assert r['rule_rows'] and all(got == s * n for s, n, got, _, _ in r['rule_rows'])
    assert sorted({row[0] for row in r['rule_rows']}) == [2, 4, 8, 16, 32] and r['magnifies'] is True
    assert r['fcn_shape'] == [1, 21, 320, 480]
    sides = [8, 16, 32, 48]
    assert [row[0] for row in r['rows']] == sides                               # n
    assert [row[1] for row in r['rows']] == [4 * n ** 4 for n in sides]         # bytes of W
    assert [row[2] for row in r['rows']] == [36] * len(sides)                   # bytes of the 3x3 kernel
    assert all(isinstance(t, float) and t > 0 for row in r['rows'] for t in row[3:])  # W @ x s, Conv2D s
    assert all(isinstance(e, float) and math.isfinite(e) for e in (r['exp_W'], r['exp_conv']))  # fitted
    assert r['out'] == [[348, 393], [528, 573]] and r['im2col_ok'] is True       # im2col + GEMM
    assert _figures(nb) >= 3   # W, the scatter diagram, time and memory


@pytest.mark.notebook
def test_02_fcn_model(monkeypatch):
    nb, r = _run('02_fcn_model.ipynb', monkeypatch,
                 report=['features_shape', 'output_shape', 'stage_shapes', 'shapes_ok', 'rows_hit', 'cols_hit',
                         'centred', 'k4', 'outer_ok', 'outer64_ok', 'interior_linear', 'out_img.shape', 'inside',
                         'same_start', 'differing', 'initial_shapes', 'grad_ratio', 'histories', 'bg_share',
                         'n_classes_pred', 'true_bg', 'out_ratio', 'losses0', 'out_std', 'coarse_std', 'lattice',
                         'same_kernel', 'bn_channels', 'self_check'])
    assert r['same_kernel'] is True and r['bn_channels'] == 512     # the chapter's In [10]; in_channels after a pass
    assert r['self_check'] == pytest.approx([0.5625, 512, 10, 15, 10773])
    _self_check_matches(nb, r['self_check'])
    assert 'def bilinear_kernel(in_channels, out_channels, kernel_size):\n    factor = (kernel_size + 1) // 2' in \
        ''.join(c.source for c in nb.cells if c.cell_type == 'code')
    assert r['features_shape'] == [1, 512, 10, 15]
    assert r['output_shape'] == [1, 21, 320, 480]
    assert r['stage_shapes'] == {'image': [1, 3, 320, 480], 'features': [1, 512, 10, 15],
                                 'class scores': [1, 21, 10, 15], 'upsampled scores': [1, 21, 320, 480],
                                 'prediction': [1, 320, 480]} and r['shapes_ok'] is True
    # score cell (4, 7): a 64x64 footprint centred on its 32x32 image block (rows 128..159, cols 224..255)
    assert r['rows_hit'] == list(range(112, 176)) and r['cols_hit'] == list(range(208, 272)) and r['centred']
    q = [0.25, 0.75, 0.75, 0.25]
    assert r['k4'] == [[a * b for b in q] for a in q]            # the bilinear 4x4 kernel, an outer product
    assert r['outer_ok'] is r['outer64_ok'] is r['interior_linear'] is True
    assert r['out_img.shape'] == [1200, 1024, 3] and r['inside'] < 1e-5   # doubled; OpenCV's bilinear inside
    assert r['same_start'] is True and len(r['differing']) == 1    # only the upsampling weight differs
    assert r['initial_shapes'] == {'bilinear': [1, 21, 64, 96], 'xavier': [1, 21, 64, 96]}
    assert r['grad_ratio'] > 10           # Xavier's small kernel shrinks the gradient reaching the 1x1 conv
    # softmax minus one-hot is bounded: at the output the two starts' gradients are of similar size
    assert 0.5 < r['out_ratio'] < 2, r['out_ratio']
    # bilinear passes the large coarse scores on (a confident, large loss); Xavier shrinks them (loss near ln 21)
    assert 0.5 < r['out_std']['bilinear'] / r['coarse_std'] < 2 and r['out_std']['xavier'] < r['coarse_std'] / 10
    assert r['losses0']['bilinear'] > r['losses0']['xavier'] and abs(r['losses0']['xavier'] - math.log(21)) < 1
    near, far = r['lattice']['xavier']   # Xavier's score map: pixels 32 apart alike, neighbours not
    assert far > near + 0.2, r['lattice']
    losses = []
    for init_name in ('bilinear', 'xavier'):
        epochs = r['histories'][init_name]['epochs']
        assert [e['epoch'] for e in epochs] == [1, 2]
        last = epochs[-1]
        loss, acc, miou = last['loss'], last['test_acc'], last['val_miou']
        assert 0 < loss < 20 and 0 <= acc <= 1 and 0 <= miou <= 1, last
        losses.append(round(loss, 4))  # as the notebook prints it: different in what a reader sees
        assert len(r['bg_share'][init_name]) == 3 and all(0 <= v <= 1 for v in r['bg_share'][init_name])
        assert len(r['n_classes_pred'][init_name]) == 3 and all(1 <= k <= 21 for k in r['n_classes_pred'][init_name])
    assert losses[0] != losses[1], 'the two initialisations trained identically'
    assert 0 < r['true_bg'] < 1
    assert _figures(nb) >= 8


@pytest.mark.notebook
def test_03_voc_dataset(monkeypatch, tmp_path):
    import numpy as np
    nb, r = _run('03_voc_dataset.ipynb', monkeypatch,
                 report=['n_train', 'X.shape', 'Y.shape', 'void_as_chapter', 'void_ignored', 'freq', 'chapter_crop',
                         'dropped', 'sizes', 'kept_train_crop', 'baselines', 'bg_share', 'exact_given_pair',
                         'self_check'])
    assert r['self_check'] == pytest.approx([21, 8388608, 1, 0.16])
    _self_check_matches(nb, [21, 8388608, 1, 0.16])
    jpeg = [o for c in nb.cells for o in c.get('outputs', []) if 'image/jpeg' in o.get('data', {})]
    assert len(jpeg) == _figures(nb)          # photo-like scenes stored as JPEG (viz.use_photo_display)
    assert r['n_train'] == 8
    assert r['chapter_crop'] == [160, 224]                        # quick mode's analogue of 320x480
    assert r['X.shape'] == [2, 3, 160, 224] and r['Y.shape'] == [2, 160, 224]   # the first batch
    # the quick set (made again here, deterministic): 8 training and 4 validation images of 128x192 or 160x224
    from d2lseg.data.images import read_label_indices
    from d2lseg.data.synthetic import make_synthetic_voc
    voc = make_synthetic_voc(str(tmp_path), n_train=8, n_val=4, sizes=((128, 192), (160, 224)), progress=False)
    made = {}
    for split in ('train', 'val'):
        with open(os.path.join(voc, 'ImageSets', 'Segmentation', split + '.txt')) as f:
            names = f.read().split()
        made[split] = collections.Counter(Image.open(os.path.join(voc, 'JPEGImages', n + '.jpg')).size[::-1]
                                          for n in names)
    sizes = {split: {tuple(json.loads(k.replace('(', '[').replace(')', ']'))): v for k, v in c.items()}
             for split, c in r['sizes'].items()}
    assert sizes == made and all(set(c) == {(128, 192), (160, 224)} for c in made.values())
    assert r['dropped'] == {s: made[s][(128, 192)] for s in made}  # VOCSegDataset.num_dropped: those under 160x224
    assert r['kept_train_crop'] == {'train': 8, 'val': 4}         # the 64x96 training crop keeps all
    assert r['void_as_chapter'] == 0 and r['void_ignored'] > 0
    assert round(100 * r['freq'][0], 1) > 10   # background, % of labelled pixels (as printed, 1 decimal)
    # all background on known data: pixel acc = the background share of labelled validation pixels
    with open(os.path.join(voc, 'ImageSets', 'Segmentation', 'val.txt')) as f:
        labels = [read_label_indices(os.path.join(voc, 'SegmentationClass', n.strip() + '.png'), True)
                  for n in f if n.strip()]
    hist = sum(np.bincount(lab[lab != 255], minlength=21) for lab in labels)
    bg = r['baselines']['all background']
    assert bg['pixel_acc'] == r['bg_share'] == pytest.approx(hist[0] / hist.sum(), abs=1e-12)
    assert bg['mean_acc'] == pytest.approx(1 / np.count_nonzero(hist))   # right on background only
    assert 0 < bg['miou'] < bg['pixel_acc']
    lookup = r['baselines']['colour lookup']
    assert 0 < lookup['pixel_acc'] < 1 and 0 < lookup['miou'] < 1 and 0 <= r['exact_given_pair'] <= 1
    assert _figures(nb) >= 8


@pytest.mark.notebook
def test_04_training(monkeypatch):
    import re
    nb, r = _run('04_training.ipynb', monkeypatch,
                 report=['ctx', 'history', 'kept', 'val_counts', 'baseline_acc', 'comparison', 'seeds', 'floors',
                         'SETTINGS', 'verdict', 'winner', 'crop_baseline', 'crop_pixels', 'self_check', 'base.epochs'])
    assert r['ctx'] == ['cpu(0)']                # what d2l.train trained on
    # d2l.train(history=[]) filled the list: one record per epoch (quick mode: 2)
    assert [e['epoch'] for e in r['history']] == [1, 2], r['history']
    for e in r['history']:
        assert set(e) == {'epoch', 'loss', 'train_acc', 'test_acc', 'time'}, e
        assert math.isfinite(e['loss']) and e['loss'] >= 0 and e['time'] >= 0, e
        assert 0 <= e['train_acc'] <= 1 and 0 <= e['test_acc'] <= 1, e
    # the tiny set's 12 images are 128x192 or 160x224: the chapter's crop keeps none, 128x192 all
    assert r['kept'] == {'320x480': 0, '128x192': 12}
    # the baseline: the background share of the 4 validation labels (each 128x192 or 160x224)
    counts = r['val_counts']
    assert len(counts) == 21 and sum(counts) in {k * 128 * 192 + (4 - k) * 160 * 224 for k in range(5)}
    assert 0 < r['baseline_acc'] < 1 and r['baseline_acc'] == pytest.approx(counts[0] / sum(counts))
    # the chapter cell's baseline: one pass of test_iter, one batch of 4 random 64x96 crops (last batch dropped)
    assert r['crop_pixels'] == 4 * 64 * 96 and 0 < r['crop_baseline'] < 1
    # exercise 3: every setting with the same >= 3 seeds, one change at a time from the chapter's
    seeds, comparison, settings = r['seeds'], r['comparison'], r['SETTINGS']
    assert len(seeds) >= 3 and list(comparison) == list(settings) and len(settings) >= 3
    assert settings["chapter (lr 0.1)"] == {} and settings["05's recipe"]['momentum'] == 0.9
    for name, c in comparison.items():
        assert sorted(int(s) for s in c['runs']) == sorted(seeds), name
        for run in c['runs'].values():
            assert [e['epoch'] for e in run['epochs']] == list(range(1, r['base.epochs'] + 1)) or run['diverged']
    # a floor per seed, and the verdict names exactly the runs at or below their floor
    floors = {int(s): v for s, v in r['floors'].items()}
    assert sorted(floors) == sorted(seeds) and all(0 < v < 1 for v in floors.values())
    below = [f'{n} [seed {s}]' for n, c in comparison.items() for s, run in c['runs'].items()
             if not run['diverged'] and run['epochs'][-1]['test_acc'] <= floors[int(s)]]
    assert r['verdict'][0].endswith('; '.join(below) if below else 'none')
    # the tie margin is the widest seed range measured here, said with where it came from
    ranges = {n: max(run['epochs'][-1]['val_miou'] for run in c['runs'].values() if not run['diverged'])
              - min(run['epochs'][-1]['val_miou'] for run in c['runs'].values() if not run['diverged'])
              for n, c in comparison.items()}
    widest = max(ranges, key=ranges.get)
    assert r['verdict'][1] == f'tie margin: {ranges[widest]:.3f}, the largest range over seeds measured here ' \
        f'({widest}: ' + r['verdict'][1].split(f'({widest}: ')[1]
    assert len(r['verdict']) == 2 + len(settings) - 1 and r['winner'] in settings
    # each setting's distance to its floors, seed by seed, printed under the verdict
    text = ''.join(o.get('text', '') for c in nb.cells if c.cell_type == 'code' for o in c.get('outputs', []))
    for name, c in comparison.items():
        margins = {int(s): run['epochs'][-1]['test_acc'] - floors[int(s)] for s, run in c['runs'].items()
                   if not run['diverged']}
        assert f'{name}: val pixel acc minus its floor: ' + ', '.join(
            f'{m:+.3f} (seed {s})' for s, m in margins.items()) + f'; smallest {min(margins.values()):+.3f}' in text
    sources = [c.source for c in nb.cells if c.cell_type == 'code']
    assert not any(re.search(r'TIE\s*=|SPREAD|0\.02\b', src) for src in sources)   # no literal spread
    assert r['self_check'] == pytest.approx([10, 111, 0.04])
    _self_check_matches(nb, r['self_check'])
    assert _figures(nb) >= 2


def test_04_stored_run_clears_the_floor():
    """The stored full run of exercise 3: every setting over >= 3 seeds, and the chapter's setting above the
    all-background floor of its validation crops on every seed (the verdict names any run that is not)."""
    nb = _read('04_training.ipynb')
    text = ''.join(o.get('text', '') for c in nb.cells if c.cell_type == 'code' for o in c.get('outputs', []))
    floor = [line for line in text.splitlines() if line.startswith('all-background pixel accuracy of these')]
    assert floor, '04_training.ipynb: no stored verdict (run `make notebooks NB=04`)'
    assert 'chapter (lr 0.1) [seed' not in floor[-1], floor[-1]
    margins = [line for line in text.splitlines() if line.startswith('chapter (lr 0.1): val pixel acc minus its floor')]
    assert margins and float(margins[-1].rsplit('smallest ', 1)[1]) > 0, margins   # above the floor on every seed
    rows = [line.split() for line in text.splitlines() if line.startswith(('chapter (lr 0.1) ', "05's recipe "))]
    assert rows and all(int(row[3 if row[0] == 'chapter' else 2]) >= 3 for row in rows), rows


def _parameters(name, quick=False):
    """The values a notebook's parameters cell sets (its full-mode source, or its quick one), data_dir aside."""
    from notebooks_tool import tool
    nb = _read(name)
    source = nb.metadata['d2lseg']['quick_parameters'] if quick else tool.parameters_cell(nb).source
    values = {}
    exec('\n'.join(line for line in source.splitlines() if not line.startswith('data_dir')), {}, values)
    return values


@pytest.mark.parametrize('quick', [False, True])
def test_05_trains_at_the_scale_of_04s_exercise_3(quick):
    """05 says its recipe is trained at the sizes of 04's exercise 3, so that 04's verdict on it applies."""
    p4, p5 = _parameters('04_training.ipynb', quick), _parameters('05_prediction.ipynb', quick)
    assert (p5['train_crop'], p5['batch_size'], p5['epochs'], p5['max_images']) == \
        (p4['crop_size'], p4['sweep_batch'], p4['sweep_epochs'], p4['sweep_images'])
    assert p5['seeds'] == p4['seeds']


@pytest.mark.notebook
def test_05_prediction(monkeypatch):
    import re
    nb, r = _run('05_prediction.ipynb', monkeypatch,
                 report=['comparison', 'seeds', 'floors', 'verdict', 'results', 'pixels_scored', 'skipped',
                         'labelled_px', 'never_predicted', 'band_total', 'labelled', 'near', 'interior', 'best',
                         'sharpest', 'show', 'seen', 'same_predict', 'same_label2image', 'self_check'])
    variants = ['fcn32s', 'fcn16s', 'fcn8s']
    c = r['comparison']                                  # exercise 5: three variants, one recipe, >= 3 seeds
    assert list(c) == variants and len(r['seeds']) >= 3
    assert [c[v]['changes'] for v in variants] == [{'variant': v} for v in variants]
    for v in variants:
        assert sorted(int(s) for s in c[v]['runs']) == sorted(r['seeds']), v
        for run in c[v]['runs'].values():
            assert [e['epoch'] for e in run['epochs']] == [1, 2], v
            for e in run['epochs']:
                assert math.isfinite(e['loss']) and 0 <= e['test_acc'] <= 1 and 0 <= e['val_miou'] <= 1, (v, e)
    # the verdict: the tie margin measured from these seeds, said with where from; no literal spread
    finals = {v: [run['epochs'][-1]['val_miou'] for run in c[v]['runs'].values()] for v in variants}
    widest = max(variants, key=lambda v: max(finals[v]) - min(finals[v]))
    assert r['verdict'][1].startswith(f'tie margin: {max(finals[widest]) - min(finals[widest]):.3f}, the largest '
                                      f'range over seeds measured here ({widest}:')
    assert [line.split(':')[0] for line in r['verdict'][2:]] == ['fcn16s', 'fcn8s']
    sources = [c.source for c in nb.cells if c.cell_type == 'code']
    assert not any(re.search(r'SPREAD|0\.02\b', src) for src in sources)
    # the chapter's predict and label2image, as printed, equal the package's
    assert r['same_predict'] is True and r['same_label2image'] is True
    assert 'def predict(img):\n    X = test_iter._dataset.normalize_image(img)' in '\n'.join(sources)
    assert "colormap = nd.array(d2l.VOC_COLORMAP, ctx=ctx[0], dtype='uint8')" in '\n'.join(sources)
    # the variants' figure shows images not shown before, as far as the split has them (quick: 4 images, all shown)
    assert len(r['show']) == len(set(r['show'])) == 3
    unseen = [i for i in range(4) if i not in r['seen']]
    assert r['show'][:len(unseen)] == unseen[:3]
    assert r['self_check'] == [150, 8, 25]
    _self_check_matches(nb, r['self_check'])
    assert r['best'] in variants and r['sharpest'] in variants
    assert len(r['show']) == len(set(r['show'])) == 3                   # three different images
    # exercise 4: the 160x224 crop skips the one 128x192 validation image; the whole image scores every
    # labelled pixel
    assert r['skipped'] == {'crop': 1, 'full': 0}
    crop_px, full_px = r['pixels_scored']['crop'], r['pixels_scored']['full']
    assert full_px == r['labelled_px'] and 0 < crop_px < full_px <= 4 * 160 * 224
    assert r['never_predicted'] == pytest.approx(1 - crop_px / full_px)
    assert all(0 <= m['pixel_acc'] <= 1 and 0 <= m['miou'] <= 1 for m in r['results'].values()), r['results']
    assert sum(r['band_total']) == r['labelled']       # every labelled pixel of the crops is in one band
    assert all(0 <= r[k][v] <= 1 for k in ('near', 'interior') for v in variants)
    # summary and exercises: five links, each to a heading that exists
    cells = [c.source for c in nb.cells if c.cell_type == 'markdown']
    assert any(c.startswith('## Summary') and c.count('\n* ') == 3 for c in cells)
    exercises = next(c for c in cells if c.startswith('## Exercises'))
    links = re.findall(r'\]\(([^)#]*)#([^)]+)\)', exercises)
    assert [target or 'self' for target, _ in links] == ['01_transposed_convolution.ipynb', '02_fcn_model.ipynb',
                                                         '04_training.ipynb', 'self', 'self']
    for target, anchor in links:
        headings = [line.lstrip('#').strip().replace(' ', '-') for c in (_read(target) if target else nb).cells
                    if c.cell_type == 'markdown' for line in c.source.splitlines() if line.startswith('#')]
        assert anchor in headings, f'{target or "05_prediction.ipynb"}: no heading for the link #{anchor}'
    assert _figures(nb) >= 5


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
    nb, r = _run('06_reproduce.ipynb', monkeypatch,
                 report=['reference.PUBLISHED', 'reference.FCN_PAPER', 'n_runs', 'per_seed', 'synth', 'epochs',
                         'not_compared', 'comparison.ok', 'history_path', 'self_check'],
                 parameters=f'history_path = {str(path)!r}')
    published = r['reference.PUBLISHED']          # the figures the notebook tabulates
    assert published['d2l-mxnet-en']['epochs'][0]['loss'] == 1.2733
    assert published['d2l-mxnet-en']['epochs'][-1]['test_acc'] == 0.842   # "near 0.84" in the intro
    assert 'FCN-8s' in r['reference.FCN_PAPER']['rows']
    assert r['n_runs'] == len(band['runs']) == sum(r['per_seed'].values())
    assert sorted(int(k) for k in r['per_seed']) == band['seeds'] and r['synth'] == band['synth']
    assert r['epochs'] == band['judged_epochs']
    assert r['history_path'] == str(path)                   # the parameters cell, set by the test
    assert set(r['not_compared']) == {'book', 'd2l-zh-v1'}   # a synthetic run is not judged by VOC figures
    assert all('another recipe, not compared' in why for why in r['not_compared'].values()), r['not_compared']
    assert r['comparison.ok'] is False                      # verdict: REGRESSION, printed as such
    assert r['self_check'] == [0.842, len(band['seeds'])]
    _self_check_matches(nb, r['self_check'])
    text = ''.join(o.get('text', '') for c in nb.cells if c.cell_type == 'code' for o in c.outputs)
    assert 'verdict against the band: REGRESSION' in text
    assert _figures(nb) >= 2                                # the band, and the run on it


@pytest.mark.notebook
def test_07_own_data(monkeypatch):
    nb, r = _run('07_own_data.ipynb', monkeypatch,
                 report=['record', 'class_list.names', 'class_list.colors', 'history', 'model_info', 'mask_kinds',
                         'self_check'])
    assert r['self_check'] == [4, 255, 636]
    _self_check_matches(nb, r['self_check'])
    names = ['sky', 'tree', 'house', 'car']
    assert r['class_list.names'] == names                                # from the run's model.json
    assert r['class_list.colors'] == [[0, 0, 0], [20, 160, 40], [200, 60, 20], [240, 220, 0]]
    assert r['model_info']['num_classes'] == 4 and r['model_info']['classes']['names'] == names
    assert sorted(set(r['mask_kinds'])) == ['P', 'RGB'] and len(r['mask_kinds']) == 12   # both mask kinds
    assert r['record']['classes'] == names and len(r['record']['iou']) == 4
    assert r['record']['images'] == 4 and r['record']['ignore_boundary'] is True
    assert 0 <= r['record']['pixel_acc'] <= 1 and 0 <= r['record']['miou'] <= 1
    assert [e['epoch'] for e in r['history']['epochs']] == [1, 2]
    assert all(len(e['val_iou']) == 4 for e in r['history']['epochs'])
    assert _figures(nb) >= 2                                             # the curves and the prediction grid
