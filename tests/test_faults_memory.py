"""Memory by tile: predict and evaluate (multi-scale included) hold bands of rows besides the image and its
labels, never a whole score map; a pixel cap refuses decompression-bomb sizes before decoding, in one line."""
import importlib.util
import os
import struct
import tracemalloc
import zlib

import mxnet as mx
import numpy as np
import pytest
from PIL import Image

from d2lseg.command.cli import main
from d2lseg.data.images import read_image
from d2lseg.fcn.inference import predict_full, predict_multiscale
from d2lseg.fcn.model import build_fcn
from d2lseg.data.palette import voc_palette
from d2lseg.command.photos import class_shares
from d2lseg.fcn.viz import overlay

pytestmark = pytest.mark.fault


@pytest.fixture(scope='module')
def net():
    net = build_fcn(21, pretrained=False, fast_upsampling=True)
    net.hybridize(static_alloc=True)
    return net


def numpy_peak(f):
    tracemalloc.start()
    try:
        result = f()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_multiscale_memory_grows_with_the_width_not_the_area(net):
    """Images 96 wide and 1280 or 2560 high, three scales and their mirrors: the taller one's numpy peak
    grows by its labels and resized images only; the whole (21, H, W) score map it would need at once
    before (three times, for the resized maps) is 20.6 MB."""
    def peak(height):
        img = np.random.default_rng(2).integers(0, 256, (height, 96, 3), dtype=np.uint8)
        labels, top = numpy_peak(lambda: predict_multiscale(net, img, (0.75, 1.0, 1.25), True, (64, 96), mx.cpu(),
                                                            dtype=np.uint8))
        assert labels.shape == (height, 96)
        return top
    short, tall = peak(1280), peak(2560)
    score_map = 21 * 4 * 2560 * 96
    images = 2 * 3 * 96 * 1280 * (0.75 ** 2 + 1 + 1.25 ** 2 + 1)  # resized and mirrored copies, and labels
    assert tall < short + images + 0.1 * score_map, (short, tall, score_map)


def test_multiscale_equals_the_average_of_whole_resized_score_maps(net):
    """The streamed bands give what resizing whole score maps (OpenCV) and averaging them gives. The input
    images are resized by the same rule (``pixels.ResizedRows`` whole; it may differ from cv2.resize by one level,
    tested below), so only the streaming of the score maps is compared here."""
    import cv2
    from d2lseg.fcn.inference import predict_logits_full
    from d2lseg.data.pixels import ResizedRows
    img = np.random.default_rng(3).integers(0, 256, (150, 230, 3), dtype=np.uint8)
    total = 0
    for s in (0.75, 1.25):
        x = ResizedRows(img, (round(150 * s), round(230 * s)))[0:round(150 * s)]
        for mirrored in (False, True):
            logits = predict_logits_full(net, np.ascontiguousarray(x[:, ::-1]) if mirrored else x, (64, 96))
            logits = logits[:, :, ::-1] if mirrored else logits
            total = total + np.stack([cv2.resize(np.ascontiguousarray(c), (230, 150), interpolation=cv2.INTER_LINEAR)
                                      for c in logits])
    streamed = predict_multiscale(net, img, (0.75, 1.25), True, (64, 96))
    assert (streamed == total.argmax(axis=0)).mean() > 0.999  # float rounding may flip a near tie


def test_prediction_outputs_hold_bytes_per_pixel_not_float_copies(net):
    """Labels as uint8, the overlay and the class counts computed in bands: what a taller image adds is a few
    bytes per pixel (the overlay's 3; a float overlay of the whole image needed about 60)."""
    img = np.random.default_rng(4).integers(0, 256, (256, 512, 3), dtype=np.uint8)
    labels, _ = numpy_peak(lambda: predict_full(net, img, (64, 96), mx.cpu(), dtype=np.uint8))
    assert labels.dtype == np.uint8

    def outputs_peak(times):
        tall, tall_labels = np.concatenate([img] * times), np.concatenate([labels] * times)
        return numpy_peak(lambda: (overlay(tall, tall_labels), class_shares(tall_labels)))[1]
    added = 256 * 512 * 12
    assert outputs_peak(16) - outputs_peak(4) < 4 * added, (outputs_peak(16) - outputs_peak(4)) / added


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
spec = importlib.util.spec_from_file_location('bench_memory', os.path.join(ROOT, 'bench', 'memory.py'))
bench_memory = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench_memory)


@pytest.fixture(scope='module')
def tall_trees(tmp_path_factory):
    """256 wide, 2048 and 24576 rows: 5.8 million pixels apart, so a byte per pixel is 5.8 MB of peak RSS."""
    root = tmp_path_factory.mktemp('tall')
    return [bench_memory.voc_tree(str(root / str(h)), h, 256) for h in (2048, 24576)]


@pytest.mark.slow
@pytest.mark.parametrize('mode', ['predict', 'overlay', 'multiscale'])
def test_peak_rss_grows_by_a_few_bytes_per_pixel(mode, tall_trees, tmp_path):
    """Peak resident memory (VmHWM, a fresh process each) of d2lseg predict's steps (``predict``: read and
    label; ``overlay``: everything it writes) and of evaluate --scales 0.75,1,1.25 --flip, on two images of
    the same width: what the taller one adds per pixel is its image, labels and Pillow's decoding (about 8
    bytes measured, docs/hardening.md), never float copies of it. At d0eafc3: overlay 72, multi-scale 61."""
    found, per_pixel = bench_memory.measure(mode, tall_trees, str(tmp_path), ['--classes', '2'])
    assert 3 <= per_pixel < 16, (mode, per_pixel, found)  # the image itself is 3: below, the peak was elsewhere


@pytest.mark.parametrize('shape', [(517, 333), (1, 7), (300, 1)])
def test_pngs_written_by_bands_decode_to_what_was_given(shape, tmp_path):
    """pixels.write_png (what predict writes its label PNGs and overlays with) against Pillow's decoder."""
    from d2lseg.data.pixels import label_bands, write_png
    rng = np.random.default_rng(5)
    img = rng.integers(0, 256, shape + (3,), dtype=np.uint8)
    img[len(img) // 3:] //= 16  # runs of equal values too
    labels = rng.integers(0, 21, shape).astype(np.uint8)
    labels[::7] = 255
    write_png(str(tmp_path / 'rgb.png'), label_bands(img, 64), shape)
    write_png(str(tmp_path / 'label.png'), label_bands(labels, 100), shape, voc_palette())
    rgb, label = Image.open(tmp_path / 'rgb.png'), Image.open(tmp_path / 'label.png')
    assert rgb.mode == 'RGB' and np.array_equal(np.asarray(rgb), img)
    assert label.mode == 'P' and np.array_equal(np.asarray(label), labels)
    assert label.getpalette() == voc_palette().reshape(-1).tolist()
    with pytest.raises(ValueError, match='rows given'):
        write_png(str(tmp_path / 'short.png'), label_bands(labels[:-1]), shape, voc_palette())


@pytest.mark.parametrize('size,mirrored', [((113, 170), False), ((188, 287), True), ((150, 230), True)])
def test_resized_rows_are_opencvs_resize_band_by_band(size, mirrored):
    """The image evaluate --scales resizes a band at a time equals cv2.resize (INTER_LINEAR) to 1 level."""
    import cv2
    from d2lseg.data.pixels import ResizedRows
    img = np.random.default_rng(6).integers(0, 256, (150, 230, 3), dtype=np.uint8)
    lazy = ResizedRows(img, size, mirrored)
    got = np.concatenate([lazy[y:y + 37] for y in range(0, size[0], 37)])
    want = cv2.resize(img, size[::-1], interpolation=cv2.INTER_LINEAR)
    want = want[:, ::-1] if mirrored else want
    diff = np.abs(got.astype(int) - want.astype(int))
    assert got.shape == want.shape == size + (3,) and lazy.shape == size + (3,)
    assert diff.max() <= 1 and (diff == 0).mean() > 0.8, (diff.max(), (diff == 0).mean())  # cv2: 11-bit fixed point


def png_header(width, height):
    """A PNG that says it is width x height (RGB) and holds no pixels: what a decompression bomb looks like
    before it is decoded."""
    def chunk(kind, data):
        return struct.pack('>I', len(data)) + kind + data + struct.pack('>I', zlib.crc32(kind + data))
    return (b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', struct.pack('>IIBBBBB', width, height, 8, 2, 0, 0, 0))
            + chunk(b'IDAT', zlib.compress(b'')) + chunk(b'IEND', b''))


@pytest.mark.filterwarnings('ignore::PIL.Image.DecompressionBombWarning')  # the CLI turns it off (allow_pixels)
@pytest.mark.parametrize('side', [13000, 60000])  # past d2lseg's cap; past PIL's own guard too
def test_a_pixel_cap_refuses_decompression_bombs_in_one_line(side, tmp_path, capsys):
    bomb = tmp_path / 'bomb.png'
    bomb.write_bytes(png_header(side, side))
    with pytest.raises(Exception, match='raise --max-pixels') as e:
        read_image(str(bomb))
    assert '\n' not in str(e.value) and 'bomb.png' in str(e.value)
    Image.new('RGB', (60, 40)).save(tmp_path / 'small.png')
    assert read_image(str(tmp_path / 'small.png'), max_pixels=2400).shape == (40, 60, 3)
    with pytest.raises(Exception, match='60x40, 0 million pixels, more than --max-pixels 2399'):
        read_image(str(tmp_path / 'small.png'), max_pixels=2399)


def test_max_pixels_is_a_flag_of_predict_and_evaluate(capsys):
    for command in ('predict', 'evaluate'):
        with pytest.raises(SystemExit):
            main([command, '--help'])
        assert '--max-pixels' in capsys.readouterr().out
