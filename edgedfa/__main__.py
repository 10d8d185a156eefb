"""``python -m edgedfa ...``: the ``edgedfa`` command line, for environments without the script."""

import sys

from .cli import main

sys.exit(main())
