"""Run by tests/test_distributed.py as each worker of a ``d2lseg launch`` job: one parameter-server training run.

    python tests/helpers/distributed_train.py RECIPE_JSON OUT

Trains ``Recipe.from_dict(json.loads(RECIPE_JSON))`` on a ``dist_sync`` kvstore (the chief checkpoints
into OUT), then writes OUT/rank{R}.params (the trained network) and OUT/rank{R}.json: the number of
workers, the training steps per epoch, the history, the dtypes of the gradients it pushed to the kvstore,
and ``allreduce_counts`` of a few int64 counts far
above float32's 2**24 (rank-dependent, so the test knows their exact sums). Prints 'rank R done'.
"""
import json
import os
import sys

import d2lseg  # noqa: F401  (first: it sets the thread count before MXNet loads)
import mxnet as mx
import numpy as np

from d2lseg.training.kvstore import allreduce_counts, create_kvstore
from d2lseg.training.callbacks import Checkpointer
from d2lseg.training.config import Recipe
from d2lseg.training.engine import fit, prepare


def record_pushed(kv, seen):
    """Wrap ``kv``'s push and pushpull so that the dtype names of the arrays sent are added to ``seen``."""
    for name in ('push', 'pushpull'):
        def wrapped(key, value, *args, _send=getattr(kv, name), **kwargs):
            seen.update(np.dtype(v.dtype).name for v in (value if isinstance(value, (list, tuple)) else [value]))
            return _send(key, value, *args, **kwargs)
        setattr(kv, name, wrapped)


def main(argv):
    recipe, out = Recipe.from_dict(json.loads(argv[0])), argv[1]
    kv = create_kvstore('dist_sync')
    run = prepare(recipe, ctx=[mx.cpu()], kv=kv)
    pushed = set()  # the dtypes of the gradients this worker sends to the kvstore
    record_pushed(kv, pushed)
    history = fit(recipe, [Checkpointer(out)], run=run, progress=False)
    run.net.save_parameters(os.path.join(out, 'rank%d.params' % kv.rank))
    big = np.array([[2**40 + kv.rank, 2**24 + 1], [3 * kv.rank, 2**53 - 1]], dtype=np.int64)
    with open(os.path.join(out, 'rank%d.json' % kv.rank), 'w') as f:
        json.dump({'num_workers': kv.num_workers, 'steps': len(run.train_iter), 'history': history,
                   'counts': allreduce_counts(kv, big).tolist(), 'pushed_dtypes': sorted(pushed)}, f)
    print('rank %d done' % kv.rank, flush=True)


if __name__ == '__main__':
    main(sys.argv[1:])
