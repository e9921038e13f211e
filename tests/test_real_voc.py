"""Checks that need the real Pascal VOC2012 (and, for the reproduction, GPUs): skipped visibly here.

Set D2LSEG_VOC_ROOT to the folder holding VOCdevkit/VOC2012 (default: the repository's data/).
"""
import json
import os
import subprocess
import sys

import pytest

from d2lseg.data.voc import VOCSegDataset, VOC_SUBDIR, read_split

ROOT = os.environ.get('D2LSEG_VOC_ROOT', os.path.join(os.path.dirname(__file__), '..', 'data'))
VOC_DIR = os.path.join(ROOT, VOC_SUBDIR)


@pytest.mark.voc
def test_real_voc_split_sizes_and_chapter_filter_counts():
    """The chapter prints 'read 1114 examples' and 'read 1078 examples' at the 320x480 crop."""
    assert len(read_split(VOC_DIR, True)) == 1464
    assert len(read_split(VOC_DIR, False)) == 1449
    train = VOCSegDataset(True, (320, 480), VOC_DIR)
    val = VOCSegDataset(False, (320, 480), VOC_DIR)
    assert (len(train), len(val)) == (1114, 1078)
    assert train.num_dropped == 1464 - 1114


@pytest.mark.voc
@pytest.mark.gpu
@pytest.mark.slow
def test_reproduce_the_chapter_within_the_published_spread(tmp_path):
    """The chapter's recipe on 2+ GPUs lands inside the published spread (d2lseg compare exit 0)."""
    out = tmp_path / 'reproduce'
    cmd = [sys.executable, '-m', 'd2lseg.command.cli', 'reproduce', '--data-dir', ROOT, '--out', str(out), '--no-progress']
    assert subprocess.run(cmd, timeout=3600).returncode == 0
    history = json.loads((out / 'history.json').read_text())
    assert len(history['epochs']) == 5
