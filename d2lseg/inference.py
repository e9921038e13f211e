"""Prediction (D2L 10.10.6): ``predict`` and ``label2image`` as in the chapter, and full-image tiled prediction.

``predict_full`` is the chapter's exercise 4: cover the image with overlapping tiles whose sides are
multiples of 32, sum every tile's logits into the image frame with a coverage count, divide, argmax
(the tiled evaluation of gluoncv's ``MultiEvalModel``).
"""
import weakref

import numpy as np
import mxnet as mx
from mxnet import gluon, nd

from . import kernels
from .errors import D2lsegError
from .kernels import argmax_channel
from .model import OUTPUT_STRIDE
from .upsampling import native_head
from .voc import VOC_COLORMAP, normalize_image


def _ctx0(ctx):
    if ctx is None:
        return mx.cpu()
    return ctx[0] if isinstance(ctx, (list, tuple)) else ctx


def _to_batch(img, ctx):
    """(H, W, 3) uint8 image -> (1, 3, H, W) normalised float32 NDArray on ctx."""
    X = normalize_image(img if isinstance(img, nd.NDArray) else nd.array(np.asarray(img), dtype='uint8'))
    return X.transpose((2, 0, 1)).expand_dims(axis=0).as_in_context(ctx)


_label_graphs = weakref.WeakKeyDictionary()  # net -> its label graph (shares the net's parameters)


def label_graph(net):
    """A hybridised block computing ``argmax_channel(net(x))`` with the final upsampling and the argmax
    fused (``kernels``' ``d2lseg_upsample_argmax``): the (N, C, H, W) scores are never written.

    net: any block with ``upsample`` (a ``FastUpsampling`` that ``uses_native()``) and
    ``coarse_scores(x)``, i.e. ``build_fcn(..., fast_upsampling=True)`` on a CPU, any variant, and
    ``quantization.quantize``'s INT8 fcn32s; otherwise None. Made once per net; later parameter
    updates are seen (the parameters are shared), a net changed in structure is not.
    """
    up = native_head(net)
    if up is None:
        return None
    graph = _label_graphs.get(net)
    if graph is None:
        data = mx.sym.var('data', dtype='float32')
        out = mx.sym.d2lseg_upsample_argmax(net.coarse_scores(data), up.weight.var(), up.bias.var(),
                                             stride=up.stride)
        graph = gluon.SymbolBlock(out, data, params=net.collect_params())
        graph.hybridize(static_alloc=True, static_shape=True)
        _label_graphs[net] = graph
    return graph


def predict_batch(net, X):
    """Class per pixel of a normalised batch: (N, 3, H, W) -> (N, H, W) float32, ``argmax_channel(net(X))``.

    On CPUs, for the nets ``label_graph`` accepts, the upsampling and the argmax run as one operator
    (the same values: tests/test_kernels.py).
    """
    graph = label_graph(net) if kernels.usable(X.context) else None
    return graph(X) if graph is not None else argmax_channel(net(X))


def predict(net, img, ctx=None):
    """Class indices of one image: normalise, forward, argmax over channels.

    img: (H, W, 3) uint8 (H, W multiples of 32) -> (H, W) float32 NDArray. Source: D2L 10.10.6.
    """
    pred = predict_batch(net, _to_batch(img, _ctx0(ctx)))
    return pred.reshape((pred.shape[1], pred.shape[2]))


def label2image(pred, ctx=None):
    """Colour image of class indices through ``VOC_COLORMAP``: (H, W) -> (H, W, 3) uint8. Source: D2L 10.10.6."""
    if not isinstance(pred, nd.NDArray):
        pred = nd.array(np.asarray(pred))
    colormap = nd.array(VOC_COLORMAP, ctx=pred.context if ctx is None else _ctx0(ctx), dtype='uint8')
    X = pred.astype('int32').as_in_context(colormap.context)
    return colormap[X, :]


def tile_starts(length, tile):
    """Start offsets of tiles of size ``tile`` covering [0, length), evenly overlapping, first 0, last length-tile."""
    if length <= tile:
        return [0]
    n = int(np.ceil((length - tile) / tile)) + 1
    return sorted({int(round(i * (length - tile) / (n - 1))) for i in range(n)})


def predict_logits_full(net, img, tile=(320, 480), ctx=None, batch_size=4):
    """Averaged logits over overlapping tiles: (H, W, 3) uint8 image -> (C, H, W) float32 numpy.

    Images smaller than a tile are padded with zeros in normalised space (the mean colour).
    """
    th, tw = tile
    if th % OUTPUT_STRIDE or tw % OUTPUT_STRIDE or th <= 0 or tw <= 0:
        raise D2lsegError(f"tile {th}x{tw}: sides must be positive multiples of {OUTPUT_STRIDE}")
    ctx = _ctx0(ctx)
    X = _to_batch(img, ctx)[0]
    _, H, W = X.shape
    ph, pw = max(H, th), max(W, tw)
    if (ph, pw) != (H, W):
        X = nd.concat(X, nd.zeros((3, ph - H, W), ctx=ctx), dim=1) if ph > H else X
        X = nd.concat(X, nd.zeros((3, ph, pw - W), ctx=ctx), dim=2) if pw > W else X
    boxes = [(y, x) for y in tile_starts(ph, th) for x in tile_starts(pw, tw)]
    logits, count = None, np.zeros((ph, pw), np.float32)
    for i in range(0, len(boxes), batch_size):
        chunk = boxes[i:i + batch_size]
        batch = nd.stack(*[X[:, y:y + th, x:x + tw] for y, x in chunk])
        out = net(batch).asnumpy()
        if logits is None:
            logits = np.zeros((out.shape[1], ph, pw), np.float32)
        for (y, x), o in zip(chunk, out):
            logits[:, y:y + th, x:x + tw] += o
            count[y:y + th, x:x + tw] += 1
    assert count.min() >= 1, 'tiling left pixels uncovered'
    return (logits / count)[:, :H, :W]


def predict_full(net, img, tile=(320, 480), ctx=None, batch_size=4):
    """Class indices of a whole image of any size by tiled logit averaging: -> (H, W) int64 numpy.

    For an image exactly one tile in size this equals ``predict``. Source: D2L 10.10 exercise 4.
    """
    return predict_logits_full(net, img, tile, ctx, batch_size).argmax(axis=0)


def eval_images(net, items, cm, ctx=None, full=False, crop=(320, 480), tile=(320, 480)):
    """Update ``cm`` with predictions for (name, image, label) items; returns how many were skipped.

    Crop mode: the chapter's fixed top-left ``crop`` (images smaller than it are skipped).
    Full mode: every whole image through ``predict_full``.
    """
    skipped = 0
    h, w = crop
    for _, img, lab in items:
        if full:
            cm.update(predict_full(net, img, tile, ctx), lab)
        elif img.shape[0] < h or img.shape[1] < w:
            skipped += 1
        else:
            cm.update(predict(net, img[:h, :w], ctx), lab[:h, :w])
    return skipped


def read_image(path):
    """An image file as (H, W, 3) uint8, or a D2lsegError naming the file."""
    from PIL import Image
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert('RGB'))
    except FileNotFoundError:
        raise D2lsegError(f"{path}: no such file") from None
    except Exception as e:
        raise D2lsegError(f"{path}: not a readable image ({type(e).__name__})") from None


def predict_files(net, paths, out_dir, ctx=None, full=True, tile=(320, 480), int8=False, log=print, calib=None,
                  dtype='float32'):
    """Write ``<stem>_label.png`` and ``<stem>_overlay.png`` per image; returns the number that failed.

    A file that cannot be read is reported on its own line and the rest are still processed.
    int8: predict with ``quantization.quantize(net, ...)``, calibrated on ``calib`` ((H, W, 3) uint8
    images) or, when None, on the first 8 readable images of ``paths`` (tile-sized top-left crops).
    dtype: 'bfloat16' predicts with ``quantization.to_bfloat16(net)``. Nothing is written when the
    network cannot be converted (a one-line D2lsegError).
    """
    import os
    from PIL import Image
    from .quantization import calibration_batch, quantize, to_bfloat16
    from .viz import overlay
    if int8 and dtype != 'float32':
        raise D2lsegError(f'--int8 and --dtype {dtype} exclude each other: choose one')
    if int8:
        if calib is None:
            calib = []
            for path in paths:
                try:
                    calib.append(read_image(path))
                except D2lsegError:
                    continue
                if len(calib) == 8:
                    break
        if len(calib):
            net = quantize(net, calibration_batch(calib, tile), ctx=_ctx0(ctx))
    elif dtype == 'bfloat16':
        net = to_bfloat16(net, _ctx0(ctx))
    os.makedirs(out_dir, exist_ok=True)
    failed = 0
    for path in paths:
        try:
            img = read_image(path)
            if full:
                pred = predict_full(net, img, tile, ctx)
            else:
                h, w = (img.shape[0] // OUTPUT_STRIDE) * OUTPUT_STRIDE, (img.shape[1] // OUTPUT_STRIDE) * OUTPUT_STRIDE
                if not h or not w:
                    raise D2lsegError(f"{path}: smaller than 32x32, too small for --crop (use --full)")
                img = img[:h, :w]
                pred = predict(net, img, ctx).asnumpy()
        except D2lsegError as e:
            log(f'error: {e}')
            failed += 1
            continue
        stem = os.path.splitext(os.path.basename(path))[0]
        Image.fromarray(label2image(pred).asnumpy()).save(os.path.join(out_dir, f'{stem}_label.png'))
        Image.fromarray(overlay(img, pred)).save(os.path.join(out_dir, f'{stem}_overlay.png'))
        log(f'{path}: wrote {out_dir}/{stem}_label.png, {stem}_overlay.png')
    return failed
