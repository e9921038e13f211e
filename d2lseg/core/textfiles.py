"""Reading the small text and JSON files d2lseg is given or keeps (classes and class-weight files, model.json,
histories, checkpoint pointers, host files, caches, manifests): one reader, so every one is bounded.

Only a regular file is read (a FIFO, a device such as /dev/zero or a folder is a one-line error, never a
hang), at most ``LIMIT`` bytes, as UTF-8 with a byte-order mark dropped. Lines end only at ``\\n`` or
``\\r\\n``: ``str.splitlines`` also ends them at U+2028, U+2029, U+0085, vertical tab, form feed and
``\\x1c``-``\\x1e``, so a class name holding one would silently become two classes; such a line is refused,
naming the file and the line.
"""
import hashlib
import json
import os
import re
import stat

from .errors import D2lsegError

LIMIT = 64 << 20  # bytes: a history of thousands of epochs is a few MB
ODD_BREAKS = {'\x0b': 'a vertical tab', '\x0c': 'a form feed', '\x1c': 'a file separator (\\x1c)',
              '\x1d': 'a group separator (\\x1d)', '\x1e': 'a record separator (\\x1e)',
              '\x85': 'a next-line character (U+0085)', '\u2028': 'a line separator (U+2028)',
              '\u2029': 'a paragraph separator (U+2029)', '\r': 'a carriage return without a newline'}
_ODD = re.compile('[' + ''.join(ODD_BREAKS) + ']')


class FileMissing(D2lsegError):
    """The file to read does not exist (callers with a default catch this one)."""


def who(path, flag=None):
    """How a message names a file: ``--flag PATH`` or ``PATH``."""
    return f'{flag} {path}' if flag else str(path)


def _kind(mode):
    for test, name in ((stat.S_ISFIFO, 'a FIFO'), (stat.S_ISCHR, 'a character device'),
                       (stat.S_ISBLK, 'a block device'), (stat.S_ISSOCK, 'a socket'), (stat.S_ISDIR, 'a folder')):
        if test(mode):
            return name
    return 'not a regular file'


def open_regular(path, flag=None):
    """``path`` opened for reading in binary, if it is a regular file (opened without blocking, so a FIFO
    cannot hang the caller); one-line D2lsegError naming ``flag`` and the file otherwise."""
    name = who(path, flag)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, 'O_CLOEXEC', 0) | getattr(os, 'O_NOCTTY', 0))
    except FileNotFoundError:
        raise FileMissing(f"{name}: no such file") from None
    except OSError as e:
        raise D2lsegError(f"{name}: cannot be read ({e.strerror})") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise D2lsegError(f"{name}: {_kind(mode)}, not a regular file; give a file")
    os.set_blocking(fd, True)
    return os.fdopen(fd, 'rb')


def read_bytes(path, flag=None, limit=LIMIT):
    """The bytes of a regular file of at most ``limit`` bytes (``open_regular``)."""
    with open_regular(path, flag) as f:
        try:
            data = f.read(limit + 1)
        except OSError as e:
            raise D2lsegError(f"{who(path, flag)}: cannot be read ({e.strerror})") from None
    if len(data) > limit:
        raise D2lsegError(f"{who(path, flag)}: larger than {limit:,} bytes, more than such a file holds; is it the "
                          "right file?")
    return data


def read_text(path, flag=None, limit=LIMIT):
    """A small file as text: UTF-8, a byte-order mark dropped."""
    data = read_bytes(path, flag, limit)
    try:
        return data.decode('utf-8-sig')
    except UnicodeDecodeError as e:
        raise D2lsegError(f"{who(path, flag)}: not UTF-8 text (byte {e.start}); save it as UTF-8") from None


def split_lines(text, name):
    """Lines of ``text``, ended only by ``\\n`` or ``\\r\\n``; a line holding another separator is a one-line
    D2lsegError naming ``name`` and the line."""
    lines = text.split('\n')
    if lines[-1] == '':
        lines.pop()
    for n, line in enumerate(lines, 1):
        if line.endswith('\r'):
            lines[n - 1] = line = line[:-1]
        odd = _ODD.search(line)
        if odd:
            raise D2lsegError(f"{name}, line {n}: holds {ODD_BREAKS[odd.group()]}, which does not end a line here "
                              "(only a newline does); remove it")
    return lines


def read_lines(path, flag=None, limit=LIMIT):
    """The lines of a small text file (``read_text``, ``split_lines``)."""
    return split_lines(read_text(path, flag, limit), who(path, flag))


def read_json(path, flag=None, limit=LIMIT, what='JSON'):
    """A small JSON file, parsed; ``what`` names what the file should be in the message when it is not JSON."""
    text = read_text(path, flag, limit)
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as e:
        raise D2lsegError(f"{who(path, flag)}: not {what} ({type(e).__name__}: {str(e)[:120]})") from None


def sha256_of(path):
    """SHA-256 hex digest of a file of any size, read in 1 MB blocks."""
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            h.update(block)
    return h.hexdigest()
