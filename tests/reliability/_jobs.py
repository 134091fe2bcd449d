"""What the worker processes of the reliability suite do (run in forked workers).

Each job takes plain arguments (paths, numbers) and, last, the path of its line log: it
appends one line per event with a single unbuffered ``write``, so the parent sees exactly
what happened before a ``kill -9``. A job that fails writes ``ERROR <traceback>``.
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

from intercept_sdk import Client, Entity, Intercepted, Officer, Person
from intercept_sdk._platform.publish import publish

MEASURE = "consumption.star_hotel"
SUBSCRIBER = "test-unit"


class Log:
    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def __call__(self, line: str) -> None:
        os.write(self.fd, (line.replace("\n", "\\n") + "\n").encode())


def _guard(job: Callable[..., None]) -> Callable[..., None]:
    """``job`` as a worker target named without the underscore (pickled by that name);
    its last argument is the log path."""

    def run(*args: Any) -> None:
        log = Log(args[-1])
        try:
            job(*args[:-1], log=log)
        except BaseException:
            log("ERROR " + traceback.format_exc())
            raise

    run.__name__ = run.__qualname__ = job.__name__.lstrip("_")
    return run


def _client(platform: str, trust_root: str, cache: str, key: str, **options: Any) -> Client:
    options.setdefault("push", False)
    options.setdefault("audit", False)
    return Client(platform, trust_root, cache, SUBSCRIBER, subscriber_key=key, **options)


# --------------------------------------------------------------------------- crash: sync


def _sync_once(platform: str, trust_root: str, cache: str, key: str, go: Any, *, log: Log) -> None:
    client = _client(platform, trust_root, cache, key)
    log("ready")
    go.wait(60)
    t = time.monotonic()
    result = client.sync()
    log(f"done {result.mode} {result.from_version} {result.to_version} {time.monotonic() - t:.4f}")
    client.close()
    log("closed")


sync_once = _guard(_sync_once)


# --------------------------------------------------------------------------- crash: sender


def _send_reports(
    url: str, trust_root: str, cache: str, key: str, rate: float, *, log: Log
) -> None:
    client = _client(url, trust_root, cache, key, report_rate=rate)
    log("ready")
    ok = client.flush_reports(timeout=300)
    log(f"drained {ok}")
    client.close(timeout=10)
    log("closed")


send_reports = _guard(_send_reports)


# --------------------------------------------------------------------------- crash: report()


def _report_loop(
    url: str, trust_root: str, cache: str, key: str, ids_json: str, go: Any, *, log: Log
) -> None:
    """Interceptions (block() of listed people) and objections, forever; each id is
    logged only once report()/block() returned, i.e. once it is promised durable."""
    listed = json.loads(ids_json)
    client = _client(url, trust_root, cache, key, audit=True, report_rate=200)
    rng = random.Random(os.getpid())
    log("ready")
    go.wait(60)
    n = 0
    while True:
        n += 1
        if rng.random() < 0.5:
            try:
                client.block(Person(rng.choice(listed)), MEASURE, room=str(n))
            except Intercepted as hit:
                log(f"R {hit.report_id}")
            else:
                log("ERROR a listed person was not blocked")
        else:
            rid = client.report("objection", f"E{n:05d}", grounds=f"objection {n}")
            log(f"R {rid}")


report_loop = _guard(_report_loop)


# --------------------------------------------------------------------------- concurrency


def _publish_and_sync(
    site: str,
    keys: str,
    trust_root: str,
    cache: str,
    key: str,
    ids_json: str,
    go: Any,
    stop: Any,
    *,
    log: Log,
) -> None:
    """The platform publishes version after version; this process syncs each by delta."""
    from reliability._support import entries_at

    ids = json.loads(ids_json)
    client = _client(site, trust_root, cache, key)
    v = client.status().list_version or 0
    log("ready")
    go.wait(60)
    modes: dict[str, int] = {}
    while not stop.is_set():
        v += 1
        publish(entries_at(ids, v), keys, site, keep_deltas=4, keep_versions=3)
        result = client.sync()
        modes[result.mode] = modes.get(result.mode, 0) + 1
        if result.to_version != v:
            log(f"ERROR synced to {result.to_version}, published {v}")
        log(f"V {v} {result.mode}")
    client.close()
    log("done " + json.dumps(modes))


publish_and_sync = _guard(_publish_and_sync)


def _check_hard(
    site: str,
    trust_root: str,
    cache: str,
    key: str,
    ids_json: str,
    uscc: str,
    threads: int,
    go: Any,
    stop: Any,
    *,
    log: Log,
) -> None:
    """``threads`` threads checking persons, companies and batches; every decision must
    come whole from one version, and versions never go back within a thread."""
    from reliability._support import concurrency_state, expected_at

    ids = json.loads(ids_json)
    n = len(ids)
    client = _client(site, trust_root, cache, key, audit=True)
    client.check(Person(ids[0]), MEASURE)  # opened, first version seen
    log("ready")
    go.wait(60)
    lock = threading.Lock()
    totals = {"checks": 0, "companies": 0, "screens": 0, "failures": 0, "errors": 0}
    versions: set[int] = set()
    examples: list[str] = []
    error_kinds: dict[str, int] = {}

    def bad(text: str) -> None:
        with lock:
            totals["failures"] += 1
            if len(examples) < 3:
                examples.append(text)

    def judge(i: int, d: Any, floor: int) -> None:
        action, amount = expected_at(i, d.list_version)
        got = d.matches[0].unperformed_amount if d.matches else None
        if d.list_version < floor:
            bad(f"version went back: {d.list_version} after {floor}")
        if (d.action, got, len(d.matches)) != (action, amount, 1 if amount else 0):
            bad(f"person {i} at v{d.list_version}: {d.action}/{got}, expected {action}/{amount}")

    def judge_company(officers: list[int], d: Any, floor: int) -> None:
        v = d.list_version
        want = {f"E{j:05d}" for j in officers if concurrency_state(j, v) == "active"}
        got = {m.entry_id for m in d.matches}
        if v < floor:
            bad(f"version went back: {v} after {floor}")
        if got != want or (d.action == "allow") != (not want):
            bad(f"company at v{v}: {d.action} {sorted(got)}, expected {sorted(want)}")
        for m in d.matches:
            if m.unperformed_amount != f"{1000 + v}.00":
                bad(f"mixed versions: match {m.entry_id} is {m.unperformed_amount} in v{v}")

    def work(seed: int) -> None:
        rng = random.Random(seed)
        floor = 0
        counts = {"checks": 0, "companies": 0, "screens": 0}
        seen: set[int] = set()
        while not stop.is_set():
            try:
                r = rng.random()
                if r < 0.6:
                    i = rng.randrange(n)
                    d = client.check(Person(ids[i]), MEASURE)
                    judge(i, d, floor)
                    floor = max(floor, d.list_version)
                    seen.add(d.list_version)
                    counts["checks"] += 1
                elif r < 0.85:
                    # A company whose declared officers are (or are not) listed: one
                    # decision built from several keys must come from one version.
                    officers = rng.sample(range(n), 4)
                    company = Entity(
                        uscc=uscc,
                        officers=[Officer("director", Person(ids[j])) for j in officers],
                    )
                    d = client.check(company, "finance.credit")
                    judge_company(officers, d, floor)
                    floor = max(floor, d.list_version)
                    seen.add(d.list_version)
                    counts["companies"] += 1
                else:
                    idx = rng.sample(range(n), 40)
                    ds = list(client.screen([Person(ids[i]) for i in idx], MEASURE))
                    vs = {d.list_version for d in ds}
                    if len(vs) != 1:
                        bad(f"one screen batch answered from versions {sorted(vs)}")
                    for i, d in zip(idx, ds, strict=True):
                        judge(i, d, floor)
                    floor = max(floor, *vs)
                    seen.update(vs)
                    counts["screens"] += 1
            except Exception as exc:
                kind = f"{type(exc).__name__}: " + "".join(
                    "N" if c.isdigit() else c for c in str(exc)[:120]
                )
                with lock:
                    totals["errors"] += 1
                    error_kinds[kind] = error_kinds.get(kind, 0) + 1
                    if len(examples) < 3:
                        examples.append(f"{type(exc).__name__}: {exc}")
        with lock:
            for k, v in counts.items():
                totals[k] += v
            versions.update(seen)

    pool = [threading.Thread(target=work, args=(os.getpid() * 100 + t,)) for t in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    client.close()
    log(
        "done "
        + json.dumps(
            {
                **totals,
                "versions": sorted(versions),
                "examples": examples,
                "error_kinds": error_kinds,
            }
        )
    )


check_hard = _guard(_check_hard)


def _report_steadily(
    url: str,
    trust_root: str,
    cache: str,
    key: str,
    ids_json: str,
    go: Any,
    stop: Any,
    *,
    log: Log,
) -> None:
    """Interceptions and objections while the list moves, sent in the background."""
    ids = json.loads(ids_json)
    client = _client(url, trust_root, cache, key, report_rate=500)
    rng = random.Random(os.getpid())
    log("ready")
    go.wait(60)
    n = 0
    while not stop.is_set():
        n += 1
        try:
            client.block(Person(rng.choice(ids)), MEASURE, counter=n)
        except Intercepted as hit:
            log(f"R {hit.report_id}")
        rid = client.report("objection", f"E{n:05d}", grounds=f"objection {n}")
        log(f"R {rid}")
        time.sleep(0.01)
    ok = client.flush_reports(timeout=120)
    client.close(timeout=10)
    log(f"done {ok}")


report_steadily = _guard(_report_steadily)
