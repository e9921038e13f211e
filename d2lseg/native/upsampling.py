"""Fast bilinear upsampling: the chapter's ``Conv2DTranspose(C, 2s, padding=s/2, strides=s)`` without overlap.

With a kernel exactly twice its stride, every output pixel of the transposed convolution depends on
a 2x2 input neighbourhood. Padding the input by one pixel, concatenating its four shifted copies (C
-> 4C channels) and running a *non-overlapping* transposed convolution (kernel s, stride s) gives
the same output and gradients; oneDNN runs that faster (measured here on the layer: about 1.6x
forward, 1.2-1.6x forward + backward). The weight is a pure permutation of the chapter's: stored
rearranged, (4C_in, C, s, s), as the leaf parameter (MXNet 1.9.1's oneDNN Deconvolution backward
crashes when its weight is computed in the graph), and ``FastLayoutParams`` converts it exactly on
``save_parameters`` / ``load_parameters``, so parameter files keep the chapter's names and (C_in, C,
2s, 2s) layout and load into the chapter's network. On CPU contexts the whole layer runs as one
compiled operator when the native kernels load (``native.enabled``, decided at every call); a graph
exported from such a layer holds that operator, so load it after ``d2lseg.native.load()`` (or
export within ``native.override(False)``).

``FastLayoutParams`` names parameters as gluon's ``save_parameters`` does (structural names, from
``mxinternals.structural_params``: gluon 1.9 has no public API for them) and loads a converted file
through a temporary copy, so gluon's own checks of names, shapes and contexts apply unchanged.
"""
import os
import tempfile

import numpy as np
import mxnet as mx
from mxnet import init, nd
from mxnet.gluon import HybridBlock

from ..core import mxinternals
from .. import native


# MXNet 1.9.1's oneDNN Deconvolution backward dies with SIGFPE for kernel == stride 2 or 4 and some
# channel counts (2, 4, 6, ...); the FCN's upsamplings (strides 8, 16, 32) are unaffected.
MIN_STRIDE = 8


def to_fast_layout(weight, stride):
    """Chapter transposed-conv weight (C_in, C, 2s, 2s) -> the fast layer's (4*C_in, C, s, s).

    Works on NDArrays and numpy arrays; a permutation, so exact. Block (dy, dx) of the kernel becomes
    channel group 2*dy + dx.
    """
    cin, cout, kh, kw = weight.shape
    s = stride
    if kh != 2 * s or kw != 2 * s:
        raise ValueError(f'expected a {2 * s}x{2 * s} kernel for stride {s}, got {kh}x{kw}')
    w = weight.reshape((cin, cout, 2, s, 2, s)).transpose((2, 4, 0, 1, 3, 5))
    return w.reshape((4 * cin, cout, s, s))


def to_chapter_layout(weight, stride):
    """Inverse of ``to_fast_layout``: (4*C_in, C, s, s) -> (C_in, C, 2s, 2s)."""
    g, cout, kh, kw = weight.shape
    s = stride
    if g % 4 or kh != s or kw != s:
        raise ValueError(f'expected a (4*C_in, C, {s}, {s}) weight, got {tuple(weight.shape)}')
    w = weight.reshape((2, 2, g // 4, cout, s, s)).transpose((2, 3, 0, 4, 1, 5))
    return w.reshape((g // 4, cout, 2 * s, 2 * s))


class FastUpsampling(native.PerContext, HybridBlock):
    """Drop-in for ``nn.Conv2DTranspose(channels, 2*stride, padding=stride//2, strides=stride)``.

    x: (N, C_in, h, w) -> (N, channels, stride*h, stride*w), the same values as the chapter's layer
    holding ``chapter_weight()``. Parameters ``weight`` (4*C_in, channels, s, s) and ``bias``
    (channels,). weight_initializer: an initializer of the *chapter-layout* kernel, e.g.
    ``init.Constant(bilinear_kernel(C, C, 2*s))``. On CPUs (``native.enabled``) it runs the
    native kernels' fused operator (strides 8, 16, 24, 32). Source: D2L 10.10.3, rearranged.
    """

    def __init__(self, channels, stride, in_channels=None, weight_initializer=None, **kwargs):
        super().__init__(**kwargs)
        if stride < MIN_STRIDE or stride % 2:
            raise ValueError(f'stride must be even and at least {MIN_STRIDE}, got {stride}')
        self.channels, self.stride = channels, stride
        self.in_channels = in_channels or channels
        with self.name_scope():
            self.weight = self.params.get('weight', shape=(4 * self.in_channels, channels, stride, stride),
                                          init=_FastInit(weight_initializer, stride) if weight_initializer
                                          else None)
            self.bias = self.params.get('bias', shape=(channels,), init='zeros')

    def uses_native(self, ctx=None):
        """Whether a call on ``ctx`` (default: where the weight lives) runs the native fused operator."""
        ctx = ctx if ctx is not None else self.weight.list_ctx()
        return self.stride in native.UPSAMPLE_STRIDES and native.enabled(ctx)

    def hybrid_forward(self, F, x, weight, bias):
        if self.stride in native.UPSAMPLE_STRIDES and self.native_now(x, [self.weight]):
            return native.upsample(F, x, weight, bias, self.stride)
        xp = F.pad(x, mode='constant', pad_width=(0, 0, 0, 0, 1, 1, 1, 1))
        parts = []
        for dy in (0, 1):
            rows = F.slice_axis(xp, axis=2, begin=1 - dy, end=None if dy == 0 else -1)
            for dx in (0, 1):
                parts.append(F.slice_axis(rows, axis=3, begin=1 - dx, end=None if dx == 0 else -1))
        s = self.stride
        return F.Deconvolution(F.concat(*parts, dim=1), weight, bias, kernel=(s, s), stride=(s, s),
                               pad=(s // 2, s // 2), num_filter=self.channels, no_bias=False)

    def chapter_weight(self, ctx=None):
        """The weight in the chapter's (C_in, C, 2s, 2s) layout."""
        return to_chapter_layout(self.weight.data(ctx), self.stride)

    def chapter_shape(self):
        return (self.in_channels, self.channels, 2 * self.stride, 2 * self.stride)

    def set_chapter_weight(self, weight):
        """Set the weight from a chapter-layout (C_in, C, 2s, 2s) array."""
        self.weight.set_data(to_fast_layout(nd.array(weight) if isinstance(weight, np.ndarray) else weight,
                                            self.stride))

    def __repr__(self):
        return (f'{self.__class__.__name__}({self.in_channels} -> {self.channels}, kernel_size='
                f'({2 * self.stride}, {2 * self.stride}), stride=({self.stride}, {self.stride}), '
                f'padding=({self.stride // 2}, {self.stride // 2}), as 4x{self.in_channels} channels '
                f'non-overlapping)')


class _FastInit(init.Initializer):
    """Run a chapter-layout initializer, then permute into the fast layout."""

    def __init__(self, inner, stride):
        super().__init__()
        self._inner, self._stride = inner, stride

    def _init_weight(self, name, arr):
        g, c, s, _ = arr.shape
        tmp = nd.zeros((g // 4, c, 2 * s, 2 * s), dtype=arr.dtype)
        self._inner._init_weight(name, tmp)
        arr[:] = to_fast_layout(tmp, self._stride)

    def __call__(self, desc, arr):
        self._init_weight(desc, arr)


def _fast_weights(block):
    """{id(weight Parameter): FastUpsampling} for every fast layer inside ``block``."""
    found = {}

    def visit(b):
        if isinstance(b, FastUpsampling):
            found[id(b.weight)] = b
    block.apply(visit)
    return found


class FastLayoutParams:
    """Mixin for networks holding ``FastUpsampling`` layers: parameter files in the chapter's layout.

    ``save_parameters`` writes every fast weight as the chapter's (C_in, C, 2s, 2s) array under the
    same structural name a ``Conv2DTranspose`` would have; ``load_parameters`` accepts either layout.
    ``export`` (and so INT8 quantisation) keeps the fast layout, consistent with the exported graph.
    """

    def save_parameters(self, filename, deduplicate=False):
        fast = _fast_weights(self)
        params = mxinternals.structural_params(self)  # gluon's own naming of save_parameters
        if deduplicate:
            params = {v: k for k, v in {v: k for k, v in params.items()}.items()}
        arrays = {}
        for name, p in params.items():
            copies = [d.copyto(mx.cpu()) for d in p.list_data()]
            data = copies[0] if len(copies) == 1 else nd.add_n(*copies) / len(copies)
            if id(p) in fast:
                data = to_chapter_layout(data, fast[id(p)].stride)
            arrays[name] = data
        nd.save(filename, arrays)

    def load_parameters(self, filename, ctx=None, allow_missing=False, ignore_extra=False, **kwargs):
        fast = _fast_weights(self)
        params = mxinternals.structural_params(self)
        loaded = nd.load(os.fspath(filename)) if fast else {}
        converted = False
        if isinstance(loaded, dict):
            for name, p in params.items():
                layer = fast.get(id(p))
                if layer is not None and name in loaded and loaded[name].shape == layer.chapter_shape():
                    loaded[name] = to_fast_layout(loaded[name], layer.stride)
                    converted = True
        if not converted:
            return super().load_parameters(filename, ctx=ctx, allow_missing=allow_missing,
                                           ignore_extra=ignore_extra, **kwargs)
        with tempfile.TemporaryDirectory(prefix='d2lseg-params-') as tmp:
            path = os.path.join(tmp, 'fast.params')
            nd.save(path, loaded)
            return super().load_parameters(path, ctx=ctx, allow_missing=allow_missing,
                                           ignore_extra=ignore_extra, **kwargs)
