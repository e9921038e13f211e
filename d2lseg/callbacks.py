"""What ``engine.fit`` calls after every epoch (printing, checkpoints, the best model) or every few
batches (``BatchLogger``), the run's log file and its final files.

A callback is any ``cb(state: engine.TrainState)``; plots are ``viz.CurvesCallback`` (matplotlib
lives in ``viz`` only).
"""
import contextlib
import json
import os
import sys

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


class BestParams:
    """Callback: ``best.params`` holds the parameters of the epoch with the highest val mIoU so far
    (chief only); ``history['best']`` says which epoch that is."""

    def __init__(self, out_dir):
        self.out_dir = out_dir

    def __call__(self, state):
        best = state.history.get('best')
        if best is not None and not state.record['val_miou'] > best['val_miou']:
            return
        state.history['best'] = {'epoch': state.epoch, 'val_miou': state.record['val_miou'], 'params': 'best.params'}
        if state.is_chief:
            checkpoint.atomic_write(os.path.join(self.out_dir, 'best.params'), state.net.save_parameters)


class BatchLogger:
    """Batch callback: one line every ``interval`` batches (epoch, batch, running loss, images/s)."""

    def __init__(self, interval):
        self.interval = interval

    def __call__(self, state):
        if state.is_chief and state.batch % self.interval == 0:
            print(f"epoch {state.epoch}, batch {state.batch}/{state.batches}, loss {state.loss:.4f}, "
                  f"{state.img_s:.2f} img/s", flush=True)


class _Tee:
    """A text stream writing to ``stream`` and, line by line, to ``log`` (progress-bar redraws left out)."""

    def __init__(self, stream, log):
        self.stream, self.log, self.pending = stream, log, ''

    def write(self, text):
        self.stream.write(text)
        self.pending += text
        *lines, self.pending = self.pending.split('\n')
        for line in lines:
            if '\r' not in line and line.strip():
                self.log.write(line + '\n')
        self.log.flush()
        return len(text)

    def __getattr__(self, name):  # isatty, fileno, flush, encoding: the terminal's
        return getattr(self.stream, name)


@contextlib.contextmanager
def run_log(path, preamble=()):
    """Within the block, what is printed (stdout and stderr: epoch lines, warnings, errors) is also
    appended to ``path`` (the run's ``train.log``), after the ``preamble`` lines (printed before)."""
    with open(path, 'a', encoding='utf-8') as log:
        log.writelines(line + '\n' for line in preamble)
        saved = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = _Tee(sys.stdout, log), _Tee(sys.stderr, log)
        try:
            yield
        except D2lsegError as e:  # the command prints it after the block: the log keeps it too
            log.write(f'error: {e}\n')
            raise
        finally:
            sys.stdout, sys.stderr = saved


MODEL_INFO = 'model.json'  # beside model.params: what evaluate and predict need to rebuild the network


def save_final(out_dir, net, history):
    """Write ``model.params`` (parameters alone), ``model.json`` (variant and classes) and the final
    ``history.json``."""
    os.makedirs(out_dir, exist_ok=True)
    checkpoint.atomic_write(os.path.join(out_dir, 'model.params'), net.save_parameters)
    recipe = history['recipe']
    checkpoint.atomic_write_json(os.path.join(out_dir, MODEL_INFO), {
        'variant': recipe['variant'], 'num_classes': recipe['num_classes'],
        'classes': history.get('classes'), 'synthetic': recipe.get('synthetic'), 'pretrained': recipe.get('pretrained')})
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
