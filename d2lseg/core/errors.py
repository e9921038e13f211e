"""The package's user-facing error: one clear line, caught by the CLI and turned into exit code 2."""
import re


class D2lsegError(Exception):
    """A user error (bad file, bad flag, missing download) with a one-line message saying what to do."""

    exit_code = 2  # the CLI's exit code for it


# Lines of MXNet's messages that say where in MXNet, not what: its traceback header, C++ source positions
# (``File "../src/ndarray/ndarray.cc", line 1860``), stack frames.
_WHERE = re.compile(r'(Traceback \(most recent call last\):?|File ".*", line \d+.*|\[bt\] .*|Stack trace.*|'
                    r'\d+: .*\(\+0x[0-9a-f]+\).*)$')
# Prefixes that repeat the type or name the check that failed: ``MXNetError: Check failed: fi->Read(data): ``
_PREFIX = re.compile(r'^(?:\w*Error: |\w+FileSystem: )?(?:Check failed: .*?: :?)?')


def first_line(exc, limit=160):
    """The cause an exception's message states, in one line of at most ``limit`` characters: MXNet's
    messages start with a traceback header and the C++ source position of the check (which say where in
    MXNet, not what is wrong) and repeat the type and the failed check before the reason; all that is left
    out. The exception's type name when no line is left."""
    for line in str(exc).split('\n'):
        line = line.strip().strip('\'"').strip()
        if not line or _WHERE.match(line):
            continue
        reason = _PREFIX.sub('', line, count=1).strip()
        return (reason or line)[:limit]
    return type(exc).__name__
