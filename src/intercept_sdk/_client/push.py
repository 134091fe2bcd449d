"""The platform's push channel (server-sent events): framing, events, and one listen.

Why this module exists: both background drivers (the :class:`~.client.Client` thread and
the :class:`~.client.AsyncClient` task) listen to ``GET /events`` and must behave alike,
so everything about the channel lives here once: where it is and how it is reached
(:class:`PushChannel`: URL, ``Accept: text/event-stream``, timeouts, TLS, proxy and the
client's ``transport``), how its bytes become lines (:func:`lines`/:func:`alines`), how
lines become announced versions (:class:`EventReader`), and what one listen ended with
(:class:`Heard`). Only the I/O loop itself is written twice (:func:`listen` and
:func:`alisten`, line for line the same).

Line framing: ``httpx``'s ``iter_lines`` buffers a line until its newline arrives, so a
platform (or anything on the path) that streams bytes without a newline would grow the
background thread's memory without bound. These iterators split the byte stream into
text lines themselves and raise :class:`TooLarge` once a line passes :data:`MAX_LINE`
bytes; the listen then ends as ``failed`` and the client polls.

Guarantees: lines are yielded without their terminator (``\\n``, ``\\r\\n`` or ``\\r``, as
the SSE format allows); bytes that are not UTF-8 are replaced, never raised on; memory
held is at most one chunk plus :data:`MAX_LINE`. Events are hints only (the manifest is
what gets verified): a malformed event is ignored, and nothing the channel sends raises
out of a listen (every channel failure is a ``failed`` outcome, with the server's
``Retry-After`` when it sent one). Every listen is bounded: connect and read timeouts, and
it ends at its deadline (checked at every line; the platform sends a heartbeat line
while idle). A ``transport`` handed to the client is borrowed, never closed here.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import ssl
import threading
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Literal, TypeVar

import httpx

from .._exceptions import HTTPStatusError, TooLarge
from .retry import parse_retry_after

__all__ = [
    "MAX_LINE",
    "EventReader",
    "Heard",
    "PushChannel",
    "alines",
    "alisten",
    "event_version",
    "lines",
    "listen",
]

log = logging.getLogger("intercept_sdk.push")

MAX_LINE = 64 * 1024
"""Longest push line accepted, in bytes (a version event is under 200 bytes)."""

_EOL = re.compile(rb"\r\n|\r|\n")


class _Splitter:
    __slots__ = ("_buf", "_cap", "_cr")

    def __init__(self, cap: int) -> None:
        self._buf = b""
        self._cap = cap
        self._cr = False  # the last chunk ended in "\r": a leading "\n" belongs to it

    def feed(self, chunk: bytes) -> list[str]:
        if self._cr and chunk.startswith(b"\n"):
            chunk = chunk[1:]
        self._cr = chunk.endswith(b"\r")
        parts = _EOL.split(self._buf + chunk)
        self._buf = parts.pop()
        if len(self._buf) > self._cap or any(len(p) > self._cap for p in parts):
            raise TooLarge(f"a push channel line is longer than {self._cap} bytes")
        return [p.decode("utf-8", "replace") for p in parts]

    def end(self) -> list[str]:
        rest, self._buf = self._buf, b""
        return [rest.decode("utf-8", "replace")] if rest else []


def lines(chunks: Iterable[bytes], cap: int = MAX_LINE) -> Iterator[str]:
    """The text lines of a byte stream; :class:`TooLarge` past ``cap`` bytes."""
    splitter = _Splitter(cap)
    for chunk in chunks:
        yield from splitter.feed(chunk)
    yield from splitter.end()


async def alines(chunks: AsyncIterable[bytes], cap: int = MAX_LINE) -> AsyncIterator[str]:
    """:func:`lines` for an async byte stream."""
    splitter = _Splitter(cap)
    async for chunk in chunks:
        for line in splitter.feed(chunk):
            yield line
    for line in splitter.end():
        yield line


# --------------------------------------------------------------------------- events


def event_version(data: str) -> int:
    """The version announced by a push event's data; -1 for anything unreadable.

    Push events are hints only (the manifest is what gets verified), so a malformed event
    is ignored; it must never raise out of the listener and stop background syncing.
    """
    try:
        value = json.loads(data)["version"]
    except (ValueError, KeyError, TypeError, IndexError, RecursionError):
        return -1
    if isinstance(value, int) and not isinstance(value, bool) and 0 < value < 1 << 62:
        return value
    return -1


class EventReader:
    """Turns the channel's lines into announced versions (SSE fields ``event``/``data``).

    Only ``data`` of an event typed ``version`` counts; a blank line ends an event and
    resets its type (as the SSE format says), so a stray ``data:`` line after it is not
    read as a version. Comments (``: ping``) and other fields are ignored.
    """

    __slots__ = ("_event",)

    def __init__(self) -> None:
        self._event: str | None = None

    def feed(self, line: str) -> int:
        """The version ``line`` announces, or -1."""
        if not line:
            self._event = None
        elif line.startswith("event:"):
            self._event = line[6:].strip()
        elif line.startswith("data:") and self._event == "version":
            return event_version(line[5:])
        return -1


# --------------------------------------------------------------------------- the channel

_READ_TIMEOUT = 20.0
"""Read timeout of the channel: above the platform's 15-s heartbeat, so a healthy idle
channel never times out and a silent one is dropped within 20 s."""


@dataclass(frozen=True)
class Heard:
    """How one listen ended.

    ``announced``: a version newer than the local one was announced (sync now);
    ``due``: the deadline (the next poll) passed while the channel was healthy;
    ``interrupted``: the driver asked the listen to stop (close, or a wake-up);
    ``failed``: the channel could not be opened, was refused, broke or ended;
    ``retry_after`` is the server's hint (seconds) when it sent one.
    """

    outcome: Literal["announced", "due", "interrupted", "failed"]
    retry_after: float | None = None


ANNOUNCED = Heard("announced")
DUE = Heard("due")
INTERRUPTED = Heard("interrupted")
ENDED = Heard("failed")

_HEADERS = {
    "Accept": "text/event-stream",
    "Cache-Control": "no-cache",
    "User-Agent": "intercept-sdk/0.1",
}
"""Sent by both drivers: the push channel is asked for as an event stream, never cached."""

_CHANNEL_ERRORS = (httpx.HTTPError, HTTPStatusError, OSError, TooLarge)
"""What a channel may raise: translated into a ``failed`` outcome, never raised on."""


class _Borrowed(httpx.BaseTransport):
    """The client's transport, lent to a push connection: closing that connection must
    not close the transport the fetcher still uses."""

    def __init__(self, inner: httpx.BaseTransport) -> None:
        self._inner = inner

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        return self._inner.handle_request(request)

    def close(self) -> None:
        return None


_T = TypeVar("_T")


async def _off_loop(fn: Callable[[], _T]) -> _T:
    """Run blocking ``fn`` on a fresh daemon thread and await its result.

    Not the loop's default executor: a push read may block until the channel's read
    timeout, and a cancelled listen must not make ``asyncio.run`` (which joins the
    executor's threads at exit) wait for it. The thread's late result is dropped.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[_T] = loop.create_future()

    def settle(result: _T | None, error: BaseException | None) -> None:
        if future.done():  # cancelled meanwhile
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]

    def run() -> None:
        try:
            outcome: tuple[_T | None, BaseException | None] = (fn(), None)
        except BaseException as exc:  # handed to the awaiting task
            outcome = (None, exc)
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting
            loop.call_soon_threadsafe(settle, *outcome)

    threading.Thread(target=run, name="intercept-sdk-push-io", daemon=True).start()
    return await future


class _ThreadedStream(httpx.AsyncByteStream):
    """A synchronous response body read from asyncio, one chunk per blocking read (the
    consumer asks for each: no read-ahead, so a flooding channel is not buffered). A read
    in flight when the stream is closed closes it when it returns (an httpx stream is
    not to be closed from a second thread while a first reads it)."""

    def __init__(self, inner: httpx.SyncByteStream) -> None:
        self._inner = inner
        self._chunks = iter(inner)
        self._lock = threading.Lock()
        self._reading = False
        self._closed = False

    def _read(self) -> bytes | None:
        try:
            return next(self._chunks, None)
        finally:
            with self._lock:
                self._reading = False
                close_now = self._closed
            if close_now:
                self._inner.close()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while True:
            with self._lock:
                if self._closed:
                    return
                self._reading = True
            piece = await _off_loop(self._read)
            if piece is None:
                return
            yield piece

    async def aclose(self) -> None:
        with self._lock:
            self._closed = True
            reading = self._reading
        if not reading:
            await _off_loop(self._inner.close)


class _BorrowedAsync(httpx.AsyncBaseTransport):
    """:class:`_Borrowed` for a transport that is asynchronous too."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self._inner = inner

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        return None


class _ThreadedTransport(httpx.AsyncBaseTransport):
    """The client's synchronous ``transport`` used by the asyncio driver: each blocking
    call runs on a daemon thread (:func:`_off_loop`), so both drivers go through the same
    transport. A transport that is asynchronous too (``httpx.MockTransport``) is used as it
    is. Borrowed: never closed here."""

    def __init__(self, inner: httpx.BaseTransport) -> None:
        self._inner = inner

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await _off_loop(lambda: self._inner.handle_request(request))
        assert isinstance(response.stream, httpx.SyncByteStream)
        return httpx.Response(
            response.status_code,
            headers=response.headers,
            stream=_ThreadedStream(response.stream),
            extensions=response.extensions,
        )


@dataclass(frozen=True)
class PushChannel:
    """Where the push channel is and how it is reached: one HTTP configuration for both
    drivers (the same as the fetcher's transport, proxy, TLS and connect timeout)."""

    url: str
    connect_timeout: float = 5.0
    proxy: str | None = None
    verify: ssl.SSLContext | bool = True
    transport: httpx.BaseTransport | None = None

    @staticmethod
    def url_of(platform: str | os.PathLike[str]) -> str | None:
        """The ``/events`` URL of an http(s) platform; None for an offline one."""
        text = os.fspath(platform)
        if text.startswith(("http://", "https://")):
            return text.rstrip("/") + "/events"
        return None

    def _timeout(self) -> httpx.Timeout:
        return httpx.Timeout(_READ_TIMEOUT, connect=self.connect_timeout)

    def client(self) -> httpx.Client:
        """A fresh synchronous HTTP client for one listen."""
        return httpx.Client(
            timeout=self._timeout(),
            verify=self.verify,
            proxy=self.proxy,
            transport=_Borrowed(self.transport) if self.transport is not None else None,
            follow_redirects=False,
            headers=_HEADERS,
        )

    def async_client(self) -> httpx.AsyncClient:
        """A fresh asyncio HTTP client for one listen, through the same transport."""
        transport: httpx.AsyncBaseTransport | None = None
        if isinstance(self.transport, httpx.AsyncBaseTransport):
            transport = _BorrowedAsync(self.transport)
        elif self.transport is not None:
            transport = _ThreadedTransport(self.transport)
        return httpx.AsyncClient(
            timeout=self._timeout(),
            verify=self.verify,
            proxy=self.proxy,
            transport=transport,
            follow_redirects=False,
            headers=_HEADERS,
        )


def _check_response(resp: httpx.Response) -> None:
    if resp.status_code != 200:
        raise HTTPStatusError(
            f"push channel: HTTP {resp.status_code}",
            resp.status_code,
            parse_retry_after(resp.headers.get("Retry-After")),
        )


def _failed(exc: BaseException) -> Heard:
    # TooLarge: a line past the cap (a broken or hostile channel); the connection is
    # dropped and the client polls, as for any channel failure.
    log.info("push channel unavailable (%s: %s); polling", type(exc).__name__, exc)
    retry_after = exc.retry_after if isinstance(exc, HTTPStatusError) else None
    return Heard("failed", retry_after)


def _judge(reader: EventReader, line: str, known: int, deadline: float) -> Heard | None:
    """What ``line`` means for a listen: a newer version, the deadline, or go on."""
    if reader.feed(line) > known:
        return ANNOUNCED
    if time.monotonic() >= deadline:
        return DUE
    return None


def listen(
    http: httpx.Client,
    url: str,
    *,
    known: int,
    deadline: float,
    interrupted: Callable[[], bool],
    connected: Callable[[bool], None],
) -> Heard:
    """Follow the channel until a version newer than ``known`` is announced, the
    monotonic ``deadline`` passes, ``interrupted()`` turns true, or the channel fails."""
    try:
        with http.stream("GET", url) as resp:
            _check_response(resp)
            connected(True)
            reader = EventReader()
            for line in lines(resp.iter_bytes()):
                if interrupted():
                    return INTERRUPTED
                heard = _judge(reader, line, known, deadline)
                if heard is not None:
                    return heard
        return ENDED
    except _CHANNEL_ERRORS as exc:
        return _failed(exc)
    finally:
        connected(False)


async def alisten(
    http: httpx.AsyncClient,
    url: str,
    *,
    known: int,
    deadline: float,
    interrupted: Callable[[], bool],
    connected: Callable[[bool], None],
) -> Heard:
    """:func:`listen` for asyncio (cancellation ends it at once)."""
    try:
        async with http.stream("GET", url) as resp:
            _check_response(resp)
            connected(True)
            reader = EventReader()
            async for line in alines(resp.aiter_bytes()):
                if interrupted():
                    return INTERRUPTED
                heard = _judge(reader, line, known, deadline)
                if heard is not None:
                    return heard
        return ENDED
    except _CHANNEL_ERRORS as exc:
        return _failed(exc)
    finally:
        connected(False)
