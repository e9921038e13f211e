"""Progress bars (tqdm) where someone watches: on a terminal and in Jupyter, never into a pipe or log file.

Piped to a file, every tqdm refresh becomes a line (a training run wrote 1,869 lines, 170 kB); ``bar``
shows nothing there, so logs keep the per-epoch lines only.
"""
import sys

from tqdm import tqdm


def watched(stream=None):
    """True when ``stream`` (default stderr, where tqdm draws) is a terminal or a Jupyter kernel's output."""
    stream = stream or sys.stderr
    stream = getattr(stream, 'tee_of', stream)  # callbacks.run_log's copy into train.log: whom it writes to
    try:
        if stream.isatty():
            return True
    except (AttributeError, ValueError):  # closed or replaced streams
        return False
    return type(stream).__module__.startswith('ipykernel')  # a notebook's OutStream (not merely imported)


def bar(iterable=None, progress=True, **kwargs):
    """``tqdm(iterable, **kwargs)``, disabled unless ``progress`` and someone watches (``watched``)."""
    return tqdm(iterable, disable=not (progress and watched()), **kwargs)
