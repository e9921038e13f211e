"""d2lseg: Fully Convolutional Networks for semantic segmentation in MXNet Gluon (D2L 10.10).

``import d2lseg as d2l`` exposes every name the chapter's code uses. Importing the package first sets
what MXNet reads once, when it loads or runs its first operator (``startup``): ``OMP_NUM_THREADS``
(MXNet otherwise uses one thread per two cores on CPU) and, on CPUs with Intel AMX, oneDNN's AMX
kernels for INT8 and bfloat16 (``D2LSEG_AMX=0`` turns that off). Before that, ``compat`` gives numpy back
the names MXNet 1.9.1 uses that numpy 1.24 and 2.0 removed (Python 3.12 and 3.13: docs/pythons.md).
Without MXNet the package still imports (``d2lseg.onnxrun`` runs exported models); each chapter name then
raises one ImportError naming what to install (docs/deployment.md).
"""
from . import compat, startup
from .errors import D2lsegError
from .version import __version__

compat.restore_numpy_names()  # before MXNet loads: the numpy names MXNet 1.9.1 uses that numpy removed
startup.configure()
# MXNet missing: recorded (compat.MXNET_ERROR), not raised, so that what needs no MXNet still imports
# (d2lseg.onnxrun, `d2lseg predict --onnx`, `d2lseg doctor`); each name below then raises one ImportError
# naming the install (__getattr__).
if compat.import_mxnet():
    from .ops import bilinear_kernel, corr2d, kernel2matrix, trans_conv
    from .palette import VOC_CLASSES, VOC_COLORMAP, build_colormap2label, voc_label_indices
    from .voc import VOCSegDataset, load_data_voc, read_voc_images, voc_rand_crop
    from .download import download_voc_pascal
    from .synthetic import make_synthetic_voc
    from .model import build_fcn
    from .metrics import ConfusionMatrix
    from .chapter import evaluate_accuracy, train, try_all_gpus
    from .config import Recipe
    from .engine import fit
    from .inference import label2image, predict, predict_full

    startup.settle()  # MXNet is loaded: let oneDNN read the AMX cap now (see startup)

__all__ = [  # the chapter's names first, then the package's
    'VOC_CLASSES', 'VOC_COLORMAP', 'download_voc_pascal', 'read_voc_images', 'voc_rand_crop', 'VOCSegDataset',
    'try_all_gpus', 'train', 'evaluate_accuracy', 'bilinear_kernel', 'plt', 'set_figsize', 'show_images',
    'corr2d', 'trans_conv', 'kernel2matrix', 'build_colormap2label', 'voc_label_indices', 'load_data_voc',
    'make_synthetic_voc', 'build_fcn', 'ConfusionMatrix', 'Recipe', 'fit', 'predict', 'label2image',
    'predict_full', 'D2lsegError', 'use_svg_display',
]

_VIZ_NAMES = ('plt', 'set_figsize', 'show_images', 'use_svg_display')


def __getattr__(name):
    """Load the plotting names (and matplotlib) only when first used; without MXNet, a name that needs it is
    one ImportError naming what to install."""
    if compat.MXNET_ERROR and name in __all__:
        raise ImportError(f"d2lseg.{name} needs MXNet: {compat.MXNET_ERROR}. Without MXNet only exported models "
                          "run (d2lseg.onnxrun, `d2lseg predict --onnx`: docs/deployment.md)", name='d2lseg')
    if name in _VIZ_NAMES:
        from . import viz
        return getattr(viz, name)
    raise AttributeError(f"module 'd2lseg' has no attribute {name!r}")
