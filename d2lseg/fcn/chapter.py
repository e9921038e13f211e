"""The chapter's training functions (D2L 10.10.5), with the book's names and printout.

``train`` and ``evaluate_accuracy`` are the d2l functions the chapter calls; ``engine`` builds the
reference trainer on the same batch splitting and per-shard forward/backward.
"""
import time

import mxnet as mx
from mxnet import autograd, gluon

from ..core.errors import D2lsegError
from ..native import argmax_channel
from ..data.palette import IGNORE_INDEX


def try_all_gpus():
    """Every GPU MXNet can see, or ``[mx.cpu()]`` when there is none. Source: D2L."""
    n = mx.context.num_gpus()
    return [mx.gpu(i) for i in range(n)] if n else [mx.cpu()]


def split_batch(batch, ctx):
    """Split a (features, labels) batch over the contexts -> (Xs, ys, batch_size)."""
    features, labels = batch
    if labels.dtype != features.dtype:
        labels = labels.astype(features.dtype)
    ctx = [ctx] if isinstance(ctx, mx.Context) else ctx
    ctx = ctx[:features.shape[0]]  # a last batch smaller than the context count: one sample per context
    return (gluon.utils.split_and_load(features, ctx, even_split=False),
            gluon.utils.split_and_load(labels, ctx, even_split=False), features.shape[0])


def correct_and_count(y_hat, y):
    """Pixels predicted right and pixels counted (label 255 is not counted), as NDArrays."""
    valid = y != IGNORE_INDEX
    return ((argmax_channel(y_hat) == y) * valid).sum(), valid.sum()


def evaluate_accuracy(data_iter, net, ctx=None):
    """Pixel accuracy of ``net`` over ``data_iter``, batches split over ``ctx``. Source: D2L."""
    ctx = [mx.cpu()] if ctx is None else ([ctx] if isinstance(ctx, mx.Context) else ctx)
    acc_sum, n = 0.0, 0.0
    for batch in data_iter:
        Xs, ys, _ = split_batch(batch, ctx)
        for X, y in zip(Xs, ys):
            right, count = correct_and_count(net(X), y)
            acc_sum += float(right.asscalar())
            n += float(count.asscalar())
    return acc_sum / n if n else float('nan')


def forward_backward(net, loss, Xs, ys):
    """Forward and backward on every context shard -> (losses, outputs), one per shard."""
    with autograd.record():
        y_hats = [net(X) for X in Xs]
        ls = [loss(y_hat, y) for y_hat, y in zip(y_hats, ys)]
    for l in ls:
        l.backward()
    return ls, y_hats


def step_figures(ls, y_hats, ys):
    """(summed loss, pixels right, pixels counted) of one step over its shards, as Python numbers (float64:
    under numpy 2, float32 scalars added to Python floats stay float32, under numpy 1 they did not)."""
    right = count = 0.0
    for y_hat, y in zip(y_hats, ys):
        r, c = correct_and_count(y_hat, y)
        right += float(r.asscalar())
        count += float(c.asscalar())
    return float(sum(l.sum().asscalar() for l in ls)), right, count


def train(train_iter, test_iter, net, loss, trainer, ctx, num_epochs, history=None):
    """The chapter's trainer: one backward per context shard, ``trainer.step(batch_size)``.

    Prints ``training on [...]`` and one line per epoch in the book's format and, like the book's,
    returns nothing (so a notebook cell ending in it shows no ``Out[...]``). ``history``: a list to
    which each epoch's record is appended (epoch, loss, train_acc, test_acc, time). Source: D2L 10.10.5.
    """
    for name, data in (('train_iter', train_iter), ('test_iter', test_iter)):
        if hasattr(data, '__len__') and len(data) == 0:
            raise D2lsegError(f"train: {name} holds no batch (every image smaller than the crop, or fewer images "
                              "than the batch size with last_batch='discard'); use a smaller crop or batch size")
    print('training on', ctx)
    if isinstance(ctx, mx.Context):
        ctx = [ctx]
    history = [] if history is None else history
    for epoch in range(num_epochs):
        train_l_sum, train_acc_sum, n, m, start = 0.0, 0.0, 0, 0.0, time.time()
        for batch in train_iter:
            Xs, ys, batch_size = split_batch(batch, ctx)
            ls, y_hats = forward_backward(net, loss, Xs, ys)
            trainer.step(batch_size)
            l_sum, right, count = step_figures(ls, y_hats, ys)
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
