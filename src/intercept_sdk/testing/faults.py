"""A fault simulator: the reference platform misbehaving on purpose, driven from a test.

Why it exists: a client is only as reliable as its handling of a platform, a CDN or a
network that fails -- 5xx storms, ``429`` with ``Retry-After``, an answer lost after the
platform stored a batch, a connection cut mid-body, a wrong ``Content-Length``, a slow
drip, an older manifest, a stale ETag, a push channel sending garbage. Like python-tuf's
repository simulator, this module is shipped so that integrators can replay those
failures against their own integration, and it is the SDK's own (only) fault injector.

It hooks in from the outside; the server has no fault code path. One
:class:`FaultSimulator` holds one ordered list of faults and two hooks share it:

* :meth:`FaultSimulator.middleware` -- an ASGI middleware for the platform app
  (``PlatformServer(..., middleware=[sim.middleware()])``, or
  ``TestPlatform.serve(faults=sim)``): faults the server answers with;
* :meth:`FaultSimulator.transport` -- an ``httpx`` transport wrapping the real one (pass
  it as a Client's ``transport``): faults only the network can produce (timeouts, refused
  connections, a reset mid-body). It also records every request it carried.

Each request takes the first queued fault whose target matches and that its hook can
produce, and uses up one of its ``count``. Targets: ``"any"``; ``"site"`` (every site
file), ``"manifest"``, ``"root"`` (``root/*``), ``"artefact"`` (any other site file);
``"events"`` (``/events``); ``"reports"`` (``POST /reports``); or an exact URL path
starting with ``/``. Thread-safe: a test thread queues faults while the server's thread
consumes them. Everything is bounded (waits, counts, the queue); faults that alter a
body hold that one response in memory, which suits test sites.

Kinds, with their parameters (defaults in brackets):

server side
    ``status`` (``status`` [503], ``retry_after`` [None], ``after_store`` [False]: let
    the request through and replace a 200 answer, as if the answer was lost);
    ``stall`` (``seconds``: wait, then answer normally); ``hang`` (``seconds`` [30]: never
    answer); ``truncate`` (``after`` [half]: close the connection mid-body);
    ``short_length`` / ``long_length`` (``by`` [7 / 1000]: a ``Content-Length`` that
    many bytes short, body cut to match / long, connection closed);
    ``oversize`` (``extra`` [100000] zero bytes appended); ``drip`` (``interval`` [0.1]
    s per byte, for at most ``seconds`` [10]); ``redirect`` (302 to another host);
    ``older`` (``data``: served instead of the file); ``stale_etag`` (``304`` to every
    conditional request, as a CDN that missed the change); ``events`` (``events``: the
    raw bytes the push channel sends, then holds ``hold`` [2] s and ends).
transport side
    ``connect_timeout``, ``read_timeout``, ``connect_error``; ``reset`` (``after``
    [half]: the body breaks off with a connection reset).
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import threading
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import anyio
import httpx

from .._exceptions import ConfigurationError

if TYPE_CHECKING:
    from starlette.middleware import Middleware

__all__ = ["ALWAYS", "FaultSimulator", "Seen", "SimulatedTransport"]

ALWAYS = 1 << 40
"""A ``count`` that does not run out: the fault stays until :meth:`FaultSimulator.clear`."""

FaultKind = Literal[
    "status", "stall", "hang", "truncate", "short_length", "long_length", "oversize", "drip",
    "redirect", "older", "stale_etag", "events",
    "connect_timeout", "read_timeout", "connect_error", "reset",
]  # fmt: skip

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_TRANSPORT_KINDS = frozenset({"connect_timeout", "read_timeout", "connect_error", "reset"})
_BODY_KINDS = frozenset({"truncate", "short_length", "long_length", "oversize", "drip"})
_SERVER_KINDS = _BODY_KINDS | {
    "status", "stall", "hang", "redirect", "older", "stale_etag", "events"
}  # fmt: skip
_CATEGORIES = frozenset({"manifest", "root", "artefact", "events", "reports", "listing"})
_SITE = frozenset({"manifest", "root", "artefact"})
_MAX_FAULTS = 10_000
_MAX_WAIT = 300.0
_MAX_SEEN = 100_000


@dataclass
class _Fault:
    kind: str
    target: str
    remaining: int
    params: dict[str, Any]


@dataclass(frozen=True)
class Seen:
    """A request the transport hook carried: its path, headers, answer and fault."""

    path: str
    headers: dict[str, str]
    status: int
    fault: str = ""


def category_of(method: str, path: str) -> str:
    """What a request is for: manifest, root, artefact, events, reports (a POST) or
    listing (``GET /reports``)."""
    if path == "/reports":
        return "reports" if method == "POST" else "listing"
    if path == "/events":
        return "events"
    if path == "/manifest.json":
        return "manifest"
    return "root" if path.startswith("/root/") else "artefact"


def _matches(fault: _Fault, category: str, path: str) -> bool:
    target = fault.target
    if target.startswith("/"):
        hit = target == path
    else:
        hit = target in ("any", category) or (target == "site" and category in _SITE)
    # The push channel is a stream that never ends: only its own kinds apply to it.
    return hit and not (category == "events" and fault.kind in _BODY_KINDS)


class FaultSimulator:
    """One ordered list of faults, used by both hooks (see the module docstring)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: list[_Fault] = []
        self._hits: Counter[str] = Counter()
        self._requests: Counter[str] = Counter()
        self._paths: Counter[str] = Counter()

    # -- queueing faults

    def add(self, kind: FaultKind, target: str = "any", count: int = 1, **params: Any) -> None:
        """Queue ``count`` uses (:data:`ALWAYS`: until cleared) of a fault for ``target``."""
        if kind not in _SERVER_KINDS | _TRANSPORT_KINDS:
            raise ConfigurationError(f"unknown fault kind {kind!r}")
        if not (target.startswith("/") or target in _CATEGORIES | _SITE | {"any", "site"}):
            raise ConfigurationError(f"unknown fault target {target!r}")
        if not 0 <= count <= ALWAYS:
            raise ConfigurationError(f"fault count must be within 0..{ALWAYS}")
        _check_params(kind, params)
        with self._lock:
            if len(self._faults) >= _MAX_FAULTS:
                raise ConfigurationError(f"at most {_MAX_FAULTS} faults may be queued")
            if count:
                self._faults.append(_Fault(kind, target, count, dict(params)))

    def fail_next(
        self,
        n: int = 1,
        *,
        status: int = 503,
        retry_after: float | None = 1.0,
        target: str = "reports",
        after_store: bool = False,
    ) -> None:
        """Answer the next ``n`` requests for ``target`` with ``status`` (and
        ``Retry-After`` if given). ``after_store=True`` handles the request first and
        then answers ``status`` instead of its 200, as if the answer was lost: a client's
        retry of a report batch must come back as duplicates."""
        self.add(
            "status", target, n, status=status, retry_after=retry_after, after_store=after_store
        )

    def stall_next(self, n: int = 1, *, seconds: float, target: str = "reports") -> None:
        """Hold the next ``n`` requests for ``target`` ``seconds`` before handling them."""
        self.add("stall", target, n, seconds=seconds)

    def clear(self) -> None:
        """Drop every queued fault (counts of requests and hits are kept)."""
        with self._lock:
            self._faults.clear()

    # -- what happened

    def pending(self, target: str | None = None) -> int:
        """Uses left of the faults queued for ``target`` (all faults: None)."""
        with self._lock:
            return sum(f.remaining for f in self._faults if target in (None, f.target))

    def hits(self, kind: str | None = None) -> int:
        """How many requests a fault of ``kind`` (any kind: None) was applied to."""
        with self._lock:
            return self._hits[kind] if kind is not None else sum(self._hits.values())

    def requests(self, target: str = "any") -> int:
        """Requests the server hook saw for ``target`` (same targets as :meth:`add`)."""
        with self._lock:
            if target.startswith("/"):
                return self._paths[target]
            if target == "any":
                return sum(self._requests.values())
            if target == "site":
                return sum(self._requests[c] for c in _SITE)
            return self._requests[target]

    def take(self, method: str, path: str, *, server: bool) -> _Fault | None:
        """The fault for one request at one hook (used up by one), or None."""
        category = category_of(method, path)
        kinds = _SERVER_KINDS if server else _TRANSPORT_KINDS
        with self._lock:
            if server:
                self._requests[category] += 1
                if len(self._paths) < _MAX_SEEN or path in self._paths:
                    self._paths[path] += 1
            for i, fault in enumerate(self._faults):
                if fault.kind in kinds and _matches(fault, category, path):
                    fault.remaining -= 1
                    if fault.remaining <= 0:
                        del self._faults[i]
                    self._hits[fault.kind] += 1
                    return fault
        return None

    # -- the hooks

    def middleware(self) -> Middleware:
        """The server hook, for ``create_app``/``PlatformServer(middleware=[...])``."""
        from starlette.middleware import Middleware

        return Middleware(FaultMiddleware, simulator=self)

    def transport(self, inner: httpx.BaseTransport | None = None) -> SimulatedTransport:
        """The client hook: ``inner`` (a fresh ``httpx.HTTPTransport``) plus transport
        faults, recording each request in ``.seen``."""
        return SimulatedTransport(self, inner)


def _check_params(kind: str, params: dict[str, Any]) -> None:
    status = params.get("status", 503)
    if kind == "status" and not (isinstance(status, int) and 400 <= status <= 599):
        raise ConfigurationError("fault status must be 4xx or 5xx")
    retry_after = params.get("retry_after")
    if retry_after is not None and not 0 <= retry_after <= 86400:
        raise ConfigurationError("retry_after must be within 0..86400 seconds")
    for name in ("seconds", "hold", "interval"):
        if name in params and not 0 <= params[name] <= _MAX_WAIT:
            raise ConfigurationError(f"{name} must be within 0..{_MAX_WAIT:.0f} seconds")
    if kind == "stall" and "seconds" not in params:
        raise ConfigurationError("a stall needs seconds")
    if kind in ("older", "events") and not isinstance(params.get(_PAYLOAD[kind]), bytes):
        raise ConfigurationError(f"a {kind} fault needs {_PAYLOAD[kind]} as bytes")


_PAYLOAD = {"older": "data", "events": "events"}


# =========================================================================== the server hook


class FaultMiddleware:
    """ASGI middleware applying the simulator's server-side faults; see the module doc."""

    def __init__(self, app: ASGIApp, simulator: FaultSimulator) -> None:
        self.app = app
        self.simulator = simulator

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        fault = self.simulator.take(scope["method"], scope["path"], server=True)
        if fault is None:
            await self.app(scope, receive, send)
            return
        await _SERVER_FAULTS[fault.kind](self.app, fault.params, scope, receive, send)


_Handler = Callable[[ASGIApp, dict[str, Any], Scope, Receive, Send], Awaitable[None]]


async def _answer(
    send: Send, status: int, body: bytes = b"", headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    head = [(b"content-length", str(len(body)).encode()), *(headers or [])]
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def _injected_status(send: Send, params: dict[str, Any]) -> None:
    headers = [(b"content-type", b"application/json")]
    if params.get("retry_after") is not None:
        headers.append((b"retry-after", str(math.ceil(params["retry_after"])).encode()))
    await _answer(send, params.get("status", 503), b'{"error":"injected fault"}', headers)


async def _status(
    app: ASGIApp, params: dict[str, Any], scope: Scope, receive: Receive, send: Send
) -> None:
    if not params.get("after_store"):
        await _injected_status(send, params)
        return
    replaced = False

    async def replace_ok(message: Message) -> None:
        nonlocal replaced
        if message["type"] == "http.response.start" and message["status"] == 200:
            replaced = True
            await _injected_status(send, params)
        elif not replaced:
            await send(message)

    await app(scope, receive, replace_ok)


async def _stall(
    app: ASGIApp, params: dict[str, Any], scope: Scope, receive: Receive, send: Send
) -> None:
    await anyio.sleep(params["seconds"])
    await app(scope, receive, send)


async def _until_disconnect(receive: Receive, seconds: float) -> None:
    """Wait for the client to go away, at most ``seconds``."""
    with anyio.move_on_after(seconds):
        while (await receive())["type"] != "http.disconnect":
            pass


async def _hang(
    app: ASGIApp, params: dict[str, Any], scope: Scope, receive: Receive, send: Send
) -> None:
    # No answer at all; uvicorn answers 500 if the client is still there afterwards.
    await _until_disconnect(receive, params.get("seconds", 30.0))


async def _redirect(
    app: ASGIApp, params: dict[str, Any], scope: Scope, receive: Receive, send: Send
) -> None:
    location = f"http://mirror.invalid{scope['path']}".encode()
    await _answer(send, 302, headers=[(b"location", location)])


async def _older(
    app: ASGIApp, params: dict[str, Any], scope: Scope, receive: Receive, send: Send
) -> None:
    data: bytes = params["data"]
    etag = f'"{hashlib.sha256(data).hexdigest()}"'.encode()
    headers = [(b"content-type", b"application/json"), (b"etag", etag)]
    await _answer(send, 200, data if scope["method"] != "HEAD" else b"", headers)


async def _stale_etag(
    app: ASGIApp, params: dict[str, Any], scope: Scope, receive: Receive, send: Send
) -> None:
    inm = _header(scope, b"if-none-match")
    if inm is None:
        await app(scope, receive, send)
        return
    await send({"type": "http.response.start", "status": 304, "headers": [(b"etag", inm)]})
    await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _events(
    app: ASGIApp, params: dict[str, Any], scope: Scope, receive: Receive, send: Send
) -> None:
    headers = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": params["events"], "more_body": True})
    await _until_disconnect(receive, params.get("hold", 2.0))
    await send({"type": "http.response.body", "body": b"", "more_body": False})


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return bytes(value)
    return None


# -- faults that alter the body: the app's answer is captured, then sent altered


@dataclass
class _Captured:
    status: int = 500
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytearray = field(default_factory=bytearray)

    def start(self, length: int | None = None) -> Message:
        """The start message, with ``length`` as Content-Length when given."""
        headers = [(k, v) for k, v in self.headers if k.lower() != b"content-length"]
        if length is not None:
            headers.append((b"content-length", str(length).encode()))
        return {"type": "http.response.start", "status": self.status, "headers": headers}


async def _capture(
    app: ASGIApp, scope: Scope, receive: Receive, limit: int | None = None
) -> _Captured:
    """Run the app, keeping its answer (at most ``limit`` body bytes) instead of sending."""
    captured = _Captured()

    async def keep(message: Message) -> None:
        if message["type"] == "http.response.start":
            captured.status = message["status"]
            captured.headers = [(bytes(k), bytes(v)) for k, v in message.get("headers", ())]
        elif message["type"] == "http.response.body" and (
            limit is None or len(captured.body) < limit
        ):
            captured.body += message.get("body", b"")

    await app(scope, receive, keep)
    return captured


def _body(data: bytes | bytearray, *, more: bool) -> Message:
    return {"type": "http.response.body", "body": bytes(data), "more_body": more}


async def _truncate(
    app: ASGIApp, params: dict[str, Any], scope: Scope, receive: Receive, send: Send
) -> None:
    got = await _capture(app, scope, receive)
    cut = min(len(got.body), params.get("after", max(1, len(got.body) // 2)))
    await send(got.start(len(got.body)))
    if cut < len(got.body):
        # Returning with the body unfinished makes the server close the connection.
        await send(_body(got.body[:cut], more=True))
    else:
        await send(_body(got.body, more=False))


async def _short_length(
    app: ASGIApp, params: dict[str, Any], scope: Scope, receive: Receive, send: Send
) -> None:
    got = await _capture(app, scope, receive)
    declared = max(0, len(got.body) - params.get("by", 7))
    await send(got.start(declared))
    await send(_body(got.body[:declared], more=False))


async def _long_length(
    app: ASGIApp, params: dict[str, Any], scope: Scope, receive: Receive, send: Send
) -> None:
    got = await _capture(app, scope, receive)
    await send(got.start(len(got.body) + params.get("by", 1000)))
    await send(_body(got.body, more=True))  # then the connection closes: body unfinished


async def _oversize(
    app: ASGIApp, params: dict[str, Any], scope: Scope, receive: Receive, send: Send
) -> None:
    got = await _capture(app, scope, receive)
    extra = b"\0" * params.get("extra", 100_000)
    await send(got.start(len(got.body) + len(extra)))
    await send(_body(got.body + extra, more=False))


async def _drip(
    app: ASGIApp, params: dict[str, Any], scope: Scope, receive: Receive, send: Send
) -> None:
    interval, seconds = params.get("interval", 0.1), params.get("seconds", 10.0)
    got = await _capture(app, scope, receive, limit=int(seconds / max(interval, 1e-3)) + 2)
    await send(got.start(len(got.body)))
    async with anyio.create_task_group() as tg:

        async def drip() -> None:
            for i in range(len(got.body)):
                await send(_body(got.body[i : i + 1], more=True))
                await anyio.sleep(interval)
            await send(_body(b"", more=False))
            tg.cancel_scope.cancel()

        async def watch() -> None:
            await _until_disconnect(receive, seconds)
            tg.cancel_scope.cancel()

        tg.start_soon(drip)
        tg.start_soon(watch)


_SERVER_FAULTS: dict[str, _Handler] = {
    "status": _status,
    "stall": _stall,
    "hang": _hang,
    "redirect": _redirect,
    "older": _older,
    "stale_etag": _stale_etag,
    "events": _events,
    "truncate": _truncate,
    "short_length": _short_length,
    "long_length": _long_length,
    "oversize": _oversize,
    "drip": _drip,
}


# =========================================================================== the client hook


class SimulatedTransport(httpx.BaseTransport):
    """The real transport (or ``inner``), with the simulator's transport faults.

    ``seen`` records every request that got an answer (at most 100,000).
    """

    def __init__(self, simulator: FaultSimulator, inner: httpx.BaseTransport | None = None):
        self.simulator = simulator
        self.inner = inner if inner is not None else httpx.HTTPTransport()
        self.seen: list[Seen] = []

    def paths(self) -> list[str]:
        return [s.path for s in self.seen]

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        fault = self.simulator.take(request.method, path, server=False)
        kind = fault.kind if fault is not None else ""
        if kind == "connect_timeout":
            raise httpx.ConnectTimeout("connect timed out (simulated)", request=request)
        if kind == "read_timeout":
            raise httpx.ReadTimeout("read timed out (simulated)", request=request)
        if kind == "connect_error":
            raise httpx.ConnectError("connection refused (simulated)", request=request)
        response = self.inner.handle_request(request)
        if len(self.seen) < _MAX_SEEN:
            self.seen.append(Seen(path, dict(request.headers), response.status_code, kind))
        if fault is None or kind != "reset":
            return response
        assert isinstance(response.stream, httpx.SyncByteStream)
        length = int(response.headers.get("content-length", "2"))
        return httpx.Response(
            response.status_code,
            headers=response.headers,
            stream=_Reset(response.stream, fault.params.get("after", max(1, length // 2))),
            extensions=response.extensions,
        )

    def close(self) -> None:
        self.inner.close()


class _Reset(httpx.SyncByteStream):
    """A body that breaks off with a connection reset after ``limit`` bytes."""

    def __init__(self, inner: httpx.SyncByteStream, limit: int) -> None:
        self.inner, self.limit = inner, limit

    def __iter__(self) -> Iterator[bytes]:
        sent = 0
        for chunk in self.inner:
            if sent + len(chunk) >= self.limit:
                yield chunk[: self.limit - sent]
                raise httpx.ReadError("connection reset by peer (simulated)")
            sent += len(chunk)
            yield chunk

    def close(self) -> None:
        with contextlib.suppress(httpx.HTTPError):
            self.inner.close()
