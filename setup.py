"""d2lseg: Fully Convolutional Networks (D2L 10.10) in MXNet Gluon."""
import re

from setuptools import find_packages, setup

VERSION = re.search(r"__version__ = '([^']+)'", open('d2lseg/version.py').read()).group(1)

STACK = [  # what really imports together with MXNet 1.9.1 on Python 3.8-3.11
    'numpy==1.23.5',
    'gluoncv==0.10.5.post0',
    'opencv-python<4.9',
    'matplotlib<3.9',
    'scipy<1.12',
    'pandas<2.1',
    'Pillow',
    'tqdm',
    'requests',
]

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
        'test': ['pytest', 'pytest-timeout', 'hypothesis', 'nbclient', 'nbformat', 'ipykernel'],
    },
    entry_points={'console_scripts': ['d2lseg=d2lseg.cli:main']},
    classifiers=[
        'Programming Language :: Python :: 3',
        'License :: OSI Approved :: Apache Software License',
        'Topic :: Scientific/Engineering :: Artificial Intelligence',
    ],
)
