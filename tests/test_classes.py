"""Class lists (``d2lseg.data.classes``): VOC's 21, and classes files of one's own with names and colours."""
import numpy as np
import pytest

from d2lseg.data.classes import ClassList, median_frequency_weights, read_classes, read_weights
from d2lseg.core.errors import D2lsegError
from d2lseg.data.palette import VOC_CLASSES, VOC_COLORMAP


def test_voc_classes_are_the_chapters():
    voc = ClassList.voc()
    assert list(voc.names) == VOC_CLASSES and [list(c) for c in voc.colors] == VOC_COLORMAP
    pal = voc.palette()
    assert pal.shape == (256, 3) and pal[:21].tolist() == VOC_COLORMAP and tuple(pal[255]) == (224, 224, 192)


def test_a_classes_file_with_and_without_colours(tmp_path):
    path = tmp_path / 'classes.txt'
    path.write_text('# my data\nbackground\nroad 128 64 128\n\npotted plant\ntraffic sign 220 220 0  # yellow\n')
    classes = read_classes(str(path))
    assert classes.names == ('background', 'road', 'potted plant', 'traffic sign')
    # missing colours: VOC's palette at the class's index (0: black, 2: VOC's green)
    assert classes.colors == ((0, 0, 0), (128, 64, 128), (0, 128, 0), (220, 220, 0))
    assert classes.palette()[3].tolist() == [220, 220, 0] and classes.palette()[4].tolist() == VOC_COLORMAP[4]
    assert ClassList.from_dict(classes.to_dict()) == classes


@pytest.mark.parametrize('text, says', [
    ('background\n', 'at least two classes'),
    ('background\ncar\ncar\n', "'car' is named twice"),
    ('background\ncar 300 0 0\n', 'line 2: the colour 300 0 0'),
    ('background 0 0 0\ncar 0 0 0\n', 'share a colour'),
    ('\n'.join(f'c{i}' for i in range(300)), 'more than 255 classes'),   # past the palette too: no traceback
    ('background\nwall 224 224 192\n', "VOC's void colour"),
])
def test_bad_classes_files_are_one_line_naming_the_file(tmp_path, text, says):
    path = tmp_path / 'classes.txt'
    path.write_text(text)
    with pytest.raises(D2lsegError, match=says) as e:
        read_classes(str(path))
    assert str(path) in str(e.value) and '\n' not in str(e.value)
    with pytest.raises(D2lsegError, match='no such file'):
        read_classes(str(tmp_path / 'missing.txt'))
    with pytest.raises(D2lsegError, match='names'):
        ClassList.from_dict({'names': ['a'], 'colors': []}, source='model.json')


def test_median_frequency_weights_on_known_labels():
    a = np.zeros((4, 4), np.uint8)               # image 1: 12 background, 4 class 1
    a[:1] = 1
    b = np.full((4, 4), 2, np.uint8)             # image 2: 8 class 2, 4 background, 4 ignored
    b[:1], b[1:2] = 0, 255
    # freq: background 16/28 (both images: 16 + 12 counted pixels), class 1 4/16, class 2 8/12
    freq = np.array([16 / 28, 0.25, 8 / 12])
    w = median_frequency_weights([a, b], 4)
    np.testing.assert_allclose(w[:3], (16 / 28) / freq)       # the median is background's frequency
    assert w[3] == 0                             # a class no image holds


def test_class_weights_from_a_file(tmp_path):
    path = tmp_path / 'w.txt'
    path.write_text('1, 2.5  # background, road\n0.5\n')
    np.testing.assert_array_equal(read_weights(str(path), 3), [1, 2.5, 0.5])
    with pytest.raises(D2lsegError, match='needs 4 non-negative numbers'):
        read_weights(str(path), 4)
