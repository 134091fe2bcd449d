"""Counted results for the reliability suite.

Every scenario keeps a :class:`~reliability._support.Tally` (runs, failures, notes). At
the end of the session a table of them is printed, and written as JSON to the file named
by ``$INTERCEPT_RELIABILITY_OUT`` when that is set. ``INTERCEPT_RELIABILITY=full``
selects the full sizes (see ``docs/reliability.md``); the default is the short run that
is part of ``pytest -q``. ``pytest -m reliability`` runs this suite alone.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import pytest

from ._support import RESULTS, SIZE_NAME

_HERE = Path(__file__).parent
_STARTED = time.time()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "reliability: the counted reliability and security suite (tests/reliability)"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if _HERE in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.reliability)


def _rows() -> list[dict[str, Any]]:
    return [
        {
            "scenario": t.name,
            "runs": t.runs,
            "failures": t.failures,
            "notes": "; ".join(t.notes),
            **({"known_bug": t.known_bug} if t.known_bug else {}),
        }
        for t in RESULTS.values()
    ]


def table(rows: list[dict[str, Any]]) -> list[str]:
    """The results as a Markdown table (what docs/reliability.md shows)."""
    out = ["| scenario | runs | failures | notes |", "|---|---:|---:|---|"]
    for r in rows:
        note = r["notes"]
        if r.get("known_bug"):
            note = f"known bug: {r['known_bug']}" + (f"; {note}" if note else "")
        out.append(f"| {r['scenario']} | {r['runs']} | {r['failures']} | {note} |")
    return out


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    rows = _rows()
    if not rows:
        return
    runs = sum(r["runs"] for r in rows)
    failures = sum(r["failures"] for r in rows)
    tr = terminalreporter
    tr.section(f"intercept-sdk reliability ({SIZE_NAME} run)")
    for line in table(rows):
        tr.write_line(line)
    tr.write_line(f"total: {len(rows)} scenarios, {runs} runs, {failures} failures")
    out = os.environ.get("INTERCEPT_RELIABILITY_OUT")
    if out:
        doc = {
            "size": SIZE_NAME,
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "duration_s": round(time.time() - _STARTED, 1),
            "python": platform.python_version(),
            "machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs",
            "exitstatus": int(exitstatus),
            "scenarios": rows,
            "total_runs": runs,
            "total_failures": failures,
        }
        Path(out).write_text(json.dumps(doc, ensure_ascii=False, indent=2) + "\n")
        tr.write_line(f"written to {out}")
