"""Native CPU kernels for the FCN's head: the only code that names their operators, and the one decision to use them.

``csrc/kernels.cc`` registers five MXNet operators (built and loaded by ``library``):

- ``d2lseg_upsample``: ``upsampling.FastUpsampling``'s transposed convolution in one pass (no
  padding, slicing, concatenation or intermediate arrays), forward and backward;
- ``d2lseg_upsample_argmax``: the argmax over classes of that upsampling's output, without writing
  the output (``inference.predict_batch``, so ``evaluate`` and ``predict``);
- ``d2lseg_softmax_ce``: ``loss.SegmentationLoss`` (per-sample mean softmax cross-entropy over axis
  1, label 255 skipped), whose backward recomputes the softmax instead of storing it, and
  ``d2lseg_softmax_ce_weighted``, the same with a weight per class;
- ``d2lseg_argmax``: argmax over axis 1 (the first maximum wins, as ``nd.argmax``).

``enabled(ctx)`` decides, per call, from the context the data is on: the kernels run on CPU
contexts when the library loads, ``D2LSEG_NATIVE`` is not ``0`` and no ``override(False)`` is in
force. Blocks using them (``PerContext``: the networks of ``model``, ``FastUpsampling``,
``SegmentationLoss``) take that decision at every call, so a network moved to a GPU (``reset_ctx``)
runs MXNet's operators there. A hybridised container of your own around them cannot be seen from
inside: hybridize it again after moving it to another kind of context. tests/test_kernels.py checks every output and
gradient against MXNet's own operators. Without a compiler or AVX2/FMA the package keeps MXNet's
operators (one warning, naming the file, says why).
"""
import contextlib
import contextvars

import mxnet as mx
from mxnet import nd

from .library import build, cache_dir, compiled_isa, library_path, load, verified  # noqa: F401 (the package's API)

_override = contextvars.ContextVar('d2lseg_native_override', default=None)

UPSAMPLE_STRIDES = (8, 16, 24, 32)  # what d2lseg_upsample implements
# the operators' names, by what they compute (MXNet's profiler names their backward passes _backward_NAME)
UPSAMPLING_OPERATORS = ('d2lseg_upsample', 'd2lseg_upsample_argmax')
LOSS_OPERATORS = ('d2lseg_softmax_ce', 'd2lseg_softmax_ce_weighted')


def _contexts(ctx):
    return list(ctx) if isinstance(ctx, (list, tuple)) else [ctx]


def enabled(ctx):
    """Whether the native kernels run for data on ``ctx`` (a Context or a list: every one a CPU)."""
    forced = _override.get()
    if forced is False:
        return False
    return all(c.device_type == 'cpu' for c in _contexts(ctx)) and load()


@contextlib.contextmanager
def override(on):
    """Within the block, ``enabled`` is False everywhere (``on=False``), or back to the default (``on=True``):
    how tests and benchmarks compare the kernels with MXNet's operators."""
    token = _override.set(bool(on))
    try:
        yield
    finally:
        _override.reset(token)


class PerContext:
    """Mixin for HybridBlocks whose graph differs with ``enabled``: decided at every call, never stored.

    ``forward`` decides from the input's context and tells every ``PerContext`` block inside
    (``native_now``); when the decision differs from the one the cached graph was built with, the
    graph is dropped (``hybridize`` again with the same arguments) and rebuilt on this call.
    """

    _native = None
    _hybridize_args = None

    def hybridize(self, active=True, **kwargs):
        self._hybridize_args = (active, kwargs)
        super().hybridize(active, **kwargs)

    def forward(self, x, *args):
        if isinstance(x, nd.NDArray):
            use = enabled(x.context)
            if use != self._native:
                blocks = []
                self.apply(lambda b: blocks.append(b) if isinstance(b, PerContext) else None)
                for b in blocks:
                    b._native = use
                for b in blocks:  # every graph built for the other decision, the outer and inner ones
                    if b._hybridize_args is not None and b._hybridize_args[0]:
                        b.hybridize(b._hybridize_args[0], **dict(b._hybridize_args[1], clear=True))
        return super().forward(x, *args)

    def native_now(self, x, params=()):
        """The decision inside ``hybrid_forward`` for input ``x``: from its context when it is an NDArray;
        for a graph being built, the one ``forward`` took, else from where ``params`` (Parameters of
        this block) live, as when tracing symbols for export or conversion."""
        if isinstance(x, nd.NDArray):
            return enabled(x.context)
        if self._native is not None:
            return self._native and _override.get() is not False
        return enabled(params[0].list_ctx() if params else mx.cpu())


def upsample(F, x, weight, bias, stride):
    """``FastUpsampling``'s output in one operator: (N, C_in, h, w) -> (N, C, stride*h, stride*w)."""
    return F.d2lseg_upsample(x, weight, bias, stride=stride)


def upsample_argmax(scores, up):
    """Symbol: class per pixel of ``up``'s output for coarse ``scores`` (a Symbol), without the output."""
    return mx.sym.d2lseg_upsample_argmax(scores, up.weight.var(), up.bias.var(), stride=up.stride)


def softmax_ce(F, pred, label, ignore_index):
    """Per-sample mean softmax cross-entropy over axis 1 of (N, C, H, W), ``ignore_index`` skipped -> (N,)."""
    return F.d2lseg_softmax_ce(pred, label, ignore_index=int(ignore_index))


def softmax_ce_weighted(F, pred, label, weight, ignore_index):
    """``softmax_ce`` with every pixel's loss times ``weight[label]`` (weight: (C,)) -> (N,)."""
    return F.d2lseg_softmax_ce_weighted(pred, label, weight, ignore_index=int(ignore_index))


def argmax_channel(scores):
    """Class index per pixel: (N, C, H, W) scores -> (N, H, W) float32, as ``scores.argmax(axis=1)``."""
    if enabled(scores.context):
        return nd.d2lseg_argmax(scores)
    return scores.argmax(axis=1)
