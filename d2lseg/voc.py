"""Pascal VOC2012 semantic segmentation data (D2L 10.10.4).

The chapter's names (``VOC_CLASSES``, ``VOC_COLORMAP``, ``read_voc_images``, ``voc_rand_crop``,
``VOCSegDataset``, ``download_voc_pascal``) with its behaviour, plus the real data set's details the
chapter glosses over: palette PNG labels, the void border (index 255), uint8 storage.
"""
import hashlib
import http.client
import logging
import os
import random
import shutil
import tarfile
import tempfile
import threading
import urllib.request

import numpy as np
from mxnet import gluon, image, nd

from .errors import D2lsegError, first_line
from .progress import bar
from .runfolder import writable_folder

log = logging.getLogger(__name__)

VOC_CLASSES = ['background', 'aeroplane', 'bicycle', 'bird', 'boat',
               'bottle', 'bus', 'car', 'cat', 'chair', 'cow',
               'diningtable', 'dog', 'horse', 'motorbike', 'person',
               'potted plant', 'sheep', 'sofa', 'train', 'tv/monitor']

VOC_COLORMAP = [[0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0],
                [0, 0, 128], [128, 0, 128], [0, 128, 128], [128, 128, 128],
                [64, 0, 0], [192, 0, 0], [64, 128, 0], [192, 128, 0],
                [64, 0, 128], [192, 0, 128], [64, 128, 128], [192, 128, 128],
                [0, 64, 0], [128, 64, 0], [0, 192, 0], [128, 192, 0],
                [0, 64, 128]]

IGNORE_INDEX = 255
VOID_COLOR = (224, 224, 192)
RGB_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
RGB_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)

VOC_URLS = (  # the official host first, then a long-standing mirror of the same file
    'http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar',
    'http://pjreddie.com/media/files/VOCtrainval_11-May-2012.tar',
)
VOC_SHA1 = '4e443f8a2eca6b1dac8a6c57641b67dd40621a49'
VOC_SUBDIR = os.path.join('VOCdevkit', 'VOC2012')


def voc_palette(n=256):
    """The standard VOC bit-interleaved palette: (n, 3) uint8, entry 255 is the void colour."""
    pal = np.zeros((n, 3), dtype=np.uint8)
    for i in range(n):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal[i] = (r, g, b)
    return pal


def build_colormap2label(ignore_boundary=False):
    """The chapter's 256**3 lookup from packed RGB to class index (float32 NDArray, 64 MiB).

    Colours not in ``VOC_COLORMAP`` map to 0 (background), as in the chapter; with
    ``ignore_boundary`` the void colour (224, 224, 192) maps to 255.
    """
    return nd.array(_label_lut(ignore_boundary), dtype='float32')


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


def normalize_image(img):
    """ImageNet normalisation of an (H, W, 3) uint8 image -> float32 of the same kind (NDArray in, NDArray out)."""
    if isinstance(img, nd.NDArray):
        return (img.astype('float32') / 255 - nd.array(RGB_MEAN, ctx=img.context)) / nd.array(RGB_STD, ctx=img.context)
    return (np.asarray(img, dtype=np.float32) / 255 - RGB_MEAN) / RGB_STD


def _check_voc_root(root):
    if not os.path.isdir(root):
        raise D2lsegError(f"{root}: no VOC2012 tree here; run `d2lseg synth --root DATA_DIR` for the synthetic set "
                          f"or download_voc_pascal(DATA_DIR) for the real one")


def read_split(root, is_train=True):
    """Image names of a split, read from ``ImageSets/Segmentation/{train,val}.txt``."""
    _check_voc_root(root)
    txt = os.path.join(root, 'ImageSets', 'Segmentation', 'train.txt' if is_train else 'val.txt')
    if not os.path.isfile(txt):
        if os.path.isdir(os.path.join(root, VOC_SUBDIR)):
            raise D2lsegError(f"{txt}: list file missing; {root} is the data folder, pass "
                              f"{os.path.join(root, VOC_SUBDIR)} instead")
        raise D2lsegError(f"{txt}: list file missing; the VOC tree under {root} is incomplete: "
                          f"download it again or re-run `d2lseg synth`")
    try:
        with open(txt, encoding='utf-8') as f:
            names = [line.strip() for line in f if line.strip()]
    except (OSError, UnicodeDecodeError) as e:
        raise D2lsegError(f"{txt}: list file unreadable ({type(e).__name__}); it must be text, "
                          f"one image name per line") from None
    if not names:
        raise D2lsegError(f"{txt}: list file is empty; it must name the split's images, one per line")
    for lineno, name in enumerate(names, 1):  # ids name files inside the tree, never paths leading out
        if '/' in name or '\\' in name or name in ('.', '..') or '\0' in name:
            raise D2lsegError(f"{txt}: entry {lineno} {name[:80]!r} is a path, not an image id; the list file "
                              "must hold bare ids (e.g. 2007_000032), one per line")
    return names


# Pixel modes accepted. Images: any 8-bit mode, converted to RGB. Labels: palette ('P', the VOC
# format) and 8-bit grey ('L', SegmentationClassAug's format) hold class indices; 'RGB'/'RGBA' hold
# VOC colours (alpha ignored). Others (1-bit, 16-bit, float) would be silently mangled: refused.
IMAGE_MODES = ('RGB', 'L', 'P', 'RGBA', 'LA', 'CMYK', 'YCbCr', 'PA', 'RGBX')
INDEX_LABEL_MODES = ('P', 'L')
COLOUR_LABEL_MODES = ('RGB', 'RGBA')


_PIL_LOCK = threading.Lock()


def _load_strict(im):
    """``im.load()`` refusing truncated files even when some import (gluoncv does) set PIL's global
    ``ImageFile.LOAD_TRUNCATED_IMAGES``, which would silently pad them with grey."""
    from PIL import ImageFile
    with _PIL_LOCK:
        saved, ImageFile.LOAD_TRUNCATED_IMAGES = ImageFile.LOAD_TRUNCATED_IMAGES, False
        try:
            im.load()
        finally:
            ImageFile.LOAD_TRUNCATED_IMAGES = saved


def _has_jpeg_end(path, window=1024):
    """True when a JPEG's end-of-image marker (FF D9) is among its last ``window`` bytes.

    A cut file lacks it; libjpeg decodes some cut and corrupted files without an error (grey or
    garbage pixels), so this catches what ``load()`` lets through.
    """
    with open(path, 'rb') as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - window))
        return b'\xff\xd9' in f.read()


def _open_image(path, mode):
    """Read ``path`` -> (H, W, 3) uint8 (``mode='rgb'``) or the PIL image of a label (``mode='label'``)."""
    from PIL import Image
    if not os.path.isfile(path):
        raise D2lsegError(f"{path}: file missing (named in the split's list file); restore it or remove "
                          f"its name from the list file")
    try:
        with Image.open(path) as im:
            _load_strict(im)
            if mode == 'label':
                if im.mode not in INDEX_LABEL_MODES + COLOUR_LABEL_MODES:
                    raise D2lsegError(f"{path}: label PNG of mode {im.mode!r} is not supported; save it as a "
                                      f"palette ('P') PNG with the VOC palette")
                return im.copy()
            if im.format == 'JPEG' and not _has_jpeg_end(path):
                raise D2lsegError(f"{path}: JPEG is truncated (no end-of-image marker); replace the file or "
                                  f"remove its name from the list file")
            if im.mode not in IMAGE_MODES:
                raise D2lsegError(f"{path}: image of mode {im.mode!r} is not supported; save it as an 8-bit "
                                  f"RGB JPEG")
            return np.asarray(im.convert('RGB'))
    except D2lsegError:
        raise
    except Exception as e:  # PIL raises many kinds for broken files
        raise D2lsegError(f"{path}: not a readable image ({type(e).__name__}: {e}); replace the file or "
                          f"remove its name from the list file") from None


def _label_rgb(path):
    """A label PNG as the book reads it: (H, W, 3) uint8 VOC colours."""
    im = _open_image(path, 'label')
    if im.mode == 'L':
        return voc_palette()[np.asarray(im)]
    return np.asarray(im.convert('RGB'))


def _check_same_size(img_path, img_shape, lab_path, lab_shape):
    if tuple(img_shape[:2]) != tuple(lab_shape[:2]):
        raise D2lsegError(f"{img_path} is {img_shape[1]}x{img_shape[0]} but {lab_path} is "
                          f"{lab_shape[1]}x{lab_shape[0]}: image and label must have the same size")


def read_label_indices(path, ignore_boundary=False, colormap2label=None, stats=None):
    """Class indices (H, W) uint8 of a VOC label PNG.

    Palette PNGs (the real format) and grey 'L' PNGs are read by index; RGB(A) PNGs through
    ``colormap2label``; other modes are refused (D2lsegError).
    Void (255) becomes background unless ``ignore_boundary``; unknown colours become background
    and are counted in ``stats['unknown_pixels']``.
    """
    im = _open_image(path, 'label')
    if im.mode in INDEX_LABEL_MODES and colormap2label is None:
        idx = np.asarray(im).astype(np.uint8)
        unknown = (idx > 20) & (idx != IGNORE_INDEX)
        void = idx == IGNORE_INDEX
        idx = idx.copy()
        idx[unknown] = 0
        idx[void] = IGNORE_INDEX if ignore_boundary else 0
    else:
        rgb = voc_palette()[np.asarray(im)] if im.mode == 'L' else np.asarray(im.convert('RGB'))
        lut = _label_lut(ignore_boundary) if colormap2label is None else colormap2label
        idx = np.asarray(voc_label_indices(rgb, lut)).astype(np.uint8)
        packed = (rgb[..., 0].astype(np.int64) * 256 + rgb[..., 1]) * 256 + rgb[..., 2]
        unknown = ~np.isin(packed, _known_packed())
    if stats is not None:
        stats['unknown_pixels'] = stats.get('unknown_pixels', 0) + int(unknown.sum())
    return idx


_LUT_CACHE = {}


def _label_lut(ignore_boundary):
    if ignore_boundary not in _LUT_CACHE:
        lut = np.zeros(256 ** 3, dtype=np.uint8)
        for i, cm in enumerate(VOC_COLORMAP):
            lut[(cm[0] * 256 + cm[1]) * 256 + cm[2]] = i
        if ignore_boundary:
            r, g, b = VOID_COLOR
            lut[(r * 256 + g) * 256 + b] = IGNORE_INDEX
        _LUT_CACHE[ignore_boundary] = lut
    return _LUT_CACHE[ignore_boundary]


def _known_packed():
    return np.array([(r * 256 + g) * 256 + b for r, g, b in VOC_COLORMAP + [list(VOID_COLOR)]])


def _sample_paths(voc_dir, name):
    """(image path, label path) of one named sample of a VOC tree."""
    return (os.path.join(voc_dir, 'JPEGImages', f'{name}.jpg'),
            os.path.join(voc_dir, 'SegmentationClass', f'{name}.png'))


def iter_split(voc_dir, is_train=False, ignore_boundary=False, limit=None, colormap2label=None, stats=None):
    """Yield (name, image (H, W, 3) uint8, label indices (H, W) uint8) of a split, one at a time.

    ``colormap2label`` and ``stats`` are passed to ``read_label_indices``.
    """
    for name in read_split(voc_dir, is_train)[:limit]:
        img_path, lab_path = _sample_paths(voc_dir, name)
        img = _open_image(img_path, 'rgb')
        lab = read_label_indices(lab_path, ignore_boundary, colormap2label, stats)
        _check_same_size(img_path, img.shape, lab_path, lab.shape)
        yield name, img, lab


def read_voc_images(root='../data/VOCdevkit/VOC2012', is_train=True):
    """Read all images and RGB colour labels of a split, as the chapter does.

    -> (features, labels): lists of (H, W, 3) uint8 NDArrays. Source: D2L 10.10.4.
    """
    features, labels = [], []
    for fname in read_split(root, is_train):
        img_path, lab_path = _sample_paths(root, fname)
        img, lab = _open_image(img_path, 'rgb'), _label_rgb(lab_path)
        _check_same_size(img_path, img.shape, lab_path, lab.shape)
        features.append(nd.array(img, dtype='uint8'))
        labels.append(nd.array(lab, dtype='uint8'))
    return features, labels


def crop_rect(height, width, crop_h, crop_w, rng=random):
    """A random (x0, y0, w, h) rectangle of size crop_w x crop_h inside an image."""
    x0 = rng.randint(0, width - crop_w) if width > crop_w else 0
    y0 = rng.randint(0, height - crop_h) if height > crop_h else 0
    return x0, y0, crop_w, crop_h


def voc_rand_crop(feature, label, height, width):
    """Crop the same random rectangle out of an image and its label. Source: D2L 10.10.4.

    feature: (H, W, C), label: (H, W, C') NDArrays -> (height, width, C), (height, width, C').
    MXNet's random_crop would upsample an image smaller than the crop but not its label, so that is refused.
    """
    fh, fw = feature.shape[:2]
    if tuple(label.shape[:2]) != (fh, fw):
        raise D2lsegError(f"voc_rand_crop: image is {fw}x{fh} but label is {label.shape[1]}x{label.shape[0]}; "
                          f"they must have the same size")
    if fh < height or fw < width:
        raise D2lsegError(f"voc_rand_crop: image {fw}x{fh} is smaller than the crop {width}x{height}; "
                          f"filter such images out first (VOCSegDataset.filter)")
    feature, rect = image.random_crop(feature, (width, height))
    label = image.fixed_crop(label, *rect)
    return feature, label


class _EpochSampler(gluon.data.Sampler):
    """Indices whose order depends only on (seed, epoch): resumable, worker-safe, shardable by rank.

    Shuffled: a permutation, truncated to a multiple of ``parts`` so every worker runs equally many
    steps, then every ``parts``-th index from ``rank``. Unshuffled: every ``parts``-th index.
    """

    def __init__(self, dataset, seed, rank=0, parts=1, shuffle=True):
        self._dataset, self._seed, self._rank, self._parts, self._shuffle = dataset, seed, rank, parts, shuffle

    def _indices(self):
        n = len(self._dataset)
        if not self._shuffle:
            return np.arange(n)[self._rank::self._parts]
        rng = np.random.default_rng([self._seed or 0, self._dataset.epoch])
        return rng.permutation(n)[:n // self._parts * self._parts][self._rank::self._parts]

    def __iter__(self):
        return iter(self._indices().tolist())

    def __len__(self):
        return len(self._indices())


class VOCSegDataset(gluon.data.Dataset):
    """VOC2012 segmentation split as (image, label) pairs of random crops.

    Items: (3, h, w) float32 normalised image, (h, w) float32 class indices (255 = ignore).
    Images are stored as uint8 and normalised per crop (4x less memory than the chapter, same values).
    ``seed`` makes crops depend only on (seed, epoch, index). Source: D2L 10.10.4.
    """

    def __init__(self, is_train, crop_size, voc_dir, colormap2label=None, ignore_boundary=False,
                 seed=None, max_images=None, verbose=True):
        self.crop_size = tuple(crop_size)
        self.seed, self.epoch = seed, 0
        lut = None
        if colormap2label is not None:
            lut = colormap2label.asnumpy() if isinstance(colormap2label, nd.NDArray) else np.asarray(colormap2label)
        stats = {}
        features, labels, kept_names, total = [], [], [], 0
        h, w = self.crop_size
        for name, img, lab in iter_split(voc_dir, is_train, ignore_boundary, max_images, lut, stats):
            total += 1
            if img.shape[0] >= h and img.shape[1] >= w:
                features.append(np.ascontiguousarray(img))
                labels.append(lab)
                kept_names.append(name)
        if not features:
            raise D2lsegError(f"{voc_dir}: all {total} images are smaller than the crop {h}x{w}; "
                              f"use a smaller --crop")
        self.features, self.labels, self.names = features, labels, kept_names
        self.num_dropped = total - len(features)
        self.unknown_pixels = stats.get('unknown_pixels', 0)
        if self.unknown_pixels:
            log.warning("%d label pixels in %s have colours outside VOC_COLORMAP; mapped to background",
                        self.unknown_pixels, voc_dir)
        if verbose:
            print('read ' + str(len(self.features)) + ' examples'
                  + (f' ({self.num_dropped} smaller than the crop dropped)' if self.num_dropped else ''))

    def normalize_image(self, img):
        """Normalise an (H, W, 3) uint8 image with the ImageNet mean and std."""
        return normalize_image(img)

    def filter(self, imgs):
        """Keep images at least as large as the crop (the chapter's filter)."""
        return [img for img in imgs if (
            img.shape[0] >= self.crop_size[0] and img.shape[1] >= self.crop_size[1])]

    def set_epoch(self, epoch):
        """Select the epoch whose crops a seeded data set serves."""
        self.epoch = int(epoch)

    def sampler(self, rank=0, parts=1):
        """A shuffling sampler tied to this data set's seed and epoch; ``rank`` of ``parts`` shards."""
        return _EpochSampler(self, self.seed, rank, parts, shuffle=True)

    def shard_sampler(self, rank=0, parts=1):
        """Every ``parts``-th index from ``rank``, in order (evaluation shards)."""
        return _EpochSampler(self, self.seed, rank, parts, shuffle=False)

    def crop_rect(self, idx):
        h, w = self.crop_size
        img = self.features[idx]
        if self.seed is None:
            return crop_rect(img.shape[0], img.shape[1], h, w)
        rng = random.Random(f'{self.seed}-{self.epoch}-{idx}')
        return crop_rect(img.shape[0], img.shape[1], h, w, rng)

    def __getitem__(self, idx):
        x0, y0, w, h = self.crop_rect(idx)
        img = self.features[idx][y0:y0 + h, x0:x0 + w]
        lab = self.labels[idx][y0:y0 + h, x0:x0 + w]
        feature = normalize_image(img).transpose(2, 0, 1)
        return nd.array(feature), nd.array(lab, dtype='float32')

    def __len__(self):
        return len(self.features)

    def nbytes(self):
        """Bytes held by the stored images and labels."""
        return sum(f.nbytes for f in self.features) + sum(lab.nbytes for lab in self.labels)


def load_data_voc(batch_size, crop_size, voc_dir='../data/VOCdevkit/VOC2012', num_workers=0,
                  ignore_boundary=False, seed=None):
    """Train and validation DataLoaders of VOCSegDataset, ``last_batch='discard'``. Source: D2L 10.10.4."""
    train = VOCSegDataset(True, crop_size, voc_dir, ignore_boundary=ignore_boundary, seed=seed)
    test = VOCSegDataset(False, crop_size, voc_dir, ignore_boundary=ignore_boundary, seed=seed)
    kw = dict(last_batch='discard', num_workers=num_workers, thread_pool=num_workers > 0)
    if seed is None:
        train_iter = gluon.data.DataLoader(train, batch_size, shuffle=True, **kw)
    else:
        train_iter = gluon.data.DataLoader(train, batch_size, sampler=train.sampler(), **kw)
    test_iter = gluon.data.DataLoader(test, batch_size, **kw)
    return train_iter, test_iter


def _sha1(path, chunk=1 << 20):
    h = hashlib.sha1()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(chunk), b''):
            h.update(block)
    return h.hexdigest()


def safe_extract(tar_path, dest, source=None):
    """Extract a tar archive, refusing any member that would land outside ``dest``.

    ``source`` (default ``tar_path``) is the name errors give for the archive, e.g. its URL.
    """
    source = source or tar_path
    dest_real = os.path.realpath(dest)
    try:
        with tarfile.open(tar_path) as tar:
            members = tar.getmembers()
            for m in members:
                target = os.path.realpath(os.path.join(dest_real, m.name))
                if os.path.commonpath([dest_real, target]) != dest_real or m.issym() or m.islnk() or m.isdev():
                    raise D2lsegError(f"{source}: member {m.name!r} would escape the folder it is extracted "
                                      f"to (absolute, ../ and link members are refused); archive refused")
            extra = {'filter': 'data'} if hasattr(tarfile, 'data_filter') else {}  # Python >= 3.11.4: a second guard
            tar.extractall(dest_real, members=members, **extra)
    except tarfile.TarError as e:
        reason = first_line(e).rstrip(':')
        raise D2lsegError(f"{source}: not a readable tar archive ({reason}); download it again") from None


def _download(url, dest_file, timeout=30):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        total = int(r.headers.get('Content-Length') or 0)
        with open(dest_file, 'wb') as f, bar(total=total or None, unit='B', unit_scale=True,
                                             desc=os.path.basename(url.split('#')[0])) as download_bar:
            got = 0
            for block in iter(lambda: r.read(1 << 20), b''):
                f.write(block)
                got += len(block)
                download_bar.update(len(block))
    if total and got != total:
        raise D2lsegError(f"{url}: download cut short ({got} of {total} bytes)")


def download_voc_pascal(data_dir='../data', urls=VOC_URLS, sha1=VOC_SHA1, timeout=30):
    """Return ``<data_dir>/VOCdevkit/VOC2012``, downloading and extracting VOC2012 when missing.

    The tar is streamed to a temporary file, its sha1 checked, then extracted safely into a
    temporary folder that is renamed into place only when complete. Source: D2L 10.10.4.
    """
    voc_dir = os.path.join(data_dir, VOC_SUBDIR)
    if os.path.isdir(os.path.join(voc_dir, 'ImageSets', 'Segmentation')):
        return voc_dir
    if os.path.exists(voc_dir):
        raise D2lsegError(f"{voc_dir}: exists but has no ImageSets/Segmentation (an incomplete tree); "
                          f"remove it and download again")
    writable_folder(data_dir, '--data-dir')
    errors = []
    for url in urls:
        fd, tmp_tar = tempfile.mkstemp(suffix='.tar.part', dir=data_dir)
        os.close(fd)
        tmp_dir = tempfile.mkdtemp(prefix='.voc-extract-', dir=data_dir)
        try:
            _download(url, tmp_tar, timeout)
            got = _sha1(tmp_tar)
            if sha1 and got != sha1:
                raise D2lsegError(f"{url}: sha1 {got} does not match the expected {sha1}")
            safe_extract(tmp_tar, tmp_dir, source=url)
            extracted = os.path.join(tmp_dir, VOC_SUBDIR)
            if not os.path.isdir(extracted):
                raise D2lsegError(f"{url}: archive has no {VOC_SUBDIR} folder")
            os.makedirs(os.path.dirname(voc_dir), exist_ok=True)
            os.replace(extracted, voc_dir)
            return voc_dir
        except D2lsegError as e:
            errors.append(str(e))
        except (OSError, ValueError, tarfile.TarError, http.client.HTTPException) as e:
            reason = str(getattr(e, 'reason', e)) or type(e).__name__
            errors.append(f"{url}: {' '.join(reason.split())}")
        finally:
            if os.path.exists(tmp_tar):
                os.remove(tmp_tar)
            shutil.rmtree(tmp_dir, ignore_errors=True)
    raise D2lsegError("could not download Pascal VOC2012 (" + "; ".join(errors) + "); offline, use "
                      f"`d2lseg synth --root {data_dir}` for the synthetic VOC-format set")
