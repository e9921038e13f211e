"""Peak resident memory of one prediction or evaluation, in a fresh process; prints one JSON line.

    python memory_probe.py predict|overlay|multiscale VOC_DIR OUT_DIR [--net fcn32s | --classes N]

VOC_DIR holds one sample (``val.txt`` naming it, its image and label). predict: ``read_image`` and
``predict_full`` as ``d2lseg predict`` runs them; overlay: ``photos.predict_files`` (the label PNG, the
overlay, the legend: all ``d2lseg predict`` writes); multiscale: ``eval_images`` over the split with scales
0.75, 1, 1.25 and their mirrors, as ``d2lseg evaluate --scales 0.75,1,1.25 --flip`` runs it.
The network is a 1x1 convolution (--classes scores, default 21) unless --net names a variant (random weights,
21 classes): what is measured is the pipeline around it, whose memory per pixel does not depend on the network.
``rss_before`` is the peak after loading everything and predicting a 64x64 image (the fixed part).
"""
import json
import os
import resource
import sys

import mxnet as mx
import numpy as np
from mxnet.gluon import nn
from PIL import Image

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..')
sys.path.insert(0, ROOT)

from d2lseg import inference, photos  # noqa: E402
from d2lseg.classes import ClassList  # noqa: E402
from d2lseg.metrics import ConfusionMatrix  # noqa: E402
from d2lseg.model import build_fcn  # noqa: E402
from d2lseg.voc import iter_split  # noqa: E402


def peak():
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


def main(mode, voc_dir, out_dir, net_name=None, classes=21):
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


if __name__ == '__main__':
    args = sys.argv[1:]
    options = {flag: args[args.index(flag) + 1] for flag in ('--net', '--classes') if flag in args}
    main(*args[:3], net_name=options.get('--net'), classes=int(options.get('--classes', 21)))
