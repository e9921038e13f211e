"""The VOC classes and colours (``d2lseg.data.palette``, D2L 10.10.4): names, the palette, the chapter's
colour-to-index lookup on NDArrays and numpy arrays."""
import numpy as np
from mxnet import nd

from d2lseg.data.palette import VOC_CLASSES, VOC_COLORMAP, VOID_COLOR, voc_label_indices, voc_palette


def test_classes_and_colormap_match_the_voc_palette():
    assert len(VOC_CLASSES) == 21 and len(VOC_COLORMAP) == 21
    assert VOC_CLASSES[0] == 'background' and VOC_CLASSES[16] == 'potted plant' and VOC_CLASSES[20] == 'tv/monitor'
    assert VOC_CLASSES[15] == 'person' and len(set(VOC_CLASSES)) == 21
    pal = voc_palette()
    assert pal.shape == (256, 3) and pal.dtype == np.uint8
    assert pal[:21].tolist() == VOC_COLORMAP
    assert tuple(pal[255]) == (224, 224, 192) == VOID_COLOR
    assert len({tuple(c) for c in pal}) == 256  # every index has its own colour


def test_colormap2label_maps_every_voc_colour(c2l, c2l_void):
    assert c2l.shape == (256 ** 3,)
    cm = np.array(VOC_COLORMAP + [[224, 224, 192], [1, 2, 3], [255, 255, 255]], np.uint8)
    img = np.zeros((4, len(cm), 3), np.uint8)
    img[:] = cm  # every row holds all the colours
    want = np.array(list(range(21)) + [0, 0, 0])
    want_void = np.array(list(range(21)) + [255, 0, 0])
    for lut, expect in ((c2l, want), (c2l_void, want_void)):
        got_nd = voc_label_indices(nd.array(img, dtype='uint8'), lut)  # the chapter's NDArray path
        assert isinstance(got_nd, nd.NDArray) and got_nd.shape == (4, len(cm))
        np.testing.assert_array_equal(got_nd.asnumpy(), np.tile(want if lut is c2l else want_void, (4, 1)))
        np.testing.assert_array_equal(voc_label_indices(img, lut), np.tile(expect, (4, 1)))  # numpy path
