"""Training augmentation (``d2lseg.data.augment``): image and label stay aligned, seeded, the scale range holds."""
import numpy as np
import pytest

from d2lseg.data.augment import augmented_crop, pad_to, scale_and_flip


def _scene(h=120, w=160, seed=0):
    """An image whose label is drawn from the image itself: class = which of 4 colours a block has."""
    rng = np.random.default_rng(seed)
    colours = np.array([[10, 10, 10], [200, 30, 30], [30, 200, 30], [30, 30, 200]], np.uint8)
    blocks = rng.integers(0, 4, (h // 16, w // 16))
    label = np.kron(blocks, np.ones((16, 16), np.int64)).astype(np.uint8)
    return colours[label], label, colours


def _label_of(img, colours):
    return np.argmin(((img[..., None, :].astype(int) - colours.astype(int)) ** 2).sum(-1), axis=-1)


@pytest.mark.parametrize('seed', range(6))
def test_image_and_label_stay_aligned(seed):
    img, label, colours = _scene(seed=seed)
    out_img, out_label = augmented_crop(img, label, (64, 96), np.random.default_rng(seed))
    assert out_img.shape == (64, 96, 3) and out_label.shape == (64, 96)
    inside = out_label != 255
    # bilinear blending blurs block edges; away from them the label is the image's colour class
    agree = (_label_of(out_img, colours) == out_label)[inside].mean()
    assert agree > 0.9, agree


def test_seeded_and_the_scale_range_holds():
    img, label, _ = _scene()
    a = augmented_crop(img, label, (64, 96), np.random.default_rng(3))
    b = augmented_crop(img, label, (64, 96), np.random.default_rng(3))
    assert all((x == y).all() for x, y in zip(a, b))                    # the same seed, the same crop
    sizes = [scale_and_flip(img, label, np.random.default_rng(s))[1].shape[1] / label.shape[1] for s in range(200)]
    assert 0.5 <= min(sizes) < 0.6 and 1.9 < max(sizes) <= 2.0          # drawn over the whole range
    flipped = [(scale_and_flip(img, label, np.random.default_rng(s), scales=(1, 1))[1] == label[:, ::-1]).all()
               for s in range(200)]
    assert 0.35 < np.mean(flipped) < 0.65                                # mirrored half of the time


def test_padding_is_mean_colour_and_ignored_label():
    img, label, _ = _scene(48, 64)
    pimg, plab = pad_to(img, label, 64, 96)
    assert pimg.shape == (64, 96, 3) and (plab[48:] == 255).all() and (plab[:, 64:] == 255).all()
    assert (pimg[:48, :64] == img).all() and (plab[:48, :64] == label).all() and tuple(pimg[63, 95]) == (124, 116, 104)   # ImageNet's mean colour
