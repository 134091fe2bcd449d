"""Report intake throughput on both report-store engines, next to a raw insert baseline.

For SQLite (``state/reports.sqlite``) and PostgreSQL (a private cluster started here, as
the tests do; skipped with a message when PostgreSQL is not installed), three rows each:

* **raw insert**: ``executemany`` of the same rows into a bare table, one transaction per
  batch, nothing else -- the engine's floor;
* **store.insert**: :class:`ReportStore.insert` (UNIQUE (subscriber, report_id),
  duplicate detection, durable commit);
* **HTTP intake**: ``POST /reports`` of signed batches to a real server on loopback
  (signature verification, schema validation, store), 2 client threads.

Run: ``python -m benchmarks.report_intake [-n REPORTS] [--batch SIZE]``.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from intercept_sdk._platform.server import PlatformServer
from intercept_sdk._platform.server.intake import row_of
from intercept_sdk._platform.server.storage import ReportRow, ReportStore, open_report_store
from intercept_sdk._protocol.signing import (
    REPORT_TYPE,
    Envelope,
    SigningKey,
    canonical_json,
    sign_envelope,
    write_public_key,
)
from intercept_sdk._util import format_utc, utcnow

_SID = "hotel-001"


def _envelopes(key: SigningKey, n: int) -> list[bytes]:
    out = []
    for _ in range(n):
        payload = {
            "type": "report", "report_id": uuid.uuid4().hex, "subscriber_id": _SID,
            "kind": "interception", "created_at": format_utc(utcnow()),
            "measure": "consumption.star_hotel", "entry_id": "E1",
            "case_no": "(2019)冀0203执123号", "list_version": 1, "outcome": "blocked",
            "details": {},
        }  # fmt: skip
        out.append(sign_envelope(REPORT_TYPE, canonical_json(payload), [key]).to_bytes())
    return out


def _rows(envs: list[bytes]) -> list[ReportRow]:
    rows = []
    for i, raw in enumerate(envs):
        row = row_of(Envelope.from_bytes(raw), frozenset({_SID}), raw, i)
        assert isinstance(row, ReportRow)
        rows.append(row)
    return rows


def _raw_sqlite(path: Path, rows: list[ReportRow], batch: int) -> float:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("CREATE TABLE raw (a, b, c, d, e, f, g, h, i)")
    t = time.perf_counter()
    for k in range(0, len(rows), batch):
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO raw VALUES (?,?,?,?,?,?,?,?,?)",
                         [(*r[:7], "now", r.envelope) for r in rows[k : k + batch]])  # fmt: skip
        conn.execute("COMMIT")
    conn.close()
    return len(rows) / (time.perf_counter() - t)


def _raw_pg(dsn: str, rows: list[ReportRow], batch: int) -> float:
    import psycopg

    with psycopg.connect(dsn) as conn:
        conn.execute("CREATE TABLE raw (a text, b text, c text, d text, e text, f text, g text, "
                     "h text, i bytea)")  # fmt: skip
        conn.commit()
        t = time.perf_counter()
        for k in range(0, len(rows), batch):
            with conn.cursor() as cur:
                values = [(*r[:7], "now", r.envelope) for r in rows[k : k + batch]]
                cur.executemany("INSERT INTO raw VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s)", values)
            conn.commit()
        return len(rows) / (time.perf_counter() - t)


def _store(store: ReportStore, rows: list[ReportRow], batch: int) -> float:
    store.open()
    try:
        t = time.perf_counter()
        for k in range(0, len(rows), batch):
            store.insert(rows[k : k + batch])
        return len(rows) / (time.perf_counter() - t)
    finally:
        store.close()


def _http(site: Path, subs: Path, state: Path, database: str | None, envs: list[bytes],
          batch: int) -> float:  # fmt: skip
    bodies = [b'{"reports":[' + b",".join(envs[k : k + batch]) + b"]}"
              for k in range(0, len(envs), batch)]  # fmt: skip
    with PlatformServer(site, subscribers_dir=subs, state_dir=state, database=database) as srv:
        todo = list(bodies)
        lock = threading.Lock()

        def worker() -> None:
            with httpx.Client(base_url=srv.url, timeout=60) as c:
                while True:
                    with lock:
                        if not todo:
                            return
                        body = todo.pop()
                    r = c.post("/reports", content=body,
                               headers={"Content-Type": "application/json"})  # fmt: skip
                    assert r.status_code == 200, r.text

        t = time.perf_counter()
        threads = [threading.Thread(target=worker) for _ in range(2)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        return len(envs) / (time.perf_counter() - t)


def run(n: int, batch: int) -> list[dict[str, Any]]:
    key = SigningKey.generate()
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="intercept-bench-intake-") as tmp:
        root = Path(tmp)
        site = root / "site"
        site.mkdir()
        subs = root / "subs"
        subs.mkdir()
        write_public_key(subs / f"{_SID}.ed25519.pem", key.public)
        engines: list[tuple[str, Any]] = [("sqlite", None)]
        cluster = _start_pg()
        if cluster is not None:
            engines.append(("postgresql", cluster))
        try:
            for engine, cl in engines:
                envs = _envelopes(key, n)
                rows = _rows(envs)
                dsn = [cl.new_database() for _ in range(3)] if cl is not None else [None] * 3
                raw = (_raw_sqlite(root / f"raw-{engine}.sqlite", rows, batch) if cl is None
                       else _raw_pg(str(dsn[0]), rows, batch))  # fmt: skip
                (root / f"store-{engine}").mkdir(exist_ok=True)
                store = _store(open_report_store(dsn[1], root / f"store-{engine}"), rows, batch)
                http = _http(site, subs, root / f"http-{engine}", dsn[2], _envelopes(key, n), batch)
                for what, rate in (("raw insert", raw), ("store.insert", store),
                                   ("HTTP intake", http)):  # fmt: skip
                    results.append({"engine": engine, "what": what, "reports_per_s": round(rate)})
        finally:
            if cluster is not None:
                cluster.stop()
    return results


def _start_pg() -> Any:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    try:
        import psycopg  # noqa: F401

        from service import _pg  # type: ignore[import-not-found]  # tests' cluster helper
    except ImportError as exc:
        print(f"PostgreSQL skipped: {exc}", file=sys.stderr)
        return None
    bin_dir = _pg.find_bin()
    if bin_dir is None:
        print("PostgreSQL skipped: not installed (Debian: apt-get install postgresql)",
              file=sys.stderr)  # fmt: skip
        return None
    return _pg.start(bin_dir)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.report_intake")
    ap.add_argument("-n", type=int, default=5000, help="reports per measurement")
    ap.add_argument("--batch", type=int, default=500)
    args = ap.parse_args(argv)
    results = run(args.n, args.batch)
    for r in results:
        print(f"{r['engine']:<11} {r['what']:<13} {r['reports_per_s']:>9,} reports/s")
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())


def stage(ctx: Any) -> None:
    """The ``intake`` stage of ``python -m benchmarks``: HTTP intake on each engine next to
    that engine's raw insert (rows ``intake_sqlite``, ``intake_postgresql``)."""
    from .harness import log

    n = 1_000 if ctx.sizes.name == "smoke" else 5_000
    log(f"intake: {n:,} signed reports per measurement, batches of 500")
    results = run(n, 500)
    for engine in ("sqlite", "postgresql"):
        got = {r["what"]: r["reports_per_s"] for r in results if r["engine"] == engine}
        if not got:
            continue  # PostgreSQL not installed: the row says "not run"
        raw, http = got["raw insert"], got["HTTP intake"]
        ctx.row(
            f"intake_{engine}",
            http,
            met=None,
            baseline=raw,
            baseline_text=f"{raw:,} reports/s (raw executemany insert)",
            ratio=http / raw,
            notes=f"store.insert {got['store.insert']:,}/s; HTTP intake = signature "
            "verification, schema validation and durable store, 2 client threads",
        )
