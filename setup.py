"""d2lseg: Fully Convolutional Networks (D2L 10.10) in MXNet Gluon."""
import re

from setuptools import find_packages, setup

VERSION = re.search(r"__version__ = '([^']+)'", open('d2lseg/core/version.py').read()).group(1)

# What the package imports, per Python: MXNet 1.9.1 (archived, no new release) declares numpy<2 and uses
# numpy names removed since 1.24, which d2lseg.core.compat restores (docs/pythons.md: what CI ran on each).
#   3.9-3.11: numpy 1.23.5, the last numpy with every name MXNet uses;
#   3.12:     numpy 1.26.4 (no 1.23 wheel), setuptools for the distutils MXNet imports;
#   3.13:     numpy 2.2 (no 1.26 wheel); pip cannot satisfy MXNet's numpy<2, so the cpu/cu112 extras leave
#             MXNet out there and `make venv` installs it with --no-deps, with requests (its one other need).
STACK = [
    'numpy==1.23.5; python_version < "3.12"',
    'numpy==1.26.4; python_version == "3.12"',
    'numpy>=2.1,<2.3; python_version >= "3.13"',
    'opencv-python<4.9; python_version < "3.12"',     # augmentation and multi-scale evaluation
    'opencv-python>=4.9,<4.12; python_version == "3.12"',
    'opencv-python>=4.10; python_version >= "3.13"',
    'matplotlib<3.9; python_version < "3.12"',        # viz
    'matplotlib>=3.8; python_version >= "3.12"',
    'Pillow',
    'tqdm',
]
# What MXNet itself needs beyond numpy: distutils (gone from Python 3.12; setuptools provides it), and on 3.13,
# where MXNet is installed without its declared dependencies, requests (mxnet/gluon/utils.py imports it).
MXNET_NEEDS = ['setuptools; python_version >= "3.12"', 'requests; python_version >= "3.13"']
# gluoncv only in the tests (its VOC reader and metrics are the references the tests compare with), where it
# imports: numpy 1.x, i.e. Python < 3.13 (its own dependencies pinned to versions that import with that numpy).
# Its tests are skipped, with the reason, on 3.13.
GLUONCV = 'python_version < "3.13"'
TEST = ['pytest', 'pytest-timeout', 'pytest-xdist',  # xdist: make test-fast's two workers
        'hypothesis', 'nbclient', 'nbformat', 'ipykernel', 'nbconvert',
        f'gluoncv==0.10.5.post0; {GLUONCV}', f'scipy<1.12; {GLUONCV}',
        'pandas<2.1; python_version < "3.12"', 'pandas<2.3; python_version == "3.12"',
        # onnxruntime.quantization (bench/run.py's ONNX Runtime INT8) imports ml_dtypes; 0.4 is the last for numpy 1.x
        'ml_dtypes>=0.4,<0.5; python_version < "3.13"', 'ml_dtypes>=0.5; python_version >= "3.13"']
MXNET_PYTHONS = 'python_version < "3.13"'
# d2lseg export (onnx; MXNet 1.9.1's exporter imports onnx.mapping, which onnx 1.19 removed) and inference
# without MXNet (onnxruntime): docs/deployment.md. In the tests too, so CI checks ONNX Runtime's parity.
ONNX = ['onnxruntime>=1.16', 'onnx>=1.14,<1.19']

setup(
    name='d2lseg',
    version=VERSION,
    description='FCN semantic segmentation in Apache MXNet Gluon: the Dive into Deep Learning chapter, grown into a package',
    long_description=open('README.md', encoding='utf-8').read(),
    long_description_content_type='text/markdown',
    packages=find_packages(include=['d2lseg', 'd2lseg.*']),
    package_data={'d2lseg': ['baselines/*.json'], 'd2lseg.native': ['csrc/*.cc']},
    python_requires='>=3.9,<3.14',
    install_requires=STACK + MXNET_NEEDS,
    extras_require={
        'cpu': [f'mxnet==1.9.1; {MXNET_PYTHONS}'],
        'cu112': [f'mxnet-cu112==1.9.1; {MXNET_PYTHONS}'],
        'test': TEST + ONNX,
        'onnx': ONNX,
        'lab': ['jupyterlab'],
    },
    entry_points={'console_scripts': ['d2lseg=d2lseg.__main__:main']},
    license='Apache-2.0',  # SPDX; no license classifier (deprecated, a warning on every install)
    classifiers=[
        'Programming Language :: Python :: 3',
        'Topic :: Scientific/Engineering :: Artificial Intelligence',
    ],
)
