"""Transposed convolution as matrix multiplication and the bilinear kernel (D2L 10.10.1, 10.10.3)."""
import cv2
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from mxnet import autograd, init, nd
from mxnet.gluon import nn

from d2lseg.fcn.ops import bilinear_kernel, conv_output_size, corr2d, kernel2matrix, trans_conv

# The chapter's example: X = arange(1, 17) as 4x4, K = arange(1, 10) as 3x3.
X44 = nd.arange(1, 17).reshape((4, 4))
K33 = nd.arange(1, 10).reshape((3, 3))
CHAPTER_W = np.array([[1, 2, 3, 0, 4, 5, 6, 0, 7, 8, 9, 0, 0, 0, 0, 0],
                      [0, 1, 2, 3, 0, 4, 5, 6, 0, 7, 8, 9, 0, 0, 0, 0],
                      [0, 0, 0, 0, 1, 2, 3, 0, 4, 5, 6, 0, 7, 8, 9, 0],
                      [0, 0, 0, 0, 0, 1, 2, 3, 0, 4, 5, 6, 0, 7, 8, 9]], dtype=np.float32)
CHAPTER_CONV = np.array([[348, 393], [528, 573]], dtype=np.float32)


def _conv(K, stride=1, padding=0, output_padding=None, transpose=False):
    """A single-channel nn.Conv2D / nn.Conv2DTranspose holding kernel K (numpy (kh, kw)), no bias."""
    kw = dict(kernel_size=K.shape, strides=stride, padding=padding, use_bias=False, in_channels=1)
    if transpose:
        layer = nn.Conv2DTranspose(1, output_padding=output_padding or 0, **kw)
    else:
        layer = nn.Conv2D(1, **kw)
    layer.initialize(init.Constant(nd.array(K.reshape((1, 1) + K.shape))))
    return layer


def test_chapter_conv_values():
    conv = nn.Conv2D(channels=1, kernel_size=3)
    conv.initialize(init.Constant(K33.reshape((1, 1, 3, 3))))
    np.testing.assert_array_equal(conv(X44.reshape((1, 1, 4, 4))).asnumpy()[0, 0], CHAPTER_CONV)
    np.testing.assert_array_equal(corr2d(X44, K33).asnumpy(), CHAPTER_CONV)


def test_chapter_kernel2matrix():
    W = kernel2matrix(K33, (4, 4))
    np.testing.assert_array_equal(W.asnumpy(), CHAPTER_W)
    np.testing.assert_array_equal(nd.dot(W, X44.reshape(16)).reshape((2, 2)).asnumpy(), CHAPTER_CONV)


def test_chapter_transposed_conv_is_W_transpose():
    Y = nd.array(CHAPTER_CONV)
    conv_trans = nn.Conv2DTranspose(1, 3)
    conv_trans.initialize(init.Constant(K33.reshape((1, 1, 3, 3))))
    expected = conv_trans(Y.reshape((1, 1, 2, 2))).asnumpy()[0, 0]
    via_matrix = nd.dot(kernel2matrix(K33, (4, 4)).T, Y.reshape(4)).reshape((4, 4)).asnumpy()
    np.testing.assert_array_equal(via_matrix, expected)
    np.testing.assert_array_equal(trans_conv(Y, K33).asnumpy(), expected)
    # a hand-checked corner: only Y[0,0] * K[0,0] lands at the top-left, Y[1,1] * K[2,2] at the bottom-right
    assert expected[0, 0] == 348 * 1 and expected[3, 3] == 573 * 9


def test_corr2d_and_trans_conv_match_gluon_layers():
    rng = np.random.RandomState(0)
    X, K = rng.randn(7, 6).astype(np.float32), rng.randn(3, 2).astype(np.float32)
    got = corr2d(X, K).asnumpy()
    assert got.shape == (5, 5)
    np.testing.assert_allclose(got, _conv(K)(nd.array(X[None, None])).asnumpy()[0, 0], rtol=1e-5, atol=1e-5)
    Y = rng.randn(4, 5).astype(np.float32)
    got = trans_conv(Y, K).asnumpy()
    assert got.shape == (6, 6)
    np.testing.assert_allclose(got, _conv(K, transpose=True)(nd.array(Y[None, None])).asnumpy()[0, 0],
                               rtol=1e-5, atol=1e-5)


@st.composite
def conv_geometry(draw):
    """A kernel, stride, padding and input size for which the convolution has an output."""
    kh, kw = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    ph, pw = draw(st.integers(0, kh - 1)), draw(st.integers(0, kw - 1))
    h = draw(st.integers(max(1, kh - 2 * ph), 9))
    w = draw(st.integers(max(1, kw - 2 * pw), 9))
    return (kh, kw), (sh, sw), (ph, pw), (h, w), draw(st.integers(0, 2 ** 31 - 1))


@settings(max_examples=30, deadline=None)
@given(conv_geometry())
def test_kernel2matrix_is_conv_and_its_transpose_is_transposed_conv(geometry):
    (kh, kw), stride, padding, (h, w), seed = geometry
    rng = np.random.RandomState(seed)
    K = rng.randn(kh, kw).astype(np.float32)
    x = rng.randn(h, w).astype(np.float32)
    ho = conv_output_size(h, kh, stride[0], padding[0])
    wo = conv_output_size(w, kw, stride[1], padding[1])
    W = kernel2matrix(K, (h, w), stride, padding).asnumpy()
    assert W.shape == (ho * wo, h * w)

    conv = _conv(K, stride, padding)
    np.testing.assert_allclose((W @ x.reshape(-1)).reshape(ho, wo),
                               conv(nd.array(x[None, None])).asnumpy()[0, 0], rtol=1e-4, atol=1e-4)

    # The transposed conv of an (ho, wo) map has (ho-1)*s - 2p + k rows; when (h + 2p - k) % s != 0 the
    # conv dropped the last rows of x, so output_padding (MXNet's `adj`) = that remainder restores (h, w).
    y = rng.randn(ho, wo).astype(np.float32)
    adj = ((h + 2 * padding[0] - kh) % stride[0], (w + 2 * padding[1] - kw) % stride[1])
    tconv = _conv(K, stride, padding, output_padding=adj, transpose=True)
    out = tconv(nd.array(y[None, None])).asnumpy()[0, 0]
    assert out.shape == (h, w)
    WTy = (W.T @ y.reshape(-1)).reshape(h, w)
    np.testing.assert_allclose(WTy, out, rtol=1e-4, atol=1e-4)

    # The adjoint definition: d/dx sum(conv(x) * y) = W.T y.
    xa = nd.array(x[None, None])
    xa.attach_grad()
    with autograd.record():
        z = (conv(xa) * nd.array(y[None, None])).sum()
    z.backward()
    np.testing.assert_allclose(xa.grad.asnumpy()[0, 0], WTy, rtol=1e-4, atol=1e-4)


def test_kernel2matrix_rejects_kernel_larger_than_padded_input():
    with pytest.raises(ValueError, match='does not fit'):
        kernel2matrix(np.ones((5, 5)), (3, 3), padding=0)
    with pytest.raises(ValueError, match='2-D'):
        kernel2matrix(np.ones((1, 3, 3)), (4, 4))


def test_chapter_shape_examples():
    X = nd.random.uniform(shape=(1, 3, 64, 64))
    conv = nn.Conv2D(10, kernel_size=4, padding=1, strides=2)
    conv.initialize()
    Y = conv(X)
    assert Y.shape == (1, 10, 32, 32)
    conv_trans = nn.Conv2DTranspose(3, kernel_size=4, padding=1, strides=2)
    conv_trans.initialize()
    assert conv_trans(Y).shape == (1, 3, 64, 64)
    up = nn.Conv2DTranspose(21, kernel_size=64, padding=16, strides=32)
    up.initialize()
    assert up(nd.zeros((1, 21, 10, 15))).shape == (1, 21, 320, 480)


def test_bilinear_kernel_exact_values():
    w = bilinear_kernel(3, 3, 4).asnumpy()
    assert w.shape == (3, 3, 4, 4) and w.dtype == np.float32
    profile = np.array([0.25, 0.75, 0.75, 0.25])
    for i in range(3):
        for j in range(3):
            np.testing.assert_array_equal(w[i, j], np.outer(profile, profile) if i == j else 0)
    odd = bilinear_kernel(1, 1, 3).asnumpy()[0, 0]
    np.testing.assert_array_equal(odd, np.outer([0.5, 1, 0.5], [0.5, 1, 0.5]))
    # the FCN's 32x kernel: 64 taps 1/64, 3/64, ..., 63/64, 63/64, ..., 1/64
    k64 = bilinear_kernel(2, 2, 64).asnumpy()
    ramp = (2 * np.arange(32) + 1) / 64
    np.testing.assert_allclose(k64[1, 1], np.outer(np.r_[ramp, ramp[::-1]], np.r_[ramp, ramp[::-1]]), rtol=1e-6)
    assert k64[0, 1].max() == 0 and k64[1, 0].max() == 0


@pytest.mark.parametrize('factor,h,w', [(2, 7, 9), (4, 5, 6), (32, 3, 4)])
def test_bilinear_transposed_conv_is_half_pixel_bilinear_resize(factor, h, w):
    """Kernel 2f, stride f, padding f/2 == cv2 INTER_LINEAR (half-pixel centres) wherever no padding is read."""
    rng = np.random.RandomState(factor)
    img = rng.rand(3, h, w).astype(np.float32)
    up = nn.Conv2DTranspose(3, kernel_size=2 * factor, padding=factor // 2, strides=factor,
                            in_channels=3, use_bias=False)
    up.initialize(init.Constant(bilinear_kernel(3, 3, 2 * factor)))
    got = up(nd.array(img[None])).asnumpy()[0]
    assert got.shape == (3, h * factor, w * factor)
    ref = cv2.resize(img.transpose(1, 2, 0), (w * factor, h * factor), interpolation=cv2.INTER_LINEAR)
    ref = ref.transpose(2, 0, 1)
    # output pixel o samples the input at t = (o + 0.5) / f - 0.5; interior means 0 <= t <= n - 1
    t_h = (np.arange(h * factor) + 0.5) / factor - 0.5
    t_w = (np.arange(w * factor) + 0.5) / factor - 0.5
    rows = (t_h >= 0) & (t_h <= h - 1)
    cols = (t_w >= 0) & (t_w <= w - 1)
    assert (~rows).sum() == factor  # a border of f/2 pixels on each side
    np.testing.assert_allclose(got[:, rows][:, :, cols], ref[:, rows][:, :, cols], rtol=1e-5, atol=1e-6)
    # At the border the transposed conv reads zero padding: the first row is attenuated, not clamped.
    np.testing.assert_allclose(got[:, 0, cols], (0.5 + 0.5 / factor) * ref[:, 0, cols], rtol=1e-5, atol=1e-6)
