"""``d2lseg train`` with one planted fault, for tests/test_regression.py.

    python tests/helpers/planted_train.py FAULT train [d2lseg train flags]

FAULT: none (exactly ``d2lseg train``), xavier (the final transposed convolution initialised with
Xavier instead of ``bilinear_kernel``: the chapter's exercise 2), labels (training labels off by one
class: class k is taught as k + 1, the last class stays), lr (every SGD step uses 1/100 of the
scheduled learning rate; the recipe still says the intended rate).
"""
import sys

import d2lseg  # noqa: F401  (first: it sets the thread count before MXNet loads)
import mxnet as mx

from d2lseg.fcn import model
from d2lseg.data import palette, voc
from d2lseg.command.cli import main


def xavier_kernel(in_channels, out_channels, kernel_size):
    arr = mx.nd.zeros((in_channels, out_channels, kernel_size, kernel_size))
    mx.init.Xavier()(mx.init.InitDesc('upsample_weight'), arr)
    return arr


def plant(fault):
    if fault == 'xavier':
        model.bilinear_kernel = xavier_kernel
    elif fault == 'labels':
        init, getitem = voc.VOCSegDataset.__init__, voc.VOCSegDataset.__getitem__

        def remember_split(self, is_train, *args, **kwargs):
            init(self, is_train, *args, **kwargs)
            self.planted_shift = bool(is_train)

        def shifted(self, idx):
            feature, label = getitem(self, idx)
            if self.planted_shift:
                label = mx.nd.where(label == palette.IGNORE_INDEX, label, mx.nd.minimum(label + 1, 20))
            return feature, label
        voc.VOCSegDataset.__init__, voc.VOCSegDataset.__getitem__ = remember_split, shifted
    elif fault == 'lr':
        get_lrs = mx.optimizer.SGD._get_lrs
        mx.optimizer.SGD._get_lrs = lambda self, indices: [lr / 100 for lr in get_lrs(self, indices)]
    elif fault != 'none':
        raise SystemExit(f'unknown fault {fault!r}: none, xavier, labels or lr')


if __name__ == '__main__':
    plant(sys.argv[1])
    sys.exit(main(sys.argv[2:]))
