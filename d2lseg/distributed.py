"""Data-parallel training on MXNet's parameter server (kvstore ``dist_sync``): launcher and helpers.

``launch`` starts ps-lite's scheduler, the servers and the workers with the ``DMLC_*`` environment
MXNet reads (as ``mxnet/tools/launch.py`` / ``dmlc_tracker`` do), locally on 127.0.0.1 or over ssh
from a host file, streams every worker's output with a ``[worker i]`` prefix, and stops the whole job
when any process fails or the time runs out. ``create_kvstore`` opens the worker's kvstore and
``allreduce_counts`` sums integer counts (confusion matrices) over workers exactly.

Gradient semantics: every worker pushes the gradient summed over its own batch; the servers add the
pushes of all workers; every worker pulls that sum and applies the same SGD step with
``rescale_grad = 1 / (batch_size * num_workers)`` (``fit`` calls ``trainer.step(batch_size *
num_workers)``). That is single-process SGD on the union batch, with BatchNorm statistics per worker
batch, exactly as a single process splitting the union batch over one context per worker.
Source: MXNet 1.9 kvstore / gluon.Trainer; Li et al., "Scaling Distributed Machine Learning with
the Parameter Server" (OSDI 2014).
"""
import math
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import weakref

import numpy as np

from .errors import D2lsegError

DIST_KVSTORES = ('dist_sync', 'dist_device_sync')
DMLC_ENV = ('DMLC_ROLE', 'DMLC_PS_ROOT_URI', 'DMLC_PS_ROOT_PORT', 'DMLC_NUM_SERVER', 'DMLC_NUM_WORKER')
# A process started with DMLC_ROLE=scheduler or server runs ps-lite inside ``import mxnet``
# (mxnet/kvstore/kvstore_server.py) and exits when the workers are done.
SERVER_CODE = 'import mxnet'
# Environment variables forwarded to remote processes (local ones inherit the whole environment).
FORWARD_ENV_PREFIXES = ('DMLC_', 'PS_', 'MXNET_', 'OMP_', 'KMP_')

COUNT_KEY = 1 << 30      # kvstore keys for counts, far above the trainer's parameter indices
DIGIT_BITS = 16          # counts travel as float32 base-2**16 digits: a digit summed over
DIGITS = 4               # W <= 256 workers stays below 2**24, so float32 carries it exactly
_count_keys = weakref.WeakKeyDictionary()   # kvstore -> {shape: key}


def create_kvstore(name):
    """The worker's distributed kvstore ``name`` (dist_sync or dist_device_sync).

    Needs the DMLC_* environment that ``d2lseg launch`` sets; without it, a D2lsegError.
    """
    if name not in DIST_KVSTORES:
        raise D2lsegError(f"--kvstore {name}: not a distributed kvstore; choose {' or '.join(DIST_KVSTORES)}")
    missing = [k for k in DMLC_ENV if not os.environ.get(k)]
    if missing:
        raise D2lsegError(f"--kvstore {name}: the parameter-server environment ({', '.join(missing)}) is "
                          f"not set; run it under d2lseg launch, e.g. d2lseg launch -n 2 -- d2lseg train "
                          f"--kvstore {name} ...")
    if os.environ['DMLC_ROLE'] != 'worker':
        raise D2lsegError(f"--kvstore {name}: DMLC_ROLE is {os.environ['DMLC_ROLE']!r}; training runs as a "
                          f"worker (d2lseg launch sets it)")
    import mxnet as mx
    return mx.kv.create(name)


def is_distributed(kv):
    """Whether ``kv`` is a distributed kvstore object (not None, not a name like 'device')."""
    return kv is not None and not isinstance(kv, str) and 'dist' in kv.type


def broadcast_parameters(trainer):
    """Give every worker rank 0's parameters through ``trainer``'s kvstore and wait until they arrived.

    Call it once, after the first backward and before the first ``trainer.step``. Left to itself
    the trainer broadcasts inside its first ``step``, right before pushing the first gradients on the
    same keys, and on CPU MXNet 1.9 does not order that push after the broadcast's pull
    (kvstore_dist.h, PushImpl: ``comm_buf = merged``): a server may answer the pull with the
    summed gradient, which then replaces the weights (seen here in about 1 run in 6).
    """
    import mxnet as mx
    trainer.save_states(os.devnull)     # the public call that makes the trainer init its kvstore keys
    mx.nd.waitall()


def split_digits(counts):
    """Non-negative int64 counts (shape S) -> (DIGITS, *S) float32 base-2**DIGIT_BITS digits, lowest first."""
    c = np.asarray(counts, dtype=np.int64)
    if c.size and c.min() < 0:
        raise ValueError('counts must be non-negative')
    mask = (1 << DIGIT_BITS) - 1
    return np.stack([(c >> (DIGIT_BITS * d)) & mask for d in range(DIGITS)]).astype(np.float32)


def merge_digits(digits):
    """Inverse of ``split_digits`` for digit sums: (DIGITS, *S) float32 (whole numbers < 2**24) -> int64."""
    d = np.rint(np.asarray(digits, dtype=np.float64)).astype(np.int64)
    total = np.zeros(d.shape[1:], dtype=np.int64)
    for i in range(DIGITS):
        total += d[i] << (DIGIT_BITS * i)
    return total


def _count_key(kv, shape):
    """The kvstore key for count arrays of ``shape``; initialised once (every worker calls in the same order)."""
    keys = _count_keys.setdefault(kv, {})
    if shape not in keys:
        import mxnet as mx
        keys[shape] = COUNT_KEY + len(keys)
        kv.init(keys[shape], mx.nd.zeros(shape, dtype='float32'))
    return keys[shape]


def allreduce_counts(kv, counts):
    """Sum integer ``counts`` (any shape) over all workers of ``kv``, exactly -> int64 array.

    float32 pushes would round counts above 2**24, so the counts travel as base-2**16 digits whose
    per-digit sums are exact in float32 for up to 256 workers. Every worker must call it, in the
    same order. Needs servers without an optimizer (``make_trainer`` uses update_on_kvstore=False).
    """
    counts = np.asarray(counts)
    if counts.dtype.kind not in 'iub':
        raise ValueError(f'allreduce_counts needs integer counts, got {counts.dtype}')
    if not is_distributed(kv) or kv.num_workers == 1:
        return counts.astype(np.int64)
    if kv.num_workers > 1 << (24 - DIGIT_BITS):
        raise ValueError(f'allreduce_counts is exact for at most {1 << (24 - DIGIT_BITS)} workers')
    import mxnet as mx
    digits = split_digits(counts)
    key = _count_key(kv, digits.shape)
    out = mx.nd.zeros(digits.shape, dtype='float32')
    kv.pushpull(key, mx.nd.array(digits, dtype='float32'), out=out)
    return merge_digits(out.asnumpy())


# ----------------------------------------------------------------------------------------- launcher

def read_hostfile(path):
    """Hosts of a host file -> [(host, ssh_port)]: one ``HOST`` or ``HOST:SSH_PORT`` per line, # comments."""
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise D2lsegError(f"--hostfile {path}: cannot read it ({e.strerror})") from None
    hosts = []
    for n, line in enumerate(lines, 1):
        line = line.split('#', 1)[0].strip()
        if not line:
            continue
        host, _, port = line.partition(':')
        if not host or ' ' in line or (port and not port.isdigit()):
            raise D2lsegError(f"--hostfile {path}, line {n}: {line!r} is not HOST or HOST:SSH_PORT")
        hosts.append((host, port or '22'))
    if not hosts:
        raise D2lsegError(f"--hostfile {path}: no hosts in it (one HOST or HOST:SSH_PORT per line)")
    return hosts


def _local_ip(peer):
    """This machine's address on the route to ``peer`` (the scheduler address remote nodes dial)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((socket.gethostbyname(peer), 9))
            return s.getsockname()[0]
    except OSError as e:
        raise D2lsegError(f"--hostfile: cannot find a local address that reaches {peer} ({e}); "
                          f"give it with --scheduler-host") from None


def _check_port(host, port):
    """``port`` if free on ``host`` (0: pick a free one)."""
    if not 0 <= port <= 65535:
        raise D2lsegError(f"--port {port}: must be between 0 and 65535 (0 picks a free one)")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a port in TIME_WAIT is free to the scheduler too
        try:
            s.bind(('' if host not in ('127.0.0.1', 'localhost') else host, port))
        except OSError:
            raise D2lsegError(f"--port {port}: already in use on this machine; choose another "
                              f"(--port 0 picks a free one)") from None
        return s.getsockname()[1]


def _remote_script(command, env, cwd, bindir):
    """The shell text run on a remote host: the command in its own process group, killed when
    ssh's stdin closes (the launcher stopped or died), exit code passed back."""
    assigns = ' '.join(f'{k}={shlex.quote(str(v))}' for k, v in env.items())
    assigns += f' PATH={shlex.quote(bindir)}:"$PATH"'
    cmd = ' '.join(shlex.quote(a) for a in command)
    return (f'cd {shlex.quote(cwd)} || exit 97; exec 3<&0; '
            f'env {assigns} setsid {cmd} </dev/null & p=$!; '
            f'(cat <&3 >/dev/null; kill -TERM -- -$p; for i in 1 2 3 4 5 6 7 8 9 10; do '
            f'kill -0 -- -$p || exit 0; sleep 0.5; done; kill -KILL -- -$p) '
            f'>/dev/null 2>&1 & w=$!; exec 3<&-; '
            f'wait $p; rc=$?; kill $w 2>/dev/null; exit $rc')


class _Proc:
    """One process of the job: its role, Popen and output pump."""

    def __init__(self, role, index, popen, remote):
        self.role, self.index, self.popen, self.remote = role, index, popen, remote
        self.name = role if role == 'scheduler' else f'{role} {index}'
        self.pump = None

    def describe_exit(self):
        rc = self.popen.returncode
        if rc is None:
            return 'is running'
        if rc < 0:
            try:
                return f'was killed by {signal.Signals(-rc).name}'
            except ValueError:
                return f'was killed by signal {-rc}'
        return f'exited with code {rc}'


def _pump(proc, sink, lock):
    """Copy a process's output to ``sink``, every line prefixed with ``[name] ``; of a line that
    progress bars redrew with carriage returns only the last state is kept."""
    prefix = f'[{proc.name}] '
    for raw in iter(proc.popen.stdout.readline, b''):
        parts = [p for p in raw.decode('utf-8', errors='replace').rstrip('\r\n').split('\r') if p.strip()]
        if not parts:
            continue
        with lock:
            sink.write(prefix + parts[-1] + '\n')
            sink.flush()
    proc.popen.stdout.close()


def _stop(procs, grace=5.0):
    """Stop every process group of the job: close ssh stdin, SIGTERM, then SIGKILL after ``grace`` s."""
    for p in procs:
        if p.popen.stdin:
            try:
                p.popen.stdin.close()
            except OSError:
                pass
    for sig in (signal.SIGTERM, signal.SIGKILL):   # SIGKILL too: stray children of exited leaders
        for p in procs:
            try:
                os.killpg(p.popen.pid, sig)   # each process leads its own group (start_new_session)
            except (ProcessLookupError, PermissionError):
                pass
        deadline = time.monotonic() + grace
        for p in procs:
            try:
                p.popen.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass


class _Terminated(Exception):
    pass


def launch(command, num_workers, num_servers=1, hostfile=None, port=9091, timeout=None,
           scheduler_host=None, ssh='ssh', grace=30.0, sink=None):
    """Run ``command`` as ``num_workers`` workers of a parameter-server job -> exit code.

    Starts the scheduler (on this machine), ``num_servers`` servers and the workers; locally on
    127.0.0.1 by default, or round-robin over the hosts of ``hostfile`` via ``ssh HOST 'cd CWD &&
    env DMLC_...=... COMMAND'`` (same paths and venv there; the scheduler address is this machine's
    address towards the first host, or ``scheduler_host``). Output lines are prefixed ``[worker i]``
    (i is the launch order; the kvstore rank is assigned by the scheduler). A worker that fails stops
    the job (all process groups killed) and its code is returned; so does a worker still running
    ``grace`` s after another one finished (-> 1); ``timeout`` seconds -> 124.
    """
    command = list(command)
    if not command:
        raise D2lsegError("launch: no command to run")
    if num_workers < 1 or num_servers < 1:
        raise D2lsegError(f"launch: -n {num_workers} -s {num_servers}: need at least one worker and one server")
    if timeout is not None and not (timeout > 0 and math.isfinite(timeout)):
        raise D2lsegError(f"--timeout {timeout}: must be a positive number of seconds")
    sink = sink or sys.stdout
    hosts = read_hostfile(hostfile) if hostfile else None
    root = scheduler_host or (_local_ip(hosts[0][0]) if hosts else '127.0.0.1')
    port = _check_port(root, port)
    bindir = os.path.dirname(sys.executable)
    base = {'DMLC_PS_ROOT_URI': root, 'DMLC_PS_ROOT_PORT': str(port),
            'DMLC_NUM_SERVER': str(num_servers), 'DMLC_NUM_WORKER': str(num_workers)}
    cwd = os.getcwd()
    procs, lock = [], threading.Lock()

    def start(role, index, argv):
        env = dict(base, DMLC_ROLE=role)
        if hosts and role != 'scheduler':
            host, ssh_port = hosts[index % len(hosts)]
            env['DMLC_NODE_HOST'] = host
            env.update({k: v for k, v in os.environ.items()
                        if k.startswith(FORWARD_ENV_PREFIXES) and k not in env})
            script = _remote_script(argv, env, cwd, bindir)
            args = [ssh, '-o', 'BatchMode=yes', '-o', 'StrictHostKeyChecking=accept-new', '-p', ssh_port,
                    host, f'bash -c {shlex.quote(script)}']
            full_env, stdin = None, subprocess.PIPE
        else:
            if not hosts:
                env['DMLC_NODE_HOST'] = root
            full_env = dict(os.environ, **env)
            full_env['PATH'] = bindir + os.pathsep + os.environ.get('PATH', '')
            args, stdin = argv, subprocess.DEVNULL
        try:
            popen = subprocess.Popen(args, env=full_env, stdin=stdin, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        except OSError as e:
            raise D2lsegError(f"launch: cannot start {args[0]} ({e.strerror})") from None
        p = _Proc(role, index, popen, remote=bool(hosts) and role != 'scheduler')
        p.pump = threading.Thread(target=_pump, args=(p, sink, lock), daemon=True)
        p.pump.start()
        procs.append(p)
        return p

    def on_signal(signum, frame):
        raise _Terminated(signal.Signals(signum).name)

    old_handlers = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGHUP):
            old_handlers[sig] = signal.signal(sig, on_signal)
    code, message = 0, None
    start_time = time.monotonic()
    try:
        start('scheduler', 0, [sys.executable, '-c', SERVER_CODE])
        servers = [start('server', i, [sys.executable, '-c', SERVER_CODE]) for i in range(num_servers)]
        workers = [start('worker', i, command) for i in range(num_workers)]
        infra, infra_done_at, first_done_at = procs[:1] + servers, None, None
        while True:
            failed = next((w for w in workers if w.popen.poll() not in (None, 0)), None)
            if failed:
                rc = failed.popen.returncode
                code = rc if rc > 0 else 128 - rc
                message = f"{failed.name} {failed.describe_exit()}; stopped the job"
                break
            done = [w for w in workers if w.popen.returncode == 0]
            if done and len(done) < len(workers):
                # dist_sync workers leave together (a barrier when the kvstore closes); one still
                # running long after another finished is hung (MXNet can hang at exit)
                first_done_at = first_done_at or time.monotonic()
                if time.monotonic() - first_done_at > grace:
                    code = 1
                    message = (f"{', '.join(w.name for w in workers if w.popen.returncode is None)} still "
                               f"running {grace:g} s after {done[0].name} finished; stopped the job")
                    break
            if len(done) == len(workers):
                end = time.monotonic() + grace
                while time.monotonic() < end and any(p.popen.poll() is None for p in infra):
                    time.sleep(0.05)
                hung = [p.name for p in infra if p.popen.poll() is None]
                if hung:
                    message = f"all workers finished; {', '.join(hung)} did not stop within {grace:g} s, killed"
                break
            dead = next((p for p in infra if p.popen.poll() not in (None, 0)), None)
            if dead:
                code = 1
                message = f"{dead.name} {dead.describe_exit()} while workers were running; stopped the job"
                break
            if infra_done_at is None and any(p.popen.returncode == 0 for p in infra):
                infra_done_at = time.monotonic()   # ps-lite shut down: the workers are finishing
            if infra_done_at is not None and time.monotonic() - infra_done_at > grace:
                code = 1
                message = (f"the scheduler/servers stopped but "
                           f"{', '.join(w.name for w in workers if w.popen.returncode is None)} did not "
                           f"finish within {grace:g} s; stopped the job")
                break
            if timeout is not None and time.monotonic() - start_time > timeout:
                code = 124
                message = f"--timeout {timeout:g}: the job was still running after {timeout:g} s; stopped it"
                break
            time.sleep(0.05)
    except (KeyboardInterrupt, _Terminated) as e:
        code = 130 if isinstance(e, KeyboardInterrupt) else 143
        message = f"interrupted ({e or 'SIGINT'}); stopped the job"
    finally:
        _stop(procs)
        for p in procs:
            if p.pump is not None:
                p.pump.join(timeout=5)
        for sig, handler in old_handlers.items():
            signal.signal(sig, handler)
    if message:
        print(f'd2lseg launch: {message}', file=sys.stderr, flush=True)
    return code
