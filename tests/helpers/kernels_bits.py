"""Run by tests/test_kernels.py in a fresh process: the native kernels' outputs on fixed inputs, to compare the
builds of two simulated machines bit for bit (DNNL_MAX_CPU_ISA=AVX2 builds the kernels without AVX-512).

    python tests/helpers/kernels_bits.py OUT.npz

Writes every output and gradient of ``d2lseg_upsample`` and ``d2lseg_upsample_argmax`` (strides 8 to 32;
widths that leave partial register tiles, and widths whose inner blocks are streamed to the output) and of
the fused loss, plain and weighted, with ignored pixels, to OUT.npz. Prints the ISA the library was compiled
for and the vector width each stride runs with ('lanes 8:8 16:16 ...').
"""
import ctypes
import sys

import numpy as np

# (N, C_in, h, w, stride): 17 blocks wide at stride 32 and 33 at 16 reach the tiles stored straight to the output
CASES = [(2, 5, 3, 4, 32), (1, 21, 2, 15, 32), (1, 5, 2, 17, 32), (2, 3, 4, 26, 16), (1, 5, 2, 33, 16),
         (1, 4, 3, 7, 8), (1, 2, 2, 3, 24)]


def main(out):
    import d2lseg  # noqa: F401
    import mxnet as mx
    from mxnet import autograd, nd
    from d2lseg import native
    assert native.load(), 'the native kernels did not load'
    arrays = {}
    for n, c, h, w, s in CASES:
        rng = np.random.RandomState(s + w)
        x = nd.array(rng.randn(n, c, h, w))
        weight = nd.array(rng.randn(4 * c, c + 1, s, s))
        bias = nd.array(rng.randn(c + 1))
        labels = rng.randint(0, c + 1, size=(n, h * s, w * s))
        labels[rng.rand(*labels.shape) < 0.2] = 255  # ignored pixels
        label = nd.array(labels)
        class_weight = nd.array(rng.rand(c + 1) + 0.5)
        for a in (x, weight, bias):
            a.attach_grad()
        with autograd.record():
            y = nd.d2lseg_upsample(x, weight, bias, stride=s)
            loss = nd.d2lseg_softmax_ce(y, label, ignore_index=255) + \
                nd.d2lseg_softmax_ce_weighted(y, label, class_weight, ignore_index=255)
        loss.backward(nd.array(rng.rand(n)))
        tag = f'{n}x{c}x{h}x{w}s{s}'
        arrays.update({f'{tag}_out': y.asnumpy(), f'{tag}_loss': loss.asnumpy(), f'{tag}_dx': x.grad.asnumpy(),
                       f'{tag}_dweight': weight.grad.asnumpy(), f'{tag}_dbias': bias.grad.asnumpy(),
                       f'{tag}_labels': nd.d2lseg_upsample_argmax(x, weight, bias, stride=s).asnumpy()})
    mx.nd.waitall()
    np.savez(out, **arrays)
    lanes = ctypes.CDLL(native.library_path()).d2lseg_upsample_lanes  # the library mx.library.load opened
    print('lanes', ' '.join(f'{s}:{lanes(s)}' for s in native.UPSAMPLE_STRIDES))
    print('isa', native.compiled_isa())


if __name__ == '__main__':
    main(sys.argv[1])
