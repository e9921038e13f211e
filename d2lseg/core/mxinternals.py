"""Every private attribute of MXNet 1.9.1 that d2lseg touches, behind one small adapter.

gluon 1.9 has no public API for three things the package needs: the optimizer state of a Trainer as
arrays (``Trainer.save_states`` pickles it, and checkpoints hold no pickle), the optimizer's per-index
update counts (resume stays bit for bit equal only with them), and the structural parameter names
``save_parameters`` writes (``upsampling.FastLayoutParams``). Nothing else in the package reads or
writes an underscored attribute of an MXNet object; ``ATTRIBUTES`` lists them all and
``missing(trainer, block)`` (``tests/test_mxinternals.py``) names any that an MXNet build lacks.
Imports no MXNet: the objects come from the caller.
"""

ATTRIBUTES = {  # the object -> the private attributes used, and what for
    'gluon.Trainer': ('_kv_initialized', '_init_kvstore', '_params_to_init', '_init_params', '_kvstore',
                      '_update_on_kvstore', '_updaters', '_params', '_optimizer'),
    'kvstore.KVStore': ('_updater',),                 # the Updater when the trainer updates on the kvstore
    'optimizer.Optimizer': ('_all_index_update_counts', '_index_update_count'),
    'gluon.Block': ('_collect_params_with_prefix',),  # save_parameters' structural names
}


def updaters(trainer):
    """The Updaters holding ``trainer``'s optimizer state (in ``_updaters``, or in its kvstore's ``_updater``
    when it updates on the kvstore); initialises the trainer's kvstore first, as ``Trainer.save_states`` /
    ``load_states`` do."""
    if not trainer._kv_initialized:
        trainer._init_kvstore()
    if trainer._params_to_init:
        trainer._init_params()
    return [trainer._kvstore._updater] if trainer._update_on_kvstore else list(trainer._updaters)


def trainer_params(trainer):
    """The Parameters ``trainer`` updates, in its index order (the optimizer state's keys)."""
    return list(trainer._params)


def trainer_optimizer(trainer):
    """The Optimizer ``trainer`` made (one object for all its updaters)."""
    return trainer._optimizer


def update_counts(optimizer):
    """{device: {parameter index: updates so far}} of ``optimizer`` (the counts its learning rate uses)."""
    return optimizer._all_index_update_counts


def set_update_counts(optimizer, counts):
    """Restore ``update_counts``: a copy of ``counts`` (device 0 present), device 0's as the current ones."""
    optimizer._all_index_update_counts = {dev: dict(per) for dev, per in counts.items()} or {0: {}}
    optimizer._index_update_count = optimizer._all_index_update_counts.setdefault(0, {})


def structural_params(block):
    """{structural name: Parameter} of ``block``, the names ``save_parameters`` writes."""
    return block._collect_params_with_prefix()


def missing(*objects):
    """'KIND.attribute' for every attribute of ``ATTRIBUTES`` that one of ``objects`` (a Trainer, KVStore,
    Optimizer or Block, matched by type name) lacks: empty when this MXNet has the layout d2lseg uses."""
    found = []
    for obj in objects:
        kinds = [k for k in ATTRIBUTES if any(k.split('.')[1] == c.__name__ for c in type(obj).__mro__)]
        found += [f'{k}.{a}' for k in kinds for a in ATTRIBUTES[k] if not hasattr(obj, a)]
    return found
