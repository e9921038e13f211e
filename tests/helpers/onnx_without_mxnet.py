"""Run ``d2lseg.deploy.onnxrun`` in a process where MXNet cannot be imported; print one JSON line.

    python onnx_without_mxnet.py package|file MODEL.onnx OUT_DIR JSON IMAGE... [--evaluate DATA_DIR]

package: ``from d2lseg import onnxrun``, as a script or the ``d2lseg`` command does (``import d2lseg`` records
the missing MXNet and goes on); file: load it without running the package's ``__init__`` (a bare package
object whose path is the d2lseg folder), which needs nothing of the package but onnxrun's leaf modules. Prints what
predict_files returned, the evaluation (with --evaluate) and the d2lseg modules loaded.
"""
import json
import os
import sys
import types

sys.modules['mxnet'] = None  # first: any import of MXNet from here on fails
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..')
# the checkout under test in both modes: 'file' loads ROOT/d2lseg itself, and 'package' must find that same tree, not
# another d2lseg the interpreter may have (an installed one, another checkout's editable install)
sys.path.insert(0, ROOT)


def load(how):
    if how == 'package':
        from d2lseg.deploy import onnxrun
        return onnxrun
    package = types.ModuleType('d2lseg')
    package.__path__ = [os.path.join(ROOT, 'd2lseg')]
    sys.modules['d2lseg'] = package
    import d2lseg.deploy.onnxrun as onnxrun
    return onnxrun


def main(argv):
    how, model_path, out_dir, json_path, *rest = argv
    data_dir = None
    if '--evaluate' in rest:
        data_dir = rest[rest.index('--evaluate') + 1]
        rest = rest[:rest.index('--evaluate')]
    onnxrun = load(how)
    model = onnxrun.Model(model_path)
    failed = onnxrun.predict_files(model, rest, out_dir, json_path=json_path, log=lambda line: None)
    record = onnxrun.evaluate(model, data_dir) if data_dir else None
    print(json.dumps({'failed': failed, 'evaluation': record, 'mxnet_loaded': sys.modules.get('mxnet') is not None,
                      'modules': sorted(m for m, mod in sys.modules.items()  # modules, not (sub)packages
                                         if m.startswith('d2lseg') and not hasattr(mod, '__path__'))}))
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
