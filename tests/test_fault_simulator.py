"""The fault simulator (:mod:`intercept_sdk.testing.faults`) against the real platform server.

Each kind is checked for what a client observes on the wire, so the reliability suite's
scenarios rest on faults that really happen: the server hook wraps a real
:class:`PlatformServer` on loopback, the transport hook wraps the real ``httpx``
transport. Also: targets, counts, the bookkeeping (pending, hits, requests) and the
refusal of nonsense.
"""

from __future__ import annotations

import hashlib
import inspect
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from _servers import FakeSite, make_fake_site, make_report, register_subscriber
from intercept_sdk._exceptions import ConfigurationError
from intercept_sdk._platform.server import PlatformServer, create_app
from intercept_sdk.testing import TestPlatform
from intercept_sdk.testing.faults import ALWAYS, FaultSimulator


@pytest.fixture
def site(tmp_path: Path) -> FakeSite:
    return make_fake_site(tmp_path / "site", artefact_size=20_000)


@pytest.fixture
def sim() -> FaultSimulator:
    return FaultSimulator()


@pytest.fixture
def server(site: FakeSite, sim: FaultSimulator, tmp_path: Path) -> Iterator[PlatformServer]:
    subs = tmp_path / "subscribers"
    subs.mkdir()
    with PlatformServer(
        site.root,
        subscribers_dir=subs,
        state_dir=tmp_path / "state",
        middleware=[sim.middleware()],
    ) as srv:
        yield srv


@pytest.fixture
def client(server: PlatformServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=5.0, headers=server.operator_headers()) as c:
        yield c


def _received_before(error: type[Exception], client: httpx.Client, url: str) -> bytes:
    """The body bytes of ``GET url`` that arrived before ``error`` cut it."""
    received = bytearray()
    try:
        with client.stream("GET", url) as s:
            for chunk in s.iter_raw():
                received += chunk
    except error:
        return bytes(received)
    raise AssertionError(f"GET {url} was not cut")


def test_the_server_has_no_fault_parameter() -> None:
    """Faults come from outside: the production server takes middleware, not faults."""
    for api in (create_app, PlatformServer):
        params = inspect.signature(api).parameters
        assert "faults" not in params
        assert "middleware" in params


def test_status_faults_by_target_count_and_order(
    client: httpx.Client, site: FakeSite, sim: FaultSimulator
) -> None:
    artefact = "/" + site.artefact
    sim.fail_next(1, status=429, retry_after=2.5, target="manifest")
    sim.fail_next(2, status=503, retry_after=None, target="site")
    assert sim.pending() == 3
    assert sim.pending("site") == 2
    r = client.get(artefact)  # the manifest fault does not match; the site one does
    assert r.status_code == 503
    assert "retry-after" not in r.headers
    r = client.get("/manifest.json")  # the first matching fault in queue order
    assert (r.status_code, r.headers["retry-after"]) == (429, "3")
    assert client.get("/root/1.root.json").status_code == 503
    assert client.get(artefact).content == site.artefact_bytes  # used up
    assert sim.pending() == 0
    assert sim.hits("status") == 3
    assert sim.requests("site") == 4
    assert sim.requests("manifest") == 1
    assert sim.requests(artefact) == 2

    sim.add("status", artefact, ALWAYS, status=500)  # an exact path, until cleared
    for _ in range(3):
        assert client.get(artefact).status_code == 500
    assert client.get("/manifest.json").status_code == 200
    sim.clear()
    assert client.get(artefact).status_code == 200


def test_site_faults_leave_reports_and_events_alone(
    client: httpx.Client, sim: FaultSimulator
) -> None:
    sim.add("status", "site", ALWAYS, status=503)
    assert client.get("/reports").status_code == 200
    assert client.head("/events").status_code == 200
    assert sim.requests("site") == 0
    assert sim.requests("any") == 2
    sim.clear()
    sim.add("status", "reports", 1, status=503)
    assert client.get("/reports").status_code == 200  # a listing, not an upload
    assert client.post("/reports", json={"reports": []}).status_code == 503


def test_lost_answer_after_the_report_batch_was_stored(
    client: httpx.Client, sim: FaultSimulator, tmp_path: Path
) -> None:
    key = register_subscriber(tmp_path / "subscribers", "hotel-001")
    report = make_report(key, "hotel-001")
    sim.fail_next(1, status=503, retry_after=0, after_store=True)
    r = client.post("/reports", json={"reports": [report]})
    assert (r.status_code, r.headers["retry-after"]) == (503, "0")
    assert len(client.get("/reports").json()) == 1  # stored all the same
    r = client.post("/reports", json={"reports": [report]})
    assert r.status_code == 200 and len(r.json()["duplicates"]) == 1
    # A refused batch is not a 200: the real answer goes through.
    sim.fail_next(1, status=503, after_store=True)
    assert client.post("/reports", content=b"not json").status_code == 400


def test_body_faults(client: httpx.Client, site: FakeSite, sim: FaultSimulator) -> None:
    artefact = "/" + site.artefact
    body = site.artefact_bytes

    sim.add("short_length", "artefact", by=100)
    r = client.get(artefact)  # a consistent answer, just 100 bytes short
    assert (r.status_code, r.content) == (200, body[:-100])
    assert r.headers["content-length"] == str(len(body) - 100)

    sim.add("oversize", "artefact", extra=1000)
    r = client.get(artefact)
    assert r.content == body + b"\0" * 1000

    sim.add("truncate", "artefact", after=5000)
    cut = _received_before(httpx.RemoteProtocolError, client, artefact)
    assert cut == body[:5000]  # then the connection closed

    sim.add("long_length", "manifest", by=10)
    with pytest.raises(httpx.RemoteProtocolError):
        client.get("/manifest.json")
    assert sim.hits() == 4
    assert client.get(artefact).content == body  # the server is fine afterwards


def test_drip_hang_and_stall(client: httpx.Client, sim: FaultSimulator) -> None:
    sim.add("drip", "manifest", interval=0.1, seconds=5)
    t0 = time.monotonic()
    with client.stream("GET", "/manifest.json") as s:
        first = b""
        for chunk in s.iter_raw():
            first += chunk
            if len(first) >= 4:
                break
    assert time.monotonic() - t0 >= 0.3  # one byte per 0.1 s
    assert len(first) == 4

    sim.add("hang", "manifest", seconds=5)
    t0 = time.monotonic()
    with pytest.raises(httpx.ReadTimeout):
        client.get("/manifest.json", timeout=0.3)
    assert time.monotonic() - t0 < 2

    sim.stall_next(1, seconds=0.4, target="manifest")
    t0 = time.monotonic()
    assert client.get("/manifest.json").status_code == 200
    assert time.monotonic() - t0 >= 0.4


def test_answers_a_cdn_might_give(
    client: httpx.Client, site: FakeSite, sim: FaultSimulator
) -> None:
    sim.add("redirect", "manifest")
    r = client.get("/manifest.json")
    assert (r.status_code, r.headers["location"]) == (
        302,
        "http://mirror.invalid/manifest.json",
    )

    older = b'{"payload":"e30=","payload_type":"x","signatures":[]}'
    sim.add("older", "manifest", data=older)
    r = client.get("/manifest.json")
    assert r.content == older
    assert r.headers["etag"] == f'"{hashlib.sha256(older).hexdigest()}"'

    etag = client.get("/manifest.json").headers["etag"]
    sim.add("stale_etag", "manifest", 2)
    assert client.get("/manifest.json").status_code == 200  # unconditional: the file
    r = client.get("/manifest.json", headers={"If-None-Match": '"anything"'})
    assert (r.status_code, r.headers["etag"]) == (304, '"anything"')
    assert client.get("/manifest.json", headers={"If-None-Match": etag}).status_code == 304

    sim.add("events", "events", events=b"event: version\ndata: oops\n\n", hold=0.2)
    r = client.get("/events")  # ends after the hold
    assert r.content == b"event: version\ndata: oops\n\n"
    assert r.headers["content-type"] == "text/event-stream"


def test_transport_faults_and_records(
    server: PlatformServer, site: FakeSite, sim: FaultSimulator
) -> None:
    transport = sim.transport()
    with httpx.Client(base_url=server.url, transport=transport, timeout=5.0) as c:
        sim.add("connect_timeout", "manifest")
        sim.add("read_timeout", "root")
        sim.add("connect_error", "reports")
        with pytest.raises(httpx.ConnectTimeout):
            c.get("/manifest.json")
        with pytest.raises(httpx.ReadTimeout):
            c.get("/root/1.root.json")
        with pytest.raises(httpx.ConnectError):
            c.post("/reports", json={"reports": []})
        assert sim.requests() == 0  # none of them reached the server
        sim.add("reset", "/" + site.artefact, after=1234)
        cut = _received_before(httpx.ReadError, c, "/" + site.artefact)
        assert cut == site.artefact_bytes[:1234]
        assert c.get("/manifest.json", headers={"X-Probe": "1"}).status_code == 200
    assert [(s.path, s.status, s.fault) for s in transport.seen] == [
        ("/" + site.artefact, 200, "reset"),
        ("/manifest.json", 200, ""),
    ]
    assert transport.seen[1].headers["x-probe"] == "1"
    assert transport.paths() == ["/" + site.artefact, "/manifest.json"]
    # Transport faults are not the server's to apply, and the other way round.
    sim.add("reset", "any")
    with httpx.Client(base_url=server.url, timeout=5.0) as plain:
        assert plain.get("/" + site.artefact).content == site.artefact_bytes
    assert sim.pending() == 1


@pytest.mark.parametrize(
    ("kind", "target", "count", "params"),
    [
        ("gremlin", "any", 1, {}),
        ("status", "everything", 1, {}),
        ("status", "any", -1, {}),
        ("status", "any", 1, {"status": 200}),
        ("status", "any", 1, {"retry_after": -1}),
        ("stall", "any", 1, {}),
        ("hang", "any", 1, {"seconds": 3600}),
        ("older", "manifest", 1, {"data": "not bytes"}),
        ("events", "events", 1, {}),
    ],
)
def test_nonsense_is_refused(kind: str, target: str, count: int, params: dict[str, object]) -> None:
    with pytest.raises(ConfigurationError):
        FaultSimulator().add(kind, target, count, **params)  # type: ignore[arg-type]


def test_test_platform_serves_with_faults(tmp_path: Path) -> None:
    """``TestPlatform.serve(faults=...)``: the integrator's one-line way in."""
    p = TestPlatform(tmp_path)
    sim = FaultSimulator()
    sim.fail_next(1, status=503, target="manifest")
    with p.serve(faults=sim) as server:
        assert httpx.get(server.url + "/manifest.json").status_code == 503
        assert httpx.get(server.url + "/manifest.json").status_code == 200
    assert sim.requests("manifest") == 2
