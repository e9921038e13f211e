"""The package's user-facing error: one clear line, caught by the CLI and turned into exit code 2."""


class D2lsegError(Exception):
    """A user error (bad file, bad flag, missing download) with a one-line message saying what to do."""

    exit_code = 2  # the CLI's exit code for it
