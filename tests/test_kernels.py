"""The native kernels (d2lseg/native/csrc/kernels.cc) compute what MXNet's operators compute, and the package
falls back to MXNet's operators when they cannot be built. Equivalence only; bench/run.py times them.

The upsampling's own equivalence to the chapter's Conv2DTranspose (values and gradients, strides
8/16/24/32, hybridized or not) is in tests/test_upsampling.py, for both implementations.
"""
import json
import os
import subprocess
import sys

import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd, nd

from d2lseg import native
from d2lseg.core import startup
from d2lseg.fcn.loss import SegmentationLoss

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module', autouse=True)
def native_built():
    if not native.load():
        pytest.skip('the native kernels did not build on this machine (see the warning); '
                    'the package runs on MXNet operators')


def _softmax_ce_reference(z, label, ignore=255):
    """float64 numpy: per-sample mean over all H*W pixels of -log softmax(z)[label], ignored pixels 0."""
    z = z.astype(np.float64)
    logp = z - z.max(axis=1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(axis=1, keepdims=True))
    valid = label != ignore
    lab = np.clip(np.where(valid, label, 0).astype(int), 0, z.shape[1] - 1)  # MXNet's pick clips
    picked = np.take_along_axis(logp, lab[:, None], axis=1)[:, 0]
    return -(picked * valid).mean(axis=(1, 2)), logp, lab, valid


@pytest.mark.parametrize('shape', [(3, 21, 17, 70), (1, 2, 1, 1), (2, 5, 3, 129)])
def test_softmax_ce_values_and_gradients(shape):
    rng = np.random.default_rng(0)
    z = (rng.standard_normal(shape) * 4).astype(np.float32)
    n, c, h, w = shape
    label = rng.integers(0, c, (n, h, w)).astype(np.float32)
    label[0, 0, :3] = 255                  # ignored
    label[-1, -1, -1] = c + 3              # out of range: clipped to the last class, as nd.pick
    head = np.linspace(0.5, 2.0, n).astype(np.float32)
    expect, logp, lab, valid = _softmax_ce_reference(z, label)
    Z = nd.array(z)
    Z.attach_grad()
    with autograd.record():
        loss = nd.d2lseg_softmax_ce(Z, nd.array(label), ignore_index=255)
    loss.backward(nd.array(head))
    np.testing.assert_allclose(loss.asnumpy(), expect, rtol=2e-6, atol=1e-7)
    p = np.exp(logp)
    p[np.arange(n)[:, None, None], lab, np.arange(h)[None, :, None], np.arange(w)[None, None, :]] -= 1
    grad = p * valid[:, None] * (head / (h * w))[:, None, None, None]
    np.testing.assert_allclose(Z.grad.asnumpy(), grad, rtol=1e-5, atol=1e-9)
    ignored = np.broadcast_to((label == 255)[:, None], Z.shape)
    assert ignored.any() == (shape != (1, 2, 1, 1))   # the one pixel of (1, 2, 1, 1) is out of range
    assert np.abs(Z.grad.asnumpy()[ignored]).max(initial=0) == 0  # ignored pixels get no gradient


def test_softmax_ce_equals_the_mxnet_loss_hybridized():
    mx.random.seed(3)
    z = nd.random.normal(shape=(2, 21, 32, 48)) * 3
    label = nd.random.randint(0, 21, shape=(2, 32, 48)).astype('float32')
    label[1, 5:9] = 255
    out = []
    for flag in (False, True):
        loss_fn = SegmentationLoss()
        loss_fn.hybridize(static_alloc=True, static_shape=True)
        Z = z.copy()
        Z.attach_grad()
        with native.override(flag), autograd.record():
            loss = loss_fn(Z, label)
        loss.backward()
        out.append((loss.asnumpy(), Z.grad.asnumpy()))
    np.testing.assert_allclose(out[1][0], out[0][0], rtol=1e-6)
    scale = np.abs(out[0][1]).max()   # gradients near 0 (p close to its one-hot) cancel in float32
    np.testing.assert_allclose(out[1][1], out[0][1], rtol=1e-4, atol=1e-5 * scale)


@pytest.mark.parametrize('shape', [(2, 21, 33, 70), (1, 1, 3, 5), (1, 300, 2, 3)])
def test_argmax_equals_mxnet_argmax(shape):
    rng = np.random.default_rng(1)
    z = rng.integers(-3, 4, shape).astype(np.float32)  # small integers: many ties
    z[0, :, 0, 0] = -np.inf
    ours = native.argmax_channel(nd.array(z)).asnumpy()
    assert ours.shape == (shape[0],) + shape[2:] and ours.dtype == np.float32
    np.testing.assert_array_equal(ours, nd.array(z).argmax(axis=1).asnumpy())
    np.testing.assert_array_equal(ours, z.argmax(axis=1))  # the first maximum wins


@pytest.mark.parametrize('stride,shape', [(32, (2, 21, 4, 6)), (16, (1, 5, 3, 7)), (24, (2, 3, 2, 2)),
                                          (8, (1, 2, 5, 1))])
def test_upsample_argmax_equals_argmax_of_the_upsampling(stride, shape):
    """The fused operator gives argmax(d2lseg_upsample) exactly: ties included (classes 3 and 4 share
    their weights and bias, so 4 never wins), and its gradient is zero, as MXNet's argmax's."""
    rng = np.random.default_rng(stride)
    n, c, h, w = shape
    x = nd.array(rng.standard_normal(shape).astype(np.float32))
    weight = rng.standard_normal((4 * c, c, stride, stride)).astype(np.float32)
    bias = rng.standard_normal(c).astype(np.float32)
    if c > 4:
        weight[:, 4], bias[4] = weight[:, 3], bias[3]
    weight, bias = nd.array(weight), nd.array(bias)
    scores = nd.d2lseg_upsample(x, weight, bias, stride=stride).asnumpy()
    x.attach_grad()
    with autograd.record():
        labels = nd.d2lseg_upsample_argmax(x, weight, bias, stride=stride)
    labels.backward()
    assert labels.shape == (n, h * stride, w * stride) and labels.dtype == np.float32
    np.testing.assert_array_equal(labels.asnumpy(), scores.argmax(axis=1))
    assert np.abs(x.grad.asnumpy()).max() == 0
    if c > 4:
        assert (labels.asnumpy() == 3).any() and not (labels.asnumpy() == 4).any()
    assert len(np.unique(labels.asnumpy())) > 1


def test_bad_shapes_are_refused_in_one_line():
    with pytest.raises(mx.MXNetError, match='expected logits'):
        nd.d2lseg_softmax_ce(nd.zeros((2, 3, 4, 5)), nd.zeros((2, 4, 6))).wait_to_read()
    with pytest.raises(mx.MXNetError, match='stride must be'):
        nd.d2lseg_upsample(nd.zeros((1, 2, 3, 3)), nd.zeros((8, 2, 4, 4)), nd.zeros((2,)), stride=4).wait_to_read()
    with pytest.raises(mx.MXNetError, match='expected data'):
        nd.d2lseg_upsample_argmax(nd.zeros((1, 2, 3, 3)), nd.zeros((4, 2, 8, 8)), nd.zeros((2,)),
                                  stride=8).wait_to_read()


def test_gpu_contexts_keep_mxnet_operators():
    assert native.enabled([mx.cpu(0), mx.cpu(1)]) is True
    assert native.enabled([mx.cpu(), mx.gpu(0)]) is False
    assert native.enabled(mx.gpu(1)) is False
    with native.override(False):
        assert native.enabled(mx.cpu()) is False


def test_the_decision_is_taken_per_call_not_stored_in_the_built_network():
    """A hybridised network built where the kernels run rebuilds its graph when the decision changes
    (as after reset_ctx to a GPU): the same outputs either way, the decision of the call in force."""
    from d2lseg.fcn.model import build_fcn
    net = build_fcn(5, 'fcn16s', pretrained=False, fast_upsampling=True)
    net.hybridize(static_alloc=True)
    x = nd.random.normal(shape=(1, 3, 64, 96))
    fused = net(x).asnumpy()
    assert net.upsample._native is True
    with native.override(False):
        plain = net(x).asnumpy()
        assert net.upsample._native is False and net.native_upsample(mx.cpu()) is None
    again = net(x).asnumpy()
    assert net.upsample._native is True and net.native_upsample(mx.cpu()) is net.upsample
    np.testing.assert_allclose(plain, fused, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(again, fused)


def test_train_step_native_equals_mxnet_operators(tmp_path):
    """Two SGD steps of the fast fcn32s: kernels vs MXNet operators, same parameters and batch.

    Each in a process of its own: MXNet 1.9.1 training a second network in the same process
    sometimes gives a wrong convolution weight update (seen here 1 run in 24 without the kernels).
    """
    steps, results = [], []
    for mode in ('mxnet', 'native'):
        out = str(tmp_path / mode)
        proc = _run_helper('kernels_train_two_steps', args=[mode, out])
        assert proc.returncode == 0, proc.stderr[-2000:]
        steps.append({k: v.asnumpy() for k, v in nd.load(out + '.params').items()})
        results += json.load(open(out + '.json'))
    (l1, r1, c1, _), (l2, r2, c2, _), (l3, r3, c3, _), (l4, r4, c4, _) = results
    assert c1 == c3 == 2 * 64 * 96 - 8 * 96
    assert abs(l1 - l3) <= 1e-6 * abs(l1) and abs(l2 - l4) <= 1e-5 * abs(l2)
    assert abs(r1 - r3) <= 2 and abs(r2 - r4) <= 2                  # argmax ties may flip
    moved = 0
    for name, step in steps[0].items():  # the two steps' update of every parameter, L2-relative
        if np.linalg.norm(step) > 0:
            moved += 1
            assert np.linalg.norm(steps[1][name] - step) < 1e-3 * np.linalg.norm(step), name
    assert moved > 40


def _run_helper(name, args=(), **env):
    """Run tests/helpers/NAME.py in a fresh process, this checkout first on its path, with ``env`` added."""
    full = dict(os.environ, PYTHONPATH=ROOT, **env)
    return subprocess.run([sys.executable, os.path.join(ROOT, 'tests', 'helpers', name + '.py'), *args],
                          capture_output=True, text=True, env=full, timeout=300)


def test_a_failed_build_falls_back_to_mxnet_with_one_warning(tmp_path):
    proc = _run_helper('kernels_fallback', CXX='false', D2LSEG_CACHE=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert 'native False False' in proc.stdout
    assert float(proc.stdout.split('diff')[1]) < 1e-4
    assert proc.stderr.count('native kernels unavailable') == 1, proc.stderr
    assert 'compiling' in proc.stderr and 'D2LSEG_NATIVE=0' in proc.stderr
    assert not [p for p in os.listdir(tmp_path) if p.endswith('.so')]  # nothing half-written left


def test_d2lseg_native_0_turns_the_kernels_off_silently(tmp_path):
    proc = _run_helper('kernels_fallback', D2LSEG_NATIVE='0', D2LSEG_CACHE=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert 'native False False' in proc.stdout and 'unavailable' not in proc.stderr
    assert os.listdir(tmp_path) == []  # nothing built


def test_the_build_is_cached_per_machine():
    path = native.library_path()
    assert os.path.isfile(path) and path.startswith(native.cache_dir())
    stamp = os.path.getmtime(path)
    assert native.build(path) == path and os.path.getmtime(path) == stamp  # not rebuilt


# ------------------------------------------------------------------ the cache cannot load foreign code
PLANTED = r"""
#include <stdio.h>
__attribute__((constructor)) static void planted(void) { FILE *f = fopen("%s", "w"); if (f) fclose(f); }
"""


def _cache_path(monkeypatch, folder):
    monkeypatch.setenv('D2LSEG_CACHE', str(folder))
    return native.library_path()


def _private_cache(tmp_path, monkeypatch):
    """(an empty 0700 cache folder, the library path the package would use in it)."""
    cache = tmp_path / 'cache'
    path = _cache_path(monkeypatch, cache)
    cache.mkdir(mode=0o700)
    return cache, path


@pytest.mark.fault
def test_a_planted_library_is_rebuilt_never_loaded(tmp_path, monkeypatch):
    cache, path = _private_cache(tmp_path, monkeypatch)
    marker = tmp_path / 'planted-code-ran'
    src = tmp_path / 'planted.c'
    src.write_text(PLANTED % marker)
    subprocess.run(['gcc', '-shared', '-fPIC', str(src), '-o', path], check=True)
    proc = _run_helper('kernels_load', D2LSEG_CACHE=str(cache))
    assert proc.returncode == 0 and 'loaded True' in proc.stdout, proc.stderr[-2000:]
    assert not marker.exists()                 # the planted constructor never ran
    assert native.verified(path)              # a real build replaced it, with its digest beside it
    stamp = os.path.getmtime(path)
    # a zero-length (or otherwise damaged) library is rebuilt, not loaded and not kept
    with open(path, 'wb'):
        pass
    assert not native.verified(path)
    proc = _run_helper('kernels_load', D2LSEG_CACHE=str(cache))
    assert 'loaded True' in proc.stdout and native.verified(path) and os.path.getmtime(path) >= stamp


@pytest.mark.fault
def test_a_symlinked_lock_truncates_nothing(tmp_path, monkeypatch):
    cache, path = _private_cache(tmp_path, monkeypatch)
    victim = tmp_path / 'victim.txt'
    victim.write_text('precious')
    os.symlink(victim, path + '.lock')
    proc = _run_helper('kernels_load', D2LSEG_CACHE=str(cache))
    assert proc.returncode == 0 and 'loaded False' in proc.stdout
    assert victim.read_text() == 'precious'
    warning = [line for line in proc.stderr.splitlines() if 'native kernels unavailable' in line]
    assert len(warning) == 1 and path in warning[0], proc.stderr


@pytest.mark.fault
def test_a_cache_others_can_write_is_not_used(tmp_path, monkeypatch):
    cache = tmp_path / 'shared'
    path = _cache_path(monkeypatch, cache)
    cache.mkdir()
    os.chmod(cache, 0o777)
    proc = _run_helper('kernels_load', D2LSEG_CACHE=str(cache))
    assert proc.returncode == 0 and 'loaded False' in proc.stdout
    assert 'writable by other users; chmod 700' in proc.stderr and path in proc.stderr
    assert os.listdir(cache) == []             # nothing built or loaded there
    fresh = tmp_path / 'fresh'
    native.library._private_dir(str(fresh))
    assert oct(os.stat(fresh).st_mode & 0o777) == '0o700'
    # a cache of the user's own made group-writable by an older version's umask is tightened, not refused
    old = tmp_path / 'old'
    old.mkdir()
    os.chmod(old, 0o775)
    native.library._private_dir(str(old))
    assert oct(os.stat(old).st_mode & 0o777) == '0o700'


def test_an_inner_hybridized_block_rebuilds_its_graph_too():
    from d2lseg.fcn.model import build_fcn
    net = build_fcn(5, 'fcn32s', pretrained=False, fast_upsampling=True)
    net[-1].hybridize(static_alloc=True)            # only the upsampling keeps a graph
    x = nd.random.normal(shape=(1, 3, 64, 96))
    fused = net(x).asnumpy()
    with native.override(False):
        plain = net(x).asnumpy()
        assert net[-1]._native is False and net[-1]._hybridize_args[1]['clear'] is True
    np.testing.assert_allclose(plain, fused, rtol=1e-5, atol=1e-5)


def test_the_avx512_build_gives_the_avx2_builds_bits(tmp_path):
    """Every output value is accumulated in the same order whatever the vector width (kernels.cc), so the
    kernels built for this CPU and those built as for an AVX2 CPU (DNNL_MAX_CPU_ISA=AVX2) agree bit for bit:
    the upsampling (strides 16 and 32 on 16-float vectors here), its argmax, the loss, their gradients."""
    if 'avx512f' not in (native.compiled_isa() or ''):
        pytest.skip('the kernels here are built without AVX-512 (the CPU has none, or DNNL_MAX_CPU_ISA caps '
                    'it): they are the AVX2 build')
    results = {}
    for name, env in (('native', {}), ('avx2', {'DNNL_MAX_CPU_ISA': 'AVX2'})):
        proc = _run_helper('kernels_bits', [str(tmp_path / f'{name}.npz')], **env)
        assert proc.returncode == 0, proc.stderr[-2000:]
        lanes = proc.stdout.split('lanes', 1)[1].split('\n', 1)[0].split()
        results[name] = (lanes, proc.stdout.split('isa', 1)[1].split(), np.load(tmp_path / f'{name}.npz'))
    assert results['native'][0] == ['8:8', '16:16', '24:8', '32:16']  # both paths ran
    assert results['avx2'][0] == ['8:8', '16:8', '24:8', '32:8']
    assert 'avx512f' in results['native'][1] and 'avx512f' not in results['avx2'][1] and 'avx2' in results['avx2'][1]
    native_bits, avx2_bits = results['native'][2], results['avx2'][2]
    assert sorted(native_bits.files) == sorted(avx2_bits.files) and len(native_bits.files) == 42
    for key in native_bits.files:
        assert native_bits[key].tobytes() == avx2_bits[key].tobytes(), key
    assert np.abs(native_bits['1x5x2x17s32_dweight']).max() > 0  # real values, not zeros
    assert len(np.unique(native_bits['1x5x2x33s16_labels'])) == 6


def test_only_caps_below_avx512_build_the_kernels_without_it(monkeypatch):
    library = native.library
    for cap, flags in (('AVX2', ['-mno-avx512f']), ('avx', ['-mno-avx512f']), ('ALL', []),
                       ('AVX512_CORE', []), ('AVX512_CORE_AMX', []), (None, [])):
        monkeypatch.setitem(startup._state, 'user_cap', cap)
        assert library.isa_flags() == flags, cap
    monkeypatch.setitem(startup._state, 'user_cap', 'AVX2')
    capped = library.library_path()
    monkeypatch.setitem(startup._state, 'user_cap', None)
    assert library.library_path() != capped  # its own build, never the other's
