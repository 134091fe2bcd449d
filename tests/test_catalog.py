"""The measure catalog: shape, required codes, wording rules and traceability to the seeds."""

from __future__ import annotations

import hashlib
import json
import re
from importlib import resources
from pathlib import Path

import pytest
from pydantic import ValidationError

from intercept_sdk import InterceptError, InvalidInput, UnknownMeasure
from intercept_sdk._protocol.catalog import (
    ACTIONS,
    RELATIONS,
    ROLES,
    Measure,
    get_measure,
    measure_codes,
    measures,
)

#: Byte-exact copies of the seed policy documents (see tests/data/seeds/README.md).
SEEDS = Path(__file__).resolve().parent / "data" / "seeds"

CONSUMPTION = ("self", "legal_rep", "principal", "actual_controller", "responsible_person")
ALL_ROLES = (
    "legal_rep",
    "principal",
    "actual_controller",
    "responsible_person",
    "director",
    "supervisor",
    "senior_manager",
)

# code -> (action, relations, officer_roles), exactly as the SDK's design requires.
REQUIRED = {
    "consumption.star_hotel": ("block", CONSUMPTION, ()),
    "consumption.private_school": ("block", CONSUMPTION, ()),
    "travel.flight": ("block", CONSUMPTION, ()),
    "travel.rail_premium": ("block", CONSUMPTION, ()),
    "realestate.purchase": ("block", CONSUMPTION, ()),
    "procurement.supplier": ("block", ("self",), ()),
    "bidding.tender": ("block", ("self",), ()),
    "subsidy.application": ("block", ("self",), ()),
    "office.civil_servant": ("block", ("self",), ()),
    "office.soe_executive": ("block", ("self",), ()),
    # 001: 法定代表人、主要负责人、实际控制人、董事、监事、高级管理人员 (no 直接责任人员)
    "finance.credit": (
        "review",
        ("self", "officer"),
        ("legal_rep", "principal", "actual_controller", "director", "supervisor", "senior_manager"),
    ),
    # 001/004: 法定代表人、实际控制人、董事、监事、高级管理人员 (no 主要负责人, 直接责任人员)
    "policy.support": (
        "review",
        ("self", "officer"),
        ("legal_rep", "actual_controller", "director", "supervisor", "senior_manager"),
    ),
    "supervision.key_target": (
        "monitor",
        ("self", "officer"),
        ("legal_rep", "principal", "actual_controller", "director", "supervisor", "senior_manager"),
    ),
}

BLOCK_WORDS = ("限制", "禁止", "不得")
# Wording that marks each action in the seeds (block also covers 不作为/不予/不开..., the
# seeds' other ways of saying "do not").
ACTION_MARKERS = {
    "block": (*BLOCK_WORDS, "不作为", "不予", "中止", "终止", "前置条件", "撤销", "免去"),
    "review": ("从严审核", "从严审批", "审慎性参考", "参考", "审查", "可以采取", "限额控制"),
    "monitor": ("重点监管", "抽查", "严密监管", "追究", "约谈", "信用档案", "数据库", "协助"),
}
ACTION_MARKERS_MORE = {
    "block": ("变更", "停止办理"),
    "review": ("听取", "通报", "清算报告", "侦查", "鼓励"),
    "monitor": ("查询",),
}
DOMAIN = "DOMAIN.md"
DATA = Path(__file__).resolve().parent / "data"


def _collapsed(text: str) -> str:
    return re.sub(r"\s+", "", text)


def _domain_line(passage: str) -> str:
    """The line of DOMAIN.md that holds ``passage`` (its wording is the line's)."""
    return next(line for line in _seed_text(DOMAIN).splitlines() if passage in line)


def _seed_text(name: str) -> str:
    path = SEEDS / name
    assert path.is_file(), f"cited seed {name} does not exist in {SEEDS}"
    return path.read_text(encoding="utf-8")


def _seed_files() -> list[Path]:
    files = [*sorted(SEEDS.glob("*.txt")), SEEDS / DOMAIN]
    assert files, f"no seed documents in {SEEDS}"
    return files


def _passage_problems(items: list[tuple[str, str, str]]) -> list[str]:
    """``(code, seed, passage)`` whose passage is not verbatim in its seed (or too long)."""
    return [
        f"{code}: passage not found in {seed}"
        for code, seed, passage in items
        if not 0 < len(passage) <= 200 or passage not in _seed_text(seed)
    ]


# --- shape -----------------------------------------------------------------------------


def test_at_least_40_measures() -> None:
    assert len(measures()) >= 40


def test_codes_unique_and_well_formed() -> None:
    codes = [m.code for m in measures()]
    assert len(codes) == len(set(codes))
    for m in measures():
        assert re.fullmatch(r"[a-z][a-z0-9_]*\.[a-z][a-z0-9_]*", m.code), m.code
        assert m.code.split(".")[0] == m.category


def test_measure_codes_match_measures() -> None:
    assert measure_codes() == frozenset(m.code for m in measures())
    assert isinstance(measure_codes(), frozenset)


def test_file_order_and_caching() -> None:
    raw = json.loads(
        resources.files("intercept_sdk").joinpath("data/measures.json").read_text("utf-8")
    )
    assert raw["version"] == 1
    assert [m["code"] for m in raw["measures"]] == [m.code for m in measures()]
    assert measures() is measures()
    assert get_measure("travel.flight") is get_measure("travel.flight")


def test_categories() -> None:
    raw = json.loads(
        resources.files("intercept_sdk").joinpath("data/measures.json").read_text("utf-8")
    )
    cats = raw["categories"]
    for m in measures():
        assert m.category_title == cats[m.category]
    used = {m.category for m in measures()}
    assert used == set(cats), "every declared category is used and vice versa"
    assert cats["consumption"] == "限制高消费及有关消费"
    assert cats["office"] == "任职资格限制"
    assert cats["market"] == "准入资格限制"
    assert cats["finance"] == "荣誉和授信限制"
    assert cats["policy"] == "政府支持或补贴限制"
    assert cats["supervision"] == "加强日常监管检查"


@pytest.mark.parametrize(("code", "expected"), sorted(REQUIRED.items()))
def test_required_codes(code: str, expected: tuple[str, tuple[str, ...], tuple[str, ...]]) -> None:
    action, relations, officer_roles = expected
    m = get_measure(code)
    assert m.action == action
    assert m.relations == relations
    assert m.officer_roles == officer_roles


def test_actions_relations_roles_valid() -> None:
    assert set(ACTIONS) == {"block", "review", "monitor"}
    for m in measures():
        assert m.action in ACTIONS, m.code
        assert m.relations, m.code
        assert set(m.relations) <= set(RELATIONS), m.code
        assert set(m.officer_roles) <= set(ROLES), m.code
        assert ("officer" in m.relations) == bool(m.officer_roles), m.code
        assert m.title.strip(), m.code
        assert m.departments, m.code
        assert all(d.strip() for d in m.departments), m.code


def test_roles_match_entry_model() -> None:
    from intercept_sdk._protocol import models

    assert models.ROLES is ROLES


def test_one_role_list_everywhere() -> None:
    """The catalog's role list is the only one: the store, the rules and the synthetic
    data use it (or a tuple derived from it), and the Literal types agree with it."""
    from typing import get_args

    from intercept_sdk._client import decisions, store
    from intercept_sdk._protocol.catalog import KEY_RELATIONS, ROLE_TITLES, Relation, Role
    from intercept_sdk.testing import synth

    assert ROLES == get_args(Role) == ALL_ROLES
    assert RELATIONS == ("self", *ROLES, "officer") == get_args(Relation)
    assert store.RELATIONS is KEY_RELATIONS
    assert set(ROLE_TITLES) == set(ROLES)
    assert vars(decisions)["ROLE_TITLES"] is ROLE_TITLES
    assert ROLES[1:] == synth._ROLES_EXTRA


def test_key_relation_order_is_fixed() -> None:
    """The client's cache stores the index into KEY_RELATIONS: the order may only grow."""
    from intercept_sdk._protocol.catalog import KEY_RELATIONS

    assert KEY_RELATIONS == (
        "self",
        "legal_rep",
        "principal",
        "actual_controller",
        "responsible_person",
        "director",
        "supervisor",
        "senior_manager",
    )


def test_consumption_and_travel_reach_company_officers() -> None:
    for m in measures():
        # the cap sentence names only 失信被执行人, and caps rather than bans
        if m.category in {"consumption", "travel"} and m.code != "consumption.resort_spending_cap":
            assert m.relations == CONSUMPTION, m.code
            assert m.action == "block", m.code


def test_all_three_actions_used() -> None:
    assert {m.action for m in measures()} == set(ACTIONS)


# --- traceability to the seeds ---------------------------------------------------------


def test_seed_copies_are_unchanged() -> None:
    """The copies are the published documents, byte for byte (pinned by SHA256SUMS)."""
    pinned = {}
    for line in (SEEDS / "SHA256SUMS").read_text(encoding="ascii").splitlines():
        digest, name = line.split(maxsplit=1)
        pinned[name] = digest
    assert pinned == {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in _seed_files()}


def test_passages_occur_verbatim_in_seed() -> None:
    items = [(m.code, m.source_seed, m.source_passage) for m in measures()]
    assert _passage_problems(items) == []


def test_a_passage_not_in_its_seed_fails() -> None:
    """The check above can fail: one changed character, or the wrong seed, is caught."""
    m = get_measure("travel.flight")
    altered = m.source_passage.replace("飞机", "飞船")
    assert altered != m.source_passage
    other_seed = next(p.name for p in _seed_files() if p.name != m.source_seed)
    assert _passage_problems(
        [(m.code, m.source_seed, altered), (m.code, other_seed, m.source_passage)]
    ) == [
        f"{m.code}: passage not found in {m.source_seed}",
        f"{m.code}: passage not found in {other_seed}",
    ]


def test_departments_are_named_in_the_seeds() -> None:
    corpus = "".join(p.read_text(encoding="utf-8") for p in _seed_files())
    for m in measures():
        for d in m.departments:
            assert d in corpus, f"{m.code}: department {d!r} not named in any seed"


def test_seeds_with_measure_lists_are_all_cited() -> None:
    cited = {m.source_seed for m in measures()}
    for path in _seed_files():
        text = path.read_text(encoding="utf-8")
        if "限制失信被执行人" in text:
            assert path.name in cited, f"{path.name} names restrictions but no measure cites it"


def test_relations_follow_passage() -> None:
    """Measures reaching company officers or officer-led entities say so in their passage."""
    for m in measures():
        if m.source_seed == DOMAIN:  # the SPC consumption rules: the section names them
            assert "for a company also to its legal representative" in _seed_text(DOMAIN)
        elif "legal_rep" in m.relations or "officer" in m.relations:
            assert "法定代表人" in m.source_passage, m.code


# --- wording rules (DOMAIN: the wording decides the action) ----------------------------


def test_strict_review_wording_is_review() -> None:
    for m in measures():
        p = m.source_passage
        if ("从严审核" in p or "从严审批" in p) and not any(w in p for w in BLOCK_WORDS):
            assert m.action == "review", m.code


def test_prudential_reference_wording_is_review() -> None:
    for m in measures():
        p = m.source_passage
        if "审慎性参考" in p and not any(w in p for w in BLOCK_WORDS):
            assert m.action == "review", m.code


def test_key_supervision_wording_is_monitor() -> None:
    for m in measures():
        p = m.source_passage
        if "重点监管" in p or "抽查" in p:
            assert m.action == "monitor", m.code


def test_every_action_backed_by_its_wording() -> None:
    for m in measures():
        markers = ACTION_MARKERS[m.action] + ACTION_MARKERS_MORE[m.action]
        text = _domain_line(m.source_passage) if m.source_seed == DOMAIN else m.source_passage
        spc_list = m.source_seed == DOMAIN and text.startswith("- Restricted:")
        assert spc_list or any(w in text for w in markers), (m.code, m.action)


def test_spot_checks() -> None:
    assert get_measure("exit.departure").action == "block"
    assert get_measure("industry.interbank_bond").action == "review"
    assert get_measure("industry.corporate_bond").action == "block"
    assert get_measure("market.food_drug").action == "review"
    assert get_measure("market.hazardous_industry").action == "block"
    assert get_measure("office.party_membership").action == "review"
    assert get_measure("office.deputy_candidate").action == "block"
    assert "G 字头" in get_measure("travel.rail_premium").source_passage
    assert "飞机" in get_measure("travel.flight").source_passage
    assert "星级" in get_measure("consumption.star_hotel").source_passage


# --- applies_to --------------------------------------------------------------------------


def test_applies_to_consumption() -> None:
    m = get_measure("consumption.star_hotel")
    for rel in CONSUMPTION:
        assert m.applies_to(rel)
    for rel in ("director", "supervisor", "senior_manager"):
        assert not m.applies_to(rel)
    for role in ROLES:
        assert not m.applies_to(f"officer:{role}")


def test_applies_to_self_only() -> None:
    m = get_measure("procurement.supplier")
    assert m.applies_to("self")
    assert not any(m.applies_to(r) for r in ROLES)
    assert not any(m.applies_to(f"officer:{r}") for r in ROLES)


def test_applies_to_officer_direction() -> None:
    m = get_measure("supervision.key_target")
    assert m.applies_to("self")
    # The role relations run in the officer direction: a listed director does not make
    # the director personally a supervision target, but makes the company one.
    assert not m.applies_to("director")
    assert not m.applies_to("legal_rep")
    for role in ("legal_rep", "principal", "actual_controller", "director", "supervisor"):
        assert m.applies_to(f"officer:{role}")
    assert m.applies_to("officer:senior_manager")
    assert not m.applies_to("officer:responsible_person")

    credit = get_measure("finance.credit")
    assert all(credit.applies_to(f"officer:{r}") for r in ROLES if r != "responsible_person")
    assert not credit.applies_to("officer:responsible_person")
    assert not credit.applies_to("legal_rep")


@pytest.mark.parametrize(
    "relation", ["", "officer", "officer:", "officer:ceo", "Self", "shareholder", "officer:self"]
)
def test_applies_to_rejects_unknown_relation(relation: str) -> None:
    with pytest.raises(InvalidInput):
        get_measure("travel.flight").applies_to(relation)


# --- get_measure -----------------------------------------------------------------------


def test_get_measure_known() -> None:
    m = get_measure("travel.flight")
    assert m.code == "travel.flight"
    assert m.title == "限制乘坐飞机"
    assert m.category == "travel"


def test_get_measure_unknown_suggests() -> None:
    with pytest.raises(UnknownMeasure) as info:
        get_measure("travel.flights")
    msg = str(info.value)
    assert "'travel.flights'" in msg
    assert "did you mean" in msg
    assert "'travel.flight'" in msg
    assert isinstance(info.value, InterceptError)
    assert isinstance(info.value, ValueError)


def test_get_measure_unknown_without_close_match() -> None:
    with pytest.raises(UnknownMeasure, match="unknown measure code 'zzz'"):
        get_measure("zzz")


def test_get_measure_non_string() -> None:
    with pytest.raises(UnknownMeasure):
        get_measure(None)  # type: ignore[arg-type]


# --- model guarantees ------------------------------------------------------------------


def test_measure_is_frozen() -> None:
    m = get_measure("travel.flight")
    with pytest.raises(ValidationError):
        m.action = "review"  # type: ignore[misc]


def _fields(**changes: object) -> dict[str, object]:
    data: dict[str, object] = get_measure("finance.credit").model_dump()
    data.update(changes)
    return data


def test_measure_rejects_inconsistent_data() -> None:
    Measure.model_validate(_fields())  # baseline is valid
    bad = [
        _fields(extra="x"),
        _fields(action="deny"),
        _fields(relations=("self", "boss")),
        _fields(officer_roles=()),  # officer without roles
        _fields(relations=("self",)),  # roles without officer
        _fields(code="travel.credit"),  # prefix differs from category
        _fields(code="Finance.Credit"),
        _fields(source_passage="长" * 201),
        _fields(departments=()),
        _fields(relations=["self", "officer"]),  # strict: lists are not tuples in python mode
    ]
    for data in bad:
        with pytest.raises(ValidationError):
            Measure.model_validate(data)


# --- every measure passage of the seeds is covered (tests/data/measure_passages.tsv) -----


def _passage_rows() -> list[tuple[str, str, tuple[str, ...]]]:
    """The measure passages read from the seeds (kept in the repository, not derived from
    the catalog): ``(seed, passage without whitespace, codes implementing it)``."""
    rows = []
    for line in (DATA / "measure_passages.tsv").read_text(encoding="utf-8").splitlines():
        if line and not line.startswith("#"):
            seed, passage, codes = line.split("\t")
            rows.append((seed, passage, tuple(codes.split(","))))
    return rows


def _coverage_problems(
    rows: list[tuple[str, str, tuple[str, ...]]], catalog: dict[str, Measure]
) -> list[str]:
    """Seed passages the catalog does not cover (a code missing, or citing another text)."""
    problems = []
    for seed, passage, codes in rows:
        if passage not in _collapsed(_seed_text(seed)):
            problems.append(f"{seed}: listed passage {passage!r} is not in the seed")
        for code in codes:
            m = catalog.get(code)
            if m is None:
                problems.append(f"{seed}: {passage!r} has no measure {code!r} in the catalog")
                continue
            cited = _collapsed(m.source_passage)
            if m.source_seed != seed or (passage not in cited and cited not in passage):
                problems.append(f"{code}: cites {m.source_seed}, not {passage!r} of {seed}")
    return problems


def test_every_seed_measure_passage_is_covered() -> None:
    catalog = {m.code: m for m in measures()}
    rows = _passage_rows()
    assert len(rows) >= 110
    assert _coverage_problems(rows, catalog) == []
    listed = {code for _, _, codes in rows for code in codes}
    assert listed == set(catalog), "every measure is traced to a listed seed passage"


@pytest.mark.parametrize(
    "code",
    ["notify.party_member", "assist.fishing_vessel", "office.deputy_seat", "travel.ship_berth"],
)
def test_a_missing_measure_fails_the_coverage(code: str) -> None:
    catalog = {m.code: m for m in measures() if m.code != code}
    problems = _coverage_problems(_passage_rows(), catalog)
    assert len(problems) == 1
    assert f"no measure {code!r}" in problems[0]


def test_coverage_names_the_issue_items() -> None:
    """The measures the legal audit (issue 18) found missing are all there."""
    codes = measure_codes()
    for code in (
        "notify.state_employee",
        "notify.state_organ_soe",
        "notify.party_member",
        "notify.party_member_interview",
        "finance.credit_database",
        "honor.civilized_unit_revocation",
        "honor.moral_model_revocation",
        "office.soe_executive_removal",
        "office.regulated_industry_removal",
        "office.incumbent_removal",
        "office.deputy_seat",
        "market.land_auction",
        "market.realestate_bank_loan",
        "supervision.realestate_credit_file",
        "supervision.deregistration_liquidation_report",
        "office.deputy_candidate_court_opinion",
        "honor.charity_court_opinion",
        "supervision.construction_approval_halt",
        "supervision.chattel_mortgage",
        "supervision.legal_rep_equity_change",
        "criminal.refusal_to_execute",
        "other.encouraged",
        "assist.identity",
        "assist.exit_documents",
        "assist.marriage",
        "assist.lodging",
        "assist.vehicle",
        "assist.shares",
        "assist.safe_deposit",
        "assist.insurance",
        "assist.real_estate",
        "assist.fishing_vessel",
        "assist.lawyer_register",
        "assist.physician_register",
        "travel.ship_berth",
        "consumption.office_rental",
    ):
        assert code in codes, code


# --- the action per measure per relation, as the texts state (measure_actions.tsv) ------


def _action_rows() -> list[list[str]]:
    lines = (DATA / "measure_actions.tsv").read_text(encoding="utf-8").splitlines()
    return [line.split("\t") for line in lines if line and not line.startswith("#")]


@pytest.mark.parametrize("row", _action_rows(), ids=lambda r: r[0])
def test_action_table(row: list[str]) -> None:
    """Pinned per measure: action, whom it reaches, the officer roles the text names, the
    word of the text that decides the action, and what sets it off."""
    code, action, relations, officer_roles, wording, trigger = row
    m = get_measure(code)
    assert m.action == action
    assert m.relations == tuple(relations.split(","))
    assert m.officer_roles == (() if officer_roles == "-" else tuple(officer_roles.split(",")))
    assert m.trigger == trigger
    text = _domain_line(m.source_passage) if m.source_seed == DOMAIN else m.source_passage
    assert wording in _collapsed(text) or wording in text
    for relation in ("self", *ROLES):
        assert m.applies_to(relation) == (relation in m.relations)
    for role in ROLES:
        assert m.applies_to(f"officer:{role}") == (role in m.officer_roles)


def test_action_table_is_complete() -> None:
    assert {row[0] for row in _action_rows()} == measure_codes()


def test_issue_corrections() -> None:
    """The wrong parties and actions of issue 18, each fixed as its text says."""
    assert not get_measure("policy.support").applies_to("officer:principal")
    assert not get_measure("policy.support").applies_to("officer:responsible_person")
    assert get_measure("finance.credit").applies_to("officer:principal")  # 主要负责人 named
    assert not get_measure("finance.credit").applies_to("officer:responsible_person")
    assert get_measure("honor.civilized_unit").applies_to("officer:principal")  # 领导成员
    assert get_measure("finance.bank_sanction").action == "review"  # 可以采取
    cap = get_measure("consumption.resort_spending_cap")
    assert cap.action == "review"
    assert cap.relations == ("self",)
    assert "限额控制" in cap.source_passage


def test_court_notice_measures() -> None:
    tied = {m.code for m in measures() if m.trigger == "court_notice"}
    assert "supervision.construction_approval_halt" in tied
    assert "supervision.chattel_mortgage" in tied
    assert "travel.flight" not in tied
    for code in tied:
        assert "人民法院" in get_measure(code).source_passage, code
