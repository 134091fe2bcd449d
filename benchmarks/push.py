"""Revocation propagation: publish a revocation → a background client's decision changes.

The reference platform serves a small list from a separate process (publishing a million
entries takes minutes, which says nothing about propagation, so the list size is stated in
the row). A ``Client(url, ..., background=True, poll_interval="1h")`` follows the push
channel. Each round revokes one listed person, republishes the list (in this process),
and a thread calls ``client.check()`` every 5 ms until the decision changes.

Propagation is measured **from the moment ``manifest.json`` was replaced** (its mtime,
wall clock: the publisher writes it last, atomically) to the first changed decision
(wall clock). The time from the start of the publish is in the details. Baseline: the
poll interval, which is how long a client without push would take at worst.
"""

from __future__ import annotations

import statistics
import threading
import time
from pathlib import Path
from typing import Any

from intercept_sdk import Client, Person
from intercept_sdk._platform.publish import publish
from intercept_sdk.testing.synth import generate_entries, write_jsonl

from . import data
from .harness import MEASURE, Context, log, server_process

POLL_INTERVAL_S = 3600.0
ROUND_TIMEOUT_S = 60.0


def _wait(cond: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.01)
    return False


def run(ctx: Context) -> None:
    s = ctx.sizes
    d = ctx.tmp("push")
    paths = data.new_platform(d)
    keys, site = paths["keys"], paths["site"]
    entries = list(generate_entries(s.push_entries, seed=5))
    src = d / "list.jsonl"
    write_jsonl(src, entries)
    publish(src, keys, site, expires=86400)
    targets = [
        e
        for e in entries
        if e["subject_type"] == "person"
        and ("*" in e["measures"] or MEASURE in e["measures"])
        and "valid_until" not in e  # still in force: the revocation changes the decision
    ][: s.push_rounds]
    rounds: list[dict[str, Any]] = []
    with server_process(site, subscribers=keys / "subscribers", state=d / "ps") as srv:
        client = Client(
            srv.url,
            paths["root"],
            d / "cache",
            data.SUBSCRIBER,
            subscriber_key=paths["subscriber"],
            background=True,
            poll_interval="1h",
        )
        try:
            if not _wait(lambda: client.status().list_version is not None, 300):
                raise RuntimeError(f"the background client never synced: {client.status()}")
            connected = _wait(lambda: client.status().push_connected, 10)
            log(f"push: background client synced; push connected: {connected}")
            for i, entry in enumerate(targets):
                rounds.append(_round(client, entry, src, entries, keys, site))
                log(
                    f"  round {i + 1}: {rounds[-1]['propagation_s']:.3f} s after the manifest "
                    f"(publish took {rounds[-1]['publish_s']:.2f} s)"
                )
        finally:
            client.close()
    props = sorted(r["propagation_s"] for r in rounds)
    p50 = statistics.median(props)
    pub = statistics.mean(r["publish_s"] for r in rounds)
    timeouts = sum(1 for r in rounds if r["timed_out"])
    note = (
        f"{len(rounds)} rounds on a {s.push_entries:,}-entry list (publish {pub:.1f} s each, not "
        f"counted); from the start of the publish: p50 "
        f"{statistics.median(r['from_publish_start_s'] for r in rounds):.2f} s"
    )
    if timeouts:
        note += f"; {timeouts} round(s) saw no change within {ROUND_TIMEOUT_S:.0f} s"
    ctx.row(
        "propagation_p50",
        p50,
        met=p50 <= 2 and not timeouts,
        baseline=POLL_INTERVAL_S,
        baseline_text="3,600 s (poll interval)",
        ratio=p50 / POLL_INTERVAL_S,
        notes=note,
        rounds=rounds,
    )
    ctx.row(
        "propagation_max",
        props[-1],
        met=None,
        baseline=POLL_INTERVAL_S,
        baseline_text="3,600 s (poll interval)",
        ratio=props[-1] / POLL_INTERVAL_S,
        notes="all rounds: " + ", ".join(f"{p:.2f}" for p in props) + " s",
    )


def _round(
    client: Client,
    entry: dict[str, Any],
    src: Path,
    entries: list[dict[str, Any]],
    keys: Path,
    site: Path,
) -> dict[str, Any]:
    subject = Person(entry["id_number"])
    before = client.check(subject, MEASURE).action
    if before == "allow":
        raise RuntimeError(f"{entry['entry_id']} is not enforced before its revocation")
    entry["status"] = "revoked"
    entry["revoked_at"] = data.REVOKED_AT
    write_jsonl(src, entries)
    seen: dict[str, int] = {}
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            if client.check(subject, MEASURE).action != before:
                seen["t"] = time.time_ns()
                return
            time.sleep(0.005)

    poller = threading.Thread(target=poll, name="bench-poller", daemon=True)
    poller.start()
    t0 = time.time_ns()
    publish(src, keys, site, expires=86400)
    t1 = time.time_ns()
    manifest_ns = (site / "manifest.json").stat().st_mtime_ns
    poller.join(ROUND_TIMEOUT_S)
    stop.set()
    timed_out = "t" not in seen
    t_seen = seen.get("t", time.time_ns())
    return {
        "before": before,
        "propagation_s": (t_seen - manifest_ns) / 1e9,
        "from_publish_start_s": (t_seen - t0) / 1e9,
        "publish_s": (t1 - t0) / 1e9,
        "timed_out": timed_out,
    }
