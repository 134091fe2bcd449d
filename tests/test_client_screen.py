"""screen() equals check(), subject by subject, on batches that exercise every rule; the
bulk paths behind it (own keys without probes, one shared allow Decision per batch, one
audit call per batch) give exactly what the one-by-one paths give; check()'s clock."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from _servers import publish_letting_minors_through
from intercept_sdk import Client, Decision, Entity, InvalidInput, Officer, Person
from intercept_sdk._client.audit import verify_audit
from intercept_sdk._client.decisions import KeyMaker, own_probe, probes_for
from intercept_sdk._protocol.signing import Envelope
from intercept_sdk.testing import TestPlatform, make_id_number, make_uscc
from intercept_sdk.testing.synth import valid_id_number

MEASURES = (
    "consumption.star_hotel",  # block; reaches legal_rep, principal ... not officers
    "supervision.key_target",  # monitor; reaches officers, not roles
    "finance.credit",  # review
    "travel.flight",
)
NOW = _dt.datetime(2026, 3, 10, 3, 0, tzinfo=_dt.timezone.utc)  # 11:00 in China


class Clock:
    def __init__(self, now: _dt.datetime) -> None:
        self.now = now

    def __call__(self) -> _dt.datetime:
        return self.now


class PersonSubclass(Person):
    """An application's own Person type: must be treated like a Person."""


class Mixed:
    """A site with every kind of entry a decision can meet, and a batch of subjects that
    hits each of them in every way (plus unlisted subjects around them)."""

    def __init__(self, base: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.clock = Clock(NOW)
        self.platform = p = TestPlatform(base, expires=30 * 86400, now=NOW)
        rng = random.Random(41)
        ids = {
            k: make_id_number(f"19{60 + i}-0{1 + i % 9}-1{i % 9}", seq=30 + i)
            for i, k in enumerate(
                ("listed", "revoked", "expired", "other_measures", "rep", "dup", "named")
            )
        }
        p.add_person(ids["listed"], publish=False)
        revoked = p.add_person(ids["revoked"], publish=False)
        p.revoke(revoked["entry_id"], publish=False)
        p.add_person(ids["expired"], valid_until="2026-03-09", situation=2, publish=False)
        p.add_person(ids["other_measures"], measures=["travel.flight"], publish=False)
        p.add_person(ids["named"], name="王五", publish=False)
        # the same person listed twice (two cases)
        p.add_person(ids["dup"], publish=False)
        p.add(p.person_entry(ids["dup"]), publish=False)
        self.minor = p.add_person(make_id_number("2010-01-01"), publish=False)
        self.company_uscc = make_uscc(rng)
        p.add_entity(
            self.company_uscc,
            related=[
                {"role": "legal_rep", "name": "赵六", "id_number": ids["rep"]},
                {"role": "director", "name": "孙七", "id_number": ids["listed"]},
                {"role": "principal", "name": "无证件人"},
            ],
            publish=False,
        )
        self.org_only_uscc = make_uscc(rng)
        p.add_entity(org_code=self.org_only_uscc[8:17], name="某某贸易公司", publish=False)
        self.uscc_only_org = make_uscc(rng)
        p.add_entity(self.uscc_only_org, publish=False)
        publish_letting_minors_through(p, monkeypatch)
        self.ids = ids
        officer = Person(ids["listed"])
        self.subjects: list[Person | Entity] = [
            Person(ids["listed"]),
            Person(ids["listed"], name="李四"),  # name mismatch: reason, same action
            Person(ids["named"], name="王 五"),  # same name after normalisation
            Person(ids["revoked"]),  # revoked: not published (site format 2)
            Person(ids["expired"]),
            Person(ids["other_measures"]),
            Person(ids["rep"]),  # legal_rep of a listed company
            Person(ids["dup"]),  # two entries
            Person(self.minor["id_number"]),  # never enforced, data error
            PersonSubclass(ids["listed"]),
            Entity(uscc=self.company_uscc),
            Entity(uscc=self.company_uscc, name="别的名字"),
            Entity(uscc=self.org_only_uscc),  # entry published with its org code only
            Entity(org_code=self.uscc_only_org[8:17]),  # entry published with its USCC
            Entity(uscc=make_uscc(rng), officers=[Officer("legal_rep", officer)]),
            Entity(
                uscc=make_uscc(rng),
                officers=[
                    Officer("director", officer),
                    Officer("supervisor", officer),  # the same person twice
                    Officer("legal_rep", Person(ids["rep"])),  # only *related*: no match
                ],
            ),
            Entity(uscc=make_uscc(rng), officers=[Officer("director", Person(ids["rep"]))]),
            Entity(uscc=self.company_uscc, officers=[Officer("director", officer)]),
            Entity(
                uscc=make_uscc(rng),
                officers=[Officer("director", Person(self.minor["id_number"]))],
            ),
        ]
        for _ in range(40):  # unlisted people and companies all around
            self.subjects.append(Person(valid_id_number(rng)))
            self.subjects.append(Entity(uscc=make_uscc(rng)))
        self.subjects.append(Person(ids["listed"]))  # a repeat, late in the batch
        rng.shuffle(self.subjects)

    def client(self, **options: Any) -> Client:
        return self.platform.client(clock=self.clock, **options)


@pytest.fixture
def mixed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Mixed]:
    m = Mixed(tmp_path, monkeypatch)
    yield m
    m.platform.close()


def _fields(d: Decision) -> dict[str, Any]:
    """Everything a decision says except when it was taken."""
    return {f.name: getattr(d, f.name) for f in dataclasses.fields(d) if f.name != "checked_at"}


def _audit_records(cache: Path) -> list[dict[str, Any]]:
    out = []
    for path in sorted((cache / "audit").glob("audit-*.jsonl")):
        for line in path.read_bytes().splitlines():
            obj = json.loads(line)
            if "checkpoint" not in obj and "gap" not in obj:
                out.append(obj)
    return out


@pytest.mark.parametrize("stale", [False, True])
@pytest.mark.parametrize("stale_action", ["review", "block"])
def test_screen_equals_check_for_every_subject(
    mixed: Mixed, stale: bool, stale_action: str
) -> None:
    screener = mixed.client(stale_action=stale_action)
    checker = mixed.client(stale_action=stale_action)
    if stale:
        mixed.clock.now = NOW + _dt.timedelta(hours=73)
    seen_actions: set[str] = set()
    for measure in MEASURES:
        for batch in (7, 2000):  # batches cut through the subjects, and one batch
            screened = list(screener.screen(mixed.subjects, measure, batch=batch))
            assert len(screened) == len(mixed.subjects)
            for s, d in zip(mixed.subjects, screened, strict=True):
                c = checker.check(s, measure)
                assert _fields(d) == _fields(c), (s, measure)
                assert d.stale == stale and d.checked_at == mixed.clock.now
                seen_actions.add(d.action)
    # the batch went through every rule
    blocks = not stale or stale_action == "block"
    assert seen_actions == {"review", "monitor", "allow"} | ({"block"} if blocks else set())
    first = [screener.check(s, MEASURES[0]) for s in mixed.subjects]
    reasons = {r for d in first for r in d.reasons}
    assert reasons >= {
        "listed",
        "name_mismatch",
        "expired",
        "measure_not_covered",
        "minor_not_enforced",
    }
    revoked = Person(mixed.ids["revoked"])
    # site format 2 publishes no revoked entry: that person is simply not listed
    (gone,) = [d for s, d in zip(mixed.subjects, first, strict=True) if s == revoked]
    assert gone.action == "allow" and gone.matches == () and gone.ignored == ()
    assert gone.reasons == (("stale",) if stale else ())
    reasons = {r for s in mixed.subjects for r in screener.check(s, MEASURES[1]).reasons}
    assert "relation_not_covered" in reasons
    # what each audited is the same, record for record (times aside)
    s_cache = Path(screener.status().cache_dir)
    c_cache = Path(checker.status().cache_dir)
    screener.close()
    checker.close()
    s_recs = _audit_records(s_cache)
    c_recs = _audit_records(c_cache)
    n = len(mixed.subjects) * len(MEASURES) * 2
    assert len(c_recs) == n and len(s_recs) == n + 2 * len(mixed.subjects)
    keep = ("measure", "action", "entries", "version")
    screened_recs = [r for i, r in enumerate(s_recs) if i < n]
    assert [{k: r[k] for k in keep} for r in screened_recs] == [
        {k: r[k] for k in keep} for r in c_recs
    ]
    # keys are pseudonyms under each cache's own secret: the same identifiers, one to one
    pairs = {(s["key"], c["key"]) for s, c in zip(screened_recs, c_recs, strict=True)}
    assert len(pairs) == len({s for s, _ in pairs}) == len({c for _, c in pairs})
    public = mixed.platform.subscriber_key_dir
    assert verify_audit(s_cache / "audit", public_key=public).ok
    assert verify_audit(c_cache / "audit", public_key=public).ok


def test_screen_reports_each_data_error_once(mixed: Mixed) -> None:
    c = mixed.client()
    decisions = list(c.screen(mixed.subjects * 2, "consumption.star_hotel", batch=5))
    assert sum(1 for d in decisions if d.data_errors) == 4  # the minor and the officer x 2
    queued = [Envelope.from_bytes(env).payload_json() for _, env in c._core.outbox.batch(100)]
    errors = [q["entry_id"] for q in queued if q["kind"] == "data_error"]
    assert errors == [mixed.minor["entry_id"]]


def test_watch_decisions_agree_with_check(mixed: Mixed) -> None:
    c = mixed.client()
    w = c.watch(mixed.subjects, "supervision.key_target", lambda changes: None)
    for i, s in enumerate(mixed.subjects):
        assert _fields(w.last[i]) == _fields(c.check(s, "supervision.key_target"))


def test_subjects_without_a_hit_share_one_frozen_allow_decision(tmp_path: Path) -> None:
    rng = random.Random(3)
    with TestPlatform(tmp_path) as p:
        listed = p.add_person()
        c = p.client()
        subjects: list[Person | Entity] = [Person(valid_id_number(rng)) for _ in range(50)]
        subjects += [Entity(uscc=make_uscc(rng)) for _ in range(50)]
        subjects.insert(10, Person(listed["id_number"]))
        decisions = list(c.screen(subjects, "travel.flight", batch=1000))
        allows = [d for d in decisions if d.action == "allow"]
        assert len(allows) == 100 and len({id(d) for d in allows}) == 1
        assert decisions[10].action == "block" and decisions[10] is not allows[0]
        shared = allows[0]
        with pytest.raises(dataclasses.FrozenInstanceError):
            shared.action = "block"  # type: ignore[misc]
        alone = c.check(subjects[0], "travel.flight")
        assert _fields(shared) == _fields(alone)
        # another batch gets its own (its own checked_at)
        again = list(c.screen(subjects[:3], "travel.flight"))
        assert again[0] is again[1] and again[0] is not shared


# -- keys -----------------------------------------------------------------------------------


def test_own_keys_are_the_keys_of_probes_for() -> None:
    rng = random.Random(5)
    km = KeyMaker(bytes(range(32)))
    officer = Person(valid_id_number(rng))
    subjects: list[Person | Entity] = [
        Person(valid_id_number(rng)),
        PersonSubclass(valid_id_number(rng)),
        Entity(uscc=make_uscc(rng)),
        Entity(org_code=make_uscc(rng)[8:17]),
        Entity(uscc=make_uscc(rng), officers=[Officer("director", officer)]),
        Person(valid_id_number(rng), name="张三"),
    ]
    keys, several = km.own_keys(subjects)
    other = KeyMaker(bytes(range(32)))  # its memo is empty: computed afresh
    expected = [probes_for(s, other.person, other.org) for s in subjects]
    assert keys == [ps[0].key for ps in expected]
    assert set(several) == {1, 4}
    assert several[1] == expected[1] and several[4] == expected[4]
    for i in (0, 2, 3, 5):
        assert [own_probe(subjects[i], keys[i])] == expected[i]
    # plain subjects' keys leave the check memo alone (only probes_for's go through it)
    assert set(km._memo) == {
        subjects[1].id_number,  # type: ignore[union-attr]
        subjects[4].effective_org_code,  # type: ignore[union-attr]
        officer.id_number,
    }
    with pytest.raises(InvalidInput):
        km.own_keys([subjects[0], "110101199003077777"])  # type: ignore[list-item]


# -- check(): the clock's high-water mark ------------------------------------------------------


def test_check_persists_the_clock_at_most_once_a_minute(tmp_path: Path) -> None:
    clock = Clock(NOW)
    with TestPlatform(tmp_path, expires=30 * 86400, now=NOW) as p:
        e = p.add_person()
        c = p.client(clock=clock)
        stored = Path(c.status().cache_dir) / "clock"
        first = stored.read_text()
        clock.now += _dt.timedelta(seconds=59)
        c.check(Person(e["id_number"]), "travel.flight")
        assert stored.read_text() == first  # not yet
        clock.now += _dt.timedelta(seconds=2)
        c.check(Person(e["id_number"]), "travel.flight")
        assert stored.read_text() != first
        assert _dt.datetime.fromisoformat(stored.read_text().replace("Z", "+00:00")) == (
            clock.now.replace(microsecond=0)
        )
        second = stored.read_text()
        clock.now += _dt.timedelta(seconds=30)
        c.check(Person(e["id_number"]), "travel.flight")
        assert stored.read_text() == second  # a minute after the last write, not the sync
