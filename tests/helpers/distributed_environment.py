"""Run by tests/test_distributed.py as each worker of a ``d2lseg launch --hostfile`` job (through a stand-in ssh).

    python tests/helpers/distributed_environment.py

Prints one line: DMLC_ROLE, DMLC_NODE_HOST, DMLC_NUM_WORKER and the working folder, then sleeps 120 s
(the launcher's --timeout must stop it).
"""
import os
import time


def main():
    print(os.environ['DMLC_ROLE'], os.environ['DMLC_NODE_HOST'], os.environ['DMLC_NUM_WORKER'], os.getcwd(),
          flush=True)
    time.sleep(120)


if __name__ == '__main__':
    main()
