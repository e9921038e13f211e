"""Peak resident memory of prediction and evaluation per image pixel (docs/hardening.md): the last line is JSON.

    .venv/bin/python bench/memory.py [--width 4000] [--heights 1500,3000] [--net fcn32s | --classes N]

builds a one-image VOC tree of each size (a PNG of patterns and its palette label), measures each mode
below in a fresh process per size and reports the peak RSS and the bytes per pixel that the larger image
adds ((peak difference) / (pixel difference): the part that grows with the area; what grows with the
width only is the same for both). One measurement:

    .venv/bin/python bench/memory.py probe predict|overlay|multiscale VOC_DIR OUT_DIR [--net V | --classes N]

VOC_DIR holds one sample (``val.txt`` naming it, its image and label). predict: reading and
labelling as ``d2lseg predict`` does (``photos._predict_image``); overlay: ``photos.predict_files`` (the label PNG, the
overlay, the legend: all ``d2lseg predict`` writes); multiscale: ``eval_images`` over the split with scales
0.75, 1, 1.25 and their mirrors, as ``d2lseg evaluate --scales 0.75,1,1.25 --flip`` runs it.
The network is a 1x1 convolution (--classes scores, default 21) unless --net names a variant (random weights,
21 classes): what is measured is the pipeline around it, whose memory per pixel does not depend on the network.
``rss_before`` is the peak after loading everything and predicting a 64x64 image (the fixed part).
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile

import d2lseg  # noqa: F401  (first: the threads and AMX MXNet reads once, numpy's names for it)
import mxnet as mx
import numpy as np
from mxnet.gluon import nn
from PIL import Image

from d2lseg.fcn import inference
from d2lseg.command import photos
from d2lseg.data.classes import ClassList
from d2lseg.native.environment import environment
from d2lseg.fcn.metrics import ConfusionMatrix
from d2lseg.fcn.model import build_fcn
from d2lseg.data.palette import voc_palette
from d2lseg.data.voc import iter_split
MODES = ('predict', 'overlay', 'multiscale')


def voc_tree(root, height, width):
    """A VOC tree of one (height, width) image (a PNG of patterns) and its palette label (void rows too)."""
    for sub in ('JPEGImages', 'SegmentationClass', os.path.join('ImageSets', 'Segmentation')):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    y, x = np.mgrid[0:height, 0:width]
    img = np.stack([(x * 7 + y) % 256, (y * 3) % 256, (x ^ y) & 255], axis=-1).astype(np.uint8)
    Image.fromarray(img).save(os.path.join(root, 'JPEGImages', 'big.png'), compress_level=1)
    del img
    label = Image.fromarray(np.where(y % 50 == 0, 255, (x // 97 + y // 89) % 21).astype(np.uint8))
    label.putpalette(voc_palette().reshape(-1).tolist())
    label.save(os.path.join(root, 'SegmentationClass', 'big.png'))
    with open(os.path.join(root, 'ImageSets', 'Segmentation', 'val.txt'), 'w') as f:
        f.write('big\n')
    return str(root)


def peak():
    """This process's peak resident memory in bytes: VmHWM (Linux; reset by exec, unlike ``ru_maxrss``,
    which keeps the peak of the process that forked this one), else ``ru_maxrss``."""
    try:
        with open('/proc/self/status') as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith('VmHWM:'))
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def network(name, classes=21):
    if name:
        net = build_fcn(21, variant=name, pretrained=False)
    else:
        net = nn.HybridSequential()
        net.add(nn.Conv2D(classes, 1))
        net.initialize(mx.init.Xavier())
    net.hybridize()
    return net


def probe(mode, voc_dir, out_dir, net_name=None, classes=21):
    net = network(net_name, classes)
    inference.predict_full(net, np.zeros((64, 64, 3), np.uint8))  # warm up: the fixed part
    before = peak()
    name = open(os.path.join(voc_dir, 'ImageSets', 'Segmentation', 'val.txt')).read().split()[0]
    path = os.path.join(voc_dir, 'JPEGImages', name + '.png')
    if mode == 'predict':
        img, labels = photos._predict_image(net, path, None, True, (320, 480), print)  # as d2lseg predict does
        pixels = img.shape[0] * img.shape[1]
    elif mode == 'overlay':
        assert photos.predict_files(net, [path], out_dir, classes=ClassList.voc(), log=lambda s: None) == 0
        width, height = Image.open(path).size  # the header only
        pixels = width * height
    else:
        cm = ConfusionMatrix(21)
        items = list(iter_split(voc_dir, ignore_boundary=True))  # what evaluate holds: one image and its labels
        pixels = sum(img.shape[0] * img.shape[1] for _, img, _ in items)
        inference.eval_images(net, items, cm, full=True, scales=(0.75, 1.0, 1.25), flip=True)
    print(json.dumps({'mode': mode, 'pixels': pixels, 'rss_before': before, 'rss_peak': peak()}))
    return 0


def measure(mode, trees, out_dir, options=()):
    """Run ``probe`` for ``mode`` on each tree (a fresh process each) -> (their JSON records, bytes per pixel)."""
    found = []
    for k, tree in enumerate(trees):
        out = subprocess.run([sys.executable, os.path.abspath(__file__), 'probe', mode, tree,
                              os.path.join(out_dir, f'{mode}-{k}'), *options], capture_output=True, text=True)
        if out.returncode:
            raise SystemExit(f'bench/memory.py: the {mode} probe failed:\n{out.stderr[-2000:]}')
        found.append(json.loads(out.stdout.strip().splitlines()[-1]))
    small, large = found[0], found[-1]
    return found, (large['rss_peak'] - small['rss_peak']) / (large['pixels'] - small['pixels'])


def main(argv):
    if argv[:1] == ['probe']:
        options = {flag: argv[argv.index(flag) + 1] for flag in ('--net', '--classes') if flag in argv}
        return probe(*argv[1:4], net_name=options.get('--net'), classes=int(options.get('--classes', 21)))
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--width', type=int, default=4000)
    parser.add_argument('--heights', default='1500,3000', help='two image heights (default %(default)s)')
    parser.add_argument('--net', default='fcn32s', help="a variant (random weights), or 'none': a 1x1 convolution")
    parser.add_argument('--classes', type=int, default=21, help='with --net none: its class scores')
    args = parser.parse_args(argv)
    options = ['--classes', str(args.classes)] if args.net == 'none' else ['--net', args.net]
    with tempfile.TemporaryDirectory() as tmp:
        trees = [voc_tree(os.path.join(tmp, h), int(h), args.width) for h in args.heights.split(',')]
        result = {'width': args.width, 'heights': [int(h) for h in args.heights.split(',')], 'net': args.net,
                  'modes': {}}
        for mode in MODES:
            found, per_pixel = measure(mode, trees, tmp, options)
            print(f'{mode}: {per_pixel:.1f} bytes per pixel', file=sys.stderr)
            result['modes'][mode] = {'bytes_per_pixel': round(per_pixel, 2),
                                     'rss_peak_mb': [round(r['rss_peak'] / 2 ** 20) for r in found],
                                     'rss_before_mb': [round(r['rss_before'] / 2 ** 20) for r in found]}
    result['environment'] = environment()
    print(json.dumps(result))
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
