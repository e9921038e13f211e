"""Draw docs/img/demo.png, the README's picture: validation images of the synthetic set, their labels and
the predictions of the `make demo` model (whole images, tiled). Run by `make figure` after `make demo`."""
import os
import sys

import d2lseg  # noqa: F401  (first: threads and AMX)
import mxnet as mx

from d2lseg.app import load_net
from d2lseg.inference import predict_full
from d2lseg.viz import prediction_grid
from d2lseg.voc import VOC_SUBDIR, iter_split


def main(params='runs/demo/model.params', data_dir='data/synthetic', out='docs/img/demo.png'):
    net, _ = load_net(params, ctx=[mx.cpu()])
    items = iter_split(os.path.join(data_dir, VOC_SUBDIR), is_train=False, ignore_boundary=True, limit=30)
    rows = [(img, label, predict_full(net, img)) for _, img, label in items if img.shape[0] >= 320][:3]
    prediction_grid(rows, path=out)
    print('wrote', out)


if __name__ == '__main__':
    main(*sys.argv[1:])
