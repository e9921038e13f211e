"""Bad values at the package's boundary: one clear error each, never a silent wrong result or a traceback."""
import math
import time
import os

import mxnet as mx
import numpy as np
import pytest
from PIL import Image

from d2lseg.command.cli import main
from d2lseg.core.errors import D2lsegError
from d2lseg.data.images import read_image
from d2lseg.fcn.inference import label2image, predict
from d2lseg.fcn.metrics import ConfusionMatrix
from d2lseg.fcn.model import build_fcn
from d2lseg.training.config import Recipe, parse_ctx

pytestmark = pytest.mark.fault


@pytest.mark.parametrize('spec, says', [('gpu:x', 'whole numbers'), ('cpu:x', 'whole numbers'),
                                        ('cpu:10000', 'between 1 and the'), ('cpu:0', 'between 1 and the'),
                                        ('cpu:1,2', 'expected cpu or cpu:N'), ('tpu', 'expected cpu')])
def test_contexts(spec, says):
    with pytest.raises(D2lsegError, match=f'--ctx {spec}: .*{says}'):
        parse_ctx(spec)


@pytest.mark.parametrize('field, value, flag', [
    ('seed', -1, '--seed'), ('seed', 2 ** 40, '--seed'), ('num_classes', 0, '--num-classes'),
    ('workers', 100000, '--workers'), ('kvstore', 'bogus', '--kvstore'), ('momentum', math.nan, '--momentum'),
    ('momentum', -5.0, '--momentum'), ('wd', math.nan, '--wd'), ('wd', math.inf, '--wd')])
def test_recipe_values(field, value, flag):
    with pytest.raises(D2lsegError, match=f'^{flag} '):
        Recipe(**{field: value}).validate()


def test_train_with_a_nan_flag_leaves_no_out_folder(data_root, tmp_path, capsys):
    out = tmp_path / 'never'
    code = main(['train', '--data-dir', data_root, '--synthetic', '--no-pretrained', '--ctx', 'cpu', '--wd', 'nan',
                 '--out', str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and '--wd nan' in err[0] and not out.exists()


@pytest.mark.parametrize('value', [-1, 1.7, 21, 255, math.nan])
def test_label2image_refuses_what_is_not_a_class(value):
    pred = np.zeros((2, 2), np.float32)
    pred[1, 1] = value
    with pytest.raises(D2lsegError, match='label2image: class index .* is not a whole number in \\[0, 21\\)'):
        label2image(pred)


def test_confusion_matrix_refuses_other_shapes_and_fractions():
    with pytest.raises(ValueError, match='shape'):
        ConfusionMatrix(3).update(np.zeros((4, 4)), np.zeros((2, 8)))
    with pytest.raises(ValueError, match='label holds values that are not whole numbers'):
        ConfusionMatrix(3).update(np.zeros(4), np.array([0, 1.5, 2, 1]))


@pytest.mark.parametrize('num_classes', [0, -3, 2.5, True])
def test_build_fcn_class_counts(num_classes):
    with pytest.raises(D2lsegError, match=f'num_classes {num_classes!r}: must be a whole number'):
        build_fcn(num_classes, pretrained=False)


def test_predict_refuses_sides_that_are_not_multiples_of_32():
    net = build_fcn(21, pretrained=False, fast_upsampling=True)
    with pytest.raises(D2lsegError, match='a 64x100 image; both sides must be positive multiples of 32'):
        predict(net, np.zeros((64, 100, 3), np.uint8), mx.cpu())


def test_prediction_reads_photos_as_displayed_and_refuses_16_bit(tmp_path):
    deep = tmp_path / 'deep.png'
    Image.fromarray(np.full((8, 8), 40000, np.uint16)).save(deep)
    with pytest.raises(D2lsegError, match="deep.png: image of mode 'I;16'"):
        read_image(str(deep))
    rotated = tmp_path / 'rotated.jpg'
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: the camera was turned, display rotated by 90 degrees
    Image.new('RGB', (60, 40), (10, 200, 10)).save(rotated, exif=exif)
    assert read_image(str(rotated)).shape == (60, 40, 3)  # displayed: 40 wide, 60 high
    with pytest.raises(D2lsegError, match='a folder; give image files'):
        read_image(str(tmp_path))
    # a phone's motion photo (video bytes after the JPEG's end) and a 1-bit image are photos too
    motion = tmp_path / 'motion.jpg'
    Image.new('RGB', (40, 30), (1, 2, 3)).save(motion)
    with open(motion, 'ab') as f:
        f.write(b'\x00\x00\x00\x18ftypmp42' + bytes(4096))
    assert read_image(str(motion)).shape == (30, 40, 3)
    bits = tmp_path / 'bits.png'
    Image.new('1', (16, 8), 1).save(bits)
    assert read_image(str(bits)).shape == (8, 16, 3)


def _cli(argv, capsys):
    code = main(argv)
    return code, capsys.readouterr().err.strip().splitlines()


@pytest.mark.parametrize('argv, says', [
    (['launch', '-n', '1', '--port', '-1', '--', 'true'], '--port -1: must be between 0 and 65535'),
    (['launch', '-n', '1', '--port', '70000', '--', 'true'], '--port 70000: must be between 0 and 65535'),
    (['launch', '-n', '1', '--timeout', 'nan', '--', 'true'], '--timeout nan: must be a positive number'),
    (['launch', '-n', '1', '--timeout', 'inf', '--', 'true'], '--timeout inf: must be a positive number'),
    (['launch', '-n', '1'], 'give the command to run after --'),
])
def test_launch_flags_are_one_line_naming_the_subcommand(argv, says, capsys):
    code, err = _cli(argv, capsys)
    assert code == 2 and len(err) == 1 and err[0].startswith('d2lseg launch: error: ') and says in err[0], err


def test_output_places_that_are_files_or_folders(tmp_path, capsys):
    a_file = tmp_path / 'f'
    a_file.write_text('x')
    code, err = _cli(['reproduce', '--data-dir', str(a_file), '--ctx', 'cpu'], capsys)
    assert code == 2 and len(err) == 1 and 'a file, not a folder' in err[0]
    code, err = _cli(['compare', str(tmp_path)], capsys)
    assert code == 2 and len(err) == 1 and 'a folder; give its history.json' in err[0]
    code, err = _cli(['synth', '--root', str(a_file / 'below')], capsys)
    assert code == 2 and len(err) == 1 and 'cannot write there' in err[0]


def test_data_is_checked_before_any_download(tmp_path, capsys):
    # without --no-pretrained the backbone would be downloaded (impossible offline): the missing data
    # must be what the one line is about
    code, err = _cli(['train', '--data-dir', str(tmp_path / 'nowhere'), '--ctx', 'cpu', '--out', str(tmp_path / 'o')],
                     capsys)
    assert code == 2 and len(err) == 1 and f"--data-dir {tmp_path / 'nowhere'}: no VOCdevkit/VOC2012" in err[0], err


@pytest.mark.parametrize('error', [OSError(28, 'No space left on device'),
                                   mx.base.MXNetError('\nTraceback (most recent call last):\n  FileStream.Write failed')])
def test_a_full_disk_is_one_line_and_keeps_the_old_file(tmp_path, error):
    from d2lseg.core import outputs
    target = tmp_path / 'model.params'
    target.write_bytes(b'the good one')

    def write(tmp):
        open(tmp, 'wb').write(b'half')
        raise error
    with pytest.raises(D2lsegError, match='model.params: writing failed .*free disk space') as info:
        outputs.atomic_write(str(target), write)
    assert '\n' not in str(info.value) and 'Traceback' not in str(info.value)
    assert target.read_bytes() == b'the good one' and os.listdir(tmp_path) == ['model.params']


def test_a_port_in_time_wait_is_free_to_the_scheduler():
    import socket
    from d2lseg.command.launcher import _check_port
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the last job's scheduler (ZeroMQ) had it
    srv.bind(('127.0.0.1', 0))
    srv.listen()
    port = srv.getsockname()[1]
    client = socket.create_connection(('127.0.0.1', port))
    conn, _ = srv.accept()
    conn.close()          # the listening side closes first: its end of the port waits in TIME_WAIT
    client.close()
    srv.close()
    time.sleep(0.1)
    assert _check_port('127.0.0.1', port) == port


def test_reproduce_refuses_a_run_folder_before_downloading(tmp_path, capsys):
    out = tmp_path / 'run'
    out.mkdir()
    (out / 'model.params').write_bytes(b'a run')
    code, err = _cli(['reproduce', '--data-dir', str(tmp_path / 'voc'), '--out', str(out), '--ctx', 'cpu'], capsys)
    assert code == 2 and len(err) == 1 and 'holds a run' in err[0] and not (tmp_path / 'voc').exists()


def test_reproduce_has_the_flags_its_messages_recommend(capsys):
    with pytest.raises(SystemExit):
        main(['reproduce', '--help'])
    out = capsys.readouterr().out
    assert '--backbone-params' in out and '--no-pretrained' in out and '--overwrite' in out
