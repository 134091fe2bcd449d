"""Serving the published site: path safety, validators, byte ranges, file slices.

``GET /<path>`` serves the site directory as a static web server would, so the same
directory works unchanged behind nginx, an object store or a CDN: ``manifest.json``
with ``Cache-Control: no-cache`` and a strong ETag computed from its bytes
(``If-None-Match`` -> 304); signed roots (``root/``) as immutable (``public,
max-age=31536000, immutable``: they never change and are needed forever); every other
artefact (snapshots, deltas, boxes) with a lifetime that ends when the current manifest
expires (``public, max-age=<seconds left>``, at least 60 s), never a year of
``immutable``: superseded versions are deleted by the publisher and must not live on in
caches (site format 2, decision 0011). Single byte ranges -> 206 with
``Content-Range``, unsatisfiable ranges -> 416. No directory listing, no dotfiles, no
path escaping the site (``..``, absolute paths, symlinks pointing outside): all 404.

The server trusts its own site directory (it reads the manifest's version without
verifying it) but nothing a client sends.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import stat
import time
from collections.abc import Sequence
from dataclasses import dataclass
from hashlib import sha256
from pathlib import Path
from typing import Literal

import anyio
import anyio.to_thread
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from ..._exceptions import FormatError
from ..._protocol.signing import Envelope
from ..._util import parse_utc
from .responses import not_found

__all__ = ["Manifest", "ManifestState", "SiteFiles"]

log = logging.getLogger("intercept_sdk.platform")

MANIFEST = "manifest.json"
_RANGE_RE = re.compile(r"bytes=(\d{0,19})-(\d{0,19})")
_IMMUTABLE = "public, max-age=31536000, immutable"
_CHUNK = 256 * 1024
_MAX_URL_PATH = 1024
_MAX_SEGMENT = 255
_MAX_RANGE_HEADER = 200
RACY_NS = 2_000_000_000
"""A file changed this recently may change again within the same timestamp tick."""
_RACY_REREAD = 0.05  # a racy manifest is re-read at most this often (s)
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
# O_NONBLOCK: opening a FIFO someone left in the site must not hang the server.
_OPEN_FLAGS |= getattr(os, "O_NONBLOCK", 0)
_CONTENT_TYPES = {
    ".json": "application/json",
    ".gz": "application/gzip",
    ".box": "application/octet-stream",
    ".ndjson": "application/x-ndjson",
}


# --------------------------------------------------------------------------- paths


def safe_segments(path: str) -> list[str] | None:
    """Split a URL path (without the leading slash) into safe segments, or None.

    Refused: empty path (no directory listing), empty segments (``//``, an absolute path,
    a trailing slash), ``.``/``..`` and every other dot-name (dotfiles are never served),
    backslashes and NUL bytes, overlong paths or segments.
    """
    if not path or len(path) > _MAX_URL_PATH:
        return None
    parts = path.split("/")
    for p in parts:
        if not p or p[0] == "." or "\\" in p or "\x00" in p or len(p) > _MAX_SEGMENT:
            return None
    return parts


def resolve(site_dir: Path, parts: Sequence[str]) -> str | None:
    """Real path of a site file, or None if it leaves the site or passes a dot-name.

    Symlinks inside the site are followed but the target must also be inside (the site
    root itself is resolved on every call, so re-pointing a ``current`` symlink works).
    """
    try:
        root = os.path.realpath(site_dir)
        real = os.path.realpath(os.path.join(root, *parts))
        if real == root or os.path.commonpath([root, real]) != root:
            return None
    except (OSError, ValueError):
        return None
    if any(seg.startswith(".") for seg in os.path.relpath(real, root).split(os.sep)):
        return None
    return real


def _content_type(name: str) -> str:
    return _CONTENT_TYPES.get(os.path.splitext(name)[1], "application/octet-stream")


# --------------------------------------------------------------------------- validators, ranges


def etag_matches(header: str, etag: str) -> bool:
    """If-None-Match uses weak comparison: ``W/`` prefixes are ignored."""
    if header.strip() == "*":
        return True
    plain = etag.removeprefix("W/")
    return any(c.strip().removeprefix("W/") == plain for c in header.split(","))


def parse_range(header: str, size: int) -> tuple[int, int] | Literal["ignore", "unsatisfiable"]:
    """Parse a single byte range into (first, last inclusive).

    Multiple ranges, other units and invalid syntax are ignored (the full file is sent,
    which RFC 9110 permits); a syntactically valid range outside the file is unsatisfiable.
    """
    m = _RANGE_RE.fullmatch(header.strip().replace(" ", ""))
    if m is None or (not m.group(1) and not m.group(2)):
        return "ignore"
    if m.group(1):
        first = int(m.group(1))
        if m.group(2) and int(m.group(2)) < first:
            return "ignore"
        if first >= size:
            return "unsatisfiable"
        last = int(m.group(2)) if m.group(2) else size - 1
        return first, min(last, size - 1)
    suffix = int(m.group(2))
    if suffix == 0 or size == 0:
        return "unsatisfiable"
    return max(0, size - suffix), size - 1


def plan(
    request: Request, etag: str, size: int, headers: dict[str, str]
) -> Response | tuple[int, int, int]:
    """Evaluate validators and Range: a finished 304/416 response, or (status, start, length).

    ``headers`` gets ``Content-Range`` added for a 206.
    """
    inm = request.headers.get("if-none-match")
    if inm is not None and etag_matches(inm, etag):
        return Response(status_code=304, headers=headers)
    rng = request.headers.get("range")
    if rng is None or len(rng) > _MAX_RANGE_HEADER:
        return 200, 0, size
    if_range = request.headers.get("if-range")
    if if_range is not None and (if_range.strip() != etag or etag.startswith("W/")):
        return 200, 0, size
    parsed = parse_range(rng, size)
    if parsed == "unsatisfiable":
        return Response(status_code=416, headers={**headers, "Content-Range": f"bytes */{size}"})
    if parsed == "ignore":
        return 200, 0, size
    first, last = parsed
    headers["Content-Range"] = f"bytes {first}-{last}/{size}"
    return 206, first, last - first + 1


# --------------------------------------------------------------------------- file bodies


class FileSlice(Response):
    """Stream ``length`` bytes at ``start`` from an already-open file descriptor.

    The descriptor was opened (and checked to be a regular file inside the site) before
    the response was built, so what is sent is what was checked; it is always closed. A
    client that disconnects stops the reading; a file that shrinks mid-way aborts the
    connection instead of sending a short body under a full Content-Length.
    """

    def __init__(self, fd: int, start: int, length: int, status: int, headers: dict[str, str]):
        self._fd, self._start, self._length = fd, start, length
        self.status_code = status
        self.background = None
        self.init_headers({**headers, "Content-Length": str(length)})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await send(
                {"type": "http.response.start", "status": self.status_code,
                 "headers": self.raw_headers}
            )  # fmt: skip
            if scope.get("method") == "HEAD" or self._length == 0:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                return
            async with anyio.create_task_group() as tg:

                async def watch_disconnect() -> None:
                    while (await receive())["type"] != "http.disconnect":
                        pass
                    tg.cancel_scope.cancel()

                tg.start_soon(watch_disconnect)
                await self._send_body(send)
                tg.cancel_scope.cancel()
        finally:
            os.close(self._fd)

    async def _send_body(self, send: Send) -> None:
        offset, remaining = self._start, self._length
        while remaining > 0:
            chunk = await anyio.to_thread.run_sync(
                os.pread, self._fd, min(_CHUNK, remaining), offset
            )
            if not chunk:
                raise OSError(f"file shrank while being sent ({remaining} bytes missing)")
            offset += len(chunk)
            remaining -= len(chunk)
            await send({"type": "http.response.body", "body": chunk, "more_body": remaining > 0})


# --------------------------------------------------------------------------- the manifest


@dataclass(frozen=True)
class ManifestState:
    """One read of ``manifest.json``: its bytes, their ETag and the version they carry."""

    key: tuple[int, int, int]  # (inode, size, mtime_ns)
    data: bytes
    etag: str
    version: int | None
    racy: bool
    read_at: float  # time.monotonic() of the read
    expires: float | None = None  # the manifest's expiry (POSIX seconds), if readable


class Manifest:
    """The current ``manifest.json``, re-read only when its (inode, size, mtime) change.

    Held in memory so that a response's body and ETag always belong together, even while
    the publisher replaces the file. A file modified less than 2 s ago is re-read on
    every check, at most every 50 ms (its mtime could change again within the same
    timestamp tick; the publisher's atomic rename always changes the inode, so this only
    matters for a file rewritten in place).
    """

    def __init__(self, site_dir: Path, max_bytes: int) -> None:
        self._site_dir = site_dir
        self._max = max_bytes
        self._cached: ManifestState | None = None
        self._warned: tuple[int, int, int] | None = None

    def load(self) -> ManifestState | None:
        """The current state, or None while there is no servable manifest."""
        real = resolve(self._site_dir, [MANIFEST])
        if real is None:
            return None
        try:
            st = os.stat(real)
        except OSError:
            return None
        c = self._cached
        fresh = c is not None and (not c.racy or time.monotonic() - c.read_at < _RACY_REREAD)
        if c is not None and fresh and c.key == (st.st_ino, st.st_size, st.st_mtime_ns):
            return c
        read = self._read(real)
        if read is None:
            return None
        key, mtime_ns, data = read
        etag = f'"{sha256(data).hexdigest()}"'
        racy = time.time_ns() - mtime_ns < RACY_NS
        if c is not None and c.etag == etag:
            version, expires = c.version, c.expires
        else:
            version, expires = manifest_version(data), manifest_expires(data)
        state = ManifestState(key, data, etag, version, racy, time.monotonic(), expires)
        self._cached = state
        return state

    def _read(self, real: str) -> tuple[tuple[int, int, int], int, bytes] | None:
        """(key, mtime_ns, bytes) of a regular file of at most ``max_bytes``, else None."""
        try:
            fd = os.open(real, _OPEN_FLAGS)
        except OSError:
            return None
        try:
            st = os.fstat(fd)
            key = (st.st_ino, st.st_size, st.st_mtime_ns)
            if not stat.S_ISREG(st.st_mode) or st.st_size > self._max:
                if self._warned != key:
                    self._warned = key
                    log.warning(
                        "manifest.json is not a regular file of at most %d bytes", self._max
                    )
                return None
            data = _read_at_most(fd, self._max)
        finally:
            os.close(fd)
        return None if data is None else (key, st.st_mtime_ns, data)


def _read_at_most(fd: int, most: int) -> bytes | None:
    """The rest of ``fd``, or None if it holds more than ``most`` bytes."""
    chunks: list[bytes] = []
    total = 0
    while total <= most:
        chunk = os.read(fd, min(_CHUNK, most + 1 - total))
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
    return None if total > most else b"".join(chunks)


def manifest_version(data: bytes) -> int | None:
    """The manifest's version, read without verifying (the server trusts its own site)."""
    try:
        version = Envelope.from_bytes(data).payload_json()["version"]
    except (FormatError, KeyError, RecursionError):
        log.warning("manifest.json has no readable version; no event announced")
        return None
    if not isinstance(version, int) or isinstance(version, bool):
        log.warning("manifest.json version is not an integer; no event announced")
        return None
    return version


def manifest_expires(data: bytes) -> float | None:
    """The manifest's ``expires`` as POSIX seconds, read without verifying; None if absent."""
    try:
        value = Envelope.from_bytes(data).payload_json()["expires"]
        return parse_utc(value).timestamp() if isinstance(value, str) else None
    except (FormatError, KeyError, RecursionError, ValueError):
        return None


def artefact_cache_control(manifest: ManifestState | None, now: float | None = None) -> str:
    """``Cache-Control`` of a snapshot, delta or box: cacheable until the current manifest
    expires (at least 60 s; 60 s when the manifest or its expiry is unknown)."""
    left = 60.0
    if manifest is not None and manifest.expires is not None:
        left = max(60.0, manifest.expires - (time.time() if now is None else now))
    return f"public, max-age={int(left)}"


# --------------------------------------------------------------------------- the endpoint


class SiteFiles:
    """``GET``/``HEAD /<path>``: the site directory, as a static web server serves it."""

    def __init__(self, site_dir: Path, manifest: Manifest) -> None:
        self.site_dir = site_dir
        self.manifest = manifest

    async def get(self, request: Request) -> Response:
        parts = safe_segments(request.path_params["path"])
        if parts is None:
            return not_found()
        if parts == [MANIFEST]:
            return self._serve_manifest(request)
        real = resolve(self.site_dir, parts)
        if real is None:
            return not_found()
        try:
            fd = os.open(real, _OPEN_FLAGS)
        except OSError:
            return not_found()
        try:
            return self._serve_open_file(
                request,
                fd,
                parts[-1],
                _IMMUTABLE if parts[0] == "root" else artefact_cache_control(self.manifest.load()),
            )
        except BaseException:
            with contextlib.suppress(OSError):
                os.close(fd)
            raise

    def _serve_open_file(
        self, request: Request, fd: int, name: str, cache_control: str
    ) -> Response:
        """The answer for an open site file; ``fd`` is closed unless a FileSlice owns it."""
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            return not_found()
        # Artefacts never change and are named by content hash, so size+mtime is a
        # sufficient validator (what nginx uses too); no need to hash large files.
        etag = f'"{st.st_mtime_ns:x}-{st.st_size:x}"'
        headers = {
            "ETag": etag,
            "Cache-Control": cache_control,
            "Accept-Ranges": "bytes",
            "Content-Type": _content_type(name),
        }
        planned = plan(request, etag, st.st_size, headers)
        if isinstance(planned, Response):
            os.close(fd)
            return planned
        status, start, length = planned
        return FileSlice(fd, start, length, status, headers)

    def _serve_manifest(self, request: Request) -> Response:
        state = self.manifest.load()
        if state is None:
            return not_found()
        headers = {
            "ETag": state.etag,
            "Cache-Control": "no-cache",
            "Accept-Ranges": "bytes",
            "Content-Type": "application/json",
        }
        planned = plan(request, state.etag, len(state.data), headers)
        if isinstance(planned, Response):
            return planned
        status, start, length = planned
        return Response(state.data[start : start + length], status, headers=headers)
