"""Throughput of parameter-server data parallelism on this machine: 1 and 2 local workers, 1 server.

Run from the repo root in the venv (machine otherwise idle):

    .venv/bin/python bench/distributed.py [--steps 10] [--crop 128x192] [--batch 4]

Each configuration trains fcn32s (random backbone, float32) through the package's own step
(``engine.prepare`` + ``engine.train_step``, as ``fit``), on batches loaded once before timing
(the data pipeline is not timed), under ``d2lseg.command.launcher.launch`` on 127.0.0.1. images/s counts
the images of all workers: workers * batch * steps / (rank 0's time for the timed steps). On one
machine the workers share its cores, so no speed-up is expected; the figure shows the cost of the
parameter server (pushing and pulling every gradient through a local server process).
The LAST line printed is one JSON object.
"""
import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time


def _recipe(data_dir, crop, batch):
    from d2lseg.training.config import Recipe
    return Recipe(data_dir=data_dir, synthetic=True, crop=crop, batch_size=batch, epochs=1,
                  pretrained=False, ctx='cpu', workers=0, seed=0, kvstore='device')


def worker(args):
    """One worker (or the single process without kvstore): time ``steps`` steps, rank 0 writes the result."""
    import mxnet as mx
    from d2lseg.training.engine import prepare, train_step
    recipe = _recipe(args.data_dir, args.crop, args.batch)
    kv = None
    if os.environ.get('DMLC_ROLE') == 'worker':
        from d2lseg.training.kvstore import create_kvstore
        kv = create_kvstore('dist_sync')
        recipe.kvstore = 'dist_sync'
    run = prepare(recipe, ctx=[mx.cpu()], kv=kv)
    batches = []
    for batch in run.train_iter:
        batches.append(batch)
        if len(batches) == 2:
            break
    for i in range(args.warmup):
        train_step(run, batches[i % len(batches)])
    tic = time.perf_counter()
    for i in range(args.steps):
        train_step(run, batches[i % len(batches)])
    mx.nd.waitall()
    seconds = time.perf_counter() - tic
    if run.rank == 0:
        params = sum(p.data(mx.cpu()).size for p in run.net.collect_params().values() if p.grad_req != 'null')
        with open(args.result, 'w') as f:
            json.dump({'workers': run.num_workers, 'seconds': seconds, 'trained_params': int(params),
                       'omp_num_threads': os.environ.get('OMP_NUM_THREADS')}, f)


def measure(args, workers, threads, distributed=True):
    """images/s of one configuration, or an error string."""
    from d2lseg.command.launcher import launch
    fd, result = tempfile.mkstemp(suffix='.json')
    os.close(fd)
    os.remove(result)
    command = [sys.executable, os.path.abspath(__file__), '--worker', '--result', result,
               '--data-dir', args.data_dir, '--crop', f'{args.crop[0]}x{args.crop[1]}',
               '--batch', str(args.batch), '--steps', str(args.steps), '--warmup', str(args.warmup)]
    env_before = os.environ.get('OMP_NUM_THREADS')
    os.environ['OMP_NUM_THREADS'] = str(threads)
    tic = time.perf_counter()
    try:
        if distributed:
            log = io.StringIO()
            code = launch(command, num_workers=workers, num_servers=1, port=0, timeout=args.timeout, sink=log)
            if code:
                return None, f'launch exited with {code}: {log.getvalue()[-500:]}'
        else:
            subprocess.run(command, check=True, timeout=args.timeout)
        with open(result) as f:
            r = json.load(f)
    finally:
        if env_before is None:
            os.environ.pop('OMP_NUM_THREADS', None)
        else:
            os.environ['OMP_NUM_THREADS'] = env_before
        if os.path.exists(result):
            os.remove(result)
    r['images_per_s'] = round(workers * args.batch * args.steps / r['seconds'], 3)
    r['wall_seconds'] = round(time.perf_counter() - tic, 1)
    print(f'{workers} worker(s), {threads} thread(s) each, '
          f'{"1 server" if distributed else "no kvstore"}: {r["images_per_s"]:.2f} images/s',
          file=sys.stderr, flush=True)
    return r, None


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--worker', action='store_true', help=argparse.SUPPRESS)
    p.add_argument('--result', help=argparse.SUPPRESS)
    p.add_argument('--data-dir', default=os.path.join(tempfile.gettempdir(), 'd2lseg-bench-dist'))
    p.add_argument('--crop', default='128x192')
    p.add_argument('--batch', type=int, default=4, help='images per worker per step')
    p.add_argument('--steps', type=int, default=10, help='timed steps')
    p.add_argument('--warmup', type=int, default=2)
    p.add_argument('--timeout', type=float, default=600)
    args = p.parse_args()
    args.crop = tuple(int(v) for v in args.crop.split('x'))
    if args.worker:
        return worker(args)
    from d2lseg.data.synthetic import make_synthetic_voc
    from d2lseg.data.voc import has_voc
    if not has_voc(args.data_dir):
        make_synthetic_voc(args.data_dir, n_train=24, n_val=4, sizes=((args.crop[0] + 32, args.crop[1] + 32),),
                           seed=0, progress=False)
    cpus = len(os.sched_getaffinity(0))
    configs = [('single_process', 1, cpus, False),            # no kvstore: the baseline
               ('workers_1', 1, cpus, True),                  # the same through a local server
               ('workers_2', 2, max(1, cpus // 2), True),     # the cores split between two workers
               ('workers_2_oversubscribed', 2, cpus, True)]   # each worker uses every core
    out = {'crop': list(args.crop), 'batch_per_worker': args.batch, 'steps': args.steps, 'servers': 1,
           'cpus': cpus, 'model': 'fcn32s resnet18_v2, float32'}
    for name, workers, threads, dist in configs:
        r, err = measure(args, workers, threads, dist)
        out[name] = ({'images_per_s': r['images_per_s'], 'threads_per_worker': threads,
                      'wall_seconds': r['wall_seconds']} if r else {'error': err})
        if r:
            out['trained_params'] = r['trained_params']
    if 'trained_params' in out:
        out['bytes_per_push'] = out['trained_params'] * 4
    from d2lseg.native.environment import environment
    out['environment'] = environment()  # of this (driving) process; workers used threads_per_worker each
    print(json.dumps(out))


if __name__ == '__main__':
    sys.exit(main())
