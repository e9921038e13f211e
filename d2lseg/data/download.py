"""Downloading Pascal VOC2012 (D2L 10.10.4): checked against its sha1, extracted safely, moved into place whole."""
import hashlib
import http.client
import os
import shutil
import tarfile
import tempfile
import urllib.request

from ..core.errors import D2lsegError, first_line
from ..core.progress import bar
from ..core.runfolder import writable_folder
from ..core.constants import SYNTHETIC_DIR
from .voc import VOC_SUBDIR, has_voc, require_real_voc

VOC_URLS = (  # the official host first, then a long-standing mirror of the same file
    'http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar',
    'http://pjreddie.com/media/files/VOCtrainval_11-May-2012.tar',
)
VOC_SHA1 = '4e443f8a2eca6b1dac8a6c57641b67dd40621a49'
def _sha1(path, chunk=1 << 20):
    h = hashlib.sha1()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(chunk), b''):
            h.update(block)
    return h.hexdigest()


def safe_extract(tar_path, dest, source=None):
    """Extract a tar archive, refusing any member that would land outside ``dest``.

    ``source`` (default ``tar_path``) is the name errors give for the archive, e.g. its URL.
    """
    source = source or tar_path
    dest_real = os.path.realpath(dest)
    try:
        with tarfile.open(tar_path) as tar:
            members = tar.getmembers()
            for m in members:
                target = os.path.realpath(os.path.join(dest_real, m.name))
                if os.path.commonpath([dest_real, target]) != dest_real or m.issym() or m.islnk() or m.isdev():
                    raise D2lsegError(f"{source}: member {m.name!r} would escape the folder it is extracted "
                                      f"to (absolute, ../ and link members are refused); archive refused")
            extra = {'filter': 'data'} if hasattr(tarfile, 'data_filter') else {}  # Python >= 3.11.4: a second guard
            tar.extractall(dest_real, members=members, **extra)
    except tarfile.TarError as e:
        reason = first_line(e).rstrip(':')
        raise D2lsegError(f"{source}: not a readable tar archive ({reason}); download it again") from None


def _download(url, dest_file, timeout=30):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        total = int(r.headers.get('Content-Length') or 0)
        with open(dest_file, 'wb') as f, bar(total=total or None, unit='B', unit_scale=True,
                                             desc=os.path.basename(url.split('#')[0])) as download_bar:
            got = 0
            for block in iter(lambda: r.read(1 << 20), b''):
                f.write(block)
                got += len(block)
                download_bar.update(len(block))
    if total and got != total:
        raise D2lsegError(f"{url}: download cut short ({got} of {total} bytes)")


def download_voc_pascal(data_dir='../data', urls=VOC_URLS, sha1=VOC_SHA1, timeout=30):
    """Return ``<data_dir>/VOCdevkit/VOC2012``, downloading and extracting VOC2012 when missing.

    The tar is streamed to a temporary file, its sha1 checked, then extracted safely into a
    temporary folder that is renamed into place only when complete. Source: D2L 10.10.4.
    """
    require_real_voc(data_dir)
    voc_dir = os.path.join(data_dir, VOC_SUBDIR)
    if has_voc(data_dir):
        return voc_dir
    if os.path.exists(voc_dir):
        raise D2lsegError(f"{voc_dir}: exists but has no ImageSets/Segmentation/train.txt and val.txt (an "
                          f"incomplete tree); remove it and download again")
    writable_folder(data_dir, '--data-dir')
    errors = []
    for url in urls:
        fd, tmp_tar = tempfile.mkstemp(suffix='.tar.part', dir=data_dir)
        os.close(fd)
        tmp_dir = tempfile.mkdtemp(prefix='.voc-extract-', dir=data_dir)
        try:
            _download(url, tmp_tar, timeout)
            got = _sha1(tmp_tar)
            if sha1 and got != sha1:
                raise D2lsegError(f"{url}: sha1 {got} does not match the expected {sha1}")
            safe_extract(tmp_tar, tmp_dir, source=url)
            extracted = os.path.join(tmp_dir, VOC_SUBDIR)
            if not os.path.isdir(extracted):
                raise D2lsegError(f"{url}: archive has no {VOC_SUBDIR} folder")
            os.makedirs(os.path.dirname(voc_dir), exist_ok=True)
            os.replace(extracted, voc_dir)
            return voc_dir
        except D2lsegError as e:
            errors.append(str(e))
        except (OSError, ValueError, tarfile.TarError, http.client.HTTPException) as e:
            reason = str(getattr(e, 'reason', e)) or type(e).__name__
            errors.append(f"{url}: {' '.join(reason.split())}")
        finally:
            if os.path.exists(tmp_tar):
                os.remove(tmp_tar)
            shutil.rmtree(tmp_dir, ignore_errors=True)
    raise D2lsegError("could not download Pascal VOC2012 (" + "; ".join(errors) + "); offline, train on the "
                      f"synthetic VOC-format set: d2lseg synth (writes {SYNTHETIC_DIR}), then d2lseg train --synthetic")
