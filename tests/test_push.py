"""Push-channel line framing: terminators, chunk boundaries, and the length cap."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator

import pytest

from intercept_sdk._exceptions import TooLarge
from intercept_sdk._push import MAX_LINE, alines, lines

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
