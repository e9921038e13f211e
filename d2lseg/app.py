"""What the ``d2lseg`` commands do, as functions: train a run folder, evaluate, predict files, reproduce.

``cli`` parses arguments and calls these; notebooks and scripts may call them too. Each checks what
it is given before any long work, and writes its files atomically or not at all.
"""
import contextlib
import os
import sys

import mxnet as mx
from PIL import Image

from . import checkpoint
from .callbacks import Checkpointer, print_epoch, save_final
from .config import resolve_ctx
from .download import download_voc_pascal
from .engine import fit, prepare, resume_recipe
from .environment import environment, summary
from .errors import D2lsegError
from .images import read_image
from .inference import eval_images, label2image, predict, predict_full
from .kvstore import create_kvstore
from .metrics import ConfusionMatrix
from .model import OUTPUT_STRIDE, build_fcn, load_params
from .progress import bar
from .quantization import calibration_batch, quantize, to_bfloat16
from .reference import compare_published, fcn_paper_table
from .runfolder import RunFolder, clear_run, existing_run, writable_file, writable_folder
from .viz import CurvesCallback, overlay
from .voc import VOC_SUBDIR, iter_split, read_split


def _announce(run, recipe, ctx):
    print(f'training on {ctx}' + (f' (kvstore rank {run.rank} of {run.num_workers} workers)'
                                  if run.num_workers > 1 else '')
          + f': {len(run.train_data)} train / {len(run.val_data)} val images, crop {recipe.crop[0]}x'
          f'{recipe.crop[1]}', flush=True)
    print('machine:', summary(environment(ctx)), flush=True)  # what the figures depend on (history.json too)


def _final_line(history, out):
    first, last = history.get('untrained'), history['epochs'][-1] if history['epochs'] else None
    if last:
        print(f"final val mIoU {last['val_miou']:.3f}" +
              (f" (untrained network: {first['miou']:.3f})" if first else '') +
              f", val pixel acc {last['test_acc']:.3f}; wrote {out}/model.params, history.json, curves.png")


def run_training(recipe, out, resume=None, progress=True, overwrite=False, data_dir=None, epochs=None):
    """Validate, train with the standard callbacks, write model.params, history.json, curves.png.

    The chief holds ``out`` for the whole run (``runfolder.RunFolder``: a second writer gets one line);
    a fresh run refuses a folder holding another run unless ``overwrite``. With ``resume`` (a run
    folder): ``epochs`` extends it (None: as stored), ``data_dir`` is where its data is now.
    -> the history (None when a resumed run had nothing left to do)."""
    if resume:
        meta = checkpoint.load_meta(resume)
        recipe, out = resume_recipe(resume, recipe, epochs=epochs, data_dir=data_dir, meta=meta), resume
    recipe.ctx, ctx, note = resolve_ctx(recipe.ctx)
    if note:
        print(note, file=sys.stderr)
    recipe.validate()
    if resume and recipe.epochs <= meta['epoch']:
        print(f"nothing to do: {resume} has finished {meta['epoch']} of {recipe.epochs} epochs; --epochs N "
              f"(more than {meta['epoch']}) extends it", file=sys.stderr)
        return None
    kv = create_kvstore(recipe.kvstore) if recipe.kvstore.startswith('dist') else None
    chief = kv is None or kv.rank == 0
    with RunFolder(out, '--resume' if resume else '--out') if chief else contextlib.nullcontext():
        replace = chief and not resume and bool(existing_run(out))
        if replace and not overwrite:
            raise D2lsegError(f"--out {out}: holds a run ({', '.join(existing_run(out)[:3])}); continue it with "
                              f"--resume {out}, choose another --out, or replace it with --overwrite")
        run = prepare(recipe, ctx=ctx, kv=kv)
        if replace:  # only once data, network and trainer are ready: a failed start keeps the old run
            clear_run(out)
        if chief:
            _announce(run, recipe, ctx)
        callbacks = [print_epoch, Checkpointer(out), CurvesCallback(os.path.join(out, 'curves.png'))]
        history = fit(recipe, callbacks, resume=resume, progress=progress and chief, run=run)
        if chief:
            save_final(out, run.net, history)
            _final_line(history, out)
    return history


def load_net(params, variant, num_classes, ctx):
    """A hybridised FCN of ``variant`` holding ``params`` (a model.params or checkpoint), for inference."""
    net = build_fcn(num_classes, variant, pretrained=False, ctx=ctx, fast_upsampling=True)
    load_params(net, params, ctx)
    net.hybridize(static_alloc=True)
    return net


def check_evaluate(out, full, crop):
    """What ``evaluate_split`` refuses, checked before the network is loaded."""
    h, w = crop
    if not full and (h <= 0 or w <= 0 or h % OUTPUT_STRIDE or w % OUTPUT_STRIDE):
        raise D2lsegError(f"--crop {h}x{w}: both sides must be positive multiples of {OUTPUT_STRIDE}, e.g. 320x480")
    writable_file(out, '--json')


def evaluate_split(net, data_dir, ctx, out, num_classes=21, full=False, crop=(320, 480), ignore_boundary=False,
                   max_images=None, progress=True, extra=None):
    """Metrics of ``net`` on the validation split of ``data_dir``: printed as a table and written to
    ``out`` (JSON, with ``extra``). Crop mode skips images smaller than ``crop``. -> the record."""
    check_evaluate(out, full, crop)
    h, w = crop
    voc_dir = os.path.join(data_dir, VOC_SUBDIR)
    cm = ConfusionMatrix(num_classes)
    total = len(read_split(voc_dir, is_train=False)[:max_images])
    items = iter_split(voc_dir, is_train=False, ignore_boundary=ignore_boundary, limit=max_images)
    skipped = eval_images(net, bar(items, progress, total=total, desc='evaluate'), cm, ctx,
                          full=full, crop=tuple(crop))  # one image in memory at a time
    if skipped == total:
        raise D2lsegError(f"--crop {h}x{w}: every one of the {total} validation images is smaller, nothing was "
                          f"evaluated (and {out} was left as it was); use --full or a smaller --crop")
    print(cm.table())
    if skipped:
        print(f'{skipped} images smaller than the {h}x{w} crop were skipped (use --full)')
    record = dict(cm.compute(), mode='full' if full else 'crop', images=total - skipped,
                  ignore_boundary=ignore_boundary, **(extra or {}))
    try:
        checkpoint.atomic_write_json(out, record)
    except OSError as e:
        raise D2lsegError(f"--json {out}: writing the metrics failed ({e.strerror}); they are printed above") from None
    print(f'wrote {out}')
    return record


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


def _predict_image(net, path, ctx, full, tile):
    """-> (image as predicted, class indices (H, W))."""
    img = read_image(path)
    if full:
        return img, predict_full(net, img, tile, ctx)
    h, w = (img.shape[0] // OUTPUT_STRIDE) * OUTPUT_STRIDE, (img.shape[1] // OUTPUT_STRIDE) * OUTPUT_STRIDE
    if not h or not w:
        raise D2lsegError(f"{path}: smaller than 32x32, too small for --crop (use --full)")
    img = img[:h, :w]
    return img, predict(net, img, ctx).asnumpy()


def predict_files(net, paths, out_dir, ctx=None, full=True, tile=(320, 480), int8=False, log=print, calib=None,
                  dtype='float32'):
    """Write ``<stem>_label.png`` and ``<stem>_overlay.png`` per image; returns the number that failed.

    A file that cannot be read is reported on its own line and the rest are still processed.
    int8 / dtype / calib: ``low_precision``. Nothing is written when the network cannot be converted
    (a one-line D2lsegError).
    """
    ctx = ctx or mx.cpu()
    net = low_precision(net, paths, ctx, tile, int8, dtype, calib)
    writable_folder(out_dir, '--out')
    failed = 0
    for path, stem in zip(paths, output_stems(paths)):
        try:
            img, pred = _predict_image(net, path, ctx, full, tile)
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


def reproduce(recipe, out, progress=True, overwrite=False):
    """The chapter's recipe on real VOC2012 (downloaded when missing), then the comparison with the
    published runs -> True when the book's comparison passes."""
    if existing_run(out) and not overwrite:  # before a 2 GB download
        raise D2lsegError(f"--out {out}: holds a run; choose another --out, or replace it with --overwrite")
    download_voc_pascal(recipe.data_dir)
    history = run_training(recipe, out, progress=progress, overwrite=overwrite)
    path = os.path.join(out, 'history.json')
    comparisons = [compare_published(history, target, path=path) for target in ('book', 'd2l-zh-v1')]
    for cmp in comparisons:
        print(cmp.table())
    print(fcn_paper_table())
    return comparisons[0].ok
