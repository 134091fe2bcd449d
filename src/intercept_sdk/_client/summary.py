"""The quarterly feedback summary (惩戒情况) of one unit, computed from its outbox journal."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

from .._exceptions import InvalidReport
from .._protocol.reports import quarterly_window
from .._util import format_utc
from .ledger import Deadlines

if TYPE_CHECKING:  # pragma: no cover
    from .outbox import Outbox

__all__ = ["summarize"]


_SUMMARY_COUNTS: Final = (
    ("interception", "interceptions"),
    ("review_outcome", "review_outcomes"),
    ("lift", "lifts"),
    ("objection", "objections"),
    ("data_error", "data_errors"),
)


def summarize(
    outbox: Outbox,
    year: int,
    quarter: int,
    checks_performed: int,
    *,
    deadlines: Deadlines | None = None,
    restrictions: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The quarterly feedback summary (惩戒情况) of one unit, from the outbox's journal.

    Counts every report *created* in the quarter (by ``created_at``), whether it is still
    queued, already sent or dead-lettered, so the summary does not depend on connectivity;
    ``quarterly_summary`` reports themselves are not counted. ``checks_performed`` (how
    many list checks the unit ran) comes from the caller. The result is plain JSON and is
    meant to be sent as the ``details`` of a ``quarterly_summary`` report::

        {"year": 2026, "quarter": 1, "period_start": "2025-12-31T16:00:00Z",
         "period_end": "2026-03-31T16:00:00Z", "due_date": "2026-04-30",
         "checks_performed": 1200, "interceptions": 7, "review_outcomes": 2, "lifts": 1,
         "objections": 1, "data_errors": 0,
         "by_measure": {"consumption.star_hotel": {"interception": 7, "lift": 1},
                        "unspecified": {"objection": 1}},
         "deadlines": {"feedback_due_days": 30, "lift_deadline_days": 3, ...},
         "restrictions": {"enforced": 7, "lifts_due": 1, "lifted": 1, "lifted_late": 0,
                          "overdue_at_end": 0, ...}}

    ``due_date`` is the quarter's last day plus ``deadlines.feedback_due_days`` (30 by
    default; 15 where a local rule says so). ``restrictions`` are the restriction
    ledger's figures for the quarter (:meth:`Ledger.quarter_figures`), when given.
    """
    if isinstance(checks_performed, bool) or not isinstance(checks_performed, int):
        raise InvalidReport("checks_performed must be a non-negative integer")
    if checks_performed < 0:
        raise InvalidReport("checks_performed must be a non-negative integer")
    start, end, _ = quarterly_window(year, quarter)
    deadlines = deadlines or Deadlines()
    due = deadlines.feedback_due(end)
    counts = outbox.stats_by(start, end)
    by_kind: dict[str, int] = {}
    by_measure: dict[str, dict[str, int]] = {}
    for (measure, kind), n in sorted(counts.items(), key=lambda kv: (kv[0][0] or "", kv[0][1])):
        if kind == "quarterly_summary":
            continue
        by_kind[kind] = by_kind.get(kind, 0) + n
        slot = by_measure.setdefault(measure or "unspecified", {})
        slot[kind] = slot.get(kind, 0) + n
    summary: dict[str, Any] = {
        "year": year,
        "quarter": quarter,
        "period_start": format_utc(start),
        "period_end": format_utc(end),
        "due_date": due.isoformat(),
        "checks_performed": checks_performed,
    }
    for kind, label in _SUMMARY_COUNTS:
        summary[label] = by_kind.get(kind, 0)
    summary["by_measure"] = by_measure
    summary["deadlines"] = {
        "feedback_due_days": deadlines.feedback_due_days,
        "lift_deadline_days": deadlines.lift_deadline_days,
    }
    if restrictions is not None:
        summary["restrictions"] = dict(restrictions)
    return summary
