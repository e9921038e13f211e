"""Atomic checkpoints: parameters, optimizer state and a JSON pointer written last as the commit point.

A run killed at any moment leaves ``checkpoint.json`` naming the last complete checkpoint. No file a
checkpoint holds can run code when read: the optimizer state is an MXNet NDArray file (momentum
buffers and update counters, ``save_optimizer``), not ``Trainer.save_states``' Python pickle, and
pickled ``.states`` files of older versions are refused, never unpickled.
"""
import os
import re

import numpy as np
from mxnet import nd

from ..core.errors import D2lsegError, first_line
from ..core import mxinternals, outputs
from ..core.outputs import claim, clean_temporaries, owners, remove_owned
from ..core.textfiles import read_json
from ..fcn.model import load_params

POINTER = 'checkpoint.json'
OPTIMIZER_SUFFIX = '.optimizer'  # ckpt-epochNNNN.optimizer: an NDArray file written by save_optimizer
_STATE_KEY = re.compile(r'state:(\d+):(\d+)$')


def save(out_dir, epoch, net, trainer, meta, keep=2):
    """Write checkpoint ``epoch`` (1-based count of finished epochs) into ``out_dir``; remove the checkpoints
    before the last ``keep`` that this folder's manifest records (``outputs``: never a file of the user's)."""
    os.makedirs(out_dir, exist_ok=True)
    params = f'ckpt-epoch{epoch:04d}.params'
    states = f'ckpt-epoch{epoch:04d}{OPTIMIZER_SUFFIX}'
    claim(out_dir, [params, states, POINTER], 'train')  # recorded first: a killed write leaves nothing unknown
    outputs.atomic_write(os.path.join(out_dir, params), net.save_parameters)
    outputs.atomic_write(os.path.join(out_dir, states), lambda path: save_optimizer(trainer, path))
    outputs.atomic_write_json(os.path.join(out_dir, POINTER), dict(meta, epoch=epoch, params=params, states=states))
    stale = [name for name, kind in owners(out_dir).items() if kind == 'train' and any(
        p.match(name) for p in _CKPT_NAME.values()) and int(name[10:].split('.')[0]) <= epoch - keep]
    remove_owned(out_dir, stale, ('train',))
    clean_temporaries(out_dir)  # halves of killed writes


_CKPT_NAME = {'params': re.compile(r'ckpt-epoch\d{4,}\.params$'),
              'states': re.compile(r'ckpt-epoch\d{4,}\.(optimizer|states)$')}


def load_meta(out_dir):
    """The pointer of the last complete checkpoint in ``out_dir``, checked: every field of the right
    type and range, every file it names a checkpoint file inside ``out_dir`` (no other path, no link
    leading out). One-line D2lsegError naming the pointer otherwise."""
    path = os.path.join(out_dir, POINTER)
    if not os.path.lexists(path):
        raise D2lsegError(f"{path}: no checkpoint to resume from (train with --out {out_dir} first)")
    meta = read_json(path, what='a d2lseg checkpoint pointer')
    problem = _pointer_problem(meta)
    if problem:
        raise D2lsegError(f"{path}: not a d2lseg checkpoint pointer ({problem})")
    root = os.path.realpath(out_dir)
    for key in ('params', 'states'):
        file = os.path.join(out_dir, meta[key])
        if not os.path.isfile(file):
            raise D2lsegError(f"{file}: checkpoint file missing")
        if os.path.dirname(os.path.realpath(file)) != root:
            raise D2lsegError(f"{file}: a link leading out of the run folder {out_dir}; checkpoints are read "
                              "only from inside it")
    return meta


def _pointer_problem(meta):
    """What is wrong with a parsed pointer (one phrase), or None."""
    if not isinstance(meta, dict):
        return f'a JSON object was expected, not {type(meta).__name__}'
    missing = [k for k in ('epoch', 'params', 'states', 'recipe') if k not in meta]
    if missing:
        return f"missing {', '.join(missing)}"
    epoch = meta['epoch']
    if type(epoch) is not int or epoch < 1:
        return f'"epoch" must be a positive integer, not {epoch!r}'
    for key, pattern in _CKPT_NAME.items():
        if not isinstance(meta[key], str) or not pattern.match(meta[key]):
            return f'"{key}" must name a checkpoint file in the run folder (ckpt-epochNNNN.*), not {meta[key]!r}'
    if not isinstance(meta['recipe'], dict):
        return f'"recipe" must be an object, not {type(meta["recipe"]).__name__}'
    history = meta.get('history')
    if history is not None and not (isinstance(history, dict) and isinstance(history.get('epochs'), list)):
        return '"history" must be an object with a list of "epochs"'
    return None


def restore(out_dir, meta, net, trainer, ctx):
    """Load the parameters and trainer states that ``meta`` names."""
    load_params(net, os.path.join(out_dir, meta['params']), ctx)
    load_optimizer(trainer, os.path.join(out_dir, meta['states']))


def save_optimizer(trainer, path):
    """Write ``trainer``'s optimizer state as an NDArray file (``mx.nd.save``; nothing executable):
    ``state:I:J`` the J-th state array of parameter I (momentum), ``tuple:I`` how many parts a
    parameter's state has (absent parts were None), ``num_update`` and ``index_update_count``
    (I, count) rows. ``load_optimizer`` restores it exactly (resume stays bit for bit equal)."""
    updater = mxinternals.updaters(trainer)[0]
    opt = updater.optimizer
    arrays = {}
    for idx, state in updater.states.items():
        parts = tuple(state) if isinstance(state, (tuple, list)) else (state,)
        arrays[f'tuple:{idx}'] = nd.array([len(parts)], dtype='int64')
        for j, part in enumerate(parts):
            if part is not None:
                arrays[f'state:{idx}:{j}'] = part
    counts = [(dev, idx, n) for dev, per in sorted(mxinternals.update_counts(opt).items())
              for idx, n in sorted(per.items())]
    arrays['num_update'] = nd.array([opt.num_update, opt.begin_num_update], dtype='int64')
    arrays['index_update_count'] = nd.array(np.array(counts, dtype=np.int64).reshape(-1, 3), dtype='int64')
    nd.save(path, arrays)


def load_optimizer(trainer, path):
    """Restore what ``save_optimizer`` wrote into ``trainer``; one-line D2lsegError naming the file for a
    pickled ``.states`` file (refused), an unreadable file or one that does not fit the parameters."""
    with open(path, 'rb') as f:
        head = f.read(2)
    if path.endswith('.states') or head[:1] == b'\x80':  # Python pickle: never loaded, it can run code
        raise D2lsegError(f"{path}: optimizer states in Python's pickle format (d2lseg 0.1), which can "
                          "run code when read and are not loaded; train again with a new --out (the "
                          "parameters in the same folder still work with evaluate/predict --params)")
    try:
        arrays = nd.load(path)
    except Exception as e:
        raise D2lsegError(f"{path}: cannot load trainer states, not an optimizer state file of d2lseg "
                          f"({first_line(e)})") from None
    params = dict(enumerate(mxinternals.trainer_params(trainer)))
    try:
        states = _states_from(arrays, params)
        if mxinternals.trainer_optimizer(trainer).momentum:  # every trained parameter has momentum, else resume differs
            missing = [p.name for i, p in params.items() if p.grad_req != 'null'
                       and (i not in states or any(part is None for part in states[i]))]
            if missing:
                raise ValueError(f'no momentum for {len(missing)} trained parameters (e.g. {missing[0]})')
        num_update, begin = (int(v) for v in arrays['num_update'].asnumpy())
        counts = {}
        for dev, i, c in arrays['index_update_count'].asnumpy().reshape(-1, 3):
            counts.setdefault(int(dev), {})[int(i)] = int(c)
    except (KeyError, ValueError, TypeError, AttributeError, IndexError) as e:
        raise D2lsegError(f"{path}: cannot load trainer states, they do not fit this network "
                          f"({first_line(e)})") from None
    for updater in mxinternals.updaters(trainer):
        updater.states = {i: tuple(p.copy() if p is not None else None for p in parts) if len(parts) > 1
                          else (parts[0].copy() if parts[0] is not None else None) for i, parts in states.items()}
        updater.states_synced = dict.fromkeys(updater.states, False)
        opt = updater.optimizer  # the trainer's own (one object for all updaters), made from the recipe
        opt.num_update, opt.begin_num_update = num_update, begin
        mxinternals.set_update_counts(opt, counts)


def _states_from(arrays, params):
    """{parameter index: [state part or None, ...]} from save_optimizer's keys, checked against the
    parameters' shapes and dtypes; ValueError for anything else."""
    if not isinstance(arrays, dict) or 'num_update' not in arrays or 'index_update_count' not in arrays:
        raise ValueError('missing num_update / index_update_count')
    states = {}
    for key, value in arrays.items():
        if key.startswith('tuple:'):
            idx = int(key[6:])
            if idx not in params:
                raise ValueError(f'state for parameter {idx}, the network has {len(params)}')
            parts = value.asnumpy().reshape(-1)
            if parts.size != 1 or not 1 <= int(parts[0]) <= 4:
                raise ValueError(f'{key} must hold one count between 1 and 4')
            states[idx] = [None] * int(parts[0])
    for key, value in arrays.items():
        m = _STATE_KEY.match(key)
        if m:
            idx, j = int(m.group(1)), int(m.group(2))
            if idx not in states or j >= len(states[idx]):
                raise ValueError(f'unexpected entry {key}')
            p = params[idx]
            if value.shape != p.shape or np.dtype(value.dtype) != np.dtype(p.dtype):
                raise ValueError(f'{key} is {np.dtype(value.dtype)} {value.shape}, the parameter '
                                 f'{np.dtype(p.dtype)} {p.shape}')
            states[idx][j] = value
        elif not key.startswith('tuple:') and key not in ('num_update', 'index_update_count'):
            raise ValueError(f'unexpected entry {key}')
    return states

