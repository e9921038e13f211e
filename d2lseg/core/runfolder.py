"""A training run's folder: one writer at a time, never a run or a file of the user's replaced without being asked.

``RunFolder(out)`` (a context manager around ``d2lseg train``) creates the folder, takes an exclusive
``flock`` on ``.d2lseg.lock`` in it for the whole run (the kernel releases it when the process ends in
any way, SIGKILL included, so a lock is never stale; the file holds the holder's PID for the
message), removes temporaries a killed writer left (``*.tmp-PID`` of files the folder's manifest
records), and, when the run fails before writing anything, removes the folder it created.
``existing_run`` says what run files a folder holds; ``check_outputs`` refuses a fresh run whose files
would replace files d2lseg did not write; ``clear_run`` (``--overwrite``) removes only what the manifest
records (``outputs``).
"""
import contextlib
import errno
import fcntl
import os
import re
import shutil
import sys

from .errors import D2lsegError
from .outputs import LOCK, MANIFEST, Output, claim, clean_temporaries, owners, refuse_foreign, remove_owned

RUN_FILES = ('checkpoint.json', 'model.params', 'history.json')  # a folder with any of these holds a run
# What a run writes besides its checkpoints, recorded in the folder's manifest (``outputs``) as ``train``'s
RUN_OUTPUTS = RUN_FILES + ('best.params', 'model.json', 'curves.png', 'train.log')
# What ``train --overwrite`` removes: what the run and the evaluations of its parameters recorded
REPLACED_KINDS = ('train', 'evaluate')
CHECKPOINT_FILE = re.compile(r'ckpt-epoch\d{4,}\.(params|optimizer|states)$')  # checkpoint.save's names


def writable_folder(path, flag):
    """Create ``path`` when missing; one-line D2lsegError naming ``flag`` when it is a file, cannot be
    created or cannot be written. -> True when this call created it."""
    try:
        if os.path.exists(path) and not os.path.isdir(path):
            raise D2lsegError(f"{flag} {path}: a file, not a folder; choose another {flag}")
        created = not os.path.exists(path)
        os.makedirs(path, exist_ok=True)
        if not os.access(path, os.W_OK):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
    except OSError as e:
        raise D2lsegError(f"{flag} {path}: cannot write there ({e.strerror}); choose another {flag}") from None
    return created


def writable_file(path, flag):
    """One-line D2lsegError naming ``flag`` unless ``path`` can be written (checked before any work is done)."""
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise D2lsegError(f"{flag} {path}: a folder; give a file name, e.g. {os.path.join(path, 'eval.json')}")
    if not os.path.isdir(folder) or not os.access(folder, os.W_OK) or \
            (os.path.exists(path) and not os.access(path, os.W_OK)):
        raise D2lsegError(f"{flag} {path}: cannot be written (no such folder, or no permission); choose another {flag}")


def existing_run(out):
    """The run files (and checkpoints) ``out`` holds, sorted; empty when it holds no run."""
    try:
        names = os.listdir(out)
    except OSError:
        return []
    return sorted(n for n in names if n in RUN_FILES or CHECKPOINT_FILE.match(n))


def check_outputs(out, overwrite):
    """One-line D2lsegError when a fresh run would write over a file in ``out`` that d2lseg did not record as a
    run's (``outputs.refuse_foreign``): without ``overwrite`` any such file, with it only another command's."""
    refuse_foreign([Output.of('--out', os.path.join(out, n), 'a file a run writes', out) for n in RUN_OUTPUTS],
                   'train', overwrite)


def clear_run(out):
    """Remove what a run and evaluations of it recorded in ``out``'s manifest (``--overwrite``); every other
    file is left alone (the new run's files replace those of RUN_OUTPUTS; others named like checkpoints are
    named on stderr)."""
    owned = owners(out)
    remove_owned(out, [n for n, kind in owned.items() if kind in REPLACED_KINDS], REPLACED_KINDS)
    kept = sorted(n for n in os.listdir(out) if CHECKPOINT_FILE.match(n))
    if kept:
        print(f"d2lseg: warning: --out {out}: kept {', '.join(kept[:4])}{' ...' if len(kept) > 4 else ''}: not "
              "recorded as written by d2lseg (a run of an older version, or files of your own); remove them by hand "
              "if they are old checkpoints", file=sys.stderr)


def adopt(out, names):
    """Record ``names`` in ``out`` as the run's (before the run writes them; a resumed run's checkpoint too)."""
    claim(out, names, 'train')


class RunFolder:
    """Hold ``out`` for one writer; ``flag`` names it in messages (e.g. '--out', '--resume')."""

    def __init__(self, out, flag='--out'):
        self.out, self.flag = out, flag
        self.fd, self.created = None, False

    def __enter__(self):
        out = self.out
        self.created = writable_folder(out, self.flag)
        try:
            self.fd = os.open(os.path.join(out, LOCK), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        except OSError as e:
            raise D2lsegError(f"{self.flag} {out}: cannot write there ({e.strerror}); "
                              f"choose another {self.flag}") from None
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):  # e.g. a network file system without locks
                print(f"d2lseg: warning: {out}: cannot lock the run folder ({e.strerror}); make sure no other "
                      "process writes it", file=sys.stderr)
                clean_temporaries(out)
                return self
            holder = os.pread(self.fd, 32, 0).decode(errors='replace').strip() or 'unknown'
            os.close(self.fd)
            self.fd = None
            raise D2lsegError(f"{self.flag} {out}: another d2lseg process (pid {holder}) is writing this run "
                              f"folder; wait for it to finish, or choose another {self.flag}") from None
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f'{os.getpid()}\n'.encode(), 0)
        clean_temporaries(out)
        return self

    def __exit__(self, *exc):
        try:
            if self.created and set(os.listdir(self.out)) <= {LOCK, MANIFEST}:  # failed before writing anything
                shutil.rmtree(self.out, ignore_errors=True)
            elif exc[0] is None and self.fd is not None:  # a clean end: no lock file left behind (still held here)
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(self.out, LOCK))
        finally:
            if self.fd is not None:
                os.close(self.fd)  # releases the lock
                self.fd = None
        return False
