"""Predicting image files and folders (``d2lseg predict``): label PNGs in the VOC palette, overlays, a
legend, and what was found in each image, as lines and JSON."""
import collections
import contextlib
import os
import sys
from typing import NamedTuple

import mxnet as mx
import numpy as np
from PIL import Image

from . import outputs
from .constants import CHAPTER_CROP, OUTPUT_STRIDE
from .errors import D2lsegError
from .images import MAX_PIXELS, read_image, save_label_png
from .inference import predict, predict_full
from .classes import ClassList, model_inputs
from .palette import VOC_CLASSES
from .quantization import calibration_batch, quantize, to_bfloat16
from .outputs import Output, check_paths, claim, clean_temporaries, refuse_foreign, write_atomically
from .runfolder import writable_file, writable_folder
from .textfiles import read_json
from .viz import legend_figure, overlay
from .voc import iter_split, split_files, voc_root


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


def class_shares(pred, names=tuple(VOC_CLASSES), rows=256):
    """{class name: share of the pixels}, largest first, of the classes present in ``pred`` (counted ``rows``
    rows at a time: bincount works on a copy as wide integers)."""
    pred = np.asarray(pred)
    counts = np.zeros(len(names), np.int64)
    for y in range(0, pred.shape[0], rows):
        counts += np.bincount(pred[y:y + rows].astype(np.int64).ravel(), minlength=len(names))[:len(names)]
    order = np.argsort(-counts, kind='stable')
    return {names[c]: float(counts[c] / counts.sum()) for c in order if counts[c]}


def _write_prediction(img, pred, out_dir, stem, classes):
    """The label PNG (class indices, indexed as VOC's labels) and the overlay, each written whole or not at all."""
    write_atomically(os.path.join(out_dir, f'{stem}.png'), lambda tmp: save_label_png(pred, tmp, classes.palette()))
    picture = Image.fromarray(overlay(img, pred, colors=classes.colors))
    write_atomically(os.path.join(out_dir, f'{stem}_overlay.png'), lambda tmp: picture.save(tmp, format='PNG'))


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
    stems = output_stems(paths)
    outs = []
    for path, stem in zip(paths, stems):
        outs += [Output.of('--out', os.path.join(out_dir, f'{stem}.png'), f'the label PNG of {path}', out_dir),
                 Output.of('--out', os.path.join(out_dir, f'{stem}_overlay.png'), f'the overlay of {path}', out_dir)]
    outs.append(Output.of('--out', os.path.join(out_dir, 'legend.png'), 'the legend', out_dir))
    if json_path:
        outs.append(Output.of('--json', json_path))
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
    """Predict one image and write its files -> its entry of the report (with 'error' when it failed)."""
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


OUTPUT_SUFFIXES = ('.png', '_overlay.png')  # the files of one image: STEM.png, STEM_overlay.png


def output_stems(paths, reserved=('legend.png',)):
    """Output name stems, one per input path, whose files (``OUTPUT_SUFFIXES``) are all distinct from each
    other and from ``reserved`` (letter case ignored, as some file systems do): the file's stem, or for
    inputs sharing one (``a.jpg a.png``) the name with its extension (``a_jpg``, ``a_png``), numbered
    (``-2``, ``-3``, ...) while a file name is still taken."""
    stems = [os.path.splitext(os.path.basename(p))[0] for p in paths]
    # names the outputs of other images (and the legend) take are not given to an image's own outputs
    stems = [s + '_image' if s.lower().endswith('_overlay') or s.lower() == 'legend' else s for s in stems]
    counts = collections.Counter(s.lower() for s in stems)
    names = [os.path.basename(p).replace('.', '_') if counts[s.lower()] > 1 else s for p, s in zip(paths, stems)]
    taken, tried, out = {r.lower() for r in reserved}, {}, []
    for name in names:
        k = tried.get(name.lower(), 1)  # where the numbering of this name goes on (many inputs may share it)
        stem = name if k == 1 else f'{name}-{k}'
        while any((stem + suffix).lower() in taken for suffix in OUTPUT_SUFFIXES):
            k += 1
            stem = f'{name}-{k}'
        tried[name.lower()] = k
        taken |= {(stem + suffix).lower() for suffix in OUTPUT_SUFFIXES}
        out.append(stem)
    return out
