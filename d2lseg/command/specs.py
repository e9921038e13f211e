"""What ``d2lseg evaluate`` and ``d2lseg predict`` are asked to do, as dataclasses (as ``config.Recipe`` is train's):
each field's metadata is its flag, help text and parser, so ``cli`` generates the flags and ``app.evaluate`` /
``app.predict`` take one object. A flag name means one thing in every subcommand: ``--crop`` is a size
(train, evaluate), predict's top-left-crop switch is ``--chapter-crop``.
"""
import argparse
import dataclasses
from dataclasses import dataclass, field
from typing import Optional, Tuple

from ..training.config import help_text, recipe_field
from ..data.images import MAX_PIXELS
from ..deploy.onnxrun import TILE
from ..core.constants import DTYPES
from ..core.constants import DATA_DIR, crop_text
from ..data.dataspec import LABEL_DIR, UNKNOWN


def parse_size(text):
    """'320x480' -> (320, 480)."""
    try:
        h, w = (int(v) for v in text.lower().split('x'))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected HEIGHTxWIDTH, e.g. {crop_text()}") from None
    return h, w


def parse_scales(text):
    """'0.75,1,1.25' -> (0.75, 1.0, 1.25)."""
    try:
        return tuple(float(v) for v in text.split(','))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected scale factors separated by commas, e.g. 0.75,1,1.25") \
            from None


def parse_positive(text):
    """A whole number from 1."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a whole number") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"{v}: must be at least 1")
    return v


def _f(default, help, type=None, metavar=None, choices=None, aliases=(), positional=False, group=None):
    """A spec field: ``help`` (``%(default)s``: the default), ``type`` (a parser of the flag's text), ``aliases``
    (other spellings), ``positional`` (an argument, one or more values), ``group`` (flags excluding each other)."""
    return field(default=default, metadata=dict(help=help, type=type, metavar=metavar, choices=choices,
                                                aliases=tuple(aliases), positional=positional, group=group))


@dataclass
class NetworkSpec:
    """The trained network evaluate and predict run, where, in which precision, on what size of image."""
    params: Optional[str] = _f(None, 'model.params written by d2lseg train (default: none; this or --onnx)')
    onnx: Optional[str] = _f(None, 'instead of --params: a model of d2lseg export, run by ONNX Runtime (no MXNet '
                             'needed: docs/deployment.md) (default: none)', metavar='FILE')
    variant: Optional[str] = _f(None, 'the network the parameters belong to: fcn32s, fcn16s or fcn8s (default: from '
                                'model.json beside --params, else fcn32s)')
    num_classes: Optional[int] = _f(None, 'classes of the network (default: from model.json beside --params, else '
                                    '21)', type=parse_positive)
    ctx: str = _f('auto', help_text(recipe_field('ctx')))
    dtype: str = _f('float32', 'bfloat16: convert the network (oneDNN, CPU; fastest on CPUs with AMX, which d2lseg '
                    'enables; slower than float32 without AMX) (default %(default)s)', choices=DTYPES)
    tile: Tuple[int, int] = _f(TILE, 'whole images are predicted in overlapping tiles of HEIGHTxWIDTH, multiples of '
                               f"32 (default {crop_text()}, the chapter's crop; larger: fewer seams, more memory)",
                               type=parse_size, metavar='HxW')
    no_progress: bool = _f(False, 'no progress bar')
    max_pixels: int = _f(MAX_PIXELS, 'refuse images of more pixels, before decoding them (decompression bombs; '
                         'default %(default)s: 8000x6000 photos pass; memory: docs/hardening.md)',
                         type=parse_positive, metavar='N')


@dataclass
class EvaluateSpec(NetworkSpec):
    """d2lseg evaluate: metrics of a trained network on a split of a VOC-format data set."""
    data_dir: str = _f(DATA_DIR, 'the data: a folder holding VOCdevkit/VOC2012, or a VOC-format folder of your own '
                       '(JPEGImages, SegmentationClass, ImageSets) (default %(default)s)')
    chapter_protocol: bool = _f(False, "the chapter's evaluation: top-left --crop crops, smaller images skipped, the "
                                "void border as background (default: the published protocol, whole images with the "
                                "void ignored: the figure to report)")
    crop: Tuple[int, int] = _f(TILE, "with --chapter-protocol: the crop, HEIGHTxWIDTH (default "
                               f"{crop_text()}, the chapter's)", type=parse_size, metavar='HxW')
    max_images: Optional[int] = _f(None, 'only the first N validation images (default: all)', type=parse_positive)
    json: Optional[str] = _f(None, 'where to write the metrics (default: eval-PROTOCOL.json beside --params)')
    plot: Optional[str] = _f(None, 'also draw the confusion matrix into FILE (PNG; default: none)', metavar='FILE')
    overwrite: bool = _f(False, 'replace an existing --json or --plot file, also one an earlier evaluate wrote '
                         '(default: refuse, before any work)')
    scales: Tuple[float, ...] = _f((1.0,), 'average the class scores over the image resized by these factors, e.g. '
                                   '0.75,1,1.25 (default 1: one scale)', type=parse_scales, metavar='S,S,...')
    flip: bool = _f(False, 'also average over the mirrored images (default: off)')
    split: str = _f('val', 'the list to evaluate, ImageSets/Segmentation/NAME.txt (default %(default)s)')
    label_dir: str = _f(LABEL_DIR, "the labels' folder (default %(default)s)")
    unknown_label: str = _f(UNKNOWN[0], 'a label value that is no class: error (the default) or background',
                            choices=UNKNOWN)

    @property
    def protocol(self):
        return 'chapter' if self.chapter_protocol else 'published'


@dataclass
class PredictSpec(NetworkSpec):
    """d2lseg predict: label PNGs, overlays and a legend for image files and folders."""
    images: Tuple[str, ...] = _f((), 'image files, or folders (searched recursively for .jpg, .png, ...)',
                                 metavar='IMAGE', positional=True)
    out: str = _f('predictions', 'output folder (default %(default)s)', aliases=('--output-dir',))
    json: Optional[str] = _f(None, 'also write what was found per image as JSON (default: none)', metavar='FILE')
    overwrite: bool = _f(False, 'replace existing files in --out (or --json), also ones an earlier predict wrote '
                         '(default: refuse, before any work)')
    chapter_crop: bool = _f(False, "predict only the top-left crop with sides multiples of 32, as the chapter does "
                            "(the size follows from the image; each crop is named)", group='mode')
    full: bool = _f(False, 'the whole image by tiled prediction (the default)', group='mode')
    int8: bool = _f(False, 'INT8-quantised network (oneDNN, CPU), calibrated on the first 8 images given or on '
                    '--calib-data-dir')
    calib_data_dir: Optional[str] = _f(None, 'with --int8: calibrate on 8 training images of DIR/VOCdevkit/VOC2012 '
                                       '(default: on the first 8 images given)', metavar='DIR')


def spec_fields(spec_cls):
    """The fields of a spec class, in flag order."""
    return dataclasses.fields(spec_cls)


def from_args(spec_cls, args):
    """The spec of parsed ``args`` (tuples for sequences)."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(spec_cls)}
    return spec_cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})
