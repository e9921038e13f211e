"""SegmentationLoss (``d2lseg.fcn.loss``): gluon's softmax cross-entropy where nothing is ignored, label 255 skipped,
with the native kernels and without."""
import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd, gluon, nd

from d2lseg.fcn.loss import SegmentationLoss


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


def _rel(a, b):
    a, b = (x.asnumpy() if isinstance(x, nd.NDArray) else np.asarray(x) for x in (a, b))
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def _native_or_skip(native):
    import d2lseg.native
    if native and not d2lseg.native.load():
        pytest.skip('the native kernels did not build on this machine (see the warning); MXNet path tested')


@pytest.mark.parametrize('native', [False, True])
def test_segmentation_loss_equals_gluons_softmax_cross_entropy(native):
    _native_or_skip(native)
    mx.random.seed(2)
    pred = nd.random.normal(shape=(2, 21, 6, 5)) * 3
    label = nd.random.randint(0, 21, shape=(2, 6, 5)).astype('float32')
    grads = []
    for loss_fn in (SegmentationLoss(), gluon.loss.SoftmaxCrossEntropyLoss(axis=1)):
        loss_fn.hybridize()
        p = pred.copy()
        p.attach_grad()
        with autograd.record():
            loss = loss_fn(p, label)
        loss.backward()
        grads.append((loss, p.grad))
    (l1, g1), (l2, g2) = grads
    assert l1.shape == l2.shape == (2,)
    assert _rel(l1, l2) < 1e-6 and _rel(g1, g2) < 1e-5
    # ignored pixels contribute nothing and no gradient; the mean stays over all H*W pixels
    ignored = label.copy()
    ignored[0, :3] = 255
    p = pred.copy()
    p.attach_grad()
    with autograd.record():
        l3 = SegmentationLoss()(p, ignored)
    l3.backward()
    assert np.abs(p.grad[0, :, :3].asnumpy()).max() == 0
    logp = nd.log_softmax(pred[0], axis=0).asnumpy()
    lab = label[0].asnumpy().astype(int)
    expect = -sum(logp[lab[i, j], i, j] for i in range(3, 6) for j in range(5)) / 30
    assert abs(l3[0].asscalar() - expect) < 1e-5 and abs(l3[1].asscalar() - l1[1].asscalar()) < 1e-6


@pytest.mark.parametrize('native', [False, True])
@pytest.mark.parametrize('hybrid', [False, True])
def test_class_weights_follow_the_formula_in_both_paths(native, hybrid):
    _native_or_skip(native)
    rng = np.random.default_rng(4)
    z = (rng.standard_normal((2, 4, 6, 5)) * 3).astype(np.float32)
    label = rng.integers(0, 4, (2, 6, 5)).astype(np.float32)
    label[0, :2] = 255
    w = np.array([0.5, 2.0, 1.0, 3.0], np.float32)
    losses = {}
    for name, weights in (('ones', np.ones(4)), ('w', w), ('none', None)):
        loss_fn = SegmentationLoss(class_weights=weights)
        loss_fn.initialize()
        if hybrid:
            loss_fn.hybridize()
        p = nd.array(z)
        p.attach_grad()
        with autograd.record():
            loss = loss_fn(p, nd.array(label))
        loss.backward()
        losses[name] = (loss.asnumpy(), p.grad.asnumpy())
    np.testing.assert_array_equal(losses['ones'][0], losses['none'][0])   # weights of 1: the same loss
    np.testing.assert_array_equal(losses['ones'][1], losses['none'][1])   # and the same gradient
    # float64 reference: mean over all H*W pixels of w[y] * -log softmax(z)[y], ignored pixels 0
    z64 = z.astype(np.float64)
    logp = z64 - z64.max(axis=1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(axis=1, keepdims=True))
    valid = label != 255
    y = np.where(valid, label, 0).astype(int)
    pix_w = w[y] * valid
    expect = -(np.take_along_axis(logp, y[:, None], axis=1)[:, 0] * pix_w).mean(axis=(1, 2))
    np.testing.assert_allclose(losses['w'][0], expect, rtol=1e-5)
    grad = np.exp(logp)
    np.put_along_axis(grad, y[:, None], np.take_along_axis(grad, y[:, None], axis=1) - 1, axis=1)
    grad *= pix_w[:, None] / (6 * 5)
    np.testing.assert_allclose(losses['w'][1], grad, rtol=1e-4, atol=1e-7)


def test_the_scalar_weight_scales_the_loss():
    pred = nd.random.normal(shape=(2, 3, 4, 4))
    label = nd.random.randint(0, 3, shape=(2, 4, 4)).astype('float32')
    np.testing.assert_allclose(SegmentationLoss(weight=0.25)(pred, label).asnumpy(),
                               0.25 * SegmentationLoss()(pred, label).asnumpy(), rtol=1e-6)
