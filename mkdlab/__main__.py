"""``python -m mkdlab``."""

import sys

from mkdlab.cli import main

sys.exit(main())
