"""The local agent over loopback: checks/s and p50/p99 latency with a keep-alive client.

``python -m benchmarks agent [--entries N] [--checks N] [--out FILE.json]``

An ``intercept-sdk agent`` **process** serves a synced cache of ``--entries`` listed
persons (``TestPlatform``, file platform, no background syncing so that nothing but the
checks runs); this process sends ``POST /v1/check`` over one keep-alive HTTP/1.1
connection (``http.client``, what a JVM/.NET pool does per thread), 80 % subjects not on
the list and 20 % listed ones, after a warm-up. Also measured: ``/v1/block`` of listed
persons (each one a durable interception report) and ``/v1/report``, and the throughput
of 4 connections in parallel. Target: check p50 <= 1 ms.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from intercept_sdk.testing import TestPlatform
from intercept_sdk.testing.synth import valid_id_number

MEASURE = "consumption.star_hotel"
TARGET_P50_MS = 1.0


def _pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(p / 100 * len(s)))]


class _Conn:
    def __init__(self, url: str) -> None:
        host, port = url.removeprefix("http://").rstrip("/").split(":")
        self.c = http.client.HTTPConnection(host, int(port), timeout=10)

    def post(self, path: str, body: dict[str, Any]) -> tuple[int, bytes]:
        self.c.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        r = self.c.getresponse()
        return r.status, r.read()


def _timed(conn: _Conn, path: str, bodies: list[dict[str, Any]]) -> list[float]:
    out = []
    for body in bodies:
        t = time.perf_counter()
        status, _ = conn.post(path, body)
        out.append(time.perf_counter() - t)
        if status != 200:
            raise RuntimeError(f"{path} answered {status}")
    return out


def _parallel(url: str, bodies: list[dict[str, Any]], threads: int) -> float:
    """Checks per second with ``threads`` keep-alive connections."""
    per = len(bodies) // threads

    def work(chunk: list[dict[str, Any]]) -> None:
        _timed(_Conn(url), "/v1/check", chunk)

    ts = [
        threading.Thread(target=work, args=(bodies[i * per : (i + 1) * per],))
        for i in range(threads)
    ]
    t = time.perf_counter()
    for th in ts:
        th.start()
    for th in ts:
        th.join()
    return per * threads / (time.perf_counter() - t)


def run(entries: int, checks: int, work: Path) -> dict[str, Any]:
    rng = random.Random(19)
    p = TestPlatform(work / "platform")
    listed = [p.add_person(valid_id_number(rng), publish=False) for _ in range(entries)]
    p.publish()
    env = {**os.environ, **p.env(work / "cache")}
    cli = [sys.executable, "-m", "intercept_sdk._cli"]
    subprocess.run([*cli, "sync", "--quiet"], env=env, check=True, timeout=600)
    proc = subprocess.Popen(
        [*cli, "agent", "--port", "0", "--json", "--no-background"],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        url = json.loads(proc.stdout.readline())["url"]
        hits = [{"measure": MEASURE, "subject": {"id_number": e["id_number"]}} for e in listed]

        def body() -> dict[str, Any]:
            if rng.random() < 0.2:
                return rng.choice(hits)
            return {"measure": MEASURE, "subject": {"id_number": valid_id_number(rng)}}

        bodies = [body() for _ in range(checks)]
        conn = _Conn(url)
        _timed(conn, "/v1/check", bodies[:500])  # warm-up
        t = time.perf_counter()
        lat = _timed(conn, "/v1/check", bodies)
        wall = time.perf_counter() - t
        blocks = _timed(conn, "/v1/block", [hits[i % len(hits)] for i in range(200)])
        entry = listed[0]["entry_id"]
        reports = _timed(
            conn,
            "/v1/report",
            [{"kind": "objection", "entry_id": entry, "details": {"grounds": "复核"}}] * 200,
        )
        parallel = _parallel(url, bodies[: min(len(bodies), 8000)], 4)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    p50 = _pct(lat, 50) * 1000
    return {
        "entries": entries,
        "checks": checks,
        "checks_per_s_one_connection": checks / wall,
        "checks_per_s_4_connections": parallel,
        "check_p50_ms": p50,
        "check_p99_ms": _pct(lat, 99) * 1000,
        "check_mean_ms": statistics.fmean(lat) * 1000,
        "block_p50_ms": _pct(blocks, 50) * 1000,
        "block_p99_ms": _pct(blocks, 99) * 1000,
        "report_p50_ms": _pct(reports, 50) * 1000,
        "report_p99_ms": _pct(reports, 99) * 1000,
        "target": f"check p50 <= {TARGET_P50_MS} ms",
        "met": p50 <= TARGET_P50_MS,
        "load1": os.getloadavg()[0],
        "cpus": os.cpu_count(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks agent", description=__doc__)
    parser.add_argument("--entries", type=int, default=10_000, help="listed persons (10,000)")
    parser.add_argument("--checks", type=int, default=20_000, help="timed checks (20,000)")
    parser.add_argument("--out", help="also write the result as JSON here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-agent-") as d:
        result = run(args.entries, args.checks, Path(d))
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0 if result["met"] else 1


def stage(ctx: Any) -> None:
    """The ``agent`` stage of ``python -m benchmarks``: rows ``agent_check_p50`` (target
    <= 1 ms) and ``agent_rates`` (reported)."""
    from .harness import log

    s = ctx.sizes
    entries, checks = (2_000, 3_000) if s.name == "smoke" else (10_000, 20_000)
    log(f"agent: {entries:,} listed persons, {checks:,} checks over loopback")
    r = run(entries, checks, ctx.tmp("agent"))
    ctx.row(
        "agent_check_p50",
        r["check_p50_ms"],
        met=r["met"],
        notes=f"p99 {r['check_p99_ms']:.2f} ms; block p50 {r['block_p50_ms']:.2f} ms (each a "
        f"durable interception report), report p50 {r['report_p50_ms']:.2f} ms; one "
        "keep-alive HTTP/1.1 connection to an `intercept-sdk agent` process, 20 % hits",
        **{k: v for k, v in r.items() if k != "met"},
    )
    ctx.row(
        "agent_rate",
        r["checks_per_s_one_connection"],
        met=None,
        notes=f"{r['checks_per_s_4_connections']:,.0f}/s with 4 connections",
    )
