"""The client's state: open or closed (:class:`Lifecycle`), and what ``status()`` reports.

:class:`Status` and :class:`LastError` are plain frozen data (a snapshot, for dashboards
and ``intercept-sdk status``); :meth:`Status.to_dict` gives JSON-ready values (times as
ISO 8601 UTC text, dates as ISO dates).

The accountability fields come from the restriction ledger and the deployment's
deadlines: ``lifts_due`` (restrictions the list no longer supports, not yet reported
lifted), ``lifts_overdue`` (those past their lift deadline), ``lift_deadline_days``
(working days), ``feedback_due_days``, ``summary_due`` (the due date of the next
quarterly summary owed: the oldest not yet acknowledged, else the current quarter's) and
``summaries_overdue`` (quarters, e.g. ``2026Q1``, whose summary is past due and has not
reached the platform).
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass
from typing import Any

from .._exceptions import ClientClosed
from .._util import format_utc

__all__ = ["LastError", "Lifecycle", "Status"]


@dataclass(frozen=True)
class LastError:
    """The most recent failure of a background or explicit sync."""

    kind: str
    message: str
    http_status: int | None
    at: _dt.datetime


@dataclass(frozen=True)
class Status:
    """A snapshot of the client's health, for dashboards and ``intercept-sdk status``."""

    list_version: int | None
    entries: int | None
    last_success: _dt.datetime | None
    manifest_expires: _dt.datetime | None
    stale: bool
    last_error: LastError | None
    pending_reports: int
    dead_letters: int
    sent_reports: int
    report_error: str | None
    platform: str
    cache_dir: str
    push_connected: bool = False
    lifts_due: int = 0
    lifts_overdue: int = 0
    lift_deadline_days: int = 3
    feedback_due_days: int = 30
    summary_due: _dt.date | None = None
    summaries_overdue: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in self.__dict__.items():
            if isinstance(v, _dt.datetime):
                out[k] = format_utc(v)
            elif isinstance(v, _dt.date):
                out[k] = v.isoformat()
            elif isinstance(v, tuple):
                out[k] = list(v)
            elif isinstance(v, LastError):
                out[k] = {**v.__dict__, "at": format_utc(v.at)}
            else:
                out[k] = v
        return out


class Lifecycle:
    """Whether the client is closed; shared by its parts (one flag, one message)."""

    __slots__ = ("closed",)

    def __init__(self) -> None:
        self.closed = False

    def check_open(self) -> None:
        if self.closed:
            raise ClientClosed("the client is closed")
