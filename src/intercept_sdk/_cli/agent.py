"""``intercept-sdk agent``: a local HTTP sidecar for systems not written in Python.

Most hotel PMS, registries and ticketing back-ends run on the JVM or .NET; they reach the
SDK through this agent over loopback or a Unix socket, with the same cache, decisions,
audit log and outbox as a Python ``Client`` (``docs/agent.md``).

The server: stdlib ``http.server``, HTTP/1.1 keep-alive, JSON in and out.

Why stdlib: the agent must run wherever the SDK installs (no server extra), and a check
is a few microseconds of work, so the server's own overhead dominates; a threaded
``http.server`` with keep-alive, Nagle off and one write per response answers a check in
well under a millisecond over loopback (``python -m benchmarks agent``).

Routes (``docs/agent.md``, ``GET /openapi.json``): ``POST /v1/check``, ``/v1/block``,
``/v1/screen``, ``/v1/report``; ``GET /v1/status``, ``/healthz``, ``/readyz``,
``/metrics``, ``/openapi.json``.

Guarantees:

* Bound to loopback (``127.0.0.1``) or a Unix socket (mode 0600) by default; another
  address needs ``allow_remote=True``, and then a bearer ``token`` is required.
* With a ``token``, every route but ``/healthz``/``/readyz`` needs
  ``Authorization: Bearer <token>`` (compared in constant time).
* Bad input is a 400 with ``{"error", "kind"}``; no verified list yet is a 503; a body
  over ``max_body`` bytes is a 413; an unexpected error is a 500 without a traceback
  (logged under ``intercept_sdk.agent``). A plaintext ID number is never logged.
* Decisions, audit records and reports are exactly the Python client's: the agent is a
  :class:`~intercept_sdk.Client` on the cache, which Python processes may share.
"""

from __future__ import annotations

import contextlib
import hmac
import http.server
import ipaddress
import json
import logging
import os
import socketserver
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from .._client.client import Client
from .._client.decisions import Entity, Officer, Person, Subject
from .._exceptions import (
    ConfigurationError,
    Intercepted,
    InterceptError,
    InvalidInput,
    NeverSynced,
)
from .agent_openapi import openapi_document

__all__ = ["DEFAULT_PORT", "MAX_BODY", "MAX_SCREEN", "AgentServer"]

log = logging.getLogger("intercept_sdk.agent")

DEFAULT_PORT = 8471
MAX_BODY = 8 * 1024 * 1024
"""Largest request body accepted, in bytes."""
_DRAIN_LIMIT = 64 * 1024 * 1024
MAX_SCREEN = 10_000
"""Most subjects in one ``/v1/screen`` request."""


class _HttpError(Exception):
    def __init__(self, status: int, message: str, kind: str) -> None:
        super().__init__(message)
        self.status, self.kind = status, kind


def subject_of(data: object) -> Subject:
    """A :class:`Person` or :class:`Entity` from its JSON form (InvalidInput otherwise)."""
    if not isinstance(data, dict):
        raise InvalidInput("subject must be an object with id_number, uscc or org_code")
    name = data.get("name")
    if data.get("id_number"):
        return Person(str(data["id_number"]), name)
    if data.get("uscc") or data.get("org_code"):
        officers = tuple(
            Officer(str(o.get("role")), Person(str(o.get("id_number")), o.get("name")))
            for o in data.get("officers") or ()
            if isinstance(o, dict)
        )
        return Entity(
            uscc=data.get("uscc") or None,
            org_code=data.get("org_code") or None,
            name=name,
            officers=officers,
        )
    raise InvalidInput("subject needs id_number, uscc or org_code")


class _Routes:
    """What each path does, given the parsed JSON body (or None for GET)."""

    def __init__(self, client: Client, version: str) -> None:
        self.client = client
        self.openapi = json.dumps(openapi_document(version)).encode()

    def post(self, path: str, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise InvalidInput("the request body must be a JSON object")
        handler = self._post.get(path)
        if handler is None:
            raise _HttpError(404, f"no route POST {path}", "NotFound")
        return handler(self, body)

    def check(self, body: dict[str, Any]) -> dict[str, Any]:
        return self.client.check(
            subject_of(body.get("subject")), str(body.get("measure"))
        ).to_dict()

    def block(self, body: dict[str, Any]) -> dict[str, Any]:
        context = body.get("context") or {}
        if not isinstance(context, dict):
            raise InvalidInput("context must be an object")
        subject = subject_of(body.get("subject"))
        try:
            decision = self.client.block(subject, str(body.get("measure")), **context)
        except Intercepted as exc:
            return {
                "intercepted": True,
                "decision": exc.decision.to_dict(),
                "notice": exc.notice,
                "report_id": exc.report_id,
            }
        return {"intercepted": False, "decision": decision.to_dict()}

    def screen(self, body: dict[str, Any]) -> dict[str, Any]:
        subjects = body.get("subjects")
        if not isinstance(subjects, list):
            raise InvalidInput("subjects must be a list")
        if len(subjects) > MAX_SCREEN:
            raise InvalidInput(f"at most {MAX_SCREEN} subjects per request")
        measure = str(body.get("measure"))
        parsed: list[Subject | tuple[str, str]] = []
        for i, s in enumerate(subjects):
            try:
                parsed.append(subject_of(s))
            except InvalidInput as exc:
                parsed.append((f"subjects[{i}]: {exc}", type(exc).__name__))
        good = [s for s in parsed if not isinstance(s, tuple)]
        decisions = iter(self.client.screen(good, measure))
        out = [
            {"error": s[0], "kind": s[1]} if isinstance(s, tuple) else next(decisions).to_dict()
            for s in parsed
        ]
        return {"decisions": out}

    def report(self, body: dict[str, Any]) -> dict[str, Any]:
        details = body.get("details") or {}
        if not isinstance(details, dict):
            raise InvalidInput("details must be an object")
        rid = self.client.report(str(body.get("kind")), body.get("entry_id"), **details)
        return {"report_id": rid}

    _post: ClassVar[dict[str, Callable[[_Routes, dict[str, Any]], dict[str, Any]]]] = {
        "/v1/check": check,
        "/v1/block": block,
        "/v1/screen": screen,
        "/v1/report": report,
    }


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    wbufsize = 64 * 1024  # one write per response (flushed by handle_one_request)
    timeout = 60.0  # an idle keep-alive connection is closed after a minute
    server_version = "intercept-sdk-agent"
    routes: _Routes
    token: bytes | None
    max_body: int

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    def address_string(self) -> str:
        addr = self.client_address
        return str(addr[0]) if isinstance(addr, tuple) and addr else "unix"

    def _send(self, status: int, body: bytes, ctype: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, data: object) -> None:
        self._send(status, json.dumps(data, ensure_ascii=False).encode())

    def _authorised(self) -> bool:
        if self.token is None:
            return True
        given = self.headers.get("Authorization", "")
        return hmac.compare_digest(given.encode(), b"Bearer " + self.token)

    def _guard(self, fn: Callable[[], None]) -> None:
        try:
            fn()
        except _HttpError as exc:
            self._json(exc.status, {"error": str(exc), "kind": exc.kind})
        except NeverSynced as exc:
            self._json(503, {"error": str(exc), "kind": type(exc).__name__})
        except (InvalidInput, ConfigurationError) as exc:
            self._json(400, {"error": str(exc), "kind": type(exc).__name__})
        except InterceptError as exc:
            self._json(500, {"error": str(exc), "kind": type(exc).__name__})
        except Exception as exc:
            log.exception("agent: unexpected error on %s", self.path)
            self._json(500, {"error": "internal error", "kind": type(exc).__name__})

    def do_GET(self) -> None:
        self._guard(self._get)

    def do_POST(self) -> None:
        self._guard(self._post)

    def _get(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/healthz":
            h = self.routes.client.health()
            self._json(200 if h.live else 503, h.to_dict())
            return
        if path == "/readyz":
            h = self.routes.client.health()
            self._json(200 if h.ready else 503, h.to_dict())
            return
        if not self._authorised():
            raise _HttpError(401, "missing or wrong bearer token", "Unauthorized")
        if path == "/v1/status":
            self._json(200, self.routes.client.status().to_dict())
        elif path == "/metrics":
            text = self.routes.client.metrics.render_prometheus().encode()
            self._send(200, text, "text/plain; version=0.0.4; charset=utf-8")
        elif path == "/openapi.json":
            self._send(200, self.routes.openapi)
        else:
            raise _HttpError(404, f"no route GET {path}", "NotFound")

    def _post(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length > self.max_body:
            # Read (and drop) what the client is sending, up to a bound, so it sees the
            # 413 instead of a reset connection; then close the connection.
            self.close_connection = True
            left = min(length, _DRAIN_LIMIT)
            while left > 0:
                chunk = self.rfile.read(min(left, 65536))
                if not chunk:
                    break
                left -= len(chunk)
            raise _HttpError(413, f"body over {self.max_body} bytes", "TooLarge")
        raw = self.rfile.read(length) if length else b""
        if not self._authorised():
            raise _HttpError(401, "missing or wrong bearer token", "Unauthorized")
        try:
            body = json.loads(raw) if raw else None
        except (ValueError, RecursionError):
            raise InvalidInput("the request body is not valid JSON") from None
        self._json(200, self.routes.post(self.path.split("?", 1)[0], body))


class _TCPServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class _UnixServer(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True


class AgentServer:
    """The agent on a :class:`~intercept_sdk.Client` (see the module docstring).

    ``start()`` serves from a daemon thread (tests, embedding); ``serve_forever()`` in
    the caller's thread (the CLI). ``stop()`` is bounded and idempotent; the client is
    closed by its owner.
    """

    def __init__(
        self,
        client: Client,
        *,
        host: str = "127.0.0.1",
        port: int = DEFAULT_PORT,
        unix_socket: str | os.PathLike[str] | None = None,
        token: str | None = None,
        allow_remote: bool = False,
        max_body: int = MAX_BODY,
    ) -> None:
        if unix_socket is None and not _is_loopback(host) and not allow_remote:
            raise ConfigurationError(
                f"the agent binds to loopback or a Unix socket; {host!r} needs allow_remote "
                "(--allow-remote) and a token"
            )
        if unix_socket is None and not _is_loopback(host) and not token:
            raise ConfigurationError("an agent reachable from other hosts needs a token")
        attrs = {
            "routes": _Routes(client, agent_version()),
            "token": token.encode() if token else None,
            "max_body": int(max_body),
        }
        # TCP_NODELAY exists for TCP only (setting it on a Unix socket fails).
        attrs["disable_nagle_algorithm"] = unix_socket is None
        handler = type("AgentHandler", (_Handler,), attrs)
        self.unix_socket = Path(unix_socket) if unix_socket is not None else None
        self._server: socketserver.BaseServer
        if self.unix_socket is not None:
            with contextlib.suppress(FileNotFoundError):
                if self.unix_socket.is_socket():
                    self.unix_socket.unlink()
            old = os.umask(0o177)
            try:
                self._server = _UnixServer(str(self.unix_socket), handler)
            finally:
                os.umask(old)
        else:
            try:
                self._server = _TCPServer((host, port), handler)
            except OSError as exc:
                raise ConfigurationError(f"cannot listen on {host}:{port}: {exc}") from None
        self._thread: threading.Thread | None = None
        self._stopped = False

    @property
    def url(self) -> str:
        """``http://host:port/`` (or ``unix:PATH`` for a Unix socket)."""
        if self.unix_socket is not None:
            return f"unix:{self.unix_socket}"
        address = self._server.server_address
        assert isinstance(address, tuple)
        return f"http://{address[0]}:{address[1]}/"

    def start(self) -> AgentServer:
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="intercept-sdk-agent", daemon=True
        )
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self._server.serve_forever()

    def stop(self, timeout: float = 5.0) -> None:
        if self._stopped:
            return
        self._stopped = True
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout)
        self._server.server_close()
        if self.unix_socket is not None:
            with contextlib.suppress(OSError):
                self.unix_socket.unlink()

    def __enter__(self) -> AgentServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def agent_version() -> str:
    """The installed package's version."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("intercept-sdk")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "0+unknown"


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def shutdown_from_signal(server: AgentServer) -> Callable[[int, object], None]:
    """A SIGTERM handler that stops ``serve_forever`` (from another thread, as required)."""

    def on_term(signum: int, frame: object) -> None:
        threading.Thread(target=server._server.shutdown, daemon=True).start()

    return on_term
