"""ONNX export (``d2lseg.deploy.export``) and ONNX Runtime inference (``d2lseg.deploy.onnxrun``): parity with MXNet under the
published protocol for every variant, the metadata and card, inference without MXNet, bad inputs."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

onnx = pytest.importorskip('onnx', reason='needs onnx 1.14-1.18 (pip install "onnx>=1.14,<1.19"), the exporter '
                           'MXNet 1.9.1 uses')
pytest.importorskip('onnxruntime', reason='needs onnxruntime (pip install onnxruntime)')

import mxnet as mx  # noqa: E402
from mxnet import nd  # noqa: E402
from PIL import Image  # noqa: E402

from d2lseg.core import compat
from d2lseg.data import images
from d2lseg.fcn import inference
from d2lseg import native
from d2lseg.deploy import onnxrun
from d2lseg.command import photos  # noqa: E402
from d2lseg.command.app import load_net  # noqa: E402
from d2lseg.data.classes import ClassList  # noqa: E402
from d2lseg.core.errors import D2lsegError  # noqa: E402
from d2lseg.deploy.export import OPSET, OnnxNet, export_onnx  # noqa: E402
from d2lseg.data.images import RGB_MEAN, RGB_STD, read_label_indices  # noqa: E402
from d2lseg.fcn.metrics import ConfusionMatrix  # noqa: E402
from d2lseg.fcn.model import build_fcn  # noqa: E402
from d2lseg.core.outputs import MANIFEST  # noqa: E402
from d2lseg.data.palette import voc_palette  # noqa: E402
from d2lseg.data.voc import iter_split  # noqa: E402
from recipes import copy_of  # noqa: E402

HELPER = os.path.join(os.path.dirname(__file__), 'helpers', 'onnx_without_mxnet.py')
VARIANTS = ('fcn32s', 'fcn16s', 'fcn8s')
OWN = ClassList(('background', 'disc', 'star'), ((0, 0, 0), (10, 200, 30), (250, 120, 5)))


def random_run(folder, variant, classes=None, seed=0):
    """A run folder holding a random network of ``variant``: model.params (the chapter's layout) and model.json.
    The class scores are scaled to a trained network's range; the skip score layers (zero at the start of
    training) get random weights, so the stride-16 and stride-8 paths count."""
    classes = classes or ClassList.voc()
    mx.random.seed(seed)
    net = build_fcn(len(classes), variant, pretrained=False, fast_upsampling=True)
    net(nd.zeros((1, 3, 32, 32)))
    scores = net[-2] if variant == 'fcn32s' else net.score32
    scores.weight.set_data(scores.weight.data() * 0.05)
    for layer in (getattr(net, 'score16', None), getattr(net, 'score8', None)):
        if layer is not None:
            layer.weight.set_data(nd.random.normal(scale=0.002, shape=layer.weight.shape))
    os.makedirs(folder)
    net.save_parameters(os.path.join(folder, 'model.params'))
    with open(os.path.join(folder, 'model.json'), 'w') as f:
        json.dump({'variant': variant, 'num_classes': len(classes), 'classes': classes.to_dict(), 'synthetic': True,
                   'pretrained': False}, f)
    return folder


@pytest.fixture(scope='module')
def exported(tmp_path_factory):
    """{variant: (run folder, .onnx path)}: random networks of VOC's 21 classes, exported."""
    root = tmp_path_factory.mktemp('onnx')
    found = {}
    for k, variant in enumerate(VARIANTS):
        run = random_run(str(root / variant), variant, seed=k)
        found[variant] = run, export_onnx(run, str(root / f'{variant}.onnx'), log=lambda s: None)['onnx']
    return found


@pytest.fixture(scope='module')
def trained(tiny_run, tmp_path_factory):
    """The session's tiny fcn32s run of d2lseg train (2 epochs, 4 crops of 64x96), exported with history and card."""
    out = copy_of(tiny_run[0], tmp_path_factory.mktemp('onnx-trained'))
    model = os.path.join(os.path.dirname(out), 'deploy', 'fcn32s.onnx')
    os.makedirs(os.path.dirname(model))
    export_onnx(out, model, log=lambda s: None)
    return out, model


def _mxnet_net(params):
    net, _ = load_net(params, ctx=mx.cpu())  # as d2lseg evaluate and predict load it
    return net


@pytest.mark.parametrize('variant', VARIANTS)
def test_onnxruntime_matches_mxnet_on_whole_synthetic_images_under_the_published_protocol(variant, exported, voc_dir):
    run, path = exported[variant]
    net, model = _mxnet_net(os.path.join(run, 'model.params')), onnxrun.Model(path)
    cm_mx, cm_ort, worst, same, pixels = ConfusionMatrix(21), ConfusionMatrix(21), 0.0, 0, 0
    with native.override(False):
        for _, img, label in iter_split(voc_dir, ignore_boundary=True):  # the val split, whole images, void ignored
            ref = inference.predict_logits_full(net, img)
            got = onnxrun.predict_logits_full(model, img)
            worst = max(worst, float(np.abs(ref - got).max()))
            same, pixels = same + int((ref.argmax(0) == got.argmax(0)).sum()), pixels + label.size
            cm_mx.update(ref.argmax(0), label)
            cm_ort.update(got.argmax(0), label)
    assert pixels > 8 * 96 * 128 and float(np.abs(ref).max()) > 1  # 8 images; logits of a trained network's range
    assert worst < 1e-3
    assert same / pixels >= 0.999
    assert len(np.unique(got.argmax(0))) > 1  # random networks predict several classes: the argmax is tested
    assert abs(cm_mx.compute()['miou'] - cm_ort.compute()['miou']) <= 0.001


@pytest.mark.parametrize('variant', VARIANTS)
def test_any_multiple_of_32_runs_and_matches_mxnet(variant, exported):
    run, path = exported[variant]
    net, model = _mxnet_net(os.path.join(run, 'model.params')), onnxrun.Model(path)
    rng = np.random.default_rng(3)
    for shape in ((2, 3, 64, 96), (1, 3, 224, 352)):  # the export traced 1x3x320x480
        x = rng.standard_normal(shape).astype(np.float32)
        with native.override(False):
            ref = net(nd.array(x)).asnumpy()
        got = model.logits(x)
        assert got.shape == ref.shape == shape[:1] + (21,) + shape[2:]
        assert float(np.abs(ref - got).max()) < 1e-3
        assert float((ref.argmax(1) == got.argmax(1)).mean()) >= 0.999
    with pytest.raises(D2lsegError, match=r'a 100x96 input; both sides must be positive multiples of 32'):
        model.logits(np.zeros((1, 3, 100, 96), np.float32))


def test_onnxrun_tiles_as_inference_does(exported, voc_dir):
    """The same per-tile network gives the same whole-image logits through either tiling, for images larger
    and smaller than the tile; and the tile offsets are the same for every length."""
    for length in range(1, 1200, 7):
        for tile in (64, 320, 480):
            assert onnxrun.tile_starts(length, tile) == inference.tile_starts(length, tile)
    model = onnxrun.Model(exported['fcn8s'][1])
    img = np.asarray(Image.open(os.path.join(voc_dir, 'JPEGImages', sorted(os.listdir(
        os.path.join(voc_dir, 'JPEGImages')))[0])).convert('RGB'))
    for tile in ((64, 96), (320, 480)):
        ref = inference.predict_logits_full(OnnxNet(model), img, tile)
        got = onnxrun.predict_logits_full(model, img, tile)
        assert float(np.abs(ref - got).max()) < 1e-5
        assert np.array_equal(onnxrun.predict_full(model, img, tile), inference.predict_full(OnnxNet(model), img, tile))


def test_the_graph_is_deployable(exported):
    m = onnx.load(exported['fcn16s'][1])
    onnx.checker.check_model(m, full_check=True)
    assert [v.name for v in m.graph.input] == ['image']  # no initializer is also an input
    assert len(m.graph.initializer) > 50 and [v.name for v in m.graph.output] == ['logits']
    dims = [(d.dim_param, d.dim_value) for d in m.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [('batch', 0), ('', 3), ('height', 0), ('width', 0)]
    assert [(o.domain, o.version) for o in m.opset_import] == [('', OPSET)] and m.ir_version == 7
    assert {n.op_type for n in m.graph.node} <= {'Conv', 'BatchNormalization', 'Relu', 'MaxPool', 'Add',
                                                 'ConvTranspose'}  # MXNet's operators only: no native kernel
    assert not any(n.domain for n in m.graph.node)


def test_metadata_and_card_round_trip(trained):
    run, path = trained
    with open(os.path.join(run, 'history.json')) as f:
        history = json.load(f)
    model = onnxrun.Model(path)
    assert model.variant == 'fcn32s' and model.names == tuple(ClassList.voc().names)
    assert model.colors == ClassList.voc().colors
    assert np.array_equal(model.mean, RGB_MEAN) and np.array_equal(model.std, RGB_STD) and model.tile == (320, 480)
    meta = model.meta
    assert meta['recipe'] == history['recipe'] and meta['environment'] == history['environment']
    assert meta['version'] == history['environment']['versions']['d2lseg']
    assert meta['metrics']['training_validation']['val_miou'] == history['epochs'][-1]['val_miou']
    assert meta['input']['layout'] == 'NCHW' and meta['input']['multiple_of'] == 32
    assert 'synthetic shapes' in model.caveat
    card = open(os.path.join(os.path.dirname(path), 'MODEL_CARD.md'), encoding='utf-8').read()
    assert card.startswith('---\nlicense: apache-2.0\n') and 'pipeline_tag: image-segmentation' in card
    for section in ('## Intended use and limits', '## Training data', '## Training procedure', '## Evaluation',
                    '## Classes', '## Input and output', '## Licence'):
        assert section in card
    assert '| 15 | person | 192 128 128 | #c08080 |' in card and 'segments only such shapes' in card
    assert f"val mIoU {history['epochs'][-1]['val_miou']:.4f}" in card and history['environment']['cpu'] in card
    assert sorted(os.listdir(os.path.dirname(path))) == [MANIFEST, 'MODEL_CARD.md', 'fcn32s.onnx']


def test_own_classes_and_colours_travel_with_the_model(tmp_path):
    run = random_run(str(tmp_path / 'run'), 'fcn8s', OWN, seed=5)
    path = export_onnx(run, str(tmp_path / 'own.onnx'), log=lambda s: None)['onnx']
    model = onnxrun.Model(path)
    assert model.names == OWN.names and model.colors == OWN.colors
    assert model.logits(np.zeros((1, 3, 32, 64), np.float32)).shape == (1, 3, 32, 64)
    assert np.array_equal(onnxrun.class_palette(model.colors), OWN.palette())


def _val_images(voc_dir, n=3):
    names = sorted(os.listdir(os.path.join(voc_dir, 'JPEGImages')))
    return [os.path.join(voc_dir, 'JPEGImages', name) for name in names[:n]]


def _run_without_mxnet(how, *args):
    out = subprocess.run([sys.executable, HELPER, how, *args], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1]), out.stderr


def test_predict_and_evaluate_without_mxnet_write_what_the_mxnet_path_writes(trained, exported, data_root, voc_dir,
                                                                            tmp_path):
    run, path = exported['fcn16s']
    images = _val_images(voc_dir)
    found, stderr = _run_without_mxnet('package', path, str(tmp_path / 'onnx'), str(tmp_path / 'onnx.json'), *images,
                                       '--evaluate', data_root)
    assert found['failed'] == 0 and not found['mxnet_loaded']
    assert set(found['modules']) == {'d2lseg.core.compat', 'd2lseg.core.startup', 'd2lseg.deploy.onnxrun',
                                     'd2lseg.core.errors', 'd2lseg.core.outputs', 'd2lseg.core.textfiles',
                                     'd2lseg.core.constants', 'd2lseg.core.version', 'd2lseg.data.photofiles',
                                     'd2lseg.data.pixels', 'd2lseg.data.vocpalette'}
    assert stderr.count('warning') == 1 and 'without history.json' in stderr  # its card's caveat, once
    net = _mxnet_net(os.path.join(run, 'model.params'))
    assert photos.predict_files(net, images, str(tmp_path / 'mx'), json_path=str(tmp_path / 'mx.json'),
                                classes=ClassList.voc(), log=lambda s: None) == 0  # the package's path, kernels on
    assert sorted(os.listdir(tmp_path / 'onnx')) == sorted(os.listdir(tmp_path / 'mx'))
    for name in os.listdir(tmp_path / 'mx'):
        if name.endswith('.png') and name != 'legend.png' and not name.endswith('_overlay.png'):
            a, b = Image.open(tmp_path / 'onnx' / name), Image.open(tmp_path / 'mx' / name)
            assert a.mode == b.mode == 'P' and a.getpalette() == b.getpalette()
            assert float((np.asarray(a) == np.asarray(b)).mean()) >= 0.999
    ours, theirs = (json.load(open(tmp_path / f, encoding='utf-8'))['images'] for f in ('onnx.json', 'mx.json'))
    assert [(r['image'], r['size'], sorted(r['classes'])) for r in ours] == \
        [(r['image'], r['size'], sorted(r['classes'])) for r in theirs]
    cm = ConfusionMatrix(21)
    with native.override(False):
        inference.eval_images(net, iter_split(voc_dir, ignore_boundary=True), cm, full=True)
    assert found['evaluation']['images'] == 8
    assert abs(found['evaluation']['miou'] - cm.compute()['miou']) <= 0.001


def _no_mxnet_env(tmp_path):
    """An environment where ``import mxnet`` fails as it does where MXNet is not installed (a package of that
    name, first on the path, raising ModuleNotFoundError for it), for a real ``python -m d2lseg``."""
    fake = tmp_path / 'no-mxnet' / 'mxnet'
    fake.mkdir(parents=True)
    (fake / '__init__.py').write_text("raise ModuleNotFoundError(\"No module named 'mxnet'\", name='mxnet')\n")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(fake.parent), root]))


def test_import_d2lseg_without_mxnet_loads_what_needs_none_and_names_the_install_for_the_rest(tmp_path):
    code = ('import sys, d2lseg\nfrom d2lseg import onnxrun\nimport d2lseg as d2l\n'
            'print(d2lseg.__version__, onnxrun.Model.__name__, d2l.D2lsegError.__name__, "mxnet" in sys.modules)\n'
            'for name in ("train", "plt", "build_fcn", "VOC_CLASSES"):\n'
            '    try:\n        getattr(d2l, name)\n    except ImportError as e:\n        print(e)\n'
            'from d2lseg import predict_full')
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300,
                         env=_no_mxnet_env(tmp_path))
    lines = out.stdout.splitlines()
    assert lines[0].split()[1:] == ['Model', 'D2lsegError', 'False'], out.stderr
    assert len(lines) == 5 and all(line.startswith(f'd2lseg.{name} needs MXNet: MXNet 1.9.1 is not installed')
                                   and compat.MXNET_INSTALL in line for name, line in
                                   zip(("train", "plt", "build_fcn", "VOC_CLASSES"), lines[1:]))
    last = out.stderr.strip().splitlines()[-1]  # from d2lseg import NAME: the same one line
    assert out.returncode == 1 and last.startswith('ImportError: d2lseg.predict_full needs MXNet'), out.stderr


def test_python_m_d2lseg_predict_and_evaluate_onnx_run_where_mxnet_is_not_installed(trained, data_root, voc_dir,
                                                                                   tmp_path):
    _, path = trained
    env, images = _no_mxnet_env(tmp_path), _val_images(voc_dir, 2)
    out = subprocess.run([sys.executable, '-m', 'd2lseg', 'predict', *images, '--onnx', path, '--out',
                          str(tmp_path / 'pred'), '--json', str(tmp_path / 'pred.json')], capture_output=True,
                         text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stderr
    stems = [os.path.splitext(os.path.basename(p))[0] for p in images]
    assert sorted(os.listdir(tmp_path / 'pred')) == sorted(
        [MANIFEST, 'legend.png'] + [s + e for s in stems for e in ('.png', '_overlay.png')])
    report = json.load(open(tmp_path / 'pred.json', encoding='utf-8'))['images']
    assert [r['size'] for r in report] == [list(Image.open(p).size[::-1]) for p in images]
    out = subprocess.run([sys.executable, '-m', 'd2lseg', 'evaluate', '--onnx', path, '--data-dir', data_root,
                          '--json', str(tmp_path / 'eval.json')], capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stderr
    record = json.load(open(tmp_path / 'eval.json', encoding='utf-8'))
    assert record['images'] == 8 and 0 <= record['miou'] <= 1 and len(record['iou']) == 21
    out = subprocess.run([sys.executable, '-m', 'd2lseg', 'train'], capture_output=True, text=True, timeout=300,
                         env=env)  # what needs MXNet: one line, exit 2
    assert out.returncode == 2 and out.stderr.count('\n') == 1 and 'MXNet 1.9.1 is not installed' in out.stderr


def test_onnxrun_loads_by_file_without_the_package_and_shows_the_caveat_once(trained, voc_dir, tmp_path):
    _, path = trained
    found, stderr = _run_without_mxnet('file', path, str(tmp_path / 'out'), str(tmp_path / 'out.json'),
                                       *_val_images(voc_dir, 2))
    assert found['failed'] == 0 and not found['mxnet_loaded'] and 'd2lseg.core.compat' not in found['modules']
    warnings = [line for line in stderr.splitlines() if 'warning' in line]
    assert len(warnings) == 1 and 'synthetic shapes' in warnings[0]
    legend = Image.open(tmp_path / 'out' / 'legend.png')
    assert legend.mode == 'RGB' and legend.size[1] >= 30


def test_the_copies_in_onnxrun_equal_their_originals(voc_dir, tmp_path):
    """onnxrun repeats small parts of modules that import MXNet; each gives what its original gives. What both
    sides need that imports no MXNet lives once, in leaf modules both import (the same objects)."""
    assert onnxrun.voc_palette is voc_palette and onnxrun.read_image is images.read_image
    assert onnxrun.image_files is photos.image_files and onnxrun.planned_outputs is photos.planned_outputs
    assert onnxrun.write_png is photos.write_png and onnxrun.overlay_bands is photos.overlay_bands
    assert onnxrun.MAX_PIXELS == images.MAX_PIXELS
    assert np.array_equal(onnxrun.class_palette(OWN.colors), OWN.palette())
    rng = np.random.default_rng(0)
    img, pred = rng.integers(0, 256, (70, 90, 3), dtype=np.uint8), rng.integers(0, 3, (70, 90))
    assert onnxrun.class_shares is photos.class_shares
    for name in sorted(os.listdir(os.path.join(voc_dir, 'SegmentationClass'))):
        label = os.path.join(voc_dir, 'SegmentationClass', name)
        expected = read_label_indices(label, ignore_boundary=True, unknown='error')
        assert np.array_equal(onnxrun.read_label(label, ClassList.voc().colors), expected)
        rgb = tmp_path / name  # the same label as an RGB PNG in the classes' colours
        Image.fromarray(onnxrun.class_palette(ClassList.voc().colors)[np.asarray(Image.open(label))]).save(rgb)
        assert np.array_equal(onnxrun.read_label(str(rgb), ClassList.voc().colors), expected)
    cm = ConfusionMatrix(3)
    cm.update(pred, rng.integers(0, 3, (70, 90)))
    assert onnxrun.scores(cm.mat) == cm.compute()


def _one_line_naming(excinfo, path):
    text = str(excinfo.value)
    assert '\n' not in text and str(path) in text, text
    return text


def test_export_refuses_bad_inputs_in_one_line_and_writes_nothing(exported, tmp_path):
    run16 = exported['fcn16s'][0]
    wrong = tmp_path / 'wrong'  # fcn16s parameters under a model.json saying fcn32s
    shutil.copytree(run16, wrong)
    info = json.load(open(wrong / 'model.json'))
    json.dump(dict(info, variant='fcn32s'), open(wrong / 'model.json', 'w'))
    count = tmp_path / 'count'  # 21-class parameters under a model.json of 3 classes
    shutil.copytree(run16, count)
    json.dump(dict(info, num_classes=3, classes=OWN.to_dict()), open(count / 'model.json', 'w'))
    cut = tmp_path / 'cut'  # a truncated params file
    shutil.copytree(run16, cut)
    data = (cut / 'model.params').read_bytes()
    (cut / 'model.params').write_bytes(data[:len(data) // 2])
    text = tmp_path / 'text'
    text.mkdir()
    (text / 'model.params').write_text('not parameters')
    out = tmp_path / 'out'
    out.mkdir()
    cases = [(wrong, 'cannot load into the fcn32s with 21 classes that model.json'),
             (count, 'cannot load into the fcn16s with 3 classes that model.json'),
             (cut, 'cannot load into the fcn16s with 21 classes that model.json'),
             (text, 'cannot load into the fcn32s with 21 classes (no model.json beside it: assumed)'),
             (tmp_path / 'nowhere', 'no such parameters file')]
    for source, says in cases:
        with pytest.raises(D2lsegError) as e:
            export_onnx(str(source), str(out / 'model.onnx'))
        assert says in _one_line_naming(e, source)
    os.symlink(os.path.join(run16, 'model.params'), out / 'link.onnx')  # an output that is an input
    for target, says in ((out / 'link.onnx', 'which this command reads'), (os.path.join(run16, 'model.json'),
                                                                           'ending in .onnx')):
        with pytest.raises(D2lsegError) as e:
            export_onnx(run16, str(target))
        assert says in _one_line_naming(e, target)
    assert os.listdir(out) == ['link.onnx'] and sorted(os.listdir(run16)) == ['model.json', 'model.params']


def test_onnxrun_refuses_missing_or_altered_metadata_and_damaged_files_in_one_line(exported, voc_dir, tmp_path):
    source = onnx.load(exported['fcn32s'][1])
    altered = tmp_path / 'altered.onnx'
    m = onnx.ModelProto()
    m.CopyFrom(source)
    entry = next(p for p in m.metadata_props if p.key == 'd2lseg.classes')
    entry.value = entry.value.replace('person', 'persons')
    onnx.save(m, str(altered))
    bare = tmp_path / 'bare.onnx'
    del m.metadata_props[:]
    onnx.save(m, str(bare))
    cut = tmp_path / 'cut.onnx'
    data = open(exported['fcn32s'][1], 'rb').read()
    cut.write_bytes(data[:len(data) // 3])
    cases = [(altered, 'altered after export'), (bare, 'without d2lseg metadata'),
             (cut, 'not an ONNX model ONNX Runtime can load'), (tmp_path / 'none.onnx', 'no such file')]
    for path, says in cases:
        with pytest.raises(D2lsegError) as e:
            onnxrun.predict_files(str(path), _val_images(voc_dir, 1), str(tmp_path / 'pred'))
        assert says in _one_line_naming(e, path)
    assert not os.path.exists(tmp_path / 'pred')
