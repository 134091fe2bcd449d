"""Faults: the reference platform made to misbehave, and failures of the network itself.

Every fault comes from the one :class:`~intercept_sdk.testing.faults.FaultSimulator`: its
server hook wraps the real platform server on loopback (5xx, 429, a lost answer, a body
cut short, a wrong Content-Length, a slow drip, silence, a redirect, an older manifest, a
stale ETag, a push channel sending garbage), its ``httpx`` transport hook raises what only
the network can (connect/read timeouts, refused connections, a reset mid-body).

Each run publishes the next version, turns a fault on, and syncs. Under the fault the
client keeps its last good version (every decision is that version's, the cache
verifies), the sync fails with the fault's own exception within a bounded time, and
``status()`` records the error; when the fault ends the next sync brings the new
version and clears the error. Benign faults (a short burst that the retries absorb, a
stale ETag) must not fail the sync at all.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from intercept_sdk import Client
from intercept_sdk._client.fetch import RetryPolicy
from intercept_sdk._client.outbox import RetryPolicy as SendRetryPolicy
from intercept_sdk._exceptions import (
    DigestMismatch,
    FormatError,
    HTTPStatusError,
    NetworkError,
    RollbackError,
    TooLarge,
)
from intercept_sdk._platform.server import Limits, PlatformServer
from intercept_sdk.testing import TestPlatform
from intercept_sdk.testing.faults import ALWAYS, FaultSimulator

from ._support import (
    Chain,
    Tally,
    build_chain,
    check_decisions,
    platform_report_rows,
    size,
)
from .known_bugs import Known

REPS = size(1, 6)
TOTAL_TIMEOUT = 1.0
READ_TIMEOUT = 0.4
ATTEMPTS = 3

pytestmark = pytest.mark.timeout(size(120, 900))


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Chain:
    return build_chain(
        tmp_path_factory.mktemp("fault-chain"),
        n_public=40,
        n_restricted=2,
        versions=REPS + 3,
        period=2,
    )


@dataclass
class Sleeps:
    delays: list[float] = field(default_factory=list)

    def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


@dataclass
class Env:
    chain: Chain
    served: Path
    faults: FaultSimulator
    client: Client
    sleeps: Sleeps
    version: int


@contextlib.contextmanager
def _serving(served: Path, faults: FaultSimulator) -> Iterator[PlatformServer]:
    """The reference platform serving ``served``, with ``faults`` wrapped around it."""
    with PlatformServer(
        served, middleware=[faults.middleware()], limits=Limits(poll_interval=0.05)
    ) as server:
        yield server


@contextlib.contextmanager
def _env(chain: Chain, tmp_path: Path, hook: str) -> Iterator[Env]:
    served = chain.make_served(tmp_path / "served")
    chain.install(served, 2)
    faults = FaultSimulator()
    sleeps = Sleeps()
    options: dict[str, Any] = {}
    if hook == "transport":  # else the SDK's own transport, over real sockets
        options["transport"] = faults.transport()
    with _serving(served, faults) as server:
        client = chain.client(
            server.url,
            chain.copy_cache(2, tmp_path / "cache"),
            connect_timeout=READ_TIMEOUT,
            read_timeout=READ_TIMEOUT,
            total_timeout=TOTAL_TIMEOUT,
            retry=RetryPolicy(attempts=ATTEMPTS, sleep=sleeps),
            **options,
        )
        try:
            assert client.sync().mode == "none"  # up to date; the client now holds an ETag
            yield Env(chain, served, faults, client, sleeps, 2)
        finally:
            client.close()


Arm = Callable[[Env], None]


@dataclass(frozen=True)
class Case:
    name: str
    hook: str  # server (the platform misbehaves) | transport (the network fails)
    kind: str
    target: str
    expect: tuple[type[Exception], ...] | None  # None: benign, the sync goes through
    params: dict[str, Any] = field(default_factory=dict)
    count: int = ALWAYS
    bound: float = 10.0  # seconds the failing sync may take
    min_sleep: float | None = None  # a Retry-After that must have been honoured
    known_bug: Known | None = None


CASES = [
    # ---- the platform server misbehaves (real sockets, the SDK's own transport)
    Case("server never answers (read timeout)", "server", "hang", "manifest", (NetworkError,)),
    Case(
        "manifest truncated (connection closed early)",
        "server",
        "truncate",
        "manifest",
        (NetworkError,),
    ),
    Case(
        "artefact truncated (connection closed early)",
        "server",
        "truncate",
        "artefact",
        (NetworkError,),
    ),
    Case("oversized artefact (more than signed)", "server", "oversize", "artefact", (TooLarge,)),
    Case(
        "oversized manifest (over the cap)",
        "server",
        "oversize",
        "manifest",
        (TooLarge,),
        {"extra": 2 << 20},
    ),
    Case(
        "wrong Content-Length, short (manifest)",
        "server",
        "short_length",
        "manifest",
        (FormatError,),
    ),
    Case(
        "wrong Content-Length, short (artefact)",
        "server",
        "short_length",
        "artefact",
        (DigestMismatch,),
    ),
    Case("wrong Content-Length, long", "server", "long_length", "any", (NetworkError,)),
    Case(
        "slow drip past the total deadline (manifest)",
        "server",
        "drip",
        "manifest",
        (NetworkError,),
        {"interval": 0.05},
        bound=12.0,
    ),
    Case(
        "slow drip past the total deadline (artefact)",
        "server",
        "drip",
        "artefact",
        (NetworkError,),
        {"interval": 0.05},
        bound=12.0,
    ),
    Case("5xx storm", "server", "status", "any", (HTTPStatusError,), {"status": 503}),
    Case(
        "429 with Retry-After",
        "server",
        "status",
        "manifest",
        (HTTPStatusError,),
        {"status": 429, "retry_after": 7},
        min_sleep=7.0,
    ),
    Case("redirect to another host", "server", "redirect", "manifest", (HTTPStatusError,)),
    Case("CDN serves an older manifest", "server", "older", "manifest", (RollbackError,)),
    Case(
        "manifest of deeply nested JSON",
        "server",
        "older",
        "manifest",
        (FormatError,),
        {"data": b"[" * 50_000},
    ),
    # ---- benign: absorbed by the retries, or nothing new seen
    Case(
        "5xx burst shorter than the retries",
        "server",
        "status",
        "any",
        None,
        {"status": 502},
        count=ATTEMPTS - 1,
    ),
    Case(
        "429 once, Retry-After honoured",
        "server",
        "status",
        "artefact",
        None,
        {"status": 429, "retry_after": 5},
        count=1,
        min_sleep=5.0,
    ),
    Case("manifest with a stale ETag (304)", "server", "stale_etag", "manifest", None),
    Case(
        "5xx storm on artefacts only",
        "server",
        "status",
        "artefact",
        (HTTPStatusError,),
        {"status": 500},
    ),
    Case("redirect of an artefact", "server", "redirect", "artefact", (HTTPStatusError,)),
    # ---- the network fails (the simulator's transport hook in front of the real one)
    Case("connect timeout", "transport", "connect_timeout", "manifest", (NetworkError,)),
    Case("read timeout", "transport", "read_timeout", "artefact", (NetworkError,)),
    Case("connection refused", "transport", "connect_error", "any", (NetworkError,)),
    Case("connection reset mid-body", "transport", "reset", "artefact", (NetworkError,)),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_fault(case: Case, chain: Chain, tmp_path: Path) -> None:
    tally = Tally(f"fault: {case.name}")
    rng = random.Random(case.name)
    with _env(chain, tmp_path, case.hook) as env:
        for rep in range(REPS):
            with tally.run(f"rep {rep}", known=case.known_bug):
                _cycle(env, case, rng)
    tally.finish()


def _arm(env: Env, case: Case, rng: random.Random) -> None:
    params = dict(case.params)
    if case.kind == "status" and params.get("status") in (500, 502, 503):
        params["status"] = rng.choice([500, 502, 503, 504])
    if case.kind == "older" and "data" not in params:
        params["data"] = env.chain.manifests[env.version - 1]
    env.faults.add(case.kind, case.target, case.count, **params)  # type: ignore[arg-type]


def _cycle(env: Env, case: Case, rng: random.Random) -> None:
    v = env.version
    client = env.client
    env.faults.clear()
    env.chain.install(env.served, v + 1)  # the platform publishes the next version
    hits = env.faults.hits(case.kind)
    _arm(env, case, rng)
    env.sleeps.delays.clear()
    start = time.monotonic()
    if case.expect is None:
        result = client.sync()
        elapsed = time.monotonic() - start
        assert env.faults.hits(case.kind) > hits, "the fault was never hit"
        if case.kind == "stale_etag":
            # The CDN says "not modified": nothing new is seen, nothing fails.
            assert result.mode == "none", result
            assert client.status().list_version == v
            check_decisions(client, env.chain, v)
        else:
            assert result.to_version == v + 1, result
    else:
        try:
            client.sync()
        except case.expect as exc:
            error: Exception = exc
        else:
            raise AssertionError(f"the sync succeeded under '{case.name}'")
        elapsed = time.monotonic() - start
        assert env.faults.hits(case.kind) > hits, "the fault was never hit"
        assert elapsed < case.bound, f"the failing sync took {elapsed:.1f}s"
        # Under the fault: the last good version, whole, and the error in status().
        status = client.status()
        assert status.list_version == v, status
        assert status.last_error is not None and status.last_error.kind == type(error).__name__
        if isinstance(error, HTTPStatusError):
            assert status.last_error.http_status == error.status_code
        assert not status.stale
        check_decisions(client, env.chain, v)
        assert client.verify().version == v
    if case.min_sleep is not None:
        assert max(env.sleeps.delays, default=0) >= case.min_sleep, env.sleeps.delays
    assert elapsed < case.bound + 5
    # The fault ends: the next sync recovers.
    env.faults.clear()
    if client.status().list_version == v:
        client.sync()
    status = client.status()
    assert status.list_version == v + 1 and status.last_error is None, status
    check_decisions(client, env.chain, v + 1)
    assert client.verify().version == v + 1
    env.version = v + 1


def test_fault_right_after_a_root_rotation(tmp_path: Path) -> None:
    """The download fails after the client walked to a new root: the stored version
    must stay usable (it was verified under the old root)."""
    tally = Tally("fault: download fails right after a root rotation")
    chain = build_chain(
        tmp_path / "chain", n_public=10, n_restricted=0, versions=2, rotate_at=2, period=2
    )
    served = chain.make_served(tmp_path / "served")
    chain.install(served, 1)
    faults = FaultSimulator()
    with _serving(served, faults) as server:
        for rep in range(REPS):
            chain.install(served, 1)
            cache = chain.copy_cache(1, tmp_path / "cache")
            with (
                chain.client(server.url, cache, retry=RetryPolicy(attempts=1)) as client,
                tally.run(f"rep {rep}"),
            ):
                chain.install(served, 2)
                faults.add("status", "artefact", ALWAYS, status=503)
                with pytest.raises(HTTPStatusError):
                    client.sync()
                check_decisions(client, chain, 1)
                faults.clear()
                client.sync()
                check_decisions(client, chain, 2)
    tally.finish()


# --------------------------------------------------------------------------- push channel

MALFORMED_EVENTS = (
    b"event: version\ndata: not json\n\n"
    b'event: version\ndata: {"version": "seven"}\n\n'
    b"event: version\ndata: [1, 2]\n\n"
    b'event: version\ndata: {"other": 1}\n\n'
    b"event: nonsense\ndata: \xff\xfe\n\n"
    b'event: version\ndata: {"version": -5}\n\n'
    b'event: version\ndata: {"version": NaN}\n\n'
    b"data: orphan data line\n\n"
)
PUSH_EVENTS = {
    "malformed events (not JSON, wrong types, no version)": (MALFORMED_EVENTS, None),
    "an event of deeply nested JSON": (
        b"event: version\ndata: " + b"[" * 50_000 + b"\n\n",
        None,
    ),
    "an event with version 1e999": (
        b'event: version\ndata: {"version": 1e999}\n\n',
        None,
    ),
}


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
@pytest.mark.parametrize("what", list(PUSH_EVENTS))
def test_push_channel_faults(what: str, chain: Chain, tmp_path: Path) -> None:
    """The push channel (server-sent events) sends what no platform would: the
    background thread must survive it, keep polling, and apply the next version."""
    events, known = PUSH_EVENTS[what]
    tally = Tally(f"fault: push channel sends {what}")
    served = chain.make_served(tmp_path / "served")
    chain.install(served, 2)
    faults = FaultSimulator()
    with _serving(served, faults) as server:
        for rep in range(REPS):
            chain.install(served, 2)
            client = chain.client(
                server.url,
                chain.copy_cache(2, tmp_path / "cache"),
                push=True,
                poll_interval=0.5,
                retry=RetryPolicy(attempts=2, sleep=lambda s: None),
            )
            try:
                with tally.run(f"rep {rep}", known=known):
                    faults.clear()
                    faults.add("events", "events", 1, events=events, hold=0.5)
                    before = faults.hits("events")
                    client.start_background()
                    deadline = time.monotonic() + 10
                    while faults.hits("events") == before and time.monotonic() < deadline:
                        time.sleep(0.02)
                    assert faults.hits("events") > before, "the client never listened"
                    time.sleep(0.3)  # the event is read before the next version appears
                    chain.install(served, 3)
                    deadline = time.monotonic() + 8
                    thread = client._core._bg  # white box: a dead thread fails at once
                    while client.status().list_version != 3:
                        assert thread is not None and thread.is_alive(), (
                            "the background sync thread died"
                        )
                        assert time.monotonic() < deadline, (
                            "version 3 not applied within 8 s after a bad push event"
                        )
                        time.sleep(0.05)
                    check_decisions(client, chain, 3)
            finally:
                # The background sync queued last quarter's summary, which this server
                # cannot take: do not wait for it.
                client.close(timeout=0.5)
    tally.finish()


# --------------------------------------------------------------------------- report uploads

REPORT_REPS = size(1, 4)


def test_report_upload_faults(tmp_path: Path) -> None:
    """5xx storm, 429 with Retry-After and an answer lost after the platform stored the
    batch: every report arrives exactly once, and the failure shows in status()."""
    tally = Tally("fault: report uploads (5xx, 429 Retry-After, lost answer)")
    p = TestPlatform(tmp_path / "platform")
    p.add_person()
    faults = FaultSimulator()
    state = tmp_path / "platform-state"
    with PlatformServer(
        p.site_dir,
        subscribers_dir=p.keys_dir / "subscribers",
        state_dir=state,
        middleware=[faults.middleware()],
        limits=Limits(poll_interval=1),
    ) as server:
        client = p.client(platform=server.url, push=False, audit=False)
        assert client._core.sender is not None
        # Shorter backoff than the default (0.5 s doubling) keeps the run short; the
        # policy itself is tested in tests/test_outbox.py.
        client._core.sender.retry = SendRetryPolicy(initial=0.05, maximum=0.5)
        ids: list[str] = []
        try:
            for rep in range(REPORT_REPS):
                with tally.run(f"rep {rep}"):
                    faults.fail_next(2, status=503, retry_after=0)
                    faults.fail_next(1, status=429, retry_after=1)
                    faults.fail_next(1, status=503, retry_after=0, after_store=True)
                    seen = faults.requests("reports")
                    ids += [
                        client.report("objection", f"E{i:05d}", grounds="已履行完毕")
                        for i in range(30)
                    ]
                    deadline = time.monotonic() + 30
                    while faults.pending("reports") and time.monotonic() < deadline:
                        time.sleep(0.02)
                    assert client.status().report_error is not None  # the failures showed
                    assert client.flush_reports(timeout=30), "not drained after the faults"
                    assert faults.requests("reports") - seen >= 5
                    stored = platform_report_rows(state)
                    assert len(stored) == len(set(stored)) == len(ids)
                    assert set(stored) == set(ids)
                    status = client.status()
                    assert status.pending_reports == 0 and status.dead_letters == 0
        finally:
            client.close()
    tally.finish()
