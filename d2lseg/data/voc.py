"""Pascal VOC2012 semantic segmentation data (D2L 10.10.4): split lists, the chapter's reader, crop and data set.

The chapter's names (``read_voc_images``, ``voc_rand_crop``, ``VOCSegDataset``, ``load_data_voc``)
with its behaviour, plus what the chapter glosses over: palette PNG labels, the void border (index
255), uint8 storage, seeded crops and shardable samplers. Colours and classes are in ``palette``,
strict file readers in ``images``, the download in ``download``.
"""
import logging
import os
import random

import numpy as np
from mxnet import gluon, image, nd

from ..core.constants import DATA_DIR, SYNTHETIC_DIR
from .dataspec import DataSpec
from ..core.errors import D2lsegError
from ..core.textfiles import read_json, read_lines
from .augment import augmented_crop
from .images import check_same_size, label_rgb, normalize_image, open_image, read_label_indices

log = logging.getLogger(__name__)

VOC_SUBDIR = os.path.join('VOCdevkit', 'VOC2012')
SPLITS = ('train', 'val')


def voc_root(data_dir):
    """The VOC-format root of ``data_dir``: ``data_dir/VOCdevkit/VOC2012`` (as the chapter's data folder has
    it), or ``data_dir`` itself when it holds ``JPEGImages`` and ``ImageSets`` (a data set of one's own)."""
    nested = os.path.join(data_dir, VOC_SUBDIR)
    if not os.path.isdir(nested) and all(os.path.isdir(os.path.join(data_dir, d)) for d in ('JPEGImages', 'ImageSets')):
        return data_dir
    return nested


def split_lists(data_dir, splits=SPLITS):
    """The split lists (of ``splits``) that the VOC tree of ``data_dir`` (``voc_root``) holds: the one test
    of whether a folder holds a VOC tree (complete: all of them)."""
    seg = os.path.join(voc_root(data_dir), 'ImageSets', 'Segmentation')
    return tuple(s for s in splits if os.path.isfile(os.path.join(seg, s + '.txt')))


def has_voc(data_dir, splits=SPLITS):
    """True when the VOC tree of ``data_dir`` holds every split list of ``splits``."""
    return split_lists(data_dir, splits) == tuple(splits)


MARKER = os.path.join('VOCdevkit', 'd2lseg-synthetic.json')  # beside VOC2012 (kept exact): what made it


def synthetic_marker(root):
    """The arguments the synthetic tree under ``root`` was made with (``make_synthetic_voc``), or None for
    any other tree."""
    try:
        marker = read_json(os.path.join(root, MARKER), limit=1 << 20)
    except D2lsegError:
        return None
    return marker if isinstance(marker, dict) else None


def has_real_voc(data_dir):
    """True when ``data_dir`` holds a complete VOC tree that is not the synthetic set."""
    return has_voc(data_dir) and synthetic_marker(data_dir) is None


def require_real_voc(data_dir, flag='--data-dir'):
    """One-line D2lsegError when ``data_dir`` holds the synthetic set where the real VOC2012 is expected."""
    if synthetic_marker(data_dir) is not None:
        raise D2lsegError(f"{flag} {data_dir}: holds the synthetic set (made by d2lseg synth; {MARKER}), not "
                          f"Pascal VOC2012; give the folder of the real data (default {DATA_DIR}), or train on the "
                          "synthetic set with --synthetic")


def _check_voc_root(root):
    if not os.path.isdir(root):
        raise D2lsegError(f"{root}: no VOC2012 tree here; run `d2lseg synth` for the synthetic set (it goes to "
                          f"{SYNTHETIC_DIR}) or download_voc_pascal for the real one")


def read_split(root, is_train=True, split=None):
    """Image names of a split, read from ``ImageSets/Segmentation/{train,val}.txt`` (or ``split``.txt)."""
    _check_voc_root(root)
    txt = os.path.join(root, 'ImageSets', 'Segmentation', (split or ('train' if is_train else 'val')) + '.txt')
    if not os.path.isfile(txt):
        if os.path.isdir(os.path.join(root, VOC_SUBDIR)):
            raise D2lsegError(f"{txt}: list file missing; {root} is the data folder, pass "
                              f"{os.path.join(root, VOC_SUBDIR)} instead")
        raise D2lsegError(f"{txt}: list file missing; the VOC tree under {root} is incomplete: "
                          f"download it again or re-run `d2lseg synth`")
    names = [line.strip() for line in read_lines(txt) if line.strip()]
    if not names:
        raise D2lsegError(f"{txt}: list file is empty; it must name the split's images, one per line")
    for lineno, name in enumerate(names, 1):  # ids name files inside the tree, never paths leading out
        if '/' in name or '\\' in name or name in ('.', '..') or '\0' in name:
            raise D2lsegError(f"{txt}: entry {lineno} {name[:80]!r} is a path, not an image id; the list file "
                              "must hold bare ids (e.g. 2007_000032), one per line")
    return names


IMAGE_EXTENSIONS = ('.jpg', '.png', '.jpeg')  # VOC's JPEGImages hold .jpg; data sets of one's own often .png


def _sample_paths(voc_dir, name, label_dir='SegmentationClass'):
    """(image path, label path) of one named sample of a VOC tree (the image .jpg, else .png or .jpeg)."""
    images = [os.path.join(voc_dir, 'JPEGImages', name + ext) for ext in IMAGE_EXTENSIONS]
    return (next((p for p in images if os.path.isfile(p)), images[0]),
            os.path.join(voc_dir, label_dir, f'{name}.png'))


def split_files(voc_dir, split='val', limit=None, label_dir='SegmentationClass'):
    """Every file reading a split reads -> [(what, path)]: its list file, and each named image and label (the
    inputs that ``outputs.check_paths`` keeps outputs off). Nothing when there is no such split."""
    txt = os.path.join(voc_dir, 'ImageSets', 'Segmentation', split + '.txt')
    if not os.path.isfile(txt):
        return []
    files = [('the list file', txt)]
    for name in read_split(voc_dir, split=split)[:limit]:
        image, label = _sample_paths(voc_dir, name, label_dir)
        files += [('the image', image), ('the label', label)]
    return files


def iter_split(voc_dir, is_train=False, spec=None, colormap2label=None, stats=None, **options):
    """Yield (name, image (H, W, 3) uint8, label indices (H, W) uint8) of a split, one at a time.

    spec: what to read (``DataSpec``: split, labels' folder, colours, unknown labels, void border, how
    many, largest image); ``options``: DataSpec fields that replace the spec's (``ignore_boundary=True``);
    ``colormap2label`` (the chapter's lookup) and ``stats``: ``read_label_indices``. ``limit=N``, the name
    of ``max_images`` before DataSpec, is still taken (notebooks/07_own_data's stored cells use it).
    """
    if 'limit' in options:
        options['max_images'] = options.pop('limit')
    spec = (spec or DataSpec()).replace(**options)
    for name in read_split(voc_dir, is_train, spec.split)[:spec.max_images]:
        img_path, lab_path = _sample_paths(voc_dir, name, spec.label_dir)
        img = open_image(img_path, 'rgb', spec.max_pixels)
        lab = read_label_indices(lab_path, spec.ignore_boundary, colormap2label, stats, spec.colors, spec.unknown,
                                 spec.max_pixels)
        check_same_size(img_path, img.shape, lab_path, lab.shape)
        yield name, img, lab


def read_voc_images(root='../data/VOCdevkit/VOC2012', is_train=True):
    """Read all images and RGB colour labels of a split, as the chapter does.

    -> (features, labels): lists of (H, W, 3) uint8 NDArrays. Source: D2L 10.10.4.
    """
    features, labels = [], []
    for fname in read_split(root, is_train):
        img_path, lab_path = _sample_paths(root, fname)
        img, lab = open_image(img_path, 'rgb'), label_rgb(lab_path)
        check_same_size(img_path, img.shape, lab_path, lab.shape)
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

    def __init__(self, is_train, crop_size, voc_dir, colormap2label=None, spec=None, seed=None, verbose=True,
                 augment=False, **options):
        """The chapter's ``(is_train, crop_size, voc_dir)``, and: spec (``DataSpec``) with ``options`` replacing
        its fields (``ignore_boundary=True``, ``max_images=8``); seed: crops depend only on (seed, epoch,
        index); verbose: print the book's line; augment: random scale, flip and crop (``augment``). Nine
        parameters: the chapter's three as the book passes them, then only options with defaults."""
        self.crop_size = tuple(crop_size)
        self.seed, self.epoch, self.augment = seed, 0, augment
        lut = None
        if colormap2label is not None:
            lut = colormap2label.asnumpy() if isinstance(colormap2label, nd.NDArray) else np.asarray(colormap2label)
        stats = {}
        features, labels, kept_names, total = [], [], [], 0
        for name, img, lab in iter_split(voc_dir, is_train, spec, lut, stats, **options):
            total += 1
            if self._fits(img):
                features.append(np.ascontiguousarray(img))
                labels.append(lab)
                kept_names.append(name)
        if not features:
            h, w = self.crop_size
            raise D2lsegError(f"{voc_dir}: all {total} images are smaller than the crop {h}x{w}; "
                              f"use a smaller --crop")
        self.features, self.labels, self.names = features, labels, kept_names
        self.num_dropped = total - len(features)
        self.unknown_pixels = stats.get('unknown_pixels', 0)
        if self.unknown_pixels:
            log.warning("%d label pixels in %s are no class (values or colours outside the class list); mapped to "
                        "background", self.unknown_pixels, voc_dir)
        if verbose:  # the book's line, exactly; how many the crop dropped is ``num_dropped``
            print('read ' + str(len(self.features)) + ' examples')

    def normalize_image(self, img):
        """Normalise an (H, W, 3) uint8 image with the ImageNet mean and std."""
        return normalize_image(img)

    def _fits(self, img):
        return img.shape[0] >= self.crop_size[0] and img.shape[1] >= self.crop_size[1]

    def filter(self, imgs):
        """Keep images at least as large as the crop (the chapter's filter)."""
        return [img for img in imgs if self._fits(img)]

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
        if self.augment:  # scale, flip, crop: seeded by (seed, epoch, index) as the plain crop is
            rng = np.random.default_rng() if self.seed is None else np.random.default_rng([self.seed, self.epoch, idx])
            img, lab = augmented_crop(self.features[idx], self.labels[idx], self.crop_size, rng)
        else:
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
