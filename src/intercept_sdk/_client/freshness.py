"""Time as the cache sees it, and whether the local list is stale.

Why: a decision made from an old list is flagged stale (and, by default, a block is
downgraded to review), so the client must know reliably how old its list is, even when
the wall clock misbehaves. Two small objects:

* :class:`CacheClock` - the clock, never earlier than the latest time this cache has
  seen (a high-water mark persisted in ``<cache>/clock``), and when any process last
  synced the cache (``<cache>/last_sync``).
* :class:`Staleness` - whether a store state is stale now: its last successful sync is
  older than ``max_staleness``, or its signed manifest has expired.

Guarantees: a wall clock jumping backwards neither unfreezes an expired manifest nor
makes a stale list look fresh, in this process or after a restart; on the check path,
time and staleness cost a comparison or two (deadlines are cached per version and
re-derived at most once a second, when another process may have synced).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import functools
import time
from collections.abc import Callable
from pathlib import Path

from .._util import atomic_write, format_utc, parse_utc, utcnow
from .store import StoreState
from .sync import Updater

__all__ = ["CacheClock", "Staleness"]

_HW_PERSIST_EVERY = _dt.timedelta(seconds=60)
"""How often :meth:`CacheClock.now` persists the clock's high-water mark (at most)."""

_EPOCH = _dt.datetime.min.replace(tzinfo=_dt.timezone.utc)


class CacheClock:
    """The clock of one cache directory (see the module docstring)."""

    def __init__(self, cache_dir: Path, clock: Callable[[], _dt.datetime]) -> None:
        self.cache_dir = cache_dir
        # the default clock as one C-level call (now() runs on every check)
        self._clock = (
            functools.partial(_dt.datetime.now, _dt.timezone.utc) if clock is utcnow else clock
        )
        self._high_water = self._read("clock") or _EPOCH
        self._hw_persist_due = self._high_water + _HW_PERSIST_EVERY
        self._last_success: _dt.datetime | None = None
        self._last_success_read = 0.0

    def _read(self, name: str) -> _dt.datetime | None:
        try:
            return parse_utc((self.cache_dir / name).read_text().strip())
        except (OSError, ValueError):
            return None

    def now(self) -> _dt.datetime:
        """The clock, never earlier than the latest time this cache has seen."""
        now = self._clock()
        if now <= self._high_water:
            return self._high_water
        self._high_water = now
        if now > self._hw_persist_due:
            # A clock that jumps forward and back must not make an expired list fresh
            # again, here or after a restart: remember the latest time seen (cheaply: at
            # most one small non-fsync'd write a minute on the check path; the deadline is
            # kept as a datetime so the check path only compares).
            self._hw_persist_due = now + _HW_PERSIST_EVERY
            with contextlib.suppress(OSError):
                atomic_write(
                    self.cache_dir / "clock", format_utc(now).encode(), mode=0o600, durable=False
                )
        return now

    def mark_success(self) -> None:
        """Record a successful sync now (durably: it is what staleness is measured from)."""
        now = self.now()
        atomic_write(self.cache_dir / "last_sync", format_utc(now).encode(), mode=0o600)
        atomic_write(self.cache_dir / "clock", format_utc(now).encode(), mode=0o600)
        self._last_success = now
        self._last_success_read = time.monotonic()

    def last_success(self) -> _dt.datetime | None:
        """When any process last synced this cache successfully (re-read at most 1/s)."""
        if time.monotonic() - self._last_success_read > 1.0:
            self._last_success = self._read("last_sync") or self._last_success
            self._last_success_read = time.monotonic()
        return self._last_success


class Staleness:
    """Whether a store state is stale (see the module docstring)."""

    def __init__(self, clock: CacheClock, updater: Updater, max_staleness: float) -> None:
        self._clock = clock
        self._updater = updater
        self.max_staleness = max_staleness
        self._expiry_cache: dict[int, _dt.datetime] = {}
        # (version, sync deadline, manifest expiry, re-derive after (monotonic seconds))
        self._fresh: tuple[int, _dt.datetime, _dt.datetime, float] | None = None

    def forget(self) -> None:
        """Re-derive the deadlines at the next check (after a successful sync)."""
        self._fresh = None

    def manifest_expiry(self, state: StoreState) -> _dt.datetime:
        """When the signed manifest of ``state`` expires (verified once per version)."""
        exp = self._expiry_cache.get(state.version)
        if exp is None:
            manifest = self._updater.trusted.manifest
            if manifest is None or manifest.raw != state.manifest:
                # This state's own manifest, verified without touching shared state: going
                # through the store again could see a newer version committed meanwhile.
                manifest = self._updater.trusted.verify_manifest_bytes(state.manifest)
            exp = manifest.expires
            self._expiry_cache = {state.version: exp}
        return exp

    def is_stale(self, state: StoreState, now: _dt.datetime) -> bool:
        """True when the last successful sync (by any process sharing the cache) is older
        than ``max_staleness`` or the signed manifest has expired."""
        fresh = self._fresh
        mono = time.monotonic()
        if fresh is None or fresh[0] != state.version or mono > fresh[3]:
            last = self._clock.last_success() or state.applied_at
            fresh = (
                state.version,
                last + _dt.timedelta(seconds=self.max_staleness),
                self.manifest_expiry(state),
                mono + 1.0,
            )
            self._fresh = fresh
        return now > fresh[1] or now >= fresh[2]
