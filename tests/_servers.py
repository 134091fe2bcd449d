"""Test helpers: fake published sites, subscriber keys, and a stock nginx serving a site.

Why here: several test modules (platform, nginx, later the client sync through nginx)
need the same real servers; pytest puts ``tests/`` on ``sys.path``, so
``from _servers import nginx_serving`` works from any test module.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import http.server
import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from intercept_sdk._protocol import models as _models
from intercept_sdk._protocol.signing import (
    MANIFEST_TYPE,
    REPORT_TYPE,
    SigningKey,
    canonical_json,
    sign_envelope,
    write_public_key,
)
from intercept_sdk._util import atomic_write, format_utc, utcnow
from intercept_sdk.testing import TestPlatform

__all__ = [
    "FakeSite",
    "make_fake_site",
    "make_report",
    "nginx_binary",
    "nginx_serving",
    "publish_letting_minors_through",
    "register_subscriber",
    "write_manifest",
]


@dataclass
class FakeSite:
    """A site directory shaped like a published one (the server does not verify it)."""

    root: Path
    version: int
    key: SigningKey
    artefact: str  # site-relative path of the snapshot
    artefact_bytes: bytes

    def manifest_bytes(self) -> bytes:
        return (self.root / "manifest.json").read_bytes()


def write_manifest(site: Path, version: int, key: SigningKey, **extra: Any) -> bytes:
    """Atomically replace ``site/manifest.json`` with a signed manifest of ``version``."""
    payload = {
        "type": "manifest",
        "spec": 1,
        "version": version,
        "root_version": 1,
        "published_at": format_utc(utcnow()),
        "expires": format_utc(utcnow() + _dt.timedelta(hours=1)),
        **extra,
    }
    data = sign_envelope(MANIFEST_TYPE, canonical_json(payload), [key]).to_bytes()
    atomic_write(site / "manifest.json", data, durable=False)
    return data


def make_fake_site(root: Path, *, version: int = 1, artefact_size: int = 100_000) -> FakeSite:
    """Write manifest.json, a root file, a snapshot of ``artefact_size`` bytes, a restricted
    box, and a dotfile that must never be served."""
    root.mkdir(parents=True, exist_ok=True)
    key = SigningKey.generate()
    body = os.urandom(artefact_size)
    digest = hashlib.sha256(body).hexdigest()
    artefact = f"snapshots/{version}.{digest}.ndjson.gz"
    (root / "snapshots").mkdir(exist_ok=True)
    (root / artefact).write_bytes(body)
    (root / "root").mkdir(exist_ok=True)
    (root / "root" / "1.root.json").write_bytes(
        b'{"payload":"e30=","payload_type":"x","signatures":[]}'
    )
    (root / "restricted" / "hotel-001").mkdir(parents=True, exist_ok=True)
    (root / "restricted" / "hotel-001" / f"{version}.{digest}.box").write_bytes(b"box")
    (root / ".publish.lock").write_bytes(b"secret")
    (root / "snapshots" / ".tmp-partial").write_bytes(b"partial")
    write_manifest(
        root,
        version,
        key,
        snapshot={"path": artefact, "sha256": digest, "length": artefact_size},
    )
    return FakeSite(root, version, key, artefact, body)


def register_subscriber(subscribers_dir: Path, subscriber_id: str) -> SigningKey:
    """Create a key pair and store its public half as ``<id>.ed25519.pem`` (as
    ``intercept-sdk subscriber add`` does)."""
    key = SigningKey.generate()
    write_public_key(subscribers_dir / f"{subscriber_id}.ed25519.pem", key.public)
    return key


def make_report(
    key: SigningKey, subscriber_id: str, *, report_id: str | None = None, **fields: Any
) -> dict[str, Any]:
    """A signed report envelope as the JSON object that goes into ``{"reports": [...]}``."""
    payload = {
        "type": "report",
        "report_id": report_id or uuid.uuid4().hex,
        "subscriber_id": subscriber_id,
        "kind": "interception",
        "created_at": format_utc(utcnow()),
        "measure": "consumption.star_hotel",
        "entry_id": "E1",
        "case_no": "(2019)冀0203执123号",
        "list_version": 1,
        "outcome": "blocked",
        "details": {},
        **fields,
    }
    env = sign_envelope(REPORT_TYPE, canonical_json(payload), [key])
    obj: dict[str, Any] = json.loads(env.to_bytes())
    return obj


# --------------------------------------------------------------------------- nginx


def nginx_binary() -> str | None:
    """Path of Debian's nginx, or None when it is not installed."""
    found = shutil.which("nginx")
    if found:
        return found
    return "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


_NGINX_CONF = """\
daemon off;
master_process off;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    {mime}
    default_type application/octet-stream;
    access_log {tmp}/access.log;
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    sendfile on;
    etag on;
    server_tokens off;
    server {{
        listen 127.0.0.1:{port};
        root {site};
        autoindex off;
        location ~ /\\. {{ return 404; }}
        location = /manifest.json {{ add_header Cache-Control "no-cache" always; }}
        location /root/ {{ add_header Cache-Control "public, max-age=31536000, immutable"; }}
        location / {{ add_header Cache-Control "public, max-age=3600"; }}
    }}
}}
"""


@contextlib.contextmanager
def nginx_serving(site_dir: Path, *, timeout: float = 10.0) -> Iterator[str]:
    """Serve ``site_dir`` with a stock nginx on a free loopback port; yield its base URL.

    nginx runs in the foreground as the current user (``daemon off; master_process off``)
    with every path it writes inside a temporary directory. The caller must skip when
    :func:`nginx_binary` is None. The process is always terminated on exit.
    """
    binary = nginx_binary()
    if binary is None:
        raise RuntimeError("nginx is not installed")
    mime = "/etc/nginx/mime.types"
    mime_line = f"include {mime};" if Path(mime).exists() else ""
    with tempfile.TemporaryDirectory(prefix="intercept-nginx-") as tmp:
        last_error = ""
        for _attempt in range(5):  # the port can be taken between probing and binding
            port = _free_port()
            conf = Path(tmp) / "nginx.conf"
            conf.write_text(
                _NGINX_CONF.format(
                    tmp=tmp, port=port, site=Path(site_dir).resolve(), mime=mime_line
                )
            )
            proc = subprocess.Popen(
                [binary, "-p", tmp, "-e", f"{tmp}/error.log", "-c", str(conf)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            try:
                deadline = time.monotonic() + timeout
                up = False
                while time.monotonic() < deadline and proc.poll() is None:
                    with (
                        contextlib.suppress(OSError),
                        socket.create_connection(("127.0.0.1", port), timeout=0.5),
                    ):
                        up = True
                        break
                    time.sleep(0.05)
                if up:
                    yield f"http://127.0.0.1:{port}"
                    return
                last_error = _nginx_error(proc, tmp)
            finally:
                if proc.poll() is None:
                    proc.terminate()
                    try:
                        proc.wait(5)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait(5)
                if proc.stderr is not None:
                    proc.stderr.close()
        raise RuntimeError(f"nginx did not start: {last_error}")


def _nginx_error(proc: subprocess.Popen[bytes], tmp: str) -> str:
    if proc.poll() is None:
        proc.kill()
        proc.wait(5)
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    with contextlib.suppress(OSError):
        err += Path(tmp, "error.log").read_text(errors="replace")
    return err.strip()[-2000:]


@contextlib.contextmanager
def stdlib_server(handler: type[http.server.BaseHTTPRequestHandler]) -> Iterator[str]:
    """Serve ``handler`` on a loopback port from a daemon thread; yield its base URL.

    For tests that need a server misbehaving in a way the reference platform never does
    (no push channel, an endless line); shut down and closed on exit.
    """
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def publish_letting_minors_through(p: TestPlatform, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fault injection: the publisher quarantines minors; simulate an entry that reached
    the site anyway by dropping only that rule, for this one publish."""
    original = _models._semantic_reasons

    def without_minor_rule(e: _models.Entry, known: frozenset[str] | None) -> list[str]:
        return [r for r in original(e, known) if not r.startswith("minor:")]

    with monkeypatch.context() as mp:
        mp.setattr(_models, "_semantic_reasons", without_minor_rule)
        result = p.publish()
    assert not result.quarantined
