"""``python -m intercept_sdk._cli.main``."""

from .main import main

raise SystemExit(main())
