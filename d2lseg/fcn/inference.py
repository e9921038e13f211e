"""Prediction (D2L 10.10.6): ``predict`` and ``label2image`` as in the chapter, and full-image tiled prediction.

``predict_full`` is the chapter's exercise 4: cover the image with overlapping tiles whose sides are
multiples of 32, sum every tile's logits into the image frame with a coverage count, divide, argmax
(the tiled evaluation of gluoncv's ``MultiEvalModel``). Both it and the multi-scale ``predict_multiscale``
stream scores by bands of rows, so memory grows with the image's width, not its area.
"""
import weakref

import numpy as np
import mxnet as mx
from mxnet import gluon, nd

from .. import native
from ..core.constants import CHAPTER_CROP, check_sides
from ..core.errors import D2lsegError
from .model import SegmentationNet
from ..data.images import normalize_image
from ..data.pixels import ResizedRows, linear_weights, mix
from ..data.palette import VOC_COLORMAP


def _ctx0(ctx):
    if ctx is None:
        return mx.cpu()
    return ctx[0] if isinstance(ctx, (list, tuple)) else ctx


def _to_batch(img, ctx):
    """(H, W, 3) uint8 image -> (1, 3, H, W) normalised float32 NDArray on ctx."""
    X = normalize_image(img if isinstance(img, nd.NDArray) else nd.array(np.asarray(img), dtype='uint8'))
    return X.transpose((2, 0, 1)).expand_dims(axis=0).as_in_context(ctx)


_label_graphs = weakref.WeakKeyDictionary()  # net -> its label graph (shares the net's parameters)


def label_graph(net, ctx=None):
    """A hybridised block computing ``argmax_channel(net(x))`` on ``ctx`` (default: where ``net``'s
    upsampling lives) with the final upsampling and the argmax fused (``native.upsample_argmax``): the
    (N, C, H, W) scores are never written.

    net: a ``model.SegmentationNet`` whose final upsampling runs natively on ``ctx``, i.e.
    ``build_fcn(..., fast_upsampling=True)`` on a CPU, any variant, and the low-precision networks
    of ``quantization``; otherwise None. Made once per net; later parameter updates are seen (the
    parameters are shared), a net changed in structure is not.
    """
    if not isinstance(net, SegmentationNet):  # e.g. the chapter's own HybridSequential
        return None
    up = net.upsample
    if net.native_upsample(ctx if ctx is not None else up.weight.list_ctx()) is None:
        return None
    graph = _label_graphs.get(net)
    if graph is None:
        data = mx.sym.var('data', dtype='float32')
        out = native.upsample_argmax(net.coarse_scores(data), up)
        graph = gluon.SymbolBlock(out, data, params=net.collect_params())
        graph.hybridize(static_alloc=True, static_shape=True)
        _label_graphs[net] = graph
    return graph


def predict_batch(net, X):
    """Class per pixel of a normalised batch: (N, 3, H, W) -> (N, H, W) float32, ``argmax_channel(net(X))``.

    On CPUs, for the nets ``label_graph`` accepts, the upsampling and the argmax run as one operator
    (the same values: tests/test_kernels.py).
    """
    graph = label_graph(net, X.context)
    return graph(X) if graph is not None else native.argmax_channel(net(X))


def predict(net, img, ctx=None):
    """Class indices of one image: normalise, forward, argmax over channels.

    img: (H, W, 3) uint8 (H, W multiples of 32) -> (H, W) float32 NDArray. Source: D2L 10.10.6.
    """
    h, w = img.shape[:2]
    check_sides(h, w, f"predict: a {h}x{w} image;", " (crop it, as the chapter does, or use predict_full for any size)")
    pred = predict_batch(net, _to_batch(img, _ctx0(ctx)))
    return pred.reshape((pred.shape[1], pred.shape[2]))


def label2image(pred, ctx=None, colormap=None):
    """Colour image of class indices through ``VOC_COLORMAP`` (or ``colormap``, e.g. a ClassList's colors):
    (H, W) -> (H, W, 3) uint8. Source: D2L 10.10.6."""
    colors = VOC_COLORMAP if colormap is None else [list(c) for c in colormap]
    if not isinstance(pred, nd.NDArray):
        pred = nd.array(np.asarray(pred))
    values = pred.asnumpy()
    bad = ~((values >= 0) & (values < len(colors)) & (values == np.floor(values)))  # NaN is bad too
    if bad.any():
        raise D2lsegError(f"label2image: class index {values[bad].flat[0]:g} is not a whole number in "
                          f"[0, {len(colors)})")
    colormap = nd.array(colors, ctx=pred.context if ctx is None else _ctx0(ctx), dtype='uint8')
    X = pred.astype('int32').as_in_context(colormap.context)
    return colormap[X, :]


def tile_starts(length, tile):
    """Start offsets of tiles of size ``tile`` covering [0, length), evenly overlapping, first 0, last length-tile."""
    if length <= tile:
        return [0]
    n = int(np.ceil((length - tile) / tile)) + 1
    return sorted({int(round(i * (length - tile) / (n - 1))) for i in range(n)})


def logit_bands(net, img, tile=CHAPTER_CROP, ctx=None, batch_size=4):
    """Averaged logits over overlapping tiles, streamed top to bottom: yields (y0, y1, (C, y1 - y0, W)
    float32 numpy) for consecutive row bands of an (H, W, 3) uint8 image, each final once yielded.

    Only the rows that tiles still to come may overlap are kept (one tile height, in arrays allocated
    once), and each tile row is normalised when it is needed, so memory grows with the image's width,
    not its area: about (3 + C + 1) x 4 bytes x tile height x W, plus the band handed out and one tile
    batch. Images smaller than a tile are padded with zeros in normalised space (the mean colour).
    """
    th, tw = tile
    check_sides(th, tw, f"tile {th}x{tw}:")
    ctx = _ctx0(ctx)
    H, W = img.shape[:2]
    ph, pw = max(H, th), max(W, tw)
    ys, xs = tile_starts(ph, th), tile_starts(pw, tw)
    acc = cnt = None
    base = 0  # image row of acc's first row: always the start of the tile row being added
    for k, y in enumerate(ys):
        rows = img[y:min(y + th, H)]
        X = _to_batch(rows, ctx)[0] if len(rows) else nd.zeros((3, 0, W), ctx=ctx)
        if X.shape[1:] != (th, pw):  # pad to the tile height and the padded width (zeros = mean colour)
            X = nd.concat(X, nd.zeros((3, th - X.shape[1], X.shape[2]), ctx=ctx), dim=1) if X.shape[1] < th else X
            X = nd.concat(X, nd.zeros((3, th, pw - X.shape[2]), ctx=ctx), dim=2) if X.shape[2] < pw else X
        for i in range(0, len(xs), batch_size):
            chunk = xs[i:i + batch_size]
            out = net(nd.stack(*[X[:, :, x:x + tw] for x in chunk])).asnumpy()
            if acc is None:  # one tile height of rows, allocated once: a tile row starts at acc's first row
                acc, cnt = np.zeros((out.shape[1], th, pw), np.float32), np.zeros((th, pw), np.float32)
            for x, o in zip(chunk, out):
                acc[:, :, x:x + tw] += o
                cnt[:, x:x + tw] += 1
        done = (ys[k + 1] if k + 1 < len(ys) else ph) - base  # rows no later tile touches (at most th)
        assert cnt[:done].min() >= 1, 'tiling left pixels uncovered'
        y1 = min(base + done, H)
        if y1 > base:
            yield base, y1, acc[:, :y1 - base, :W] / cnt[:y1 - base, :W]
        _drop_rows(acc, cnt, done)
        base += done


def _drop_rows(acc, cnt, n):
    """Move the rows after the first ``n`` of ``acc`` (C, R, W) and ``cnt`` (R, W) up by ``n``, in place, and
    zero the freed rows: ``n`` rows at a time, so no copy of the arrays is made."""
    rest = acc.shape[1] - n
    for i in range(0, rest, n):
        m = min(n, rest - i)
        acc[:, i:i + m] = acc[:, n + i:n + i + m]
        cnt[i:i + m] = cnt[n + i:n + i + m]
    acc[:, rest:] = 0
    cnt[rest:] = 0


def predict_logits_full(net, img, tile=CHAPTER_CROP, ctx=None, batch_size=4):
    """Averaged logits over overlapping tiles: (H, W, 3) uint8 image -> (C, H, W) float32 numpy (the
    whole array: C x 4 bytes per pixel; ``predict_full`` streams instead)."""
    return np.concatenate([band for _, _, band in logit_bands(net, img, tile, ctx, batch_size)], axis=1)


def predict_full(net, img, tile=CHAPTER_CROP, ctx=None, batch_size=4, dtype=np.int64):
    """Class indices of a whole image of any size by tiled logit averaging: -> (H, W) numpy of ``dtype``
    (uint8 holds up to 256 classes in an eighth of int64's memory).

    For an image exactly one tile in size this equals ``predict``. Memory is bounded by the image's
    width (``logit_bands``) besides the label map itself. Source: D2L 10.10 exercise 4.
    """
    labels = np.empty(img.shape[:2], dtype)
    for y0, y1, band in logit_bands(net, img, tile, ctx, batch_size):
        labels[y0:y1] = band.argmax(axis=0)
    return labels


def resized_bands(bands, size_in, size_out, chunk=32):
    """Bilinearly resize a stream of row bands, keeping only the input rows still needed.

    bands: (y0, y1, (C, y1 - y0, w)) consecutive bands of a (C, h, w) map, as ``logit_bands`` yields;
    size_in (h, w), size_out (H, W) -> yields (Y0, Y1, (C, Y1 - Y0, W)) consecutive bands of the resized map
    (the values of OpenCV's INTER_LINEAR resize of the whole map), computed ``chunk`` rows at a time."""
    (h, w), (H, W) = size_in, size_out
    r0, r1, rw = linear_weights(H, h)
    c0, c1, cw = linear_weights(W, w)
    buf, base, y = None, 0, 0  # buf holds input rows [base, base + buf.shape[1])
    for _, b1, band in bands:
        buf = band if buf is None else np.concatenate([buf, band], axis=1)
        end = int(np.searchsorted(r1, b1))  # output rows whose source rows have all arrived
        out = np.empty((buf.shape[0], end - y, W), np.float32)
        for a in range(y, end, chunk):
            b = min(a + chunk, end)
            rows = mix(buf[:, r0[a:b] - base], buf[:, r1[a:b] - base], rw[a:b][None, :, None])
            out[:, a - y:b - y] = mix(rows[:, :, c0], rows[:, :, c1], cw)
        keep = int(r0[end]) if end < H else b1  # the first input row a later output row reads
        buf, base = buf[:, keep - base:].copy(), keep  # a copy: the rows passed are freed before the yield
        if end > y:
            yield y, end, out
            y = end


def _variant_bands(net, img, scale, mirrored, tile, ctx):
    """Logit bands of ``img`` resized by ``scale`` (and mirrored), brought back to the image's rows and columns;
    the resized image is made a band of rows at a time (``ResizedRows``), never whole."""
    H, W = img.shape[:2]
    size = (H, W) if scale == 1 else (max(1, round(H * scale)), max(1, round(W * scale)))
    x = ResizedRows(img, size, mirrored) if (size != (H, W) or mirrored) else img
    bands = logit_bands(net, x, tile, ctx)
    if mirrored:
        bands = ((y0, y1, band[:, :, ::-1]) for y0, y1, band in bands)
    return bands if size == (H, W) else resized_bands(bands, size, (H, W))


def _summed(streams):
    """The sum of band streams over the same rows (each consecutive from row 0, cut differently), in bands."""
    iters, pending, y = [iter(s) for s in streams], [None] * len(streams), 0
    while True:
        for i, it in enumerate(iters):
            while pending[i] is None or pending[i].shape[1] == 0:
                nxt = next(it, None)
                if nxt is None:
                    return
                pending[i] = nxt[2]
        n = min(p.shape[1] for p in pending)
        total = pending[0][:, :n].copy()
        for p in pending[1:]:
            total += p[:, :n]
        pending = [p[:, n:] for p in pending]
        yield y, y + n, total
        y += n


def predict_multiscale(net, img, scales=(1.0,), flip=False, tile=CHAPTER_CROP, ctx=None, dtype=np.int64):
    """Class indices of a whole image from its class scores averaged over ``scales`` (the image resized
    bilinearly, each scale's scores resized back) and, with ``flip``, over its mirror image too:
    (H, W, 3) uint8 -> (H, W) of ``dtype``. One scale of 1 without flip is ``predict_full`` exactly.

    Streamed by row bands like ``predict_full``: beyond the resized images and the label map it holds
    scores for bands of rows only (``resized_bands``), never a whole (C, H, W) score map.
    Source: gluoncv ``MultiEvalModel``; mmsegmentation's test-time augmentation."""
    labels = np.empty(img.shape[:2], dtype)
    streams = [_variant_bands(net, img, s, m, tile, ctx) for s in scales for m in ((False, True) if flip else (False,))]
    for y0, y1, total in _summed(streams):
        labels[y0:y1] = total.argmax(axis=0)
    return labels


def _count_by_bands(cm, pred, label, rows=256):
    """``cm.update(pred, label)`` of a whole image ``rows`` rows at a time (its index arrays are 4-5 bytes a pixel)."""
    for y in range(0, pred.shape[0], rows):
        cm.update(pred[y:y + rows], label[y:y + rows])


def eval_images(net, items, cm, ctx=None, full=False, crop=CHAPTER_CROP, tile=CHAPTER_CROP, scales=(1.0,), flip=False):
    """Update ``cm`` with predictions for (name, image, label) items; returns how many were skipped.

    Crop mode: the chapter's fixed top-left ``crop`` (images smaller than it are skipped).
    Full mode: every whole image through ``predict_full`` (``predict_multiscale`` with other
    ``scales`` or ``flip``). Nine parameters, all but three with defaults: the evaluation protocol's settings,
    which notebook 05 and ``bench/memory.py`` pass by keyword.
    """
    skipped = 0
    h, w = crop
    tta = tuple(scales) != (1.0,) or flip
    for _, img, lab in items:  # uint8 labels (at most 255 classes): an eighth of int64's memory
        if full and tta:
            _count_by_bands(cm, predict_multiscale(net, img, scales, flip, tile, ctx, dtype=np.uint8), lab)
        elif full:
            _count_by_bands(cm, predict_full(net, img, tile, ctx, dtype=np.uint8), lab)
        elif img.shape[0] < h or img.shape[1] < w:
            skipped += 1
        else:
            cm.update(predict(net, img[:h, :w], ctx), lab[:h, :w])
    return skipped
