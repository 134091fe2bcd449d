"""Crashes: ``kill -9`` of a syncing process, of the report sender, and of a process in
the middle of ``report()``/``block()``, at random moments.

After every kill: the cache verifies against the signed digest, the version in force is
one complete published version (every decision is that version's: action, list version,
and the matched record's own marker), the next sync heals to the newest version without
leftovers, and no report that was promised durable is lost or stored twice at the
reference platform.
"""

from __future__ import annotations

import json
import random
import statistics
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from intercept_sdk._client.audit import verify_audit
from intercept_sdk._platform.server import Limits, PlatformServer
from intercept_sdk._protocol.signing import Envelope
from intercept_sdk.testing import TestPlatform
from intercept_sdk.testing.faults import FaultSimulator

from . import _jobs
from ._support import (
    Chain,
    Tally,
    Worker,
    build_chain,
    check_decisions,
    leftovers,
    mp,
    outbox_ids,
    platform_report_rows,
    size,
)
from .known_bugs import Known

SYNC_KILLS = size(20, 200)
ROTATION_KILLS = size(3, 30)
SENDER_KILLS = size(4, 50)
REPORT_KILLS = size(3, 40)

pytestmark = pytest.mark.timeout(size(400, 3600))


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Chain:
    """12 versions of 250 (full: 800) public and 6 restricted entries; root 2 (new online
    keys) from version 7, so a sync across it walks the root chain."""
    return build_chain(
        tmp_path_factory.mktemp("crash-chain"),
        n_public=size(250, 800),
        n_restricted=6,
        versions=12,
        rotate_at=7,
    )


@pytest.fixture
def served(chain: Chain, tmp_path: Path) -> Iterator[tuple[Path, PlatformServer]]:
    site = chain.make_served(tmp_path / "served")
    server = PlatformServer(site, state_dir=tmp_path / "platform", limits=Limits(poll_interval=1))
    server.start()
    try:
        yield site, server
    finally:
        server.stop()


def _pick(rng: random.Random, chain: Chain, *, across_rotation: bool) -> tuple[int, int]:
    """(base, target): a snapshot sync about a third of the time (no delta that far
    back), else a delta across 1..8 versions; crossing the root rotation or not."""
    r = chain.rotate_at or chain.versions + 1
    pairs = [
        (b, t)
        for b in range(1, chain.versions)
        for t in range(b + 1, chain.versions + 1)
        if (b < r <= t) == across_rotation
    ]
    snapshots = [(b, t) for b, t in pairs if t - b > 8]
    if snapshots and rng.random() < 0.33:
        return rng.choice(snapshots)
    return rng.choice([(b, t) for b, t in pairs if t - b <= 8])


def _after_crash(chain: Chain, platform: str, cache: Path, base: int, target: int) -> int:
    """The invariants after a crash; returns the version that was in force."""
    with chain.client(platform, cache) as client:
        state = client.verify()  # the whole cache against the signed digest
        assert state.version in (base, target), (
            f"version {state.version} in force after a crash between {base} and {target}"
        )
        check_decisions(client, chain, state.version)
        client.sync()
        assert client.status().list_version == target
        assert client.verify().version == target
        check_decisions(client, chain, target)
        status = client.status()
        assert status.last_error is None and not status.stale
    assert not leftovers(cache), leftovers(cache)
    # A partial download may stay only for an artefact the current manifest names (it
    # is resumed or discarded by the next sync), never an unbounded pile.
    named = _artefact_hashes(chain.manifests[target])
    parts = {p.name.removesuffix(".part") for p in (cache / "downloads").glob("*.part")}
    assert parts <= named, f"partial downloads of unnamed artefacts left behind: {parts - named}"
    if chain.root_of[target] > 1:
        assert (cache / "root" / "2.root.json").read_bytes() == (
            chain.platform.site_dir / "root" / "2.root.json"
        ).read_bytes()
    return state.version


def _artefact_hashes(manifest: bytes) -> set[str]:
    payload = Envelope.from_bytes(manifest).payload_json()
    found = {payload["snapshot"]["sha256"]}
    found.update(d["sha256"] for d in payload["deltas"])
    found.update(b["sha256"] for b in payload["boxes"].values())
    return found


DURATIONS: list[float] = [0.3]  # seconds a sync takes here, re-estimated as workers finish


def test_kill9_during_sync(
    chain: Chain, served: tuple[Path, PlatformServer], tmp_path: Path
) -> None:
    _kill_syncs(chain, served, tmp_path, "crash: kill -9 during sync", SYNC_KILLS, False)


def test_kill9_during_sync_across_a_root_rotation(
    chain: Chain, served: tuple[Path, PlatformServer], tmp_path: Path
) -> None:
    _kill_syncs(
        chain,
        served,
        tmp_path,
        "crash: kill -9 during sync across a root rotation",
        ROTATION_KILLS,
        True,
    )


def _kill_syncs(
    chain: Chain,
    served: tuple[Path, PlatformServer],
    tmp_path: Path,
    name: str,
    kills: int,
    across_rotation: bool,
    known: Known | None = None,
) -> None:
    site, server = served
    tally = Tally(name)
    rng = random.Random(20261122 + across_rotation)
    durations = DURATIONS
    outcome: Counter[str] = Counter()
    key = chain.platform.subscriber_key_dir
    for n in range(kills):
        base, target = _pick(rng, chain, across_rotation=across_rotation)
        via = "http" if n % 2 else "file"
        platform = server.url if via == "http" else str(site)
        with tally.run(f"round {n}: {base}->{target} over {via}", known=known):
            cache = chain.copy_cache(base, tmp_path / "cache")
            chain.install(site, target)
            go = mp().Event()
            worker = Worker(
                tmp_path / "logs",
                _jobs.sync_once,
                platform,
                str(chain.pinned),
                str(cache),
                str(key),
                go,
            ).start()
            worker.wait_for("ready", 120)
            # Kill somewhere inside the sync: up to 1.3x the typical sync duration.
            estimate = statistics.median(durations[-15:])
            go.set()
            time.sleep(rng.uniform(0.0, 1.3 * estimate))
            worker.kill()
            lines = worker.lines()
            assert not [ln for ln in lines if ln.startswith("ERROR")], lines
            done = [ln for ln in lines if ln.startswith("done")]
            if done:
                mode, _frm, to, secs = done[0].split()[1:]
                assert (mode, to) in (("delta", str(target)), ("snapshot", str(target))), done[0]
                durations.append(float(secs))
                outcome["after the sync"] += 1
            else:
                outcome["mid-sync"] += 1
            in_force = _after_crash(chain, platform, cache, base, target)
            outcome["old version kept" if in_force == base else "new version complete"] += 1
    tally.note(", ".join(f"{k}: {v}" for k, v in sorted(outcome.items())))
    tally.finish()
    # The kills must really land inside syncs, not only before or after them.
    if kills >= 10:
        assert outcome["mid-sync"] >= kills // 4, outcome


@pytest.fixture
def report_platform(
    tmp_path: Path,
) -> Iterator[tuple[TestPlatform, PlatformServer, FaultSimulator]]:
    p = TestPlatform(tmp_path / "platform")
    for _ in range(5):
        p.add_person(publish=False)
    p.publish()
    faults = FaultSimulator()
    server = PlatformServer(
        p.site_dir,
        subscribers_dir=p.keys_dir / "subscribers",
        state_dir=tmp_path / "platform-state",
        middleware=[faults.middleware()],
        limits=Limits(poll_interval=1),
    )
    server.start()
    try:
        yield p, server, faults
    finally:
        server.stop()
        p.close()


def _final_drain(p: TestPlatform, url: str, cache: Path, logs: Path) -> None:
    """A sender that is not killed drains whatever is left."""
    w = Worker(
        logs,
        _jobs.send_reports,
        url,
        str(p.trust_root),
        str(cache),
        str(p.subscriber_key_dir),
        1000.0,
    ).start()
    assert w.wait_for("drained", 300) == "drained True", w.lines()
    assert w.join(60) == 0


def test_kill9_of_the_report_sender(
    report_platform: tuple[TestPlatform, PlatformServer, FaultSimulator], tmp_path: Path
) -> None:
    p, server, faults = report_platform
    tally = Tally("crash: kill -9 of the report sender")
    rng = random.Random(50)
    cache = tmp_path / "cache"
    state = tmp_path / "platform-state"
    # The application side queues reports (offline client on the same cache: no sender).
    queue = p.client(cache_dir=cache, audit=False)
    ids: list[str] = []
    delivered: list[int] = []
    try:
        for n in range(SENDER_KILLS):
            with tally.run(f"round {n}"):
                ids += [
                    queue.report("objection", f"E{len(ids):05d}", grounds="已履行完毕")
                    for _ in range(rng.randint(10, 30))
                ]
                r = rng.random()
                if r < 0.3:  # stored, but the answer is lost: the retry gets duplicates
                    faults.fail_next(1, status=503, retry_after=0, after_store=True)
                elif r < 0.5:  # the kill lands while the request is in flight
                    faults.stall_next(1, seconds=0.4)
                elif r < 0.6:
                    faults.fail_next(2, status=429, retry_after=0)
                before = len(set(platform_report_rows(state)))
                w = Worker(
                    tmp_path / "logs",
                    _jobs.send_reports,
                    server.url,
                    str(p.trust_root),
                    str(cache),
                    str(p.subscriber_key_dir),
                    20.0,
                ).start()
                w.wait_for("ready", 120)
                time.sleep(rng.uniform(0.0, 1.2))
                w.kill()
                assert not [ln for ln in w.lines() if ln.startswith("ERROR")], w.lines()
                journal = outbox_ids(cache)
                stored = platform_report_rows(state)
                assert len(stored) == len(set(stored)), "a report stored twice"
                assert set(stored) <= set(ids), "the platform stored a report nobody queued"
                # A report leaves the queue only after the platform has it.
                assert journal["sent"] <= set(stored), journal["sent"] - set(stored)
                assert not journal["dead"], journal["dead"]
                assert journal["pending"] | journal["sent"] == set(ids)
                delivered.append(len(set(stored)) - before)
    finally:
        queue.close()
    with tally.run("final drain"):
        faults.clear()
        _final_drain(p, server.url, cache, tmp_path / "logs")
        stored = platform_report_rows(state)
        assert len(stored) == len(set(stored)) == len(ids)
        assert set(stored) == set(ids)
        journal = outbox_ids(cache)
        assert journal["sent"] == set(ids) and not journal["pending"] and not journal["dead"]
    tally.note(
        f"{len(ids)} reports; delivered by killed senders: {sum(delivered)} "
        f"(per sender {min(delivered, default=0)}-{max(delivered, default=0)})"
    )
    tally.finish()
    assert sum(delivered) > 0, "no killed sender ever delivered anything: kills too early"


def test_kill9_inside_report(
    report_platform: tuple[TestPlatform, PlatformServer, FaultSimulator], tmp_path: Path
) -> None:
    p, server, _faults = report_platform
    tally = Tally("crash: kill -9 inside report()/block()")
    rng = random.Random(40)
    cache = tmp_path / "cache"
    state = tmp_path / "platform-state"
    listed = [e["id_number"] for e in p.entries.values()]
    with p.client(cache_dir=cache, platform=server.url, push=False) as c:
        assert c.status().list_version == 1
    returned: list[str] = []
    for n in range(REPORT_KILLS):
        with tally.run(f"round {n}"):
            go = mp().Event()
            w = Worker(
                tmp_path / "logs",
                _jobs.report_loop,
                server.url,
                str(p.trust_root),
                str(cache),
                str(p.subscriber_key_dir),
                json.dumps(listed),
                go,
            ).start()
            w.wait_for("ready", 120)
            go.set()
            w.wait_for("R ", 60)  # reports are flowing (and being sent)
            time.sleep(rng.uniform(0.0, 0.6))
            w.kill()
            lines = w.lines()
            assert not [ln for ln in lines if ln.startswith("ERROR")], lines
            got = [ln[2:] for ln in lines if ln.startswith("R ")]
            assert got, "no report returned before the kill"
            returned += got
            journal = outbox_ids(cache)
            queued = journal["pending"] | journal["sent"]
            missing = set(returned) - queued
            assert not missing, f"{len(missing)} reports returned by report() were lost"
            assert not journal["dead"], journal["dead"]
            stored = platform_report_rows(state)
            assert len(stored) == len(set(stored)), "a report stored twice"
            assert set(stored) <= queued and journal["sent"] <= set(stored)
            with p.client(cache_dir=cache, sync=False, push=False, audit=False) as c:
                assert c.verify().version == 1
            audit = verify_audit(cache / "audit", public_key=p.subscriber_key_dir)
            assert audit.ok, audit.problems
    with tally.run("final drain"):
        _final_drain(p, server.url, cache, tmp_path / "logs")
        journal = outbox_ids(cache)
        queued = journal["sent"]
        stored = platform_report_rows(state)
        assert len(stored) == len(set(stored))
        assert set(stored) == queued >= set(returned)
        assert not journal["pending"] and not journal["dead"]
        # At most one report per kill was committed without report() returning.
        assert len(queued - set(returned)) <= REPORT_KILLS
    tally.note(f"{len(returned)} reports returned, {len(set(stored))} stored at the platform")
    tally.finish()
