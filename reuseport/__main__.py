"""``python -m reuseport`` is ``reuseport``."""

import sys

from .cli import main

sys.exit(main())
