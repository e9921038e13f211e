"""Predicting image files and folders (``d2lseg predict``): label PNGs in the VOC palette, overlays, a
legend, and what was found in each image, as lines and JSON."""
import contextlib
import os
import sys
from typing import NamedTuple

import mxnet as mx
import numpy as np

from ..core import outputs
from ..core.constants import CHAPTER_CROP, OUTPUT_STRIDE
from ..core.errors import D2lsegError
from ..data.images import MAX_PIXELS, read_image
from ..fcn.inference import predict, predict_full
from ..data.classes import ClassList, model_inputs
from ..data.pixels import label_bands, overlay_bands, write_png
from ..data.photofiles import (IMAGE_SUFFIXES, OUTPUT_SUFFIXES, class_shares, image_files,  # noqa: F401 (re-exported)
                               output_stems, planned_outputs)
from ..deploy.quantization import calibration_batch, quantize, to_bfloat16
from ..core.outputs import check_paths, claim, clean_temporaries, refuse_foreign, write_atomically
from ..core.runfolder import writable_file, writable_folder
from ..core.textfiles import read_json
from ..fcn.viz import legend_figure
from ..data.voc import iter_split, split_files, voc_root


def calibration_images(data_dir):
    """The first 8 training images of ``data_dir/VOCdevkit/VOC2012`` (INT8 calibration, ``--calib-data-dir``)."""
    voc_dir = voc_root(data_dir)
    if not os.path.isdir(voc_dir):
        raise D2lsegError(f"--calib-data-dir {data_dir}: no VOCdevkit/VOC2012 there, nor a VOC-format tree")
    return [img for _, img, _ in iter_split(voc_dir, is_train=True, max_images=8)]


def low_precision(net, paths, ctx, tile=CHAPTER_CROP, int8=False, dtype='float32', calib=None):
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


SYNTHETIC_CAVEAT = 'was trained on the synthetic shapes'


def training_caveat(params):
    """A one-line warning when the run that wrote ``params`` (its history.json beside it) trained on the
    synthetic set or from a random backbone (not fine-tuned with --init-from: ``engine.provenance``), else None."""
    path = os.path.join(os.path.dirname(os.path.abspath(params)), 'history.json')
    try:
        history = read_json(path)
    except D2lsegError:  # none, or not a history: nothing to say about the training
        return None
    recipe = history.get('recipe', {}) if isinstance(history, dict) else None
    if not isinstance(recipe, dict):
        return None
    if recipe.get('synthetic'):
        return (f"{params} {SYNTHETIC_CAVEAT} ({path}): on photographs its classes are not "
                "meaningful; a model trained on Pascal VOC2012 (d2lseg reproduce) segments photos")
    if recipe.get('init_from'):  # fine-tuned from a trained model (history's provenance): no random start
        return None
    if recipe.get('pretrained') is False and not recipe.get('backbone_params'):
        return f"{params} was trained from a random backbone (--no-pretrained, {path}): expect rough results"
    return None


def _predict_image(net, path, ctx, full, tile, log, max_pixels=MAX_PIXELS):
    """-> (image as predicted, class indices (H, W) numpy)."""
    img = read_image(path, max_pixels)
    if full:  # uint8 labels (at most 255 classes): 1 byte per pixel, not int64's 8
        return img, predict_full(net, img, tile, ctx, dtype=np.uint8)
    h, w = (img.shape[0] // OUTPUT_STRIDE) * OUTPUT_STRIDE, (img.shape[1] // OUTPUT_STRIDE) * OUTPUT_STRIDE
    if not h or not w:
        raise D2lsegError(f"{path}: smaller than 32x32, too small for --crop (use --full)")
    if (h, w) != img.shape[:2]:
        log(f"{path}: {img.shape[1]}x{img.shape[0]} cropped to its top-left {w}x{h} (--crop: the chapter's "
            "crop, sides multiples of 32; without it the whole image is predicted)")
    img = img[:h, :w]
    return img, predict(net, img, ctx).asnumpy()


def _write_prediction(img, pred, out_dir, stem, classes):
    """The label PNG (class indices, indexed as VOC's labels) and the overlay, each written whole or not at all,
    band by band (``pixels.write_png``)."""
    write_atomically(os.path.join(out_dir, f'{stem}.png'),
                     lambda tmp: write_png(tmp, label_bands(pred), pred.shape, classes.palette()))
    write_atomically(os.path.join(out_dir, f'{stem}_overlay.png'),  # band by band: no whole-image copy
                     lambda tmp: write_png(tmp, overlay_bands(img, pred, classes.colors), pred.shape))


def _check_out_dir(out_dir, paths):
    outside = os.path.realpath(out_dir)
    if any(os.path.dirname(os.path.realpath(p)) == outside for p in paths):
        raise D2lsegError(f"--out {out_dir}: holds images being predicted, whose names the outputs could take; "
                          "choose another --out")


class Plan(NamedTuple):
    """What ``predict_files`` reads and writes, checked (``plan_outputs``)."""
    paths: list     # the images, in order
    stems: list     # their outputs' name stems (``output_stems``)
    outputs: list   # every output file (``outputs.Output``)


def plan_outputs(images, out_dir, json_path=None, params=None, overwrite=False, calib_dir=None):
    """The images to predict and the files their prediction writes, checked before any work (nothing is
    written): no output is an input (an image, ``params`` and the files beside it, the calibration data)
    or another output, and none replaces a file that d2lseg predict did not write unless ``overwrite``
    (``outputs``). -> a ``Plan``; one-line D2lsegError naming the flag otherwise."""
    paths = image_files(images)
    _check_out_dir(out_dir, paths)
    stems, outs = planned_outputs(paths, out_dir, json_path)
    inputs = [('the image', p) for p in paths] + (model_inputs(params) if params else [])
    if calib_dir:
        inputs += split_files(voc_root(calib_dir), 'train', 8)
    check_paths(outs, inputs)
    refuse_foreign(outs, 'predict', overwrite, own=False)
    return Plan(paths, stems, outs)


def _claim(plan):
    """Record every output in its folder's manifest as predict's (before any is written)."""
    folders = {}
    for out in plan.outputs:
        folder, name = os.path.split(os.path.abspath(out.path))
        folders.setdefault(folder, []).append(name)
    for folder, names in folders.items():
        claim(folder, names, 'predict')
        clean_temporaries(folder)


def predict_files(net, paths, out_dir, ctx=None, full=True, tile=CHAPTER_CROP, int8=False, log=print, calib=None,
                  dtype='float32', json_path=None, warn=None, classes=None, params=None, overwrite=False,
                  calib_dir=None, max_pixels=MAX_PIXELS):
    """Predict image files and folders: per image ``<stem>.png`` (class indices, VOC palette) and
    ``<stem>_overlay.png``, one ``legend.png``, a line of the classes found; -> the number that failed.

    A file that cannot be read is reported on its own line and the rest are still processed.
    int8 / dtype / calib: ``low_precision``. json_path: the same report as JSON. warn: a line to print
    on stderr once the work can start (``training_caveat``). Nothing is written when the network cannot
    be converted or an output would land on an input or on a file predict did not write (``plan_outputs``;
    ``params``: the network's file, ``calib_dir``: the calibration data, inputs; ``overwrite``: replace
    files of one's own); every file is written whole or not at all. classes: the model's (names and
    colours; default VOC's). max_pixels: an image with more is refused before it is decoded.
    Seventeen parameters, all but three with defaults: the library call for a network in hand (tests,
    ``bench/memory.py``); ``d2lseg predict`` reaches it once, through ``app.predict(spec)`` (``specs.PredictSpec``).
    """
    classes = classes or ClassList.voc()
    plan = plan_outputs(paths, out_dir, json_path, params, overwrite, calib_dir)
    ctx = ctx or mx.cpu()
    net = low_precision(net, plan.paths, ctx, tile, int8, dtype, calib)
    writable_folder(out_dir, '--out')
    if json_path:
        writable_file(json_path, '--json')  # after --out exists: the JSON may go into it
    _claim(plan)
    if warn:
        print(f'd2lseg predict: warning: {warn}', file=sys.stderr)
    report = [_predict_one(net, path, stem, out_dir, ctx, full, tile, log, classes, max_pixels)
              for path, stem in zip(plan.paths, plan.stems)]
    found = {name for r in report for name in r.get('classes', ())}
    if found:
        stand_in = bool(warn) and SYNTHETIC_CAVEAT in warn  # VOC's names on synthetic shapes: said on the legend
        legend_figure([classes.names.index(c) for c in found], os.path.join(out_dir, 'legend.png'), classes,
                      'class colours (synthetic stand-ins)' if stand_in else 'class colours')
    if json_path:
        outputs.atomic_write_json(json_path, {'images': report})
    return sum('error' in r for r in report)


def _predict_one(net, path, stem, out_dir, ctx, full, tile, log, classes, max_pixels):
    """Predict one image and write its files -> its entry of the report (with 'error' when it failed). Ten
    parameters: ``predict_files``' settings for every image, passed through."""
    try:
        img, pred = _predict_image(net, path, ctx, full, tile, log, max_pixels)
        _write_prediction(img, pred, out_dir, stem, classes)
    except D2lsegError as e:
        log(f'error: {e}')
        return {'image': path, 'error': str(e)}
    except OSError as e:  # e.g. disk full: say so, go on with the next image
        log(f'error: {path}: writing its output to {out_dir} failed ({e.strerror})')
        return {'image': path, 'error': f'writing failed ({e.strerror})'}
    shares = class_shares(pred, classes.names)
    log(f"{path}: {', '.join(f'{name} {share:.1%}' for name, share in shares.items())} -> "
        f"{os.path.join(out_dir, stem)}.png, {stem}_overlay.png")
    return {'image': path, 'label': os.path.join(out_dir, f'{stem}.png'),
            'overlay': os.path.join(out_dir, f'{stem}_overlay.png'), 'size': list(pred.shape), 'classes': shares}
