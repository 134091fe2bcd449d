"""Small shared helpers: atomic files, durations, UTC time, private directories."""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import re
import tempfile
from pathlib import Path

from ._exceptions import ConfigurationError

__all__ = [
    "atomic_write",
    "ensure_private_dir",
    "format_utc",
    "fsync_dir",
    "parse_duration",
    "parse_utc",
    "utcnow",
]

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}


def parse_duration(text: str | float | int) -> float:
    """Seconds from a duration written like 90s, 15m, 6h, 7d (a number is seconds)."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        if text < 0:
            raise ConfigurationError(f"duration must not be negative: {text}")
        return float(text)
    if not isinstance(text, str):
        raise ConfigurationError(f"duration must be text like 90s, 15m, 6h, 7d, got {text!r}")
    m = _DURATION_RE.match(text)
    if not m:
        raise ConfigurationError(f"duration {text!r} must be written like 90s, 15m, 6h, 7d")
    return float(m.group(1)) * _UNITS[m.group(2)]


def utcnow() -> _dt.datetime:
    """The current time, timezone-aware UTC."""
    return _dt.datetime.now(_dt.timezone.utc)


def format_utc(t: _dt.datetime) -> str:
    """ISO 8601 with a Z suffix, second precision."""
    return t.astimezone(_dt.timezone.utc).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_utc(text: str) -> _dt.datetime:
    """Parse an ISO 8601 date-time that carries a UTC offset."""
    t = _dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    if t.tzinfo is None:
        raise ValueError("date-time without UTC offset")
    return t


def fsync_dir(path: Path) -> None:
    """fsync a directory so a rename inside it survives power loss."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, *, mode: int = 0o644, durable: bool = True) -> None:
    """Write ``data`` to ``path`` via temp file + fsync + os.replace (+ directory fsync).

    Readers see the old content or the new, never a mix, even across a crash.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if durable:
        fsync_dir(path.parent)


def ensure_private_dir(path: Path) -> Path:
    """Create ``path`` (and parents) with mode 0700 and tighten it if it exists."""
    path = Path(path)
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if (path.stat().st_mode & 0o777) != 0o700:
        os.chmod(path, 0o700)
    return path
