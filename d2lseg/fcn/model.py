"""The FCN (D2L 10.10.2-10.10.3): ResNet-18 v2 features, a 1x1 score layer, bilinear-initialised upsampling.

``fcn32s`` is the chapter's network exactly; ``fcn16s`` and ``fcn8s`` add the skip layers of
Long, Shelhamer & Darrell, "Fully Convolutional Networks for Semantic Segmentation" (CVPR 2015).
Every variant has one interface, ``SegmentationNet``: ``coarse_scores(x)`` then ``upsample``, so
prediction, INT8 and bfloat16 treat them alike.
"""
import os
import tempfile

import mxnet as mx
import numpy as np
from mxnet import init, nd
from mxnet.gluon import HybridBlock, model_zoo, nn

from ..core.constants import OUTPUT_STRIDE, VARIANTS
from ..core.errors import D2lsegError, first_line
from .. import native
from .ops import bilinear_kernel
from ..native.upsampling import FastLayoutParams, FastUpsampling



def _as_ctx_list(ctx):
    if ctx is None:
        return [mx.cpu()]
    return list(ctx) if isinstance(ctx, (list, tuple)) else [ctx]


def load_backbone(pretrained=True, ctx=None, root=None):
    """ResNet-18 v2 from MXNet's model zoo, with ImageNet weights, a local ``.params`` file, or random.

    pretrained: True (download, cached under ``root``), a path to a ``.params`` file saved from
    ``resnet18_v2`` (``save_parameters``), or False (MSRA-initialised).
    """
    ctx = _as_ctx_list(ctx)
    if pretrained is True:
        kw = {} if root is None else {'root': root}
        try:
            return model_zoo.vision.resnet18_v2(pretrained=True, ctx=ctx, **kw)
        except (OSError, ValueError, AssertionError) as e:
            raise D2lsegError(
                "could not fetch the ImageNet resnet18_v2 weights from MXNet's model zoo "
                f"({type(e).__name__}); offline, pass a local file (pretrained='resnet18_v2.params', "
                "CLI: --backbone-params FILE) or train from scratch (pretrained=False, CLI: --no-pretrained)"
            ) from None
    net = model_zoo.vision.resnet18_v2(pretrained=False)
    if pretrained:
        path = os.fspath(pretrained)
        if not os.path.isfile(path):
            raise D2lsegError(f"{path}: backbone params file not found")
        try:
            net.load_parameters(path, ctx=ctx, ignore_extra=True)
        except Exception as e:  # MXNet raises MXNetError/AssertionError/ValueError for foreign files
            raise D2lsegError(f"{path}: not a resnet18_v2 parameters file ({first_line(e)})") from None
    else:
        net.initialize(init.Xavier(rnd_type='gaussian', factor_type='in', magnitude=2), ctx=ctx)
    return net


def _bilinear_up(num_classes, factor):
    """A transposed convolution that upsamples by ``factor`` (kernel 2*factor, padding factor/2), bilinear init."""
    layer = nn.Conv2DTranspose(num_classes, kernel_size=2 * factor, padding=factor // 2, strides=factor)
    return layer, bilinear_kernel(num_classes, num_classes, 2 * factor)


class SegmentationNet(native.PerContext, FastLayoutParams):
    """Mixin: what every FCN here offers. ``coarse_scores(x)``: (N, 3, H, W) -> (N, C, H/s, W/s), the
    input of ``upsample`` (the final upsampling layer, stride s); parameter files in the chapter's layout."""

    def native_upsample(self, ctx):
        """The final ``FastUpsampling`` when the native kernels run it on ``ctx``, else None."""
        up = self.upsample
        return up if isinstance(up, FastUpsampling) and up.uses_native(ctx) else None

    def upsampling_weight(self):
        """The final upsampling's weight in the chapter's (C, C, 2s, 2s) layout, whichever layer computes it."""
        up = self.upsample
        return up.chapter_weight() if isinstance(up, FastUpsampling) else up.weight.data()

    def set_upsampling_weight(self, weight):
        """Give the final upsampling a chapter-layout (C, C, 2s, 2s) weight, whichever layer computes it."""
        up = self.upsample
        up.set_chapter_weight(weight) if isinstance(up, FastUpsampling) else up.weight.set_data(weight)


class SequentialFCN(SegmentationNet, nn.HybridSequential):
    """The chapter's ``HybridSequential`` (fcn32s), its last layer the upsampling; also a low-precision
    body followed by the float32 upsampling (``quantization``)."""

    @property
    def upsample(self):
        return self[len(self) - 1]

    def coarse_scores(self, x):
        """The input of the final upsampling: every layer before it."""
        for i in range(len(self) - 1):
            x = self[i](x)
        return x


class FCNSkip(SegmentationNet, HybridBlock):
    """FCN-16s / FCN-8s: score layers on the stride-16 (and stride-8) stages fused by addition.

    x: (N, 3, H, W), H and W multiples of 32 -> (N, num_classes, H, W). Skip score layers start
    at zero, so an untrained FCN-16s/8s predicts from the stride-32 scores alone -- upsampled 2x then
    16x (or 2x, 2x, 8x), which is close to but not exactly FCN-32s's single 32x bilinear upsampling
    (tests/test_model.py measures it). fast_upsampling:
    the final upsampling is a ``FastUpsampling`` (same values; parameter files unchanged).
    Source: Long et al. 2015, Sec. 4.2; D2L 10.10 exercise 5.
    """

    def __init__(self, features, num_classes=21, finest_stride=16, fast_upsampling=False, **kwargs):
        super().__init__(**kwargs)
        if finest_stride not in (8, 16):
            raise ValueError("finest_stride must be 16 (FCN-16s) or 8 (FCN-8s)")
        self.finest_stride = finest_stride
        with self.name_scope():
            self.stem = nn.HybridSequential()
            self.stem.add(*features[:7])           # ... stage 2: stride 8, 128 channels
            self.stage3 = features[7]              # stride 16, 256 channels
            self.stage4 = nn.HybridSequential()
            self.stage4.add(*features[8:11])       # stride 32, 512 channels, final BN + ReLU
            self.score32 = nn.Conv2D(num_classes, kernel_size=1)
            self.up2_32, self._up2_32_init = _bilinear_up(num_classes, 2)
            self.score16 = nn.Conv2D(num_classes, kernel_size=1)
            if finest_stride == 8:
                self.up2_16, self._up2_16_init = _bilinear_up(num_classes, 2)
                self.score8 = nn.Conv2D(num_classes, kernel_size=1)
            if fast_upsampling:
                self._upsample_init = None
                self.upsample = FastUpsampling(num_classes, finest_stride, weight_initializer=init.Constant(
                    bilinear_kernel(num_classes, num_classes, 2 * finest_stride)))
            else:
                self.upsample, self._upsample_init = _bilinear_up(num_classes, finest_stride)

    def initialize_head(self, ctx):
        """Xavier for the stride-32 score layer, zeros for skip scores, bilinear for every upsampling."""
        self.score32.initialize(init.Xavier(), ctx=ctx)
        self.score16.initialize(init.Zero(), ctx=ctx)
        self.up2_32.initialize(init.Constant(self._up2_32_init), ctx=ctx)
        if self.finest_stride == 8:
            self.score8.initialize(init.Zero(), ctx=ctx)
            self.up2_16.initialize(init.Constant(self._up2_16_init), ctx=ctx)
        if self._upsample_init is None:  # FastUpsampling carries its bilinear initializer
            self.upsample.initialize(ctx=ctx)
        else:
            self.upsample.initialize(init.Constant(self._upsample_init), ctx=ctx)

    def coarse_scores(self, x):
        """The fused scores at the finest stride, the input of ``upsample``: (N, C, H/s, W/s)."""
        c8 = self.stem(x)
        c16 = self.stage3(c8)
        c32 = self.stage4(c16)
        fused = self.up2_32(self.score32(c32)) + self.score16(c16)
        if self.finest_stride == 8:
            fused = self.up2_16(fused) + self.score8(c8)
        return fused

    def hybrid_forward(self, F, x):
        return self.upsample(self.coarse_scores(x))


def build_fcn(num_classes=21, variant='fcn32s', pretrained=True, ctx=None, root=None, fast_upsampling=False):
    """Build an FCN on ResNet-18 v2 features.

    variant: 'fcn32s' (the chapter's ``HybridSequential``), 'fcn16s' or 'fcn8s'.
    pretrained: see ``load_backbone``. Input (N, 3, H, W) with H, W multiples of 32 ->
    (N, num_classes, H, W). A 320x480 input gives a (1, 512, 10, 15) feature map.
    fast_upsampling: replace the final transposed convolution by ``upsampling.FastUpsampling`` (same
    outputs and gradients, faster; on CPU contexts it runs the native fused operator when that builds;
    ``save_parameters`` still writes the chapter's names and layout). The training and prediction
    paths (``engine.prepare``, the CLI) turn it on. -> a ``SegmentationNet``.
    Source: D2L 10.10.2-10.10.3.
    """
    if variant not in VARIANTS:
        raise D2lsegError(f"unknown variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise D2lsegError(f"num_classes {num_classes!r}: must be a whole number of at least 1")
    ctx = _as_ctx_list(ctx)
    pretrained_net = load_backbone(pretrained, ctx, root)
    if variant != 'fcn32s':
        net = FCNSkip(pretrained_net.features, num_classes, 16 if variant == 'fcn16s' else 8,
                      fast_upsampling=fast_upsampling)
        net.initialize_head(ctx)
        return net
    net = SequentialFCN()
    for layer in pretrained_net.features[:-2]:
        net.add(layer)
    if fast_upsampling:
        net.add(nn.Conv2D(num_classes, kernel_size=1),
                FastUpsampling(num_classes, 32, weight_initializer=init.Constant(
                    bilinear_kernel(num_classes, num_classes, 64))))
        net[-1].initialize(ctx=ctx)
    else:
        net.add(nn.Conv2D(num_classes, kernel_size=1),
                nn.Conv2DTranspose(num_classes, kernel_size=64, padding=16, strides=32))
        net[-1].initialize(init.Constant(bilinear_kernel(num_classes, num_classes, 64)), ctx=ctx)
    net[-2].initialize(init=init.Xavier(), ctx=ctx)
    return net


def load_params(net, path, ctx=None):
    """Load a ``model.params`` / checkpoint into ``net``; one clear error naming the file otherwise."""
    if not os.path.isfile(path):
        raise D2lsegError(f"{path}: parameters file not found")
    try:
        net.load_parameters(path, ctx=_as_ctx_list(ctx))
    except Exception as e:
        first = first_line(e, 200)
        raise D2lsegError(f"{path}: cannot load into this network ({first}); is it a d2lseg "
                          f"model.params of the same --variant and number of classes?") from None
    return net


def _starting_value(array, dtype, name, path):
    """A parameter of an --init-from file in the network's ``dtype``: other float types converted, finite values
    only; a one-line D2lsegError naming the file and parameter otherwise (integers are no trained weights)."""
    if not np.issubdtype(np.dtype(array.dtype), np.floating):
        raise D2lsegError(f"--init-from {path}: parameter {name} is {np.dtype(array.dtype).name}, not floating point; "
                          "give the parameters of a trained network (d2lseg train writes float32)")
    values = array.asnumpy()
    if not np.isfinite(values).all():
        raise D2lsegError(f"--init-from {path}: parameter {name} holds NaN or infinite values; start from the "
                          "parameters of a run that did not diverge (its best.params, or an earlier checkpoint)")
    return array.astype(dtype) if np.dtype(array.dtype) != np.dtype(dtype) else array


def init_from(net, path, ctx=None):
    """Start ``net`` from the trained d2lseg parameters in ``path`` (a model.params or checkpoint, any class
    count): every array with the same name and shape is copied, the rest (the score layers, the
    upsampling, for another class count) keep their initialisation (Xavier, bilinear) -> one line saying
    which. Source: fine-tuning as in Long et al. 2015, Sec. 4.3."""
    if not os.path.isfile(path):
        raise D2lsegError(f"--init-from {path}: no such file; give a model.params or checkpoint of d2lseg train")
    try:
        source = nd.load(path)
    except Exception as e:  # MXNet raises MXNetError for a foreign file
        raise D2lsegError(f"--init-from {path}: not an MXNet parameters file ({first_line(e)})") from None
    if not isinstance(source, dict):
        raise D2lsegError(f"--init-from {path}: holds no named parameters; give a model.params of d2lseg train")
    ctx = _as_ctx_list(ctx)
    net(nd.zeros((1, 3, OUTPUT_STRIDE, OUTPUT_STRIDE), ctx=ctx[0]))  # finish deferred initialisation: shapes known
    with tempfile.TemporaryDirectory(prefix='d2lseg-init-') as tmp:
        mine = os.path.join(tmp, 'target.params')
        net.save_parameters(mine)  # the chapter's names and layout (FastLayoutParams), as ``path`` has them
        target = nd.load(mine)
        copied = [k for k in target if k in source and source[k].shape == target[k].shape]
        if not copied:
            raise D2lsegError(f"--init-from {path}: no parameter of it fits this network; is it a d2lseg model of "
                              "the same --variant?")
        target.update({k: _starting_value(source[k], target[k].dtype, k, path) for k in copied})
        nd.save(mine, target)
        net.load_parameters(mine, ctx=ctx)
    fresh = sorted({k.rsplit('.', 1)[0] for k in target if k not in copied}, key=lambda k: (len(k), k))
    return (f"init from {path}: copied {len(copied)} of {len(target)} parameter arrays"
            + (f"; initialised anew (another class count): {', '.join(_layer_text(net, k) for k in fresh)}"
               if fresh else ''))


def _layer_text(net, key):
    """A layer of ``net`` by what it does and where it is: '11' -> 'the 1x1 class-score convolution (layer 11)'."""
    block = net
    for part in key.split('.'):
        block = block[int(part)] if part.isdigit() else getattr(block, part, None)
        if block is None:
            return f'layer {key}'
    kind = type(block).__name__
    if kind == 'Conv2D' and tuple(block.weight.shape[2:]) == (1, 1):
        what = 'the 1x1 class-score convolution'
    elif kind in ('Conv2DTranspose', 'FastUpsampling'):
        what = 'the bilinear upsampling transposed convolution'
    else:
        what = f'the {kind}'
    return f'{what} (layer {key})'
