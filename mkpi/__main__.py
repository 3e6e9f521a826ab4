"""``python -m mkpi``: the ``mkpi`` command, for child processes and checkouts without the
console script."""

import sys

from mkpi.cli import main

sys.exit(main())
