"""Reading images and label PNGs strictly (truncated, 16-bit or float files refused), and normalising images.

Every file the package reads goes through here: data-set images and labels (``voc``) and photos to
predict (``read_photo``). Errors are one line naming the file and what to do.
"""
import os

import numpy as np
from mxnet import nd
from PIL import Image

from ..core.errors import D2lsegError
from .pixels import (IMAGE_MODES, MAX_PIXELS, allow_pixels, bomb, check_pixels, load_strict,  # noqa: F401 (re-exported)
                     read_image, save_label_png)
from ..core.textfiles import open_regular
from .palette import IGNORE_INDEX, VOC_COLORMAP, colour_lut, known_packed, voc_label_indices, voc_palette

RGB_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
RGB_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)

def normalize_image(img):
    """ImageNet normalisation of an (H, W, 3) uint8 image -> float32 of the same kind (NDArray in, NDArray out)."""
    if isinstance(img, nd.NDArray):
        return (img.astype('float32') / 255 - nd.array(RGB_MEAN, ctx=img.context)) / nd.array(RGB_STD, ctx=img.context)
    return (np.asarray(img, dtype=np.float32) / 255 - RGB_MEAN) / RGB_STD


# Labels: palette ('P', the VOC format) and 8-bit grey ('L', SegmentationClassAug's format) hold class indices;
# 'RGB'/'RGBA' hold VOC colours (alpha ignored). Other modes would be silently mangled: refused.
INDEX_LABEL_MODES = ('P', 'L')
COLOUR_LABEL_MODES = ('RGB', 'RGBA')


def _has_jpeg_end(f, window=1024):
    """True when a JPEG's end-of-image marker (FF D9) is among the last ``window`` bytes of the open file ``f``.

    A cut file lacks it; libjpeg decodes some cut and corrupted files without an error (grey or
    garbage pixels), so this catches what ``load()`` lets through.
    """
    f.seek(0, os.SEEK_END)
    f.seek(max(0, f.tell() - window))
    return b'\xff\xd9' in f.read()


def open_image(path, mode, max_pixels=None):
    """Read ``path`` -> (H, W, 3) uint8 (``mode='rgb'``) or the PIL image of a label (``mode='label'``); only a
    regular file (a FIFO is refused, never waited on); ``max_pixels``: refuse larger images before decoding."""
    if not os.path.lexists(path):
        raise D2lsegError(f"{path}: file missing (named in the split's list file); restore it or remove "
                          f"its name from the list file")
    try:
        with open_regular(path) as f, Image.open(f) as im:
            check_pixels(path, im, max_pixels)
            load_strict(im)
            if mode == 'label':
                if im.mode not in INDEX_LABEL_MODES + COLOUR_LABEL_MODES:
                    raise D2lsegError(f"{path}: label PNG of mode {im.mode!r} is not supported; save it as a "
                                      f"palette ('P') PNG with the VOC palette")
                return im.copy()
            if im.format == 'JPEG' and not _has_jpeg_end(f):
                raise D2lsegError(f"{path}: JPEG is truncated (no end-of-image marker); replace the file or "
                                  f"remove its name from the list file")
            if im.mode not in IMAGE_MODES:
                raise D2lsegError(f"{path}: image of mode {im.mode!r} is not supported; save it as an 8-bit "
                                  f"RGB JPEG")
            return np.asarray(im.convert('RGB'))
    except D2lsegError:
        raise
    except Image.DecompressionBombError:
        raise bomb(path, max_pixels) from None
    except Exception as e:  # PIL raises many kinds for broken files
        raise D2lsegError(f"{path}: not a readable image ({type(e).__name__}: {e}); replace the file or "
                          f"remove its name from the list file") from None


def label_rgb(path):
    """A label PNG as the book reads it: (H, W, 3) uint8 VOC colours."""
    im = open_image(path, 'label')
    if im.mode == 'L':
        return voc_palette()[np.asarray(im)]
    return np.asarray(im.convert('RGB'))


def check_same_size(img_path, img_shape, lab_path, lab_shape):
    if tuple(img_shape[:2]) != tuple(lab_shape[:2]):
        raise D2lsegError(f"{img_path} is {img_shape[1]}x{img_shape[0]} but {lab_path} is "
                          f"{lab_shape[1]}x{lab_shape[0]}: image and label must have the same size")


def read_label_indices(path, ignore_boundary=False, colormap2label=None, stats=None, colors=None,
                       unknown='background', max_pixels=None):
    """Class indices (H, W) uint8 of a VOC-format label PNG.

    Palette PNGs (the VOC format) and grey 'L' PNGs are read by index; RGB(A) PNGs through the class
    ``colors`` (default VOC's) or the chapter's ``colormap2label``; other modes are refused (D2lsegError).
    Void (255) becomes background unless ``ignore_boundary``. A value that is no class (index >= the
    number of classes, or a colour not in ``colors``) becomes background and is counted in
    ``stats['unknown_pixels']`` with ``unknown='background'``, or is a one-line D2lsegError naming the
    file and the value with ``unknown='error'`` (the chapter's ``colormap2label``: always background).
    max_pixels: refuse larger labels before decoding them.
    """
    im = open_image(path, 'label', max_pixels)
    colors = VOC_COLORMAP if colors is None else colors
    if im.mode in INDEX_LABEL_MODES and colormap2label is None:
        idx = np.asarray(im).astype(np.uint8)
        bad = (idx >= len(colors)) & (idx != IGNORE_INDEX)
        if unknown == 'error' and bad.any():
            raise D2lsegError(f"{path}: label value {int(idx[bad][0])} is no class (classes 0-{len(colors) - 1}, "
                              "255 ignored); fix the label, give --classes, or map such values to background "
                              "with --unknown-label background")
        idx = idx.copy()
        idx[bad] = 0
        idx[idx == IGNORE_INDEX] = IGNORE_INDEX if ignore_boundary else 0
    else:
        rgb = voc_palette()[np.asarray(im)] if im.mode == 'L' else np.asarray(im.convert('RGB'))
        packed = (rgb[..., 0].astype(np.int64) * 256 + rgb[..., 1]) * 256 + rgb[..., 2]
        if colormap2label is not None:
            lut, known = colormap2label, known_packed()
        else:
            lut, known = colour_lut(colors, ignore_boundary)
        bad = ~np.isin(packed, known)
        if unknown == 'error' and colormap2label is None and bad.any():
            r, g, b = rgb[bad][0]
            raise D2lsegError(f"{path}: colour ({r}, {g}, {b}) is no class's; fix the label, give --classes with "
                              "the colours, or map unknown colours to background with --unknown-label background")
        idx = np.asarray(voc_label_indices(rgb, lut)).astype(np.uint8)
    if stats is not None:
        stats['unknown_pixels'] = stats.get('unknown_pixels', 0) + int(bad.sum())
    return idx
