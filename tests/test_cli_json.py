"""The command line for integrators (issue 19): ``--version``, help on every flag, no
traceback on bad input, per-row errors in screening, JSON from every client command,
and ``status`` exit codes. Runs the real entry point in subprocesses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from intercept_sdk._cli.main import build_parser
from intercept_sdk.testing import TestPlatform

MEASURE = "consumption.star_hotel"


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "intercept_sdk._cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
        check=False,
    )


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> tuple[TestPlatform, str]:
    p = TestPlatform(tmp_path_factory.mktemp("cli-json"))
    listed = p.add_person()
    return p, listed["id_number"]


def test_version() -> None:
    out = run("--version")
    assert out.returncode == 0 and out.stdout.startswith("intercept-sdk ")


def _walk(parser: object, prefix: str = "") -> list[tuple[str, object]]:
    import argparse

    assert isinstance(parser, argparse.ArgumentParser)
    found: list[tuple[str, object]] = [(prefix, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += _walk(sub, f"{prefix} {name}".strip())
    return found


# serve, subscriber add and measures belong to other engineers' parser lines.
_OTHERS = {"serve", "subscriber add", "measures"}


def test_every_flag_has_help_and_the_description_has_no_markup() -> None:
    import argparse

    parser = build_parser()
    assert "``" not in (parser.description or "")
    missing = []
    for name, sub in _walk(parser):
        if name in _OTHERS:
            continue
        assert isinstance(sub, argparse.ArgumentParser)
        for action in sub._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            if not action.help:
                missing.append(f"{name}: {action.option_strings or action.dest}")
    assert not missing, missing


def test_no_traceback_on_bad_input(site: tuple[TestPlatform, str], tmp_path: Path) -> None:
    p, _ = site
    env = p.env(tmp_path / "cache")
    for args in (
        ("screen", "--measure", MEASURE, "--input", str(tmp_path / "missing.csv")),
        ("check", "--measure", MEASURE, "--id-number", "110101199003074477"),  # never synced
        ("check", "--measure", "no.such", "--id-number", "1"),
        ("verify",),
        ("--json", "publish", "--source", "nope.jsonl", "--keys", "k", "--site", "s"),
    ):
        out = run(*args, env=env)
        assert out.returncode in (1, 2), (args, out.stderr)
        assert "Traceback" not in out.stderr, (args, out.stderr)
        assert len(out.stderr.strip().splitlines()) == 1, (args, out.stderr)
    never = run("check", "--measure", MEASURE, "--id-number", "110101199003074477", env=env)
    assert "intercept-sdk sync" in never.stderr and "sync()" not in never.stderr
    j = run("--json", "screen", "--measure", MEASURE, "--input", str(tmp_path / "x.csv"), env=env)
    assert json.loads(j.stderr)["kind"] == "FileNotFoundError"


def test_client_commands_answer_in_json_and_screen_reports_bad_rows(
    site: tuple[TestPlatform, str], tmp_path: Path
) -> None:
    p, listed = site
    env = p.env(tmp_path / "cache")
    status = run("status", "--json", env=env)
    assert status.returncode == 1  # never synced: not ready
    assert json.loads(status.stdout)["ready"] is False
    sync = run("sync", "--json", env=env)
    assert sync.returncode == 0 and json.loads(sync.stdout)["to_version"] >= 1
    status = run("status", "--json", env=env)
    assert status.returncode == 0 and json.loads(status.stdout)["ready"] is True
    assert json.loads(run("verify", "--json", env=env).stdout)["ok"] is True
    assert json.loads(run("reports", "list", "--json", env=env).stdout)["pending"] == 0
    csv_in = tmp_path / "in.csv"
    csv_in.write_text(f"id_number,name\n{listed},张三\n12345,bad\n110101199003074477,李四\n")
    screen = run("screen", "--measure", MEASURE, "--input", str(csv_in), "--json", env=env)
    assert screen.returncode == 0, screen.stderr
    rows = [json.loads(line) for line in screen.stdout.splitlines()]
    assert [r.get("action", "error") for r in rows] == ["block", "error", "allow"]
    assert "line 3" in rows[1]["error"]
    assert (
        run("screen", "--measure", MEASURE, "--input", str(csv_in), "--strict", env=env).returncode
        == 1
    )
    csv_out = run("screen", "--measure", MEASURE, "--input", str(csv_in), env=env)
    lines = csv_out.stdout.splitlines()
    assert lines[0].endswith(",error") and ",error," in lines[2]
    watch = run("watch", "--measure", MEASURE, "--input", str(csv_in.with_name("ok.csv")), env=env)
    assert watch.returncode == 2  # missing file, one line
    ok = csv_in.with_name("ok.csv")
    ok.write_text(f"id_number\n{listed}\n")
    watch = run(
        "--json", "watch", "--measure", MEASURE, "--input", str(ok), "--duration", "0.5", env=env
    )
    assert json.loads(watch.stdout.splitlines()[0]) == {
        "event": "watching",
        "subjects": 1,
        "restricted": 1,
        "measure": MEASURE,
    }
    keys = run("--json", "subscriber", "keygen", "--out", str(tmp_path / "sub"))
    assert "report_key" in json.loads(keys.stdout)


def test_block_and_file_a_report_from_the_command_line(
    site: tuple[TestPlatform, str], tmp_path: Path
) -> None:
    p, listed = site
    env = p.env(tmp_path / "cache")
    assert run("sync", "--quiet", env=env).returncode == 0
    out = run(
        "block",
        "--measure",
        MEASURE,
        "--id-number",
        listed,
        "--context",
        "room=1808",
        "--json",
        env=env,
    )
    assert out.returncode == 3, out.stderr
    data = json.loads(out.stdout)
    assert data["intercepted"] is True and data["report_id"]
    clean = run("block", "--measure", MEASURE, "--id-number", "110101199003074477", env=env)
    assert clean.returncode == 0 and clean.stdout.startswith("ALLOW")
    entry_id = next(iter(p.entries))
    filed = run(
        "reports",
        "file",
        "--kind",
        "objection",
        "--entry-id",
        entry_id,
        "--detail",
        "grounds=已履行完毕",
        "--timeout",
        "0",
        "--json",
        env=env,
    )
    assert filed.returncode == 0, filed.stderr
    assert json.loads(filed.stdout)["report_id"]
    listed_reports = json.loads(run("reports", "list", "--json", env=env).stdout)
    assert listed_reports["pending"] == 2  # a file platform: reports wait in the outbox
    bad = run("reports", "file", "--kind", "objection", "--detail", "nokey", env=env)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
