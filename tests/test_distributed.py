"""Data-parallel training on the parameter server (d2lseg.distributed), all on 127.0.0.1.

The distributed run (2 workers, 1 server, batch 2 each) must equal a single process that trains on
the union batch (4) split over two contexts, so BatchNorm sees the same per-worker sub-batches.
"""
import io
import json
import os
import signal
import stat
import subprocess
import sys
import time
import uuid
from dataclasses import replace

import mxnet as mx
import numpy as np
import pytest
from mxnet import gluon

from d2lseg.distributed import (DIGITS, allreduce_counts, create_kvstore, launch, merge_digits,
                                read_hostfile, split_digits)
from d2lseg.errors import D2lsegError
from d2lseg.training import Recipe, fit, prepare

pytestmark = pytest.mark.distributed

WORKER = r'''
import json, os, sys
import mxnet as mx, numpy as np
from d2lseg.distributed import allreduce_counts, create_kvstore
from d2lseg.training import Checkpointer, Recipe, fit, prepare
recipe, out = Recipe.from_dict(json.loads(sys.argv[1])), sys.argv[2]
kv = create_kvstore('dist_sync')
run = prepare(recipe, ctx=[mx.cpu()], kv=kv)
history = fit(recipe, [Checkpointer(out)], run=run, progress=False)
run.net.save_parameters(os.path.join(out, 'rank%d.params' % kv.rank))
big = np.array([[2**40 + kv.rank, 2**24 + 1], [3 * kv.rank, 2**53 - 1]], dtype=np.int64)
with open(os.path.join(out, 'rank%d.json' % kv.rank), 'w') as f:
    json.dump({'num_workers': kv.num_workers, 'steps': len(run.train_iter), 'history': history,
               'counts': allreduce_counts(kv, big).tolist()}, f)
print('rank %d done' % kv.rank, flush=True)
'''


class UnionSampler(gluon.data.Sampler):
    """Step i yields rank 0's step-i items, then rank 1's, ...: the union of the workers' batches."""

    def __init__(self, shard, parts, per_worker):
        self._shard, self._parts, self._b = shard, parts, per_worker

    def _order(self):
        shards = [list(self._shard(r, self._parts)) for r in range(self._parts)]
        steps = -(-len(shards[0]) // self._b)
        return [i for s in range(steps) for sh in shards for i in sh[s * self._b:(s + 1) * self._b]]

    def __iter__(self):
        return iter(self._order())

    def __len__(self):
        return len(self._order())


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


@pytest.fixture
def tag(monkeypatch):
    """A unique environment tag inherited by every process a test starts; all killed at the end."""
    value = uuid.uuid4().hex
    monkeypatch.setenv('D2LSEG_TEST_TAG', value)
    try:
        yield value
    finally:
        _kill_tagged(value)


def _cli(*args, timeout=120, cwd=None):
    return subprocess.run([sys.executable, '-m', 'd2lseg.cli', *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd)


def _params_by_order(net, ctx):
    return [(p.grad_req, p.data(ctx).asnumpy()) for p in net.collect_params().values()]


def test_two_workers_equal_single_process_on_union_batch(data_root, tmp_path, tag):
    recipe = Recipe(data_dir=data_root, synthetic=True, crop=(64, 96), batch_size=2, epochs=1,
                    pretrained=False, ctx='cpu', workers=0, max_images=16, seed=3, kvstore='dist_sync')
    script = tmp_path / 'worker.py'
    script.write_text(WORKER)
    out = tmp_path / 'dist'
    out.mkdir()
    tic = time.monotonic()
    res = _cli('launch', '-n', '2', '-s', '1', '--port', '0', '--timeout', '150', '--',
               sys.executable, str(script), json.dumps(recipe.to_dict()), str(out), timeout=200)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert time.monotonic() - tic < 150
    lines = res.stdout.splitlines()
    assert {line.split('] ')[0] + ']' for line in lines if 'done' in line} == {'[worker 0]', '[worker 1]'}
    _assert_no_leftovers(tag)
    ranks = [json.loads((out / f'rank{r}.json').read_text()) for r in (0, 1)]
    assert [r['num_workers'] for r in ranks] == [2, 2]
    assert [r['steps'] for r in ranks] == [4, 4]          # 16 images / 2 workers / batch 2
    # allreduce_counts inside a live job: exact int64 sums, far above float32's 2**24
    want = [[2 ** 41 + 1, 2 ** 25 + 2], [3, 2 ** 54 - 2]]
    assert ranks[0]['counts'] == want and ranks[1]['counts'] == want
    assert (out / 'checkpoint.json').is_file()            # the chief checkpoints (trainer states too)
    assert ranks[0]['history']['num_workers'] == 2

    # the reference: one process, union batch 4 split over cpu(0), cpu(1) in the workers' order
    ref_recipe = replace(recipe, batch_size=4, ctx='cpu:2', kvstore='device')
    ctx = [mx.cpu(0), mx.cpu(1)]
    run = prepare(ref_recipe, ctx=ctx)
    run.net.hybridize()    # as the workers (prepare drops static_alloc when distributed)
    run.train_iter = gluon.data.DataLoader(run.train_data, 4, last_batch='discard',
                                           sampler=UnionSampler(run.train_data.sampler, 2, 2))
    run.val_iter = gluon.data.DataLoader(run.val_data, 4, last_batch='keep',
                                         sampler=UnionSampler(run.val_data.shard_sampler, 2, 2))
    ref_history = fit(ref_recipe, [], run=run, progress=False)
    assert len(run.train_iter) == 4

    worker_params = []
    for r in (0, 1):
        loaded = prepare(replace(recipe, kvstore='device'), ctx=[mx.cpu()], data=False).net
        loaded.load_parameters(str(out / f'rank{r}.params'), ctx=mx.cpu())
        worker_params.append(_params_by_order(loaded, mx.cpu()))
    ref = [_params_by_order(run.net, c) for c in ctx]
    assert len(worker_params[0]) == len(ref[0]) > 40
    trained = 0
    for i, ((req, w0), (_, w1)) in enumerate(zip(*worker_params)):
        if req != 'null':       # trained weights: the same on both workers, and as the union-batch step
            np.testing.assert_array_equal(w0, w1, err_msg=f'param {i}')
            for r in (0, 1):
                np.testing.assert_allclose(ref[r][i][1], w0, rtol=1e-5, atol=1e-6, err_msg=f'param {i}')
            trained += 1
        else:
            # BatchNorm running statistics are per worker batch, exactly as per context
            for r, w in ((0, w0), (1, w1)):
                np.testing.assert_allclose(w, ref[r][i][1], rtol=1e-5, atol=1e-6, err_msg=f'rank {r} param {i}')
    assert trained > 40
    assert sum(not np.allclose(a[1], b[1]) for a, b in zip(*worker_params) if a[0] == 'null') > 20
    # the weights moved: the comparison is not between two untouched initialisations
    init_net = prepare(replace(recipe, kvstore='device'), ctx=[mx.cpu()], data=False).net
    init_net(mx.nd.zeros((1, 3, 64, 96)))           # finish the deferred initialisation
    init = _params_by_order(init_net, mx.cpu())
    assert max(np.abs(a[1] - b[1]).max() for a, b in zip(init, worker_params[0]) if a[0] != 'null') > 1e-3
    # validation confusion matrices summed over the workers' shards: the untrained network's metrics
    # equal the single-process ones over the whole set; after training both workers report the same
    for key in ('pixel_acc', 'miou', 'fwiou', 'mean_acc'):
        for r in (0, 1):
            assert ranks[r]['history']['untrained'][key] == pytest.approx(ref_history['untrained'][key], abs=1e-9)
    np.testing.assert_array_equal(*(np.array(r['history']['epochs'][0]['val_iou'], float) for r in ranks))
    for key in ('test_acc', 'val_miou', 'val_fwiou'):
        assert ranks[0]['history']['epochs'][0][key] == pytest.approx(ref_history['epochs'][0][key], abs=1e-6)
    # the training loss each worker reports is over its own shard; their mean is the union's
    assert np.mean([r['history']['epochs'][0]['loss'] for r in ranks]) == pytest.approx(
        ref_history['epochs'][0]['loss'], rel=1e-5)


def test_a_worker_killed_by_a_signal_stops_the_job(tmp_path, tag):
    code = ("import os, signal, time, mxnet as mx\n"
            "kv = mx.kv.create('dist_sync')\n"
            "print('up', kv.rank, flush=True)\n"
            "if kv.rank == 1:\n"
            "    os.kill(os.getpid(), signal.SIGKILL)\n"
            "time.sleep(300)\n")
    tic = time.monotonic()
    res = _cli('launch', '-n', '2', '-s', '1', '--port', '0', '--timeout', '100', '--',
               sys.executable, '-c', code, timeout=150)
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
    code = launch([sys.executable, '-c', f'import os, time\ntry:\n    os.close(os.open({str(first)!r}, os.O_CREAT | os.O_EXCL))\n'
                   f'except FileExistsError:\n    time.sleep(120)\n'], num_workers=2, port=0, timeout=60,
                  grace=2, sink=io.StringIO())
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
    worker = ("import os, sys, time\n"
              "print(os.environ['DMLC_ROLE'], os.environ['DMLC_NODE_HOST'], os.environ['DMLC_NUM_WORKER'],"
              " os.getcwd(), flush=True)\n"
              "time.sleep(120)\n")
    monkeypatch.chdir(tmp_path)
    code = launch([sys.executable, '-c', worker], num_workers=2, num_servers=1, hostfile=str(hostfile),
                  port=0, timeout=4, ssh=str(fake), sink=sink)
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


def test_create_kvstore_needs_the_launcher_environment(monkeypatch):
    for key in ('DMLC_ROLE', 'DMLC_PS_ROOT_URI', 'DMLC_PS_ROOT_PORT', 'DMLC_NUM_SERVER', 'DMLC_NUM_WORKER'):
        monkeypatch.delenv(key, raising=False)
    with pytest.raises(D2lsegError, match='run it under d2lseg launch'):
        create_kvstore('dist_sync')
    with pytest.raises(D2lsegError, match='--kvstore device: not a distributed kvstore'):
        create_kvstore('device')
    res = _cli('train', '--kvstore', 'dist_sync', '--synthetic', '--data-dir', 'unused', timeout=60)
    assert res.returncode == 2 and 'DMLC_PS_ROOT_URI' in res.stderr and 'Traceback' not in res.stderr


def test_count_digits_sum_exactly_in_float32():
    rng = np.random.default_rng(0)
    workers = [rng.integers(0, 2 ** 50, size=(21, 21), dtype=np.int64) for _ in range(8)]
    workers[0][0, 0] = 2 ** 24 + 1
    exact = np.sum(workers, axis=0)
    # what a parameter server does with float32 pushes: the naive sum is wrong, the digit sum is not
    naive = np.sum([w.astype(np.float32) for w in workers], axis=0, dtype=np.float32)
    assert (naive.astype(np.int64) != exact).any()
    digit_sum = np.sum([split_digits(w) for w in workers], axis=0, dtype=np.float32)
    assert digit_sum.shape == (DIGITS, 21, 21) and digit_sum.max() < 2 ** 24
    np.testing.assert_array_equal(merge_digits(digit_sum), exact)
    np.testing.assert_array_equal(merge_digits(split_digits(np.array([2 ** 63 - 1]))), [2 ** 63 - 1])
    with pytest.raises(ValueError):
        split_digits(np.array([-1]))
    # one process, or no distributed kvstore: the counts themselves
    np.testing.assert_array_equal(allreduce_counts(None, np.array([2 ** 40 + 1])), [2 ** 40 + 1])
    np.testing.assert_array_equal(allreduce_counts(mx.kv.create('local'), np.array([[5]], np.uint32)), [[5]])
    with pytest.raises(ValueError):
        allreduce_counts(None, np.array([1.5]))
