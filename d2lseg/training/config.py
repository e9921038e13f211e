"""A training run's configuration, written once: the ``Recipe`` fields, their help text and CLI metadata.

Everything else derives from the fields: ``d2lseg train``'s flags (``cli``), the chapter's recipe
and the keys compared between histories (``reference``), the README's flag table (tested). Imports no
MXNet: the device rule (``parse_ctx``, ``resolve_ctx``, re-exported here) lives in ``device``.
"""
import dataclasses
import math
import typing
from dataclasses import dataclass, field
from typing import Optional, Tuple

from ..core.constants import CHAPTER_CROP, DATA_DIR, DTYPES, SYNTHETIC_DIR, VARIANTS, check_sides, crop_text
from ..data.dataspec import LABEL_DIR, UNKNOWN
from ..core.device import parse_ctx, resolve_ctx  # noqa: F401 (the device rule, where callers have found it)
from ..core.errors import D2lsegError

MAX_WORKERS = 64
KVSTORES = ('device', 'local', 'dist_sync', 'dist_device_sync')
LR_SCHEDULES = ('constant', 'poly')


def _f(default, help, result=False, flag=True, choices=None, added=None, positive=False, aliases=()):
    """A Recipe field. help: the CLI's text (``%(default)s``: the default); result: changes the trained
    network (compared between histories); flag: a ``d2lseg train`` flag; added: the value histories
    stored before the field existed ran with; positive: the flag takes whole numbers from 1; aliases:
    other names of the flag (those of torchvision's and gluoncv's training scripts)."""
    return field(default=default, metadata=dict(help=help, result=result, flag=flag, choices=choices,
                                                added=added, positive=positive, aliases=tuple(aliases)))


@dataclass
class Recipe:
    """Every default of a training run; the chapter's values (D2L 10.10.5) unless noted."""
    data_dir: Optional[str] = _f(None, f'folder holding VOCdevkit/VOC2012 (default {DATA_DIR}, or {SYNTHETIC_DIR} with '
                                 '--synthetic)')
    synthetic: bool = _f(False, 'use (making it when missing) the synthetic set under --data-dir', result=True)
    crop: Tuple[int, int] = _f(CHAPTER_CROP, f'HEIGHTxWIDTH, multiples of 32 (default {crop_text()})', result=True)
    batch_size: int = _f(32, 'images per step, over all contexts (default %(default)s)', result=True, positive=True,
                         aliases=('-b',))
    epochs: int = _f(5, 'passes over the training split (default %(default)s); with --resume, only a larger value '
                     'extends the stored run', result=True, positive=True)
    lr: float = _f(0.1, 'SGD learning rate (default %(default)s)', result=True)
    wd: float = _f(1e-3, 'weight decay (default %(default)s)', result=True, aliases=('--weight-decay',))
    momentum: float = _f(0.0, 'SGD momentum (default %(default)s: none, as in the chapter)', result=True)
    variant: str = _f('fcn32s', 'fcn32s (the chapter, the default), fcn16s or fcn8s', result=True, choices=VARIANTS)
    pretrained: bool = _f(True, "ImageNet backbone from MXNet's model zoo (downloads; the default)", result=True)
    backbone_params: Optional[str] = _f(None, 'backbone weights from a local resnet18_v2 .params file (default: '
                                        'none; see --pretrained)')
    num_classes: int = _f(21, 'classes, background included (from --classes)', result=True, flag=False)
    classes: Optional[str] = _f(None, "a classes file: one class per line, background first, 'name' or 'name R G B' "
                                "(default: VOC's 21)", result=True)
    train_split: str = _f('train', 'the training list, ImageSets/Segmentation/NAME.txt (default %(default)s)',
                          result=True, added='train')
    val_split: str = _f('val', 'the validation list (default %(default)s)', result=True, added='val')
    label_dir: str = _f(LABEL_DIR, 'the labels\' folder, e.g. SegmentationClassAug (default %(default)s)',
                        result=True, added=LABEL_DIR)
    unknown_label: str = _f(UNKNOWN[0], 'a label value or colour that is no class: error (default), or background',
                            choices=UNKNOWN, added='background')
    init_from: Optional[str] = _f(None, 'start from a trained d2lseg model.params or checkpoint, also of another class '
                                  'count: layers of the same shape copied, the rest initialised (default: none)',
                                  result=True)
    ctx: str = _f('auto', "cpu, cpu:N, gpu (all) or gpu:0,1 (default: all GPUs, else cpu: the chapter's "
                  "try_all_gpus())")
    seed: int = _f(0, 'seed of initialisation, crops and order (default %(default)s)')
    lr_schedule: str = _f('constant', 'constant (the chapter, the default) or poly (power 0.9, per iteration)',
                          result=True, choices=LR_SCHEDULES)
    warmup_epochs: float = _f(0, 'linear learning-rate warm-up over this many epochs (default %(default)s: none)',
                              result=True, added=0)
    ignore_boundary: bool = _f(False, 'label the void border 255 and skip it (the chapter maps it to background)',
                               result=True)
    augment: bool = _f(False, 'random scale (0.5-2), horizontal flip and crop of the training images, the same for '
                       'their labels, seeded (default off: the chapter has none)', result=True, added=False)
    class_weights: Optional[str] = _f(None, 'auto (median-frequency balancing over the training split, cached '
                                      'beside the data) or a FILE with one weight per class (default: none)',
                                      result=True)
    workers: int = _f(2, 'data-loading threads (default %(default)s)', aliases=('-j',))
    max_images: Optional[int] = _f(None, 'use only the first N images per split (quick runs; default: all)',
                                   result=True, positive=True)
    kvstore: str = _f('device', "device (one machine, the default), or dist_sync / dist_device_sync under "
                      "'d2lseg launch'", choices=KVSTORES)
    dtype: str = _f('float32', 'float32 (default) or bfloat16: the arithmetic of the layers before the final '
                    'upsampling (oneDNN, CPU; fast with AMX); weights, optimizer state and checkpoints stay float32',
                    choices=DTYPES, added='float32')
    fast_upsampling: bool = _f(True, 'upsampling.FastUpsampling: same results, faster (not in the chapter)',
                               flag=False)

    @property
    def data_folder(self):
        """``data_dir``, or by the one convention: the synthetic set in data/synthetic, the real VOC2012 in data
        (decided when used, so a copy with ``synthetic`` changed follows it)."""
        return self.data_dir or (SYNTHETIC_DIR if self.synthetic else DATA_DIR)

    def validate(self):
        """Raise D2lsegError naming the flag for any value the run cannot use."""
        h, w = self.crop
        check_sides(h, w, f"--crop {h}x{w}:", f" (the network's output stride), e.g. {crop_text()}")
        for name in ('batch_size', 'epochs', 'workers'):
            v = getattr(self, name)
            if v < (0 if name == 'workers' else 1):
                raise D2lsegError(f"--{name.replace('_', '-')} {v}: must be "
                                  f"{'non-negative' if name == 'workers' else 'positive'}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise D2lsegError(f"--lr {self.lr}: must be a positive number")
        if not (self.wd >= 0 and math.isfinite(self.wd)):
            raise D2lsegError(f"--wd {self.wd}: must be a non-negative number")
        if not (0 <= self.momentum < 1):
            raise D2lsegError(f"--momentum {self.momentum}: must be at least 0 and below 1")
        for f in dataclasses.fields(self):
            if f.metadata['choices'] and getattr(self, f.name) not in f.metadata['choices']:
                raise D2lsegError(f"--{f.name.replace('_', '-')} {getattr(self, f.name)}: unknown; choose one of "
                                  f"{', '.join(f.metadata['choices'])}")
        if not (0 <= self.warmup_epochs <= self.epochs):
            raise D2lsegError(f"--warmup-epochs {self.warmup_epochs}: must be between 0 and --epochs {self.epochs}")
        if not 0 <= self.seed < 2 ** 32:
            raise D2lsegError(f"--seed {self.seed}: must be between 0 and 2**32 - 1")
        if self.num_classes < 1:
            raise D2lsegError(f"--num-classes {self.num_classes}: must be at least 1")
        if self.workers > MAX_WORKERS:
            raise D2lsegError(f"--workers {self.workers}: at most {MAX_WORKERS} data-loading threads")
        return self

    def to_dict(self):
        d = dataclasses.asdict(self)
        d['crop'] = list(self.crop)
        return d

    @classmethod
    def from_dict(cls, d, source='recipe'):
        """A Recipe from ``to_dict``'s output (e.g. a checkpoint's or a history's); keys of other versions
        are ignored, a value of the wrong type is a one-line D2lsegError naming ``source`` and the field."""
        if not isinstance(d, dict):
            raise D2lsegError(f"{source}: a recipe must be a JSON object, not {type(d).__name__}")
        hints = typing.get_type_hints(cls)
        kwargs = {}
        for f in dataclasses.fields(cls):
            if f.name not in d and f.metadata['added'] is not None:  # stored before the field existed
                kwargs[f.name] = f.metadata['added']
            elif f.name in d:
                value = d[f.name]
                if not _is_a(value, hints[f.name]):
                    raise D2lsegError(f"{source}: recipe field {f.name!r} is {value!r}, "
                                      f"not {_type_name(hints[f.name])}")
                kwargs[f.name] = tuple(value) if f.name == 'crop' else value
        return cls(**kwargs)


def recipe_fields(**metadata):
    """The Recipe's fields whose metadata has every given value, e.g. ``recipe_fields(flag=True)``."""
    return [f for f in dataclasses.fields(Recipe) if all(f.metadata[k] == v for k, v in metadata.items())]


def help_text(f):
    """A Recipe field's help text with its default filled in (argparse would show the flag's default)."""
    shown = 'x'.join(map(str, f.default)) if isinstance(f.default, tuple) else f.default
    return f.metadata['help'].replace('%(default)s', str(shown))


def recipe_field(name):
    """The Recipe field called ``name``."""
    return next(f for f in dataclasses.fields(Recipe) if f.name == name)


FLAG_TABLE_MARKERS = ('<!-- flag table: `make flags` writes it from d2lseg.training.config.Recipe -->',
                      '<!-- end of flag table -->')


def flag_table():
    """The Markdown table of ``d2lseg train``'s recipe flags, from the Recipe fields (as ``cli``'s parser is)."""
    rows = ['| flag | Recipe field | default | what it does |', '|---|---|---|---|']
    for f in recipe_fields(flag=True):
        flag = {'pretrained': '--pretrained / --no-pretrained', 'backbone_params': '--backbone-params FILE'}.get(
            f.name, ' / '.join(('--' + f.name.replace('_', '-'),) + f.metadata['aliases']))
        default = {True: 'on', False: 'off', None: 'none'}.get(f.default, f.default) \
            if isinstance(f.default, (bool, type(None))) else f.default
        shown = 'x'.join(map(str, default)) if isinstance(default, tuple) else default
        rows.append(f"| `{flag}` | {f.name} | `{shown}` | {help_text(f)} |")
    rows.append('| `--out DIR`, `--resume DIR`, `--overwrite`, `--no-progress` | | `runs/VARIANT` | '
                'where the run goes; see `d2lseg train --help` |')
    return '\n'.join(rows)


def write_flag_table(path):
    """Replace the table between ``FLAG_TABLE_MARKERS`` in ``path`` by ``flag_table()``."""
    with open(path) as f:
        text = f.read()
    start, end = (text.index(m) for m in FLAG_TABLE_MARKERS)
    text = text[:start + len(FLAG_TABLE_MARKERS[0])] + '\n' + flag_table() + '\n' + text[end:]
    with open(path, 'w') as f:
        f.write(text)


# Fields that change the trained network: what two histories must share to be compared.
RESULT_KEYS = tuple(f.name for f in recipe_fields(result=True))
# The values histories stored before a field existed ran with.
ADDED_FIELDS = {f.name: f.metadata['added'] for f in dataclasses.fields(Recipe) if f.metadata['added'] is not None}


def _is_a(value, hint):
    """Whether a JSON value fits a Recipe field's type (bool is not a number here)."""
    if typing.get_origin(hint) is typing.Union:  # Optional[X]
        return any(_is_a(value, h) for h in typing.get_args(hint))
    if typing.get_origin(hint) is tuple:
        args = typing.get_args(hint)
        return isinstance(value, (list, tuple)) and len(value) == len(args) and all(map(_is_a, value, args))
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


_TYPE_NAMES = {int: 'an integer', float: 'a number', str: 'a string', bool: 'true or false', type(None): 'null'}


def _type_name(hint):
    if typing.get_origin(hint) is typing.Union:
        return ' or '.join(_type_name(h) for h in typing.get_args(hint))
    if typing.get_origin(hint) is tuple:
        return f'a list of {len(typing.get_args(hint))} integers'
    return _TYPE_NAMES.get(hint, hint.__name__)
