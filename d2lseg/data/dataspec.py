"""What reading a split needs besides its folder, in one object: ``DataSpec``, built once from a Recipe
(``from_recipe``: training) or a command's flags, and handed to ``voc.iter_split``, ``voc.VOCSegDataset``
and ``app.evaluate_split``.

One set of defaults. ``unknown`` is 'error': a label value or colour that is no class stops with one line
naming the file (``images.read_label_indices``), for training, evaluation and the library alike; mapping such
pixels to background is asked for (``unknown='background'``, ``--unknown-label background``), because a
silent mapping trains and scores on labels nobody checked. The chapter's own call,
``VOCSegDataset(is_train, crop_size, voc_dir)`` on VOC2012, never meets such a value (and its
``colormap2label`` maps unknown colours to background, as the book's does). MXNet-free.
"""
import dataclasses
from dataclasses import dataclass
from typing import Optional

LABEL_DIR = 'SegmentationClass'
UNKNOWN = ('error', 'background')  # what a label value that is no class becomes: the first is the default


@dataclass(frozen=True)
class DataSpec:
    """split: the list file's name, ImageSets/Segmentation/NAME.txt (None: 'train' or 'val' as the reader is
    asked); label_dir: the labels' folder (e.g. SBD's SegmentationClassAug); colors: the classes' colours
    (RGB labels; None: VOC's palette); unknown: ``UNKNOWN``; ignore_boundary: the void border stays 255 and
    is skipped (else background, as in the chapter); max_images: only the first N of the split;
    max_pixels: refuse larger images and labels before decoding them (None: no cap)."""
    split: Optional[str] = None
    label_dir: str = LABEL_DIR
    colors: Optional[tuple] = None
    unknown: str = UNKNOWN[0]
    ignore_boundary: bool = False
    max_images: Optional[int] = None
    max_pixels: Optional[int] = None

    def replace(self, **changes):
        """A copy with ``changes`` (field names)."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_recipe(cls, recipe, is_train, colors=None):
        """The data a training ``recipe`` reads for its training (``is_train``) or validation split."""
        return cls(split=recipe.train_split if is_train else recipe.val_split, label_dir=recipe.label_dir,
                   colors=colors, unknown=recipe.unknown_label, ignore_boundary=recipe.ignore_boundary,
                   max_images=recipe.max_images)
