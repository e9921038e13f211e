"""The ``d2lseg`` command: synth | train | evaluate | predict | reproduce | compare | launch.

The only module that parses arguments. User errors print one line and exit with code 2.
"""
import argparse
import contextlib
import json
import os
import sys

from . import checkpoint
from .errors import D2lsegError
from .quantization import DTYPES


def _crop(text):
    try:
        h, w = (int(v) for v in text.lower().split('x'))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected HEIGHTxWIDTH, e.g. 320x480") from None
    return h, w


def _positive_int(text):
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a whole number") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"{v}: must be at least 1")
    return v


def _add_backbone_flags(p, defaults):
    g = p.add_mutually_exclusive_group()
    g.add_argument('--pretrained', dest='pretrained', action='store_true', default=defaults.pretrained,
                   help="ImageNet backbone from MXNet's model zoo (downloads; the default)")
    g.add_argument('--no-pretrained', dest='pretrained', action='store_false', help='random backbone')
    g.add_argument('--backbone-params', metavar='FILE', help='backbone weights from a local resnet18_v2 .params file')


def _add_recipe_flags(p, defaults):
    p.add_argument('--data-dir', default=defaults.data_dir, help='folder holding VOCdevkit/VOC2012 (default %(default)s)')
    p.add_argument('--synthetic', action='store_true', help='use (making it when missing) the synthetic set under --data-dir')
    p.add_argument('--crop', type=_crop, default=defaults.crop, help='HEIGHTxWIDTH, multiples of 32 (default 320x480)')
    p.add_argument('--batch-size', type=_positive_int, default=defaults.batch_size,
                   help='images per step, over all contexts (default %(default)s)')
    p.add_argument('--epochs', type=_positive_int, default=None,
                   help=f'default {defaults.epochs}; with --resume, only a larger value extends the stored run')
    p.add_argument('--lr', type=float, default=defaults.lr, help='SGD learning rate (default %(default)s)')
    p.add_argument('--wd', type=float, default=defaults.wd, help='weight decay (default %(default)s)')
    p.add_argument('--momentum', type=float, default=defaults.momentum,
                   help='SGD momentum (default %(default)s: none, as in the chapter)')
    p.add_argument('--variant', default=defaults.variant, help='fcn32s (the chapter), fcn16s or fcn8s')
    _add_backbone_flags(p, defaults)
    p.add_argument('--ctx', default=None, help='cpu, cpu:N, gpu (all) or gpu:0,1 (default: all GPUs, else cpu)')
    p.add_argument('--seed', type=int, default=defaults.seed, help='seed of initialisation, crops and order (default %(default)s)')
    p.add_argument('--lr-schedule', default=defaults.lr_schedule, help='constant (the chapter) or poly')
    p.add_argument('--warmup-epochs', type=float, default=defaults.warmup_epochs,
                   help='linear learning-rate warm-up over this many epochs (default %(default)s: none)')
    p.add_argument('--ignore-boundary', action='store_true', help='label the void border 255 and skip it')
    p.add_argument('--workers', type=int, default=defaults.workers, help='data-loading threads')
    p.add_argument('--max-images', type=_positive_int, default=None, help='use only the first N images per split')
    p.add_argument('--kvstore', default=defaults.kvstore,
                   help="device (one machine), or dist_sync / dist_device_sync under 'd2lseg launch'")


def _recipe_from(args):
    from .training import Recipe, parse_ctx
    if args.ctx:
        parse_ctx(args.ctx)  # an explicitly requested context must exist (the default falls back to cpu)
    return Recipe(data_dir=args.data_dir, synthetic=args.synthetic, crop=tuple(args.crop),
                  batch_size=args.batch_size, epochs=args.epochs or Recipe().epochs, lr=args.lr, wd=args.wd,
                  momentum=args.momentum, variant=args.variant, pretrained=args.pretrained,
                  backbone_params=args.backbone_params, ctx=args.ctx or Recipe().ctx, seed=args.seed,
                  lr_schedule=args.lr_schedule, warmup_epochs=args.warmup_epochs, ignore_boundary=args.ignore_boundary,
                  workers=args.workers, max_images=args.max_images, kvstore=args.kvstore)


def _resolve_ctx_name(recipe):
    import mxnet as mx
    if recipe.ctx == 'gpu' and not mx.context.num_gpus():
        print('no GPU visible to MXNet: training on cpu', file=sys.stderr)
        recipe.ctx = 'cpu'
    return recipe


def run_training(recipe, out, resume=None, progress=True, overwrite=False, data_dir=None):
    """Validate, train with the standard callbacks, write model.params, history.json, curves.png.

    The chief holds ``out`` for the whole run (``runfolder.RunFolder``: a second writer gets one line);
    a fresh run refuses a folder holding another run unless ``overwrite``; ``data_dir``: with ``resume``,
    where the run's data is now. -> the history (None when a resumed run had nothing left to do)."""
    from .environment import environment, summary
    from .runfolder import RunFolder, clear_run, existing_run
    from .training import Checkpointer, fit, parse_ctx, prepare, print_epoch, resume_recipe, save_final
    from .viz import CurvesCallback
    if resume:
        meta = checkpoint.load_meta(resume)
        done = meta['epoch']
        recipe, out = resume_recipe(resume, recipe, data_dir=data_dir, meta=meta), resume
    recipe = _resolve_ctx_name(recipe).validate()
    if resume and recipe.epochs <= done:
        print(f'nothing to do: {resume} has finished {done} of {recipe.epochs} epochs; --epochs N (more '
              f'than {done}) extends it', file=sys.stderr)
        return None
    ctx = parse_ctx(recipe.ctx)
    kv = None
    if recipe.kvstore.startswith('dist'):
        from .distributed import create_kvstore
        kv = create_kvstore(recipe.kvstore)
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
            print(f'training on {ctx}' + (f' (kvstore rank {run.rank} of {run.num_workers} workers)'
                                          if run.num_workers > 1 else '')
                  + f': {len(run.train_data)} train / {len(run.val_data)} val images, crop {recipe.crop[0]}x'
                  f'{recipe.crop[1]}', flush=True)
            print('machine:', summary(environment(ctx)), flush=True)  # what the figures depend on (history.json too)
        callbacks = [print_epoch, Checkpointer(out), CurvesCallback(os.path.join(out, 'curves.png'))]
        history = fit(recipe, callbacks, resume=resume, progress=progress and chief, run=run)
        if chief:
            save_final(out, run.net, history)
            first, last = history.get('untrained'), history['epochs'][-1] if history['epochs'] else None
            if last:
                print(f"final val mIoU {last['val_miou']:.3f}" +
                      (f" (untrained network: {first['miou']:.3f})" if first else '') +
                      f", val pixel acc {last['test_acc']:.3f}; wrote {out}/model.params, history.json, curves.png")
    return history


# What --resume takes from the command line; every other recipe flag (and --out) is the stored run's.
RESUME_FLAGS = {'--epochs', '--ctx', '--workers', '--kvstore', '--data-dir', '--no-progress', '--resume'}


def _full_option(token, options):
    """The option an argparse abbreviation stands for (``--epoch`` -> ``--epochs``), else ``token``."""
    if token in options:
        return token
    matches = [o for o in options if o.startswith(token)]
    return matches[0] if len(matches) == 1 else token


def cmd_train(args):
    recipe = _recipe_from(args)
    data_dir = None
    if args.resume:
        given = [_full_option(a.split('=')[0], args.options) for a in args.argv if a.startswith('--')]
        ignored = sorted({f for f in given if f not in RESUME_FLAGS})
        if ignored:
            print(f"d2lseg train: --resume continues the stored run as it was: ignoring {', '.join(ignored)}",
                  file=sys.stderr)
        if args.epochs is None:
            recipe.epochs = 0  # keep the stored run's epochs
        data_dir = args.data_dir if '--data-dir' in given else None
    run_training(recipe, args.out or os.path.join('runs', recipe.variant), resume=args.resume,
                 progress=not args.no_progress, overwrite=args.overwrite, data_dir=data_dir)
    return 0


def cmd_synth(args):
    from .synthetic import make_synthetic_voc
    path = make_synthetic_voc(args.root, n_train=args.n_train, n_val=args.n_val, seed=args.seed,
                              overwrite=args.overwrite)
    print(path)
    return 0


def _load_net(args, ctx):
    from .model import build_fcn, load_params
    net = build_fcn(args.num_classes, args.variant, pretrained=False, ctx=ctx, fast_upsampling=True)
    load_params(net, args.params, ctx)
    net.hybridize(static_alloc=True)
    return net


def _writable_file(path, flag):
    """One-line D2lsegError unless ``path`` can be written (checked before any work is done)."""
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise D2lsegError(f"{flag} {path}: a folder; give a file name, e.g. {os.path.join(path, 'eval.json')}")
    if not os.path.isdir(folder) or not os.access(folder, os.W_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
        raise D2lsegError(f"{flag} {path}: cannot be written (no such folder, or no permission); choose another {flag}")


def cmd_evaluate(args):
    from .progress import bar
    from .inference import eval_images
    from .metrics import ConfusionMatrix
    from .model import OUTPUT_STRIDE
    from .training import parse_ctx
    from .voc import VOC_SUBDIR, iter_split, read_split
    h, w = args.crop
    if not args.full and (h <= 0 or w <= 0 or h % OUTPUT_STRIDE or w % OUTPUT_STRIDE):
        raise D2lsegError(f"--crop {h}x{w}: both sides must be positive multiples of {OUTPUT_STRIDE}, e.g. 320x480")
    out = args.json or os.path.join(os.path.dirname(os.path.abspath(args.params)),
                                    f"eval-{'full' if args.full else 'crop'}.json")
    _writable_file(out, '--json')
    ctx = parse_ctx(args.ctx)
    net = _load_net(args, ctx)
    if args.dtype == 'bfloat16':
        from .quantization import to_bfloat16
        net = to_bfloat16(net, ctx[0])
    voc_dir = os.path.join(args.data_dir, VOC_SUBDIR)
    cm = ConfusionMatrix(args.num_classes)
    total = len(read_split(voc_dir, is_train=False)[:args.max_images])
    items = iter_split(voc_dir, is_train=False, ignore_boundary=args.ignore_boundary, limit=args.max_images)
    skipped = eval_images(net, bar(items, not args.no_progress, total=total, desc='evaluate'), cm, ctx[0],
                          full=args.full, crop=tuple(args.crop))  # one image in memory at a time
    if skipped == total:
        raise D2lsegError(f"--crop {h}x{w}: every one of the {total} validation images is smaller, nothing was "
                          f"evaluated (and {out} was left as it was); use --full or a smaller --crop")
    result = cm.compute()
    print(cm.table())
    if skipped:
        print(f'{skipped} images smaller than the {args.crop[0]}x{args.crop[1]} crop were skipped (use --full)')
    record = dict(result, mode='full' if args.full else 'crop', images=total - skipped, params=args.params,
                  ignore_boundary=args.ignore_boundary, dtype=args.dtype)
    try:
        checkpoint.atomic_write_json(out, record)
    except OSError as e:
        raise D2lsegError(f"--json {out}: writing the metrics failed ({e.strerror}); they are printed above") from None
    print(f'wrote {out}')
    return 0


def cmd_predict(args):
    from .inference import predict_files
    from .training import parse_ctx
    ctx = parse_ctx(args.ctx)
    net = _load_net(args, ctx)
    calib = None
    if args.int8 and args.calib_data_dir:
        from .voc import VOC_SUBDIR, iter_split
        voc_dir = os.path.join(args.calib_data_dir, VOC_SUBDIR)
        if not os.path.isdir(voc_dir):
            raise D2lsegError(f"--calib-data-dir {args.calib_data_dir}: no VOCdevkit/VOC2012 there")
        calib = [img for _, img, _ in iter_split(voc_dir, is_train=True, limit=8)]
    failed = predict_files(net, args.images, args.out, ctx[0], full=not args.crop, int8=args.int8, calib=calib,
                           dtype=args.dtype)
    return 1 if failed else 0


def cmd_compare(args):
    from .reference import PUBLISHED_NAMES, compare_baseline, compare_published
    from .training import load_history
    history = load_history(args.history)
    targets = ['book', 'd2l-zh-v1'] if args.against == 'all' else [args.against]
    ok = True
    for target in targets:
        if target in PUBLISHED_NAMES:
            cmp = compare_published(history, target, path=args.history)
        elif os.path.isfile(target):
            cmp = compare_baseline(history, load_history(target), path=args.history, baseline_path=target)
        else:
            raise D2lsegError(f"--against {target}: not a published run ({', '.join(PUBLISHED_NAMES)}, all) "
                              "nor a baseline file")
        print(cmp.table())
        ok &= cmp.ok
    return 0 if ok else 1


def cmd_reproduce(args):
    from .reference import compare_published, fcn_paper_table
    from .training import Recipe
    from .runfolder import existing_run
    from .voc import download_voc_pascal
    if existing_run(args.out) and not args.overwrite:  # before a 2 GB download
        raise D2lsegError(f"--out {args.out}: holds a run; choose another --out, or replace it with --overwrite")
    download_voc_pascal(args.data_dir)
    recipe = Recipe(data_dir=args.data_dir, ctx=args.ctx, workers=args.workers, pretrained=args.pretrained,
                    backbone_params=args.backbone_params)
    history = run_training(recipe, args.out, progress=not args.no_progress, overwrite=args.overwrite)
    path = os.path.join(args.out, 'history.json')
    comparisons = [compare_published(history, target, path=path) for target in ('book', 'd2l-zh-v1')]
    for cmp in comparisons:
        print(cmp.table())
    print(fcn_paper_table())
    return 0 if comparisons[0].ok else 1


def cmd_launch(args):
    from .distributed import launch
    command = args.worker_command[1:] if args.worker_command[:1] == ['--'] else args.worker_command
    if not command:
        raise D2lsegError("launch: give the command to run after --, e.g. d2lseg launch -n 2 -- d2lseg train ...")
    return launch(command, num_workers=args.num_workers, num_servers=args.num_servers,
                  hostfile=args.hostfile, port=args.port, timeout=args.timeout,
                  scheduler_host=args.scheduler_host)


class _OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line on stderr (and exit code 2), like D2lsegError's."""

    def error(self, message):
        self.exit(2, f'{self.prog}: error: {message} (see {self.prog} --help)\n')


def build_parser():
    from .training import Recipe
    defaults = Recipe()
    from . import __version__
    parser = _OneLineParser(prog='d2lseg', description='FCN semantic segmentation (D2L 10.10) in MXNet Gluon')
    parser.add_argument('--version', action='version', version=f'd2lseg {__version__}')
    sub = parser.add_subparsers(dest='command', required=True, parser_class=_OneLineParser)

    p = sub.add_parser('synth', help='write the synthetic VOC-format data set')
    p.add_argument('--root', default='data', help='data folder; the tree goes to ROOT/VOCdevkit/VOC2012')
    p.add_argument('--n-train', type=_positive_int, default=600, help='training scenes (default %(default)s)')
    p.add_argument('--n-val', type=_positive_int, default=150, help='validation scenes (default %(default)s)')
    p.add_argument('--seed', type=int, default=0, help='random seed of the scenes (default %(default)s)')
    p.add_argument('--overwrite', action='store_true', help='replace a VOC tree already under --root (default: refuse)')
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser('train', help='train an FCN (the Recipe; flags override its fields)')
    _add_recipe_flags(p, defaults)
    p.add_argument('--out', help='output folder (default runs/VARIANT)')
    p.add_argument('--resume', metavar='DIR', help='continue the run whose checkpoints are in DIR (its stored '
                   'recipe; only --epochs, --ctx, --workers, --kvstore and a moved --data-dir are taken)')
    p.add_argument('--overwrite', action='store_true', help='replace the run already in --out (default: refuse)')
    p.add_argument('--no-progress', action='store_true', help='no progress bars')
    p.set_defaults(func=cmd_train, options=sorted(p._option_string_actions))  # resume names what it ignores

    for name, func, text in (('evaluate', cmd_evaluate, 'metrics of trained parameters on the validation set'),
                             ('predict', cmd_predict, 'colour label and overlay PNGs for images')):
        p = sub.add_parser(name, help=text)
        if name == 'predict':
            p.add_argument('images', nargs='+', metavar='IMAGE', help='image files (JPEG, PNG, ...)')
            p.add_argument('--out', default='predictions', help='output folder (default %(default)s)')
            mode = p.add_mutually_exclusive_group()
            mode.add_argument('--crop', action='store_true', help='predict the top-left crop of sides multiple of 32')
            mode.add_argument('--full', action='store_true', help='whole image by tiled prediction (the default)')
            p.add_argument('--int8', action='store_true',
                           help='INT8-quantised network (oneDNN, CPU), calibrated on the first 8 images given '
                                'or on --calib-data-dir')
            p.add_argument('--calib-data-dir', metavar='DIR',
                           help='with --int8: calibrate on 8 training images of DIR/VOCdevkit/VOC2012')
        else:
            p.add_argument('--data-dir', required=True, help='folder holding VOCdevkit/VOC2012')
            p.add_argument('--full', action='store_true', help='whole images by tiled prediction')
            p.add_argument('--crop', type=_crop, default=(320, 480), help="crop size in crop mode (the chapter's 320x480)")
            p.add_argument('--ignore-boundary', action='store_true', help='skip the void border (label 255) instead '
                           'of counting it as background (the chapter counts it)')
            p.add_argument('--max-images', type=_positive_int, help='only the first N validation images')
            p.add_argument('--json', help='where to write the metrics (default: beside --params)')
        p.add_argument('--params', required=True, help='model.params written by d2lseg train')
        p.add_argument('--variant', default='fcn32s', help='the network the parameters belong to: fcn32s (the '
                       'default), fcn16s or fcn8s')
        p.add_argument('--num-classes', type=_positive_int, default=21, help='classes of the network (default %(default)s)')
        p.add_argument('--ctx', default='cpu', help='cpu (the default), cpu:N, gpu or gpu:0,1')
        p.add_argument('--dtype', choices=DTYPES, default='float32',
                       help='bfloat16: convert the network (oneDNN, CPU; fastest on CPUs with AMX, which d2lseg '
                            'enables; slower than float32 without AMX) (default %(default)s)')
        p.add_argument('--no-progress', action='store_true', help='no progress bar')
        p.set_defaults(func=func)

    p = sub.add_parser('reproduce', help="the chapter's recipe on real VOC2012, then the comparison")
    p.add_argument('--data-dir', default='../data', help='where VOC2012 is downloaded to (default %(default)s)')
    p.add_argument('--ctx', default='gpu', help='gpu (all GPUs, the default), gpu:0,1, or cpu')
    p.add_argument('--workers', type=int, default=4, help='data-loading threads (default %(default)s)')
    p.add_argument('--out', default=os.path.join('runs', 'reproduce'), help='run folder (default %(default)s)')
    p.add_argument('--overwrite', action='store_true', help='replace the run already in --out (default: refuse)')
    _add_backbone_flags(p, defaults)
    p.add_argument('--no-progress', action='store_true', help='no progress bars')
    p.set_defaults(func=cmd_reproduce)

    p = sub.add_parser('compare', help="judge a history.json by the published spread or a stored baseline band")
    p.add_argument('history', help='history.json written by d2lseg train')
    p.add_argument('--against', default='book',
                   help="book (the chapter's run, judged by the published run-to-run spread at epoch 5; the "
                        "default), d2l-zh-v1, all, or a baseline FILE (a band from bench/spread.py, or another "
                        "history.json)")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser('launch', help="start MXNet's parameter-server job (scheduler, servers, workers)")
    p.add_argument('-n', '--num-workers', type=_positive_int, required=True, help='worker processes')
    p.add_argument('-s', '--num-servers', type=_positive_int, default=1, help='server processes (default %(default)s)')
    p.add_argument('--hostfile', help='one host per line; workers and servers are started there over ssh')
    p.add_argument('--port', type=int, default=9091, help='scheduler port (default %(default)s; 0 picks a free one)')
    p.add_argument('--scheduler-host', help="this machine's address the hosts reach (default: found from the route "
                                            "to the first host; 127.0.0.1 without --hostfile)")
    p.add_argument('--timeout', type=float, default=None, help='stop the job after this many seconds')
    p.add_argument('worker_command', nargs=argparse.REMAINDER, metavar='-- COMMAND', help='-- then the worker command')
    p.set_defaults(func=cmd_launch)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return args.func(args)
    except D2lsegError as e:
        print(f'd2lseg {args.command}: error: {e}', file=sys.stderr)
        return getattr(e, 'exit_code', 2)
    except BrokenPipeError:  # output piped into `head` and the like: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print(f'd2lseg {args.command}: interrupted', file=sys.stderr)
        return 130


if __name__ == '__main__':
    sys.exit(main())
