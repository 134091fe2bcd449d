"""Line framing for the platform's push channel (server-sent events), with a length cap.

Why this module exists: ``httpx``'s ``iter_lines`` buffers a line until its newline
arrives, so a platform (or anything on the path) that streams bytes without a newline
would grow the background thread's memory without bound. These iterators split the byte
stream into text lines themselves and raise :class:`TooLarge` once a line passes
:data:`MAX_LINE` bytes; the client then treats the push channel as down and polls.

Guarantees: lines are yielded without their terminator (``\\n``, ``\\r\\n`` or ``\\r``, as
the SSE format allows); bytes that are not UTF-8 are replaced, never raised on (an
event's data is parsed and validated by the caller); memory held is at most one chunk
plus :data:`MAX_LINE`.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator

from .._exceptions import TooLarge

__all__ = ["MAX_LINE", "alines", "lines"]

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
