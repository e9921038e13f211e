"""Run by tests/test_kernels.py, once per mode, each in a fresh process: two SGD steps of the fast fcn32s.

    python tests/helpers/kernels_train_two_steps.py native|mxnet OUT

With the native kernels (``native``) or MXNet's operators (``mxnet``) in the upsampling and the loss,
the same seeded network and batch: writes OUT.params (every parameter's change over the two steps)
and OUT.json (``train_step``'s result for each step). Prints nothing.
"""
import json
import sys

import d2lseg  # noqa: F401
import mxnet as mx
from mxnet import nd

from d2lseg import native
from d2lseg.training.config import Recipe
from d2lseg.fcn.model import build_fcn
from d2lseg.training.engine import Run, make_trainer, train_step
from d2lseg.fcn.loss import SegmentationLoss


def main(argv):
    flag, out = argv[0] == 'native', argv[1]
    mx.random.seed(5)  # a batch whose BatchNorm statistics are not near-degenerate (batch 2, 2x3 maps at
    x = nd.random.normal(shape=(2, 3, 64, 96))  # stage 4): there any float rounding is amplified
    y = nd.random.randint(0, 21, shape=(2, 64, 96)).astype('float32')
    y[0, :8] = 255
    mx.random.seed(0)
    net = build_fcn(21, pretrained=False, fast_upsampling=True)
    net(x[:1])  # finish the deferred initialisation
    before = {k: v.data().copy() for k, v in net._collect_params_with_prefix().items()}
    net.hybridize(static_alloc=True, static_shape=True)
    run = Run(net, make_trainer(net, Recipe(lr=0.1, wd=1e-3, momentum=0.9, ctx='cpu')),
              SegmentationLoss(), [mx.cpu()], None, None)
    with native.override(flag):
        assert net[-1].uses_native() is flag
        results = [train_step(run, (x, y)) for _ in range(2)]  # the second step sees the first update
    nd.save(out + '.params', {k: v.data() - before[k] for k, v in net._collect_params_with_prefix().items()})
    with open(out + '.json', 'w') as f:
        json.dump(results, f)


if __name__ == '__main__':
    main(sys.argv[1:])
