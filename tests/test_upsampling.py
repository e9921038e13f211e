"""The fast upsampling (``d2lseg.native.upsampling.FastUpsampling``) changes nothing: it equals the chapter's
Conv2DTranspose (values and gradients, strides 8/16/24/32/40, hybridized or not, native kernels or MXNet's
operators), keeps the chapter's parameter names and layout, and a training step with it is the chapter's.

Equivalence only (no timings; bench/run.py measures speed).
"""
import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd, init, nd
from mxnet.gluon import nn

from d2lseg.fcn.model import build_fcn
from d2lseg.fcn.ops import bilinear_kernel
from d2lseg.training.config import Recipe
from d2lseg.training.engine import Run, make_trainer, train_step
from d2lseg.fcn.loss import SegmentationLoss
from d2lseg.native.upsampling import FastUpsampling, to_chapter_layout, to_fast_layout
from recipes import network_pair


def _rel(a, b):
    a, b = (x.asnumpy() if isinstance(x, nd.NDArray) else np.asarray(x) for x in (a, b))
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def _fwd_bwd(layer, x):
    x = x.copy()
    x.attach_grad()
    with autograd.record():
        y = layer(x)
        loss = (y * nd.arange(y.size).reshape(y.shape).sin()).sum()  # a non-uniform output gradient
    loss.backward()
    return y, x.grad, layer.weight.grad(), layer.bias.grad()


def _native_or_skip(native):
    import d2lseg.native
    if native and not d2lseg.native.load():
        pytest.skip('the native kernels did not build on this machine (see the warning); MXNet path tested')


@pytest.mark.parametrize('channels, stride, h, w', [(21, 32, 2, 3), (3, 8, 5, 7), (2, 16, 3, 1), (4, 24, 2, 2),
                                                     (2, 40, 2, 1)])
@pytest.mark.parametrize('hybrid', [False, True])
@pytest.mark.parametrize('native', [False, True])
def test_fast_upsampling_equals_transposed_conv(channels, stride, h, w, hybrid, native):
    _native_or_skip(native)
    mx.random.seed(1)
    ref = nn.Conv2DTranspose(channels, 2 * stride, padding=stride // 2, strides=stride, in_channels=channels)
    ref.initialize(init.Normal(0.5))
    ref.bias.set_data(nd.random.normal(shape=(channels,)))
    fast = FastUpsampling(channels, stride)  # tests/conftest.py: native on (when it builds) or off for the test
    assert fast.uses_native(mx.cpu()) == (native and stride <= 32)  # stride 40: MXNet's operators
    fast.initialize()
    fast.set_chapter_weight(ref.weight.data())
    fast.bias.set_data(ref.bias.data())
    if hybrid:
        ref.hybridize(static_alloc=True, static_shape=True)
        fast.hybridize(static_alloc=True, static_shape=True)
    x = nd.random.normal(shape=(2, channels, h, w))
    y_ref, gx_ref, gw_ref, gb_ref = _fwd_bwd(ref, x)
    y, gx, gw, gb = _fwd_bwd(fast, x)
    assert y.shape == (2, channels, stride * h, stride * w) == y_ref.shape
    assert _rel(y, y_ref) < 1e-5
    assert _rel(gx, gx_ref) < 1e-5
    assert gw.shape == (4 * channels, channels, stride, stride)
    assert _rel(to_chapter_layout(gw, stride), gw_ref) < 1e-5
    # the bias gradient sums N*H*W head-gradient values that nearly cancel: both within float32
    # rounding of the float64 sum
    head = nd.arange(y.size).reshape(y.shape).sin().asnumpy().astype(np.float64)
    exact = head.sum(axis=(0, 2, 3))
    for got in (gb, gb_ref):
        assert np.abs(got.asnumpy() - exact).max() < 1e-6 * head[:, 0].size


def test_layout_conversion_is_an_exact_permutation():
    w = nd.arange(21 * 21 * 64 * 64).reshape((21, 21, 64, 64))
    fast = to_fast_layout(w, 32)
    assert fast.shape == (84, 21, 32, 32)
    assert np.array_equal(np.sort(fast.asnumpy().ravel()), w.asnumpy().ravel())
    assert np.array_equal(to_chapter_layout(fast, 32).asnumpy(), w.asnumpy())
    # block (dy, dx) = (1, 0) of input channel 5 -> channel group 2, i.e. fast channel 2 * 21 + 5
    assert np.array_equal(fast[2 * 21 + 5].asnumpy(), w[5, :, 32:, :32].asnumpy())
    with pytest.raises(ValueError):
        to_fast_layout(w, 16)
    with pytest.raises(ValueError):  # strides 2 and 4 crash oneDNN's backward: refused
        FastUpsampling(21, 4)


def test_fast_bilinear_init_is_the_chapters():
    fast = FastUpsampling(3, 8, weight_initializer=init.Constant(bilinear_kernel(3, 3, 16)))
    fast.initialize()
    assert np.array_equal(fast.chapter_weight().asnumpy(), bilinear_kernel(3, 3, 16).asnumpy())
    x = nd.random.uniform(shape=(1, 3, 4, 6))
    y = fast(x)
    # bilinear upsampling by 8 keeps a constant image constant away from the zero-padded border
    c = fast(nd.ones((1, 3, 4, 6)))[0, :, 8:-8, 8:-8].asnumpy()
    assert y.shape == (1, 3, 32, 48) and np.allclose(c, 1, atol=1e-6)


@pytest.mark.parametrize('variant', ['fcn32s', 'fcn16s'])
def test_saved_parameters_keep_the_chapters_names_and_layout(tmp_path, variant):
    plain, fast = network_pair(variant)
    a, b = str(tmp_path / 'plain.params'), str(tmp_path / 'fast.params')
    plain.save_parameters(a)
    fast.load_parameters(a)                      # chapter file -> fast net
    x = nd.random.normal(shape=(2, 3, 64, 96))
    assert _rel(fast(x), plain(x)) < 1e-5
    fast.save_parameters(b)                      # fast net -> chapter file
    saved_a, saved_b = nd.load(a), nd.load(b)
    assert {k: v.shape for k, v in saved_a.items()} == {k: v.shape for k, v in saved_b.items()}
    assert all(np.array_equal(saved_a[k].asnumpy(), saved_b[k].asnumpy()) for k in saved_a)
    last = '12.weight' if variant == 'fcn32s' else 'upsample.weight'
    assert saved_b[last].shape == ((21, 21, 64, 64) if variant == 'fcn32s' else (21, 21, 32, 32))
    chapter = build_fcn(21, variant, pretrained=False)
    chapter.load_parameters(b)                   # and into the chapter's network again
    assert _rel(chapter(x), plain(x)) < 1e-5


def test_fast_net_keeps_the_chapter_structure():
    plain, fast = network_pair()
    assert isinstance(fast, nn.HybridSequential) and len(fast) == len(plain) == 13
    assert isinstance(fast[-1], FastUpsampling) and isinstance(plain[-1], nn.Conv2DTranspose)
    assert [type(a) for a in plain][:-1] == [type(b) for b in fast][:-1]
    assert fast[-1].chapter_weight().shape == plain[-1].weight.shape


def test_train_step_is_the_same_with_fast_upsampling(tmp_path):
    plain, fast = network_pair()
    path = str(tmp_path / 'p.params')
    plain.save_parameters(path)
    fast.load_parameters(path)
    recipe = Recipe(lr=0.1, wd=1e-3, ctx='cpu')
    x = nd.random.normal(shape=(2, 3, 64, 96))
    y = nd.random.randint(0, 21, shape=(2, 64, 96)).astype('float32')
    before = {k: v.data().copy() for k, v in plain._collect_params_with_prefix().items()}
    results = []
    for net in (plain, fast):
        net.hybridize(static_alloc=True, static_shape=True)
        run = Run(net, make_trainer(net, recipe), SegmentationLoss(), [mx.cpu()], None, None)
        results.append(train_step(run, (x, y)))
    (l1, r1, c1, n1), (l2, r2, c2, n2) = results
    assert n1 == n2 == 2 and c1 == c2 == 2 * 64 * 96 and abs(r1 - r2) <= 2  # argmax ties may flip
    assert abs(l1 - l2) <= 1e-6 * abs(l1)
    fast.save_parameters(str(tmp_path / 'f.params'))
    after_fast = nd.load(str(tmp_path / 'f.params'))
    worst = {}
    for name, p in plain._collect_params_with_prefix().items():
        step_plain, step_fast = p.data() - before[name], after_fast[name] - before[name]
        if p.grad_req != 'null':  # the SGD update of every trained parameter (L2-relative)
            worst[name] = (nd.norm(step_fast - step_plain) / nd.norm(step_plain)).asscalar()
    assert worst['12.weight'] < 1e-5 and worst['12.bias'] < 1e-5  # the upsampling itself
    assert max(worst.values()) < 1e-4, max(worst.items(), key=lambda kv: kv[1])  # through 18 layers
