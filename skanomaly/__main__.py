"""``python -m skanomaly``: the same as the ``skanomaly`` command."""

import sys

from .cli import main

sys.exit(main())
