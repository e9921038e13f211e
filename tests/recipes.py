"""Small recipes, network pairs and parameter comparisons shared by the tests."""
import mxnet as mx
import numpy as np
from mxnet import nd

from d2lseg.cli import main
from d2lseg.config import Recipe
from d2lseg.model import build_fcn


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


def tiny_train_argv(data_root, out, *extra, epochs=1):
    """`d2lseg train` flags of a tiny run: 64x96 crops, 4 images, batch 2, seed 0."""
    return ['train', '--data-dir', data_root, '--synthetic', '--no-pretrained', '--ctx', 'cpu', '--crop', '64x96',
            '--batch-size', '2', '--epochs', str(epochs), '--max-images', '4', '--workers', '0', '--seed', '0',
            '--lr', '0.05', '--momentum', '0.9', '--no-progress', '--out', out, *extra]


def run_cli(argv, capsys):
    """(exit code, stdout, stderr lines) of ``d2lseg.cli.main(argv)``."""
    code = main(argv)
    cap = capsys.readouterr()
    return code, cap.out, cap.err.strip().splitlines()
