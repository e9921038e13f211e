"""Opening photos strictly with Pillow alone: a regular file only, a pixel cap checked before decoding,
truncated files refused, EXIF orientation applied; writing label maps and overlays as PNGs band by band;
resizing an image a band of rows at a time.

A leaf module (Pillow, numpy, ``errors``, ``textfiles``, ``vocpalette``; no MXNet): ``images`` (the data
set's reader, on MXNet) and ``onnxrun`` (exported models without MXNet) share it.
"""
import os
import struct
import threading
import warnings
import zlib

import numpy as np
from PIL import Image, ImageFile, ImageOps

from ..core.errors import D2lsegError
from ..core.textfiles import FileMissing, open_regular
from .vocpalette import voc_palette

# Pixel modes of images: any 8-bit mode, converted to RGB; others (16-bit, float) would be mangled: refused.
IMAGE_MODES = ('RGB', 'L', 'P', 'RGBA', 'LA', 'CMYK', 'YCbCr', 'PA', 'RGBX')

_PIL_LOCK = threading.Lock()


def load_strict(im):
    """``im.load()`` refusing truncated files even when some import (gluoncv does) set PIL's global
    ``ImageFile.LOAD_TRUNCATED_IMAGES``, which would silently pad them with grey."""
    with _PIL_LOCK:
        saved, ImageFile.LOAD_TRUNCATED_IMAGES = ImageFile.LOAD_TRUNCATED_IMAGES, False
        try:
            im.load()
        finally:
            ImageFile.LOAD_TRUNCATED_IMAGES = saved


_ORIENTATION = 0x0112  # the EXIF tag saying how a camera was turned
MAX_PIXELS = 50_000_000  # default cap of predict and evaluate (--max-pixels): 8000x6000 photos pass


def allow_pixels(max_pixels):
    """Let PIL open images up to ``max_pixels`` (its own guard refuses twice ``Image.MAX_IMAGE_PIXELS``, about
    179 million, and warns above half that): d2lseg's cap, checked by the readers, takes its place, only ever
    raising PIL's limit, for this process."""
    if max_pixels and max_pixels > (Image.MAX_IMAGE_PIXELS or max_pixels):
        Image.MAX_IMAGE_PIXELS = max_pixels
    warnings.filterwarnings('ignore', category=Image.DecompressionBombWarning)  # the cap's one line says it


def check_pixels(path, im, max_pixels):
    """One-line D2lsegError when ``im`` (opened, not decoded) has more than ``max_pixels`` pixels."""
    if max_pixels and im.width * im.height > max_pixels:
        raise D2lsegError(f"{path}: {im.width}x{im.height}, {im.width * im.height / 1e6:.0f} million pixels, more "
                          f"than --max-pixels {max_pixels} (a decompression bomb?); raise --max-pixels to read it")


def bomb(path, max_pixels):
    return D2lsegError(f"{path}: more pixels than {Image.MAX_IMAGE_PIXELS * 2} (PIL's guard; a decompression bomb?); "
                       f"raise --max-pixels (now {max_pixels}) to read it")


def read_image(path, max_pixels=MAX_PIXELS):
    """A photo to predict as (H, W, 3) uint8, the way it is displayed (EXIF orientation applied), read as
    strictly as training images (``open_image``: truncated files and 16-bit or float modes refused, a
    regular file only, at most ``max_pixels`` pixels, checked before decoding); a one-line D2lsegError
    naming the file otherwise."""
    if os.path.isdir(path):
        raise D2lsegError(f"{path}: a folder; give image files (e.g. {os.path.join(path, '*.jpg')})")
    try:
        with open_regular(path) as f, Image.open(f) as im:
            check_pixels(path, im, max_pixels)
            load_strict(im)  # (no end-marker check: phones append video after a photo's JPEG end)
            if im.mode not in IMAGE_MODES + ('1',):
                raise D2lsegError(f"{path}: image of mode {im.mode!r} (e.g. 16-bit) is not supported; save it as "
                                  "an 8-bit RGB image")
            shown = ImageOps.exif_transpose(im) if im.getexif().get(_ORIENTATION, 1) != 1 else im
            return np.asarray(shown if shown.mode == 'RGB' else shown.convert('RGB'))  # no copy more than needed
    except FileMissing:
        raise D2lsegError(f"{path}: no such file") from None
    except D2lsegError:
        raise
    except Image.DecompressionBombError:
        raise bomb(path, max_pixels) from None
    except Exception as e:
        raise D2lsegError(f"{path}: not a readable image ({type(e).__name__})") from None


def save_label_png(label, path, palette=None):
    """Write class indices (H, W) as a palette PNG (the VOC label format) with ``palette`` ((256, 3), default
    VOC's)."""
    im = Image.fromarray(np.asarray(label, dtype=np.uint8))  # mode L; putpalette makes it P
    im.putpalette((voc_palette() if palette is None else np.asarray(palette, np.uint8)).reshape(-1).tolist())
    im.save(path, format='PNG')  # whatever the name says (a temporary's name says nothing)


# ------------------------------------------------------------------------------------ PNGs written by bands

def _chunk(kind, data):
    return struct.pack('>I', len(data)) + kind + data + struct.pack('>I', zlib.crc32(kind + data) & 0xFFFFFFFF)


def _paeth(band, above, bpp):
    """PNG filter 4 (Paeth) of the rows ``band`` (n, width * bpp) uint8 whose row above is ``above`` -> bytes
    of (filter type, filtered row) per row (PNG specification, 9.4)."""
    x = band.astype(np.int16)
    up = np.concatenate([above[None].astype(np.int16), x[:-1]])
    left, upleft = np.zeros_like(x), np.zeros_like(x)
    left[:, bpp:], upleft[:, bpp:] = x[:, :-bpp], up[:, :-bpp]
    p = left + up - upleft
    pa, pb, pc = np.abs(p - left), np.abs(p - up), np.abs(p - upleft)
    pred = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, up, upleft))
    out = np.empty((len(band), band.shape[1] + 1), np.uint8)
    out[:, 0], out[:, 1:] = 4, (x - pred) & 0xFF
    return out.tobytes()


def write_png(path, bands, size, palette=None, level=6):
    """A PNG of ``size`` (height, width) from ``bands``, consecutive row bands top to bottom: (n, width, 3)
    uint8 RGB, or with ``palette`` ((256, 3) uint8) (n, width) class indices, a palette PNG (the VOC label
    format). Compressed band by band, so writing holds one band and the compressor beyond what the caller
    holds (Pillow's ``save`` copies the whole image first, 4 bytes per RGB pixel). RGB rows Paeth-filtered,
    palette rows unfiltered (what libpng advises for each)."""
    height, width = size
    bpp = 1 if palette is not None else 3
    head = struct.pack('>IIBBBBB', width, height, 8, 3 if palette is not None else 2, 0, 0, 0)
    deflate, done = zlib.compressobj(level), 0
    above = np.zeros(width * bpp, np.uint8)
    with open(path, 'wb') as f:
        f.write(b'\x89PNG\r\n\x1a\n' + _chunk(b'IHDR', head))
        if palette is not None:
            f.write(_chunk(b'PLTE', np.asarray(palette, np.uint8).reshape(-1)[:768].tobytes()))
        for band in bands:
            band = np.ascontiguousarray(band, np.uint8).reshape(len(band), width * bpp)
            if palette is not None:
                raw = np.concatenate([np.zeros((len(band), 1), np.uint8), band], axis=1).tobytes()
            else:
                raw, above = _paeth(band, above, bpp), band[-1].copy()
            f.write(_chunk(b'IDAT', deflate.compress(raw)) if raw else b'')
            done += len(band)
        if done != height:
            raise ValueError(f'write_png: {done} rows given for a PNG of {height}')
        f.write(_chunk(b'IDAT', deflate.flush()) + _chunk(b'IEND', b''))


def label_bands(labels, rows=256):
    """Consecutive row bands of an (H, W) label map (views: no copy)."""
    return (labels[y:y + rows] for y in range(0, labels.shape[0], rows))


def overlay_bands(img, pred, colors, alpha=0.5, rows=256):
    """Class colours blended over an image, background (class 0) left as it is, ``rows`` rows at a time:
    yields (n, W, 3) uint8 bands of the overlay of (H, W, 3) uint8 ``img`` and (H, W) indices ``pred``."""
    table = np.asarray(colors, dtype=np.float32)
    for y in range(0, img.shape[0], rows):
        band, labels = img[y:y + rows].astype(np.float32), pred[y:y + rows].astype(np.int64)
        colored = (1 - alpha) * band + alpha * table[np.clip(labels, 0, len(table) - 1)]
        yield np.clip(np.where((labels > 0)[..., None], colored, band), 0, 255).astype(np.uint8)


# ------------------------------------------------------------------------------------ resizing by bands

def linear_weights(n_out, n_in):
    """Bilinear resampling of ``n_in`` samples to ``n_out`` along one axis, with OpenCV's INTER_LINEAR rule
    (half-pixel centres, edges repeated) -> (first source index, second source index, weight of the second)."""
    pos = np.clip((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0, n_in - 1)
    first = np.floor(pos).astype(np.int64)
    return first, np.minimum(first + 1, n_in - 1), (pos - first).astype(np.float32)


def mix(a, b, weight):
    """``a * (1 - weight) + b * weight`` in place in ``a`` (both fresh copies)."""
    a *= 1 - weight
    b *= weight
    a += b
    return a


class ResizedRows:
    """An (H, W, 3) uint8 image resized bilinearly to ``size`` (height, width) and, with ``mirrored``, mirrored,
    computed only for the rows asked for (``rows[a:b]``, as ``logit_bands`` reads them): OpenCV's INTER_LINEAR
    rule (``linear_weights``) in float32, rounded, so a value may differ from ``cv2.resize``'s fixed point by 1.
    Holds no resized copy of the whole image: a band of rows is 3 bytes x its rows x the width."""

    def __init__(self, img, size, mirrored=False):
        self.img, self.mirrored = img, mirrored
        self.shape = (size[0], size[1], img.shape[2])
        self.rows, self.cols = linear_weights(size[0], img.shape[0]), linear_weights(size[1], img.shape[1])

    def __getitem__(self, rows):
        a, b, _ = rows.indices(self.shape[0])
        if self.shape[:2] == self.img.shape[:2]:
            band = self.img[a:b]
        else:
            (r0, r1, rw), (c0, c1, cw) = (v[a:b] for v in self.rows), self.cols
            band = mix(self.img[r0].astype(np.float32), self.img[r1].astype(np.float32), rw[:, None, None])
            band = np.clip(np.rint(mix(band[:, c0], band[:, c1], cw[None, :, None])), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(band[:, ::-1]) if self.mirrored else band
