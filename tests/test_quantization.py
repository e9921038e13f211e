"""Quantised inference (d2lseg.deploy.quantization). bfloat16 (``to_bfloat16``): every variant converts, keeps the
fused prediction path, and agrees with float32; refused in one line where it cannot run. INT8 (``quantize``):
the calibrated network runs, keeps the float32 upsampling, tracks float32 and predicts files.
"""
import json

import mxnet as mx
import numpy as np
import pytest
from mxnet import nd
from PIL import Image

from d2lseg.core.errors import D2lsegError
from d2lseg.command.photos import predict_files
from d2lseg.fcn.inference import label_graph, predict_batch
from d2lseg.fcn.model import build_fcn
from d2lseg.deploy.quantization import bfloat16_unavailable, calibration_batch, check_bfloat16, quantize, to_bfloat16
from recipes import network_pair


def test_gpus_are_refused_in_one_line():
    with pytest.raises(D2lsegError, match=r'--dtype bfloat16: .* CPU only, not gpu\(0\); use float32 on GPUs'):
        check_bfloat16(mx.gpu(0))


@pytest.mark.parametrize('variant', ['fcn32s', 'fcn16s', 'fcn8s'])
def test_every_variant_converts_keeps_the_fused_path_and_agrees(variant):
    why = bfloat16_unavailable()
    if why:
        pytest.skip(f'no bfloat16 here (oneDNN here has no AVX-512): {why}')
    mx.random.seed(0)
    net = build_fcn(21, variant, pretrained=False, fast_upsampling=True)
    net.hybridize()
    x = nd.random.normal(shape=(2, 3, 64, 96))
    y32 = net(x)
    bnet = to_bfloat16(net)
    y16 = bnet(x)
    assert y16.shape == y32.shape == (2, 21, 64, 96) and y16.dtype == np.float32
    # with the native kernels the float32 upsampling stays, fused with the argmax
    assert (label_graph(bnet) is not None) == (label_graph(net) is not None)
    agree = (predict_batch(bnet, x) == predict_batch(net, x)).mean().asscalar()
    assert agree >= 0.97, agree  # a random network (the trained one: tests/test_cli.py, >= 0.98)
    corr = np.corrcoef(y32.asnumpy().ravel(), y16.asnumpy().ravel())[0, 1]
    assert corr > 0.99, corr


def test_int8_quantisation_runs_and_tracks_fp32(tmp_path):
    plain, fast = network_pair()
    fast.hybridize(static_alloc=True, static_shape=True)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (70, 100, 3), dtype=np.uint8) for _ in range(4)]
    calib = calibration_batch(images, (64, 96))
    assert calib.shape == (4, 3, 64, 96)
    qnet = quantize(fast, calib, batch_size=2)
    graph = json.loads(qnet(mx.sym.var('data')).tojson())
    ops = {n['op'] for n in graph['nodes']}
    upsampling = 'd2lseg_upsample' if fast[-1].uses_native() else 'Deconvolution'  # stays float32
    assert '_sg_mkldnn_conv' in ops and '_contrib_quantize_v2' in ops and upsampling in ops
    y32, y8 = fast(calib), qnet(calib)
    assert y8.shape == y32.shape == (4, 21, 64, 96)
    # with the kernels the upsampling stays the float net's layer, fused with the argmax at prediction
    assert (label_graph(qnet) is not None) == fast[-1].uses_native()
    np.testing.assert_array_equal(predict_batch(qnet, calib).asnumpy(), y8.argmax(axis=1).asnumpy())
    corr = np.corrcoef(y32.asnumpy().ravel(), y8.asnumpy().ravel())[0, 1]
    assert corr > 0.95, corr
    paths = []
    for i, img in enumerate(images[:2]):
        paths.append(str(tmp_path / f'img{i}.png'))
        Image.fromarray(img).save(paths[-1])
    failed = predict_files(fast, paths, str(tmp_path / 'out'), full=True, tile=(64, 96), int8=True,
                           log=lambda *_: None)
    assert failed == 0
    label = np.asarray(Image.open(tmp_path / 'out' / 'img0.png'))   # class indices (VOC's palette PNG)
    assert label.shape == (70, 100) and label.max() < 21
