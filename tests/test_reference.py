"""Comparisons with the chapter's published spread and with the stored band of the synthetic regression
recipe (d2lseg/baselines/regression-band.json, written by bench/spread.py; tests/test_regression.py
reruns the recipe and plants faults)."""
import copy
import io
import contextlib
import json
import os
import shutil

import pytest

import d2lseg
from d2lseg.command.cli import main
from d2lseg.data.voc import VOC_SUBDIR
from d2lseg.data.synthetic import GENERATOR
from d2lseg.training.reference import (CHAPTER_RECIPE, FIGURES, PRESETS, PUBLISHED, SPREAD, UnusableHistory, band_of,
                              compare_baseline, compare_published, judge, judged_stats)

BAND = os.path.join(os.path.dirname(d2lseg.__file__), 'baselines', 'regression-band.json')


def run_cli(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def write(path, obj):
    with open(path, 'w') as f:
        json.dump(obj, f)
    return str(path)


def load_band():
    with open(BAND) as f:
        return json.load(f)


def test_band_file_records_its_runs_environments_margin_and_command():
    band = load_band()
    assert band['preset'] == 'regression' and band['train'] == PRESETS['regression']['train']
    assert band['command'].startswith('bench/spread.py --preset regression')
    assert band['generator'] == GENERATOR  # measured on the synthetic set the preset makes today
    runs = band['runs']
    variants = {(r['variant']['isa'], r['variant']['native'], r['variant']['threads']) for r in runs}
    assert {(isa, native, t) for isa in ('default', 'AVX512_CORE', 'AVX2') for native in (True, False)
            for t in (1, 2)} <= variants and len({r['seed'] for r in runs}) >= 3
    for r in runs:  # each run says what produced it
        env = r['environment']
        assert env['cpu'] and env['onednn_isa'] and env['mxnet_threads'] == r['variant']['threads']
        assert env['native_kernels']['used'] == r['variant']['native']
        assert (env['dnnl_max_cpu_isa'] or 'default') == r['variant']['isa']
    # the stored band is exactly the statistics of the stored runs; the verdict judges the last 3 epochs
    assert band['epochs'] == band_of(runs)
    last = band['epochs'][-1]
    assert band['judged_epochs'] == [last['epoch'] - 2, last['epoch'] - 1, last['epoch']]
    assert band['judged'] == judged_stats(runs, band['judged_epochs'])
    for key in FIGURES:  # the margin is the judged band's own width (rounded up to 0.001)
        width = band['judged'][key]['max'] - band['judged'][key]['min']
        assert width <= band['margin'][key] < width + 0.001
    # every stored run learned: its last epoch is far from the untrained network
    assert all(r['epochs'][-1]['val_miou'] > 3 * r['untrained_miou'] for r in runs)
    assert band['judged']['loss']['max'] < band['epochs'][0]['loss']['min'] - 0.5


def test_band_statistics_on_known_runs():
    runs = [{'epochs': [{'loss': v, 'val_miou': 1 - v}]} for v in (1.0, 2.0, 4.0)]
    (row,) = band_of(runs)
    assert row['epoch'] == 1 and row['loss'] == {'mean': 7 / 3, 'sd': pytest.approx((7 / 3) ** 0.5), 'min': 1.0,
                                                 'max': 4.0, 'n': 3}
    assert row['val_miou']['min'] == -3.0 and 'test_acc' not in row
    band = {'min': 0.3, 'max': 0.5}
    assert judge(0.4, band, 0.1, True) == 'inside band'
    assert judge(0.25, band, 0.1, True) == 'below band, within margin'
    assert judge(0.19, band, 0.1, True) == 'REGRESSION'
    assert judge(0.6, band, 0.1, True) == 'better than band'
    assert judge(0.61, band, 0.1, False) == 'REGRESSION' and judge(0.2, band, 0.1, False) == 'better than band'


def test_compare_band_exit_codes(tmp_path):
    band = load_band()
    band_path = write(tmp_path / 'band.json', band)
    judged = band['judged_epochs']
    run = copy.deepcopy(band['runs'][0])
    history = {'recipe': run['recipe'], 'epochs': copy.deepcopy(run['epochs'])}
    history['epochs'][0]['loss'] += 5  # an early epoch is context, never a verdict
    code, out, _ = run_cli(['compare', write(tmp_path / 'same.json', history), '--against', band_path])
    assert code == 0 and 'verdict: within the band' in out and 'inside band' in out
    b = band['judged']['loss']
    assert f"{judged[0]}-{judged[-1]} mean loss" in out
    assert f"{b['min']:.4f}-{b['max']:.4f} ({b['mean']:.4f} +- {b['sd']:.4f})" in out

    worse = copy.deepcopy(history)
    low = band['judged']['test_acc']['min'] - band['margin']['test_acc'] - 0.01
    for e in judged:
        worse['epochs'][e - 1]['test_acc'] = low
    code, out, _ = run_cli(['compare', write(tmp_path / 'worse.json', worse), '--against', band_path])
    assert code == 1 and 'verdict: REGRESSION' in out
    rows = [line.split()[:4] for line in out.splitlines() if line.endswith('REGRESSION') and 'verdict' not in line]
    assert rows == [[f'{judged[0]}-{judged[-1]}', 'mean', 'test_acc', f'{low:.4f}']]
    # one bad epoch alone is averaged with the others: a margin's worth lower at one epoch is not a verdict
    one = copy.deepcopy(history)
    one['epochs'][judged[-1] - 1]['test_acc'] -= band['margin']['test_acc']
    assert compare_baseline(one, band).ok

    other = copy.deepcopy(history)
    other['recipe']['crop'] = [320, 480]
    other_path = write(tmp_path / 'other.json', other)
    code, out, err = run_cli(['compare', other_path, '--against', band_path])
    assert code == 2 and out == ''
    assert err.strip().splitlines() == [err.strip()]
    assert 'another recipe' in err and 'crop=[320, 480] (expected [128, 192])' in err and other_path in err
    with pytest.raises(UnusableHistory, match='epoch'):
        short = copy.deepcopy(history)
        short['epochs'] = short['epochs'][:2]
        compare_baseline(short, band)


def test_band_figure_has_every_figure_runs_band_and_the_run_judged(tmp_path):
    from d2lseg.fcn.viz import plot_band, plt
    band = load_band()
    path = tmp_path / 'band.png'
    fig = plot_band(band, {'epochs': band['runs'][0]['epochs']}, str(path))
    assert path.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    assert [ax.get_title() for ax in fig.axes] == ['train loss', 'train pixel acc', 'val pixel acc', 'val mIoU']
    assert all(ax.get_xlabel() == 'epoch' for ax in fig.axes)
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert labels == [f"{len(band['runs'])} stored runs", 'band (min-max)', 'band mean', 'this run']
    plt.close('all')


def test_compare_two_histories_uses_the_single_run_margin(tmp_path):
    run = load_band()['runs'][0]
    base = {'recipe': run['recipe'], 'epochs': run['epochs']}
    mine = copy.deepcopy(base)
    mine['epochs'][-1]['loss'] += 0.1          # within the single-run margin 0.15
    mine['epochs'][-1]['val_miou'] += 0.2      # better is never a regression
    cmp = compare_baseline(mine, base)
    assert cmp.ok and {r[4] for r in cmp.rows if r[4]} == {'above band, within margin', 'better than band',
                                                           'inside band'}
    mine['epochs'][-1]['loss'] += 0.1
    assert not compare_baseline(mine, base).ok


def published_history(name='d2l-mxnet-en'):
    return {'recipe': dict(CHAPTER_RECIPE, epochs=5, seed=0), 'epochs': copy.deepcopy(PUBLISHED[name]['epochs'])}


def test_compare_against_the_book_judges_epoch_5_by_the_published_spread(tmp_path):
    cmp = compare_published(published_history())
    assert cmp.ok and len(cmp.rows) == 18
    assert [r[4] for r in cmp.rows[:15]] == [''] * 15  # the published run's epochs: context
    assert [(r[0], r[1], r[3], r[4]) for r in cmp.rows[15:]] == [
        ('5', 'loss', '0.3110-0.3870 (median 0.3280)', 'inside band'),
        ('5', 'train_acc', '0.8770-0.8970 (median 0.8920)', 'inside band'),
        ('5', 'test_acc', '0.7840-0.8560 (median 0.8500)', 'inside band')]
    assert SPREAD['source'] in cmp.table() and '74 distinct runs' in cmp.table()

    bad = published_history()
    bad['epochs'][4]['test_acc'] = 0.70
    cmp = compare_published(bad)
    assert not cmp.ok and [(r[1], r[4]) for r in cmp.rows if r[4] == 'REGRESSION'] == [('test_acc', 'REGRESSION')]
    path = write(tmp_path / 'bad.json', bad)
    code, out, _ = run_cli(['compare', path])  # --against book is the default
    assert code == 1 and 'REGRESSION' in out and 'd2l-en MXNet build history' in out
    code, out, _ = run_cli(['compare', write(tmp_path / 'good.json', published_history()), '--against', 'all'])
    assert code == 0 and out.count('verdict: within the band') == 2

    # d2l-zh v1's printed run lies inside the same spread; a synthetic-data history is refused
    assert compare_published(published_history('d2l-zh-v1'), 'd2l-zh-v1').ok
    assert compare_published(published_history('d2l-zh-v1'), 'book').ok
    synth = published_history()
    synth['recipe']['synthetic'] = True
    with pytest.raises(UnusableHistory, match='synthetic=True'):
        compare_published(synth)


def _offline(monkeypatch):
    """Route every HTTP(S) request to a closed local port, so these tests never download anything."""
    for var in ('HTTPS_PROXY', 'https_proxy', 'HTTP_PROXY', 'http_proxy'):
        monkeypatch.setenv(var, 'http://127.0.0.1:9')
    for var in ('NO_PROXY', 'no_proxy'):
        monkeypatch.delenv(var, raising=False)


def test_reproduce_offline_fails_clearly_without_voc(monkeypatch, tmp_path, capsys):
    from d2lseg.command.cli import main
    _offline(monkeypatch)
    data, out = tmp_path / 'data', tmp_path / 'out'
    assert main(['reproduce', '--data-dir', str(data), '--out', str(out), '--no-progress']) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith('d2lseg reproduce: error: could not download Pascal VOC2012')
    assert 'd2lseg synth' in err[0]
    assert not out.exists()
    assert not (data / 'VOCdevkit').exists() and not [p for p in data.iterdir() if p.name.endswith('.part')]


def test_reproduce_offline_fails_clearly_without_the_backbone(monkeypatch, tmp_path, data_root, capsys):
    """With VOC present the next download is the ImageNet backbone: one line saying how to proceed."""
    from d2lseg.command.cli import main
    _offline(monkeypatch)
    monkeypatch.setenv('MXNET_HOME', str(tmp_path / 'mxnet-home'))  # no cached weights
    out, real = tmp_path / 'out', tmp_path / 'real'
    shutil.copytree(os.path.join(data_root, VOC_SUBDIR), real / VOC_SUBDIR)   # a VOC tree, not marked synthetic
    assert main(['reproduce', '--data-dir', str(real), '--out', str(out), '--no-progress', '--ctx', 'cpu']) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if 'error' in line]
    assert len(err) == 1 and 'resnet18_v2' in err[0] and '--backbone-params' in err[0]
    assert not out.exists()


def test_compare_judges_a_stored_presets_history_by_its_band_and_names_the_bands_that_fit(tmp_path, capsys):
    """`d2lseg compare runs/demo/history.json` picks the demo band; a band of another recipe is refused in one
    line naming the one that fits; --help lists the named bands."""
    from d2lseg.command.cli import build_parser, main
    from d2lseg.training.reference import band_path
    with open(band_path('demo')) as f:
        band = json.load(f)
    history = {'recipe': dict(band['recipe'], data_dir='data/synthetic', seed=0), 'epochs': band['runs'][0]['epochs']}
    path = tmp_path / 'history.json'
    path.write_text(json.dumps(history))
    assert main(['compare', str(path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith('against demo: the stored band of this history\'s recipe') and 'verdict: within the band' in out
    assert '7-9 mean' in out  # the demo band's judged epochs
    for other in ('regression', 'book'):
        assert main(['compare', str(path), '--against', other]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and 'another recipe, not compared' in err[0] and 'the band that fits it: --against demo' \
            in err[0], err
    path.write_text(json.dumps(dict(history, recipe=dict(history['recipe'], lr=0.2))))
    assert main(['compare', str(path)]) == 2
    err = capsys.readouterr().err
    assert 'made by none of the stored recipes (book, demo, regression)' in err and '--against FILE' in err
    compare = next(a for a in build_parser()._actions if a.dest == 'command').choices['compare']
    text = ' '.join(compare.format_help().split())
    assert 'demo (d2lseg/baselines/demo-spread.json)' in text and 'regression (d2lseg/baselines/regression-band.json)' \
        in text

