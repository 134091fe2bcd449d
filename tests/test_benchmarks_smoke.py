"""The benchmark harness works end to end (``python -m benchmarks --size smoke``).

Tiny sizes, about a minute: this checks that every figure of the table is produced, with a
numeric measurement and a met/missed verdict, and that the JSON and Markdown outputs are
written where asked. It does *not* assert that targets are met: they are defined for the
1M/10M sizes (``python -m benchmarks``), where the harness reports them.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent

pytest.importorskip("uvicorn")  # the reference platform (extra "platform") serves the syncs


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any], str]:
    out = tmp_path_factory.mktemp("bench")
    docs = REPO / "docs" / "benchmarks.md"
    before = docs.read_bytes() if docs.exists() else None
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--size", "smoke", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    after = docs.read_bytes() if docs.exists() else None
    assert before == after, "a smoke run must not rewrite docs/benchmarks.md"
    result = json.loads((out / "latest-smoke.json").read_text())
    markdown = (out / "benchmarks-smoke.md").read_text()
    return out, result, markdown


def _row_ids() -> list[str]:
    sys.path.insert(0, str(REPO))
    try:
        from benchmarks.harness import ROW_SPECS
    finally:
        sys.path.remove(str(REPO))
    return [spec.id for spec in ROW_SPECS]


def test_every_row_is_measured_with_a_verdict(smoke_run: tuple[Path, dict[str, Any], str]) -> None:
    _, result, _ = smoke_run
    rows = result["rows"]
    assert [r["id"] for r in rows] == _row_ids()
    problems = [
        (r["id"], r["status"], r["notes"])
        for r in rows
        if r["status"] not in ("met", "missed")
        or not isinstance(r["measured"], float)
        or not math.isfinite(r["measured"])
    ]
    assert not problems, problems
    for r in rows:
        if r["baseline"] is not None:
            assert math.isfinite(r["baseline"]) and r["baseline"] > 0, r
            assert r["ratio"] is not None and math.isfinite(r["ratio"]), r


def test_outputs_and_machine_details(smoke_run: tuple[Path, dict[str, Any], str]) -> None:
    out, result, markdown = smoke_run
    assert result["size"] == "smoke"
    machine = result["machine"]
    for key in ("cpu", "cores", "ram_gb", "python", "load_start", "load_end"):
        assert machine[key], key
    assert list(out.glob("benchmarks-smoke-*.json"))
    assert "| figure | measured | baseline (same run) | ratio | target | met? |" in markdown
    for r in result["rows"]:
        assert r["figure"].replace("|", "\\|") in markdown
    assert "## Machine" in markdown
    assert "## Closing note" in markdown
    assert not (out / "work-smoke").exists(), "the work directory is cleaned up"
