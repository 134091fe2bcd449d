"""The platform keeps serving legitimate clients during each attack of issue 16.

Real uvicorn server on loopback. The attacker connects from 127.0.0.2 (Linux routes the
whole 127/8 to loopback), legitimate clients from 127.0.0.1, so per-client limits apply
to the attacker only. Each test measures the latency of legitimate requests while the
attack runs and prints p50/p99; each is bounded to a few seconds. ``-m slow`` runs the
full-size slowloris (4,100 sockets) of the issue.
"""

from __future__ import annotations

import json
import resource
import socket
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from _servers import FakeSite, make_fake_site, make_report, register_subscriber
from intercept_sdk._platform.server import Limits, PlatformServer
from intercept_sdk._protocol.signing import SigningKey

ATTACKER = "127.0.0.2"


@pytest.fixture(autouse=True)
def _enough_fds() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, 20000) if hard != resource.RLIM_INFINITY else 20000
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


@pytest.fixture
def site(tmp_path: Path) -> FakeSite:
    return make_fake_site(tmp_path / "site")


def serve(site: FakeSite, tmp_path: Path, **limits: object) -> tuple[PlatformServer, SigningKey]:
    subs = tmp_path / "subscribers"
    subs.mkdir(exist_ok=True)
    key = register_subscriber(subs, "hotel-001")
    srv = PlatformServer(
        site.root, subscribers_dir=subs, state_dir=tmp_path / "state",
        limits=Limits(**limits),  # type: ignore[arg-type]
    ).start()  # fmt: skip
    return srv, key


def attacker_socket(port: int) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind((ATTACKER, 0))
    s.settimeout(5)
    s.connect(("127.0.0.1", port))
    return s


def measure(
    request: Callable[[], int], seconds: float, ok: tuple[int, ...] = (200,)
) -> list[float]:
    """Latencies of ``request`` called back to back for ``seconds``; every answer in ``ok``."""
    latencies: list[float] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        t = time.perf_counter()
        status = request()
        latencies.append(time.perf_counter() - t)
        assert status in ok, status
    return latencies


def p99(name: str, latencies: list[float]) -> float:
    q = statistics.quantiles(latencies, n=100)[98] if len(latencies) > 1 else latencies[0]
    print(f"\n{name}: {len(latencies)} legitimate requests, p50 "
          f"{statistics.median(latencies) * 1000:.1f} ms, p99 {q * 1000:.1f} ms")  # fmt: skip
    return q


def legit_upload(url: str, key: SigningKey) -> Callable[[], int]:
    client = httpx.Client(base_url=url, timeout=10)

    def go() -> int:
        return client.post(
            "/reports", json={"reports": [make_report(key, "hotel-001")]}
        ).status_code

    return go


def legit_get(url: str) -> Callable[[], int]:
    client = httpx.Client(base_url=url, timeout=10)
    return lambda: client.get("/manifest.json").status_code


# --------------------------------------------------------------------------- slowloris


def _slowloris(site: FakeSite, tmp_path: Path, sockets: int, max_connections: int) -> None:
    srv, key = serve(site, tmp_path, max_connections=max_connections, header_timeout=30.0)
    held: list[socket.socket] = []
    try:
        for _ in range(sockets):
            try:
                s = attacker_socket(srv.port)
                s.sendall(b"GET /manifest.json HTTP/1.1\r\nHost: x\r\nX-a: ")  # never finished
                held.append(s)
            except OSError:
                pass  # refused/reset by the guard: fine for the attacker's count
        time.sleep(0.3)
        lat = measure(legit_get(srv.url), 1.5) + measure(legit_upload(srv.url, key), 1.5)
        assert p99(f"slowloris {sockets} sockets", lat) < 2.0
        # Without the guard these sockets would exceed max_connections and every request
        # would be 503; with it, at most max_connections_per_client are held.
    finally:
        for s in held:
            s.close()
        srv.stop()


def test_slowloris_1000_idle_sockets(site: FakeSite, tmp_path: Path) -> None:
    # max_connections below the attack size: uvicorn alone would answer 503 to everyone.
    _slowloris(site, tmp_path, 1000, max_connections=600)


@pytest.mark.slow
def test_slowloris_4100_idle_sockets(site: FakeSite, tmp_path: Path) -> None:
    _slowloris(site, tmp_path, 4100, max_connections=4096)


def test_header_deadline_closes_unfinished_heads(site: FakeSite, tmp_path: Path) -> None:
    srv, _ = serve(site, tmp_path, header_timeout=0.5)
    try:
        fresh = attacker_socket(srv.port)  # sends nothing at all
        partial = attacker_socket(srv.port)
        partial.sendall(b"GET / HTTP/1.1\r\nHo")
        t = time.monotonic()
        for s in (fresh, partial):
            assert s.recv(100) == b""  # closed by the server
            s.close()
        assert time.monotonic() - t < 3.0
        # A request whose head is complete is not cut by the header deadline.
        slow = httpx.get(srv.url + "/manifest.json")
        assert slow.status_code == 200
    finally:
        srv.stop()


def test_connections_beyond_the_per_client_cap_get_429(site: FakeSite, tmp_path: Path) -> None:
    srv, _ = serve(site, tmp_path, max_connections_per_client=5)
    held = [attacker_socket(srv.port) for _ in range(5)]
    try:
        extra = attacker_socket(srv.port)
        answer = extra.recv(1000)
        assert answer.startswith(b"HTTP/1.1 429 ") and b"Retry-After: 5" in answer
        assert httpx.get(srv.url + "/manifest.json").status_code == 200  # other address
    finally:
        for s in held:
            s.close()
        srv.stop()


# --------------------------------------------------------------------------- slow body


def test_slow_body_does_not_stop_report_intake(site: FakeSite, tmp_path: Path) -> None:
    """16 connections trickling a body (one byte every 0.5 s): intake goes on, and the
    trickling uploads end with 408 after ``body_timeout`` (or 429 beyond the per-client cap)."""
    srv, key = serve(site, tmp_path, body_timeout=2.0)
    stop = threading.Event()
    answers: list[bytes] = []

    def trickle() -> None:
        try:
            s = attacker_socket(srv.port)
            s.sendall(b"POST /reports HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Content-Length: 1000\r\n\r\n")  # fmt: skip
            s.settimeout(0.5)
            while not stop.is_set():
                try:
                    s.sendall(b"{")
                    data = s.recv(1000)
                    if data:
                        answers.append(data)
                        return
                except TimeoutError:
                    continue
                except OSError:
                    return
        finally:
            s.close()

    threads = [threading.Thread(target=trickle, daemon=True) for _ in range(16)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.3)
        lat = measure(legit_upload(srv.url, key), 2.5)
        assert p99("slow body, 16 trickling uploads", lat) < 2.0
        deadline = time.monotonic() + 6
        while len(answers) < 16 and time.monotonic() < deadline:
            time.sleep(0.1)
        statuses = sorted(a.split(b" ")[1].decode() for a in answers)
        assert statuses.count("429") == 12 and statuses.count("408") == 4, statuses
    finally:
        stop.set()
        for t in threads:
            t.join(5)
        srv.stop()


# --------------------------------------------------------------------------- listeners


def test_listener_flood_leaves_room_for_real_clients(site: FakeSite, tmp_path: Path) -> None:
    """1,000 ``/events`` listeners from one address: 32 are kept, the rest get 429, and a
    real client still gets its stream (instead of falling back to polling)."""
    srv, _ = serve(site, tmp_path)
    held: list[socket.socket] = []
    refused = 0
    try:
        for _ in range(1000):
            s = attacker_socket(srv.port)
            s.sendall(b"GET /events HTTP/1.1\r\nHost: x\r\n\r\n")
            head = s.recv(200)
            if head.startswith(b"HTTP/1.1 429"):
                refused += 1
                s.close()
            else:
                assert head.startswith(b"HTTP/1.1 200"), head
                held.append(s)
        assert (len(held), refused) == (32, 968)

        def listen() -> int:
            with httpx.stream("GET", srv.url + "/events", timeout=5) as r:
                for line in r.iter_lines():
                    if line.startswith("data:"):
                        assert json.loads(line[5:])["version"] >= 1
                        break
                return r.status_code

        assert p99("listener flood, 1000 listeners", measure(listen, 1.5)) < 2.0
    finally:
        for s in held:
            s.close()
        srv.stop()


# --------------------------------------------------------------------------- signature work


def _junk_batch(key_id: str, n: int, sigs: int) -> bytes:
    import base64

    payload = base64.b64encode(b'{"type":"report"}').decode()
    sig = base64.b64encode(b"\x01" * 64).decode()
    env = {"payload": payload, "payload_type": "application/vnd.intercept.report+json",
           "signatures": [{"keyid": key_id, "sig": sig}] * sigs}  # fmt: skip
    return json.dumps({"reports": [env] * n}, separators=(",", ":")).encode()


def test_signature_work_flood(site: FakeSite, tmp_path: Path) -> None:
    """5,000 reports of junk signatures under a registered key id cost almost nothing:
    repeated key ids are refused before any verification, and the first bad signature
    refuses the batch. Legitimate uploads go on while the junk is posted in a loop."""
    from intercept_sdk._protocol.signing import REPORT_TYPE, keyid_of

    srv, key = serve(site, tmp_path)
    kid = keyid_of(key.public)
    repeated = _junk_batch(kid, 5000, 8).replace(
        b"application/vnd.intercept.report+json", REPORT_TYPE.encode()
    )
    single = _junk_batch(kid, 5000, 1).replace(
        b"application/vnd.intercept.report+json", REPORT_TYPE.encode()
    )
    stop = threading.Event()
    junk_times: list[float] = []
    statuses: set[int] = set()

    def flood() -> None:
        with httpx.Client(base_url=srv.url, timeout=30) as c:
            while not stop.is_set():
                for body in (repeated, single):
                    t = time.perf_counter()
                    statuses.add(c.post("/reports", content=body).status_code)
                    junk_times.append(time.perf_counter() - t)

    threads = [threading.Thread(target=flood, daemon=True) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.3)
        lat = measure(legit_upload(srv.url, key), 3.0)
        assert p99("signature-work flood", lat) < 2.0
    finally:
        stop.set()
        for t in threads:
            t.join(30)
        srv.stop()
    assert statuses <= {400, 403}, statuses
    print(f"junk batch answered in median {statistics.median(junk_times) * 1000:.0f} ms "
          f"({len(junk_times)} batches)")  # fmt: skip
    assert statistics.median(junk_times) < 1.0
