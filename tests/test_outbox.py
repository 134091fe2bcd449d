"""The report outbox and sender: durability, caps, retries, dead letters, kill -9, outages.

Two kinds of platform are used: ``httpx.MockTransport`` for exact fault injection (with a
fake clock and sleep, so backoff and ``Retry-After`` are checked without waiting), and a
real loopback HTTP server (stdlib ``ThreadingHTTPServer``, below) that verifies every
report's signature with :func:`verify_report` and de-duplicates by ``report_id``, used for
the crash, outage and hang scenarios with real processes and sockets.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import email.utils
import json
import logging
import os
import random
import select
import signal
import socket
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from intercept_sdk import ConfigurationError, InvalidReport, OutboxFull, ReportError
from intercept_sdk._client.outbox import (
    DeadLetter,
    Outbox,
    Sender,
    reports_url,
)
from intercept_sdk._client.retry import RetryPolicy
from intercept_sdk._protocol.reports import build_report, sign_report, verify_report
from intercept_sdk._protocol.signing import canonical_json, write_private_key

SUB = "hotel-001"
CASE = "(2019)冀0203执123号"
MEASURE = "consumption.star_hotel"

CHILD_ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def box(tmp_path: Path) -> Iterator[Outbox]:
    ob = Outbox(tmp_path / "cache" / "outbox.sqlite")
    yield ob
    ob.close()


def make(
    key: Ed25519PrivateKey,
    kind: str = "interception",
    *,
    now: dt.datetime | None = None,
    pad: int = 0,
    entry: str = "E1",
) -> tuple[dict[str, Any], bytes]:
    table: dict[str, dict[str, Any]] = {
        "interception": {
            "measure": MEASURE,
            "entry_id": entry,
            "case_no": CASE,
            "list_version": 7,
            "outcome": "blocked",
        },
        "lift": {"measure": MEASURE, "entry_id": entry, "outcome": "lifted"},
        "objection": {"entry_id": entry, "details": {"grounds": "已履行"}},
    }
    args = table[kind]
    if pad:
        args = {**args, "details": {**args.get("details", {}), "pad": "x" * pad}}
    p = build_report(kind, subscriber_id=SUB, now=now, **args)
    return p, sign_report(p, key)


def put(box: Outbox, key: Ed25519PrivateKey, **kw: Any) -> str:
    p, env = make(key, **kw)
    box.enqueue(
        env,
        report_id=p["report_id"],
        kind=p["kind"],
        measure=p["measure"],
        created_at=p["created_at"],
    )
    return str(p["report_id"])


def queued_ids(box: Outbox) -> list[str]:
    return [rid for rid, _ in box.batch(10**9)]


# =========================================================================== Outbox


def test_enqueue_batch_is_fifo_and_not_removing(box: Outbox, key: Ed25519PrivateKey) -> None:
    ids = [put(box, key) for _ in range(5)]
    assert box.pending_count() == 5
    assert [rid for rid, _ in box.batch(3)] == ids[:3]
    assert queued_ids(box) == ids  # batch() removed nothing
    env = box.batch(1)[0][1]
    assert json.loads(env)["payload_type"].endswith("report+json")


def test_mark_sent_removes_only_acknowledged(box: Outbox, key: Ed25519PrivateKey) -> None:
    ids = [put(box, key) for _ in range(4)]
    assert box.mark_sent([ids[1], ids[3], "0" * 32]) == 2
    assert queued_ids(box) == [ids[0], ids[2]]
    assert box.sent_count() == 2
    assert box.mark_sent([ids[1]]) == 0  # already sent: ignored
    assert box.mark_sent([]) == 0


def test_enqueue_is_idempotent_on_report_id(box: Outbox, key: Ed25519PrivateKey) -> None:
    p, env = make(key)
    meta = {
        "report_id": p["report_id"],
        "kind": p["kind"],
        "measure": p["measure"],
        "created_at": p["created_at"],
    }
    box.enqueue(env, **meta)
    box.enqueue(env, **meta)
    assert box.pending_count() == 1
    box.mark_sent([p["report_id"]])
    box.enqueue(env, **meta)  # also after it was sent
    assert box.pending_count() == 0
    assert box.has_report(p["report_id"])
    assert not box.has_report("f" * 32)


def test_enqueue_accepts_datetime_created_at(box: Outbox, key: Ed25519PrivateKey) -> None:
    when = dt.datetime(2026, 5, 6, 7, 8, 9, tzinfo=dt.timezone.utc)
    p, env = make(key, now=when)
    box.enqueue(env, report_id=p["report_id"], kind="interception", measure=MEASURE,
                created_at=when.astimezone(dt.timezone(dt.timedelta(hours=8))))  # fmt: skip
    assert box.pending_count() == 1


def test_enqueue_refuses_inconsistent_or_foreign_bytes(box: Outbox, key: Ed25519PrivateKey) -> None:
    p, env = make(key)
    good = {
        "report_id": p["report_id"],
        "kind": p["kind"],
        "measure": p["measure"],
        "created_at": p["created_at"],
    }
    for field, value in (
        ("kind", "lift"),
        ("measure", "travel.flight"),
        ("created_at", "2020-01-01T00:00:00Z"),
        ("report_id", "a" * 32),
    ):
        with pytest.raises(InvalidReport, match=field):
            box.enqueue(env, **{**good, field: value})
    for blob in (b"", b"{}", b"not json", b"x" * 200_000):
        with pytest.raises(InvalidReport):
            box.enqueue(blob, **good)
    with pytest.raises(InvalidReport, match="kind"):
        box.enqueue(env, **{**good, "kind": "gossip"})
    with pytest.raises(InvalidReport):
        box.enqueue(env, **{**good, "created_at": "yesterday"})
    assert box.pending_count() == 0


def test_enqueue_trusts_only_envelopes_signed_in_process(
    box: Outbox, key: Ed25519PrivateKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    """sign_report's own envelopes skip the re-parse; any other bytes are parsed in full."""
    parsed: list[bytes] = []
    real = Outbox._check_envelope

    def spy(data: bytes, *args: Any) -> str:
        parsed.append(data)
        return real(data, *args)

    monkeypatch.setattr(Outbox, "_check_envelope", staticmethod(spy))
    p, env = make(key)
    meta = {"report_id": p["report_id"], "kind": p["kind"], "measure": p["measure"]}
    box.enqueue(env, **meta, created_at=p["created_at"])
    assert parsed == []
    q, env2 = make(key)
    box.enqueue(bytes(env2), report_id=q["report_id"], kind=q["kind"], measure=q["measure"],
                created_at=q["created_at"])  # fmt: skip
    assert parsed == [env2]
    assert queued_ids(box) == [p["report_id"], q["report_id"]]
    assert [e for _, e in box.batch(10)] == [env, env2]
    assert all(type(e) is bytes for _, e in box.batch(10))


@pytest.mark.parametrize("external", [False, True], ids=["signed-in-process", "external-bytes"])
def test_enqueue_metadata_must_agree_on_both_paths(
    box: Outbox, key: Ed25519PrivateKey, external: bool
) -> None:
    when = dt.datetime(2026, 5, 6, 7, 8, 9, tzinfo=dt.timezone.utc)
    p, signed = make(key, now=when)
    env = bytes(signed) if external else signed
    good = {"report_id": p["report_id"], "kind": p["kind"], "measure": p["measure"]}
    for field, value in (
        ("kind", "lift"),
        ("kind", "gossip"),
        ("measure", "travel.flight"),
        ("measure", None),
        ("report_id", "a" * 32),
        ("report_id", "not hex"),
        ("created_at", "2026-05-06T07:08:10Z"),
        ("created_at", when + dt.timedelta(seconds=1)),
    ):
        args: dict[str, Any] = {**good, "created_at": when, field: value}
        with pytest.raises(InvalidReport, match=field):
            box.enqueue(env, **args)
    for bad_time in ("yesterday", when.replace(tzinfo=None), 12345):
        with pytest.raises(InvalidReport, match="created_at"):
            box.enqueue(env, **good, created_at=bad_time)  # type: ignore[arg-type]
    assert box.pending_count() == 0
    # The same instant written any way is accepted: text, UTC, another zone, sub-second.
    cst = dt.timezone(dt.timedelta(hours=8))
    for created in ("2026-05-06T07:08:09Z", "2026-05-06T15:08:09+08:00", when,
                    when.astimezone(cst), when.replace(microsecond=999)):  # fmt: skip
        box.enqueue(env, **good, created_at=created)
    assert box.pending_count() == 1
    assert box.stats_by(when, when + dt.timedelta(seconds=1)) == {(MEASURE, "interception"): 1}


def test_enqueue_refuses_external_envelopes_with_bad_content(
    box: Outbox, key: Ed25519PrivateKey
) -> None:
    from intercept_sdk._protocol.signing import (
        MANIFEST_TYPE,
        REPORT_TYPE,
        Envelope,
        SigningKey,
        sign_envelope,
    )

    p, env = make(key)
    meta = {"report_id": p["report_id"], "kind": p["kind"], "measure": p["measure"],
            "created_at": p["created_at"]}  # fmt: skip
    sk = SigningKey(key)
    payload = canonical_json(p)
    not_a_report = canonical_json({**p, "type": "manifest"})
    for blob in (
        sign_envelope(MANIFEST_TYPE, payload, [sk]).to_bytes(),  # wrong envelope type
        sign_envelope(REPORT_TYPE, not_a_report, [sk]).to_bytes(),  # payload not a report
        sign_envelope(REPORT_TYPE, b"[1, 2]", [sk]).to_bytes(),  # payload not an object
        Envelope(REPORT_TYPE, payload, ()).to_bytes(),  # no signature
        env.replace(b'"payload":"', b'"payload":"!'),  # payload not base64
        env[:-1],  # truncated
    ):
        with pytest.raises(InvalidReport):
            box.enqueue(blob, **meta)
    assert box.pending_count() == 0
    box.enqueue(bytes(env), **meta)  # the same report, intact, is fine as plain bytes
    assert box.pending_count() == 1


def test_has_pending(box: Outbox, key: Ed25519PrivateKey) -> None:
    assert not box.has_pending()
    rid = put(box, key)
    assert box.has_pending()
    box.mark_dead([rid], 400, "refused")
    assert not box.has_pending()  # dead letters are not pending
    box.requeue_dead()
    assert box.has_pending()
    box.mark_sent([rid])
    assert not box.has_pending()


def test_dead_letters_keep_reason_and_can_be_requeued(box: Outbox, key: Ed25519PrivateKey) -> None:
    ids = [put(box, key) for _ in range(3)]
    assert box.mark_dead(ids[:2], 403, "signature does not verify") == 2
    assert box.pending_count() == 1
    dead = box.dead_letters()
    assert [d.report_id for d in dead] == ids[:2]
    d0 = dead[0]
    assert isinstance(d0, DeadLetter)
    assert (d0.kind, d0.measure, d0.status, d0.reason) == (
        "interception",
        MEASURE,
        403,
        "signature does not verify",
    )
    assert abs((d0.time - dt.datetime.now(dt.timezone.utc)).total_seconds()) < 60
    assert box.dead_count() == 2
    # Enqueuing a dead report again does nothing (same id = same report).
    assert box.requeue_dead([ids[0]]) == 1
    assert queued_ids(box) == [ids[2], ids[0]]  # back at the end
    assert box.requeue_dead() == 1
    assert box.dead_count() == 0
    assert box.pending_count() == 3
    box.mark_dead([ids[1]], 400, "bad")
    assert box.discard_dead([ids[1]]) == 1
    assert box.dead_letters() == []
    assert box.has_report(ids[1])  # metadata stays


def test_stats_by_counts_every_state(box: Outbox, key: Ed25519PrivateKey) -> None:
    t = dt.datetime(2026, 2, 1, tzinfo=dt.timezone.utc)
    a = put(box, key, now=t)
    b = put(box, key, now=t + dt.timedelta(seconds=1))
    put(box, key, kind="lift", now=t)
    put(box, key, kind="objection", now=t)
    put(box, key, now=t + dt.timedelta(days=100))
    box.mark_sent([a])
    box.mark_dead([b], 400, "x")
    stats = box.stats_by(t, t + dt.timedelta(days=1))
    assert stats == {(MEASURE, "interception"): 2, (MEASURE, "lift"): 1, (None, "objection"): 1}
    assert box.stats_by(t + dt.timedelta(seconds=1), t + dt.timedelta(seconds=2)) == {
        (MEASURE, "interception"): 1
    }


def test_prune_journal_forgets_only_old_sent(box: Outbox, key: Ed25519PrivateKey) -> None:
    t = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    old_sent, old_pending = put(box, key, now=t), put(box, key, now=t)
    new_sent = put(box, key, now=t + dt.timedelta(days=200))
    box.mark_sent([old_sent, new_sent])
    assert box.prune_journal(t + dt.timedelta(days=100)) == 1
    assert not box.has_report(old_sent)
    assert box.has_report(old_pending)
    assert box.has_report(new_sent)


def test_durable_settings_permissions_and_reopen(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    path = tmp_path / "new" / "outbox.sqlite"
    box = Outbox(path)
    rid = put(box, key)
    conn = box._conn()
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    box.close()
    box.close()  # idempotent
    with pytest.raises(ReportError, match="closed"):
        box.pending_count()
    with Outbox(path) as again:
        assert queued_ids(again) == [rid]


def test_unusable_file_is_a_report_error(tmp_path: Path) -> None:
    bad = tmp_path / "outbox.sqlite"
    bad.write_bytes(b"this is not a database" * 100)
    with pytest.raises(ReportError):
        Outbox(bad)
    with pytest.raises(ConfigurationError):
        Outbox(tmp_path / "o.sqlite", max_bytes=10)
    with pytest.raises(ConfigurationError):
        Outbox(tmp_path / "o.sqlite", warn_ratio=0)


def test_threads_enqueue_concurrently(box: Outbox, key: Ed25519PrivateKey) -> None:
    made = [make(key) for _ in range(200)]
    errors: list[BaseException] = []

    def work(part: list[tuple[dict[str, Any], bytes]]) -> None:
        try:
            for p, env in part:
                box.enqueue(env, report_id=p["report_id"], kind=p["kind"],
                            measure=p["measure"], created_at=p["created_at"])  # fmt: skip
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(made[i::8],)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert set(queued_ids(box)) == {p["report_id"] for p, _ in made}


def test_disk_cap_warns_then_refuses_and_drops_nothing(
    tmp_path: Path, key: Ed25519PrivateKey, caplog: pytest.LogCaptureFixture
) -> None:
    box = Outbox(tmp_path / "outbox.sqlite", max_bytes=256 * 1024, warn_ratio=0.8)
    accepted: list[str] = []
    warned_at: int | None = None

    def fill() -> None:
        nonlocal warned_at
        for i in range(10_000):
            accepted.append(put(box, key, pad=2000))
            if warned_at is None and caplog.records:
                warned_at = i

    with (
        caplog.at_level(logging.WARNING, logger="intercept_sdk.outbox"),
        pytest.raises(OutboxFull) as full,
    ):
        fill()
    message = str(full.value)
    assert "full" in message
    assert "nothing was dropped" in message
    assert "max_bytes" in message
    warnings = [r for r in caplog.records if r.name == "intercept_sdk.outbox"]
    assert len(warnings) == 1, "one warning per crossing"
    assert warnings[0].levelno == logging.WARNING
    assert "FULL" in warnings[0].getMessage()
    assert warned_at is not None
    assert warned_at < len(accepted) - 3
    # Nothing dropped: every report accepted before the cap is still queued.
    assert queued_ids(box) == accepted
    assert box.used_bytes() <= 256 * 1024
    # Draining below the warning level re-arms the warning; the cap frees up again.
    box.mark_sent(accepted[: len(accepted) * 3 // 4])
    caplog.clear()
    more: list[str] = []
    with caplog.at_level(logging.WARNING, logger="intercept_sdk.outbox"):
        while not caplog.records and len(more) < len(accepted):
            more.append(put(box, key, pad=2000))
    assert set(more) <= set(queued_ids(box))
    assert len([r for r in caplog.records if "FULL" in r.getMessage()]) == 1
    box.close()


def test_fork_child_reopens_and_parent_keeps_working(box: Outbox, key: Ed25519PrivateKey) -> None:
    first = put(box, key)
    p, env = make(key)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 1
        try:
            assert box._conn_obj is None  # the inherited connection was set aside
            box.enqueue(env, report_id=p["report_id"], kind=p["kind"], measure=p["measure"],
                        created_at=p["created_at"])  # fmt: skip
            code = 0 if box.pending_count() == 2 else 3
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert queued_ids(box) == [first, p["report_id"]]
    put(box, key)
    assert box.pending_count() == 3


# =========================================================================== RetryPolicy


def test_backoff_is_exponential_capped_and_fully_jittered() -> None:
    top = RetryPolicy(initial=0.5, maximum=10.0, random=lambda: 1.0)
    assert [top.backoff(n) for n in range(1, 7)] == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0]
    assert top.backoff(10_000) == 10.0
    assert RetryPolicy(random=lambda: 0.0).backoff(5) == 0.0
    rng = random.Random(1)
    jit = RetryPolicy(initial=1.0, maximum=100.0, random=rng.random)
    samples = [jit.backoff(4) for _ in range(500)]
    assert 0 <= min(samples) < 0.5
    assert 7.5 < max(samples) <= 8.0


def test_retry_after_seconds_and_http_date() -> None:
    """The sender's policy reads Retry-After with the one parser (see test_retry.py)."""
    now = 1_800_000_000.0
    pol = RetryPolicy(random=lambda: 0.0, wall_clock=lambda: now, max_retry_after=600)
    assert pol.parse_retry_after("7") == 7.0
    assert pol.parse_retry_after(" 7 ") == 7.0
    assert pol.parse_retry_after(" 2.5 ") is None  # not delta-seconds (RFC 9110)
    assert pol.parse_retry_after(email.utils.formatdate(now + 42, usegmt=True)) == 42.0
    assert pol.parse_retry_after(email.utils.formatdate(now - 42, usegmt=True)) == 0.0
    assert pol.parse_retry_after("999999") == 600.0
    for junk in (None, "", "soon", "nan", "inf", "-5"):
        assert pol.parse_retry_after(junk) is None
    assert pol.delay(1, pol.parse_retry_after("7")) == 7.0
    assert RetryPolicy(random=lambda: 1.0, initial=30).delay(1, 7.0) == 30.0


# =========================================================================== Sender (mock)


class FakeTime:
    """Monotonic clock and sleep that only move when slept on."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []
        self.lock = threading.Lock()

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        with self.lock:
            self.sleeps.append(seconds)
            self.now += seconds


class Platform:
    """A scripted MockTransport platform: ``script`` decides each response."""

    def __init__(self, script: Callable[[httpx.Request, list[str]], httpx.Response]) -> None:
        self.script = script
        self.requests: list[list[str]] = []
        self.bodies: list[dict[str, Any]] = []
        self.accepted: list[str] = []
        self.lock = threading.Lock()

    def handler(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        ids = [json.loads(_payload(e))["report_id"] for e in body["reports"]]
        with self.lock:
            self.requests.append(ids)
            self.bodies.append(body)
        return self.script(request, ids)

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handler)


def _payload(envelope_obj: dict[str, Any]) -> bytes:
    import base64

    return base64.b64decode(envelope_obj["payload"])


def ok(ids: list[str]) -> httpx.Response:
    return httpx.Response(200, json={"accepted": ids, "duplicates": []})


def make_sender(
    box: Outbox, platform: Platform, clock: FakeTime | None = None, **kw: Any
) -> Sender:
    clock = clock or FakeTime()
    kw.setdefault("retry", RetryPolicy(initial=1.0, maximum=60.0, random=lambda: 1.0))
    return Sender(
        box,
        "https://platform.example/",
        transport=platform.transport(),
        sleep=clock.sleep,
        clock=clock.monotonic,
        **kw,
    )


def test_upload_format_and_ack(box: Outbox, key: Ed25519PrivateKey) -> None:
    ids = [put(box, key) for _ in range(3)]
    envs = {rid: env for rid, env in box.batch(10)}
    seen_headers: list[httpx.Headers] = []

    def script(req: httpx.Request, got: list[str]) -> httpx.Response:
        seen_headers.append(req.headers)
        assert str(req.url) == "https://platform.example/reports"
        assert req.method == "POST"
        return ok(got)

    plat = Platform(script)
    sender = make_sender(box, plat)
    result = sender.send_once()
    assert (result.sent, result.dead, result.retry_in) == (3, 0, None)
    assert seen_headers[0]["content-type"] == "application/json"
    assert plat.bodies[0] == {"reports": [json.loads(envs[rid]) for rid in ids]}
    assert box.pending_count() == 0
    assert box.sent_count() == 3
    assert sender.send_once().idle
    assert sender.last_error is None
    assert sender.last_success is not None
    json.dumps(sender.status())


def test_429_retry_after_is_honoured(box: Outbox, key: Ed25519PrivateKey) -> None:
    put(box, key)
    answers = iter([httpx.Response(429, headers={"Retry-After": "7"}), None])

    def script(req: httpx.Request, got: list[str]) -> httpx.Response:
        return next(answers) or ok(got)

    plat = Platform(script)
    sender = make_sender(box, plat, retry=RetryPolicy(initial=0.1, random=lambda: 1.0))
    first = sender.send_once()
    assert first.retry_in == 7.0
    assert first.sent == 0
    assert box.pending_count() == 1
    err = sender.last_error
    assert err is not None
    assert (err.kind, err.status) == ("http", 429)
    assert sender.send_once().sent == 1


def test_retry_after_http_date_in_the_thread(box: Outbox, key: Ed25519PrivateKey) -> None:
    put(box, key)
    wall = 1_900_000_000.0
    answers = iter(
        [
            httpx.Response(
                503, headers={"Retry-After": email.utils.formatdate(wall + 20, usegmt=True)}
            )
        ]
    )

    def script(req: httpx.Request, got: list[str]) -> httpx.Response:
        return next(answers, None) or ok(got)

    clock = FakeTime()
    plat = Platform(script)
    sender = make_sender(
        box, plat, clock, retry=RetryPolicy(random=lambda: 0.0, wall_clock=lambda: wall)
    )
    sender.start()
    assert sender.flush(5)
    sender.close(2)
    assert 20.0 in clock.sleeps
    assert len(plat.requests) == 2


def test_500_storm_then_recovery(box: Outbox, key: Ed25519PrivateKey) -> None:
    ids = [put(box, key) for _ in range(10)]
    storm = {"left": 6}

    def script(req: httpx.Request, got: list[str]) -> httpx.Response:
        if storm["left"]:
            storm["left"] -= 1
            return httpx.Response(500, text="boom")
        return ok(got)

    rng = random.Random(3)
    sender = make_sender(
        box, Platform(script), retry=RetryPolicy(initial=0.5, maximum=5.0, random=rng.random)
    )
    delays = []
    for _ in range(6):
        r = sender.send_once()
        assert r.retry_in is not None
        assert r.sent == 0
        delays.append(r.retry_in)
    ceilings = [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]
    assert all(0 <= d <= c for d, c in zip(delays, ceilings, strict=True))
    assert sender.status()["consecutive_failures"] == 6
    assert sender.last_error is not None
    assert sender.last_error.status == 500
    assert sender.send_once().sent == 10
    assert sender.status()["consecutive_failures"] == 0
    assert box.sent_count() == len(ids)


@pytest.mark.parametrize(
    "exc",
    [
        httpx.ConnectError("refused"),
        httpx.ReadTimeout("slow"),
        httpx.RemoteProtocolError("eof"),
    ],
)
def test_network_errors_are_retried(
    box: Outbox, key: Ed25519PrivateKey, exc: httpx.HTTPError
) -> None:
    put(box, key)
    failures = iter([exc])

    def script(req: httpx.Request, got: list[str]) -> httpx.Response:
        e = next(failures, None)
        if e is not None:
            raise e
        return ok(got)

    sender = make_sender(box, Platform(script))
    r = sender.send_once()
    assert r.retry_in is not None
    assert box.pending_count() == 1
    assert sender.last_error is not None
    assert sender.last_error.kind == "network"
    assert sender.send_once().sent == 1


@pytest.mark.parametrize("status", [400, 401, 403, 422, 409])
def test_refused_batches_become_visible_dead_letters(
    box: Outbox, key: Ed25519PrivateKey, status: int
) -> None:
    ids = [put(box, key) for _ in range(4)]
    plat = Platform(lambda req, got: httpx.Response(status, json={"error": "nope"}))
    sender = make_sender(box, plat)
    r = sender.send_once()
    assert r.dead == 4
    assert r.retry_in is None
    dead = box.dead_letters()
    assert {d.report_id for d in dead} == set(ids)
    assert all(d.status == status and "nope" in d.reason for d in dead)
    assert box.pending_count() == 0
    if status in (401, 409):
        assert len(plat.requests) == 1  # not splittable: one request
    else:
        assert len(plat.requests) == 7  # 4 -> 2+2 -> 1+1+1+1
    assert sender.last_error is not None
    assert sender.last_error.status == status


def test_poison_report_is_isolated_by_bisection(box: Outbox, key: Ed25519PrivateKey) -> None:
    ids = [put(box, key) for _ in range(16)]
    poison = ids[11]

    def script(req: httpx.Request, got: list[str]) -> httpx.Response:
        if poison in got:
            return httpx.Response(400, json={"error": "report 0: malformed"})
        return ok(got)

    plat = Platform(script)
    r = make_sender(box, plat).send_once()
    assert (r.sent, r.dead) == (15, 1)
    assert [d.report_id for d in box.dead_letters()] == [poison]
    assert len(plat.requests) <= 2 * 4 + 1


def test_413_splits_until_it_fits(box: Outbox, key: Ed25519PrivateKey) -> None:
    ids = [put(box, key) for _ in range(10)]
    big = put(box, key, pad=20_000)

    def script(req: httpx.Request, got: list[str]) -> httpx.Response:
        if len(req.content) > 8000:
            return httpx.Response(413, text="too large")
        return ok(got)

    r = make_sender(box, Platform(script)).send_once()
    assert r.sent == 10
    assert r.dead == 1
    assert box.sent_count() == len(ids)
    (dead,) = box.dead_letters()
    assert (dead.report_id, dead.status) == (big, 413)


@pytest.mark.parametrize(
    "response",
    [
        httpx.Response(200, text="<html>captive portal</html>"),
        httpx.Response(200, json={"accepted": "all"}),
        httpx.Response(200, json={"accepted": [], "duplicates": []}),
        httpx.Response(202, json={}),
        httpx.Response(302, headers={"Location": "https://elsewhere/"}),
        httpx.Response(404, text="no such endpoint"),
    ],
)
def test_unconvincing_answers_are_retried_not_trusted(
    box: Outbox, key: Ed25519PrivateKey, response: httpx.Response
) -> None:
    put(box, key)
    sender = make_sender(box, Platform(lambda req, got: response))
    r = sender.send_once()
    assert r.retry_in is not None
    assert r.sent == 0
    assert r.dead == 0
    assert box.pending_count() == 1
    assert box.dead_count() == 0


def test_partial_ack_and_duplicates(box: Outbox, key: Ed25519PrivateKey) -> None:
    ids = [put(box, key) for _ in range(4)]

    def script(req: httpx.Request, got: list[str]) -> httpx.Response:
        return httpx.Response(200, json={"accepted": [got[0]], "duplicates": [got[1], "x"]})

    r = make_sender(box, Platform(script)).send_once()
    assert r.sent == 2
    assert queued_ids(box) == ids[2:]


def test_rate_bound_and_batch_size(box: Outbox, key: Ed25519PrivateKey) -> None:
    for _ in range(25):
        put(box, key)
    clock = FakeTime()
    plat = Platform(lambda req, got: ok(got))
    sender = make_sender(box, plat, clock, batch_size=500, max_rate=10.0)
    assert sender.batch_size == 10  # a batch never exceeds one second's worth
    starts = []
    while not sender.send_once().idle:
        starts.append(clock.now)
    assert [len(r) for r in plat.requests] == [10, 10, 5]
    assert starts == [1000.0, 1001.0, 1002.0]  # 10 reports per second


def test_body_size_bound(box: Outbox, key: Ed25519PrivateKey) -> None:
    for _ in range(6):
        put(box, key, pad=3000)
    plat = Platform(lambda req, got: ok(got))
    make_sender(box, plat, max_body_bytes=10_000).send_once()
    assert len(plat.requests[0]) == 2


def test_reports_url_and_offline_platforms(box: Outbox) -> None:
    assert reports_url("https://p.example/base/") == "https://p.example/base/reports"
    assert reports_url("http://127.0.0.1:8080") == "http://127.0.0.1:8080/reports"
    assert reports_url("file:///srv/site") is None
    assert reports_url("/srv/site") is None
    with pytest.raises(ConfigurationError):
        reports_url("ftp://p.example")
    with pytest.raises(ConfigurationError):
        reports_url("https://")
    with pytest.raises(ConfigurationError, match="offline"):
        Sender(box, "file:///srv/site")
    with pytest.raises(ConfigurationError):
        Sender(box, "https://p.example", max_rate=0)


def test_notify_wakes_the_idle_sender_at_once(box: Outbox, key: Ed25519PrivateKey) -> None:
    plat = Platform(lambda req, got: ok(got))
    sender = Sender(box, "https://p.example", transport=plat.transport(), interval=60)
    sender.start()
    time.sleep(0.1)  # let it go idle for 60 s
    put(box, key)
    t0 = time.monotonic()
    sender.notify()
    while box.pending_count() and time.monotonic() - t0 < 5:
        time.sleep(0.01)
    assert box.pending_count() == 0
    assert time.monotonic() - t0 < 1.0
    sender.close(1)


def _fill_box(box: Outbox, key: Ed25519PrivateKey, n: int) -> list[str]:
    made = [make(key, entry=f"E{i}") for i in range(n)]
    conn = box._conn()
    conn.execute("PRAGMA synchronous=OFF")  # set-up only
    for q, env in made:
        box.enqueue(env, report_id=q["report_id"], kind=q["kind"], measure=q["measure"],
                    created_at=q["created_at"])  # fmt: skip
    conn.execute("PRAGMA synchronous=FULL")
    return [q["report_id"] for q, _ in made]


def test_thread_marks_a_batch_while_uploading_the_next(
    box: Outbox, key: Ed25519PrivateKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The background thread overlaps marking batch k sent with uploading batch k+1.

    Nothing is uploaded twice, every report is marked sent once acknowledged, and the
    order is kept.
    """
    ids = _fill_box(box, key, 230)
    marking = threading.Event()
    overlapped: list[bool] = []
    real_mark = box.mark_sent

    def slow_mark(batch_ids: Any) -> int:
        marking.set()
        time.sleep(0.05)
        try:
            return real_mark(batch_ids)
        finally:
            marking.clear()

    monkeypatch.setattr(box, "mark_sent", slow_mark)

    def script(request: httpx.Request, got: list[str]) -> httpx.Response:
        overlapped.append(marking.is_set())
        return ok(got)

    plat = Platform(script)
    sender = Sender(box, "https://p.example", transport=plat.transport(), batch_size=50,
                    max_rate=1e9)  # fmt: skip
    assert sender.flush(20)
    sender.close(2)
    assert [rid for batch in plat.requests for rid in batch] == ids  # once each, in order
    assert [len(b) for b in plat.requests] == [50, 50, 50, 50, 30]
    assert box.pending_count() == 0 and box.sent_count() == 230
    assert any(overlapped[1:]), "no upload overlapped the marking of the previous batch"


def test_thread_step_keeps_reports_whose_marking_failed(
    box: Outbox, key: Ed25519PrivateKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = _fill_box(box, key, 120)
    real_mark = box.mark_sent
    failures = [2]

    def flaky_mark(batch_ids: Any) -> int:
        if failures[0]:
            failures[0] -= 1
            raise ReportError("disk trouble")
        return real_mark(batch_ids)

    monkeypatch.setattr(box, "mark_sent", flaky_mark)
    plat = Platform(lambda req, got: ok(got))
    sender = Sender(box, "https://p.example", transport=plat.transport(), batch_size=40,
                    max_rate=1e9, interval=0.05)  # fmt: skip
    assert sender.flush(20)
    sender.close(2)
    uploaded = [rid for batch in plat.requests for rid in batch]
    assert set(uploaded) == set(ids)  # nothing lost ...
    assert len(uploaded) > len(ids)  # ... and what could not be marked was sent again
    assert box.pending_count() == 0 and box.sent_count() == 120


def test_thread_step_partial_ack_and_refusals_as_send_once(
    box: Outbox, key: Ed25519PrivateKey
) -> None:
    ids = _fill_box(box, key, 12)
    poison = ids[7]
    answered: list[int] = []

    def script(request: httpx.Request, got: list[str]) -> httpx.Response:
        answered.append(len(got))
        if poison in got:
            return httpx.Response(422, json={"error": "bad report"})
        if len(answered) == 1:
            return ok(got[:2])  # acknowledges only part of the first batch
        return ok(got)

    plat = Platform(script)
    sender = Sender(box, "https://p.example", transport=plat.transport(), batch_size=4,
                    max_rate=1e9)  # fmt: skip
    assert sender.flush(20)
    sender.close(2)
    assert box.pending_count() == 0
    assert [d.report_id for d in box.dead_letters()] == [poison]
    assert box.sent_count() == 11
    uploaded = {rid for batch in plat.requests for rid in batch}
    assert uploaded == set(ids)


def test_thread_step_sends_reports_numbered_from_the_start_again(
    box: Outbox, key: Ed25519PrivateKey
) -> None:
    """After the queue drained, new reports reuse low sequence numbers: still sent."""
    plat = Platform(lambda req, got: ok(got))
    sender = Sender(box, "https://p.example", transport=plat.transport(), batch_size=5,
                    max_rate=1e9)  # fmt: skip
    first = _fill_box(box, key, 23)
    assert sender.flush(20)
    second = _fill_box(box, key, 3)
    assert box._batch_after(10, -1)[0][0] <= 23  # numbered from the start again
    sender.notify()
    assert sender.flush(20)
    sender.close(2)
    assert [rid for batch in plat.requests for rid in batch] == first + second
    assert box.sent_count() == 26


def test_notify_never_cuts_a_backoff_short_and_close_interrupts_it(
    box: Outbox, key: Ed25519PrivateKey
) -> None:
    plat = Platform(lambda req, got: httpx.Response(503, headers={"Retry-After": "30"}))
    sender = Sender(box, "https://p.example", transport=plat.transport(), interval=60)
    put(box, key)
    sender.notify()
    deadline = time.monotonic() + 5
    while not plat.requests and time.monotonic() < deadline:
        time.sleep(0.01)
    for _ in range(5):
        put(box, key)
        sender.notify()
    time.sleep(0.3)
    assert len(plat.requests) == 1  # still honouring Retry-After: 30
    assert sender.flush(0.2) is False
    t0 = time.monotonic()
    sender.close(timeout=0.5)
    assert time.monotonic() - t0 < 1.0
    assert not sender.running
    sender.close()  # idempotent
    assert box.pending_count() == 6  # nothing lost


# =========================================================================== real server


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients killed with SIGKILL reset their connections: expected here


class RefServer:
    """A loopback platform: verifies signatures, de-duplicates, can fail or hang."""

    def __init__(self, keys: dict[str, Ed25519PublicKey]) -> None:
        self.keys = keys
        self.lock = threading.Lock()
        self.seen: dict[str, int] = {}
        self.first_seen: dict[str, float] = {}
        self.requests = 0
        self.mode = "ok"  # ok | 503 | hang
        self.delay = 0.0
        self.release = threading.Event()
        self.port = 0
        self.conns: set[socket.socket] = set()
        self.httpd: ThreadingHTTPServer | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def setup(self) -> None:
                super().setup()
                with outer.lock:
                    outer.conns.add(self.connection)

            def finish(self) -> None:
                with outer.lock:
                    outer.conns.discard(self.connection)
                with contextlib.suppress(OSError):
                    super().finish()

            def reply(self, status: int, obj: Any, headers: dict[str, str] | None = None) -> None:
                data = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with outer.lock:
                    outer.requests += 1
                if outer.mode == "hang":
                    outer.release.wait(30)
                if outer.mode == "503":
                    self.reply(503, {"error": "maintenance"}, {"Retry-After": "0"})
                    return
                if outer.delay:
                    time.sleep(outer.delay)
                accepted, dups = [], []
                for env in json.loads(body)["reports"]:
                    try:
                        payload = verify_report(canonical_json(env), outer.keys)
                    except Exception as exc:
                        self.reply(403, {"error": str(exc)})
                        return
                    rid = payload["report_id"]
                    with outer.lock:
                        if rid in outer.seen:
                            dups.append(rid)
                        else:
                            accepted.append(rid)
                            outer.first_seen[rid] = time.monotonic()
                        outer.seen[rid] = outer.seen.get(rid, 0) + 1
                self.reply(200, {"accepted": accepted, "duplicates": dups})

        httpd = _QuietServer(("127.0.0.1", self.port), Handler)
        httpd.daemon_threads = True
        self.port = httpd.server_address[1]
        self.httpd = httpd
        threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()  # fmt: skip

    def stop(self) -> None:
        """Go down hard: no listener, and every open connection is cut."""
        assert self.httpd is not None
        self.httpd.shutdown()
        self.httpd.server_close()
        self.httpd = None
        with self.lock:
            conns = list(self.conns)
        for c in conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.release.set()
        if self.httpd is not None:
            self.stop()


@pytest.fixture
def server(key: Ed25519PrivateKey) -> Iterator[RefServer]:
    srv = RefServer({SUB: key.public_key()})
    yield srv
    srv.close()


def _read_line(proc: subprocess.Popen[str], timeout: float) -> str:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    if not ready:
        raise AssertionError(f"child said nothing for {timeout} s")
    return proc.stdout.readline().strip()


ENQUEUER = r"""
import sys
from intercept_sdk._client.outbox import Outbox
from intercept_sdk._protocol.reports import build_report, sign_report
from intercept_sdk._protocol.signing import load_private_key
path, keyfile, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
key = load_private_key(keyfile)
box = Outbox(path)
print("ready", flush=True)
for i in range(count):
    p = build_report("interception", subscriber_id="hotel-001", measure="consumption.star_hotel",
                     entry_id=f"E{i}", case_no="(2019)冀0203执123号", list_version=1,
                     outcome="blocked")
    box.enqueue(sign_report(p, key), report_id=p["report_id"], kind=p["kind"],
                measure=p["measure"], created_at=p["created_at"])
    sys.stdout.write(p["report_id"] + "\n")
    sys.stdout.flush()
box.close()
"""

SENDER = r"""
import sys
from intercept_sdk._client.outbox import Outbox, Sender
from intercept_sdk._client.retry import RetryPolicy
path, url, rate, batch = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
box = Outbox(path)
sender = Sender(box, url, batch_size=batch, max_rate=rate, interval=0.2,
                retry=RetryPolicy(initial=0.02, maximum=0.2))
sender.start()
print("ready", flush=True)
ok = sender.flush(120)
sender.close(5)
box.close()
print("drained" if ok else "NOT drained", flush=True)
sys.exit(0 if ok else 1)
"""


def _spawn(script: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", script, *args],
        stdout=subprocess.PIPE,
        text=True,
        env=CHILD_ENV,
    )


@pytest.fixture
def keyfile(tmp_path: Path, key: Ed25519PrivateKey) -> Path:
    path = tmp_path / "report.ed25519.pem"
    write_private_key(path, key)
    return path


def _enqueue_in_child(path: Path, keyfile: Path, count: int) -> list[str]:
    proc = _spawn(ENQUEUER, str(path), str(keyfile), str(count))
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0
    lines = out.split()
    assert lines[0] == "ready"
    return lines[1:]


def _kill_sender_repeatedly(
    tmp_path: Path,
    keyfile: Path,
    server: RefServer,
    kills: int,
    rate: float,
    batch: int,
    seed: int,
) -> None:
    path = tmp_path / "outbox.sqlite"
    ids = _enqueue_in_child(path, keyfile, 500)
    assert len(set(ids)) == 500
    server.delay = 0.002  # widen the window between the server's commit and our mark_sent
    rng = random.Random(seed)
    progress: list[int] = []
    for _ in range(kills):
        before = len(server.seen)
        proc = _spawn(SENDER, str(path), server.url, str(rate), str(batch))
        assert _read_line(proc, 30) == "ready"
        if rng.random() < 0.8:  # mostly mid-stream: after this sender delivered something
            deadline = time.monotonic() + 10
            while before == len(server.seen) < len(ids) and time.monotonic() < deadline:
                time.sleep(0.005)
        time.sleep(rng.uniform(0.0, 0.3))
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        assert proc.stdout is not None
        proc.stdout.close()
        progress.append(len(server.seen) - before)
    print("reports newly delivered per killed sender:", progress)
    assert sum(progress) > 0
    final = _spawn(SENDER, str(path), server.url, "1000", "50")
    out, _ = final.communicate(timeout=120)
    assert final.returncode == 0, out
    # Duplicates may cross the wire; the server saw every report, and no other.
    assert set(server.seen) == set(ids)
    resent = sum(n - 1 for n in server.seen.values())
    print(f"{kills} kills: {len(server.seen)} unique reports, {resent} resent on the wire")
    with Outbox(path) as box:
        assert box.pending_count() == 0
        assert box.sent_count() == 500
        assert box.dead_count() == 0
        assert box._conn().execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_sender_killed_10_times_delivers_all_exactly_once(
    tmp_path: Path, keyfile: Path, server: RefServer
) -> None:
    _kill_sender_repeatedly(tmp_path, keyfile, server, kills=10, rate=120, batch=10, seed=10)


def _only_when_selected(request: pytest.FixtureRequest) -> None:
    if "slow" not in (request.config.getoption("markexpr") or ""):
        pytest.skip("a long run: select it with -m slow")


@pytest.mark.slow
def test_sender_killed_50_times_delivers_all_exactly_once(
    tmp_path: Path, keyfile: Path, server: RefServer, request: pytest.FixtureRequest
) -> None:
    _only_when_selected(request)
    _kill_sender_repeatedly(tmp_path, keyfile, server, kills=50, rate=16, batch=4, seed=50)


def test_kill_9_during_enqueue_loses_nothing_that_returned(tmp_path: Path, keyfile: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    rng = random.Random(9)
    returned: list[str] = []
    for _ in range(4):
        proc = _spawn(ENQUEUER, str(path), str(keyfile), "1000000")
        assert _read_line(proc, 30) == "ready"
        time.sleep(rng.uniform(0.2, 0.6))
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        assert proc.stdout is not None
        rest = proc.stdout.read()
        proc.stdout.close()
        # Only complete lines: printed after enqueue() returned.
        returned += [line for line in rest.split("\n")[:-1] if line]
    assert len(returned) > 20
    with Outbox(path) as box:
        queued = set(queued_ids(box))
        assert set(returned) <= queued
        assert box._conn().execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        # At most one report per kill was committed without being printed.
        assert len(queued) - len(set(returned)) <= 4


def test_outage_backlog_drains_at_bounded_rate(
    tmp_path: Path, key: Ed25519PrivateKey, server: RefServer
) -> None:
    box = Outbox(tmp_path / "outbox.sqlite")
    rate, batch = 100.0, 20
    sender = Sender(box, server.url, batch_size=batch, max_rate=rate, interval=0.2,
                    retry=RetryPolicy(initial=0.05, maximum=0.25))  # fmt: skip
    sender.start()
    put(box, key)
    assert sender.flush(10)
    server.stop()  # outage: connection refused
    ids = []
    for _ in range(200):
        ids.append(put(box, key))
        sender.notify()
    time.sleep(0.5)
    assert box.pending_count() == 200
    err = sender.last_error
    assert err is not None
    assert err.kind == "network"
    server.start()  # back, same port
    t0 = time.monotonic()
    assert sender.flush(30)
    assert set(ids) <= set(server.seen)
    assert box.pending_count() == 0
    times = sorted(server.first_seen[rid] for rid in ids)
    span = times[-1] - times[0]
    # 200 reports at <= 100/s in batches of 20: at least (200 - 20) / 100 s.
    assert span >= (200 - batch) / rate * 0.9, span
    for i, t in enumerate(times):  # no second holds more than rate + one batch
        j = i
        while j < len(times) and times[j] < t + 1.0:
            j += 1
        assert j - i <= rate + batch
    print(f"backlog of 200 drained in {time.monotonic() - t0:.2f} s, span {span:.2f} s")
    sender.close(2)
    box.close()


def test_close_is_bounded_when_the_server_hangs(
    tmp_path: Path, key: Ed25519PrivateKey, server: RefServer
) -> None:
    box = Outbox(tmp_path / "outbox.sqlite")
    server.mode = "hang"
    sender = Sender(box, server.url, interval=0.2)
    put(box, key)
    sender.notify()
    deadline = time.monotonic() + 5
    while server.requests == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.requests == 1
    t0 = time.monotonic()
    sender.close(timeout=1)
    elapsed = time.monotonic() - t0
    assert elapsed < 2.0, elapsed
    sender.close(timeout=1)  # idempotent, immediate
    assert time.monotonic() - t0 < 2.1
    assert box.pending_count() == 1  # not acknowledged: still queued
    server.release.set()
    box.close()


def test_flush_times_out_while_the_platform_is_down(
    tmp_path: Path, key: Ed25519PrivateKey, server: RefServer
) -> None:
    box = Outbox(tmp_path / "outbox.sqlite")
    server.mode = "503"
    sender = Sender(box, server.url, retry=RetryPolicy(initial=0.05, maximum=0.1))
    put(box, key)
    t0 = time.monotonic()
    assert sender.flush(0.5) is False
    assert 0.45 < time.monotonic() - t0 < 1.5
    assert sender.last_error is not None
    assert sender.last_error.status == 503
    server.mode = "ok"
    assert sender.flush(5)
    sender.close()
    box.close()


def test_forked_child_gets_a_fresh_sender(
    tmp_path: Path, key: Ed25519PrivateKey, server: RefServer
) -> None:
    box = Outbox(tmp_path / "outbox.sqlite")
    sender = Sender(box, server.url, interval=0.2)
    put(box, key)
    sender.notify()
    assert sender.flush(5)
    assert sender.running
    p, env = make(key)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 1
        try:
            if sender.running or sender._client is not None or sender._lock_fd is not None:
                code = 2  # inherited the parent's thread, connections or lock
            else:
                box.enqueue(env, report_id=p["report_id"], kind=p["kind"],
                            measure=p["measure"], created_at=p["created_at"])  # fmt: skip
                code = 0 if sender.flush(10) else 3
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    # The child could upload only if the parent's sender lock let it: it does not, so the
    # parent's still-running sender picks the child's report up.
    assert code in (0, 3), code
    assert sender.flush(5)
    assert p["report_id"] in server.seen
    sender.close(2)
    box.close()


@pytest.mark.slow
def test_enqueue_rate_vs_raw_sqlite(
    tmp_path: Path, key: Ed25519PrivateKey, request: pytest.FixtureRequest
) -> None:
    """The figure in docs/decisions/0002-outbox-sqlite.md (target >= 0.5x raw INSERT)."""
    _only_when_selected(request)
    rounds, block = 20, 250
    made = [make(key) for _ in range(rounds * block * 2)]
    conn = sqlite3.connect(tmp_path / "raw.sqlite", isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("CREATE TABLE q (id INTEGER PRIMARY KEY, report_id TEXT, envelope BLOB)")
    box = Outbox(tmp_path / "outbox.sqlite")
    raw_t = ours_t = 0.0
    it = iter(made)
    for _ in range(rounds):  # interleaved, so both see the same disk weather
        part = [next(it) for _ in range(block)]
        t = time.perf_counter()
        for p, env in part:
            conn.execute("INSERT INTO q (report_id, envelope) VALUES (?, ?)",
                         (p["report_id"], env))  # fmt: skip
        raw_t += time.perf_counter() - t
        part = [next(it) for _ in range(block)]
        t = time.perf_counter()
        for p, env in part:
            box.enqueue(env, report_id=p["report_id"], kind=p["kind"], measure=p["measure"],
                        created_at=p["created_at"])  # fmt: skip
        ours_t += time.perf_counter() - t
    n = rounds * block
    ratio = raw_t / ours_t
    print(f"raw {n / raw_t:.0f}/s, outbox {n / ours_t:.0f}/s, ratio {ratio:.2f}")
    box.close()
    # The design target is 0.5 (docs/decisions/0002-outbox-sqlite.md: 0.45-0.84 measured,
    # median about 0.6); a shared VM whose flushes are nearly free can dip below it, so
    # this guards against regressions with some slack rather than asserting the target.
    assert ratio >= 0.4
