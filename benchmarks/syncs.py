"""Publish, full sync, delta sync, the 10M sync, client start and the size figures.

* **publish**: the cached 1M source list is published into a fresh site (new keys):
  publish time and artefact sizes (distribution issue).
* **full sync**: the reference platform serves that site from a separate process on
  loopback; a separate worker process (:mod:`benchmarks.sync_worker`) runs
  ``Client.sync()`` into an empty cache: download, verify, apply. Its peak RSS is the
  worker's ``VmHWM``. Baseline: a bulk insert of the same rows (each record under its own
  identifier key) into a plain sqlite3 table, measured before and after the sync (mean).
* **delta sync**: 1 % of the list changes (70 % revoked, 15 % removed, 15 % added), the
  list is published again, and the same cache syncs: time against the full sync, bytes
  downloaded against the snapshot.
* **large** (``--size full``): the cached 10M site, synced by a worker the same way.
* **start**: fresh processes open the synced cache and answer one check.
"""

from __future__ import annotations

import random
import resource
import statistics
import time
from pathlib import Path
from typing import Any

from intercept_sdk._platform.publish import publish
from intercept_sdk.testing.synth import valid_id_number

from . import data
from .harness import Context, dir_bytes, fmt_num, log, rm, run_worker, server_process

PUBLISH_EXPIRES = 7 * 86400.0
MB = 1_000_000  # decimal megabytes throughout (RSS too: kB from /proc are KiB)
KIB = 1024


def _cache_db_bytes(cache: Path) -> int:
    """Bytes of the current list database (with its WAL), not the outbox or audit log."""
    total = 0
    for p in cache.glob("list-*.sqlite*"):
        total += p.stat().st_size
    return total


def _sync(
    site: Path, keys: Path | None, root: Path, cache: Path, state: Path, subscriber: Path
) -> dict[str, Any]:
    subscribers = keys / "subscribers" if keys is not None else None
    with server_process(site, subscribers=subscribers, state=state) as srv:
        return run_worker(
            "benchmarks.sync_worker",
            ["--platform", srv.url, "--root", str(root), "--cache", str(cache),
             "--subscriber-id", data.SUBSCRIBER, "--subscriber-key", str(subscriber)],
            timeout=4 * 3600,
        )  # fmt: skip


# --------------------------------------------------------------------------- publish


def _cpu_seconds() -> float:
    """CPU time of this process and its waited-for children (the publish workers)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _workers_note(workers: int) -> str:
    return f"{workers} worker process{'es' if workers > 1 else ''}" if workers else "no workers"


def publish_v1(ctx: Context) -> None:
    s = ctx.sizes
    v1 = data.list_v1(ctx, s.entries)
    d = ctx.tmp("main")
    paths = data.new_platform(d)
    log(f"publishing {s.entries:,} entries")
    cpu = _cpu_seconds()
    t = time.perf_counter()
    res = publish(v1, paths["keys"], paths["site"], expires=PUBLISH_EXPIRES)
    seconds = time.perf_counter() - t
    cpu = _cpu_seconds() - cpu
    snap = res.snapshot
    raw = snap.raw_length or 0
    ctx.state["main"] = {
        "dir": str(d),
        "keys": str(paths["keys"]),
        "root": str(paths["root"]),
        "site": str(paths["site"]),
        "subscriber": str(paths["subscriber"]),
        "source": str(v1),
        "snapshot": str(paths["site"] / snap.path),
        "entries": res.entries,
        "snapshot_bytes": snap.length,
        "snapshot_raw_bytes": snap.raw_length,
        "version": res.version,
    }
    ctx.row(
        "publish_v1",
        seconds,
        met=None,
        notes=f"{res.entries / seconds:,.0f} entries/s; validate, hash identifiers, stage, "
        f"gzip, sign; {len(res.quarantined)} quarantined; {_workers_note(res.workers)}, "
        f"CPU {cpu:.0f} s ({res.entries / cpu:,.0f} entries per CPU second)",
        entries=res.entries,
        cpu_seconds=cpu,
    )
    ctx.row(
        "artefact_snapshot",
        snap.length / MB,
        met=None,
        measured_text=f"{snap.length / MB:.1f} MB",
        notes=f"raw {raw / MB:.0f} MB ({raw / res.entries:.0f} B/entry), gzip level 6, "
        f"ratio {raw / snap.length:.1f}",
        bytes=snap.length,
        raw_bytes=snap.raw_length,
    )
    ctx.row(
        "size_snapshot",
        snap.length / res.entries,
        met=None,
        notes=f"raw {(snap.raw_length or 0) / res.entries:.0f} B/entry",
    )


# --------------------------------------------------------------------------- full sync


def full_sync(ctx: Context) -> None:
    m = ctx.state["main"]
    d = Path(m["dir"])
    cache = d / "cache"
    rows = d / "rows.bin"
    baseline_db = d / "baseline.sqlite"
    log("baseline rows from the snapshot")
    count, listed = data.rows_file(
        Path(m["snapshot"]),
        rows,
        source=Path(m["source"]),
        hk=data.hash_key(Path(m["keys"])),
        collect_keys=True,
    )
    ctx.state["_listed_keys"] = listed
    log(f"baseline: sqlite3 bulk insert of {count:,} rows (before)")
    b1 = data.sqlite_bulk_insert(rows, baseline_db)
    log(f"  {b1:.1f}s; full sync in a worker process")
    w = _sync(
        Path(m["site"]),
        Path(m["keys"]),
        Path(m["root"]),
        cache,
        d / "platform-state",
        Path(m["subscriber"]),
    )
    log(f"  {w['seconds']:.1f}s; baseline again (after)")
    b2 = data.sqlite_bulk_insert(rows, baseline_db)
    rm(rows)
    baseline = (b1 + b2) / 2
    m["baseline_db"] = str(baseline_db)
    m["cache"] = str(cache)
    m["full_sync_seconds"] = w["seconds"]
    if w["mode"] != "snapshot" or w["entries"] != m["entries"]:
        raise RuntimeError(f"full sync did not store the list: {w}")
    dl = w.get("download_seconds")
    ratio = w["seconds"] / baseline
    ctx.row(
        "sync_full",
        w["seconds"],
        met=ratio <= 4,
        baseline=baseline,
        baseline_text=f"{baseline:.1f} s (sqlite3 bulk insert, {b1:.1f} before / {b2:.1f} after)",
        ratio=ratio,
        notes=(
            f"download {dl:.1f} s, verify+apply {w['seconds'] - dl:.1f} s; "
            if dl is not None
            else ""
        )
        + f"{m['entries'] / w['seconds']:,.0f} entries/s; "
        f"{w['bytes_downloaded'] / MB:.0f} MB downloaded",
        worker=w,
        baseline_runs=[b1, b2],
    )
    hwm = (w["vmhwm_kb"] or 0) * KIB / MB
    ctx.row(
        "sync_full_rss",
        hwm,
        met=hwm <= 250,
        notes="VmHWM of the syncing process; "
        f"{(w['vmrss_after_client_kb'] or 0) * KIB / MB:.0f} MB after imports and Client()",
    )
    db_bytes = _cache_db_bytes(cache)
    ctx.row(
        "size_cache",
        db_bytes / m["entries"],
        met=db_bytes / m["entries"] <= 250,
        baseline=baseline_db.stat().st_size / m["entries"],
        baseline_text=f"{baseline_db.stat().st_size / m['entries']:.0f} B/entry "
        "(plain sqlite3 table of the records)",
        ratio=db_bytes / baseline_db.stat().st_size,
        notes=f"list database {db_bytes / MB:.0f} MB; whole cache directory "
        f"{dir_bytes(cache) / MB:.0f} MB",
        bytes=db_bytes,
    )


# --------------------------------------------------------------------------- delta


def delta(ctx: Context) -> None:
    s = ctx.sizes
    m = ctx.state["main"]
    d = Path(m["dir"])
    v2, counts = data.list_v2(ctx, s.entries, Path(m["source"]), s.delta_fraction)
    log(f"publishing {s.entries:,} entries with {counts['changed']:,} changed: {counts}")
    cpu = _cpu_seconds()
    t = time.perf_counter()
    res = publish(v2, Path(m["keys"]), Path(m["site"]), expires=PUBLISH_EXPIRES)
    seconds = time.perf_counter() - t
    cpu = _cpu_seconds() - cpu
    art = res.deltas.get(m["version"])
    if art is None:
        raise RuntimeError(f"publish wrote no delta from version {m['version']}")
    ctx.row(
        "publish_v2",
        seconds,
        met=None,
        notes=f"{res.entries / seconds:,.0f} entries/s; a publish always reads the whole list; "
        f"{_workers_note(res.workers)}, CPU {cpu:.0f} s "
        f"({res.entries / cpu:,.0f} entries per CPU second)",
        cpu_seconds=cpu,
    )
    ctx.row(
        "artefact_delta",
        art.length / 1000,
        met=None,
        notes=f"{counts['changed']:,} changes ({counts['revoked']:,} revoked, "
        f"{counts['removed']:,} removed, {counts['added']:,} added); raw "
        f"{(art.raw_length or 0) / 1000:,.0f} kB",
        bytes=art.length,
    )
    ctx.row("artefact_manifest", res.manifest_length, met=None, notes="signed, Ed25519")
    ctx.row(
        "size_delta",
        art.length / counts["changed"],
        met=None,
        notes=f"{art.length:,} bytes for {counts['changed']:,} changed entries",
    )
    log("delta sync in a worker process")
    w = _sync(
        Path(m["site"]),
        Path(m["keys"]),
        Path(m["root"]),
        Path(m["cache"]),
        d / "ps2",
        Path(m["subscriber"]),
    )
    if w["mode"] != "delta":
        raise RuntimeError(f"expected a delta sync, got {w['mode']}: {w.get('fallback_reason')}")
    full = float(m["full_sync_seconds"])
    ratio = w["seconds"] / full
    ctx.row(
        "delta_time",
        w["seconds"],
        met=ratio <= 0.05,
        baseline=full,
        baseline_text=f"{full:.1f} s (the full sync)",
        ratio=ratio,
        notes=f"{counts['changed']:,} changes applied in one transaction",
        worker=w,
    )
    wire = w["bytes_downloaded"] + res.manifest_length
    snap = res.snapshot.length
    ctx.row(
        "delta_bytes",
        wire,
        met=wire / snap <= 0.03,
        baseline=snap,
        baseline_text=f"{snap:,} bytes (the snapshot)",
        ratio=wire / snap,
        measured_text=f"{wire:,} bytes",
        notes="delta artefact + manifest.json (HTTP headers not counted)",
    )
    hwm = (w["vmhwm_kb"] or 0) * KIB / MB
    ctx.row("delta_rss", hwm, met=None, notes="VmHWM of the syncing process")


# --------------------------------------------------------------------------- large


def large(ctx: Context) -> None:
    n = ctx.sizes.large_entries
    assert n is not None
    meta = data.large_site(ctx, n)
    p = data.large_paths(ctx, n)
    d = ctx.tmp("large")
    cache = d / "cache"
    log(f"full sync of the {n:,}-entry site in a worker process")
    w = _sync(p["site"], None, p["root"], cache, d / "platform-state", p["subscriber"])
    log(f"  {w['seconds']:.0f}s; baseline rows and sqlite3 bulk insert")
    rows = d / "rows.bin"
    count, _ = data.rows_file(p["site"] / meta["snapshot_path"], rows)
    baseline = data.sqlite_bulk_insert(rows, d / "baseline.sqlite")
    rm(rows)
    rm(d / "baseline.sqlite")
    ok = w["mode"] == "snapshot" and w["entries"] == meta["entries"]
    dl = w.get("download_seconds")
    ctx.row(
        "sync_large",
        w["seconds"],
        met=ok,
        baseline=baseline,
        baseline_text=f"{fmt_num(baseline, 's')} (sqlite3 bulk insert of {count:,} rows)",
        ratio=w["seconds"] / baseline,
        notes=(f"download {dl:.0f} s; " if dl is not None else "")
        + f"{meta['entries'] / w['seconds']:,.0f} entries/s; site "
        + ("cached" if meta.get("cached") else "built")
        + f" (generate + publish {meta['generate_and_publish_seconds']:.0f} s on "
        f"{meta['built_at'][:10]})",
        worker=w,
        site=meta,
    )
    hwm = (w["vmhwm_kb"] or 0) * KIB / MB
    ctx.row("sync_large_rss", hwm, met=hwm <= 300, notes="VmHWM of the syncing process")
    db_bytes = _cache_db_bytes(cache)
    ctx.row(
        "size_cache_large",
        db_bytes / meta["entries"],
        met=db_bytes / meta["entries"] <= 250,
        notes=f"list database {db_bytes / MB:,.0f} MB",
        bytes=db_bytes,
    )
    ctx.state["large"] = {
        "cache": str(cache),
        "root": str(p["root"]),
        "site": str(p["site"]),
        "subscriber": str(p["subscriber"]),
        "entries": meta["entries"],
        "cache_bytes": db_bytes,
    }


# --------------------------------------------------------------------------- start


def start(ctx: Context) -> None:
    src = ctx.state.get("large") if ctx.sizes.large_entries else ctx.state.get("main")
    if src is None or "cache" not in src:
        raise RuntimeError("no synced cache to start from")
    cache = Path(src["cache"])
    cache_bytes = _cache_db_bytes(cache)
    idn = valid_id_number(random.Random(99))
    runs = []
    for _ in range(ctx.sizes.start_runs):
        runs.append(
            run_worker(
                "benchmarks.start_worker",
                [
                    "--platform",
                    src["site"],
                    "--root",
                    src["root"],
                    "--cache",
                    str(cache),
                    "--id-number",
                    idn,
                    "--subscriber-id",
                    data.SUBSCRIBER,
                    "--subscriber-key",
                    str(src["subscriber"]),
                ],
                timeout=600,
            )
        )
    ms = statistics.median(r["start_seconds"] for r in runs) * 1000
    growth = max((r["vmrss_after_kb"] - r["vmrss_before_kb"]) for r in runs) * KIB / MB
    first = runs[0]
    ctx.row(
        "start",
        ms,
        met=ms <= 100 and growth <= 32,
        notes=f"median of {len(runs)} fresh processes (all: "
        + ", ".join(f"{r['start_seconds'] * 1000:.0f}" for r in runs)
        + f" ms): Client() {first['client_seconds'] * 1000:.0f} ms + first check "
        f"{first['first_check_seconds'] * 1000:.0f} ms; RSS grew {growth:.1f} MB for a "
        f"{cache_bytes / MB:,.0f} MB list (no list in memory: growth ≤ 32 MB); "
        f"import intercept_sdk {first['import_seconds'] * 1000:.0f} ms, not counted",
        runs=runs,
        cache_bytes=cache_bytes,
    )
    if ctx.sizes.large_entries and not ctx.keep:
        rm(cache)
