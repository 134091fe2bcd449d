"""The parsed-record memo of the rules: found by entry id, used only for equal bytes."""

from __future__ import annotations

import datetime as _dt
import json
from dataclasses import dataclass

from intercept_sdk import Person, get_measure
from intercept_sdk._client import decisions as D
from intercept_sdk.testing import make_id_number

NOW = _dt.datetime(2026, 3, 10, 3, 0, tzinfo=_dt.timezone.utc)


@dataclass(frozen=True)
class FakeHit:
    entry_id: str
    relation: str
    key: bytes
    record: bytes


def _rec(**fields: object) -> bytes:
    base: dict[str, object] = {
        "entry_id": "E1",
        "status": "active",
        "measures": ["*"],
        "name": "张三",
        "case_no": "(2025)京01执1号",
        "court": "北京市第一中级人民法院",
        "published_at": "2025-01-02",
        "subject_type": "person",
        "id_masked": "1101**********1234",
        "obligation": "x",
        "unperformed_amount": "100",
    }
    base.update(fields)
    return json.dumps(base, ensure_ascii=False, sort_keys=True).encode()


def test_a_changed_record_under_the_same_entry_id_is_parsed_again() -> None:
    D._RECORDS.clear()
    active = _rec()
    first = D._record("E1", active)
    assert D._record("E1", bytes(active)) is first  # equal bytes: the memo
    revoked = D._record("E1", _rec(status="revoked"))
    assert revoked is not first and revoked.status == "revoked"
    assert D._record("E1", active).status == "active"


def test_decide_after_a_record_changed_under_its_entry_id() -> None:
    D._RECORDS.clear()
    m = get_measure("travel.flight")
    person = Person(make_id_number("1970-01-01"))
    key = b"k" * 16
    probes = [D.own_probe(person, key)]

    def decide(record: bytes) -> D.Decision:
        hits = [FakeHit("E1", "self", key, record)]
        return D.decide(
            m, probes, hits, list_version=1, stale=False, stale_action="review", now=NOW
        )

    assert decide(_rec()).action == "block"
    assert decide(_rec(status="revoked")).reasons == ("revoked",)
    expired = decide(_rec(valid_until="2026-03-09"))
    assert expired.action == "allow" and expired.reasons == ("expired",)
    listed = decide(_rec(valid_until="2026-03-10"))  # the last day, in China
    assert listed.action == "block" and listed.entry_ids == ("E1",)
    assert decide(_rec(measures=["travel.rail_premium"])).reasons == ("measure_not_covered",)


def test_the_one_key_path_decides_as_decide_does() -> None:
    """decide_own (check()'s path for a Person or an Entity without officers) writes the
    common case out by hand: it must answer exactly what decide() answers, whatever the
    record says (status, measures, term, publication date, minors, names, relations)."""
    import random

    rng = random.Random(7)
    measures = [get_measure(c) for c in ("travel.flight", "consumption.star_hotel")]
    relations = ["self", "legal_rep", "director", "actual_controller"]
    births = ["1970-01-01", "2008-03-11", "2008-03-10", "2007-03-09"]
    for i in range(600):
        D._RECORDS.clear() if i % 50 == 0 else None
        person = Person(make_id_number(rng.choice(births)), name=rng.choice([None, "张三", "李四"]))
        m = rng.choice(measures)
        fields: dict[str, object] = {
            "entry_id": f"E{i % 40}",
            "status": rng.choice(["active", "active", "revoked", "deleted"]),
            "measures": rng.choice([["*"], [m.code], ["finance.credit"]]),
            "published_at": rng.choice(["2025-01-02", "2026-03-10", "2024-02-29"]),
            "name": rng.choice(["张三", "李四", "张 三"]),
        }
        if rng.random() < 0.3:
            fields["valid_until"] = rng.choice(["2026-03-09", "2026-03-10", "2027-01-01"])
        relation = rng.choice(relations)
        if relation != "self":
            fields["related"] = [{"role": "legal_rep", "name": "王五"}, {"role": relation}]
        key = rng.choice([b"k" * 32, b"j" * 32])
        probe = D.Probe(key, person if rng.random() < 0.8 else None, None, person.name)
        hit = FakeHit(str(fields["entry_id"]), relation, b"k" * 32, _rec(**fields))
        for stale in (False, True):
            want = D.decide(
                m, [probe], [hit], list_version=3, stale=stale, stale_action="review", now=NOW
            )
            got = D.decide_own(m, probe, [hit], 3, stale, "review", NOW)
            assert got == want, (fields, relation, stale)
            assert got.__dict__.keys() == want.__dict__.keys()


def test_related_persons_are_read_as_published() -> None:
    """Nameless related persons share one object per role (an entity lists several);
    named ones, unknown roles and odd members are read exactly as the record says."""
    rec = D._Record(
        _rec(
            related=[
                {"role": "legal_rep", "name": "王五"},
                {"role": "director"},
                {"role": "supervisor", "id_masked": "1101**********1234"},
                {"role": "no_such_role"},
                "not an object",
                {"name": "无角色"},
            ]
        )
    )
    assert rec.related == (
        D.RelatedPerson("legal_rep", "王五", None),
        D.RelatedPerson("director", "", None),
        D.RelatedPerson("supervisor", "", "1101**********1234"),
        D.RelatedPerson("no_such_role", "", None),
        D.RelatedPerson("", "无角色", None),
    )
    again = D._Record(_rec(entry_id="E2", related=[{"role": "director"}]))
    assert again.related[0] is rec.related[1]
