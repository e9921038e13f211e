"""Run by tests/test_chapter.py: the chapter's plotting calls in a plain Python script (not Jupyter), with
IPython installed, as a student running the chapter's code as a .py file would.

    python tests/helpers/chapter_script.py OUT.png

Prints one JSON line: whether an IPython shell was created, and the figure's size in bytes.
"""
import json
import os
import sys

import d2lseg as d2l
import IPython
from mxnet import nd


def main(out):
    d2l.set_figsize()
    d2l.plt.plot([1, 2, 3], [1, 4, 9])
    d2l.show_images([nd.zeros((8, 8, 3)), nd.ones((8, 8, 3))], 1, 2)
    d2l.plt.savefig(out)
    print(json.dumps({'ipython_shell': IPython.get_ipython() is not None, 'bytes': os.path.getsize(out)}))


if __name__ == '__main__':
    main(sys.argv[1])
