"""The ``d2lseg`` command: synth | train | evaluate | predict | reproduce | compare | launch | doctor | export.

About 330 lines: one short parser function per subcommand (nine), kept together so every flag is in one
place. The module that parses arguments (onnxcli parses predict/evaluate --onnx where MXNet is missing):
train's flags are generated from ``config.Recipe`` and laid over a preset (``reference.RECIPES``), reproduce's
three from the same fields, evaluate's and predict's from ``specs``; the work is done by ``app``. User errors print
one line and exit with code 2.
"""
import argparse
import dataclasses
import os
import re
import sys
import typing

from . import app, doctor, preflight
from ..deploy import export
from ..training.config import Recipe, help_text, recipe_field, recipe_fields
from ..training.engine import RESUME_FIELDS
from ..core.constants import DATA_DIR, SYNTHETIC_DIR
from ..core.errors import D2lsegError
from .launcher import launch
from ..training.reference import BANDS, FIT_CROP, RECIPE_TEXT, RECIPES, preset
from .specs import EvaluateSpec, PredictSpec, from_args, parse_positive, parse_size, spec_fields
from ..data.synthetic import make_synthetic_voc, tree_digest
from ..core.version import __version__


def _add_backbone_flags(p, defaults=False):
    """--pretrained / --no-pretrained / --backbone-params; absent from args unless given (train: laid over a
    preset), or with the Recipe's defaults (``defaults``: reproduce)."""
    on, off = (recipe_field('pretrained').default, None) if defaults else (argparse.SUPPRESS, argparse.SUPPRESS)
    g = p.add_mutually_exclusive_group()
    g.add_argument('--pretrained', dest='pretrained', action='store_true', default=on,
                   help=help_text(recipe_field('pretrained')))
    g.add_argument('--no-pretrained', dest='pretrained', action='store_false', default=on, help='random backbone')
    g.add_argument('--backbone-params', metavar='FILE', default=off, help=help_text(recipe_field('backbone_params')))


def _add_recipe_flags(p):
    """--preset, then one flag per ``config.Recipe`` field marked ``flag``, its type and help from the field.
    No flag has a default (argparse.SUPPRESS): the parsed values are exactly the flags the user gave, laid
    over the preset (``_given``)."""
    p.add_argument('--preset', choices=tuple(RECIPES), default=argparse.SUPPRESS,
                   help='a named recipe the flags below override (the defaults shown are the chapter\'s): '
                        + '; '.join(f'{k}: {v}' for k, v in RECIPE_TEXT.items()))
    for f in recipe_fields(flag=True):
        if f.name not in BACKBONE_FIELDS:
            _add_recipe_flag(p, f)
    _add_backbone_flags(p)


def _add_recipe_flag(p, f, default=argparse.SUPPRESS, why=None):
    """The flag of the Recipe field ``f``: its names, type and help from the field. A command whose default differs
    from the Recipe's gives it as ``default`` with ``why`` (the help's "(default ...)" then names both)."""
    hint, meta, text = typing.get_type_hints(Recipe)[f.name], f.metadata, help_text(f)
    if why is not None:
        text, n = re.subn(r'\(default [^()]*\)', f'(default {default}: {why})', text)
        text = text if n else f'{text} (default {default}: {why})'
    kw = dict(default=default, help=text)
    if hint is bool:
        kw['action'] = 'store_true'
    elif f.name == 'crop':
        kw['type'] = parse_size
    elif meta['positive']:
        kw['type'] = parse_positive
    elif hint in (int, float):
        kw['type'] = hint
    p.add_argument('--' + f.name.replace('_', '-'), *meta['aliases'], **kw)


BACKBONE_FIELDS = ('pretrained', 'backbone_params')


def _given(args):
    """{Recipe field: value} of the recipe flags on the command line (none has a default)."""
    given = {f.name: getattr(args, f.name) for f in recipe_fields(flag=True) if hasattr(args, f.name)}
    if 'crop' in given:
        given['crop'] = tuple(given['crop'])
    return given


def cmd_train(args):
    given, notes = _given(args), []
    if args.resume:
        ignored = sorted([k for k in given if k not in RESUME_FIELDS] + (['preset'] if hasattr(args, 'preset') else [])
                         + (['out'] if args.out else []))
        if ignored:
            notes.append("d2lseg train: --resume continues the stored run as it was: ignoring "
                         + ', '.join('--' + k.replace('_', '-') for k in ignored))
        recipe = None
    else:
        name = getattr(args, 'preset', 'chapter')
        recipe = preset(name, given)
        crop = preflight.largest_crop(recipe, FIT_CROP[name]) if name in FIT_CROP and 'crop' not in given else None
        if crop:
            recipe = dataclasses.replace(recipe, crop=crop)
            notes.append(f"--preset {name}: crop {crop[0]}x{crop[1]}, the largest (up to {FIT_CROP[name][0]}x"
                         f"{FIT_CROP[name][1]}) every image of the data holds; --crop HxW sets another")
    out = args.out or os.path.join('runs', (recipe or Recipe()).variant)
    app.run_training(recipe, out, resume=args.resume, progress=not args.no_progress, overwrite=args.overwrite,
                     requested={k: v for k, v in given.items() if k in RESUME_FIELDS}, log_interval=args.log_interval,
                     notes=notes, keep_checkpoints=args.keep_checkpoints)
    return 0


def cmd_synth(args):
    path = make_synthetic_voc(args.root, n_train=args.n_train, n_val=args.n_val, seed=args.seed,
                              overwrite=args.overwrite)
    print(path)
    if args.digest:
        print('sha256', tree_digest(args.root))
    return 0


def cmd_evaluate(args):
    app.evaluate(from_args(EvaluateSpec, args))
    return 0


def cmd_predict(args):
    return 1 if app.predict(from_args(PredictSpec, args)) else 0


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
    p.add_argument('--n-train', type=parse_positive, default=600, help='training scenes (default %(default)s)')
    p.add_argument('--n-val', type=parse_positive, default=150, help='validation scenes (default %(default)s)')
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
    p.add_argument('--log-interval', type=parse_positive, default=0, metavar='N',
                   help='also a line every N batches (default: only per epoch); useful in log files')
    p.add_argument('--resume', metavar='DIR', help='continue the run whose checkpoints are in DIR (its stored '
                   'recipe; only --epochs, --ctx, --workers, --kvstore and a moved --data-dir are taken, --preset '
                   'and the other recipe flags are ignored; default: a new run)')
    p.add_argument('--overwrite', action='store_true', help='replace the run already in --out (default: refuse)')
    p.add_argument('--keep-checkpoints', type=parse_positive, default=2, metavar='N',
                   help='keep the checkpoints of the last N epochs (default %(default)s; each ~100 MB for fcn32s, '
                        'a run folder ~300 MB with 2, ~200 MB with 1; --resume needs one)')
    p.add_argument('--no-progress', action='store_true', help='no progress bars')
    p.set_defaults(func=cmd_train)



def _evaluate_parser(sub):
    p = _command(sub, 'evaluate', 'metrics of trained parameters on the validation set (the published protocol: '
                 'the figure to report)')
    _add_spec_flags(p, EvaluateSpec)
    p.set_defaults(func=cmd_evaluate)


class _Renamed(argparse.Action):
    """A flag that was renamed: one line naming the new spelling (exit 2)."""

    def __init__(self, option_strings, dest, new=None, why='', **kw):
        super().__init__(option_strings, argparse.SUPPRESS, nargs=0, help=argparse.SUPPRESS)
        self.new, self.why = new, why

    def __call__(self, parser, namespace, values, option_string=None):
        parser.error(f"{option_string} is now {self.new}{self.why}")


def _predict_parser(sub):
    p = _command(sub, 'predict', 'label PNGs (VOC palette), overlays and a legend for images')
    _add_spec_flags(p, PredictSpec)
    p.add_argument('--crop', action=_Renamed, new='--chapter-crop', why=' (--crop is a size, HEIGHTxWIDTH, in every '
                   'command)')
    p.set_defaults(func=cmd_predict)


def _add_spec_flags(p, spec_cls):
    """One flag (or argument) per field of a ``specs`` class: its type, choices, default and help from the field."""
    groups = {}
    for f in spec_fields(spec_cls):
        meta = f.metadata
        kw = {k: meta[k] for k in ('type', 'metavar', 'choices') if meta[k] is not None}
        text = meta['help']
        if f.type in (bool, 'bool'):
            kw = dict(action='store_true')
        if meta['positional']:
            p.add_argument(f.name, nargs='+', help=text, **kw)
            continue
        if meta['group'] and meta['group'] not in groups:
            groups[meta['group']] = p.add_mutually_exclusive_group()
        where = groups[meta['group']] if meta['group'] else p
        where.add_argument('--' + f.name.replace('_', '-'), *meta['aliases'], default=f.default, help=text, **kw)


def _export_parser(sub):
    p = _command(sub, 'export', 'an ONNX model of trained parameters, with MODEL_CARD.md beside it '
                 '(docs/deployment.md)')
    p.add_argument('run', metavar='RUN_OR_PARAMS', help='a run folder of d2lseg train (its model.params) or a '
                   '.params file')
    p.add_argument('--onnx', required=True, metavar='FILE', help='the .onnx file to write')
    p.add_argument('--variant', help='the network the parameters belong to (default: from model.json beside them, '
                   'else fcn32s)')
    p.add_argument('--num-classes', type=parse_positive, help='classes of the network (default: from model.json '
                   'beside the parameters, else 21)')
    p.add_argument('--overwrite', action='store_true', help='replace a FILE or MODEL_CARD.md that d2lseg export did '
                   'not write (default: refuse; its own earlier outputs are replaced)')
    p.set_defaults(func=cmd_export)


# reproduce runs the chapter's recipe as it is: of the Recipe's flags it takes only where it runs, and two
# defaults of its own, {field: (default, why)}.
REPRODUCE_FIELDS = ('data_dir', 'ctx', 'workers')
REPRODUCE_DEFAULTS = {'data_dir': (DATA_DIR, 'where reproduce downloads VOC2012'),
                      'workers': (4, "train's is 2; on GPUs, decoding full-size VOC JPEGs needs more threads")}


def _reproduce_parser(sub):
    p = _command(sub, 'reproduce', "the chapter's recipe on real VOC2012, then the comparison")
    for name in REPRODUCE_FIELDS:
        f = recipe_field(name)
        default, why = REPRODUCE_DEFAULTS.get(name, (f.default, None))
        _add_recipe_flag(p, f, default, why)
    p.add_argument('--out', '--output-dir', default=os.path.join('runs', 'reproduce'),
                   help='run folder (default %(default)s)')
    p.add_argument('--overwrite', action='store_true', help='replace the run already in --out (default: refuse)')
    _add_backbone_flags(p, defaults=True)
    p.add_argument('--no-progress', action='store_true', help='no progress bars')
    p.set_defaults(func=cmd_reproduce)


def _compare_parser(sub):
    bands = ', '.join(f'{k} (d2lseg/baselines/{v})' for k, v in BANDS.items())
    p = _command(sub, 'compare', "judge a history.json by the published spread or a stored baseline band")
    p.add_argument('history', help='history.json written by d2lseg train')
    p.add_argument('--against', default=None,
                   help="book (the chapter's run, judged by the published run-to-run spread at epoch 5), d2l-zh-v1, "
                        f"all, a stored band: {bands}, or a baseline FILE (a band from bench/spread.py, or another "
                        "history.json) (default: the named band of the recipe the history was made with)")
    p.set_defaults(func=cmd_compare)


def _launch_parser(sub):
    p = _command(sub, 'launch', "start MXNet's parameter-server job (scheduler, servers, workers)")
    p.add_argument('-n', '--num-workers', type=parse_positive, required=True, help='worker processes')
    p.add_argument('-s', '--num-servers', type=parse_positive, default=1, help='server processes (default %(default)s)')
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
