"""Print MXNet's OpenMP thread count after importing d2lseg and mxnet in the order given (argv[1])."""
import importlib
import sys

import numpy_names

first, second = ('d2lseg', 'mxnet') if sys.argv[1] == 'd2lseg-first' else ('mxnet', 'd2lseg')
if first == 'mxnet':
    numpy_names.restore()  # on numpy >= 1.24 MXNet cannot be imported first otherwise
importlib.import_module(first)
importlib.import_module(second)
from d2lseg.native.environment import mxnet_threads  # noqa: E402

print(mxnet_threads())
