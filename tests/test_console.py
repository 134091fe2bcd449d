"""The operator console: served by the reference platform on loopback, behind the operator
credential, rendered in a real headless Chromium with the figures of a seeded platform.

The browser test is skipped (with the reason) when Debian's ``chromium`` is absent;
``.ci/run`` installs it.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
import shutil
import struct
import subprocess
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from intercept_sdk import ConfigurationError, Intercepted, Person
from intercept_sdk._platform.server.console import console_middleware, operator_token
from intercept_sdk._platform.server.stats import StatsSource
from intercept_sdk._platform.server.storage import SQLiteReportStore
from intercept_sdk._platform.units import Unit, save_unit
from intercept_sdk._protocol.reports import CHINA_TZ
from intercept_sdk.testing import TestPlatform

TOKEN = "operator-token-for-tests-0123456789"
HOTEL, FLIGHT = "consumption.star_hotel", "travel.flight"
_CHROMIUM = next(
    (p for p in ("/usr/bin/chromium", shutil.which("chromium")) if p and os.path.exists(p)), None
)


def _quarter(now: _dt.datetime) -> str:
    local = now.astimezone(CHINA_TZ)
    return f"{local.year}Q{(local.month - 1) // 3 + 1}"


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A platform with two units: one blocked 3+1 people and lifted 1; one never reported
    (registered last quarter, so that quarter's summary is overdue)."""
    tmp = tmp_path_factory.mktemp("console")
    with TestPlatform(tmp) as p:
        save_unit(p.keys_dir, Unit(p.subscriber_id, "唐山某某大酒店", "县文化广电和旅游局",
                                   "河北省唐山市", (HOTEL, FLIGHT)))  # fmt: skip
        # registered in the previous quarter; with the summary due on the quarter's last day
        # (due_days=0) its summary for that quarter is overdue whatever today's date is
        local = _dt.datetime.now(CHINA_TZ)
        start = _dt.datetime(local.year, 3 * ((local.month - 1) // 3) + 1, 1, tzinfo=CHINA_TZ)
        two_quarters_ago = start - _dt.timedelta(days=45)
        save_unit(p.keys_dir, Unit("airline-7", "某航空公司", "民航局", "北京市", (FLIGHT,)),
                  now=two_quarters_ago)  # fmt: skip
        guests = [p.add_person(publish=False) for _ in range(4)]
        p.publish()
        tmp.joinpath("platform-state").mkdir()
        store = SQLiteReportStore(tmp / "platform-state" / "reports.sqlite")
        store.open()  # a second connection to the server's database (WAL: reads alongside)
        version = p.last.version if p.last else None
        source = StatsSource(
            store, p.keys_dir / "subscribers", current_version=lambda: version, due_days=0
        )
        with p.serve(middleware=[console_middleware(source, operator_token(TOKEN))]) as server:
            client = p.client(platform=server.url)
            for g in guests[:3]:
                with pytest.raises(Intercepted):
                    client.block(Person(g["id_number"]), HOTEL)
            with pytest.raises(Intercepted):
                client.block(Person(guests[3]["id_number"]), FLIGHT)
            client.report("lift", client.check(Person(guests[0]["id_number"]), HOTEL))
            assert client.flush_reports(timeout=20)
            yield {"url": server.url, "quarter": _quarter(_dt.datetime.now(_dt.timezone.utc)),
                   "tmp": tmp}  # fmt: skip
        store.close()


def test_data_needs_the_operator_credential(seeded: dict[str, Any]) -> None:
    url = seeded["url"]
    for path in ("data.json", "stats.json", "stats.csv"):
        assert httpx.get(f"{url}/console/{path}").status_code == 401
        wrong = {"Authorization": "Bearer " + "x" * len(TOKEN)}
        assert httpx.get(f"{url}/console/{path}", headers=wrong).status_code == 401
    page = httpx.get(f"{url}/console/")
    assert (
        page.status_code == 200 and "script-src 'self'" in page.headers["content-security-policy"]
    )
    assert httpx.get(f"{url}/console", follow_redirects=True).url.path == "/console/"
    assert httpx.get(f"{url}/console/chart.umd.min.js").text.startswith("/*!\n * Chart.js v4")
    assert httpx.get(f"{url}/console/../reports").status_code in (200, 401, 404)  # not it
    assert httpx.get(f"{url}/console/nothing").status_code == 404
    with pytest.raises(ConfigurationError):
        operator_token("short")


def test_exports_carry_the_seeded_figures(seeded: dict[str, Any]) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    data = httpx.get(f"{seeded['url']}/console/data.json", headers=auth).json()
    per = data["charts"]["per-measure"]
    q = seeded["quarter"]
    assert per["labels"] == [f"{q} {HOTEL}", f"{q} {FLIGHT}"] or per["labels"] == sorted(
        per["labels"]
    )
    series = dict(zip(per["labels"], per["datasets"][0]["data"], strict=True))
    assert series == {f"{q} {FLIGHT}": 1, f"{q} {HOTEL}": 3}
    assert dict(zip(per["labels"], per["datasets"][1]["data"], strict=True))[f"{q} {HOTEL}"] == 1
    assert [s["unit"] for s in data["overdue_summaries"]] == ["airline-7"]
    csv_text = httpx.get(f"{seeded['url']}/console/stats.csv", headers=auth)
    assert csv_text.headers["content-type"].startswith("text/csv")
    assert csv_text.content.startswith(b"\xef\xbb\xbfunit,name,department")
    assert "唐山某某大酒店" in csv_text.text


def _png_painted_fraction(path: Path) -> float:
    """Share of the screenshot's pixels that are not the page background (white)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header = 8, b"", None
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    assert header is not None
    width, height, depth, color = header[:4]
    assert depth == 8 and color in (2, 6), header
    bpp = 3 if color == 2 else 4
    raw, stride = zlib.decompress(idat), width * bpp
    prev = bytearray(stride)
    painted = 0
    for y in range(height):
        ftype, line = (
            raw[y * (stride + 1)],
            bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)]),
        )
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b, c = prev[i], prev[i - bpp] if i >= bpp else 0
            if ftype == 1:
                line[i] = (line[i] + a) & 0xFF
            elif ftype == 2:
                line[i] = (line[i] + b) & 0xFF
            elif ftype == 3:
                line[i] = (line[i] + (a + b) // 2) & 0xFF
            elif ftype == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
        painted += sum(1 for x in range(0, stride, bpp) if line[x : x + 3] != b"\xff\xff\xff")
        prev = line
    return painted / (width * height)


def _chromium(*args: str, profile: Path) -> subprocess.CompletedProcess[str]:
    assert _CHROMIUM is not None
    return subprocess.run(
        [_CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--hide-scrollbars",
         "--virtual-time-budget=15000", *args],
        capture_output=True, text=True, timeout=90, check=False,
    )  # fmt: skip


@pytest.mark.skipif(
    _CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)"
)
def test_console_renders_in_headless_chromium_with_the_seeded_figures(
    seeded: dict[str, Any],
) -> None:
    url = f"{seeded['url']}/console/#token={TOKEN}"
    tmp: Path = seeded["tmp"]
    done = _chromium("--dump-dom", url, profile=tmp / "chromium-dom")
    m = re.search(r'<pre id="rendered">(.*?)</pre>', done.stdout, re.S)
    assert m and m.group(1), f"no rendering recorded; stderr: {done.stderr[-2000:]}"
    rendered = json.loads(m.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    assert "error" not in rendered, rendered
    q = seeded["quarter"]
    per = rendered["charts"]["per-measure"]
    assert per["type"] == "bar"
    got = {
        (lab, d["label"]): v
        for d in per["datasets"]
        for lab, v in zip(per["labels"], d["data"], strict=True)
    }
    assert got == {
        (f"{q} {FLIGHT}", "interceptions"): 1, (f"{q} {FLIGHT}", "lifts"): 0,
        (f"{q} {HOTEL}", "interceptions"): 3, (f"{q} {HOTEL}", "lifts"): 1,
    }  # fmt: skip
    fresh = rendered["charts"]["freshness"]
    assert dict(zip(fresh["labels"], fresh["datasets"][0]["data"], strict=True)) == {
        "current": 1, "1 behind": 0, "2+ behind": 0, "unknown": 1,
    }  # fmt: skip
    overdue = rendered["charts"]["overdue"]
    assert overdue["labels"] == ["airline-7"] and overdue["datasets"][0]["data"] == [1]
    assert rendered["overdue_summaries"] == 1
    for name, chart in rendered["charts"].items():
        assert chart["painted"] > 2000, f"chart {name} drew almost nothing: {chart['painted']}"
    shot = tmp / "console.png"
    _chromium(f"--screenshot={shot}", "--window-size=1400,1200", url, profile=tmp / "chromium-png")
    assert shot.exists(), "chromium wrote no screenshot"
    assert _png_painted_fraction(shot) > 0.03  # not a blank page


@pytest.mark.skipif(
    _CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)"
)
def test_console_without_the_token_says_so_and_draws_nothing(seeded: dict[str, Any]) -> None:
    done = _chromium(
        "--dump-dom", f"{seeded['url']}/console/", profile=seeded["tmp"] / "chromium-anon"
    )
    assert "operator credential needed" in done.stdout
    assert '"error":"HTTP 401"' in done.stdout.replace("&quot;", '"')


def test_the_reference_server_serves_the_console_behind_the_operator_credential(
    tmp_path: Path,
) -> None:
    """``intercept-sdk serve`` itself (not a test app): the page needs no credential (it
    holds no figure), its data needs the operator's token; a unit's token gets 403."""
    from intercept_sdk._platform.keys import issue_subscriber_token
    from intercept_sdk.testing import TestPlatform

    with TestPlatform(tmp_path) as p:
        p.add_person()
        unit_token = issue_subscriber_token(p.keys_dir, p.subscriber_id)
        with p.serve() as server, httpx.Client(base_url=server.url, timeout=10) as http:
            page = http.get("/console/")
            assert page.status_code == 200 and "<canvas" in page.text
            assert http.get("/console/data.json").status_code == 401
            unit = {"Authorization": f"Bearer {unit_token}"}
            assert http.get("/console/data.json", headers=unit).status_code == 403
            data = http.get("/console/data.json", headers=server.operator_headers())
            assert data.status_code == 200 and "charts" in data.json()
            csv = http.get("/console/stats.csv", headers=server.operator_headers())
            assert csv.status_code == 200
