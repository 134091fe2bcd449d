"""The published site works unchanged behind a stock static web server (Debian's nginx).

Only nginx's own features are used: ``etag on`` (its default), byte ranges (built in), and
``add_header`` for the cache policy. No module, no rewrite, no proxy to our server.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from _servers import FakeSite, make_fake_site, nginx_binary, nginx_serving, write_manifest

pytestmark = [
    pytest.mark.nginx,
    pytest.mark.skipif(
        nginx_binary() is None,
        reason="nginx is not installed (apt-get install -y nginx; .ci/run installs it)",
    ),
]


@pytest.fixture
def site(tmp_path: Path) -> FakeSite:
    return make_fake_site(tmp_path / "site")


def test_manifest_etag_304_and_range(site: FakeSite) -> None:
    with nginx_serving(site.root) as url, httpx.Client(base_url=url, timeout=10.0) as c:
        r = c.get("/manifest.json")
        assert r.status_code == 200
        assert r.content == site.manifest_bytes()
        assert r.headers["cache-control"] == "no-cache"
        etag = r.headers["etag"]
        assert etag.startswith('"')  # strong

        r304 = c.get("/manifest.json", headers={"If-None-Match": etag})
        assert r304.status_code == 304

        part = c.get("/manifest.json", headers={"Range": "bytes=0-9"})
        assert part.status_code == 206
        assert part.content == site.manifest_bytes()[:10]
        assert part.headers["content-range"] == f"bytes 0-9/{len(site.manifest_bytes())}"

        write_manifest(site.root, 2, site.key)  # the publisher's atomic replace
        r2 = c.get("/manifest.json", headers={"If-None-Match": etag})
        assert r2.status_code == 200
        assert r2.content == site.manifest_bytes()


def test_artefact_ranges_and_cache_policy(site: FakeSite) -> None:
    size = len(site.artefact_bytes)
    with nginx_serving(site.root) as url, httpx.Client(base_url=url, timeout=10.0) as c:
        r = c.get("/" + site.artefact)
        assert r.status_code == 200
        assert r.content == site.artefact_bytes
        # superseded artefacts must not live on in caches: no year of immutable
        assert r.headers["cache-control"] == "public, max-age=3600"
        assert "content-encoding" not in r.headers  # the .gz is data, not a transfer coding

        resumed = c.get("/" + site.artefact, headers={"Range": "bytes=40000-"})
        assert resumed.status_code == 206
        assert resumed.content == site.artefact_bytes[40000:]
        assert resumed.headers["content-range"] == f"bytes 40000-{size - 1}/{size}"

        beyond = c.get("/" + site.artefact, headers={"Range": f"bytes={size}-"})
        assert beyond.status_code == 416

        assert c.get("/.publish.lock").status_code == 404
        assert c.get("/snapshots/.tmp-partial").status_code == 404
        assert c.get("/snapshots/").status_code in (403, 404)  # no listing either way


def test_client_syncs_a_real_site_through_nginx(tmp_path: Path) -> None:
    """A real published site behind stock nginx: snapshot, then a revocation by delta."""
    from intercept_sdk import Person
    from intercept_sdk.testing import TestPlatform

    with TestPlatform(tmp_path / "p") as platform:
        guest = platform.add_person(name="张三")
        platform.add_person()
        with nginx_serving(platform.site_dir) as url:
            client = platform.client(platform=url, push=False)
            assert client.status().list_version == platform.last.version  # type: ignore[union-attr]
            person = Person(guest["id_number"])
            assert client.check(person, "consumption.star_hotel").action == "block"
            platform.revoke(guest["entry_id"])
            result = client.sync()
            assert result.mode == "delta"
            assert client.check(person, "consumption.star_hotel").action == "allow"
            assert client.verify().version == platform.last.version  # type: ignore[union-attr]
