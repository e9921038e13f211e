"""What the ``d2lseg`` commands do, as functions: train a run folder, evaluate, predict, reproduce, compare.
About 330 lines: one entry per command (``run_training``, ``evaluate``, ``predict``, ``reproduce``, ``compare``)
with the checks each makes before any long work; the work itself is in engine, photos, inference, reference.

``cli`` parses arguments and calls these; notebooks and scripts may call them too. Each checks what
it is given before any long work, and writes its files atomically or not at all.
"""
import contextlib
import dataclasses
import os
import sys

from ..training import engine
from ..deploy import export, onnxrun
from ..core import outputs
from . import photos, preflight
from ..training.callbacks import (BatchLogger, BestParams, Checkpointer, load_history, print_epoch, run_log,
    save_final, save_model_info)
from ..training.config import resolve_ctx
from ..data.dataspec import DataSpec
from ..data.download import download_voc_pascal
from ..training.engine import fit, prepare
from ..native.environment import environment, summary
from ..core.constants import CHAPTER_CROP, check_sides, crop_text
from ..core.errors import D2lsegError
from ..data.images import MAX_PIXELS, allow_pixels
from ..fcn.inference import eval_images
from ..training.kvstore import create_kvstore
from ..fcn.metrics import ConfusionMatrix
from ..deploy.onnxrun import TILE
from ..deploy.mixed import check_dtype
from ..deploy.quantization import to_bfloat16
from ..fcn.model import build_fcn, load_params
from ..data.classes import ClassList, model_classes, model_inputs
from ..core.progress import bar
from ..training.reference import BANDS, compare_named, compare_published, fcn_paper_table, fitting_bands
from ..core.runfolder import RUN_OUTPUTS, RunFolder, adopt, check_outputs, clear_run, existing_run, writable_file
from ..core.outputs import Output, check_paths, claim, refuse_foreign
from ..fcn.viz import CurvesCallback, confusion_figure, figure_format
from ..data.voc import iter_split, read_split, split_files, synthetic_marker, voc_root

EVALUATED = DataSpec(split='val', max_pixels=MAX_PIXELS)  # evaluate's data by default: the validation list, capped


def _announce(run, recipe, ctx):
    print(f'training on {ctx}' + (f' (kvstore rank {run.rank} of {run.num_workers} workers)'
                                  if run.num_workers > 1 else '')
          + f': {len(run.train_data)} train / {len(run.val_data)} val images, crop {recipe.crop[0]}x'
          f'{recipe.crop[1]}', flush=True)
    print('machine:', summary(environment(ctx)), flush=True)  # what the figures depend on (history.json too)


def _final_line(history, out, crop):
    first, last = history.get('untrained'), history['epochs'][-1] if history['epochs'] else None
    if last:
        best = history.get('best')
        print(f"final val mIoU {last['val_miou']:.3f} on {crop[0]}x{crop[1]} crops of the val images" +
              (f" (untrained network: {first['miou']:.3f})" if first else '') +
              f", val pixel acc {last['test_acc']:.3f}" +
              (f"; best val mIoU {best['val_miou']:.3f} at epoch {best['epoch']} (best.params)" if best else '') +
              f"; wrote {out}/model.params, best.params, history.json, curves.png, train.log; the figure to report: "
              f"d2lseg evaluate --params {out}/model.params (whole images, the published protocol)")


def run_training(recipe, out, resume=None, progress=True, overwrite=False, requested=None, log_interval=0, notes=(),
                 keep_checkpoints=2):
    """Validate, train with the standard callbacks; write model.params, best.params, history.json,
    curves.png and train.log (everything printed during the run) in ``out``.

    The chief holds ``out`` for the whole run (``runfolder.RunFolder``: a second writer gets one line);
    a fresh run refuses a folder holding another run unless ``overwrite``. With ``resume`` (a run
    folder): ``requested`` ({field: value} of ``engine.RESUME_FIELDS``) says how long and where it runs now
    (``engine.resume``); ``recipe`` is not used. ``recipe`` is never changed (a copy is trained).
    log_interval: also a line every N batches; notes: lines for stderr (and the log); keep_checkpoints: how
    many of the last epochs' checkpoints stay (~100 MB each for fcn32s). Nine parameters: what ``d2lseg train``
    takes beside the recipe, each with a default.
    -> the history (None when a resumed run had nothing to do)."""
    for note in notes:
        print(note, file=sys.stderr)
    resumed = engine.resume(resume, requested) if resume else None
    recipe, out = (resumed.recipe, resume) if resume else (recipe, out)
    spec, ctx, note = resolve_ctx(recipe.ctx)
    recipe = dataclasses.replace(recipe, ctx=spec)
    if note:  # e.g. no GPU visible: said now, and kept in train.log with the other notes
        print(note, file=sys.stderr)
        notes = [*notes, note]
    preflight.check(recipe, data=not resume)  # every problem of a new run's configuration at once
    note = check_dtype(recipe.dtype, ctx)  # refused before anything is written; slow (no AMX): said
    if note:
        print(note, file=sys.stderr)
        notes = [*notes, note]
    if resume and recipe.epochs <= resumed.start_epoch:
        print(f"nothing to do: {resume} has finished {resumed.start_epoch} of {recipe.epochs} epochs; --epochs N "
              f"(more than {resumed.start_epoch}) extends it", file=sys.stderr)
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
        meta = resumed.meta if resume else None
        with run_log(os.path.join(out, 'train.log'), preamble=notes) if chief else contextlib.nullcontext() as log:
            run = prepare(recipe, ctx=ctx, kv=kv, stored=meta.get('history') if resume else None)
            if replace:  # only once data, network and trainer are ready: a failed start keeps the old run
                clear_run(out)
            if chief:  # recorded before they are written: what --overwrite and rotation may remove later
                adopt(out, RUN_OUTPUTS + ((meta['params'], meta['states']) if resume else ()))
            if log is not None:
                log.start()  # what was printed so far, then everything after it
            history = _train(run, recipe, ctx, out, resumed, progress and chief,
                             dict(log_interval=log_interval, keep=keep_checkpoints))
    return history


def _train(run, recipe, ctx, out, resume, progress, options):
    """Fit with the standard callbacks; options: log_interval, keep (checkpoints)."""
    if run.rank == 0:
        _announce(run, recipe, ctx)
    if run.rank == 0:  # what evaluate and predict need, from the start: best.params and checkpoints are usable
        save_model_info(out, recipe, run.classes)
    callbacks = [print_epoch, BestParams(out), Checkpointer(out, options['keep']),
                 CurvesCallback(os.path.join(out, 'curves.png'))]
    history = fit(recipe, callbacks, resume=resume, progress=progress, run=run,
                  batch_callbacks=[BatchLogger(options['log_interval'])] if options['log_interval'] else [])
    if run.rank == 0:
        save_final(out, run.net, history)
        _final_line(history, out, recipe.crop)
    return history


def load_net(params, variant=None, num_classes=None, ctx=None):
    """A hybridised FCN holding ``params`` (a model.params or checkpoint), for inference -> (net, ClassList);
    the variant and classes from model.json beside it (``classes.model_classes``)."""
    variant, classes = model_classes(params, variant, num_classes)
    net = build_fcn(len(classes), variant, pretrained=False, ctx=ctx, fast_upsampling=True)
    load_params(net, params, ctx)
    net.hybridize(static_alloc=True)
    return net, classes


def _network_source(spec):
    """Whether an exported model (--onnx) replaces --params -> True for --onnx: one of the two is needed, the
    flags that do not apply to an exported model are refused, and the tile must suit the network."""
    if bool(spec.onnx) == bool(spec.params):
        raise D2lsegError('give --params (a model.params of d2lseg train) or --onnx (a model of d2lseg export), one '
                          'of them')
    h, w = spec.tile
    check_sides(h, w, f"--tile {h}x{w}:", f", e.g. {crop_text()}")
    given = [flag for flag, on in (('--variant', spec.variant), ('--num-classes', spec.num_classes),
                                   ('--dtype bfloat16', spec.dtype != 'float32'), ('--int8', getattr(spec, 'int8', 0)),
                                   ('--tile', tuple(spec.tile) != TILE)) if on]
    if spec.onnx and given:
        raise D2lsegError(f"--onnx {spec.onnx}: {', '.join(given)} do not apply to an exported model (it says its "
                          "variant, classes and tile; ONNX Runtime runs it in float32); drop them")
    return bool(spec.onnx)


def _evaluated(spec, ctx):
    """The network evaluate measures -> (net, ClassList): --params's in MXNet, or --onnx's on ONNX Runtime."""
    if spec.onnx:
        model = onnxrun.Model(spec.onnx)
        return export.OnnxNet(model), ClassList(model.names, model.colors)
    net, classes = load_net(spec.params, spec.variant, spec.num_classes, ctx)
    return (to_bfloat16(net, ctx[0]) if spec.dtype == 'bfloat16' else net), classes


def evaluate(spec):
    """``d2lseg evaluate``: ``spec`` (``specs.EvaluateSpec``) checked before any work, then ``evaluate_split``
    -> the record (also written to --json: eval-PROTOCOL.json beside the model by default)."""
    _network_source(spec)
    model = spec.params or spec.onnx
    out = spec.json or os.path.join(os.path.dirname(os.path.abspath(model)), f'eval-{spec.protocol}.json')
    data = DataSpec(split=spec.split, label_dir=spec.label_dir, unknown=spec.unknown_label, max_images=spec.max_images,
                    max_pixels=spec.max_pixels)
    check_evaluate(out, spec.protocol, spec.crop, spec.plot, spec.scales, spec.flip, model, spec.data_dir, data,
                   spec.overwrite)
    allow_pixels(spec.max_pixels)
    ctx = resolve_ctx(spec.ctx)[1]
    net, classes = _evaluated(spec, ctx)
    return evaluate_split(net, spec.data_dir, ctx[0], out, classes, protocol=spec.protocol, crop=tuple(spec.crop),
                          spec=data, progress=not spec.no_progress, plot=spec.plot, tile=tuple(spec.tile),
                          scales=spec.scales, flip=spec.flip,
                          extra=dict(params=spec.params, onnx=spec.onnx, dtype=spec.dtype, tile=list(spec.tile)),
                          params=model, overwrite=spec.overwrite)


def predict(spec):
    """``d2lseg predict``: ``spec`` (``specs.PredictSpec``) checked before any work (no output replaces a file
    without --overwrite), then ``photos.predict_files`` (or ``onnxrun``'s) -> the number of images that failed."""
    if _network_source(spec):
        allow_pixels(spec.max_pixels)
        return onnxrun.predict_files(spec.onnx, spec.images, spec.out, spec.json, full=not spec.chapter_crop,
                                     overwrite=spec.overwrite, max_pixels=spec.max_pixels)
    calib_dir = spec.calib_data_dir if spec.int8 else None
    photos.plan_outputs(spec.images, spec.out, spec.json, spec.params, spec.overwrite, calib_dir)  # before any work
    allow_pixels(spec.max_pixels)
    ctx = resolve_ctx(spec.ctx)[1]
    net, classes = load_net(spec.params, spec.variant, spec.num_classes, ctx)
    calib = photos.calibration_images(calib_dir) if calib_dir else None
    return photos.predict_files(net, spec.images, spec.out, ctx[0], full=not spec.chapter_crop, tile=tuple(spec.tile),
                                int8=spec.int8, calib=calib, dtype=spec.dtype, json_path=spec.json,
                                warn=photos.training_caveat(spec.params), classes=classes, params=spec.params,
                                overwrite=spec.overwrite, calib_dir=calib_dir, max_pixels=spec.max_pixels)


PROTOCOLS = {
    'published': 'whole images (tiled {tile}); the void border ignored: how published VOC figures are measured',
    'chapter': "top-left {crop} crops (smaller images skipped); the void border counted as background: the "
               "chapter's evaluation",
}


def check_evaluate(out, protocol, crop, plot=None, scales=(1.0,), flip=False, params=None, data_dir=None, spec=None,
                   overwrite=False):
    """What ``evaluate_split`` refuses, checked before the network is loaded: the flags, and the outputs
    (``--json``, ``--plot``): writable, not an input (``params`` and the files beside it, the split's
    list, images and labels), not each other, not a file evaluate did not write unless ``overwrite``. Ten
    parameters: the ones of ``evaluate_split`` that name a check, so the command refuses before loading a network."""
    h, w = crop
    if protocol == 'chapter' and (tuple(scales) != (1.0,) or flip):
        raise D2lsegError("--scales/--flip: whole-image evaluation only; drop --chapter-protocol")
    if not scales or not all(0.1 <= s <= 4 for s in scales):
        raise D2lsegError(f"--scales {','.join(map(str, scales))}: scale factors between 0.1 and 4, e.g. 0.75,1,1.25")
    if protocol == 'chapter':
        check_sides(h, w, f"--crop {h}x{w}:", f", e.g. {crop_text()}")
    writable_file(out, '--json')
    outs = [Output.of('--json', out)]
    if plot:
        writable_file(plot, '--plot')
        outs.append(Output.of('--plot', plot))
    inputs = model_inputs(params) if params else []
    if data_dir is not None:
        spec = spec or EVALUATED
        inputs += split_files(voc_root(data_dir), spec.split, spec.max_images, spec.label_dir)
    check_paths(outs, inputs)
    if plot:
        figure_format(plot, '--plot')
    refuse_foreign(outs, 'evaluate', overwrite, own=False)
    return outs


def evaluate_split(net, data_dir, ctx, out, classes=None, protocol='published', crop=CHAPTER_CROP, spec=None,
                   progress=True, extra=None, plot=None, tile=CHAPTER_CROP, scales=(1.0,), flip=False, params=None,
                   overwrite=False):
    """Metrics of ``net`` on the validation split of ``data_dir`` under ``protocol`` (``PROTOCOLS``):
    printed as a table and written to ``out`` (JSON: the protocol, the metrics, per-class IoU, the
    confusion matrix, and ``extra``); ``plot``: the confusion matrix figure. scales / flip: average
    the class scores over resized and mirrored images (published protocol only). params: the network's
    file (an input no output may land on); overwrite: replace an ``out`` or ``plot`` of one's own
    (``check_evaluate``); spec: what is read (``DataSpec``, default ``EVALUATED``; its colours are the classes',
    its void border the protocol's). Nothing is written when nothing could be counted. -> the record.
    Sixteen parameters, all but four with defaults: the library call for a network in hand (notebook 07 uses it
    with keywords); ``d2lseg evaluate`` reaches it once, through ``evaluate(spec)`` (``specs.EvaluateSpec``)."""
    spec = spec or EVALUATED
    outs = check_evaluate(out, protocol, crop, plot, scales, flip, params, data_dir, spec, overwrite)
    full = protocol == 'published'
    text = PROTOCOLS[protocol].format(tile='x'.join(map(str, tile)), crop='x'.join(map(str, crop)))
    if tuple(scales) != (1.0,) or flip:
        text += f"; scores averaged over scales {', '.join(f'{s:g}' for s in scales)}" + (' and flips' if flip else '')
    print(f'protocol: {protocol}: {text}')
    classes = classes or ClassList.voc()
    voc_dir = voc_root(data_dir)
    cm = ConfusionMatrix(len(classes))
    total = len(read_split(voc_dir, split=spec.split)[:spec.max_images])
    items = iter_split(voc_dir, spec=spec.replace(ignore_boundary=full, colors=classes.colors))
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
    stand_in = ", synthetic set: VOC's names stand in for textured shapes" if synthetic_marker(data_dir) else ''
    _write_evaluation(record, outs, out, plot, cm, classes, f'{protocol} protocol, {total - skipped} images{stand_in}')
    print(f"mIoU {record['miou']:.4f} on {total - skipped} images, {protocol} protocol: " +
          ('the figure to report for this model' if full else "the chapter's measure; the figure to report is the "
           "published protocol's (without --chapter-protocol)"))
    return record


def _check_counted(cm, total, skipped, crop, out):
    """One-line D2lsegError when the evaluation counted nothing (every image skipped, or every label pixel
    void): no metrics to write, ``out`` left as it was."""
    if skipped == total:
        raise D2lsegError(f"--crop {crop[0]}x{crop[1]}: every one of the {total} validation images is smaller, nothing "
                          f"was evaluated (and {out} was left as it was); use the published protocol or a smaller "
                          "--crop")
    if not cm.mat.sum():
        raise D2lsegError(f"every label pixel of the {total - skipped} evaluated images is void (255) or no class: "
                          f"nothing to count, no metrics (and {out} was left as it was); check the labels and "
                          "--label-dir")


def _write_evaluation(record, outs, out, plot, cm, classes, title):
    """The metrics JSON and the confusion figure, recorded as evaluate's outputs, each written whole."""
    for o in outs:
        claim(os.path.dirname(os.path.abspath(o.path)), [os.path.basename(o.path)], 'evaluate')
    try:
        outputs.atomic_write_json(out, record)
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


def compare(history_path, against=None):
    """Print the comparison of a history.json with a named band ('book', 'd2l-zh-v1', 'all', 'demo',
    'regression') or a baseline file; None: the band of the stored recipe the history was made with
    -> True when no figure regressed."""
    history = load_history(history_path)
    if against is None:
        fits = fitting_bands(history)
        if not fits:
            raise D2lsegError(f"{history_path}: made by none of the stored recipes (book, {', '.join(BANDS)}), so "
                              "there is no band to judge it by; give --against FILE (a history.json of the same "
                              "recipe)")
        against = fits[0]
        print(f"against {against}: the stored band of this history's recipe")
    ok = True
    for target in (['book', 'd2l-zh-v1'] if against == 'all' else [against]):
        cmp = compare_named(history, target, history_path)
        print(cmp.table())
        ok &= cmp.ok
    return ok
