"""Run by tests/test_kernels.py in a fresh process (under CXX, D2LSEG_NATIVE, D2LSEG_CACHE of its choosing).

    python tests/helpers/kernels_fallback.py

Builds the fast fcn32s and the chapter's with the same parameters and prints one line:
'native LOADED USES diff D': whether ``native.load()`` succeeded, whether the fast upsampling uses
the kernels, and the largest difference between the two networks' outputs. Every warning is shown
(on stderr), each time it is raised.
"""
import warnings

warnings.simplefilter('always')


def main():
    import d2lseg  # noqa: F401  (first: it sets the thread count before MXNet loads)
    from mxnet import nd
    from d2lseg import native
    from d2lseg.fcn.model import build_fcn
    net = build_fcn(21, pretrained=False, fast_upsampling=True)
    chapter = build_fcn(21, pretrained=False)
    x = nd.random.normal(shape=(1, 3, 64, 96))
    net(x)
    chapter(x)
    net[-1].set_chapter_weight(chapter[-1].weight.data())
    net[-1].bias.set_data(chapter[-1].bias.data())
    for a, b in zip(net.collect_params().values(), chapter.collect_params().values()):
        if a.shape == b.shape:
            a.set_data(b.data())
    diff = (net(x) - chapter(x)).abs().max().asscalar()
    print('native', native.load(), net[-1].uses_native(), 'diff', diff)


if __name__ == '__main__':
    main()
