"""What the ``d2lseg`` commands do, as functions: train a run folder, evaluate, reproduce (predict: ``photos``).

``cli`` parses arguments and calls these; notebooks and scripts may call them too. Each checks what
it is given before any long work, and writes its files atomically or not at all.
"""
import contextlib
import os
import sys

from . import checkpoint
from .callbacks import (BatchLogger, BestParams, Checkpointer, load_history, print_epoch, run_log, save_final,
                        save_model_info)
from .config import resolve_ctx
from .download import download_voc_pascal
from .engine import fit, prepare, resume_recipe
from .environment import environment, summary
from .errors import D2lsegError
from .images import MAX_PIXELS
from .inference import eval_images
from .kvstore import create_kvstore
from .metrics import ConfusionMatrix
from .mixed import check_dtype
from .model import OUTPUT_STRIDE, build_fcn, load_params
from .classes import ClassList, model_classes, model_inputs
from .progress import bar
from .reference import PUBLISHED_NAMES, compare_baseline, compare_published, fcn_paper_table
from .runfolder import RUN_OUTPUTS, RunFolder, adopt, check_outputs, clear_run, existing_run, writable_file
from .outputs import Output, check_paths, claim, refuse_foreign
from .viz import CurvesCallback, confusion_figure, figure_format
from .voc import iter_split, read_split, split_files, voc_root


def _announce(run, recipe, ctx):
    print(f'training on {ctx}' + (f' (kvstore rank {run.rank} of {run.num_workers} workers)'
                                  if run.num_workers > 1 else '')
          + f': {len(run.train_data)} train / {len(run.val_data)} val images, crop {recipe.crop[0]}x'
          f'{recipe.crop[1]}', flush=True)
    print('machine:', summary(environment(ctx)), flush=True)  # what the figures depend on (history.json too)


def _final_line(history, out):
    first, last = history.get('untrained'), history['epochs'][-1] if history['epochs'] else None
    if last:
        best = history.get('best')
        print(f"final val mIoU {last['val_miou']:.3f}" +
              (f" (untrained network: {first['miou']:.3f})" if first else '') +
              f", val pixel acc {last['test_acc']:.3f}" +
              (f"; best val mIoU {best['val_miou']:.3f} at epoch {best['epoch']} (best.params)" if best else '') +
              f"; wrote {out}/model.params, best.params, history.json, curves.png, train.log")


def run_training(recipe, out, resume=None, progress=True, overwrite=False, data_dir=None, epochs=None,
                 log_interval=0, notes=()):
    """Validate, train with the standard callbacks; write model.params, best.params, history.json,
    curves.png and train.log (everything printed during the run) in ``out``.

    The chief holds ``out`` for the whole run (``runfolder.RunFolder``: a second writer gets one line);
    a fresh run refuses a folder holding another run unless ``overwrite``. With ``resume`` (a run
    folder): ``epochs`` extends it (None: as stored), ``data_dir`` is where its data is now.
    log_interval: also a line every N batches; notes: lines for stderr (and the log).
    -> the history (None when a resumed run had nothing to do)."""
    for note in notes:
        print(note, file=sys.stderr)
    if resume:
        meta = checkpoint.load_meta(resume)
        recipe, out = resume_recipe(resume, recipe, epochs=epochs, data_dir=data_dir, meta=meta), resume
    recipe.ctx, ctx, note = resolve_ctx(recipe.ctx)
    if note:  # e.g. no GPU visible: said now, and kept in train.log with the other notes
        print(note, file=sys.stderr)
        notes = [*notes, note]
    recipe.validate()
    note = check_dtype(recipe.dtype, ctx)  # refused before anything is written; slow (no AMX): said
    if note:
        print(note, file=sys.stderr)
        notes = [*notes, note]
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
        if chief and not resume:
            check_outputs(out, overwrite)
        with run_log(os.path.join(out, 'train.log'), preamble=notes) if chief else contextlib.nullcontext() as log:
            run = prepare(recipe, ctx=ctx, kv=kv, stored=meta.get('history') if resume else None)
            if replace:  # only once data, network and trainer are ready: a failed start keeps the old run
                clear_run(out)
            if chief:  # recorded before they are written: what --overwrite and rotation may remove later
                adopt(out, RUN_OUTPUTS + ((meta['params'], meta['states']) if resume else ()))
            if log is not None:
                log.start()  # what was printed so far, then everything after it
            history = _train(run, recipe, ctx, out, resume, progress and chief, log_interval)
    return history


def _train(run, recipe, ctx, out, resume, progress, log_interval):
    if run.rank == 0:
        _announce(run, recipe, ctx)
    if run.rank == 0:  # what evaluate and predict need, from the start: best.params and checkpoints are usable
        save_model_info(out, recipe, run.classes)
    callbacks = [print_epoch, BestParams(out), Checkpointer(out), CurvesCallback(os.path.join(out, 'curves.png'))]
    history = fit(recipe, callbacks, resume=resume, progress=progress, run=run,
                  batch_callbacks=[BatchLogger(log_interval)] if log_interval else [])
    if run.rank == 0:
        save_final(out, run.net, history)
        _final_line(history, out)
    return history


def load_net(params, variant=None, num_classes=None, ctx=None):
    """A hybridised FCN holding ``params`` (a model.params or checkpoint), for inference -> (net, ClassList);
    the variant and classes from model.json beside it (``classes.model_classes``)."""
    variant, classes = model_classes(params, variant, num_classes)
    net = build_fcn(len(classes), variant, pretrained=False, ctx=ctx, fast_upsampling=True)
    load_params(net, params, ctx)
    net.hybridize(static_alloc=True)
    return net, classes


PROTOCOLS = {
    'published': 'whole images (tiled {tile}); the void border ignored: how published VOC figures are measured',
    'chapter': "top-left {crop} crops (smaller images skipped); the void border counted as background: the "
               "chapter's evaluation",
}


def check_evaluate(out, protocol, crop, plot=None, scales=(1.0,), flip=False, params=None, data_dir=None, split='val',
                   label_dir='SegmentationClass', max_images=None, overwrite=False):
    """What ``evaluate_split`` refuses, checked before the network is loaded: the flags, and the outputs
    (``--json``, ``--plot``): writable, not an input (``params`` and the files beside it, the split's
    list, images and labels), not each other, not a file evaluate did not write unless ``overwrite``."""
    h, w = crop
    if protocol == 'chapter' and (tuple(scales) != (1.0,) or flip):
        raise D2lsegError("--scales/--flip: whole-image evaluation only; drop --chapter-protocol")
    if not scales or not all(0.1 <= s <= 4 for s in scales):
        raise D2lsegError(f"--scales {','.join(map(str, scales))}: scale factors between 0.1 and 4, e.g. 0.75,1,1.25")
    if protocol == 'chapter' and (h <= 0 or w <= 0 or h % OUTPUT_STRIDE or w % OUTPUT_STRIDE):
        raise D2lsegError(f"--crop {h}x{w}: both sides must be positive multiples of {OUTPUT_STRIDE}, e.g. 320x480")
    writable_file(out, '--json')
    outs = [Output.of('--json', out)]
    if plot:
        writable_file(plot, '--plot')
        outs.append(Output.of('--plot', plot))
    inputs = model_inputs(params) if params else []
    if data_dir is not None:
        inputs += split_files(voc_root(data_dir), split, max_images, label_dir)
    check_paths(outs, inputs)
    if plot:
        figure_format(plot, '--plot')
    refuse_foreign(outs, 'evaluate', overwrite)
    return outs


def evaluate_split(net, data_dir, ctx, out, classes=None, protocol='published', crop=(320, 480), max_images=None,
                   progress=True, extra=None, plot=None, tile=(320, 480), scales=(1.0,), flip=False, split='val',
                   label_dir='SegmentationClass', unknown='error', params=None, overwrite=False, max_pixels=MAX_PIXELS):
    """Metrics of ``net`` on the validation split of ``data_dir`` under ``protocol`` (``PROTOCOLS``):
    printed as a table and written to ``out`` (JSON: the protocol, the metrics, per-class IoU, the
    confusion matrix, and ``extra``); ``plot``: the confusion matrix figure. scales / flip: average
    the class scores over resized and mirrored images (published protocol only). params: the network's
    file (an input no output may land on); overwrite: replace an ``out`` or ``plot`` of one's own
    (``check_evaluate``); max_pixels: refuse larger images before decoding them. Nothing is written when
    nothing could be counted. -> the record."""
    outs = check_evaluate(out, protocol, crop, plot, scales, flip, params, data_dir, split, label_dir, max_images,
                          overwrite)
    full = protocol == 'published'
    text = PROTOCOLS[protocol].format(tile='x'.join(map(str, tile)), crop='x'.join(map(str, crop)))
    if tuple(scales) != (1.0,) or flip:
        text += f"; scores averaged over scales {', '.join(f'{s:g}' for s in scales)}" + (' and flips' if flip else '')
    print(f'protocol: {protocol}: {text}')
    classes = classes or ClassList.voc()
    voc_dir = voc_root(data_dir)
    cm = ConfusionMatrix(len(classes))
    total = len(read_split(voc_dir, split=split)[:max_images])
    items = iter_split(voc_dir, ignore_boundary=full, limit=max_images, split=split, label_dir=label_dir,
                       colors=classes.colors, unknown=unknown, max_pixels=max_pixels)
    skipped = eval_images(net, bar(items, progress, total=total, desc='evaluate'), cm, ctx, full=full,
                          crop=tuple(crop), tile=tile, scales=scales, flip=flip)  # one image in memory at a time
    _check_counted(cm, total, skipped, crop, out)
    print(cm.table(list(classes.names)))
    if skipped:
        print(f'{skipped} images smaller than the {crop[0]}x{crop[1]} crop were skipped (the published protocol '
              'evaluates every image whole)')
    record = dict(cm.compute(), protocol=protocol, protocol_text=text, classes=list(classes.names),
                  confusion=cm.mat.tolist(), images=total - skipped, ignore_boundary=full, scales=list(scales),
                  flip=flip, **(extra or {}))
    _write_evaluation(record, outs, out, plot, cm, classes, f'{protocol} protocol, {total - skipped} images')
    return record


def _check_counted(cm, total, skipped, crop, out):
    """One-line D2lsegError when the evaluation counted nothing (every image skipped, or every label pixel
    void): no metrics to write, ``out`` left as it was."""
    if skipped == total:
        raise D2lsegError(f"--crop {crop[0]}x{crop[1]}: every one of the {total} validation images is smaller, nothing "
                          f"was evaluated (and {out} was left as it was); use the published protocol or a smaller --crop")
    if not cm.mat.sum():
        raise D2lsegError(f"every label pixel of the {total - skipped} evaluated images is void (255) or no class: "
                          f"nothing to count, no metrics (and {out} was left as it was); check the labels and "
                          "--label-dir")


def _write_evaluation(record, outs, out, plot, cm, classes, title):
    """The metrics JSON and the confusion figure, recorded as evaluate's outputs, each written whole."""
    for o in outs:
        claim(os.path.dirname(os.path.abspath(o.path)), [os.path.basename(o.path)], 'evaluate')
    try:
        checkpoint.atomic_write_json(out, record)
    except D2lsegError as e:
        raise D2lsegError(f"--json {e}; the metrics are printed above") from None
    print(f'wrote {out}')
    if plot:
        confusion_figure(cm.mat, list(classes.names), title, plot)
        print(f'wrote {plot}')


def reproduce(recipe, out, progress=True, overwrite=False):
    """The chapter's recipe on real VOC2012 (downloaded when missing), then the comparison with the
    published runs -> True when the book's comparison passes."""
    if existing_run(out) and not overwrite:  # before a 2 GB download
        raise D2lsegError(f"--out {out}: holds a run; choose another --out, or replace it with --overwrite")
    download_voc_pascal(recipe.data_folder)
    history = run_training(recipe, out, progress=progress, overwrite=overwrite)
    path = os.path.join(out, 'history.json')
    comparisons = [compare_published(history, target, path=path) for target in ('book', 'd2l-zh-v1')]
    for cmp in comparisons:
        print(cmp.table())
    print(fcn_paper_table())
    return comparisons[0].ok


def compare(history_path, against='book'):
    """Print the comparison of a history.json with a published run ('book', 'd2l-zh-v1', 'all') or a
    baseline file -> True when no figure regressed."""
    history = load_history(history_path)
    targets = ['book', 'd2l-zh-v1'] if against == 'all' else [against]
    ok = True
    for target in targets:
        if target in PUBLISHED_NAMES:
            cmp = compare_published(history, target, path=history_path)
        elif os.path.isfile(target):
            cmp = compare_baseline(history, load_history(target), path=history_path, baseline_path=target)
        else:
            raise D2lsegError(f"--against {target}: not a published run ({', '.join(PUBLISHED_NAMES)}, all) "
                              "nor a baseline file")
        print(cmp.table())
        ok &= cmp.ok
    return ok
