"""Where accepted reports are kept: a small interface, and its SQLite implementation.

Why an interface: report intake only needs "store this batch, tell me which ids are new"
and the operator listing only needs "these reports, filtered"; a later deployment puts a
server database (PostgreSQL) behind the same two calls. Whatever the backend, the
contract is the one :class:`ReportStore` states: a batch is stored in one transaction and
is durable when :meth:`ReportStore.insert` returns (the client deletes its outbox copy on
the 200 that follows), ``report_id`` is unique (the first copy wins), and every backend
failure surfaces as :class:`ReportStoreError`, which the server answers with 503.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple, Protocol

from ..._protocol.signing import Envelope
from ..._util import format_utc, utcnow

__all__ = ["ReportRow", "ReportStore", "ReportStoreError", "SQLiteReportStore"]

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


_SCHEMA = """
CREATE TABLE IF NOT EXISTS reports (
    report_id     TEXT PRIMARY KEY,
    subscriber_id TEXT NOT NULL,
    kind          TEXT NOT NULL,
    measure       TEXT,
    entry_id      TEXT,
    case_no       TEXT,
    created_at    TEXT NOT NULL,
    received_at   TEXT NOT NULL,
    envelope      BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS reports_subscriber ON reports (subscriber_id);
CREATE INDEX IF NOT EXISTS reports_received ON reports (received_at);
"""

_INSERT = (
    "INSERT OR IGNORE INTO reports (report_id, subscriber_id, kind, measure, entry_id, "
    "case_no, created_at, received_at, envelope) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_IN_CHUNK = 500  # ids per "IN (...)" lookup, below SQLite's host-parameter limit


class SQLiteReportStore:
    """``<state_dir>/reports.sqlite``: one connection, serialised by a lock.

    WAL with ``synchronous=FULL``: a batch answered 200 is on disk, because the client
    deletes its outbox copy on that answer. One transaction per batch.
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
            conn = sqlite3.connect(
                self._path, isolation_level=None, check_same_thread=False, timeout=5.0
            )
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=FULL")
                conn.executescript(_SCHEMA)
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
                existing = self._owners(conn, [r.report_id for r in rows])
                accepted, duplicates, new = _split_new(rows, existing, received)
                conn.executemany(_INSERT, new)
                conn.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                raise
        return accepted, duplicates

    @staticmethod
    def _owners(conn: sqlite3.Connection, ids: list[str]) -> dict[str, str]:
        """report_id -> subscriber_id of the ids already stored."""
        existing: dict[str, str] = {}
        for i in range(0, len(ids), _IN_CHUNK):
            part = ids[i : i + _IN_CHUNK]
            marks = ",".join("?" * len(part))
            existing.update(
                conn.execute(
                    f"SELECT report_id, subscriber_id FROM reports WHERE report_id IN ({marks})",
                    part,
                ).fetchall()
            )
        return existing

    def query(
        self, subscriber: str | None, kind: str | None, since: str | None, limit: int
    ) -> list[dict[str, Any]]:
        where: list[str] = []
        args: list[Any] = []
        for column, op, value in (
            ("subscriber_id", "=", subscriber),
            ("kind", "=", kind),
            ("received_at", ">=", since),
        ):
            if value is not None:
                where.append(f"{column} {op} ?")
                args.append(value)
        sql = "SELECT envelope, received_at FROM reports"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY rowid LIMIT ?"
        args.append(limit)
        with self._lock, _translated("query"):
            rows = self._connect().execute(sql, args).fetchall()
        out: list[dict[str, Any]] = []
        for envelope, received_at in rows:
            payload = Envelope.from_bytes(envelope).payload_json()
            payload["received_at"] = received_at
            out.append(payload)
        return out


def _split_new(
    rows: Sequence[ReportRow], existing: dict[str, str], received: str
) -> tuple[list[str], list[str], list[tuple[Any, ...]]]:
    """(accepted ids, duplicate ids, rows to insert); ``existing`` grows with the batch."""
    accepted: list[str] = []
    duplicates: list[str] = []
    new: list[tuple[Any, ...]] = []
    for r in rows:
        owner = existing.get(r.report_id)
        if owner is not None:
            duplicates.append(r.report_id)
            if owner != r.subscriber_id:
                log.warning(
                    "report_id %s sent by %s was stored for %s; kept the first",
                    r.report_id, r.subscriber_id, owner,
                )  # fmt: skip
            continue
        existing[r.report_id] = r.subscriber_id
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
