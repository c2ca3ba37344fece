"""``python -m mopt``: the mopt command line (mopt.cli)."""

import sys

from .cli import main

sys.exit(main())
