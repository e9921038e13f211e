"""Atomic checkpoints: parameters, trainer states and a JSON pointer written last as the commit point.

A run killed at any moment leaves ``checkpoint.json`` naming the last complete checkpoint.
"""
import json
import os

from .errors import D2lsegError

POINTER = 'checkpoint.json'


def atomic_write(path, write):
    """Call ``write(tmp_path)``, fsync, then rename over ``path``: readers see old or new, never half."""
    tmp = f'{path}.tmp-{os.getpid()}'
    try:
        write(tmp)
        with open(tmp, 'rb') as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_write_json(path, obj):
    def write(tmp):
        with open(tmp, 'w') as f:
            json.dump(obj, f, indent=1)
    atomic_write(path, write)


def save(out_dir, epoch, net, trainer, meta, keep=2):
    """Write checkpoint ``epoch`` (1-based count of finished epochs) into ``out_dir``."""
    os.makedirs(out_dir, exist_ok=True)
    params = f'ckpt-epoch{epoch:04d}.params'
    states = f'ckpt-epoch{epoch:04d}.states'
    atomic_write(os.path.join(out_dir, params), net.save_parameters)
    atomic_write(os.path.join(out_dir, states), trainer.save_states)
    atomic_write_json(os.path.join(out_dir, POINTER), dict(meta, epoch=epoch, params=params, states=states))
    for name in os.listdir(out_dir):  # old checkpoints beyond the last ``keep``, and halves of killed writes
        stale = name.startswith('ckpt-epoch') and name.split('.')[0] < f'ckpt-epoch{epoch - keep + 1:04d}'
        if stale or (name.startswith(('ckpt-epoch', POINTER, 'history.json')) and '.tmp-' in name):
            os.remove(os.path.join(out_dir, name))


def load_meta(out_dir):
    """The pointer of the last complete checkpoint in ``out_dir``, with a clear error if unusable."""
    path = os.path.join(out_dir, POINTER)
    if not os.path.isfile(path):
        raise D2lsegError(f"{path}: no checkpoint to resume from (train with --out {out_dir} first)")
    try:
        with open(path) as f:
            meta = json.load(f)
        for key in ('epoch', 'params', 'states', 'recipe'):
            meta[key]
    except (ValueError, KeyError, TypeError) as e:
        raise D2lsegError(f"{path}: not a d2lseg checkpoint pointer ({type(e).__name__}: {e})") from None
    for key in ('params', 'states'):
        if not os.path.isfile(os.path.join(out_dir, meta[key])):
            raise D2lsegError(f"{os.path.join(out_dir, meta[key])}: checkpoint file missing")
    return meta


def restore(out_dir, meta, net, trainer, ctx):
    """Load the parameters and trainer states that ``meta`` names."""
    from .model import load_params
    load_params(net, os.path.join(out_dir, meta['params']), ctx)
    states = os.path.join(out_dir, meta['states'])
    try:
        trainer.load_states(states)
    except Exception as e:
        raise D2lsegError(f"{states}: cannot load trainer states ({str(e).splitlines()[0][:160]})") from None
