"""The one retry policy: one ``Retry-After`` parser, one backoff, used by the fetcher, the
report sender and the background engine, and ``Client(retry=...)`` reaching all of them."""

from __future__ import annotations

import datetime as dt
import email.utils
import threading
import time
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import intercept_sdk
from intercept_sdk import Client, HTTPStatusError, Person
from intercept_sdk._client import fetch, outbox
from intercept_sdk._client.fetch import HttpFetcher
from intercept_sdk._client.keys import load_subscriber_key, subscriber_keygen
from intercept_sdk._client.outbox import Outbox, Sender
from intercept_sdk._client.retry import RetryPolicy, parse_retry_after
from intercept_sdk._protocol.reports import build_report, sign_report
from intercept_sdk.testing import TestPlatform

NOW = 1_800_000_000.0


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("7", 7.0),
        (" 7 ", 7.0),
        ("0", 0.0),
        ("007", 7.0),
        ("1.5", None),  # RFC 9110: delta-seconds = 1*DIGIT; decided once, for every user
        ("-5", None),
        ("+5", None),
        ("1e3", None),
        ("inf", None),
        ("nan", None),
        ("\u00b2", None),  # str.isdigit() is true for it; float() refuses it
        ("\u0663", None),  # ARABIC-INDIC DIGIT THREE: not an ASCII digit
        ("7\n", 7.0),  # surrounding whitespace is stripped, as HTTP does
        ("", None),
        (None, None),
        ("soon", None),
        (email.utils.formatdate(NOW + 90, usegmt=True), 90.0),
        (email.utils.formatdate(NOW - 90, usegmt=True), 0.0),
    ],
)
def test_one_parser_for_retry_after(header: str | None, seconds: float | None) -> None:
    assert parse_retry_after(header, now=NOW) == seconds


def test_an_http_date_without_a_zone_is_utc() -> None:
    now = dt.datetime(2026, 11, 22, 8, 0, tzinfo=dt.timezone.utc).timestamp()
    assert parse_retry_after("Sun, 22 Nov 2026 08:01:30 -0000", now=now) == 90.0
    assert parse_retry_after("Sun, 22 Nov 2026 08:01:30 GMT", now=now) == 90.0


def test_a_huge_delta_is_capped_by_the_policy_not_an_error() -> None:
    assert parse_retry_after("9" * 5000, now=NOW) == float("inf")  # no int() digit limit
    policy = RetryPolicy(max_retry_after=60.0, wall_clock=lambda: NOW)
    assert policy.parse_retry_after("9" * 5000) == 60.0
    assert policy.delay(1, float("inf")) == 60.0


def test_backoff_is_exponential_capped_and_fully_jittered() -> None:
    top = RetryPolicy(initial=0.5, maximum=10.0, random=lambda: 1.0)
    assert [top.backoff(n) for n in range(1, 7)] == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0]
    assert top.backoff(10_000) == 10.0
    assert RetryPolicy(random=lambda: 0.0).backoff(5) == 0.0


def test_delay_honours_retry_after_as_a_lower_bound_with_a_cap() -> None:
    policy = RetryPolicy(initial=1.0, random=lambda: 1.0, max_retry_after=30.0)
    assert policy.delay(1) == 1.0
    assert policy.delay(1, 7.0) == 7.0
    assert policy.delay(4, 7.0) == 8.0  # the backoff is longer
    assert policy.delay(1, 3600.0) == 30.0
    assert policy.delay(1, float("nan")) == 1.0


def test_one_class_everywhere() -> None:
    assert intercept_sdk.RetryPolicy is RetryPolicy
    assert fetch.RetryPolicy is RetryPolicy  # importable where it used to be
    assert outbox.RetryPolicy is RetryPolicy


# -- the fetcher and the sender read the same header the same way ------------------------


def _answer_503(retry_after: str) -> httpx.MockTransport:
    return httpx.MockTransport(
        lambda request: httpx.Response(503, headers={"Retry-After": retry_after})
    )


@pytest.mark.parametrize(("header", "expected"), [("1.5", 0.25), ("3", 3.0)])
def test_fetcher_and_sender_agree(tmp_path: Path, header: str, expected: float) -> None:
    """ "1.5" is no delay for either (the plain backoff, 0.25 s here); "3" is 3 s for both."""
    waits: list[float] = []
    policy = RetryPolicy(attempts=2, initial=0.25, random=lambda: 1.0, sleep=waits.append)
    fetcher = HttpFetcher("https://platform.example", transport=_answer_503(header), retry=policy)
    with pytest.raises(HTTPStatusError):
        fetcher.manifest(None, 1 << 20)
    fetcher.close()
    assert waits == [expected]

    key = _subscriber_key(tmp_path)
    box = Outbox(tmp_path / "outbox.sqlite")
    payload = build_report(
        "objection", subscriber_id="unit-1", entry_id="E1", details={"grounds": "已履行"}
    )
    box.enqueue(
        sign_report(payload, key),
        report_id=payload["report_id"],
        kind="objection",
        measure=None,
        created_at=payload["created_at"],
    )
    sender = Sender(box, "https://platform.example", transport=_answer_503(header), retry=policy)
    assert sender.send_once().retry_in == expected
    sender.close(0.1)
    box.close()


def _subscriber_key(tmp_path: Path) -> Ed25519PrivateKey:
    subscriber_keygen(tmp_path / "sub")
    return load_subscriber_key(tmp_path / "sub").report


# -- Client(retry=...) reaches the report sender -------------------------------------------


def test_client_retry_policy_reaches_the_report_sender(tmp_path: Path) -> None:
    """A policy asking for a long backoff keeps the sender from retrying a 503 soon;
    with the sender's own default policy (the old behaviour) it retried within 0.5 s."""
    with TestPlatform(tmp_path) as platform:
        listed = platform.add_person()
        site = platform.site_dir
        posts: list[float] = []
        lock = threading.Lock()

        def handler(request: httpx.Request) -> httpx.Response:
            if request.method == "POST":
                with lock:
                    posts.append(time.monotonic())
                return httpx.Response(503)
            path = site / request.url.path.lstrip("/")
            if not path.is_file():
                return httpx.Response(404)
            return httpx.Response(200, content=path.read_bytes())

        policy = RetryPolicy(attempts=1, initial=1000.0, random=lambda: 1.0)
        client = Client(
            "https://platform.example",
            platform.trust_root,
            tmp_path / "cache",
            platform.subscriber_id,
            subscriber_key=platform.subscriber_key_dir,
            transport=httpx.MockTransport(handler),
            push=False,
            retry=policy,
        )
        try:
            client.sync()
            assert client._core.sender is not None
            assert client._core.sender.retry is policy
            with pytest.raises(intercept_sdk.Intercepted):
                client.block(Person(listed["id_number"]), "travel.flight")
            deadline = time.monotonic() + 10
            while not posts and time.monotonic() < deadline:
                time.sleep(0.02)
            time.sleep(1.5)
            assert len(posts) == 1, "the sender retried before the policy's backoff"
            assert client.status().pending_reports == 1
        finally:
            started = time.monotonic()
            client.close(timeout=0.5)
            assert time.monotonic() - started < 3  # close() cuts the backoff short
