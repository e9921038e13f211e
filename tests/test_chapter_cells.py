"""The English chapter's cells (D2L, MXNet edition, 10.10 "Fully Convolutional Networks") run with ``import d2lseg as d2l``.

``CHAPTER`` holds the chapter's code cells ``In [1]`` ... ``In [19]`` as printed (indentation restored),
and ``PRINTED`` every output the book prints that an offline CPU run can reproduce. The cells run in
order as a notebook in a working folder ``work/`` next to ``data/`` (the chapter's ``../data``, here
a synthetic VOC2012 tree of 8 training and 4 validation images, each at least 320x480, without the
synthetic set's marker, so that ``download_voc_pascal`` takes it as it would take the downloaded
data) and ``img/catdog.jpg`` (matplotlib's sample photograph ``grace_hopper.jpg``, 600x512).

The only edits to the chapter's code, each listed in ``EDITS`` with its reason:

1. ``import d2l`` -> ``import d2lseg as d2l``: the package under test.
2. ``resnet18_v2(pretrained=True)`` -> ``pretrained=False`` followed by
   ``pretrained_net.initialize(init.Xavier())``: offline, no model-zoo download, so the random
   weights must be initialised. Until a forward pass the BatchNorm's ``in_channels`` is unknown, so
   Out[6] is compared after ``In [8]``'s forward pass.
3. ``batch_size`` 32 -> 4: the test set has 8 training and 4 validation images.
4. ``num_epochs=5`` -> ``num_epochs=1``: a test, not a training run.
``num_workers = 4`` stays (process workers of Gluon's DataLoader work on Linux). One cell is appended
after the chapter's code to report values to the test.
"""
import json
import re
import shutil

import numpy as np
import pytest

from nbrun import execute_notebook

pytestmark = pytest.mark.notebook

CHAPTER = [
    # In [1]
    '''import sys
sys.path.insert(0, '..')
%matplotlib inline
import d2l
from mxnet import gluon, image, init, nd
from mxnet.gluon import data as gdata, loss as gloss, model_zoo, nn
import numpy as np
import sys''',
    # In [2]
    '''X = nd.arange(1, 17).reshape((1, 1, 4, 4))
K = nd.arange(1, 10).reshape((1, 1, 3, 3))
conv = nn.Conv2D(channels=1, kernel_size=3)
conv.initialize(init.Constant(K))
conv(X), K''',
    # In [3]
    '''W, k = nd.zeros((4, 16)), nd.zeros(11)
k[:3], k[4:7], k[8:] = K[0, 0, 0, :], K[0, 0, 1, :], K[0, 0, 2, :]
W[0, 0:11], W[1, 1:12], W[2, 4:15], W[3, 5:16] = k, k, k, k
nd.dot(W, X.reshape(16)).reshape((1, 1, 2, 2)), W''',
    # In [4]
    '''conv = nn.Conv2D(10, kernel_size=4, padding=1, strides=2)
conv.initialize()
X = nd.random.uniform(shape=(1, 3, 64, 64))
Y = conv(X)
Y.shape''',
    # In [5]
    '''conv_trans = nn.Conv2DTranspose(3, kernel_size=4, padding=1, strides=2)
conv_trans.initialize()
conv_trans(Y).shape''',
    # In [6]
    '''pretrained_net = model_zoo.vision.resnet18_v2(pretrained=True)
pretrained_net.features[-4:], pretrained_net.output''',
    # In [7]
    '''net = nn.HybridSequential()
for layer in pretrained_net.features[:-2]:
    net.add(layer)''',
    # In [8]
    '''X = nd.random.uniform(shape=(1, 3, 320, 480))
net(X).shape''',
    # In [9]
    '''num_classes = 21
net.add(nn.Conv2D(num_classes, kernel_size=1),
        nn.Conv2DTranspose(num_classes, kernel_size=64, padding=16,
                           strides=32))''',
    # In [10]
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
    # In [11]
    '''conv_trans = nn.Conv2DTranspose(3, kernel_size=4, padding=1, strides=2)
conv_trans.initialize(init.Constant(bilinear_kernel(3, 3, 4)))''',
    # In [12]
    '''img = image.imread('../img/catdog.jpg')
X = img.astype('float32').transpose((2, 0, 1)).expand_dims(axis=0) / 255
Y = conv_trans(X)
out_img = Y[0].transpose((1, 2, 0))''',
    # In [13]
    '''d2l.set_figsize()
print('input image shape:', img.shape)
d2l.plt.imshow(img.asnumpy());
print('output image shape:', out_img.shape)
d2l.plt.imshow(out_img.asnumpy());''',
    # In [14]
    '''net[-1].initialize(init.Constant(bilinear_kernel(num_classes, num_classes,
                                                 64)))
net[-2].initialize(init=init.Xavier())''',
    # In [15]
    '''crop_size, batch_size, colormap2label = (320, 480), 32, nd.zeros(256**3)
for i, cm in enumerate(d2l.VOC_COLORMAP):
    colormap2label[(cm[0] * 256 + cm[1]) * 256 + cm[2]] = i
voc_dir = d2l.download_voc_pascal(data_dir='../data')
num_workers = 0 if sys.platform.startswith('win32') else 4
train_iter = gdata.DataLoader(
    d2l.VOCSegDataset(True, crop_size, voc_dir, colormap2label), batch_size,
    shuffle=True, last_batch='discard', num_workers=num_workers)
test_iter = gdata.DataLoader(
    d2l.VOCSegDataset(False, crop_size, voc_dir, colormap2label), batch_size,
    last_batch='discard', num_workers=num_workers)''',
    # In [16]
    '''ctx = d2l.try_all_gpus()
loss = gloss.SoftmaxCrossEntropyLoss(axis=1)
net.collect_params().reset_ctx(ctx)
trainer = gluon.Trainer(net.collect_params(), 'sgd', {'learning_rate': 0.1,
                                                      'wd': 1e-3})
d2l.train(train_iter, test_iter, net, loss, trainer, ctx, num_epochs=5)''',
    # In [17]
    '''def predict(img):
    X = test_iter._dataset.normalize_image(img)
    X = X.transpose((2, 0, 1)).expand_dims(axis=0)
    pred = nd.argmax(net(X.as_in_context(ctx[0])), axis=1)
    return pred.reshape((pred.shape[1], pred.shape[2]))''',
    # In [18]
    '''def label2image(pred):
    colormap = nd.array(d2l.VOC_COLORMAP, ctx=ctx[0], dtype='uint8')
    X = pred.astype('int32')
    return colormap[X, :]''',
    # In [19]
    '''test_images, test_labels = d2l.read_voc_images(is_train=False)
n, imgs = 4, []
for i in range(n):
    crop_rect = (0, 0, 480, 320)
    X = image.fixed_crop(test_images[i], *crop_rect)
    pred = label2image(predict(X))
    imgs += [X, pred, image.fixed_crop(test_labels[i], *crop_rect)]
d2l.show_images(imgs[::3] + imgs[1::3] + imgs[2::3], 3, n);''',
]

# What the book prints, by cell number, as the chapter shows it (line breaks and indentation, lost in
# the rendering, are not compared). Out[6] is the repr with the ImageNet weights loaded.
PRINTED = {
    2: '''(
[[[[348. 393.]
[528. 573.]]]]
<NDArray 1x1x2x2 @cpu(0)>,
[[[[1. 2. 3.]
[4. 5. 6.]
[7. 8. 9.]]]]
<NDArray 1x1x3x3 @cpu(0)>)''',
    3: '''(
[[[[348. 393.]
[528. 573.]]]]
<NDArray 1x1x2x2 @cpu(0)>,
[[1. 2. 3. 0. 4. 5. 6. 0. 7. 8. 9. 0. 0. 0. 0. 0.]
[0. 1. 2. 3. 0. 4. 5. 6. 0. 7. 8. 9. 0. 0. 0. 0.]
[0. 0. 0. 0. 1. 2. 3. 0. 4. 5. 6. 0. 7. 8. 9. 0.]
[0. 0. 0. 0. 0. 1. 2. 3. 0. 4. 5. 6. 0. 7. 8. 9.]]
<NDArray 4x16 @cpu(0)>)''',
    4: '(1, 10, 32, 32)',
    5: '(1, 3, 64, 64)',
    6: '''(HybridSequential(
(0): BatchNorm(axis=1, eps=1e-05, momentum=0.9, fix_gamma=False, use_global_stats=False, in_channels=512)
(1): Activation(relu)
(2): GlobalAvgPool2D(size=(1, 1), stride=(1, 1), padding=(0, 0), ceil_mode=True)
(3): Flatten
), Dense(512 -> 1000, linear))''',
    8: '(1, 512, 10, 15)',
}
# MXNet 1.9.1 prints three more attributes of the pooling layer than the MXNet the book was built with.
POOLING_REPR_SINCE_BOOK = ', global_pool=True, pool_type=avg, layout=NCHW'
# In [13] prints the photograph's shape and twice it; In [15] the book's "read N examples" lines.
PHOTO_SHAPE = (600, 512, 3)

# (cell, chapter text, replacement, reason): every edit to the chapter's code.
EDITS = [
    (1, 'import d2l\n', 'import d2lseg as d2l\n', 'the package under test'),
    (6, 'resnet18_v2(pretrained=True)\n',
     'resnet18_v2(pretrained=False)\npretrained_net.initialize(init.Xavier())\n',
     'offline: no model-zoo download, so the random weights must be initialised'),
    (15, 'crop_size, batch_size, colormap2label = (320, 480), 32,',
     'crop_size, batch_size, colormap2label = (320, 480), 4,', '8 training / 4 validation images'),
    (16, 'num_epochs=5)', 'num_epochs=1)', 'a test, not a training run'),
]

# Appended after the chapter: what the test checks about the chapter's final state. Out[6]'s repr is
# taken here, after In [8]'s forward pass has given the BatchNorm its input channels.
REPORT = '''import json
print('REPORT', json.dumps({
    'out6': repr((pretrained_net.features[-4:], pretrained_net.output)),
    'n_imgs': len(imgs), 'shapes': [list(a.shape) for a in imgs[:3]],
    'pred_classes': sorted(set(int(v) for v in predict(X).asnumpy().ravel())),
    'n_test_images': len(test_images)}))'''


def _chapter_cells():
    cells = list(CHAPTER)
    for number, old, new, _ in EDITS:
        assert cells[number - 1].count(old) == 1, f'edit {old!r} must match In [{number}] once'
        cells[number - 1] = cells[number - 1].replace(old, new)
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
    from d2lseg.data.synthetic import make_synthetic_voc
    from d2lseg.data.voc import MARKER
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


def _cell(run, number):
    """The run's ``In [number]`` (1-based, as the book numbers its cells)."""
    return run.cells[number - 1]


def _squeezed(text):
    return re.sub(r'\s+', '', text)


def _stdout(cell):
    return ''.join(o.text for o in cell.outputs if o.output_type == 'stream' and o.name == 'stdout')


def _result(cell):
    results = [o for o in cell.outputs if o.output_type == 'execute_result']
    return results[0].data['text/plain'] if results else None


def test_the_cells_are_the_chapters_with_only_the_listed_edits():
    cells = _chapter_cells()
    assert len(CHAPTER) == 19 and len(cells) == 20
    changed = [i + 1 for i, (a, b) in enumerate(zip(CHAPTER, cells)) if a != b]
    assert changed == [number for number, *_ in EDITS]
    assert 'import d2lseg as d2l' in cells[0] and '\nimport d2l\n' not in cells[0]
    for src in cells:
        compile(src.replace('%matplotlib inline', ''), '<cell>', 'exec')  # indentation restored correctly


def test_results_are_the_books(chapter_run):
    """Out[2], Out[3], Out[4], Out[5], Out[8] as printed; no Out[...] where the book shows none."""
    shown = {n for n in range(1, 20) if _result(_cell(chapter_run, n)) is not None}
    assert shown == {2, 3, 4, 5, 6, 8}, shown  # d2l.train (In [16]) returns nothing, like the book's
    for number in (2, 3, 4, 5, 8):
        assert _squeezed(_result(_cell(chapter_run, number))) == _squeezed(PRINTED[number]), number


def test_out6_is_the_books_after_a_forward_pass(chapter_run):
    report = json.loads(_text(chapter_run.cells[-1]).split('REPORT', 1)[1])
    assert report['out6'].count(POOLING_REPR_SINCE_BOOK) == 1
    assert _squeezed(report['out6'].replace(POOLING_REPR_SINCE_BOOK, '')) == _squeezed(PRINTED[6])
    before = _result(_cell(chapter_run, 6))  # random weights, shapes not inferred yet
    assert 'in_channels=None' in before and 'Dense(512 -> 1000, linear)' in before


def test_conv_as_matrix_multiplication(chapter_run):
    """Beyond the printed text: the values are the convolution's, computed independently."""
    X = np.arange(1, 17, dtype=np.float32).reshape(4, 4)
    K = np.arange(1, 10, dtype=np.float32).reshape(3, 3)
    conv_out, k_out = _ndarrays(_text(_cell(chapter_run, 2)))
    np.testing.assert_array_equal(conv_out[0, 0], _corr2d(X, K))
    np.testing.assert_array_equal(k_out[0, 0], K)
    dot_out, W = _ndarrays(_text(_cell(chapter_run, 3)))
    np.testing.assert_array_equal(dot_out, conv_out)
    for row, (i, j) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):  # W's row r holds K at output pixel r
        patch = np.zeros((4, 4), np.float32)
        patch[i:i + 3, j:j + 3] = K
        np.testing.assert_array_equal(W[row], patch.ravel())


def test_upsampling_doubles_the_photograph(chapter_run):
    cell = _cell(chapter_run, 13)
    h, w, c = PHOTO_SHAPE
    assert _stdout(cell) == (f'input image shape: {PHOTO_SHAPE}\n'
                           f'output image shape: {(2 * h, 2 * w, c)}\n')
    assert any(_is_figure(o) for o in cell.outputs)


def test_data_and_training_print_the_books_lines(chapter_run):
    assert _stdout(_cell(chapter_run, 15)) == 'read 8 examples\nread 4 examples\n'
    out = _stdout(_cell(chapter_run, 16))
    lines = out.splitlines()
    assert lines[0] == 'training on [cpu(0)]' and len(lines) == 2, out
    m = re.fullmatch(r'epoch 1, loss (\d+\.\d{4}), train acc (\d\.\d{3}), test acc (\d\.\d{3}), '
                     r'time (\d+\.\d) sec', lines[1])
    assert m, lines[1]
    loss, train_acc, test_acc, sec = map(float, m.groups())
    assert 0 < loss < 10 and 0 <= train_acc <= 1 and 0 <= test_acc <= 1 and sec > 0


def test_predictions_shown(chapter_run):
    assert any(_is_figure(o) for o in _cell(chapter_run, 19).outputs)
    report = json.loads(_text(chapter_run.cells[-1]).split('REPORT', 1)[1])
    assert report['n_imgs'] == 12 and report['n_test_images'] == 4
    assert report['shapes'] == [[320, 480, 3]] * 3
    assert set(report['pred_classes']) <= set(range(21))
