"""The examples in examples/ are runnable integration code: run each as a subprocess
against a TestPlatform-built site (configured through INTERCEPT_* environment variables,
as a deployment would be) and assert on what it prints."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from intercept_sdk import Client
from intercept_sdk._protocol.signing import Envelope
from intercept_sdk.testing import TestPlatform, make_id_number, make_uscc

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run(
    script: str, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(EXAMPLES / script), *args],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def queued_kinds(env: dict[str, str]) -> list[str]:
    """Kinds of the reports the example left in its cache's outbox."""
    with Client(
        env["INTERCEPT_PLATFORM"],
        env["INTERCEPT_TRUST_ROOT"],
        env["INTERCEPT_CACHE_DIR"],
        audit=False,
    ) as client:
        return [
            Envelope.from_bytes(e).payload_json()["kind"] for _, e in client._core.outbox.batch(100)
        ]


@pytest.fixture
def platform(tmp_path: Path) -> Iterator[TestPlatform]:
    with TestPlatform(tmp_path / "platform") as p:
        yield p


def test_hotel_checkin(platform: TestPlatform, tmp_path: Path) -> None:
    guest = platform.add_person(make_id_number("1975-05-05"), name="王建国")
    other = make_id_number("1990-09-09")
    env = platform.env(tmp_path / "hotel-cache")
    r = run(
        "hotel_checkin.py",
        "--room", "1808",
        "--hotel", "唐山某某大酒店",
        "--guest", f"{guest['id_number']}:王建国",
        "--guest", f"{other}:李娜",
        env=env,
    )  # fmt: skip
    assert r.returncode == 1, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("REFUSED 王建国 room 1808 (report ")
    assert guest["case_no"] in r.stdout and guest["court"] in r.stdout
    assert "限制住宿星级以上宾馆饭店" in r.stdout and "向唐山某某大酒店申请复核" in r.stdout
    assert lines[-1].startswith("ALLOW   李娜 room 1808")
    assert guest["id_number"] not in r.stdout
    assert queued_kinds(env) == ["interception"]
    # an invalid ID number is an input error, not a decision
    bad = run("hotel_checkin.py", "--guest", "360426199101010072", env=env)
    assert bad.returncode == 2 and "checksum" in bad.stderr


def test_private_school_fee(platform: TestPlatform, tmp_path: Path) -> None:
    rep = make_id_number("1978-08-08")
    company = platform.add_entity(
        related=[{"role": "legal_rep", "name": "赵立新", "id_number": rep}]
    )
    env = platform.env(tmp_path / "school-cache")
    refused = run("private_school_fee.py", "--payer", f"{rep}:赵立新", "--amount", "68000", env=env)
    assert refused.returncode == 1, refused.stderr
    result = json.loads(refused.stdout)
    assert result["accepted"] is False and result["relations"] == ["legal_rep"]
    assert result["cases"] == [company["case_no"]] and result["report_id"]
    assert "法定代表人" in result["notice"]
    payer = make_id_number("1985-03-03")
    ok = run("private_school_fee.py", "--payer", f"{payer}:陈红", env=env)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout) == {
        "accepted": True,
        "action": "allow",
        "reasons": [],
        "list_version": 1,
    }
    assert queued_kinds(env) == ["interception"]


def test_ticketing(platform: TestPlatform, tmp_path: Path) -> None:
    debtor = platform.add_person(make_id_number("1969-06-01"), name="王建国", publish=False)
    rep = make_id_number("1972-02-02")
    platform.add_entity(related=[{"role": "legal_rep", "name": "赵立新", "id_number": rep}])
    clean = make_id_number("1991-01-01")
    env = platform.env(tmp_path / "ticket-cache")
    passengers = [
        "--passenger", f"{debtor['id_number']}:王建国",
        "--passenger", f"{rep}:赵立新",
        "--passenger", f"{clean}:李娜",
    ]  # fmt: skip
    flight = run("ticketing.py", "--flight", "CA1501", *passengers, env=env)
    assert flight.returncode == 1, flight.stderr
    assert "REFUSED #1 王建国 CA1501: self" in flight.stdout
    assert "REFUSED #2 赵立新 CA1501: legal_rep" in flight.stdout
    assert "TICKET  #3 李娜 CA1501 (allow)" in flight.stdout
    assert "限制乘坐飞机" in flight.stdout
    train = run("ticketing.py", "--train", "G1234", *passengers, env=env)
    assert "REFUSED #1 王建国 G1234" in train.stdout and "G字头" in train.stdout
    # an ordinary seat on an ordinary train is not restricted
    slow = run("ticketing.py", "--train", "K7", "--seat", "hard", *passengers[:2], env=env)
    assert slow.returncode == 0 and "no restriction applies" in slow.stdout
    assert queued_kinds(env) == ["interception"] * 4


def test_registry_nightly_screening_and_watch(platform: TestPlatform, tmp_path: Path) -> None:
    listed = platform.add_entity(name="唐山市路北区恒达建材有限公司", publish=False)
    debtor_id = make_id_number("1966-06-16")
    later_rep = make_id_number("1970-07-07")
    platform.add_person(debtor_id, name="王建国")
    register = tmp_path / "register.csv"
    rows = ["uscc,name,legal_rep_id,legal_rep_name"]
    rows.append(f"{listed['uscc']},唐山市路北区恒达建材有限公司,,")
    rows.append(f"{make_uscc()},唐山新业贸易有限公司,{debtor_id},王建国")
    watched_later = make_uscc()
    rows.append(f"{watched_later},唐山后来有限公司,{later_rep},刘强")
    rows += [f"{make_uscc()},唐山第{i}商贸有限公司,," for i in range(30)]
    register.write_text("\n".join(rows) + "\n", encoding="utf-8")
    env = platform.env(tmp_path / "registry-cache")

    once = run("registry_nightly.py", "--input", str(register), env=env)
    assert once.returncode == 0, once.stderr
    flagged = [line for line in once.stdout.splitlines() if line.startswith("FLAGGED")]
    assert len(flagged) == 2
    assert f"FLAGGED {listed['uscc']} 唐山市路北区恒达建材有限公司 monitor self" in flagged[0]
    assert "monitor officer:legal_rep 王建国" in flagged[1]
    assert "SCREENED 33 companies: {'allow': 31, 'monitor': 2}" in once.stdout

    proc = subprocess.Popen(
        [
            sys.executable, str(EXAMPLES / "registry_nightly.py"),
            "--input", str(register), "--watch", "60", "--max-changes", "2", "--poll", "1s",
        ],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 60
        line = ""
        while not line.startswith("WATCHING") and time.monotonic() < deadline:
            line = proc.stdout.readline()
            assert line or proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        assert line.startswith("WATCHING 33 companies")
        # the court revokes the company's listing; a watched company's legal rep is listed
        platform.revoke(listed["entry_id"], publish=False)
        platform.add_person(later_rep, name="刘强")
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    changes = sorted(line for line in out.splitlines() if line.startswith(("LIFTED", "LISTED")))
    assert len(changes) == 2, out
    assert changes[0].startswith(f"LIFTED {listed['uscc']} 唐山市路北区恒达建材有限公司 allow")
    assert changes[1].startswith(f"LISTED {watched_later} 唐山后来有限公司 monitor")
    assert "officer:legal_rep 刘强" in changes[1]
    assert "lift" in queued_kinds(env)  # the lifted restriction was reported


@pytest.mark.parametrize(
    ("script", "expected"),
    [
        ("hotel_checkin.py", ["REFUSED 王建国", "ALLOW   李娜"]),
        ("private_school_fee.py", ['"accepted": false', '"accepted": true']),
        ("ticketing.py", ["REFUSED #1 王建国", "REFUSED #2 赵立新", "TICKET  #3 李娜"]),
        ("registry_nightly.py", ["FLAGGED", "SCREENED 52 companies"]),
    ],
)
def test_demo_mode_runs_standalone(script: str, expected: list[str], tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("INTERCEPT_")}
    r = subprocess.run(
        [sys.executable, str(EXAMPLES / script), "--demo"],
        env={**env, "TMPDIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert r.returncode in (0, 1), r.stderr
    for text in expected:
        assert text in r.stdout, r.stdout
