"""Data safety: one writer per run folder, nothing a user made replaced silently, resume says what it
ignores, bad output places are one line (exit 2) before any work."""
import json
import os
import subprocess
import sys

import pytest
from PIL import Image

from d2lseg.core import runfolder
from d2lseg.command.cli import main
from d2lseg.core.outputs import MANIFEST
from d2lseg.command.photos import output_stems

from recipes import run_cli as run, tiny_train_argv as tiny

pytestmark = pytest.mark.fault

EXE = os.path.join(os.path.dirname(sys.executable), 'd2lseg')
HOLDER = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'helpers', 'runfolder_holder.py')


@pytest.fixture(scope='module')
def done(data_root, tmp_path_factory):
    """A tiny run of one epoch (``recipes.TINY_FLAGS``): resume must have an epoch left to run, which the
    session's two-epoch ``tiny_run`` has not."""
    out = str(tmp_path_factory.mktemp('rf') / 'run')
    assert main(tiny(data_root, out)) == 0
    return out


def test_a_second_writer_gets_one_line_naming_the_holder(data_root, tmp_path):
    out = str(tmp_path / 'busy')
    holder = subprocess.Popen([sys.executable, HOLDER, out], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == 'held'
        p = subprocess.run([EXE] + tiny(data_root, out), capture_output=True, text=True, timeout=120)
        lines = p.stderr.strip().splitlines()
        assert p.returncode == 2 and len(lines) == 1, p.stderr
        assert f'another d2lseg process (pid {holder.pid}) is writing this run folder' in lines[0]
    finally:
        holder.kill()
        holder.wait()
    # the kernel released the lock with the killed holder: no stale lock
    with runfolder.RunFolder(out):
        pass


def test_a_fresh_run_never_replaces_a_run(done, data_root, tmp_path, capsys):
    def stamps():  # every file of the run (the lock file is the package's own)
        return {n: os.path.getmtime(os.path.join(done, n)) for n in os.listdir(done) if n != runfolder.LOCK}
    before = stamps()
    code, _, err = run(tiny(data_root, done), capsys)
    assert code == 2 and len(err) == 1 and 'holds a run' in err[0] and '--resume' in err[0] and '--overwrite' in err[0]
    assert stamps() == before
    # --overwrite with a start that fails (no data here) keeps the old run
    flags = tiny(data_root, done, '--overwrite')
    flags[flags.index('--data-dir') + 1] = str(tmp_path / 'typo')
    flags.remove('--synthetic')
    code, _, err = run(flags, capsys)
    assert code == 2 and len(err) == 1 and 'typo' in err[0] and stamps() == before
    # --overwrite replaces it: the old run's checkpoints do not stay mixed in
    out = tmp_path / 'again'
    assert main(tiny(data_root, str(out), epochs=2)) == 0
    code, _, _ = run(tiny(data_root, str(out), '--overwrite'), capsys)  # 1 epoch now
    assert code == 0
    assert sorted(n for n in os.listdir(out) if n.startswith('ckpt')) == ['ckpt-epoch0001.optimizer',
                                                                          'ckpt-epoch0001.params']
    assert len(json.loads((out / 'history.json').read_text())['epochs']) == 1


def test_temporaries_of_a_killed_final_write_are_cleaned(done, data_root, tmp_path, capsys):
    out = tmp_path / 'tmp-left'
    assert main(tiny(data_root, str(out))) == 0
    (out / 'model.params.tmp-99999').write_bytes(b'half')
    code, _, _ = run(['train', '--resume', str(out), '--epochs', '2', '--ctx', 'cpu', '--workers', '0',
                      '--no-progress'], capsys)
    assert code == 0 and not [n for n in os.listdir(out) if '.tmp-' in n]


def test_resume_names_every_flag_it_ignores_and_takes_a_moved_data_dir(done, data_root, tmp_path, capsys):
    import shutil
    out = tmp_path / 'moved'
    moved = tmp_path / 'data-now'
    shutil.copytree(done, out)
    code, _, err = run(['train', '--resume', str(out), '--epoch', '2', '--lr', '0.5', '--variant', 'fcn8s',
                        '--out', 'x', '--ctx', 'cpu', '--workers', '0', '--no-progress', '-b64',
                        '--data', str(moved)], capsys)  # abbreviations (argparse's) and -b64 count as the flags
    # the data moved: the message names the folder given, nothing is created there
    assert code == 2 and 'the data folder given holds no VOCdevkit/VOC2012' in err[-1] and not moved.exists()
    assert err[0] == ('d2lseg train: --resume continues the stored run as it was: '
                      'ignoring --batch-size, --lr, --out, --variant')
    shutil.copytree(data_root, moved)
    code, _, err = run(['train', '--resume', str(out), '--epochs', '2', '--ctx', 'cpu', '--workers', '0',
                        '--no-progress', '--data-dir', str(moved)], capsys)
    assert code == 0, err
    history = json.loads((out / 'history.json').read_text())
    assert len(history['epochs']) == 2 and history['recipe']['data_dir'] == str(moved)
    code, _, err = run(['train', '--resume', str(out), '--epochs', '1', '--ctx', 'cpu', '--no-progress',
                        '--data-dir', str(moved)], capsys)
    assert code == 0 and err == [f'nothing to do: {out} has finished 2 of 2 epochs; --epochs N (more than 2) '
                                 'extends it']


def test_bad_out_places_are_one_line_and_leave_nothing(data_root, tmp_path, capsys):
    a_file = tmp_path / 'a-file'
    a_file.write_text('mine')
    for out, says in ((str(a_file), 'a file, not a folder'), (str(a_file / 'sub'), 'cannot write there'),
                      ('/proc/d2lseg-run', 'cannot write there')):
        code, _, err = run(tiny(data_root, out), capsys)
        assert code == 2 and len(err) == 1 and f'--out {out}: {says}' in err[0], err
    assert a_file.read_text() == 'mine'
    # a run that fails after the folder was made (here: no data) removes the folder it created
    out = tmp_path / 'never'
    flags = tiny(str(tmp_path / 'no-data'), str(out))
    flags.remove('--synthetic')
    code, _, err = run(flags, capsys)
    assert code == 2 and len(err) == 1 and not out.exists()


def test_synth_never_replaces_a_tree_without_overwrite(data_root, tmp_path, capsys):
    seg = os.path.join(data_root, 'VOCdevkit', 'VOC2012', 'ImageSets', 'Segmentation', 'train.txt')
    before = open(seg).read()
    code, _, err = run(['synth', '--root', data_root, '--n-train', '2', '--n-val', '1'], capsys)
    assert code == 2 and len(err) == 1 and 'already holds a VOC tree' in err[0] and '--overwrite' in err[0]
    assert open(seg).read() == before
    a_file = tmp_path / 'f'
    a_file.write_text('x')
    code, _, err = run(['synth', '--root', str(a_file), '--n-train', '2', '--n-val', '1'], capsys)
    assert code == 2 and len(err) == 1 and 'a file, not a folder' in err[0]
    root = tmp_path / 'replace'
    assert main(['synth', '--root', str(root), '--n-train', '2', '--n-val', '1']) == 0
    lists = root / 'VOCdevkit' / 'VOC2012' / 'ImageSets' / 'Segmentation' / 'train.txt'
    stamp = os.path.getmtime(lists)
    assert main(['synth', '--root', str(root), '--n-train', '2', '--n-val', '1']) == 0  # the same set: kept as is
    assert os.path.getmtime(lists) == stamp
    assert main(['synth', '--root', str(root), '--n-train', '3', '--n-val', '1', '--overwrite']) == 0
    capsys.readouterr()
    assert len(open(root / 'VOCdevkit' / 'VOC2012' / 'ImageSets' / 'Segmentation' / 'train.txt').read().split()) == 3


def test_predict_gives_inputs_sharing_a_stem_distinct_outputs(done, tmp_path, capsys):
    assert output_stems(['a.jpg', 'b.png', 'x/a.png', 'y/a.png']) == ['a_jpg', 'b', 'a_png', 'a_png-2']
    # names other outputs take (NAME_overlay.png, legend.png) are not given to an image's own outputs
    assert output_stems(['a.jpg', 'a_overlay.jpg', 'legend.jpg']) == ['a', 'a_overlay_image', 'legend_image']
    paths = []
    for ext, colour in (('jpg', (200, 0, 0)), ('png', (0, 0, 200))):
        paths.append(str(tmp_path / f'a.{ext}'))
        Image.new('RGB', (96, 64), colour).save(paths[-1])
    out = tmp_path / 'pred'
    code, _, _ = run(['predict', *paths, '--params', os.path.join(done, 'model.params'), '--out', str(out)], capsys)
    assert code == 0
    assert sorted(os.listdir(out)) == [MANIFEST, 'a_jpg.png', 'a_jpg_overlay.png', 'a_png.png', 'a_png_overlay.png',
                                       'legend.png']
    code, _, err = run(['predict', paths[0], '--params', os.path.join(done, 'model.params'), '--out', paths[1]], capsys)
    assert code == 2 and len(err) == 1 and 'a file, not a folder' in err[0]


def test_evaluate_keeps_good_results_and_checks_its_output_first(done, data_root, tmp_path, capsys):
    params = os.path.join(done, 'model.params')
    good = tmp_path / 'eval.json'
    good.write_text('{"miou": 0.5}')
    code, _, err = run(['evaluate', '--params', params, '--data-dir', data_root, '--json', str(good), '--no-progress'],
                       capsys)  # a file evaluate did not write: replaced only with --overwrite
    assert code == 2 and len(err) == 1 and 'exists and was not written by d2lseg evaluate' in err[0], err
    code, _, err = run(['evaluate', '--params', params, '--data-dir', data_root, '--chapter-protocol', '--crop',
                        '3200x3200', '--json', str(good), '--no-progress', '--overwrite'], capsys)
    assert code == 2 and len(err) == 1 and 'nothing was evaluated' in err[0] and 'published protocol' in err[0]
    assert good.read_text() == '{"miou": 0.5}'
    for argv, says in ((['--chapter-protocol', '--crop', '50x50'], '--crop 50x50: both sides must be positive multiples of 32'),
                       (['--json', str(tmp_path)], 'a folder; give a file name'),
                       (['--json', str(tmp_path / 'no' / 'x.json')], 'cannot be written')):
        code, _, err = run(['evaluate', '--params', params, '--data-dir', data_root, '--no-progress', *argv], capsys)
        assert code == 2 and len(err) == 1 and says in err[0], err
