"""The API reference (docs/api.md) is generated from the docstrings and kept current."""

from __future__ import annotations

import runpy
from pathlib import Path

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_api_reference_is_up_to_date() -> None:
    render = runpy.run_path(str(DOCS / "gen_api.py"))["render"]
    assert (DOCS / "api.md").read_text(encoding="utf-8") == render(), (
        "docs/api.md is stale: run `python docs/gen_api.py`"
    )
