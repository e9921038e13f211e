"""``python -m d2lseg ...``: the same as the ``d2lseg`` command."""
import sys

from .cli import main

sys.exit(main())
