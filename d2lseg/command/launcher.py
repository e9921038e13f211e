"""Starting a data-parallel job on MXNet's parameter server: ``d2lseg launch``.

``launch`` starts ps-lite's scheduler, the servers and the workers with the ``DMLC_*`` environment
MXNet reads (as ``mxnet/tools/launch.py`` / ``dmlc_tracker`` do), locally on 127.0.0.1 or over ssh
from a host file, streams every worker's output with a ``[worker i]`` prefix (read in bounded chunks:
a line longer than ``LINE_LIMIT`` comes out in pieces), and stops the whole job when any process fails
or the time runs out. Every process it starts leads its own process group and is killed by the kernel
when the launcher dies, even by SIGKILL (``prctl(PR_SET_PDEATHSIG)`` on Linux). The workers' side
(kvstore, gradient semantics) is in ``kvstore``.

About 320 lines: starting, watching and stopping one job's processes (local and over ssh) share its state.
"""
import ctypes
import functools
import math
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time

from ..core.errors import D2lsegError
from ..core.textfiles import read_lines

# A process started with DMLC_ROLE=scheduler or server runs ps-lite inside ``import mxnet``
# (mxnet/kvstore/kvstore_server.py) and exits when the workers are done; ``import d2lseg`` restores the
# numpy names MXNet uses (d2lseg.core.compat) before it imports MXNet.
SERVER_CODE = 'import d2lseg'
# Environment variables forwarded to remote processes (local ones inherit the whole environment).
FORWARD_ENV_PREFIXES = ('DMLC_', 'PS_', 'MXNET_', 'OMP_', 'KMP_')


def read_hostfile(path):
    """Hosts of a host file -> [(host, ssh_port)]: one ``HOST`` or ``HOST:SSH_PORT`` per line, # comments."""
    lines = read_lines(path, '--hostfile', limit=1 << 20)
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

    def __init__(self, role, index, popen):
        self.role, self.index, self.popen = role, index, popen
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


LINE_LIMIT = 64 << 10  # bytes of one output line kept: a worker printing without newlines cannot grow memory


def _lines(read, limit=LINE_LIMIT):
    """Lines (bytes, without their end) of a stream read in chunks by ``read(n)``: at most ``limit`` bytes held;
    a longer line comes out in pieces of ``limit`` bytes."""
    pending = b''
    for chunk in iter(lambda: read(limit), b''):
        pending += chunk
        *lines, pending = pending.split(b'\n')
        yield from lines
        while len(pending) >= limit:
            yield pending[:limit]
            pending = pending[limit:]
    if pending:
        yield pending


def _pump(proc, sink, lock):
    """Copy a process's output to ``sink``, every line prefixed with ``[name] ``; of a line that
    progress bars redrew with carriage returns only the last state is kept. Read in bounded chunks."""
    prefix = f'[{proc.name}] '
    for raw in _lines(proc.popen.stdout.read1):  # what has arrived, at most LINE_LIMIT bytes at a time
        parts = [p for p in raw.decode('utf-8', errors='replace').rstrip('\r').split('\r') if p.strip()]
        if not parts:
            continue
        with lock:
            sink.write(prefix + parts[-1] + '\n')
            sink.flush()
    proc.popen.stdout.close()


def _die_with(launcher_pid):
    """Runs in each child between fork and exec (``preexec_fn``): SIGKILL it when the launcher dies, even by
    SIGKILL (Linux ``prctl(PR_SET_PDEATHSIG)``; the setting survives exec); elsewhere nothing."""
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, int(signal.SIGKILL))
        if os.getppid() != launcher_pid:  # the launcher died before the signal was asked for
            os._exit(1)


_PR_SET_PDEATHSIG = 1
_PRCTL = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith('linux') else None


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


class Job:
    """The processes of one parameter-server job: started, watched, stopped."""

    def __init__(self, hosts, root, port, num_servers, num_workers, sink, ssh='ssh'):
        self.hosts, self.root, self.sink, self.ssh = hosts, root, sink, ssh
        self.base = {'DMLC_PS_ROOT_URI': root, 'DMLC_PS_ROOT_PORT': str(port),
                     'DMLC_NUM_SERVER': str(num_servers), 'DMLC_NUM_WORKER': str(num_workers)}
        self.bindir, self.cwd = os.path.dirname(sys.executable), os.getcwd()
        self.procs, self.lock = [], threading.Lock()
        self.infra, self.workers = [], []
        self.infra_done_at = self.first_done_at = None

    def _command(self, role, index, argv):
        """-> (argv to run here, environment or None to inherit, stdin) for one process."""
        env = dict(self.base, DMLC_ROLE=role)
        if self.hosts and role != 'scheduler':
            host, ssh_port = self.hosts[index % len(self.hosts)]
            env['DMLC_NODE_HOST'] = host
            env.update({k: v for k, v in os.environ.items() if k.startswith(FORWARD_ENV_PREFIXES) and k not in env})
            script = _remote_script(argv, env, self.cwd, self.bindir)
            return ([self.ssh, '-o', 'BatchMode=yes', '-o', 'StrictHostKeyChecking=accept-new', '-p', ssh_port,
                     host, f'bash -c {shlex.quote(script)}'], None, subprocess.PIPE)
        if not self.hosts:
            env['DMLC_NODE_HOST'] = self.root
        full_env = dict(os.environ, **env)
        full_env['PATH'] = self.bindir + os.pathsep + os.environ.get('PATH', '')
        return argv, full_env, subprocess.DEVNULL

    def start(self, role, index, argv):
        args, env, stdin = self._command(role, index, argv)
        try:
            popen = subprocess.Popen(args, env=env, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     start_new_session=True, preexec_fn=functools.partial(_die_with, os.getpid()))
        except OSError as e:
            raise D2lsegError(f"launch: cannot start {args[0]} ({e.strerror})") from None
        p = _Proc(role, index, popen)
        p.pump = threading.Thread(target=_pump, args=(p, self.sink, self.lock), daemon=True)
        p.pump.start()
        self.procs.append(p)
        (self.workers if role == 'worker' else self.infra).append(p)
        return p

    def _running(self, procs):
        return ', '.join(p.name for p in procs if p.popen.returncode is None)

    def check(self, grace):
        """One look at the job -> None while it should go on, else (exit code, message or None)."""
        workers, infra = self.workers, self.infra
        failed = next((w for w in workers if w.popen.poll() not in (None, 0)), None)
        if failed:
            rc = failed.popen.returncode
            return (rc if rc > 0 else 128 - rc), f"{failed.name} {failed.describe_exit()}; stopped the job"
        done = [w for w in workers if w.popen.returncode == 0]
        if done and len(done) < len(workers):
            # dist_sync workers leave together (a barrier when the kvstore closes); one still
            # running long after another finished is hung (MXNet can hang at exit)
            self.first_done_at = self.first_done_at or time.monotonic()
            if time.monotonic() - self.first_done_at > grace:
                return 1, (f"{self._running(workers)} still running {grace:g} s after {done[0].name} finished; "
                           "stopped the job")
        if len(done) == len(workers):
            end = time.monotonic() + grace
            while time.monotonic() < end and any(p.popen.poll() is None for p in infra):
                time.sleep(0.05)
            hung = [p.name for p in infra if p.popen.poll() is None]
            return 0, (f"all workers finished; {', '.join(hung)} did not stop within {grace:g} s, killed"
                       if hung else None)
        dead = next((p for p in infra if p.popen.poll() not in (None, 0)), None)
        if dead:
            return 1, f"{dead.name} {dead.describe_exit()} while workers were running; stopped the job"
        if self.infra_done_at is None and any(p.popen.returncode == 0 for p in infra):
            self.infra_done_at = time.monotonic()   # ps-lite shut down: the workers are finishing
        if self.infra_done_at is not None and time.monotonic() - self.infra_done_at > grace:
            return 1, (f"the scheduler/servers stopped but {self._running(workers)} did not finish within "
                       f"{grace:g} s; stopped the job")
        return None

    def stop(self):
        _stop(self.procs)
        for p in self.procs:
            if p.pump is not None:
                p.pump.join(timeout=5)


def _check_launch(command, num_workers, num_servers, timeout):
    if not command:
        raise D2lsegError("launch: no command to run")
    if num_workers < 1 or num_servers < 1:
        raise D2lsegError(f"launch: -n {num_workers} -s {num_servers}: need at least one worker and one server")
    if timeout is not None and not (timeout > 0 and math.isfinite(timeout)):
        raise D2lsegError(f"--timeout {timeout}: must be a positive number of seconds")


def _on_signal(signum, frame):
    raise _Terminated(signal.Signals(signum).name)


def launch(command, num_workers, num_servers=1, hostfile=None, port=9091, timeout=None,
           scheduler_host=None, ssh='ssh', grace=30.0, sink=None):
    """Run ``command`` as ``num_workers`` workers of a parameter-server job -> exit code.

    Starts the scheduler (on this machine), ``num_servers`` servers and the workers; locally on
    127.0.0.1 by default, or round-robin over the hosts of ``hostfile`` via ``ssh HOST 'cd CWD &&
    env DMLC_...=... COMMAND'`` (same paths and venv there; the scheduler address is this machine's
    address towards the first host, or ``scheduler_host``). Output lines are prefixed ``[worker i]``
    (i is the launch order; the kvstore rank is assigned by the scheduler). A worker that fails stops
    the job (all process groups killed) and its code is returned; so does a worker still running
    ``grace`` s after another one finished (-> 1); ``timeout`` seconds -> 124. Ten parameters, all but two
    with defaults: the flags of ``d2lseg launch``, and ``ssh``, ``grace`` and ``sink`` that tests and
    ``bench/distributed.py`` set.
    """
    command = list(command)
    _check_launch(command, num_workers, num_servers, timeout)
    hosts = read_hostfile(hostfile) if hostfile else None
    root = scheduler_host or (_local_ip(hosts[0][0]) if hosts else '127.0.0.1')
    job = Job(hosts, root, _check_port(root, port), num_servers, num_workers, sink or sys.stdout, ssh)
    old_handlers = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGHUP):
            old_handlers[sig] = signal.signal(sig, _on_signal)
    start_time, outcome = time.monotonic(), None
    try:
        for role, count, argv in (('scheduler', 1, [sys.executable, '-c', SERVER_CODE]),
                                  ('server', num_servers, [sys.executable, '-c', SERVER_CODE]),
                                  ('worker', num_workers, command)):
            for i in range(count):
                job.start(role, i, argv)
        while outcome is None:
            outcome = job.check(grace)
            if outcome is None and timeout is not None and time.monotonic() - start_time > timeout:
                outcome = 124, f"--timeout {timeout:g}: the job was still running after {timeout:g} s; stopped it"
            if outcome is None:
                time.sleep(0.05)
    except (KeyboardInterrupt, _Terminated) as e:
        outcome = (130 if isinstance(e, KeyboardInterrupt) else 143), f"interrupted ({e or 'SIGINT'}); stopped the job"
    finally:
        job.stop()
        for sig, handler in old_handlers.items():
            signal.signal(sig, handler)
    code, message = outcome
    if message:
        print(f'd2lseg launch: {message}', file=sys.stderr, flush=True)
    return code
