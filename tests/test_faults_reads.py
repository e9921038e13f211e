"""Every read bounded and of a regular file: a FIFO, /dev/zero or a folder where a small file is expected is
one line (never a hang or unbounded memory), lines end only at a newline, images are read only from regular
files, and the launcher reads its workers' output in bounded chunks and takes its children with it."""
import io
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from PIL import Image

from d2lseg.core import textfiles
from d2lseg.data.classes import read_classes, read_weights
from d2lseg.command.cli import main
from d2lseg.core.errors import D2lsegError
from d2lseg.command.launcher import _lines, launch, read_hostfile
from processes import _assert_no_leftovers, _tagged_processes

pytestmark = pytest.mark.fault


@pytest.fixture
def no_hang():
    """Fail (instead of hanging the suite) when the test body blocks for more than 20 s (e.g. on a FIFO)."""
    def alarm(signum, frame):
        raise TimeoutError('blocked for 20 s: a read that waits on a FIFO?')
    old = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(20)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@pytest.fixture
def fifo(tmp_path):
    path = tmp_path / 'fifo'
    os.mkfifo(path)
    return str(path)


def run(argv, capsys):
    code = main(argv)
    cap = capsys.readouterr()
    return code, cap.out, cap.err.strip().splitlines()


@pytest.mark.parametrize('reader', [lambda p: read_classes(p), lambda p: read_weights(p, 3),
                                    lambda p: read_hostfile(p), lambda p: textfiles.read_json(p)])
@pytest.mark.parametrize('kind', ['fifo', 'zero', 'folder'])
def test_small_files_are_regular_files_or_one_line(reader, kind, fifo, tmp_path, no_hang):
    path = {'fifo': fifo, 'zero': '/dev/zero', 'folder': str(tmp_path)}[kind]
    with pytest.raises(D2lsegError, match='not a regular file') as e:
        reader(path)
    assert path in str(e.value) and '\n' not in str(e.value)


def test_a_size_cap_and_utf8(tmp_path):
    big = tmp_path / 'big.txt'
    big.write_bytes(b'a' * 2000)
    with pytest.raises(D2lsegError, match='larger than 1,000 bytes'):
        textfiles.read_text(str(big), limit=1000)
    latin = tmp_path / 'latin.txt'
    latin.write_bytes('caf\xe9\n'.encode('latin-1'))
    with pytest.raises(D2lsegError, match='not UTF-8 text'):
        read_classes(str(latin))
    huge = tmp_path / 'classes.txt'
    huge.write_bytes(b'background\n' + b'x' * (2 << 20) + b'\n')
    with pytest.raises(D2lsegError, match='--classes .*larger than'):
        read_classes(str(huge))


@pytest.mark.parametrize('separator', ['\u2028', '\u2029', '\x85', '\x0b', '\x0c', '\x1c', '\x1d', '\x1e', '\r'])
def test_only_a_newline_ends_a_line(tmp_path, separator):
    """str.splitlines would split 'car<sep>bus' into two classes and shift every later index."""
    path = tmp_path / 'classes.txt'
    path.write_bytes(f'background\ncar{separator}bus\nperson\n'.encode('utf-8'))  # (write_text would translate \r)
    with pytest.raises(D2lsegError, match=f'--classes {path}, line 2: holds ') as e:
        read_classes(str(path))
    assert '\n' not in str(e.value)
    hosts = tmp_path / 'hosts'
    hosts.write_bytes(f'a{separator}b\n'.encode('utf-8'))
    with pytest.raises(D2lsegError, match='line 1: holds'):
        read_hostfile(str(hosts))


def test_a_byte_order_mark_and_windows_line_ends(tmp_path):
    path = tmp_path / 'classes.txt'
    path.write_bytes('\ufeffbackground\r\nroad 128 64 128\r\n'.encode('utf-8'))
    classes = read_classes(str(path))
    assert classes.names == ('background', 'road') and classes.colors[1] == (128, 64, 128)
    weights = tmp_path / 'w.txt'
    weights.write_bytes('\ufeff1, 2\r\n'.encode('utf-8'))
    assert read_weights(str(weights), 2).tolist() == [1.0, 2.0]


def test_cli_reads_never_hang_on_a_fifo(data_root, fifo, tmp_path, capsys, no_hang):
    base = ['train', '--data-dir', data_root, '--synthetic', '--no-pretrained', '--ctx', 'cpu', '--crop', '64x96',
            '--batch-size', '2', '--epochs', '1', '--max-images', '4', '--workers', '0', '--no-progress']
    for extra, says in ((['--classes', fifo], f'--classes {fifo}: a FIFO'),
                        (['--class-weights', '/dev/zero'], '--class-weights /dev/zero: a character device')):
        code, _, err = run(base + ['--out', str(tmp_path / 'o'), *extra], capsys)
        assert code == 2 and len(err) == 1 and says in err[0], err
    code, _, err = run(['compare', fifo], capsys)
    assert code == 2 and len(err) == 1 and 'a FIFO, not a regular file' in err[0]
    code, _, err = run(['launch', '-n', '1', '--hostfile', fifo, '--', 'true'], capsys)
    assert code == 2 and len(err) == 1 and f'--hostfile {fifo}: a FIFO' in err[0]
    run_dir = tmp_path / 'resume'
    run_dir.mkdir()
    os.mkfifo(run_dir / 'checkpoint.json')
    code, _, err = run(['train', '--resume', str(run_dir), '--ctx', 'cpu', '--no-progress'], capsys)
    assert code == 2 and len(err) == 1 and 'checkpoint.json: a FIFO' in err[0], err


def test_predict_skips_a_fifo_among_the_photos_and_a_fifo_model_json_is_named(data_root, fifo, tmp_path, capsys,
                                                                                no_hang):
    out = tmp_path / 'run'
    assert main(['train', '--data-dir', data_root, '--synthetic', '--no-pretrained', '--ctx', 'cpu', '--crop',
                 '64x96', '--batch-size', '2', '--epochs', '1', '--max-images', '4', '--workers', '0',
                 '--no-progress', '--out', str(out)]) == 0
    photos = tmp_path / 'photos'
    photos.mkdir()
    Image.new('RGB', (96, 64), (10, 200, 10)).save(photos / 'a.jpg')
    os.mkfifo(photos / 'b.jpg')
    capsys.readouterr()
    code, stdout, err = run(['predict', str(photos), '--params', str(out / 'model.params'), '--out',
                             str(tmp_path / 'pred'), '--no-progress'], capsys)
    errors = [line for line in stdout.splitlines() if line.startswith('error')]
    assert code == 1 and len(errors) == 1 and 'b.jpg: a FIFO, not a regular file' in errors[0], stdout
    assert (tmp_path / 'pred' / 'a.png').is_file()
    os.replace(out / 'model.json', tmp_path / 'model.json.bak')
    os.mkfifo(out / 'model.json')
    code, _, err = run(['predict', str(photos / 'a.jpg'), '--params', str(out / 'model.params'), '--out',
                        str(tmp_path / 'pred'), '--no-progress', '--overwrite'], capsys)
    assert code == 2 and len(err) == 1 and 'model.json: a FIFO' in err[0], err


def test_a_corrupt_or_oversized_model_json_is_named(tmp_path, capsys):
    from d2lseg.data.classes import model_classes
    params = tmp_path / 'model.params'
    (tmp_path / 'model.json').write_text('{"variant": "fcn32s", "classes": ')
    with pytest.raises(D2lsegError, match='model.json: not a model.json of d2lseg train .*damaged'):
        model_classes(str(params))
    names = [f'c{i}' for i in range(300)]
    (tmp_path / 'model.json').write_text(json.dumps({'classes': {'names': names, 'colors': [[0, 0, 0]] * 300}}))
    with pytest.raises(D2lsegError, match='300 classes.*at most 255'):
        model_classes(str(params))
    (tmp_path / 'model.json').write_text(json.dumps({'classes': {'names': ['a', 'b' * 1000000], 'colors': [[0, 0, 0],
                                                                                                       [1, 1, 1]]}}))
    with pytest.raises(D2lsegError, match='1000000 characters'):
        model_classes(str(params))
    (tmp_path / 'model.json').write_text(json.dumps({'variant': 7}))
    with pytest.raises(D2lsegError, match='variant 7'):
        model_classes(str(params))


def test_launcher_output_is_read_in_bounded_chunks():
    stream = io.BytesIO(b'x' * 300_000 + b'\nshort\n' + b'y' * 10)
    pieces = list(_lines(stream.read, limit=65536))
    assert max(map(len, pieces)) <= 65536 and b''.join(pieces[:5]) == b'x' * 300_000
    assert pieces[-2:] == [b'short', b'y' * 10]
    sink = io.StringIO()
    code = launch([sys.executable, '-c', 'import sys; sys.stdout.write("z" * 3000000); sys.stdout.flush()'],
                  num_workers=1, port=0, timeout=60, sink=sink)
    lines = sink.getvalue().splitlines()
    assert code == 0 and sum(line.count('z') for line in lines) == 3000000
    assert max(map(len, lines)) <= 65536 + len('[worker 0] ')


@pytest.mark.distributed
def test_no_child_survives_a_killed_launcher(tag):
    worker = 'import time; print("up", flush=True); time.sleep(120)'
    launcher = subprocess.Popen([sys.executable, '-m', 'd2lseg.command.cli', 'launch', '-n', '2', '--port', '0', '--',
                                 sys.executable, '-c', worker], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                text=True)
    try:
        ups = 0
        deadline = time.monotonic() + 90
        while ups < 2 and time.monotonic() < deadline:
            ups += 'up' in launcher.stdout.readline()
        assert ups == 2 and len(_tagged_processes(tag)) >= 5  # the launcher, scheduler, server, two workers
    finally:
        launcher.send_signal(signal.SIGKILL)
        launcher.wait()
    _assert_no_leftovers(tag)
