"""bench/spread.py's bookkeeping (no training here): the grid of runs, flag changes, environments, report."""
import json
import os

import d2lseg
from bench import spread

BASELINES = os.path.join(os.path.dirname(d2lseg.__file__), 'baselines')


def test_grid_runs_every_variant_for_the_first_seed_and_the_default_for_the_others():
    todo = spread.grid([0, 1, 2], ['default', 'AVX2'], [True, False], [1, 2])
    default = dict(isa='default', native=True, threads=2)
    assert todo[:3] == [(0, default), (1, default), (2, default)]
    assert len(todo) == 2 * 2 * 2 + 2 and len({json.dumps(t, sort_keys=True) for t in todo}) == len(todo)
    assert {(v['isa'], v['native'], v['threads']) for s, v in todo if s == 0} == {
        (i, n, t) for i in ('default', 'AVX2') for n in (True, False) for t in (1, 2)}


def test_variant_environment(monkeypatch):
    monkeypatch.setenv('DNNL_MAX_CPU_ISA', 'AVX512_CORE')
    monkeypatch.setenv('D2LSEG_NATIVE', '0')
    env = spread.variant_env('default', True, 1)
    assert 'DNNL_MAX_CPU_ISA' not in env and 'D2LSEG_NATIVE' not in env and env['OMP_NUM_THREADS'] == '1'
    env = spread.variant_env('AVX2', False, 2)
    assert (env['DNNL_MAX_CPU_ISA'], env['D2LSEG_NATIVE'], env['OMP_NUM_THREADS']) == ('AVX2', '0', '2')


def test_set_replaces_or_adds_a_train_flag():
    train = ['--lr', '0.1', '--epochs', '9']
    assert spread.with_flags(train, ['lr=0.05', 'warmup-epochs=1']) == ['--lr', '0.05', '--epochs', '9',
                                                                         '--warmup-epochs', '1']
    assert train == ['--lr', '0.1', '--epochs', '9']  # the preset itself is not changed


def test_report_tables_of_the_stored_spreads():
    for name in ('regression-band.json', 'demo-spread.json'):
        with open(os.path.join(BASELINES, name)) as f:
            result = json.load(f)
        text = spread.report(result)
        lines = text.splitlines()
        assert lines[0].startswith('`bench/spread.py --preset') and f"({len(result['runs'])} runs" in lines[0]
        assert sum(line.startswith('| ') and ' ± ' in line for line in lines) == len(result['epochs'])
        last = result['epochs'][-1]['val_miou']
        assert f"{last['mean']:.3f} ± {last['sd']:.3f} ({last['min']:.3f}–{last['max']:.3f})" in text
        assert len(lines) == 4 + len(result['epochs']) + 3 + len(result['runs'])
