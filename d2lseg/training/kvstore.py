"""The worker's side of data-parallel training on MXNet's parameter server (kvstore ``dist_sync``).

``create_kvstore`` opens the worker's kvstore (``launcher`` starts the job), ``broadcast_parameters``
gives every worker rank 0's parameters, ``allreduce_counts`` sums integer counts (confusion
matrices) over workers exactly.

Gradient semantics: every worker pushes the gradient summed over its own batch; the servers add the
pushes of all workers; every worker pulls that sum and applies the same SGD step with
``rescale_grad = 1 / (batch_size * num_workers)`` (``fit`` calls ``trainer.step(batch_size *
num_workers)``). That is single-process SGD on the union batch, with BatchNorm statistics per worker
batch, exactly as a single process splitting the union batch over one context per worker.
Source: MXNet 1.9 kvstore / gluon.Trainer; Li et al., "Scaling Distributed Machine Learning with
the Parameter Server" (OSDI 2014).
"""
import os
import weakref

import mxnet as mx
import numpy as np

from ..core import mxinternals
from ..core.errors import D2lsegError
from ..deploy.mixed import default_layout

DIST_KVSTORES = ('dist_sync', 'dist_device_sync')
DMLC_ENV = ('DMLC_ROLE', 'DMLC_PS_ROOT_URI', 'DMLC_PS_ROOT_PORT', 'DMLC_NUM_SERVER', 'DMLC_NUM_WORKER')

COUNT_KEY = 1 << 30      # kvstore keys for counts, far above the trainer's parameter indices
DIGIT_BITS = 16          # counts travel as float32 base-2**16 digits: a digit summed over
DIGITS = 4               # W <= 256 workers stays below 2**24, so float32 carries it exactly
_count_keys = weakref.WeakKeyDictionary()   # kvstore -> {shape: key}


def create_kvstore(name):
    """The worker's distributed kvstore ``name`` (dist_sync or dist_device_sync).

    Needs the DMLC_* environment that ``d2lseg launch`` sets; without it, a D2lsegError.
    """
    if name not in DIST_KVSTORES:
        raise D2lsegError(f"--kvstore {name}: not a distributed kvstore; choose {' or '.join(DIST_KVSTORES)}")
    missing = [k for k in DMLC_ENV if not os.environ.get(k)]
    if missing:
        raise D2lsegError(f"--kvstore {name}: the parameter-server environment ({', '.join(missing)}) is "
                          f"not set; run it under d2lseg launch, e.g. d2lseg launch -n 2 -- d2lseg train "
                          f"--kvstore {name} ...")
    if os.environ['DMLC_ROLE'] != 'worker':
        raise D2lsegError(f"--kvstore {name}: DMLC_ROLE is {os.environ['DMLC_ROLE']!r}; training runs as a "
                          f"worker (d2lseg launch sets it)")
    return mx.kv.create(name)


def is_distributed(kv):
    """Whether ``kv`` is a distributed kvstore object (not None, not a name like 'device')."""
    return kv is not None and not isinstance(kv, str) and 'dist' in kv.type


def broadcast_parameters(trainer):
    """Give every worker rank 0's parameters through ``trainer``'s kvstore and wait until they arrived.

    Call it once, after the first backward and before the first ``trainer.step``. Left to itself
    the trainer broadcasts inside its first ``step``, right before pushing the first gradients on the
    same keys, and on CPU MXNet 1.9 does not order that push after the broadcast's pull
    (kvstore_dist.h, PushImpl: ``comm_buf = merged``): a server may answer the pull with the
    summed gradient, which then replaces the weights (seen here in about 1 run in 6).

    The arrays are first given the default memory layout (``mixed.default_layout``): the kvstore cannot
    send the others.
    """
    default_layout(mxinternals.trainer_params(trainer))
    trainer.save_states(os.devnull)     # the public call that makes the trainer init its kvstore keys
    mx.nd.waitall()


def split_digits(counts):
    """Non-negative int64 counts (shape S) -> (DIGITS, *S) float32 base-2**DIGIT_BITS digits, lowest first."""
    c = np.asarray(counts, dtype=np.int64)
    if c.size and c.min() < 0:
        raise ValueError('counts must be non-negative')
    mask = (1 << DIGIT_BITS) - 1
    return np.stack([(c >> (DIGIT_BITS * d)) & mask for d in range(DIGITS)]).astype(np.float32)


def merge_digits(digits):
    """Inverse of ``split_digits`` for digit sums: (DIGITS, *S) float32 (whole numbers < 2**24) -> int64."""
    d = np.rint(np.asarray(digits, dtype=np.float64)).astype(np.int64)
    total = np.zeros(d.shape[1:], dtype=np.int64)
    for i in range(DIGITS):
        total += d[i] << (DIGIT_BITS * i)
    return total


def _count_key(kv, shape):
    """The kvstore key for count arrays of ``shape``; initialised once (every worker calls in the same order)."""
    keys = _count_keys.setdefault(kv, {})
    if shape not in keys:
        keys[shape] = COUNT_KEY + len(keys)
        kv.init(keys[shape], mx.nd.zeros(shape, dtype='float32'))
    return keys[shape]


def allreduce_counts(kv, counts):
    """Sum integer ``counts`` (any shape) over all workers of ``kv``, exactly -> int64 array.

    float32 pushes would round counts above 2**24, so the counts travel as base-2**16 digits whose
    per-digit sums are exact in float32 for up to 256 workers. Every worker must call it, in the
    same order. Needs servers without an optimizer (``make_trainer`` uses update_on_kvstore=False).
    """
    counts = np.asarray(counts)
    if counts.dtype.kind not in 'iub':
        raise ValueError(f'allreduce_counts needs integer counts, got {counts.dtype}')
    if not is_distributed(kv) or kv.num_workers == 1:
        return counts.astype(np.int64)
    if kv.num_workers > 1 << (24 - DIGIT_BITS):
        raise ValueError(f'allreduce_counts is exact for at most {1 << (24 - DIGIT_BITS)} workers')
    digits = split_digits(counts)
    key = _count_key(kv, digits.shape)
    out = mx.nd.zeros(digits.shape, dtype='float32')
    kv.pushpull(key, mx.nd.array(digits, dtype='float32'), out=out)
    return merge_digits(out.asnumpy())
