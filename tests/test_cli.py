"""Every CLI command through the real console-script entry point, on real files and a
real reference platform process on loopback."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from intercept_sdk.testing import entry_fields, make_id_number, make_uscc
from intercept_sdk.testing.synth import generate_entries, write_jsonl

EXE = Path(sys.executable).with_name("intercept-sdk")


def run(
    *args: str, env: dict[str, str] | None = None, check: bool = True, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    cmd = [str(EXE), *args] if EXE.exists() else [sys.executable, "-m", "intercept_sdk._cli", *args]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


GUEST = make_id_number("1980-05-06", seq=11)
REP = make_id_number("1972-03-04", seq=21)
COMPANY = make_uscc()


def _entries() -> list[dict[str, object]]:
    return [
        entry_fields(
            1,
            entry_id="C1",
            subject_type="person",
            name="王五",
            id_number=GUEST,
            gender="男",
            age=43,
        ),
        entry_fields(
            2,
            entry_id="C2",
            subject_type="entity",
            name="唐山某建材有限公司",
            uscc=COMPANY,
            legal_rep_name="赵六",
            related=[{"role": "legal_rep", "name": "赵六", "id_number": REP}],
        ),
        entry_fields(
            3,
            entry_id="C3",
            subject_type="person",
            name="小明",
            id_number=make_id_number("2012-01-01"),
            gender="男",
            age=12,
        ),
        *generate_entries(200, seed=3),
    ]


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    d = tmp_path_factory.mktemp("cli")
    keys, site, sub = d / "keys", d / "site", d / "sub"
    out = run("keygen", "--keys", str(keys), "--signers", "2", "--threshold", "2").stdout
    assert "root.json" in out
    run("subscriber", "keygen", "--out", str(sub))
    run("subscriber", "add", "unit-1", "--public-key", str(sub), "--keys", str(keys))
    source = d / "list.jsonl"
    write_jsonl(source, _entries())
    pub = run(
        "publish",
        "--source",
        str(source),
        "--keys",
        str(keys),
        "--site",
        str(site),
        "--expires",
        "6h",
    )
    assert "published version 1" in pub.stdout and "1 quarantined" in pub.stdout
    proc = subprocess.Popen(
        [
            str(EXE),
            "serve",
            "--site",
            str(site),
            "--subscribers",
            str(keys / "subscribers"),
            "--state",
            str(d / "state"),
            "--port",
            "0",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("listening on "), line + (proc.stderr.read() if proc.stderr else "")
    url = line.split()[2]
    env = {
        "INTERCEPT_PLATFORM": url,
        "INTERCEPT_TRUST_ROOT": str(keys / "root.json"),
        "INTERCEPT_CACHE_DIR": str(d / "cache"),
        "INTERCEPT_SUBSCRIBER_ID": "unit-1",
        "INTERCEPT_SUBSCRIBER_KEY": str(sub),
    }
    try:
        yield {"dir": d, "keys": keys, "site": site, "url": url, "env": env, "source": source}
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)


def test_sync_check_and_exit_codes(platform: dict) -> None:
    env = platform["env"]
    out = run("sync", env=env).stdout
    assert "snapshot" in out and "version None -> 1" in out
    r = run("check", "--measure", "consumption.star_hotel", "--id-number", GUEST, "--json", env=env)
    d = json.loads(r.stdout)
    assert d["action"] == "block" and d["matches"][0]["case_no"] == "(2024)冀0203执1号"
    assert GUEST not in r.stdout  # no plaintext ID number in the output
    r = run(
        "check",
        "--measure",
        "consumption.star_hotel",
        "--id-number",
        GUEST,
        "--fail-on-block",
        env=env,
        check=False,
    )
    assert r.returncode == 3 and "复核" in r.stdout
    r = run("check", "--measure", "travel.flight", "--id-number", REP, env=env)
    assert r.stdout.startswith("BLOCK") and "relation=legal_rep" in r.stdout
    r = run(
        "check",
        "--measure",
        "finance.credit",
        "--uscc",
        COMPANY,
        "--fail-on-block",
        env=env,
        check=False,
    )
    assert r.returncode == 4
    r = run("check", "--measure", "travel.flight", "--org-code", COMPANY[8:17], "--json", env=env)
    assert json.loads(r.stdout)["action"] == "block"
    r = run(
        "check",
        "--measure",
        "travel.flight",
        "--id-number",
        make_id_number("1990-01-01"),
        "--fail-on-block",
        env=env,
    )
    assert r.stdout.startswith("ALLOW")
    # invalid input: exit 2 with the exact reason
    bad = GUEST[:17] + ("1" if GUEST[17] != "1" else "2")
    r = run("check", "--measure", "travel.flight", "--id-number", bad, env=env, check=False)
    assert r.returncode == 2 and "checksum expected" in r.stderr
    r = run("check", "--measure", "no.such", "--id-number", GUEST, env=env, check=False)
    assert r.returncode == 2 and "no.such" in r.stderr
    r = run("check", "--measure", "travel.flight", env=env, check=False)
    assert r.returncode == 2  # usage error
    # missing configuration
    r = run(
        "check",
        "--measure",
        "travel.flight",
        "--id-number",
        GUEST,
        env={"INTERCEPT_PLATFORM": ""},
        check=False,
    )
    assert r.returncode in (0, 2, 3)


def test_status_verify_audit(platform: dict) -> None:
    env = platform["env"]
    run("sync", env=env)
    st = json.loads(run("status", "--json", env=env).stdout)
    assert st["list_version"] >= 1 and st["stale"] is False and st["last_error"] is None
    assert "ok: version" in run("verify", env=env).stdout
    out = run("audit", "verify", "--cache-dir", env["INTERCEPT_CACHE_DIR"], env=env).stdout
    assert "PROBLEM" not in out
    # tamper with an audit line: audit verify must fail
    audit_dir = Path(env["INTERCEPT_CACHE_DIR"]) / "audit"
    files = sorted(audit_dir.glob("audit-*.jsonl"))
    assert files
    text = files[0].read_text().replace('"action":"block"', '"action":"allow"', 1)
    files[0].write_text(text)
    r = run("audit", "verify", "--cache-dir", env["INTERCEPT_CACHE_DIR"], env=env, check=False)
    assert r.returncode == 1 and "hash chain broken" in r.stdout


def test_screen_csv(platform: dict) -> None:
    env = platform["env"]
    d: Path = platform["dir"]  # type: ignore[assignment]
    inp, outp = d / "in.csv", d / "out.csv"
    with inp.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id_number", "uscc", "org_code", "name"])
        w.writerow(["", COMPANY, "", "唐山某建材有限公司"])
        w.writerow([REP, "", "", ""])
        for _ in range(50):
            w.writerow(["", make_uscc(), "", ""])
    r = run(
        "screen", "--measure", "travel.flight", "--input", str(inp), "--output", str(outp), env=env
    )
    rows = list(csv.DictReader(outp.open()))
    assert len(rows) == 52
    assert rows[0]["action"] == "block" and rows[1]["action"] == "block"
    assert all(r["action"] == "allow" for r in rows[2:])
    assert "block: 2" in r.stderr


def test_watch_reports_and_revocation(platform: dict) -> None:
    env = platform["env"]
    d: Path = platform["dir"]  # type: ignore[assignment]
    inp = d / "watch.csv"
    inp.write_text(f"id_number,uscc,org_code,name\n{GUEST},,,\n")
    proc = subprocess.Popen(
        [
            str(EXE),
            "watch",
            "--measure",
            "consumption.star_hotel",
            "--input",
            str(inp),
            "--duration",
            "25",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **env},
    )
    assert proc.stdout is not None
    first = proc.stdout.readline()
    assert "1 currently restricted" in first, first
    # revoke C1 and publish through the CLI
    source: Path = platform["source"]  # type: ignore[assignment]
    lines = [json.loads(x) for x in source.read_text().splitlines()]
    for e in lines:
        if e["entry_id"] == "C1":
            e["status"] = "revoked"
            e["revoked_at"] = "2024-06-01T00:00:00+08:00"
    write_jsonl(source, lines)
    run(
        "publish",
        "--source",
        str(source),
        "--keys",
        str(platform["keys"]),
        "--site",
        str(platform["site"]),
        "--quiet",
    )
    line = proc.stdout.readline()
    proc.terminate()
    proc.wait(10)
    assert line.startswith("lifted:"), line


def test_reports_list_flush_summary_server(platform: dict) -> None:
    env = platform["env"]
    run("sync", env=env)
    run("check", "--measure", "travel.flight", "--id-number", REP, env=env)
    out = run("reports", "list", env=env).stdout
    assert "pending" in out
    out = run("reports", "flush", "--timeout", "20", env=env).stdout
    assert out.startswith("flushed")
    summary = json.loads(run("reports", "summary", "--quarter", "2026Q4", env=env).stdout)
    assert summary["due_date"] == "2027-01-30" and summary["checks_performed"] >= 1
    r = run("reports", "summary", "--quarter", "2026-4", env=env, check=False)
    assert r.returncode == 2
    token = (platform["dir"] / "state" / "operator.token").read_text().strip()
    server = json.loads(
        run("reports", "--server", platform["url"], env={"INTERCEPT_PLATFORM_TOKEN": token}).stdout
    )
    assert isinstance(server, (list, dict))


def test_root_rotate(platform: dict, tmp_path: Path) -> None:
    keys = tmp_path / "k"
    run("keygen", "--keys", str(keys))
    out = run("root", "rotate", "--keys", str(keys), "--rotate-online").stdout
    assert "root version 2" in out
    assert (keys / "root" / "2.root.json").exists()


def test_measures_table_and_json() -> None:
    out = run("measures").stdout
    assert "consumption.star_hotel" in out and "measures" in out.splitlines()[-1]
    data = json.loads(run("measures", "--json").stdout)
    assert {m["code"] for m in data} >= {"travel.flight", "supervision.key_target"}


def test_every_command_has_help() -> None:
    for cmd in (
        ["keygen"],
        ["root", "rotate"],
        ["publish"],
        ["serve"],
        ["subscriber", "add"],
        ["subscriber", "keygen"],
        ["sync"],
        ["check"],
        ["screen"],
        ["watch"],
        ["status"],
        ["verify"],
        ["audit", "verify"],
        ["reports"],
        ["measures"],
        ["demo"],
    ):
        r = run(*cmd, "--help")
        assert "usage:" in r.stdout


def test_demo_runs_end_to_end(tmp_path: Path) -> None:
    t = time.monotonic()
    r = run("demo", "--out", str(tmp_path / "demo"), timeout=240)
    out = r.stdout
    assert "BLOCKED" in out and "watch: lifted" in out
    assert "'interception': 1" in out and "'lift': 1" in out
    assert "王建国 at the hotel now: allow" in out
    # supervision (issue 17): the ledger's lift due, overdue a week later, the console
    assert "lift due: consumption.star_hotel" in out
    assert "1 overdue" in out and "OVERDUE: consumption.star_hotel" in out
    assert "/console/#token=" in out
    assert "Done" in out
    assert time.monotonic() - t < 240
    _ = httpx  # the demo's platform is already stopped: nothing to fetch
