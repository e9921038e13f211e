"""download_voc_pascal against a local HTTP server: good archive, refused connection, short body,
sha1 mismatch, archives escaping the target folder. Every fault is one D2lsegError and leaves nothing behind."""
import hashlib
import http.server
import io
import os
import socket
import tarfile
import threading

import numpy as np
import pytest

from d2lseg.core.errors import D2lsegError
from d2lseg.data.synthetic import make_synthetic_voc
from d2lseg.data.download import download_voc_pascal
from d2lseg.data.voc import VOCSegDataset, VOC_SUBDIR

pytestmark = [pytest.mark.fault, pytest.mark.timeout(120)]
TIMEOUT = 5  # seconds per request: every fault here must surface well within it


def sha1(data):
    return hashlib.sha1(data).hexdigest()


def tar_bytes(add):
    """A tar archive in memory; ``add(tar)`` puts the members in."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode='w') as tar:
        add(tar)
    return buf.getvalue()


def add_file(tar, name, data=b'x'):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


@pytest.fixture(scope='module')
def good_tar(tmp_path_factory):
    """A tiny VOCdevkit/VOC2012 tree (3 train, 2 val images) packed as the real tar is."""
    src = str(tmp_path_factory.mktemp('src'))
    make_synthetic_voc(src, n_train=3, n_val=2, sizes=((64, 96),), seed=4, progress=False)
    return tar_bytes(lambda tar: tar.add(os.path.join(src, 'VOCdevkit'), arcname='VOCdevkit'))


@pytest.fixture(scope='module')
def server(good_tar, tmp_path_factory):
    """An HTTP server on 127.0.0.1 serving the archives by path; counts the requests it gets."""
    outside = str(tmp_path_factory.mktemp('outside'))
    routes = {
        '/good.tar': good_tar,
        '/dotdot.tar': tar_bytes(lambda t: (add_file(t, 'VOCdevkit/VOC2012/ImageSets/Segmentation/train.txt'),
                                            add_file(t, 'VOCdevkit/../../evil', b'pwned'))),
        '/absolute.tar': tar_bytes(lambda t: (add_file(t, 'VOCdevkit/VOC2012/ImageSets/Segmentation/val.txt'),
                                              add_file(t, os.path.join(outside, 'abs_evil'), b'pwned'))),
        '/nodir.tar': tar_bytes(lambda t: add_file(t, 'something/else.txt')),
        '/garbage.tar': b'not a tar archive at all\n' * 40,
    }

    def symlink(t):
        add_file(t, 'VOCdevkit/VOC2012/ImageSets/Segmentation/train.txt')
        info = tarfile.TarInfo('VOCdevkit/VOC2012/JPEGImages')
        info.type, info.linkname = tarfile.SYMTYPE, outside
        t.addfile(info)
    routes['/symlink.tar'] = tar_bytes(symlink)
    hits = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            hits.append(self.path)
            if self.path == '/short.tar':  # promise more than is sent, then hang up
                self.send_response(200)
                self.send_header('Content-Length', str(len(good_tar)))
                self.end_headers()
                self.wfile.write(good_tar[:len(good_tar) // 3])
                self.wfile.flush()
                self.close_connection = True
                return
            if self.path not in routes:
                self.send_error(404)
                return
            body = routes[self.path]
            self.send_response(200)
            self.send_header('Content-Length', str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    srv = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Handler)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    srv.base = f'http://127.0.0.1:{srv.server_address[1]}'
    srv.hits, srv.routes, srv.outside = hits, routes, outside
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join(5)


@pytest.fixture
def closed_port_url():
    s = socket.socket()
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens here now: connection refused
    return f'http://127.0.0.1:{port}/VOCtrainval_11-May-2012.tar'


def leftovers(data_dir):
    """Everything under data_dir (relative paths)."""
    out = []
    for dirpath, dirnames, filenames in os.walk(data_dir):
        out += [os.path.relpath(os.path.join(dirpath, n), data_dir) for n in dirnames + filenames]
    return sorted(out)


def assert_fault(data_dir, match, **kw):
    with pytest.raises(D2lsegError, match=match) as e:
        download_voc_pascal(data_dir, timeout=TIMEOUT, **kw)
    msg = str(e.value)
    assert '\n' not in msg and 'd2lseg synth (writes data/synthetic), then d2lseg train --synthetic' in msg
    assert leftovers(data_dir) == []  # no partial tree, no .tar.part, no extraction folder
    return msg


def assert_good_call_works(data_dir, server, good_tar):
    voc_dir = download_voc_pascal(data_dir, urls=[server.base + '/good.tar'], sha1=sha1(good_tar), timeout=TIMEOUT)
    assert voc_dir == os.path.join(data_dir, VOC_SUBDIR)
    ds = VOCSegDataset(True, (64, 96), voc_dir, verbose=False)
    assert len(ds) == 3 and ds.labels[0].shape == (64, 96) and set(np.unique(ds.labels[0])) <= set(range(21))
    assert not [p for p in leftovers(data_dir) if p.endswith('.part') or '.voc-extract-' in p]


def test_existing_tree_returns_at_once(tmp_path, server, closed_port_url):
    data_dir = str(tmp_path)
    seg = os.path.join(data_dir, VOC_SUBDIR, 'ImageSets', 'Segmentation')
    os.makedirs(seg)
    for split in ('train', 'val'):  # a tree is complete with both split lists (voc.has_voc)
        with open(os.path.join(seg, split + '.txt'), 'w') as f:
            f.write('2007_000032\n')
    before = len(server.hits)
    assert download_voc_pascal(data_dir, urls=[closed_port_url, server.base + '/good.tar']) == \
        os.path.join(data_dir, VOC_SUBDIR)
    assert len(server.hits) == before


def test_good_archive_is_downloaded_checked_and_extracted(tmp_path, server, good_tar):
    data_dir = str(tmp_path / 'data')  # created on demand
    assert_good_call_works(data_dir, server, good_tar)
    voc_dir = os.path.join(data_dir, VOC_SUBDIR)
    names = open(os.path.join(voc_dir, 'ImageSets', 'Segmentation', 'val.txt')).read().split()
    assert len(names) == 2 and all(os.path.isfile(os.path.join(voc_dir, 'JPEGImages', n + '.jpg')) for n in names)
    hits = len(server.hits)
    assert_good_call_works(data_dir, server, good_tar)  # second call: no download
    assert len(server.hits) == hits


def test_connection_refused_then_success(tmp_path, server, good_tar, closed_port_url):
    data_dir = str(tmp_path)
    msg = assert_fault(data_dir, r'could not download Pascal VOC2012 \(http://127\.0\.0\.1:\d+/VOCtrainval.*refused',
                       urls=[closed_port_url], sha1=sha1(good_tar))
    assert msg.endswith('offline, train on the synthetic VOC-format set: d2lseg synth (writes data/synthetic), '
                        'then d2lseg train --synthetic')
    # the mirror is tried after the refused host
    voc_dir = download_voc_pascal(data_dir, urls=[closed_port_url, server.base + '/good.tar'],
                                  sha1=sha1(good_tar), timeout=TIMEOUT)
    assert os.path.isfile(os.path.join(voc_dir, 'ImageSets', 'Segmentation', 'train.txt'))


def test_body_cut_short(tmp_path, server, good_tar):
    n = len(good_tar)
    assert_fault(str(tmp_path), rf'/short\.tar: download cut short \({n // 3} of {n} bytes\)',
                 urls=[server.base + '/short.tar'], sha1=sha1(good_tar))
    assert_good_call_works(str(tmp_path), server, good_tar)


def test_sha1_mismatch(tmp_path, server, good_tar):
    wrong = '0' * 40
    assert_fault(str(tmp_path), rf'/good\.tar: sha1 {sha1(good_tar)} does not match the expected {wrong}',
                 urls=[server.base + '/good.tar'], sha1=wrong)
    assert_good_call_works(str(tmp_path), server, good_tar)


def test_http_404_and_garbage_and_missing_folder(tmp_path, server, good_tar):
    assert_fault(str(tmp_path), r'/missing\.tar: .*Not Found', urls=[server.base + '/missing.tar'], sha1=None)
    body = server.routes['/garbage.tar']
    assert_fault(str(tmp_path), r'/garbage\.tar: ', urls=[server.base + '/garbage.tar'], sha1=sha1(body))
    body = server.routes['/nodir.tar']
    assert_fault(str(tmp_path), r'/nodir\.tar: archive has no VOCdevkit/VOC2012 folder',
                 urls=[server.base + '/nodir.tar'], sha1=sha1(body))
    assert_good_call_works(str(tmp_path), server, good_tar)


@pytest.mark.parametrize('route, member', [('/dotdot.tar', 'VOCdevkit/../../evil'),
                                           ('/absolute.tar', 'abs_evil'),
                                           ('/symlink.tar', 'VOCdevkit/VOC2012/JPEGImages')])
def test_archive_escaping_the_target_is_refused(tmp_path, server, good_tar, route, member):
    data_dir = str(tmp_path / 'data')
    os.makedirs(data_dir)
    body = server.routes[route]
    msg = assert_fault(data_dir, rf'{route}: member .*{member}.* would escape .*archive refused',
                       urls=[server.base + route], sha1=sha1(body))
    assert msg.count('archive refused') == 1
    assert sorted(os.listdir(tmp_path)) == ['data']  # nothing written next to data_dir
    assert not os.listdir(server.outside)  # nor at the absolute path or through the link
    assert_good_call_works(data_dir, server, good_tar)


def test_incomplete_tree_is_not_mistaken_for_a_complete_one(tmp_path, server, good_tar):
    data_dir = str(tmp_path)
    os.makedirs(os.path.join(data_dir, VOC_SUBDIR, 'JPEGImages'))  # e.g. a hand-copied partial tree
    with pytest.raises(D2lsegError, match='VOC2012: exists but has no ImageSets/Segmentation.*remove it'):
        download_voc_pascal(data_dir, urls=[server.base + '/good.tar'], sha1=sha1(good_tar), timeout=TIMEOUT)
    os.rmdir(os.path.join(data_dir, VOC_SUBDIR, 'JPEGImages'))
    os.rmdir(os.path.join(data_dir, VOC_SUBDIR))
    assert_good_call_works(data_dir, server, good_tar)


def test_the_synthetic_set_is_not_taken_for_voc(tmp_path, server, good_tar, data_root):
    before = len(server.hits)
    with pytest.raises(D2lsegError, match='holds the synthetic set .* not Pascal VOC2012') as e:
        download_voc_pascal(data_root, urls=[server.base + '/good.tar'], sha1=sha1(good_tar), timeout=TIMEOUT)
    assert '\n' not in str(e.value) and len(server.hits) == before   # nothing downloaded
