"""Every shell line of the README runs as written, in order, in a fresh folder, from the state the step before
leaves: the fenced ```bash and ```console blocks, one bash session (so `source .venv/bin/activate` holds for
the lines after it).

What is changed, and only through documented knobs, so the whole walk takes a minute or two on 2 cores:
- `make demo` runs the Makefile's own recipe lines (`make -n demo`, without the venv and kernels steps: the
  venv here is this test's Python) with `DEMO_FLAGS="--epochs 1 --max-images 8"`, on a synthetic set made
  beforehand with 16 train / 8 val scenes (`d2lseg synth --n-train 16 --n-val 8`);
- `d2lseg train` lines with `--preset small` get `--epochs 2` appended, a resume extends by one epoch;
- before `d2lseg compare runs/demo/history.json`, runs/demo/history.json is one stored run of the real demo
  (d2lseg/baselines/demo-spread.json): the 1-epoch tiny run is no demo recipe, and compare says so (tested
  in test_reference.py).
What the walk provides as the README asks the user to: `photos/` (two images) and `my_data/` with
`classes.txt` (a 20-image VOC-format set of 4 classes). Lines that need what this machine may not have are
skipped, each with its reason (SKIPPED).
"""
import json
import os
import re
import shlex
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, 'README.md')
# Lines not run here, and why (each is run elsewhere or needs what a test machine lacks).
SKIPPED = {
    'make test': 'the test suite itself (this test is part of it)',
}
DEMO_FLAGS = '--epochs 1 --max-images 8'


def shell_lines(text):
    """The lines of the fenced bash/console blocks, in order (a trailing backslash joins lines; a console
    block's '$ ' prompt is dropped)."""
    lines = []
    for block in re.findall(r'^```(?:bash|console)\n(.*?)^```', text, re.M | re.S):
        block = re.sub(r'\s*\\\n\s*', ' ', block)
        for line in block.splitlines():
            line = line.strip()
            line = line[2:] if line.startswith('$ ') else line
            if line and not line.startswith('#'):
                lines.append(line)
    return lines


def test_shell_lines_are_found():
    lines = shell_lines(open(README).read())
    assert lines[:3] == ['make demo   # train and evaluate the chapter\'s FCN on the built-in synthetic VOC set, '
                         'offline, on CPU', 'make test   # the whole test suite (what CI runs first; about 25 min '
                         'on 2 cores)', 'source .venv/bin/activate']
    assert shell_lines('```bash\na \\\n  b\n```\ntext\n```console\n$ c\n```\n```python\nd\n```\n') == ['a b', 'c']


def _command(line):
    """The README line as this walk runs it (``SKIPPED`` lines: None)."""
    bare = line.split('#')[0].strip()
    if bare in SKIPPED:
        return None
    if bare == 'make demo':
        plan = subprocess.run(['make', '-n', 'demo', f'VENV=.venv', f'DEMO_FLAGS={DEMO_FLAGS}'], cwd=ROOT,
                              capture_output=True, text=True, check=True).stdout.splitlines()
        steps = [s for s in plan if 'tools/venv.sh' not in s and 'native.load' not in s and not s.startswith('make')]
        assert steps and 'd2lseg train' in steps[0], plan
        return ' && '.join(steps)
    if bare.startswith('d2lseg train') and '--preset small' in bare:
        return bare + ' --epochs 2'
    if bare.startswith('d2lseg train --resume'):
        return re.sub(r'--epochs \d+', '--epochs 2', bare)
    if bare == 'd2lseg compare runs/demo/history.json':
        return f'{shlex.quote(sys.executable)} {shlex.quote(os.path.join(ROOT, "tests", "helpers", "readme_history.py"))} ' \
               f'runs/demo/history.json && {bare}'
    return line


def _own_data(root, n=20):
    """A 20-image VOC-format set of 4 classes with a classes.txt beside it, as the README's layout shows."""
    colors = [(0, 0, 0), (20, 160, 40), (200, 60, 20), (240, 220, 0)]
    for sub in ('JPEGImages', 'SegmentationClass', os.path.join('ImageSets', 'Segmentation')):
        os.makedirs(os.path.join(root, 'my_data', sub))
    rng = np.random.default_rng(0)
    for i in range(n):
        img = rng.integers(60, 120, (120, 160, 3)).astype(np.uint8)
        label = np.zeros((120, 160), np.uint8)
        for c in (1, 2, 3):
            y, x = rng.integers(0, 80), rng.integers(0, 110)
            label[y:y + 40, x:x + 50] = c
            img[y:y + 40, x:x + 50] = np.array(colors[c]) // 2 + 60
        Image.fromarray(img).save(os.path.join(root, 'my_data', 'JPEGImages', f'img{i:02d}.jpg'))
        mask = Image.fromarray(label, mode='P')
        mask.putpalette([v for c in colors for v in c] + [0] * (768 - 12))
        mask.save(os.path.join(root, 'my_data', 'SegmentationClass', f'img{i:02d}.png'))
    seg = os.path.join(root, 'my_data', 'ImageSets', 'Segmentation')
    open(os.path.join(seg, 'train.txt'), 'w').write(''.join(f'img{i:02d}\n' for i in range(16)))
    open(os.path.join(seg, 'val.txt'), 'w').write(''.join(f'img{i:02d}\n' for i in range(16, n)))
    open(os.path.join(root, 'classes.txt'), 'w').write('background\ntree 20 160 40\nhouse 200 60 20\ncar 240 220 0\n')


def _setup(root):
    """The fresh folder: the Makefile and tools of the checkout, .venv (this Python's environment), a small
    synthetic set where make demo puts it, photos/ and my_data/."""
    shutil.copy(os.path.join(ROOT, 'Makefile'), root)
    os.symlink(sys.prefix, os.path.join(root, '.venv'))
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get('PYTHONPATH', ''))
    subprocess.run([sys.executable, '-m', 'd2lseg', 'synth', '--root', 'data/synthetic', '--n-train', '16',
                    '--n-val', '8'], cwd=root, env=env, check=True, capture_output=True)
    os.makedirs(os.path.join(root, 'photos'))
    jpegs = os.path.join(root, 'data', 'synthetic', 'VOCdevkit', 'VOC2012', 'JPEGImages')
    for name in sorted(os.listdir(jpegs))[-2:]:
        shutil.copy(os.path.join(jpegs, name), os.path.join(root, 'photos', name.replace('synth', 'holiday')))
    _own_data(root)
    return env


@pytest.mark.slow
@pytest.mark.tier
def test_every_readme_shell_line_runs_as_written(tmp_path):
    if not os.path.isfile(os.path.join(sys.prefix, 'bin', 'activate')):
        pytest.skip(f'{sys.prefix} is not a virtual environment: `source .venv/bin/activate` needs one')
    root = str(tmp_path)
    env = _setup(root)
    lines = shell_lines(open(README).read())
    script, skipped = ['set -o pipefail'], []
    for n, line in enumerate(lines, 1):
        command = _command(line)
        if command is None:
            skipped.append(f'{line}: {SKIPPED[line.split("#")[0].strip()]}')
            continue
        script += [f'echo "### README line {n}: "{shlex.quote(line)}',
                   f'{{ {command}\n}} || {{ echo "### FAILED README line {n} (exit $?)"; exit 1; }}']
    # activate puts the venv's bin first: PYTHONPATH keeps this checkout's d2lseg the one imported
    proc = subprocess.run(['bash', '-c', '\n'.join(script)], cwd=root, env=env, capture_output=True, text=True,
                          timeout=1500)
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:])
    assert skipped == ['make test   # the whole test suite (what CI runs first; about 25 min on 2 cores): '
                       'the test suite itself (this test is part of it)'], skipped
    print('\n'.join(['skipped:'] + skipped))
    # the walk left what the README says it does
    assert os.path.isfile(os.path.join(root, 'runs', 'demo', 'eval-published.json'))
    assert os.path.isfile(os.path.join(root, 'predictions', 'synth_000000.png'))
    assert sorted(os.listdir(os.path.join(root, 'photos_mine'))) == sorted(
        ['.d2lseg-manifest.json', 'legend.png'] + [f'holiday_0000{i}{s}.png' for i in (22, 23) for s in ('', '_overlay')])
    tuned = json.load(open(os.path.join(root, 'runs', 'mine-tuned', 'history.json')))
    assert tuned['provenance']['init_from'] == 'runs/demo/model.params' and tuned['recipe']['num_classes'] == 4
    assert 'the figure to report' in proc.stdout and 'Next (README.md)' in proc.stdout
    assert '.d2lseg.lock' not in os.listdir(os.path.join(root, 'runs', 'mine'))


def test_make_figure_writes_under_build_unless_asked_for_the_readme():
    def plan(*extra):
        lines = subprocess.run(['make', '-n', 'figure', *extra], cwd=ROOT, capture_output=True, text=True,
                               check=True).stdout.splitlines()
        return next(line for line in lines if 'make_figure.py' in line)
    assert plan().endswith('docs/make_figure.py runs/demo/model.params data/synthetic build/demo.png')
    assert plan('README=1').endswith('docs/make_figure.py runs/demo/model.params data/synthetic docs/img/demo.png')
