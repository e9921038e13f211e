"""Shared fixtures: a tiny synthetic VOC-format data set, made once per test session."""
import os
import uuid

import d2lseg  # noqa: F401  (first: it sets OMP_NUM_THREADS, which MXNet reads once, when it loads)
from d2lseg import native
import mxnet as mx
import pytest

from d2lseg.data.palette import build_colormap2label
from d2lseg.data.synthetic import make_synthetic_voc
from d2lseg.data.voc import VOC_SUBDIR
from processes import _kill_tagged
from recipes import TINY_EPOCHS, run_main, tiny_train_argv

TINY_SIZES = ((160, 224), (128, 192), (96, 128), (320, 480))


@pytest.fixture(scope='session')
def data_root(tmp_path_factory):
    """A data folder (like the chapter's ../data) holding VOCdevkit/VOC2012: 24 train, 8 val images."""
    root = str(tmp_path_factory.mktemp('data'))
    make_synthetic_voc(root, n_train=24, n_val=8, sizes=TINY_SIZES, seed=1, progress=False)
    return root


@pytest.fixture(scope='session')
def voc_dir(data_root):
    return os.path.join(data_root, VOC_SUBDIR)


@pytest.fixture(scope='session')
def tiny_run(data_root, tmp_path_factory):
    """(run folder, what it printed) of the session's one tiny ``d2lseg train`` (``recipes.TINY_FLAGS``,
    ``TINY_EPOCHS`` epochs). Read it; tests that write into or beside it take ``recipes.copy_of`` it."""
    out = str(tmp_path_factory.mktemp('tiny') / 'run')
    code, stdout, stderr = run_main(tiny_train_argv(data_root, out, epochs=TINY_EPOCHS))
    assert code == 0, stderr
    return out, stdout


@pytest.fixture(scope='session')
def c2l():
    """The chapter's colour lookup (void colour -> background)."""
    return build_colormap2label()


@pytest.fixture(scope='session')
def c2l_void():
    """The lookup with the void colour -> 255."""
    return build_colormap2label(ignore_boundary=True)


# What CI also runs on every other supported Python (`make tier`, .ci/run), besides the tests marked tier in
# their own files (test_compat, test_pythons, the synthetic digests): the chapter's cells, a tiny train /
# resume / evaluate / predict, INT8, the native kernels, notebook 01 in quick mode, the regression band.
TIER = (
    'test_chapter_cells.py::',
    'test_cli.py::test_train_writes_history_curves_checkpoints_and_params',
    'test_cli.py::test_resume_continues_to_the_same_parameters',
    'test_cli.py::test_evaluate_prints_metrics_table_and_writes_json[published]',
    'test_cli.py::test_predict_writes_palette_pngs_overlays_a_legend_and_what_it_found',
    'test_cli.py::test_console_script_exit_codes',
    'test_quantization.py::test_int8_quantisation_runs_and_tracks_fp32',
    'test_kernels.py::test_softmax_ce_values_and_gradients',
    'test_kernels.py::test_upsample_argmax_equals_argmax_of_the_upsampling',
    'test_kernels.py::test_train_step_native_equals_mxnet_operators',
    'test_notebooks.py::test_01_transposed_convolution',
    'test_regression.py::test_the_recipe_stays_inside_its_band_on_simulated_machines[machine-default]',
)


def pytest_collection_modifyitems(config, items):
    """Mark the tier; skip, visibly and with the reason, what this machine cannot run."""
    for item in items:
        if item.nodeid.split('/')[-1].startswith(TIER):
            item.add_marker(pytest.mark.tier)
    no_gpu = pytest.mark.skip(reason='needs a GPU visible to MXNet; none here')
    real_voc = os.environ.get('D2LSEG_VOC_ROOT', os.path.join(os.path.dirname(__file__), '..', 'data'))
    no_voc = pytest.mark.skip(reason=f'needs the real Pascal VOC2012 under {real_voc} (set D2LSEG_VOC_ROOT)')
    have_voc = os.path.isfile(os.path.join(real_voc, VOC_SUBDIR, 'ImageSets', 'Segmentation', 'val.txt')) and \
        os.path.isfile(os.path.join(real_voc, VOC_SUBDIR, 'JPEGImages', '2007_000033.jpg'))
    for item in items:
        if 'gpu' in item.keywords and mx.context.num_gpus() == 0:
            item.add_marker(no_gpu)
        if 'voc' in item.keywords and not have_voc:
            item.add_marker(no_voc)


@pytest.fixture(autouse=True)
def _native_parameter(request):
    """A test parametrised on ``native`` runs with the native kernels on (True: when they build) or off
    (``d2lseg.native.override``) for its whole body."""
    callspec = getattr(request.node, 'callspec', None)
    if callspec is None or 'native' not in callspec.params:
        yield
        return
    with native.override(callspec.params['native']):
        yield


@pytest.fixture
def tag(monkeypatch):
    """A unique environment tag inherited by every process a test starts; all killed at the end."""
    value = uuid.uuid4().hex
    monkeypatch.setenv('D2LSEG_TEST_TAG', value)
    try:
        yield value
    finally:
        _kill_tagged(value)
