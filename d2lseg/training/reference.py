"""Published figures of the chapter's recipe, with their sources, and the comparison against them; the named
recipes (``RECIPES``: ``d2lseg train --preset``) and the stored bands they are judged by (``BANDS``).

Kept as data next to the recipe that produced them (as torchvision keeps its model cards). About 340 lines, half
of them the published tables and the presets: the figures and the code that judges by them stay together.
"""
import dataclasses
import math
import os
from dataclasses import dataclass, field

from .config import ADDED_FIELDS, RESULT_KEYS, Recipe
from ..core.constants import BASELINES
from ..core.errors import D2lsegError
from ..core.textfiles import read_json

# The recipe every d2l figure below used (D2L 10.10.4-10.10.5): the Recipe's defaults, over the fields
# that change the result (epochs and max_images are compared per epoch instead). Compare only
# histories of this recipe.
CHAPTER_RECIPE = {k: v for k, v in Recipe().to_dict().items() if k in RESULT_KEYS and k not in ('epochs', 'max_images')}


def _epochs(rows):
    keys = ('loss', 'train_acc', 'test_acc', 'time')
    return [dict(zip(('epoch',) + keys, (i + 1,) + tuple(r))) for i, r in enumerate(rows)]


PUBLISHED = {
    'd2l-mxnet-en': {
        'source': 'Dive into Deep Learning, MXNet edition (English), "Fully Convolutional Networks", '
                  'training output printed in the chapter; 2 GPUs, pretrained resnet18_v2',
        'recipe': CHAPTER_RECIPE,
        'epochs': _epochs([(1.2733, 0.732, 0.775, 27.9), (0.5773, 0.827, 0.840, 24.1),
                           (0.4563, 0.856, 0.837, 24.0), (0.3717, 0.878, 0.836, 24.1),
                           (0.3226, 0.892, 0.842, 24.0)]),
    },
    'd2l-zh-v1': {
        'source': 'Dive into Deep Learning, Chinese first edition (d2l-zh v1), section 9.10 FCN; '
                  'same recipe, 2 GPUs',
        'recipe': CHAPTER_RECIPE,
        'epochs': _epochs([(1.1518, 0.746, 0.810, None), (0.5648, 0.830, 0.828, None),
                           (0.4363, 0.861, 0.828, None), (0.3777, 0.878, 0.846, None),
                           (0.3256, 0.892, 0.847, None)]),
    },
}

# Run-to-run spread of the same recipe at epoch 5: the d2l-en MXNet build history's reruns of the
# chapter's training cell. The book's own printed run (d2l-mxnet-en above) and d2l-zh v1's lie inside it.
SPREAD = {
    'source': '74 distinct runs of the chapter\'s training cell in the d2l-en MXNet build history (epoch 5)',
    'epoch': 5,
    'loss': (0.311, 0.387), 'train_acc': (0.877, 0.897), 'test_acc': (0.784, 0.856),
    'median': {'loss': 0.328, 'train_acc': 0.892, 'test_acc': 0.850},
    'releases': {'v0.14.1': {'loss': 0.323, 'train_acc': 0.893, 'test_acc': 0.847},
                 'v1.0.3': {'loss': 0.322, 'train_acc': 0.894, 'test_acc': 0.851}},
}

# Long, Shelhamer, Darrell, CVPR 2015, Table 2: VGG16 FCNs on the VOC2011 val subset (736 images).
# Context only: a different backbone, never a pass/fail bar for resnet18.
FCN_PAPER = {
    'source': 'Long, Shelhamer, Darrell, "Fully Convolutional Networks for Semantic Segmentation", '
              'CVPR 2015, Table 2 (VGG16, VOC2011 val subset of 736 images)',
    'columns': ('pixel_acc', 'mean_acc', 'miou', 'fwiou'),
    'rows': {'FCN-32s-fixed': (83.0, 59.7, 45.4, 72.0), 'FCN-32s': (89.1, 73.3, 59.4, 81.4),
             'FCN-16s': (90.0, 75.7, 62.4, 83.0), 'FCN-8s': (90.3, 75.9, 62.7, 83.2)},
    'fcn8s_voc2012_test_miou': 62.2,
}

# The figures a history records per epoch, and which direction is worse for each.
FIGURES = ('loss', 'train_acc', 'test_acc', 'val_miou')
HIGHER_IS_BETTER = {'loss': False, 'train_acc': True, 'test_acc': True, 'val_miou': True}
# Margin beyond a single stored run when comparing two histories (no measured spread to go by).
SINGLE_RUN_MARGIN = {'loss': 0.15, 'train_acc': 0.05, 'test_acc': 0.05, 'val_miou': 0.06}
RECIPE_KEYS = RESULT_KEYS

# Recipes whose spread bench/spread.py measures: the synthetic set's `make_synthetic_voc` arguments and
# the `d2lseg train` flags (with --synthetic, --data-dir, --seed and --out added per run).
PRESETS = {
    'regression': {'synth': {'n_train': 96, 'n_val': 24, 'seed': 0},
                   'train': ['--no-pretrained', '--ctx', 'cpu', '--crop', '128x192', '--batch-size', '4',
                             '--epochs', '8', '--lr', '0.05', '--momentum', '0.9', '--lr-schedule', 'poly',
                             '--workers', '0']},
    'demo': {'synth': {'n_train': 600, 'n_val': 150, 'seed': 0},
             'train': ['--no-pretrained', '--ctx', 'cpu', '--crop', '128x192', '--batch-size', '8',
                       '--epochs', '9', '--lr', '0.05', '--warmup-epochs', '1', '--momentum', '0.9',
                       '--lr-schedule', 'poly']},
}


# Named recipes: d2lseg train --preset NAME (explicit flags override them). Each is the Recipe's fields that
# differ from its defaults (which are the chapter's).
RECIPES = {
    'chapter': {},  # the book's GPU recipe: pretrained ImageNet backbone, 320x480 crops, batch 32, lr 0.1
    'demo': dict(pretrained=False, ctx='cpu', crop=(128, 192), batch_size=8, epochs=9, lr=0.05, warmup_epochs=1,
                 momentum=0.9, lr_schedule='poly'),  # make demo (PRESETS['demo'] has it as flags, for the band)
    'small': dict(pretrained=False, crop=(160, 160), batch_size=4, epochs=40, lr=0.05, warmup_epochs=1,
                  momentum=0.9, lr_schedule='poly', augment=True),  # ~20 images of one's own on a CPU
}
# Presets whose crop, when --crop is not given, is the largest (sides multiples of 32, at most this) that every
# image of the data holds: a small data set of one's own has images of any size.
FIT_CROP = {'small': (256, 256)}
RECIPE_TEXT = {
    'chapter': "the book's GPU recipe and the default: ImageNet backbone (downloads), 320x480 crops, batch 32, "
               "lr 0.1, no momentum, 5 epochs",
    'demo': 'make demo: random backbone, 128x192 crops, batch 8, lr 0.05 with momentum 0.9, 9 epochs, CPU',
    'small': 'a few dozen images of your own on a CPU: random backbone (offline), the largest crop up to 256x256 '
             'that every image holds (160x160 before the data exists), batch 4, lr 0.05 with momentum 0.9, 40 '
             'epochs, augmentation',
}


def preset(name, given=None):
    """The Recipe of preset ``name`` with ``given`` ({field: value}, the flags a user gave) over it."""
    if name not in RECIPES:
        raise D2lsegError(f"--preset {name}: unknown; choose one of {', '.join(RECIPES)}")
    return dataclasses.replace(Recipe(), **dict(RECIPES[name], **(given or {})))


# The stored bands compare judges a history by (d2lseg/baselines/NAME), and 'book', the published spread.
BANDS = {'demo': 'demo-spread.json', 'regression': 'regression-band.json'}


def band_path(name):
    """The file of stored band ``name`` (``BANDS``)."""
    return os.path.join(BASELINES, BANDS[name])


def recipe_differences(history, expected):
    """The result fields in which ``history``'s recipe differs from ``expected`` -> ['key=ours (expected x)']."""
    recipe = history.get('recipe') if isinstance(history, dict) else None
    recipe = recipe if isinstance(recipe, dict) else {}
    return [f"{k}={recipe.get(k, ADDED_FIELDS.get(k))!r} (expected {v!r})" for k, v in expected.items()
            if recipe.get(k, ADDED_FIELDS.get(k)) != v]


class UnusableHistory(D2lsegError):
    """A history that cannot be compared (another recipe, missing epochs)."""


def _stats(values):
    """Mean, sd, min, max, n. Sums are math.fsum (correctly rounded): Python 3.12's sum() of floats is
    compensated and 3.11's is not, so sum() gives other last digits on other Pythons."""
    n = len(values)
    mean = math.fsum(values) / n
    sd = (math.fsum((v - mean) ** 2 for v in values) / (n - 1)) ** 0.5 if n > 1 else 0.0
    return {'mean': mean, 'sd': sd, 'min': min(values), 'max': max(values), 'n': n}


def band_of(runs):
    """Per-epoch spread of several runs: [{'epoch': e, figure: {mean, sd, min, max, n}}] over the
    epochs every run has. runs: dicts with 'epochs' (per-epoch records, as in history.json)."""
    depth = min(len(r['epochs']) for r in runs)
    return [dict({'epoch': e + 1}, **{k: _stats([r['epochs'][e][k] for r in runs]) for k in FIGURES
                                      if all(k in r['epochs'][e] for r in runs)})
            for e in range(depth)]


def judged_stats(runs, epochs):
    """Per figure, the spread over runs of each run's mean over ``epochs`` (1-based epoch numbers)."""
    def mean(run, k):
        return math.fsum(run['epochs'][e - 1][k] for e in epochs) / len(epochs)
    return {k: _stats([mean(r, k) for r in runs]) for k in FIGURES
            if all(k in r['epochs'][e - 1] for r in runs for e in epochs)}


def _epoch_label(epochs):
    return str(epochs[0]) if len(epochs) == 1 else f'{epochs[0]}-{epochs[-1]}'


@dataclass
class Comparison:
    """Rows and a verdict; ``ok`` is False on a regression. Rows: (epoch or judged epochs, figure, ours,
    reference text, status); the per-epoch rows are context, only the judged rows carry a status."""
    against: str
    rows: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    ok: bool = True

    def table(self):
        lines = [f"against {self.against}", f"{'epoch':>8} {'figure':<10} {'ours':>8}  {'reference':<34} status"]
        lines += [f"{epoch:>8} {key:<10} {ours:8.4f}  {ref:<34} {status}".rstrip()
                  for epoch, key, ours, ref, status in self.rows]
        lines += self.notes
        lines.append('verdict: ' + ('within the band' if self.ok else 'REGRESSION'))
        return '\n'.join(lines)


def _band_text(band):
    text = f"{band['min']:.4f}-{band['max']:.4f}"
    if band.get('n', 0) > 1:
        text += f" ({band['mean']:.4f} +- {band['sd']:.4f})"
    elif 'median' in band:
        text += f" (median {band['median']:.4f})"
    return text


def judge(value, band, margin, higher_is_better):
    """Status of one figure against a band: REGRESSION only when worse than the band's worst end by
    more than ``margin``."""
    worse_by = (band['min'] - value) if higher_is_better else (value - band['max'])
    better_by = (value - band['max']) if higher_is_better else (band['min'] - value)
    if worse_by > margin:
        return 'REGRESSION'
    if worse_by > 0:
        return 'below band, within margin' if higher_is_better else 'above band, within margin'
    return 'better than band' if better_by > 0 else 'inside band'


def _epochs_of(history, path='history'):
    epochs = history.get('epochs') if isinstance(history, dict) else history
    if not isinstance(epochs, list) or not epochs or not all(isinstance(r, dict) for r in epochs):
        raise UnusableHistory(f"{path}: no per-epoch records (expected a d2lseg history.json)")
    for i, r in enumerate(epochs, 1):
        bad = [k for k in FIGURES if k in r and not isinstance(r[k], (int, float, dict))]
        if bad:
            raise UnusableHistory(f"{path}: epoch {r.get('epoch', '?')}: {bad[0]} is not a number")
        if 'epoch' in r and (type(r['epoch']) is not int or r['epoch'] < 1):
            raise UnusableHistory(f"{path}: record {i}: \"epoch\" must be a whole number from 1, not "
                                  f"{repr(r['epoch'])[:40]}")
    return epochs


def _check_recipe(history, expected, path):
    recipe = history.get('recipe') if isinstance(history, dict) else None
    if not isinstance(recipe, dict):
        raise UnusableHistory(f"{path}: the history names no recipe; cannot tell what it should match")
    diffs = recipe_differences(history, expected)
    if diffs:
        raise UnusableHistory(f"{path}: another recipe, not compared: " + ', '.join(diffs))


def _compare(history, bands, judged_epochs, judged_band, margin, against, path, notes):
    """Rows for every epoch of ``bands`` ({epoch: {figure: band}}, context only), then one verdict row per
    figure: the mean of ``history`` over ``judged_epochs`` against ``judged_band``."""
    ours = {r.get('epoch', i + 1): r for i, r in enumerate(_epochs_of(history, path))}
    missing = [e for e in sorted(set(bands) | set(judged_epochs)) if e not in ours]
    if missing:
        raise UnusableHistory(f"{path}: {len(ours)} epochs; {against} has {max(bands)} (epoch {missing[0]} missing)")
    cmp = Comparison(against, notes=notes)
    for epoch, figures in sorted(bands.items()):
        cmp.rows += [(epoch, k, ours[epoch][k], _band_text(b), '') for k, b in figures.items() if k in ours[epoch]]
    label = _epoch_label(judged_epochs) + (' mean' if len(judged_epochs) > 1 else '')
    for key, band in judged_band.items():
        if all(key in ours[e] for e in judged_epochs):
            value = math.fsum(ours[e][key] for e in judged_epochs) / len(judged_epochs)
            status = judge(value, band, margin[key], HIGHER_IS_BETTER[key])
            cmp.ok &= status != 'REGRESSION'
            cmp.rows.append((label, key, value, _band_text(band), status))
    return cmp


PUBLISHED_NAMES = ('book',) + tuple(PUBLISHED)


def compare_published(history, against='book', path='history'):
    """Judge a history of the chapter's recipe by the published run-to-run spread at epoch 5 (SPREAD).

    against: 'book' (the English chapter's printed run) or a name in PUBLISHED; that run's figures
    are shown for the earlier epochs as context. No margin: the band is the published spread itself.
    """
    name = 'd2l-mxnet-en' if against == 'book' else against
    if name not in PUBLISHED:
        raise UnusableHistory(f"--against {against}: unknown; choose {', '.join(PUBLISHED_NAMES)}, all, or a FILE")
    ref = PUBLISHED[name]
    _check_recipe(history, ref['recipe'], path)
    keys = ('loss', 'train_acc', 'test_acc')
    bands = {r['epoch']: {k: {'min': r[k], 'max': r[k], 'n': 1} for k in keys} for r in ref['epochs']}
    spread = {k: {'min': SPREAD[k][0], 'max': SPREAD[k][1], 'median': SPREAD['median'][k]} for k in keys}
    notes = [f"source: {ref['source']} (every epoch of that run shown as context)",
             f"judged: epoch {SPREAD['epoch']} against the band of {SPREAD['source']}"]
    return _compare(history, bands, [SPREAD['epoch']], spread, dict.fromkeys(keys, 0.0), against, path, notes)


def compare_baseline(history, baseline, path='history', baseline_path='baseline'):
    """Judge a history against a stored baseline of the same recipe.

    baseline: a band written by bench/spread.py (per-epoch mean, sd, min, max over seeds and machine
    variants, with its ``margin`` and ``judged_epochs``) or a single history.json (a band of one run,
    SINGLE_RUN_MARGIN). Only the mean over the judged epochs (the band's ``judged_epochs``; the last
    epoch for a single history) gives a verdict: the early epochs of a short run from a random start
    vary far more between machines than a regression moves them, and averaging the last few epochs
    damps the noise of the last one (in the stored band, loss sd 0.068 at epoch 8, 0.040 for the mean
    of epochs 6-8; docs/reproducibility.md).
    """
    base_recipe = baseline.get('recipe') if isinstance(baseline, dict) else None
    if not isinstance(base_recipe, dict):
        raise UnusableHistory(f"{baseline_path}: the baseline names no recipe")
    _check_recipe(history, {k: base_recipe[k] for k in RECIPE_KEYS if k in base_recipe}, path)
    bands = {}
    for i, r in enumerate(_epochs_of(baseline, baseline_path)):
        bands[r.get('epoch', i + 1)] = {k: (r[k] if isinstance(r[k], dict) else {'min': r[k], 'max': r[k], 'n': 1})
                                        for k in FIGURES if k in r}
    judged_epochs = baseline.get('judged_epochs') or [max(bands)]
    runs = baseline.get('runs') or [baseline]  # a single history is a band of one run
    if not (isinstance(judged_epochs, list) and all(type(e) is int and e >= 1 for e in judged_epochs)
            and isinstance(runs, list) and all(_epochs_of(r, baseline_path) for r in runs)):
        raise UnusableHistory(f"{baseline_path}: \"judged_epochs\" must be whole numbers from 1 and \"runs\" a list of "
                              "histories")
    judged_band = baseline.get('judged') or judged_stats(runs, judged_epochs)
    margin = dict(SINGLE_RUN_MARGIN, **baseline.get('margin', {}))
    notes = [f"judged: the mean of epochs {_epoch_label(judged_epochs)} against the band of {len(runs)} run(s); "
             f"a regression is worse than the band by more than: " + ', '.join(f'{k} {v}' for k, v in margin.items())]
    return _compare(history, bands, judged_epochs, judged_band, margin, baseline_path, path, notes)


def fcn_paper_table():
    """The FCN paper's Table 2 as text (context for VOC figures; VGG16, not resnet18)."""
    cols = FCN_PAPER['columns']
    lines = [FCN_PAPER['source'], f"{'model':<14}" + ''.join(f'{c:>10}' for c in cols)]
    lines += [f"{name:<14}" + ''.join(f'{v:>10.1f}' for v in row) for name, row in FCN_PAPER['rows'].items()]
    return '\n'.join(lines)


def _band_recipe(name):
    """The result fields a history must share with band ``name`` ('book' or one of ``BANDS``)."""
    if name == 'book':
        return CHAPTER_RECIPE
    stored = read_json(band_path(name), what='a stored band (JSON)', limit=64 << 20).get('recipe', {})
    return {k: stored[k] for k in RECIPE_KEYS if k in stored}


def fitting_bands(history):
    """The named bands whose recipe ``history``'s is (``d2lseg compare`` picks the first by default)."""
    return [name for name in ('book', *BANDS) if not recipe_differences(history, _band_recipe(name))]


def compare_named(history, target, path='history'):
    """One comparison of ``history`` with ``target``: a published run (``PUBLISHED_NAMES``), a named band
    (``BANDS``) or a baseline file -> a ``Comparison``; a refusal for another recipe names the bands that fit."""
    try:
        if target in PUBLISHED_NAMES:
            return compare_published(history, target, path=path)
        if target in BANDS or os.path.isfile(target):
            baseline = read_json(band_path(target) if target in BANDS else target, what='a baseline (JSON)',
                                 limit=64 << 20)
            return compare_baseline(history, baseline, path=path, baseline_path=target)
    except UnusableHistory as e:
        if 'another recipe' not in str(e):
            raise
        fits = fitting_bands(history)
        raise UnusableHistory(f"--against {target}: {e}; " + (
            f"the band that fits it: --against {' or --against '.join(fits)}" if fits else
            f"no stored band ({', '.join(('book',) + tuple(BANDS))}) has its recipe: give --against FILE, a "
            "history.json of the same recipe")) from None
    raise D2lsegError(f"--against {target}: not a named band ({', '.join(('book',) + tuple(BANDS))}), "
                      f"{', '.join(PUBLISHED_NAMES[1:])}, all, nor a file")
