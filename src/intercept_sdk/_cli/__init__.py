"""The ``intercept-sdk`` command line (both sides: it may import everything)."""

from .main import main

__all__ = ["main"]
