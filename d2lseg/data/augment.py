"""Training augmentation (not in the chapter, off by default): random scale, horizontal flip, then the
chapter's random crop, applied identically to the image and its label, seeded per (seed, epoch, image).

The image is resized bilinearly and the label by nearest neighbour (class indices must not blend); an
image smaller than the crop after scaling is padded, the image with the mean colour (zero after
normalisation) and the label with 255 (ignored), as torchvision's segmentation references do. Source:
torchvision ``references/segmentation/transforms.py`` (RandomResize, RandomHorizontalFlip, RandomCrop).
"""
import cv2
import numpy as np

from .images import RGB_MEAN
from .palette import IGNORE_INDEX

SCALES = (0.5, 2.0)


def scale_and_flip(img, label, rng, scales=SCALES):
    """(H, W, 3) uint8 image and (H, W) uint8 label -> both scaled by one factor drawn uniformly from
    ``scales`` and, with probability 1/2, mirrored left-right. rng: a ``numpy.random.Generator``."""
    s = rng.uniform(*scales)
    h, w = label.shape
    size = (max(1, int(round(w * s))), max(1, int(round(h * s))))  # cv2 wants (width, height)
    img = cv2.resize(img, size, interpolation=cv2.INTER_LINEAR)
    label = cv2.resize(label, size, interpolation=cv2.INTER_NEAREST)
    if rng.random() < 0.5:
        img, label = img[:, ::-1], label[:, ::-1]
    return np.ascontiguousarray(img), np.ascontiguousarray(label)


def pad_to(img, label, height, width):
    """Pad image (mean colour) and label (255) at the bottom and right to at least ``height`` x ``width``."""
    h, w = label.shape
    ph, pw = max(0, height - h), max(0, width - w)
    if not ph and not pw:
        return img, label
    mean = tuple(int(round(v * 255)) for v in RGB_MEAN)
    img = cv2.copyMakeBorder(img, 0, ph, 0, pw, cv2.BORDER_CONSTANT, value=mean)
    label = cv2.copyMakeBorder(label, 0, ph, 0, pw, cv2.BORDER_CONSTANT, value=IGNORE_INDEX)
    return img, label


def augmented_crop(img, label, crop, rng, scales=SCALES):
    """Scale, flip, pad if needed, then a random ``crop`` (height, width) -> (image, label) of that size."""
    img, label = scale_and_flip(img, label, rng, scales)
    img, label = pad_to(img, label, *crop)
    h, w = label.shape
    y0, x0 = int(rng.integers(0, h - crop[0] + 1)), int(rng.integers(0, w - crop[1] + 1))
    return img[y0:y0 + crop[0], x0:x0 + crop[1]], label[y0:y0 + crop[0], x0:x0 + crop[1]]
