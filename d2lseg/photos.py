"""Predicting image files and folders (``d2lseg predict``): label PNGs in the VOC palette, overlays, a
legend, and what was found in each image, as lines and JSON."""
import contextlib
import json
import os
import sys

import mxnet as mx
import numpy as np
from PIL import Image

from . import checkpoint
from .errors import D2lsegError
from .images import read_image, save_label_png
from .inference import predict, predict_full
from .model import OUTPUT_STRIDE
from .classes import ClassList
from .palette import VOC_CLASSES
from .quantization import calibration_batch, quantize, to_bfloat16
from .runfolder import writable_file, writable_folder
from .viz import legend_figure, overlay
from .voc import iter_split, voc_root


def calibration_images(data_dir):
    """The first 8 training images of ``data_dir/VOCdevkit/VOC2012`` (INT8 calibration, ``--calib-data-dir``)."""
    voc_dir = voc_root(data_dir)
    if not os.path.isdir(voc_dir):
        raise D2lsegError(f"--calib-data-dir {data_dir}: no VOCdevkit/VOC2012 there, nor a VOC-format tree")
    return [img for _, img, _ in iter_split(voc_dir, is_train=True, limit=8)]


def low_precision(net, paths, ctx, tile=(320, 480), int8=False, dtype='float32', calib=None):
    """``net`` for prediction: INT8 (calibrated on ``calib`` images, else the first 8 readable of
    ``paths``), bfloat16, or as it is."""
    if int8 and dtype != 'float32':
        raise D2lsegError(f'--int8 and --dtype {dtype} exclude each other: choose one')
    if dtype == 'bfloat16':
        return to_bfloat16(net, ctx)
    if not int8:
        return net
    if calib is None:
        calib = []
        for path in paths:
            with contextlib.suppress(D2lsegError):
                calib.append(read_image(path))
            if len(calib) == 8:
                break
    return quantize(net, calibration_batch(calib, tile), ctx=ctx) if len(calib) else net


IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png', '.bmp', '.gif', '.tif', '.tiff', '.webp')


def image_files(paths):
    """What to predict: every file given, and every image file under every folder given (recursively, in
    sorted order). A folder holding none is a one-line D2lsegError."""
    found = []
    for path in paths:
        if not os.path.isdir(path):
            found.append(path)
            continue
        inside = []
        for folder, subfolders, files in os.walk(path):
            subfolders.sort()
            inside += [os.path.join(folder, f) for f in sorted(files) if f.lower().endswith(IMAGE_SUFFIXES)]
        if not inside:
            raise D2lsegError(f"{path}: a folder holding no image files ({', '.join(IMAGE_SUFFIXES)}); give image "
                              "files or folders holding some")
        found += inside
    return found


def training_caveat(params):
    """A one-line warning when the run that wrote ``params`` (its history.json beside it) trained on the
    synthetic set or without a pretrained backbone, else None."""
    path = os.path.join(os.path.dirname(os.path.abspath(params)), 'history.json')
    try:
        with open(path) as f:
            recipe = json.load(f).get('recipe', {})
    except (OSError, ValueError, AttributeError):
        return None
    if not isinstance(recipe, dict):
        return None
    if recipe.get('synthetic'):
        return (f"{params} was trained on the synthetic shapes ({path}): on photographs its classes are not "
                "meaningful; a model trained on Pascal VOC2012 (d2lseg reproduce) segments photos")
    if recipe.get('pretrained') is False and not recipe.get('backbone_params'):
        return f"{params} was trained from a random backbone (--no-pretrained, {path}): expect rough results"
    return None


def _predict_image(net, path, ctx, full, tile, log):
    """-> (image as predicted, class indices (H, W) numpy)."""
    img = read_image(path)
    if full:
        return img, np.asarray(predict_full(net, img, tile, ctx))
    h, w = (img.shape[0] // OUTPUT_STRIDE) * OUTPUT_STRIDE, (img.shape[1] // OUTPUT_STRIDE) * OUTPUT_STRIDE
    if not h or not w:
        raise D2lsegError(f"{path}: smaller than 32x32, too small for --crop (use --full)")
    if (h, w) != img.shape[:2]:
        log(f"{path}: {img.shape[1]}x{img.shape[0]} cropped to its top-left {w}x{h} (--crop: the chapter's "
            "crop, sides multiples of 32; without it the whole image is predicted)")
    img = img[:h, :w]
    return img, predict(net, img, ctx).asnumpy()


def class_shares(pred, names=tuple(VOC_CLASSES)):
    """{class name: share of the pixels}, largest first, of the classes present in ``pred``."""
    counts = np.bincount(np.asarray(pred, dtype=np.int64).ravel(), minlength=len(names))
    order = np.argsort(-counts, kind='stable')
    return {names[c]: float(counts[c] / counts.sum()) for c in order if counts[c]}


def _write_prediction(img, pred, out_dir, stem, classes):
    save_label_png(pred, os.path.join(out_dir, f'{stem}.png'), classes.palette())  # indexed, as VOC's labels
    Image.fromarray(overlay(img, pred, colors=classes.colors)).save(os.path.join(out_dir, f'{stem}_overlay.png'))


def _check_out_dir(out_dir, paths):
    outside = os.path.realpath(out_dir)
    if any(os.path.dirname(os.path.realpath(p)) == outside for p in paths):
        raise D2lsegError(f"--out {out_dir}: holds images being predicted, whose names the outputs could take; "
                          "choose another --out")


def predict_files(net, paths, out_dir, ctx=None, full=True, tile=(320, 480), int8=False, log=print, calib=None,
                  dtype='float32', json_path=None, warn=None, classes=None):
    """Predict image files and folders: per image ``<stem>.png`` (class indices, VOC palette) and
    ``<stem>_overlay.png``, one ``legend.png``, a line of the classes found; -> the number that failed.

    A file that cannot be read is reported on its own line and the rest are still processed.
    int8 / dtype / calib: ``low_precision``. json_path: the same report as JSON. warn: a line to print
    on stderr once the work can start (``training_caveat``). Nothing is written when the network cannot
    be converted (a one-line D2lsegError). classes: the model's (names and colours; default VOC's).
    """
    classes = classes or ClassList.voc()
    paths = image_files(paths)
    ctx = ctx or mx.cpu()
    net = low_precision(net, paths, ctx, tile, int8, dtype, calib)
    _check_out_dir(out_dir, paths)
    writable_folder(out_dir, '--out')
    if json_path:
        writable_file(json_path, '--json')  # after --out exists: the JSON may go into it
    if warn:
        print(f'd2lseg predict: warning: {warn}', file=sys.stderr)
    report, found = [], set()
    for path, stem in zip(paths, output_stems(paths)):
        try:
            img, pred = _predict_image(net, path, ctx, full, tile, log)
            _write_prediction(img, pred, out_dir, stem, classes)
        except D2lsegError as e:
            log(f'error: {e}')
            report.append({'image': path, 'error': str(e)})
            continue
        except OSError as e:  # e.g. disk full: say so, go on with the next image
            log(f'error: {path}: writing its output to {out_dir} failed ({e.strerror})')
            report.append({'image': path, 'error': f'writing failed ({e.strerror})'})
            continue
        shares = class_shares(pred, classes.names)
        found |= set(shares)
        log(f"{path}: {', '.join(f'{name} {share:.1%}' for name, share in shares.items())} -> "
            f"{os.path.join(out_dir, stem)}.png, {stem}_overlay.png")
        report.append({'image': path, 'label': os.path.join(out_dir, f'{stem}.png'),
                       'overlay': os.path.join(out_dir, f'{stem}_overlay.png'), 'size': list(pred.shape),
                       'classes': shares})
    if found:
        legend_figure([classes.names.index(c) for c in found], os.path.join(out_dir, 'legend.png'), classes)
    if json_path:
        checkpoint.atomic_write_json(json_path, {'images': report})
    return sum('error' in r for r in report)


def output_stems(paths):
    """Output name stems, one per input path, all distinct: the file's stem, or for inputs sharing one
    (``a.jpg a.png``) the name with its extension (``a_jpg``, ``a_png``), numbered if still shared."""
    stems = [os.path.splitext(os.path.basename(p))[0] for p in paths]
    # names the outputs of other images (and the legend) take are not given to an image's own outputs
    stems = [s + '_image' if s.endswith('_overlay') or s == 'legend' else s for s in stems]
    shared = {s for s in stems if stems.count(s) > 1}
    names = [os.path.basename(p).replace('.', '_') if s in shared else s for p, s in zip(paths, stems)]
    seen, out = {}, []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f'{name}-{seen[name]}')
    return out
