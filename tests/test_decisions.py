"""Decision rules, end to end: real signed sites (TestPlatform), a real verifying client.

Every rule of the "Decisions: check, block, screen and watch" issue has a test here: who
is matched (identifiers, never names), through which relation, for each required
measure, which entries count (active, covering the measure, not expired, not a minor's),
staleness, and never answering without a list. Expected actions are written out by hand
(not derived from the catalog) so that a catalog or rule regression fails a test.
"""

from __future__ import annotations

import datetime as _dt
import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from _servers import publish_letting_minors_through
from intercept_sdk import (
    Client,
    Decision,
    Entity,
    InvalidIdentifier,
    InvalidInput,
    NeverSynced,
    Officer,
    Person,
    UnknownMeasure,
    get_measure,
)
from intercept_sdk._client.decisions import (
    REASONS,
    KeyMaker,
    _was_minor,
    notice_text,
    strongest,
)
from intercept_sdk._protocol.keyedhash import identifier_key
from intercept_sdk._protocol.signing import Envelope
from intercept_sdk.testing import TestPlatform, make_id_number, make_uscc

CHINA = _dt.timezone(_dt.timedelta(hours=8))

# -- the expectations, by hand ----------------------------------------------------------

#: Action when the subject itself is listed, for every measure the issue requires.
SELF_ACTION = {
    "consumption.star_hotel": "block",
    "consumption.private_school": "block",
    "travel.flight": "block",
    "travel.rail_premium": "block",
    "realestate.purchase": "block",
    "procurement.supplier": "block",
    "bidding.tender": "block",
    "subsidy.application": "block",
    "office.civil_servant": "block",
    "office.soe_executive": "block",
    "finance.credit": "review",
    "policy.support": "review",
    "supervision.key_target": "monitor",
}
REQUIRED = tuple(SELF_ACTION)
ROLES = (
    "legal_rep",
    "principal",
    "actual_controller",
    "responsible_person",
    "director",
    "supervisor",
    "senior_manager",
)
#: The consumption restrictions reach the company's legal representative, principal,
#: actual controller and directly responsible persons (SPC rules on 限制高消费).
_CONSUMPTION_ROLES = {"legal_rep", "principal", "actual_controller", "responsible_person"}
ROLE_REACH: dict[str, set[str]] = {m: set() for m in REQUIRED}
for _m in (
    "consumption.star_hotel",
    "consumption.private_school",
    "travel.flight",
    "travel.rail_premium",
    "realestate.purchase",
):
    ROLE_REACH[_m] = _CONSUMPTION_ROLES
#: Measures that reach an entity whose declared officer (with these roles) is listed.
OFFICER_REACH: dict[str, set[str]] = {m: set() for m in REQUIRED}
# finance.credit: the text names 主要负责人 but not the directly responsible persons;
# policy.support names neither (法定代表人、实际控制人、董事、监事、高级管理人员).
OFFICER_REACH["finance.credit"] = set(ROLES) - {"responsible_person"}
OFFICER_REACH["policy.support"] = set(ROLES) - {"principal", "responsible_person"}
OFFICER_REACH["supervision.key_target"] = set(ROLES) - {"responsible_person"}


def test_hand_written_expectations_agree_with_the_catalog() -> None:
    for code in REQUIRED:
        m = get_measure(code)
        assert m.action == SELF_ACTION[code], code
        assert {r for r in ROLES if m.applies_to(r)} == ROLE_REACH[code], code
        assert {r for r in ROLES if m.applies_to(f"officer:{r}")} == OFFICER_REACH[code], code


# -- one published world for the matrix ---------------------------------------------------


class World:
    """A site with a listed person, a listed company with a related person in every role
    (one of them without an ID number), and a company published with only its
    organisation code; and a client synced to it."""

    def __init__(self, base: Path) -> None:
        self.platform = TestPlatform(base, expires=30 * 86400)
        p = self.platform
        self.debtor_id = make_id_number("1970-01-02", seq=11)
        self.debtor = p.add_person(self.debtor_id, name="张三", publish=False)
        self.role_ids = {
            role: make_id_number("1971-02-03", seq=20 + i) for i, role in enumerate(ROLES)
        }
        related: list[dict[str, Any]] = [
            {"role": role, "name": f"关联{i}", "id_number": idn}
            for i, (role, idn) in enumerate(self.role_ids.items())
        ]
        related.append({"role": "principal", "name": "无证件人"})  # shown, never matched
        self.company_uscc = make_uscc(random.Random(1))
        self.company = p.add_entity(
            self.company_uscc, related=related, name="唐山市某某建材有限公司", publish=False
        )
        self.org_only_uscc = make_uscc(random.Random(2))
        self.org_only = p.add_entity(
            org_code=self.org_only_uscc[8:17], name="唐山某某贸易公司", publish=False
        )
        p.publish()
        self.client = p.client()

    def subject(self, relation: str) -> Person | Entity:
        if relation == "self-person":
            return Person(self.debtor_id)
        if relation == "self-entity":
            return Entity(uscc=self.company_uscc)
        if relation.startswith("officer:"):
            return Entity(
                uscc=make_uscc(random.Random(relation)),
                officers=[Officer(relation[8:], Person(self.debtor_id))],
            )
        return Person(self.role_ids[relation])


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    w = World(tmp_path_factory.mktemp("world"))
    yield w
    w.platform.close()


def _expected(measure: str, relation: str) -> str:
    if relation.startswith("self"):
        return SELF_ACTION[measure]
    if relation.startswith("officer:"):
        return SELF_ACTION[measure] if relation[8:] in OFFICER_REACH[measure] else "allow"
    return SELF_ACTION[measure] if relation in ROLE_REACH[measure] else "allow"


RELATIONS = ("self-person", "self-entity", *ROLES, *(f"officer:{r}" for r in ROLES))


@pytest.mark.parametrize("measure", REQUIRED)
@pytest.mark.parametrize("relation", RELATIONS)
def test_every_required_measure_against_every_relation(
    world: World, measure: str, relation: str
) -> None:
    d = world.client.check(world.subject(relation), measure)
    expected = _expected(measure, relation)
    assert d.action == expected
    assert d.measure == measure and d.list_version >= 1 and not d.stale
    rel = "self" if relation.startswith("self") else relation
    if expected == "allow":
        assert d.matches == ()
        assert d.reasons == ("relation_not_covered",)
        assert [(i.relation, i.reason) for i in d.ignored] == [(rel, "relation_not_covered")]
    else:
        assert d.reasons == ("listed",)
        assert [m.relation for m in d.matches] == [rel]
        m = d.matches[0]
        assert m.case_no.startswith("(2024)冀0203执") and m.court == "唐山市路北区人民法院"
        assert m.unperformed_amount == "100000.00" and m.published_at == "2024-05-01"
        assert m.obligation and m.entry_id


def test_role_match_names_the_listed_company_and_the_matched_person(world: World) -> None:
    d = world.client.check(Person(world.role_ids["actual_controller"]), "travel.flight")
    (m,) = d.matches
    assert m.entry_id == world.company["entry_id"] and m.relation == "actual_controller"
    assert m.name == "唐山市某某建材有限公司" and m.subject_type == "entity"
    assert m.masked_id == world.company_uscc  # an entity's code is public, shown as published
    # Site format 2 publishes related persons by role only, naming the legal representative
    # alone (decision 0011): an actual controller is matched by the ID in hand, not named.
    assert m.matched_person is None
    # every related person is shown by role (the one published without an ID too), and no
    # related person carries a (masked) ID number or, except the legal rep, a name
    assert sorted(r.role for r in m.related) == sorted([*ROLES, "principal"])
    assert all(r.masked_id is None for r in m.related)
    assert {r.role: r.name for r in m.related}["legal_rep"] == "关联0"
    assert {r.name for r in m.related if r.role != "legal_rep"} == {""}
    # matched as the legal representative: the published name is the matched person
    rep = world.client.check(Person(world.role_ids["legal_rep"]), "travel.flight")
    (m,) = rep.matches
    assert m.relation == "legal_rep" and m.matched_person == "关联0"
    assert m.entry_id == world.company["entry_id"] and m.masked_id == world.company_uscc


def test_related_person_without_id_is_never_matched_by_name(world: World) -> None:
    # Same name as the related person published without an ID number: names never match.
    someone = Person(make_id_number("1980-06-06", seq=3), name="无证件人")
    d = world.client.check(someone, "consumption.star_hotel")
    assert d.action == "allow" and d.matches == () and d.reasons == ()


def test_names_never_block_an_unlisted_id(world: World) -> None:
    d = world.client.check(
        Person(make_id_number("1981-01-01", seq=7), name="张三"), "travel.flight"
    )
    assert d.action == "allow" and d.matches == ()


def test_name_mismatch_is_a_reason_and_never_changes_the_action(world: World) -> None:
    same = world.client.check(Person(world.debtor_id, name="张三"), "travel.flight")
    other = world.client.check(Person(world.debtor_id, name="李四"), "travel.flight")
    assert same.action == other.action == "block"
    assert same.reasons == ("listed",) and not same.matches[0].name_mismatch
    assert other.reasons == ("listed", "name_mismatch")
    assert other.matches[0].name_mismatch
    # whitespace and full-width variants are the same name, not a mismatch
    spaced = world.client.check(Person(world.debtor_id, name=" 张 三 "), "travel.flight")
    assert spaced.reasons == ("listed",)
    # for a role relation the name is compared with the related person's listed name
    rep = world.client.check(Person(world.role_ids["legal_rep"], name="关联0"), "travel.flight")
    assert rep.reasons == ("listed",)
    rep = world.client.check(Person(world.role_ids["legal_rep"], name="别人"), "travel.flight")
    assert rep.action == "block" and rep.reasons == ("listed", "name_mismatch")
    # and for an entity with the listed entity name
    ent = world.client.check(
        Entity(uscc=world.company_uscc, name="另一家公司"), "procurement.supplier"
    )
    assert ent.action == "block" and "name_mismatch" in ent.reasons


def test_uscc_query_matches_entry_published_with_org_code_only(world: World) -> None:
    d = world.client.check(Entity(uscc=world.org_only_uscc), "procurement.supplier")
    assert d.action == "block"
    assert [m.entry_id for m in d.matches] == [world.org_only["entry_id"]]
    assert d.matches[0].masked_id == world.org_only_uscc[8:17]


def test_org_code_query_matches_entry_published_with_uscc(world: World) -> None:
    org = world.company_uscc[8:17]
    for query in (org, f"{org[:8]}-{org[8]}", f"{org[:8].lower()}－{org[8]}"):
        d = world.client.check(Entity(org_code=query), "bidding.tender")
        assert d.action == "block", query
        assert d.matches[0].entry_id == world.company["entry_id"]
    both = world.client.check(Entity(uscc=world.company_uscc, org_code=org), "bidding.tender")
    assert both.action == "block"


def test_legacy_15_digit_id_matches_its_18_digit_listing(tmp_path: Path) -> None:
    with TestPlatform(tmp_path) as p:
        listed18 = p.add_person("110223197908136972", publish=False)
        # and an entry the court wrote with the legacy number, queried with the new one
        listed15 = p.add_person("110223800101001", publish=False)
        p.publish()
        c = p.client()
        d = c.check(Person("110223790813697"), "travel.flight")
        assert d.action == "block" and d.matches[0].entry_id == listed18["entry_id"]
        d = c.check(Person(Person("110223800101001").id_number), "travel.flight")
        assert d.action == "block" and d.matches[0].entry_id == listed15["entry_id"]


def test_officer_only_related_to_another_listed_company_does_not_make_entity_an_officer_match(
    world: World,
) -> None:
    # The legal representative of the listed company is not listed personally: an entity
    # declaring them as its own officer is not reached through officer:<role>.
    e = Entity(
        uscc=make_uscc(random.Random(99)),
        officers=[Officer("legal_rep", Person(world.role_ids["legal_rep"]))],
    )
    d = world.client.check(e, "supervision.key_target")
    assert d.action == "allow" and d.matches == () and d.ignored == ()


def test_entity_listed_itself_and_through_officers_lists_every_match(world: World) -> None:
    e = Entity(
        uscc=world.company_uscc,
        officers=[
            Officer("legal_rep", Person(world.debtor_id)),
            Officer("director", Person(world.debtor_id)),  # same person, two roles
        ],
    )
    d = world.client.check(e, "supervision.key_target")
    assert d.action == "monitor"
    assert [(m.entry_id, m.relation) for m in d.matches] == sorted(
        [
            (world.company["entry_id"], "self"),
            (world.debtor["entry_id"], "officer:director"),
            (world.debtor["entry_id"], "officer:legal_rep"),
        ]
    )
    assert d.entry_ids == tuple(dict.fromkeys(m.entry_id for m in d.matches))


def test_unknown_measure_raises_everywhere(world: World) -> None:
    c = world.client
    with pytest.raises(UnknownMeasure, match=r"did you mean 'travel\.flight'"):
        c.check(Person(world.debtor_id), "travel.flights")
    with pytest.raises(UnknownMeasure):
        c.block(Person(world.debtor_id), "nope.nope")
    with pytest.raises(UnknownMeasure):
        c.screen([Person(world.debtor_id)], "nope.nope")  # eagerly, before iteration
    with pytest.raises(UnknownMeasure):
        c.watch([Person(world.debtor_id)], "nope.nope", lambda ch: None)


def test_subject_must_be_person_or_entity(world: World) -> None:
    with pytest.raises(InvalidInput):
        world.client.check(world.debtor_id, "travel.flight")  # type: ignore[arg-type]


def test_reasons_are_a_fixed_vocabulary(world: World) -> None:
    assert set(REASONS) == {
        "listed",
        "name_mismatch",
        "revoked",
        "deleted",
        "expired",
        "measure_not_covered",
        "relation_not_covered",
        "minor_not_enforced",
        "stale",
    }
    d = world.client.check(Person(world.debtor_id, name="王五"), "travel.flight")
    assert all(r in REASONS for r in d.reasons)


# -- entries that do not count --------------------------------------------------------------


class FakeClock:
    """A settable UTC clock for ``Client(clock=...)``."""

    def __init__(self, now: _dt.datetime | None = None) -> None:
        self.now = now or _dt.datetime.now(_dt.timezone.utc)

    def __call__(self) -> _dt.datetime:
        return self.now

    def advance(self, **kw: float) -> None:
        self.now += _dt.timedelta(**kw)


def test_entry_not_covering_the_measure_does_not_count(tmp_path: Path) -> None:
    with TestPlatform(tmp_path) as p:
        e = p.add_person(measures=["travel.flight", "travel.rail_premium"])
        c = p.client()
        assert c.check(Person(e["id_number"]), "travel.flight").action == "block"
        d = c.check(Person(e["id_number"]), "consumption.star_hotel")
        assert d.action == "allow" and d.matches == ()
        assert d.reasons == ("measure_not_covered",)
        assert [(i.entry_id, i.reason) for i in d.ignored] == [
            (e["entry_id"], "measure_not_covered")
        ]


def test_strongest_action_among_counted_matches(tmp_path: Path) -> None:
    # A person listed once for consumption only and once for everything: the hotel check
    # counts both; the bidding check counts only the second.
    idn = make_id_number("1966-06-06", seq=1)
    with TestPlatform(tmp_path) as p:
        a = p.add_person(idn, measures=["consumption.star_hotel"], publish=False)
        b = p.add_person(idn, measures=["*"], publish=False)
        p.publish()
        c = p.client()
        d = c.check(Person(idn), "consumption.star_hotel")
        assert d.action == "block" and {m.entry_id for m in d.matches} == {
            a["entry_id"],
            b["entry_id"],
        }
        d = c.check(Person(idn), "bidding.tender")
        assert d.action == "block" and [m.entry_id for m in d.matches] == [b["entry_id"]]
        assert [i.entry_id for i in d.ignored] == [a["entry_id"]]
    assert strongest(["allow", "monitor", "review"]) == "review"
    assert strongest(["monitor", "block", "review"]) == "block"
    assert strongest([]) == "allow"


def test_expired_entry_does_not_count_even_offline(tmp_path: Path) -> None:
    clock = FakeClock(_dt.datetime(2026, 3, 10, 3, 0, tzinfo=_dt.timezone.utc))  # 11:00 CST
    with TestPlatform(tmp_path, expires=30 * 86400, now=clock.now) as p:
        e = p.add_person(valid_until="2026-03-10", situation=2)
        c = p.client(clock=clock)
        # the last valid day, in China
        assert c.check(Person(e["id_number"]), "travel.flight").action == "block"
        clock.now = _dt.datetime(2026, 3, 10, 15, 59, tzinfo=_dt.timezone.utc)  # 23:59 CST
        assert c.check(Person(e["id_number"]), "travel.flight").action == "block"
        # midnight in China: the term has ended, without any sync (offline)
        clock.now = _dt.datetime(2026, 3, 10, 16, 1, tzinfo=_dt.timezone.utc)  # 00:01 CST
        d = c.check(Person(e["id_number"]), "travel.flight")
        assert d.action == "allow" and not d.stale
        assert d.reasons == ("expired",)
        assert d.ignored[0].entry_id == e["entry_id"]


def test_revoked_after_a_delta(tmp_path: Path) -> None:
    with TestPlatform(tmp_path) as p:
        e = p.add_person()
        c = p.client()
        assert c.check(Person(e["id_number"]), "consumption.star_hotel").action == "block"
        p.revoke(e["entry_id"])
        result = c.sync()
        assert result.mode == "delta"
        # site format 2: a revoked entry leaves the site, so the delta removes its record
        assert result.changes is not None
        assert p.record_id(e["entry_id"]) in result.changes.removed
        d = c.check(Person(e["id_number"]), "consumption.star_hotel")
        assert d.action == "allow" and d.reasons == () and d.matches == () and d.ignored == ()
        assert d.list_version == result.to_version
        # deleted (removed from the list) leaves no trace at all either
        other = p.add_person()
        c.sync()
        assert c.check(Person(other["id_number"]), "travel.flight").blocked
        p.remove(other["entry_id"])
        result = c.sync()
        assert result.mode == "delta"
        d = c.check(Person(other["id_number"]), "consumption.star_hotel")
        assert d.action == "allow" and d.reasons == () and d.ignored == ()


def test_status_deleted_entry_is_not_enforced(tmp_path: Path) -> None:
    with TestPlatform(tmp_path) as p:
        e = p.add_person(status="deleted", revoked_at="2024-06-01T08:00:00+08:00")
        kept = p.add_person()
        c = p.client()
        d = c.check(Person(e["id_number"]), "travel.flight")
        # site format 2 does not publish a deleted entry at all: not listed, no reason
        assert d.action == "allow" and d.reasons == () and d.matches == () and d.ignored == ()
        assert c.status().entries == 1  # only the active entry reached the cache
        assert c.check(Person(kept["id_number"]), "travel.flight").blocked


# -- staleness ----------------------------------------------------------------------------------


def test_stale_after_max_staleness_downgrades_block_to_review(tmp_path: Path) -> None:
    clock = FakeClock()
    with TestPlatform(tmp_path, expires=30 * 86400, now=clock.now) as p:
        e = p.add_person()
        c = p.client(clock=clock)
        keep = p.client(clock=clock, stale_action="block")
        person = Person(e["id_number"])
        clock.advance(hours=71)
        assert c.check(person, "travel.flight").action == "block"
        assert not c.status().stale
        clock.advance(hours=2)  # 73 h after the last successful sync
        d = c.check(person, "travel.flight")
        assert d.stale and d.action == "review" and d.reasons == ("listed", "stale")
        assert "人工复核" in c.notice(d)
        assert c.status().stale
        # a monitor or review measure is unaffected by the downgrade
        assert c.check(person, "supervision.key_target").action == "monitor"
        # an unlisted person is still allowed, flagged stale
        other = c.check(Person(make_id_number("1990-01-01")), "travel.flight")
        assert other.action == "allow" and other.stale and other.reasons == ("stale",)
        # configured to keep blocking
        kept = keep.check(person, "travel.flight")
        assert kept.stale and kept.action == "block"
        # a successful sync (even with nothing new) makes the list fresh again
        assert c.sync().mode == "none"
        d = c.check(person, "travel.flight")
        assert not d.stale and d.action == "block"


def test_custom_max_staleness(tmp_path: Path) -> None:
    clock = FakeClock()
    with TestPlatform(tmp_path, now=clock.now) as p:
        e = p.add_person()
        c = p.client(clock=clock, max_staleness="30m")
        clock.advance(minutes=29)
        assert not c.check(Person(e["id_number"]), "travel.flight").stale
        clock.advance(minutes=2)
        assert c.check(Person(e["id_number"]), "travel.flight").action == "review"


def test_expired_manifest_is_stale(tmp_path: Path) -> None:
    clock = FakeClock()
    with TestPlatform(tmp_path, expires=3600, now=clock.now) as p:
        e = p.add_person()
        c = p.client(clock=clock)
        clock.advance(minutes=59)
        assert not c.check(Person(e["id_number"]), "travel.flight").stale
        clock.advance(minutes=2)  # long before max_staleness, but the manifest expired
        d = c.check(Person(e["id_number"]), "travel.flight")
        assert d.stale and d.action == "review"


def test_clock_never_goes_behind_the_last_successful_sync(tmp_path: Path) -> None:
    clock = FakeClock()
    with TestPlatform(tmp_path, expires=3600, now=clock.now) as p:
        e = p.add_person(valid_until=clock.now.astimezone(CHINA).date().isoformat(), situation=2)
        c = p.client(clock=clock)
        synced_at = clock.now
        clock.advance(days=-3)  # wall clock reset to an earlier date
        d = c.check(Person(e["id_number"]), "travel.flight")
        assert d.checked_at == synced_at and not d.stale and d.action == "block"
        # a new client on the same cache remembers it too (persisted at sync)
        c2 = Client(
            p.site_dir,
            p.trust_root,
            c.status().cache_dir,
            p.subscriber_id,
            subscriber_key=p.subscriber_key_dir,
            audit=False,
            clock=clock,
        )
        try:
            t = c2.check(Person(e["id_number"]), "travel.flight").checked_at
            assert synced_at - _dt.timedelta(seconds=1) < t <= synced_at  # second precision
        finally:
            c2.close()


def test_never_synced_raises_instead_of_allowing(tmp_path: Path) -> None:
    with TestPlatform(tmp_path) as p:
        p.add_person()
        c = p.client(sync=False)
        someone = Person(make_id_number("1990-02-02"))
        with pytest.raises(NeverSynced, match="never answers 'allow'"):
            c.check(someone, "travel.flight")
        with pytest.raises(NeverSynced):
            c.block(someone, "travel.flight")
        with pytest.raises(NeverSynced):
            list(c.screen([someone], "travel.flight"))
        assert c.status().stale and c.status().list_version is None
        c.sync()
        assert c.check(someone, "travel.flight").action == "allow"


# -- minors ----------------------------------------------------------------------------------


def test_minor_listing_is_never_enforced_and_is_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with TestPlatform(tmp_path) as p:
        minor = p.add_person(make_id_number("2008-01-01"), publish=False)
        # exactly 18 on the published date: enforced; one day younger: not
        adult18 = p.add_person(make_id_number("2006-05-01"), publish=False)
        day_short = p.add_person(make_id_number("2006-05-02"), publish=False)
        publish_letting_minors_through(p, monkeypatch)
        c = p.client()
        d = c.check(Person(minor["id_number"]), "consumption.star_hotel")
        assert d.action == "allow" and d.matches == ()
        assert d.reasons == ("minor_not_enforced",)
        assert d.data_errors == (minor["entry_id"],)
        assert c.check(Person(adult18["id_number"]), "consumption.star_hotel").action == "block"
        d2 = c.check(Person(day_short["id_number"]), "consumption.star_hotel")
        assert d2.action == "allow" and d2.data_errors == (day_short["entry_id"],)
        # as an entity's officer the minor's listing does not count either
        e = Entity(uscc=make_uscc(), officers=[Officer("director", Person(minor["id_number"]))])
        d3 = c.check(e, "supervision.key_target")
        assert d3.action == "allow" and d3.data_errors == (minor["entry_id"],)
        # reported as data errors, once per entry, queued durably
        c.check(Person(minor["id_number"]), "travel.flight")
        kinds = [Envelope.from_bytes(env).payload_json() for _, env in c._core.outbox.batch(100)]
        errors = sorted(k["entry_id"] for k in kinds if k["kind"] == "data_error")
        assert errors == sorted([minor["entry_id"], day_short["entry_id"]])
        assert all(k["outcome"] == "not_enforced" for k in kinds if k["kind"] == "data_error")


def test_was_minor_boundaries() -> None:
    leap = make_id_number("2004-02-29")
    assert _was_minor(leap, "20220228")  # 17 the day before the 18th "birthday"
    assert not _was_minor(leap, "20220301")  # of age on 1 March of a common year
    assert _was_minor(make_id_number("2000-12-31"), "20181230")
    assert not _was_minor(make_id_number("2000-12-31"), "20181231")
    assert not _was_minor(leap, "")  # no date: cannot tell, not a data error
    # what decisions compare with: the Person's 18th birthday, derived once
    assert Person(leap)._adult_on == "20220229"
    assert Person(make_id_number("2000-12-31"))._adult_on == "20181231"
    assert Person(leap) == Person(leap, None) and "_adult_on" not in repr(Person(leap))


# -- subjects ---------------------------------------------------------------------------------


def test_person_normalises_and_validates() -> None:
    assert Person("36042619910101007１").id_number == "360426199101010071"  # full-width 1
    assert Person(" 110223790813697 ").id_number == "110223197908136972"
    assert Person("11010519491231002x").id_number.endswith("X")
    assert Person("360426199101010071", name="  张三 ").name == "张三"
    assert Person("360426199101010071", name="  ").name is None
    with pytest.raises(InvalidIdentifier, match="checksum"):
        Person("360426199101010072")
    with pytest.raises(InvalidIdentifier):
        Person("12345")
    with pytest.raises(InvalidInput):
        Person("360426199101010071", name=5)  # type: ignore[arg-type]


def test_person_repr_masks_the_id_number() -> None:
    p = Person("360426199101010071", name="张三")
    assert "360426199101010071" not in repr(p)
    assert "3604**********0071" in repr(p)
    e = Entity(uscc="91110000600037341L", officers=[Officer("legal_rep", p)])
    assert "360426199101010071" not in repr(e)
    assert p.birth_date == _dt.date(1991, 1, 1) and p.age_on(_dt.date(2009, 1, 1)) == 18


def test_entity_normalises_and_validates() -> None:
    e = Entity(uscc="91110000600037341l", name="x")
    assert e.uscc == "91110000600037341L" and e.effective_org_code == "600037341"
    assert Entity(org_code="60003734-1").org_code == "600037341"
    assert Entity(uscc="91110000600037341L", org_code="600037341").org_code == "600037341"
    with pytest.raises(InvalidInput, match="needs a uscc or an org_code"):
        Entity(name="只有名字")
    with pytest.raises(InvalidIdentifier):
        Entity(uscc="91110000600037341X")
    with pytest.raises(InvalidIdentifier):
        Entity(org_code="60003734-2")
    with pytest.raises(InvalidInput, match="embedded"):
        Entity(uscc="91110000600037341L", org_code="551385082")
    with pytest.raises(InvalidInput, match="Officer"):
        Entity(uscc="91110000600037341L", officers=[Person("360426199101010071")])  # type: ignore[list-item]
    with pytest.raises(InvalidInput, match="role"):
        Officer("boss", Person("360426199101010071"))
    with pytest.raises(InvalidInput):
        Officer("director", "360426199101010071")  # type: ignore[arg-type]
    assert isinstance(Entity(uscc="91110000600037341L", officers=[]).officers, tuple)


# -- results ---------------------------------------------------------------------------------


def test_decision_to_dict_is_json_without_plaintext_ids(world: World) -> None:
    d = world.client.check(Person(world.role_ids["legal_rep"], name="别名"), "travel.flight")
    data = d.to_dict()
    text = json.dumps(data, ensure_ascii=False)
    for idn in (world.role_ids["legal_rep"], world.debtor_id, *world.role_ids.values()):
        assert idn not in text
    assert data["action"] == "block" and data["measure"] == "travel.flight"
    assert data["measure_title"] == get_measure("travel.flight").title
    assert data["reasons"] == ["listed", "name_mismatch"]
    assert data["stale"] is False and data["list_version"] == d.list_version
    assert _dt.datetime.fromisoformat(data["checked_at"]) == d.checked_at
    (m,) = data["matches"]
    assert m["relation"] == "legal_rep" and m["name_mismatch"] is True
    assert m["case_no"] == d.matches[0].case_no and m["court"] == d.matches[0].court
    assert {"role", "name", "masked_id"} <= set(m["related"][0])
    assert data["ignored"] == [] and data["data_errors"] == []
    assert "valid_until" not in m  # None fields are left out
    assert isinstance(d, Decision) and d.blocked


def test_notice_text_says_what_where_and_how_to_object(world: World) -> None:
    d = world.client.check(Person(world.debtor_id), "consumption.private_school")
    text = notice_text(d, "某某外国语学校")
    m = d.matches[0]
    assert m.case_no in text and m.court in text
    assert get_measure("consumption.private_school").title in text
    assert "书面申请纠正" in text and "执行法院" in text
    assert "向某某外国语学校申请复核" in text
    assert "张三" in text and "100000.00" in text
    assert world.debtor_id not in text
    rep = world.client.check(Person(world.role_ids["legal_rep"]), "travel.flight")
    assert "唐山市某某建材有限公司的法定代表人" in notice_text(rep)
    assert "向本单位申请复核" in notice_text(rep)


def test_key_maker_agrees_with_the_publisher() -> None:
    rng = random.Random(3)
    for size in (16, 32, 64, 65, 100):
        hk = rng.randbytes(size)
        km = KeyMaker(hk)
        for _ in range(20):
            idn = make_id_number(
                f"19{rng.randrange(30, 99)}-0{rng.randrange(1, 9)}-1{rng.randrange(0, 9)}"
            )
            org = make_uscc(rng)[8:17]
            assert km.person(idn) == identifier_key(hk, "id", idn)
            assert km.org(org) == identifier_key(hk, "org", org)
            assert km.person(idn) == identifier_key(hk, "id", idn)  # memoised, same answer
    km = KeyMaker(b"k" * 32)
    for i in range(KeyMaker.MEMO_SIZE + 10):  # the memo stays bounded
        km.org(f"{i:09d}")
    assert len(km._memo) <= KeyMaker.MEMO_SIZE


def test_closed_client_refuses(tmp_path: Path) -> None:
    with TestPlatform(tmp_path) as p:
        e = p.add_person()
        c: Client = p.client()
        c.close()
        c.close()  # idempotent
        from intercept_sdk import ClientClosed

        with pytest.raises(ClientClosed):
            c.check(Person(e["id_number"]), "travel.flight")


def test_china_date_is_the_calendar_date_in_china() -> None:
    from intercept_sdk._client.decisions import CHINA_TZ, china_date

    rng = random.Random(6)
    start = _dt.datetime(2016, 1, 1, tzinfo=_dt.timezone.utc)
    for _ in range(2000):
        t = start + _dt.timedelta(seconds=rng.randrange(0, 20 * 365 * 86400))
        assert china_date(t) == t.astimezone(CHINA_TZ).date().isoformat()
    eve = _dt.datetime(2026, 3, 10, 15, 59, 59, tzinfo=_dt.timezone.utc)
    assert china_date(eve) == "2026-03-10"
    assert china_date(eve + _dt.timedelta(seconds=1)) == "2026-03-11"
    assert china_date(eve.astimezone(CHINA_TZ)) == "2026-03-10"  # any zone, same instant
