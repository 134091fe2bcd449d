"""One report-store suite, run against SQLite and PostgreSQL (the ``report_store`` fixture).

The contract (``_platform/server/storage.py``): a batch in one transaction, durable on
return, a report identified by (subscriber_id, report_id) with the database enforcing it,
arrival order, filters, counts, closed stores failing with ReportStoreError.
"""

from __future__ import annotations

import sqlite3
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest

from _servers import make_report
from intercept_sdk._exceptions import ConfigurationError
from intercept_sdk._platform.server.storage import (
    ReportRow,
    ReportStore,
    ReportStoreError,
    SQLiteReportStore,
    open_report_store,
)
from intercept_sdk._protocol.signing import SigningKey, canonical_json

KEY = SigningKey.generate()


def row(subscriber: str = "hotel-001", report_id: str | None = None, **fields: Any) -> ReportRow:
    obj = make_report(KEY, subscriber, report_id=report_id or uuid.uuid4().hex, **fields)
    payload_kind = fields.get("kind", "interception")
    from intercept_sdk._protocol.signing import Envelope

    env = canonical_json(obj)
    payload = Envelope.from_bytes(env).payload_json()
    return ReportRow(
        payload["report_id"], subscriber, payload_kind, payload["measure"], payload["entry_id"],
        payload["case_no"], payload["created_at"], env,
    )  # fmt: skip


def test_insert_query_roundtrip_in_arrival_order(report_store: ReportStore) -> None:
    rows = [row() for _ in range(5)]
    accepted, dups = report_store.insert(rows)
    assert accepted == [r.report_id for r in rows] and dups == []
    got = report_store.query(None, None, None, 100)
    assert [g["report_id"] for g in got] == accepted
    assert all(g["received_at"].endswith("Z") for g in got)


def test_duplicates_by_subscriber_and_report_id(report_store: ReportStore) -> None:
    a = row("hotel-001", "same-id")
    assert report_store.insert([a]) == (["same-id"], [])
    # the same (subscriber, id) again, also repeated inside one batch: duplicates
    assert report_store.insert([a, a]) == ([], ["same-id", "same-id"])
    # another subscriber may use the same report_id: a different report
    b = row("bank-007", "same-id")
    c = row("bank-007", "other")
    assert report_store.insert([b, b, c]) == (["same-id", "other"], ["same-id"])
    got = report_store.query(None, None, None, 100)
    assert sorted((g["subscriber_id"], g["report_id"]) for g in got) == [
        ("bank-007", "other"), ("bank-007", "same-id"), ("hotel-001", "same-id"),
    ]  # fmt: skip


def test_filters_limit_and_counts(report_store: ReportStore) -> None:
    report_store.insert([row("hotel-001") for _ in range(3)])
    report_store.insert([row("bank-007", kind="lift") for _ in range(2)])
    assert len(report_store.query("bank-007", None, None, 100)) == 2
    assert len(report_store.query(None, "lift", None, 100)) == 2
    assert len(report_store.query(None, None, None, 4)) == 4
    assert len(report_store.query(None, None, "2000-01-01T00:00:00Z", 100)) == 5
    assert report_store.query(None, None, "2999-01-01T00:00:00Z", 100) == []
    assert report_store.counts() == [("bank-007", "lift", 2), ("hotel-001", "interception", 3)]


def test_empty_batch_and_closed_store(report_store: ReportStore) -> None:
    assert report_store.insert([]) == ([], [])
    report_store.close()
    with pytest.raises(ReportStoreError):
        report_store.insert([row()])
    with pytest.raises(ReportStoreError):
        report_store.query(None, None, None, 1)
    report_store.reopen()
    assert report_store.insert([row()])[0]


def test_concurrent_inserts_of_the_same_reports_store_each_once(
    report_store: ReportStore,
) -> None:
    rows = [row() for _ in range(200)]
    results: list[tuple[list[str], list[str]]] = []

    def go() -> None:
        results.append(report_store.insert(rows))

    threads = [threading.Thread(target=go) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sum(len(a) for a, _ in results) == 200
    assert len(report_store.query(None, None, None, 1000)) == 200


def test_unique_constraint_is_in_the_database(report_store: ReportStore, engine: str) -> None:
    """A writer that bypasses the store's own checks still cannot store a report twice."""
    r = row()
    report_store.insert([r])
    values = (r.report_id, r.subscriber_id, r.kind, None, None, None, r.created_at, "x", r.envelope)
    if engine == "sqlite":
        conn = sqlite3.connect(report_store._path)  # type: ignore[attr-defined]
        with pytest.raises(sqlite3.IntegrityError):
            conn.execute("INSERT INTO reports (report_id, subscriber_id, kind, measure, "
                         "entry_id, case_no, created_at, received_at, envelope) "
                         "VALUES (?,?,?,?,?,?,?,?,?)", values)  # fmt: skip
        conn.close()
    else:
        import psycopg

        dsn = report_store._dsn  # type: ignore[attr-defined]
        with psycopg.connect(dsn) as pg, pytest.raises(psycopg.errors.UniqueViolation):
            pg.execute("INSERT INTO reports (report_id, subscriber_id, kind, measure, "
                             "entry_id, case_no, created_at, received_at, envelope) "
                             "VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s)", values)  # fmt: skip


def test_sqlite_file_is_private_and_v1_schema_migrates(tmp_path: Path) -> None:
    path = tmp_path / "reports.sqlite"
    old = sqlite3.connect(path)
    old.executescript(
        "CREATE TABLE reports (report_id TEXT PRIMARY KEY, subscriber_id TEXT NOT NULL, "
        "kind TEXT NOT NULL, measure TEXT, entry_id TEXT, case_no TEXT, created_at TEXT NOT "
        "NULL, received_at TEXT NOT NULL, envelope BLOB NOT NULL);"
        "CREATE INDEX reports_subscriber ON reports (subscriber_id);"
    )
    r = row("hotel-001", "kept")
    old.execute("INSERT INTO reports VALUES (?,?,?,?,?,?,?,?,?)",
                (r.report_id, r.subscriber_id, r.kind, r.measure, r.entry_id, r.case_no,
                 r.created_at, "2026-01-01T00:00:00Z", r.envelope))  # fmt: skip
    old.commit()
    old.close()
    path.chmod(0o644)
    store = SQLiteReportStore(path)
    store.open()
    try:
        assert path.stat().st_mode & 0o777 == 0o600
        assert [g["report_id"] for g in store.query(None, None, None, 10)] == ["kept"]
        assert store.insert([row("bank-007", "kept")]) == (["kept"], [])  # per subscriber now
        assert store.insert([r]) == ([], ["kept"])
    finally:
        store.close()
    fresh = tmp_path / "new" / "reports.sqlite"
    fresh.parent.mkdir()
    s2 = SQLiteReportStore(fresh)
    s2.open()
    s2.close()
    assert fresh.stat().st_mode & 0o777 == 0o600


def test_database_urls(tmp_path: Path) -> None:
    assert isinstance(open_report_store(None, tmp_path), SQLiteReportStore)
    assert isinstance(
        open_report_store(f"sqlite:///{tmp_path}/x.sqlite", tmp_path), SQLiteReportStore
    )
    for bad in ("mysql://x", "sqlite:///", "", "reports.sqlite"):
        with pytest.raises(ConfigurationError):
            open_report_store(bad, tmp_path)


def test_unreachable_postgres_is_a_store_error() -> None:
    pytest.importorskip("psycopg")
    from intercept_sdk._platform.server.storage_pg import PostgresReportStore

    with socket_closed_port() as port:
        store = PostgresReportStore(f"postgresql://postgres@127.0.0.1:{port}/x", connect_timeout=2)
        with pytest.raises(ReportStoreError):
            store.open()


class socket_closed_port:
    def __enter__(self) -> int:
        import socket

        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        self.port = int(s.getsockname()[1])
        s.close()
        return self.port

    def __exit__(self, *exc: object) -> None:
        return None
