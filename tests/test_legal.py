"""Legal fidelity (issue 18), end to end: minors in any role, the objection rule per
jurisdiction. Real signed sites (TestPlatform) and a real verifying Client."""

from __future__ import annotations

import datetime as _dt
import re
from pathlib import Path

import pytest

from intercept_sdk import ConfigurationError, InvalidInput, Person, measures
from intercept_sdk._client.decisions import is_minor, notice_text
from intercept_sdk._protocol.catalog import ROLES
from intercept_sdk._protocol.jurisdictions import JURISDICTIONS, objection_rule
from intercept_sdk.testing import TestPlatform, make_id_number

SEEDS = Path(__file__).resolve().parent / "data" / "seeds"
TODAY = _dt.datetime.now(_dt.timezone.utc).date()


def _born_years_ago(years: int) -> str:
    return TODAY.replace(year=TODAY.year - years, day=min(TODAY.day, 28)).isoformat()


def test_twelve_year_old_actual_controller_is_never_blocked(tmp_path: Path) -> None:
    """A 12-year-old recorded as a listed company's actual controller (or in any other role)
    is allowed under every measure, and the entry is reported as a data error; an adult in
    the same roles is blocked (the control that shows the rule is what allows)."""
    child = {r: make_id_number(_born_years_ago(12), seq=40 + i) for i, r in enumerate(ROLES)}
    adult = {r: make_id_number("1975-03-04", seq=60 + i) for i, r in enumerate(ROLES)}
    with TestPlatform(tmp_path) as p:
        kid_co = p.add_entity(
            related=[
                {"role": r, "name": f"孩子{i}", "id_number": child[r]} for i, r in enumerate(ROLES)
            ],
            publish=False,
        )
        adult_co = p.add_entity(
            related=[
                {"role": r, "name": f"成人{i}", "id_number": adult[r]} for i, r in enumerate(ROLES)
            ],
        )
        c = p.client()
        reached = 0
        for m in measures():
            for role in ROLES:
                d = c.check(Person(child[role]), m.code)
                assert d.action == "allow", (m.code, role)
                assert d.matches == ()
                if m.applies_to(role):
                    reached += 1
                    assert d.data_errors == (kid_co["entry_id"],)
                    assert "minor_not_enforced" in d.reasons
                    grown = c.check(Person(adult[role]), m.code)
                    assert grown.action == m.action, (m.code, role)
                    assert grown.matches[0].entry_id == adult_co["entry_id"]
        assert reached >= 40
        flight = c.check(Person(child["actual_controller"]), "travel.flight")
        assert flight.action == "allow" and flight.ignored[0].reason == "minor_not_enforced"


def test_is_minor_any_role_and_its_boundaries() -> None:
    birth = _dt.date(2008, 2, 29)
    for role in ("self", *ROLES, "officer:director"):
        assert is_minor(role, birth, _dt.date(2026, 2, 28))
        assert not is_minor(role, birth, _dt.date(2026, 3, 1))
    assert is_minor("actual_controller", _dt.date(2014, 1, 1), _dt.date(2026, 6, 1))
    with pytest.raises(InvalidInput):
        is_minor("shareholder", birth, _dt.date(2026, 3, 1))


# -- the objection notice per jurisdiction -------------------------------------------------


def test_jurisdiction_passages_are_verbatim() -> None:
    for rule in JURISDICTIONS.values():
        assert rule.passage in (SEEDS / rule.source).read_text(encoding="utf-8"), rule.key


@pytest.mark.parametrize(
    ("jurisdiction", "present", "absent"),
    [
        (
            "national",
            ("法院应在十五日内审查", "自驳回决定送达之日起十日内向上一级人民法院申请复议"),
            ("三日内",),
        ),
        (
            "jiangsu",
            ("自收到决定之日起十日内", "法院应在三日内审查", "向上一级人民法院申请复议"),
            ("十五日",),
        ),
        ("huaian", ("自收到决定之日起十日内", "法院应在三日内审查", "申请复议"), ("十五日",)),
    ],
)
def test_client_notice_follows_its_jurisdiction(
    tmp_path: Path, jurisdiction: str, present: tuple[str, ...], absent: tuple[str, ...]
) -> None:
    with TestPlatform(tmp_path) as p:
        e = p.add_person()
        c = p.client(jurisdiction=jurisdiction, unit_name="淮安某某酒店")
        d = c.check(Person(e["id_number"]), "consumption.star_hotel")
        text = c.notice(d)
        for words in present:
            assert words in text, (jurisdiction, words)
        for words in absent:
            assert words not in text
        assert "向淮安某某酒店申请复核" in text
        assert "不停止失信名单的效力" in text
        assert text == notice_text(d, "淮安某某酒店", jurisdiction)


def test_default_jurisdiction_is_national(tmp_path: Path) -> None:
    with TestPlatform(tmp_path) as p:
        e = p.add_person()
        c = p.client()
        text = c.notice(c.check(Person(e["id_number"]), "travel.flight"))
        assert "十五日内审查" in text


def test_unknown_jurisdiction_is_refused_at_construction(tmp_path: Path) -> None:
    with TestPlatform(tmp_path) as p, pytest.raises(ConfigurationError, match="jiangsu"):
        p.client(jurisdiction="mars")
    with pytest.raises(ConfigurationError):
        objection_rule("Jiangsu")


def test_rules_as_the_texts_state() -> None:
    js = objection_rule("jiangsu")
    assert (js.application_days, js.review_days, js.reconsider) == (10, 3, True)
    nat = objection_rule(None)
    assert (nat.application_days, nat.review_days, nat.reconsider_days) == (None, 15, 10)
    for rule in JURISDICTIONS.values():
        days = [int(n) for n in re.findall(r"[0-9]+", rule.passage)]
        assert rule.review_days in days


# -- the measures command ------------------------------------------------------------------


def test_measures_command_shows_the_new_measures() -> None:
    import json
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "intercept_sdk._cli", "measures"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=True).stdout
    for code in ("notify.party_member", "assist.fishing_vessel", "office.deputy_seat"):
        assert code in out
    halt = next(line for line in out.splitlines() if "construction_approval_halt" in line)
    assert "须有法院协助执行通知" in halt
    assert out.splitlines()[-1] == f"{len(measures())} measures in 19 categories"
    cap = next(line for line in out.splitlines() if "resort_spending_cap" in line)
    assert " review " in cap
    data = json.loads(
        subprocess.run(
            [*cmd, "--json"], capture_output=True, text=True, timeout=60, check=True
        ).stdout
    )
    by_code = {m["code"]: m for m in data}
    assert by_code["travel.ship_berth"]["source"]["seed"] == "DOMAIN.md"
    assert by_code["supervision.chattel_mortgage"]["trigger"] == "court_notice"
    assert by_code["finance.bank_sanction"]["action"] == "review"
