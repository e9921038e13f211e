"""The reference trainer: ``prepare`` a ``config.Recipe`` into a ``Run``, ``train_step``, ``evaluate``, ``fit``.

``fit`` is seeded (data order and crops), validates every epoch (confusion-matrix metrics), stops on
divergence, resumes from a checkpoint exactly, and leaves printing, checkpoints and plots to
callbacks (``callbacks``, ``viz.CurvesCallback``). The chapter's own ``train`` is in ``chapter``.

About 350 lines: the checks that stop a run (starting parameters that are not finite, divergence and the
advice it gives, which looks at the run's inputs) read the same ``Run`` as the loop they guard.
"""
import dataclasses
import math
import os
import time
from dataclasses import dataclass
from typing import NamedTuple

import mxnet as mx
import numpy as np
from mxnet import gluon

from . import checkpoint, kvstore
from ..fcn.chapter import forward_backward, split_batch, step_figures
from ..data.classes import ClassList, check_weights, class_weights, numbered, read_classes
from ..data.palette import VOC_CLASSES
from .config import Recipe, resolve_ctx
from ..data.dataspec import DataSpec
from ..native.environment import environment
from ..core.errors import D2lsegError
from ..fcn.inference import predict_batch
from ..fcn.loss import SegmentationLoss
from ..fcn.metrics import ConfusionMatrix
from ..deploy.mixed import training_net
from ..fcn.model import build_fcn, init_from
from ..core.progress import bar
from ..data.synthetic import resolve_data_dir
from ..data.voc import VOCSegDataset, has_voc


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
    classes: ClassList = None      # names and colours of the classes (VOC's by default)
    class_weights: list = None     # the loss's weight per class, when the recipe asks for them
    start_scale: float = None      # largest starting parameter, when they came from a file (divergence advice)
    train_net: gluon.Block = None  # what steps and validation run: ``net``, or its bfloat16 form (``mixed``)
    recipe: Recipe = None          # what ``prepare`` built it from: the caller's, with the class count of ``classes``


class BatchState(NamedTuple):
    """What batch callbacks see after every step."""
    epoch: int                     # 1-based
    batch: int                     # 1-based, within the epoch
    batches: int                   # steps per epoch
    loss: float                    # mean loss per image so far this epoch
    img_s: float                   # images per second so far this epoch (this worker)
    is_chief: bool


class StepResult(NamedTuple):
    """What one ``train_step`` measured, as Python numbers."""
    loss_sum: float                # summed per-image losses of the batch
    right: float                   # pixels predicted right
    count: float                   # pixels counted (label 255 is not)
    batch_size: int                # images of this worker's batch


def make_trainer(net, recipe, kv=None):
    """SGD with the recipe's rate, weight decay and momentum (none: the chapter's), on ``kv``."""
    opt = {'learning_rate': recipe.lr, 'wd': recipe.wd}
    if recipe.momentum:
        opt['momentum'] = recipe.momentum
    if kvstore.is_distributed(kv):
        # Servers only sum gradients; every worker applies the same SGD step. With update_on_kvstore
        # the servers would run a pickled copy of the optimizer: set_learning_rate (poly) would not
        # reach them and trainer.save_states (checkpoints) fails for distributed kvstores.
        return gluon.Trainer(net.collect_params(), 'sgd', opt, kvstore=kv, update_on_kvstore=False)
    return gluon.Trainer(net.collect_params(), 'sgd', opt, kvstore=kv if kv is not None else recipe.kvstore)


def _load_data(run, recipe, voc_dir, stored=None):
    """The recipe's datasets and loaders, sharded over the run's workers; the loss with its class weights."""
    parts = run.num_workers
    kw = dict(crop_size=recipe.crop, voc_dir=voc_dir, seed=recipe.seed, verbose=False)
    run.train_data = VOCSegDataset(True, spec=DataSpec.from_recipe(recipe, True, run.classes.colors),
                                   augment=recipe.augment, **kw)
    run.val_data = VOCSegDataset(False, spec=DataSpec.from_recipe(recipe, False, run.classes.colors), **kw)
    weights = stored.get('class_weights') if stored and recipe.class_weights else None
    if weights is not None:  # a resumed run's: checked as a file's would be
        weights = check_weights(weights, recipe.num_classes, "--resume: the checkpoint's history")
    weights = weights if weights is not None else class_weights(recipe, run.train_data, voc_dir, run.classes.colors)
    if weights is not None:
        run.class_weights = [float(w) for w in weights]
        run.loss = SegmentationLoss(class_weights=weights)
        run.loss.initialize(ctx=run.ctx)
    if len(run.train_data) < recipe.batch_size * parts:
        raise D2lsegError(f"--batch-size {recipe.batch_size}: larger than the {len(run.train_data)} "
                          f"training images that fit the crop (per worker); lower it")
    kw = dict(num_workers=recipe.workers, thread_pool=True)
    run.train_iter = gluon.data.DataLoader(run.train_data, recipe.batch_size, last_batch='discard',
                                           sampler=run.train_data.sampler(run.rank, parts), **kw)
    run.val_iter = gluon.data.DataLoader(run.val_data, recipe.batch_size, last_batch='keep',
                                         sampler=run.val_data.shard_sampler(run.rank, parts), **kw)


def _classes(recipe, stored):
    if stored and isinstance(stored.get('classes'), dict):  # a resumed run: its classes, not the file's now
        return ClassList.from_dict(stored['classes'], source='the checkpoint\'s history')
    if recipe.classes:
        return read_classes(recipe.classes)
    return ClassList.voc() if recipe.num_classes == len(VOC_CLASSES) else numbered(recipe.num_classes)


def prepare(recipe, ctx=None, kv=None, data=True, stored=None):
    """Seed, build the network, trainer, loss and (optionally) the data of a recipe -> a ``Run``.

    stored: the history of the checkpoint a run resumes from; its classes and class weights are used
    (not the files named in the recipe, which may have changed or gone), and ``init_from`` is not.
    ``recipe`` is not changed: the run's own, with the class count of its classes, is ``run.recipe``."""
    classes = _classes(recipe, stored)
    recipe = dataclasses.replace(recipe, num_classes=len(classes))
    recipe.validate()
    ctx = ctx or resolve_ctx(recipe.ctx)[1]
    voc_dir = resolve_data_dir(recipe) if data else None  # data and context checked before any download
    mx.random.seed(recipe.seed)
    np.random.seed(recipe.seed)
    fresh = recipe.init_from is None or stored is not None  # init_from overwrites every backbone array: no fetch
    pretrained = (recipe.backbone_params or recipe.pretrained) if fresh else False
    net = build_fcn(recipe.num_classes, recipe.variant, pretrained=pretrained, ctx=ctx,
                    fast_upsampling=recipe.fast_upsampling)
    if recipe.init_from and stored is None:  # a resumed run restores its own parameters
        print(init_from(net, recipe.init_from, ctx), flush=True)
    rank, parts = (kv.rank, kv.num_workers) if kvstore.is_distributed(kv) else (0, 1)
    # MXNet 1.9: under a distributed kvstore a static_alloc graph's BatchNorm updates never reach the
    # Parameter arrays (running statistics stay at the first-step broadcast; saved models and validation
    # would use them), so distributed workers use the plain cached graph.
    static = {} if parts > 1 else dict(static_alloc=True, static_shape=True)
    net.hybridize(**static)
    run = Run(net, make_trainer(net, recipe, kv), SegmentationLoss(), ctx, None, None, kv=kv, rank=rank,
              num_workers=parts, classes=classes, train_net=training_net(net, recipe.dtype, ctx, **static),
              recipe=recipe)
    if data:
        _load_data(run, recipe, voc_dir, stored)
    return run


def evaluate(data_iter, net, ctx, num_classes=21, progress=False, desc='val'):
    """Confusion matrix of ``net`` over ``data_iter`` (batches split over ``ctx``); arguments in the order of
    the chapter's ``evaluate_accuracy``."""
    cm = ConfusionMatrix(num_classes)
    for batch in bar(data_iter, progress, desc=desc, leave=False):
        Xs, ys, _ = split_batch(batch, ctx)
        for X, y in zip(Xs, ys):
            cm.update(predict_batch(net, X), y)
    return cm


def _validate(run, num_classes):
    """The validation confusion matrix, summed over distributed workers (rank-sharded validation)."""
    cm = evaluate(run.val_iter, run.train_net or run.net, run.ctx, num_classes)
    if run.num_workers > 1:
        cm.mat = kvstore.allreduce_counts(run.kv, cm.mat)
    return cm


# What a resumed run takes from the command line: how long, where it runs and where its data is now.
# Every other field (everything that changes the result) is the stored run's.
RESUME_FIELDS = ('epochs', 'ctx', 'workers', 'kvstore', 'data_dir', 'dtype')  # dtype: only the stored one


class Resumed(NamedTuple):
    """A run folder's checkpoint, read and checked once: the recipe to continue and where to start."""
    run_dir: str
    recipe: Recipe
    meta: dict                     # the checkpoint pointer (``checkpoint.load_meta``): epoch, files, history

    @property
    def start_epoch(self):
        return self.meta['epoch']


def resume(run_dir, requested=None):
    """Read ``run_dir``'s checkpoint once -> ``Resumed``: a new Recipe, the stored one with the values of
    ``requested`` ({field: value}, only ``RESUME_FIELDS``: what the user gave) applied. ``epochs`` only
    extends the run; ``ctx``, ``workers``, ``kvstore`` not given are the Recipe's defaults (this machine's);
    ``data_dir``: where the run's data is now (when it moved); ``dtype``: refused unless the stored one.
    Resume reads data, never makes any; the caller's objects are not changed."""
    requested = dict(requested or {})
    extra = sorted(set(requested) - set(RESUME_FIELDS))
    if extra:
        raise ValueError(f"resume: {', '.join(extra)} are the stored run's, not requested ones")
    pointer = os.path.join(run_dir, checkpoint.POINTER)
    meta = checkpoint.load_meta(run_dir)
    saved = meta['recipe']
    stored = Recipe.from_dict(saved, source=pointer)
    where = {k: requested.get(k, getattr(Recipe(), k)) for k in ('ctx', 'workers', 'kvstore')}
    stored = dataclasses.replace(stored, fast_upsampling=saved.get('fast_upsampling', False),  # optimizer layout
                                 epochs=max(stored.epochs, requested.get('epochs') or 0), **where)
    if requested.get('data_dir') is not None:
        stored = dataclasses.replace(stored, data_dir=requested['data_dir'])
    if requested.get('dtype', stored.dtype) != stored.dtype:
        raise D2lsegError(f"--dtype {requested['dtype']}: the run in {run_dir} trains in {stored.dtype} and --resume "
                          "continues it exactly; drop --dtype, or start a new run from its weights: --init-from "
                          f"{os.path.join(run_dir, meta['params'])} --dtype {requested['dtype']} (checkpoints load "
                          "in either dtype)")
    if not has_voc(stored.data_folder, (stored.train_split, stored.val_split)):
        where = 'the data folder given' if requested.get('data_dir') else f"the run's data folder (stored in {pointer})"
        raise D2lsegError(f"--data-dir {stored.data_folder}: {where} holds no VOCdevkit/VOC2012 and --resume creates "
                          "no data; pass --data-dir with the folder that holds the run's data now"
                          + (f" (or make it again: d2lseg synth --root {stored.data_folder} --seed {stored.seed})"
                             if stored.synthetic else ''))
    return Resumed(run_dir, stored, meta)


_resume = resume  # fit's parameter has the name

def train_step(run, batch):
    """One step of ``fit``: forward and backward per context shard, then the SGD update.

    batch: (features (N, 3, H, W), labels (N, H, W)) -> a ``StepResult`` of Python numbers, so the
    step has finished when it returns (benchmarks time exactly this).
    """
    Xs, ys, batch_size = split_batch(batch, run.ctx)
    ls, y_hats = forward_backward(run.train_net or run.net, run.loss, Xs, ys)
    if run.num_workers > 1 and not run.synced:
        kvstore.broadcast_parameters(run.trainer)
        run.synced = True
    run.trainer.step(batch_size * run.num_workers)
    return StepResult(*step_figures(ls, y_hats, ys), batch_size)


def learning_rate(recipe, step, total_steps, steps_per_epoch):
    """The rate of 0-based ``step``: poly decay (power 0.9) or constant, times a linear warm-up."""
    lr = recipe.lr * (1 - step / total_steps) ** 0.9 if recipe.lr_schedule == 'poly' else recipe.lr
    warmup = recipe.warmup_epochs * steps_per_epoch
    return lr * (step + 1) / warmup if step + 1 < warmup else lr


def _values(net):
    """(name, numpy values on the first context) of every parameter whose shape is known (a layer whose
    initialisation waits for the first batch is fresh, not loaded)."""
    for name, p in net.collect_params().items():
        try:
            yield name, p.list_data()[0].asnumpy()
        except gluon.parameter.DeferredInitializationError:
            continue


def _first_nonfinite(net):
    """Name of the first parameter holding NaN or infinity (first context), or None."""
    return next((name for name, v in _values(net) if not np.isfinite(v).all()), None)


def _largest(net):
    """The largest magnitude among the parameters (first context)."""
    return max((float(np.abs(v).max(initial=0)) for _, v in _values(net)), default=0.0)


def _check_start(run, recipe, resume):
    """One-line D2lsegError naming where the starting parameters came from when one holds NaN or infinity
    (a diverged run's checkpoint, a backbone file): training from them could only diverge."""
    bad = _first_nonfinite(run.net)
    if bad:
        source = (f'the checkpoint of --resume {resume}' if resume else f'--init-from {recipe.init_from}'
                  if recipe.init_from else f'--backbone-params {recipe.backbone_params}' if recipe.backbone_params
                  else 'the initialisation')
        raise D2lsegError(f"parameter {bad} holds NaN or infinite values before training, from {source}; start from "
                          "parameters of a run that did not diverge")


EXTREME_WEIGHT, EXTREME_PARAMETER = 1e3, 1e4  # beyond these a diverged run's inputs are named before --lr


def divergence_advice(run, recipe, start_scale=None):
    """What to change once the loss or a parameter became NaN or infinite: the inputs first (class weights
    far from 1, starting parameters of extreme size from --init-from or --backbone-params), else --lr."""
    w = [v for v in (run.class_weights or []) if v > 0]
    if w and (max(w) > EXTREME_WEIGHT or max(w) / min(w) > EXTREME_WEIGHT ** 2):
        return (f"the class weights ({recipe.class_weights}) reach {max(w):.3g}, smallest positive {min(w):.3g}: scale "
                "them to about 1 (e.g. --class-weights auto) before lowering --lr")
    if start_scale is not None and start_scale > EXTREME_PARAMETER:
        source = f'--init-from {recipe.init_from}' if recipe.init_from else \
            f'--backbone-params {recipe.backbone_params}'
        return f"the starting parameters ({source}) reach {start_scale:.3g} in size: start from trained ones"
    return 'lower --lr'


def _train_epoch(run, recipe, epoch, progress, batch_callbacks=()):
    """One epoch of steps -> (summed loss, pixels right, pixels counted, images, seconds)."""
    run.train_data.set_epoch(epoch)
    steps_per_epoch = len(run.train_iter)
    total = steps_per_epoch * recipe.epochs
    l_sum, right, count, n_img, tic = 0.0, 0.0, 0.0, 0, time.time()
    epoch_bar = bar(run.train_iter, progress, desc=f'epoch {epoch + 1}/{recipe.epochs}', unit='batch', leave=False)
    for i, batch in enumerate(epoch_bar):
        if recipe.lr_schedule == 'poly' or recipe.warmup_epochs:
            run.trainer.set_learning_rate(learning_rate(recipe, epoch * steps_per_epoch + i, total, steps_per_epoch))
        step = train_step(run, batch)
        if not math.isfinite(step.loss_sum):
            advice = divergence_advice(run, recipe, run.start_scale)
            raise TrainingDiverged(f"loss became {step.loss_sum} in epoch {epoch + 1}, batch {i + 1}; training "
                                   f"stopped ({advice}; the checkpoints of finished epochs are kept)")
        l_sum, right = l_sum + step.loss_sum, right + step.right
        count, n_img = count + step.count, n_img + step.batch_size
        epoch_bar.set_postfix(loss=f'{l_sum / n_img:.4f}', img_s=f'{n_img / (time.time() - tic):.2f}')
        for cb in batch_callbacks:
            cb(BatchState(epoch + 1, i + 1, steps_per_epoch, l_sum / n_img, n_img / (time.time() - tic), run.rank == 0))
    train_time = time.time() - tic
    bad = _first_nonfinite(run.net)  # the last step's update is not seen by any loss: keep it out of checkpoints
    if bad:
        advice = divergence_advice(run, recipe, run.start_scale)
        raise TrainingDiverged(f"parameter {bad} became NaN or infinite in epoch {epoch + 1} (by batch "
                               f"{steps_per_epoch}); training stopped ({advice}; "
                               "the checkpoints of finished epochs are kept)")
    return l_sum, right, count, n_img, train_time


def _epoch_record(run, recipe, epoch, figures, tic):
    """Validate and assemble an epoch's history record."""
    l_sum, right, count, n_img, train_time = figures
    val = _validate(run, recipe.num_classes).compute()
    return dict(epoch=epoch + 1, loss=l_sum / max(n_img, 1), train_acc=right / max(count, 1),
                test_acc=val['pixel_acc'], val_miou=val['miou'], val_mean_acc=val['mean_acc'],
                val_fwiou=val['fwiou'], val_iou=val['iou'], lr=run.trainer.learning_rate,
                train_time=train_time, time=time.time() - tic, img_s=n_img * run.num_workers / train_time)


# What train's per-epoch val_* figures are (history.json says it): not the figure to quote.
VAL_METRICS = ("val_*: {crop} crops of the validation images (the chapter's crop, the void border as the recipe "
               "treats it), to follow training; the figure to report is d2lseg evaluate's (whole images, the "
               "published protocol)")


def provenance(recipe):
    """Where a run's starting parameters came from (history.json; predict's caveat reads it)."""
    if recipe.init_from:
        backbone = f'the trained model {recipe.init_from} (--init-from; no backbone fetched)'
    elif recipe.backbone_params:
        backbone = f'the file {recipe.backbone_params} (--backbone-params)'
    else:
        backbone = "ImageNet resnet18_v2 (MXNet's model zoo)" if recipe.pretrained else 'random (--no-pretrained)'
    return {'init_from': recipe.init_from, 'backbone': backbone}


def fit(recipe, callbacks=(), resume=None, kv=None, progress=True, run=None, batch_callbacks=()):
    """Train a recipe; returns the history dict (recipe, environment, per-epoch records).

    callbacks: callables ``cb(state: TrainState)`` run after every epoch (printing, checkpoints,
    plots). resume: a folder holding ``checkpoint.json``; training continues after its epoch with
    the same data order, so the final parameters equal an uninterrupted run's (CPU, same seed).
    run: the ``prepare``d run to train (with ``resume``, of the recipe ``resume`` returned); the history records
    the class count the run was built with (``run.recipe``).
    batch_callbacks: callables ``cb(state: BatchState)`` run after every step (``callbacks.BatchLogger``).
    resume may also be a ``Resumed`` (the checkpoint already read; its folder is ``recipe``'s run folder).
    """
    resumed = resume if isinstance(resume, Resumed) or not resume else _resume(resume, dict(
        ctx=recipe.ctx, workers=recipe.workers, kvstore=recipe.kvstore, epochs=recipe.epochs))
    meta = resumed.meta if resumed else None
    if run is None:
        recipe = resumed.recipe if resumed else recipe
        run = prepare(recipe, kv=kv, stored=meta.get('history') if meta else None)
    if run.recipe is not None:  # the class count of the run's classes (a classes file's, a checkpoint's)
        recipe = dataclasses.replace(recipe, num_classes=run.recipe.num_classes)
    history = {'recipe': recipe.to_dict(), 'provenance': provenance(recipe), 'environment': environment(run.ctx),
               'ctx': [str(c) for c in run.ctx], 'num_workers': run.num_workers,
               'classes': (run.classes or ClassList.voc()).to_dict(), 'class_weights': run.class_weights,
               'val_metrics': VAL_METRICS.format(crop='x'.join(map(str, recipe.crop))), 'epochs': []}
    start_epoch = 0
    if meta is not None:
        checkpoint.restore(resumed.run_dir, meta, run.net, run.trainer, run.ctx)
    _check_start(run, recipe, resumed.run_dir if resumed else None)
    if meta is not None:
        history = dict(meta.get('history', history), recipe=recipe.to_dict())  # epochs may have been extended
        start_epoch = meta['epoch']
    elif recipe.epochs > 0:
        history['untrained'] = {k: v for k, v in _validate(run, recipe.num_classes).compute().items() if k != 'iou'}
    if meta is None and (recipe.init_from or recipe.backbone_params):
        run.start_scale = _largest(run.net)
    for epoch in range(start_epoch, recipe.epochs):
        tic = time.time()
        record = _epoch_record(run, recipe, epoch, _train_epoch(run, recipe, epoch, progress, batch_callbacks), tic)
        history['epochs'].append(record)
        state = TrainState(recipe, epoch + 1, record, history, run.net, run.trainer, is_chief=run.rank == 0)
        for cb in callbacks:
            cb(state)
        if state.stop:
            break
    return history
