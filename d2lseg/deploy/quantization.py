"""Low-precision inference of a trained FCN with MXNet's oneDNN backend (CPU only): INT8 and bfloat16.

``quantize`` calibrates activation ranges on a few normalised image batches and returns an INT8
network: convolutions (with their batch norms and ReLUs fused), pooling and activations run in INT8;
the final transposed convolution (the upsampling) stays float32 (with the native kernels, the float
network's own layer, which prediction fuses with the argmax). Calibration data: any
images like those predicted, e.g. crops of training images (``calibration_batch``) or, as
``d2lseg predict --int8`` does by default, the images being predicted. Source: MXNet 1.9
``mxnet.contrib.quantization.quantize_net`` (oneDNN INT8 inference).

``to_bfloat16`` converts the network to bfloat16 (``mxnet.contrib.amp.convert_hybrid_block``: the
convolutions, batch norms and activations in bfloat16, inputs and outputs float32) with the native
upsampling kept in float32 and fused with the argmax, as for INT8. On CPUs with Intel AMX (which
``startup`` enables) it is the fastest way to predict; without AMX oneDNN emulates bfloat16 on
AVX-512 and it is slower than float32; oneDNN has no bfloat16 convolutions below AVX-512.
"""
import contextlib
import logging
import os
import sys
import warnings

import mxnet as mx
import numpy as np
from mxnet import gluon, nd
from mxnet.contrib import amp
from mxnet.contrib.quantization import quantize_net
from mxnet.gluon import nn

from ..native.environment import onednn_isa
from ..core.constants import CHAPTER_CROP, DTYPES  # noqa: F401 (DTYPES: where callers have found it)
from ..core.errors import D2lsegError
from ..fcn.model import SequentialFCN
from ..data.images import normalize_image



def calibration_batch(images, shape=CHAPTER_CROP, limit=8):
    """Normalised (N, 3, h, w) float32 NDArray of up to ``limit`` images for calibration.

    images: (H, W, 3) uint8 arrays of any size; each is cropped to its top-left ``shape`` and padded
    with the mean colour (zeros after normalisation) when smaller, as ``predict_full`` tiles are.
    """
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
    an fcn32s whose upsampling runs the native kernels, a ``model.SequentialFCN`` of the INT8
    ``SymbolBlock`` and that (float32, shared) upsampling layer, which ``inference.predict_batch``
    fuses with the argmax. Needs MXNet built with oneDNN (the PyPI CPU wheels are) and CPU; ``net``
    is re-hybridised by the call.
    """
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
    logger = logging.getLogger('d2lseg.deploy.quantization')
    # fcn32s (a SequentialFCN): quantize the layers before a native upsampling, keep that after them
    head = net.native_upsample(ctx) if isinstance(net, SequentialFCN) else None
    body = net
    if head is not None:
        body = nn.HybridSequential(prefix=net.prefix)
        body.add(*[net[i] for i in range(len(net) - 1)])
    with _quiet(quiet):
        qnet = quantize_net(body, quantized_dtype='auto', calib_data=data, calib_mode=calib_mode,
                            num_calib_examples=n, ctx=ctx, logger=None if quiet else logger)
    if head is not None:
        qbody, qnet = qnet, SequentialFCN(prefix=net.prefix + 'int8_')
        qnet.add(qbody, head)
    qnet.hybridize(static_alloc=True, static_shape=True)
    return qnet


@contextlib.contextmanager
def _stderr_to_devnull():
    """Send file descriptor 2 (where MXNet's C++ logs go) to /dev/null for the duration."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


class _quiet:
    """Silence the deprecation/type-inference warnings quantize_net emits on every call."""

    def __init__(self, on):
        self.on = on

    def __enter__(self):
        self._ctx = warnings.catch_warnings()
        self._ctx.__enter__()
        if self.on:
            warnings.simplefilter('ignore')

    def __exit__(self, *exc):
        return self._ctx.__exit__(*exc)


def check_bfloat16(ctx=None):
    """Raise a one-line D2lsegError unless bfloat16 convolutions run on ``ctx`` (a CPU whose oneDNN has them)."""
    ctx = ctx or mx.cpu()
    if ctx.device_type != 'cpu':
        raise D2lsegError(f'--dtype bfloat16: bfloat16 (training and inference) uses oneDNN and runs on the CPU only, '
                          f'not {ctx}; use float32 on GPUs')
    probe = nn.Conv2D(4, 3, in_channels=4)
    probe.initialize(mx.init.One(), ctx=ctx)  # draws no random numbers: a seeded run is unchanged by the check
    probe.hybridize()
    x = nd.ones((1, 4, 8, 8), ctx=ctx)
    probe(x)
    try:
        with _quiet(True), _stderr_to_devnull():  # MXNet logs the failure on stderr before raising it
            amp.convert_hybrid_block(probe, target_dtype='bfloat16', ctx=ctx)(x).wait_to_read()
    except mx.MXNetError:
        raise D2lsegError(f'--dtype bfloat16: oneDNN has no bfloat16 convolutions on this CPU ({onednn_isa()}); '
                          'they need AVX-512 (fast with AMX): use float32 or --int8') from None


def bfloat16_unavailable(ctx=None):
    """Why bfloat16 inference cannot run on ``ctx`` (the one-line message), or None when it can."""
    try:
        check_bfloat16(ctx)
    except D2lsegError as e:
        return str(e)
    return None


def bfloat16_scores(net, data):
    """Symbol: ``net.coarse_scores(data)`` (every layer before the final upsampling) converted to bfloat16 by
    ``mxnet.contrib.amp``: casts in the graph, the parameters' own dtype (float32) unchanged, float32 out."""
    with _quiet(True):
        return amp.convert_symbol(net.coarse_scores(data), target_dtype='bfloat16', data_names=[data.name],
                                  cast_optional_params=False)


def to_bfloat16(net, ctx=None):
    """bfloat16 version of a float32 FCN (any variant): same input and output shapes, float32 in and out.

    When ``net`` ends in a native ``FastUpsampling`` (CPU), what runs before it is converted and that
    (float32, shared) upsampling layer kept after it, in a ``model.SequentialFCN``: ``inference.
    predict_batch`` fuses it with the argmax. The result holds copies of the parameters (later
    training of ``net`` is not seen). Raises D2lsegError where bfloat16 cannot run (``check_bfloat16``).
    """
    ctx = ctx or mx.cpu()
    check_bfloat16(ctx)
    head = net.native_upsample(ctx)
    data = mx.sym.var('data', dtype='float32')
    sym = net.coarse_scores(data) if head is not None else net(data)
    body = gluon.SymbolBlock(sym, data, params=net.collect_params())
    body.hybridize()
    body(nd.zeros((1, 3, 32, 32), ctx=ctx))  # convert_hybrid_block reads the traced graph
    with _quiet(True):
        converted = amp.convert_hybrid_block(body, target_dtype='bfloat16', ctx=ctx)
    if head is None:
        converted.hybridize(static_alloc=True, static_shape=True)
        return converted
    out = SequentialFCN(prefix=net.prefix + 'bf16_')
    out.add(converted, head)
    out.hybridize(static_alloc=True, static_shape=True)
    return out

