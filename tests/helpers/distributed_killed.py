"""Run by tests/test_distributed.py as each worker of a ``d2lseg launch`` job: rank 1 dies of SIGKILL.

    python tests/helpers/distributed_killed.py

Joins the job's ``dist_sync`` kvstore and prints 'up RANK'; rank 1 then kills itself with SIGKILL,
every other rank sleeps 300 s (the launcher must stop it).
"""
import os
import signal
import time

import d2lseg  # noqa: F401  (first: it sets the thread count before MXNet loads)
import mxnet as mx


def main():
    kv = mx.kv.create('dist_sync')
    print('up', kv.rank, flush=True)
    if kv.rank == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(300)


if __name__ == '__main__':
    main()
