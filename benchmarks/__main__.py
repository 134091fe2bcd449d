"""``python -m benchmarks``: see :mod:`benchmarks` and ``--help``."""

import sys

from .harness import main

sys.exit(main())
