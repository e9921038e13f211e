"""Run by tests/test_kernels.py in a fresh process (under a D2LSEG_CACHE of its choosing): load the native kernels.

    python tests/helpers/kernels_load.py

Prints 'loaded True' or 'loaded False' (``native.load()``). Every warning is shown (on stderr), each
time it is raised.
"""
import warnings

warnings.simplefilter('always')


def main():
    import d2lseg  # noqa: F401
    from d2lseg import native
    print('loaded', native.load())


if __name__ == '__main__':
    main()
