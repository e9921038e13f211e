"""``d2lseg launch`` (``d2lseg.command.launcher``): the job stops as a whole when a worker fails, hangs or runs out of
time, runs over ssh from a host file, and leaves no process behind."""
import io
import stat
import sys
import signal
import time

import pytest

from d2lseg.core.errors import D2lsegError
from d2lseg.command.launcher import launch, read_hostfile
from processes import _assert_no_leftovers, _cli, helper


pytestmark = pytest.mark.distributed


def test_a_worker_killed_by_a_signal_stops_the_job(tmp_path, tag):
    tic = time.monotonic()
    res = _cli('launch', '-n', '2', '-s', '1', '--port', '0', '--timeout', '100', '--',
               sys.executable, helper('distributed_killed'), timeout=150)
    elapsed = time.monotonic() - tic
    assert res.returncode == 128 + signal.SIGKILL, res.stdout + res.stderr
    assert 'was killed by SIGKILL; stopped the job' in res.stderr
    assert res.stdout.count('up ') == 2             # both had joined the job before one died
    assert elapsed < 90
    _assert_no_leftovers(tag)


def test_a_failing_worker_stops_hung_servers(tag):
    sink = io.StringIO()
    tic = time.monotonic()
    code = launch([sys.executable, '-c', 'import sys, time; time.sleep(2); print("bye"); sys.exit(3)'], num_workers=2,
                  num_servers=2, port=0, timeout=60, sink=sink)
    assert code == 3
    assert time.monotonic() - tic < 30
    assert '[worker 0] bye' in sink.getvalue() or '[worker 1] bye' in sink.getvalue()
    _assert_no_leftovers(tag)


def test_a_worker_hung_after_the_others_finished_stops_the_job(tmp_path, tag, capsys):
    first = tmp_path / 'first'
    code = launch([sys.executable, helper('distributed_first_exits'), str(first)], num_workers=2, port=0,
                  timeout=60, grace=2, sink=io.StringIO())
    assert code == 1
    assert 'still running 2 s after worker' in capsys.readouterr().err
    _assert_no_leftovers(tag)


def test_timeout_stops_the_job(tag, capsys):
    tic = time.monotonic()
    code = launch([sys.executable, '-c', 'import time; time.sleep(120)'], num_workers=2, num_servers=1,
                  port=0, timeout=3, sink=io.StringIO())
    assert code == 124
    assert 3 <= time.monotonic() - tic < 25
    assert '--timeout 3: the job was still running after 3 s' in capsys.readouterr().err
    _assert_no_leftovers(tag)


FAKE_SSH = r'''#!/bin/bash
# stands in for ssh: drops the options and the host, runs the remote command in its own session
echo "${*:1:7}" >> "$(dirname "$0")/calls.txt"
while [ $# -gt 0 ]; do case "$1" in -o|-p) shift 2;; -*) shift;; *) break;; esac; done
shift
setsid bash -c "$1" <&0 &
wait $!
'''


def test_hostfile_runs_over_ssh_and_cleans_up_remote_processes(tmp_path, tag, monkeypatch):
    """Through a stand-in ssh whose 'remote' processes live in their own session, as under sshd:
    they must stop because the launcher closes ssh's stdin, not because it kills local groups."""
    bin_dir = tmp_path / 'bin'
    bin_dir.mkdir()
    fake = bin_dir / 'ssh'
    fake.write_text(FAKE_SSH)
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    hostfile = tmp_path / 'hosts'
    hostfile.write_text('# two "machines"\n127.0.0.1\n\n127.0.0.1:2222  # ssh port\n')
    assert read_hostfile(str(hostfile)) == [('127.0.0.1', '22'), ('127.0.0.1', '2222')]
    sink = io.StringIO()
    monkeypatch.chdir(tmp_path)
    code = launch([sys.executable, helper('distributed_environment')], num_workers=2, num_servers=1,
                  hostfile=str(hostfile), port=0, timeout=4, ssh=str(fake), sink=sink)
    assert code == 124
    out = sink.getvalue()
    for i in (0, 1):
        assert f'[worker {i}] worker 127.0.0.1 2 {tmp_path}' in out, out
    calls = (bin_dir / 'calls.txt').read_text().splitlines()
    assert len(calls) == 3 and sum('-p 2222 127.0.0.1' in c for c in calls) == 1   # server 0, workers 0, 1
    _assert_no_leftovers(tag)


def test_launch_errors(tmp_path):
    with pytest.raises(D2lsegError, match='no hosts'):
        (tmp_path / 'empty').write_text('# nothing\n')
        launch(['true'], 1, hostfile=str(tmp_path / 'empty'))
    with pytest.raises(D2lsegError, match='line 1'):
        (tmp_path / 'bad').write_text('host:ssh\n')
        read_hostfile(str(tmp_path / 'bad'))
    with pytest.raises(D2lsegError, match='--timeout'):
        launch(['true'], 1, timeout=0)
    res = _cli('launch', '-n', '1')
    assert res.returncode == 2 and 'give the command' in res.stderr
