"""Prediction (D2L 10.10.6): ``predict`` and ``label2image`` as in the chapter, and full-image tiled prediction.

``predict_full`` is the chapter's exercise 4: cover the image with overlapping tiles whose sides are
multiples of 32, sum every tile's logits into the image frame with a coverage count, divide, argmax
(the tiled evaluation of gluoncv's ``MultiEvalModel``).
"""
import os
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
    h, w = img.shape[:2]
    if h % OUTPUT_STRIDE or w % OUTPUT_STRIDE or not h or not w:
        raise D2lsegError(f"predict: a {h}x{w} image; both sides must be multiples of {OUTPUT_STRIDE} (crop it, "
                          "as the chapter does, or use predict_full for any size)")
    pred = predict_batch(net, _to_batch(img, _ctx0(ctx)))
    return pred.reshape((pred.shape[1], pred.shape[2]))


def label2image(pred, ctx=None):
    """Colour image of class indices through ``VOC_COLORMAP``: (H, W) -> (H, W, 3) uint8. Source: D2L 10.10.6."""
    if not isinstance(pred, nd.NDArray):
        pred = nd.array(np.asarray(pred))
    values = pred.asnumpy()
    bad = ~((values >= 0) & (values < len(VOC_COLORMAP)) & (values == np.floor(values)))  # NaN is bad too
    if bad.any():
        raise D2lsegError(f"label2image: class index {values[bad].flat[0]:g} is not a whole number in "
                          f"[0, {len(VOC_COLORMAP)})")
    colormap = nd.array(VOC_COLORMAP, ctx=pred.context if ctx is None else _ctx0(ctx), dtype='uint8')
    X = pred.astype('int32').as_in_context(colormap.context)
    return colormap[X, :]


def tile_starts(length, tile):
    """Start offsets of tiles of size ``tile`` covering [0, length), evenly overlapping, first 0, last length-tile."""
    if length <= tile:
        return [0]
    n = int(np.ceil((length - tile) / tile)) + 1
    return sorted({int(round(i * (length - tile) / (n - 1))) for i in range(n)})


def logit_bands(net, img, tile=(320, 480), ctx=None, batch_size=4):
    """Averaged logits over overlapping tiles, streamed top to bottom: yields (y0, y1, (C, y1 - y0, W)
    float32 numpy) for consecutive row bands of an (H, W, 3) uint8 image, each final once yielded.

    Only the rows that tiles still to come may overlap are kept, and each tile row is normalised
    when it is needed, so memory grows with the image's width, not its area: about
    (3 + C + 1) x 4 bytes x tile height x W, plus one tile batch. Images smaller than a tile are
    padded with zeros in normalised space (the mean colour).
    """
    th, tw = tile
    if th % OUTPUT_STRIDE or tw % OUTPUT_STRIDE or th <= 0 or tw <= 0:
        raise D2lsegError(f"tile {th}x{tw}: sides must be positive multiples of {OUTPUT_STRIDE}")
    ctx = _ctx0(ctx)
    H, W = img.shape[:2]
    ph, pw = max(H, th), max(W, tw)
    ys, xs = tile_starts(ph, th), tile_starts(pw, tw)
    acc = cnt = None
    base = 0  # image row of acc's first row
    for k, y in enumerate(ys):
        rows = img[y:min(y + th, H)]
        X = _to_batch(rows, ctx)[0] if len(rows) else nd.zeros((3, 0, W), ctx=ctx)
        if X.shape[1:] != (th, pw):  # pad to the tile height and the padded width (zeros = mean colour)
            X = nd.concat(X, nd.zeros((3, th - X.shape[1], X.shape[2]), ctx=ctx), dim=1) if X.shape[1] < th else X
            X = nd.concat(X, nd.zeros((3, th, pw - X.shape[2]), ctx=ctx), dim=2) if X.shape[2] < pw else X
        for i in range(0, len(xs), batch_size):
            chunk = xs[i:i + batch_size]
            out = net(nd.stack(*[X[:, :, x:x + tw] for x in chunk])).asnumpy()
            if acc is None:
                acc, cnt = np.zeros((out.shape[1], 0, pw), np.float32), np.zeros((0, pw), np.float32)
            need = y + th - base - acc.shape[1]
            if need > 0:
                acc = np.concatenate([acc, np.zeros((acc.shape[0], need, pw), np.float32)], axis=1)
                cnt = np.concatenate([cnt, np.zeros((need, pw), np.float32)], axis=0)
            for x, o in zip(chunk, out):
                acc[:, y - base:y - base + th, x:x + tw] += o
                cnt[y - base:y - base + th, x:x + tw] += 1
        done = (ys[k + 1] if k + 1 < len(ys) else ph) - base  # rows no later tile touches
        assert cnt[:done].min() >= 1, 'tiling left pixels uncovered'
        y1 = min(base + done, H)
        if y1 > base:
            yield base, y1, (acc[:, :y1 - base] / cnt[:y1 - base])[:, :, :W]
        acc, cnt, base = acc[:, done:], cnt[done:], base + done


def predict_logits_full(net, img, tile=(320, 480), ctx=None, batch_size=4):
    """Averaged logits over overlapping tiles: (H, W, 3) uint8 image -> (C, H, W) float32 numpy (the
    whole array: C x 4 bytes per pixel; ``predict_full`` streams instead)."""
    return np.concatenate([band for _, _, band in logit_bands(net, img, tile, ctx, batch_size)], axis=1)


def predict_full(net, img, tile=(320, 480), ctx=None, batch_size=4):
    """Class indices of a whole image of any size by tiled logit averaging: -> (H, W) int64 numpy.

    For an image exactly one tile in size this equals ``predict``. Memory is bounded by the image's
    width (``logit_bands``) besides the label map itself. Source: D2L 10.10 exercise 4.
    """
    labels = np.empty(img.shape[:2], np.int64)
    for y0, y1, band in logit_bands(net, img, tile, ctx, batch_size):
        labels[y0:y1] = band.argmax(axis=0)
    return labels


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
    """A photo to predict as (H, W, 3) uint8, the way it is displayed (EXIF orientation applied), read as
    strictly as training images (``voc``: truncated files and 16-bit or float modes refused); a
    one-line D2lsegError naming the file otherwise."""
    from PIL import Image, ImageOps
    from .voc import IMAGE_MODES, _load_strict
    if os.path.isdir(path):
        raise D2lsegError(f"{path}: a folder; give image files (e.g. {os.path.join(path, '*.jpg')})")
    try:
        with Image.open(path) as im:
            _load_strict(im)  # (no end-marker check: phones append video after a photo's JPEG end)
            if im.mode not in IMAGE_MODES + ('1',):
                raise D2lsegError(f"{path}: image of mode {im.mode!r} (e.g. 16-bit) is not supported; save it as "
                                  "an 8-bit RGB image")
            return np.asarray(ImageOps.exif_transpose(im).convert('RGB'))
    except FileNotFoundError:
        raise D2lsegError(f"{path}: no such file") from None
    except D2lsegError:
        raise
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
    from PIL import Image
    from .quantization import calibration_batch, quantize, to_bfloat16
    from .runfolder import writable_folder
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
    writable_folder(out_dir, '--out')
    failed = 0
    for path, stem in zip(paths, output_stems(paths)):
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
        try:
            Image.fromarray(label2image(pred).asnumpy()).save(os.path.join(out_dir, f'{stem}_label.png'))
            Image.fromarray(overlay(img, pred)).save(os.path.join(out_dir, f'{stem}_overlay.png'))
        except OSError as e:  # e.g. disk full: say so, go on with the next image
            log(f'error: {path}: writing its output to {out_dir} failed ({e.strerror})')
            failed += 1
            continue
        log(f'{path}: wrote {out_dir}/{stem}_label.png, {stem}_overlay.png')
    return failed


def output_stems(paths):
    """Output name stems, one per input path, all distinct: the file's stem, or for inputs sharing one
    (``a.jpg a.png``) the name with its extension (``a_jpg``, ``a_png``), numbered if still shared."""
    stems = [os.path.splitext(os.path.basename(p))[0] for p in paths]
    shared = {s for s in stems if stems.count(s) > 1}
    names = [os.path.basename(p).replace('.', '_') if s in shared else s for p, s in zip(paths, stems)]
    seen, out = {}, []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f'{name}-{seen[name]}')
    return out
