"""Published figures of the chapter's recipe, with their sources, and the comparison against them.

Kept as data next to the recipe that produced them (as torchvision keeps its model cards).
"""
from dataclasses import dataclass, field

from .errors import D2lsegError

# The recipe every d2l figure below used (D2L 10.10.4-10.10.5): compare only histories of this recipe.
CHAPTER_RECIPE = {'crop': [320, 480], 'batch_size': 32, 'lr': 0.1, 'wd': 1e-3, 'momentum': 0.0,
                  'variant': 'fcn32s', 'pretrained': True, 'ignore_boundary': False, 'synthetic': False,
                  'lr_schedule': 'constant', 'num_classes': 21}


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

# Run-to-run spread of the same recipe: 75 published runs of d2l-en releases, epoch 5.
SPREAD = {
    'source': '75 published runs of the d2l-en FCN section across releases (epoch 5)',
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

# Which direction is worse for each figure, and the default tolerance against a stored baseline.
HIGHER_IS_BETTER = {'loss': False, 'train_acc': True, 'test_acc': True, 'val_miou': True}
BASELINE_TOLERANCE = {'loss': 0.15, 'train_acc': 0.05, 'test_acc': 0.05, 'val_miou': 0.06}
RECIPE_KEYS = ('crop', 'batch_size', 'epochs', 'lr', 'wd', 'momentum', 'variant', 'pretrained',
               'ignore_boundary', 'synthetic', 'lr_schedule', 'num_classes', 'seed', 'max_images')


class UnusableHistory(D2lsegError):
    """A history that cannot be compared (another recipe, missing epochs)."""


@dataclass
class Comparison:
    """Per-epoch rows and a verdict. ``ok`` is False on a regression."""
    against: str
    rows: list = field(default_factory=list)   # (epoch, key, ours, theirs, diff, status)
    notes: list = field(default_factory=list)
    ok: bool = True

    def table(self):
        lines = [f"against {self.against}",
                 f"{'epoch':>5} {'figure':<10} {'ours':>8} {'theirs':>8} {'diff':>8}  status"]
        for epoch, key, ours, theirs, diff, status in self.rows:
            t = '-' if theirs is None else f'{theirs:8.4f}'
            d = '-' if diff is None else f'{diff:+8.4f}'
            lines.append(f"{epoch:>5} {key:<10} {ours:8.4f} {t:>8} {d:>8}  {status}")
        lines += self.notes
        lines.append('verdict: ' + ('within tolerance' if self.ok else 'REGRESSION'))
        return '\n'.join(lines)


def _epochs_of(history, path='history'):
    epochs = history.get('epochs') if isinstance(history, dict) else history
    if not isinstance(epochs, list) or not epochs or not all(isinstance(r, dict) for r in epochs):
        raise UnusableHistory(f"{path}: no per-epoch records (expected a d2lseg history.json)")
    return epochs


def _check_recipe(history, expected, path):
    recipe = history.get('recipe') if isinstance(history, dict) else None
    if recipe is None:
        raise UnusableHistory(f"{path}: the history names no recipe; cannot tell what it should match")
    diffs = [f"{k}={recipe.get(k)!r} (expected {v!r})" for k, v in expected.items() if recipe.get(k) != v]
    if diffs:
        raise UnusableHistory(f"{path}: another recipe, not compared: " + ', '.join(diffs))


def compare_published(history, against='d2l-mxnet-en', path='history'):
    """Compare a history of the chapter's recipe with a published run and the run-to-run spread."""
    if against not in PUBLISHED:
        raise UnusableHistory(f"--against {against}: unknown; choose {', '.join(PUBLISHED)}, all, or a FILE")
    ref = PUBLISHED[against]
    _check_recipe(history, ref['recipe'], path)
    ours = _epochs_of(history, path)
    if len(ours) < len(ref['epochs']):
        raise UnusableHistory(f"{path}: {len(ours)} epochs, the published run has {len(ref['epochs'])}")
    cmp = Comparison(against, notes=[f"source: {ref['source']}",
                                     f"tolerance: the final epoch must lie inside the spread of {SPREAD['source']}: "
                                     + ', '.join(f"{k} {SPREAD[k][0]}-{SPREAD[k][1]}" for k in ('loss', 'train_acc', 'test_acc'))])
    for mine, theirs in zip(ours, ref['epochs']):
        for key in ('loss', 'train_acc', 'test_acc'):
            status = ''
            if mine['epoch'] == SPREAD['epoch']:
                lo, hi = SPREAD[key]
                inside = lo <= mine[key] <= hi
                worse = mine[key] > hi if key == 'loss' else mine[key] < lo
                status = 'inside spread' if inside else ('WORSE than spread' if worse else 'better than spread')
                cmp.ok &= not worse
            cmp.rows.append((mine['epoch'], key, mine[key], theirs[key], mine[key] - theirs[key], status))
    return cmp


def compare_baseline(history, baseline, path='history', baseline_path='baseline'):
    """Compare a history with a stored one of the same recipe, figure by figure, within tolerances.

    Only a change for the worse beyond the tolerance is a regression; the tolerances are the
    baseline's ``tolerance`` entry or ``BASELINE_TOLERANCE``.
    """
    base_recipe = baseline.get('recipe') if isinstance(baseline, dict) else None
    if base_recipe is None:
        raise UnusableHistory(f"{baseline_path}: the baseline names no recipe")
    _check_recipe(history, {k: base_recipe.get(k) for k in RECIPE_KEYS if k in base_recipe}, path)
    ours, theirs = _epochs_of(history, path), _epochs_of(baseline, baseline_path)
    if len(ours) != len(theirs):
        raise UnusableHistory(f"{path}: {len(ours)} epochs, {baseline_path} has {len(theirs)}")
    tol = dict(BASELINE_TOLERANCE, **baseline.get('tolerance', {}))
    cmp = Comparison(baseline_path, notes=['tolerance (absolute, worse direction only): '
                                           + ', '.join(f'{k} {v}' for k, v in tol.items())])
    for mine, ref in zip(ours, theirs):
        for key in tol:
            if key not in mine or key not in ref:
                continue
            diff = mine[key] - ref[key]
            worse = -diff if HIGHER_IS_BETTER[key] else diff
            status = 'REGRESSION' if worse > tol[key] else ('ok' if abs(diff) <= tol[key] else 'better')
            cmp.ok &= status != 'REGRESSION'
            cmp.rows.append((mine['epoch'], key, mine[key], ref[key], diff, status))
    return cmp


def fcn_paper_table():
    """The FCN paper's Table 2 as text (context for VOC figures; VGG16, not resnet18)."""
    cols = FCN_PAPER['columns']
    lines = [FCN_PAPER['source'], f"{'model':<14}" + ''.join(f'{c:>10}' for c in cols)]
    lines += [f"{name:<14}" + ''.join(f'{v:>10.1f}' for v in row) for name, row in FCN_PAPER['rows'].items()]
    return '\n'.join(lines)
