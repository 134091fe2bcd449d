"""Fetching site files (:mod:`intercept_sdk._client.fetch`): real servers on loopback.

The site is a real published one (:class:`TestPlatform`) served by the reference platform
(:class:`PlatformServer`, with the :class:`FaultSimulator` to inject 401/403/429/503, a
slow drip or silence, to cut a connection and to count requests), by a TLS server with a
private CA, and through a forward proxy. ``httpx`` mock transports stand in for a CDN
only where a test needs an answer no server gives (a redirect, gzip, a wrong range).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import gzip
import hashlib
import http.client
import http.server
import ipaddress
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from intercept_sdk._client.fetch import FileFetcher, HttpFetcher, make_fetcher
from intercept_sdk._client.retry import RetryPolicy, parse_retry_after
from intercept_sdk._client.trust import Artefact
from intercept_sdk._exceptions import (
    ConfigurationError,
    DigestMismatch,
    HTTPStatusError,
    NetworkError,
    SyncError,
    TooLarge,
)
from intercept_sdk._platform.server import PlatformServer
from intercept_sdk._protocol.signing import Envelope
from intercept_sdk.testing import TestPlatform
from intercept_sdk.testing.faults import FaultSimulator

# =========================================================================== fixtures


@dataclass
class Served:
    platform: TestPlatform
    server: PlatformServer
    faults: FaultSimulator
    snapshot: Artefact
    snapshot_bytes: bytes

    @property
    def url(self) -> str:
        return self.server.url


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    platform = TestPlatform(tmp_path_factory.mktemp("fetch"))
    for _ in range(200):  # a snapshot of some KiB, so a cut in the middle means something
        platform.add_person(publish=False)
    result = platform.publish()
    snap = result.snapshot
    artefact = Artefact(snap.path, snap.sha256, snap.length, snap.raw_length)
    faults = FaultSimulator()
    server = PlatformServer(platform.site_dir, middleware=[faults.middleware()])
    server.start()
    try:
        data = (platform.site_dir / snap.path).read_bytes()
        yield Served(platform, server, faults, artefact, data)
    finally:
        server.stop()
        platform.close()


@pytest.fixture
def faults(served: Served) -> Iterator[FaultSimulator]:
    served.faults.clear()
    yield served.faults
    served.faults.clear()


@dataclass
class Sleeps:
    """A fake ``sleep`` for RetryPolicy: records the delays instead of waiting."""

    delays: list[float] = field(default_factory=list)

    def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


def fetcher(url: str, sleeps: Sleeps | None = None, **kw: Any) -> HttpFetcher:
    kw.setdefault("retry", RetryPolicy(attempts=4, sleep=sleeps or Sleeps()))
    return HttpFetcher(url, **kw)


# =========================================================================== manifest, ETag


def test_manifest_conditional_request_gets_304(served: Served, faults: FaultSimulator) -> None:
    f = fetcher(served.url)
    first = f.manifest(None, 1 << 20)
    assert first.data == (served.platform.site_dir / "manifest.json").read_bytes()
    assert first.etag
    before = faults.requests("site")
    again = f.manifest(first.etag, 1 << 20)
    assert (again.data, again.etag) == (None, first.etag)
    assert faults.requests("site") == before + 1
    assert f.manifest('"some-other-etag"', 1 << 20).data == first.data
    f.close()


def test_manifest_over_the_cap_is_refused(served: Served) -> None:
    f = fetcher(served.url)
    with pytest.raises(TooLarge, match="over the 100-byte cap"):
        f.manifest(None, 100)  # the platform sends Content-Length: refused before reading
    f.close()


def test_chunked_manifest_over_the_cap_is_cut(served: Served) -> None:
    """No Content-Length: the body itself is counted and cut one chunk past the cap."""
    pulled = []

    def endless() -> Iterator[bytes]:
        for i in range(10_000):
            pulled.append(i)
            yield b"x" * 1024

    transport = httpx.MockTransport(lambda r: httpx.Response(200, content=endless()))
    f = fetcher(served.url, transport=transport)
    with pytest.raises(TooLarge, match="larger than the 4096-byte cap"):
        f.manifest(None, 4096)
    assert len(pulled) < 10  # not the 10 MB the server offered
    f.close()


def test_files_are_asked_uncompressed_and_decoded_if_compressed_anyway(
    served: Served, faults: FaultSimulator
) -> None:
    """Signed lengths and Range offsets are those of the files: every request asks for
    ``identity``; a CDN that gzips the manifest anyway is decoded, not misread."""
    genuine = (served.platform.site_dir / "manifest.json").read_bytes()
    rec = faults.transport()  # the real transport, recording
    f = fetcher(served.url, transport=rec)
    assert f.manifest(None, 1 << 20).data == genuine
    assert rec.seen[0].headers["accept-encoding"] == "identity"
    f.close()

    def gzipping(request: httpx.Request) -> httpx.Response:
        body = gzip.compress(genuine)
        return httpx.Response(200, content=body, headers={"Content-Encoding": "gzip"})

    f = fetcher(served.url, transport=httpx.MockTransport(gzipping))
    assert f.manifest(None, 1 << 20).data == genuine
    f.close()


def test_root_absent_is_none_and_present_is_bytes(served: Served) -> None:
    f = fetcher(served.url)
    assert f.root(1, 1 << 18) == (served.platform.site_dir / "root" / "1.root.json").read_bytes()
    assert f.root(2, 1 << 18) is None
    f.close()


# =========================================================================== retries


def test_429_retry_after_is_honoured(served: Served, faults: FaultSimulator) -> None:
    sleeps = Sleeps()
    f = fetcher(served.url, sleeps)
    faults.fail_next(1, status=429, retry_after=7, target="site")
    assert f.manifest(None, 1 << 20).data
    assert sleeps.delays == [7.0]
    f.close()


def test_503_backs_off_exponentially_with_jitter(served: Served, faults: FaultSimulator) -> None:
    sleeps = Sleeps()
    policy = RetryPolicy(attempts=5, initial=1.0, maximum=30.0, sleep=sleeps)
    f = HttpFetcher(served.url, retry=policy)
    faults.fail_next(3, status=503, retry_after=None, target="site")
    assert f.manifest(None, 1 << 20).data
    assert len(sleeps.delays) == 3
    for attempt, delay in enumerate(sleeps.delays, start=1):
        assert 0 <= delay <= 2 ** (attempt - 1)  # full jitter under the exponential bound
    f.close()


def test_retry_after_is_capped(served: Served, faults: FaultSimulator) -> None:
    sleeps = Sleeps()
    policy = RetryPolicy(attempts=2, max_retry_after=60.0, sleep=sleeps)
    f = HttpFetcher(served.url, retry=policy)
    faults.fail_next(1, status=503, retry_after=86400, target="site")
    assert f.manifest(None, 1 << 20).data
    assert sleeps.delays == [60.0]
    f.close()


def test_retries_stop_after_the_attempts(served: Served, faults: FaultSimulator) -> None:
    sleeps = Sleeps()
    f = fetcher(served.url, sleeps)
    before = faults.requests("site")
    faults.fail_next(10, status=502, retry_after=None, target="site")
    with pytest.raises(HTTPStatusError) as info:
        f.manifest(None, 1 << 20)
    assert info.value.status_code == 502
    assert faults.requests("site") - before == 4
    assert len(sleeps.delays) == 3
    f.close()


@pytest.mark.parametrize("status", [401, 403, 404, 410])
def test_permanent_4xx_is_not_retried(served: Served, faults: FaultSimulator, status: int) -> None:
    sleeps = Sleeps()
    f = fetcher(served.url, sleeps)
    before = faults.requests("site")
    faults.fail_next(1, status=status, retry_after=5, target="site")
    with pytest.raises(HTTPStatusError) as info:
        f.manifest(None, 1 << 20)
    assert info.value.status_code == status
    assert faults.requests("site") - before == 1
    assert sleeps.delays == []
    f.close()


def test_parse_retry_after_forms() -> None:
    assert parse_retry_after("120") == 120.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    now = dt.datetime(2026, 11, 22, 8, 0, tzinfo=dt.timezone.utc)
    date = "Sun, 22 Nov 2026 08:01:30 GMT"
    assert parse_retry_after(date, now=now.timestamp()) == 90.0
    assert parse_retry_after(date, now=now.timestamp() + 3600) == 0.0


# =========================================================================== redirects, deadlines


def test_redirect_to_another_host_is_refused(served: Served) -> None:
    hosts: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        hosts.append(request.url.host)
        return httpx.Response(302, headers={"Location": "http://evil.example/manifest.json"})

    sleeps = Sleeps()
    f = fetcher(served.url, sleeps, transport=httpx.MockTransport(handler))
    with pytest.raises(HTTPStatusError, match=r"redirect to 'http://evil\.example/") as info:
        f.manifest(None, 1 << 20)
    assert info.value.status_code == 302
    assert hosts == ["127.0.0.1"]  # never followed, never retried
    assert sleeps.delays == []
    f.close()


def test_slow_drip_is_cut_at_the_total_deadline(served: Served, faults: FaultSimulator) -> None:
    """A server that sends one byte every 50 ms never trips the read timeout; the total
    deadline (0.5 s) ends the request anyway."""
    faults.add("drip", "manifest", interval=0.05, seconds=5)
    f = fetcher(served.url, read_timeout=2.0, total_timeout=0.5, retry=RetryPolicy(attempts=1))
    started = time.monotonic()
    with pytest.raises(NetworkError, match="total deadline"):
        f.manifest(None, 1 << 20)
    assert time.monotonic() - started < 2.0
    assert faults.hits("drip") == 1
    f.close()


def test_silent_server_hits_the_read_timeout(served: Served, faults: FaultSimulator) -> None:
    faults.add("hang", "manifest", 2, seconds=3)
    sleeps = Sleeps()
    f = fetcher(served.url, sleeps, read_timeout=0.3, retry=RetryPolicy(attempts=2, sleep=sleeps))
    started = time.monotonic()
    with pytest.raises(NetworkError, match="timeout"):
        f.manifest(None, 1 << 20)
    assert time.monotonic() - started < 2.5
    assert len(sleeps.delays) == 1  # a network error is retried
    assert faults.hits("hang") == 2
    f.close()


def test_refused_connection_is_a_network_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: connections are refused
        f = fetcher(f"http://127.0.0.1:{port}", retry=RetryPolicy(attempts=1))
        with pytest.raises(NetworkError):
            f.manifest(None, 1 << 20)
        f.close()


# =========================================================================== downloads


def test_download_streams_and_verifies(served: Served, tmp_path: Path) -> None:
    got: list[int] = []
    f = fetcher(served.url)
    dest = tmp_path / "snap.part"
    f.download(served.snapshot, dest, got.append)
    assert dest.read_bytes() == served.snapshot_bytes
    assert sum(got) == served.snapshot.length
    f.close()


def test_download_resumes_after_a_cut_connection(
    served: Served, faults: FaultSimulator, tmp_path: Path
) -> None:
    cut = 1000
    faults.add("reset", "/" + served.snapshot.path, after=cut)
    rec = faults.transport()
    sleeps = Sleeps()
    f = fetcher(served.url, sleeps, transport=rec)
    dest = tmp_path / "snap.part"
    f.download(served.snapshot, dest)
    assert dest.read_bytes() == served.snapshot_bytes
    assert [s.status for s in rec.seen] == [200, 206]
    assert "range" not in rec.seen[0].headers
    assert rec.seen[1].headers["range"] == f"bytes={cut}-"
    assert len(sleeps.delays) == 1
    f.close()


def test_download_resumes_a_partial_file_from_an_earlier_attempt(
    served: Served, faults: FaultSimulator, tmp_path: Path
) -> None:
    dest = tmp_path / "snap.part"
    dest.write_bytes(served.snapshot_bytes[:777])
    rec = faults.transport()
    f = fetcher(served.url, transport=rec)
    f.download(served.snapshot, dest)
    assert dest.read_bytes() == served.snapshot_bytes
    assert [(s.status, s.headers.get("range")) for s in rec.seen] == [(206, "bytes=777-")]
    f.close()


def test_a_bad_partial_file_is_refetched_whole(
    served: Served, faults: FaultSimulator, tmp_path: Path
) -> None:
    """The kept prefix is corrupt: the resumed result fails its hash, so the artefact is
    fetched again from zero (not left to fail forever)."""
    dest = tmp_path / "snap.part"
    dest.write_bytes(b"\0" * 500)
    rec = faults.transport()
    f = fetcher(served.url, transport=rec)
    f.download(served.snapshot, dest)
    assert dest.read_bytes() == served.snapshot_bytes
    assert [(s.status, s.headers.get("range")) for s in rec.seen] == [
        (206, "bytes=500-"),
        (200, None),
    ]
    f.close()


def test_a_complete_but_wrong_file_is_not_trusted(
    served: Served, faults: FaultSimulator, tmp_path: Path
) -> None:
    dest = tmp_path / "snap.part"
    dest.write_bytes(b"\1" * served.snapshot.length)  # right length, wrong bytes
    rec = faults.transport()
    f = fetcher(served.url, transport=rec)
    f.download(served.snapshot, dest)
    assert dest.read_bytes() == served.snapshot_bytes
    assert [s.headers.get("range") for s in rec.seen] == [None]
    rec.seen.clear()
    f.download(served.snapshot, dest)  # a verified complete file needs no request
    assert rec.seen == []
    f.close()


def test_a_tampered_artefact_is_deleted_and_raised(served: Served, tmp_path: Path) -> None:
    wrong = Artefact(
        served.snapshot.path, hashlib.sha256(b"other").hexdigest(), served.snapshot.length
    )
    sleeps = Sleeps()
    f = fetcher(served.url, sleeps)
    dest = tmp_path / "snap.part"
    with pytest.raises(DigestMismatch):
        f.download(wrong, dest)
    assert not dest.exists()
    assert sleeps.delays == []  # a verification failure is not retried
    shorter = Artefact(served.snapshot.path, served.snapshot.sha256, served.snapshot.length - 1)
    with pytest.raises(TooLarge):
        f.download(shorter, dest)
    assert not dest.exists()
    f.close()


def test_server_ignoring_range_restarts_from_zero(served: Served, tmp_path: Path) -> None:
    """A 200 to a Range request replaces the partial file instead of appending to it."""

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=served.snapshot_bytes)

    dest = tmp_path / "snap.part"
    dest.write_bytes(served.snapshot_bytes[:300])
    f = fetcher(served.url, transport=httpx.MockTransport(handler))
    f.download(served.snapshot, dest)
    assert dest.read_bytes() == served.snapshot_bytes
    f.close()


def test_206_for_another_range_is_not_appended(served: Served, tmp_path: Path) -> None:
    """A 206 whose Content-Range starts elsewhere is refused before its body is read;
    the partial file is dropped and the artefact fetched whole."""
    calls: list[str | None] = []
    pulled: list[int] = []

    def whole_file() -> Iterator[bytes]:
        for i in range(0, len(served.snapshot_bytes), 1024):
            pulled.append(i)
            yield served.snapshot_bytes[i : i + 1024]

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.headers.get("Range"))
        if request.headers.get("Range"):
            size = len(served.snapshot_bytes)  # claims a range but starts from byte 0
            rng = f"bytes 0-{size - 1}/{size}"
            return httpx.Response(206, content=whole_file(), headers={"Content-Range": rng})
        return httpx.Response(200, content=served.snapshot_bytes)

    dest = tmp_path / "snap.part"
    dest.write_bytes(served.snapshot_bytes[:300])
    f = fetcher(served.url, transport=httpx.MockTransport(handler))
    f.download(served.snapshot, dest)
    assert dest.read_bytes() == served.snapshot_bytes
    assert calls == ["bytes=300-", None]
    assert pulled == []  # not one byte of the mislabelled body was read
    f.close()


def test_download_http_error_keeps_the_partial_file(
    served: Served, faults: FaultSimulator, tmp_path: Path
) -> None:
    dest = tmp_path / "snap.part"
    dest.write_bytes(served.snapshot_bytes[:300])
    faults.fail_next(1, status=403, target="site")
    f = fetcher(served.url)
    with pytest.raises(HTTPStatusError):
        f.download(served.snapshot, dest)
    assert dest.read_bytes() == served.snapshot_bytes[:300]
    f.close()


# =========================================================================== TLS and proxies


def _ca_and_server_cert(tmp: Path) -> tuple[Path, Path, Path]:
    """A private CA, and a certificate for 127.0.0.1 it signed: (ca.pem, cert, key)."""
    now = dt.datetime.now(dt.timezone.utc)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("test CA"))
        .issuer_name(name("test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name("127.0.0.1"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = tmp / "ca.pem", tmp / "server.pem", tmp / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def https_site(site: Path, tmp: Path) -> Iterator[tuple[str, Path]]:
    """A plain static-file HTTPS server (no Range, no ETag) for ``site``; (url, ca.pem)."""
    ca, cert, key = _ca_and_server_cert(tmp)
    handler = functools.partial(_Quiet, directory=str(site))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{httpd.server_address[1]}", ca
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(2)


def test_https_verifies_against_the_configured_ca(served: Served, tmp_path: Path) -> None:
    with https_site(served.platform.site_dir, tmp_path) as (url, ca):
        untrusted = fetcher(url, retry=RetryPolicy(attempts=1))
        with pytest.raises(NetworkError, match=r"CERTIFICATE_VERIFY_FAILED|certificate"):
            untrusted.manifest(None, 1 << 20)
        untrusted.close()
        trusted = fetcher(url, ca_bundle=ca)
        data = trusted.manifest(None, 1 << 20).data
        assert data is not None and Envelope.from_bytes(data).payload_json()["version"] == 1
        dest = tmp_path / "snap.part"
        trusted.download(served.snapshot, dest)
        assert dest.read_bytes() == served.snapshot_bytes
        trusted.close()
    with pytest.raises(ConfigurationError, match="CA bundle"):
        HttpFetcher(url, ca_bundle=tmp_path / "missing-ca.pem")


class _Proxy(http.server.BaseHTTPRequestHandler):
    """A minimal forward proxy for plain HTTP: absolute-form GET in, origin request out."""

    seen: list[str]

    def do_GET(self) -> None:
        self.seen.append(self.path)
        target = httpx.URL(self.path)
        conn = http.client.HTTPConnection(target.host, target.port, timeout=5)
        headers = {k: v for k, v in self.headers.items() if k.lower() != "proxy-connection"}
        conn.request("GET", target.raw_path.decode(), headers=headers)
        resp = conn.getresponse()
        body = resp.read()
        self.send_response(resp.status)
        for k, v in resp.getheaders():
            if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        conn.close()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_requests_go_through_the_configured_proxy(served: Served) -> None:
    seen: list[str] = []
    handler = type("Proxy", (_Proxy,), {"seen": seen})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        f = fetcher(served.url, proxy=f"http://127.0.0.1:{httpd.server_address[1]}")
        assert f.manifest(None, 1 << 20).data
        assert seen == [f"{served.url}/manifest.json"]
        f.close()
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(2)


# =========================================================================== local sites


def test_file_fetcher_reads_a_copied_site(served: Served, tmp_path: Path) -> None:
    site = served.platform.site_dir
    f = FileFetcher(site)
    first = f.manifest(None, 1 << 20)
    assert first.data == (site / "manifest.json").read_bytes()
    assert f.manifest(first.etag, 1 << 20).data is None  # unchanged file: "304"
    assert f.root(1, 1 << 18) == (site / "root" / "1.root.json").read_bytes()
    assert f.root(2, 1 << 18) is None
    dest = tmp_path / "snap.part"
    f.download(served.snapshot, dest)
    assert dest.read_bytes() == served.snapshot_bytes
    with pytest.raises(TooLarge):
        f.manifest(None, 10)


def test_file_fetcher_refuses_bad_artefacts_and_escapes(served: Served, tmp_path: Path) -> None:
    f = FileFetcher(served.platform.site_dir)
    dest = tmp_path / "x.part"
    longer = Artefact(served.snapshot.path, served.snapshot.sha256, served.snapshot.length - 5)
    with pytest.raises(TooLarge):
        f.download(longer, dest)
    assert not dest.exists()
    wrong = Artefact(served.snapshot.path, "0" * 64, served.snapshot.length)
    with pytest.raises(DigestMismatch):
        f.download(wrong, dest)
    assert not dest.exists()
    missing = Artefact("snapshots/9.x.ndjson.gz", "0" * 64, 1)
    with pytest.raises(HTTPStatusError) as info:
        f.download(missing, dest)
    assert info.value.status_code == 404
    with pytest.raises(SyncError, match="escapes"):
        f.download(Artefact("../../../etc/passwd", "0" * 64, 1), dest)
    with pytest.raises(ConfigurationError):
        FileFetcher(tmp_path / "nowhere")


def test_make_fetcher_picks_by_scheme(served: Served) -> None:
    site = served.platform.site_dir
    http_f = make_fetcher(served.url)
    assert isinstance(http_f, HttpFetcher)
    http_f.close()
    assert isinstance(make_fetcher(f"file://{site}"), FileFetcher)
    assert isinstance(make_fetcher(str(site)), FileFetcher)
    assert isinstance(make_fetcher(site), FileFetcher)
    with pytest.raises(ConfigurationError):
        make_fetcher("ftp://example.com/site")
