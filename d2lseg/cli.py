"""The ``d2lseg`` command: synth | train | evaluate | predict | reproduce | compare | launch | doctor | export.

About 400 lines: one short parser function per subcommand (nine), kept together so every flag is in one
place. The module that parses arguments (onnxcli parses predict/evaluate --onnx where MXNet is missing): the train flags are generated from ``config.Recipe``, the work
is done by ``app``. User errors print one line and exit with code 2.
"""
import argparse
import os
import sys
import typing

from . import app, checkpoint, doctor, export, onnxrun, photos
from .classes import ClassList
from .config import Recipe, help_text, recipe_field, recipe_fields, resolve_ctx
from .errors import D2lsegError
from .images import MAX_PIXELS, allow_pixels
from .launcher import launch
from .quantization import DTYPES, to_bfloat16
from .synthetic import make_synthetic_voc, tree_digest
from .version import __version__
from .voc import DATA_DIR, SYNTHETIC_DIR


def _crop(text):
    try:
        h, w = (int(v) for v in text.lower().split('x'))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected HEIGHTxWIDTH, e.g. 320x480") from None
    return h, w


def _scales(text):
    try:
        return tuple(float(v) for v in text.split(','))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected scale factors separated by commas, e.g. 0.75,1,1.25") \
            from None


def _positive_int(text):
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a whole number") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"{v}: must be at least 1")
    return v


def _add_backbone_flags(p):
    g = p.add_mutually_exclusive_group()
    g.add_argument('--pretrained', dest='pretrained', action='store_true', default=recipe_field('pretrained').default,
                   help=help_text(recipe_field('pretrained')))
    g.add_argument('--no-pretrained', dest='pretrained', action='store_false', help='random backbone')
    g.add_argument('--backbone-params', metavar='FILE', help=help_text(recipe_field('backbone_params')))


def _add_recipe_flags(p):
    """One flag per ``config.Recipe`` field marked ``flag``, its type, default and help from the field."""
    hints = typing.get_type_hints(Recipe)
    for f in recipe_fields(flag=True):
        if f.name in BACKBONE_FIELDS:
            continue
        name, hint, meta = '--' + f.name.replace('_', '-'), hints[f.name], f.metadata
        kw = dict(default=f.default, help=help_text(f))
        if hint is bool:
            kw['action'] = 'store_true'
        elif f.name == 'crop':
            kw['type'] = _crop
        elif meta['positive']:
            kw['type'] = _positive_int
        elif hint in (int, float):
            kw['type'] = hint
        if f.name == 'epochs':
            kw['default'] = None  # with --resume, absent means "as stored"
        p.add_argument(name, *meta['aliases'], **kw)
    _add_backbone_flags(p)


BACKBONE_FIELDS = ('pretrained', 'backbone_params')
def _recipe_from(args):
    values = {f.name: getattr(args, f.name) for f in recipe_fields(flag=True)}
    values['crop'] = tuple(values['crop'])
    values['epochs'] = args.epochs or Recipe().epochs
    return Recipe(**values)


# What --resume takes from the command line; every other recipe flag (and --out) is the stored run's.
RESUME_FLAGS = {'--epochs', '--ctx', '--workers', '--kvstore', '--data-dir', '--no-progress', '--resume',
                '--log-interval'}


def _canonical(token, options):
    """The flag a command-line token names (``--epoch`` -> ``--epochs``, ``-j`` or ``-j2`` -> ``--workers``), else None.
    options: {option string: the flag's first name}."""
    name = token.split('=')[0]
    if not name.startswith('--') and name not in options:  # a short flag with its value attached: -b64, -j2
        name = name[:2]
    matches = [o for o in options if o == name] or [o for o in options if o.startswith(name) and name.startswith('--')]
    return options[matches[0]] if len(matches) == 1 else None


def cmd_train(args):
    recipe = _recipe_from(args)
    data_dir, notes = None, []
    if args.resume:
        given = [f for f in (_canonical(a, args.options) for a in args.argv if a.startswith('-')) if f]
        if '--dtype' in given:
            _same_dtype(args.resume, args.dtype)
        ignored = sorted({f for f in given if f not in RESUME_FLAGS and f != '--dtype'})
        if ignored:
            notes.append(f"d2lseg train: --resume continues the stored run as it was: ignoring {', '.join(ignored)}")
        data_dir = args.data_dir if '--data-dir' in given else None
    app.run_training(recipe, args.out or os.path.join('runs', recipe.variant), resume=args.resume,
                     progress=not args.no_progress, overwrite=args.overwrite, data_dir=data_dir, epochs=args.epochs,
                     log_interval=args.log_interval, notes=notes)
    return 0


def _same_dtype(resume, dtype):
    """--dtype with --resume: the stored run's, or a one-line refusal (a resumed run equals an uninterrupted one)."""
    meta = checkpoint.load_meta(resume)
    stored = meta['recipe'].get('dtype', recipe_field('dtype').metadata['added'])
    if dtype != stored:
        raise D2lsegError(f"--dtype {dtype}: the run in {resume} trains in {stored} and --resume continues it exactly; "
                          "drop --dtype, or start a new run from its weights: --init-from "
                          f"{os.path.join(resume, meta['params'])} "
                          f"--dtype {dtype} (checkpoints load in either dtype)")


def cmd_synth(args):
    path = make_synthetic_voc(args.root, n_train=args.n_train, n_val=args.n_val, seed=args.seed,
                              overwrite=args.overwrite)
    print(path)
    if args.digest:
        print('sha256', tree_digest(args.root))
    return 0


def _onnx(args):
    """Whether an exported model (--onnx) replaces --params: one of the two is needed, and the flags that do not
    apply to an exported model are refused."""
    if bool(args.onnx) == bool(args.params):
        raise D2lsegError('give --params (a model.params of d2lseg train) or --onnx (a model of d2lseg export), one '
                          'of them')
    given = [flag for flag, on in (('--variant', args.variant), ('--num-classes', args.num_classes),
                                   ('--dtype bfloat16', args.dtype != 'float32'), ('--int8', getattr(args, 'int8', 0)))
             if on]
    if args.onnx and given:
        raise D2lsegError(f"--onnx {args.onnx}: {', '.join(given)} do not apply to an exported model (it says its "
                          "variant and classes; ONNX Runtime runs it in float32); drop them")
    return bool(args.onnx)


def _evaluated(args, ctx):
    """The network evaluate measures -> (net, ClassList): --params's in MXNet, or --onnx's on ONNX Runtime."""
    if _onnx(args):
        model = onnxrun.Model(args.onnx)
        return export.OnnxNet(model), ClassList(model.names, model.colors)
    net, classes = app.load_net(args.params, args.variant, args.num_classes, ctx)
    return (to_bfloat16(net, ctx[0]) if args.dtype == 'bfloat16' else net), classes


def cmd_evaluate(args):
    _onnx(args)  # first: --params or --onnx
    protocol = 'chapter' if args.chapter_protocol else 'published'
    model = args.params or args.onnx
    out = args.json or os.path.join(os.path.dirname(os.path.abspath(model)), f'eval-{protocol}.json')
    where = dict(params=model, data_dir=args.data_dir, split=args.split, label_dir=args.label_dir,
                 max_images=args.max_images, overwrite=args.overwrite)
    app.check_evaluate(out, protocol, args.crop, args.plot, args.scales, args.flip, **where)
    allow_pixels(args.max_pixels)
    ctx = resolve_ctx(args.ctx)[1]
    net, classes = _evaluated(args, ctx)
    app.evaluate_split(net, args.data_dir, ctx[0], out, classes, protocol=protocol, crop=tuple(args.crop),
                       max_images=args.max_images, progress=not args.no_progress, plot=args.plot,
                       scales=args.scales, flip=args.flip, split=args.split, label_dir=args.label_dir,
                       unknown=args.unknown_label, extra=dict(params=args.params, onnx=args.onnx, dtype=args.dtype),
                       params=model, overwrite=args.overwrite, max_pixels=args.max_pixels)
    return 0


def cmd_predict(args):
    if _onnx(args):
        allow_pixels(args.max_pixels)
        return 1 if onnxrun.predict_files(args.onnx, args.images, args.out, args.json, full=not args.crop,
                                          overwrite=args.overwrite, max_pixels=args.max_pixels) else 0
    calib_dir = args.calib_data_dir if args.int8 else None
    photos.plan_outputs(args.images, args.out, args.json, args.params, args.overwrite, calib_dir)  # before any work
    allow_pixels(args.max_pixels)
    ctx = resolve_ctx(args.ctx)[1]
    net, classes = app.load_net(args.params, args.variant, args.num_classes, ctx)
    calib = photos.calibration_images(calib_dir) if calib_dir else None
    failed = photos.predict_files(net, args.images, args.out, ctx[0], full=not args.crop, int8=args.int8,
                                  calib=calib, dtype=args.dtype, json_path=args.json,
                                  warn=photos.training_caveat(args.params), classes=classes, params=args.params,
                                  overwrite=args.overwrite, calib_dir=calib_dir, max_pixels=args.max_pixels)
    return 1 if failed else 0


def cmd_export(args):
    export.export_onnx(args.run, args.onnx, args.variant, args.num_classes, overwrite=args.overwrite)
    return 0


def cmd_compare(args):
    return 0 if app.compare(args.history, args.against) else 1


def cmd_reproduce(args):
    recipe = Recipe(data_dir=args.data_dir, ctx=args.ctx, workers=args.workers, pretrained=args.pretrained,
                    backbone_params=args.backbone_params)
    return 0 if app.reproduce(recipe, args.out, progress=not args.no_progress, overwrite=args.overwrite) else 1


def cmd_launch(args):
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
    parser = _OneLineParser(prog='d2lseg', description='FCN semantic segmentation (D2L 10.10) in MXNet Gluon')
    parser.add_argument('--version', action='version', version=f'd2lseg {__version__}')
    sub = parser.add_subparsers(dest='command', required=True, parser_class=_OneLineParser)

    for add in (_synth_parser, _train_parser, _evaluate_parser, _predict_parser, _export_parser, _reproduce_parser,
                _compare_parser, _launch_parser, _doctor_parser):
        add(sub)
    return parser


def _command(sub, name, text):
    """A subcommand whose --help opens with ``text`` (also its line in ``d2lseg --help``)."""
    return sub.add_parser(name, help=text, description=text[0].upper() + text[1:] + '.')


def _synth_parser(sub):
    p = _command(sub, 'synth', 'write the synthetic VOC-format data set')
    p.add_argument('--root', default=SYNTHETIC_DIR, help='where it goes: ROOT/VOCdevkit/VOC2012, with a marker '
                   'that keeps it from being taken for the real VOC2012 (default %(default)s)')
    p.add_argument('--n-train', type=_positive_int, default=600, help='training scenes (default %(default)s)')
    p.add_argument('--n-val', type=_positive_int, default=150, help='validation scenes (default %(default)s)')
    p.add_argument('--seed', type=int, default=0, help='random seed of the scenes (default %(default)s)')
    p.add_argument('--overwrite', action='store_true', help='replace a VOC tree already under --root (default: refuse)')
    p.add_argument('--digest', action='store_true', help='also print the SHA-256 of the set as training reads it (the '
                   'same on every supported Python, numpy and CPU: docs/pythons.md)')
    p.set_defaults(func=cmd_synth)


def _doctor_parser(sub):
    p = _command(sub, 'doctor', 'check this machine for d2lseg: Python, numpy, MXNet, oneDNN, AMX, threads, kernels, '
                 'disk, Chromium; each problem with its fix (exit 1 when something required is missing)')
    p.set_defaults(func=lambda args: doctor.main())


def _train_parser(sub):
    p = _command(sub, 'train', 'train an FCN (the Recipe; flags override its fields)')
    _add_recipe_flags(p)
    p.add_argument('--out', '--output-dir', help='run folder (default runs/VARIANT)')
    p.add_argument('--log-interval', type=_positive_int, default=0, metavar='N',
                   help='also a line every N batches (default: only per epoch); useful in log files')
    p.add_argument('--resume', metavar='DIR', help='continue the run whose checkpoints are in DIR (its stored '
                   'recipe; only --epochs, --ctx, --workers, --kvstore and a moved --data-dir are taken; default: a new run)')
    p.add_argument('--overwrite', action='store_true', help='replace the run already in --out (default: refuse)')
    p.add_argument('--no-progress', action='store_true', help='no progress bars')
    p.set_defaults(func=cmd_train, options={o: a.option_strings[0] for o, a in p._option_string_actions.items()
                                            if o not in ('-h', '--help')})  # resume names what it ignores



def _evaluate_parser(sub):
    p = _command(sub, 'evaluate', 'metrics of trained parameters on the validation set')
    p.add_argument('--data-dir', default=DATA_DIR, help='folder holding VOCdevkit/VOC2012 (default %(default)s)')
    p.add_argument('--chapter-protocol', action='store_true',
                   help="the chapter's evaluation: top-left --crop crops, smaller images skipped, the void border "
                        "as background (default: the published protocol, whole images with the void ignored)")
    p.add_argument('--crop', type=_crop, default=(320, 480),
                   help="with --chapter-protocol: the crop, HEIGHTxWIDTH (default 320x480, the chapter's)")
    p.add_argument('--max-images', type=_positive_int, help='only the first N validation images (default: all)')
    p.add_argument('--json', help='where to write the metrics (default: eval-PROTOCOL.json beside --params)')
    p.add_argument('--plot', metavar='FILE', help='also draw the confusion matrix into FILE (PNG; default: none)')
    p.add_argument('--overwrite', action='store_true', help='replace a --json or --plot file that d2lseg evaluate did '
                   'not write (default: refuse; its own earlier results are replaced)')
    p.add_argument('--scales', type=_scales, default=(1.0,), metavar='S,S,...',
                   help='average the class scores over the image resized by these factors, e.g. 0.75,1,1.25 '
                        '(default 1: one scale)')
    p.add_argument('--flip', action='store_true', help='also average over the mirrored images (default: off)')
    p.add_argument('--split', default='val', help='the list to evaluate, ImageSets/Segmentation/NAME.txt (default '
                   '%(default)s)')
    p.add_argument('--label-dir', default='SegmentationClass', help='the labels\' folder (default %(default)s)')
    p.add_argument('--unknown-label', choices=('error', 'background'), default='error',
                   help='a label value that is no class: error (the default) or background')
    _add_network_flags(p, cmd_evaluate)


def _predict_parser(sub):
    p = _command(sub, 'predict', 'label PNGs (VOC palette), overlays and a legend for images')
    p.add_argument('images', nargs='+', metavar='IMAGE', help='image files, or folders (searched recursively for '
                   '.jpg, .png, ...)')
    p.add_argument('--out', '--output-dir', default='predictions', help='output folder (default %(default)s)')
    p.add_argument('--json', metavar='FILE', help='also write what was found per image as JSON (default: none)')
    p.add_argument('--overwrite', action='store_true', help='replace files in --out (or --json) that d2lseg predict '
                   'did not write (default: refuse; its own earlier outputs are replaced)')
    mode = p.add_mutually_exclusive_group()
    mode.add_argument('--crop', action='store_true', help="predict only the top-left crop with sides multiples of "
                      "32, as the chapter does (a switch here: the size follows from the image; each crop is named)")
    mode.add_argument('--full', action='store_true', help='the whole image by tiled prediction (the default)')
    p.add_argument('--int8', action='store_true',
                   help='INT8-quantised network (oneDNN, CPU), calibrated on the first 8 images given '
                        'or on --calib-data-dir')
    p.add_argument('--calib-data-dir', metavar='DIR',
                   help='with --int8: calibrate on 8 training images of DIR/VOCdevkit/VOC2012 (default: on the first '
                        '8 images given)')
    _add_network_flags(p, cmd_predict)


def _add_network_flags(p, func):
    """The flags evaluate and predict share: which trained network, where it runs, in which precision."""
    p.add_argument('--params', help='model.params written by d2lseg train (default: none; this or --onnx)')
    p.add_argument('--onnx', metavar='FILE', help='instead of --params: a model of d2lseg export, run by ONNX Runtime '
                   '(no MXNet needed: docs/deployment.md) (default: none)')
    p.add_argument('--variant', help='the network the parameters belong to: fcn32s, fcn16s or fcn8s (default: '
                   'from model.json beside --params, else fcn32s)')
    p.add_argument('--num-classes', type=_positive_int, help='classes of the network (default: from model.json '
                   'beside --params, else 21)')
    p.add_argument('--ctx', default='auto', help=help_text(recipe_field('ctx')))
    p.add_argument('--dtype', choices=DTYPES, default='float32',
                   help='bfloat16: convert the network (oneDNN, CPU; fastest on CPUs with AMX, which d2lseg '
                        'enables; slower than float32 without AMX) (default %(default)s)')
    p.add_argument('--no-progress', action='store_true', help='no progress bar')
    p.add_argument('--max-pixels', type=_positive_int, default=MAX_PIXELS, metavar='N',
                   help='refuse images of more pixels, before decoding them (decompression bombs; default %(default)s: '
                        '8000x6000 photos pass; memory: docs/hardening.md)')
    p.set_defaults(func=func)


def _export_parser(sub):
    p = _command(sub, 'export', 'an ONNX model of trained parameters, with MODEL_CARD.md beside it (docs/deployment.md)')
    p.add_argument('run', metavar='RUN_OR_PARAMS', help='a run folder of d2lseg train (its model.params) or a '
                   '.params file')
    p.add_argument('--onnx', required=True, metavar='FILE', help='the .onnx file to write')
    p.add_argument('--variant', help='the network the parameters belong to (default: from model.json beside them, '
                   'else fcn32s)')
    p.add_argument('--num-classes', type=_positive_int, help='classes of the network (default: from model.json '
                   'beside the parameters, else 21)')
    p.add_argument('--overwrite', action='store_true', help='replace a FILE or MODEL_CARD.md that d2lseg export did '
                   'not write (default: refuse; its own earlier outputs are replaced)')
    p.set_defaults(func=cmd_export)


def _reproduce_parser(sub):
    p = _command(sub, 'reproduce', "the chapter's recipe on real VOC2012, then the comparison")
    p.add_argument('--data-dir', default=DATA_DIR, help='where VOC2012 is downloaded to (default %(default)s)')
    p.add_argument('--ctx', default='auto', help=help_text(recipe_field('ctx')))
    p.add_argument('--workers', '-j', type=int, default=4, help="data-loading threads (default %(default)s, train's "
                   "is 2: on GPUs, JPEG decoding of full-size VOC images needs more)")
    p.add_argument('--out', '--output-dir', default=os.path.join('runs', 'reproduce'), help='run folder (default %(default)s)')
    p.add_argument('--overwrite', action='store_true', help='replace the run already in --out (default: refuse)')
    _add_backbone_flags(p)
    p.add_argument('--no-progress', action='store_true', help='no progress bars')
    p.set_defaults(func=cmd_reproduce)


def _compare_parser(sub):
    p = _command(sub, 'compare', "judge a history.json by the published spread or a stored baseline band")
    p.add_argument('history', help='history.json written by d2lseg train')
    p.add_argument('--against', default='book',
                   help="book (the chapter's run, judged by the published run-to-run spread at epoch 5; the "
                        "default), d2l-zh-v1, all, or a baseline FILE (a band from bench/spread.py, or another "
                        "history.json)")
    p.set_defaults(func=cmd_compare)


def _launch_parser(sub):
    p = _command(sub, 'launch', "start MXNet's parameter-server job (scheduler, servers, workers)")
    p.add_argument('-n', '--num-workers', type=_positive_int, required=True, help='worker processes')
    p.add_argument('-s', '--num-servers', type=_positive_int, default=1, help='server processes (default %(default)s)')
    p.add_argument('--hostfile', help='one host per line; workers and servers are started there over ssh (default: '
                   'none, all on this machine)')
    p.add_argument('--port', type=int, default=9091, help='scheduler port (default %(default)s; 0 picks a free one)')
    p.add_argument('--scheduler-host', help="this machine's address the hosts reach (default: found from the route "
                                            "to the first host; 127.0.0.1 without --hostfile)")
    p.add_argument('--timeout', type=float, default=None, help='stop the job after this many seconds (default: none)')
    p.add_argument('worker_command', nargs=argparse.REMAINDER, metavar='-- COMMAND', help='-- then the worker command')
    p.set_defaults(func=cmd_launch)


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
