"""Teaching helpers for the notebooks: a hyper-parameter comparison over several seeds, and its verdict
computed from the numbers (no hard-coded "spread": ties are differences inside the seed-to-seed
spread measured in the same comparison, or the one of a stored band, and every verdict says which).

A comparison is ``{name: {'changes': {...}, 'runs': {seed: {'epochs': [records], 'diverged': None or why}}}}``,
the records being ``fit``'s per-epoch records (``loss``, ``test_acc``, ``val_miou``, ...).

About 340 lines: besides the comparison, the notebooks' other computations a student reads the results
of (a stored band's description, the all-background floors, accuracy by distance to a boundary, example
windows, the "what to look for" sentences) live here, so that no notebook cell grows long with bookkeeping.
"""
import dataclasses
import math

import cv2
import numpy as np

from .engine import TrainingDiverged, fit, prepare
from ..data.palette import VOC_CLASSES
from .reference import _stats
from ..data.voc import VOCSegDataset, iter_split
from ..native.environment import summary as machine_summary

LABELS = {'val_miou': 'val mIoU', 'test_acc': 'val pixel acc', 'loss': 'train loss'}
KEYS = ('epoch', 'loss', 'train_acc', 'test_acc', 'val_miou', 'lr', 'time')


def _train(recipe, callbacks):
    """``engine.fit`` -> (records, None, the prepared run), or (records so far, why, run) when the loss
    diverged."""
    records = []
    keep = lambda state: records.append({k: state.record[k] for k in KEYS if k in state.record})  # noqa: E731
    run = prepare(recipe)
    try:
        fit(recipe, callbacks=list(callbacks) + [keep], run=run, progress=False)
        return records, None, run
    except TrainingDiverged as e:
        return records, str(e), run


def seed_sweep(base, settings, seeds, callbacks=(), train=_train, say=print, kept=None):
    """Train ``base`` (a Recipe) with each setting's changes, once per seed -> a comparison.

    settings: {name: {recipe field: value}}; seeds: the seeds every setting is trained with (the
    same seeds for all, so that setting, not luck, is what differs in the mean). ``train(recipe,
    callbacks) -> (records, diverged, run)`` trains one run (``engine.fit`` by default); ``say`` gets
    one line per run started; ``kept``, a dict, receives {name: the trained run} of the first seed
    (its network and data, e.g. for figures)."""
    out = {}
    for name, changes in settings.items():
        out[name] = {'changes': dict(changes), 'runs': {}}
        for seed in seeds:
            recipe = dataclasses.replace(base, seed=seed, **changes)
            say(f'{name}, seed {seed}')
            records, diverged, run = train(recipe, callbacks)
            out[name]['runs'][seed] = {'epochs': records, 'diverged': diverged}
            if kept is not None and seed == seeds[0]:
                kept[name] = run
    return out


def finals(comparison, name, key='val_miou'):
    """{seed: the last epoch's ``key``} of the runs of ``name`` that did not diverge."""
    return {s: r['epochs'][-1][key] for s, r in comparison[name]['runs'].items()
            if r['diverged'] is None and r['epochs']}


def summary(comparison, key='val_miou'):
    """{name: {'mean', 'sd', 'min', 'max', 'n', 'range', 'diverged'}} of the final ``key`` over seeds
    (sd is the sample standard deviation, 0 for one run; mean None when every run diverged)."""
    out = {}
    for name in comparison:
        values = list(finals(comparison, name, key).values())
        diverged = [s for s, r in comparison[name]['runs'].items() if r['diverged'] is not None]
        if values:
            st = _stats(values)
            st['sd'] = st['sd'] if len(values) > 1 else 0.0
            st['range'] = st['max'] - st['min']
        else:
            st = {'mean': None, 'sd': None, 'min': None, 'max': None, 'n': 0, 'range': None}
        out[name] = dict(st, diverged=diverged)
    return out


def measured_spread(stats, names):
    """The largest seed range (max - min of the final value over seeds) among ``names`` -> (spread,
    where it came from, one line). None when no setting has two finished runs."""
    ranges = {n: stats[n]['range'] for n in names if stats[n]['n'] >= 2}
    if not ranges:
        return None, 'no setting has two finished seeds: no spread measured'
    widest = max(ranges, key=ranges.get)
    return ranges[widest], (f'the largest range over seeds measured here ({widest}: '
                            f"{stats[widest]['min']:.3f} to {stats[widest]['max']:.3f}, n = {stats[widest]['n']})")


def band_spread(band, key='val_miou'):
    """The seed-to-seed spread of a stored band (``d2lseg/baselines/*.json``) -> (range of ``key`` over
    its judged epochs, where it came from)."""
    j = band['judged'][key]
    return j['max'] - j['min'], (f"the stored band {band.get('preset', '?')} (seeds {band.get('seeds')}, "
                                 f"judged epochs {band.get('judged_epochs')}: {key} {j['min']:.3f} to {j['max']:.3f})")


def _baseline_of(baseline, seed):
    return baseline[seed] if isinstance(baseline, dict) else baseline


def below_baseline(comparison, baseline):
    """Runs whose final validation pixel accuracy is at or below ``baseline`` (all background; a number,
    or {seed: number} when each seed validates on its own random crops) -> ['name [seed s]'] in order."""
    return [f'{name} [seed {seed}]' for name in comparison for seed, acc in finals(comparison, name, 'test_acc').items()
            if acc <= _baseline_of(baseline, seed)]


def margin_line(comparison, name, baseline):
    """One printed line: how far each finished seed of ``name`` ended above its all-background floor
    (final validation pixel accuracy minus ``baseline``, a number or {seed: number}), and the smallest."""
    margins = {s: acc - _baseline_of(baseline, s) for s, acc in finals(comparison, name, 'test_acc').items()}
    if not margins:
        return f'{name}: no finished run, no margin over the floor'
    return (f'{name}: val pixel acc minus its floor: '
            + ', '.join(f'{m:+.3f} (seed {s})' for s, m in margins.items())
            + f'; smallest {min(margins.values()):+.3f}')


def compare(stats, name, ref, spread):
    """One word for ``name`` against ``ref`` by the mean final value: 'better', 'worse' or 'tie'
    (the difference is inside ``spread``) -> (word, difference); ('diverged', None) when one never finished."""
    a, b = stats[name]['mean'], stats[ref]['mean']
    if a is None or b is None:
        return 'diverged', None
    d = a - b
    if spread is None or abs(d) <= spread:
        return 'tie', d
    return ('better' if d > 0 else 'worse'), d


def verdict(comparison, reference, baseline, key='val_miou', spread=None):
    """The verdict of a comparison, as printed lines.

    reference: the setting the others are compared with; baseline: the all-background pixel accuracy
    of the validation pixels the runs are scored on (a number, or {seed: number}); spread: (value, where
    it came from), e.g. ``band_spread``; by default ``measured_spread`` over all settings. Names the runs at or below
    the baseline, calls differences inside the spread a tie, and says where the spread came from."""
    stats = summary(comparison, key)
    spread, source = spread if spread is not None else measured_spread(stats, list(comparison))
    lines = []
    below = below_baseline(comparison, baseline)
    shown = (f'{baseline:.3f}' if not isinstance(baseline, dict) else
             ', '.join(f'{v:.3f} (seed {s})' for s, v in baseline.items()))
    lines.append(f'all-background pixel accuracy of these validation pixels: {shown}; runs at or below it: '
                 + ('; '.join(below) if below else 'none'))
    lines.append('tie margin: ' + (f'{spread:.3f}, ' if spread is not None else '') + source)
    for name in comparison:
        if name == reference:
            continue
        word, d = compare(stats, name, reference, spread)
        if d is None:
            lines.append(f'{name}: every seed diverged' if stats[name]['mean'] is None
                         else f'{name}: {reference} diverged on every seed, nothing to compare')
            continue
        lines.append(f'{name}: {LABELS.get(key, key)} {stats[name]["mean"]:.3f} ± {stats[name]["sd"]:.3f} against '
                     f'{stats[reference]["mean"]:.3f} ± {stats[reference]["sd"]:.3f} for {reference}: '
                     f'{word.upper()} ({d:+.3f}' + (', inside the spread)' if word == 'tie' else ')'))
    return lines


def table(comparison):
    """Printed lines: per setting, the mean ± sd over seeds of the final loss, val pixel accuracy and mIoU."""
    rows = [f"{'setting':<34} {'seeds':>5} {'loss':>15} {'val pixel acc':>15} {'val mIoU':>15}"]
    stats = {k: summary(comparison, k) for k in ('loss', 'test_acc', 'val_miou')}
    for name in comparison:
        cells = []
        for k in ('loss', 'test_acc', 'val_miou'):
            st = stats[k][name]
            cells.append(f"{st['mean']:.3f} ± {st['sd']:.3f}" if st['mean'] is not None else 'diverged')
        n = stats['loss'][name]['n']
        rows.append(f'{name:<34} {n:>5} ' + ' '.join(f'{c:>15}' for c in cells))
    return rows


def best(comparison, key='val_miou'):
    """The setting with the highest mean final ``key`` (None when every run diverged)."""
    stats = summary(comparison, key)
    ok = [n for n in comparison if stats[n]['mean'] is not None and not math.isnan(stats[n]['mean'])]
    return max(ok, key=lambda n: stats[n]['mean'], default=None)


def dtype_lines(float32_records, bfloat16_records, spread, where, key='val_miou'):
    """One seed's float32 run and its bfloat16 twin (the same recipe and seed: the same starting weights)
    -> printed lines: the final ``key`` of each and their difference, the time each took, and a verdict
    from the numbers: a difference inside ``spread`` (the seed-to-seed spread, from ``where``) is a tie."""
    a, b = float32_records[-1][key], bfloat16_records[-1][key]
    t32, t16 = (sum(r['time'] for r in rs) for rs in (float32_records, bfloat16_records))
    d = b - a
    word = 'tie' if spread is None or abs(d) <= spread else ('better' if d > 0 else 'worse')
    return [f'{LABELS.get(key, key)}: float32 {a:.3f}, bfloat16 {b:.3f} ({d:+.3f})',
            f'training time: float32 {t32:.1f} s, bfloat16 {t16:.1f} s (bfloat16 {t32 / t16:.2f}x the speed)',
            f'verdict: bfloat16 {word.upper()} against float32 ('
            + (f'{abs(d):.3f} {"inside" if word == "tie" else "beyond"} the tie margin {spread:.3f}, {where})'
               if spread is not None else f'{where})')]


def band_lines(band):
    """What a stored band (``d2lseg/baselines/*.json``) holds, as printed lines: its data and recipe, its runs
    per seed, the machines they ran on, and per judged figure the range over runs, mean +- sd and margin."""
    synth, epochs, seeds = band['synth'], band['judged_epochs'], [r['recipe']['seed'] for r in band['runs']]
    lines = [f"data: a synthetic set of {synth['n_train']} training and {synth['n_val']} validation scenes "
             f"(seed {synth['seed']})", 'recipe: d2lseg train ' + ' '.join(band['train']),
             f'{len(seeds)} runs; runs per seed: '
             + ', '.join(f'seed {k}: {seeds.count(k)}' for k in sorted(set(seeds))),
             'machines:'] + ['   ' + m for m in sorted({machine_summary(r['environment']) for r in band['runs']})]
    lines.append(f'judged: the mean of epochs {epochs[0]}-{epochs[-1]} of each run')
    for key in ('loss', 'train_acc', 'test_acc', 'val_miou'):
        b = band['judged'][key]
        lines.append(f"  {key:<10} {b['min']:.4f}-{b['max']:.4f}  mean {b['mean']:.4f} +- {b['sd']:.4f}  "
                     f"margin {band['margin'][key]}")
    return lines


# ------------------------------------------------------------------- the all-background baselines


def split_counts(voc_dir, is_train=False):
    """Pixels per class (21) of a split's whole labels, void mapped to background as the chapter maps
    it -> (counts, all-background pixel accuracy)."""
    counts = np.zeros(256, dtype=np.int64)
    for _, _, lab in iter_split(voc_dir, is_train=is_train):
        counts += np.bincount(lab.ravel(), minlength=256)
    if counts[21:].any():
        raise ValueError(f'{voc_dir}: a label outside the 21 classes')
    return counts[:21], counts[0] / counts[:21].sum()


def loader_background(data_iter):
    """One pass of a loader of (image, label) batches -> (background pixels, scored pixels): the
    all-background accuracy of those crops is their ratio (void, 255, is not scored)."""
    background = pixels = 0
    for _, y in data_iter:
        background += int((y == 0).sum().asscalar())
        pixels += int((y != 255).sum().asscalar())
    return background, pixels


def crops_baseline(recipe, voc_dir):
    """The all-background pixel accuracy of exactly the validation crops ``fit(recipe)`` scores (they are
    drawn from the recipe's seed, so each seed has its own)."""
    crops = VOCSegDataset(False, recipe.crop, voc_dir, seed=recipe.seed, max_images=recipe.max_images,
                          ignore_boundary=recipe.ignore_boundary, verbose=False)
    labels = [crops[i][1].asnumpy() for i in range(len(crops))]
    return sum(int((y == 0).sum()) for y in labels) / sum(int((y != 255).sum()) for y in labels)


# ------------------------------------------------------------------- accuracy near class boundaries


def boundary_distance(lab):
    """Distance in pixels from every pixel of a label map (H, W; 255 = void) to the nearest void pixel or
    class change (np.inf everywhere when there is none)."""
    edge = lab == 255
    edge[:, 1:] |= (lab[:, 1:] != lab[:, :-1]) & (lab[:, 1:] != 255) & (lab[:, :-1] != 255)
    edge[1:, :] |= (lab[1:, :] != lab[:-1, :]) & (lab[1:, :] != 255) & (lab[:-1, :] != 255)
    if not edge.any():
        return np.full(lab.shape, np.inf, np.float32)
    return cv2.distanceTransform((~edge).astype(np.uint8), cv2.DIST_L2, 3)


def accuracy_by_distance(preds, labels, edges):
    """Right and scored pixels per distance band -> (right, total), arrays of len(edges) - 1.

    preds, labels: matching (H, W) class maps (labels: 255 = void, not scored); edges: increasing band
    edges in pixels from 0 to np.inf, band k is [edges[k], edges[k + 1])."""
    right, total = np.zeros(len(edges) - 1), np.zeros(len(edges) - 1)
    for p, lab in zip(preds, labels):
        keep = lab != 255
        band = np.digitize(boundary_distance(lab)[keep], edges[1:-1])
        right += np.bincount(band, weights=p[keep] == lab[keep], minlength=len(right))
        total += np.bincount(band, minlength=len(total))
    return right, total


# ------------------------------------------------------------------- example windows for a figure


def best_window(mask, k):
    """The k x k window of a boolean (H, W) ``mask`` with the largest share inside it -> (share, top row,
    left column); (0.0, 0, 0) when no window fits in the mask or it is empty."""
    if mask.shape[0] < k or mask.shape[1] < k or not mask.any():
        return 0.0, 0, 0
    cover = cv2.boxFilter(mask.astype(np.float32), -1, (k, k), anchor=(0, 0), borderType=cv2.BORDER_CONSTANT)
    cover = cover[:mask.shape[0] - k + 1, :mask.shape[1] - k + 1]  # windows wholly inside the image
    y, x = np.unravel_index(cover.argmax(), cover.shape)
    return float(cover[y, x]), int(y), int(x)


def find_window(items, make_mask, k):
    """The k x k image window most inside ``make_mask(image, label)`` over ``items`` ((name, image, label)
    triples), stopping at the first wholly inside -> (share, its (k, k, 3) pixels; None when none fits)."""
    best = (0.0, None)
    for _, img, lab in items:
        share, y, x = best_window(make_mask(img, lab), k)
        if share > best[0]:
            best = (share, img[y:y + k, x:x + k])
        if share == 1.0:
            break
    return best


# ------------------------------------------------------------------- what to look for in a figure


def _np(a):
    return a.asnumpy() if hasattr(a, 'asnumpy') else np.asarray(a)


def look_for(preds, labels, names=VOC_CLASSES):
    """One sentence on a prediction figure, computed from its maps: the share of labelled pixels
    predicted right, the most frequent confusion (true class taken for another) and how many classes
    the predictions use against the labels. preds, labels: matching (H, W) class maps (255 = void)."""
    n = len(names)
    cm = np.zeros((n, n), np.int64)
    for p, lab in zip(preds, labels):
        p, lab = _np(p).astype(np.int64).ravel(), _np(lab).astype(np.int64).ravel()
        keep = (lab != 255) & (lab < n) & (p < n)
        cm += np.bincount(lab[keep] * n + p[keep], minlength=n * n).reshape(n, n)
    if not cm.sum():
        return 'What to look for: these images have no labelled pixels.'
    wrong = cm.copy()
    np.fill_diagonal(wrong, 0)
    t, q = np.unravel_index(wrong.argmax(), wrong.shape)
    said = (f'its most frequent mistake is {names[t]} taken for {names[q]} ({wrong[t, q]} pixels, '
            f'{wrong[t, q] / cm[t].sum():.0%} of the {names[t]} pixels)' if wrong[t, q] else 'it makes no mistake')
    return (f'What to look for: {np.trace(cm) / cm.sum():.0%} of the labelled pixels are right; {said}; the '
            f'predictions use {np.count_nonzero(cm.sum(0))} classes where the labels have '
            f'{np.count_nonzero(cm.sum(1))}.')


def edge_sentence(accuracy_near, accuracy_inside):
    """One sentence comparing variants' pixel accuracy near class boundaries and inside objects.
    accuracy_near, accuracy_inside: {variant: accuracy}."""
    best = max(accuracy_near, key=accuracy_near.get)
    worst = min(accuracy_near, key=accuracy_near.get)
    gaps = ', '.join(f'{v} {accuracy_inside[v] - accuracy_near[v]:+.3f}' for v in accuracy_near)
    return (f'What to look for: the edges. Near boundaries {best} is the most accurate ({accuracy_near[best]:.3f}) '
            f'and {worst} the least ({accuracy_near[worst]:.3f}); inside minus near: {gaps}.')
