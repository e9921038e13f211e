"""What ``engine.fit`` calls after every epoch (printing, checkpoints) and the run's final files.

A callback is any ``cb(state: engine.TrainState)``; plots are ``viz.CurvesCallback`` (matplotlib
lives in ``viz`` only).
"""
import json
import os

from . import checkpoint
from .errors import D2lsegError, first_line


def print_epoch(state):
    """Callback: one line per epoch."""
    r = state.record
    if state.is_chief:
        print(f"epoch {r['epoch']}, loss {r['loss']:.4f}, train acc {r['train_acc']:.3f}, "
              f"val acc {r['test_acc']:.3f}, val mIoU {r['val_miou']:.3f}, time {r['time']:.1f} sec, "
              f"{r['img_s']:.2f} img/s", flush=True)


class Checkpointer:
    """Callback: an atomic checkpoint after every epoch (chief only), ``history.json`` beside it."""

    def __init__(self, out_dir):
        self.out_dir = out_dir

    def __call__(self, state):
        if not state.is_chief:
            return
        meta = {'recipe': state.recipe.to_dict(), 'seed': state.recipe.seed, 'history': state.history}
        checkpoint.save(self.out_dir, state.epoch, state.net, state.trainer, meta)
        checkpoint.atomic_write_json(os.path.join(self.out_dir, 'history.json'), state.history)


def save_final(out_dir, net, history):
    """Write ``model.params`` (parameters alone) and the final ``history.json``."""
    os.makedirs(out_dir, exist_ok=True)
    checkpoint.atomic_write(os.path.join(out_dir, 'model.params'), net.save_parameters)
    checkpoint.atomic_write_json(os.path.join(out_dir, 'history.json'), history)


def load_history(path):
    """Read a ``history.json`` written by ``fit`` (or the chapter-format list); clear error otherwise."""
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise D2lsegError(f"{path}: history file not found") from None
    except IsADirectoryError:
        raise D2lsegError(f"{path}: a folder; give its history.json") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise D2lsegError(f"{path}: not JSON ({first_line(e)})") from None
    except OSError as e:
        raise D2lsegError(f"{path}: cannot be read ({e.strerror})") from None
