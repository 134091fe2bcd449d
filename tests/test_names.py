"""Entry, subscriber and report ids: one definition each, matched as a whole.

Why: these names cross from one side to the other (a record's entry id comes back in a
report; a subscriber id is a key file name and a site directory), so both sides must
refuse exactly the same values. The classic slip is ``re.match`` with ``^...$``: ``$``
also matches before a trailing newline, so ``"hotel-001\\n"`` passed as a subscriber id.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from intercept_sdk import InvalidInput
from intercept_sdk._exceptions import ConfigurationError, InvalidReport
from intercept_sdk._platform import keys as platform_keys
from intercept_sdk._protocol import names
from intercept_sdk._protocol.names import (
    ENTRY_ID_RE,
    SUBSCRIBER_ID_RE,
    is_entry_id,
    is_report_id,
    is_subscriber_id,
    validate_entry_id,
    validate_subscriber_id,
)

SRC = Path(__file__).resolve().parents[1] / "src" / "intercept_sdk"

GOOD_SUBSCRIBERS = ["hotel-001", "A", "a.b_c-d", "9" * 64]
BAD_SUBSCRIBERS = [
    "hotel-001\n",  # accepted by ^...$ with .match
    "hotel-001\r",
    "\nhotel-001",
    "",
    "-hotel",
    ".hidden",
    "../etc",
    "a/b",
    "a:b",  # an entry id may hold ':', a subscriber id (a file name) may not
    "a b",
    "x" * 65,
    "ｈotel",  # full-width letter
    "hotél",
]
GOOD_ENTRIES = ["E00000001", "M1", "case:2019.1-a_b", "Z" * 64]
BAD_ENTRIES = ["E00000001\n", "", " E1", "E 1", ":E1", "E" * 65, "E/1", "Ｅ1"]


def test_subscriber_id_with_a_trailing_newline_is_refused() -> None:
    with pytest.raises(InvalidInput):
        validate_subscriber_id("hotel-001\n")
    with pytest.raises(ConfigurationError):
        platform_keys.validate_subscriber_id("hotel-001\n")


@pytest.mark.parametrize("value", GOOD_SUBSCRIBERS)
def test_good_subscriber_ids(value: str) -> None:
    assert validate_subscriber_id(value) == value
    assert platform_keys.validate_subscriber_id(value) == value
    assert is_subscriber_id(value)


@pytest.mark.parametrize("value", [*BAD_SUBSCRIBERS, None, 1, b"hotel"])
def test_bad_subscriber_ids(value: object) -> None:
    assert not is_subscriber_id(value)
    with pytest.raises(InvalidInput, match="must match"):
        validate_subscriber_id(value)
    with pytest.raises(ConfigurationError, match="must match"):
        platform_keys.validate_subscriber_id(value)  # type: ignore[arg-type]
    # the compiled pattern is safe with .match too (it ends in \Z)
    assert not (isinstance(value, str) and SUBSCRIBER_ID_RE.match(value))


@pytest.mark.parametrize("value", GOOD_ENTRIES)
def test_good_entry_ids(value: str) -> None:
    assert validate_entry_id(value) == value


@pytest.mark.parametrize("value", [*BAD_ENTRIES, None, 7])
def test_bad_entry_ids(value: object) -> None:
    assert not is_entry_id(value)
    with pytest.raises(InvalidInput, match="must match"):
        validate_entry_id(value)
    assert not (isinstance(value, str) and ENTRY_ID_RE.match(value))


def test_report_ids() -> None:
    assert is_report_id("0123456789abcdef" * 2)
    for bad in ("0123456789abcdef" * 2 + "\n", "0123456789ABCDEF" * 2, "0" * 31, None):
        assert not is_report_id(bad)


def test_pydantic_patterns_refuse_a_trailing_newline() -> None:
    """pydantic-core's engine reads ``$`` as the end of the text (unlike Python's re)."""
    from pydantic import BaseModel, Field, ValidationError

    class M(BaseModel):
        v: str = Field(pattern=names.pydantic_pattern(names.ENTRY_ID_PATTERN))

    assert M(v="E1").v == "E1"
    for bad in ("E1\n", "E1\nE2", " E1"):
        with pytest.raises(ValidationError):
            M(v=bad)


def test_reports_use_the_same_shapes() -> None:
    from intercept_sdk._protocol.reports import build_report

    for bad in BAD_SUBSCRIBERS:
        with pytest.raises(InvalidReport):
            build_report("lift", subscriber_id=bad, measure="travel.flight", entry_id="E1")
    for bad in BAD_ENTRIES[:1]:
        with pytest.raises(InvalidReport):
            build_report("lift", subscriber_id="h1", measure="travel.flight", entry_id=bad)
    with pytest.raises(InvalidReport):
        build_report(
            "lift",
            subscriber_id="h1",
            measure="travel.flight",
            entry_id="E1",
            report_id="0" * 32 + "\n",
        )


def _anchored_match_calls(path: Path) -> list[str]:
    """``X.match(`` calls on a module-level regex compiled from a ``^...$`` literal."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    anchored: set[str] = set()
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Assign)
            and isinstance(node.value, ast.Call)
            and getattr(node.value.func, "attr", None) == "compile"
            and node.value.args
            and isinstance(node.value.args[0], ast.Constant)
            and isinstance(node.value.args[0].value, str)
            and re.search(r"\$$", node.value.args[0].value)
        ):
            anchored.update(t.id for t in node.targets if isinstance(t, ast.Name))
    return [
        f"{path.name}:{node.lineno}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "match"
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id in anchored
    ]


@pytest.mark.parametrize(
    "module",
    [
        "_protocol/names.py",
        "_protocol/catalog.py",
        "_protocol/models.py",
        "_protocol/reports.py",
        "_protocol/identifiers.py",
        "_platform/keys.py",
        "_platform/publish.py",
    ],
)
def test_no_dollar_anchored_match_in_the_protocol_core(module: str) -> None:
    assert _anchored_match_calls(SRC / module) == []
