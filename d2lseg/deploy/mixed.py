"""bfloat16 training (``d2lseg train --dtype bfloat16``, the Recipe's ``dtype``): float32 master weights,
bfloat16 arithmetic in the network's body.

``training_net`` converts every layer before the final upsampling with ``mxnet.contrib.amp`` (casts in
the graph: convolutions, batch norms and ReLUs run in bfloat16, on AMX where the CPU has it) into a
``SymbolBlock`` that *shares* the float32 network's Parameters: the trainer, the optimizer state, the
gradients (and so what reaches a kvstore), the batch-norm running statistics and every checkpoint stay
float32, and a checkpoint of either dtype loads into the other. The final upsampling (native kernels or
MXNet's) and the loss stay float32. The approach and its measurements: issue 32, docs/low-precision.md.
"""
import mxnet as mx
from mxnet import gluon, nd

from ..core import startup
from ..native.environment import cpu_info
from ..core.constants import DTYPES, OUTPUT_STRIDE
from ..fcn.model import SequentialFCN
from .quantization import bfloat16_scores, check_bfloat16

# Measured on the 2-core Xeon with D2LSEG_AMX=0 (AVX-512 BF16, no AMX), fcn32s 128x192 batch 8, shared CPU.
NO_AMX_SPEED = 'about 0.4-0.6x'


def check_dtype(dtype, ctx):
    """Raise a one-line D2lsegError where ``dtype`` cannot train on the contexts ``ctx`` (GPUs, CPUs whose
    oneDNN has no bfloat16) -> a one-line note when it runs but slowly (no AMX), else None."""
    if dtype == DTYPES[0]:
        return None
    for c in ctx:
        check_bfloat16(c)
    amx = startup.amx()
    if amx['enabled']:
        return None
    has = 'avx512_bf16' in cpu_info()[1]
    return (f"--dtype bfloat16: AMX is off here ({amx.get('reason', 'no AMX')}); oneDNN runs bfloat16 on AVX-512"
            f"{' BF16' if has else ' by emulation'}, expect {NO_AMX_SPEED} float32's training speed (use float32 "
            "on this CPU for speed)")


def default_layout(params):
    """Rewrite the arrays of ``params`` (initialised Parameters; others are skipped) in place, in MXNet's default
    memory layout, with the same values.

    A float32 inference pass (``training_net``'s initialisation, without static_alloc) leaves oneDNN's blocked
    layout in the convolution weights, and in bfloat16 training only casts read them after that, so it stays.
    MXNet 1.9 cannot hand such an array to a kvstore or copy into it: a distributed kvstore's push fails inside
    the engine with no error in Python and its server then aborts ("init 16 first"). An operator's output always
    has the default layout.
    """
    for param in params:
        try:
            arrays = param.list_data()
        except gluon.parameter.DeferredInitializationError:
            continue
        for arr in arrays:
            nd.identity(arr.copy(), out=arr)


def training_net(net, dtype, ctx, **hybridize):
    """The network training steps run for ``dtype``: ``net`` itself (float32), or (bfloat16) a
    ``model.SequentialFCN`` of ``net``'s layers before the final upsampling in bfloat16, sharing its
    Parameters, then ``net``'s own float32 upsampling. ctx: the contexts it trains on (checked:
    ``check_dtype``); hybridize: its arguments (as ``net``'s)."""
    if dtype == DTYPES[0]:
        return net
    check_dtype(dtype, ctx)
    # Layers waiting for their first batch are initialised now, in the float32 network's order (a
    # SymbolBlock would draw them in another): the same seed starts from the same weights in either dtype.
    net(nd.zeros((1, 3, OUTPUT_STRIDE, OUTPUT_STRIDE), ctx=ctx[0]))
    default_layout(net.collect_params().values())
    data = mx.sym.var('data', dtype='float32')
    body = gluon.SymbolBlock(bfloat16_scores(net, data), data, params=net.collect_params())
    mixed = SequentialFCN(prefix=net.prefix + 'bf16train_')
    mixed.add(body, net.upsample)
    mixed.hybridize(**hybridize)
    return mixed
