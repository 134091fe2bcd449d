"""The synthetic data generator used by the demo, the benchmarks and other tests.

Why: other tests and the benchmarks trust that generated entries are valid, realistic and
reproducible; a generator that drifts silently would make their results meaningless. So
this checks determinism, that every non-minor entry passes ``parse_entry`` (and minors fail
as minors only), the requested ratios and counts, internal consistency (court ↔ case
number, dates, amounts) and speed.
"""

from __future__ import annotations

import datetime as dt
import json
import random
import re
import time
from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from intercept_sdk._exceptions import InvalidEntry
from intercept_sdk._protocol.catalog import measure_codes
from intercept_sdk._protocol.identifiers import (
    USCC_ALPHABET,
    id_check,
    id_number_info,
    normalize_id_number,
    normalize_org_code,
    normalize_uscc,
    org_code_check,
    uscc_check,
)
from intercept_sdk._protocol.models import parse_entry
from intercept_sdk.testing.synth import (
    COURTS,
    MEASURE_CODES,
    REFERENCE_TODAY,
    _fast_id_check,
    _fast_org_body_check,
    _fast_uscc_check,
    generate_entries,
    valid_id_number,
    valid_org_code,
    valid_uscc,
    write_jsonl,
)

CASE_RE = re.compile(r"^\((\d{4})\)(.+?)(执恢|执)(\d+)号$")
DOC_RE = re.compile(r"^\((\d{4})\)(.+?)(民初|民终|刑初)(\d+)号$")
CJK_RE = re.compile(r"[\u4e00-\u9fff]")


@pytest.fixture(scope="module")
def sample() -> list[dict[str, Any]]:
    return list(
        generate_entries(
            4000,
            seed=42,
            minors=25,
            restricted=15,
            audience=["bank-a", "airline-b"],
            revoked_ratio=0.1,
        )
    )


# -- the fast check functions agree with the SDK's ----------------------------------------


@settings(deadline=None)  # a loaded CI machine must not make it flaky
@given(st.text("0123456789", min_size=17, max_size=17))
def test_fast_id_check_agrees(body: str) -> None:
    assert _fast_id_check(body) == id_check(body)


@settings(deadline=None)  # a loaded CI machine must not make it flaky
@given(st.text(USCC_ALPHABET, min_size=17, max_size=17))
def test_fast_uscc_check_agrees(body: str) -> None:
    assert _fast_uscc_check(body) == uscc_check(body)


@settings(deadline=None)  # a loaded CI machine must not make it flaky
@given(st.text("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ", min_size=8, max_size=8))
def test_fast_org_check_agrees(body: str) -> None:
    assert _fast_org_body_check(body) == org_code_check(body)


# -- identifier helpers -------------------------------------------------------------------


def test_valid_id_number_respects_range_and_sex() -> None:
    rng = random.Random(1)
    lo, hi = dt.date(1960, 3, 1), dt.date(1960, 3, 31)
    for sex in ("男", "女"):
        for _ in range(200):
            value = valid_id_number(rng, birth_from=lo, birth_to=hi, sex=sex)
            assert normalize_id_number(value) == value
            info = id_number_info(value)
            assert lo <= info.birth_date <= hi
            assert info.sex == sex
    one_day = dt.date(1999, 12, 31)
    value = valid_id_number(rng, birth_from=one_day, birth_to=one_day)
    assert id_number_info(value).birth_date == one_day


def test_valid_id_number_default_range_and_both_sexes() -> None:
    rng = random.Random(2)
    infos = [id_number_info(valid_id_number(rng)) for _ in range(500)]
    assert all(dt.date(1950, 1, 1) <= i.birth_date <= dt.date(2000, 12, 31) for i in infos)
    assert {i.sex for i in infos} == {"男", "女"}


def test_valid_id_number_rejects_bad_arguments() -> None:
    rng = random.Random(0)
    with pytest.raises(ValueError):
        valid_id_number(rng, birth_from=dt.date(2000, 1, 2), birth_to=dt.date(2000, 1, 1))
    with pytest.raises(ValueError):
        valid_id_number(rng, sex="M")


def test_valid_uscc_and_org_code() -> None:
    rng = random.Random(3)
    firsts: Counter[str] = Counter()
    for _ in range(2000):
        value = valid_uscc(rng)
        assert normalize_uscc(value) == value
        assert value[2:8].isdigit()
        firsts[value[0]] += 1
        org = valid_org_code(rng)
        assert normalize_org_code(org) == org
        assert normalize_org_code(org[:8] + "-" + org[8]) == org
    assert firsts["9"] > 1000
    assert any(c.isalpha() for c in firsts), "some USCCs must start with a letter"


@pytest.mark.parametrize("first", ["A", "N", "Y", "1", "5", "9", "G"])
def test_valid_uscc_with_given_first_character(first: str) -> None:
    rng = random.Random(4)
    for _ in range(50):
        value = valid_uscc(rng, first=first)
        assert value[0] == first
        assert normalize_uscc(value) == value


@pytest.mark.parametrize("first", ["I", "O", "0", "", "91", "a"])
def test_valid_uscc_rejects_bad_first(first: str) -> None:
    with pytest.raises(ValueError):
        valid_uscc(random.Random(0), first=first)


# -- determinism --------------------------------------------------------------------------


def test_same_seed_same_entries() -> None:
    a = list(generate_entries(300, seed=7, minors=3, revoked_ratio=0.2))
    b = list(generate_entries(300, seed=7, minors=3, revoked_ratio=0.2))
    assert a == b
    assert json.dumps(a, ensure_ascii=False) == json.dumps(b, ensure_ascii=False)


def test_other_seed_other_entries() -> None:
    a = list(generate_entries(50, seed=7))
    c = list(generate_entries(50, seed=8))
    assert a != c
    assert sum(x["name"] == y["name"] for x, y in zip(a, c, strict=True)) < 10


def test_prefix_is_stable() -> None:
    """The first k entries of a longer run equal a run of k (without special entries)."""
    assert list(generate_entries(100, seed=5)) == list(generate_entries(500, seed=5))[:100]


def test_does_not_depend_on_the_clock() -> None:
    assert list(generate_entries(20, seed=1)) == list(
        generate_entries(20, seed=1, today=REFERENCE_TODAY)
    )


def test_is_a_lazy_generator() -> None:
    it = generate_entries(10**7, seed=1)
    first = next(iter(it))
    assert first["entry_id"] == "E00000001"


# -- validity -----------------------------------------------------------------------------


def test_every_non_minor_entry_passes_parse_entry(sample: list[dict[str, Any]]) -> None:
    for d in sample:
        if d["entry_id"].startswith("M"):
            continue
        e = parse_entry(d)
        assert e.to_json_dict() == d, d["entry_id"]  # already in canonical source form
        assert parse_entry(json.dumps(d, ensure_ascii=False)) == e


def test_minors_fail_as_minors_only(sample: list[dict[str, Any]]) -> None:
    minors = [d for d in sample if d["entry_id"].startswith("M")]
    assert len(minors) == 25
    for d in minors:
        assert d["subject_type"] == "person"
        with pytest.raises(InvalidEntry) as info:
            parse_entry(d)
        assert len(info.value.reasons) == 1, info.value.reasons
        assert info.value.reasons[0].startswith("minor")
        info_id = id_number_info(d["id_number"])
        age = info_id.age_on(dt.date.fromisoformat(d["published_at"]))
        assert 10 <= age < 18
        assert d["age"] == age


def test_field_names_are_those_of_the_model(sample: list[dict[str, Any]]) -> None:
    from intercept_sdk._protocol.models import Entry

    fields = set(Entry.model_fields)
    for d in sample:
        assert set(d) <= fields


# -- counts and ratios ------------------------------------------------------------------


def test_counts_and_ratios() -> None:
    n = 20_000
    entries = list(
        generate_entries(
            n,
            seed=11,
            entity_ratio=0.3,
            restricted=40,
            audience=["bank-a"],
            minors=17,
            revoked_ratio=0.05,
        )
    )
    assert len(entries) == n
    kinds = Counter(d["subject_type"] for d in entries)
    assert 0.28 < kinds["entity"] / n < 0.32
    restricted = [d for d in entries if d["visibility"] == "restricted"]
    assert len(restricted) == 40
    assert all(d["audience"] == ["bank-a"] for d in restricted)
    assert all(d["audience"] == [] for d in entries if d["visibility"] == "public")
    assert sum(d["entry_id"].startswith("M") for d in entries) == 17
    assert not any(d["entry_id"].startswith("M") for d in restricted)
    revoked = sum(d["status"] == "revoked" for d in entries)
    assert 0.04 < revoked / n < 0.06
    wildcard = sum(d["measures"] == ["*"] for d in entries)
    assert 0.8 < wildcard / n < 0.9
    situations = Counter(d["situation"] for d in entries)
    assert set(situations) == {1, 2, 3, 4, 5, 6}
    assert Counter(d["severity"] for d in entries).keys() == {1, 2, 3}
    assert Counter(d["performance"] for d in entries).keys() == {"全部未履行", "部分未履行"}
    with_valid_until = [d for d in entries if "valid_until" in d]
    assert with_valid_until
    # situations 2-6 are listed for a term, situation 1 until performance (SPC rule)
    assert len(with_valid_until) == sum(situations[s] for s in range(2, 7))
    assert all(("valid_until" in d) == (d["situation"] != 1) for d in entries)
    for_entities = [d for d in entries if d["subject_type"] == "entity"]
    assert any("uscc" in d and "org_code" not in d for d in for_entities)
    assert any("uscc" in d and "org_code" in d for d in for_entities)
    assert any("uscc" not in d for d in for_entities)
    assert any(d["uscc"][0].isalpha() for d in for_entities if "uscc" in d)


@pytest.mark.parametrize(("ratio", "kind"), [(0.0, "person"), (1.0, "entity")])
def test_extreme_entity_ratios(ratio: float, kind: str) -> None:
    entries = list(generate_entries(300, seed=1, entity_ratio=ratio))
    assert {d["subject_type"] for d in entries} == {kind}


def test_entry_ids() -> None:
    ids = [d["entry_id"] for d in generate_entries(5, start_id=99, minors=1)]
    assert sorted(i[1:] for i in ids) == [f"{k:08d}" for k in range(99, 104)]
    assert sum(i.startswith("M") for i in ids) == 1
    assert sum(i.startswith("E") for i in ids) == 4
    assert [d["entry_id"] for d in generate_entries(3)] == ["E00000001", "E00000002", "E00000003"]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"n": -1},
        {"n": 5, "minors": 3, "restricted": 3, "audience": ["a"]},
        {"n": 5, "restricted": 1},
        {"n": 5, "restricted": 1, "audience": "bank-a"},
        {"n": 5, "entity_ratio": 1.5},
        {"n": 5, "revoked_ratio": -0.1},
        {"n": 5, "start_id": 99_999_999},
        {"n": 5, "today": dt.date(2014, 1, 1)},
        {"n": 5, "today": dt.date(2080, 1, 1)},
    ],
)
def test_bad_arguments_raise_at_call_time(kwargs: dict[str, Any]) -> None:
    n = kwargs.pop("n")
    with pytest.raises(ValueError):
        generate_entries(n, **kwargs)


# -- realism and internal consistency -----------------------------------------------------


def test_courts_match_case_numbers(sample: list[dict[str, Any]]) -> None:
    assert len({c for c in COURTS if not c.endswith("中级人民法院")}) >= 30
    for d in sample:
        m = CASE_RE.match(d["case_no"])
        assert m, d["case_no"]
        assert m.group(2) == COURTS[d["court"]], (d["court"], d["case_no"])
        assert int(m.group(1)) == dt.date.fromisoformat(d["filed_at"]).year
        doc = DOC_RE.match(d["basis_doc_no"])
        assert doc, d["basis_doc_no"]
        assert doc.group(2) == COURTS[d["basis_issuer"]]
        assert int(doc.group(1)) <= int(m.group(1))


def test_court_codes_follow_the_case_number_rule() -> None:
    for name, code in COURTS.items():
        digits = code[1:]
        assert CJK_RE.match(code[0])
        assert len(digits) == (2 if name.endswith("中级人民法院") else 4), (name, code)
        assert name.endswith("人民法院")
    assert COURTS["唐山市路南区人民法院"] == "冀0202"


def test_dates_are_consistent(sample: list[dict[str, Any]]) -> None:
    for d in sample:
        published = dt.date.fromisoformat(d["published_at"])
        filed = dt.date.fromisoformat(d["filed_at"])
        assert dt.date(2015, 1, 1) <= published < REFERENCE_TODAY
        assert filed < published
        if "valid_until" in d:
            assert d["situation"] != 1
            until = dt.date.fromisoformat(d["valid_until"])
            assert 2 <= until.year - published.year <= 5
            assert (until.month, until.day) == (published.month, published.day) or (
                published.month,
                published.day,
                until.day,
            ) == (2, 29, 28)
        if d["status"] == "revoked":
            revoked = dt.datetime.fromisoformat(d["revoked_at"])
            assert revoked.utcoffset() == dt.timedelta(hours=8)
            assert published < revoked.date() <= REFERENCE_TODAY
        else:
            assert "revoked_at" not in d


def test_today_bounds_published_at() -> None:
    today = dt.date(2016, 6, 1)
    for d in generate_entries(500, seed=3, today=today, revoked_ratio=0.5):
        assert d["published_at"] < today.isoformat()
        if "revoked_at" in d:
            assert d["revoked_at"][:10] <= today.isoformat()


def test_amounts_and_obligation(sample: list[dict[str, Any]]) -> None:
    for d in sample:
        performed = Decimal(d["performed_amount"])
        unperformed = Decimal(d["unperformed_amount"])
        assert unperformed > 0
        assert (performed == 0) == (d["performance"] == "全部未履行")
        principal = int(re.search(r"人民币(\d+)元", d["obligation"]).group(1))  # type: ignore[union-attr]
        assert principal <= performed + unperformed < principal + 1000
        assert 20 <= len(CJK_RE.findall(d["obligation"])) <= 80
        assert d["obligation"].startswith("被执行人")


def test_names_look_chinese(sample: list[dict[str, Any]]) -> None:
    for d in sample:
        if d["subject_type"] == "person":
            assert 2 <= len(d["name"]) <= 4
            assert all(CJK_RE.match(c) for c in d["name"])
        else:
            assert d["name"].endswith(("有限公司", "经营部", "合作社", "学校", "中心", "幼儿园"))
    companies = [d["name"] for d in sample if d["name"].endswith("有限公司")]
    assert any(n.endswith("股份有限公司") for n in companies)


def test_entities_have_related_persons(sample: list[dict[str, Any]]) -> None:
    entities = [d for d in sample if d["subject_type"] == "entity"]
    roles: Counter[str] = Counter()
    with_id = without_id = 0
    for d in entities:
        assert d["related"][0]["role"] == "legal_rep"
        assert d["legal_rep_name"] == d["related"][0]["name"]
        published = dt.date.fromisoformat(d["published_at"])
        for r in d["related"]:
            roles[r["role"]] += 1
            if "id_number" in r:
                with_id += 1
                assert id_number_info(r["id_number"]).age_on(published) >= 18
            else:
                without_id += 1
        if "uscc" in d and "org_code" in d:
            assert d["uscc"][8:17] == d["org_code"]
    assert roles["legal_rep"] == len(entities)
    assert len(roles) >= 5
    assert with_id > 3 * without_id > 0


def test_persons_are_adults_with_consistent_gender_and_age(
    sample: list[dict[str, Any]],
) -> None:
    for d in sample:
        if d["subject_type"] != "person" or d["entry_id"].startswith("M"):
            continue
        info = id_number_info(d["id_number"])
        age = info.age_on(dt.date.fromisoformat(d["published_at"]))
        assert age >= 18
        assert d["age"] == age
        assert d["gender"] == info.sex
        assert d["related"] == []


def test_explicit_measures_exist_in_the_catalog(sample: list[dict[str, Any]]) -> None:
    assert set(MEASURE_CODES) <= measure_codes()
    used: set[str] = set()
    for d in sample:
        if d["measures"] != ["*"]:
            assert d["measures"] == sorted(set(d["measures"]))
            used.update(d["measures"])
    assert used <= set(MEASURE_CODES)
    assert len(used) > 5


# -- write_jsonl --------------------------------------------------------------------------


def test_write_jsonl_round_trips(tmp_path: Path) -> None:
    entries = list(generate_entries(200, seed=9, entity_ratio=0.5))
    path = tmp_path / "sub" / "list.jsonl"
    assert write_jsonl(path, entries) == 200
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 200
    assert [json.loads(line) for line in lines] == entries
    assert "\\u" not in path.read_text(encoding="utf-8")  # non-ASCII kept, not escaped
    assert all('": ' not in line and '", "' not in line for line in lines)  # compact
    for line in lines[:20]:
        if not json.loads(line)["entry_id"].startswith("M"):
            parse_entry(line)
    assert list(tmp_path.joinpath("sub").iterdir()) == [path]  # no temporary file left


def test_write_jsonl_streams_a_generator(tmp_path: Path) -> None:
    path = tmp_path / "gen.jsonl"
    assert write_jsonl(path, generate_entries(1000, seed=1)) == 1000
    assert path.read_bytes().count(b"\n") == 1000


def test_write_jsonl_leaves_no_partial_file(tmp_path: Path) -> None:
    path = tmp_path / "list.jsonl"
    path.write_text("old\n", encoding="utf-8")

    def broken() -> Any:
        yield from generate_entries(10, seed=1)
        raise RuntimeError("source failed")

    with pytest.raises(RuntimeError):
        write_jsonl(path, broken())
    assert path.read_text(encoding="utf-8") == "old\n"
    assert list(tmp_path.iterdir()) == [path]


# -- speed --------------------------------------------------------------------------------


def test_speed_smoke() -> None:
    """100,000 entries in a few seconds (about 3-4 s of CPU on a slow shared 2-core VM).

    The bound is loose so that a loaded CI machine does not fail it; it catches the
    generator becoming quadratic or an order of magnitude slower.
    """
    start = time.process_time()
    count = sum(1 for _ in generate_entries(100_000, seed=1, minors=10, revoked_ratio=0.05))
    elapsed = time.process_time() - start
    assert count == 100_000
    assert elapsed < 15, f"100k entries took {elapsed:.1f} s of CPU"


@pytest.mark.slow
def test_one_million_entries_well_under_a_minute(request: pytest.FixtureRequest) -> None:
    if "slow" not in (request.config.getoption("markexpr") or ""):
        pytest.skip("a long run: select it with -m slow")
    start = time.process_time()
    count = sum(1 for _ in generate_entries(1_000_000, seed=1, revoked_ratio=0.05))
    elapsed = time.process_time() - start
    assert count == 1_000_000
    assert elapsed < 60, f"1M entries took {elapsed:.1f} s of CPU"


def test_restricted_changes_only_visibility_and_audience() -> None:
    plain = list(generate_entries(300, seed=4))
    marked = list(generate_entries(300, seed=4, restricted=30, audience=["x"]))
    changed = 0
    for a, b in zip(plain, marked, strict=True):
        if b["visibility"] == "restricted":
            changed += 1
            assert b["audience"] == ["x"]
            assert a == {**b, "visibility": "public", "audience": []}
        else:
            assert a == b
    assert changed == 30
