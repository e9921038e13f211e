"""The chapter's training functions (D2L 10.10.5, ``d2lseg.fcn.chapter``): try_all_gpus, train's printout,
evaluate_accuracy, and one step split over two contexts equal to one context on the halves.

The chapter's own cells run in tests/test_chapter_cells.py."""
import math
import os
import re

import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd, gluon, nd

from d2lseg.fcn.chapter import evaluate_accuracy, split_batch as _get_batch, train, try_all_gpus
from d2lseg.training.engine import evaluate
from d2lseg.fcn.loss import SegmentationLoss
from d2lseg.fcn.model import build_fcn
from d2lseg.data.voc import VOCSegDataset


EPOCH_LINE = re.compile(r'^epoch (\d+), loss (\d+\.\d{4}), train acc (\d\.\d{3}), test acc (\d\.\d{3}), '
                        r'time (\d+\.\d) sec$')


def test_try_all_gpus_is_cpu_here():
    if mx.context.num_gpus():
        pytest.skip('this machine has a GPU')
    assert try_all_gpus() == [mx.cpu()]


def test_chapter_train_prints_book_format_and_fills_history(voc_dir, capsys):
    mx.random.seed(0)
    train_data = VOCSegDataset(True, (64, 96), voc_dir, seed=0, max_images=4, verbose=False)
    test_data = VOCSegDataset(False, (64, 96), voc_dir, seed=0, max_images=4, verbose=False)
    train_iter = gluon.data.DataLoader(train_data, 2, shuffle=True, last_batch='discard')
    test_iter = gluon.data.DataLoader(test_data, 2, last_batch='keep')
    ctx = try_all_gpus()
    net = build_fcn(21, pretrained=False, ctx=ctx)
    trainer = gluon.Trainer(net.collect_params(), 'sgd', {'learning_rate': 0.1, 'wd': 1e-3})
    history = []
    # like the book's, train returns nothing: a notebook cell ending in it shows no Out[...]
    assert train(train_iter, test_iter, net, gluon.loss.SoftmaxCrossEntropyLoss(axis=1), trainer, ctx, 2,
                 history=history) is None
    assert len(history) == 2
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
        np.testing.assert_array_equal(evaluate(batches, net, ctx, num_classes=3).mat,
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


def test_the_chapters_plotting_runs_as_a_plain_script(tmp_path):
    """With IPython installed (the test extra has it), set_figsize() + a plot must not make an IPython shell:
    matplotlib < 3.9 then imports IPython's backend2gui, which IPython 9 removed."""
    import json
    import subprocess
    import sys
    helper = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'helpers', 'chapter_script.py')
    proc = subprocess.run([sys.executable, helper, str(tmp_path / 'fig.png')], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result == {'ipython_shell': False, 'bytes': result['bytes']} and result['bytes'] > 1000


def test_train_refuses_empty_data_in_one_line():
    from d2lseg.core.errors import D2lsegError
    one = gluon.data.ArrayDataset(nd.zeros((1, 3, 32, 32)), nd.zeros((1, 32, 32)))
    empty = gluon.data.DataLoader(one, batch_size=4, last_batch='discard')
    full = gluon.data.DataLoader(one, batch_size=1)
    net = build_fcn(21, pretrained=False)
    trainer = gluon.Trainer(net.collect_params(), 'sgd', {'learning_rate': 0.1})
    for train_iter, test_iter, name in ((empty, full, 'train_iter'), (full, empty, 'test_iter')):
        with pytest.raises(D2lsegError, match=f'{name} holds no batch') as e:
            train(train_iter, test_iter, net, SegmentationLoss(), trainer, mx.cpu(), 1)
        assert '\n' not in str(e.value)
