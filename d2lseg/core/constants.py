"""The ground floor's numbers and names: what every layer agrees on, importing nothing but ``errors``.

- ``VARIANTS``: the networks ``model.build_fcn`` builds; ``OUTPUT_STRIDE``: their output stride, so an
  input's sides are multiples of it (``check_sides``: the one check, used by the Recipe, evaluate's
  ``--crop``, ``inference`` and ``onnxrun``).
- ``CHAPTER_CROP``: the chapter's 320x480 crop (D2L 10.10.4), every default crop and tile.
- ``DATA_DIR`` / ``SYNTHETIC_DIR``: where data lives by default, the real VOC2012 and the synthetic set.
- ``DTYPES``: what ``--dtype`` accepts (train, evaluate, predict), float32 first (the default).
- ``BASELINES``: the folder of the stored bands and digests, ``d2lseg/baselines``.
"""
import os

from .errors import D2lsegError

VARIANTS = ('fcn32s', 'fcn16s', 'fcn8s')
OUTPUT_STRIDE = 32  # input sides must be multiples of this
CHAPTER_CROP = (320, 480)  # (height, width): the chapter's crop_size
DATA_DIR = 'data'                                # every command's default: the real VOC2012 goes here
SYNTHETIC_DIR = os.path.join(DATA_DIR, 'synthetic')  # and the synthetic set here, never in its place
DTYPES = ('float32', 'bfloat16')  # what --dtype accepts; the first is the default
# the stored bands and digests (d2lseg/baselines/, package data): beside the subpackages, not inside one
BASELINES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'baselines')


def crop_text(crop=CHAPTER_CROP):
    """``HEIGHTxWIDTH`` as the flags spell it: (320, 480) -> '320x480'."""
    return 'x'.join(map(str, crop))


def sides_ok(h, w):
    """Whether ``h`` and ``w`` are positive multiples of ``OUTPUT_STRIDE``."""
    return h > 0 and w > 0 and not h % OUTPUT_STRIDE and not w % OUTPUT_STRIDE


def check_sides(h, w, subject, hint=''):
    """Raise a one-line D2lsegError ``SUBJECT both sides must be positive multiples of 32HINT`` unless
    ``sides_ok(h, w)``; ``subject`` names what has the sides and ends with its separator (``'--crop 50x50:'``)."""
    if not sides_ok(h, w):
        raise D2lsegError(f"{subject} both sides must be positive multiples of {OUTPUT_STRIDE}{hint}")
