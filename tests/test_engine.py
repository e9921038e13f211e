"""The reference trainer (``d2lseg.training.engine``): learning-rate schedule, fit with callbacks and checkpoints,
resume equal to an uninterrupted run, seeds, divergence."""
import dataclasses
import json
import math
import os

import mxnet as mx
import numpy as np
import pytest

from d2lseg.training import checkpoint
from d2lseg.core import outputs
from d2lseg.training.callbacks import Checkpointer
from d2lseg.training.config import Recipe
from d2lseg.training.engine import TrainingDiverged, fit, learning_rate, prepare
from d2lseg.fcn.loss import SegmentationLoss
from d2lseg.fcn.model import build_fcn, load_params
from recipes import same_params, tiny_recipe, trainable


def test_learning_rate_warm_up_then_poly_or_constant():
    # 10 steps per epoch, 5 epochs; warm-up over the first 2 epochs (20 steps) rises linearly to the schedule
    poly = Recipe(lr=0.1, epochs=5, lr_schedule='poly', warmup_epochs=2)
    assert learning_rate(poly, 0, 50, 10) == pytest.approx(0.1 * 1 / 20)
    assert learning_rate(poly, 9, 50, 10) == pytest.approx(0.1 * (1 - 9 / 50) ** 0.9 * 10 / 20)
    assert learning_rate(poly, 19, 50, 10) == 0.1 * (1 - 19 / 50) ** 0.9  # the warm-up's last step is the schedule's
    assert learning_rate(poly, 49, 50, 10) == 0.1 * (1 - 49 / 50) ** 0.9
    flat = Recipe(lr=0.1, warmup_epochs=0.5)
    assert [learning_rate(flat, i, 50, 10) for i in (0, 4, 5, 30)] == [0.1 / 5, 0.1, 0.1, 0.1]
    # without warm-up, poly is the expression fit always used (so stored runs keep their bits)
    plain = Recipe(lr=0.05, epochs=8, lr_schedule='poly')
    assert [learning_rate(plain, i, 192, 24) for i in (0, 100)] == [0.05, 0.05 * (1 - 100 / 192) ** 0.9]


def test_fit_callbacks_history_and_checkpoint_every_epoch(data_root, tmp_path, monkeypatch):
    out = str(tmp_path / 'run')
    written = []
    real = outputs.atomic_write
    def spy(path, write):
        written.append(os.path.basename(path))
        return real(path, write)
    monkeypatch.setattr(outputs, 'atomic_write', spy)
    seen = []
    def after(state):
        meta = checkpoint.load_meta(out)
        seen.append((state.epoch, meta['epoch'], sorted(os.listdir(out))))
    history = fit(tiny_recipe(data_root), [Checkpointer(out), after], progress=False)
    assert [s[:2] for s in seen] == [(1, 1), (2, 2)]
    # the pointer is the commit point: written after the params and optimizer state of its epoch
    assert written == [name for epoch in (1, 2) for name in (
        f'ckpt-epoch{epoch:04d}.params', f'ckpt-epoch{epoch:04d}.optimizer', 'checkpoint.json', 'history.json')]
    assert not [n for n in os.listdir(out) if '.tmp-' in n]
    assert history['recipe']['crop'] == [64, 96] and history['environment']['versions']['mxnet'] == mx.__version__
    assert set(history['untrained']) == {'pixel_acc', 'mean_acc', 'miou', 'fwiou'}
    assert [r['epoch'] for r in history['epochs']] == [1, 2]
    for r in history['epochs']:
        assert {'loss', 'train_acc', 'test_acc', 'val_miou', 'val_mean_acc', 'val_fwiou', 'val_iou', 'lr',
                'time', 'train_time', 'img_s'} <= set(r)
        assert len(r['val_iou']) == 21 and 0 <= r['val_miou'] <= 1 and math.isfinite(r['loss'])
    with open(os.path.join(out, 'history.json')) as f:
        assert json.load(f)['epochs'][-1]['loss'] == history['epochs'][-1]['loss']
    meta = checkpoint.load_meta(out)
    assert meta['epoch'] == 2 and meta['recipe'] == history['recipe']
    net = build_fcn(21, 'fcn32s', pretrained=False)
    load_params(net, os.path.join(out, meta['params']))


@pytest.fixture(scope='module')
def straight_run(data_root, tmp_path_factory):
    """An uninterrupted 3-epoch run (momentum and poly schedule, so the trainer states matter)."""
    out = str(tmp_path_factory.mktemp('straight'))
    recipe = tiny_recipe(data_root, epochs=3, lr_schedule='poly')
    run = prepare(recipe)
    history = fit(recipe, [Checkpointer(out)], progress=False, run=run)
    return recipe, history, trainable(run.net)


def test_resume_after_interruption_equals_uninterrupted(straight_run, data_root, tmp_path):
    recipe, history, final = straight_run
    out = str(tmp_path / 'resumed')
    def stop_after_first(state):
        state.stop = state.epoch == 1
    fit(tiny_recipe(data_root, epochs=3, lr_schedule='poly'), [Checkpointer(out), stop_after_first],
        progress=False)
    assert checkpoint.load_meta(out)['epoch'] == 1
    # resume with a different (ignored) seed/lr: the stored recipe wins
    run_recipe = tiny_recipe(data_root, epochs=3, seed=99, lr=9.0)
    from d2lseg.training.engine import resume
    before = dataclasses.replace(run_recipe)
    resumed = resume(out, dict(ctx=run_recipe.ctx, workers=run_recipe.workers, epochs=3)).recipe
    assert (resumed.seed, resumed.lr, resumed.lr_schedule, resumed.epochs) == (3, 0.05, 'poly', 3)
    assert run_recipe == before and resumed is not run_recipe  # the caller's recipe is not changed
    with pytest.raises(ValueError):  # what changes the result is the stored run's, never requested
        resume(out, dict(lr=9.0))
    run = prepare(resumed)
    h2 = fit(resumed, [Checkpointer(out)], resume=out, progress=False, run=run)
    assert [r['epoch'] for r in h2['epochs']] == [1, 2, 3]
    for a, b in zip(h2['epochs'], history['epochs']):
        assert a['loss'] == pytest.approx(b['loss'], rel=1e-5)
    same_params(trainable(run.net), final, atol=1e-6)


def test_seed_makes_runs_repeatable(straight_run, data_root):
    recipe, history, final = straight_run
    h = fit(tiny_recipe(data_root, epochs=1, lr_schedule='poly', seed=3), progress=False)
    h_other = fit(tiny_recipe(data_root, epochs=1, lr_schedule='poly', seed=4), progress=False)
    assert h['untrained'] == history['untrained']
    # the poly schedule spans the recipe's epochs, so compare the untrained metrics and the first
    # epoch's loss of a 1-epoch run against a fresh 1-epoch run of the same seed
    h_again = fit(tiny_recipe(data_root, epochs=1, lr_schedule='poly', seed=3), progress=False)
    assert h_again['epochs'][0]['loss'] == h['epochs'][0]['loss']
    np.testing.assert_array_equal(h_again['epochs'][0]['val_iou'], h['epochs'][0]['val_iou'])
    assert h_other['epochs'][0]['loss'] != h['epochs'][0]['loss']


class NaNAt:
    """A loss that turns NaN at a given (1-based) call, as a diverging run would."""

    def __init__(self, at):
        self.at, self.calls, self.base = at, 0, SegmentationLoss()

    def __call__(self, y_hat, y):
        self.calls += 1
        l = self.base(y_hat, y)
        return l * float('nan') if self.calls == self.at else l


def test_nan_loss_stops_with_epoch_and_batch_and_keeps_last_checkpoint(data_root, tmp_path):
    out = str(tmp_path / 'nan')
    recipe = tiny_recipe(data_root, epochs=3)
    run = prepare(recipe)
    steps = len(run.train_iter)
    assert steps == 3
    run.loss = NaNAt(steps + 2)   # epoch 2, batch 2
    with pytest.raises(TrainingDiverged) as e:
        fit(recipe, [Checkpointer(out)], progress=False, run=run)
    assert 'epoch 2, batch 2' in str(e.value) and 'nan' in str(e.value) and e.value.exit_code == 1
    meta = checkpoint.load_meta(out)
    assert meta['epoch'] == 1 and len(meta['history']['epochs']) == 1
    net = build_fcn(21, 'fcn32s', pretrained=False)
    load_params(net, os.path.join(out, meta['params']))
    assert all(np.isfinite(p.data().asnumpy()).all() for p in net.collect_params().values())


def test_huge_lr_diverges(data_root):
    # either a loss turns non-finite (named by batch) or the epoch's last update does (named by parameter)
    with pytest.raises(TrainingDiverged, match=r'became (nan|inf|-inf|NaN or infinite) in epoch \d+,? (\(by )?batch \d'):
        fit(tiny_recipe(data_root, lr=1e6, epochs=5, max_images=8), progress=False)


class NaNAfterLastStep:
    """Wraps a train loader: once the step on its last batch is done, one weight turns NaN. That batch's
    loss was finite, so only a check of the parameters sees what a blow-up in the final update does."""

    def __init__(self, loader, net):
        self.loader, self.net = loader, net

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        yield from self.loader
        p = list(self.net.collect_params().values())[1]
        p.set_data(p.data() * float('nan'))


def test_nonfinite_parameters_after_the_last_step_are_not_checkpointed(data_root, tmp_path):
    out = str(tmp_path / 'nan-params')
    recipe = tiny_recipe(data_root, epochs=2, momentum=0.0)
    run = prepare(recipe)
    run.train_iter = NaNAfterLastStep(run.train_iter, run.net)
    with pytest.raises(TrainingDiverged, match=r'parameter \S+ became NaN or infinite in epoch 1 \(by batch 3\)'):
        fit(recipe, [Checkpointer(out)], progress=False, run=run)
    assert not os.path.exists(os.path.join(out, checkpoint.POINTER))
