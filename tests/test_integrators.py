"""Integrators first (issue 19): typed options, a background engine that never storms,
sync errors shared by every process on the cache, one HTTP configuration (a real
loopback proxy sees sync and reports alike), leftover reports of a killed process
delivered by a fresh client's ``close()``, metrics, hooks and health."""

from __future__ import annotations

import asyncio
import datetime as _dt
import http.client
import http.server
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from _servers import stdlib_server
from intercept_sdk import AsyncClient, Client, ConfigurationError, Intercepted, Person
from intercept_sdk._client.options import UnknownOption
from intercept_sdk._platform.keys import keygen
from intercept_sdk.testing import TestPlatform

MEASURE = "consumption.star_hotel"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def platform(tmp_path: Path) -> Iterator[TestPlatform]:
    with TestPlatform(tmp_path / "platform") as p:
        p.add_person()
        yield p


# -- typed options ------------------------------------------------------------------------


def _mypy(tmp_path: Path, body: str) -> subprocess.CompletedProcess[str]:
    src = tmp_path / "typed_use.py"
    src.write_text(textwrap.dedent(body))
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", str(src)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        check=False,
    )


def test_mypy_strict_rejects_a_misspelt_or_mistyped_option(tmp_path: Path) -> None:
    result = _mypy(
        tmp_path,
        """
        import datetime
        from intercept_sdk import Client

        ok = Client("site", b"{}", "cache", max_staleness=datetime.timedelta(hours=1),
                    connect_timeout="5s", poll_interval=300)
        bad = Client("site", b"{}", "cache", max_stalenes="1h")
        worse = Client("site", b"{}", "cache", push="yes")
        """,
    )
    out = result.stdout
    assert result.returncode == 1, out
    assert 'Unexpected keyword argument "max_stalenes"' in out
    assert '"push"' in out and "bool" in out
    assert out.count("error:") == 2, out  # the correct call (timedelta, "5s") type-checks


def test_a_misspelt_option_names_client_and_the_closest_option(tmp_path: Path) -> None:
    with pytest.raises(
        UnknownOption,
        match=r"Client\(\) got an unknown option 'max_stalenes' "
        r"\(did you mean 'max_staleness'\?\)",
    ) as caught:
        Client("site", b"{}", tmp_path / "c", max_stalenes="1h")  # type: ignore[call-arg]
    assert isinstance(caught.value, TypeError) and isinstance(caught.value, ConfigurationError)
    assert "_Core" not in str(caught.value)


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("push", "yes", "push must be True or False"),
        ("poll_interval", 0, "poll_interval must be at least"),
        ("poll_interval", "0s", "poll_interval must be at least"),
        ("max_staleness", float("nan"), "finite"),
        ("connect_timeout", "five seconds", "connect_timeout"),
        ("connect_timeout", 0, "connect_timeout must be positive"),
        ("stale_action", "allow", "stale_action"),
        ("measures", "consumption.star_hotel", "list of measure codes"),
    ],
)
def test_bad_option_values_are_refused_before_anything_starts(
    tmp_path: Path, option: str, value: object, message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message):
        Client("site", b"{}", tmp_path / "c", **{option: value})  # type: ignore[arg-type]


def test_durations_accept_timedelta_seconds_and_text(platform: TestPlatform) -> None:
    client = platform.client(
        max_staleness=_dt.timedelta(hours=2),
        connect_timeout="5s",
        read_timeout=_dt.timedelta(seconds=7),
        poll_interval=90,
    )
    cfg = client._core.config
    assert cfg.max_staleness == 7200.0 and cfg.poll_interval == 90.0
    assert client._core.http.connect_timeout == 5.0 and client._core.http.read_timeout == 7.0
    assert client.check(Person(next(iter(platform.entries.values()))["id_number"]), MEASURE)


def test_connect_timeout_text_syncs_over_http(platform: TestPlatform) -> None:
    """``connect_timeout="5s"`` used to construct, then fail every sync with a TypeError."""
    with platform.serve() as server:
        client = platform.client(platform=server.url, connect_timeout="5s", push=False)
        assert client.status().last_error is None
        assert client.status().list_version == platform.last.version  # type: ignore[union-attr]


def test_options_from_the_environment(
    platform: TestPlatform, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("INTERCEPT_MAX_STALENESS", "3h")
    client = platform.client()
    assert client._core.config.max_staleness == 3 * 3600.0
    explicit = platform.client(max_staleness="1h")  # a keyword wins over the environment
    assert explicit._core.config.max_staleness == 3600.0
    env = platform.env(platform.directory / "from-env")
    with Client.from_env(environ=env) as from_env:
        from_env.sync()
        assert from_env.status().list_version == platform.last.version  # type: ignore[union-attr]
    with pytest.raises(ConfigurationError, match="INTERCEPT_PLATFORM"):
        Client.from_env(environ={})


# -- the background engine never storms ------------------------------------------------------


class _CountingSite(http.server.BaseHTTPRequestHandler):
    """Serves a site directory, counts manifest requests, and announces version 99 on
    ``/events`` at every connect (what a platform with a newer list does)."""

    site: Path
    hits: list[str]

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        self.hits.append(path)
        if path == "/events":
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            self.wfile.write(b'event: version\ndata: {"version": 99}\n\n')
            self.wfile.flush()
            time.sleep(0.2)
            return
        file = self.site / path.lstrip("/")
        if not file.is_file():
            self.send_error(404)
            return
        body = file.read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def test_a_wrong_trust_root_does_not_storm_in_real_time(
    platform: TestPlatform, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """3 real seconds of ``background=True`` with a wrong root and a push channel that
    keeps announcing: one manifest fetch (the next is 5-10 s away), no reconnect storm.
    The 60-s bound is shown on a fake clock in test_background.py."""
    wrong_root = keygen(tmp_path / "other-keys")
    handler = type("H", (_CountingSite,), {"site": platform.site_dir, "hits": []})
    with stdlib_server(handler) as url:
        client = Client(url, wrong_root, tmp_path / "cache", background=True, poll_interval="5m")
        time.sleep(3.0)
        status = client.status()
        client.close()
    manifests = [h for h in handler.hits if h.endswith("manifest.json")]
    assert 1 <= len(manifests) <= 2, handler.hits
    assert handler.hits.count("/events") <= 1, handler.hits
    warnings = [r for r in caplog.records if "sync failed" in r.getMessage()]
    assert len(warnings) <= 2
    assert status.last_error is not None and status.last_error.kind == "SignatureError"


def test_sync_errors_are_visible_to_every_process_on_the_cache(
    platform: TestPlatform, tmp_path: Path
) -> None:
    wrong_root = keygen(tmp_path / "other-keys")
    cache = tmp_path / "shared-cache"
    failing = Client(str(platform.site_dir), wrong_root, cache)
    with pytest.raises(Exception, match="signature"):
        failing.sync()
    failing.close()
    health = cache / "health.json"
    assert health.stat().st_mode & 0o777 == 0o600
    # another process (the CLI) on the same cache sees the error
    env = {**os.environ, **platform.env(cache), "INTERCEPT_TRUST_ROOT": str(wrong_root)}
    out = subprocess.run(
        [sys.executable, "-m", "intercept_sdk._cli", "status", "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    data = json.loads(out.stdout)
    assert data["last_error"]["kind"] == "SignatureError"
    assert out.returncode != 0  # never synced and failing: not a healthy cache


# -- one HTTP configuration: a real forward proxy ---------------------------------------------


class _Proxy(http.server.BaseHTTPRequestHandler):
    """A minimal forward HTTP proxy: records each request line, forwards it upstream."""

    seen: list[tuple[str, str]]
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:
        pass

    def _forward(self) -> None:
        target = urlsplit(self.path)
        self.seen.append((self.command, target.path))
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        conn = http.client.HTTPConnection(target.hostname, target.port, timeout=10)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("proxy-connection",)}
        conn.request(
            self.command,
            target.path + (f"?{target.query}" if target.query else ""),
            body=body,
            headers=headers,
        )
        resp = conn.getresponse()
        data = resp.read()
        self.send_response(resp.status)
        for k, v in resp.getheaders():
            if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        conn.close()

    do_GET = do_POST = _forward


def test_reports_go_through_the_proxy_like_syncs(platform: TestPlatform) -> None:
    listed = next(iter(platform.entries.values()))
    handler = type("P", (_Proxy,), {"seen": []})
    with platform.serve() as server, stdlib_server(handler) as proxy:
        client = platform.client(platform=server.url, proxy=proxy, push=False)
        with pytest.raises(Intercepted):
            client.block(Person(listed["id_number"]), MEASURE, room="1808")
        assert client.flush_reports(10)
        client.close()
    assert ("POST", "/reports") in handler.seen
    assert any(p.endswith("manifest.json") for _, p in handler.seen)


def test_intercept_proxy_environment_reaches_reports(
    platform: TestPlatform, monkeypatch: pytest.MonkeyPatch
) -> None:
    handler = type("P", (_Proxy,), {"seen": []})
    with platform.serve() as server, stdlib_server(handler) as proxy:
        monkeypatch.setenv("INTERCEPT_PROXY", proxy)
        client = platform.client(platform=server.url, push=False)
        client.report("objection", next(iter(platform.entries)), grounds="客人申请复核")
        assert client.flush_reports(10)
        client.close()
    assert ("POST", "/reports") in handler.seen


# -- leftover reports of a killed process -----------------------------------------------------

_KILLED = """
import os, signal, sys
from intercept_sdk import Client
root, cache, sub, key, dead_url, entry_id = sys.argv[1:7]
c = Client(dead_url, root, cache, sub, subscriber_key=key, push=False)
rid = c.report("objection", entry_id, grounds="left behind")
print(rid, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_fresh_clients_close_delivers_reports_a_killed_process_left(
    platform: TestPlatform, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    seed = platform.client(cache)  # a synced cache, as the killed worker had
    seed.close()
    script = tmp_path / "killed.py"
    script.write_text(_KILLED)
    proc = subprocess.run(
        [
            sys.executable,
            str(script),
            str(platform.trust_root),
            str(cache),
            platform.subscriber_id,
            str(platform.subscriber_key_dir),
            "http://127.0.0.1:9/",
            next(iter(platform.entries)),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    report_id = proc.stdout.strip()
    with platform.serve() as server:
        client = platform.client(cache, platform=server.url, sync=False, push=False)
        assert client.status().pending_reports == 1
        client.close(timeout=10)  # not background, no new report: close() delivers it
        stored = httpx.get(
            server.url.rstrip("/") + "/reports", timeout=10, headers=server.operator_headers()
        ).json()
    ids = (
        [r["report_id"] for r in stored["reports"]]
        if isinstance(stored, dict)
        else [r["report_id"] for r in stored]
    )
    assert report_id in ids


# -- metrics, hooks, health ------------------------------------------------------------------


def test_metrics_are_scraped_in_prometheus_text(platform: TestPlatform) -> None:
    listed = next(iter(platform.entries.values()))
    client = platform.client()
    client.check(Person(listed["id_number"]), MEASURE)
    client.check(Person("110101199003074477"), MEASURE)
    list(client.screen([Person("110101199003074477")] * 3, MEASURE))
    text = client.metrics.render_prometheus()
    assert f'intercept_checks_total{{action="block",measure="{MEASURE}"}} 1' in text
    assert f'intercept_checks_total{{action="allow",measure="{MEASURE}"}} 4' in text
    assert 'intercept_syncs_total{outcome="ok"} 1' in text
    assert f"intercept_list_version {platform.last.version}" in text  # type: ignore[union-attr]
    assert "intercept_outbox_pending 0" in text
    assert "# TYPE intercept_checks_total counter" in text


def test_hooks_hear_syncs_interceptions_and_failures(
    platform: TestPlatform, tmp_path: Path
) -> None:
    events: list[Any] = []
    listed = next(iter(platform.entries.values()))
    client = platform.client(hooks=events.append)
    with pytest.raises(Intercepted):
        client.block(Person(listed["id_number"]), MEASURE)
    kinds = [e.kind for e in events]
    assert kinds[:2] == ["sync_succeeded", "version_changed"]
    assert "intercepted" in kinds and "report_queued" not in kinds
    intercepted = next(e for e in events if e.kind == "intercepted")
    assert listed["id_number"] not in json.dumps(intercepted.data)
    failed: list[Any] = []
    bad = Client(str(platform.site_dir), keygen(tmp_path / "k2"), tmp_path / "c2")
    bad.hooks.on("sync_failed", failed.append)
    bad.hooks.on("sync_failed", lambda e: 1 / 0)  # a broken hook never reaches the caller
    with pytest.raises(Exception, match="signature"):
        bad.sync()
    assert failed[0].data["error"] == "SignatureError"
    bad.close()


def test_health_is_ready_only_with_a_fresh_verified_list(
    platform: TestPlatform, tmp_path: Path
) -> None:
    fresh = Client(
        str(platform.site_dir),
        platform.trust_root,
        tmp_path / "fresh",
        platform.subscriber_id,
        subscriber_key=platform.subscriber_key_dir,
    )
    h = fresh.health()
    assert h.live and not h.ready and "never synced" in h.reasons[0]
    fresh.sync()
    assert fresh.health().ready
    fresh.close()
    assert not fresh.health().live


# -- AsyncClient ---------------------------------------------------------------------------


def test_async_background_starts_without_async_with(platform: TestPlatform) -> None:
    async def main() -> None:
        with platform.serve() as server:
            client = AsyncClient(
                server.url,
                platform.trust_root,
                platform.directory / "ac",
                platform.subscriber_id,
                subscriber_key=platform.subscriber_key_dir,
                background=True,
            )
            assert client._driver.task is not None  # started at construction, on this loop
            for _ in range(100):
                if (await client.status()).list_version is not None:
                    break
                await asyncio.sleep(0.05)
            assert (await client.status()).list_version == platform.last.version  # type: ignore[union-attr]
            await client.aclose()

    asyncio.run(main())


def test_async_background_made_outside_a_loop_starts_at_first_use(platform: TestPlatform) -> None:
    with platform.serve() as server:
        client = AsyncClient(
            server.url, platform.trust_root, platform.directory / "ac2", background=True
        )

        async def main() -> None:
            assert client._driver.task is None
            await client.status()
            assert client._driver.task is not None
            await client.aclose()

        asyncio.run(main())


def test_async_watch_callbacks_are_awaited(platform: TestPlatform) -> None:
    listed = next(iter(platform.entries.values()))

    async def main() -> None:
        client = AsyncClient(
            str(platform.site_dir),
            platform.trust_root,
            platform.directory / "aw",
            platform.subscriber_id,
            subscriber_key=platform.subscriber_key_dir,
        )
        await client.sync()
        heard: list[str] = []
        loop_thread: list[int] = []

        async def on_change(changes: list[Any]) -> None:
            await asyncio.sleep(0)
            loop_thread.append(threading.get_ident())
            heard.extend(c.kind for c in changes)

        await client.watch([Person(listed["id_number"])], MEASURE, on_change)
        platform.revoke(listed["entry_id"])
        await client.sync()
        assert heard == ["lifted"]
        assert loop_thread == [threading.get_ident()]  # awaited on the client's loop
        await client.aclose()

    asyncio.run(main())


def test_async_testing_helper(platform: TestPlatform) -> None:
    from intercept_sdk.testing.aio import async_client

    listed = next(iter(platform.entries.values()))

    async def main() -> None:
        async with async_client(platform) as client:
            with pytest.raises(Intercepted):
                await client.block(Person(listed["id_number"]), MEASURE)
            assert (await client.health()).ready

    asyncio.run(main())


def test_metrics_export_to_a_prometheus_client_registry(platform: TestPlatform) -> None:
    """The ``prometheus`` extra: the client's metrics as a ``prometheus_client`` collector
    in a real registry, scraped in the exposition format."""
    prometheus_client = pytest.importorskip(
        "prometheus_client", reason="prometheus-client (the 'prometheus' extra) not installed"
    )
    listed = next(iter(platform.entries.values()))
    client = platform.client()
    client.check(Person(listed["id_number"]), MEASURE)
    client.check(Person("110101199003074477"), MEASURE)
    registry = prometheus_client.CollectorRegistry()
    registry.register(client.metrics.prometheus_collector())
    text = prometheus_client.generate_latest(registry).decode()
    assert f'intercept_checks_total{{action="block",measure="{MEASURE}"}} 1.0' in text
    assert f'intercept_checks_total{{action="allow",measure="{MEASURE}"}} 1.0' in text
    assert f"intercept_list_version {float(platform.last.version)}" in text  # type: ignore[union-attr]
    client.check(Person("110101199003074477"), MEASURE)  # read at each scrape
    again = prometheus_client.generate_latest(registry).decode()
    assert f'intercept_checks_total{{action="allow",measure="{MEASURE}"}} 2.0' in again


def test_metrics_bind_to_an_opentelemetry_meter(platform: TestPlatform) -> None:
    """The ``otel`` extra: one observable instrument per metric on a meter; each
    collection calls back and reads the current values (real ``Observation`` objects)."""
    metrics_api = pytest.importorskip(
        "opentelemetry.metrics", reason="opentelemetry-api (the 'otel' extra) not installed"
    )

    class Meter:  # records what a meter provider would collect
        def __init__(self) -> None:
            self.made: dict[str, Any] = {}

        def _make(self, name: str, callbacks: list[Any], description: str = "") -> str:
            self.made[name] = callbacks
            return name

        create_observable_counter = _make
        create_observable_gauge = _make

    listed = next(iter(platform.entries.values()))
    client = platform.client()
    client.check(Person(listed["id_number"]), MEASURE)
    meter = Meter()
    assert client.metrics.bind_opentelemetry(meter)
    (callback,) = meter.made["intercept.checks_total"]
    observed = callback(None)
    assert all(isinstance(o, metrics_api.Observation) for o in observed)
    assert [(o.value, dict(o.attributes or {})) for o in observed] == [
        (1, {"measure": MEASURE, "action": "block"})
    ]
    (version,) = meter.made["intercept.list_version"]
    assert [o.value for o in version(None)] == [platform.last.version]  # type: ignore[union-attr]
