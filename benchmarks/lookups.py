"""check() latency and screen() throughput on the synced list, next to raw lookups.

Both read the cache the full sync stage built. The baselines use the table that stage's
baseline bulk insert built: ``t(k BLOB PRIMARY KEY, v BLOB)`` holding each record's
exact bytes under its own identifier key, opened with the store's read settings
(``mmap_size`` 256 MiB, ``query_only``). Subjects (``Person``/``Entity`` objects) and the
baselines' keys are made before any timing: building a subject validates its identifier,
which is the application's work, not the lookup's.

* **check()**: hits (subjects drawn from the list) and misses (valid identifiers not on
  it), shuffled together; for each subject, in turn: the prepared ``SELECT v FROM t WHERE
  k = ?`` on its key, ``dict.get`` on an in-memory dict of the same keys and records, and
  ``Client.check()`` (default options: audit log on). Per-call timings give p50/p99 of
  each, hits and misses separately. A warm-up of a tenth of the samples is not counted.
* **screen()**: the subjects are screened in slices, each slice first by the baseline
  (batched ``SELECT k, v FROM t WHERE k IN (<500 keys>)``, i.e. executemany-style
  lookups of the same keys) and then by ``Client.screen()``, so load changes on a busy
  machine hit both alike.
"""

from __future__ import annotations

import random
import sqlite3
import time
from pathlib import Path

from intercept_sdk import Client, Entity, Person

from . import data
from .harness import MEASURE, Context, fmt_num, log, percentile

IN_CHUNK = 500


def _baseline_conn(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
    conn.execute("PRAGMA query_only = ON")
    conn.execute("PRAGMA mmap_size = 268435456")
    return conn


def check(ctx: Context) -> None:
    s = ctx.sizes
    m = ctx.state["main"]
    hk = data.hash_key(Path(m["keys"]))
    listed: set[bytes] = ctx.state["_listed_keys"]
    k = s.check_samples
    warm = max(10, k // 10)
    log(f"check: preparing {k + warm:,} hits and misses")
    entries = data.sample_listed(Path(m["source"]), m["entries"], k + warm, seed=11)
    hits = [("hit", data.subject_for(e), data.key_for(e, hk)) for e in entries]
    misses = [("miss", subj, key) for subj, key in data.miss_subjects(k + warm, 12, listed, hk)]
    items = []
    for h, mi in zip(hits, misses, strict=False):
        items.append(h)
        items.append(mi)
    conn = _baseline_conn(Path(m["baseline_db"]))
    log("check: loading the dict baseline")
    table = dict(conn.execute("SELECT k, v FROM t"))
    client = Client(
        m["site"], m["root"], m["cache"], data.SUBSCRIBER, subscriber_key=m["subscriber"]
    )
    sql = "SELECT v FROM t WHERE k = ?"
    execute = conn.execute
    get = table.get
    chk = client.check
    ns = time.perf_counter_ns
    cpu = time.thread_time_ns
    times: dict[str, tuple[list[int], list[int], list[int], list[int], list[int]]] = {
        "hit": ([], [], [], [], []),
        "miss": ([], [], [], [], []),
    }
    wrong = {"hit": 0, "miss": 0}
    log(f"check: timing {len(items):,} lookups ({2 * warm:,} warm-up)")
    for i, (kind, subject, key) in enumerate(items):
        c0 = cpu()
        t0 = ns()
        row = execute(sql, (key,)).fetchone()
        t1 = ns()
        c1 = cpu()
        value = get(key)
        c2 = cpu()
        t2 = ns()
        decision = chk(subject, MEASURE)
        t3 = ns()
        c3 = cpu()
        if i < 2 * warm:
            continue
        sq, dc, sdk, sq_cpu, sdk_cpu = times[kind]
        sq.append(t1 - t0)
        dc.append(t2 - t1)
        sdk.append(t3 - t2)
        sq_cpu.append(c1 - c0)
        sdk_cpu.append(c3 - c2)
        is_hit = kind == "hit"
        if (
            _found(decision) != is_hit
            or (row is not None) != is_hit
            or (value is not None) != (is_hit)
        ):
            wrong[kind] += 1
    client.close()
    conn.close()
    del table
    for kind in ("hit", "miss"):
        sq, dc, sdk, sq_cpu, sdk_cpu = (sorted(v) for v in times[kind])
        for p in (50, 99):
            a = percentile(sdk, p) / 1000
            b = percentile(sq, p) / 1000
            dd = percentile(dc, p) / 1000
            a_cpu = percentile(sdk_cpu, p) / 1000
            b_cpu = percentile(sq_cpu, p) / 1000
            # site format 2: a hit opens a sealed record (decision 0011): 4x at p50
            limit = (4 if kind == "hit" else 3) if p == 50 else 10
            ctx.row(
                f"check_{kind}_p{p}",
                a,
                met=a <= limit * b,
                baseline=b,
                baseline_text=f"sqlite3 {fmt_num(b, 'µs')}; dict {fmt_num(dd, 'µs')}",
                ratio=a / b,
                notes=f"{len(sdk):,} {'hits' if kind == 'hit' else 'misses'}, "
                "interleaved with the baselines; default options (audit log on); "
                f"CPU time of the calling thread p{p}: check() {a_cpu:,.1f} µs, sqlite3 "
                f"{b_cpu:,.1f} µs (wall time far above CPU time is waiting for a core)"
                + (f"; {wrong[kind]} answered wrongly" if wrong[kind] else ""),
                samples=len(sdk),
                wrong=wrong[kind],
                sdk_mean_us=sum(sdk) / len(sdk) / 1000,
                sqlite_mean_us=sum(sq) / len(sq) / 1000,
                dict_p50_us=percentile(dc, 50) / 1000,
                dict_p99_us=percentile(dc, 99) / 1000,
                sdk_cpu_us=a_cpu,
                sqlite_cpu_us=b_cpu,
            )


def _found(decision: object) -> bool:
    """Whether the decision saw a listed entry (counted, or ignored for this measure)."""
    return bool(getattr(decision, "matches", ())) or bool(getattr(decision, "ignored", ()))


def screen(ctx: Context) -> None:
    s = ctx.sizes
    m = ctx.state["main"]
    hk = data.hash_key(Path(m["keys"]))
    listed: set[bytes] = ctx.state["_listed_keys"]
    n = s.screen_subjects
    n_hit = round(n * s.screen_hit_ratio)
    log(f"screen: preparing {n:,} subjects ({n_hit:,} listed)")
    entries = data.sample_listed(Path(m["source"]), m["entries"], n_hit, seed=21)
    items = [(data.subject_for(e), data.key_for(e, hk)) for e in entries]
    del entries
    items += data.miss_subjects(n - len(items), 22, listed, hk)
    random.Random(23).shuffle(items)
    subjects = [x[0] for x in items]
    keys = [x[1] for x in items]
    del items
    conn = _baseline_conn(Path(m["baseline_db"]))
    sql_full = f"SELECT k, v FROM t WHERE k IN ({','.join('?' * IN_CHUNK)})"
    client = Client(
        m["site"], m["root"], m["cache"], data.SUBSCRIBER, subscriber_key=m["subscriber"]
    )

    def baseline(ks: list[bytes]) -> int:
        found = 0
        for i in range(0, len(ks), IN_CHUNK):
            chunk = ks[i : i + IN_CHUNK]
            sql = (
                sql_full
                if len(chunk) == IN_CHUNK
                else f"SELECT k, v FROM t WHERE k IN ({','.join('?' * len(chunk))})"
            )
            found += len(conn.execute(sql, chunk).fetchall())
        return found

    def sdk(subs: list[Person | Entity]) -> int:
        found = 0
        for d in client.screen(subs, MEASURE):
            if _found(d):
                found += 1
        return found

    warm = min(2000, n // 10)
    baseline(keys[:warm])
    sdk(subjects[:warm])
    slices = max(1, min(10, n // 10_000))
    step = -(-n // slices)
    t_base = t_sdk = 0.0
    f_base = f_sdk = 0
    log(f"screen: {n:,} subjects in {slices} slices, baseline then screen()")
    c_base = c_sdk = 0.0
    for i in range(0, n, step):
        c = time.process_time()
        t = time.perf_counter()
        f_base += baseline(keys[i : i + step])
        t_base += time.perf_counter() - t
        c_base += time.process_time() - c
        c = time.process_time()
        t = time.perf_counter()
        f_sdk += sdk(subjects[i : i + step])
        t_sdk += time.perf_counter() - t
        c_sdk += time.process_time() - c
    client.close()
    conn.close()
    rate = n / t_sdk
    base_rate = n / t_base
    ratio = rate / base_rate
    ctx.row(
        "screen",
        rate,
        met=rate >= 100_000 and ratio >= 0.5,
        baseline=base_rate,
        baseline_text=f"{base_rate:,.0f} keys/s (sqlite3 batched IN lookups)",
        ratio=ratio,
        measured_text=f"{rate:,.0f} subjects/s",
        notes=f"{n:,} subjects in {t_sdk:.1f} s (baseline {t_base:.1f} s); "
        f"{f_sdk:,} with matches, baseline found {f_base:,} rows; per CPU second of the "
        f"process: {n / c_sdk:,.0f} subjects vs {n / c_base:,.0f} keys",
        seconds=t_sdk,
        baseline_seconds=t_base,
        found=f_sdk,
        baseline_found=f_base,
        cpu_seconds=c_sdk,
        baseline_cpu_seconds=c_base,
    )
