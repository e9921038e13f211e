"""Run by tests/test_faults_runfolder.py: a second process holding a run folder.

    python tests/helpers/runfolder_holder.py FOLDER

Holds ``RunFolder(FOLDER)`` (its writer's lock), prints 'held' once it does and sleeps 60 s inside it
(the test kills it).
"""
import sys
import time

from d2lseg.core.runfolder import RunFolder


def main(argv):
    with RunFolder(argv[0]):
        print("held", flush=True)
        time.sleep(60)


if __name__ == '__main__':
    main(sys.argv[1:])
