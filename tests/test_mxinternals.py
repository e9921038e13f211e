"""The private MXNet attributes d2lseg uses (``mxinternals.ATTRIBUTES``) exist in this MXNet, with the
meaning the package relies on; a build with another layout fails here, naming the attribute."""
import mxnet as mx
import numpy as np
from mxnet import gluon, nd

from d2lseg.core import mxinternals
from d2lseg.native.upsampling import FastUpsampling


def _trainer(kvstore='device', momentum=0.9):
    net = gluon.nn.Dense(2, in_units=3)
    net.initialize(mx.init.Constant(0.5))
    trainer = gluon.Trainer(net.collect_params(), 'sgd', {'learning_rate': 0.1, 'momentum': momentum},
                            kvstore=kvstore)
    with mx.autograd.record():
        loss = net(nd.ones((4, 3))).sum()
    loss.backward()
    trainer.step(4)
    return net, trainer


def test_every_private_attribute_d2lseg_uses_exists():
    net, trainer = _trainer()
    kv = mx.kv.create('local')
    up = FastUpsampling(2, 64)
    assert mxinternals.missing(trainer, kv, trainer._optimizer, up, net) == [], \
        f'this MXNet ({mx.__version__}) lacks {mxinternals.missing(trainer, kv, trainer._optimizer, up, net)}'
    kinds = {k for k in mxinternals.ATTRIBUTES}
    assert kinds == {'gluon.Trainer', 'kvstore.KVStore', 'optimizer.Optimizer', 'gluon.Block'}


def test_missing_names_the_attribute():
    class Trainer:  # a layout without _updaters
        _kv_initialized = _params_to_init = _kvstore = _update_on_kvstore = _params = _optimizer = None

        def _init_kvstore(self):
            pass

        def _init_params(self):
            pass
    assert mxinternals.missing(Trainer()) == ['gluon.Trainer._updaters']


def test_the_adapter_reads_what_the_trainer_holds():
    net, trainer = _trainer()
    (updater,) = mxinternals.updaters(trainer)
    params = mxinternals.trainer_params(trainer)
    assert sorted(p.name for p in params) == sorted(net.collect_params())  # in the trainer's index order
    opt = mxinternals.trainer_optimizer(trainer)
    assert opt is updater.optimizer and opt.momentum == 0.9
    assert mxinternals.update_counts(opt) == {0: {0: 1, 1: 1}}
    w = next(i for i, p in enumerate(params) if p.name.endswith('weight'))
    momentum = updater.states[w]  # SGD with momentum from zero, one step: -lr * grad (grad of sum: 4 / batch 4)
    assert momentum.shape == params[w].shape and np.allclose(momentum.asnumpy(), -0.1 * np.ones((2, 3)))
    mxinternals.set_update_counts(opt, {0: {0: 7, 1: 7}})
    assert opt._index_update_count == {0: 7, 1: 7} and opt._all_index_update_counts == {0: {0: 7, 1: 7}}


def test_structural_names_are_those_save_parameters_writes(tmp_path):
    net = gluon.nn.HybridSequential()
    net.add(gluon.nn.Dense(2, in_units=3), gluon.nn.Dense(1, in_units=2))
    net.initialize()
    net.save_parameters(str(tmp_path / 'p.params'))
    assert sorted(mxinternals.structural_params(net)) == sorted(nd.load(str(tmp_path / 'p.params')))
