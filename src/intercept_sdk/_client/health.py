"""Sync outcomes shared by every process on a cache, and the health/readiness answer.

Why: ``status().last_error`` used to live in the memory of the process that failed; a
second process (``intercept-sdk status --json``, another gunicorn worker, the agent)
showed ``null`` while every sync failed. Each sync attempt now records its outcome in
``<cache>/health.json`` (written atomically, mode 0600), so every process on the cache
sees the newest outcome, whichever process had it.

Guarantees: the file holds no identifier and no list data (an error kind and message, a
time, a count); an unreadable or malformed file reads as "nothing recorded", never
raises; writes are atomic (a reader sees the old record or the new one).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._util import atomic_write, format_utc, parse_utc
from .status import LastError, Status

__all__ = ["HEALTH_FILE", "Health", "SharedOutcome", "SharedOutcomes", "health_of"]

log = logging.getLogger("intercept_sdk.health")

HEALTH_FILE = "health.json"


@dataclass(frozen=True)
class SharedOutcome:
    """The newest sync outcome on the cache (any process)."""

    ok: bool
    at: _dt.datetime
    error: LastError | None
    consecutive_failures: int
    pid: int


class SharedOutcomes:
    """Reads and writes ``<cache>/health.json`` (see the module docstring)."""

    def __init__(self, cache_dir: Path) -> None:
        self.path = Path(cache_dir) / HEALTH_FILE

    def read(self) -> SharedOutcome | None:
        """The recorded outcome, or None (absent or unreadable)."""
        try:
            data = json.loads(self.path.read_bytes())
            err = data.get("error")
            error = (
                LastError(
                    str(err["kind"]),
                    str(err["message"]),
                    int(err["http_status"]) if err.get("http_status") is not None else None,
                    parse_utc(str(err["at"])),
                )
                if isinstance(err, dict)
                else None
            )
            return SharedOutcome(
                ok=bool(data["ok"]),
                at=parse_utc(str(data["at"])),
                error=error,
                consecutive_failures=int(data.get("consecutive_failures", 0)),
                pid=int(data.get("pid", 0)),
            )
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None

    def record(self, error: LastError | None, at: _dt.datetime) -> SharedOutcome:
        """Record one attempt's outcome (``error`` None: success); never raises."""
        previous = self.read()
        failures = 0
        if error is not None:
            failures = 1 + (previous.consecutive_failures if previous and not previous.ok else 0)
        outcome = SharedOutcome(error is None, at, error, failures, os.getpid())
        body: dict[str, Any] = {
            "ok": outcome.ok,
            "at": format_utc(at),
            "consecutive_failures": failures,
            "pid": outcome.pid,
            "error": None
            if error is None
            else {
                "kind": error.kind,
                "message": error.message[:2000],
                "http_status": error.http_status,
                "at": format_utc(error.at),
            },
        }
        with contextlib.suppress(OSError):
            atomic_write(self.path, json.dumps(body).encode(), mode=0o600, durable=False)
        return outcome


@dataclass(frozen=True)
class Health:
    """Liveness and readiness of a client, for probes (``/healthz``, ``/readyz``).

    ``live``: the client is usable (not closed). ``ready``: it can answer checks from a
    verified, fresh list (synced at least once and not stale). ``reasons`` says why not.
    """

    live: bool
    ready: bool
    reasons: tuple[str, ...]
    list_version: int | None
    consecutive_failures: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "live": self.live,
            "ready": self.ready,
            "reasons": list(self.reasons),
            "list_version": self.list_version,
            "consecutive_failures": self.consecutive_failures,
        }


def health_of(status: Status, outcome: SharedOutcome | None, *, closed: bool = False) -> Health:
    """The :class:`Health` a status (and the shared outcome) amounts to."""
    reasons: list[str] = []
    if status.list_version is None:
        reasons.append("never synced: no verified list yet")
    elif status.stale:
        reasons.append("the list is stale (max_staleness passed or manifest expired)")
    if outcome is not None and not outcome.ok and outcome.error is not None:
        reasons.append(f"last sync failed: {outcome.error.kind}: {outcome.error.message}")
    ready = not closed and status.list_version is not None and not status.stale
    return Health(
        live=not closed,
        ready=ready,
        reasons=tuple(reasons),
        list_version=status.list_version,
        consecutive_failures=outcome.consecutive_failures if outcome else 0,
    )
