"""Background mode: the one engine (pure, on a fake clock: no sleeping), its two drivers,
and AsyncClient in background mode against real loopback platforms (push, and polling
when push is down)."""

from __future__ import annotations

import asyncio
import http.server
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from _servers import stdlib_server
from intercept_sdk import AsyncClient, Person, RetryPolicy
from intercept_sdk._client.background import (
    Engine,
    Listen,
    Stop,
    SyncNow,
    Tasks,
    ThreadDriver,
    Wait,
)
from intercept_sdk._client.push import Heard
from intercept_sdk.testing import TestPlatform

MEASURE = "consumption.star_hotel"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def engine(
    poll: float = 300.0, *, push: bool = True, rand: float = 0.5, **retry: Any
) -> tuple[Engine, FakeClock]:
    clock = FakeClock()
    policy = RetryPolicy(random=lambda: 1.0, **retry)
    return Engine(poll, push=push, retry=policy, clock=clock, random=lambda: rand), clock


def started(e: Engine) -> None:
    """Take the start jitter and the first sync."""
    assert isinstance(e.next(), Wait)
    e.waited(False)
    assert e.next() == SyncNow("start")
    e.synced(True)


# -- the engine ---------------------------------------------------------------------------


@pytest.mark.parametrize(("poll", "rand", "jitter"), [(300.0, 0.5, 1.0), (5.0, 0.5, 0.25)])
def test_start_is_jittered_then_syncs(poll: float, rand: float, jitter: float) -> None:
    e, _ = engine(poll, rand=rand)
    assert e.next() == Wait(jitter)  # random() * min(2 s, poll / 10)
    e.waited(False)
    assert e.next() == SyncNow("start")


def test_polling_without_push_waits_a_jittered_interval() -> None:
    e, clock = engine(100.0, push=False, rand=1.0)
    started(e)
    step = e.next()
    assert step == Wait(pytest.approx(110.0))  # poll x uniform(0.9, 1.1), at its top
    clock.now += 110.0
    e.waited(False)
    assert e.next() == SyncNow("poll")


def test_push_listens_until_the_poll_is_due() -> None:
    e, clock = engine(100.0, rand=0.0)  # the poll at its earliest: 90 s
    started(e)
    assert e.next() == Listen(pytest.approx(90.0))
    clock.now += 5
    e.listened(Heard("announced"))
    assert e.next() == SyncNow("push")
    e.synced(True)
    assert e.next() == Listen(pytest.approx(90.0))  # the poll timer restarted
    clock.now += 90
    e.listened(Heard("due"))
    assert e.next() == SyncNow("poll")


def test_failed_syncs_back_off_exponentially_capped_at_the_poll() -> None:
    e, clock = engine(100.0, push=False, rand=0.5)
    started(e)
    waits = []
    for _ in range(6):
        clock.now += 1000
        e.waited(False)
        assert e.next() == SyncNow("poll")
        e.synced(False)
        step = e.next()
        assert isinstance(step, Wait)
        waits.append(step.seconds)
    # min(poll, 10 s x 2^(n-1)) x uniform(0.5, 1.0) at 0.75; capped by the jittered poll (100)
    assert waits == pytest.approx([7.5, 15.0, 30.0, 60.0, 75.0, 75.0])
    e.synced(True)  # success: back to the plain poll
    assert e.next() == Wait(pytest.approx(100.0))


def test_no_listening_while_syncs_fail_or_the_lock_is_busy() -> None:
    e, clock = engine(300.0, rand=0.5)
    started(e)
    assert isinstance(e.next(), Listen)
    e.listened(Heard("announced"))
    assert e.next() == SyncNow("push")
    e.synced(False)
    assert isinstance(e.next(), Wait)  # an announcement could not be applied: no reconnect
    clock.now += 1000
    e.waited(False)
    assert e.next() == SyncNow("poll")
    e.synced("busy")
    step = e.next()
    assert step == Wait(pytest.approx(0.75))  # min(poll, 1 s) x 0.75: another worker syncs
    clock.now += 1
    e.waited(False)
    assert e.next() == SyncNow("poll")
    e.synced("ok")
    assert isinstance(e.next(), Listen)


@pytest.mark.parametrize("seed", range(50))
def test_a_failing_client_with_push_announcing_syncs_at_most_5_times_a_minute(seed: int) -> None:
    """Simulate 60 s of a client whose every sync fails (a wrong trust root) while the
    channel announces a newer version on every connect: every step is taken at once, on a
    fake clock, with random jitter."""
    import random

    rng = random.Random(seed)
    clock = FakeClock()
    e = Engine(
        300.0, push=True, retry=RetryPolicy(random=rng.random), clock=clock, random=rng.random
    )
    start = clock.now
    syncs = listens = 0
    while clock.now - start <= 60.0:
        step = e.next()
        if isinstance(step, Wait):
            clock.now += step.seconds
            e.waited(False)
        elif isinstance(step, SyncNow):
            syncs += 1
            e.synced(False)
        elif isinstance(step, Listen):
            listens += 1
            e.listened(Heard("announced"))
        else:
            break
    assert syncs <= 5
    assert listens <= 1


def test_push_failures_back_off_exponentially_and_polling_goes_on() -> None:
    e, clock = engine(100.0, rand=0.5, initial=1.0, maximum=300.0)
    started(e)
    waits = []
    for _ in range(7):
        step = e.next()
        assert isinstance(step, Listen)
        e.listened(Heard("failed"))
        step = e.next()
        assert isinstance(step, Wait)
        waits.append(step.seconds)
        clock.now += step.seconds
        e.waited(False)
    # full jitter at its top (random() = 1): 1, 2, 4 ... 64 s, but a wait never passes
    # the poll, due 100 s after the sync (at 1100): the 7th wait is cut there
    assert waits == pytest.approx([1, 2, 4, 8, 16, 32, 37])
    assert e.next() == SyncNow("poll")
    e.synced(True)
    assert e.next() == Wait(pytest.approx(27.0))  # the rest of the 64-s backoff
    clock.now += 27
    e.waited(False)
    assert isinstance(e.next(), Listen)
    assert e.push_failures == 7
    e.listened(Heard("due"))  # a healthy listen resets the count
    assert e.push_failures == 0


def test_push_failure_honours_retry_after() -> None:
    e, _ = engine(100.0, rand=0.5, initial=1.0)
    started(e)
    assert isinstance(e.next(), Listen)
    e.listened(Heard("failed", retry_after=5.0))
    assert e.next() == Wait(5.0)


def test_wake_and_interruption_sync_now() -> None:
    e, _ = engine(100.0, push=False)
    started(e)
    assert isinstance(e.next(), Wait)
    e.waited(True)
    assert e.next() == SyncNow("wake")
    e2, _ = engine(100.0)
    started(e2)
    assert isinstance(e2.next(), Listen)
    e2.listened(Heard("interrupted"))
    assert e2.next() == SyncNow("wake")


def test_stop_is_final() -> None:
    e, _ = engine()
    e.stop()
    assert e.next() == Stop()
    assert e.next() == Stop()


def test_an_hour_with_a_dead_push_channel() -> None:
    """Simulated: a channel failing at once, every time, for an hour with a 5-min poll.
    Syncs keep the poll's pace; reconnection attempts stay bounded (backoff, then one
    per poll)."""
    clock = FakeClock()
    policy = RetryPolicy(initial=0.5, maximum=300.0, random=lambda: 0.5)  # mid-jitter
    e = Engine(300.0, push=True, retry=policy, clock=clock, random=lambda: 0.5)
    syncs = listens = 0
    while clock.now < 1000.0 + 3600:
        step = e.next()
        if isinstance(step, SyncNow):
            syncs += 1
            e.synced(True)
        elif isinstance(step, Listen):
            listens += 1
            e.listened(Heard("failed"))
        elif isinstance(step, Wait):
            clock.now += step.seconds
            e.waited(False)
    assert 12 <= syncs <= 14
    # ten quick reconnects while the backoff (0.5 s x 2^n) is below the poll, then one
    # per poll, right after its sync (the thread before this engine: one per poll)
    assert listens <= 10 + syncs


# -- the thread driver (no network) --------------------------------------------------------


def test_thread_driver_polls_survives_errors_and_stops_promptly() -> None:
    calls: list[float] = []
    boom = {"left": 2}

    def sync() -> bool:
        calls.append(time.monotonic())
        if boom["left"]:
            boom["left"] -= 1
            raise RuntimeError("a bug in sync must not end the thread")
        return True

    closed = threading.Event()
    tasks = Tasks(
        sync=sync,
        local_version=lambda: 0,
        connected=lambda _: None,
        closed=closed.is_set,
        channel=None,
        engine=lambda: Engine(0.05, push=False),
    )
    driver = ThreadDriver(tasks)
    driver.start()
    driver.start()  # idempotent
    deadline = time.monotonic() + 10
    while len(calls) < 5 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(calls) >= 5
    thread = driver.thread
    assert thread is not None and thread.name == "intercept-sdk-sync"
    t = time.monotonic()
    driver.stop(2.0)
    assert time.monotonic() - t < 1.0
    assert not thread.is_alive()


# -- AsyncClient in background mode, real loopback platforms --------------------------------


class _Recorder(httpx.BaseTransport):
    """The real HTTP transport, recording each request's path and headers."""

    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()
        self.seen: list[tuple[str, str]] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.seen.append((request.url.path, request.headers.get("accept", "")))
        return self.inner.handle_request(request)

    def close(self) -> None:
        self.inner.close()


async def _until(predicate: Any, timeout: float) -> float:
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError("timed out")
        await asyncio.sleep(0.02)
    return time.monotonic() - start


def _async_client(p: TestPlatform, url: str, name: str, **options: Any) -> AsyncClient:
    return AsyncClient(
        url,
        p.trust_root,
        p.directory / name,
        p.subscriber_id,
        subscriber_key=p.subscriber_key_dir,
        background=True,
        **options,
    )


def test_async_background_gets_a_publish_by_push_through_the_transport(tmp_path: Path) -> None:
    with TestPlatform(tmp_path) as p:
        listed = p.add_person()
        recorder = _Recorder()
        with p.serve() as server:

            async def main() -> None:
                async with _async_client(
                    p, server.url, "async-push", poll_interval="1h", transport=recorder
                ) as client:
                    await _until(lambda: client._core.local_version() == 1, 15)
                    status = client.status
                    await _until(lambda: client._core._push_connected, 15)
                    assert (await status()).push_connected
                    person = Person(listed["id_number"])
                    assert (await client.check(person, MEASURE)).action == "block"
                    await asyncio.to_thread(p.revoke, listed["entry_id"])
                    # poll_interval is an hour: only push can bring version 2 this soon
                    elapsed = await _until(lambda: client._core.local_version() == 2, 10)
                    assert elapsed < 10
                    assert (await client.check(person, MEASURE)).action == "allow"

            asyncio.run(main())
        events = [accept for path, accept in recorder.seen if path == "/events"]
        assert events, "the push channel did not go through the client's transport"
        assert set(events) == {"text/event-stream"}
        recorder.close()


class _NoPushHandler(http.server.BaseHTTPRequestHandler):
    """Serves the site's files; the push channel is down (503)."""

    site: Path
    events: list[float]

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        path = self.path.split("?")[0]
        if path == "/events":
            self.events.append(time.monotonic())
            self.send_response(503)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        file = self.site / path.lstrip("/")
        if ".." in path or not file.is_file():
            self.send_error(404)
            return
        body = file.read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def no_push_server(tmp_path: Path) -> Iterator[tuple[TestPlatform, str, list[float]]]:
    platform = TestPlatform(tmp_path)
    platform.add_person()
    handler = type("Handler", (_NoPushHandler,), {"site": platform.site_dir, "events": []})
    try:
        with stdlib_server(handler) as url:
            yield platform, url, handler.events
    finally:
        platform.close()


def test_async_background_polls_when_push_is_down(
    no_push_server: tuple[TestPlatform, str, list[float]],
) -> None:
    p, url, events = no_push_server

    async def main() -> None:
        client = _async_client(p, url, "async-poll", poll_interval=0.5)
        client.start_background()
        try:
            await _until(lambda: client._core.local_version() == 1, 15)
            await _until(lambda: len(events) >= 2, 15)  # push was tried, and again
            assert not (await client.status()).push_connected
            listed = await asyncio.to_thread(p.add_person)
            await _until(lambda: client._core.local_version() == 2, 15)
            person = Person(listed["id_number"])
            assert (await client.check(person, MEASURE)).action == "block"
        finally:
            # last quarter's summary is queued; this server takes no reports: no flush
            await client.aclose(timeout=0.5)

    asyncio.run(main())


def test_async_sync_reports_progress(tmp_path: Path) -> None:
    with TestPlatform(tmp_path) as p:
        p.add_person()
        p.publish()
        seen: list[tuple[int, int]] = []

        async def main() -> None:
            client = AsyncClient(
                p.site_dir,
                p.trust_root,
                tmp_path / "c",
                p.subscriber_id,
                subscriber_key=p.subscriber_key_dir,
                push=False,
            )
            try:
                result = await client.sync(progress=lambda done, total: seen.append((done, total)))
                assert result.to_version == p.last.version  # type: ignore[union-attr]
            finally:
                await client.aclose()

        asyncio.run(main())
        assert seen and seen[-1][0] == seen[-1][1] > 0
