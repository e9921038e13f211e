"""The package's parts of the benchmark, each run by run.py in a process of its own: what the measuring
processes run with, the data-fed training loop and inference (fp32, INT8, bfloat16; batches and whole
images), the GEMM bound, peak RSS, the A/B of the speed options, and the package's timing server.

d2lseg is imported before MXNet: it sets the threads (``OMP_NUM_THREADS``, which run.py sets from
``--threads`` before it imports this module) and AMX that MXNet reads when it loads.
"""
import os
import resource
import time

from d2lseg.training import engine
from d2lseg.native import environment
from d2lseg import native
from d2lseg.core import startup
from d2lseg.training.config import Recipe
from d2lseg.core.errors import D2lsegError
from d2lseg.fcn.inference import label_graph, predict_full
from d2lseg.fcn.model import build_fcn
from d2lseg.deploy.quantization import calibration_batch, quantize, to_bfloat16
from d2lseg.data.synthetic import make_synthetic_voc
from d2lseg.data.voc import VOC_SUBDIR, iter_split
import mxnet as mx
from mxnet import nd

from flops import forward_flops
from protocol import BATCH, CROP, GEMM_N, NUM_CLASSES, serve

FULL_SIZE = (375, 500)  # a typical VOC image


def part_mxnet_env(args):
    """What the MXNet parts' processes run with: AMX (on, or why not) and MXNet's OpenMP threads, as
    loaded by this module's imports (d2lseg first)."""
    return {'amx': startup.amx(), 'mxnet_threads': environment.mxnet_threads()}


def _timed(fn, reps, warmup=1):
    """Seconds per call of ``fn``: the best of ``reps`` timed calls after ``warmup`` calls (the least
    disturbed by anything else running on the machine)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        tic = time.perf_counter()
        fn()
        times.append(time.perf_counter() - tic)
    return min(times)


def _batch():
    """An in-memory batch: (BATCH, 3) + CROP normal images and random class labels, float32 NDArrays."""
    return (nd.random.normal(shape=(BATCH, 3) + CROP),
            nd.random.randint(0, NUM_CLASSES, shape=(BATCH,) + CROP).astype('float32'))


def _recipe(data_dir=None):
    return Recipe(data_dir=data_dir or '', synthetic=bool(data_dir), crop=CROP, batch_size=BATCH,
                  pretrained=False, ctx='cpu', workers=2)


def ensure_data(data_dir, n_train):
    """A synthetic VOC set of VOC-sized (375x500) images under ``data_dir`` (made once, then reused)."""
    split = os.path.join(data_dir, VOC_SUBDIR, 'ImageSets', 'Segmentation', 'train.txt')
    if os.path.isfile(split) and len(open(split).read().split()) >= n_train:
        return
    make_synthetic_voc(data_dir, n_train=n_train, n_val=BATCH, sizes=(FULL_SIZE,), seed=0, progress=False,
                       overwrite=True)  # the benchmark's own set, grown when a run needs more images


def gemm_gflops(reps):
    """float32 GEMM throughput of MXNet: a 1x1 convolution (oneDNN) and nd.dot (bundled OpenBLAS), the
    larger of the two as ``gemm_gflops`` and which it was as ``gemm_source``."""
    x = nd.random.uniform(shape=(8, 512, 60, 80))
    w = nd.random.uniform(shape=(512, 512, 1, 1))
    conv = _timed(lambda: nd.Convolution(x, w, kernel=(1, 1), num_filter=512, no_bias=True).wait_to_read(), reps)
    a, b = nd.random.uniform(shape=(GEMM_N, GEMM_N)), nd.random.uniform(shape=(GEMM_N, GEMM_N))
    dot = _timed(lambda: nd.dot(a, b).wait_to_read(), reps)
    mx.nd.waitall()
    res = {'conv1x1_gflops': 2 * 8 * 512 * 512 * 60 * 80 / conv / 1e9, 'dot_gflops': 2 * GEMM_N ** 3 / dot / 1e9}
    res['gemm_gflops'] = max(res['conv1x1_gflops'], res['dot_gflops'])
    res['gemm_source'] = ('MXNet float32 1x1 Convolution (oneDNN), (8,512,60,80) x 512 filters'
                          if res['gemm_gflops'] == res['conv1x1_gflops'] else 'MXNet float32 nd.dot 2048x2048')
    return res


def part_mxnet(args):
    """Training (data-fed fit-style loop), batch / full-image / INT8 / bfloat16 inference, GEMM: one JSON dict."""
    res = {'threads': args.threads,  # run.py's main settled it: --threads, else d2lseg's OMP_NUM_THREADS
           'mxnet': mx.__version__, 'openblas_coretype': os.environ.get('OPENBLAS_CORETYPE')}
    ensure_data(args.data_dir, BATCH * (args.steps + 2))
    run = engine.prepare(_recipe(args.data_dir))
    res['fast_upsampling'] = run.net.upsample.__class__.__name__ == 'FastUpsampling'
    res['native_kernels'] = run.net[-1].uses_native()  # the compiled kernels: upsampling, loss, argmax
    res['fused_upsampling_argmax'] = label_graph(run.net) is not None  # inference.predict_batch
    res['forward_gflop_per_img'] = forward_flops(build_fcn(NUM_CLASSES, pretrained=False), (3,) + CROP) / 1e9
    res.update(_time_training(run, args.steps))
    res.update(_time_inference(run, args))
    res.update(gemm_gflops(3))
    return res


def _time_training(run, steps):
    """prepare's DataLoader feeding train_step, exactly as fit's loop: best and mean images/s, and the
    share of the loop spent waiting for data. The loader's iterator is dropped on return; its threads
    finish their prefetch during the first of the inference repetitions that follow."""
    wait = compute = 0.0
    per_step = []
    it = iter(run.train_iter)
    for i in range(steps + 2):
        tic = time.perf_counter()
        batch = next(it)
        tac = time.perf_counter()
        _, _, _, bs = engine.train_step(run, batch)
        toc = time.perf_counter()
        if i >= 2:  # the first steps build the graph and allocate
            wait += tac - tic
            compute += toc - tac
            per_step.append((toc - tic) / bs)
    return {'train_img_s': 1 / min(per_step),  # best step, as _timed
            'train_img_s_mean': len(per_step) / sum(per_step),
            'train_data_wait_fraction': wait / (wait + compute)}


def _time_inference(run, args):
    """Batch inference through engine.evaluate (validation path: forward, argmax, confusion matrix)
    and whole VOC-sized images through predict_full (4 tiles of 320x480 per 375x500 image), in float32,
    INT8 (calibrated on training images) and bfloat16 (null, and why, where oneDNN has none)."""
    net, ctx, reps = run.net, run.ctx, args.steps
    X = nd.random.normal(shape=(BATCH, 3) + CROP)
    y = nd.zeros((BATCH,) + CROP)
    images = [img for _, img, _ in iter_split(os.path.join(args.data_dir, VOC_SUBDIR), is_train=True, limit=BATCH)]
    n_full = 4 if args.quick else BATCH
    res = {}

    def rates(tag, model, full_reps):
        sec = _timed(lambda: engine.evaluate([(X, y)], model, ctx, NUM_CLASSES), reps)
        res[f'infer{tag}_img_s'] = BATCH / sec
        sec = _timed(lambda: [predict_full(model, img, CROP, ctx) for img in images[:n_full]], full_reps)
        res[f'infer_full{tag}_img_s'] = n_full / sec

    rates('', net, max(1, reps // 2))
    tic = time.perf_counter()
    qnet = quantize(net, calibration_batch(images, CROP), calib_mode='naive')
    res['int8_quantize_s'] = time.perf_counter() - tic
    rates('_int8', qnet, 1)
    bnet = _bfloat16_or_reason(to_bfloat16, net, res)
    if bnet is not None:
        rates('_bf16', bnet, 1)
    return res


def _bfloat16_or_reason(convert, net, res):
    """``convert(net)``, or None with ``res['bf16_unavailable']`` saying why (e.g. an AVX2 CPU)."""
    try:
        return convert(net)
    except D2lsegError as e:
        res['infer_bf16_img_s'] = res['infer_full_bf16_img_s'] = None
        res['bf16_unavailable'] = str(e)
        return None


def serve_mxnet(args):
    """The package's side of the paired timing, on in-memory batches: ``engine.train_step``,
    ``engine.evaluate`` (fp32) and ``engine.evaluate`` of ``quantization.quantize``'s INT8 network
    and of ``quantization.to_bfloat16``'s network (where oneDNN has bfloat16)."""
    run = engine.prepare(_recipe(), data=False)
    X, y = _batch()
    engine.train_step(run, (X, y))  # finish the deferred initialisation before quantizing
    qnet = quantize(run.net, X, calib_mode='naive')
    bnet = _bfloat16_or_reason(to_bfloat16, run.net, {})
    a, b = nd.random.normal(shape=(GEMM_N, GEMM_N)), nd.random.normal(shape=(GEMM_N, GEMM_N))
    fns = {'train': lambda: engine.train_step(run, (X, y)),
           'infer': lambda: engine.evaluate([(X, y)], run.net, run.ctx, NUM_CLASSES),
           'int8': lambda: engine.evaluate([(X, y)], qnet, run.ctx, NUM_CLASSES),
           'gemm': lambda: nd.dot(a, b).wait_to_read()}
    if bnet is not None:
        fns['bf16'] = lambda: engine.evaluate([(X, y)], bnet, run.ctx, NUM_CLASSES)
    return serve(fns)


def part_mxnet_rss(args):
    """Peak RSS of a process that only trains (prepare + fit-style steps on in-memory batches)."""
    run = engine.prepare(_recipe(), data=False)
    X, y = _batch()
    for _ in range(3):
        engine.train_step(run, (X, y))
    return {'peak_rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def part_mxnet_ab(args):
    """A/B of the speed options on in-memory batches: the chapter's upsampling, the fast one on MXNet's
    operators, and the native kernels (train and infer); for inference also the native network
    without the fused upsampling + argmax. Run with D2LSEG_NATIVE unset. The first two run within
    ``native.override(False)``: MXNet's operators throughout (upsampling, loss and argmax)."""
    X, y = _batch()
    res = {}
    for fast, use_native in ((False, False), (True, False), (True, True)):
        recipe = _recipe()
        recipe.fast_upsampling = fast
        tag = 'native' if use_native else ('fast' if fast else 'chapter')
        with native.override(use_native):
            run = engine.prepare(recipe, data=False)
            run.loss.hybridize()
            res[f'ab_train_img_s_{tag}_upsampling'] = BATCH / _timed(lambda: engine.train_step(run, (X, y)),
                                                                     args.steps, warmup=2)
            res[f'ab_infer_img_s_{tag}_upsampling'] = BATCH / _timed(
                lambda: engine.evaluate([(X, y)], run.net, run.ctx, NUM_CLASSES), args.steps)
            if use_native:  # the same network without the fused upsampling + argmax (a plain callable is not fused)
                res['ab_infer_img_s_native_unfused'] = BATCH / _timed(
                    lambda: engine.evaluate([(X, y)], lambda x: run.net(x), run.ctx, NUM_CLASSES), args.steps)
    return res
