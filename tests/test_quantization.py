"""bfloat16 inference (``quantization.to_bfloat16``): every variant converts, keeps the fused prediction path,
and agrees with float32; refused in one line where it cannot run. INT8: tests/test_performance.py."""
import mxnet as mx
import numpy as np
import pytest
from mxnet import nd

from d2lseg.errors import D2lsegError
from d2lseg.inference import label_graph, predict_batch
from d2lseg.model import build_fcn
from d2lseg.quantization import bfloat16_unavailable, check_bfloat16, to_bfloat16


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
