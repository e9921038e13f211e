"""d2lseg: Fully Convolutional Networks for semantic segmentation in MXNet Gluon (D2L 10.10).

``import d2lseg as d2l`` exposes every name the chapter's code uses. Importing the package first sets
what MXNet reads once, when it loads or runs its first operator (``startup``): ``OMP_NUM_THREADS``
(MXNet otherwise uses one thread per two cores on CPU) and, on CPUs with Intel AMX, oneDNN's AMX
kernels for INT8 and bfloat16 (``D2LSEG_AMX=0`` turns that off).
"""
from . import startup

startup.configure()

from .errors import D2lsegError  # noqa: E402
from .ops import bilinear_kernel, corr2d, kernel2matrix, trans_conv  # noqa: E402
from .palette import VOC_CLASSES, VOC_COLORMAP, build_colormap2label, voc_label_indices  # noqa: E402
from .voc import VOCSegDataset, load_data_voc, read_voc_images, voc_rand_crop  # noqa: E402
from .download import download_voc_pascal  # noqa: E402
from .synthetic import make_synthetic_voc  # noqa: E402
from .model import build_fcn  # noqa: E402
from .metrics import ConfusionMatrix  # noqa: E402
from .chapter import evaluate_accuracy, train, try_all_gpus  # noqa: E402
from .config import Recipe  # noqa: E402
from .engine import fit  # noqa: E402
from .inference import label2image, predict, predict_full  # noqa: E402
from .version import __version__  # noqa: E402

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
    """Load the plotting names (and matplotlib) only when first used."""
    if name in _VIZ_NAMES:
        from . import viz
        return getattr(viz, name)
    raise AttributeError(f"module 'd2lseg' has no attribute {name!r}")
