"""The ``d2lseg`` command: synth | train | evaluate | predict | reproduce | compare | launch.

The only module that parses arguments: the train flags are generated from ``config.Recipe``, the work
is done by ``app``. User errors print one line and exit with code 2.
"""
import argparse
import os
import sys
import typing

from . import app
from .callbacks import load_history
from .config import Recipe, help_text, parse_ctx, recipe_field, recipe_fields
from .errors import D2lsegError
from .launcher import launch
from .quantization import DTYPES, to_bfloat16
from .reference import PUBLISHED_NAMES, compare_baseline, compare_published
from .synthetic import make_synthetic_voc
from .version import __version__
from .voc import VOC_SUBDIR, iter_split


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
        p.add_argument(name, **kw)
    _add_backbone_flags(p)


BACKBONE_FIELDS = ('pretrained', 'backbone_params')
def _recipe_from(args):
    values = {f.name: getattr(args, f.name) for f in recipe_fields(flag=True)}
    values['crop'] = tuple(values['crop'])
    values['epochs'] = args.epochs or Recipe().epochs
    return Recipe(**values)


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
        data_dir = args.data_dir if '--data-dir' in given else None
    app.run_training(recipe, args.out or os.path.join('runs', recipe.variant), resume=args.resume,
                     progress=not args.no_progress, overwrite=args.overwrite, data_dir=data_dir, epochs=args.epochs)
    return 0


def cmd_synth(args):
    path = make_synthetic_voc(args.root, n_train=args.n_train, n_val=args.n_val, seed=args.seed,
                              overwrite=args.overwrite)
    print(path)
    return 0


def cmd_evaluate(args):
    out = args.json or os.path.join(os.path.dirname(os.path.abspath(args.params)),
                                    f"eval-{'full' if args.full else 'crop'}.json")
    app.check_evaluate(out, args.full, args.crop)
    ctx = parse_ctx(args.ctx)
    net = app.load_net(args.params, args.variant, args.num_classes, ctx)
    if args.dtype == 'bfloat16':
        net = to_bfloat16(net, ctx[0])
    app.evaluate_split(net, args.data_dir, ctx[0], out, args.num_classes, full=args.full, crop=tuple(args.crop),
                       ignore_boundary=args.ignore_boundary, max_images=args.max_images,
                       progress=not args.no_progress, extra=dict(params=args.params, dtype=args.dtype))
    return 0


def cmd_predict(args):
    ctx = parse_ctx(args.ctx)
    net = app.load_net(args.params, args.variant, args.num_classes, ctx)
    calib = None
    if args.int8 and args.calib_data_dir:
        voc_dir = os.path.join(args.calib_data_dir, VOC_SUBDIR)
        if not os.path.isdir(voc_dir):
            raise D2lsegError(f"--calib-data-dir {args.calib_data_dir}: no VOCdevkit/VOC2012 there")
        calib = [img for _, img, _ in iter_split(voc_dir, is_train=True, limit=8)]
    failed = app.predict_files(net, args.images, args.out, ctx[0], full=not args.crop, int8=args.int8, calib=calib,
                               dtype=args.dtype)
    return 1 if failed else 0


def cmd_compare(args):
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

    for add in (_synth_parser, _train_parser, _evaluate_parser, _predict_parser, _reproduce_parser, _compare_parser,
                _launch_parser):
        add(sub)
    return parser


def _synth_parser(sub):
    p = sub.add_parser('synth', help='write the synthetic VOC-format data set')
    p.add_argument('--root', default='data', help='data folder; the tree goes to ROOT/VOCdevkit/VOC2012')
    p.add_argument('--n-train', type=_positive_int, default=600, help='training scenes (default %(default)s)')
    p.add_argument('--n-val', type=_positive_int, default=150, help='validation scenes (default %(default)s)')
    p.add_argument('--seed', type=int, default=0, help='random seed of the scenes (default %(default)s)')
    p.add_argument('--overwrite', action='store_true', help='replace a VOC tree already under --root (default: refuse)')
    p.set_defaults(func=cmd_synth)


def _train_parser(sub):
    p = sub.add_parser('train', help='train an FCN (the Recipe; flags override its fields)')
    _add_recipe_flags(p)
    p.add_argument('--out', help='output folder (default runs/VARIANT)')
    p.add_argument('--resume', metavar='DIR', help='continue the run whose checkpoints are in DIR (its stored '
                   'recipe; only --epochs, --ctx, --workers, --kvstore and a moved --data-dir are taken)')
    p.add_argument('--overwrite', action='store_true', help='replace the run already in --out (default: refuse)')
    p.add_argument('--no-progress', action='store_true', help='no progress bars')
    p.set_defaults(func=cmd_train, options=sorted(p._option_string_actions))  # resume names what it ignores



def _evaluate_parser(sub):
    p = sub.add_parser('evaluate', help='metrics of trained parameters on the validation set')
    p.add_argument('--data-dir', required=True, help='folder holding VOCdevkit/VOC2012')
    p.add_argument('--full', action='store_true', help='whole images by tiled prediction')
    p.add_argument('--crop', type=_crop, default=(320, 480), help="crop size in crop mode (the chapter's 320x480)")
    p.add_argument('--ignore-boundary', action='store_true', help='skip the void border (label 255) instead '
                   'of counting it as background (the chapter counts it)')
    p.add_argument('--max-images', type=_positive_int, help='only the first N validation images')
    p.add_argument('--json', help='where to write the metrics (default: beside --params)')
    _add_network_flags(p, cmd_evaluate)


def _predict_parser(sub):
    p = sub.add_parser('predict', help='colour label and overlay PNGs for images')
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
    _add_network_flags(p, cmd_predict)


def _add_network_flags(p, func):
    """The flags evaluate and predict share: which trained network, where it runs, in which precision."""
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


def _reproduce_parser(sub):
    p = sub.add_parser('reproduce', help="the chapter's recipe on real VOC2012, then the comparison")
    p.add_argument('--data-dir', default='../data', help='where VOC2012 is downloaded to (default %(default)s)')
    p.add_argument('--ctx', default='auto', help=help_text(recipe_field('ctx')))
    p.add_argument('--workers', type=int, default=4, help='data-loading threads (default %(default)s)')
    p.add_argument('--out', default=os.path.join('runs', 'reproduce'), help='run folder (default %(default)s)')
    p.add_argument('--overwrite', action='store_true', help='replace the run already in --out (default: refuse)')
    _add_backbone_flags(p)
    p.add_argument('--no-progress', action='store_true', help='no progress bars')
    p.set_defaults(func=cmd_reproduce)


def _compare_parser(sub):
    p = sub.add_parser('compare', help="judge a history.json by the published spread or a stored baseline band")
    p.add_argument('history', help='history.json written by d2lseg train')
    p.add_argument('--against', default='book',
                   help="book (the chapter's run, judged by the published run-to-run spread at epoch 5; the "
                        "default), d2l-zh-v1, all, or a baseline FILE (a band from bench/spread.py, or another "
                        "history.json)")
    p.set_defaults(func=cmd_compare)


def _launch_parser(sub):
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
