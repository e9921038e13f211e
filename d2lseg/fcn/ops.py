"""Transposed convolution as matrix multiplication (D2L 10.10.1) and the bilinear kernel (10.10.3).

Plain array math, no Blocks: the reference operations the chapter builds its explanation on.
"""
import numpy as np
from mxnet import nd


def _as_numpy(x):
    return x.asnumpy() if isinstance(x, nd.NDArray) else np.asarray(x)


def corr2d(X, K):
    """Single-channel 2-D cross-correlation, stride 1, no padding.

    X: (h, w), K: (kh, kw) -> (h - kh + 1, w - kw + 1). Source: D2L 5.1.
    """
    X, K = _as_numpy(X).astype(np.float32), _as_numpy(K).astype(np.float32)
    h, w = K.shape
    Y = np.zeros((X.shape[0] - h + 1, X.shape[1] - w + 1), dtype=np.float32)
    for i in range(Y.shape[0]):
        for j in range(Y.shape[1]):
            Y[i, j] = (X[i:i + h, j:j + w] * K).sum()
    return nd.array(Y)


def trans_conv(Y, K):
    """Single-channel transposed convolution, stride 1, no padding: each input scatters K.

    Y: (h, w), K: (kh, kw) -> (h + kh - 1, w + kw - 1). Source: D2L 13.10.1.
    """
    Y, K = _as_numpy(Y).astype(np.float32), _as_numpy(K).astype(np.float32)
    h, w = K.shape
    X = np.zeros((Y.shape[0] + h - 1, Y.shape[1] + w - 1), dtype=np.float32)
    for i in range(Y.shape[0]):
        for j in range(Y.shape[1]):
            X[i:i + h, j:j + w] += Y[i, j] * K
    return nd.array(X)


def conv_output_size(size, kernel, stride=1, padding=0):
    """Spatial size of a convolution's output along one axis."""
    return (size + 2 * padding - kernel) // stride + 1


def kernel2matrix(K, input_shape, stride=1, padding=0):
    """The dense matrix W of a single-channel convolution with kernel K.

    ``W @ vec(X) == vec(Conv2D(X))`` and ``W.T @ vec(Y) == vec(Conv2DTranspose(Y))``
    for any kernel size, stride and (symmetric) padding; padded positions carry no weight.

    K: (kh, kw); input_shape: (h, w) -> W: (h_out * w_out, h * w), an NDArray.
    Source: D2L 10.10.1 (the 3x3-on-4x4 example), generalised.
    """
    K = _as_numpy(K).astype(np.float32)
    if K.ndim != 2:
        raise ValueError(f"kernel2matrix: K must be 2-D (kh, kw), got shape {K.shape}")
    kh, kw = K.shape
    h, w = input_shape
    sh, sw = (stride, stride) if np.isscalar(stride) else stride
    ph, pw = (padding, padding) if np.isscalar(padding) else padding
    ho, wo = conv_output_size(h, kh, sh, ph), conv_output_size(w, kw, sw, pw)
    if ho <= 0 or wo <= 0:
        raise ValueError(f"kernel2matrix: kernel {K.shape} does not fit input {tuple(input_shape)} "
                         f"with padding {padding}")
    W = np.zeros((ho * wo, h * w), dtype=np.float32)
    for i in range(ho):
        for j in range(wo):
            for a in range(kh):
                r = i * sh - ph + a
                if not 0 <= r < h:
                    continue
                for b in range(kw):
                    c = j * sw - pw + b
                    if 0 <= c < w:
                        W[i * wo + j, r * w + c] += K[a, b]
    return nd.array(W)


def bilinear_kernel(in_channels, out_channels, kernel_size):
    """Weights of a transposed convolution that performs bilinear upsampling.

    -> NDArray (in_channels, out_channels, kernel_size, kernel_size), channel i -> i only.
    Source: D2L 10.10.3 (exactly the chapter's function).
    """
    factor = (kernel_size + 1) // 2
    if kernel_size % 2 == 1:
        center = factor - 1
    else:
        center = factor - 0.5
    og = np.ogrid[:kernel_size, :kernel_size]
    filt = (1 - abs(og[0] - center) / factor) * \
           (1 - abs(og[1] - center) / factor)
    weight = np.zeros((in_channels, out_channels, kernel_size, kernel_size),
                      dtype='float32')
    weight[range(in_channels), range(out_channels), :, :] = filt
    return nd.array(weight)
