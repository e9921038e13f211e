"""Measured spread of a training recipe over seeds and the machine variants one machine can simulate.

Runs ``d2lseg train`` once per (seed, variant) in a fresh process, a variant being oneDNN's
instruction-set cap (``DNNL_MAX_CPU_ISA``: the machine default, AVX512_CORE, AVX2), the native
kernels on or off (``D2LSEG_NATIVE=0``) and the thread count (``OMP_NUM_THREADS``). Prints JSON:
every run's per-epoch figures and environment, and per epoch the mean, standard deviation, min and
max of loss, train/val pixel accuracy and val mIoU (d2lseg.training.reference.band_of). Progress goes to
stderr. A stored baseline is this JSON (d2lseg/baselines/), refreshed with:

    .venv/bin/python bench/spread.py --preset regression --out d2lseg/baselines/regression-band.json

Presets live in d2lseg.training.reference.PRESETS (the Makefile's demo is the preset 'demo').
"""
import argparse
import itertools
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import d2lseg  # noqa: F401  (before MXNet: the thread count)
from d2lseg.native.environment import environment
from d2lseg.training.reference import FIGURES, PRESETS, RECIPE_KEYS, band_of, judged_stats
from d2lseg.data.synthetic import GENERATOR, make_synthetic_voc
from d2lseg.data.voc import has_voc

ISAS = ('default', 'AVX512_CORE', 'AVX2')


def variant_env(isa, native, threads):
    """The environment of one simulated machine (on top of this one's, d2lseg's own variables removed)."""
    env = {k: v for k, v in os.environ.items() if k not in ('DNNL_MAX_CPU_ISA', 'MKLDNN_MAX_CPU_ISA', 'D2LSEG_NATIVE')}
    if isa != 'default':
        env['DNNL_MAX_CPU_ISA'] = isa
    if not native:
        env['D2LSEG_NATIVE'] = '0'
    env['OMP_NUM_THREADS'] = str(threads)
    return env


def grid(seeds, isas, natives, threads):
    """Every (seed, variant) to run: the full variant grid for seeds[0], the machine default for the rest
    (the default variant's seeds first, so that a short look at the output already shows the seed spread)."""
    default = dict(isa='default', native=True, threads=max(threads))
    variants = [dict(isa=i, native=n, threads=t) for i, n, t in itertools.product(isas, natives, threads)]
    first = [(seeds[0], default)] if default in variants else []
    return first + [(s, default) for s in seeds[1:]] + [(seeds[0], v) for v in variants if v != default]


def synth(preset, data_dir):
    """Write the preset's synthetic data set once (the same for every run)."""
    if not has_voc(data_dir):
        make_synthetic_voc(data_dir, progress=False, **preset['synth'])


def with_flags(train, overrides):
    """The preset's train flags with ``--NAME VALUE`` replaced or added for each 'NAME=VALUE' override."""
    train = list(train)
    for item in overrides:
        name, _, value = item.partition('=')
        flag = '--' + name.lstrip('-')
        if flag in train:
            train[train.index(flag) + 1] = value
        else:
            train += [flag, value]
    return train


def train_argv(preset, data_dir, seed, out):
    return [sys.executable, '-m', 'd2lseg.command.cli', 'train', '--synthetic', '--data-dir', data_dir,
            *preset['train'], '--seed', str(seed), '--out', out, '--no-progress']


def run_one(preset, data_dir, seed, variant, workdir):
    """Train one (seed, variant) in its own process -> the run's record (figures per epoch, environment)."""
    out = tempfile.mkdtemp(prefix='run-', dir=workdir)
    env = variant_env(**variant)
    tic = time.time()
    proc = subprocess.run(train_argv(preset, data_dir, seed, out), env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ['no output'])[-1]
        raise RuntimeError(f'seed {seed} {variant}: d2lseg train exited {proc.returncode}: {tail}')
    with open(os.path.join(out, 'history.json')) as f:
        history = json.load(f)
    return {'seed': seed, 'variant': variant, 'seconds': round(time.time() - tic, 1),
            'recipe': history['recipe'], 'environment': history['environment'], 'untrained_miou': history['untrained']['miou'],
            'epochs': [{k: r[k] for k in ('epoch',) + FIGURES} for r in history['epochs']]}


def report(result):
    """Markdown tables of a spread JSON: the band per epoch, and each run's last epoch."""
    lines = [f"`{result['command']}` ({len(result['runs'])} runs, {result['elapsed_s'] / 60:.0f} min)", '',
             '| epoch | ' + ' | '.join(FIGURES) + ' |', '|---' * (len(FIGURES) + 1) + '|']
    for row in result['epochs']:
        lines.append(f"| {row['epoch']} | " + ' | '.join(
            f"{row[k]['mean']:.3f} ± {row[k]['sd']:.3f} ({row[k]['min']:.3f}–{row[k]['max']:.3f})" for k in FIGURES) + ' |')
    lines += ['', '| seed | oneDNN cap | kernels | threads | oneDNN ISA | ' + ' | '.join(FIGURES) + ' | s |',
              '|---' * (len(FIGURES) + 6) + '|']
    for r in result['runs']:
        v, last = r['variant'], r['epochs'][-1]
        lines.append(f"| {r['seed']} | {v['isa']} | {'on' if v['native'] else 'off'} | {v['threads']} | "
                     f"{r['environment']['onednn_isa']} | " + ' | '.join(f'{last[k]:.4f}' for k in FIGURES)
                     + f" | {r['seconds']:.0f} |")
    return '\n'.join(lines)


def _parser():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--preset', choices=sorted(PRESETS), default='regression', help='recipe and data (default %(default)s)')
    p.add_argument('--seeds', default='0,1,2', help='training seeds; the first runs on every variant (default %(default)s)')
    p.add_argument('--isas', default=','.join(ISAS), help='DNNL_MAX_CPU_ISA values (default %(default)s)')
    p.add_argument('--native', default='on,off', help='native kernels on/off (default %(default)s)')
    p.add_argument('--threads', default='1,2', help='OMP_NUM_THREADS values (default %(default)s)')
    p.add_argument('--jobs', type=int, default=1, help='runs at a time; results do not depend on it (default 1)')
    p.add_argument('--workdir', help='where data and runs go (default: a temporary folder, removed)')
    p.add_argument('--out', help='write the JSON here as well as to stdout')
    p.add_argument('--judge-last', type=int, default=3, metavar='K',
                   help='a verdict judges the mean of the last K epochs (default %(default)s)')
    p.add_argument('--margin', help="per-figure margin beyond the band, e.g. loss=0.1,val_miou=0.02 (default: "
                   "the judged band's own width, so a new machine may fall outside the sampled range by as much "
                   "as the range itself before it counts as a regression)")
    p.add_argument('--set', action='append', default=[], metavar='FLAG=VALUE',
                   help='change one train flag of the preset, e.g. --set lr=0.05 (to try a recipe)')
    p.add_argument('--report', metavar='JSON', help='print Markdown tables of a stored spread JSON and exit')
    return p


def _run_all(preset, todo, workdir, jobs):
    """Every (seed, variant) run of ``todo`` -> records, sorted by seed and variant."""
    data_dir = os.path.join(workdir, 'data')
    synth(preset, data_dir)
    runs = []

    def job(item):
        record = run_one(preset, data_dir, *item, workdir)
        runs.append(record)
        last = record['epochs'][-1]
        print(f"[{len(runs)}/{len(todo)}] seed {item[0]} {item[1]}: "
              + ', '.join(f'{k} {last[k]:.4f}' for k in FIGURES) + f" ({record['seconds']} s)",
              file=sys.stderr, flush=True)
        return record

    with ThreadPoolExecutor(jobs) as pool:
        list(pool.map(job, todo))
    return sorted(runs, key=lambda r: (r['seed'], json.dumps(r['variant'], sort_keys=True)))


def main(argv=None):
    args = _parser().parse_args(argv)
    if args.report:
        with open(args.report) as f:
            print(report(json.load(f)))
        return 0
    preset = dict(PRESETS[args.preset])
    preset['train'] = with_flags(preset['train'], args.set)
    seeds = [int(s) for s in args.seeds.split(',')]
    todo = grid(seeds, args.isas.split(','), [v == 'on' for v in args.native.split(',')],
                [int(t) for t in args.threads.split(',')])
    tic = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        os.makedirs(args.workdir or tmp, exist_ok=True)
        runs = _run_all(preset, todo, args.workdir or tmp, args.jobs)
    recipe = {k: v for k, v in runs[0]['recipe'].items() if k in RECIPE_KEYS}
    bands = band_of(runs)
    judged_epochs = [row['epoch'] for row in bands[-args.judge_last:]]
    judged = judged_stats(runs, judged_epochs)
    margin = {k: math.ceil(1000 * (judged[k]['max'] - judged[k]['min'])) / 1000 for k in FIGURES}
    if args.margin:
        margin.update({k: float(v) for k, v in (item.split('=') for item in args.margin.split(','))})
    result = {'preset': args.preset, 'synth': preset['synth'], 'generator': GENERATOR, 'train': preset['train'],
              'recipe': recipe,
              'command': 'bench/spread.py ' + ' '.join(argv if argv is not None else sys.argv[1:]),
              'seeds': seeds, 'judged_epochs': judged_epochs,
              'judged': judged, 'margin': margin, 'runs': runs, 'epochs': bands,
              'elapsed_s': round(time.time() - tic, 1), 'environment': environment()}  # of the driving process
    text = json.dumps(result, indent=1)
    if args.out:
        with open(args.out, 'w') as f:
            f.write(text + '\n')
    print(text)
    return 0


if __name__ == '__main__':
    sys.exit(main())
