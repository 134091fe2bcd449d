"""The reference platform server: the published site, a push channel, and report intake.

Why it exists: the SDK is tested and demonstrated against a real HTTP server process
(uvicorn + starlette), not a mock, and integrators get a runnable platform to try the
whole flow. The site it serves is the same static directory that works unchanged behind
nginx, an object store or a CDN; everything this server adds is optional:

* ``GET /<path>`` serves the site: ``manifest.json`` with ``Cache-Control: no-cache`` and a
  strong ETag computed from its bytes (``If-None-Match`` -> 304); every other file as
  immutable (``public, max-age=31536000, immutable``). Single byte ranges -> 206 with
  ``Content-Range``, unsatisfiable ranges -> 416. No directory listing, no dotfiles, no
  path escaping the site (``..``, absolute paths, symlinks pointing outside): all 404.
* ``GET /events`` is a server-sent-events channel: ``event: version`` with
  ``{"version": N}`` on connect and whenever ``manifest.json`` changes, ``: ping`` every
  15 s. One background task polls the manifest's (inode, size, mtime) every 0.2 s for all
  listeners.
* ``POST /reports`` takes signed subscriber reports (see ``docs/protocol.md``), verifies
  every signature against the registered subscriber keys, and stores them de-duplicated
  by ``report_id`` in SQLite. A batch is accepted or refused as a whole.
* ``GET /reports`` lists stored reports for operators (no authentication: bind it to
  loopback or put it behind your own access control).

The server trusts its own site directory (it reads the manifest's version without
verifying it) but trusts nothing a client sends. Every input and every queue is bounded
(:class:`Limits`). Logging goes to ``logging.getLogger("intercept_sdk.platform")``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import concurrent.futures
import contextlib
import functools
import json
import logging
import math
import os
import re
import select
import signal
import socket
import sqlite3
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from hashlib import sha256
from pathlib import Path
from typing import Any, Literal, NamedTuple

import anyio
import anyio.to_thread
import uvicorn
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from .._exceptions import ConfigurationError, FormatError
from .._protocol.signing import (
    REPORT_TYPE,
    Envelope,
    canonical_json,
    keyid_of,
    load_public_key,
    pae,
)
from .._util import format_utc, parse_utc, utcnow

# Optional accelerator: when PyNaCl is installed, libsodium verifies Ed25519 signatures
# (about 2-3x faster than cryptography's OpenSSL build, measured on the project machine).
_sodium_open: Callable[[bytes, bytes], bytes] | None = None
_SodiumError: type[Exception] = Exception
try:
    import nacl.bindings as _nacl_bindings  # type: ignore[import-not-found, unused-ignore]
    import nacl.exceptions as _nacl_exceptions  # type: ignore[import-not-found, unused-ignore]
except ImportError:  # pragma: no cover - depends on the environment
    pass
else:  # pragma: no cover - depends on the environment
    _sodium_open = _nacl_bindings.crypto_sign_open
    _SodiumError = _nacl_exceptions.CryptoError
VERIFY_BACKEND = "cryptography" if _sodium_open is None else "libsodium"
"""Which library verifies report signatures in this process."""

__all__ = [
    "REPORT_KINDS",
    "VERIFY_BACKEND",
    "Faults",
    "Limits",
    "PlatformServer",
    "ServerProcess",
    "create_app",
    "main",
    "run_server_process",
]

log = logging.getLogger("intercept_sdk.platform")

REPORT_KINDS = frozenset(
    {"interception", "review_outcome", "lift", "objection", "data_error", "quarterly_summary"}
)
_REPORT_ID_RE = re.compile(r"[0-9a-f]{32}")
_RANGE_RE = re.compile(r"bytes=(\d{0,19})-(\d{0,19})")
_MANIFEST = "manifest.json"
_IMMUTABLE = "public, max-age=31536000, immutable"
_CHUNK = 256 * 1024
_MAX_URL_PATH = 1024
_MAX_SEGMENT = 255
_MAX_FIELD = 512  # measure / entry_id / case_no / created_at, in characters
_MAX_KEY_FILE = 16 * 1024
_MAX_SUBSCRIBERS = 100_000
_RACY_NS = 2_000_000_000  # a file changed this recently may change again in the same tick
_SUBSCRIBER_RESCAN = 30.0  # full re-scan of the key directory at least this often (s)
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
# O_NONBLOCK: opening a FIFO someone left in the site must not hang the server.
_OPEN_FLAGS |= getattr(os, "O_NONBLOCK", 0)
_CONTENT_TYPES = {
    ".json": "application/json",
    ".gz": "application/gzip",
    ".box": "application/octet-stream",
    ".ndjson": "application/x-ndjson",
}


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class Limits:
    """Every bound the server enforces. The defaults suit a real deployment.

    Tests shrink ``poll_interval``/``heartbeat_interval`` to run fast; nothing here can be
    set from HTTP.
    """

    max_body_bytes: int = 8 * 1024 * 1024
    """Largest ``POST /reports`` body; larger -> 413."""
    max_reports_per_batch: int = 5000
    """Most reports in one batch; more -> 413."""
    max_signatures_per_report: int = 8
    """Most signatures on one report envelope; more -> 400."""
    max_inflight_report_requests: int = 16
    """Report uploads processed at once (bounds memory); more -> 503 with Retry-After."""
    max_drain_bytes: int = 32 * 1024 * 1024
    """How much of an oversize body is read and discarded so the client sees the 413."""
    max_listeners: int = 1000
    """Concurrent ``/events`` listeners; more -> 503 with Retry-After."""
    max_manifest_bytes: int = 16 * 1024 * 1024
    """A larger ``manifest.json`` is not served (it is held in memory)."""
    max_list_limit: int = 1000
    """Largest ``limit`` accepted by ``GET /reports``."""
    poll_interval: float = 0.2
    """How often the manifest is checked for changes (seconds)."""
    heartbeat_interval: float = 15.0
    """Idle time after which an ``/events`` listener gets a ``: ping`` comment (seconds)."""
    graceful_shutdown: int = 2
    """Seconds uvicorn waits for in-flight requests when stopping before cancelling them."""

    def __post_init__(self) -> None:
        for name in (
            "max_body_bytes",
            "max_reports_per_batch",
            "max_signatures_per_report",
            "max_inflight_report_requests",
            "max_listeners",
            "max_manifest_bytes",
            "max_list_limit",
        ):
            if getattr(self, name) < 1:
                raise ConfigurationError(f"Limits.{name} must be at least 1")
        if self.max_drain_bytes < 0 or self.graceful_shutdown < 0:
            raise ConfigurationError("Limits.max_drain_bytes/graceful_shutdown must be >= 0")
        if not (0.01 <= self.poll_interval <= 60 and 0.05 <= self.heartbeat_interval <= 3600):
            raise ConfigurationError("Limits.poll_interval/heartbeat_interval out of range")


FaultTarget = Literal["reports", "site"]


@dataclass(frozen=True)
class _Fault:
    status: int | None
    retry_after: float | None
    stall: float
    after_store: bool


class Faults:
    """Failures to inject into the next requests, for reliability tests.

    Off unless an instance is passed to :func:`create_app` / :class:`PlatformServer`, and
    only settable from Python, never over HTTP. Thread-safe: a test thread queues faults
    while the server thread consumes them, one per request, in order. Targets: ``"reports"``
    (``POST /reports``) and ``"site"`` (any site file, including ``manifest.json``).
    """

    _MAX_QUEUED = 100_000

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queues: dict[str, deque[_Fault]] = {"reports": deque(), "site": deque()}
        self._seen: dict[str, int] = {"reports": 0, "site": 0}

    def fail_next(
        self,
        n: int = 1,
        *,
        status: int = 503,
        retry_after: float | None = 1.0,
        target: FaultTarget = "reports",
        after_store: bool = False,
    ) -> None:
        """Answer the next ``n`` requests with ``status`` (and ``Retry-After`` if given).

        ``after_store=True`` (reports only) stores the batch first and then fails, as if the
        response was lost: the client's retry must come back as duplicates.
        """
        if not 400 <= status <= 599:
            raise ConfigurationError("fault status must be 4xx or 5xx")
        if retry_after is not None and not 0 <= retry_after <= 86400:
            raise ConfigurationError("retry_after must be within 0..86400 seconds")
        self._queue(n, target, _Fault(status, retry_after, 0.0, after_store))

    def stall_next(self, n: int = 1, *, seconds: float, target: FaultTarget = "reports") -> None:
        """Hold the next ``n`` requests for ``seconds`` (at most 300) before handling them."""
        if not 0 <= seconds <= 300:
            raise ConfigurationError("stall must be within 0..300 seconds")
        self._queue(n, target, _Fault(None, None, float(seconds), False))

    def clear(self) -> None:
        """Drop every queued fault."""
        with self._lock:
            for q in self._queues.values():
                q.clear()

    def pending(self, target: FaultTarget = "reports") -> int:
        """Faults still queued for ``target``."""
        with self._lock:
            return len(self._queues[target])

    def requests(self, target: FaultTarget = "reports") -> int:
        """Requests seen for ``target`` since this object was created."""
        with self._lock:
            return self._seen[target]

    def _queue(self, n: int, target: str, fault: _Fault) -> None:
        if target not in self._queues:
            raise ConfigurationError(f"unknown fault target {target!r}")
        with self._lock:
            q = self._queues[target]
            if n < 0 or len(q) + n > self._MAX_QUEUED:
                raise ConfigurationError(f"fault count must be within 0..{self._MAX_QUEUED}")
            q.extend([fault] * n)

    def _take(self, target: str) -> _Fault | None:
        with self._lock:
            self._seen[target] += 1
            q = self._queues[target]
            return q.popleft() if q else None


def _fault_response(fault: _Fault) -> Response:
    headers = {}
    if fault.retry_after is not None:
        headers["Retry-After"] = str(math.ceil(fault.retry_after))
    assert fault.status is not None
    return JSONResponse({"error": "injected fault"}, fault.status, headers=headers)


# --------------------------------------------------------------------------- the site


def _safe_segments(path: str) -> list[str] | None:
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


def _resolve(site_dir: Path, parts: Sequence[str]) -> str | None:
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


def _etag_matches(header: str, etag: str) -> bool:
    """If-None-Match uses weak comparison: ``W/`` prefixes are ignored."""
    if header.strip() == "*":
        return True
    plain = etag.removeprefix("W/")
    return any(c.strip().removeprefix("W/") == plain for c in header.split(","))


def _parse_range(header: str, size: int) -> tuple[int, int] | Literal["ignore", "unsatisfiable"]:
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


def _plan(
    request: Request, etag: str, size: int, headers: dict[str, str]
) -> Response | tuple[int, int, int]:
    """Evaluate validators and Range: a finished 304/416 response, or (status, start, length)."""
    inm = request.headers.get("if-none-match")
    if inm is not None and _etag_matches(inm, etag):
        return Response(status_code=304, headers=headers)
    rng = request.headers.get("range")
    if rng is not None and len(rng) <= 200:
        if_range = request.headers.get("if-range")
        if if_range is None or (if_range.strip() == etag and not etag.startswith("W/")):
            parsed = _parse_range(rng, size)
            if parsed == "unsatisfiable":
                return Response(
                    status_code=416, headers={**headers, "Content-Range": f"bytes */{size}"}
                )
            if parsed != "ignore":
                first, last = parsed
                headers["Content-Range"] = f"bytes {first}-{last}/{size}"
                return 206, first, last - first + 1
    return 200, 0, size


class _FileSlice(Response):
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


@dataclass(frozen=True)
class _ManifestState:
    key: tuple[int, int, int]  # (inode, size, mtime_ns)
    data: bytes
    etag: str
    version: int | None
    racy: bool
    read_at: float  # time.monotonic() of the read


class _Manifest:
    """The current ``manifest.json``, re-read only when its (inode, size, mtime) change.

    Held in memory so that a response's body and ETag always belong together, even while
    the publisher replaces the file. A file modified less than 2 s ago is re-read on
    every check, at most every 50 ms (its mtime could change again within the same timestamp
    tick; the publisher's atomic rename always changes the inode, so this only matters
    for a file rewritten in place).
    """

    def __init__(self, site_dir: Path, max_bytes: int) -> None:
        self._site_dir = site_dir
        self._max = max_bytes
        self._cached: _ManifestState | None = None
        self._warned: tuple[int, int, int] | None = None

    def load(self) -> _ManifestState | None:
        real = _resolve(self._site_dir, [_MANIFEST])
        if real is None:
            return None
        try:
            st = os.stat(real)
        except OSError:
            return None
        c = self._cached
        fresh = c is not None and (not c.racy or time.monotonic() - c.read_at < 0.05)
        if c is not None and fresh and c.key == (st.st_ino, st.st_size, st.st_mtime_ns):
            return c
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
            chunks: list[bytes] = []
            total = 0
            while total <= self._max:
                chunk = os.read(fd, min(_CHUNK, self._max + 1 - total))
                if not chunk:
                    break
                chunks.append(chunk)
                total += len(chunk)
            if total > self._max:
                return None
        finally:
            os.close(fd)
        data = b"".join(chunks)
        etag = f'"{sha256(data).hexdigest()}"'
        racy = time.time_ns() - st.st_mtime_ns < _RACY_NS
        same = c is not None and c.etag == etag
        version = c.version if c is not None and same else _manifest_version(data)
        state = _ManifestState(key, data, etag, version, racy, time.monotonic())
        self._cached = state
        return state


def _manifest_version(data: bytes) -> int | None:
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


class _Hub:
    """Fan-out of manifest changes to ``/events`` listeners on the server's event loop.

    A change bumps ``seq`` and fires the current ``asyncio.Event``, which is then replaced:
    each listener grabs the event and reads ``seq`` in one synchronous step, so no change
    can slip between the two. ``closing`` is a ``threading.Event`` so that any thread may
    ask listeners to finish; the poller notices it within one poll interval.
    """

    def __init__(self) -> None:
        self.seq = 0
        self.version: int | None = None
        self.etag: str | None = None
        self.listeners = 0
        self.closing = threading.Event()
        self._changed: asyncio.Event | None = None

    def changed(self) -> asyncio.Event:
        if self._changed is None:
            self._changed = asyncio.Event()
        return self._changed

    def reset(self) -> None:
        self.closing.clear()
        self._changed = asyncio.Event()

    def fire(self) -> None:
        old = self.changed()
        self._changed = asyncio.Event()
        old.set()

    def publish(self, state: _ManifestState) -> None:
        if state.etag == self.etag:
            return
        self.etag = state.etag
        if state.version is None:
            return
        if self.version is not None:
            log.info("manifest changed: version %s -> %s", self.version, state.version)
        self.version = state.version
        self.seq += 1
        self.fire()


class _EventStream(StreamingResponse):
    """A StreamingResponse that keeps the hub's listener count exact."""

    def __init__(self, hub: _Hub, content: AsyncIterator[bytes]) -> None:
        super().__init__(
            content,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
        self._hub = hub

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self._hub.listeners += 1
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._hub.listeners -= 1


# --------------------------------------------------------------------------- subscribers


@dataclass(frozen=True)
class _Keys:
    keys: dict[str, Ed25519PublicKey]  # keyid -> key
    raw: dict[str, bytes]  # keyid -> raw 32-byte public key
    owners: dict[str, frozenset[str]]  # keyid -> subscriber ids holding that key

    def valid_keyids(self, env: Envelope) -> set[str]:
        """Key ids among ours whose signature over PAE(type, payload) verifies.

        Same contract as :meth:`Envelope.valid_keyids`, which is used unless PyNaCl is
        installed: libsodium then does the (strict, RFC 8032) verification, because at
        thousands of reports per second verification is the server's whole cost.
        """
        if _sodium_open is None:
            return env.valid_keyids(self.keys)
        message = pae(env.payload_type, env.payload)
        good: set[str] = set()
        for kid, sig in env.signatures:
            raw = self.raw.get(kid)
            if raw is None or kid in good or len(sig) != 64:
                continue
            try:
                _sodium_open(sig + message, raw)
            except _SodiumError:
                continue
            good.add(kid)
        return good


_NO_KEYS = _Keys({}, {}, {})


class _Subscribers:
    """Ed25519 keys from ``<dir>/<subscriber_id>.ed25519.pem``, reloaded when the dir changes.

    ``intercept-sdk subscriber add`` writes key files atomically (rename), which changes
    the directory's mtime; a directory changed less than 2 s ago is re-scanned on every
    lookup, and a full re-scan happens at least every 30 s regardless. Unreadable key
    files are skipped with a warning.
    """

    _SUFFIX = ".ed25519.pem"

    def __init__(self, directory: Path | None) -> None:
        self._dir = directory
        self._lock = threading.Lock()
        self._keys = _NO_KEYS
        self._stamp: tuple[int, int] | None = None
        self._racy = True
        self._loaded_at = 0.0

    def snapshot(self) -> _Keys:
        if self._dir is None:
            return _NO_KEYS
        with self._lock:
            try:
                st = os.stat(self._dir)
                stamp: tuple[int, int] | None = (st.st_ino, st.st_mtime_ns)
            except OSError:
                stamp = None
            now = time.monotonic()
            if (
                stamp == self._stamp
                and not self._racy
                and now - self._loaded_at < _SUBSCRIBER_RESCAN
            ):
                return self._keys
            self._keys = self._scan() if stamp is not None else _NO_KEYS
            self._stamp = stamp
            self._racy = stamp is None or time.time_ns() - st.st_mtime_ns < _RACY_NS
            self._loaded_at = now
            return self._keys

    def _scan(self) -> _Keys:
        assert self._dir is not None
        keys: dict[str, Ed25519PublicKey] = {}
        owners: dict[str, set[str]] = {}
        try:
            names = sorted(os.listdir(self._dir))
        except OSError as exc:
            log.warning("cannot list subscriber keys in %s: %s", self._dir, exc.strerror)
            return self._keys
        count = 0
        for name in names:
            if name.startswith(".") or not name.endswith(self._SUFFIX):
                continue
            if count >= _MAX_SUBSCRIBERS:
                log.warning("more than %d subscriber keys; the rest are ignored", _MAX_SUBSCRIBERS)
                break
            sid = name[: -len(self._SUFFIX)]
            path = self._dir / name
            try:
                with path.open("rb") as f:
                    pem = f.read(_MAX_KEY_FILE + 1)
                if len(pem) > _MAX_KEY_FILE:
                    raise ConfigurationError("key file too large")
                key = load_public_key(pem)
            except (OSError, ConfigurationError) as exc:
                log.warning("skipping subscriber key %s: %s", path, exc)
                continue
            kid = keyid_of(key)
            keys[kid] = key
            owners.setdefault(kid, set()).add(sid)
            count += 1
        if len(keys) != len(self._keys.keys):
            log.info("loaded %d subscriber key(s) from %s", len(keys), self._dir)
        raw = {
            kid: key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
            for kid, key in keys.items()
        }
        return _Keys(keys, raw, {k: frozenset(v) for k, v in owners.items()})


# --------------------------------------------------------------------------- reports


class _Refused(Exception):
    """A batch refused as a whole: HTTP status and a message safe to echo."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        self.message = message
        super().__init__(message)


class _BadSignature(_Refused):
    """A report whose signature does not verify (step 2 of :meth:`_Platform._verify_batch`)."""


# The envelopes the SDK sends are canonical JSON (``Envelope.to_bytes``), and a Sender's
# body is ``{"reports":[`` + envelopes joined by "," + ``]}``. Such a body is read with
# these patterns instead of a JSON parse plus a re-serialisation per envelope: a match is
# exactly the canonical JSON of what ``json.loads`` would return for it (keys in order,
# no spaces, nothing escaped), so the stored bytes and every check are the same. Any
# other body takes the general path.
_B64 = rb"[A-Za-z0-9+/]*={0,2}"
_SIG = rb'\{"keyid":"[0-9a-f]{64}","sig":"' + _B64 + rb'"\}'
_CANONICAL_ENVELOPE = re.compile(
    rb'\{"payload":"(' + _B64 + rb')","payload_type":"' + re.escape(REPORT_TYPE.encode())
    + rb'","signatures":\[(' + _SIG + rb"(?:," + _SIG + rb")*)\]\}"
)  # fmt: skip
_CANONICAL_SIG = re.compile(rb'\{"keyid":"([0-9a-f]{64})","sig":"(' + _B64 + rb')"\}')
_BATCH_HEAD = b'{"reports":['
_BATCH_TAIL = b"]}"
if sys.version_info >= (3, 11):
    _b64decode_strict: Callable[[bytes], bytes] = functools.partial(
        binascii.a2b_base64, strict_mode=True
    )  # what base64.b64decode(validate=True) calls
else:  # pragma: no cover - Python 3.10

    def _b64decode_strict(data: bytes) -> bytes:
        return base64.b64decode(data, validate=True)


# Verification is spread over threads: libsodium (through cffi) releases the GIL while
# it verifies, which is most of the work, so a batch uses every core. Below this many
# reports a batch is verified on the request's own thread.
_PARALLEL_MIN = 32


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return os.cpu_count() or 1


#: Threads verifying one batch (the request's own included), at most 4.
_POOL_WORKERS = max(1, min(4, _usable_cores()))
#: A batch is cut into this many chunks per thread, so that a thread that gets less CPU
#: (another process on its core) leaves its share to the others.
_CHUNKS_PER_WORKER = 4


class _Row(NamedTuple):
    report_id: str
    subscriber_id: str
    kind: str
    measure: str | None
    entry_id: str | None
    case_no: str | None
    created_at: str
    envelope: bytes


_SCHEMA = """
CREATE TABLE IF NOT EXISTS reports (
    report_id     TEXT PRIMARY KEY,
    subscriber_id TEXT NOT NULL,
    kind          TEXT NOT NULL,
    measure       TEXT,
    entry_id      TEXT,
    case_no       TEXT,
    created_at    TEXT NOT NULL,
    received_at   TEXT NOT NULL,
    envelope      BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS reports_subscriber ON reports (subscriber_id);
CREATE INDEX IF NOT EXISTS reports_received ON reports (received_at);
"""


class _ReportStore:
    """``<state_dir>/reports.sqlite``: one connection, serialised by a lock.

    WAL with ``synchronous=FULL``: a batch answered 200 is on disk, because the client
    deletes its outbox copy on that answer. One transaction per batch.
    """

    def __init__(self, path: Path) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._closed = False

    def open(self) -> None:
        with self._lock:
            self._connect()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def reopen(self) -> None:
        with self._lock:
            self._closed = False

    def _connect(self) -> sqlite3.Connection:
        if self._closed:
            raise sqlite3.OperationalError("report store is closed")
        if self._conn is None:
            conn = sqlite3.connect(
                self._path, isolation_level=None, check_same_thread=False, timeout=5.0
            )
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=FULL")
                conn.executescript(_SCHEMA)
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        return self._conn

    def insert(self, rows: list[_Row]) -> tuple[list[str], list[str]]:
        """Store new reports; return (accepted ids, duplicate ids) in batch order."""
        received = format_utc(utcnow())
        with self._lock:
            conn = self._connect()
            conn.execute("BEGIN IMMEDIATE")
            try:
                ids = [r.report_id for r in rows]
                existing: dict[str, str] = {}
                for i in range(0, len(ids), 500):
                    part = ids[i : i + 500]
                    marks = ",".join("?" * len(part))
                    existing.update(
                        conn.execute(
                            f"SELECT report_id, subscriber_id FROM reports "
                            f"WHERE report_id IN ({marks})",
                            part,
                        ).fetchall()
                    )
                accepted: list[str] = []
                duplicates: list[str] = []
                new: list[tuple[Any, ...]] = []
                for r in rows:
                    owner = existing.get(r.report_id)
                    if owner is not None:
                        duplicates.append(r.report_id)
                        if owner != r.subscriber_id:
                            log.warning(
                                "report_id %s sent by %s was stored for %s; kept the first",
                                r.report_id, r.subscriber_id, owner,
                            )  # fmt: skip
                        continue
                    existing[r.report_id] = r.subscriber_id
                    accepted.append(r.report_id)
                    new.append(
                        (r.report_id, r.subscriber_id, r.kind, r.measure, r.entry_id,
                         r.case_no, r.created_at, received, r.envelope)
                    )  # fmt: skip
                conn.executemany(
                    "INSERT OR IGNORE INTO reports (report_id, subscriber_id, kind, measure, "
                    "entry_id, case_no, created_at, received_at, envelope) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    new,
                )
                conn.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                raise
        return accepted, duplicates

    def query(
        self, subscriber: str | None, kind: str | None, since: str | None, limit: int
    ) -> list[dict[str, Any]]:
        where: list[str] = []
        args: list[Any] = []
        for column, op, value in (
            ("subscriber_id", "=", subscriber),
            ("kind", "=", kind),
            ("received_at", ">=", since),
        ):
            if value is not None:
                where.append(f"{column} {op} ?")
                args.append(value)
        sql = "SELECT envelope, received_at FROM reports"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY rowid LIMIT ?"
        args.append(limit)
        with self._lock:
            rows = self._connect().execute(sql, args).fetchall()
        out: list[dict[str, Any]] = []
        for envelope, received_at in rows:
            payload = Envelope.from_bytes(envelope).payload_json()
            payload["received_at"] = received_at
            out.append(payload)
        return out


def _optional_text(payload: dict[str, Any], name: str, index: int | str) -> str | None:
    value = payload.get(name)
    if value is None or (type(value) is str and len(value) <= _MAX_FIELD):
        return value
    if not isinstance(value, str) or len(value) > _MAX_FIELD:
        raise _Refused(
            400, f"{_where(index)}: {name} must be a string of at most {_MAX_FIELD} chars"
        )
    return value


def _where(index: int | str) -> str:
    return index if isinstance(index, str) else f"report {index}"


def _check_payload(
    payload: dict[str, Any], signers: frozenset[str], envelope: bytes, index: int | str
) -> _Row:
    """Validate a verified report payload; the subscriber must be the one who signed.

    ``index`` is the report's position in its batch (or a ready-made label), for messages.
    """
    if payload.get("type") != "report":
        raise _Refused(400, f'{_where(index)}: type must be "report"')
    rid = payload.get("report_id")
    if not isinstance(rid, str) or not _REPORT_ID_RE.fullmatch(rid):
        raise _Refused(400, f"{_where(index)}: report_id must be 32 lower-case hex characters")
    sid = payload.get("subscriber_id")
    if not isinstance(sid, str) or not sid:
        raise _Refused(400, f"{_where(index)}: subscriber_id must be a non-empty string")
    if sid not in signers:
        raise _Refused(
            403, f"{_where(index)}: not signed by the key registered for its subscriber_id"
        )
    kind = payload.get("kind")
    if kind not in REPORT_KINDS:
        raise _Refused(
            400, f"{_where(index)}: kind must be one of {', '.join(sorted(REPORT_KINDS))}"
        )
    created = payload.get("created_at")
    try:
        if not isinstance(created, str) or len(created) > _MAX_FIELD:
            raise ValueError
        parse_utc(created)
    except ValueError:
        raise _Refused(
            400, f"{_where(index)}: created_at must be an ISO 8601 UTC date-time"
        ) from None
    return _Row(
        rid,
        sid,
        kind,
        _optional_text(payload, "measure", index),
        _optional_text(payload, "entry_id", index),
        _optional_text(payload, "case_no", index),
        created,
        envelope,
    )


# --------------------------------------------------------------------------- the app


class _Platform:
    """Everything one app instance holds. Reached as ``app.state.platform``."""

    def __init__(
        self,
        site_dir: Path,
        subscribers_dir: Path | None,
        state_dir: Path,
        faults: Faults | None,
        limits: Limits,
    ) -> None:
        self.site_dir = site_dir
        self.limits = limits
        self.faults = faults
        self.manifest = _Manifest(site_dir, limits.max_manifest_bytes)
        self.hub = _Hub()
        self.subscribers = _Subscribers(subscribers_dir)
        self.store = _ReportStore(state_dir / "reports.sqlite")
        self.store.open()
        self._inflight = 0
        self._limiter: anyio.CapacityLimiter | None = None
        # Threads that verify signatures (see _PARALLEL_MIN); started with the app.
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()

    # -- lifecycle

    def begin_shutdown(self) -> None:
        """Ask every ``/events`` listener to finish (from any thread); see :class:`_Hub`."""
        self.hub.closing.set()

    def start_pool(self) -> None:
        """Start the verification threads (idempotent); without them, batches verify inline."""
        with self._pool_lock:
            if self._pool is None and _POOL_WORKERS > 1:
                self._pool = concurrent.futures.ThreadPoolExecutor(
                    _POOL_WORKERS - 1, thread_name_prefix="intercept-platform-verify"
                )

    def stop_pool(self) -> None:
        """Stop the verification threads without waiting (bounded, idempotent).

        Work not started yet is cancelled; a batch waiting for it verifies the rest on
        its own thread. A chunk already running finishes on its own (each is bounded by
        ``max_reports_per_batch`` verifications).
        """
        with self._pool_lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        self.hub.reset()
        self.store.reopen()
        self.start_pool()
        self._limiter = anyio.CapacityLimiter(4)
        state = self.manifest.load()
        if state is not None:
            self.hub.publish(state)
        log.info("serving %s (manifest version %s)", self.site_dir, self.hub.version)
        task = asyncio.create_task(self._poll_manifest(), name="intercept-platform-poll")
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            self.stop_pool()
            self.store.close()

    async def _poll_manifest(self) -> None:
        """The one background task that watches ``manifest.json`` for all listeners."""
        failures = 0
        while True:
            if self.hub.closing.is_set():
                self.hub.fire()
                await asyncio.sleep(self.limits.poll_interval)
                continue
            try:
                state = self.manifest.load()
                failures = 0
            except Exception:  # never let the poller die; log a bounded number of times
                failures += 1
                if failures <= 3:
                    log.exception("cannot read manifest.json")
                state = None
            if state is not None:
                self.hub.publish(state)
            await asyncio.sleep(self.limits.poll_interval)

    # -- site

    async def site_file(self, request: Request) -> Response:
        if self.faults is not None:
            fault = self.faults._take("site")
            if fault is not None:
                if fault.stall:
                    await anyio.sleep(fault.stall)
                if fault.status is not None:
                    return _fault_response(fault)
        parts = _safe_segments(request.path_params["path"])
        if parts is None:
            return _not_found()
        if parts == [_MANIFEST]:
            return self._serve_manifest(request)
        real = _resolve(self.site_dir, parts)
        if real is None:
            return _not_found()
        try:
            fd = os.open(real, _OPEN_FLAGS)
        except OSError:
            return _not_found()
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                os.close(fd)
                return _not_found()
            # Artefacts are immutable and named by content hash, so size+mtime is a
            # sufficient validator (what nginx uses too); no need to hash large files.
            etag = f'"{st.st_mtime_ns:x}-{st.st_size:x}"'
            headers = {
                "ETag": etag,
                "Cache-Control": _IMMUTABLE,
                "Accept-Ranges": "bytes",
                "Content-Type": _content_type(parts[-1]),
            }
            plan = _plan(request, etag, st.st_size, headers)
            if isinstance(plan, Response):
                os.close(fd)
                return plan
            status, start, length = plan
            return _FileSlice(fd, start, length, status, headers)
        except BaseException:
            with contextlib.suppress(OSError):
                os.close(fd)
            raise

    def _serve_manifest(self, request: Request) -> Response:
        state = self.manifest.load()
        if state is None:
            return _not_found()
        headers = {
            "ETag": state.etag,
            "Cache-Control": "no-cache",
            "Accept-Ranges": "bytes",
            "Content-Type": "application/json",
        }
        plan = _plan(request, state.etag, len(state.data), headers)
        if isinstance(plan, Response):
            return plan
        status, start, length = plan
        return Response(state.data[start : start + length], status, headers=headers)

    # -- events

    async def events(self, request: Request) -> Response:
        if request.method == "HEAD":  # no stream to hold open for a HEAD
            return Response(media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        if self.hub.listeners >= self.limits.max_listeners:
            return JSONResponse({"error": "too many listeners"}, 503, headers={"Retry-After": "5"})
        return _EventStream(self.hub, self._event_source())

    async def _event_source(self) -> AsyncIterator[bytes]:
        hub = self.hub
        sent = 0
        while not hub.closing.is_set():
            changed = hub.changed()  # grab the event and read seq with no await between
            if hub.seq != sent and hub.version is not None:
                sent = hub.seq
                yield (
                    b"event: version\ndata: %s\n\n" % json.dumps({"version": hub.version}).encode()
                )
                continue
            with anyio.move_on_after(self.limits.heartbeat_interval) as scope:
                await changed.wait()
            if scope.cancelled_caught and not hub.closing.is_set():
                yield b": ping\n\n"

    # -- reports

    async def reports(self, request: Request) -> Response:
        if request.method == "GET":
            return await self._list_reports(request)
        fault = self.faults._take("reports") if self.faults is not None else None
        if fault is not None and fault.stall:
            await anyio.sleep(fault.stall)
        if fault is not None and fault.status is not None and not fault.after_store:
            return _fault_response(fault)
        if self._inflight >= self.limits.max_inflight_report_requests:
            return _error(503, "too many report uploads in progress", retry_after=1)
        self._inflight += 1
        try:
            body = await self._read_body(request)
            if isinstance(body, Response):
                return body
            status, result = await anyio.to_thread.run_sync(
                self._ingest, body, limiter=self._limiter
            )
        except ClientDisconnect:
            return _error(400, "client disconnected")
        finally:
            self._inflight -= 1
        if fault is not None and fault.status is not None and status == 200:
            return _fault_response(fault)
        return JSONResponse(result, status, headers={"Retry-After": "5"} if status == 503 else None)

    async def _read_body(self, request: Request) -> bytes | Response:
        """The request body, at most ``max_body_bytes``; else a 413 (after a bounded drain)."""
        cap = self.limits.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None:
            if not declared.isdigit() or len(declared) > 19:
                return _error(400, "bad Content-Length")
            if int(declared) > cap:
                return await self._too_large(request, 0)
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > cap:
                return await self._too_large(request, len(body))
        return bytes(body)

    async def _too_large(self, request: Request, seen: int) -> Response:
        # Read (and drop) a bounded amount of the rest, so that a client that sends its
        # whole body before reading the answer sees the 413 rather than a reset.
        if seen <= self.limits.max_drain_bytes:
            with contextlib.suppress(ClientDisconnect):
                async for chunk in request.stream():
                    seen += len(chunk)
                    if seen > self.limits.max_drain_bytes:
                        break
        return _error(413, f"request body larger than {self.limits.max_body_bytes} bytes")

    def _ingest(self, body: bytes) -> tuple[int, dict[str, Any]]:
        """Parse, verify and store one batch (in a worker thread). Never raises _Refused."""
        try:
            rows = self._verify_batch(body)
        except _Refused as exc:
            log.warning("report batch refused (%d): %s", exc.status, exc.message)
            return exc.status, {"error": exc.message}
        try:
            accepted, duplicates = self.store.insert(rows)
        except sqlite3.Error:
            log.exception("cannot store reports")
            return 503, {"error": "report store unavailable"}
        log.info(
            "report batch: %d accepted, %d duplicate(s) from %s",
            len(accepted), len(duplicates), ",".join(sorted({r.subscriber_id for r in rows})),
        )  # fmt: skip
        return 200, {"accepted": accepted, "duplicates": duplicates}

    def _verify_batch(self, body: bytes) -> list[_Row]:
        """Parse, verify and check one batch; raise :class:`_Refused` for the first problem.

        Three steps, each over the whole batch in order, so the answer names the first
        report that fails the earliest step: (1) the envelopes' shape; (2) every signature,
        before any payload is parsed (the signing key names the subscriber); (3) the
        payloads, now authenticated. Steps 2 and 3 of a report run together on one of the
        verification threads (its payload only after its own signature verified); the
        outcome, including which error is reported, is the same as one pass after another.
        """
        envelopes = self._canonical_envelopes(body)
        if envelopes is None:
            envelopes = self._parsed_envelopes(body)
        keys = self.subscribers.snapshot()
        results = self._map_chunks(
            lambda lo, hi: [
                self._authenticate(keys, env, raw, i) for i, (env, raw) in enumerate(
                    envelopes[lo:hi], lo
                )
            ],
            len(envelopes),
        )  # fmt: skip
        for r in results:
            if isinstance(r, _BadSignature):
                raise r
        rows: list[_Row] = []
        for r in results:
            if isinstance(r, _Refused):
                raise r
            rows.append(r)
        return rows

    def _parsed_envelopes(self, body: bytes) -> list[tuple[Envelope, bytes]]:
        """Step 1 for any JSON body."""
        try:
            doc = json.loads(body)
        except (ValueError, RecursionError):
            raise _Refused(400, "body is not JSON") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("reports"), list):
            raise _Refused(400, 'body must be {"reports": [<envelope>, ...]}')
        items: list[Any] = doc["reports"]
        self._check_count(len(items))
        # The signature covers the base64-decoded payload, so re-encoding the outer JSON
        # object to feed Envelope.from_bytes is harmless.
        envelopes: list[tuple[Envelope, bytes]] = []
        for i, obj in enumerate(items):
            where = f"report {i}"
            if not isinstance(obj, dict):
                raise _Refused(400, f"{where}: not a JSON object")
            try:
                raw = canonical_json(obj)
                env = Envelope.from_bytes(raw)
            except (FormatError, ValueError, TypeError, RecursionError) as exc:
                raise _Refused(400, f"{where}: {exc}") from None
            if env.payload_type != REPORT_TYPE:
                raise _Refused(400, f"{where}: payload_type must be {REPORT_TYPE}")
            self._check_signature_count(env, where)
            envelopes.append((env, raw))
        return envelopes

    def _canonical_envelopes(self, body: bytes) -> list[tuple[Envelope, bytes]] | None:
        """Step 1 for a body of canonical envelopes (what the SDK sends), else None.

        Same checks and results as :meth:`_parsed_envelopes`, without parsing JSON.
        """
        if not (body.startswith(_BATCH_HEAD) and body.endswith(_BATCH_TAIL)):
            return None
        end = len(body) - len(_BATCH_TAIL)
        pos = len(_BATCH_HEAD)
        spans: list[re.Match[bytes]] = []
        match = _CANONICAL_ENVELOPE.match
        while True:
            m = match(body, pos, end)
            if m is None:
                return None
            spans.append(m)
            pos = m.end()
            if pos == end:
                break
            if body[pos] != 0x2C:  # ","
                return None
            pos += 1
        self._check_count(len(spans))
        envelopes: list[tuple[Envelope, bytes]] = []
        most = self.limits.max_signatures_per_report
        for i, m in enumerate(spans):
            payload_b64, sigs_json = m.group(1, 2)
            try:
                payload = _b64decode_strict(payload_b64)
            except (binascii.Error, ValueError):
                raise _Refused(400, f"report {i}: payload is not valid base64") from None
            try:
                sigs = tuple(
                    (kid.decode(), _b64decode_strict(sig))
                    for kid, sig in _CANONICAL_SIG.findall(sigs_json)
                )
            except (binascii.Error, ValueError):
                raise _Refused(400, f"report {i}: signature is not valid base64") from None
            env = Envelope(REPORT_TYPE, payload, sigs)
            if len(sigs) > most:
                self._check_signature_count(env, f"report {i}")
            envelopes.append((env, m.group(0)))
        return envelopes

    def _check_count(self, n: int) -> None:
        if n > self.limits.max_reports_per_batch:
            raise _Refused(413, f"at most {self.limits.max_reports_per_batch} reports per batch")

    def _check_signature_count(self, env: Envelope, where: str) -> None:
        if not env.signatures or len(env.signatures) > self.limits.max_signatures_per_report:
            raise _Refused(
                400, f"{where}: needs 1..{self.limits.max_signatures_per_report} signatures"
            )

    @staticmethod
    def _authenticate(keys: _Keys, env: Envelope, raw: bytes, i: int) -> _Row | _Refused:
        """Steps 2 and 3 for one report: the row, or why it is refused (not raised)."""
        valid = keys.valid_keyids(env)
        if not valid:
            if any(kid in keys.keys for kid, _ in env.signatures):
                return _BadSignature(403, f"report {i}: signature does not verify")
            return _BadSignature(403, f"report {i}: not signed by any registered subscriber")
        # Authenticated from here on.
        if len(valid) == 1:
            (only,) = valid
            who = keys.owners[only]
        else:
            who = frozenset(sid for k in valid for sid in keys.owners[k])
        try:
            payload = env.payload_json()
        except (FormatError, RecursionError):
            return _Refused(400, f"report {i}: payload is not a JSON object")
        try:
            return _check_payload(payload, who, raw, i)
        except _Refused as exc:
            return exc

    def _map_chunks(
        self, work: Callable[[int, int], list[_Row | _Refused]], n: int
    ) -> list[_Row | _Refused]:
        """``work(0, n)``, in chunks shared between the verification threads and this one.

        The pool takes chunks from the front while this thread takes them from the back,
        so neither waits for the other unless both are busy (a core taken by another
        process, the pool busy with another batch, or stopped: then this thread does all).
        """
        pool = self._pool
        if pool is None or n < _PARALLEL_MIN:
            return work(0, n)
        parts = min(_CHUNKS_PER_WORKER * _POOL_WORKERS, max(2, n // (_PARALLEL_MIN // 2)))
        bounds = [(n * k // parts, n * (k + 1) // parts) for k in range(parts)]
        results: list[list[_Row | _Refused] | None] = [None] * parts
        futures: list[concurrent.futures.Future[list[_Row | _Refused]] | None] = []
        for lo, hi in bounds:
            try:
                futures.append(pool.submit(work, lo, hi))
            except RuntimeError:  # the pool was shut down meanwhile: do it here
                futures.append(None)
        for k in range(parts - 1, -1, -1):
            future = futures[k]
            if future is None or future.cancel():  # not started by the pool: take it
                results[k] = work(*bounds[k])
        out: list[_Row | _Refused] = []
        for done, future in zip(results, futures, strict=True):
            if done is not None:
                out.extend(done)
            elif future is not None:  # always: a chunk without a future was done above
                out.extend(future.result())
        return out

    async def _list_reports(self, request: Request) -> Response:
        q = request.query_params
        subscriber = q.get("subscriber") or None
        kind = q.get("kind") or None
        since = q.get("since") or None
        if subscriber is not None and len(subscriber) > 128:
            return _error(400, "subscriber is too long")
        if kind is not None and kind not in REPORT_KINDS:
            return _error(400, f"kind must be one of {', '.join(sorted(REPORT_KINDS))}")
        if since is not None:
            try:
                since = format_utc(parse_utc(since[:64]))
            except ValueError:
                return _error(400, "since must be an ISO 8601 UTC date-time")
        raw_limit = q.get("limit", "100")
        if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= self.limits.max_list_limit:
            return _error(400, f"limit must be within 1..{self.limits.max_list_limit}")
        try:
            rows = await anyio.to_thread.run_sync(
                self.store.query, subscriber, kind, since, int(raw_limit), limiter=self._limiter
            )
        except sqlite3.Error:
            log.exception("cannot read reports")
            return _error(503, "report store unavailable", retry_after=5)
        return JSONResponse(rows)


def _not_found() -> Response:
    # no-store: an artefact may be published a moment later; no cache may keep the 404.
    return PlainTextResponse("not found\n", 404, headers={"Cache-Control": "no-store"})


def _error(status: int, message: str, *, retry_after: int | None = None) -> Response:
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    return JSONResponse({"error": message}, status, headers=headers)


def create_app(
    site_dir: Path,
    *,
    subscribers_dir: Path | None,
    state_dir: Path,
    faults: Faults | None = None,
    limits: Limits | None = None,
) -> Starlette:
    """Build the platform ASGI app. Configuration errors raise here, not at first request.

    ``site_dir`` must exist (it may still lack ``manifest.json``); ``state_dir`` is created
    and holds ``reports.sqlite``; ``subscribers_dir=None`` means no subscriber is known, so
    every report batch is refused with 403. The app's state object is
    ``app.state.platform``.
    """
    site_dir = Path(site_dir)
    if not site_dir.is_dir():
        raise ConfigurationError(f"site directory {site_dir} does not exist")
    state_dir = Path(state_dir)
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        platform = _Platform(
            site_dir,
            Path(subscribers_dir) if subscribers_dir is not None else None,
            state_dir,
            faults,
            limits or Limits(),
        )
    except (OSError, sqlite3.Error) as exc:
        raise ConfigurationError(f"cannot use state directory {state_dir}: {exc}") from None
    app = Starlette(
        routes=[
            Route("/events", platform.events, methods=["GET"]),
            Route("/reports", platform.reports, methods=["GET", "POST"]),
            Route("/{path:path}", platform.site_file, methods=["GET", "HEAD"]),
        ],
        lifespan=platform.lifespan,
    )
    app.state.platform = platform
    return app


# --------------------------------------------------------------------------- running it


class _UvicornServer(uvicorn.Server):
    """uvicorn.Server that tells the app to end its event streams before shutting down.

    Without that, an open ``/events`` stream would hold the graceful shutdown until its
    timeout. ``on_started`` runs once the socket is listening.
    """

    def __init__(
        self,
        config: uvicorn.Config,
        platform: _Platform,
        on_started: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(config)
        self._platform = platform
        self._on_started = on_started

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started and self._on_started is not None:
            self._on_started()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self._platform.begin_shutdown()
        await super().shutdown(sockets)


def _bind(host: str, port: int) -> socket.socket:
    """Bind the listening socket ourselves: with port 0 the port is known race-free."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto must be IPPROTO_TCP, not 0: asyncio only sets TCP_NODELAY on accepted sockets
    # whose proto says TCP, and without it every small response waits ~40 ms (Nagle
    # against delayed ACK).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class PlatformServer:
    """The platform app under uvicorn: in a background thread (tests, demo) or foreground.

    ``start()`` returns once the socket listens; ``stop()`` is idempotent and bounded (a
    graceful shutdown of at most ``Limits.graceful_shutdown`` s, then a forced exit).
    ``state_dir=None`` uses a temporary directory removed by ``stop()``.
    """

    def __init__(
        self,
        site_dir: Path,
        *,
        subscribers_dir: Path | None = None,
        state_dir: Path | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        faults: Faults | None = None,
        log_level: str = "warning",
        limits: Limits | None = None,
        access_log: bool = False,
    ) -> None:
        self.site_dir = Path(site_dir)
        self.subscribers_dir = Path(subscribers_dir) if subscribers_dir is not None else None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if state_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="intercept-platform-")
            state_dir = Path(self._tmp.name)
        self.state_dir = Path(state_dir)
        self.host = host
        self.faults = faults
        self.limits = limits or Limits()
        self._requested_port = port
        self._log_level = log_level
        self._access_log = access_log
        self._lock = threading.Lock()
        self._port: int | None = None
        self._server: _UvicornServer | None = None
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None
        self._platform: _Platform | None = None
        self._error: BaseException | None = None
        self._stopped = False

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the platform server is not started")
        return self._port

    @property
    def url(self) -> str:
        return _url(self.host, self.port)

    def _prepare(
        self, on_started: Callable[[], None] | None = None
    ) -> tuple[_UvicornServer, socket.socket]:
        if self._stopped:
            raise RuntimeError("a stopped PlatformServer cannot be restarted")
        if self._server is not None:
            raise RuntimeError("the platform server is already running")
        app = create_app(
            self.site_dir,
            subscribers_dir=self.subscribers_dir,
            state_dir=self.state_dir,
            faults=self.faults,
            limits=self.limits,
        )
        platform: _Platform = app.state.platform
        try:
            sock = _bind(self.host, self._requested_port)
        except OSError as exc:
            platform.store.close()
            raise ConfigurationError(
                f"cannot listen on {self.host}:{self._requested_port}: {exc.strerror}"
            ) from None
        config = uvicorn.Config(
            app,
            log_level=self._log_level,
            log_config=None,  # leave the host application's logging alone
            access_log=self._access_log,
            lifespan="on",
            loop="asyncio",
            http="h11",
            ws="none",
            backlog=2048,
            limit_concurrency=4096,
            timeout_keep_alive=5,
            timeout_graceful_shutdown=self.limits.graceful_shutdown,
        )
        self._platform = platform
        self._sock = sock
        self._port = sock.getsockname()[1]
        self._server = _UvicornServer(config, platform, on_started)
        return self._server, sock

    def start(self, timeout: float = 10.0) -> PlatformServer:
        """Run in a daemon thread; return once listening (raise if it did not start)."""
        with self._lock:
            server, sock = self._prepare()

            def run() -> None:
                try:
                    server.run(sockets=[sock])
                except BaseException as exc:  # SystemExit on a failed lifespan startup
                    self._error = exc
                    log.error("platform server thread ended: %r", exc)

            self._thread = threading.Thread(
                target=run, name=f"intercept-platform-{self._port}", daemon=True
            )
            self._thread.start()
        deadline = time.monotonic() + timeout
        while not server.started:
            if not self._thread.is_alive():
                self.stop()
                raise RuntimeError(f"the platform server failed to start: {self._error!r}")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"the platform server did not start within {timeout} s")
            time.sleep(0.01)
        log.info("platform server listening on %s", self.url)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop and wait at most ``timeout`` s (then force); safe to call more than once."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
            server, thread = self._server, self._thread
        if self._platform is not None:
            self._platform.begin_shutdown()
        if server is not None and thread is not None:
            server.should_exit = True
            thread.join(timeout)
            if thread.is_alive():
                server.force_exit = True
                thread.join(1.0)
                if thread.is_alive():  # pragma: no cover - uvicorn did not honour force_exit
                    log.warning("platform server thread did not stop; abandoning it")
        self._cleanup()

    def _cleanup(self) -> None:
        if self._sock is not None:
            self._sock.close()
        if self._platform is not None:
            self._platform.store.close()
        if self._tmp is not None:
            with contextlib.suppress(OSError):
                self._tmp.cleanup()

    def serve_forever(self, on_ready: Callable[[str], None] | None = None) -> None:
        """Run in the calling thread until SIGINT/SIGTERM; ``on_ready(url)`` once listening.

        Ctrl-C shuts down gracefully and returns normally.
        """
        with self._lock:
            server, _ = self._prepare(
                (lambda: on_ready(self.url)) if on_ready is not None else None
            )
            sock = self._sock
            assert sock is not None
        try:
            server.run(sockets=[sock])
        except KeyboardInterrupt:
            pass
        finally:
            with self._lock:
                self._stopped = True
            self._cleanup()

    def __enter__(self) -> PlatformServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --------------------------------------------------------------------------- subprocess


class ServerProcess(subprocess.Popen[bytes]):
    """``python -m intercept_sdk._platform.server`` as a separate process (a real Popen).

    Adds ``url``/``port`` (known once it printed its ``listening on`` line) and a bounded
    ``stop()``; using it as a context manager stops it on exit.
    """

    url: str
    port: int

    def stop(self, timeout: float = 5.0) -> int:
        """SIGTERM, wait up to ``timeout`` s, then SIGKILL. Returns the exit status."""
        if self.poll() is None:
            self.terminate()
            try:
                self.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                self.wait(5.0)
        if self.stdout is not None:
            self.stdout.close()
        return self.returncode

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def run_server_process(
    site_dir: Path,
    *,
    subscribers_dir: Path | None = None,
    state_dir: Path | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    log_level: str = "warning",
    timeout: float = 15.0,
    env: dict[str, str] | None = None,
) -> ServerProcess:
    """Start the server as a child process and return once it listens.

    The child binds the port itself (``port=0`` picks a free one) and reports it, so
    there is no race. Its stderr is inherited; its stdout carries only that one line.
    """
    cmd = [sys.executable, "-m", "intercept_sdk._platform.server", "--site", str(site_dir)]
    cmd += ["--host", host, "--port", str(port), "--log-level", log_level]
    if subscribers_dir is not None:
        cmd += ["--subscribers", str(subscribers_dir)]
    if state_dir is not None:
        cmd += ["--state", str(state_dir)]
    proc = ServerProcess(cmd, stdout=subprocess.PIPE, env=env)
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    buf = b""
    deadline = time.monotonic() + timeout
    try:
        while b"\n" not in buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"platform process did not start within {timeout} s")
            ready, _, _ = select.select([fd], [], [], min(remaining, 0.5))
            if ready:
                chunk = os.read(fd, 4096)
                if not chunk:
                    raise RuntimeError(
                        f"platform process exited before listening (status {proc.wait(5)})"
                    )
                buf += chunk
                if len(buf) > 4096:
                    raise RuntimeError("platform process printed something unexpected")
        line = buf.split(b"\n", 1)[0].decode(errors="replace").strip()
        m = re.fullmatch(r"listening on (http://\S+:(\d+))", line)
        if m is None:
            raise RuntimeError(f"unexpected first line from platform process: {line[:200]!r}")
    except BaseException:
        proc.stop(timeout=2.0)
        raise
    proc.url, proc.port = m.group(1), int(m.group(2))
    return proc


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m intercept_sdk._platform.server``: serve a site until SIGINT/SIGTERM."""
    parser = argparse.ArgumentParser(
        prog="python -m intercept_sdk._platform.server", description="Reference platform server."
    )
    parser.add_argument("--site", type=Path, required=True, help="published site directory")
    parser.add_argument("--subscribers", type=Path, help="dir of <id>.ed25519.pem keys")
    parser.add_argument("--state", type=Path, help="dir for reports.sqlite (default: temp)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--access-log", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )

    def ready(url: str) -> None:
        print(f"listening on {url}", flush=True)

    # SIGTERM ends the process like Ctrl-C: graceful shutdown, then exit status 0.
    def on_term(signum: int, frame: object) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, on_term)
    try:
        server = PlatformServer(
            args.site,
            subscribers_dir=args.subscribers,
            state_dir=args.state,
            host=args.host,
            port=args.port,
            log_level=args.log_level.lower(),
            access_log=args.access_log,
        )
        server.serve_forever(on_ready=ready)
    except ConfigurationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
