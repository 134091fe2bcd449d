"""The list entry model and ``parse_entry``.

Why: the publisher quarantines every entry ``parse_entry`` rejects, and everything the SDK
enforces comes from entries it accepted. So a valid entry must pass (from a dict and from a
JSON line, with identifiers normalised), and every kind of defect must be rejected with a
reason that names the field — all reasons of one entry together, so the quarantine report
says everything that is wrong at once.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest
from pydantic import ValidationError

from intercept_sdk import InterceptError, InvalidInput
from intercept_sdk._exceptions import InvalidEntry
from intercept_sdk._protocol.identifiers import id_check, uscc_check
from intercept_sdk._protocol.models import (
    ROLES,
    Entry,
    Related,
    fast_entry_dict,
    parse_entry,
    validate_entry,
)

PERSON: dict[str, Any] = {
    "entry_id": "E00000001",
    "case_no": "(2019)冀0203执123号",
    "subject_type": "person",
    "name": "张伟",
    "id_number": "360426199101010071",
    "gender": "男",
    "age": 28,
    "court": "唐山市路北区人民法院",
    "basis_doc_no": "(2018)冀0203民初1234号",
    "basis_issuer": "唐山市路北区人民法院",
    "obligation": "被执行人应于判决生效后十日内支付申请执行人货款人民币123456元及利息",
    "performance": "全部未履行",
    "situation": 1,
    "published_at": "2019-05-01",
    "filed_at": "2019-03-01",
    "performed_amount": "0",
    "unperformed_amount": "123456",
    "severity": 1,
    "measures": ["*"],
}

ENTITY: dict[str, Any] = {
    "entry_id": "E00000002",
    "case_no": "(2020)冀0202执恢45号",
    "subject_type": "entity",
    "name": "唐山市宏达建材有限公司",
    "uscc": "91110000600037341L",
    "org_code": "60003734-1",
    "legal_rep_name": "李娜",
    "court": "唐山市路南区人民法院",
    "basis_doc_no": "(2019)冀02民终987号",
    "basis_issuer": "河北省唐山市中级人民法院",
    "obligation": "被执行人应支付申请执行人工程款人民币1234567.89元，并负担案件受理费",
    "performance": "部分未履行",
    "situation": 3,
    "published_at": "2020-08-15",
    "filed_at": "2020-06-30",
    "performed_amount": "1000.5",
    "unperformed_amount": "1233567.39",
    "severity": 2,
    "valid_until": "2022-08-15",
    "status": "revoked",
    "revoked_at": "2021-01-05T09:30:00+08:00",
    "status_ground": "wrongly_listed",
    "visibility": "restricted",
    "audience": ["bank-a", "airline-b"],
    "measures": ["travel.flight", "consumption.star_hotel"],
    "related": [
        {"role": "legal_rep", "name": "李娜", "id_number": "120103198806018241"},
        {"role": "actual_controller", "name": "王强"},
    ],
}


def with_(base: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """A copy of ``base`` with fields changed; a value of ``...`` removes the field."""
    out = dict(base)
    for key, value in changes.items():
        if value is ...:
            out.pop(key, None)
        else:
            out[key] = value
    return out


def reasons_of(obj: Any, **kw: Any) -> list[str]:
    """Reasons of the InvalidEntry that ``parse_entry(obj)`` must raise."""
    with pytest.raises(InvalidEntry) as info:
        parse_entry(obj, **kw)
    assert type(info.value) is InvalidEntry
    assert info.value.reasons, "an InvalidEntry must say why"
    return info.value.reasons


def one_reason(obj: Any, *fragments: str) -> str:
    reasons = reasons_of(obj)
    assert len(reasons) == 1, reasons
    for fragment in fragments:
        assert fragment in reasons[0], (fragment, reasons[0])
    return reasons[0]


def adult_id(birth: dt.date, *, male: bool = True) -> str:
    body = f"110101{birth:%Y%m%d}12{1 if male else 2}"
    return body + id_check(body)


# -- valid entries ------------------------------------------------------------------------


def test_valid_person_from_dict() -> None:
    e = parse_entry(PERSON)
    assert isinstance(e, Entry)
    assert e.subject_type == "person"
    assert e.published_at == dt.date(2019, 5, 1)
    assert e.measures == ("*",)
    assert e.status == "active"
    assert e.visibility == "public"
    assert e.related == ()
    assert e.effective_org_code is None
    assert e.is_minor_listing() is False


def test_valid_entity_from_dict() -> None:
    e = parse_entry(ENTITY)
    assert e.uscc == "91110000600037341L"
    assert e.org_code == "600037341"  # hyphen removed
    assert e.effective_org_code == "600037341"
    assert e.revoked_at == dt.datetime(2021, 1, 5, 1, 30, tzinfo=dt.timezone.utc)
    assert e.related == (
        Related(role="legal_rep", name="李娜", id_number="120103198806018241"),
        Related(role="actual_controller", name="王强"),
    )
    assert e.audience == ("bank-a", "airline-b")
    assert e.is_minor_listing() is False


@pytest.mark.parametrize("base", [PERSON, ENTITY], ids=["person", "entity"])
def test_valid_entry_from_json_line(base: dict[str, Any]) -> None:
    line = json.dumps(base, ensure_ascii=False)
    from_text = parse_entry(line)
    assert from_text == parse_entry(base)
    assert parse_entry(line.encode("utf-8")) == from_text


@pytest.mark.parametrize("base", [PERSON, ENTITY], ids=["person", "entity"])
def test_to_json_dict_round_trips(base: dict[str, Any]) -> None:
    e = parse_entry(base)
    again = parse_entry(e.to_json_dict())
    assert again == e
    assert again.to_json_dict() == e.to_json_dict()
    assert parse_entry(json.dumps(e.to_json_dict(), ensure_ascii=False)) == e


def test_identifiers_come_out_normalised() -> None:
    e = parse_entry(with_(PERSON, id_number=" ３６０４２６ １９９１０１０１ ００７１ "))
    assert e.id_number == "360426199101010071"
    e = parse_entry(with_(PERSON, id_number="110223790813697", age=39))  # legacy 15 digits
    assert e.id_number == "110223197908136972"
    e = parse_entry(with_(ENTITY, uscc="91110000600037341l", org_code="６０００３７３４－１"))
    assert (e.uscc, e.org_code) == ("91110000600037341L", "600037341")
    rel = with_(ENTITY["related"][0], id_number="12010319880601824１")
    e = parse_entry(with_(ENTITY, related=[rel]))
    assert e.related[0].id_number == "120103198806018241"


def test_effective_org_code() -> None:
    only_uscc = parse_entry(with_(ENTITY, org_code=...))
    assert only_uscc.org_code is None
    assert only_uscc.effective_org_code == "600037341"
    only_org = parse_entry(with_(ENTITY, uscc=...))
    assert only_org.effective_org_code == "600037341"


def test_person_without_optional_gender_and_age() -> None:
    # Derived from the ID number (which is required); see docs/legal.md.
    e = parse_entry(with_(PERSON, gender=..., age=...))
    assert e.gender is None
    assert e.age is None


def test_age_may_differ_by_one_year() -> None:
    # The published age may be computed on another day than published_at.
    parse_entry(with_(PERSON, age=27))
    parse_entry(with_(PERSON, age=29))
    one_reason(with_(PERSON, age=30), "age", "inconsistent")
    one_reason(with_(PERSON, age=26), "age", "inconsistent")


def test_entry_is_immutable() -> None:
    e = parse_entry(PERSON)
    with pytest.raises(ValidationError):
        e.name = "李四"  # type: ignore[misc]


def test_measures_check_can_be_skipped() -> None:
    odd = with_(PERSON, measures=["travel.spaceflight"])
    assert parse_entry(odd, check_measures=False).measures == ("travel.spaceflight",)


def test_roles_are_the_catalog_roles() -> None:
    from intercept_sdk._protocol.catalog import ROLES as CATALOG_ROLES

    assert ROLES is CATALOG_ROLES  # one definition, imported (not a copy to keep in step)
    for role in ROLES:
        parse_entry(with_(ENTITY, related=[{"role": role, "name": "王强"}]))


# -- identifiers --------------------------------------------------------------------------


def test_bad_id_number_names_field_and_kind() -> None:
    reason = one_reason(with_(PERSON, id_number="360426199101010072"), "id_number")
    assert "invalid id_number" in reason
    assert "checksum expected 1 got 2" in reason
    assert "360426199101010072" not in reason  # never echoed


def test_bad_uscc_and_org_code_name_field_and_kind() -> None:
    reasons = reasons_of(with_(ENTITY, uscc="91110000600037341M", org_code="60003734-2"))
    assert any(r.startswith("uscc:") and "invalid uscc" in r for r in reasons), reasons
    assert any(r.startswith("org_code:") and "invalid org_code" in r for r in reasons), reasons
    assert len(reasons) == 2


def test_bad_related_id_number_names_its_place() -> None:
    rel = {"role": "legal_rep", "name": "李娜", "id_number": "120103198806018240"}
    reason = one_reason(with_(ENTITY, related=[rel]), "related.0.id_number", "invalid id_number")
    assert "checksum" in reason


def test_uscc_with_bad_embedded_org_code() -> None:
    body = "91110000600037342"
    one_reason(
        with_(ENTITY, uscc=body + uscc_check(body), org_code=...),
        "uscc",
        "embedded organisation code",
    )


def test_uscc_and_org_code_mismatch() -> None:
    # Both identifiers valid on their own, but the org code is not the embedded one.
    one_reason(with_(ENTITY, org_code="55138508-2"), "org_code", "differs")
    one_reason(with_(ENTITY, uscc="91110108551385082Q"), "org_code", "differs")


def test_identifier_of_wrong_type() -> None:
    reason = one_reason(with_(PERSON, id_number=360426199101010071), "id_number")
    assert "string" in reason


# -- subject rules ------------------------------------------------------------------------


def test_entity_needs_uscc_or_org_code() -> None:
    one_reason(with_(ENTITY, uscc=..., org_code=...), "uscc/org_code", "at least one")


def test_person_needs_id_number() -> None:
    one_reason(with_(PERSON, id_number=...), "id_number", "required")


def test_person_fields_on_an_entity_and_entity_fields_on_a_person() -> None:
    one_reason(with_(ENTITY, gender="男"), "only for a person")
    one_reason(with_(PERSON, uscc="91110000600037341L"), "only for an entity")
    one_reason(with_(PERSON, related=[{"role": "legal_rep", "name": "李娜"}]), "related")


def test_gender_inconsistent_with_id_number() -> None:
    one_reason(with_(PERSON, gender="女"), "gender", "inconsistent")


def test_minor_is_rejected() -> None:
    minor = adult_id(dt.date(2002, 5, 2))  # 16 on 2019-05-01
    reason = one_reason(with_(PERSON, id_number=minor, age=16), "minor")
    assert "16" in reason


def test_eighteenth_birthday_is_adult() -> None:
    born = adult_id(dt.date(2001, 5, 1))
    assert parse_entry(with_(PERSON, id_number=born, age=18)).is_minor_listing() is False
    day_later = adult_id(dt.date(2001, 5, 2))
    one_reason(with_(PERSON, id_number=day_later, age=17), "minor")


def test_is_minor_listing_on_an_unchecked_model() -> None:
    # parse_entry refuses minors, so build the model without the cross-field rules.
    data = with_(PERSON, id_number=adult_id(dt.date(2005, 1, 1)), age=14, measures=("*",))
    e = Entry.model_validate(data)
    assert e.is_minor_listing() is True
    with pytest.raises(InvalidEntry) as info:
        validate_entry(e)
    assert any("minor" in r for r in info.value.reasons)
    entity = parse_entry(ENTITY)
    assert entity.is_minor_listing() is False


def test_valid_until_before_published_at() -> None:
    one_reason(with_(PERSON, valid_until="2019-04-30", situation=2), "valid_until", "before")
    parse_entry(with_(PERSON, valid_until="2019-05-01", situation=2))


def test_filed_after_published() -> None:
    one_reason(with_(PERSON, filed_at="2019-05-02"), "filed_at")


def test_status_and_revoked_at_go_together() -> None:
    one_reason(with_(PERSON, status="revoked", status_ground="wrongly_listed"), "revoked_at")
    one_reason(with_(PERSON, revoked_at="2020-01-01T00:00:00Z"), "revoked_at")
    e = parse_entry(
        with_(
            PERSON, status="deleted", revoked_at="2020-01-01T00:00:00Z", status_ground="performed"
        )
    )
    assert e.revoked_at == dt.datetime(2020, 1, 1, tzinfo=dt.timezone.utc)


def test_a_withdrawn_entry_says_why() -> None:
    """A revoked or deleted entry carries its ground (法释〔2017〕7号 arts. 10-12): without
    one it is quarantined with the list of grounds; the fast path leaves it to the model."""
    withdrawn = with_(PERSON, status="deleted", revoked_at="2020-01-01T00:00:00Z")
    one_reason(withdrawn, "status_ground", "performed")
    known = frozenset({"travel.flight", "consumption.star_hotel"})
    assert fast_entry_dict(dict(withdrawn), known) is None


def test_revoked_at_needs_an_offset() -> None:
    changed = with_(PERSON, status="revoked", revoked_at="2020-01-01T08:00:00")
    one_reason(with_(changed, status_ground="wrongly_listed"), "revoked_at", "offset")


def test_restricted_needs_audience_and_public_has_none() -> None:
    one_reason(with_(ENTITY, audience=[]), "audience", "required")
    one_reason(with_(ENTITY, audience=...), "audience", "required")
    one_reason(with_(PERSON, audience=["bank-a"]), "audience", "only for a restricted")


def test_unknown_measure_codes() -> None:
    reason = one_reason(with_(PERSON, measures=["travel.spaceflight"]), "measures", "unknown")
    assert "travel.spaceflight" in reason
    reasons = reasons_of(with_(PERSON, measures=["travel.flight", "x.y", "z.w"]))
    assert len(reasons) == 2
    one_reason(with_(PERSON, measures=["*", "travel.flight"]), "measures", "alone")
    one_reason(with_(PERSON, measures=[]), "measures")


def test_real_measure_codes_are_accepted() -> None:
    codes = ["consumption.star_hotel", "travel.flight", "finance.credit", "bidding.tender"]
    assert parse_entry(with_(PERSON, measures=codes)).measures == tuple(codes)


def test_bad_case_number() -> None:
    one_reason(with_(PERSON, case_no="2019-冀0203-执-123"), "case_no")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("case_no", "(2019)冀0203执123号\n"),  # $ with .match accepted this
        ("entry_id", "E00000001\n"),
        ("published_at", "2019-05-01\n"),
        ("unperformed_amount", "123456\n"),
        ("performed_amount", "0\n"),
    ],
)
def test_a_trailing_newline_is_refused(field: str, value: str) -> None:
    """Every pattern matches the whole value: a trailing newline is not a valid ending."""
    reasons = reasons_of(with_(PERSON, **{field: value}))
    assert any(r.startswith(f"{field}:") for r in reasons), reasons
    line = json.dumps(with_(PERSON, **{field: value}), ensure_ascii=False)
    assert any(r.startswith(f"{field}:") for r in reasons_of(line))


@pytest.mark.parametrize("value", ["1٢3", "１23", "12.٣"])
def test_amounts_are_ascii_digits(value: str) -> None:
    """The amount rule is one pattern of ASCII digits, for the model and the fast path
    alike (the model's pattern used ``\\d``, which in pydantic's engine is any decimal)."""
    reasons = reasons_of(with_(PERSON, unperformed_amount=value))
    assert any(r.startswith("unperformed_amount:") for r in reasons), reasons


# -- value formats and strictness ---------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("published_at", "2019/05/01"),
        ("published_at", "2019-5-1"),
        ("published_at", "20190501"),
        ("published_at", "2019-02-30"),
        ("filed_at", 20190301),
        ("unperformed_amount", "12,345"),
        ("unperformed_amount", "12345.678"),
        ("unperformed_amount", "-1"),
        ("unperformed_amount", "0123"),
        ("unperformed_amount", 12345),
        ("performed_amount", "1e3"),
        ("severity", 4),
        ("severity", 0),
        ("severity", "1"),
        ("severity", True),
        ("gender", "M"),
        ("situation", 7),
        ("situation", 0),
        ("situation", 1.0),
        ("performance", "已履行"),
        ("performance", "未履行"),
        ("subject_type", "company"),
        ("status", "expired"),
        ("visibility", "private"),
        ("entry_id", "E 1"),
        ("entry_id", ""),
        ("name", ""),
        ("age", -1),
        ("measures", "*"),
    ],
)
def test_wrong_value_formats_name_the_field(field: str, value: Any) -> None:
    reasons = reasons_of(with_(PERSON, **{field: value}))
    assert any(r.startswith(f"{field}:") for r in reasons), reasons


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("published_at", "2019/05/01"),
        ("unperformed_amount", "12,345"),
        ("severity", 4),
        ("gender", "M"),
        ("situation", 7),
        ("performance", "其他"),
    ],
)
def test_wrong_value_formats_in_json_lines(field: str, value: Any) -> None:
    line = json.dumps(with_(PERSON, **{field: value}), ensure_ascii=False)
    reasons = reasons_of(line)
    assert any(r.startswith(f"{field}:") for r in reasons), reasons


def test_extra_unknown_fields_are_rejected() -> None:
    one_reason(with_(PERSON, nickname="小张"), "nickname")
    rel = {"role": "legal_rep", "name": "李娜", "phone": "13800000000"}
    one_reason(with_(ENTITY, related=[rel]), "related.0.phone")


def test_missing_required_field() -> None:
    one_reason(with_(PERSON, court=...), "court")


def test_unknown_role() -> None:
    one_reason(with_(ENTITY, related=[{"role": "shareholder", "name": "王强"}]), "related.0.role")


def test_not_json_or_not_an_object() -> None:
    reasons_of("{not json")
    reasons_of("[1, 2, 3]")
    reasons_of(b"\xff\xfe")


# -- several problems at once -------------------------------------------------------------


def test_several_field_problems_are_reported_together() -> None:
    bad = with_(
        PERSON,
        published_at="2019/05/01",
        unperformed_amount="12,345",
        severity=4,
        gender="M",
        id_number="360426199101010072",
        extra_field=1,
    )
    with pytest.raises(InvalidEntry) as info:
        parse_entry(bad)
    fields = {r.split(":", 1)[0] for r in info.value.reasons}
    assert fields == {
        "published_at",
        "unperformed_amount",
        "severity",
        "gender",
        "id_number",
        "extra_field",
    }
    assert info.value.entry_id == "E00000001"
    for reason in info.value.reasons:
        assert reason in str(info.value)


def test_several_rule_problems_are_reported_together() -> None:
    bad = with_(
        PERSON,
        situation=2,
        valid_until="2019-01-01",
        filed_at="2019-06-01",
        visibility="restricted",
        measures=["travel.spaceflight"],
        gender="女",
    )
    reasons = reasons_of(bad)
    assert len(reasons) == 5, reasons
    for fragment in ("valid_until", "filed_at", "audience", "travel.spaceflight", "gender"):
        assert any(fragment in r for r in reasons), (fragment, reasons)


def test_invalid_entry_is_an_intercept_error() -> None:
    assert issubclass(InvalidEntry, InvalidInput)
    assert issubclass(InvalidEntry, InterceptError)
    exc = InvalidEntry("E1", ["a: x", "b: y"])
    assert exc.entry_id == "E1"
    assert exc.reasons == ["a: x", "b: y"]
    assert str(exc) == "invalid entry E1: a: x; b: y"
    assert "<no entry_id>" in str(InvalidEntry(None, ["a: x"]))


def test_invalid_entry_from_dict_carries_entry_id() -> None:
    with pytest.raises(InvalidEntry) as info:
        parse_entry(with_(PERSON, severity=9))
    assert info.value.entry_id == "E00000001"
    with pytest.raises(InvalidEntry) as info:
        parse_entry(with_(PERSON, gender="女"))
    assert info.value.entry_id == "E00000001"


def test_invalid_entry_from_json_line_carries_entry_id() -> None:
    with pytest.raises(InvalidEntry) as info:
        parse_entry(json.dumps(with_(PERSON, severity=9), ensure_ascii=False))
    assert info.value.entry_id == "E00000001"


# -- entry rules of the texts (issue 18) -----------------------------------------------------


@pytest.mark.parametrize(
    ("performance", "performed", "unperformed", "fragment"),
    [
        ("全部未履行", "100", "123356", "全部未履行 but performed_amount"),
        ("部分未履行", "0", "123456", "部分未履行 needs"),
        ("全部未履行", "0", "0", "unperformed part"),
    ],
)
def test_performance_agrees_with_the_amounts(
    performance: str, performed: str, unperformed: str, fragment: str
) -> None:
    bad = with_(
        PERSON, performance=performance, performed_amount=performed, unperformed_amount=unperformed
    )
    one_reason(bad, fragment)
    one_reason(json.dumps(bad, ensure_ascii=False), fragment)


def test_non_monetary_obligation_can_be_expressed() -> None:
    ok = with_(
        PERSON,
        obligation="被执行人应于判决生效后十日内腾退并交付位于唐山市路北区某某小区3号楼的房屋",
        obligation_kind="non_monetary",
        unperformed_amount="0",
    )
    assert parse_entry(ok).obligation_kind == "non_monetary"
    one_reason(with_(ok, unperformed_amount="5"), "non-monetary")
    one_reason(with_(ok, obligation_kind="other"), "obligation_kind")


def test_listing_terms() -> None:
    two_years = with_(PERSON, situation=2, valid_until="2021-05-01")
    parse_entry(two_years)
    # without term_extension_years, the longest lawful term (2 + 3 years) bounds valid_until
    parse_entry(with_(PERSON, situation=2, valid_until="2024-05-01"))
    one_reason(with_(PERSON, situation=2, valid_until="2024-05-02"), "5-year term", "situation 2")
    one_reason(with_(PERSON, valid_until="2099-12-31"), "situation 1 has no fixed term")
    one_reason(with_(PERSON, situation=4, valid_until="2099-12-31"), "exceeds")
    # an extension of 1-3 years (violence, several dishonest acts) lengthens the term
    parse_entry(with_(two_years, valid_until="2024-05-01", term_extension_years=3))
    one_reason(with_(two_years, valid_until="2022-05-02", term_extension_years=1), "3-year")
    one_reason(with_(two_years, valid_until="2024-05-02", term_extension_years=3), "5-year term")
    one_reason(with_(two_years, term_extension_years=4), "term_extension_years")
    one_reason(with_(PERSON, situation=3, term_extension_years=1), "needs the valid_until")
    one_reason(with_(PERSON, term_extension_years=1), "situation 1")


def test_revocation_and_deletion_grounds() -> None:
    assert parse_entry(with_(ENTITY, status_ground="objection_upheld")).status_ground
    deleted = with_(ENTITY, status="deleted", status_ground="performed")
    parse_entry(deleted)
    one_reason(with_(ENTITY, status_ground="performed"), "not a ground for revoked")
    one_reason(with_(deleted, status_ground="wrongly_listed"), "not a ground for deleted")
    one_reason(with_(PERSON, status_ground="performed"), "only for a revoked or deleted")


def test_fast_path_defers_every_new_rule_to_the_model() -> None:
    """The publisher's fast path never accepts what parse_entry refuses (or decides on a
    field it does not know): it answers None and the model gives the reasons."""
    from intercept_sdk._protocol.catalog import measure_codes
    from intercept_sdk._protocol.models import fast_entry_dict

    known = measure_codes()
    assert fast_entry_dict(PERSON, known) is not None
    for bad in (
        with_(PERSON, performed_amount="5"),
        with_(PERSON, valid_until="2099-12-31"),
        with_(PERSON, situation=2, valid_until="2024-05-02"),
        with_(PERSON, obligation_kind="non_monetary"),
        with_(PERSON, status_ground="performed"),
    ):
        assert fast_entry_dict(bad, known) is None
        reasons_of(bad)


def test_an_entity_entry_names_its_legal_representative_or_principal() -> None:
    """法定代表人或者负责人姓名 is part of an entity's listing (SPC rule, seed 004): an
    entity without it is quarantined with that reason; a related legal_rep or principal
    with a name supplies it. The fast path defers every such case to the model."""
    known = frozenset({"travel.flight", "consumption.star_hotel"})
    active = with_(ENTITY, status="active", revoked_at=..., status_ground=...)
    assert fast_entry_dict(active, known) is not None  # the fast path takes entities
    nameless = with_(active, legal_rep_name=..., related=[])
    with pytest.raises(InvalidEntry, match="legal_rep_name"):
        parse_entry(nameless)
    assert fast_entry_dict(dict(nameless), known) is None
    with pytest.raises(InvalidEntry, match="legal_rep_name"):
        parse_entry(with_(ENTITY, legal_rep_name="  ", related=[]))
    principal = [{"role": "principal", "name": "王五"}]
    assert parse_entry(with_(ENTITY, legal_rep_name=..., related=principal)).related
    director = [{"role": "director", "name": "王五"}]
    with pytest.raises(InvalidEntry, match="legal_rep_name"):
        parse_entry(with_(ENTITY, legal_rep_name=..., related=director))


def test_situations_2_to_6_carry_a_term() -> None:
    """Situations 2-6 (SPC rule art. 2) are listed for 2 years (+1-3): an entry without
    ``valid_until`` is quarantined with that reason; situation 1 has none."""
    one_reason(with_(PERSON, situation=4, valid_until=...), "listed for a term")
    known = frozenset({"travel.flight", "consumption.star_hotel"})
    assert fast_entry_dict(with_(PERSON, situation=4, valid_until=...), known) is None
    assert parse_entry(with_(PERSON, situation=1, valid_until=...)).valid_until is None
