"""Where accepted reports are kept: a small interface, and its SQLite implementation.

Why an interface: report intake only needs "store this batch, tell me which ids are new"
and the operator listing only needs "these reports, filtered"; a deployment that
outgrows one machine puts PostgreSQL (:mod:`.storage_pg`) behind the same calls, and
:func:`open_report_store` picks the engine from a ``--database`` URL. Whatever the
backend, the contract is the one :class:`ReportStore` states: a batch is stored in one
transaction and is durable when :meth:`ReportStore.insert` returns (the client deletes
its outbox copy on the 200 that follows), a report is identified by
``(subscriber_id, report_id)`` -- a UNIQUE constraint in the database, so several
server processes sharing one database cannot store it twice, and one unit cannot
shadow another's id -- the first copy wins, and every backend failure surfaces as
:class:`ReportStoreError`, which the server answers with 503.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple, Protocol

from ..._protocol.signing import Envelope
from ..._util import format_utc, utcnow

__all__ = [
    "ReportRow",
    "ReportStore",
    "ReportStoreError",
    "SQLiteReportStore",
    "open_report_store",
]

log = logging.getLogger("intercept_sdk.platform")


class ReportStoreError(Exception):
    """The report store cannot be used right now (the server answers 503)."""


class ReportRow(NamedTuple):
    """One verified, validated report as stored; ``envelope`` is the signed bytes."""

    report_id: str
    subscriber_id: str
    kind: str
    measure: str | None
    entry_id: str | None
    case_no: str | None
    created_at: str
    envelope: bytes


def listing_sql(
    subscriber: str | None,
    kind: str | None,
    since: str | None,
    limit: int,
    *,
    mark: str,
    order: str,
) -> tuple[str, list[Any]]:
    """The ``GET /reports`` query of every engine: its SQL (parameter marker ``mark``,
    oldest first by ``order``) and arguments."""
    where: list[str] = []
    args: list[Any] = []
    for column, op, value in (
        ("subscriber_id", "=", subscriber),
        ("kind", "=", kind),
        ("received_at", ">=", since),
    ):
        if value is not None:
            where.append(f"{column} {op} {mark}")
            args.append(value)
    sql = "SELECT envelope, received_at FROM reports"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += f" ORDER BY {order} LIMIT {mark}"
    args.append(limit)
    return sql, args


class ReportStore(Protocol):
    """What the server needs from a report store (see the module docstring)."""

    def open(self) -> None:
        """Connect (or fail with :class:`ReportStoreError`) before the app serves."""

    def reopen(self) -> None:
        """Allow use again after :meth:`close` (the app's lifespan starts again)."""

    def close(self) -> None:
        """Release the connection; later calls fail until :meth:`reopen`. Idempotent."""

    def insert(self, rows: Sequence[ReportRow]) -> tuple[list[str], list[str]]:
        """Store the new rows in one transaction; return (accepted, duplicate) ids in
        batch order. A ``report_id`` already stored (or repeated in the batch) is a
        duplicate and keeps its first copy."""
        ...

    def query(
        self, subscriber: str | None, kind: str | None, since: str | None, limit: int
    ) -> list[dict[str, Any]]:
        """Stored payloads (plus ``received_at``) in arrival order, filtered, at most
        ``limit``; ``since`` is a canonical UTC time compared with ``received_at``."""
        ...

    def counts(self) -> list[tuple[str, str, int]]:
        """(subscriber_id, kind, number of reports) for every pair, sorted."""
        ...


_SCHEMA = """
CREATE TABLE IF NOT EXISTS reports (
    report_id     TEXT NOT NULL,
    subscriber_id TEXT NOT NULL,
    kind          TEXT NOT NULL,
    measure       TEXT,
    entry_id      TEXT,
    case_no       TEXT,
    created_at    TEXT NOT NULL,
    received_at   TEXT NOT NULL,
    envelope      BLOB NOT NULL,
    UNIQUE (subscriber_id, report_id)
);
CREATE INDEX IF NOT EXISTS reports_received ON reports (received_at);
"""
# Version 1 had ``report_id TEXT PRIMARY KEY`` (one id space for every subscriber): its
# rows move, in arrival order, into the table above in one transaction.
_MIGRATE_V1 = """
DROP INDEX IF EXISTS reports_subscriber;
DROP INDEX IF EXISTS reports_received;
ALTER TABLE reports RENAME TO reports_v1;
"""
_COLUMNS = (
    "report_id, subscriber_id, kind, measure, entry_id, case_no, created_at, received_at, envelope"
)

_INSERT = (
    "INSERT OR IGNORE INTO reports (report_id, subscriber_id, kind, measure, entry_id, "
    "case_no, created_at, received_at, envelope) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_IN_CHUNK = 500  # ids per "IN (...)" lookup, below SQLite's host-parameter limit
_COUNTS = "SELECT subscriber_id, kind, count(*) FROM reports GROUP BY 1, 2 ORDER BY 1, 2"


class SQLiteReportStore:
    """``<state_dir>/reports.sqlite``: one connection, serialised by a lock.

    WAL with ``synchronous=FULL``: a batch answered 200 is on disk, because the client
    deletes its outbox copy on that answer. One transaction per batch; ``BEGIN
    IMMEDIATE`` takes SQLite's write lock first, so the duplicate check and the insert
    see the same table even with another process on the file. The file (and SQLite's
    ``-wal``/``-shm`` files, which copy its mode) is created 0600.
    """

    def __init__(self, path: Path) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._closed = False

    def open(self) -> None:
        with self._lock, _translated("open"):
            self._connect()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def reopen(self) -> None:
        with self._lock:
            self._closed = False

    def _connect(self) -> sqlite3.Connection:
        if self._closed:
            raise sqlite3.OperationalError("report store is closed")
        if self._conn is None:
            _create_private(self._path)
            conn = sqlite3.connect(
                self._path, isolation_level=None, check_same_thread=False, timeout=5.0
            )
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=FULL")
                _ensure_schema(conn)
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        return self._conn

    def insert(self, rows: Sequence[ReportRow]) -> tuple[list[str], list[str]]:
        received = format_utc(utcnow())
        with self._lock, _translated("insert"):
            conn = self._connect()
            conn.execute("BEGIN IMMEDIATE")
            try:
                existing = self._owners(conn, list({r.report_id for r in rows}))
                accepted, duplicates, new = _split_new(rows, existing, received)
                conn.executemany(_INSERT, new)
                conn.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                raise
        return accepted, duplicates

    @staticmethod
    def _owners(conn: sqlite3.Connection, ids: list[str]) -> set[tuple[str, str]]:
        """(subscriber_id, report_id) of the rows already stored under one of ``ids``."""
        existing: set[tuple[str, str]] = set()
        for i in range(0, len(ids), _IN_CHUNK):
            part = ids[i : i + _IN_CHUNK]
            marks = ",".join("?" * len(part))
            existing.update(
                conn.execute(
                    f"SELECT subscriber_id, report_id FROM reports WHERE report_id IN ({marks})",
                    part,
                ).fetchall()
            )
        return existing

    def counts(self) -> list[tuple[str, str, int]]:
        with self._lock, _translated("count"):
            return [tuple(r) for r in self._connect().execute(_COUNTS).fetchall()]

    def query(
        self, subscriber: str | None, kind: str | None, since: str | None, limit: int
    ) -> list[dict[str, Any]]:
        sql, args = listing_sql(subscriber, kind, since, limit, mark="?", order="rowid")
        with self._lock, _translated("query"):
            rows = self._connect().execute(sql, args).fetchall()
        out: list[dict[str, Any]] = []
        for envelope, received_at in rows:
            payload = Envelope.from_bytes(envelope).payload_json()
            payload["received_at"] = received_at
            out.append(payload)
        return out


def _split_new(
    rows: Sequence[ReportRow], existing: set[tuple[str, str]], received: str
) -> tuple[list[str], list[str], list[tuple[Any, ...]]]:
    """(accepted ids, duplicate ids, rows to insert); ``existing`` grows with the batch."""
    accepted: list[str] = []
    duplicates: list[str] = []
    new: list[tuple[Any, ...]] = []
    for r in rows:
        key = (r.subscriber_id, r.report_id)
        if key in existing:
            duplicates.append(r.report_id)
            continue
        existing.add(key)
        accepted.append(r.report_id)
        new.append(
            (r.report_id, r.subscriber_id, r.kind, r.measure, r.entry_id, r.case_no,
             r.created_at, received, r.envelope)
        )  # fmt: skip
    return accepted, duplicates, new


@contextlib.contextmanager
def _translated(action: str) -> Iterator[None]:
    """Turn SQLite's errors into :class:`ReportStoreError` (the interface's one error)."""
    try:
        yield
    except sqlite3.Error as exc:
        raise ReportStoreError(f"report store {action} failed: {exc}") from exc


def _create_private(path: Path) -> None:
    """Create ``path`` empty with mode 0600 unless it exists (then tighten it to 0600)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        if path.stat().st_mode & 0o077:
            log.warning("%s was readable by others; set to 0600", path)
            os.chmod(path, 0o600)
        return
    os.close(fd)


def _ensure_schema(conn: sqlite3.Connection) -> None:
    """Create the table, or move a version-1 table (``report_id`` unique alone) into it."""
    pk = {name: flag for _, name, *_rest, flag in conn.execute("PRAGMA table_info(reports)")}
    if pk.get("report_id") == 1:
        log.warning("report store: migrating to one report_id space per subscriber")
        conn.execute("BEGIN IMMEDIATE")
        try:
            # One statement at a time: executescript() would COMMIT first.
            for statement in (_MIGRATE_V1 + _SCHEMA).split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(
                f"INSERT OR IGNORE INTO reports ({_COLUMNS}) "
                f"SELECT {_COLUMNS} FROM reports_v1 ORDER BY rowid"
            )
            conn.execute("DROP TABLE reports_v1")
            conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise
        return
    conn.executescript(_SCHEMA)


def open_report_store(database: str | None, state_dir: Path) -> ReportStore:
    """The store named by ``database``: ``postgresql://...`` (or ``postgres://``) is
    PostgreSQL (:mod:`.storage_pg`, needs the ``postgres`` extra); ``None`` is
    ``<state_dir>/reports.sqlite``; ``sqlite:///<path>`` is that SQLite file. Nothing is
    connected yet (see :meth:`ReportStore.open`)."""
    from ..._exceptions import ConfigurationError

    if database is None:
        return SQLiteReportStore(state_dir / "reports.sqlite")
    if database.startswith(("postgresql://", "postgres://")):
        from .storage_pg import PostgresReportStore

        return PostgresReportStore(database)
    if database.startswith("sqlite:///") and len(database) > len("sqlite:///"):
        return SQLiteReportStore(Path(database[len("sqlite://") :]))
    raise ConfigurationError(
        "--database must be postgresql://user@host/db or sqlite:///path/to/reports.sqlite"
    )
