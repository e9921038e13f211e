"""Data-parallel training on the parameter server (``d2lseg.training.kvstore``), all on 127.0.0.1.

The distributed run (2 workers, 1 server, batch 2 each) must equal a single process that trains on
the union batch (4) split over two contexts, so BatchNorm sees the same per-worker sub-batches."""
import json
import sys
import time
from dataclasses import replace

import mxnet as mx
import numpy as np
import pytest
from mxnet import gluon

from d2lseg.training.config import Recipe
from d2lseg.training.engine import fit, prepare
from d2lseg.core.errors import D2lsegError
from d2lseg.training.kvstore import DIGITS, allreduce_counts, create_kvstore, merge_digits, split_digits
from processes import _assert_no_leftovers, _cli, helper
from recipes import needs_bf16


pytestmark = pytest.mark.distributed


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


def _params_by_order(net, ctx):
    return [(p.grad_req, p.data(ctx).asnumpy()) for p in net.collect_params().values()]


@pytest.mark.parametrize('dtype', ['float32', pytest.param('bfloat16', marks=needs_bf16)])
def test_two_workers_equal_single_process_on_union_batch(data_root, tmp_path, tag, dtype):
    recipe = Recipe(data_dir=data_root, synthetic=True, crop=(64, 96), batch_size=2, epochs=1, dtype=dtype,
                    pretrained=False, ctx='cpu', workers=0, max_images=16, seed=3, kvstore='dist_sync')
    out = tmp_path / 'dist'
    out.mkdir()
    tic = time.monotonic()
    res = _cli('launch', '-n', '2', '-s', '1', '--port', '0', '--timeout', '150', '--',
               sys.executable, helper('distributed_train'), json.dumps(recipe.to_dict()), str(out), timeout=200)
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
    assert ranks[0]['history']['recipe']['dtype'] == dtype
    assert [r['pushed_dtypes'] for r in ranks] == [['float32']] * 2  # gradients reach the kvstore as float32

    # the reference: one process, union batch 4 split over cpu(0), cpu(1) in the workers' order
    ref_recipe = replace(recipe, batch_size=4, ctx='cpu:2', kvstore='device')
    ctx = [mx.cpu(0), mx.cpu(1)]
    run = prepare(ref_recipe, ctx=ctx)
    run.train_net.hybridize()    # as the workers (prepare drops static_alloc when distributed)
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
