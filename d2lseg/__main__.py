"""The ``d2lseg`` command (its console script) and ``python -m d2lseg ...``.

Without MXNet, ``import d2lseg`` records the problem instead of raising (``compat.MXNET_ERROR``): the
command then prints it in one line (exit 2), and ``d2lseg doctor`` runs all the same.
"""
import sys


def main(argv=None):
    from .core import compat
    argv = sys.argv[1:] if argv is None else list(argv)
    if compat.MXNET_ERROR:
        if argv[:1] == ['doctor']:
            from .command import doctor
            return doctor.main(compat.MXNET_ERROR)
        if argv[:1] in (['predict'], ['evaluate']) and any(a.split('=')[0] == '--onnx' for a in argv):
            from .command import onnxcli  # an exported model runs on ONNX Runtime: no MXNet needed
            return onnxcli.main(argv)
        print(f'd2lseg: error: {compat.MXNET_ERROR}; `d2lseg doctor` checks the rest', file=sys.stderr)
        return 2
    from .command import cli
    return cli.main(argv)


if __name__ == '__main__':
    sys.exit(main())
