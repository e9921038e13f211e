"""The package version: read by ``setup.py``, ``d2lseg --version`` and every history's environment."""
__version__ = '0.3.0'
