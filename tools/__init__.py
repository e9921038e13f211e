"""Maintenance tools run from the checkout: ``python -m tools.restructure``, ``tools/notebooks.py``,
``tools/venv.sh``; a package so that tests import them (``from tools.restructure import LAYOUT``)."""
