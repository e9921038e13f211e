"""The benchmark's processes and how they talk: the workload both frameworks time, the child process that
runs one part, and the paired timing (a timing server per framework, timed call for call in alternation).

Standard library only: this module runs in the package's interpreter and in the peer's, which has
PyTorch but neither d2lseg nor MXNet.
"""
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
RUN_PY = os.path.join(HERE, 'run.py')  # every part runs as `run.py --part NAME` in a fresh interpreter
CROP = (320, 480)
BATCH = 8
NUM_CLASSES = 21
GEMM_N = 2048  # the GEMM bound: float32 nd.dot of two GEMM_N x GEMM_N matrices


def child(part, args):
    """Run one part in a fresh interpreter (the peer's for PyTorch parts); its last stdout line is a JSON dict."""
    python = args.peer_python if part.startswith('torch') else sys.executable
    cmd = [python, RUN_PY, '--part', part, '--steps', str(args.steps),
           '--threads', str(args.threads), '--data-dir', args.data_dir] + (['--quick'] if args.quick else [])
    cmd += ['--onnx-run', args.onnx_run] if part == 'onnx' and getattr(args, 'onnx_run', None) else []
    tic = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise RuntimeError(f'bench part {part} failed (exit {proc.returncode}): ' + ' | '.join(tail))
    print(f'  {part}: {time.perf_counter() - tic:.0f} s', file=sys.stderr, flush=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------------------- marked steps
STEP_MARK = 'bench-step'  # the line a part prints after each training step: 'bench-step,<seconds>'


def marked_steps(step, n, sync=lambda: None):
    """Run ``step`` (then ``sync``, which waits for it) ``n`` times, each followed by the flushed line
    ``STEP_MARK,<seconds>``: a verbose library's lines on the same stdout (oneDNN's flush per line) fall
    between the marks of their step."""
    for _ in range(n):
        tic = time.perf_counter()
        step()
        sync()
        print(f'{STEP_MARK},{time.perf_counter() - tic}', flush=True)


def split_steps(lines):
    """[(seconds, [oneDNN 'exec' lines of that step]), ...] from the stdout lines of a part that ran
    ``marked_steps`` under oneDNN's verbose mode."""
    steps, execs = [], []
    for line in lines:
        if line.startswith(STEP_MARK + ','):
            steps.append((float(line.split(',')[1]), execs))
            execs = []
        elif ',exec,' in line:
            execs.append(line)
    return steps


# ----------------------------------------------------------------------------------------- paired
def serve(fns, info=None):
    """A timing server: warm every call up, print the ready line, then per stdin line (a key of
    ``fns``) run that call once and print its seconds."""
    for fn in fns.values():
        fn()
        fn()
    print(json.dumps({'ready': sorted(fns), **(info or {})}), flush=True)
    for line in sys.stdin:
        fn = fns[line.strip()]
        tic = time.perf_counter()
        fn()
        print(time.perf_counter() - tic, flush=True)


class Server:
    """A serve-* part running in its own interpreter; ``time(kind)`` -> seconds of one call."""

    def __init__(self, python, part, args):
        self.err = tempfile.TemporaryFile(mode='w+')
        cmd = [python, RUN_PY, '--part', part, '--threads', str(args.threads)]
        self.proc = subprocess.Popen(cmd + (['--quick'] if args.quick else []), cwd=ROOT, text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.err)
        self.part = part

    def ready(self):
        for line in self.proc.stdout:
            if line.startswith('{'):
                return json.loads(line)
        self._fail()

    def time(self, kind):
        self.proc.stdin.write(kind + '\n')
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            self._fail()
        return float(line)

    def close(self):
        if self.proc.stdin:
            self.proc.stdin.close()
        self.proc.wait()

    def _fail(self):
        self.proc.wait()
        self.err.seek(0)
        tail = self.err.read().strip().splitlines()[-3:]
        raise RuntimeError(f'bench part {self.part} failed (exit {self.proc.returncode}): ' + ' | '.join(tail))


def alternate(plan, reps):
    """Time the (server, kind) calls of ``plan`` in turn, ``reps`` times, the order reversed every other
    repetition -> {(server name, kind): [seconds, ...]}."""
    times = {(server.part, kind): [] for server, kind in plan}
    for rep in range(reps):
        for server, kind in (plan if rep % 2 == 0 else plan[::-1]):
            time.sleep(0.05)  # the other process's threads stop spinning
            times[server.part, kind].append(server.time(kind))
    return times


def paired_figures(times):
    """Images/s and ratios from ``alternate``'s seconds of serve-mxnet's train/infer/int8/gemm[/bf16] and
    serve-torch's train/infer_eager[/infer_compiled]: each rate is its best call; ``*_vs_peer`` is the
    median over repetitions of the speed ratio within a repetition (for inference against the peer's
    faster call of that repetition), ``*_vs_peer_best`` divides best by best; ``bf16_vs_fp32`` the
    same median against the package's own float32 inference; ``paired_gemm_gflops`` is the GEMM bound
    timed in the same alternation."""
    rate = {key: BATCH / min(t) for key, t in times.items()}
    peer_infer = [k for k in ('infer_eager', 'infer_compiled') if ('serve-torch', k) in rate]
    best_infer = max(peer_infer, key=lambda k: rate['serve-torch', k])
    res = {'paired_train_img_s': rate['serve-mxnet', 'train'], 'paired_infer_img_s': rate['serve-mxnet', 'infer'],
           'paired_gemm_gflops': 2 * GEMM_N ** 3 / min(times['serve-mxnet', 'gemm']) / 1e9,
           'paired_int8_img_s': rate['serve-mxnet', 'int8'],
           'peer_train_img_s': rate['serve-torch', 'train'], 'peer_train_config': 'eager, channels_last',
           'peer_infer_img_s': rate['serve-torch', best_infer],
           'peer_infer_config': best_infer.split('_')[1] + ', channels_last'}
    res.update({f'peer_infer_img_s_{k.split("_")[1]}': rate['serve-torch', k] for k in peer_infer})
    peer_infer_times = [min(ts) for ts in zip(*(times['serve-torch', k] for k in peer_infer))]
    low = [('int8', peer_infer_times)] + ([('bf16', peer_infer_times)] if ('serve-mxnet', 'bf16') in times else [])
    if ('serve-mxnet', 'bf16') in times:
        res['paired_bf16_img_s'] = rate['serve-mxnet', 'bf16']
        res['bf16_vs_fp32'] = statistics.median(
            f / b for f, b in zip(times['serve-mxnet', 'infer'], times['serve-mxnet', 'bf16']))
    for kind, peer_times in [('train', times['serve-torch', 'train']), ('infer', peer_infer_times)] + low:
        peer_rate = res['peer_train_img_s' if kind == 'train' else 'peer_infer_img_s']
        res[f'{kind}_vs_peer'] = statistics.median(p / o for p, o in zip(peer_times, times['serve-mxnet', kind]))
        res[f'{kind}_vs_peer_best'] = rate['serve-mxnet', kind] / peer_rate
    return res


def paired(args):
    """The package and the peer, each warm in its own process, timed call for call in alternation
    (the order reversed every other repetition): a shared machine's speed drifts within minutes, and this
    way both see the same drift. -> best images/s of each and the ratios."""
    tic = time.perf_counter()
    ours, peer = Server(sys.executable, 'serve-mxnet', args), Server(args.peer_python, 'serve-torch', args)
    try:
        kinds_ours, info = ours.ready(), peer.ready()
        plan = [(ours, 'train'), (peer, 'train'), (ours, 'infer')] + [
            (peer, k) for k in ('infer_eager', 'infer_compiled') if k in info['ready']] + [
            (ours, 'int8')] + [(ours, 'bf16')] * ('bf16' in kinds_ours['ready']) + [(ours, 'gemm')]
        assert all(k in kinds_ours['ready'] for s, k in plan if s is ours)
        times = alternate(plan, args.pairs)
    finally:
        ours.close()
        peer.close()
    res = paired_figures(times)
    res['torch'], res['paired_reps'] = info['torch'], args.pairs
    print(f'  paired: {time.perf_counter() - tic:.0f} s', file=sys.stderr, flush=True)
    return res
