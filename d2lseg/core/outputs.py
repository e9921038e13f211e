"""Where a command's files go: never onto one of its inputs, never over a file the user made, each output
under its own name, every one written whole.

- ``check_paths(outputs, inputs)``: before any work, every output is compared with every input and every
  other output, by directory entry (the folder's device and inode, and the name) and, for outputs that
  exist, by inode (``os.stat``: hard and symbolic links to an input are caught too).
- A folder d2lseg writes into holds a manifest (``MANIFEST``, written atomically) naming what it wrote
  there and which command did: ``train`` (the run), ``evaluate``, ``predict``. A command replaces only
  files its own kind of command recorded, and, when asked (``--overwrite``), files nobody recorded; never
  files another command recorded (a photo called ``curves.jpg`` predicted into a run folder does not
  replace the run's ``curves.png``). Checkpoint rotation and ``train --overwrite`` delete only recorded
  files. A name is recorded before its file is written, so a killed write leaves nothing unrecorded.
- ``write_atomically(path, write)``: the file is written under a temporary name in the same folder,
  flushed to disk and renamed over ``path``: a kill leaves the old file or the new one, never half.
  ``atomic_write`` / ``atomic_write_json``: the same, a failure (a full disk) one line naming the file.
  A device, FIFO or socket is never an output (``special_file``): renaming over it would replace the node.
"""
import contextlib
import json
import os
import stat
import sys
from typing import NamedTuple

import numpy as np

from .errors import D2lsegError, first_line
from .textfiles import read_json

MANIFEST = '.d2lseg-manifest.json'
LOCK = '.d2lseg.lock'  # a run folder's lock (``runfolder.RunFolder``)
RESERVED = (MANIFEST, LOCK)
TMP = '.tmp-'  # NAME.tmp-PID: a temporary of NAME being written by process PID


_SPECIAL = ((stat.S_ISCHR, 'a character device'), (stat.S_ISBLK, 'a block device'), (stat.S_ISFIFO, 'a FIFO'),
            (stat.S_ISSOCK, 'a socket'))


def special_file(path):
    """What ``path`` is when it exists (links followed) and is neither a regular file nor a folder, e.g.
    'a character device' for /dev/null; else None. Renaming a new file over it would replace the device
    node itself (as root, the machine's /dev/null), so no output may be one."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    return next((what for test, what in _SPECIAL if test(mode)), None)


def write_atomically(path, write):
    """Call ``write(tmp)`` with a temporary path in ``path``'s folder, fsync it, rename it over ``path``.
    OSError (and whatever ``write`` raises) propagate; the temporary never stays. A ``path`` that is a
    device, FIFO or socket is refused (one-line D2lsegError) before anything is written."""
    what = special_file(path)
    if what:
        raise D2lsegError(f"{path}: is {what}, not a file d2lseg can write (it writes whole files and renames "
                          "them into place); choose a file path")
    tmp = f'{path}{TMP}{os.getpid()}'
    try:
        write(tmp)
        with open(tmp, 'rb') as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        remove_file(tmp)


def _write_errors():
    """OSError, and MXNet's MXNetError when MXNet is loaded (its writers raise it, e.g. on a full disk):
    this module runs without MXNet (``onnxrun``), and a writer of MXNet's needs MXNet loaded."""
    base = sys.modules.get('mxnet.base')
    return (OSError, base.MXNetError) if base is not None else (OSError,)


def atomic_write(path, write):
    """Call ``write(tmp_path)``, fsync, then rename over ``path``: readers see old or new, never half
    (``outputs.write_atomically``); a failure is a one-line D2lsegError naming ``path``."""
    try:
        write_atomically(path, write)
    except _write_errors() as e:  # e.g. a full disk (MXNet's writers raise MXNetError)
        reason = e.strerror if isinstance(e, OSError) and e.strerror else first_line(e)
        raise D2lsegError(f"{path}: writing failed ({reason}); free disk space (a full disk?) or make the place "
                          "writable and run again: what was there before is kept") from None


def plain_number(o):
    """json's ``default`` for numpy values: numpy scalars as plain Python numbers, arrays as lists. Under
    numpy 2 (NEP 50) float32 arithmetic stays float32, which json cannot write, and numpy 2 scalars print
    as ``np.float32(...)``: every JSON file d2lseg writes holds plain numbers on every numpy."""
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f'Object of type {type(o).__name__} is not JSON serializable')


def atomic_write_json(path, obj):
    def write(tmp):
        with open(tmp, 'w') as f:
            json.dump(obj, f, indent=1, default=plain_number)
    atomic_write(path, write)


def remove_file(path):
    """Remove ``path`` if it is a file or a link (never a folder); False when there was nothing to remove."""
    with contextlib.suppress(OSError):
        if not stat.S_ISDIR(os.lstat(path).st_mode):
            os.remove(path)
            return True
    return False


# ---------------------------------------------------------------------------------------------- identity

def entry(path):
    """The directory entry ``path`` names: (device, inode) of its folder, as the kernel resolves it (links and
    ``..`` followed, not normalised by name), and its name."""
    folder, name = os.path.split(os.fspath(path))
    folder = folder or os.curdir
    try:
        st = os.stat(folder)
        return st.st_dev, st.st_ino, name
    except OSError:
        return os.path.realpath(folder), name


def inode(path):
    """(device, inode) of the file ``path`` leads to (links followed), or None when there is none."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


class Output(NamedTuple):
    """An output file: ``label`` names it in messages (``--json x.json``, ``--out p: a.png (the label PNG of
    a.jpg)``), ``flag`` is the flag that chooses another place for it."""
    label: str
    path: str
    flag: str

    @classmethod
    def of(cls, flag, path, role=None, folder=None):
        """The output ``path`` chosen by ``flag`` (itself, or ``folder`` holding it when ``role`` is given)."""
        if role is None:
            return cls(f'{flag} {path}', path, flag)
        return cls(f'{flag} {folder}: {os.path.basename(path)} ({role})', path, flag)


def check_paths(outputs, inputs):
    """One-line D2lsegError unless every output is a place of its own: not an input (same directory entry,
    or the same file by inode), not another output, not a name d2lseg keeps for itself, not a device, FIFO or
    socket (``special_file``).

    outputs: ``Output``s; inputs: [(what, path)] of every file the command reads, e.g. ('the image', 'a.jpg')."""
    ins_by_entry, ins_by_inode = {}, {}
    for what, path in inputs:
        ins_by_entry.setdefault(entry(path), f'{what} {path}')
        key = inode(path)
        if key is not None:
            ins_by_inode.setdefault(key, f'{what} {path}')
    seen = {}
    for out in outputs:
        if os.path.basename(out.path) in RESERVED:
            raise D2lsegError(f"{out.label}: a name d2lseg keeps for itself; choose another {out.flag}")
        what = special_file(out.path)
        if what:
            raise D2lsegError(f"{out.label}: is {what}, not a file d2lseg can write; choose another {out.flag} "
                              "(nothing was written)")
        key, node = entry(out.path), inode(out.path)
        hit = ins_by_entry.get(key) or (ins_by_inode.get(node) if node else None)
        if hit:
            raise D2lsegError(f"{out.label}: is {hit}, which this command reads; choose another {out.flag} (nothing "
                              "was written)")
        if key in seen:
            raise D2lsegError(f"{out.label}: is also where {seen[key]} goes; choose another {out.flag}")
        seen[key] = out.label


# ---------------------------------------------------------------------------------------------- manifest

def owners(folder):
    """{file name: the command that wrote it} of ``folder``'s manifest; empty when there is none or it is
    damaged (then nothing there counts as d2lseg's: the safe side)."""
    try:
        data = read_json(os.path.join(folder, MANIFEST), limit=16 << 20)
    except D2lsegError:
        return {}
    files = data.get('files') if isinstance(data, dict) else None
    if not isinstance(files, dict):
        return {}
    return {k: v for k, v in files.items() if isinstance(k, str) and isinstance(v, str)}


def _write_manifest(folder, files):
    def write(tmp):
        with open(tmp, 'w', encoding='utf-8') as f:
            json.dump({'about': 'files d2lseg wrote into this folder, and which command', 'files': files}, f,
                      indent=0, sort_keys=True)
    path = os.path.join(folder, MANIFEST)
    try:
        write_atomically(path, write)
    except OSError as e:
        raise D2lsegError(f"{path}: writing failed ({e.strerror}); make {folder} writable (or free disk space) and "
                          "run again") from None


def claim(folder, names, kind):
    """Record ``names`` (file names in ``folder``) as written by command ``kind``, before they are written."""
    files = owners(folder)
    new = {n: kind for n in names if files.get(n) != kind}
    if new:
        files.update(new)
        _write_manifest(folder, files)


def disown(folder, names):
    """Drop ``names`` from ``folder``'s manifest (their files were removed)."""
    files, gone = owners(folder), set(names)
    if gone & set(files):
        _write_manifest(folder, {k: v for k, v in files.items() if k not in gone})


def remove_owned(folder, names, kinds):
    """Remove the files of ``names`` that ``folder``'s manifest records as written by one of ``kinds``;
    -> the names removed (dropped from the manifest too)."""
    files = owners(folder)
    removed = [n for n in names if files.get(n) in kinds and remove_file(os.path.join(folder, n))]
    disown(folder, [n for n in names if files.get(n) in kinds])
    return removed


def clean_temporaries(folder):
    """Remove ``NAME.tmp-PID`` files of recorded names (and of the manifest) that a killed writer left: those
    whose process is gone (another process may be writing the folder)."""
    files = owners(folder)
    with contextlib.suppress(OSError):
        for name in os.listdir(folder):
            base, sep, pid = name.rpartition(TMP)
            if sep and (base in files or base == MANIFEST) and not _alive(pid):
                remove_file(os.path.join(folder, name))


def _alive(pid):
    if not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def refuse_foreign(outputs, kind, overwrite=False, own=True):
    """One-line D2lsegError for the first output that exists and was not recorded by a ``kind`` command:
    recorded by another command (never replaced), or by none (replaced only with ``overwrite``). own=False:
    a ``kind`` command's earlier output too is replaced only with ``overwrite`` (predict, evaluate: a user
    may have kept, edited or renamed a file into one of their names)."""
    manifests = {}
    for out in outputs:
        if not os.path.lexists(out.path):
            continue
        folder, name = os.path.split(os.path.abspath(out.path))
        owner = manifests.setdefault(folder, owners(folder)).get(name)
        if owner == kind and (own or overwrite):
            continue
        if owner == kind:
            raise D2lsegError(f"{out.label}: exists (an earlier d2lseg {kind} wrote it); choose another {out.flag}, "
                              "or replace it with --overwrite")
        if owner is not None:
            raise D2lsegError(f"{out.label}: written there by d2lseg {owner}, which {kind} never replaces; choose "
                              f"another {out.flag}")
        if not overwrite:
            raise D2lsegError(f"{out.label}: exists and was not written by d2lseg {kind}; choose another {out.flag}, "
                              "or replace it with --overwrite")
