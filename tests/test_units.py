"""Units as records: validation, storage beside the subscriber keys, the CLI, flag_report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from intercept_sdk import ConfigurationError
from intercept_sdk._cli.main import main
from intercept_sdk._client.keys import subscriber_keygen
from intercept_sdk._platform.keys import keygen
from intercept_sdk._platform.units import (
    Unit,
    flag_report,
    list_subscribers,
    load_unit,
    load_units,
    save_unit,
    unit_path,
)

HOTEL, FLIGHT = "consumption.star_hotel", "travel.flight"


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    keygen(tmp_path / "keys")
    subscriber_keygen(tmp_path / "sub")
    return tmp_path / "keys"


def _add(keys: Path, *extra: str, uid: str = "hotel-001") -> int:
    return main(["subscriber", "add", uid, "--public-key", str(keys.parent / "sub"),
                 "--keys", str(keys), *extra])  # fmt: skip


def test_unit_record_is_validated() -> None:
    Unit("hotel-001", "酒店", "县商务局", "唐山", (HOTEL,))
    for bad in (
        dict(id="../x"),
        dict(name=""),
        dict(department="a\x00b"),
        dict(region="x" * 201),
        dict(measures=()),
        dict(measures=("consumption.star_hotels",)),
        dict(measures=(HOTEL, HOTEL)),
    ):
        fields = {"id": "hotel-001", "name": "酒店", "department": "县商务局",
                  "region": "唐山", "measures": (HOTEL,), **bad}  # fmt: skip
        with pytest.raises(ConfigurationError):
            Unit(**fields)  # type: ignore[arg-type]


def test_saved_record_is_private_atomic_and_round_trips(tmp_path: Path) -> None:
    unit = Unit(
        "hotel-001", "唐山某某大酒店", "县文化广电和旅游局", "河北省唐山市", (HOTEL, FLIGHT)
    )
    path = save_unit(tmp_path / "keys", unit)
    assert path == tmp_path / "keys" / "subscribers" / "hotel-001.unit.json"
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert os.stat(path.parent).st_mode & 0o777 == 0o700
    back = load_unit(tmp_path / "keys", "hotel-001")
    assert back is not None and back.measures == (HOTEL, FLIGHT) and back.created_at
    first = back.created_at
    save_unit(tmp_path / "keys", Unit("hotel-001", "新名", "县商务局", "唐山", (HOTEL,)))
    again = load_unit(tmp_path / "keys", "hotel-001")
    assert again is not None and again.created_at == first and again.name == "新名"
    assert [p.name for p in path.parent.iterdir()] == ["hotel-001.unit.json"]  # no temp left


def test_broken_records_raise_on_load_and_are_skipped_by_a_server(tmp_path: Path) -> None:
    d = tmp_path / "keys" / "subscribers"
    save_unit(tmp_path / "keys", Unit("good-1", "a", "b", "c", (HOTEL,)))
    (d / "bad-1.unit.json").write_text('{"type": "unit", "id": "bad-1", "measures": ["nope"]}')
    (d / "evil-1.unit.json").write_text(json.dumps(
        {"type": "unit", "id": "good-1", "name": "x", "department": "y", "region": "z",
         "measures": [HOTEL]}))  # fmt: skip
    (d / "extra-1.unit.json").write_text(json.dumps({"type": "unit", "id": "extra-1", "x": 1}))
    with pytest.raises(ConfigurationError, match="bad-1"):
        load_unit(tmp_path / "keys", "bad-1")
    with pytest.raises(ConfigurationError, match="names another unit"):
        load_unit(tmp_path / "keys", "evil-1")
    with pytest.raises(ConfigurationError, match="unknown fields x"):
        load_unit(tmp_path / "keys", "extra-1")
    assert list(load_units(d)) == ["good-1"]
    with pytest.raises(ConfigurationError):
        unit_path(tmp_path, "../../etc/passwd")


def test_flag_report() -> None:
    unit = Unit("hotel-001", "a", "b", "c", (HOTEL,))
    ok = {"subscriber_id": "hotel-001", "kind": "interception", "measure": HOTEL, "details": {}}
    assert flag_report(unit, ok) == []
    assert flag_report(unit, {**ok, "measure": None, "kind": "objection"}) == []
    assert flag_report(unit, {**ok, "measure": FLIGHT}) == [
        "measure travel.flight is not among the measures hotel-001 enforces"
    ]
    summary = {**ok, "kind": "quarterly_summary", "measure": None,
               "details": {"by_measure": {HOTEL: {}, FLIGHT: {}, "unspecified": {}}}}  # fmt: skip
    assert flag_report(unit, summary) == [
        "quarterly summary counts measure travel.flight, which hotel-001 does not enforce"
    ]
    assert "no unit record" in flag_report(None, ok)[0]
    assert "checked against" in flag_report(unit, {**ok, "subscriber_id": "other"})[0]


def test_cli_add_list_remove(keys: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _add(keys, "--name", "唐山某某大酒店", "--department", "县文化广电和旅游局",
                "--region", "河北省唐山市", "--measures", f"{HOTEL},{FLIGHT}") == 0  # fmt: skip
    assert _add(keys, uid="legacy-1") == 0  # keys only, no record (as before units)
    # changing one field keeps the others
    assert _add(keys, "--region", "河北省唐山市路北区") == 0
    capsys.readouterr()
    assert main(["subscriber", "list", "--keys", str(keys), "--json"]) == 0
    rows = {r["id"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["hotel-001"]["measures"] == [HOTEL, FLIGHT]
    assert rows["hotel-001"]["region"] == "河北省唐山市路北区"
    assert rows["hotel-001"]["keys"] == ["report", "restricted"]
    assert "name" not in rows["legacy-1"]
    assert main(["subscriber", "list", "--keys", str(keys)]) == 0
    assert "(no unit record)" in capsys.readouterr().out
    assert main(["subscriber", "remove", "hotel-001", "--keys", str(keys)]) == 0
    assert [s for s, _, _ in list_subscribers(keys)] == ["legacy-1"]
    assert main(["subscriber", "remove", "hotel-001", "--keys", str(keys)]) == 2
    assert "no subscriber 'hotel-001'" in capsys.readouterr().err


def test_cli_add_refuses_a_bad_record_before_writing_keys(
    keys: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _add(keys, "--name", "x", "--department", "y", "--region", "z",
                "--measures", "travel.flights") == 2  # fmt: skip
    assert "travel.flights" in capsys.readouterr().err
    assert list_subscribers(keys) == []  # no key was registered either
    assert _add(keys, "--name", "x") == 2
    assert "needs --department, --region, --measures" in capsys.readouterr().err


def test_cli_stats_exports_csv(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    from intercept_sdk._platform.server.storage import SQLiteReportStore

    s = SQLiteReportStore(state / "reports.sqlite")
    s.open()
    s.close()
    out = tmp_path / "stats.csv"
    done = subprocess.run(
        [sys.executable, "-m", "intercept_sdk._cli", "stats", "--state", str(state),
         "--out", str(out), "--due-days", "15"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert out.read_bytes().startswith(b"\xef\xbb\xbfunit,name,department,region,quarter")
    bad = subprocess.run(
        [sys.executable, "-m", "intercept_sdk._cli", "stats", "--state", str(tmp_path / "no")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert bad.returncode == 2 and "no report database" in bad.stderr


def test_intake_flags_a_report_on_a_measure_the_unit_does_not_enforce(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """At intake (a real server on loopback): the report is stored (signed evidence) and
    the mismatch logged once per batch and flag, naming how many reports it concerns."""
    import logging

    from intercept_sdk import Intercepted, Person
    from intercept_sdk._platform.units import Unit, save_unit
    from intercept_sdk.testing import TestPlatform

    with TestPlatform(tmp_path) as p:
        listed = p.add_person(measures=["*"])
        save_unit(
            p.keys_dir,
            Unit(
                id=p.subscriber_id,
                name="某酒店",
                department="商务局",
                region="唐山",
                measures=("consumption.star_hotel",),
            ),
        )
        with p.serve() as server:
            c = p.client(platform=server.url, push=False)
            for measure in ("consumption.star_hotel", "travel.flight", "travel.flight"):
                with pytest.raises(Intercepted):
                    c.block(Person(listed["id_number"]), measure)
            with caplog.at_level(logging.WARNING, logger="intercept_sdk"):
                assert c.flush_reports(15)
            c.close()
    lines = [r.getMessage() for r in caplog.records if "flagged" in r.getMessage()]
    assert lines and all("travel.flight" in line for line in lines), lines
    assert sum(int(line.split(" ", 1)[0]) for line in lines) == 2  # the hotel one fits
