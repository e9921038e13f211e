"""Speed benchmark: the package's FCN (fcn32s, 320x480, batch 8, float32) against the same FCN in PyTorch.

Run from the repo root in the venv (machine otherwise idle):

    .venv/bin/python bench/run.py [--quick]

Every figure goes through the package's own code: ``training.prepare`` + ``training.train_step`` (the
step ``fit`` runs) fed by ``prepare``'s DataLoader, ``training.evaluate`` (batch inference),
``inference.predict_full`` (whole VOC-sized images by tiles), ``quantization.quantize`` (INT8) and
``quantization.to_bfloat16`` (bfloat16; fast on CPUs with AMX, which ``import d2lseg`` enables).
Each measurement runs in its own subprocess (MXNet and PyTorch never share a process; peak RSS is
that of a process that only trains). The ratios to the peer come from a paired timing: both warm in
their own processes, timed call for call in alternation, so that the machine's drift hits both alike.
The LAST line printed is one JSON object; see bench/README.md.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CROP = (320, 480)
BATCH = 8
FULL_SIZE = (375, 500)  # a typical VOC image
NUM_CLASSES = 21
GEMM_N = 2048  # the GEMM bound: float32 nd.dot of two GEMM_N x GEMM_N matrices


def _threads():
    import d2lseg  # noqa: F401  (sets OMP_NUM_THREADS and AMX before MXNet loads)
    return int(os.environ['OMP_NUM_THREADS'])


def part_mxnet_env(args):
    """What the MXNet parts' processes run with: AMX (on, or why not) and MXNet's OpenMP threads. It
    imports MXNet first, as the other parts do: ``main`` must have loaded d2lseg before any part."""
    import mxnet  # noqa: F401
    from d2lseg import environment, startup
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


# ----------------------------------------------------------------------------------------- MXNet
def _batch():
    """An in-memory batch: (BATCH, 3) + CROP normal images and random class labels, float32 NDArrays."""
    from mxnet import nd
    return (nd.random.normal(shape=(BATCH, 3) + CROP),
            nd.random.randint(0, NUM_CLASSES, shape=(BATCH,) + CROP).astype('float32'))


def _recipe(data_dir=None):
    from d2lseg.training import Recipe
    return Recipe(data_dir=data_dir or '', synthetic=bool(data_dir), crop=CROP, batch_size=BATCH,
                  pretrained=False, ctx='cpu', workers=2)


def ensure_data(data_dir, n_train):
    """A synthetic VOC set of VOC-sized (375x500) images under ``data_dir`` (made once, then reused)."""
    from d2lseg.synthetic import make_synthetic_voc
    from d2lseg.voc import VOC_SUBDIR
    split = os.path.join(data_dir, VOC_SUBDIR, 'ImageSets', 'Segmentation', 'train.txt')
    if os.path.isfile(split) and len(open(split).read().split()) >= n_train:
        return
    make_synthetic_voc(data_dir, n_train=n_train, n_val=BATCH, sizes=(FULL_SIZE,), seed=0, progress=False,
                       overwrite=True)  # the benchmark's own set, grown when a run needs more images


def forward_flops(net, shape):
    """Multiply-adds x 2 of every (de)convolution and dense layer of ``net`` for one input of ``shape``."""
    import mxnet as mx
    sym = net(mx.sym.var('data'))
    internals = sym.get_internals()
    _, out_shapes, _ = internals.infer_shape(data=(1,) + shape)
    shapes = dict(zip(internals.list_outputs(), out_shapes))
    arg_shapes = dict(zip(sym.list_arguments(), sym.infer_shape(data=(1,) + shape)[0]))
    nodes = json.loads(sym.tojson())['nodes']
    total = 0
    for node in nodes:
        if node['op'] not in ('Convolution', 'Deconvolution', 'FullyConnected'):
            continue
        weight = arg_shapes[nodes[node['inputs'][1][0]]['name']]
        out = shapes[node['name'] + '_output']
        if node['op'] == 'Deconvolution':  # every input pixel meets the whole kernel
            data = shapes[nodes[node['inputs'][0][0]]['name'] + '_output'] \
                if nodes[node['inputs'][0][0]]['op'] != 'null' else (1,) + shape
            total += 2 * data[2] * data[3] * weight[0] * weight[1] * weight[2] * weight[3]
        else:
            per_out = 1
            for d in weight[1:]:
                per_out *= d
            total += 2 * per_out * out[1] * (out[2] * out[3] if len(out) == 4 else 1)
    return total


def gemm_gflops(reps):
    """float32 GEMM throughput of MXNet: a 1x1 convolution (oneDNN) and nd.dot (bundled OpenBLAS)."""
    import mxnet as mx
    from mxnet import nd
    x = nd.random.uniform(shape=(8, 512, 60, 80))
    w = nd.random.uniform(shape=(512, 512, 1, 1))
    conv = _timed(lambda: nd.Convolution(x, w, kernel=(1, 1), num_filter=512, no_bias=True).wait_to_read(), reps)
    a, b = nd.random.uniform(shape=(GEMM_N, GEMM_N)), nd.random.uniform(shape=(GEMM_N, GEMM_N))
    dot = _timed(lambda: nd.dot(a, b).wait_to_read(), reps)
    mx.nd.waitall()
    return 2 * 8 * 512 * 512 * 60 * 80 / conv / 1e9, 2 * GEMM_N ** 3 / dot / 1e9


def part_mxnet(args):
    """Training (data-fed fit-style loop), batch / full-image / INT8 inference, GEMM: one JSON dict."""
    import mxnet as mx
    from mxnet import nd
    from d2lseg import training
    from d2lseg.inference import label_graph, predict_full
    from d2lseg.model import build_fcn
    from d2lseg.quantization import calibration_batch, quantize, to_bfloat16
    from d2lseg.voc import VOC_SUBDIR, iter_split
    res = {'threads': _threads(), 'mxnet': mx.__version__,
           'openblas_coretype': os.environ.get('OPENBLAS_CORETYPE')}
    steps = args.steps
    ensure_data(args.data_dir, BATCH * (steps + 2))
    run = training.prepare(_recipe(args.data_dir))
    res['fast_upsampling'] = run.net.__class__.__name__ != 'HybridSequential'
    res['native_kernels'] = run.net[-1].uses_native()  # d2lseg/kernels.py: upsampling, loss, argmax
    res['fused_upsampling_argmax'] = label_graph(run.net) is not None  # inference.predict_batch
    res['forward_gflop_per_img'] = forward_flops(build_fcn(NUM_CLASSES, pretrained=False), (3,) + CROP) / 1e9

    # training: prepare's DataLoader feeding train_step, exactly as fit's loop; data wait vs compute
    wait = compute = 0.0
    per_step = []
    it = iter(run.train_iter)
    for i in range(steps + 2):
        tic = time.perf_counter()
        batch = next(it)
        tac = time.perf_counter()
        _, _, _, bs = training.train_step(run, batch)
        toc = time.perf_counter()
        if i >= 2:  # the first steps build the graph and allocate
            wait += tac - tic
            compute += toc - tac
            per_step.append((toc - tic) / bs)
    res['train_img_s'] = 1 / min(per_step)                 # best step, as _timed
    res['train_img_s_mean'] = len(per_step) / sum(per_step)
    res['train_data_wait_fraction'] = wait / (wait + compute)

    # batch inference through training.evaluate (validation path: forward, argmax, confusion matrix)
    net, ctx = run.net, run.ctx
    X = nd.random.normal(shape=(BATCH, 3) + CROP)
    y = nd.zeros((BATCH,) + CROP)
    del it  # the loader's threads finish their prefetch during the first of these repetitions
    reps = steps
    sec = _timed(lambda: training.evaluate(net, [(X, y)], ctx, NUM_CLASSES), reps)
    res['infer_img_s'] = BATCH / sec

    # whole VOC-sized images through predict_full (4 tiles of 320x480 per 375x500 image)
    voc_dir = os.path.join(args.data_dir, VOC_SUBDIR)
    images = [img for _, img, _ in iter_split(voc_dir, is_train=True, limit=BATCH)]
    n_full = 4 if args.quick else BATCH
    sec = _timed(lambda: [predict_full(net, img, CROP, ctx) for img in images[:n_full]], max(1, reps // 2))
    res['infer_full_img_s'] = n_full / sec

    # INT8: calibrated on training images, then the same evaluate path
    tic = time.perf_counter()
    qnet = quantize(net, calibration_batch(images, CROP), calib_mode='naive')
    res['int8_quantize_s'] = time.perf_counter() - tic
    sec = _timed(lambda: training.evaluate(qnet, [(X, y)], ctx, NUM_CLASSES), reps)
    res['infer_int8_img_s'] = BATCH / sec
    sec = _timed(lambda: [predict_full(qnet, img, CROP, ctx) for img in images[:n_full]], 1)
    res['infer_full_int8_img_s'] = n_full / sec

    # bfloat16: the same paths; null (and why) where oneDNN has no bfloat16 convolutions
    bnet = _bfloat16_or_reason(to_bfloat16, net, res)
    if bnet is not None:
        sec = _timed(lambda: training.evaluate(bnet, [(X, y)], ctx, NUM_CLASSES), reps)
        res['infer_bf16_img_s'] = BATCH / sec
        sec = _timed(lambda: [predict_full(bnet, img, CROP, ctx) for img in images[:n_full]], 1)
        res['infer_full_bf16_img_s'] = n_full / sec

    res['conv1x1_gflops'], res['dot_gflops'] = gemm_gflops(3)
    res['gemm_gflops'] = max(res['conv1x1_gflops'], res['dot_gflops'])
    res['gemm_source'] = ('MXNet float32 1x1 Convolution (oneDNN), (8,512,60,80) x 512 filters'
                          if res['gemm_gflops'] == res['conv1x1_gflops'] else 'MXNet float32 nd.dot 2048x2048')
    return res


def _bfloat16_or_reason(convert, net, res):
    """``convert(net)``, or None with ``res['bf16_unavailable']`` saying why (e.g. an AVX2 CPU)."""
    from d2lseg.errors import D2lsegError
    try:
        return convert(net)
    except D2lsegError as e:
        res['infer_bf16_img_s'] = res['infer_full_bf16_img_s'] = None
        res['bf16_unavailable'] = str(e)
        return None


def serve_mxnet(args):
    """The package's side of the paired timing, on in-memory batches: ``training.train_step``,
    ``training.evaluate`` (fp32) and ``training.evaluate`` of ``quantization.quantize``'s INT8 network
    and of ``quantization.to_bfloat16``'s network (where oneDNN has bfloat16)."""
    from mxnet import nd
    from d2lseg import training
    from d2lseg.quantization import quantize, to_bfloat16
    run = training.prepare(_recipe(), data=False)
    X, y = _batch()
    training.train_step(run, (X, y))  # finish the deferred initialisation before quantizing
    qnet = quantize(run.net, X, calib_mode='naive')
    bnet = _bfloat16_or_reason(to_bfloat16, run.net, {})
    a, b = nd.random.normal(shape=(GEMM_N, GEMM_N)), nd.random.normal(shape=(GEMM_N, GEMM_N))
    fns = {'train': lambda: training.train_step(run, (X, y)),
           'infer': lambda: training.evaluate(run.net, [(X, y)], run.ctx, NUM_CLASSES),
           'int8': lambda: training.evaluate(qnet, [(X, y)], run.ctx, NUM_CLASSES),
           'gemm': lambda: nd.dot(a, b).wait_to_read()}
    if bnet is not None:
        fns['bf16'] = lambda: training.evaluate(bnet, [(X, y)], run.ctx, NUM_CLASSES)
    return _serve(fns)


def part_mxnet_rss(args):
    """Peak RSS of a process that only trains (prepare + fit-style steps on in-memory batches)."""
    from d2lseg import training
    run = training.prepare(_recipe(), data=False)
    X, y = _batch()
    for _ in range(3):
        training.train_step(run, (X, y))
    return {'peak_rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


# ----------------------------------------------------------------------------------------- PyTorch
def torch_fcn(num_classes=NUM_CLASSES):
    """The same FCN in PyTorch: ResNet-18 v2 (pre-activation, as MXNet's model zoo) to the stride-32
    features + final BN/ReLU, a 1x1 conv to the classes, ConvTranspose2d(64, stride 32, padding 16)."""
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.bn1, self.bn2 = nn.BatchNorm2d(cin), nn.BatchNorm2d(cout)
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.down = nn.Conv2d(cin, cout, 1, stride, bias=False) if stride != 1 or cin != cout else None

        def forward(self, x):
            a = torch.relu(self.bn1(x))
            residual = self.down(a) if self.down is not None else x
            return self.conv2(torch.relu(self.bn2(self.conv1(a)))) + residual

    layers = [nn.BatchNorm2d(3, affine=False), nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64),
              nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1)]
    for cin, cout, stride in ((64, 64, 1), (64, 128, 2), (128, 256, 2), (256, 512, 2)):
        layers += [Block(cin, cout, stride), Block(cout, cout, 1)]
    layers += [nn.BatchNorm2d(512), nn.ReLU(inplace=True), nn.Conv2d(512, num_classes, 1),
               nn.ConvTranspose2d(num_classes, num_classes, 64, stride=32, padding=16)]
    return nn.Sequential(*layers)


def _torch_setup(threads, compiled=False):
    import torch
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    net = torch_fcn().to(memory_format=torch.channels_last)
    model = torch.compile(net) if compiled else net
    opt = torch.optim.SGD(net.parameters(), lr=0.1, weight_decay=1e-3)
    loss_fn = torch.nn.CrossEntropyLoss(ignore_index=255)
    X = torch.randn(BATCH, 3, *CROP).to(memory_format=torch.channels_last)
    y = torch.randint(0, NUM_CLASSES, (BATCH,) + CROP)

    def step():
        opt.zero_grad(set_to_none=True)
        out = model(X)
        loss = loss_fn(out, y)
        loss.backward()
        opt.step()
        # the same bookkeeping as the package's step: loss value and pixel accuracy
        return loss.item(), (out.argmax(1) == y).sum().item()
    return torch, net, model, X, step


def serve_torch(args):
    """The peer's side of the paired timing: an eager training step, eager and (unless --quick)
    ``torch.compile``d inference (forward + argmax). Compiled training measured slower here (0.44 vs
    1.19 img/s) and compiles for minutes, so training is eager."""
    torch, net, model, X, step = _torch_setup(args.threads)

    def train():
        net.train()
        step()

    def infer_with(m, module):
        def infer():
            module.eval()
            with torch.inference_mode():
                m(X).argmax(1)
        return infer
    fns = {'train': train, 'infer_eager': infer_with(net, net)}
    if not args.quick:
        _, net_c, model_c, _, _ = _torch_setup(args.threads, compiled=True)
        fns['infer_compiled'] = infer_with(model_c, net_c)
    return _serve(fns, {'torch': torch.__version__})


def part_torch_rss(args):
    torch, net, model, X, step = _torch_setup(args.threads)  # eager: compiling costs memory of its own
    for _ in range(3):
        step()
    return {'peer_peak_rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def part_mxnet_ab(args):
    """A/B of the speed options on in-memory batches: the chapter's upsampling, the fast one on MXNet's
    operators, and the native kernels (train and infer); for inference also the native network
    without the fused upsampling + argmax. Run with D2LSEG_NATIVE unset."""
    from d2lseg import training
    X, y = _batch()
    res = {}
    for fast, native in ((False, False), (True, False), (True, True)):
        recipe = _recipe()
        recipe.fast_upsampling = fast
        run = training.prepare(recipe, data=False)
        if fast:
            run.net[-1].native = native
            run.net.hybridize(static_alloc=True, static_shape=True)
        run.loss.native = native
        run.loss.hybridize()
        tag = 'native' if native else ('fast' if fast else 'chapter')
        res[f'ab_train_img_s_{tag}_upsampling'] = BATCH / _timed(lambda: training.train_step(run, (X, y)),
                                                                 args.steps, warmup=2)
        res[f'ab_infer_img_s_{tag}_upsampling'] = BATCH / _timed(
            lambda: training.evaluate(run.net, [(X, y)], run.ctx, NUM_CLASSES), args.steps)
        if native:  # the same network without the fused upsampling + argmax (a plain callable is not fused)
            res['ab_infer_img_s_native_unfused'] = BATCH / _timed(
                lambda: training.evaluate(lambda x: run.net(x), [(X, y)], run.ctx, NUM_CLASSES), args.steps)
    return res


# ----------------------------------------------------------------------------------------- paired
def _serve(fns, info=None):
    """A timing server: warm every call up, print the ready line, then per stdin line (a key of
    ``fns``) run that call once and print its seconds."""
    for fn in fns.values():
        fn()
        fn()
    print(json.dumps({'ready': sorted(fns), **(info or {})}), flush=True)
    for line in sys.stdin:
        fn = fns[line.strip()]
        tic = time.perf_counter()
        fn()
        print(time.perf_counter() - tic, flush=True)


class _Server:
    """A serve-* part running in its own interpreter; ``time(kind)`` -> seconds of one call."""

    def __init__(self, python, part, args):
        self.err = tempfile.TemporaryFile(mode='w+')
        cmd = [python, os.path.abspath(__file__), '--part', part, '--threads', str(args.threads)]
        self.proc = subprocess.Popen(cmd + (['--quick'] if args.quick else []), cwd=ROOT, text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.err)
        self.part = part

    def ready(self):
        for line in self.proc.stdout:
            if line.startswith('{'):
                return json.loads(line)
        self._fail()

    def time(self, kind):
        self.proc.stdin.write(kind + '\n')
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            self._fail()
        return float(line)

    def close(self):
        if self.proc.stdin:
            self.proc.stdin.close()
        self.proc.wait()

    def _fail(self):
        self.proc.wait()
        self.err.seek(0)
        tail = self.err.read().strip().splitlines()[-3:]
        raise RuntimeError(f'bench part {self.part} failed (exit {self.proc.returncode}): ' + ' | '.join(tail))


def _alternate(plan, reps):
    """Time the (server, kind) calls of ``plan`` in turn, ``reps`` times, the order reversed every other
    repetition -> {(server name, kind): [seconds, ...]}."""
    times = {(server.part, kind): [] for server, kind in plan}
    for rep in range(reps):
        for server, kind in (plan if rep % 2 == 0 else plan[::-1]):
            time.sleep(0.05)  # the other process's threads stop spinning
            times[server.part, kind].append(server.time(kind))
    return times


def paired_figures(times):
    """Images/s and ratios from ``_alternate``'s seconds of serve-mxnet's train/infer/int8/gemm[/bf16] and
    serve-torch's train/infer_eager[/infer_compiled]: each rate is its best call; ``*_vs_peer`` is the
    median over repetitions of the speed ratio within a repetition (for inference against the peer's
    faster call of that repetition), ``*_vs_peer_best`` divides best by best; ``bf16_vs_fp32`` the
    same median against the package's own float32 inference; ``paired_gemm_gflops`` is the GEMM bound
    timed in the same alternation."""
    import statistics
    rate = {key: BATCH / min(t) for key, t in times.items()}
    peer_infer = [k for k in ('infer_eager', 'infer_compiled') if ('serve-torch', k) in rate]
    best_infer = max(peer_infer, key=lambda k: rate['serve-torch', k])
    res = {'paired_train_img_s': rate['serve-mxnet', 'train'], 'paired_infer_img_s': rate['serve-mxnet', 'infer'],
           'paired_gemm_gflops': 2 * GEMM_N ** 3 / min(times['serve-mxnet', 'gemm']) / 1e9,
           'paired_int8_img_s': rate['serve-mxnet', 'int8'],
           'peer_train_img_s': rate['serve-torch', 'train'], 'peer_train_config': 'eager, channels_last',
           'peer_infer_img_s': rate['serve-torch', best_infer],
           'peer_infer_config': best_infer.split('_')[1] + ', channels_last'}
    res.update({f'peer_infer_img_s_{k.split("_")[1]}': rate['serve-torch', k] for k in peer_infer})
    peer_infer_times = [min(ts) for ts in zip(*(times['serve-torch', k] for k in peer_infer))]
    low = [('int8', peer_infer_times)] + ([('bf16', peer_infer_times)] if ('serve-mxnet', 'bf16') in times else [])
    if ('serve-mxnet', 'bf16') in times:
        res['paired_bf16_img_s'] = rate['serve-mxnet', 'bf16']
        res['bf16_vs_fp32'] = statistics.median(
            f / b for f, b in zip(times['serve-mxnet', 'infer'], times['serve-mxnet', 'bf16']))
    for kind, peer_times in [('train', times['serve-torch', 'train']), ('infer', peer_infer_times)] + low:
        peer_rate = res['peer_train_img_s' if kind == 'train' else 'peer_infer_img_s']
        res[f'{kind}_vs_peer'] = statistics.median(p / o for p, o in zip(peer_times, times['serve-mxnet', kind]))
        res[f'{kind}_vs_peer_best'] = rate['serve-mxnet', kind] / peer_rate
    return res


def paired(args):
    """The package and the peer, each warm in its own process, timed call for call in alternation
    (the order reversed every other repetition): a shared machine's speed drifts within minutes, and this
    way both see the same drift. -> best images/s of each and the ratios."""
    tic = time.perf_counter()
    ours, peer = _Server(sys.executable, 'serve-mxnet', args), _Server(args.peer_python, 'serve-torch', args)
    try:
        kinds_ours, info = ours.ready(), peer.ready()
        plan = [(ours, 'train'), (peer, 'train'), (ours, 'infer')] + [
            (peer, k) for k in ('infer_eager', 'infer_compiled') if k in info['ready']] + [
            (ours, 'int8')] + [(ours, 'bf16')] * ('bf16' in kinds_ours['ready']) + [(ours, 'gemm')]
        assert all(k in kinds_ours['ready'] for s, k in plan if s is ours)
        times = _alternate(plan, args.pairs)
    finally:
        ours.close()
        peer.close()
    res = paired_figures(times)
    res['torch'], res['paired_reps'] = info['torch'], args.pairs
    print(f'  paired: {time.perf_counter() - tic:.0f} s', file=sys.stderr, flush=True)
    return res


PARTS = {'mxnet-env': part_mxnet_env, 'mxnet-ab': part_mxnet_ab, 'mxnet': part_mxnet, 'mxnet-rss': part_mxnet_rss, 'torch-rss': part_torch_rss,
         'serve-mxnet': serve_mxnet, 'serve-torch': serve_torch}


# ----------------------------------------------------------------------------------------- driver
def _child(part, args):
    """Run one part in a fresh interpreter (the peer's for PyTorch parts); its last stdout line is a JSON dict."""
    python = args.peer_python if part.startswith('torch') else sys.executable
    cmd = [python, os.path.abspath(__file__), '--part', part, '--steps', str(args.steps),
           '--threads', str(args.threads), '--data-dir', args.data_dir] + (['--quick'] if args.quick else [])
    tic = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise RuntimeError(f'bench part {part} failed (exit {proc.returncode}): ' + ' | '.join(tail))
    print(f'  {part}: {time.perf_counter() - tic:.0f} s', file=sys.stderr, flush=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


PEER_VENV_PYTHON = os.path.join(HERE, '.venv-peer', 'bin', 'python')


def _peer_python(arg):
    """The interpreter that has PyTorch: --peer-python, $D2LSEG_PEER_PYTHON, bench/.venv-peer, or this one.

    PyTorch >= 2 must not share the package's venv: gluoncv refuses to import beside it.
    """
    for candidate in (arg, os.environ.get('D2LSEG_PEER_PYTHON'), PEER_VENV_PYTHON):
        if candidate and os.path.exists(candidate):
            return candidate
    return sys.executable


def _have_torch(python):
    return subprocess.run([python, '-c', 'import torch'], capture_output=True).returncode == 0


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--quick', action='store_true', help='fewer repetitions (about half the time)')
    p.add_argument('--ab', action='store_true',
                   help='also time the chapter vs the fast upsampling vs the kernels, and the fused argmax')
    p.add_argument('--part', choices=sorted(PARTS), help=argparse.SUPPRESS)
    p.add_argument('--steps', type=int, default=None, help='timed training steps (default 6, --quick 3)')
    p.add_argument('--pairs', type=int, default=None,
                   help='repetitions of the paired timing against the peer (default 10, --quick 4)')
    p.add_argument('--threads', type=int, default=None, help='threads for both frameworks (default: all CPUs)')
    p.add_argument('--data-dir', default=os.path.join(tempfile.gettempdir(), 'd2lseg-bench-data'),
                   help='synthetic VOC-sized data set (made when missing, default %(default)s)')
    p.add_argument('--peer-python', help='python with torch for the peer (default: $D2LSEG_PEER_PYTHON, '
                   'bench/.venv-peer/bin/python, else this one)')
    args = p.parse_args(argv)
    args.steps = args.steps or (3 if args.quick else 6)
    args.pairs = args.pairs or (4 if args.quick else 10)
    if args.threads:
        os.environ['OMP_NUM_THREADS'] = str(args.threads)
    if not (args.part or '').startswith(('torch', 'serve-torch')):  # those run in the peer's Python
        threads = _threads()  # d2lseg before MXNet: threads and AMX (d2lseg.startup), in every process
        args.threads = args.threads or threads
    if args.part:
        out = PARTS[args.part](args)
        if out is not None:  # serve-* parts answer on stdout as they go
            print(json.dumps(out))
        return 0

    tic = time.perf_counter()
    res = {}
    res.update(_child('mxnet-env', args))  # 'amx': whether the measuring processes could use it, and why
    res.update(_child('mxnet', args))
    res.update(_child('mxnet-rss', args))
    if args.ab:
        res.update(_child('mxnet-ab', args))
    res['train_gflops_fraction'] = 3 * res['forward_gflop_per_img'] * res['train_img_s'] / res['gemm_gflops']
    peer_keys = ('peer_train_img_s', 'peer_infer_img_s', 'peer_peak_rss_mb')
    args.peer_python = _peer_python(args.peer_python)
    if _have_torch(args.peer_python):
        res.update(paired(args))
        res.update(_child('torch-rss', args))
        res['rss_vs_peer'] = res['peak_rss_mb'] / res['peer_peak_rss_mb']
    else:
        print(f'peer: PyTorch is not importable from {args.peer_python} (make bench/.venv-peer, see '
              'bench/README.md); peer figures are null', flush=True)
        res.update({k: None for k in peer_keys})
    res['batch'], res['crop'], res['variant'], res['quick'] = BATCH, list(CROP), 'fcn32s', args.quick
    res['bench_seconds'] = time.perf_counter() - tic
    from d2lseg.environment import environment
    res['environment'] = environment()  # what produced these figures (CPU, oneDNN ISA, threads, kernels)
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in res.items()}))
    return 0


if __name__ == '__main__':
    sys.path.insert(0, ROOT)
    sys.exit(main())
