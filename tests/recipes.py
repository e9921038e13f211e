"""Small recipes, network pairs and parameter comparisons shared by the tests; the one tiny run's flags; the mark of
the tests that need bfloat16 training."""
import contextlib
import io
import shutil

import mxnet as mx
import numpy as np
import pytest
from mxnet import nd

from d2lseg.command.cli import main
from d2lseg.deploy.quantization import bfloat16_unavailable
from d2lseg.training.config import Recipe
from d2lseg.fcn.model import build_fcn

WHY_NO_BF16 = bfloat16_unavailable()  # None where oneDNN trains in bfloat16, else the one-line reason
needs_bf16 = pytest.mark.skipif(bool(WHY_NO_BF16), reason=f'no bfloat16 training here: {WHY_NO_BF16}')


def tiny_recipe(data_root, **kw):
    """A recipe small enough for a unit test: 64x96 crops, 6 train / 6 val images, batch 2, CPU."""
    base = dict(data_dir=data_root, synthetic=True, crop=(64, 96), batch_size=2, epochs=2, lr=0.05,
                momentum=0.9, pretrained=False, ctx='cpu', workers=0, max_images=6, seed=3)
    base.update(kw)
    return Recipe(**base)


def trainable(net):
    """Every parameter (trainable and BN running statistics) as numpy copies, in collect_params() order."""
    return [p.data(p.list_ctx()[0]).asnumpy().copy() for p in net.collect_params().values()]


def same_params(a, b, atol=1e-6):
    assert len(a) == len(b) and all(x.shape == y.shape for x, y in zip(a, b))
    worst = max(float(np.abs(x - y).max()) for x, y in zip(a, b))
    assert worst <= atol, f'largest parameter difference {worst}'


def network_pair(variant='fcn32s'):
    """(chapter net, fast net) holding the same parameters, at 64x96."""
    mx.random.seed(0)
    plain = build_fcn(21, variant, pretrained=False)
    fast = build_fcn(21, variant, pretrained=False, fast_upsampling=True)
    for net in (plain, fast):
        net(nd.zeros((1, 3, 64, 96)))  # finish the backbone's deferred initialisation
    return plain, fast


# The tiny run's flags, the one list: 64x96 crops, 4 images, batch 2, seed 0, momentum (so resume has optimizer
# state to restore). ``tiny_run`` (conftest, once per session) trains TINY_EPOCHS epochs with them.
TINY_FLAGS = ('--synthetic', '--no-pretrained', '--ctx', 'cpu', '--crop', '64x96', '--batch-size', '2', '--max-images',
              '4', '--workers', '0', '--seed', '0', '--lr', '0.05', '--momentum', '0.9', '--no-progress')
TINY_EPOCHS = 2


def tiny_train_argv(data_root, out, *extra, epochs=1):
    """`d2lseg train` argv of a tiny run (``TINY_FLAGS``) of ``epochs`` into ``out``, then ``extra``."""
    return ['train', '--data-dir', data_root, *TINY_FLAGS, '--epochs', str(epochs), '--out', out, *extra]


def run_main(argv):
    """main(argv) in this process -> (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as e:  # argparse
            code = e.code
    return code, out.getvalue(), err.getvalue()


def copy_of(run, folder):
    """A copy of a run folder (``tiny_run``'s) at ``folder``/run, for tests that write into it or beside it."""
    out = str(folder / 'run')
    shutil.copytree(run, out)
    return out


def run_cli(argv, capsys):
    """(exit code, stdout, stderr lines) of ``d2lseg.command.cli.main(argv)``."""
    code = main(argv)
    cap = capsys.readouterr()
    return code, cap.out, cap.err.strip().splitlines()
