"""Outputs never land on inputs or on files the user made: every output checked against every input (same
directory entry or same inode) before any work, names unique across one command, files written whole,
rotation and --overwrite removing only what the run folder's manifest records."""
import json
import os
import shutil
import stat

import numpy as np
import pytest
from PIL import Image

from d2lseg.core import outputs
from d2lseg.command import photos
from d2lseg.core.outputs import MANIFEST
from d2lseg.command.photos import output_stems

from recipes import copy_of, run_cli as run, tiny_train_argv as tiny

pytestmark = pytest.mark.fault


@pytest.fixture(scope='module')
def done(tiny_run, tmp_path_factory):
    """A copy of the session's tiny run."""
    return copy_of(tiny_run[0], tmp_path_factory.mktemp('outputs'))


def photo(path, colour=(200, 30, 30), size=(96, 64)):
    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    Image.new('RGB', size, colour).save(path)
    return str(path)


def predict(done, *args):
    return ['predict', *map(str, args), '--params', os.path.join(done, 'model.params'), '--no-progress']


def snapshot(folder):
    return {n: open(os.path.join(folder, n), 'rb').read() for n in sorted(os.listdir(folder))
            if os.path.isfile(os.path.join(folder, n))}


def test_json_onto_an_input_photo_or_the_model_is_refused_before_any_work(done, tmp_path, capsys):
    a = photo(tmp_path / 'photos' / 'a.jpg')
    before = open(a, 'rb').read()
    out = tmp_path / 'pred'
    code, _, err = run(predict(done, tmp_path / 'photos', '--out', out, '--json', a), capsys)
    assert code == 2 and len(err) == 1 and f'--json {a}: is the image {a}, which this command reads' in err[0], err
    assert open(a, 'rb').read() == before and not out.exists()
    params = os.path.join(done, 'model.params')
    model = open(params, 'rb').read()
    for flag in ('--json', '--plot'):  # evaluate: the model, also through another spelling of its path
        spelled = os.path.join(done, '..', os.path.basename(done), 'model.params')
        code, _, err = run(['evaluate', '--params', params, '--data-dir', os.path.join(done, '..'), flag, spelled],
                           capsys)
        assert code == 2 and len(err) == 1 and 'is the parameters file' in err[0], err
    code, _, err = run(predict(done, a, '--out', out, '--json', params), capsys)
    assert code == 2 and len(err) == 1 and 'is the parameters file' in err[0]
    assert open(params, 'rb').read() == model and not out.exists()


def test_evaluate_never_writes_over_a_validation_image_or_label(done, data_root, tmp_path, capsys):
    from d2lseg.data.voc import VOC_SUBDIR, read_split
    voc = os.path.join(data_root, VOC_SUBDIR)
    name = read_split(voc, is_train=False)[0]
    for path in (os.path.join(voc, 'JPEGImages', name + '.jpg'), os.path.join(voc, 'SegmentationClass', name + '.png')):
        before = open(path, 'rb').read()
        code, _, err = run(['evaluate', '--params', os.path.join(done, 'model.params'), '--data-dir', data_root,
                            '--json', path, '--overwrite', '--no-progress'], capsys)
        assert code == 2 and len(err) == 1 and 'which this command reads' in err[0], err
        assert open(path, 'rb').read() == before


def test_links_to_an_input_are_caught_by_inode(done, tmp_path, capsys):
    a = photo(tmp_path / 'photos' / 'a.jpg')
    out = tmp_path / 'pred'
    out.mkdir()
    os.link(a, out / 'a.png')  # the label PNG's place is the photo itself (a hard link)
    code, _, err = run(predict(done, a, '--out', out, '--overwrite'), capsys)
    assert code == 2 and len(err) == 1 and 'a.png (the label PNG of' in err[0] and f'is the image {a}' in err[0], err
    (tmp_path / 'link').symlink_to(tmp_path / 'photos')  # a folder link: the same directory entry
    code, _, err = run(predict(done, a, '--out', tmp_path / 'p2', '--json', tmp_path / 'link' / 'a.jpg'), capsys)
    assert code == 2 and len(err) == 1 and 'which this command reads' in err[0]
    assert Image.open(a).size == (96, 64)


def test_a_users_own_file_survives_unless_overwrite_is_given(done, tmp_path, capsys):
    board = photo(tmp_path / 'photos' / 'board.jpg')
    mine = tmp_path / 'mine_out'
    mine.mkdir()
    (mine / 'board.png').write_bytes(b'my own drawing')
    code, _, err = run(predict(done, board, '--out', mine), capsys)
    assert code == 2 and len(err) == 1 and 'board.png' in err[0] and 'was not written by d2lseg predict' in err[0]
    assert (mine / 'board.png').read_bytes() == b'my own drawing' and sorted(os.listdir(mine)) == ['board.png']
    code, _, _ = run(predict(done, board, '--out', mine, '--overwrite'), capsys)  # asked: replaced
    assert code == 0 and Image.open(mine / 'board.png').mode == 'P'
    assert outputs.owners(str(mine))['board.png'] == 'predict'
    drawn = (mine / 'board.png').read_bytes()
    code, _, err = run(predict(done, board, '--out', mine), capsys)  # its own earlier outputs: refused too
    assert code == 2 and len(err) == 1 and 'an earlier d2lseg predict wrote it' in err[0] and '--overwrite' in err[0]
    assert (mine / 'board.png').read_bytes() == drawn


def special_nodes(tmp_path):
    """A FIFO, and a copy of /dev/null's device node when this process may make one (root)."""
    os.mkfifo(tmp_path / 'fifo')
    nodes = {'a FIFO': str(tmp_path / 'fifo')}
    try:
        os.mknod(tmp_path / 'null', 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        nodes['a character device'] = str(tmp_path / 'null')
    except (PermissionError, OSError):
        pass
    return nodes


def test_a_device_or_fifo_is_never_replaced_even_with_overwrite(done, data_root, tmp_path, capsys):
    """Renaming a finished file over /dev/null as root replaces the machine's /dev/null with a regular file:
    --json /dev/null --overwrite is refused, in one line, and the node stays what it was."""
    a = photo(tmp_path / 'photos' / 'a.jpg')
    params = os.path.join(done, 'model.params')
    for what, node in special_nodes(tmp_path).items():
        for argv in (predict(done, a, '--out', tmp_path / 'pred', '--json', node, '--overwrite'),
                     ['evaluate', '--params', params, '--data-dir', data_root, '--max-images', '1', '--json', node,
                      '--overwrite', '--no-progress']):
            code, _, err = run(argv, capsys)
            assert code == 2 and len(err) == 1 and f'--json {node}: is {what}, not a file' in err[0], err
            assert not stat.S_ISREG(os.stat(node).st_mode)
    assert not (tmp_path / 'pred').exists()
    with pytest.raises(outputs.D2lsegError, match='is a FIFO'):  # the last guard, under every writer
        outputs.atomic_write_json(str(tmp_path / 'fifo'), {'a': 1})
    assert stat.S_ISFIFO(os.stat(tmp_path / 'fifo').st_mode)


def test_outputs_of_one_command_never_share_a_name(done, tmp_path, capsys):
    paths = [photo(tmp_path / 'A' / 'x.jpg', (200, 0, 0)), photo(tmp_path / 'B' / 'x.jpg', (0, 200, 0)),
             photo(tmp_path / 'C' / 'x_jpg-2.png', (0, 0, 200))]
    stems = output_stems(paths)
    files = [s + suffix for s in stems for suffix in photos.OUTPUT_SUFFIXES] + ['legend.png']
    assert len(set(f.lower() for f in files)) == len(files), stems
    assert output_stems(['a/X.jpg', 'b/x.jpg']) == ['X_jpg', 'x_jpg-2']  # letter case: one name on some disks
    assert output_stems(['a/Legend.jpg', 'b/A_Overlay.jpg', 'a.jpg']) == ['Legend_image', 'A_Overlay_image', 'a']
    out = tmp_path / 'pred'
    code, _, _ = run(predict(done, *paths, '--out', out), capsys)
    assert code == 0 and len([n for n in os.listdir(out) if n.endswith('.png')]) == 7
    report = tmp_path / 'pred' / f'{stems[0]}.png'  # --json where an image's label PNG goes
    code, _, err = run(predict(done, *paths, '--out', out, '--json', report), capsys)
    assert code == 2 and len(err) == 1 and 'is also where' in err[0], err


def test_a_photo_called_curves_never_replaces_the_runs_curves(done, tmp_path, capsys):
    curves = open(os.path.join(done, 'curves.png'), 'rb').read()
    p = photo(tmp_path / 'curves.jpg')
    for extra in ((), ('--overwrite',)):
        code, _, err = run(predict(done, p, '--out', done, *extra), capsys)
        assert code == 2 and len(err) == 1 and 'written there by d2lseg train' in err[0], err
    assert open(os.path.join(done, 'curves.png'), 'rb').read() == curves
    code, _, err = run(['evaluate', '--params', os.path.join(done, 'model.params'), '--data-dir', done,
                        '--json', os.path.join(done, 'history.json'), '--overwrite'], capsys)
    assert code == 2 and len(err) == 1 and ('written there by d2lseg train' in err[0] or 'reads' in err[0]), err


def test_a_failed_rewrite_keeps_the_earlier_outputs(done, tmp_path, capsys, monkeypatch):
    a = photo(tmp_path / 'photos' / 'a.jpg')
    out = tmp_path / 'pred'
    code, _, _ = run(predict(done, a, '--out', out), capsys)
    before = snapshot(out)

    def half(path, bands, size, palette=None):  # the disk fills while the PNG is written
        open(path, 'wb').write(b'\x89PNG half')
        raise OSError(28, 'No space left on device')
    monkeypatch.setattr(photos, 'write_png', half)
    code, stdout, _ = run(predict(done, a, '--out', out, '--overwrite'), capsys)
    assert code == 1 and 'No space left on device' in stdout
    assert snapshot(out) == before  # the old outputs whole, no temporary left


def test_an_unwritable_figure_format_is_refused_before_evaluating(done, data_root, tmp_path, capsys):
    code, out, err = run(['evaluate', '--params', os.path.join(done, 'model.params'), '--data-dir', data_root,
                          '--plot', str(tmp_path / 'confusion.params'), '--no-progress'], capsys)
    assert code == 2 and len(err) == 1 and '--plot' in err[0] and 'not .params' in err[0] and 'protocol' not in out


def test_every_label_void_keeps_the_previous_metrics(done, data_root, tmp_path, capsys):
    from d2lseg.data.voc import VOC_SUBDIR, read_split
    root = tmp_path / 'void'
    shutil.copytree(data_root, root)
    voc = os.path.join(root, VOC_SUBDIR)
    for name in read_split(voc, is_train=False)[:2]:
        path = os.path.join(voc, 'SegmentationClass', name + '.png')
        label = Image.open(path)
        void = Image.fromarray(np.full(np.asarray(label).shape, 255, np.uint8), mode='P')
        void.putpalette(label.getpalette())
        void.save(path)
    report = tmp_path / 'eval.json'
    argv = ['evaluate', '--params', os.path.join(done, 'model.params'), '--data-dir', str(root), '--max-images', '2',
            '--json', str(report), '--no-progress', '--overwrite']
    good = ['evaluate', '--params', os.path.join(done, 'model.params'), '--data-dir', data_root, '--max-images', '2',
            '--json', str(report), '--no-progress']
    assert run(good, capsys)[0] == 0
    before = report.read_text()
    code, _, err = run(argv, capsys)
    assert code == 2 and len(err) == 1 and 'every label pixel' in err[0] and 'void' in err[0], err
    assert report.read_text() == before


def test_rotation_and_overwrite_remove_only_what_the_run_recorded(data_root, tmp_path, capsys):
    out = tmp_path / 'run'
    out.mkdir()
    mine = ['ckpt-epoch-notes.txt', 'ckpt-epoch0001.params.bak', 'ckpt-epoch0000-mine.params']
    for name in mine:
        (out / name).write_text('mine')
    code, _, err = run(tiny(data_root, str(out), epochs=3), capsys)
    assert code == 0, err
    names = sorted(os.listdir(out))
    assert all(n in names for n in mine), names  # rotation: the user's files stay
    assert [n for n in names if n.startswith('ckpt-epoch000') and n.endswith(('.params', '.optimizer'))
            and n not in mine] == ['ckpt-epoch0002.optimizer', 'ckpt-epoch0002.params', 'ckpt-epoch0003.optimizer',
                                   'ckpt-epoch0003.params']
    code, _, err = run(tiny(data_root, str(out), '--overwrite'), capsys)
    assert code == 0, err
    names = sorted(os.listdir(out))
    assert all(n in names for n in mine) and 'ckpt-epoch0003.params' not in names, names
    recorded = json.loads((out / MANIFEST).read_text())['files']
    assert recorded['ckpt-epoch0001.params'] == 'train' and not set(mine) & set(recorded)


def test_a_fresh_run_refuses_to_write_over_a_users_file(data_root, tmp_path, capsys):
    out = tmp_path / 'run'
    out.mkdir()
    (out / 'curves.png').write_bytes(b'my plot')
    code, _, err = run(tiny(data_root, str(out)), capsys)
    assert code == 2 and len(err) == 1 and 'curves.png' in err[0] and '--overwrite' in err[0], err
    assert (out / 'curves.png').read_bytes() == b'my plot'


def test_the_manifest_and_temporaries(tmp_path):
    folder = str(tmp_path)
    outputs.claim(folder, ['a.png'], 'predict')
    assert outputs.owners(folder) == {'a.png': 'predict'}
    (tmp_path / MANIFEST).write_text('{broken')  # a damaged manifest: nothing counts as d2lseg's
    assert outputs.owners(folder) == {}
    outputs.claim(folder, ['a.png'], 'predict')
    (tmp_path / 'a.png.tmp-999999999').write_bytes(b'half')    # a killed writer's (no such process)
    (tmp_path / 'b.png.tmp-999999999').write_bytes(b'mine')    # not a recorded name: left alone
    (tmp_path / f'a.png.tmp-{os.getppid()}').write_bytes(b'x')  # a live process's: left alone
    outputs.clean_temporaries(folder)
    assert sorted(os.listdir(tmp_path)) == sorted([MANIFEST, 'b.png.tmp-999999999', f'a.png.tmp-{os.getppid()}'])
    # a folder where the temporary or the file goes: one line (no traceback), the folder kept
    from d2lseg.training import checkpoint
    from d2lseg.core.errors import D2lsegError
    (tmp_path / f'x.tmp-{os.getpid()}').mkdir()
    (tmp_path / 'y').mkdir()
    for name in ('x', 'y'):
        with pytest.raises(D2lsegError, match=f'{name}: writing failed'):
            outputs.atomic_write_json(str(tmp_path / name), {'a': 1})
    assert (tmp_path / f'x.tmp-{os.getpid()}').is_dir() and (tmp_path / 'y').is_dir()
