"""Process bookkeeping shared by the tests that start parameter-server jobs: tagged processes, leftovers,
the helper scripts the workers run, the d2lseg command."""
import os
import signal
import subprocess
import sys
import time


HELPERS = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'helpers')


def helper(name):
    """The path of tests/helpers/NAME.py, a script the launched workers run."""
    return os.path.join(HELPERS, name + '.py')


def _tagged_processes(tag):
    """Live (not zombie) pids whose environment carries ``D2LSEG_TEST_TAG=tag`` -> {pid: cmdline}."""
    want, found = f'D2LSEG_TEST_TAG={tag}'.encode(), {}
    for pid in filter(str.isdigit, os.listdir('/proc')):
        try:
            with open(f'/proc/{pid}/environ', 'rb') as f:
                if want not in f.read().split(b'\0'):
                    continue
            with open(f'/proc/{pid}/stat') as f:
                if f.read().rsplit(')', 1)[1].split()[0] == 'Z':
                    continue
            with open(f'/proc/{pid}/cmdline', 'rb') as f:
                found[int(pid)] = f.read().replace(b'\0', b' ').decode(errors='replace')[:200]
        except OSError:
            pass
    return found


def _assert_no_leftovers(tag, within=10.0):
    deadline = time.monotonic() + within
    while _tagged_processes(tag) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = _tagged_processes(tag)
    assert not left, f'processes left behind: {left}'


def _kill_tagged(tag):
    for pid in _tagged_processes(tag):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def _cli(*args, timeout=120, cwd=None):
    return subprocess.run([sys.executable, '-m', 'd2lseg.command.cli', *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd)
