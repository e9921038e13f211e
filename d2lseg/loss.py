"""The training loss (D2L 10.10.5): softmax cross-entropy per pixel, over the class axis, with an ignore label."""
from mxnet import gluon

from . import native
from .palette import IGNORE_INDEX


class SegmentationLoss(native.PerContext, gluon.loss.Loss):
    """Softmax cross-entropy over the class axis of (N, C, H, W) logits, skipping label ``ignore_index``.

    -> (N,) mean over all H*W pixels, so without ignored pixels it equals
    ``SoftmaxCrossEntropyLoss(axis=1)``. On CPUs (``native.enabled``, decided at every call) it runs
    the native fused operator, whose backward recomputes the softmax instead of storing it.
    Otherwise the softmax runs over the last axis of the NHWC transpose, which oneDNN computes
    about 1.7x faster than over axis 1 (same values).
    """

    def __init__(self, ignore_index=IGNORE_INDEX, weight=None, batch_axis=0, **kwargs):
        super().__init__(weight, batch_axis, **kwargs)
        self._ignore_index = ignore_index

    def hybrid_forward(self, F, pred, label):
        if self._batch_axis == 0 and self.native_now(pred):
            return native.softmax_ce(F, pred, label, self._ignore_index)
        logp = F.log_softmax(F.transpose(pred, axes=(0, 2, 3, 1)), axis=-1)
        valid = label != self._ignore_index
        loss = -F.pick(logp, F.where(valid, label, F.zeros_like(label)), axis=-1) * valid
        return F.mean(loss, axis=self._batch_axis, exclude=True)
