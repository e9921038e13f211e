"""Run by tests/test_amx.py in fresh processes: what AMX changes in one float32 training step, INT8 and bfloat16.

    python tests/helpers/amx_outputs.py [bare]

Prints one JSON line (last): d2lseg's AMX status, whether DNNL_MAX_CPU_ISA is left in the environment,
and digests of a float32 forward, every float32 gradient, an INT8 forward and a bfloat16 forward of
one seeded FCN-32s. ``bare``: no d2lseg, MXNet alone converts one convolution to bfloat16 and prints
'ok' (the child a d2lseg process may start).
"""
import hashlib
import json
import os
import sys
import warnings

import numpy_names

warnings.simplefilter('ignore')


def digest(*arrays):
    h = hashlib.sha256()
    for a in arrays:
        h.update(a.asnumpy().tobytes())
    return h.hexdigest()[:16]


def bare():
    numpy_names.restore()  # numpy >= 1.24 lacks names MXNet uses: as d2lseg would, without d2lseg
    import mxnet as mx
    from mxnet import nd
    from mxnet.contrib import amp
    from mxnet.gluon import nn
    probe = nn.Conv2D(32, 3, in_channels=32)
    probe.initialize()
    probe.hybridize()
    x = nd.ones((1, 32, 16, 16))
    probe(x)
    amp.convert_hybrid_block(probe, 'bfloat16', ctx=mx.cpu())(x).wait_to_read()
    print('ok')


def outputs():
    import d2lseg
    import mxnet as mx
    from mxnet import autograd, nd
    from d2lseg.fcn.model import build_fcn
    from d2lseg.deploy.quantization import quantize, to_bfloat16
    mx.random.seed(0)
    net = build_fcn(pretrained=False, fast_upsampling=True, ctx=mx.cpu())
    net.hybridize()
    x = nd.random.normal(shape=(2, 3, 64, 96))
    with autograd.record():
        y = net(x)
        loss = y.square().mean()
    loss.backward()
    grads = [p.grad() for p in net.collect_params().values() if p.grad_req != 'null']
    res = {'amx': d2lseg.core.startup.amx(), 'cap_in_environ': os.environ.get('DNNL_MAX_CPU_ISA'),
           'fp32': digest(y), 'grads': digest(*grads), 'int8': digest(quantize(net, x)(x)),
           'bf16': digest(to_bfloat16(net)(x))}
    print(json.dumps(res))


if __name__ == '__main__':
    bare() if sys.argv[1:] == ['bare'] else outputs()
