"""Run by tests/test_distributed.py as each worker of a ``d2lseg launch`` job: the first one exits, the rest hang.

    python tests/helpers/distributed_first_exits.py MARKER

The worker that creates the file MARKER (exclusively) exits 0 at once; any worker finding it there
already sleeps 120 s. Prints nothing.
"""
import os
import sys
import time


def main(argv):
    try:
        os.close(os.open(argv[0], os.O_CREAT | os.O_EXCL))
    except FileExistsError:
        time.sleep(120)


if __name__ == '__main__':
    main(sys.argv[1:])
