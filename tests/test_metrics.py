"""Segmentation metrics from a confusion matrix (Long et al. 2015, Sec. 5), checked by hand and against GluonCV."""
import importlib.util
import math
import os

import numpy as np
import pytest
from mxnet import nd

from d2lseg.fcn.metrics import ConfusionMatrix
from d2lseg.data.palette import VOC_CLASSES

# 4 classes; class 3 appears in neither label nor prediction; the last pixel is void (255).
LABEL = np.array([[0, 0, 1], [1, 2, 255]])
PRED = np.array([[0, 1, 1], [1, 0, 2]])
# By hand, over the 5 labelled pixels: mat[true, pred] = (0,0) 1, (0,1) 1, (1,1) 2, (2,0) 1.
#   true positives [1, 2, 0, 0]; label counts [2, 2, 1, 0]; prediction counts [2, 3, 0, 0]
#   pixel acc = 3/5; per-class acc [1/2, 1, 0, nan] -> mean 1/2
#   union = label + pred - tp = [3, 3, 1, 0] -> IoU [1/3, 2/3, 0, nan] -> mIoU (nanmean) = 1/3
#   f.w. IoU = 2/5 * 1/3 + 2/5 * 2/3 + 1/5 * 0 = 2/5
HAND_MAT = np.array([[1, 1, 0, 0], [0, 2, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]])


def _check_hand_example(r):
    assert r['pixel_acc'] == pytest.approx(3 / 5)
    assert r['mean_acc'] == pytest.approx(1 / 2)
    assert r['miou'] == pytest.approx(1 / 3)
    assert r['fwiou'] == pytest.approx(2 / 5)
    assert r['iou'][:3] == pytest.approx([1 / 3, 2 / 3, 0])
    assert math.isnan(r['iou'][3])


@pytest.mark.parametrize('wrap', [np.asarray, nd.array, lambda a: a.tolist()])
def test_hand_worked_example(wrap):
    cm = ConfusionMatrix(num_classes=4).update(wrap(PRED), wrap(LABEL))
    np.testing.assert_array_equal(cm.mat, HAND_MAT)
    _check_hand_example(cm.compute())


def test_any_shape_and_batches_accumulate():
    cm = ConfusionMatrix(num_classes=4)
    cm.update(nd.array(PRED.reshape(1, 1, 6)[:, :, :4]), LABEL.reshape(6)[:4])  # (1, 1, 4) vs (4,)
    cm.update(PRED.reshape(6)[4:].astype(np.float32), nd.array(LABEL.reshape(6, 1)[4:]))
    np.testing.assert_array_equal(cm.mat, HAND_MAT)
    with pytest.raises(ValueError, match='6 pixels but label has 5'):
        cm.update(PRED, LABEL.reshape(-1)[:5])


def test_class_only_predicted_has_zero_iou_and_no_accuracy():
    """A class never in the labels but predicted: IoU 0 (counts in mIoU), accuracy NaN (excluded)."""
    cm = ConfusionMatrix(num_classes=3).update([0, 0, 2, 1], [0, 0, 1, 1])
    r = cm.compute()
    assert r['iou'] == pytest.approx([1, 1 / 2, 0])
    assert r['miou'] == pytest.approx(1 / 2)
    assert r['mean_acc'] == pytest.approx(3 / 4)  # (1 + 1/2) / 2
    assert r['fwiou'] == pytest.approx(1 / 2 * 1 + 1 / 2 * 1 / 2)


def test_ignored_labels_and_empty_matrix():
    cm = ConfusionMatrix(num_classes=3).update([1, 2, 0], [255, -1, 7])  # all out of range: nothing counted
    assert cm.mat.sum() == 0
    r = cm.compute()
    assert all(math.isnan(r[k]) for k in ('pixel_acc', 'mean_acc', 'miou', 'fwiou'))
    assert all(math.isnan(v) for v in r['iou'])
    assert 'pixel acc nan' in cm.table()


def test_out_of_range_prediction_is_an_error_not_a_silent_miscount():
    cm = ConfusionMatrix(num_classes=3)
    with pytest.raises(ValueError, match=r'prediction has class 3 outside \[0, 3\)'):
        cm.update([3], [0])  # would otherwise be counted as (true 1, pred 0)
    with pytest.raises(ValueError, match=r'class -1'):
        cm.update([-1, 0], [2, 0])
    cm.update([255, 1], [255, 1])  # a void pixel's prediction is never looked at
    np.testing.assert_array_equal(cm.mat, [[0, 0, 0], [0, 1, 0], [0, 0, 0]])


def test_merge_equals_one_matrix_over_both():
    rng = np.random.RandomState(0)
    labels = rng.randint(0, 5, size=(2, 6, 7))
    labels[rng.rand(*labels.shape) < 0.1] = 255
    preds = rng.randint(0, 5, size=(2, 6, 7))
    a = ConfusionMatrix(5).update(preds[0], labels[0])
    b = ConfusionMatrix(5).update(preds[1], labels[1])
    both = ConfusionMatrix(5).update(preds, labels)
    np.testing.assert_array_equal(ConfusionMatrix(5).merge(a).merge(b.mat).mat, both.mat)
    assert a.merge(b).compute() == both.compute()
    assert both.mat.sum() == (labels != 255).sum()
    both.reset()
    assert both.mat.sum() == 0


def test_table_lists_voc_class_names():
    cm = ConfusionMatrix(21).update(np.arange(21), np.arange(21))
    text = cm.table()
    lines = text.splitlines()
    assert lines[0] == 'pixel acc 1.0000  mean acc 1.0000  mIoU 1.0000  f.w. IoU 1.0000'
    assert len(lines) == 2 + 21
    for name, line in zip(VOC_CLASSES, lines[2:]):
        assert line.rsplit(None, 1) == [name, '1.0000']
    assert 'potted plant' in text and 'tv/monitor' in text
    absent = ConfusionMatrix(3).update([0], [0]).table(class_names=['bg', 'cat', 'dog'])
    assert absent.splitlines()[-1].split() == ['dog', '-']


def _gluoncv_segmentation():
    """gluoncv/utils/metrics/segmentation.py (numpy + mxnet only), loaded without gluoncv's __init__.

    That __init__ raises RuntimeError when a torch >= 2 is installed alongside, whatever one imports.
    """
    spec = importlib.util.find_spec('gluoncv')
    if spec is None:
        pytest.skip('gluoncv is not installed (it needs numpy 1.x: Python 3.9-3.12)')
    path = os.path.join(os.path.dirname(spec.origin), 'utils', 'metrics', 'segmentation.py')
    module_spec = importlib.util.spec_from_file_location('gluoncv_segmentation_metrics', path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def test_agrees_with_gluoncv_segmentation_metric():
    """GluonCV's SegmentationMetric on the same logits and labels.

    Its conventions: update(labels (N, H, W), preds = logits (N, C, H, W)) takes the argmax itself; it
    shifts labels by +1 and ignores what becomes 0, i.e. it ignores label -1, not 255 (a 255 would count
    as a labelled, never-correct pixel), so void pixels are passed to it as -1. Its per-class IoU is
    inter / (eps + union), so an absent class scores 0 rather than NaN: all classes occur here, and
    the per-class intersections/unions (total_inter, total_union) are compared directly as well.
    """
    segmentation = _gluoncv_segmentation()
    rng = np.random.RandomState(42)
    nclass = 6
    ours, theirs = ConfusionMatrix(nclass), segmentation.SegmentationMetric(nclass)
    for _ in range(3):
        labels = rng.randint(0, nclass, size=(2, 12, 16))
        labels[rng.rand(*labels.shape) < 0.15] = 255
        logits = rng.randn(2, nclass, 12, 16).astype(np.float32)
        logits[:, 2] += 0.5 * (labels == 2)  # some skill, so accuracies are not all ~1/nclass
        ours.update(logits.argmax(axis=1), labels)
        theirs.update(nd.array(np.where(labels == 255, -1, labels)), nd.array(logits))
    r = ours.compute()
    pix_acc, miou = theirs.get()
    assert r['pixel_acc'] == pytest.approx(pix_acc, rel=1e-9)
    assert r['miou'] == pytest.approx(miou, rel=1e-9)
    m = ours.mat
    np.testing.assert_array_equal(theirs.total_inter, np.diag(m))
    np.testing.assert_array_equal(theirs.total_union, m.sum(0) + m.sum(1) - np.diag(m))
    assert theirs.total_label == m.sum() < 3 * 2 * 12 * 16  # void pixels excluded by both
