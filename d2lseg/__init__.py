"""d2lseg: Fully Convolutional Networks for semantic segmentation in MXNet Gluon (D2L 10.10).

``import d2lseg as d2l`` exposes every name the chapter's code uses. Importing the package first sets
what MXNet reads once, when it loads or runs its first operator (``startup``): ``OMP_NUM_THREADS``
(MXNet otherwise uses one thread per two cores on CPU) and, on CPUs with Intel AMX, oneDNN's AMX
kernels for INT8 and bfloat16 (``D2LSEG_AMX=0`` turns that off). Before that, ``compat`` gives numpy back
the names MXNet 1.9.1 uses that numpy 1.24 and 2.0 removed (Python 3.12 and 3.13: docs/pythons.md).
Without MXNet the package still imports (``d2lseg.deploy.onnxrun`` runs exported models); each chapter name then
raises one ImportError naming what to install (docs/deployment.md).
"""
import importlib.abc
import importlib.util
import sys

# -- old import paths (tools/restructure.py writes this block) --
# The modules moved into subpackages keep their old paths: ``import d2lseg.NAME``, ``from d2lseg.NAME import X``
# and ``d2lseg.NAME`` give the module d2lseg.LAYER.NAME itself (one object, registered under both names).
MOVED = {name: sub for sub, names in (
    ('core', ('errors', 'version', 'compat', 'startup', 'progress', 'textfiles', 'outputs',
              'runfolder', 'constants', 'device', 'mxinternals')),
    ('native', ('upsampling', 'environment')),
    ('data', ('dataspec', 'vocpalette', 'pixels', 'photofiles', 'palette', 'images', 'augment',
              'voc', 'classes', 'synthetic', 'download')),
    ('fcn', ('ops', 'model', 'loss', 'metrics', 'inference', 'chapter', 'viz')),
    ('deploy', ('quantization', 'mixed', 'export', 'onnxrun')),
    ('training', ('config', 'checkpoint', 'callbacks', 'engine', 'kvstore', 'reference', 'teaching')),
    ('command', ('cli', 'app', 'specs', 'preflight', 'photos', 'doctor', 'onnxcli', 'launcher')),
) for name in names}


class _OldPaths(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """``d2lseg.NAME`` -> the module at its new path, registered under both names."""

    def find_spec(self, fullname, path=None, target=None):
        package, _, name = fullname.partition('.')
        return importlib.util.spec_from_loader(fullname, self) if package == __name__ and name in MOVED else None

    specs = {}

    def create_module(self, spec):
        name = spec.name.partition('.')[2]
        module = importlib.import_module(f'{__name__}.{MOVED[name]}.{name}')
        self.specs[module.__name__] = module.__spec__
        return module

    def exec_module(self, module):
        module.__spec__ = self.specs[module.__name__]  # its own spec back (the import set the alias's)


sys.meta_path.insert(0, _OldPaths())  # first: an editable install's finder would look for the old files
# -- end of old import paths --

from .core import compat, startup
from .core.errors import D2lsegError
from .core.version import __version__

compat.restore_numpy_names()  # before MXNet loads: the numpy names MXNet 1.9.1 uses that numpy removed
startup.configure()
# MXNet missing: recorded (compat.MXNET_ERROR), not raised, so that what needs no MXNet still imports
# (d2lseg.deploy.onnxrun, `d2lseg predict --onnx`, `d2lseg doctor`); each name below then raises one ImportError
# naming the install (__getattr__).
if compat.import_mxnet():
    from .fcn.ops import bilinear_kernel, corr2d, kernel2matrix, trans_conv
    from .data.palette import VOC_CLASSES, VOC_COLORMAP, build_colormap2label, voc_label_indices
    from .data.voc import VOCSegDataset, load_data_voc, read_voc_images, voc_rand_crop
    from .data.download import download_voc_pascal
    from .data.synthetic import make_synthetic_voc
    from .fcn.model import build_fcn
    from .fcn.metrics import ConfusionMatrix
    from .fcn.chapter import evaluate_accuracy, train, try_all_gpus
    from .training.config import Recipe
    from .training.engine import fit
    from .fcn.inference import label2image, predict, predict_full

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
                          "run (d2lseg.deploy.onnxrun, `d2lseg predict --onnx`: docs/deployment.md)", name='d2lseg')
    if name in _VIZ_NAMES:
        from .fcn import viz
        return getattr(viz, name)
    if name in MOVED:
        return importlib.import_module(f'{__name__}.{name}')
    raise AttributeError(f"module 'd2lseg' has no attribute {name!r}")
