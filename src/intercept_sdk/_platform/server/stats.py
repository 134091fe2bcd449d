"""Statistics and compliance per unit, per measure, per quarter, from the report store.

Why: the platform compiles 动态/通报 and supervises departments (督促检查、通报批评、考核).
It needs, per unit and quarter, what the unit reported (checks, interceptions, reviews,
lifts, objections, data errors), how fast it lifted restrictions after a revocation, how
fresh its list is, and whether its quarterly feedback (惩戒情况) arrived on time.

What is guaranteed:

* Only the :class:`~.storage.ReportStore` read interface (``query``) is used, so any
  backend works; reports are read page by page (bounded memory per page) and each
  ``report_id`` is counted once.
* A report belongs to the quarter (China Standard Time) of its ``created_at``: the time the
  unit acted, not when connectivity let the report through. A quarterly summary belongs to
  the quarter it names and is on time when the platform *received* it by the due date
  (the quarter's last day plus ``due_days``, 30 by default; 15 where a local rule says so).
* Lift latency is measured from the revocation time (``revocations``: entry id -> time,
  from the platform's own source list, else a lift report's ``details["revoked_at"]``) to
  the lift report's ``created_at``. A revoked entry a unit intercepted and has not lifted
  by the end of the ``lift_working_days``-th working day (China) after the revocation's
  day is an overdue lift: the same rule the unit's ledger applies
  (:func:`~intercept_sdk._protocol.deadlines.lift_deadline`).
* Every figure is computed from stored signed reports; nothing is estimated. A figure the
  reports do not carry is ``None`` (JSON ``null``, an empty CSV cell), never 0.
* The CSV export neutralises cells that a spreadsheet would run as a formula.
"""

from __future__ import annotations

import csv
import datetime as _dt
import io
import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from ..._exceptions import InvalidInput
from ..._protocol.deadlines import feedback_due, lift_deadline
from ..._protocol.reports import CHINA_TZ, quarterly_window
from ..._util import format_utc, parse_utc, utcnow
from ..units import Unit, flag_report, load_units
from .storage import ReportStore

__all__ = [
    "ALL_MEASURES",
    "COLUMNS",
    "Statistics",
    "StatsSource",
    "compute",
    "iter_reports",
    "quarter_of",
    "revocations_from_source",
    "to_csv",
]

log = logging.getLogger("intercept_sdk.platform")

#: The ``measure`` of a unit-quarter row (all measures together, plus checks and summary).
ALL_MEASURES: Final = "*"
_PAGE = 5000
_KIND_COLUMN: Final = {
    "interception": "interceptions",
    "review_outcome": "reviews",
    "lift": "lifts",
    "objection": "objections",
    "data_error": "data_errors",
}
#: Columns of the per unit/measure/quarter table (CSV header, JSON row keys).
COLUMNS: Final = (
    "unit", "name", "department", "region", "quarter", "measure",
    "checks", "interceptions", "reviews", "lifts", "objections", "data_errors",
    "flagged", "lift_latency_avg_hours", "lift_latency_max_hours", "lifts_overdue",
    "summary_status", "summary_due", "summary_received_at",
    "last_list_version", "versions_behind", "last_report_at",
)  # fmt: skip


def quarter_of(when: _dt.datetime) -> str:
    """``2026Q1``: the calendar quarter of ``when`` in China Standard Time."""
    local = when.astimezone(CHINA_TZ)
    return f"{local.year}Q{(local.month - 1) // 3 + 1}"


def iter_reports(store: ReportStore, page: int = _PAGE) -> Iterator[dict[str, Any]]:
    """Every stored payload once, in arrival order, ``page`` rows per query.

    Pages on ``received_at`` (the only ordered filter of ``ReportStore.query``); rows of
    the boundary second are read again and skipped by ``report_id``. A page filled by one
    second's rows doubles the page size until the second is read whole.
    """
    since: str | None = None
    seen_at_since: set[str] = set()
    size = page
    while True:
        rows = store.query(None, None, since, size)
        fresh = [r for r in rows if r["report_id"] not in seen_at_since]
        yield from fresh
        if len(rows) < size:
            return
        last = rows[-1]["received_at"]
        if last == since and not fresh:
            size *= 2  # the whole page is one second: read more of it at once
            continue
        if last != since:
            seen_at_since = set()
        since = last
        seen_at_since.update(r["report_id"] for r in rows if r["received_at"] == last)
        size = page


def revocations_from_source(path: Path) -> dict[str, _dt.datetime]:
    """``entry_id -> revoked_at`` of revoked/deleted entries in a source list (JSON Lines)."""
    import json

    out: dict[str, _dt.datetime] = {}
    with Path(path).open(encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                e = json.loads(line)
                if e.get("status", "active") != "active" and e.get("revoked_at"):
                    out[str(e["entry_id"])] = parse_utc(str(e["revoked_at"]))
            except (ValueError, KeyError, AttributeError):
                continue
    return out


@dataclass
class StatsSource:
    """What the statistics read: the report store, unit records, the current version.

    ``subscribers_dir`` holds the unit records (``<id>.unit.json``); ``current_version``
    returns the published list version (None if unknown); ``revocations`` returns
    ``entry_id -> revoked_at`` known to the platform (default: none). ``due_days`` and
    ``lift_working_days`` are the deployment's deadlines; ``now`` is injectable for tests.
    """

    store: ReportStore
    subscribers_dir: Path | None = None
    current_version: Callable[[], int | None] = lambda: None
    revocations: Callable[[], Mapping[str, _dt.datetime]] = dict
    due_days: int = 30
    lift_working_days: int = 3
    now: Callable[[], _dt.datetime] = utcnow

    def __post_init__(self) -> None:
        for name in ("due_days", "lift_working_days"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 366:
                raise InvalidInput(f"{name} must be a whole number of days in 0..366")

    def compute(self) -> Statistics:
        """The statistics as of now (reads the whole store; see :func:`compute`)."""
        return compute(
            iter_reports(self.store),
            load_units(self.subscribers_dir),
            current_version=self.current_version(),
            revocations=self.revocations(),
            due_days=self.due_days,
            lift_working_days=self.lift_working_days,
            now=self.now(),
        )


@dataclass
class _Cell:
    counts: dict[str, int] = field(default_factory=dict)
    flagged: int = 0
    latencies: list[float] = field(default_factory=list)
    lifts_overdue: int = 0


@dataclass
class _UnitState:
    last_version: int | None = None
    last_report_at: _dt.datetime | None = None
    summaries: dict[str, tuple[_dt.datetime, dict[str, Any]]] = field(default_factory=dict)
    checks: dict[str, int] = field(default_factory=dict)
    # (entry_id, measure) -> first interception time
    intercepted: dict[tuple[str, str], _dt.datetime] = field(default_factory=dict)
    lifted: dict[tuple[str, str], tuple[_dt.datetime, _dt.datetime | None]] = field(
        default_factory=dict
    )
    quarters: set[str] = field(default_factory=set)


@dataclass
class Statistics:
    """The computed figures: ``rows`` (see :data:`COLUMNS`), units, overdue items."""

    generated_at: str
    current_version: int | None
    due_days: int
    lift_working_days: int
    rows: list[dict[str, Any]]
    units: list[dict[str, Any]]
    overdue_summaries: list[dict[str, Any]]
    overdue_lifts: list[dict[str, Any]]
    flags: list[dict[str, Any]]

    def to_json(self) -> dict[str, Any]:
        """Plain JSON (the ``stats.json`` export and the console's data)."""
        return {
            "generated_at": self.generated_at,
            "current_version": self.current_version,
            "due_days": self.due_days,
            "lift_working_days": self.lift_working_days,
            "rows": self.rows,
            "units": self.units,
            "overdue_summaries": self.overdue_summaries,
            "overdue_lifts": self.overdue_lifts,
            "flags": self.flags,
        }

    def row(self, unit: str, quarter: str, measure: str = ALL_MEASURES) -> dict[str, Any]:
        """The row of ``unit`` in ``quarter`` for ``measure``; KeyError when absent."""
        for r in self.rows:
            if (r["unit"], r["quarter"], r["measure"]) == (unit, quarter, measure):
                return r
        raise KeyError((unit, quarter, measure))


class _Builder:
    """One pass over the reports, then the rows (kept small: one method per concern)."""

    def __init__(self, units: Mapping[str, Unit], revocations: Mapping[str, _dt.datetime]):
        self.units = units
        self.revocations = dict(revocations)
        self.cells: dict[tuple[str, str, str], _Cell] = {}
        self.state: dict[str, _UnitState] = {}
        self.flags: list[dict[str, Any]] = []
        self.seen: set[str] = set()

    def cell(self, unit: str, quarter: str, measure: str) -> _Cell:
        return self.cells.setdefault((unit, quarter, measure), _Cell())

    def add(self, report: Mapping[str, Any]) -> None:
        rid = report.get("report_id")
        if not isinstance(rid, str) or rid in self.seen:
            return
        self.seen.add(rid)
        try:
            created = parse_utc(str(report["created_at"]))
            received = parse_utc(str(report["received_at"]))
            sid, kind = str(report["subscriber_id"]), str(report["kind"])
        except (KeyError, ValueError):
            log.warning("report %s lacks a usable time or subscriber; not counted", rid)
            return
        st = self.state.setdefault(sid, _UnitState())
        if st.last_report_at is None or created > st.last_report_at:
            st.last_report_at = created
        self._version(st, report.get("list_version"))
        self._flag(sid, report, created)
        if kind == "quarterly_summary":
            self._summary(st, report, received)
            return
        quarter = quarter_of(created)
        st.quarters.add(quarter)
        measure = report.get("measure") or "unspecified"
        column = _KIND_COLUMN.get(kind)
        if column is None:
            return
        for m in (str(measure), ALL_MEASURES):
            c = self.cell(sid, quarter, m)
            c.counts[column] = c.counts.get(column, 0) + 1
        entry = report.get("entry_id")
        if isinstance(entry, str) and kind == "interception":
            st.intercepted.setdefault((entry, str(measure)), created)
        elif isinstance(entry, str) and kind == "lift":
            details = report.get("details") or {}
            revoked = _maybe_time(details.get("revoked_at")) if isinstance(details, dict) else None
            st.lifted.setdefault((entry, str(measure)), (created, revoked))

    @staticmethod
    def _version(st: _UnitState, version: object) -> None:
        if (
            isinstance(version, int)
            and not isinstance(version, bool)
            and (st.last_version is None or version > st.last_version)
        ):
            st.last_version = version

    def _flag(self, sid: str, report: Mapping[str, Any], created: _dt.datetime) -> None:
        reasons = flag_report(self.units.get(sid), report)
        if not reasons:
            return
        measure = report.get("measure") or "unspecified"
        quarter = quarter_of(created)
        for m in (str(measure), ALL_MEASURES):
            self.cell(sid, quarter, m).flagged += 1
        self.flags.append(
            {"unit": sid, "report_id": report["report_id"], "kind": report.get("kind"),
             "measure": report.get("measure"), "quarter": quarter, "reasons": reasons}
        )  # fmt: skip

    def _summary(self, st: _UnitState, report: Mapping[str, Any], received: _dt.datetime) -> None:
        details = report.get("details")
        if not isinstance(details, dict):
            return
        tag = f"{details.get('year')}Q{details.get('quarter')}"
        kept = st.summaries.get(tag)
        if kept is None or received < kept[0]:  # the first copy received counts
            st.summaries[tag] = (received, details)
        checks = details.get("checks_performed")
        if isinstance(checks, int) and not isinstance(checks, bool):
            st.checks[tag] = checks
        st.quarters.add(tag)
        for key in ("list_version", "last_sync_version"):
            self._version(st, details.get(key))


def _maybe_time(value: object) -> _dt.datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return parse_utc(value)
    except ValueError:
        return None


def _lift_figures(b: _Builder, lift_days: int, now: _dt.datetime) -> list[dict[str, Any]]:
    """Latencies into the cells; overdue lifts (revoked, intercepted, not lifted in time)."""
    overdue: list[dict[str, Any]] = []
    for sid, st in b.state.items():
        for key, (lifted_at, revoked_hint) in st.lifted.items():
            revoked = b.revocations.get(key[0]) or revoked_hint
            if revoked is None:
                continue
            hours = max(0.0, (lifted_at - revoked).total_seconds() / 3600.0)
            for m in (key[1], ALL_MEASURES):
                b.cell(sid, quarter_of(lifted_at), m).latencies.append(hours)
        for key, _intercepted_at in st.intercepted.items():
            revoked = b.revocations.get(key[0])
            if revoked is None or key in st.lifted:
                continue
            due = lift_deadline(revoked, lift_days)
            if now <= due:
                continue
            for m in (key[1], ALL_MEASURES):
                b.cell(sid, quarter_of(revoked), m).lifts_overdue += 1
            overdue.append(
                {"unit": sid, "entry_id": key[0], "measure": key[1],
                 "revoked_at": format_utc(revoked), "due": format_utc(due),
                 "days_overdue": round((now - due).total_seconds() / 86400.0, 1)}
            )  # fmt: skip
    return sorted(overdue, key=lambda o: (o["due"], o["unit"], o["entry_id"]))


def _closed_quarters(first: str, now: _dt.datetime) -> list[str]:
    """Quarters from ``first`` to the one before ``now`` (those whose summary is owed)."""
    year, q = int(first[:4]), int(first[5])
    current = quarter_of(now)
    out: list[str] = []
    while f"{year}Q{q}" < current and len(out) < 400:
        out.append(f"{year}Q{q}")
        year, q = (year + 1, 1) if q == 4 else (year, q + 1)
    return out


def _summary_status(
    st: _UnitState, tag: str, due_days: int, now: _dt.datetime
) -> tuple[str, str, str | None]:
    """(status, due date, received_at): on_time / late / overdue (missing) / pending."""
    year, quarter = int(tag[:4]), int(tag[5])
    _, end, _ = quarterly_window(year, quarter)
    due_date = feedback_due(end, due_days)
    due_end = _dt.datetime.combine(due_date + _dt.timedelta(days=1), _dt.time(), CHINA_TZ)
    got = st.summaries.get(tag)
    if got is not None:
        status = "on_time" if got[0] < due_end else "late"
        return status, due_date.isoformat(), format_utc(got[0])
    return ("overdue" if now >= due_end else "pending"), due_date.isoformat(), None


def _unit_info(sid: str, unit: Unit | None) -> dict[str, Any]:
    if unit is None:
        return {"unit": sid, "name": None, "department": None, "region": None}
    return {"unit": sid, "name": unit.name, "department": unit.department, "region": unit.region}


def _freshness(st: _UnitState, current: int | None) -> tuple[int | None, str]:
    if st.last_version is None:
        return None, "unknown"
    if current is None:
        return None, "unknown"
    behind = max(0, current - st.last_version)
    return behind, ("current" if behind == 0 else "1 behind" if behind == 1 else "2+ behind")


def compute(
    reports: Iterator[Mapping[str, Any]] | list[Mapping[str, Any]],
    units: Mapping[str, Unit],
    *,
    current_version: int | None = None,
    revocations: Mapping[str, _dt.datetime] | None = None,
    due_days: int = 30,
    lift_working_days: int = 3,
    now: _dt.datetime | None = None,
) -> Statistics:
    """The statistics of ``reports`` (stored payloads with ``received_at``); see the module doc.

    Every unit with a record appears (with its owed summaries) even if it sent nothing.
    """
    now = now or utcnow()
    b = _Builder(units, revocations or {})
    for r in reports:
        b.add(r)
    for sid in units:
        b.state.setdefault(sid, _UnitState())
    overdue_lifts = _lift_figures(b, lift_working_days, now)
    rows, unit_rows, overdue_summaries = _rows(b, current_version, due_days, now)
    return Statistics(
        generated_at=format_utc(now),
        current_version=current_version,
        due_days=due_days,
        lift_working_days=lift_working_days,
        rows=rows,
        units=unit_rows,
        overdue_summaries=overdue_summaries,
        overdue_lifts=overdue_lifts,
        flags=b.flags,
    )


def _owed_quarters(sid: str, st: _UnitState, unit: Unit | None, now: _dt.datetime) -> list[str]:
    """Quarters whose summary the unit owes: from its record's date or first report on."""
    firsts = sorted(st.quarters)
    start = firsts[0] if firsts else None
    if unit is not None and unit.created_at:
        registered = quarter_of(parse_utc(unit.created_at))
        start = registered if start is None else min(start, registered)
    if start is None:
        return []
    return _closed_quarters(start, now)


def _rows(
    b: _Builder, current: int | None, due_days: int, now: _dt.datetime
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    rows: list[dict[str, Any]] = []
    unit_rows: list[dict[str, Any]] = []
    overdue: list[dict[str, Any]] = []
    for sid in sorted(b.state):
        st, unit = b.state[sid], b.units.get(sid)
        info = _unit_info(sid, unit)
        behind, freshness = _freshness(st, current)
        owed = set(_owed_quarters(sid, st, unit, now))
        quarters = sorted(owed | st.quarters)
        unit_rows.append(
            {**info, "measures": list(unit.measures) if unit else [],
             "last_list_version": st.last_version, "versions_behind": behind,
             "freshness": freshness,
             "last_report_at": format_utc(st.last_report_at) if st.last_report_at else None}
        )  # fmt: skip
        for tag in quarters:
            status, due, received = _summary_status(st, tag, due_days, now)
            if status in ("overdue", "late"):
                overdue.append({**info, "quarter": tag, "status": status, "due": due,
                                "received_at": received})  # fmt: skip
            measures = sorted(m for (u, q, m) in b.cells if u == sid and q == tag)
            if ALL_MEASURES not in measures:
                measures.insert(0, ALL_MEASURES)
            for m in measures:
                rows.append(
                    _row(info, tag, m, b.cells.get((sid, tag, m), _Cell()), st,
                         (status, due, received), behind)
                )  # fmt: skip
    return rows, unit_rows, overdue


def _row(  # noqa: PLR0917 - one private call site, every argument a different part
    info: dict[str, Any],
    tag: str,
    measure: str,
    cell: _Cell,
    st: _UnitState,
    summary: tuple[str, str, str | None],
    behind: int | None,
) -> dict[str, Any]:
    whole = measure == ALL_MEASURES
    lat = cell.latencies
    row: dict[str, Any] = {**info, "quarter": tag, "measure": measure}
    row["checks"] = st.checks.get(tag) if whole else None
    for column in _KIND_COLUMN.values():
        row[column] = cell.counts.get(column, 0)
    row.update(
        flagged=cell.flagged,
        lift_latency_avg_hours=round(sum(lat) / len(lat), 2) if lat else None,
        lift_latency_max_hours=round(max(lat), 2) if lat else None,
        lifts_overdue=cell.lifts_overdue,
        summary_status=summary[0] if whole else None,
        summary_due=summary[1] if whole else None,
        summary_received_at=summary[2] if whole else None,
        last_list_version=st.last_version if whole else None,
        versions_behind=behind if whole else None,
        last_report_at=format_utc(st.last_report_at) if whole and st.last_report_at else None,
    )
    return row


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _cell_text(value: object) -> str:
    if value is None:
        return ""
    text = str(value)
    if isinstance(value, str) and text.startswith(_FORMULA_START):
        return "'" + text  # a spreadsheet must not run a unit's name as a formula
    return text


def to_csv(stats: Statistics) -> str:
    """The rows as CSV (header :data:`COLUMNS`); open it in a spreadsheet for the 通报."""
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\r\n")
    w.writerow(COLUMNS)
    for r in stats.rows:
        w.writerow([_cell_text(r.get(c)) for c in COLUMNS])
    return out.getvalue()
