"""d2lseg: Fully Convolutional Networks (D2L 10.10) in MXNet Gluon."""
import re

from setuptools import find_packages, setup

VERSION = re.search(r"__version__ = '([^']+)'", open('d2lseg/version.py').read()).group(1)

# What the package imports, pinned to what works with MXNet 1.9.1 (numpy 1.23.5) on Python 3.8-3.11.
STACK = [
    'numpy==1.23.5',
    'opencv-python<4.9',    # synthetic: the shapes of the offline data set
    'matplotlib<3.9',       # viz
    'Pillow',
    'tqdm',
]
# gluoncv only in the tests (its VOC reader and metrics are the references the tests compare with); its
# own dependencies pinned to versions that import with numpy 1.23.5.
TEST = ['pytest', 'pytest-timeout', 'hypothesis', 'nbclient', 'nbformat', 'ipykernel', 'nbconvert',
        'gluoncv==0.10.5.post0', 'scipy<1.12', 'pandas<2.1']

setup(
    name='d2lseg',
    version=VERSION,
    description='FCN semantic segmentation in Apache MXNet Gluon: the Dive into Deep Learning chapter, grown into a package',
    long_description=open('README.md', encoding='utf-8').read(),
    long_description_content_type='text/markdown',
    packages=find_packages(include=['d2lseg', 'd2lseg.*']),
    package_data={'d2lseg': ['baselines/*.json'], 'd2lseg.native': ['csrc/*.cc']},
    python_requires='>=3.8,<3.12',
    install_requires=STACK,
    extras_require={
        'cpu': ['mxnet==1.9.1'],
        'cu112': ['mxnet-cu112==1.9.1'],
        'test': TEST,
        'lab': ['jupyterlab'],
    },
    entry_points={'console_scripts': ['d2lseg=d2lseg.cli:main']},
    license='Apache-2.0',  # SPDX; no license classifier (deprecated, a warning on every install)
    classifiers=[
        'Programming Language :: Python :: 3',
        'Topic :: Scientific/Engineering :: Artificial Intelligence',
    ],
)
