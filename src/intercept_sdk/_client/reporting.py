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
* Every quarter that closed since the cache began (at most :data:`_MAX_QUARTERS_BACK`)
  has its summary queued, idempotently
  (its report id is derived from the subscriber and the quarter), as soon as a sync runs;
  a summary past its due date that has not reached the platform is warned about (once
  per process) and the sender is nudged at once.
* Enforced decisions (``block()``: block and review) are kept in the restriction ledger
  (:mod:`.ledger`); a ``lift``, ``review_outcome`` or ``objection`` report is linked to the
  restriction(s) it concerns (``details["decision_ref"]``, the interception's report id
  when there was one), and a ``lift`` closes them. A ledger failure is logged and never
  turns an interception into an ordinary error.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import logging
import weakref
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final

from .._exceptions import ConfigurationError, Intercepted, InterceptError, InvalidInput
from .._protocol.catalog import Measure
from .._protocol.reports import CHINA_TZ, build_report, quarterly_window, sign_report
from .._util import parse_utc
from .audit import AuditLog
from .decisions import Decision, Entity, Match, Person, Subject, notice_text
from .freshness import CacheClock
from .keys import SubscriberKeys
from .ledger import Deadlines, Ledger, LedgerEvent, Restriction
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

#: Report kinds that concern an enforced restriction and are linked to it in the ledger.
_LINKED_KINDS: Final = frozenset({"lift", "review_outcome", "objection"})
#: How many closed quarters back an unfiled summary is still queued.
_MAX_QUARTERS_BACK: Final = 8


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
        ledger: Ledger | None = None,
        on_events: Callable[[list[LedgerEvent]], None] | None = None,
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
        self.ledger = ledger
        self.deadlines = ledger.deadlines if ledger is not None else Deadlines()
        self._on_events = on_events
        self._reported_data_errors: set[str] = set()
        self._quarter_checked: str | None = None
        self._warned_overdue: set[str] = set()
        # refs of the restrictions each enforced Decision object was kept under
        self._refs: weakref.WeakKeyDictionary[Decision, list[str]] = weakref.WeakKeyDictionary()

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
        """A report about a decision, an :class:`Intercepted`, a ledger
        :class:`Restriction`, a match, an entry (dict) or an entry id.

        For ``lift``, ``review_outcome`` and ``objection`` the restriction(s) concerned are
        found in the ledger (``decision_ref=`` names one exactly; ``subject=`` narrows an
        entry id to one person or entity) and named in ``details["decision_ref"]``; a
        ``lift`` closes them.
        """
        outcome = details.pop("outcome", None)
        measure = details.pop("measure", None)
        subject = details.pop("subject", None)
        ref = details.pop("decision_ref", None)
        fields = self._about(subject_of_report, details)
        if measure is not None:
            fields["measure"] = self._measure(measure).code
        fields["outcome"] = outcome if outcome is not None else _DEFAULT_OUTCOME.get(kind)
        refs: list[str] = []
        if kind in _LINKED_KINDS and self.ledger is not None:
            refs = self._concerns(kind, subject_of_report, ref, subject, fields)
            if refs:
                details["decision_ref"] = refs[0]
                if len(refs) > 1:
                    details["decision_refs"] = refs
                if fields.get("measure") is None:
                    fields["measure"] = self._ledger_measure(refs[0])
        elif ref is not None or subject is not None:
            raise InvalidInput(
                "decision_ref= and subject= only apply to lift, review_outcome and objection"
            )
        report_id = self.report_raw(kind, details=details, **fields)
        if refs and self.ledger is not None:
            try:
                self._emit(self.ledger.link(refs, report_id, kind, fields["outcome"]))
            except InterceptError as exc:
                log.error("report %s queued but not linked in the ledger: %s", report_id, exc)
        return report_id

    def _ledger_measure(self, ref: str) -> str | None:
        item = self.ledger.get(ref) if self.ledger is not None else None
        return item.measure if item is not None else None

    def _concerns(
        self,
        kind: str,
        about: Any,
        ref: object,
        subject: object,
        fields: Mapping[str, Any],
    ) -> list[str]:
        """Refs of the ledger restrictions a report concerns (see :meth:`report`)."""
        assert self.ledger is not None
        if ref is not None:
            if not isinstance(ref, str):
                raise InvalidInput("decision_ref must be a string (a Restriction's ref)")
            return [r.ref for r in self.ledger.resolve(ref=ref)]
        if subject is not None and not isinstance(subject, (Person, Entity)):
            raise InvalidInput("subject= must be a Person or an Entity")
        if isinstance(about, Restriction):
            return [about.ref]
        entry_id = fields.get("entry_id")
        known: list[str] | None = None
        if isinstance(about, Intercepted):
            about = about.decision
        if isinstance(about, Decision):
            known = self._refs.get(about)
        items = self.ledger.resolve(
            entry_id=entry_id,
            measure=fields.get("measure"),
            subject=subject,
            open_only=kind == "lift",
        )
        if known is not None:
            mine = [i.ref for i in items if i.ref in known]
            if mine:
                return mine
        return [i.ref for i in items]

    def enforced(self, subject: Subject, decision: Decision, report_id: str | None = None) -> None:
        """Keep an enforced decision (block or review) in the ledger; never raises."""
        if self.ledger is None or decision.action not in ("block", "review"):
            return
        try:
            refs = self.ledger.record(subject, decision, report_id, now=self.clock.now())
        except InterceptError as exc:
            log.error("restriction not kept in the ledger: %s: %s", type(exc).__name__, exc)
            return
        if refs:
            self._refs[decision] = refs

    def _emit(self, events: list[LedgerEvent]) -> None:
        if events and self._on_events is not None:
            self._on_events(events)

    @staticmethod
    def _about(subject_of_report: Any, details: dict[str, Any]) -> dict[str, Any]:
        """The payload fields naming what a report is about (pops ``entry_id`` from
        ``details`` when it picks one of a decision's matches)."""
        fields: dict[str, Any] = {}
        match: Match | None = None
        if isinstance(subject_of_report, Intercepted):
            subject_of_report = subject_of_report.decision
        if isinstance(subject_of_report, Restriction):
            fields["measure"] = subject_of_report.measure
            fields["entry_id"] = subject_of_report.entry_id
            fields["case_no"] = subject_of_report.case_no
        elif isinstance(subject_of_report, Decision):
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
            raise InvalidInput(
                "report(kind, decision | Intercepted | Restriction | match | entry dict | "
                "entry_id, ...)"
            )
        if match is not None:
            fields["entry_id"] = match.entry_id
            fields["case_no"] = match.case_no
        return fields

    def intercepted(
        self, decision: Decision, context: Mapping[str, Any], subject: Subject | None = None
    ) -> Intercepted:
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
        if subject is not None:
            self.enforced(subject, decision, report_id)
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
        """Counts of the quarter (checks, interceptions, lifts, objections...), the
        deployment's deadlines, the restriction ledger's figures, and the due date."""
        start, end, _ = quarterly_window(year, quarter)
        figures = self.ledger.quarter_figures(start, end) if self.ledger is not None else None
        summary = summarize(
            self.outbox,
            year,
            quarter,
            self.checks_in(start, end),
            deadlines=self.deadlines,
            restrictions=figures,
        )
        if upload:
            tag = f"{year}Q{quarter}"
            report_id = self.report_raw(
                "quarterly_summary", details=summary, report_id=self._summary_id(tag)
            )
            if self.ledger is not None:
                self.ledger.mark_summary(tag, report_id, now=self.clock.now())
        return summary

    def _summary_id(self, tag: str) -> str:
        return hashlib.sha256(f"{self.subscriber_id}|{tag}".encode()).hexdigest()[:32]

    def closed_quarters(self, now: _dt.datetime) -> list[tuple[int, int]]:
        """The closed quarters whose summaries this unit owes, oldest first, as
        ``(year, quarter - 1)``: those that closed since the cache began (its audit
        secret was made), at most :data:`_MAX_QUARTERS_BACK`. A cache made this quarter
        owes none yet (a summary of a quarter it did not see would report zeros)."""
        last = _quarter_of(now) - 1
        first = last if self.ledger is None else _quarter_of(self.ledger.created_at())
        first = max(first, last - _MAX_QUARTERS_BACK + 1)
        return [divmod(i, 4) for i in range(first, last + 1)]

    def summaries(self, now: _dt.datetime | None = None) -> list[dict[str, Any]]:
        """Each owed summary: ``quarter`` (2026Q1), ``due_date``, ``state`` (``missing``,
        ``pending``, ``dead`` or ``sent``) and ``overdue`` (past its due date, China
        time, and not yet acknowledged by the platform)."""
        t = now if now is not None else self.clock.now()
        today = t.astimezone(CHINA_TZ).date()
        out: list[dict[str, Any]] = []
        for y, q0 in self.closed_quarters(t):
            tag = f"{y}Q{q0 + 1}"
            due = self.deadlines.feedback_due(quarterly_window(y, q0 + 1)[1])
            state = self._summary_state(tag)
            out.append(
                {
                    "quarter": tag,
                    "due_date": due.isoformat(),
                    "state": state,
                    "overdue": state != "sent" and today > due,
                }
            )
        return out

    def accountability(self, now: _dt.datetime) -> dict[str, Any]:
        """The ledger and deadline fields of ``status()`` (see :class:`Status`)."""
        due, overdue = self.ledger.lift_counts(now=now) if self.ledger is not None else (0, 0)
        owed = self.summaries(now) if self.keys is not None else []
        unsent = [s for s in owed if s["state"] != "sent"]
        if unsent:
            summary_due = _dt.date.fromisoformat(unsent[0]["due_date"])
        else:
            cy, cq = divmod(_quarter_of(now), 4)
            summary_due = self.deadlines.feedback_due(quarterly_window(cy, cq + 1)[1])
        return {
            "lifts_due": due,
            "lifts_overdue": overdue,
            "lift_deadline_days": self.deadlines.lift_deadline_days,
            "feedback_due_days": self.deadlines.feedback_due_days,
            "summary_due": summary_due,
            "summaries_overdue": tuple(s["quarter"] for s in owed if s["overdue"]),
        }

    def _summary_state(self, tag: str) -> str:
        rid = self._summary_id(tag)
        state = self.outbox.report_state(rid)
        if state is not None:
            return state
        queued = self.ledger is not None and self.ledger.summary_queued(tag) is not None
        # a summary the ledger saw queued and the outbox forgot was sent, then pruned
        return "sent" if queued else "missing"

    def maybe_quarterly(self) -> None:
        """Queue every owed summary not queued yet (idempotent by report id), then warn
        about overdue ones and nudge the sender, so they leave as soon as possible."""
        if self.keys is None:
            return
        now = self.clock.now()
        last_y, last_q0 = divmod(_quarter_of(now) - 1, 4)
        tag = f"{last_y}Q{last_q0 + 1}"
        if self._quarter_checked != tag:
            for y, q0 in self.closed_quarters(now):
                rid = self._summary_id(f"{y}Q{q0 + 1}")
                if self.outbox.has_report(rid) or (
                    self.ledger is not None and self.ledger.summary_queued(f"{y}Q{q0 + 1}")
                ):
                    continue
                with contextlib.suppress(InterceptError):
                    self.quarterly_summary(y, q0 + 1, upload=True)
            self._quarter_checked = tag
        self._warn_overdue(now)

    def _warn_overdue(self, now: _dt.datetime) -> None:
        overdue = [s for s in self.summaries(now) if s["overdue"]]
        for s in overdue:
            if s["quarter"] not in self._warned_overdue:
                self._warned_overdue.add(s["quarter"])
                log.warning(
                    "quarterly summary %s was due on %s and has not reached the platform "
                    "(%s); uploading it as soon as possible",
                    s["quarter"],
                    s["due_date"],
                    s["state"],
                )
        if overdue and self.sender is not None:
            self.sender.notify()


def _quarter_of(t: _dt.datetime) -> int:
    """A running number of ``t``'s quarter in China (``year * 4 + quarter - 1``)."""
    local = t.astimezone(CHINA_TZ)
    return local.year * 4 + (local.month - 1) // 3


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
