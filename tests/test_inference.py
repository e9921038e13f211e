"""Prediction (D2L 10.10.6): predict, label2image, tiled full-image prediction, and the plots."""

import json

import mxnet as mx
import numpy as np
import pytest
from mxnet import nd
from mxnet.gluon import nn

from d2lseg import native
from d2lseg.fcn.inference import (label2image, label_graph, predict, predict_batch, predict_full, predict_logits_full,
                              predict_multiscale, tile_starts)
from d2lseg.fcn.model import build_fcn
from d2lseg.data.images import normalize_image
from d2lseg.data.palette import VOC_COLORMAP


@pytest.fixture(scope='module')
def net():
    mx.random.seed(3)
    n = build_fcn(variant='fcn32s', pretrained=False)
    n.hybridize(static_alloc=True)
    return n


def _image(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize('length,tile', [(64, 64), (100, 64), (128, 64), (375, 320), (500, 480), (1000, 96)])
def test_tiles_cover_every_pixel_and_stay_inside(length, tile):
    starts = tile_starts(length, tile)
    assert starts[0] == 0 and starts[-1] == length - tile
    covered = np.zeros(length, int)
    for s in starts:
        covered[s:s + tile] += 1
    assert covered.min() >= 1
    assert len(starts) == int(np.ceil((length - tile) / tile)) + 1  # no more tiles than needed


def test_tile_starts_of_a_short_side_is_one_padded_tile():
    assert tile_starts(50, 64) == [0]


def test_predict_is_normalise_forward_argmax(net):
    img = _image(64, 96)
    X = nd.array(normalize_image(img).transpose(2, 0, 1)[None])
    expected = net(X).argmax(axis=1)[0].asnumpy()
    pred = predict(net, nd.array(img, dtype='uint8'))
    assert pred.shape == (64, 96)
    np.testing.assert_array_equal(pred.asnumpy(), expected)


@pytest.mark.parametrize('variant', ['fcn32s', 'fcn16s', 'fcn8s'])
def test_predict_batch_fuses_the_upsampling_and_argmax_with_the_same_labels(variant):
    if not native.load():
        pytest.skip('the native kernels did not build here: predict_batch is argmax_channel(net(X))')
    mx.random.seed(4)
    fast = build_fcn(variant=variant, pretrained=False, fast_upsampling=True)
    X = nd.random.normal(shape=(2, 3, 64, 96))
    graph = label_graph(fast)
    assert graph is not None and label_graph(fast) is graph  # made once per net
    ops = {n['op'] for n in json.loads(graph(mx.sym.var('data')).tojson())['nodes']}
    assert 'd2lseg_upsample_argmax' in ops and 'd2lseg_upsample' not in ops
    labels = predict_batch(fast, X)
    assert labels.shape == (2, 64, 96)
    scores = fast(X)
    np.testing.assert_array_equal(labels.asnumpy(), scores.argmax(axis=1).asnumpy())
    # parameters are shared: an update of the net is seen by its label graph
    up = fast.upsample
    up.bias.set_data(nd.array(np.arange(21) == 7, dtype='float32') * 1e4)
    assert (predict_batch(fast, X).asnumpy() == 7).all()


def test_predict_batch_without_a_native_upsampling_is_argmax_of_the_scores(net):
    assert label_graph(net) is None   # the chapter's HybridSequential (Conv2DTranspose)
    mx.random.seed(5)
    off = build_fcn(pretrained=False, fast_upsampling=True)
    with native.override(False):
        assert label_graph(off) is None
    X = nd.random.normal(shape=(1, 3, 64, 96))
    np.testing.assert_array_equal(predict_batch(net, X).asnumpy(), net(X).argmax(axis=1).asnumpy())


def test_full_prediction_of_one_tile_equals_predict(net):
    img = _image(64, 96, seed=1)
    full = predict_full(net, img, tile=(64, 96))
    np.testing.assert_array_equal(full, predict(net, img).asnumpy().astype(np.int64))


@pytest.mark.parametrize('h,w', [(70, 100), (40, 50), (130, 97), (64, 200)])
def test_full_prediction_keeps_the_input_size(net, h, w):
    assert predict_full(net, _image(h, w), tile=(64, 96)).shape == (h, w)


def test_full_logits_average_the_overlapping_tiles(net):
    """A 64x128 image with 64x96 tiles: columns 32..95 are covered twice and get the mean of both tiles."""
    img = _image(64, 128, seed=2)
    logits = predict_logits_full(net, img, tile=(64, 96))
    X = nd.array(normalize_image(img).transpose(2, 0, 1)[None])
    left = net(X[:, :, :, 0:96])[0].asnumpy()
    right = net(X[:, :, :, 32:128])[0].asnumpy()
    np.testing.assert_allclose(logits[:, :, :32], left[:, :, :32], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(logits[:, :, 32:96], (left[:, :, 32:] + right[:, :, :64]) / 2, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(logits[:, :, 96:], right[:, :, 64:], rtol=1e-5, atol=1e-5)


def test_small_image_is_padded_with_the_mean_colour(net):
    """Padding happens in normalised space with zeros, i.e. the ImageNet mean colour."""
    img = _image(40, 50, seed=4)
    logits = predict_logits_full(net, img, tile=(64, 96))
    X = np.zeros((1, 3, 64, 96), np.float32)
    X[0, :, :40, :50] = normalize_image(img).transpose(2, 0, 1)
    np.testing.assert_allclose(logits, net(nd.array(X))[0].asnumpy()[:, :40, :50], rtol=1e-5, atol=1e-5)


def test_bad_tile_is_a_clear_error(net):
    from d2lseg.core.errors import D2lsegError
    with pytest.raises(D2lsegError, match='multiples of 32'):
        predict_full(net, _image(64, 64), tile=(60, 96))


def test_label2image_uses_the_voc_colormap():
    pred = nd.array([[0, 1], [15, 20]])
    img = label2image(pred).asnumpy()
    assert img.dtype == np.uint8 and img.shape == (2, 2, 3)
    np.testing.assert_array_equal(img, np.array([[VOC_COLORMAP[0], VOC_COLORMAP[1]],
                                                 [VOC_COLORMAP[15], VOC_COLORMAP[20]]], np.uint8))
    np.testing.assert_array_equal(label2image(np.array([[7]])).asnumpy()[0, 0], VOC_COLORMAP[7])


def test_overlay_blends_only_foreground():
    from d2lseg.fcn.viz import overlay
    img = np.full((2, 2, 3), 100, np.uint8)
    out = overlay(img, np.array([[0, 1], [0, 0]]), alpha=0.5)
    np.testing.assert_array_equal(out[0, 0], [100, 100, 100])
    np.testing.assert_array_equal(out[0, 1], [114, 50, 50])  # (100 + 128) / 2, (100 + 0) / 2


def test_plots_are_written(tmp_path):
    from d2lseg.fcn.viz import plot_confusion, plot_history, plt, legend, show_images
    history = {'epochs': [dict(epoch=i, loss=1.0 / i, train_acc=0.5, test_acc=0.6, val_miou=0.2) for i in (1, 2)]}
    path = tmp_path / 'curves.png'
    plot_history(history, str(path))
    assert path.stat().st_size > 1000 and path.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    ax = plot_confusion(np.eye(21) * 5 + 1)
    assert len(ax.get_xticklabels()) == 21
    assert len(ax.texts) == 0 and ax.get_xticklabels()[0].get_fontsize() == 7  # 21 classes: no numbers in the cells
    legend(ax, classes=[0, 3])
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ['background', 'bird']
    few = plot_confusion([[8, 2, 0, 0], [0, 5, 5, 0], [0, 0, 4, 0], [1, 0, 0, 3]], ['sky', 'tree', 'house', 'car'])
    cells = [t.get_text() for t in few.texts]  # 4 classes: each cell's share of its true class, larger fonts
    assert cells == ['0.80', '0.20', '0.00', '0.00', '0.00', '0.50', '0.50', '0.00', '0.00', '0.00', '1.00', '0.00',
                     '0.25', '0.00', '0.00', '0.75'] and few.get_xticklabels()[0].get_fontsize() == 11
    counts = plot_confusion([[8, 2], [0, 5]], ['a', 'b'], normalize=False)
    assert [t.get_text() for t in counts.texts] == ['8', '2', '0', '5']
    axes = show_images([np.zeros((4, 4, 3), np.uint8)] * 3, 1, 3)
    assert axes.shape == (1, 3)
    plt.close('all')


@pytest.mark.fault
def test_whole_image_prediction_memory_grows_with_width_not_area(net):
    """Images 480 wide and 4800 or 9600 high (15 or 30 tile rows): besides the label map, numpy's peak
    is the same for both (a few bands of 21 x 4 bytes x 320 x 480 = 12.9 MB), where the whole logit
    array of the taller one would be 387 MB."""
    import tracemalloc

    def extra_peak(height):
        img = np.random.default_rng(1).integers(0, 256, (height, 480, 3), dtype=np.uint8)
        tracemalloc.start()
        try:
            labels = predict_full(net, img)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert labels.shape == (height, 480)
        return peak - labels.nbytes

    short, tall = extra_peak(4800), extra_peak(9600)
    band = 21 * 4 * 320 * 480
    assert tall < 1.1 * short + (1 << 20) and tall < 8 * band, (short, tall, band)


def test_multiscale_with_one_scale_and_no_flip_is_whole_image_prediction(net):
    img = _image(150, 230, seed=4)
    np.testing.assert_array_equal(predict_multiscale(net, img, scales=(1.0,), flip=False, tile=(64, 96)),
                                  predict_full(net, img, tile=(64, 96)))
    several = predict_multiscale(net, img, scales=(0.75, 1.0, 1.25), flip=True, tile=(64, 96))
    assert several.shape == (150, 230) and several.dtype == np.int64


def test_flip_averaging_of_a_mirror_symmetric_case_changes_nothing():
    """A per-pixel network is mirror-equivariant: on a mirror-symmetric image the mirrored scores, flipped
    back, are the scores themselves, so averaging them with flip gives the same classes."""
    per_pixel = nn.Conv2D(5, kernel_size=1, in_channels=3)
    per_pixel.initialize(mx.init.Normal(1.0))
    half = _image(64, 48, seed=5)
    img = np.concatenate([half, half[:, ::-1]], axis=1)           # mirror-symmetric, 64x96
    plain = predict_multiscale(per_pixel, img, scales=(1.0,), flip=False, tile=(64, 96))
    flipped = predict_multiscale(per_pixel, img, scales=(1.0,), flip=True, tile=(64, 96))
    np.testing.assert_array_equal(flipped, plain)
    assert len(np.unique(plain)) > 1


def test_prediction_grid_titles_rows_and_lists_the_classes_and_void_shown():
    from d2lseg.data.classes import ClassList
    from d2lseg.fcn.viz import prediction_grid
    img = np.zeros((32, 48, 3), np.uint8)
    label = np.zeros((32, 48), np.uint8)
    label[4:10, 4:10], label[0] = 2, 255          # bicycle, and a void border
    pred = np.full((32, 48), 15, np.uint8)          # person everywhere
    fig = prediction_grid([(img, label, pred), (img, label, pred)])
    axes = np.array(fig.axes).reshape(3, 2)
    assert [ax.get_ylabel() for ax in axes[:, 0]] == ['input', 'label', 'prediction']
    shown = [t.get_text() for t in fig.legends[0].get_texts()]
    assert shown == ['background', 'bicycle', 'person', 'void (ignored)']
    own = ClassList(['sky', 'tree', 'house'], [(0, 0, 0), (20, 160, 40), (200, 60, 20)])
    fig = prediction_grid([(img, label, np.ones((32, 48), np.uint8))], class_list=own)
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ['sky', 'tree', 'house', 'void (ignored)']
    np.testing.assert_array_equal(fig.axes[2].get_images()[0].get_array()[0, 0], (20, 160, 40))
