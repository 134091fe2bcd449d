"""Reports to the platform: interceptions, lifts, objections, data errors, summaries.

Why a module: feedback is a legal duty (惩戒情况反馈), made of signed reports queued
durably in the outbox and uploaded by the sender; building them from decisions, matches
or entries, and the quarterly summary, are one responsibility of the client.

Guarantees:

* ``report``/``report_raw`` return a report id only once the signed report is committed
  to the outbox (it survives a crash); the sender is then nudged.
* ``intercepted`` never lets a report problem turn an interception into an ordinary
  error: a report that cannot be queued is logged and ``report_id`` is ``None``.
* A data error (a listed minor) is logged and reported once per entry per client.
* Last quarter's summary is uploaded once it has closed, idempotently (its report id is
  derived from the subscriber and the quarter).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from .._exceptions import ConfigurationError, Intercepted, InterceptError, InvalidInput
from .._protocol.catalog import Measure
from .._protocol.reports import CHINA_TZ, build_report, quarterly_window, sign_report
from .._util import parse_utc
from .audit import AuditLog
from .decisions import Decision, Match, notice_text
from .freshness import CacheClock
from .keys import SubscriberKeys
from .outbox import Outbox, Sender
from .status import Lifecycle
from .summary import summarize

__all__ = ["Reporter"]

log = logging.getLogger("intercept_sdk.client")

_DEFAULT_OUTCOME = {
    "interception": "blocked",
    "lift": "lifted",
    "objection": "received",
    "data_error": "not_enforced",
}


class Reporter:
    """Builds, signs and queues the client's reports (see the module docstring)."""

    def __init__(
        self,
        outbox: Outbox,
        sender: Sender | None,
        clock: CacheClock,
        *,
        life: Lifecycle,
        subscriber_id: str | None,
        keys: SubscriberKeys | None,
        unit_name: str | None,
        jurisdiction: str | None = None,
        measure: Callable[[str], Measure],
        audit: AuditLog | None,
        audit_dir: Path,
    ) -> None:
        self.outbox = outbox
        self.sender = sender
        self.clock = clock
        self.life = life
        self.subscriber_id = subscriber_id
        self.keys = keys
        self.unit_name = unit_name
        self.jurisdiction = jurisdiction
        self._measure = measure
        self.audit = audit
        self.audit_dir = audit_dir
        self._reported_data_errors: set[str] = set()
        self._quarter_checked: str | None = None

    def notice(self, decision: Decision) -> str:
        """The Chinese notice text for a decision (what ``Intercepted.notice`` holds)."""
        return notice_text(decision, self.unit_name, self.jurisdiction)

    # -- reports -----------------------------------------------------------------------
    def report_raw(self, kind: str, **fields: Any) -> str:
        """Build, sign and queue a report of ``kind`` with the payload ``fields``."""
        self.life.check_open()
        if self.keys is None or self.subscriber_id is None:
            raise ConfigurationError("reports need subscriber_id and subscriber_key")
        payload = build_report(
            kind, subscriber_id=self.subscriber_id, now=self.clock.now(), **fields
        )
        envelope = sign_report(payload, self.keys.report)
        self.outbox.enqueue(
            envelope,
            report_id=payload["report_id"],
            kind=kind,
            measure=payload.get("measure"),
            created_at=parse_utc(payload["created_at"]),
        )
        if self.sender is not None:
            self.sender.notify()
        return str(payload["report_id"])

    def report(self, kind: str, subject_of_report: Any = None, **details: Any) -> str:
        """A report about a decision, a match, an entry (dict) or an entry id."""
        outcome = details.pop("outcome", None)
        measure = details.pop("measure", None)
        fields = self._about(subject_of_report, details)
        if measure is not None:
            fields["measure"] = self._measure(measure).code
        fields["outcome"] = outcome if outcome is not None else _DEFAULT_OUTCOME.get(kind)
        return self.report_raw(kind, details=details, **fields)

    @staticmethod
    def _about(subject_of_report: Any, details: dict[str, Any]) -> dict[str, Any]:
        """The payload fields naming what a report is about (pops ``entry_id`` from
        ``details`` when it picks one of a decision's matches)."""
        fields: dict[str, Any] = {}
        match: Match | None = None
        if isinstance(subject_of_report, Decision):
            fields["measure"] = subject_of_report.measure
            fields["list_version"] = subject_of_report.list_version
            entry_id = details.pop("entry_id", None)
            match = next(
                (m for m in subject_of_report.matches if entry_id in (None, m.entry_id)), None
            )
            if match is None and subject_of_report.matches:
                raise InvalidInput(f"entry {entry_id!r} is not among the decision's matches")
        elif isinstance(subject_of_report, Match):
            match = subject_of_report
        elif isinstance(subject_of_report, Mapping):
            fields["entry_id"] = subject_of_report.get("entry_id")
            fields["case_no"] = subject_of_report.get("case_no")
        elif isinstance(subject_of_report, str):
            fields["entry_id"] = subject_of_report
        elif subject_of_report is not None:
            raise InvalidInput("report(kind, decision | match | entry dict | entry_id, ...)")
        if match is not None:
            fields["entry_id"] = match.entry_id
            fields["case_no"] = match.case_no
        return fields

    def intercepted(self, decision: Decision, context: Mapping[str, Any]) -> Intercepted:
        """Queue the interception report (durably) and build the exception to raise.

        A report that cannot be queued (no subscriber key, a full outbox, a context value
        the report format refuses, such as an ID number) is logged and ``report_id`` is
        ``None``: it never turns the interception into an ordinary error that a
        fail-open handler could swallow.
        """
        report_id = None
        try:
            report_id = self.report("interception", decision, **context)
        except ConfigurationError:
            log.warning("interception not reported: no subscriber key configured")
        except InterceptError as exc:
            log.error("interception not reported: %s: %s", type(exc).__name__, exc)
        return Intercepted(decision, self.notice(decision), report_id)

    def data_errors(self, decision: Decision) -> None:
        """A minor's listing reached the site: never enforced; say so, once per entry."""
        for entry_id in decision.data_errors:
            if entry_id in self._reported_data_errors:
                continue
            self._reported_data_errors.add(entry_id)
            log.error(
                "entry %s lists a person who was under 18 on its published date; "
                "not enforced (data error)",
                entry_id,
            )
            if self.keys is None:
                continue
            try:
                self.report_raw(
                    "data_error",
                    measure=decision.measure,
                    entry_id=entry_id,
                    list_version=decision.list_version,
                    outcome="not_enforced",
                    details={"description": "listed person was under 18 on the published date"},
                )
            except InterceptError as exc:
                log.error("could not queue data_error report for %s: %s", entry_id, exc)

    # -- the quarterly summary ---------------------------------------------------------
    def checks_in(self, start: _dt.datetime, end: _dt.datetime) -> int:
        """Records in the cache's audit log (every process's files) between ``start`` and
        ``end``; this client's buffered records are flushed first."""
        if self.audit is not None:
            self.audit.flush()
        s, e = start.astimezone(_dt.timezone.utc), end.astimezone(_dt.timezone.utc)
        return sum(_count_in(path, s, e) for path in sorted(self.audit_dir.glob(_GLOB)))

    def quarterly_summary(self, year: int, quarter: int, *, upload: bool = False) -> dict[str, Any]:
        """Counts of the quarter (checks, interceptions, lifts, objections...) and due date."""
        start, end, _ = quarterly_window(year, quarter)
        summary = summarize(self.outbox, year, quarter, self.checks_in(start, end))
        if upload:
            self.report_raw(
                "quarterly_summary",
                details=summary,
                report_id=self._summary_id(f"{year}Q{quarter}"),
            )
        return summary

    def _summary_id(self, tag: str) -> str:
        return hashlib.sha256(f"{self.subscriber_id}|{tag}".encode()).hexdigest()[:32]

    def maybe_quarterly(self) -> None:
        """Upload last quarter's summary once it has closed (idempotent by report id)."""
        if self.keys is None:
            return
        now = self.clock.now().astimezone(CHINA_TZ)
        q = (now.month - 1) // 3 + 1
        year, quarter = (now.year - 1, 4) if q == 1 else (now.year, q - 1)
        tag = f"{year}Q{quarter}"
        if self._quarter_checked == tag:
            return
        self._quarter_checked = tag
        if self.outbox.has_report(self._summary_id(tag)):
            return
        with contextlib.suppress(InterceptError):
            self.quarterly_summary(year, quarter, upload=True)


_GLOB = "audit-*.jsonl"


def _count_in(path: Path, start: _dt.datetime, end: _dt.datetime) -> int:
    """Records of one audit file whose time lies in ``[start, end)``."""
    n = 0
    with path.open("rb") as f:
        for line in f:
            try:
                t = _dt.datetime.fromisoformat(json.loads(line)["t"])
            except (ValueError, KeyError, TypeError):
                continue
            if start <= t < end:
                n += 1
    return n
