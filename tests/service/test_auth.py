"""Who may read reports (issue 16): 401 without a credential, 403 across subscribers.

Real server on loopback, real tokens issued by ``intercept-sdk subscriber add --token``,
real signed uploads (which need no token: each report is signed).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from _servers import FakeSite, make_fake_site, make_report
from intercept_sdk._cli.main import main as cli
from intercept_sdk._platform.keys import keygen
from intercept_sdk._platform.server import PlatformServer
from intercept_sdk._protocol.signing import (
    REPORT_TYPE,
    SigningKey,
    sign_envelope,
    write_public_key,
)


def register(
    keys: Path, sid: str, tmp: Path, capsys: pytest.CaptureFixture[str]
) -> tuple[SigningKey, str]:
    """``intercept-sdk subscriber add ID --public-key PEM --keys KEYS --token``."""
    key = SigningKey.generate()
    pem = tmp / f"{sid}.pub.pem"
    write_public_key(pem, key.public)
    capsys.readouterr()
    assert (
        cli(["subscriber", "add", sid, "--public-key", str(pem), "--keys", str(keys), "--token"])
        == 0
    )
    out = capsys.readouterr().out
    m = re.search(r"(isk-sub-[A-Za-z0-9_-]{40,})", out)
    assert m is not None, out
    return key, m.group(1)


@pytest.fixture
def setup(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> Iterator[tuple[PlatformServer, dict[str, tuple[SigningKey, str]]]]:
    site: FakeSite = make_fake_site(tmp_path / "site")
    keys = tmp_path / "keys"
    keygen(keys)
    subs = {sid: register(keys, sid, tmp_path, capsys) for sid in ("hotel-A", "hotel-B")}
    with PlatformServer(
        site.root, subscribers_dir=keys / "subscribers", state_dir=tmp_path / "state"
    ) as srv:
        for sid, (key, _) in subs.items():
            r = httpx.post(
                srv.url + "/reports",
                json={"reports": [make_report(key, sid, details={"note": "x"})]},
            )
            assert r.status_code == 200, r.text  # uploads need no token
        yield srv, subs


def test_unauthenticated_reads_are_401(
    setup: tuple[PlatformServer, dict[str, tuple[SigningKey, str]]],
) -> None:
    srv, _ = setup
    bad: list[dict[str, str]] = [
        {},
        {"Authorization": "Bearer nope-nope-nope-nope"},
        {"Authorization": "Basic abc"},
        {"Authorization": "Bearer " + "x" * 5000},
    ]
    for headers in bad:
        for path in ("/reports", "/reports?subscriber=hotel-A", "/stats"):
            r = httpx.get(srv.url + path, headers=headers)
            assert r.status_code == 401, (path, headers, r.text)
            assert r.headers["www-authenticate"].startswith("Bearer")
            assert "case_no" not in r.text


def test_subscriber_reads_only_its_own(
    setup: tuple[PlatformServer, dict[str, tuple[SigningKey, str]]],
) -> None:
    srv, subs = setup
    b = {"Authorization": f"Bearer {subs['hotel-B'][1]}"}
    r = httpx.get(srv.url + "/reports", params={"subscriber": "hotel-A"}, headers=b)
    assert r.status_code == 403
    own = httpx.get(srv.url + "/reports", headers=b).json()
    assert [x["subscriber_id"] for x in own] == ["hotel-B"]  # unfiltered: its own only
    assert (
        httpx.get(srv.url + "/reports", params={"subscriber": "hotel-B"}, headers=b).status_code
        == 200
    )
    assert httpx.get(srv.url + "/stats", headers=b).status_code == 403


def test_operator_reads_everything_and_statistics(
    setup: tuple[PlatformServer, dict[str, tuple[SigningKey, str]]],
) -> None:
    srv, _ = setup
    op = srv.operator_headers()
    assert srv.operator_token_path.stat().st_mode & 0o777 == 0o600
    assert srv.state_dir.stat().st_mode & 0o777 == 0o700
    every = httpx.get(srv.url + "/reports", headers=op).json()
    assert sorted(x["subscriber_id"] for x in every) == ["hotel-A", "hotel-B"]
    assert (
        httpx.get(srv.url + "/reports", params={"subscriber": "hotel-A"}, headers=op).status_code
        == 200
    )
    stats = httpx.get(srv.url + "/stats", headers=op).json()
    assert stats == {
        "reports": 2,
        "by_subscriber": {"hotel-A": {"interception": 1}, "hotel-B": {"interception": 1}},
    }


def test_reissued_token_replaces_the_old_one(
    setup: tuple[PlatformServer, dict[str, tuple[SigningKey, str]]], tmp_path: Path
) -> None:
    from intercept_sdk._platform.keys import issue_subscriber_token

    srv, subs = setup
    old = subs["hotel-A"][1]
    new = issue_subscriber_token(tmp_path / "keys", "hotel-A")
    assert (tmp_path / "keys/subscribers/hotel-A.token.sha256").stat().st_mode & 0o777 == 0o600
    assert old not in (tmp_path / "keys/subscribers/hotel-A.token.sha256").read_text()
    assert (
        httpx.get(srv.url + "/reports", headers={"Authorization": f"Bearer {new}"}).status_code
        == 200
    )
    assert (
        httpx.get(srv.url + "/reports", headers={"Authorization": f"Bearer {old}"}).status_code
        == 401
    )


def test_nan_report_is_refused_and_listing_keeps_working(
    setup: tuple[PlatformServer, dict[str, tuple[SigningKey, str]]],
) -> None:
    """A signed report with NaN is refused by the shared report schema; listings stay 200."""
    srv, subs = setup
    key = subs["hotel-A"][0]
    good = make_report(key, "hotel-A")
    import json

    payload = json.loads(__import__("base64").b64decode(good["payload"]))
    payload["list_version"] = math.nan
    raw = json.dumps(payload, allow_nan=True).encode()
    env = sign_envelope(REPORT_TYPE, raw, [key])
    r = httpx.post(srv.url + "/reports", content=b'{"reports":[' + env.to_bytes() + b"]}")
    assert r.status_code == 400, r.text
    assert httpx.get(srv.url + "/reports", headers=srv.operator_headers()).status_code == 200


def test_cli_reports_command_uses_the_token_from_the_environment(
    setup: tuple[PlatformServer, dict[str, tuple[SigningKey, str]]],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    srv, subs = setup
    capsys.readouterr()
    monkeypatch.setenv("INTERCEPT_PLATFORM_TOKEN", subs["hotel-A"][1])
    assert cli(["reports", "--server", srv.url]) == 0
    out = capsys.readouterr().out
    assert "hotel-A" in out and "hotel-B" not in out
