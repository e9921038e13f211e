"""The VOC classes and colours (D2L 10.10.4): names, the colour map, the palette, colour-to-index lookups."""
import numpy as np
from mxnet import nd

from .vocpalette import IGNORE_INDEX, VOC_CLASSES, VOC_COLORMAP, VOID_COLOR, voc_palette  # noqa: F401 (re-exported)


def build_colormap2label(ignore_boundary=False):
    """The chapter's 256**3 lookup from packed RGB to class index (float32 NDArray, 64 MiB).

    Colours not in ``VOC_COLORMAP`` map to 0 (background), as in the chapter; with
    ``ignore_boundary`` the void colour (224, 224, 192) maps to 255.
    """
    return nd.array(label_lut(ignore_boundary), dtype='float32')


def voc_label_indices(colormap, colormap2label):
    """Map an RGB label image to class indices through the chapter's lookup.

    colormap: (H, W, 3) NDArray or ndarray -> (H, W) of the lookup's type. Source: D2L 10.10.4.
    """
    if isinstance(colormap, nd.NDArray) and isinstance(colormap2label, nd.NDArray):
        colormap = colormap.astype('int32')
        idx = ((colormap[:, :, 0] * 256 + colormap[:, :, 1]) * 256 + colormap[:, :, 2])
        return colormap2label[idx]
    cm = np.asarray(colormap.asnumpy() if isinstance(colormap, nd.NDArray) else colormap, dtype=np.int64)
    lut = colormap2label.asnumpy() if isinstance(colormap2label, nd.NDArray) else np.asarray(colormap2label)
    return lut[(cm[..., 0] * 256 + cm[..., 1]) * 256 + cm[..., 2]]


_LUT_CACHE = {}


def colour_lut(colors=None, ignore_boundary=False):
    """The colour -> class index lookup of ``colors`` (default ``VOC_COLORMAP``), the void colour -> 255 with
    ``ignore_boundary`` (else 0): -> ((256**3,) uint8 numpy array, packed RGB values of every colour and
    the void colour), made once per setting."""
    colors = tuple(tuple(int(v) for v in c) for c in (VOC_COLORMAP if colors is None else colors))
    key = (colors, ignore_boundary)
    if key not in _LUT_CACHE:
        lut = np.zeros(256 ** 3, dtype=np.uint8)
        for i, (r, g, b) in enumerate(colors):
            lut[(r * 256 + g) * 256 + b] = i
        r, g, b = VOID_COLOR
        lut[(r * 256 + g) * 256 + b] = IGNORE_INDEX if ignore_boundary else 0
        known = np.array([(r * 256 + g) * 256 + b for r, g, b in colors + (tuple(VOID_COLOR),)])
        _LUT_CACHE[key] = lut, known
    return _LUT_CACHE[key]


def label_lut(ignore_boundary):
    """The VOC colour lookup as a (256**3,) uint8 numpy array (``colour_lut``)."""
    return colour_lut(None, ignore_boundary)[0]


def known_packed():
    """Packed RGB values of every VOC colour and the void colour."""
    return colour_lut()[1]
