"""Draw the README's picture: validation images of the synthetic set, their labels and the predictions of the
`make demo` model (whole images, tiled). `make figure` (after `make demo`) writes build/demo.png;
`make figure README=1` replaces docs/img/demo.png, the tracked file the README shows."""
import os
import sys

import d2lseg  # noqa: F401  (first: threads and AMX)
import mxnet as mx

from d2lseg.command.app import load_net
from d2lseg.fcn.inference import predict_full
from d2lseg.fcn.viz import prediction_grid, save_figure
from d2lseg.data.voc import VOC_SUBDIR, iter_split

# Said on the figure itself: the names are VOC's, the objects are not.
STAND_IN = ("synthetic set: VOC's class names stand in for textured shapes; plain untextured shapes are "
            "distractors, labelled background")


def main(params='runs/demo/model.params', data_dir='data/synthetic', out='build/demo.png'):
    net, _ = load_net(params, ctx=[mx.cpu()])
    items = iter_split(os.path.join(data_dir, VOC_SUBDIR), is_train=False, ignore_boundary=True, limit=30)
    rows = [(img, label, predict_full(net, img)) for _, img, label in items if img.shape[0] >= 320][:3]
    fig = prediction_grid(rows)
    fig.suptitle(STAND_IN, fontsize=8, y=0.995)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    save_figure(fig, out, bbox_inches='tight')
    print('wrote', out)


if __name__ == '__main__':
    main(*sys.argv[1:])
