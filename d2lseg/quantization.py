"""Post-training INT8 quantisation of a trained FCN with MXNet's oneDNN backend (CPU inference only).

``quantize`` calibrates activation ranges on a few normalised image batches and returns an INT8
network: convolutions (with their batch norms and ReLUs fused), pooling and activations run in INT8;
the final transposed convolution (the upsampling) stays float32 (with the native kernels, the float
network's own layer, which prediction fuses with the argmax). Calibration data: any
images like those predicted, e.g. crops of training images (``calibration_batch``) or, as
``d2lseg predict --int8`` does by default, the images being predicted. Source: MXNet 1.9
``mxnet.contrib.quantization.quantize_net`` (oneDNN INT8 inference).
"""
import logging

import mxnet as mx
import numpy as np
from mxnet import nd
from mxnet.gluon import nn

from .errors import D2lsegError
from .upsampling import FastHybridSequential, native_head


def calibration_batch(images, shape=(320, 480), limit=8):
    """Normalised (N, 3, h, w) float32 NDArray of up to ``limit`` images for calibration.

    images: (H, W, 3) uint8 arrays of any size; each is cropped to its top-left ``shape`` and padded
    with the mean colour (zeros after normalisation) when smaller, as ``predict_full`` tiles are.
    """
    from .voc import normalize_image
    h, w = shape
    out = []
    for img in list(images)[:limit]:
        x = normalize_image(nd.array(np.asarray(img)[:h, :w], dtype='uint8')).transpose((2, 0, 1))
        full = nd.zeros((3, h, w))
        full[:, :x.shape[1], :x.shape[2]] = x
        out.append(full)
    if not out:
        raise D2lsegError('INT8 calibration needs at least one image')
    return nd.stack(*out)


def quantize(net, calib, calib_mode='naive', batch_size=4, ctx=None, quiet=True):
    """INT8 version of a float32 FCN, calibrated on ``calib`` (N, 3, H, W) normalised images.

    calib_mode: 'naive' (min/max of the activations) or 'entropy' (KL-divergence thresholds).
    -> a hybridised block taking and returning the same shapes as ``net``: a ``SymbolBlock``, or for
    an fcn32s whose upsampling runs the native kernels, a ``FastHybridSequential`` of the INT8
    ``SymbolBlock`` and that (float32, shared) upsampling layer, which ``inference.predict_batch``
    fuses with the argmax. Needs MXNet built with oneDNN (the PyPI CPU wheels are) and CPU; ``net``
    is re-hybridised by the call.
    """
    import os
    from mxnet.contrib.quantization import quantize_net
    os.environ.setdefault('MXNET_SUBGRAPH_VERBOSE', '0')  # no "Subgraph backend MKLDNN is activated" line
    ctx = ctx or mx.cpu()
    if ctx.device_type != 'cpu':
        raise D2lsegError(f'--int8: INT8 inference uses oneDNN and runs on the CPU only, not {ctx}')
    if calib_mode not in ('naive', 'entropy'):
        raise D2lsegError(f"calibration mode {calib_mode!r}: choose naive or entropy")
    calib = calib.as_in_context(ctx)
    n = calib.shape[0]
    batch_size = min(batch_size, n)
    n -= n % batch_size
    data = mx.io.NDArrayIter(data={'data': calib[:n]}, batch_size=batch_size)
    logger = logging.getLogger('d2lseg.quantization')
    head = native_head(net) if isinstance(net, FastHybridSequential) and len(net) else None  # fcn32s
    body = net
    if head is not None:  # quantize what runs before the upsampling, keep the native head after it
        body = nn.HybridSequential(prefix=net.prefix)
        body.add(*[net[i] for i in range(len(net) - 1)])
    with _quiet(quiet):
        qnet = quantize_net(body, quantized_dtype='auto', calib_data=data, calib_mode=calib_mode,
                            num_calib_examples=n, ctx=ctx, logger=None if quiet else logger)
    if head is not None:
        qbody, qnet = qnet, FastHybridSequential(prefix=net.prefix + 'int8_')
        qnet.add(qbody, head)
    qnet.hybridize(static_alloc=True, static_shape=True)
    return qnet


class _quiet:
    """Silence the deprecation/type-inference warnings quantize_net emits on every call."""

    def __init__(self, on):
        self.on = on

    def __enter__(self):
        import warnings
        self._ctx = warnings.catch_warnings()
        self._ctx.__enter__()
        if self.on:
            warnings.simplefilter('ignore')

    def __exit__(self, *exc):
        return self._ctx.__exit__(*exc)
