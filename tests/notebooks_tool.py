"""``tools/notebooks.py`` (``make notebooks``, ``make book``) loaded as a module for the tests."""
import importlib.util
import os

_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'tools', 'notebooks.py')
_spec = importlib.util.spec_from_file_location('d2lseg_tools_notebooks', _PATH)
tool = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tool)

RUN_INFO, source_hash, stale_cells, book = tool.RUN_INFO, tool.source_hash, tool.stale_cells, tool.book
