"""The report store on PostgreSQL: the production engine when one machine is not enough.

Same contract as :class:`~.storage.ReportStore` (see :mod:`.storage`): one transaction per
batch, durable when :meth:`PostgresReportStore.insert` returns (a COMMIT with
PostgreSQL's default ``synchronous_commit=on``), de-duplication by
``(subscriber_id, report_id)`` enforced by a UNIQUE constraint, so any number of server
processes may share one database: a batch is one ``INSERT ... SELECT FROM unnest(...)
ON CONFLICT DO NOTHING RETURNING`` and the database decides which rows are new, with no
read-then-write race between processes. Arrival order is a ``BIGSERIAL``.

Bounded: connecting waits at most ``connect_timeout`` s, a statement at most
``statement_timeout``; a broken connection is dropped and the next call reconnects
(meanwhile the server answers 503 with Retry-After and the client retries).
Needs ``psycopg`` 3 (``pip install 'intercept-sdk[postgres]'``).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator, Sequence
from typing import Any

from ..._exceptions import ConfigurationError
from ..._protocol.signing import Envelope
from ..._util import format_utc, utcnow
from .storage import ReportRow, ReportStoreError, listing_sql

__all__ = ["PostgresReportStore"]

log = logging.getLogger("intercept_sdk.platform")

try:
    import psycopg
except ImportError:  # pragma: no cover - depends on the environment
    psycopg = None  # type: ignore[assignment]

_LOCK_ID = 0x1_6CE_97  # advisory lock taken while creating the schema (any constant)
_SCHEMA = """
CREATE TABLE IF NOT EXISTS reports (
    seq           BIGSERIAL PRIMARY KEY,
    report_id     TEXT NOT NULL,
    subscriber_id TEXT NOT NULL,
    kind          TEXT NOT NULL,
    measure       TEXT,
    entry_id      TEXT,
    case_no       TEXT,
    created_at    TEXT NOT NULL,
    received_at   TEXT NOT NULL,
    envelope      BYTEA NOT NULL,
    CONSTRAINT reports_subscriber_report UNIQUE (subscriber_id, report_id)
);
CREATE INDEX IF NOT EXISTS reports_received ON reports (received_at)
"""
_INSERT = """
INSERT INTO reports (report_id, subscriber_id, kind, measure, entry_id, case_no,
                     created_at, received_at, envelope)
SELECT report_id, subscriber_id, kind, measure, entry_id, case_no, created_at, %s, envelope
FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::text[], %s::text[],
            %s::text[], %s::bytea[]) WITH ORDINALITY
     AS u(report_id, subscriber_id, kind, measure, entry_id, case_no, created_at,
          envelope, n)
ORDER BY n
ON CONFLICT ON CONSTRAINT reports_subscriber_report DO NOTHING
RETURNING subscriber_id, report_id
"""
_COUNTS = "SELECT subscriber_id, kind, count(*) FROM reports GROUP BY 1, 2 ORDER BY 1, 2"


class PostgresReportStore:
    """Reports in PostgreSQL at ``dsn`` (``postgresql://user@host:port/db?...``).

    One connection per store, used under a lock (the server's few worker threads take
    turns; several server processes give parallelism, each with its own connection).
    """

    def __init__(
        self, dsn: str, *, connect_timeout: int = 5, statement_timeout_ms: int = 30_000
    ) -> None:
        if psycopg is None:
            raise ConfigurationError(
                "PostgreSQL needs psycopg: pip install 'intercept-sdk[postgres]'"
            )
        self._dsn = dsn
        self._connect_timeout = connect_timeout
        self._statement_timeout_ms = statement_timeout_ms
        self._lock = threading.Lock()
        self._conn: psycopg.Connection[Any] | None = None
        self._closed = False

    def open(self) -> None:
        with self._lock, self._translated("open"):
            self._connect()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._drop()

    def reopen(self) -> None:
        with self._lock:
            self._closed = False

    def _drop(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None

    def _connect(self) -> psycopg.Connection[Any]:
        if self._closed:
            raise ReportStoreError("report store is closed")
        if self._conn is None or self._conn.closed:
            conn = psycopg.connect(
                self._dsn,
                connect_timeout=self._connect_timeout,
                options=f"-c statement_timeout={self._statement_timeout_ms}",
                application_name="intercept-sdk-platform",
            )
            try:
                with conn.transaction():
                    conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_ID,))
                    for statement in _SCHEMA.split(";"):
                        if statement.strip():
                            conn.execute(statement)
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        return self._conn

    @contextlib.contextmanager
    def _translated(self, action: str) -> Iterator[None]:
        """psycopg's errors -> :class:`ReportStoreError`; a broken connection is dropped."""
        try:
            yield
        except psycopg.Error as exc:
            if self._conn is not None and (self._conn.closed or self._conn.broken):
                self._drop()
            raise ReportStoreError(f"report store {action} failed: {exc}") from exc
        except OSError as exc:  # pragma: no cover - psycopg wraps most of these
            self._drop()
            raise ReportStoreError(f"report store {action} failed: {exc}") from exc

    def insert(self, rows: Sequence[ReportRow]) -> tuple[list[str], list[str]]:
        if not rows:
            return [], []
        received = format_utc(utcnow())
        columns: list[list[Any]] = [[] for _ in range(8)]
        for r in rows:
            for i, value in enumerate(
                (r.report_id, r.subscriber_id, r.kind, r.measure, r.entry_id, r.case_no,
                 r.created_at, r.envelope)
            ):  # fmt: skip
                columns[i].append(value)
        with self._lock, self._translated("insert"):
            conn = self._connect()
            with conn.transaction():
                new = {(s, r) for s, r in conn.execute(_INSERT, (received, *columns)).fetchall()}
        accepted: list[str] = []
        duplicates: list[str] = []
        for r in rows:
            key = (r.subscriber_id, r.report_id)
            if key in new:
                new.discard(key)  # a repeat later in the same batch is a duplicate
                accepted.append(r.report_id)
            else:
                duplicates.append(r.report_id)
        return accepted, duplicates

    def query(
        self, subscriber: str | None, kind: str | None, since: str | None, limit: int
    ) -> list[dict[str, Any]]:
        sql, args = listing_sql(subscriber, kind, since, limit, mark="%s", order="seq")
        with self._lock, self._translated("query"):
            conn = self._connect()
            with conn.transaction():
                rows = conn.execute(sql, args).fetchall()
        out: list[dict[str, Any]] = []
        for envelope, received_at in rows:
            payload = Envelope.from_bytes(bytes(envelope)).payload_json()
            payload["received_at"] = received_at
            out.append(payload)
        return out

    def counts(self) -> list[tuple[str, str, int]]:
        with self._lock, self._translated("count"):
            conn = self._connect()
            with conn.transaction():
                return [(s, k, int(n)) for s, k, n in conn.execute(_COUNTS).fetchall()]
