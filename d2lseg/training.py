"""Training (D2L 10.10.5): the chapter's multi-context ``train`` and the reference ``fit`` with its ``Recipe``.

``train`` is the chapter's loop, faithful to its printout. ``fit`` is the reference trainer:
seeded data order and crops, progress bars, per-epoch validation metrics, atomic checkpoints,
resume, divergence detection, and callbacks for everything that is not training.
"""
import dataclasses
import json
import math
import os
import time
import typing
from dataclasses import dataclass
from typing import Optional, Tuple

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon

from . import checkpoint, kernels
from .environment import environment
from .errors import D2lsegError, first_line
from .progress import bar
from .inference import predict_batch
from .kernels import argmax_channel
from .metrics import ConfusionMatrix
from .voc import IGNORE_INDEX


def try_all_gpus():
    """Every GPU MXNet can see, or ``[mx.cpu()]`` when there is none. Source: D2L."""
    n = mx.context.num_gpus()
    return [mx.gpu(i) for i in range(n)] if n else [mx.cpu()]


def _get_batch(batch, ctx):
    """Split a (features, labels) batch over the contexts -> (Xs, ys, batch_size)."""
    features, labels = batch
    if labels.dtype != features.dtype:
        labels = labels.astype(features.dtype)
    ctx = [ctx] if isinstance(ctx, mx.Context) else ctx
    ctx = ctx[:features.shape[0]]  # a last batch smaller than the context count: one sample per context
    return (gluon.utils.split_and_load(features, ctx, even_split=False),
            gluon.utils.split_and_load(labels, ctx, even_split=False), features.shape[0])


def _correct_and_count(y_hat, y):
    """Pixels predicted right and pixels counted (label 255 is not counted), as NDArrays."""
    valid = y != IGNORE_INDEX
    return ((argmax_channel(y_hat) == y) * valid).sum(), valid.sum()


def evaluate_accuracy(data_iter, net, ctx=None):
    """Pixel accuracy of ``net`` over ``data_iter``, batches split over ``ctx``. Source: D2L."""
    ctx = [mx.cpu()] if ctx is None else ([ctx] if isinstance(ctx, mx.Context) else ctx)
    acc_sum, n = 0.0, 0.0
    for batch in data_iter:
        Xs, ys, _ = _get_batch(batch, ctx)
        for X, y in zip(Xs, ys):
            right, count = _correct_and_count(net(X), y)
            acc_sum += right.asscalar()
            n += count.asscalar()
    return acc_sum / n if n else float('nan')


def _forward_backward(net, loss, Xs, ys):
    """Forward and backward on every context shard -> (losses, outputs), one per shard."""
    with autograd.record():
        y_hats = [net(X) for X in Xs]
        ls = [loss(y_hat, y) for y_hat, y in zip(y_hats, ys)]
    for l in ls:
        l.backward()
    return ls, y_hats


def _step_figures(ls, y_hats, ys):
    """(summed loss, pixels right, pixels counted) of one step over its shards, as Python numbers."""
    right = count = 0.0
    for y_hat, y in zip(y_hats, ys):
        r, c = _correct_and_count(y_hat, y)
        right += r.asscalar()
        count += c.asscalar()
    return sum(l.sum().asscalar() for l in ls), right, count


def train(train_iter, test_iter, net, loss, trainer, ctx, num_epochs):
    """The chapter's trainer: one backward per context shard, ``trainer.step(batch_size)``.

    Prints ``training on [...]`` and one line per epoch in the book's format; returns the
    per-epoch history as a list of dicts (loss, train_acc, test_acc, time). Source: D2L 10.10.5.
    """
    print('training on', ctx)
    if isinstance(ctx, mx.Context):
        ctx = [ctx]
    history = []
    for epoch in range(num_epochs):
        train_l_sum, train_acc_sum, n, m, start = 0.0, 0.0, 0, 0.0, time.time()
        for batch in train_iter:
            Xs, ys, batch_size = _get_batch(batch, ctx)
            ls, y_hats = _forward_backward(net, loss, Xs, ys)
            trainer.step(batch_size)
            l_sum, right, count = _step_figures(ls, y_hats, ys)
            train_l_sum += l_sum
            n += sum(l.size for l in ls)
            train_acc_sum += right
            m += count
        test_acc = evaluate_accuracy(test_iter, net, ctx)
        record = dict(epoch=epoch + 1, loss=train_l_sum / max(n, 1), train_acc=train_acc_sum / max(m, 1),
                      test_acc=test_acc, time=time.time() - start)
        history.append(record)
        print('epoch %d, loss %.4f, train acc %.3f, test acc %.3f, time %.1f sec'
              % (record['epoch'], record['loss'], record['train_acc'], test_acc, record['time']))
    return history


class SegmentationLoss(gluon.loss.Loss):
    """Softmax cross-entropy over the class axis of (N, C, H, W) logits, skipping label ``ignore_index``.

    -> (N,) mean over all H*W pixels, so without ignored pixels it equals
    ``SoftmaxCrossEntropyLoss(axis=1)``. native (None: when ``kernels`` builds; False on GPUs):
    ``kernels``' fused operator, whose backward recomputes the softmax instead of storing it.
    Otherwise the softmax runs over the last axis of the NHWC transpose, which oneDNN computes
    about 1.7x faster than over axis 1 (same values).
    """

    def __init__(self, ignore_index=IGNORE_INDEX, weight=None, batch_axis=0, native=None, **kwargs):
        super().__init__(weight, batch_axis, **kwargs)
        self._ignore_index = ignore_index
        self.native = native

    def hybrid_forward(self, F, pred, label):
        if self._batch_axis == 0 and kernels.wanted(self.native):
            return F.d2lseg_softmax_ce(pred, label, ignore_index=int(self._ignore_index))
        logp = F.log_softmax(F.transpose(pred, axes=(0, 2, 3, 1)), axis=-1)
        valid = label != self._ignore_index
        loss = -F.pick(logp, F.where(valid, label, F.zeros_like(label)), axis=-1) * valid
        return F.mean(loss, axis=self._batch_axis, exclude=True)


def parse_ctx(spec):
    """'cpu' -> [cpu(0)], 'cpu:2' -> [cpu(0), cpu(1)], 'gpu:0,1' -> [gpu(0), gpu(1)], 'gpu' -> all GPUs.

    One-line D2lsegError for anything else, and for more CPU contexts than this process has CPUs
    (each context holds a copy of the network and its batch shard)."""
    spec = (spec or 'cpu').strip().lower()
    kind, _, rest = spec.partition(':')
    try:
        numbers = [int(i) for i in rest.split(',')] if rest else []
    except ValueError:
        raise D2lsegError(f"--ctx {spec}: expected cpu, cpu:N, gpu or gpu:0,1 (N, 0, 1: whole numbers)") from None
    if kind == 'cpu':
        if len(numbers) > 1:
            raise D2lsegError(f"--ctx {spec}: expected cpu or cpu:N (N contexts)")
        n = numbers[0] if numbers else 1
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else (os.cpu_count() or 1)
        if not 1 <= n <= cpus:
            raise D2lsegError(f"--ctx {spec}: the CPU context count must be between 1 and the {cpus} CPUs this "
                              "process may use")
        return [mx.cpu(i) for i in range(n)]
    if kind == 'gpu':
        have = mx.context.num_gpus()
        ids = numbers or list(range(have))
        if not ids or max(ids) >= have or min(ids) < 0:
            raise D2lsegError(f"--ctx {spec}: this machine has {have} GPU(s) visible to MXNet; "
                              f"use --ctx cpu, or install the GPU build (pip install .[cu112])")
        return [mx.gpu(i) for i in ids]
    raise D2lsegError(f"--ctx {spec}: expected cpu, cpu:N or gpu:0,1")


MAX_WORKERS = 64
KVSTORES = ('device', 'local', 'dist_sync', 'dist_device_sync')


@dataclass
class Recipe:
    """Every default of a training run; the chapter's values (D2L 10.10.5) unless noted."""
    data_dir: str = '../data'
    synthetic: bool = False             # use (and make when missing) the synthetic set under data_dir
    crop: Tuple[int, int] = (320, 480)
    batch_size: int = 32
    epochs: int = 5
    lr: float = 0.1
    wd: float = 1e-3
    momentum: float = 0.0               # the chapter's SGD has none
    variant: str = 'fcn32s'
    pretrained: bool = True
    backbone_params: Optional[str] = None
    num_classes: int = 21
    ctx: str = 'gpu'                    # the chapter's try_all_gpus(); 'cpu', 'cpu:2', 'gpu:0,1'
    seed: int = 0
    lr_schedule: str = 'constant'       # or 'poly' (power 0.9, per iteration)
    warmup_epochs: float = 0            # linear warm-up from 0 over this many epochs (the chapter has none)
    ignore_boundary: bool = False       # the chapter maps the void border to background
    workers: int = 2
    max_images: Optional[int] = None    # use only the first N images of each split (quick runs)
    kvstore: str = 'device'             # 'dist_sync' / 'dist_device_sync' for several machines
    fast_upsampling: bool = True        # upsampling.FastUpsampling: same results, faster (not in the chapter)

    def validate(self):
        """Raise D2lsegError naming the flag for any value the run cannot use."""
        from .model import OUTPUT_STRIDE, VARIANTS
        h, w = self.crop
        if h <= 0 or w <= 0 or h % OUTPUT_STRIDE or w % OUTPUT_STRIDE:
            raise D2lsegError(f"--crop {h}x{w}: both sides must be positive multiples of {OUTPUT_STRIDE} "
                              f"(the network's output stride), e.g. 320x480")
        for name in ('batch_size', 'epochs', 'workers'):
            v = getattr(self, name)
            if v < (0 if name == 'workers' else 1):
                raise D2lsegError(f"--{name.replace('_', '-')} {v}: must be "
                                  f"{'non-negative' if name == 'workers' else 'positive'}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise D2lsegError(f"--lr {self.lr}: must be a positive number")
        if not (self.wd >= 0 and math.isfinite(self.wd)):
            raise D2lsegError(f"--wd {self.wd}: must be a non-negative number")
        if not (0 <= self.momentum < 1):
            raise D2lsegError(f"--momentum {self.momentum}: must be at least 0 and below 1")
        if self.variant not in VARIANTS:
            raise D2lsegError(f"--variant {self.variant}: unknown; choose one of {', '.join(VARIANTS)}")
        if not (0 <= self.warmup_epochs <= self.epochs):
            raise D2lsegError(f"--warmup-epochs {self.warmup_epochs}: must be between 0 and --epochs {self.epochs}")
        if self.lr_schedule not in ('constant', 'poly'):
            raise D2lsegError(f"--lr-schedule {self.lr_schedule}: choose constant or poly")
        if not 0 <= self.seed < 2 ** 32:
            raise D2lsegError(f"--seed {self.seed}: must be between 0 and 2**32 - 1")
        if self.num_classes < 1:
            raise D2lsegError(f"--num-classes {self.num_classes}: must be at least 1")
        if self.workers > MAX_WORKERS:
            raise D2lsegError(f"--workers {self.workers}: at most {MAX_WORKERS} data-loading threads")
        if self.kvstore not in KVSTORES:
            raise D2lsegError(f"--kvstore {self.kvstore}: choose one of {', '.join(KVSTORES)}")
        return self

    def to_dict(self):
        d = dataclasses.asdict(self)
        d['crop'] = list(self.crop)
        return d

    @classmethod
    def from_dict(cls, d, source='recipe'):
        """A Recipe from ``to_dict``'s output (e.g. a checkpoint's or a history's); keys of other versions
        are ignored, a value of the wrong type is a one-line D2lsegError naming ``source`` and the field."""
        if not isinstance(d, dict):
            raise D2lsegError(f"{source}: a recipe must be a JSON object, not {type(d).__name__}")
        hints = typing.get_type_hints(cls)
        kwargs = {}
        for f in dataclasses.fields(cls):
            if f.name in d:
                value = d[f.name]
                if not _is_a(value, hints[f.name]):
                    raise D2lsegError(f"{source}: recipe field {f.name!r} is {value!r}, not {_type_name(hints[f.name])}")
                kwargs[f.name] = tuple(value) if f.name == 'crop' else value
        return cls(**kwargs)


def _is_a(value, hint):
    """Whether a JSON value fits a Recipe field's type (bool is not a number here)."""
    if typing.get_origin(hint) is typing.Union:  # Optional[X]
        return any(_is_a(value, h) for h in typing.get_args(hint))
    if typing.get_origin(hint) is tuple:
        args = typing.get_args(hint)
        return isinstance(value, (list, tuple)) and len(value) == len(args) and all(map(_is_a, value, args))
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


_TYPE_NAMES = {int: 'an integer', float: 'a number', str: 'a string', bool: 'true or false', type(None): 'null'}


def _type_name(hint):
    if typing.get_origin(hint) is typing.Union:
        return ' or '.join(_type_name(h) for h in typing.get_args(hint))
    if typing.get_origin(hint) is tuple:
        return f'a list of {len(typing.get_args(hint))} integers'
    return _TYPE_NAMES.get(hint, hint.__name__)


class TrainingDiverged(D2lsegError):
    """The loss became NaN or infinite."""

    exit_code = 1


@dataclass
class TrainState:
    """What callbacks see at the end of every epoch."""
    recipe: Recipe
    epoch: int                     # finished epochs, 1-based
    record: dict
    history: dict
    net: gluon.Block
    trainer: gluon.Trainer
    is_chief: bool = True
    stop: bool = False             # a callback may set this to end training early


@dataclass
class Run:
    """The pieces ``fit`` trains: built by ``prepare``, so tools (benchmarks, tests) can use the same ones."""
    net: gluon.Block
    trainer: gluon.Trainer
    loss: gluon.loss.Loss
    ctx: list
    train_data: object
    val_data: object
    train_iter: object = None
    val_iter: object = None
    kv: object = None
    rank: int = 0
    num_workers: int = 1
    synced: bool = False           # distributed: the trainer's first broadcast has finished


def resolve_data_dir(recipe):
    """The VOC2012 folder a recipe trains on; makes the synthetic set when asked and missing."""
    from .synthetic import has_voc, make_synthetic_voc
    from .voc import VOC_SUBDIR
    if recipe.synthetic:
        if not has_voc(recipe.data_dir):
            seg = os.path.join(recipe.data_dir, VOC_SUBDIR, 'ImageSets', 'Segmentation')
            if any(os.path.exists(os.path.join(seg, s + '.txt')) for s in ('train', 'val')):
                raise D2lsegError(f"--data-dir {recipe.data_dir}: an incomplete VOC tree (one split list of "
                                  f"two); remove it, or remake it: d2lseg synth --root {recipe.data_dir} --overwrite")
            make_synthetic_voc(recipe.data_dir, seed=recipe.seed)
        return os.path.join(recipe.data_dir, VOC_SUBDIR)
    if not has_voc(recipe.data_dir):
        raise D2lsegError(f"--data-dir {recipe.data_dir}: no VOCdevkit/VOC2012 there; download it "
                          f"(d2lseg reproduce downloads) or use --synthetic")
    return os.path.join(recipe.data_dir, VOC_SUBDIR)


def make_trainer(net, recipe, kv=None):
    opt = {'learning_rate': recipe.lr, 'wd': recipe.wd}
    if recipe.momentum:
        opt['momentum'] = recipe.momentum
    if kv is not None and not isinstance(kv, str) and 'dist' in kv.type:
        # Servers only sum gradients; every worker applies the same SGD step. With update_on_kvstore
        # the servers would run a pickled copy of the optimizer: set_learning_rate (poly) would not
        # reach them and trainer.save_states (checkpoints) fails for distributed kvstores.
        return gluon.Trainer(net.collect_params(), 'sgd', opt, kvstore=kv, update_on_kvstore=False)
    return gluon.Trainer(net.collect_params(), 'sgd', opt, kvstore=kv if kv is not None else recipe.kvstore)


def prepare(recipe, ctx=None, kv=None, data=True):
    """Seed, build the network, trainer, loss and (optionally) the data of a recipe."""
    from .model import build_fcn
    from .voc import VOCSegDataset
    recipe.validate()
    ctx = ctx or parse_ctx(recipe.ctx if recipe.ctx != 'gpu' else ('gpu' if mx.context.num_gpus() else 'cpu'))
    voc_dir = resolve_data_dir(recipe) if data else None  # data and context checked before any download
    mx.random.seed(recipe.seed)
    np.random.seed(recipe.seed)
    pretrained = recipe.backbone_params or recipe.pretrained
    net = build_fcn(recipe.num_classes, recipe.variant, pretrained=pretrained, ctx=ctx,
                    fast_upsampling=recipe.fast_upsampling)
    rank, parts = (kv.rank, kv.num_workers) if kv is not None and 'dist' in kv.type else (0, 1)
    if parts > 1:
        # MXNet 1.9: under a distributed kvstore a static_alloc graph's BatchNorm updates never reach
        # the Parameter arrays (running statistics stay at the first-step broadcast; saved models and
        # validation would use them), so distributed workers use the plain cached graph.
        net.hybridize()
    else:
        net.hybridize(static_alloc=True, static_shape=True)
    loss = SegmentationLoss(native=kernels.native_default(ctx))
    run = Run(net, make_trainer(net, recipe, kv), loss, ctx, None, None, kv=kv, rank=rank, num_workers=parts)
    if data:
        run.train_data = VOCSegDataset(True, recipe.crop, voc_dir, ignore_boundary=recipe.ignore_boundary,
                                       seed=recipe.seed, max_images=recipe.max_images, verbose=False)
        run.val_data = VOCSegDataset(False, recipe.crop, voc_dir, ignore_boundary=recipe.ignore_boundary,
                                     seed=recipe.seed, max_images=recipe.max_images, verbose=False)
        if len(run.train_data) < recipe.batch_size * parts:
            raise D2lsegError(f"--batch-size {recipe.batch_size}: larger than the {len(run.train_data)} "
                              f"training images that fit the crop (per worker); lower it")
        kw = dict(num_workers=recipe.workers, thread_pool=True)
        run.train_iter = gluon.data.DataLoader(
            run.train_data, recipe.batch_size, last_batch='discard',
            sampler=run.train_data.sampler(rank, parts), **kw)
        run.val_iter = gluon.data.DataLoader(
            run.val_data, recipe.batch_size, last_batch='keep',
            sampler=run.val_data.shard_sampler(rank, parts), **kw)
    return run


def evaluate(net, data_iter, ctx, num_classes=21, progress=False, desc='val'):
    """Confusion matrix of ``net`` over ``data_iter`` (batches split over ``ctx``)."""
    cm = ConfusionMatrix(num_classes)
    for batch in bar(data_iter, progress, desc=desc, leave=False):
        Xs, ys, _ = _get_batch(batch, ctx)
        for X, y in zip(Xs, ys):
            cm.update(predict_batch(net, X), y)
    return cm


def _allreduce_cm(cm, run):
    """Sum confusion matrices over distributed workers (rank-sharded validation)."""
    if run.num_workers == 1:
        return cm
    from .distributed import allreduce_counts
    cm.mat = allreduce_counts(run.kv, cm.mat)
    return cm


def resume_recipe(resume_dir, requested, data_dir=None, meta=None):
    """The recipe stored in ``resume_dir``'s checkpoint; ``requested`` may extend epochs and
    choose where it runs (ctx, workers, kvstore), nothing that changes the result; ``data_dir``: where
    the run's data is now (when it moved); ``meta``: the pointer when already read. Resume reads data,
    never makes any."""
    pointer = os.path.join(resume_dir, checkpoint.POINTER)
    saved = (meta or checkpoint.load_meta(resume_dir))['recipe']
    stored = Recipe.from_dict(saved, source=pointer)
    stored.fast_upsampling = saved.get('fast_upsampling', False)  # optimizer states keep the layout
    stored.epochs = max(stored.epochs, requested.epochs)
    stored.ctx, stored.workers, stored.kvstore = requested.ctx, requested.workers, requested.kvstore
    if data_dir is not None:
        stored.data_dir = data_dir
    from .synthetic import has_voc
    if not has_voc(stored.data_dir):
        where = 'the data folder given' if data_dir is not None else f"the run's data folder (stored in {pointer})"
        raise D2lsegError(f"--data-dir {stored.data_dir}: {where} holds no VOCdevkit/VOC2012 and --resume creates "
                          "no data; pass --data-dir with the folder that holds the run's data now"
                          + (f" (or make it again: d2lseg synth --root {stored.data_dir} --seed {stored.seed})"
                             if stored.synthetic else ''))
    return stored


def train_step(run, batch):
    """One step of ``fit``: forward and backward per context shard, then the SGD update.

    batch: (features (N, 3, H, W), labels (N, H, W)) -> (summed loss, pixels right, pixels counted, N)
    as Python numbers, so the step has finished when it returns (benchmarks time exactly this).
    """
    Xs, ys, batch_size = _get_batch(batch, run.ctx)
    ls, y_hats = _forward_backward(run.net, run.loss, Xs, ys)
    if run.num_workers > 1 and not run.synced:
        from .distributed import broadcast_parameters
        broadcast_parameters(run.trainer)
        run.synced = True
    run.trainer.step(batch_size * run.num_workers)
    return _step_figures(ls, y_hats, ys) + (batch_size,)


def learning_rate(recipe, step, total_steps, steps_per_epoch):
    """The rate of 0-based ``step``: poly decay (power 0.9) or constant, times a linear warm-up."""
    lr = recipe.lr * (1 - step / total_steps) ** 0.9 if recipe.lr_schedule == 'poly' else recipe.lr
    warmup = recipe.warmup_epochs * steps_per_epoch
    return lr * (step + 1) / warmup if step + 1 < warmup else lr


def _first_nonfinite(net):
    """Name of the first parameter holding NaN or infinity (first context), or None."""
    for name, p in net.collect_params().items():
        if not np.isfinite(p.list_data()[0].asnumpy()).all():
            return name
    return None


def fit(recipe, callbacks=(), resume=None, kv=None, progress=True, run=None):
    """Train a recipe; returns the history dict (recipe, environment, per-epoch records).

    callbacks: callables ``cb(state: TrainState)`` run after every epoch (printing, checkpoints,
    plots). resume: a folder holding ``checkpoint.json``; training continues after its epoch with
    the same data order, so the final parameters equal an uninterrupted run's (CPU, same seed).
    """
    meta = checkpoint.load_meta(resume) if resume else None
    if run is None:
        recipe = resume_recipe(resume, recipe) if resume else recipe
        run = prepare(recipe, kv=kv)
    net, trainer, ctx = run.net, run.trainer, run.ctx
    history = {'recipe': recipe.to_dict(), 'environment': environment(ctx), 'ctx': [str(c) for c in ctx],
               'num_workers': run.num_workers, 'epochs': []}
    start_epoch = 0
    if meta is not None:
        checkpoint.restore(resume, meta, net, trainer, ctx)
        history = dict(meta.get('history', history), recipe=recipe.to_dict())  # epochs may have been extended
        start_epoch = meta['epoch']
    elif recipe.epochs > 0:
        cm = _allreduce_cm(evaluate(net, run.val_iter, ctx, recipe.num_classes), run)
        history['untrained'] = {k: v for k, v in cm.compute().items() if k != 'iou'}
    steps_per_epoch = len(run.train_iter)
    total_steps = steps_per_epoch * recipe.epochs
    for epoch in range(start_epoch, recipe.epochs):
        run.train_data.set_epoch(epoch)
        l_sum, right, count, n_img, tic = 0.0, 0.0, 0.0, 0, time.time()
        epoch_bar = bar(run.train_iter, progress, desc=f'epoch {epoch + 1}/{recipe.epochs}', unit='batch',
                        leave=False)
        for i, batch in enumerate(epoch_bar):
            if recipe.lr_schedule == 'poly' or recipe.warmup_epochs:
                trainer.set_learning_rate(learning_rate(recipe, epoch * steps_per_epoch + i, total_steps,
                                                        steps_per_epoch))
            batch_loss, r, c, batch_size = train_step(run, batch)
            if not math.isfinite(batch_loss):
                raise TrainingDiverged(
                    f"loss became {batch_loss} in epoch {epoch + 1}, batch {i + 1}; training stopped "
                    f"(lower --lr; the checkpoints of finished epochs are kept)")
            l_sum += batch_loss
            n_img += batch_size
            right += r
            count += c
            epoch_bar.set_postfix(loss=f'{l_sum / n_img:.4f}', img_s=f'{n_img / (time.time() - tic):.2f}')
        train_time = time.time() - tic
        bad = _first_nonfinite(net)  # the last step's update is not seen by any loss: keep it out of checkpoints
        if bad:
            raise TrainingDiverged(
                f"parameter {bad} became NaN or infinite in epoch {epoch + 1} (by batch {steps_per_epoch}); "
                f"training stopped (lower --lr; the checkpoints of finished epochs are kept)")
        cm = _allreduce_cm(evaluate(net, run.val_iter, ctx, recipe.num_classes), run)
        val = cm.compute()
        record = dict(epoch=epoch + 1, loss=l_sum / max(n_img, 1), train_acc=right / max(count, 1),
                      test_acc=val['pixel_acc'], val_miou=val['miou'], val_mean_acc=val['mean_acc'],
                      val_fwiou=val['fwiou'], val_iou=val['iou'], lr=trainer.learning_rate,
                      train_time=train_time, time=time.time() - tic,
                      img_s=n_img * run.num_workers / train_time)
        history['epochs'].append(record)
        state = TrainState(recipe, epoch + 1, record, history, net, trainer, is_chief=run.rank == 0)
        for cb in callbacks:
            cb(state)
        if state.stop:
            break
    return history


def print_epoch(state):
    """Callback: one line per epoch."""
    r = state.record
    if state.is_chief:
        print(f"epoch {r['epoch']}, loss {r['loss']:.4f}, train acc {r['train_acc']:.3f}, "
              f"val acc {r['test_acc']:.3f}, val mIoU {r['val_miou']:.3f}, time {r['time']:.1f} sec, "
              f"{r['img_s']:.2f} img/s", flush=True)


class Checkpointer:
    """Callback: an atomic checkpoint after every epoch (chief only), ``history.json`` beside it."""

    def __init__(self, out_dir):
        self.out_dir = out_dir

    def __call__(self, state):
        if not state.is_chief:
            return
        meta = {'recipe': state.recipe.to_dict(), 'seed': state.recipe.seed, 'history': state.history}
        checkpoint.save(self.out_dir, state.epoch, state.net, state.trainer, meta)
        checkpoint.atomic_write_json(os.path.join(self.out_dir, 'history.json'), state.history)


def save_final(out_dir, net, history):
    """Write ``model.params`` (parameters alone) and the final ``history.json``."""
    os.makedirs(out_dir, exist_ok=True)
    checkpoint.atomic_write(os.path.join(out_dir, 'model.params'), net.save_parameters)
    checkpoint.atomic_write_json(os.path.join(out_dir, 'history.json'), history)


def load_history(path):
    """Read a ``history.json`` written by ``fit`` (or the chapter-format list); clear error otherwise."""
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise D2lsegError(f"{path}: history file not found") from None
    except IsADirectoryError:
        raise D2lsegError(f"{path}: a folder; give its history.json") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise D2lsegError(f"{path}: not JSON ({first_line(e)})") from None
    except OSError as e:
        raise D2lsegError(f"{path}: cannot be read ({e.strerror})") from None
