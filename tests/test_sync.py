"""The sync engine (:mod:`intercept_sdk._client.sync`) through the real client, end to end.

Real site (:class:`TestPlatform`: real keys, real publisher), real servers on loopback
(the reference platform, with the :class:`FaultSimulator` for 401/403/429, request counts
and a connection cut mid-body), real SQLite caches. The simulator's ``httpx`` transport
wraps the real one to watch requests and to cut a connection. Covers: snapshot then delta
catch-up, fallback to the snapshot, resume after a cut connection, ETag/304, Retry-After,
permanent 4xx, local directory and file:// sites, the one-syncer-per-cache lock,
``status()``, change events, push-driven background sync, and ``AsyncClient.sync()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import itertools
import logging
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from intercept_sdk._client.client import AsyncClient, Client, WatchChange
from intercept_sdk._client.decisions import Entity, Person
from intercept_sdk._client.fetch import RetryPolicy
from intercept_sdk._exceptions import (
    DigestMismatch,
    FormatError,
    HTTPStatusError,
    NetworkError,
    NeverSynced,
    StoreCorrupted,
    TooLarge,
    VerificationError,
)
from intercept_sdk._platform.keys import rotate_root
from intercept_sdk._platform.server import Limits, PlatformServer
from intercept_sdk._protocol.signing import Envelope
from intercept_sdk._util import utcnow
from intercept_sdk.testing import TestPlatform
from intercept_sdk.testing.faults import ALWAYS, FaultSimulator, SimulatedTransport

MEASURE = "consumption.star_hotel"


# =========================================================================== helpers


@dataclass
class Sleeps:
    delays: list[float] = field(default_factory=list)

    def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


@dataclass
class Env:
    platform: TestPlatform
    server: PlatformServer
    faults: FaultSimulator
    recorder: SimulatedTransport  # the real transport, recording requests
    sleeps: Sleeps

    def client(self, **options: Any) -> Client:
        options.setdefault("transport", self.recorder)
        options.setdefault("retry", RetryPolicy(attempts=3, sleep=self.sleeps))
        options.setdefault("push", False)
        options.setdefault("sync", False)
        return self.platform.client(platform=self.server.url, **options)


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    platform = TestPlatform(tmp_path)
    platform.site_dir.mkdir()  # served before the first publish: versions start at 1
    faults = FaultSimulator()
    limits = Limits(poll_interval=0.05)
    with PlatformServer(
        platform.site_dir, middleware=[faults.middleware()], limits=limits
    ) as server:
        recorder = faults.transport()
        try:
            yield Env(platform, server, faults, recorder, Sleeps())
        finally:
            platform.close()
            recorder.close()


def person(entry: dict[str, Any]) -> Person:
    return Person(entry["id_number"])


def action(client: Client, entry: dict[str, Any]) -> str:
    return client.check(person(entry), MEASURE).action


def wait_for(predicate: Any, timeout: float, step: float = 0.02) -> float:
    """Seconds until ``predicate()`` is true; fails the test after ``timeout``."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"not true within {timeout}s")
        time.sleep(step)
    return time.monotonic() - start


# =========================================================================== snapshot / delta


def test_snapshot_then_delta_catch_up(env: Env) -> None:
    p = env.platform
    a = p.add_person(publish=False)
    b = p.add_person()
    c = p.add_person(publish=False)
    client = env.client()
    first = client.sync()
    assert (first.mode, first.from_version, first.to_version) == ("snapshot", None, 1)
    assert action(client, a) == "block"
    p.revoke(a["entry_id"])  # v2
    p.add(c)  # v3
    p.remove(b["entry_id"])  # v4
    env.recorder.seen.clear()
    result = client.sync()
    # One cumulative delta 1 -> 4, never the snapshot.
    assert (result.mode, result.from_version, result.to_version) == ("delta", 1, 4)
    assert result.changes is not None
    # site format 2: the revoked entry left the list like the removed one
    assert result.changes.changed == set()
    assert result.changes.added == {p.record_id(c["entry_id"])}
    assert result.changes.removed == {p.record_id(a["entry_id"]), p.record_id(b["entry_id"])}
    assert not any("/snapshots/" in path for path in env.recorder.paths())
    assert any(path.startswith("/deltas/1-4.") for path in env.recorder.paths())
    assert (action(client, a), action(client, b), action(client, c)) == ("allow", "allow", "block")
    assert client.verify().version == 4


def test_no_delta_from_the_local_version_falls_back_to_snapshot(env: Env) -> None:
    p = env.platform
    a = p.add_person()
    client = env.client()
    client.sync()
    p.add_person(publish=False)
    p.publish(keep_deltas=1)  # v2: delta from 1
    p.revoke(a["entry_id"], publish=False)
    p.publish(keep_deltas=1)  # v3: delta from 2 only
    result = client.sync()
    assert (result.mode, result.from_version, result.to_version) == ("snapshot", 1, 3)
    assert result.fallback_reason == "manifest 3 has no delta from version 1"
    assert result.delta_error is None
    assert action(client, a) == "allow"
    assert result.changes is not None and p.record_id(a["entry_id"]) in result.changes.removed


def test_cache_that_failed_verify_is_replaced_at_the_same_version(env: Env) -> None:
    """Tampering that leaves the version alone (a listed person's sealed record deleted
    from the file; site format 2 records cannot be re-encoded without the keys): verify()
    detects it, and the next sync replaces the file by the snapshot although the
    platform has published nothing new (no 304, no 'none')."""
    p = env.platform
    a = p.add_person()
    client = env.client()
    client.sync()
    assert action(client, a) == "block"
    cache = Path(client.status().cache_dir)
    db = cache / (cache / "CURRENT").read_text().strip()
    with contextlib.closing(sqlite3.connect(db)) as conn:
        gone = conn.execute("DELETE FROM records WHERE entry_id = ?", (p.record_id(a["entry_id"]),))
        assert gone.rowcount == 1
        conn.commit()
    assert action(client, a) == "allow"  # what the tamperer wanted, until verify()
    assert client.sync().mode == "none"  # nothing new published, nothing known wrong yet
    with pytest.raises(StoreCorrupted):
        client.verify()
    env.recorder.seen.clear()
    result = client.sync()
    assert (result.mode, result.from_version, result.to_version) == ("snapshot", 1, 1)
    assert result.fallback_reason is not None and "failed verification" in result.fallback_reason
    assert not any("if-none-match" in s.headers for s in env.recorder.seen)
    assert action(client, a) == "block"
    assert client.verify().version == 1
    assert client.sync().mode == "none"  # repaired: back to conditional requests


def _decisions(client: Client, subjects: list[Person | Entity]) -> list[tuple[str, ...]]:
    out = []
    for subject in subjects:
        for measure in (MEASURE, "travel.rail_premium"):
            d = client.check(subject, measure)
            out.append((d.action, *sorted(f"{m.entry_id}:{m.relation}" for m in d.matches)))
    return out


@pytest.mark.parametrize("schema", [2, 3, 5])
def test_cache_of_another_schema_is_refused_then_rebuilt_by_the_next_sync(
    env: Env, schema: int, caplog: pytest.LogCaptureFixture
) -> None:
    """A cache written by another SDK version: its store schema marker is rewritten in
    the real file (2: site format 1's records; 3: sealed lines kept raw; 5: a newer
    SDK's). A restarted
    client never reads it: checks raise NeverSynced, status() shows no list, one warning
    says why; the next sync rebuilds it from the snapshot, and every decision is right
    at once (the same as before: listed, revoked, related, restricted, not listed)."""
    p = env.platform
    listed = p.add_person(publish=False)
    revoked = p.add_person(publish=False)
    rep_id = p.person_entry()["id_number"]
    company = p.add_entity(
        related=[{"role": "legal_rep", "name": "李四", "id_number": rep_id}], publish=False
    )
    secret = p.add_person(visibility="restricted", audience=[p.subscriber_id], publish=False)
    p.publish()  # v1
    p.revoke(revoked["entry_id"])  # v2
    stranger = p.person_entry()["id_number"]
    subjects: list[Person | Entity] = [
        person(listed),
        person(revoked),
        person(secret),
        Person(rep_id),
        Entity(uscc=company["uscc"]),
        Person(stranger),
    ]
    first = env.client()
    assert first.sync().to_version == 2
    before = _decisions(first, subjects)
    assert [d[0] for d in before[::2]] == ["block", "allow", "block", "block", "block", "allow"]
    cache = Path(first.status().cache_dir)
    first.close()
    db = cache / (cache / "CURRENT").read_text().strip()
    with contextlib.closing(sqlite3.connect(db)) as conn:
        conn.execute(f"PRAGMA user_version = {schema}")

    with caplog.at_level(logging.WARNING, logger="intercept_sdk"):
        restarted = env.client(cache_dir=cache)
        for _ in range(3):
            with pytest.raises(NeverSynced):
                action(restarted, listed)
        assert restarted.status().list_version is None
        with pytest.raises(NeverSynced):
            restarted.verify()
    told = [r.getMessage() for r in caplog.records if f"store schema {schema}" in r.getMessage()]
    assert len(told) == 1, told  # once, not on every check
    assert "next sync rebuilds it" in told[0]
    assert db.exists()  # nothing is deleted before the snapshot replaces it

    env.recorder.seen.clear()
    result = restarted.sync()
    assert (result.mode, result.from_version, result.to_version) == ("snapshot", None, 2)
    assert any("/snapshots/" in path for path in env.recorder.paths())
    assert _decisions(restarted, subjects) == before
    assert restarted.verify().version == 2
    assert not db.exists()  # the file of the other schema is not kept as the previous one
    assert restarted.sync().mode == "none"


def test_damaged_local_copy_falls_back_to_snapshot(env: Env) -> None:
    """A record lost from the local database: the delta that removes it does not apply
    (nothing changes), and the snapshot repairs the copy."""
    p = env.platform
    a = p.add_person(publish=False)
    keep = p.add_person()
    client = env.client()
    client.sync()
    cache = Path(client.status().cache_dir)
    db = cache / (cache / "CURRENT").read_text().strip()
    with contextlib.closing(sqlite3.connect(db)) as conn:
        conn.execute("DELETE FROM records WHERE entry_id = ?", (p.record_id(a["entry_id"]),))
        conn.commit()
    p.revoke(a["entry_id"])  # the delta removes the lost record
    result = client.sync()
    assert (result.mode, result.to_version) == ("snapshot", 2)
    assert isinstance(result.delta_error, DigestMismatch)
    assert result.fallback_reason is not None and "does not hold" in result.fallback_reason
    assert action(client, a) == "allow"
    assert action(client, keep) == "block"
    assert client.verify().version == 2


def test_resume_after_a_cut_connection(env: Env) -> None:
    """The snapshot download dies mid-way: the sync fails (nothing is stored), the partial
    file is kept, and the next sync asks only for the rest (Range) and completes. The
    subscriber's restricted box, fetched before the snapshot each time, does not disturb
    the partial snapshot."""
    p = env.platform
    for _ in range(300):
        p.add_person(publish=False)
    secret = p.add_person(visibility="restricted", audience=[p.subscriber_id], publish=False)
    result = p.publish()
    assert result.boxes and result.restricted_entries == 1
    snap = result.snapshot
    assert snap.length > 8000
    env.faults.add("reset", "/" + snap.path, after=5000)
    client = env.client(retry=RetryPolicy(attempts=1))
    with pytest.raises(NetworkError, match="ReadError"):
        client.sync()
    status = client.status()
    assert (status.list_version, status.last_error.kind) == (None, "NetworkError")  # type: ignore[union-attr]
    part = Path(status.cache_dir) / "downloads" / f"{snap.sha256}.part"
    assert part.stat().st_size == 5000
    env.recorder.seen.clear()
    done: list[tuple[int, int]] = []
    assert client.sync(progress=lambda d, t: done.append((d, t))).to_version == 1
    (req,) = [s for s in env.recorder.seen if s.path.endswith(snap.path)]
    assert (req.headers["range"], req.status) == ("bytes=5000-", 206)
    assert done[-1] == (snap.length - 5000, snap.length)
    assert not part.exists()
    assert client.status().last_error is None
    assert action(client, secret) == "block"
    assert client.verify().version == 1


def test_partial_downloads_of_other_versions_are_discarded(env: Env) -> None:
    env.platform.add_person()
    client = env.client()
    client.sync()
    downloads = Path(client.status().cache_dir) / "downloads"
    stale = downloads / ("ab" * 32 + ".part")
    stale.write_bytes(b"left over from a version nobody serves any more")
    env.platform.add_person()
    assert client.sync().to_version == 2
    assert list(downloads.iterdir()) == []


# =========================================================================== HTTP behaviour


def test_second_sync_with_nothing_new_is_one_304(env: Env) -> None:
    env.platform.add_person()
    client = env.client()
    client.sync()
    env.recorder.seen.clear()
    requests_before = env.faults.requests("site")
    result = client.sync()
    assert (result.mode, result.to_version, result.bytes_downloaded) == ("none", 1, 0)
    assert [(s.path, s.status) for s in env.recorder.seen] == [("/manifest.json", 304)]
    assert env.recorder.seen[0].headers["if-none-match"]
    assert env.faults.requests("site") == requests_before + 1


def test_429_retry_after_is_honoured(env: Env) -> None:
    env.platform.add_person()
    client = env.client()
    env.faults.fail_next(1, status=429, retry_after=3, target="site")
    assert client.sync().to_version == 1
    assert env.sleeps.delays == [3.0]
    assert client.status().last_error is None


@pytest.mark.parametrize("status", [401, 403])
def test_refused_access_is_not_retried_and_shows_in_status(env: Env, status: int) -> None:
    env.platform.add_person()
    client = env.client()
    client.sync()
    before = env.faults.requests("site")
    env.faults.fail_next(1, status=status, retry_after=None, target="site")
    with pytest.raises(HTTPStatusError):
        client.sync()
    assert env.faults.requests("site") - before == 1
    assert env.sleeps.delays == []
    error = client.status().last_error
    assert error is not None
    assert (error.kind, error.http_status) == ("HTTPStatusError", status)
    assert client.status().list_version == 1  # still answering from v1
    assert client.sync().mode == "none"  # and recovers when the platform does
    assert client.status().last_error is None


def test_total_deadline_reaches_the_client(tmp_path: Path) -> None:
    """``Client(total_timeout=...)`` bounds a slow-drip server; the error is in status."""
    import socket

    platform = TestPlatform(tmp_path)
    platform.publish()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(4)

    def drip() -> None:
        with contextlib.suppress(OSError):
            conn, _ = sock.accept()
            with conn:
                conn.recv(65536)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 50000\r\n\r\n")
                for _ in range(200):
                    conn.sendall(b" ")
                    time.sleep(0.02)

    thread = threading.Thread(target=drip, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    client = platform.client(platform=url, sync=False, total_timeout=0.4,
                             retry=RetryPolicy(attempts=1), push=False)  # fmt: skip
    try:
        started = time.monotonic()
        with pytest.raises(NetworkError, match="total deadline"):
            client.sync()
        assert time.monotonic() - started < 2.0
        assert client.status().last_error.kind == "NetworkError"  # type: ignore[union-attr]
    finally:
        platform.close()
        sock.close()
        thread.join(5)


# =========================================================================== local sites


def test_directory_and_file_url_platforms(tmp_path: Path) -> None:
    platform = TestPlatform(tmp_path)
    a = platform.add_person()
    try:
        by_dir = platform.client()  # the site directory itself
        by_url = platform.client(platform=f"file://{platform.site_dir}")
        for c in (by_dir, by_url):
            assert c.status().list_version == 1
            assert action(c, a) == "block"
        platform.revoke(a["entry_id"])
        for c in (by_dir, by_url):
            result = c.sync()
            assert (result.mode, result.to_version) == ("delta", 2)
            assert action(c, a) == "allow"
            assert c.sync().mode == "none"  # unchanged manifest file: nothing read
    finally:
        platform.close()


# =========================================================================== the sync lock


def test_one_syncer_per_cache_the_others_keep_reading(env: Env) -> None:
    p = env.platform
    a = p.add_person()
    first = env.client()
    first.sync()
    cache = Path(first.status().cache_dir)
    second = env.client(cache_dir=cache)
    p.revoke(a["entry_id"])
    inside, release = threading.Event(), threading.Event()

    def slow_progress(done: int, total: int) -> None:
        inside.set()
        assert release.wait(10)

    results: list[Any] = []
    worker = threading.Thread(target=lambda: results.append(first.sync(slow_progress)))
    worker.start()
    try:
        assert inside.wait(10)  # the first client holds the lock, mid-download
        locked = second.sync()
        assert (locked.mode, locked.from_version, locked.changes) == ("locked", 1, None)
        assert action(second, a) == "block"  # v1 still answers while v2 is fetched
    finally:
        release.set()
        worker.join(10)
    assert results[0].mode == "delta"
    assert wait_for(lambda: second.status().list_version == 2, 2) < 2
    assert action(second, a) == "allow"  # the other process's version is visible


def test_sync_lock_held_by_another_process(env: Env) -> None:
    env.platform.add_person()
    client = env.client()
    client.sync()
    lock = Path(client.status().cache_dir) / "sync.lock"
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
         "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); sys.stdin.read()",
         str(lock)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        env.platform.add_person()
        env.recorder.seen.clear()
        assert client.sync().mode == "locked"
        assert env.recorder.seen == []  # did not even ask the platform
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(10)
    assert client.sync().to_version == 2  # the lock died with its process


# =========================================================================== status / events


def test_status_reports_version_expiry_staleness_errors_and_reports(env: Env) -> None:
    p = env.platform
    a = p.add_person()
    offset = [dt.timedelta(0)]
    client = env.client(clock=lambda: utcnow() + offset[0], max_staleness="72h")
    never = client.status()
    assert (never.list_version, never.stale, never.last_success) == (None, True, None)
    before = utcnow()
    client.sync()
    s = client.status()
    assert (s.list_version, s.entries, s.stale, s.last_error) == (1, 1, False, None)
    assert s.last_success is not None and s.last_success >= before - dt.timedelta(seconds=1)
    signed = Envelope.from_bytes((p.site_dir / "manifest.json").read_bytes()).payload_json()
    assert s.manifest_expires is not None
    assert s.manifest_expires.strftime("%Y-%m-%dT%H:%M:%SZ") == signed["expires"]
    env.faults.add("status", "reports", count=ALWAYS, status=503, retry_after=30)
    with contextlib.suppress(Exception):
        client.block(person(a), MEASURE, room="1208")
    # queued durably; the sender (started by the report) is told to come back later
    assert client.status().pending_reports == 1
    env.faults.fail_next(3, status=503, retry_after=None, target="site")  # every attempt
    with pytest.raises(HTTPStatusError):
        client.sync()
    assert len(env.sleeps.delays) == 2
    error = client.status().last_error
    assert error is not None and (error.kind, error.http_status) == ("HTTPStatusError", 503)
    env.faults.clear()
    offset[0] = dt.timedelta(days=2)  # past the manifest's expiry (24 h)
    assert client.status().stale


def test_change_events_after_each_applied_version(env: Env) -> None:
    p = env.platform
    a = p.add_person()
    b = p.person_entry()
    client = env.client()
    client.sync()
    events: list[list[WatchChange]] = []
    client.watch([person(a), person(b)], MEASURE, events.append)
    p.revoke(a["entry_id"])
    client.sync()
    assert [(c.kind, c.after.action) for c in events[-1]] == [("lifted", "allow")]
    p.add(b)
    client.sync()
    assert [(c.kind, c.after.action) for c in events[-1]] == [("listed", "block")]
    assert len(events) == 2
    client.sync()  # nothing new: no event
    assert len(events) == 2


def test_background_client_enforces_a_revocation_within_5s_by_push(env: Env) -> None:
    p = env.platform
    a = p.add_person()
    client = p.client(platform=env.server.url, sync=False, background=True, poll_interval="1h")
    wait_for(lambda: client.status().list_version == 1, 10)
    wait_for(lambda: client.status().push_connected, 10)
    assert action(client, a) == "block"
    started = time.monotonic()
    p.revoke(a["entry_id"])
    elapsed = wait_for(lambda: action(client, a) == "allow", 5.0)
    assert time.monotonic() - started < 5.0
    assert elapsed < 5.0
    assert client.status().list_version == 2


def test_async_client_sync(env: Env) -> None:
    p = env.platform
    a = p.add_person()

    async def main() -> None:
        client = AsyncClient(
            env.server.url,
            p.trust_root,
            p.directory / "async-cache",
            p.subscriber_id,
            subscriber_key=p.subscriber_key_dir,
            push=False,
        )
        try:
            first = await client.sync()
            assert (first.mode, first.to_version) == ("snapshot", 1)
            assert (await client.check(person(a), MEASURE)).action == "block"
            p.revoke(a["entry_id"])
            second = await client.sync()
            assert (second.mode, second.to_version) == ("delta", 2)
            assert (await client.check(person(a), MEASURE)).action == "allow"
            assert (await client.status()).list_version == 2
        finally:
            await client.aclose()

    asyncio.run(main())


# =========================================================================== failure modes


def test_never_synced_cache_never_answers(tmp_path: Path) -> None:
    platform = TestPlatform(tmp_path)
    platform.add_person()
    with socketless_port() as port:
        client = platform.client(platform=f"http://127.0.0.1:{port}", sync=False,
                                 retry=RetryPolicy(attempts=1), push=False)  # fmt: skip
        try:
            with pytest.raises(NetworkError):
                client.sync()
            with pytest.raises(NeverSynced):
                client.check(Person(platform.entries["T0000001"]["id_number"]), MEASURE)
            s = client.status()
            assert (s.list_version, s.stale, s.last_error.kind) == (None, True, "NetworkError")  # type: ignore[union-attr]
        finally:
            platform.close()


@contextlib.contextmanager
def socketless_port() -> Iterator[int]:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))  # bound but not listening: connections are refused
        yield s.getsockname()[1]


def test_failed_sync_right_after_a_root_rotation_keeps_the_old_version(env: Env) -> None:
    """The client walks to a root with new online keys, then the delta download fails:
    the stored version (verified under the old root) keeps answering, also after a
    restart, and the next sync applies the new version."""
    p = env.platform
    a = p.add_person()
    pinned = p.directory / "pinned-root.json"
    pinned.write_bytes(p.trust_root.read_bytes())
    cache = p.directory / "rotation-cache"

    def client() -> Client:
        return Client(env.server.url, pinned, cache, p.subscriber_id, transport=env.recorder,
                      push=False, retry=RetryPolicy(attempts=1),
                      subscriber_key=p.subscriber_key_dir)  # fmt: skip

    first = client()
    first.sync()
    rotate_root(p.keys_dir, rotate_online=True)
    p.revoke(a["entry_id"])  # v2 under root 2, signed by the new online key
    env.faults.add("reset", "/" + p.last.deltas[1].path, after=10)  # type: ignore[union-attr]
    with pytest.raises(NetworkError):
        first.sync()
    assert first._core.updater.trusted.root.version == 2  # the walk itself succeeded
    assert action(first, a) == "block"  # v1 still in force, still verifiable
    assert first.verify().version == 1
    first.close()
    restarted = client()
    try:
        assert restarted._core.updater.trusted.root.version == 2
        assert action(restarted, a) == "block"
        assert restarted.sync().to_version == 2
        assert action(restarted, a) == "allow"
    finally:
        restarted.close()


def test_local_list_whose_manifest_no_longer_verifies(env: Env) -> None:
    """After a rotation of the online keys, the cached roots are lost: the local manifest
    (signed by the new online key) no longer verifies from the pinned root. The client
    still starts, refuses to answer from an unverified list, and the next sync walks the
    roots again and answers without downloading the list."""
    p = env.platform
    a = p.add_person()
    pinned = p.directory / "pinned-root.json"  # the application's copy of root 1
    pinned.write_bytes(p.trust_root.read_bytes())
    cache = p.directory / "pinned-cache"

    def client() -> Client:
        return Client(
            env.server.url,
            pinned,
            cache,
            p.subscriber_id,
            transport=env.recorder,
            push=False,
            subscriber_key=p.subscriber_key_dir,
        )

    first = client()
    first.sync()
    rotate_root(p.keys_dir, rotate_online=True)
    p.add_person()  # v2, signed by the new online key, root_version 2
    assert first.sync().to_version == 2
    first.close()
    for root in (cache / "root").glob("*.root.json"):
        root.unlink()
    restarted = client()
    assert restarted._core.updater.trusted.root.version == 1
    with pytest.raises(VerificationError):
        action(restarted, a)  # fail closed: never an answer from an unverified list
    env.recorder.seen.clear()
    result = restarted.sync()
    assert (result.mode, result.to_version) == ("none", 2)
    assert "/root/2.root.json" in env.recorder.paths()
    assert not any(path.startswith(("/snapshots/", "/deltas/")) for path in env.recorder.paths())
    assert action(restarted, a) == "block"
    restarted.close()


# ---------------------------------------------------------------------------------------
# line reader (chunked): limits and framing
# ---------------------------------------------------------------------------------------
def _lines(data: bytes, raw_limit: int | None, *, delta: bool = False) -> list[tuple[str, bytes]]:
    import gzip as _gzip
    import io as _io

    from intercept_sdk._client.sync import _iter_lines

    stream = _gzip.GzipFile(fileobj=_io.BytesIO(_gzip.compress(data)))
    return list(_iter_lines(stream, raw_limit, delta=delta, name="t", exact=True))


def test_line_reader_splits_across_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    import intercept_sdk._client.sync as sync_mod

    monkeypatch.setattr(sync_mod, "_CHUNK", 7)  # lines straddle every chunk boundary
    data = b"".join(b'{"entry_id":"E%d"}\n' % i for i in range(50))
    assert _lines(data, len(data)) == [("P", b'{"entry_id":"E%d"}' % i) for i in range(50)]
    ops = _lines(b"P\tabc\nD\tE1\n", 11, delta=True)
    assert ops == [("P", b"abc"), ("D", b"E1")]


def test_line_reader_refuses_bad_framing(monkeypatch: pytest.MonkeyPatch) -> None:
    import intercept_sdk._client.sync as sync_mod

    monkeypatch.setattr(sync_mod, "MAX_RECORD", 10)
    monkeypatch.setattr(sync_mod, "_CHUNK", 4)
    with pytest.raises(FormatError, match="unterminated or longer"):
        _lines(b"x" * 11 + b"\n", 12)  # one byte over the line cap
    assert _lines(b"x" * 10 + b"\n", 11) == [("P", b"x" * 10)]  # exactly the cap
    with pytest.raises(FormatError, match="unterminated"):
        _lines(b"abc\ndef", 7)  # no final newline
    with pytest.raises(FormatError, match="neither P nor D"):
        _lines(b"X\tabc\n", 6, delta=True)
    with pytest.raises(TooLarge, match="past its limit"):
        _lines(b"abc\ndef\n", 7)
    with pytest.raises(DigestMismatch, match="decompressed to 4 bytes"):
        _lines(b"abc\n", 5)


# ---------------------------------------------------------------------------------------
# iter_records: gunzip on a reader thread (_Prefetch)
# ---------------------------------------------------------------------------------------
def _gunzip_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "intercept-sdk-gunzip"]


def _wait_no_gunzip_thread() -> None:
    deadline = time.monotonic() + 5
    while _gunzip_threads() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not _gunzip_threads()


def test_iter_records_reads_ahead_on_a_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import gzip as _gzip

    import intercept_sdk._client.sync as sync_mod

    monkeypatch.setattr(sync_mod, "_CHUNK", 100)  # many chunks, lines across them
    lines = [b'{"entry_id":"E%05d","pad":"%s"}' % (i, b"x" * (i % 37)) for i in range(500)]
    data = b"".join(line + b"\n" for line in lines)
    path = tmp_path / "s.ndjson.gz"
    # two members and zero padding between them, as gzip.open reads them
    path.write_bytes(_gzip.compress(data[:7001]) + b"\0\0" + _gzip.compress(data[7001:]))
    seen: list[str] = []
    for op, rec in sync_mod.iter_records(path, len(data)):
        seen.append(threading.current_thread().name)
        assert op == "P" and rec == lines[len(seen) - 1]
    assert len(seen) == 500
    _wait_no_gunzip_thread()
    # delta framing through the same path
    dpath = tmp_path / "d.gz"
    dpath.write_bytes(_gzip.compress(b"P\tabc\nD\tE1\n"))
    assert list(sync_mod.iter_records(dpath, 11, delta=True)) == [("P", b"abc"), ("D", b"E1")]


def test_iter_records_errors_come_from_the_reader_thread(tmp_path: Path) -> None:
    import gzip as _gzip

    from intercept_sdk._client.sync import iter_records

    data = b"".join(b"line %d\n" % i for i in range(20000))
    good = _gzip.compress(data)
    cases = {
        "truncated": good[: len(good) // 2],
        "not gzip": b"plain text\n" * 10,
        "bad crc": good[:-8] + bytes(8),
        "garbage after": good + b"garbage",
    }
    for name, blob in cases.items():
        path = tmp_path / f"{name}.gz"
        path.write_bytes(blob)
        with pytest.raises(FormatError, match="not valid gzip"):
            list(iter_records(path, len(data)))
        _wait_no_gunzip_thread()
    path = tmp_path / "ok.gz"
    path.write_bytes(good)
    with pytest.raises(TooLarge, match="past its limit"):
        list(iter_records(path, len(data) - 1))
    with pytest.raises(DigestMismatch, match="decompressed to"):
        list(iter_records(path, len(data) + 1))
    _wait_no_gunzip_thread()


def test_prefetch_never_reads_past_the_limit_and_stops_when_closed() -> None:
    from intercept_sdk._client.sync import _CHUNK, _Prefetch

    class Endless:
        def __init__(self) -> None:
            self.served = 0

        def read(self, size: int = -1, /) -> bytes:
            self.served += size
            return b"x" * size

    source = Endless()
    ahead = _Prefetch(source, 5 * _CHUNK // 2)  # a bomb: the thread stops at limit + 1
    total = 0
    while chunk := ahead.read(_CHUNK):
        total += len(chunk)
    ahead.close()
    assert total == source.served == 5 * _CHUNK // 2 + 1
    endless = Endless()
    ahead = _Prefetch(endless, None)
    assert len(ahead.read(10)) == 10 and len(ahead.read(_CHUNK)) == _CHUNK - 10
    ahead.close()  # the thread is blocked on a full queue: close must still stop it
    _wait_no_gunzip_thread()
    assert endless.served <= (4 + 3) * _CHUNK


def test_failed_snapshot_stops_the_reader_thread(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """The store raises after a few records: the sync closes the record stream at once,
    even while the exception (and so the generator's frame) is still referenced."""
    import intercept_sdk._client.sync as sync_mod
    from intercept_sdk._client.store import Store

    monkeypatch.setattr(sync_mod, "_CHUNK", 64)  # the reader blocks on a full queue
    for _ in range(30):
        env.platform.add_person()
    seen: list[bytes] = []

    def failing_snapshot(self: Store, version: int, records: Any, **kw: Any) -> Any:
        seen.extend(itertools.islice(records, 2))
        assert _gunzip_threads()
        raise FormatError("refused by the test")

    monkeypatch.setattr(Store, "write_snapshot", failing_snapshot)
    client = env.client()
    try:
        with pytest.raises(FormatError, match="refused by the test") as caught:
            client.sync()
        assert len(seen) == 2 and caught.value.__traceback__ is not None
        _wait_no_gunzip_thread()
    finally:
        client.close()


def test_iter_records_abandoned_midway_stops_its_thread(tmp_path: Path) -> None:
    import gzip as _gzip

    from intercept_sdk._client.sync import iter_records

    data = b"".join(b"line %d\n" % i for i in range(300000))
    path = tmp_path / "big.gz"
    path.write_bytes(_gzip.compress(data, 1))
    it = iter_records(path, len(data))
    assert next(it) == ("P", b"line 0")
    assert _gunzip_threads()
    it.close()  # e.g. the store raised on a bad record
    _wait_no_gunzip_thread()
