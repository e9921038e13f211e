"""Print MXNet's OpenMP thread count after importing d2lseg and mxnet in the order given (argv[1])."""
import importlib
import sys

first, second = ('d2lseg', 'mxnet') if sys.argv[1] == 'd2lseg-first' else ('mxnet', 'd2lseg')
importlib.import_module(first)
importlib.import_module(second)
from d2lseg.environment import mxnet_threads  # noqa: E402

print(mxnet_threads())
