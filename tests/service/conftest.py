"""Fixtures for the service tests: a session-wide PostgreSQL, and a report store per engine."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from intercept_sdk._platform.server.storage import ReportStore, SQLiteReportStore

from . import _pg


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[_pg.Cluster]:
    """One private PostgreSQL for the whole session (skips when it cannot exist)."""
    pytest.importorskip("psycopg", reason="psycopg is not installed (pip install '.[postgres]')")
    bin_dir = _pg.find_bin()
    if bin_dir is None:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL binaries are missing in CI (.ci/run installs 'postgresql')")
        pytest.skip("PostgreSQL is not installed (Debian: apt-get install postgresql)")
    cluster = _pg.start(bin_dir)
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def pg_dsn(pg_cluster: _pg.Cluster) -> str:
    """A fresh, empty database in the session's cluster."""
    return pg_cluster.new_database()


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def database(engine: str, request: pytest.FixtureRequest) -> str | None:
    """``--database`` for the engine under test: None (SQLite in the state dir) or a DSN."""
    if engine == "sqlite":
        return None
    return str(request.getfixturevalue("pg_dsn"))


@pytest.fixture
def report_store(
    engine: str, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[ReportStore]:
    """An open, empty :class:`ReportStore` of each engine."""
    store: ReportStore
    if engine == "sqlite":
        store = SQLiteReportStore(tmp_path / "reports.sqlite")
    else:
        from intercept_sdk._platform.server.storage_pg import PostgresReportStore

        store = PostgresReportStore(request.getfixturevalue("pg_dsn"))
    store.open()
    try:
        yield store
    finally:
        store.close()
