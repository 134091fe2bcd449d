"""The restriction ledger: what this unit restricted, and which restrictions must be lifted.

Why: the policy makes a unit accountable for its restrictions after the fact. Once a
listing is revoked, deleted or expired the restriction must be lifted promptly (the courts
delete within 3 working days), and the unit must be able to say, after any restart, whom
it restricted under which entry and whether a lift is overdue. In-memory watches cannot
answer that; this ledger can.

What is kept (one SQLite file, ``<cache>/ledger.sqlite``, mode 0600, WAL):

* one **restriction** per (subject, measure, entry) the unit enforced through
  ``block()`` (action block or review); a repeated enforcement updates the same item.
  The subject is a **pseudonym**: ``HMAC-SHA256`` under a key derived from the cache's
  audit secret (``audit.key``, :mod:`.audit`) of the normalised identifier. No ID number,
  no name is ever written; entry ids and case numbers are the platform's own.
* after each sync, :meth:`Ledger.reconcile` asks the verified list whether each entry
  still restricts: an entry revoked, deleted (or gone from the list), expired, or no
  longer carrying the measure makes the item **lift due**, with a deadline of N working
  days (3 by default; weekends and configured holidays skipped, 调休 working weekends
  counted) after the day the change was seen, ending at midnight China time.
* a ``lift`` report closes the item (**lifted**); ``review_outcome`` and ``objection``
  reports are **linked** to the item (and so to the decision) they concern.
* the quarterly summaries queued, so an overdue summary is noticed after a restart and
  even once the outbox has pruned its journal.

Guarantees: every state change is one IMMEDIATE transaction, so processes sharing a
cache never both report the same transition (each event is delivered by the process
that made it); overdue is a function of the deadline and the clock (``now=``), so it
holds after any restart; storage failures raise :class:`StoreError`, bad input
:class:`InvalidInput`, bad deadlines :class:`ConfigurationError`.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hmac
import logging
import os
import secrets
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

from .._exceptions import ConfigurationError, InvalidInput, StoreError
from .._protocol.deadlines import feedback_due, is_working_day, lift_deadline
from .._protocol.reports import CHINA_TZ
from .._util import format_utc, parse_utc
from .audit import AUDIT_KEY_FILE, load_or_create_audit_key
from .decisions import Decision, Entity, Person, Subject

__all__ = [
    "LEDGER_FILE",
    "Deadlines",
    "EndReason",
    "Ledger",
    "LedgerEvent",
    "Link",
    "Restriction",
]

log = logging.getLogger("intercept_sdk.client")

LEDGER_FILE: Final = "ledger.sqlite"
_SCHEMA_VERSION: Final = 1
_BUSY_TIMEOUT_S: Final = 10.0
_PSEUDONYM_LABEL: Final = b"intercept-sdk restriction ledger v1"
_MAX_DEADLINE_DAYS: Final = 60
_MAX_FEEDBACK_DAYS: Final = 366

State = Literal["in_force", "lift_due", "lifted"]
#: Why a restriction ended. Site format 2 publishes no revoked or deleted entry, so a
#: revocation, a deletion and a removal all show as the entry leaving the list
#: ("removed"); "expired" is the listing's term passing. A change of an entry's measures
#: alone is not seen here (the unit holds no identifier to open the record with): the next
#: check of that person answers by the new record.
EndReason = Literal["removed", "expired"]
EventKind = Literal["lift_due", "lift_overdue", "lifted"]

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS meta(k TEXT PRIMARY KEY, v TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS restrictions(
    ref            TEXT PRIMARY KEY,
    subject        TEXT NOT NULL,   -- pseudonym (32 hex), never an identifier
    subject_type   TEXT NOT NULL CHECK (subject_type IN ('person', 'entity')),
    measure        TEXT NOT NULL,
    entry_id       TEXT NOT NULL,
    case_no        TEXT NOT NULL,
    relation       TEXT NOT NULL,
    action         TEXT NOT NULL CHECK (action IN ('block', 'review')),
    list_version   INTEGER NOT NULL,
    valid_until    TEXT,            -- the listing's term (China date) when enforced
    report_id      TEXT,            -- the interception report, when one was queued
    enforced_at    TEXT NOT NULL,
    last_enforced  TEXT NOT NULL,
    times          INTEGER NOT NULL,
    state          TEXT NOT NULL CHECK (state IN ('in_force', 'lift_due', 'lifted')),
    end_reason     TEXT,
    ended_at       TEXT,            -- revoked_at of the entry, when the list says
    seen_at        TEXT,            -- when this unit's sync saw the change
    seen_version   INTEGER,
    deadline       TEXT,            -- lift deadline (exclusive instant, UTC)
    overdue_told   INTEGER NOT NULL DEFAULT 0,
    lifted_at      TEXT,
    lift_report_id TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS restrictions_open
    ON restrictions(subject, measure, entry_id) WHERE state != 'lifted';
CREATE INDEX IF NOT EXISTS restrictions_state ON restrictions(state);
CREATE INDEX IF NOT EXISTS restrictions_entry ON restrictions(entry_id);
CREATE TABLE IF NOT EXISTS links(
    report_id TEXT NOT NULL,
    ref       TEXT NOT NULL REFERENCES restrictions(ref),
    kind      TEXT NOT NULL,
    outcome   TEXT,
    at        TEXT NOT NULL,
    PRIMARY KEY (report_id, ref)
);
CREATE INDEX IF NOT EXISTS links_ref ON links(ref);
CREATE TABLE IF NOT EXISTS summaries(
    quarter   TEXT PRIMARY KEY,      -- e.g. 2026Q1
    report_id TEXT NOT NULL,
    queued_at TEXT NOT NULL
) WITHOUT ROWID;
"""

_COLUMNS: Final = (
    "ref, subject, subject_type, measure, entry_id, case_no, relation, action, list_version, "
    "report_id, enforced_at, last_enforced, times, state, end_reason, ended_at, seen_at, "
    "seen_version, deadline, lifted_at, lift_report_id, valid_until"
)
_SELECT: Final = f"SELECT {_COLUMNS} FROM restrictions"


# -- deadlines ------------------------------------------------------------------------------


def _dates(values: Iterable[_dt.date | str], what: str) -> frozenset[_dt.date]:
    if isinstance(values, (str, bytes)):
        raise ConfigurationError(f"{what} must be a list of dates, not one string")
    out: set[_dt.date] = set()
    for v in values:
        if isinstance(v, _dt.datetime):
            raise ConfigurationError(f"{what}: {v!r} is a datetime; give dates")
        if isinstance(v, _dt.date):
            out.add(v)
            continue
        try:
            out.add(_dt.date.fromisoformat(str(v)))
        except ValueError:
            raise ConfigurationError(f"{what}: {v!r} is not a date (YYYY-MM-DD)") from None
    return frozenset(out)


def _days(value: object, what: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigurationError(f"{what} must be an integer from {low} to {high}")
    return value


@dataclass(frozen=True)
class Deadlines:
    """The deployment's deadlines (options ``lift_deadline_days``, ``feedback_due_days``,
    ``holidays``, ``extra_workdays``).

    ``lift_deadline_days`` working days to lift a restriction once the list no longer
    supports it (3: the courts' own deadline for deleting); ``feedback_due_days`` days
    after a quarter's last day for its summary (30 in the national texts, 15 where a local
    rule such as Huai'an's says so). ``holidays`` are skipped like weekends;
    ``extra_workdays`` are weekend days worked (调休).
    """

    lift_deadline_days: int = 3
    feedback_due_days: int = 30
    holidays: frozenset[_dt.date] = frozenset()
    extra_workdays: frozenset[_dt.date] = frozenset()

    @classmethod
    def of(
        cls,
        lift_deadline_days: object = 3,
        feedback_due_days: object = 30,
        holidays: Iterable[_dt.date | str] = (),
        extra_workdays: Iterable[_dt.date | str] = (),
    ) -> Deadlines:
        """Validated deadlines; :class:`ConfigurationError` says what is wrong."""
        hol = _dates(holidays, "holidays")
        extra = _dates(extra_workdays, "extra_workdays")
        if hol & extra:
            day = min(hol & extra)
            raise ConfigurationError(f"{day} is both a holiday and an extra working day")
        return cls(
            _days(lift_deadline_days, "lift_deadline_days", 1, _MAX_DEADLINE_DAYS),
            _days(feedback_due_days, "feedback_due_days", 1, _MAX_FEEDBACK_DAYS),
            hol,
            extra,
        )

    def is_working_day(self, day: _dt.date) -> bool:
        """Monday-Friday unless a holiday; a weekend day only when listed as worked."""
        return is_working_day(day, self.holidays, self.extra_workdays)

    def lift_deadline(self, seen: _dt.datetime) -> _dt.datetime:
        """The instant (UTC) a restriction seen ending at ``seen`` becomes overdue
        (:func:`~intercept_sdk._protocol.deadlines.lift_deadline`, the platform's rule too)."""
        return lift_deadline(seen, self.lift_deadline_days, self.holidays, self.extra_workdays)

    def feedback_due(self, quarter_end: _dt.datetime) -> _dt.date:
        """The last day (inclusive) a quarter ending at ``quarter_end`` (exclusive,
        China time) may be reported on."""
        return feedback_due(quarter_end, self.feedback_due_days)

    def to_dict(self) -> dict[str, Any]:
        return {
            "lift_deadline_days": self.lift_deadline_days,
            "feedback_due_days": self.feedback_due_days,
            "holidays": sorted(d.isoformat() for d in self.holidays),
            "extra_workdays": sorted(d.isoformat() for d in self.extra_workdays),
        }


# -- what the ledger holds ------------------------------------------------------------------


@dataclass(frozen=True)
class Link:
    """A report (``review_outcome``, ``objection``, ``lift``) about a restriction."""

    report_id: str
    kind: str
    outcome: str | None
    at: _dt.datetime


@dataclass(frozen=True)
class Restriction:
    """One restriction this unit enforced (see the module docstring).

    ``ref`` names it in reports (``details["decision_ref"]``); it is the interception's
    report id when one was queued, so the platform can join the two. ``subject`` is a
    pseudonym. ``state`` is ``in_force``, ``lift_due`` (the list no longer supports it:
    ``end_reason``, seen at ``seen_at``, to be lifted before ``deadline``) or ``lifted``.
    """

    ref: str
    subject: str
    subject_type: str
    measure: str
    entry_id: str
    case_no: str
    relation: str
    action: str
    list_version: int
    report_id: str | None
    enforced_at: _dt.datetime
    last_enforced: _dt.datetime
    times: int
    state: State
    end_reason: EndReason | None = None
    ended_at: _dt.datetime | None = None
    seen_at: _dt.datetime | None = None
    seen_version: int | None = None
    deadline: _dt.datetime | None = None
    lifted_at: _dt.datetime | None = None
    lift_report_id: str | None = None
    valid_until: str | None = None
    """The listing's term when it was enforced (a China date), if it had one."""

    def overdue(self, now: _dt.datetime) -> bool:
        """Lift due and past its deadline at ``now``."""
        return self.state == "lift_due" and self.deadline is not None and now >= self.deadline

    @property
    def lifted_late(self) -> bool:
        """Lifted after its deadline (``False`` while open or lifted on time)."""
        return bool(
            self.state == "lifted"
            and self.deadline is not None
            and self.lifted_at is not None
            and self.lifted_at > self.deadline
        )

    @property
    def lift_latency(self) -> _dt.timedelta | None:
        """From seeing the change to lifting (``None`` until both happened)."""
        if self.seen_at is None or self.lifted_at is None:
            return None
        return self.lifted_at - self.seen_at

    def to_dict(self, now: _dt.datetime | None = None) -> dict[str, Any]:
        """JSON-ready (times as ISO 8601 UTC); with ``now``, also ``overdue``."""
        out: dict[str, Any] = {}
        for k, v in self.__dict__.items():
            out[k] = format_utc(v) if isinstance(v, _dt.datetime) else v
        if now is not None:
            out["overdue"] = self.overdue(now)
        return out


@dataclass(frozen=True)
class LedgerEvent:
    """A change of a restriction's state, for listeners (:meth:`Client.listen`).

    ``kind``: ``lift_due`` (the list no longer supports the restriction: lift it before
    ``restriction.deadline`` and report the lift), ``lift_overdue`` (the deadline passed
    without a lift report; delivered once), ``lifted`` (a lift was reported).
    """

    kind: EventKind
    restriction: Restriction


# -- deciding whether an entry still restricts -------------------------------------------


def _ended(item: Restriction, published: bool, today: _dt.date) -> EndReason | None:
    """Why ``item`` no longer restricts: its entry left the list, or its term passed."""
    if not published:
        return "removed"
    if item.valid_until is not None:
        with contextlib.suppress(ValueError):
            if _dt.date.fromisoformat(item.valid_until) < today:
                return "expired"
    return None


def _t(value: str | None) -> _dt.datetime | None:
    return parse_utc(value) if value is not None else None


def _row(r: Sequence[Any]) -> Restriction:
    return Restriction(
        ref=r[0],
        subject=r[1],
        subject_type=r[2],
        measure=r[3],
        entry_id=r[4],
        case_no=r[5],
        relation=r[6],
        action=r[7],
        list_version=int(r[8]),
        report_id=r[9],
        enforced_at=parse_utc(r[10]),
        last_enforced=parse_utc(r[11]),
        times=int(r[12]),
        state=r[13],
        end_reason=r[14],
        ended_at=_t(r[15]),
        seen_at=_t(r[16]),
        seen_version=r[17],
        deadline=_t(r[18]),
        lifted_at=_t(r[19]),
        lift_report_id=r[20],
        valid_until=r[21],
    )


# -- the ledger -----------------------------------------------------------------------------


class Ledger:
    """The durable restriction ledger of one cache (see the module docstring).

    ``cache_dir`` holds the file and the audit secret; ``clock`` is the client's UTC
    clock (every method also takes ``now=``, for tests and for callers that already
    read the clock).
    """

    def __init__(
        self,
        cache_dir: Path,
        deadlines: Deadlines | None = None,
        *,
        clock: Callable[[], _dt.datetime] | None = None,
    ) -> None:
        self.path = Path(cache_dir) / LEDGER_FILE
        self.deadlines = deadlines or Deadlines()
        self._clock = clock or (lambda: _dt.datetime.now(_dt.timezone.utc))
        key_path = Path(cache_dir) / AUDIT_KEY_FILE
        secret = load_or_create_audit_key(key_path)
        self._mac_key = hmac.digest(secret, _PSEUDONYM_LABEL, "sha256")
        # The cache's history begins when its secret was made (written once, never
        # modified): a cache older than this ledger still owes its earlier summaries.
        self._born = _dt.datetime.fromtimestamp(key_path.stat().st_mtime, _dt.timezone.utc)
        self._lock = threading.RLock()
        self._pid = os.getpid()
        self._conn_obj: sqlite3.Connection | None = None
        self._closed = False
        self._connect()

    # -- storage ---------------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            os.close(fd)
            conn = sqlite3.connect(
                self.path, timeout=_BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
            )
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open the restriction ledger {self.path}: {exc}") from None
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute(f"PRAGMA busy_timeout={int(_BUSY_TIMEOUT_S * 1000)}")
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > _SCHEMA_VERSION:
                raise StoreError(
                    f"restriction ledger {self.path} was written by a newer intercept-sdk "
                    f"(schema {version}); upgrade"
                )
            if version < _SCHEMA_VERSION:
                conn.execute("BEGIN IMMEDIATE")
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(
                    "INSERT OR IGNORE INTO meta(k, v) VALUES ('created_at', ?)",
                    (format_utc(min(self._now(None), self._born)),),
                )
                conn.execute(f"PRAGMA user_version={_SCHEMA_VERSION}")
                conn.execute("COMMIT")
        except sqlite3.Error as exc:
            conn.close()
            raise StoreError(f"restriction ledger {self.path} is unusable: {exc}") from None
        except BaseException:
            conn.close()
            raise
        self._conn_obj = conn
        self._pid = os.getpid()
        return conn

    def _conn(self) -> sqlite3.Connection:
        if self._closed:
            raise StoreError("the restriction ledger is closed")
        if self._pid != os.getpid():  # a forked child: never share the parent's handle
            self._lock = threading.RLock()
            self._conn_obj = None
        if self._conn_obj is None:
            return self._connect()
        return self._conn_obj

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One IMMEDIATE transaction; sqlite errors become StoreError."""
        with self._lock:
            conn = self._conn()
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise StoreError(f"restriction ledger: {exc}") from None
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException as exc:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    raise StoreError(f"restriction ledger: {exc}") from None
                raise

    def _read(self, sql: str, params: Sequence[object] = ()) -> list[Any]:
        with self._lock:
            try:
                return self._conn().execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise StoreError(f"restriction ledger: {exc}") from None

    def _now(self, now: _dt.datetime | None) -> _dt.datetime:
        t = now if now is not None else self._clock()
        if t.tzinfo is None:
            raise InvalidInput("now must be an aware datetime")
        return t.astimezone(_dt.timezone.utc)

    # -- pseudonyms ------------------------------------------------------------------------
    def pseudonym(self, subject: Subject) -> str:
        """The subject's pseudonym in this cache's ledger (32 hex; never reversible
        without the cache's secret)."""
        if isinstance(subject, Person):
            data = b"p|" + subject.id_number.encode()
        elif isinstance(subject, Entity):
            data = b"e|" + subject.effective_org_code.encode()
        else:
            raise InvalidInput("subject must be a Person or an Entity")
        return hmac.digest(self._mac_key, data, "sha256")[:16].hex()

    # -- enforcement -----------------------------------------------------------------------
    def record(
        self,
        subject: Subject,
        decision: Decision,
        report_id: str | None = None,
        *,
        now: _dt.datetime | None = None,
    ) -> list[str]:
        """Keep the restriction(s) of an enforced ``decision`` (block or review); returns
        their refs (one per counted entry). Other actions keep nothing."""
        if decision.action not in ("block", "review") or not decision.matches:
            return []
        t = format_utc(self._now(now))
        who = self.pseudonym(subject)
        kind = "person" if isinstance(subject, Person) else "entity"
        refs: list[str] = []
        with self._write() as conn:
            for m in {m.entry_id: m for m in reversed(decision.matches)}.values():
                row = conn.execute(
                    "SELECT ref FROM restrictions WHERE subject = ? AND measure = ? "
                    "AND entry_id = ? AND state != 'lifted'",
                    (who, decision.measure, m.entry_id),
                ).fetchone()
                if row is not None:
                    conn.execute(
                        "UPDATE restrictions SET last_enforced = ?, times = times + 1, "
                        "action = CASE WHEN ? = 'block' THEN 'block' ELSE action END, "
                        "valid_until = ? WHERE ref = ?",
                        (t, decision.action, m.valid_until, row[0]),
                    )
                    refs.append(str(row[0]))
                    continue
                ref = report_id if report_id and not refs else secrets.token_hex(16)
                conn.execute(
                    "INSERT INTO restrictions(ref, subject, subject_type, measure, entry_id, "
                    "case_no, relation, action, list_version, report_id, enforced_at, "
                    "last_enforced, times, state, valid_until) "
                    "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,1,'in_force',?)",
                    (
                        ref,
                        who,
                        kind,
                        decision.measure,
                        m.entry_id,
                        m.case_no,
                        m.relation,
                        decision.action,
                        decision.list_version,
                        report_id,
                        t,
                        t,
                        m.valid_until,
                    ),
                )
                refs.append(ref)
        return refs

    # -- reconciliation --------------------------------------------------------------------
    def reconcile(
        self,
        published: Callable[[Sequence[str]], AbstractSet[str]],
        version: int,
        *,
        now: _dt.datetime | None = None,
    ) -> list[LedgerEvent]:
        """Compare every in-force item with the verified list; items whose entry no
        longer restricts become lift due. ``published(entry_ids)`` says which of those
        entries the list still carries (site format 2 publishes no revoked or deleted
        entry: leaving the list is how a revocation shows); an entry still carried
        whose term (``valid_until`` when it was enforced) has passed is expired.
        Returns the new ``lift_due`` events and the ``lift_overdue`` events not
        delivered before."""
        t = self._now(now)
        open_items = [_row(r) for r in self._read(_SELECT + " WHERE state = 'in_force'")]
        ended: list[tuple[Restriction, EndReason, _dt.datetime | None]] = []
        if open_items:
            found = published(sorted({i.entry_id for i in open_items}))
            today = t.astimezone(CHINA_TZ).date()
            for item in open_items:
                why = _ended(item, item.entry_id in found, today)
                if why is not None:
                    ended.append((item, why, None))
        events = self._mark_due(ended, version, t)
        return events + self.overdue_events(now=t)

    def _mark_due(
        self,
        ended: list[tuple[Restriction, EndReason, _dt.datetime | None]],
        version: int,
        t: _dt.datetime,
    ) -> list[LedgerEvent]:
        if not ended:
            return []
        deadline = self.deadlines.lift_deadline(t)
        refs: list[str] = []
        with self._write() as conn:
            for item, why, ended_at in ended:
                changed = conn.execute(
                    "UPDATE restrictions SET state = 'lift_due', end_reason = ?, ended_at = ?, "
                    "seen_at = ?, seen_version = ?, deadline = ? "
                    "WHERE ref = ? AND state = 'in_force'",
                    (
                        why,
                        format_utc(ended_at) if ended_at else None,
                        format_utc(t),
                        version,
                        format_utc(deadline),
                        item.ref,
                    ),
                ).rowcount
                if changed:
                    refs.append(item.ref)
        if refs:  # one line per reconciliation, not per item (a bulk revocation is common)
            log.warning(
                "%d restriction(s) must be lifted before %s (first: %s)",
                len(refs),
                format_utc(deadline),
                refs[0],
            )
        return [LedgerEvent("lift_due", x) for x in self.get_many(refs)]

    def overdue_events(self, *, now: _dt.datetime | None = None) -> list[LedgerEvent]:
        """``lift_overdue`` events for items past their deadline not yet announced (each
        is announced once, by the process that marks it)."""
        t = format_utc(self._now(now))
        due = self._read(
            "SELECT ref FROM restrictions WHERE state = 'lift_due' AND overdue_told = 0 "
            "AND deadline <= ?",
            (t,),
        )
        if not due:
            return []
        told: list[str] = []
        with self._write() as conn:
            for (ref,) in due:
                if conn.execute(
                    "UPDATE restrictions SET overdue_told = 1 WHERE ref = ? AND overdue_told = 0 "
                    "AND state = 'lift_due'",
                    (ref,),
                ).rowcount:
                    told.append(str(ref))
        if told:
            log.error(
                "%d restriction(s) overdue: no lift reported before the deadline (first: %s)",
                len(told),
                told[0],
            )
        return [LedgerEvent("lift_overdue", x) for x in self.get_many(told)]

    # -- reports about restrictions ----------------------------------------------------------
    def resolve(
        self,
        *,
        ref: str | None = None,
        entry_id: str | None = None,
        measure: str | None = None,
        subject: Subject | None = None,
        open_only: bool = True,
    ) -> list[Restriction]:
        """The items a report concerns: by ``ref`` exactly, else by entry (and measure,
        and subject when given); open items only unless ``open_only`` is false."""
        if ref is not None:
            item = self.get(ref)
            if item is None:
                raise InvalidInput(f"no restriction {ref!r} in the ledger")
            return [item]
        if entry_id is None:
            return []
        sql = _SELECT + " WHERE entry_id = ?"
        params: list[object] = [entry_id]
        if measure is not None:
            sql += " AND measure = ?"
            params.append(measure)
        if subject is not None:
            sql += " AND subject = ?"
            params.append(self.pseudonym(subject))
        if open_only:
            sql += " AND state != 'lifted'"
        return [_row(r) for r in self._read(sql + " ORDER BY enforced_at", params)]

    def link(
        self,
        refs: Iterable[str],
        report_id: str,
        kind: str,
        outcome: str | None,
        *,
        now: _dt.datetime | None = None,
    ) -> list[LedgerEvent]:
        """Record report ``report_id`` as concerning ``refs``; a ``lift`` closes them.
        Returns the ``lifted`` events."""
        t = format_utc(self._now(now))
        refs = list(dict.fromkeys(refs))
        closed: list[str] = []
        with self._write() as conn:
            for ref in refs:
                conn.execute(
                    "INSERT OR IGNORE INTO links(report_id, ref, kind, outcome, at) "
                    "VALUES (?,?,?,?,?)",
                    (report_id, ref, kind, outcome, t),
                )
                if (
                    kind == "lift"
                    and conn.execute(
                        "UPDATE restrictions SET state = 'lifted', lifted_at = ?, "
                        "lift_report_id = ? WHERE ref = ? AND state != 'lifted'",
                        (t, report_id, ref),
                    ).rowcount
                ):
                    closed.append(ref)
        return [LedgerEvent("lifted", x) for x in self.get_many(closed)]

    def links(self, ref: str) -> list[Link]:
        """The reports linked to restriction ``ref``, oldest first."""
        return [
            Link(r[0], r[1], r[2], parse_utc(r[3]))
            for r in self._read(
                "SELECT report_id, kind, outcome, at FROM links WHERE ref = ? "
                "ORDER BY at, report_id",
                (ref,),
            )
        ]

    # -- reading ---------------------------------------------------------------------------
    def get(self, ref: str) -> Restriction | None:
        rows = self._read(_SELECT + " WHERE ref = ?", (ref,))
        return _row(rows[0]) if rows else None

    def get_many(self, refs: Sequence[str]) -> list[Restriction]:
        out = [self.get(r) for r in refs]
        return [x for x in out if x is not None]

    def items(self, states: Iterable[State] | None = None) -> list[Restriction]:
        """Items in ``states`` (all by default), oldest enforcement first."""
        if states is None:
            rows = self._read(_SELECT + " ORDER BY enforced_at, ref")
        else:
            wanted = sorted(set(states))
            marks = ",".join("?" * len(wanted))
            rows = self._read(
                f"{_SELECT} WHERE state IN ({marks}) ORDER BY deadline, enforced_at, ref",
                wanted,
            )
        return [_row(r) for r in rows]

    def lift_counts(self, *, now: _dt.datetime | None = None) -> tuple[int, int]:
        """``(lifts_due, lifts_overdue)`` at ``now``: open lift-due items, and those of
        them past their deadline."""
        t = format_utc(self._now(now))
        due, overdue = self._read(
            "SELECT count(*), coalesce(sum(deadline <= ?), 0) FROM restrictions "
            "WHERE state = 'lift_due'",
            (t,),
        )[0]
        return int(due), int(overdue)

    def quarter_figures(self, start: _dt.datetime, end: _dt.datetime) -> dict[str, Any]:
        """The ledger's figures for ``[start, end)``, for the quarterly summary:
        restrictions ``enforced`` (new items), ``lifts_due`` (changes seen), ``lifted``,
        ``lifted_late``, ``overdue_at_end`` (due before ``end`` and not lifted by then),
        and the lift latency after the change was seen (``lift_hours_max``/``_median``)."""
        s, e = format_utc(start.astimezone(_dt.timezone.utc)), format_utc(end)
        enforced, due = self._read(
            "SELECT coalesce(sum(enforced_at >= ? AND enforced_at < ?), 0), "
            "coalesce(sum(seen_at >= ? AND seen_at < ?), 0) FROM restrictions",
            (s, e, s, e),
        )[0]
        lifted = [
            _row(r)
            for r in self._read(
                _SELECT + " WHERE state = 'lifted' AND lifted_at >= ? AND lifted_at < ?", (s, e)
            )
        ]
        (overdue,) = self._read(
            "SELECT count(*) FROM restrictions WHERE deadline < ? "
            "AND (lifted_at IS NULL OR lifted_at >= ?)",
            (e, e),
        )[0]
        hours = sorted(
            x.lift_latency.total_seconds() / 3600 for x in lifted if x.lift_latency is not None
        )
        return {
            "enforced": int(enforced),
            "lifts_due": int(due),
            "lifted": len(lifted),
            "lifted_late": sum(1 for x in lifted if x.lifted_late),
            "overdue_at_end": int(overdue),
            "lift_hours_max": round(hours[-1], 2) if hours else None,
            "lift_hours_median": round(hours[len(hours) // 2], 2) if hours else None,
        }

    def created_at(self) -> _dt.datetime:
        """When this cache began (its audit secret, or the ledger, whichever is older)."""
        rows = self._read("SELECT v FROM meta WHERE k = 'created_at'")
        return parse_utc(rows[0][0]) if rows else self._now(None)

    # -- quarterly summaries ---------------------------------------------------------------
    def summary_queued(self, quarter: str) -> str | None:
        """The report id of ``quarter``'s summary (e.g. ``2026Q1``), if queued."""
        rows = self._read("SELECT report_id FROM summaries WHERE quarter = ?", (quarter,))
        return str(rows[0][0]) if rows else None

    def mark_summary(
        self, quarter: str, report_id: str, *, now: _dt.datetime | None = None
    ) -> None:
        with self._write() as conn:
            conn.execute(
                "INSERT OR IGNORE INTO summaries(quarter, report_id, queued_at) VALUES (?,?,?)",
                (quarter, report_id, format_utc(self._now(now))),
            )

    def close(self) -> None:
        """Close the file; idempotent."""
        with self._lock:
            self._closed = True
            if self._conn_obj is not None and self._pid == os.getpid():
                with contextlib.suppress(sqlite3.Error):
                    self._conn_obj.close()
            self._conn_obj = None
