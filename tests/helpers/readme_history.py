"""For tests/test_readme.py: write one stored run of the real demo (d2lseg/baselines/demo-spread.json, seed 0) as
the history.json given, in place of the README walk's 1-epoch tiny run (which no stored band fits)."""
import json
import os
import sys

import d2lseg

if __name__ == '__main__':
    with open(os.path.join(os.path.dirname(d2lseg.__file__), 'baselines', 'demo-spread.json')) as f:
        band = json.load(f)
    with open(sys.argv[1], 'w') as f:
        json.dump({'recipe': band['recipe'], 'epochs': band['runs'][0]['epochs']}, f)
