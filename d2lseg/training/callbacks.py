"""What ``engine.fit`` calls after every epoch (printing, checkpoints, the best model) or every few
batches (``BatchLogger``), the run's log file and its final files.

A callback is any ``cb(state: engine.TrainState)``; plots are ``viz.CurvesCallback`` (matplotlib
lives in ``viz`` only).
"""
import contextlib
import os
import sys

from . import checkpoint
from ..core import outputs
from ..core.errors import D2lsegError
from ..core.textfiles import FileMissing, read_json


def print_epoch(state):
    """Callback: one line per epoch (the val figures are of crops of the val images: ``engine.VAL_METRICS``)."""
    r, (h, w) = state.record, state.recipe.crop
    if state.is_chief:
        print(f"epoch {r['epoch']}, loss {r['loss']:.4f}, train acc {r['train_acc']:.3f}, "
              f"val acc {r['test_acc']:.3f}, val mIoU {r['val_miou']:.3f} ({h}x{w} crops), time {r['time']:.1f} sec, "
              f"{r['img_s']:.2f} img/s", flush=True)


class Checkpointer:
    """Callback: an atomic checkpoint after every epoch (chief only), ``history.json`` beside it."""

    def __init__(self, out_dir, keep=2):
        self.out_dir, self.keep = out_dir, keep  # keep: the last checkpoints kept (each ~100 MB for fcn32s)

    def __call__(self, state):
        if not state.is_chief:
            return
        meta = {'recipe': state.recipe.to_dict(), 'seed': state.recipe.seed, 'history': state.history}
        checkpoint.save(self.out_dir, state.epoch, state.net, state.trainer, meta, keep=self.keep)
        outputs.atomic_write_json(os.path.join(self.out_dir, 'history.json'), state.history)


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
            outputs.atomic_write(os.path.join(self.out_dir, 'best.params'), state.net.save_parameters)


class BatchLogger:
    """Batch callback: one line every ``interval`` batches (epoch, batch, running loss, images/s)."""

    def __init__(self, interval):
        self.interval = interval

    def __call__(self, state):
        if state.is_chief and state.batch % self.interval == 0:
            print(f"epoch {state.epoch}, batch {state.batch}/{state.batches}, loss {state.loss:.4f}, "
                  f"{state.img_s:.2f} img/s", flush=True)


class _Tee:
    """A text stream writing to ``tee_of`` and, line by line, to ``log`` (progress-bar redraws left out)."""

    def __init__(self, stream, log):
        self.tee_of, self.log, self.pending = stream, log, ''

    def write(self, text):
        self.tee_of.write(text)
        self.pending += text
        *lines, self.pending = self.pending.split('\n')
        self.pending = self.pending.rsplit('\r', 1)[-1]  # a redrawn progress bar: only its last state is kept
        self.log.add(line for line in lines if '\r' not in line and line.strip())
        return len(text)

    def __getattr__(self, name):  # isatty, fileno, flush, encoding: the terminal's
        return getattr(self.tee_of, name)


class RunLog:
    """The lines of a run's ``train.log``: kept in memory until ``start()`` opens the file (appending), so a
    run that fails before it starts leaves no file behind; streamed to the file after."""

    def __init__(self, path, preamble=()):
        self.path, self.lines, self.file = path, list(preamble), None

    def add(self, lines):
        lines = [line + '\n' for line in lines]
        if self.file is None:
            self.lines += lines
        elif lines:
            self.file.writelines(lines)
            self.file.flush()

    def start(self):
        self.file = open(self.path, 'a', encoding='utf-8')
        self.add(line.rstrip('\n') for line in self.lines)

    def close(self):
        if self.file is not None:
            self.file.close()


@contextlib.contextmanager
def run_log(path, preamble=()):
    """Within the block, what is printed (stdout and stderr: epoch lines, warnings, errors) also goes to
    ``path`` (the run's ``train.log``) after the ``preamble`` lines, from when the block calls ``start()``
    on the yielded ``RunLog`` (what came before is written then)."""
    log = RunLog(path, preamble)
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = _Tee(sys.stdout, log), _Tee(sys.stderr, log)
    try:
        yield log
    except D2lsegError as e:  # the command prints it after the block: the log keeps it too
        if log.file is not None:
            log.add([f'error: {e}'])
        raise
    finally:
        sys.stdout, sys.stderr = saved
        log.close()


MODEL_INFO = 'model.json'  # beside model.params: what evaluate and predict need to rebuild the network


def save_model_info(out_dir, recipe, classes):
    """Write ``model.json``: the variant and classes (names, colours) of the run's parameter files."""
    outputs.atomic_write_json(os.path.join(out_dir, MODEL_INFO), {
        'variant': recipe.variant, 'num_classes': len(classes), 'classes': classes.to_dict(),
        'synthetic': recipe.synthetic, 'pretrained': recipe.pretrained})


def save_final(out_dir, net, history):
    """Write ``model.params`` (parameters alone) and the final ``history.json``."""
    os.makedirs(out_dir, exist_ok=True)
    outputs.atomic_write(os.path.join(out_dir, 'model.params'), net.save_parameters)
    outputs.atomic_write_json(os.path.join(out_dir, 'history.json'), history)


def load_history(path):
    """Read a ``history.json`` written by ``fit`` (or the chapter-format list); clear error otherwise."""
    if os.path.isdir(path):
        raise D2lsegError(f"{path}: a folder; give its history.json")
    try:
        return read_json(path, what='a history (JSON)')
    except FileMissing:
        raise D2lsegError(f"{path}: history file not found") from None
