"""The chapter's own code (d2l-zh v1, "Fully Convolutional Networks") runs with ``import d2lseg as d2l``.

The cells below are the chapter's, verbatim, executed in order as a notebook in a working folder
``work/`` whose ``../data`` holds a small synthetic VOC2012 tree and whose ``../img/catdog.jpg`` is a
photograph (matplotlib's ``grace_hopper.jpg``). The only changes, each with its reason:

1. ``import d2lzh as d2l`` -> ``import d2lseg as d2l``: the package under test.
2. ``Y = conv(X)`` is added before the transposed-convolution cell: the chapter uses the ``Y`` of
   the first example there (as the book's text says) without assigning it in a code cell.
3. ``resnet18_v2(pretrained=True)`` -> ``pretrained=False`` followed by
   ``pretrained_net.initialize(init.Xavier())``: no network access to the model zoo, and random
   weights need initialising (the model zoo loads them when ``pretrained=True``).
4. ``batch_size`` 32 -> 4: the test set has 8 training and 4 validation images.
5. ``num_epochs=5`` -> ``num_epochs=1``: a test, not a training run.
``num_workers = 4`` stays (process workers of Gluon's DataLoader work on Linux).
One cell is appended after the chapter's code to report the prediction's values to the test.
"""
import json
import re
import shutil

import numpy as np
import pytest

from nbrun import execute_notebook

pytestmark = pytest.mark.notebook

CHAPTER = [
    '''%matplotlib inline
import d2lzh as d2l
from mxnet import gluon, image, init, nd
from mxnet.gluon import data as gdata, loss as gloss, model_zoo, nn
import numpy as np
import sys''',
    '''X = nd.arange(1, 17).reshape((1, 1, 4, 4))
K = nd.arange(1, 10).reshape((1, 1, 3, 3))
conv = nn.Conv2D(channels=1, kernel_size=3)
conv.initialize(init.Constant(K))
conv(X), K''',
    '''W, k = nd.zeros((4, 16)), nd.zeros(11)
k[:3], k[4:7], k[8:] = K[0, 0, 0, :], K[0, 0, 1, :], K[0, 0, 2, :]
W[0, 0:11], W[1, 1:12], W[2, 4:15], W[3, 5:16] = k, k, k, k
nd.dot(W, X.reshape(16)).reshape((1, 1, 2, 2)), W''',
    '''conv_trans = nn.Conv2DTranspose(channels=1, kernel_size=3)
conv_trans.initialize(init.Constant(K))
conv_trans(Y), nd.dot(W.T, Y.reshape(4)).reshape((1, 1, 4, 4))''',
    '''conv = nn.Conv2D(10, kernel_size=4, padding=1, strides=2)
conv_trans = nn.Conv2DTranspose(3, kernel_size=4, padding=1, strides=2)
conv.initialize()
conv_trans.initialize()
X = nd.random.uniform(shape=(1, 3, 64, 64))
Y = conv(X)
conv_trans(Y).shape''',
    '''pretrained_net = model_zoo.vision.resnet18_v2(pretrained=True)
pretrained_net.features[-4:], pretrained_net.output''',
    '''net = nn.HybridSequential()
for layer in pretrained_net.features[:-2]:
    net.add(layer)''',
    '''X = nd.random.uniform(shape=(1, 3, 320, 480))
net(X).shape''',
    '''num_classes = 21
net.add(nn.Conv2D(num_classes, kernel_size=1),
        nn.Conv2DTranspose(num_classes, kernel_size=64, padding=16,
                           strides=32))''',
    '''def bilinear_kernel(in_channels, out_channels, kernel_size):
    factor = (kernel_size + 1) // 2
    if kernel_size % 2 == 1:
        center = factor - 1
    else:
        center = factor - 0.5
    og = np.ogrid[:kernel_size, :kernel_size]
    filt = (1 - abs(og[0] - center) / factor) * \\
           (1 - abs(og[1] - center) / factor)
    weight = np.zeros((in_channels, out_channels, kernel_size, kernel_size),
                      dtype='float32')
    weight[range(in_channels), range(out_channels), :, :] = filt
    return nd.array(weight)''',
    '''conv_trans = nn.Conv2DTranspose(3, kernel_size=4, padding=1, strides=2)
conv_trans.initialize(init.Constant(bilinear_kernel(3, 3, 4)))''',
    '''img = image.imread('../img/catdog.jpg')
X = img.astype('float32').transpose((2, 0, 1)).expand_dims(axis=0) / 255
Y = conv_trans(X)
out_img = Y[0].transpose((1, 2, 0))''',
    '''d2l.set_figsize()
print('input image shape:', img.shape)
d2l.plt.imshow(img.asnumpy());
print('output image shape:', out_img.shape)
d2l.plt.imshow(out_img.asnumpy());''',
    '''net[-1].initialize(init.Constant(bilinear_kernel(num_classes, num_classes, 64)))
net[-2].initialize(init=init.Xavier())''',
    '''crop_size, batch_size, colormap2label = (320, 480), 32, nd.zeros(256**3)
for i, cm in enumerate(d2l.VOC_COLORMAP):
    colormap2label[(cm[0] * 256 + cm[1]) * 256 + cm[2]] = i
voc_dir = d2l.download_voc_pascal(data_dir='../data')''',
    '''num_workers = 0 if sys.platform.startswith('win32') else 4
train_iter = gdata.DataLoader(
    d2l.VOCSegDataset(True, crop_size, voc_dir, colormap2label), batch_size,
    shuffle=True, last_batch='discard', num_workers=num_workers)
test_iter = gdata.DataLoader(
    d2l.VOCSegDataset(False, crop_size, voc_dir, colormap2label), batch_size,
    last_batch='discard', num_workers=num_workers)''',
    '''ctx = d2l.try_all_gpus()
loss = gloss.SoftmaxCrossEntropyLoss(axis=1)
net.collect_params().reset_ctx(ctx)
trainer = gluon.Trainer(net.collect_params(), 'sgd', {'learning_rate': 0.1,
                                                      'wd': 1e-3})
d2l.train(train_iter, test_iter, net, loss, trainer, ctx, num_epochs=5)''',
    '''def predict(img):
    X = test_iter._dataset.normalize_image(img)
    X = X.transpose((2, 0, 1)).expand_dims(axis=0)
    pred = nd.argmax(net(X.as_in_context(ctx[0])), axis=1)
    return pred.reshape((pred.shape[1], pred.shape[2]))

def label2image(pred):
    colormap = nd.array(d2l.VOC_COLORMAP, ctx=ctx[0], dtype='uint8')
    X = pred.astype('int32')
    return colormap[X, :]''',
    '''test_images, test_labels = d2l.read_voc_images(is_train=False)
n, imgs = 4, []
for i in range(n):
    crop_rect = (0, 0, 480, 320)
    X = image.fixed_crop(test_images[i], *crop_rect)
    pred = label2image(predict(X))
    imgs += [X, pred, image.fixed_crop(test_labels[i], *crop_rect)]
d2l.show_images(imgs[::3] + imgs[1::3] + imgs[2::3], 3, n, scale=2);''',
]

# (chapter text, replacement, reason): every change to the chapter's code.
SUBSTITUTIONS = [
    ('import d2lzh as d2l', 'import d2lseg as d2l', 'the package under test'),
    ('conv_trans = nn.Conv2DTranspose(channels=1, kernel_size=3)\n',
     'Y = conv(X)\nconv_trans = nn.Conv2DTranspose(channels=1, kernel_size=3)\n',
     "the chapter's cell uses the Y of the first example without assigning it"),
    ('resnet18_v2(pretrained=True)\n',
     'resnet18_v2(pretrained=False)\npretrained_net.initialize(init.Xavier())\n',
     'offline: no model-zoo download, so the random weights must be initialised'),
    ('crop_size, batch_size, colormap2label = (320, 480), 32,',
     'crop_size, batch_size, colormap2label = (320, 480), 4,', '8 training / 4 validation images'),
    ('num_epochs=5)', 'num_epochs=1)', 'a test, not a training run'),
]

# Appended after the chapter: what the test checks about the chapter's final state.
REPORT = '''import json
print('REPORT', json.dumps({
    'n_imgs': len(imgs), 'shapes': [list(a.shape) for a in imgs[:3]],
    'pred_classes': sorted(set(int(v) for v in predict(X).asnumpy().ravel())),
    'n_test_images': len(test_images)}))'''


def _chapter_cells():
    cells = list(CHAPTER)
    for old, new, _ in SUBSTITUTIONS:
        hits = [i for i, c in enumerate(cells) if old in c]
        assert len(hits) == 1, f'substitution {old!r} must match exactly one cell, matched {len(hits)}'
        cells[hits[0]] = cells[hits[0]].replace(old, new)
    return cells + [REPORT]


def _text(cell):
    """All text a cell produced: streams and text/plain results."""
    parts = []
    for out in cell.outputs:
        if out.output_type == 'stream':
            parts.append(out.text)
        elif out.output_type in ('execute_result', 'display_data'):
            parts.append(out.data.get('text/plain', ''))
    return ''.join(parts)


NDARRAY = re.compile(r'(\[[-\d.\se+\[\]]*\])\s*<NDArray ([\dx]+) @cpu\(0\)>')


def _ndarrays(text):
    """The NDArrays printed in ``text``, as numpy arrays of their printed shapes."""
    arrays = []
    for body, shape in NDARRAY.findall(text):
        nums = [float(v) for v in re.findall(r'-?\d+\.?\d*(?:e[-+]?\d+)?', body)]
        arrays.append(np.array(nums, dtype=np.float32).reshape([int(s) for s in shape.split('x')]))
    return arrays


def _corr2d(X, K):
    h, w = K.shape
    return np.array([[(X[i:i + h, j:j + w] * K).sum() for j in range(X.shape[1] - w + 1)]
                     for i in range(X.shape[0] - h + 1)])


def _is_figure(output):
    return any(k in output.get('data', {}) for k in ('image/png', 'image/svg+xml'))


def run_chapter(root):
    """Lay out ``root/{work,data,img}`` and run the chapter's cells in ``root/work``."""
    import nbformat
    import matplotlib.cbook
    from d2lseg.synthetic import make_synthetic_voc
    from d2lseg.voc import MARKER
    work, img_dir = root / 'work', root / 'img'
    work.mkdir()
    img_dir.mkdir()
    shutil.copy(matplotlib.cbook.get_sample_data('grace_hopper.jpg', asfileobj=False), img_dir / 'catdog.jpg')
    make_synthetic_voc(str(root / 'data'), n_train=8, n_val=4, sizes=((320, 480), (352, 512)),
                       seed=3, progress=False)
    # the chapter downloads VOC2012 into ../data: this tree stands in for it, so it goes without the
    # marker that keeps the synthetic set from being taken for the real one (download_voc_pascal)
    (root / 'data' / MARKER).unlink()
    nb = nbformat.v4.new_notebook()
    nb.metadata['kernelspec'] = {'name': 'python3', 'display_name': 'Python 3', 'language': 'python'}
    nb.cells = [nbformat.v4.new_code_cell(src) for src in _chapter_cells()]
    return execute_notebook(nb, work)


@pytest.fixture(scope='module')
def chapter_run(tmp_path_factory):
    return run_chapter(tmp_path_factory.mktemp('tmp'))


def test_substitutions_are_the_listed_ones():
    cells = _chapter_cells()
    assert len(cells) == len(CHAPTER) + 1
    changed = [i for i, (a, b) in enumerate(zip(CHAPTER, cells)) if a != b]
    assert len(changed) == len(SUBSTITUTIONS)
    assert 'import d2lseg as d2l' in cells[0] and 'd2lzh' not in ''.join(cells)


def test_conv_as_matrix_multiplication(chapter_run):
    cells = chapter_run.cells
    X = np.arange(1, 17, dtype=np.float32).reshape(4, 4)
    K = np.arange(1, 10, dtype=np.float32).reshape(3, 3)
    conv_out, k_out = _ndarrays(_text(cells[1]))
    np.testing.assert_array_equal(conv_out[0, 0], [[348, 393], [528, 573]])
    np.testing.assert_array_equal(conv_out[0, 0], _corr2d(X, K))
    np.testing.assert_array_equal(k_out[0, 0], K)
    dot_out, W = _ndarrays(_text(cells[2]))
    assert W.shape == (4, 16)
    np.testing.assert_array_equal(dot_out, conv_out)
    for row, (i, j) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):  # W's row r holds K at output pixel r
        patch = np.zeros((4, 4), np.float32)
        patch[i:i + 3, j:j + 3] = K
        np.testing.assert_array_equal(W[row], patch.ravel())
    trans_out, dot_t = _ndarrays(_text(cells[3]))
    expected = np.zeros((4, 4), np.float32)  # each of the four outputs scatters K
    for i, j, v in [(0, 0, 348), (0, 1, 393), (1, 0, 528), (1, 1, 573)]:
        expected[i:i + 3, j:j + 3] += v * K
    np.testing.assert_array_equal(trans_out[0, 0], expected)
    np.testing.assert_array_equal(dot_t[0, 0], expected)


def test_shapes(chapter_run):
    cells = chapter_run.cells
    assert _text(cells[4]).strip() == '(1, 3, 64, 64)'
    head = _text(cells[5])
    assert 'BatchNorm' in head and 'GlobalAvgPool2D' in head and 'Dense(512 -> 1000' in head
    assert _text(cells[7]).strip() == '(1, 512, 10, 15)'
    shapes = _text(cells[12])
    assert 'input image shape: (600, 512, 3)' in shapes
    assert 'output image shape: (1200, 1024, 3)' in shapes
    assert any(_is_figure(o) for o in cells[12].outputs)


def test_training_prints_the_books_lines(chapter_run):
    cells = chapter_run.cells
    data = _text(cells[15])
    assert 'read 8 examples' in data and 'read 4 examples' in data
    out = _text(cells[16])
    assert out.startswith('training on [cpu(0)]\n')
    m = re.search(r'^epoch 1, loss (\S+), train acc (\S+), test acc (\S+), time (\S+) sec$', out, re.M)
    assert m, out
    loss, train_acc, test_acc, sec = map(float, m.groups())
    assert 0 < loss < 10 and 0 <= train_acc <= 1 and 0 <= test_acc <= 1 and sec > 0
    assert np.isfinite(loss)


def test_predictions_shown(chapter_run):
    cells = chapter_run.cells
    assert any(_is_figure(o) for o in cells[18].outputs)
    report = json.loads(_text(cells[-1]).split('REPORT', 1)[1])
    assert report['n_imgs'] == 12 and report['n_test_images'] == 4
    assert report['shapes'] == [[320, 480, 3]] * 3
    assert set(report['pred_classes']) <= set(range(21))
