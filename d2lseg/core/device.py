"""The device rule, in one place: ``--ctx`` values to MXNet contexts (``parse_ctx``), and what 'auto' means
(``resolve_ctx``: every GPU, else the CPU with a note; a requested GPU that is missing is an error).

MXNet is imported when a context is made, not when this module is: ``config`` and the commands that only
parse flags stay MXNet-free.
"""
import os

from .errors import D2lsegError


def _mx():
    import mxnet  # on use: this module is on the ground floor, imported before (or without) MXNet
    return mxnet


def parse_ctx(spec):
    """'cpu' -> [cpu(0)], 'cpu:2' -> [cpu(0), cpu(1)], 'gpu:0,1' -> [gpu(0), gpu(1)], 'gpu' -> all GPUs.

    One-line D2lsegError for anything else, and for more CPU contexts than this process has CPUs
    (each context holds a copy of the network and its batch shard)."""
    spec = (spec or 'cpu').strip().lower()
    kind, _, rest = spec.partition(':')
    try:
        numbers = [int(i) for i in rest.split(',')] if rest else []
    except ValueError:
        raise D2lsegError(f"--ctx {spec}: expected cpu, cpu:N, gpu or gpu:0,1 (N, 0, 1: whole numbers)") from None
    if kind == 'cpu':
        if len(numbers) > 1:
            raise D2lsegError(f"--ctx {spec}: expected cpu or cpu:N (N contexts)")
        n = numbers[0] if numbers else 1
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else (os.cpu_count() or 1)
        if not 1 <= n <= cpus:
            raise D2lsegError(f"--ctx {spec}: the CPU context count must be between 1 and the {cpus} CPUs this "
                              "process may use")
        return [_mx().cpu(i) for i in range(n)]
    if kind == 'gpu':
        have = _mx().context.num_gpus()
        ids = numbers or list(range(have))
        if not ids or max(ids) >= have or min(ids) < 0:
            raise D2lsegError(f"--ctx {spec}: this machine has {have} GPU(s) visible to MXNet; "
                              f"use --ctx cpu, or install the GPU build (pip install .[cu112])")
        return [_mx().gpu(i) for i in ids]
    raise D2lsegError(f"--ctx {spec}: expected cpu, cpu:N or gpu:0,1")


def resolve_ctx(spec):
    """The contexts of a ``--ctx`` value -> (spec as resolved, contexts, note or None). 'auto' (the
    default) is every GPU, else the CPU, with a note saying so; a requested GPU that is missing is an error."""
    if (spec or 'auto') == 'auto':
        spec = 'gpu' if _mx().context.num_gpus() else 'cpu'
        note = None if spec == 'gpu' else 'no GPU visible to MXNet: training on cpu'
        return spec, parse_ctx(spec), note
    return spec, parse_ctx(spec), None
