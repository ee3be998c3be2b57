"""``python -m skanomaly``: the same as the ``skanomaly`` command."""

import sys

from .app.cli import main

sys.exit(main())
