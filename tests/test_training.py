"""Training (D2L 10.10.5): the chapter's train(), SegmentationLoss, Recipe, fit(), checkpoints, resume, divergence."""
import json
import math
import os
import re

import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd, gluon, nd

from d2lseg import checkpoint
from d2lseg.model import build_fcn, load_params
from d2lseg.training import (Checkpointer, Recipe, SegmentationLoss, TrainingDiverged, _get_batch,
                             evaluate, evaluate_accuracy, fit, learning_rate, prepare, train, try_all_gpus)
from d2lseg.voc import VOCSegDataset

EPOCH_LINE = re.compile(r'^epoch (\d+), loss (\d+\.\d{4}), train acc (\d\.\d{3}), test acc (\d\.\d{3}), '
                        r'time (\d+\.\d) sec$')


def tiny_recipe(data_root, **kw):
    """A recipe small enough for a unit test: 64x96 crops, 6 train / 6 val images, batch 2, CPU."""
    base = dict(data_dir=data_root, synthetic=True, crop=(64, 96), batch_size=2, epochs=2, lr=0.05,
                momentum=0.9, pretrained=False, ctx='cpu', workers=0, max_images=6, seed=3)
    base.update(kw)
    return Recipe(**base)


def trainable(net):
    """Every parameter (trainable and BN running statistics) as numpy copies, in collect_params() order."""
    return [p.data(p.list_ctx()[0]).asnumpy().copy() for p in net.collect_params().values()]


def same_params(a, b, atol=1e-6):
    assert len(a) == len(b) and all(x.shape == y.shape for x, y in zip(a, b))
    worst = max(float(np.abs(x - y).max()) for x, y in zip(a, b))
    assert worst <= atol, f'largest parameter difference {worst}'


def test_try_all_gpus_is_cpu_here():
    if mx.context.num_gpus():
        pytest.skip('this machine has a GPU')
    assert try_all_gpus() == [mx.cpu()]


def test_chapter_train_prints_book_format_and_returns_history(voc_dir, capsys):
    mx.random.seed(0)
    train_data = VOCSegDataset(True, (64, 96), voc_dir, seed=0, max_images=4, verbose=False)
    test_data = VOCSegDataset(False, (64, 96), voc_dir, seed=0, max_images=4, verbose=False)
    train_iter = gluon.data.DataLoader(train_data, 2, shuffle=True, last_batch='discard')
    test_iter = gluon.data.DataLoader(test_data, 2, last_batch='keep')
    ctx = try_all_gpus()
    net = build_fcn(21, pretrained=False, ctx=ctx)
    trainer = gluon.Trainer(net.collect_params(), 'sgd', {'learning_rate': 0.1, 'wd': 1e-3})
    history = train(train_iter, test_iter, net, gluon.loss.SoftmaxCrossEntropyLoss(axis=1), trainer, ctx, 2)
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == f'training on {ctx}'
    assert len(lines) == 3
    for i, (line, record) in enumerate(zip(lines[1:], history)):
        m = EPOCH_LINE.match(line)
        assert m, line
        assert int(m.group(1)) == record['epoch'] == i + 1
        assert float(m.group(2)) == pytest.approx(record['loss'], abs=5e-5)
        assert float(m.group(3)) == pytest.approx(record['train_acc'], abs=5e-4)
        assert float(m.group(4)) == pytest.approx(record['test_acc'], abs=5e-4)
        assert float(m.group(5)) == pytest.approx(record['time'], abs=0.05)
        assert record['loss'] > 0 and math.isfinite(record['loss'])
        assert 0 <= record['train_acc'] <= 1 and 0 <= record['test_acc'] <= 1
    assert len(history) == 2


def test_evaluate_accuracy_known_case():
    # Logits pick class 1 everywhere in batch 1 and class 0 everywhere in batch 2.
    labels = [nd.array([[[1, 1], [0, 255]]]), nd.array([[[0, 2], [0, 0]]])]
    def net(X):
        cls = int(X[0, 0, 0, 0].asscalar())
        logits = nd.zeros((X.shape[0], 3, 2, 2))
        logits[:, cls] = 1
        return logits
    batches = [(nd.ones((1, 3, 2, 2)), labels[0]), (nd.zeros((1, 3, 2, 2)), labels[1])]
    # batch 1: 2 right of 3 counted (255 skipped); batch 2: 3 right of 4 -> 5 / 7
    assert evaluate_accuracy(batches, net, mx.cpu()) == pytest.approx(5 / 7)
    assert evaluate_accuracy(batches, net, [mx.cpu(0), mx.cpu(1)]) == pytest.approx(5 / 7)
    # the package's evaluate: the confusion matrix mat[true, pred], one Context or a list
    for ctx in (mx.cpu(), [mx.cpu(0), mx.cpu(1)]):
        np.testing.assert_array_equal(evaluate(net, batches, ctx, num_classes=3).mat,
                                      [[3, 1, 0], [0, 2, 0], [1, 0, 0]])


def test_two_context_step_equals_one_context_on_the_halves(voc_dir, tmp_path):
    """The chapter's multi-context step on batch 4 over [cpu(0), cpu(1)] equals one context doing the same work.

    BatchNorm normalises each context's shard with that shard's statistics, so a single-context
    run on the whole batch of 4 would differ. The faithful single-context equivalent runs the
    network on each half separately (same per-half BN statistics), backpropagates the sum of both
    losses and steps with the full batch size; then trainable parameters and losses must agree.
    BN running statistics are not trained (grad_req 'null') and each context's copy sees only its
    own shard, so they are left out of the comparison.
    """
    data = VOCSegDataset(True, (64, 96), voc_dir, seed=0, max_images=4, verbose=False)
    X = nd.stack(*[data[i][0] for i in range(4)])
    y = nd.stack(*[data[i][1] for i in range(4)])
    ctxs = [mx.cpu(0), mx.cpu(1)]
    mx.random.seed(1)
    net2 = build_fcn(21, pretrained=False, ctx=ctxs)
    for c in ctxs:  # finish the deferred initialisation (prediction mode: BN statistics untouched)
        net2(X[:1].as_in_context(c))
    path = str(tmp_path / 'init.params')
    net2.save_parameters(path)
    net1 = build_fcn(21, pretrained=False, ctx=mx.cpu(0))
    net1.load_parameters(path, ctx=mx.cpu(0))
    loss = SegmentationLoss()
    opt = {'learning_rate': 0.1, 'wd': 1e-3}

    trainer2 = gluon.Trainer(net2.collect_params(), 'sgd', opt)
    Xs, ys, batch_size = _get_batch((X, y), ctxs)
    assert [x.shape[0] for x in Xs] == [2, 2] and batch_size == 4
    with autograd.record():
        ls2 = [loss(net2(Xp), yp) for Xp, yp in zip(Xs, ys)]
    for l in ls2:
        l.backward()
    trainer2.step(batch_size)

    # one context: each half in its own forward/backward, gradients accumulated (grad_req 'add')
    # as the kvstore sums the contexts' gradients, then one step with the whole batch size
    trainer1 = gluon.Trainer(net1.collect_params(), 'sgd', opt)
    for p in net1.collect_params().values():
        if p.grad_req != 'null':
            p.grad_req = 'add'
    net1.collect_params().zero_grad()
    ls1 = []
    for Xh, yh in ((X[:2], y[:2]), (X[2:], y[2:])):
        with autograd.record():
            l = loss(net1(Xh), yh)
        l.backward()
        ls1.append(l)
    trainer1.step(4)

    np.testing.assert_allclose(np.concatenate([l.asnumpy() for l in ls2]),
                               np.concatenate([l.asnumpy() for l in ls1]), rtol=1e-5)
    for (name, p1), p2 in zip(net1.collect_params().items(), net2.collect_params().values()):
        assert p1.shape == p2.shape
        a, b0, b1 = p1.data().asnumpy(), p2.data(ctxs[0]).asnumpy(), p2.data(ctxs[1]).asnumpy()
        if p1.grad_req == 'null':   # BN running statistics: each context copy saw its own shard only
            continue
        np.testing.assert_array_equal(b0, b1)  # the kvstore keeps both copies identical
        np.testing.assert_allclose(b0, a, rtol=1e-4, atol=1e-6, err_msg=name)
    # and the step did change the parameters (the comparison is not between two untouched nets)
    init = list(nd.load(path).values())  # saved in collect_params() order
    changed = [n for (n, p), v in zip(net1.collect_params().items(), init)
               if p.grad_req != 'null' and not np.allclose(p.data().asnumpy(), v.asnumpy())]
    assert len(changed) > 10


def test_segmentation_loss_matches_gluon_and_skips_255():
    rng = np.random.default_rng(0)
    pred = nd.array(rng.standard_normal((2, 21, 4, 6)))
    label = nd.array(rng.integers(0, 21, (2, 4, 6)))
    ours = SegmentationLoss()(pred, label).asnumpy()
    ref = gluon.loss.SoftmaxCrossEntropyLoss(axis=1)(pred, label).asnumpy()
    assert ours.shape == (2,)
    np.testing.assert_allclose(ours, ref, rtol=1e-5)

    lab = label.asnumpy().copy()
    lab[0, :2] = 255
    lab[1, 3, 5] = 255
    logp = pred.asnumpy() - np.log(np.exp(pred.asnumpy()).sum(axis=1, keepdims=True))
    valid = lab != 255
    picked = np.take_along_axis(logp, np.where(valid, lab, 0).astype(int)[:, None], axis=1)[:, 0]
    expected = (-picked * valid).reshape(2, -1).mean(axis=1)  # mean over all H*W pixels
    np.testing.assert_allclose(SegmentationLoss()(pred, nd.array(lab)).asnumpy(), expected, rtol=1e-5)
    # an all-ignored image contributes nothing
    assert SegmentationLoss()(pred[:1], nd.full((1, 4, 6), 255)).asscalar() == 0


def test_recipe_defaults_are_the_chapters():
    r = Recipe()
    assert (r.crop, r.batch_size, r.epochs, r.lr, r.wd) == ((320, 480), 32, 5, 0.1, 1e-3)
    assert (r.variant, r.pretrained, r.momentum, r.lr_schedule) == ('fcn32s', True, 0.0, 'constant')
    assert r.validate() is r
    assert Recipe.from_dict(json.loads(json.dumps(r.to_dict()))) == r


@pytest.mark.parametrize('change, flag', [
    (dict(crop=(100, 480)), '--crop 100x480'), (dict(crop=(320, 0)), '--crop'),
    (dict(batch_size=0), '--batch-size 0'), (dict(epochs=-1), '--epochs -1'),
    (dict(lr=0.0), '--lr'), (dict(lr=float('nan')), '--lr nan'), (dict(wd=-1.0), '--wd'),
    (dict(variant='fcn4s'), '--variant fcn4s'), (dict(lr_schedule='cosine'), '--lr-schedule cosine'),
    (dict(workers=-1), '--workers'), (dict(warmup_epochs=-1), '--warmup-epochs -1'),
    (dict(warmup_epochs=6), '--warmup-epochs 6'), (dict(warmup_epochs=float('nan')), '--warmup-epochs nan'),
])
def test_recipe_validate_names_the_flag(change, flag):
    from d2lseg.errors import D2lsegError
    with pytest.raises(D2lsegError) as e:
        Recipe(**change).validate()
    msg = str(e.value)
    assert msg.startswith(flag) and '\n' not in msg


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
    real = checkpoint.atomic_write
    def spy(path, write):
        written.append(os.path.basename(path))
        return real(path, write)
    monkeypatch.setattr(checkpoint, 'atomic_write', spy)
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
    from d2lseg.training import resume_recipe
    resumed = resume_recipe(out, run_recipe)
    assert (resumed.seed, resumed.lr, resumed.lr_schedule) == (3, 0.05, 'poly')
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
