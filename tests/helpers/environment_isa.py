"""Run by tests/test_environment.py in a fresh process (under DNNL_MAX_CPU_ISA and D2LSEG_NATIVE of its choosing).

    python tests/helpers/environment_isa.py

Prints one JSON line: [onednn_isa, native_kernels, dnnl_max_cpu_isa] of ``d2lseg.native.environment.environment()``.
"""
import json

import d2lseg  # noqa: F401
from d2lseg.native.environment import environment


def main():
    e = environment()
    print(json.dumps([e["onednn_isa"], e["native_kernels"], e["dnnl_max_cpu_isa"]]))


if __name__ == '__main__':
    main()
