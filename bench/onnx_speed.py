"""ONNX Runtime beside MXNet on the same FCN: float32 img/s at 320x480, batch 1, parity on the validation set,
and ONNX Runtime's static INT8 quantization with its change of mIoU.

    .venv/bin/python bench/onnx_speed.py [RUN_DIR] [--variant fcn32s] [--data-dir DIR] [--val-images 8]
                                         [--iters 10] [--warmup 3] [--no-int8]

RUN_DIR: a ``d2lseg train --out`` folder (its model.params, model.json and recipe); without one, a network of
random weights (speed and parity only: its mIoU says nothing about INT8). The validation images: RUN_DIR's
data (``--data-dir`` elsewhere), else a tiny synthetic set made in a temporary folder. MXNet is timed as
``d2lseg predict`` runs it (native kernels on where they build) and with MXNet's own operators; parity is
measured against the latter (the exported graph's operators), under the published protocol (whole images
tiled 320x480, void ignored). INT8: QDQ, per-channel weights, calibrated on 8 training images (MinMax).
Prints one JSON line; about a minute on 2 cores.
"""
import argparse
import json
import os
import sys
import tempfile
import time

import d2lseg  # noqa: F401  (first: it sets the threads MXNet reads once)
import mxnet as mx
import numpy as np
import onnxruntime
from mxnet import nd

from d2lseg.fcn import inference
from d2lseg import native
from d2lseg.deploy import onnxrun
from d2lseg.command.app import load_net
from d2lseg.native.environment import environment
from d2lseg.deploy.export import export_onnx
from d2lseg.fcn.metrics import ConfusionMatrix
from d2lseg.fcn.model import build_fcn
from d2lseg.data.synthetic import make_synthetic_voc
from d2lseg.core.textfiles import read_json
from d2lseg.data.voc import iter_split, voc_root

SHAPE = (1, 3, 320, 480)


def random_run(folder, variant):
    """A run folder of a random-weight network (model.params, model.json): speed and parity only."""
    mx.random.seed(0)
    net = build_fcn(21, variant, pretrained=False, fast_upsampling=True)
    net(nd.zeros((1, 3, 32, 32)))
    os.makedirs(folder)
    net.save_parameters(os.path.join(folder, 'model.params'))
    with open(os.path.join(folder, 'model.json'), 'w') as f:
        json.dump({'variant': variant, 'num_classes': 21}, f)
    return folder


def img_s(run, x, warmup, iters):
    """Images per second of ``run(x)`` (batch 1) over ``iters`` calls after ``warmup``."""
    for _ in range(warmup):
        run(x)
    start = time.perf_counter()
    for _ in range(iters):
        run(x)
    return iters / (time.perf_counter() - start)


def speeds(net, model, warmup, iters):
    x = np.random.default_rng(0).standard_normal(SHAPE).astype(np.float32)
    mxnet_x = nd.array(x)
    found = {'mxnet_fp32': img_s(lambda v: net(v).wait_to_read(), mxnet_x, warmup, iters)}
    with native.override(False):
        found['mxnet_fp32_mxnet_ops'] = img_s(lambda v: net(v).wait_to_read(), mxnet_x, warmup, iters)
    found['onnxruntime_fp32'] = img_s(model.logits, x, warmup, iters)
    return found


def parity(net, model, voc_dir, limit, num_classes):
    """Logits, labels and mIoU of MXNet (its own operators) and ONNX Runtime on the val split, published protocol."""
    cm_mx, cm_ort, worst, same, pixels = ConfusionMatrix(num_classes), ConfusionMatrix(num_classes), 0.0, 0, 0
    with native.override(False):
        for _, img, label in iter_split(voc_dir, ignore_boundary=True, max_images=limit):
            ref, got = inference.predict_logits_full(net, img), onnxrun.predict_logits_full(model, img)
            worst = max(worst, float(np.abs(ref - got).max()))
            same, pixels = same + int((ref.argmax(0) == got.argmax(0)).sum()), pixels + label.size
            cm_mx.update(ref.argmax(0), label)
            cm_ort.update(got.argmax(0), label)
    return {'images': limit, 'max_abs_logit_diff': worst, 'pixel_agreement': same / pixels,
            'miou_mxnet': cm_mx.compute()['miou'], 'miou_onnxruntime': cm_ort.compute()['miou']}


def miou(model, voc_dir, limit, num_classes):
    cm = ConfusionMatrix(num_classes)
    for _, img, label in iter_split(voc_dir, ignore_boundary=True, max_images=limit):
        cm.update(onnxrun.predict_full(model, img), label)
    return cm.compute()['miou']


def calibration_tiles(model, voc_dir, n=8):
    """The first ``n`` training images as normalised 320x480 tiles (padded with the mean colour), one per batch."""
    tiles = []
    for _, img, _ in iter_split(voc_dir, is_train=True, max_images=n):
        x = np.zeros(SHAPE[1:], np.float32)
        part = model.normalize(img[:SHAPE[2], :SHAPE[3]])
        x[:, :part.shape[1], :part.shape[2]] = part
        tiles.append({model.input_name: x[None]})
    return tiles


class _Reader:
    """onnxruntime.quantization's CalibrationDataReader protocol over a list of feeds."""

    def __init__(self, feeds):
        self.feeds = iter(feeds)

    def get_next(self):
        return next(self.feeds, None)


def int8(model, path, voc_dir, limit, num_classes, fp32_miou, warmup, iters):
    """ONNX Runtime's static INT8 quantization of ``path``: its img/s and val mIoU beside float32's."""
    try:
        import onnx  # here: the INT8 part alone needs onnx and onnxruntime.quantization (ml_dtypes)
        from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    except ImportError as e:
        return {'unavailable': f'{type(e).__name__}: {e}'}
    out = path[:-len('.onnx')] + '-int8.onnx'
    start = time.perf_counter()
    quantize_static(path, out, _Reader(calibration_tiles(model, voc_dir)), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    seconds = time.perf_counter() - start
    quantized, source = onnx.load(out), onnx.load(path, load_external_data=False)
    del quantized.metadata_props[:]  # the float model's metadata (and digest), whatever the quantizer kept
    quantized.metadata_props.extend(source.metadata_props)
    onnx.save(quantized, out)
    q = onnxrun.Model(out)
    x = np.random.default_rng(0).standard_normal(SHAPE).astype(np.float32)
    value = miou(q, voc_dir, limit, num_classes)
    ops = sorted({n.op_type for n in quantized.graph.node})
    return {'img_s': img_s(q.logits, x, warmup, iters), 'miou': value, 'miou_fp32': fp32_miou,
            'delta_points': 100 * (value - fp32_miou), 'within_half_point': abs(value - fp32_miou) <= 0.005,
            'quantize_s': seconds, 'ops': ops, 'calibration': '8 training images, 320x480 tiles, MinMax, QDQ, '
            'per-channel INT8 weights, UINT8 activations'}


DEMO_RUN = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'runs', 'demo')


def part_onnx(args):
    """bench/run.py's part 'onnx': ONNX Runtime float32 img/s on the batch run.py times MXNet and the peer on
    (8 crops of 320x480: forward and argmax), and static INT8 with its mIoU change. The model: --onnx-run,
    else runs/demo (make demo) when there, else random weights (speed only; the INT8 delta then says
    nothing, ``onnxruntime_int8_model`` says so). -> the ``onnxruntime_*`` keys of bench/README.md."""
    run_dir = args.onnx_run or (DEMO_RUN if os.path.isfile(os.path.join(DEMO_RUN, 'model.params')) else None)
    iters, images = (3, 4) if args.quick else (10, 8)
    with tempfile.TemporaryDirectory(prefix='d2lseg-onnx-bench-') as tmp:
        run = run_dir or random_run(os.path.join(tmp, 'run'), 'fcn32s')
        path = export_onnx(run, os.path.join(tmp, 'model.onnx'), log=lambda s: None)['onnx']
        model = onnxrun.Model(path, threads=args.threads)
        batch = np.random.default_rng(0).standard_normal((8,) + SHAPE[1:]).astype(np.float32)
        res = {'onnxruntime': onnxruntime.__version__, 'onnxruntime_model': run_dir or 'fcn32s, random weights',
               'onnxruntime_infer_img_s': 8 * img_s(lambda x: model.logits(x).argmax(axis=1), batch, 2, iters)}
        voc_dir = voc_root(args.onnx_data_dir) if args.onnx_data_dir else data_of(argparse.Namespace(
            data_dir=None, run=run_dir), run, tmp)
        fp32 = miou(model, voc_dir, images, len(model.names))
        q = int8(model, path, voc_dir, images, len(model.names), fp32, 2, iters)
    res['onnxruntime_int8_model'] = 'trained' if run_dir else 'random weights: the mIoU delta says nothing'
    if 'unavailable' in q:
        return dict(res, onnxruntime_int8_unavailable=q['unavailable'])
    return dict(res, onnxruntime_int8_img_s=q['img_s'], onnxruntime_int8_miou=q['miou'],
                onnxruntime_fp32_miou=fp32, onnxruntime_int8_delta_points=q['delta_points'],
                onnxruntime_int8_within_half_point=q['within_half_point'], onnxruntime_int8_val_images=images)


def data_of(args, run, tmp):
    """The VOC root to validate on: the run's own data, --data-dir, else a tiny synthetic set made in ``tmp``."""
    if args.data_dir:
        return voc_root(args.data_dir)
    recipe = read_json(os.path.join(run, 'history.json')).get('recipe', {}) if args.run else {}
    if recipe.get('data_dir') and os.path.isdir(voc_root(recipe['data_dir'])):
        return voc_root(recipe['data_dir'])
    sizes = ((160, 224), (128, 192), (96, 128), (320, 480))
    make_synthetic_voc(os.path.join(tmp, 'data'), n_train=8, n_val=8, sizes=sizes, seed=1, progress=False)
    return voc_root(os.path.join(tmp, 'data'))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('run', nargs='?', help='a d2lseg train --out folder (default: random weights)')
    p.add_argument('--variant', default='fcn32s', choices=('fcn32s', 'fcn16s', 'fcn8s'))
    p.add_argument('--data-dir', help='validation data (default: the run\'s, else a tiny synthetic set)')
    p.add_argument('--val-images', type=int, default=8)
    p.add_argument('--iters', type=int, default=10)
    p.add_argument('--warmup', type=int, default=3)
    p.add_argument('--no-int8', action='store_true')
    args = p.parse_args(argv)
    begin = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix='d2lseg-onnx-bench-') as tmp:
        run = args.run or random_run(os.path.join(tmp, 'run'), args.variant)
        path = export_onnx(run, os.path.join(tmp, 'model.onnx'), log=lambda s: None)['onnx']
        net, classes = load_net(os.path.join(run, 'model.params'), ctx=mx.cpu())
        model, voc_dir = onnxrun.Model(path), data_of(args, run, tmp)
        res = {'model': run if args.run else f'{args.variant}, random weights', 'variant': model.variant,
               'shape': list(SHAPE), 'warmup': args.warmup, 'iters': args.iters,
               'onnxruntime': onnxruntime.__version__, 'img_s': speeds(net, model, args.warmup, args.iters),
               'parity': parity(net, model, voc_dir, args.val_images, len(classes))}
        res['int8'] = None if args.no_int8 else int8(model, path, voc_dir, args.val_images, len(classes),
                                                     res['parity']['miou_onnxruntime'], args.warmup, args.iters)
    res['elapsed_s'] = time.perf_counter() - begin
    res['environment'] = environment()
    print(json.dumps(res))
    return 0


if __name__ == '__main__':
    sys.exit(main())
