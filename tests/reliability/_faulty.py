"""A misbehaving web server on loopback, and a respx site with the same faults.

:class:`FaultyServer` serves a site directory over real sockets (HTTP/1.1, one request
per connection, ETag/304 for the manifest, single ``bytes=N-`` ranges for artefacts) and
misbehaves on the next requests that match a target, as told: never answers, resets the
connection in the middle of the body, closes early, sends more or fewer bytes than the
``Content-Length`` says, drips a byte at a time, answers 5xx/429, redirects to another
host, serves a stale ETag or an older manifest. :class:`RespxSite` does the faults httpx
can express in-process (timeouts raised by the transport, a stream cut mid-body...).
"""

from __future__ import annotations

import contextlib
import hashlib
import socket
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import respx


def target_of(path: str) -> str:
    path = path.lstrip("/")
    if path == "manifest.json":
        return "manifest"
    if path == "events":
        return "events"
    if path.startswith("root/"):
        return "root"
    return "artefact"


def etag_of(data: bytes) -> str:
    return '"' + hashlib.sha256(data).hexdigest()[:20] + '"'


@dataclass
class Fault:
    kind: str
    target: str  # manifest | artefact | root | any
    count: int
    params: dict[str, Any] = field(default_factory=dict)

    def matches(self, path: str) -> bool:
        return self.count > 0 and self.target in ("any", target_of(path))


class _Faults:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: list[Fault] = []
        self.log: list[tuple[str, str]] = []  # (path, fault kind or "")

    def add(self, kind: str, target: str, count: int = 1_000_000, **params: Any) -> None:
        with self._lock:
            self._faults.append(Fault(kind, target, count, params))

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()

    def take(self, path: str) -> Fault | None:
        with self._lock:
            for f in self._faults:
                if f.matches(path):
                    f.count -= 1
                    self.log.append((path, f.kind))
                    return f
            self.log.append((path, ""))
            return None

    def hits(self, kind: str) -> int:
        with self._lock:
            return sum(1 for _, k in self.log if k == kind)


class FaultyServer(_Faults):
    """See the module docstring. ``url`` is the base URL; ``stop()`` ends everything."""

    def __init__(self, site: Path) -> None:
        super().__init__()
        self.site = Path(site)
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self._sock.settimeout(0.2)
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._conns: set[socket.socket] = set()
        t = threading.Thread(target=self._accept, name="faulty-server", daemon=True)
        t.start()
        self._threads.append(t)

    def __enter__(self) -> FaultyServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            conns = list(self._conns)
        for c in conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
        for t in self._threads:
            t.join(5)
        self._sock.close()

    # -- plumbing -----------------------------------------------------------------------
    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except (TimeoutError, OSError):
                continue
            with self._lock:
                self._conns.add(conn)
            t = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            t.start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(10)
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                head += chunk
                if len(head) > 65536:
                    return
            lines = head.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
            _method, target, _version = lines[0].split(" ", 2)
            headers = {}
            for line in lines[1:]:
                k, _, v = line.partition(":")
                headers[k.strip().lower()] = v.strip()
            self._respond(conn, target.split("?", 1)[0], headers)
        except OSError:
            pass
        finally:
            with self._lock:
                self._conns.discard(conn)
            with contextlib.suppress(OSError):
                conn.close()

    @staticmethod
    def _head(status: int, headers: dict[str, str]) -> bytes:
        reason = {
            200: "OK",
            206: "Partial Content",
            302: "Found",
            304: "Not Modified",
            404: "Not Found",
            429: "Too Many Requests",
        }.get(status, "Error")
        out = [f"HTTP/1.1 {status} {reason}"]
        out += [f"{k}: {v}" for k, v in headers.items()]
        out.append("Connection: close")
        return ("\r\n".join(out) + "\r\n\r\n").encode("latin-1")

    def _file(self, path: str) -> bytes | None:
        rel = path.lstrip("/")
        full = (self.site / rel).resolve()
        if ".." in rel or not full.is_relative_to(self.site.resolve()) or not full.is_file():
            return None
        return full.read_bytes()

    def _respond(self, conn: socket.socket, path: str, req: dict[str, str]) -> None:
        fault = self.take(path)
        kind = fault.kind if fault else ""
        p = fault.params if fault else {}
        if target_of(path) == "events":  # the push channel: what the fault says, or a ping
            conn.sendall(self._head(200, {"Content-Type": "text/event-stream"}))
            conn.sendall(p.get("events", b": ping\n\n"))
            self._stop.wait(p.get("hold", 2.0))
            return
        if kind == "hang":
            self._stop.wait(p.get("seconds", 30))
            return
        if kind == "status":
            extra = {"Content-Length": "0"}
            if "retry_after" in p:
                extra["Retry-After"] = str(p["retry_after"])
            conn.sendall(self._head(p["status"], extra))
            return
        if kind == "redirect":
            conn.sendall(
                self._head(302, {"Location": f"http://mirror.invalid{path}", "Content-Length": "0"})
            )
            return
        data = p["data"] if kind == "older" else self._file(path)
        if data is None:
            conn.sendall(self._head(404, {"Content-Length": "0"}))
            return
        status, hdrs = 200, {"Content-Type": "application/octet-stream"}
        if target_of(path) == "manifest":
            etag = p["etag"] if kind == "stale_etag" else etag_of(data)
            hdrs["ETag"] = etag
            if req.get("if-none-match") == etag:
                conn.sendall(self._head(304, {"ETag": etag, "Content-Length": "0"}))
                return
        rng = req.get("range", "")
        if rng.startswith("bytes=") and rng.endswith("-") and target_of(path) == "artefact":
            start = int(rng[6:-1])
            if start < len(data):
                hdrs["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
                data, status = data[start:], 206
        if kind == "oversize":
            data = data + b"\0" * p.get("extra", 100_000)
        declared = len(data)
        if kind == "short_length":
            declared = max(0, len(data) - p.get("by", 7))
        elif kind == "long_length":
            declared = len(data) + p.get("by", 1000)
        hdrs["Content-Length"] = str(declared)
        conn.sendall(self._head(status, hdrs))
        if kind in ("reset", "truncate"):
            conn.sendall(data[: max(1, len(data) // 2)])
            time.sleep(0.05)
            if kind == "reset":  # RST instead of FIN
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return
        if kind == "drip":
            for i in range(len(data)):
                if self._stop.is_set():
                    return
                conn.sendall(data[i : i + 1])
                time.sleep(p.get("interval", 0.1))
            return
        conn.sendall(data)


class _Cut(httpx.SyncByteStream):
    """A body that breaks off with a connection reset after ``limit`` bytes."""

    def __init__(self, data: bytes, limit: int) -> None:
        self.data, self.limit = data, limit

    def __iter__(self) -> Iterator[bytes]:
        yield self.data[: self.limit]
        raise httpx.ReadError("connection reset by peer (respx fault)")


class RespxSite(_Faults):
    """The site directory behind a respx router, with in-process faults."""

    url = "https://platform.test"

    def __init__(self, site: Path) -> None:
        super().__init__()
        self.site = Path(site)
        self.router = respx.Router(assert_all_called=False)
        self.router.route(host="platform.test").mock(side_effect=self._handle)
        self.transport = httpx.MockTransport(self.router.handler)

    def _handle(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        fault = self.take(path)
        kind = fault.kind if fault else ""
        p = fault.params if fault else {}
        if kind == "connect_timeout":
            raise httpx.ConnectTimeout("connect timed out (respx fault)", request=request)
        if kind == "read_timeout":
            raise httpx.ReadTimeout("read timed out (respx fault)", request=request)
        if kind == "connect_error":
            raise httpx.ConnectError("connection refused (respx fault)", request=request)
        if kind == "status":
            headers = {"Retry-After": str(p["retry_after"])} if "retry_after" in p else {}
            return httpx.Response(p["status"], headers=headers)
        if kind == "redirect":
            return httpx.Response(302, headers={"Location": f"https://mirror.invalid{path}"})
        rel = path.lstrip("/")
        full = self.site / rel
        if ".." in rel or not full.is_file():
            return httpx.Response(404)
        data = full.read_bytes()
        headers = {"Content-Length": str(len(data))}
        if rel == "manifest.json":
            headers["ETag"] = etag_of(data)
            if request.headers.get("If-None-Match") == headers["ETag"]:
                return httpx.Response(304, headers={"ETag": headers["ETag"]})
        if kind == "oversize":
            data += b" " * p.get("extra", 2 << 20)
            headers["Content-Length"] = str(len(data))
        rng = request.headers.get("Range", "")
        status = 200
        if rng.startswith("bytes=") and rng.endswith("-") and target_of(path) == "artefact":
            start = int(rng[6:-1])
            if start < len(data):
                headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
                data, status = data[start:], 206
                headers["Content-Length"] = str(len(data))
        if kind == "reset":
            return httpx.Response(status, headers=headers, stream=_Cut(data, len(data) // 2))
        return httpx.Response(status, headers=headers, content=data)
