"""``python -m intercept_sdk._platform.server``: serve a site until SIGINT/SIGTERM."""

from __future__ import annotations

import sys

from .process import main

if __name__ == "__main__":
    sys.exit(main())
