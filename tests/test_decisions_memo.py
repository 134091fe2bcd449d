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
