"""The package's user-facing error: one clear line, caught by the CLI and turned into exit code 2."""


class D2lsegError(Exception):
    """A user error (bad file, bad flag, missing download) with a one-line message saying what to do."""

    exit_code = 2  # the CLI's exit code for it


def first_line(exc, limit=160):
    """The first informative line of an exception's message, at most ``limit`` characters: MXNet's
    messages can start with a blank line or a ``Traceback (most recent call last):`` header, which say
    nothing; the exception's type name when no line is left."""
    for line in str(exc).splitlines():
        line = line.strip()
        if line.strip('\'"') and not line.strip('\'"').startswith('Traceback (most recent call last)'):
            return line[:limit]
    return type(exc).__name__
