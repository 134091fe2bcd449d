"""Fault injection with respx in front of a real published site.

respx replaces the network; the bytes it serves are the real signed site's files, so every
verification step runs for real. Only the failures are simulated.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import respx

from intercept_sdk import HTTPStatusError, NetworkError, Person, RetryPolicy
from intercept_sdk.testing import TestPlatform

BASE = "https://platform.test/list/"


def _serve_site(router: respx.MockRouter, site: Path) -> respx.Route:
    """Serve the real site files; return the manifest route, to inject faults into."""

    def handler(request: httpx.Request) -> httpx.Response:
        rel = request.url.path.removeprefix("/list/")
        path = site / rel
        if not path.is_file():
            return httpx.Response(404)
        return httpx.Response(200, content=path.read_bytes())

    manifest = router.get(BASE + "manifest.json").mock(side_effect=handler)
    router.get(url__startswith=BASE).mock(side_effect=handler)
    return manifest


@pytest.fixture
def platform(tmp_path: Path) -> TestPlatform:
    p = TestPlatform(tmp_path)
    p.add_person(name="张三")
    return p


def test_5xx_storm_then_recovery_keeps_last_good_version(platform: TestPlatform) -> None:
    sleeps: list[float] = []
    retry = RetryPolicy(attempts=3, initial=0.01, sleep=sleeps.append)
    with respx.mock(assert_all_called=False) as router:
        manifest = _serve_site(router, platform.site_dir)
        client = platform.client(platform=BASE, retry=retry, push=False)
        v1 = client.status().list_version
        platform.add_person()
        handler = manifest.side_effect
        manifest.side_effect = None
        manifest.return_value = httpx.Response(503)
        with pytest.raises(HTTPStatusError) as err:
            client.sync()
        assert err.value.status_code == 503
        assert len(sleeps) == 2  # retried, bounded
        assert client.status().last_error is not None
        assert client.status().list_version == v1  # last good version in force
        manifest.side_effect = handler
        assert client.sync().to_version == platform.last.version  # type: ignore[union-attr]
        assert client.status().last_error is None
        client.close()


def test_429_retry_after_is_honoured(platform: TestPlatform) -> None:
    sleeps: list[float] = []
    retry = RetryPolicy(attempts=3, initial=0.01, sleep=sleeps.append)
    with respx.mock(assert_all_called=False) as router:
        route = _serve_site(router, platform.site_dir)
        client = platform.client(platform=BASE, retry=retry, push=False)
        platform.add_person()
        real = (platform.site_dir / "manifest.json").read_bytes()
        route.side_effect = [
            httpx.Response(429, headers={"Retry-After": "7"}),
            httpx.Response(200, content=real),
        ]
        client.sync()
        assert sleeps and sleeps[0] == pytest.approx(7.0)
        client.close()


def test_connection_reset_is_a_network_error_and_403_is_not_retried(platform: TestPlatform) -> None:
    sleeps: list[float] = []
    retry = RetryPolicy(attempts=4, initial=0.01, sleep=sleeps.append)
    with respx.mock(assert_all_called=False) as router:
        route = _serve_site(router, platform.site_dir)
        client = platform.client(platform=BASE, retry=retry, push=False)
        route.side_effect = httpx.ReadError("connection reset")
        with pytest.raises(NetworkError):
            client.sync()
        assert len(sleeps) == 3
        sleeps.clear()
        route.side_effect = None
        route.return_value = httpx.Response(403)
        with pytest.raises(HTTPStatusError):
            client.sync()
        assert sleeps == []  # permanent: no retry
        assert client.status().last_error.http_status == 403  # type: ignore[union-attr]
        # decisions still come from the last good version
        guest = next(iter(platform.entries.values()))
        assert client.check(Person(guest["id_number"]), "travel.flight").action == "block"
        client.close()
