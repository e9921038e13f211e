"""Hostile and broken checkpoint folders: no code runs from a file --resume reads, the pointer names only
files inside the run folder, every field is checked, and resume never writes data (one line, exit 2)."""
import json
import os
import pickle
import shutil

import pytest

from d2lseg.training import checkpoint
from d2lseg.command.cli import main
from d2lseg.core.errors import D2lsegError, first_line
from d2lseg.training.config import Recipe
from recipes import copy_of

pytestmark = pytest.mark.fault


class _Payload:
    """Unpickling this creates the file ``marker``: what a crafted states file could do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, 'w'))


@pytest.fixture(scope='module')
def run_dir(tiny_run, tmp_path_factory):
    """A finished 2-epoch run with momentum (so there is optimizer state to resume): the session's tiny run."""
    return copy_of(tiny_run[0], tmp_path_factory.mktemp('ckpt'))


def copy_run(run_dir, tmp_path, name='case'):
    d = tmp_path / name
    shutil.copytree(run_dir, d)
    return d


def edit_pointer(d, **changes):
    path = d / checkpoint.POINTER
    meta = json.loads(path.read_text())
    meta.update(changes)
    path.write_text(json.dumps(meta))
    return meta


def resume(d, capsys, *extra):
    code = main(['train', '--resume', str(d), '--ctx', 'cpu', '--workers', '0', '--no-progress', *extra])
    err = capsys.readouterr().err.strip().splitlines()
    return code, err


def test_checkpoints_hold_no_pickle(run_dir):
    meta = checkpoint.load_meta(run_dir)
    assert meta['states'] == f"ckpt-epoch{meta['epoch']:04d}.optimizer"
    for name in os.listdir(run_dir):
        with open(os.path.join(run_dir, name), 'rb') as f:
            assert f.read(1) != b'\x80', f'{name} starts like a Python pickle'


@pytest.mark.parametrize('named', ['ckpt-epoch0002.states', 'ckpt-epoch0002.optimizer'])
def test_a_pickled_states_file_is_refused_and_never_run(run_dir, tmp_path, capsys, named):
    d = copy_run(run_dir, tmp_path)
    marker = tmp_path / 'payload-ran'
    (d / named).write_bytes(pickle.dumps(_Payload(str(marker))))
    edit_pointer(d, states=named)
    code, err = resume(d, capsys, '--epochs', '3')
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith(f'd2lseg train: error: {d / named}: optimizer states in Python\'s pickle format')
    assert 'train again' in err[0]
    assert not marker.exists()


POINTERS = [
    ({'params': '../elsewhere.params'}, '"params" must name a checkpoint file in the run folder'),
    ({'params': '/abs/ckpt-epoch0002.params'}, '"params" must name a checkpoint file'),
    ({'states': 'sub/ckpt-epoch0002.optimizer'}, '"states" must name a checkpoint file'),
    ({'params': 123}, '"params" must name a checkpoint file'),
    ({'epoch': 'two'}, '"epoch" must be a positive integer'),
    ({'epoch': True}, '"epoch" must be a positive integer'),
    ({'epoch': 0}, '"epoch" must be a positive integer'),
    ({'recipe': 'x'}, '"recipe" must be an object'),
    ({'history': []}, '"history" must be an object'),
]


@pytest.mark.parametrize('changes, says', POINTERS, ids=[json.dumps(c) for c, _ in POINTERS])
def test_a_bad_pointer_field_is_one_line(run_dir, tmp_path, capsys, changes, says):
    d = copy_run(run_dir, tmp_path)
    edit_pointer(d, **changes)
    code, err = resume(d, capsys)
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith(f'd2lseg train: error: {d / checkpoint.POINTER}: not a d2lseg checkpoint pointer')
    assert says in err[0], err[0]


def test_a_pointer_json_that_is_not_an_object_is_one_line(run_dir, tmp_path, capsys):
    d = copy_run(run_dir, tmp_path)
    (d / checkpoint.POINTER).write_text('[1, 2]')
    code, err = resume(d, capsys)
    assert code == 2 and len(err) == 1 and 'a JSON object was expected' in err[0]


def test_a_checkpoint_file_linked_from_outside_is_refused(run_dir, tmp_path, capsys):
    d = copy_run(run_dir, tmp_path)
    meta = checkpoint.load_meta(str(d))
    outside = tmp_path / 'outside.params'
    shutil.move(str(d / meta['params']), outside)
    os.symlink(outside, d / meta['params'])
    code, err = resume(d, capsys)
    assert code == 2 and len(err) == 1 and 'a link leading out of the run folder' in err[0], err


@pytest.mark.parametrize('field, value, says', [
    ('epochs', 'two', "recipe field 'epochs' is 'two', not an integer"),
    ('crop', [64], "recipe field 'crop' is [64], not a list of 2 integers"),
    ('lr', None, "recipe field 'lr' is None, not a number"),
    ('wd', float('nan'), '--wd nan: must be a non-negative number'),
])
def test_a_stored_recipe_of_the_wrong_type_is_one_line(run_dir, tmp_path, capsys, field, value, says):
    d = copy_run(run_dir, tmp_path)
    meta = json.loads((d / checkpoint.POINTER).read_text())
    edit_pointer(d, recipe=dict(meta['recipe'], **{field: value}))
    code, err = resume(d, capsys)
    assert code == 2 and len(err) == 1 and says in err[0], err


def test_resume_never_writes_data_where_the_pointer_says(run_dir, tmp_path, capsys):
    d = copy_run(run_dir, tmp_path)
    elsewhere = tmp_path / 'not-here'
    meta = json.loads((d / checkpoint.POINTER).read_text())
    edit_pointer(d, recipe=dict(meta['recipe'], synthetic=True, data_dir=str(elsewhere)))
    code, err = resume(d, capsys, '--epochs', '3')
    assert code == 2 and len(err) == 1 and 'creates no data' in err[0] and str(elsewhere) in err[0], err
    assert not elsewhere.exists()


def test_optimizer_state_of_another_network_is_one_line(run_dir, tmp_path):
    from d2lseg.training.engine import prepare
    d = copy_run(run_dir, tmp_path)
    meta = checkpoint.load_meta(str(d))
    recipe = Recipe.from_dict(dict(meta['recipe'], ctx='cpu', variant='fcn16s'))
    run = prepare(recipe, data=False)
    with pytest.raises(D2lsegError, match='cannot load trainer states, they do not fit this network'):
        checkpoint.load_optimizer(run.trainer, str(d / meta['states']))


def test_first_line_skips_what_says_nothing():
    assert first_line(ValueError('')) == 'ValueError'
    assert first_line(RuntimeError('\n  \nTraceback (most recent call last):\n  real reason\nmore')) == 'real reason'
    assert first_line(OSError('x' * 500), limit=10) == 'x' * 10
    assert first_line(KeyError('Traceback (most recent call last):')) == 'KeyError'


@pytest.mark.parametrize('damage, says', [
    ({'tuple:0': [0]}, 'must hold one count between 1 and 4'),
    ({'tuple:0': []}, 'must hold one count between 1 and 4'),
    ({'tuple:0': [10 ** 9]}, 'must hold one count between 1 and 4'),
    ('drop-states', 'no momentum for'),
    ('float64', 'float64'),
])
def test_a_damaged_optimizer_file_is_one_line(run_dir, tmp_path, capsys, damage, says):
    from mxnet import nd
    d = copy_run(run_dir, tmp_path)
    path = str(d / checkpoint.load_meta(str(d))['states'])
    arrays = nd.load(path)
    if damage == 'drop-states':  # a file without momentum would silently restart it from zero
        arrays = {k: v for k, v in arrays.items() if not k.startswith('state:')}
    elif damage == 'float64':
        key = next(k for k in arrays if k.startswith('state:'))
        arrays[key] = arrays[key].astype('float64')
    else:
        arrays.update({k: nd.array(v, dtype='int64') for k, v in damage.items()})
    nd.save(path, arrays)
    code, err = resume(d, capsys, '--epochs', '3')
    assert code == 2 and len(err) == 1 and 'cannot load trainer states' in err[0] and says in err[0], err
