"""Push-channel line framing: terminators, chunk boundaries, and the length cap."""

from __future__ import annotations

import asyncio
import http.server
import itertools
import logging
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from _servers import stdlib_server
from intercept_sdk import AsyncClient, Person
from intercept_sdk._client.push import MAX_LINE, EventReader, alines, lines
from intercept_sdk._exceptions import TooLarge
from intercept_sdk.testing import TestPlatform

STREAM = b'event: version\r\ndata: {"version": 7}\n\n: keep-alive\rdata: \xe4\xbd\xa0\xff\nlast'
EXPECTED = ["event: version", 'data: {"version": 7}', "", ": keep-alive", "data: 你\ufffd", "last"]


def split_every(data: bytes, n: int) -> list[bytes]:
    return [data[i : i + n] for i in range(0, len(data), n)]


@pytest.mark.parametrize("size", [1, 2, 3, 5, 16, 1000])
def test_lines_are_the_same_whatever_the_chunking(size: int) -> None:
    assert list(lines(split_every(STREAM, size))) == EXPECTED


def test_crlf_split_across_chunks_is_one_terminator() -> None:
    assert list(lines([b"a\r", b"\nb\r", b"\r", b"c"])) == ["a", "b", "", "c"]


def test_a_line_past_the_cap_raises_without_buffering_the_stream() -> None:
    endless = itertools.repeat(b"x" * 1000)  # a stream with no newline, ever
    with pytest.raises(TooLarge, match="longer than"):
        for _ in lines(endless):
            pass
    assert list(lines([b"y" * 10 + b"\n"], cap=10)) == ["y" * 10]
    with pytest.raises(TooLarge):
        list(lines([b"y" * 11 + b"\n"], cap=10))
    assert MAX_LINE >= 4096


def test_async_lines_match_and_cap() -> None:
    async def chunks(data: bytes, n: int) -> AsyncIterator[bytes]:
        for c in split_every(data, n):
            yield c

    async def collect(data: bytes, n: int, cap: int = MAX_LINE) -> list[str]:
        return [line async for line in alines(chunks(data, n), cap)]

    assert asyncio.run(collect(STREAM, 3)) == EXPECTED
    with pytest.raises(TooLarge):
        asyncio.run(collect(b"z" * 100, 7, cap=50))


# -- the client's listeners on a real loopback server -------------------------------------


class _EndlessLineHandler(http.server.BaseHTTPRequestHandler):
    """Serves the site's files; ``/events`` streams one line that never ends."""

    site: Path
    sent: list[int]

    def log_message(self, format: str, *args: Any) -> None:  # keep the test output quiet
        pass

    def do_GET(self) -> None:
        path = self.path.split("?")[0]
        if path == "/events":
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            sent = 0
            chunk = b"data: " + b"x" * 65536
            try:
                while sent < _ENDLESS_LIMIT:
                    self.wfile.write(chunk)
                    self.wfile.flush()
                    sent += len(chunk)
            except OSError:
                pass  # the client hung up: what the cap is for
            self.sent.append(sent)
            self.close_connection = True
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


_ENDLESS_LIMIT = 512 * 1024 * 1024


@pytest.fixture
def endless_server(tmp_path: Path) -> Iterator[tuple[TestPlatform, str, list[int]]]:
    platform = TestPlatform(tmp_path)
    platform.add_person()
    handler = type("Handler", (_EndlessLineHandler,), {"site": platform.site_dir, "sent": []})
    try:
        with stdlib_server(handler) as url:
            yield platform, url, handler.sent
    finally:
        platform.close()


def test_client_drops_a_push_line_past_the_cap_and_keeps_polling(
    endless_server: tuple[TestPlatform, str, list[int]], caplog: pytest.LogCaptureFixture
) -> None:
    platform, url, sent = endless_server
    with caplog.at_level(logging.INFO, "intercept_sdk"):
        client = platform.client(platform=url, background=True, poll_interval=0.5)
        deadline = time.monotonic() + 20
        while not sent and time.monotonic() < deadline:
            time.sleep(0.05)
        # The client hung up after at most MAX_LINE bytes of the line (plus what the
        # socket buffers held): nowhere near the stream's 512 MiB.
        assert sent, "the client never opened the push channel"
        assert sent[0] < 32 * 1024 * 1024
        assert "longer than" in caplog.text
        # ... and the background thread lives on: a new version arrives by polling.
        listed = platform.add_person()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if client.check(Person(listed["id_number"]), "consumption.star_hotel").blocked:
                break
            time.sleep(0.1)
        assert client.check(Person(listed["id_number"]), "consumption.star_hotel").blocked
        client.close(timeout=0.5)  # the queued quarterly summary has nowhere to go


def test_async_client_drops_a_push_line_past_the_cap(
    endless_server: tuple[TestPlatform, str, list[int]], caplog: pytest.LogCaptureFixture
) -> None:
    platform, url, sent = endless_server
    platform.publish()

    async def run() -> None:
        client = AsyncClient(
            url,
            platform.trust_root,
            platform.directory / "async-cache",
            platform.subscriber_id,
            subscriber_key=platform.subscriber_key_dir,
            poll_interval=0.5,
        )
        client.start_background()
        try:
            deadline = time.monotonic() + 20
            while not sent and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            # ... and the task lives on: a new version arrives by polling.
            listed = await asyncio.to_thread(platform.add_person)
            person = Person(listed["id_number"])
            while time.monotonic() < deadline:
                if (await client.check(person, "consumption.star_hotel")).blocked:
                    break
                await asyncio.sleep(0.1)
            assert (await client.check(person, "consumption.star_hotel")).blocked
        finally:
            await client.aclose(timeout=0.5)

    with caplog.at_level(logging.INFO, "intercept_sdk"):
        asyncio.run(run())
    assert sent and sent[0] < 32 * 1024 * 1024
    assert "longer than" in caplog.text


def test_event_reader_reads_only_version_events() -> None:
    reader = EventReader()
    feed = [
        ("event: version", -1),
        ('data: {"version": 7}', 7),
        ("", -1),
        ('data: {"version": 8}', -1),  # after a blank line the event type is reset
        ("event: other", -1),
        ('data: {"version": 9}', -1),
        ("event: version", -1),
        ("data: not json", -1),
        ('data: {"version": true}', -1),
        ('data: {"version": 1e999}', -1),
        ('data: {"version": ' + "[" * 5000 + "}", -1),
        (": ping", -1),
        ('data:{"version": 10}', 10),
    ]
    assert [reader.feed(line) for line, _ in feed] == [v for _, v in feed]
