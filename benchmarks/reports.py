"""Feedback reports: durable enqueue, and upload to the reference platform.

* **enqueue**: ``Client.report("interception", decision, ...)`` on a synced offline
  client (directory platform, so no sender thread uploads meanwhile): build, validate,
  sign (Ed25519) and commit to the outbox (WAL, ``synchronous=FULL``). Baseline: a raw
  sqlite3 ``INSERT`` of an envelope of the same size into a WAL table with
  ``synchronous=FULL``, one transaction each. The two alternate one by one, because the
  disk's flush latency (which dominates both) changes from second to second.
* **upload**: an outbox holding N signed reports is drained by ``Sender.flush()`` to
  the reference platform (a separate process, which verifies every signature and stores
  the reports). The outbox is *filled* with ``synchronous=OFF`` to save set-up time
  (filling is not measured; the upload runs with the outbox's normal settings). The
  Sender runs with its rate limit lifted (``max_rate`` 10^9): the figure is what the
  pipeline can do. A second row drains a smaller outbox at the Client's *default*
  ``report_rate``, which caps a backlog's drain rate on purpose. Baseline: raw ingest,
  i.e. the same kind of batches (500 reports) POSTed with httpx, without the SDK.
"""

from __future__ import annotations

import os
import statistics
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from intercept_sdk import Client, Person
from intercept_sdk._client.keys import load_subscriber_key
from intercept_sdk._client.options import ClientOptions
from intercept_sdk._client.outbox import Outbox, Sender
from intercept_sdk._platform.publish import publish
from intercept_sdk._protocol.reports import build_report, sign_report
from intercept_sdk.testing.synth import generate_entries

from . import data
from .harness import MEASURE, Context, log, server_process

BATCH = 500


def _default_report_rate() -> float:
    return float(ClientOptions.report_rate)


def _signed(key: Any, n: int) -> list[tuple[str, bytes]]:
    out = []
    for i in range(n):
        payload = build_report(
            "interception",
            subscriber_id=data.SUBSCRIBER,
            measure=MEASURE,
            entry_id=f"E{i % 1000:08d}",
            case_no="(2024)冀0203执1024号",
            list_version=1,
            outcome="blocked",
            details={"room": "1808", "desk": "front-1"},
        )
        out.append((payload["report_id"], sign_report(payload, key)))
    return out


def _fill(path: Path, reports: list[tuple[str, bytes]]) -> Outbox:
    box = Outbox(path)
    conn = box._conn()
    conn.execute("PRAGMA synchronous=OFF")
    for rid, env in reports:
        box.enqueue(
            env, report_id=rid, kind="interception", measure=MEASURE, created_at=_created(env)
        )
    conn.execute("PRAGMA synchronous=FULL")
    return box


def _created(env: bytes) -> str:
    from intercept_sdk._protocol.signing import Envelope

    created: str = Envelope.from_bytes(env).payload_json()["created_at"]
    return created


def _raw_ingest(url: str, reports: list[tuple[str, bytes]]) -> float:
    """POST the reports in batches of 500 with plain httpx; reports/s."""
    bodies = [
        b'{"reports":[' + b",".join(env for _, env in reports[i : i + BATCH]) + b"]}"
        for i in range(0, len(reports), BATCH)
    ]
    with httpx.Client(timeout=60, headers={"Content-Type": "application/json"}) as http:
        t = time.perf_counter()
        for body in bodies:
            resp = http.post(url + "/reports", content=body)
            if resp.status_code != 200:
                raise RuntimeError(f"raw ingest: HTTP {resp.status_code}: {resp.text[:200]}")
        return len(reports) / (time.perf_counter() - t)


def _cpu_seconds(pid: int) -> float:
    """utime + stime of a process (Linux ``/proc/<pid>/stat``), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _drain(box: Outbox, url: str, max_rate: float, n: int) -> float:
    sender = Sender(box, url, max_rate=max_rate)
    t = time.perf_counter()
    ok = sender.flush(600)
    seconds = time.perf_counter() - t
    sender.close(5)
    if not ok or box.pending_count():
        raise RuntimeError(
            f"Sender.flush did not empty the outbox: {box.pending_count()} pending, "
            f"last error {sender.last_error}"
        )
    if box.sent_count() != n:
        raise RuntimeError(f"{box.sent_count()} of {n} reports acknowledged")
    return n / seconds


def run(ctx: Context) -> None:
    s = ctx.sizes
    d = ctx.tmp("reports")
    paths = data.new_platform(d)
    entries = list(generate_entries(50, seed=7))
    publish(entries, paths["keys"], paths["site"], expires=86400)
    person = next(
        e
        for e in entries
        if e["subject_type"] == "person" and "*" in e["measures"] and "valid_until" not in e
    )
    client = Client(
        str(paths["site"]),
        paths["root"],
        d / "cache",
        data.SUBSCRIBER,
        subscriber_key=paths["subscriber"],
    )
    client.sync()
    decision = client.check(Person(person["id_number"]), MEASURE)
    keys = load_subscriber_key(paths["subscriber"])
    sample = _signed(keys.report, 1)[0][1]

    # -- enqueue ---------------------------------------------------------------------
    import sqlite3

    conn = sqlite3.connect(d / "baseline.sqlite", isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute(
        "CREATE TABLE pending(seq INTEGER PRIMARY KEY, report_id TEXT NOT NULL, envelope BLOB)"
    )
    n = s.enqueue_reports
    client.report("interception", decision, room="1808")  # warm-up
    conn.execute("INSERT INTO pending(report_id, envelope) VALUES (?, ?)", ("w", sample))
    ns = time.perf_counter_ns
    cpu = time.thread_time_ns
    t_sdk: list[int] = []
    t_base: list[int] = []
    cpu_sdk = cpu_base = 0
    log(f"reports: {n:,} durable enqueues and {n:,} baseline inserts, alternating")
    for _ in range(n):
        c0 = cpu()
        t0 = ns()
        client.report("interception", decision, room="1808", desk="front-1")
        t1 = ns()
        c1 = cpu()
        conn.execute(
            "INSERT INTO pending(report_id, envelope) VALUES (?, ?)", (uuid.uuid4().hex, sample)
        )
        t2 = ns()
        c2 = cpu()
        t_sdk.append(t1 - t0)
        t_base.append(t2 - t1)
        cpu_sdk += c1 - c0
        cpu_base += c2 - c1
    conn.close()
    client.close()
    done = n
    rate, base_rate = done / (sum(t_sdk) / 1e9), done / (sum(t_base) / 1e9)
    med_sdk, med_base = statistics.median(t_sdk) / 1e6, statistics.median(t_base) / 1e6
    ctx.row(
        "enqueue",
        rate,
        met=rate / base_rate >= 0.5,
        baseline=base_rate,
        baseline_text=f"{base_rate:,.0f} inserts/s (sqlite3 INSERT, WAL, synchronous=FULL)",
        ratio=rate / base_rate,
        measured_text=f"{rate:,.0f} reports/s",
        notes=f"{done:,} reports (build, validate, sign, commit) alternating one by one with "
        f"the inserts; envelope {len(sample)} bytes; median {med_sdk:.2f} ms per report vs "
        f"{med_base:.2f} ms per insert (one fdatasync each); CPU of the calling thread "
        f"{cpu_sdk / n / 1e6:.2f} ms per report vs {cpu_base / n / 1e6:.2f} ms per insert "
        "(the rest is waiting for the disk)",
        cpu_ms_per_report=cpu_sdk / n / 1e6,
        cpu_ms_per_insert=cpu_base / n / 1e6,
    )

    # -- upload ----------------------------------------------------------------------
    n_up = s.upload_reports
    n_def = max(BATCH, n_up // 4)
    log(f"reports: signing {2 * n_up + n_def:,} reports for the upload figures")
    up = _fill(d / "upload.sqlite", _signed(keys.report, n_up))
    default_box = _fill(d / "default.sqlite", _signed(keys.report, n_def))
    raw_sets = [_signed(keys.report, n_up // 2), _signed(keys.report, n_up // 2)]
    rate_default = _default_report_rate()
    with server_process(
        paths["site"], subscribers=paths["keys"] / "subscribers", state=d / "ps"
    ) as srv:
        cpu0 = _cpu_seconds(srv.pid)
        raw = [_raw_ingest(srv.url, raw_sets[0])]
        server_cpu_raw = _cpu_seconds(srv.pid) - cpu0
        log(f"  raw ingest {raw[0]:,.0f}/s; Sender.flush of {n_up:,} reports")
        cpu0, own0 = _cpu_seconds(srv.pid), time.process_time()
        sent = _drain(up, srv.url, 1e9, n_up)
        server_cpu = _cpu_seconds(srv.pid) - cpu0
        sender_cpu = time.process_time() - own0
        raw.append(_raw_ingest(srv.url, raw_sets[1]))
        log(f"  Sender {sent:,.0f}/s; raw ingest again {raw[1]:,.0f}/s; default rate")
        sent_default = _drain(default_box, srv.url, rate_default, n_def)
    up.close()
    default_box.close()
    raw_rate = statistics.mean(raw)
    ctx.row(
        "upload",
        sent,
        met=sent >= 5000,
        baseline=raw_rate,
        baseline_text=f"{raw_rate:,.0f} reports/s (raw POSTs of the same batches, no SDK: "
        f"{raw[0]:,.0f} before / {raw[1]:,.0f} after)",
        ratio=sent / raw_rate,
        measured_text=f"{sent:,.0f} reports/s",
        notes=f"{n_up:,} reports, batches of {BATCH}, Sender rate limit lifted; the platform "
        "verifies each Ed25519 signature and stores each report. CPU per report: platform "
        f"{server_cpu / n_up * 1e6:,.0f} µs ({server_cpu_raw / len(raw_sets[0]) * 1e6:,.0f} µs "
        f"in the raw ingest), sender {sender_cpu / n_up * 1e6:,.0f} µs: one platform process "
        f"tops out near {n_up / server_cpu:,.0f} reports per CPU second",
        server_cpu_us=server_cpu / n_up * 1e6,
        sender_cpu_us=sender_cpu / n_up * 1e6,
    )
    ctx.row(
        "upload_default_rate",
        sent_default,
        met=None,
        measured_text=f"{sent_default:,.0f} reports/s",
        notes=f"{n_def:,} reports; Client(report_rate={rate_default:,.0f}) by default",
        report_rate=rate_default,
    )
