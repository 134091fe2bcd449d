"""The durable restriction ledger (issue 17, client half): lifts due after a revocation,
deadlines in working days, restarts, overdue, lift reports, links, privacy.

Everything runs against a real signed TestPlatform (file site, or the reference server
over loopback HTTP where reports must arrive); the clock is injected with ``clock=``.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import stat
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from intercept_sdk import Client, Intercepted, Person
from intercept_sdk._client.ledger import LEDGER_FILE, Deadlines, Ledger, LedgerEvent
from intercept_sdk._exceptions import ConfigurationError, InvalidInput
from intercept_sdk._protocol.reports import CHINA_TZ
from intercept_sdk.testing import TestPlatform, make_id_number

HOTEL = "consumption.star_hotel"
REVIEW = "policy.preferential_treatment"
UTC = _dt.timezone.utc


class Clock:
    """A settable UTC clock for the client (``clock=``)."""

    def __init__(self, start: _dt.datetime) -> None:
        self.t = start

    def __call__(self) -> _dt.datetime:
        return self.t

    def advance(self, **kw: float) -> None:
        self.t += _dt.timedelta(**kw)


def _cst(y: int, m: int, d: int, h: int = 10) -> _dt.datetime:
    return _dt.datetime(y, m, d, h, tzinfo=CHINA_TZ).astimezone(UTC)


@pytest.fixture
def platform(tmp_path: Path) -> TestPlatform:
    # a month of manifest life, so the clock can move past lift deadlines and still sync
    p = TestPlatform(tmp_path, expires=40 * 86400)
    yield p
    p.close()


def _client(platform: TestPlatform, cache: Path, clock: Clock, **kw: Any) -> Client:
    return Client(
        str(platform.site_dir),
        platform.trust_root,
        cache,
        platform.subscriber_id,
        subscriber_key=platform.subscriber_key_dir,
        clock=clock,
        **kw,
    )


def _block(client: Client, idn: str, measure: str = HOTEL) -> Intercepted:
    with pytest.raises(Intercepted) as exc:
        client.block(Person(idn), measure, room="1808")
    return exc.value


# -- the done-when line: revocation -> lift due -> restart -> overdue -> lift -> closed ------


def test_revocation_lift_due_survives_restart_becomes_overdue_and_closes_on_lift(
    platform: TestPlatform, tmp_path: Path
) -> None:
    guest = platform.add_person(name="张三")
    other = platform.add_person(name="李四")
    clock = Clock(_dt.datetime.now(UTC))
    cache = tmp_path / "cache"
    events: list[LedgerEvent] = []
    client = _client(platform, cache, clock)
    client.listen(events.extend)
    client.sync()
    intercepted = _block(client, guest["id_number"])
    _block(client, other["id_number"])
    assert [r.state for r in client.restrictions()] == ["in_force", "in_force"]
    assert client.lifts() == [] and client.status().lifts_due == 0

    platform.revoke(guest["entry_id"])
    client.sync()
    (due,) = client.lifts()
    assert due.entry_id == guest["entry_id"] and due.end_reason == "removed"
    assert due.ref == intercepted.report_id  # the item is the interception's decision
    assert due.deadline == Deadlines().lift_deadline(clock.t)
    assert [e.kind for e in events] == ["lift_due"] and events[0].restriction.ref == due.ref
    st = client.status()
    assert (st.lifts_due, st.lifts_overdue, st.lift_deadline_days) == (1, 0, 3)
    client.close()

    # a new process on the same cache: the ledger alone knows
    clock2 = Clock(clock.t + _dt.timedelta(hours=1))
    again = _client(platform, cache, clock2)
    try:
        assert [r.ref for r in again.lifts()] == [due.ref]
        assert not again.lifts()[0].overdue(clock2.t)
        assert (again.status().lifts_due, again.status().lifts_overdue) == (1, 0)

        assert due.deadline is not None
        clock2.t = due.deadline + _dt.timedelta(seconds=1)
        assert again.lifts()[0].overdue(clock2.t)
        st = again.status()
        assert (st.lifts_due, st.lifts_overdue) == (1, 1)
        late: list[LedgerEvent] = []
        again.listen(late.extend)
        again.sync()  # a sync announces the newly overdue item, once
        again.sync()
        assert [e.kind for e in late] == ["lift_overdue"]

        report_id = again.report("lift", again.lifts()[0])
        assert [e.kind for e in late] == ["lift_overdue", "lifted"]
        assert again.lifts() == []
        st = again.status()
        assert (st.lifts_due, st.lifts_overdue) == (0, 0)
        closed = next(r for r in again.restrictions() if r.ref == due.ref)
        assert closed.state == "lifted" and closed.lift_report_id == report_id
        assert closed.lifted_late and closed.lift_latency is not None
        # the other guest's restriction is untouched
        assert [r.state for r in again.restrictions() if r.ref != due.ref] == ["in_force"]
    finally:
        again.close()


def test_lift_reported_before_deadline_is_not_overdue_after_restart(
    platform: TestPlatform, tmp_path: Path
) -> None:
    guest = platform.add_person()
    clock = Clock(_dt.datetime.now(UTC))
    client = _client(platform, tmp_path / "c", clock)
    client.sync()
    _block(client, guest["id_number"])
    platform.revoke(guest["entry_id"])
    client.sync()
    client.report("lift", guest["entry_id"], measure=HOTEL)  # by entry id: closes it
    client.close()
    clock.advance(days=30)
    again = _client(platform, tmp_path / "c", clock)
    try:
        st = again.status()
        assert (st.lifts_due, st.lifts_overdue) == (0, 0)
        (r,) = again.restrictions()
        assert r.state == "lifted" and not r.lifted_late
    finally:
        again.close()


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda p, e: p.remove(e), "removed"),
        # site format 2 publishes no revoked or deleted entry: it leaves the list
        (
            lambda p, e: p.update(e, status="deleted", revoked_at="2024-06-01T08:00:00+08:00"),
            "removed",
        ),
        (lambda p, e: p.revoke(e), "removed"),
    ],
)
def test_every_way_an_entry_leaves_the_list_makes_a_lift_due(
    platform: TestPlatform, tmp_path: Path, change: Any, reason: str
) -> None:
    guest = platform.add_person()
    clock = Clock(_dt.datetime.now(UTC))
    client = _client(platform, tmp_path / "c", clock)
    try:
        client.sync()
        _block(client, guest["id_number"])
        client.sync()  # nothing changed: nothing due
        assert client.lifts() == []
        change(platform, guest["entry_id"])
        client.sync()
        assert [r.end_reason for r in client.lifts()] == [reason]
    finally:
        client.close()


def test_a_listing_whose_term_passes_makes_a_lift_due(
    platform: TestPlatform, tmp_path: Path
) -> None:
    """The term the listing had when it was enforced (``valid_until``, a China date) ends
    the restriction the day after, with no new list version needed."""
    now = _dt.datetime.now(UTC)
    until = (now + _dt.timedelta(days=10)).astimezone(CHINA_TZ).date()
    guest = platform.add_person(situation=2, valid_until=until.isoformat())
    clock = Clock(now)
    client = _client(platform, tmp_path / "c", clock)
    try:
        client.sync()
        _block(client, guest["id_number"])
        client.sync()
        assert client.lifts() == []
        clock.t = now + _dt.timedelta(days=12)
        platform.publish()  # a new version, the entry unchanged
        client.sync()
        assert [r.end_reason for r in client.lifts()] == ["expired"]
    finally:
        client.close()


def test_repeated_enforcement_is_one_item_and_an_unchanged_list_keeps_it(
    platform: TestPlatform, tmp_path: Path
) -> None:
    guest = platform.add_person()
    unrelated = platform.add_person()
    client = _client(platform, tmp_path / "c", Clock(_dt.datetime.now(UTC)))
    try:
        client.sync()
        _block(client, guest["id_number"])
        _block(client, guest["id_number"])
        platform.revoke(unrelated["entry_id"])  # another entry changes
        client.sync()
        (r,) = client.restrictions()
        assert r.times == 2 and r.state == "in_force"
        assert client.check(Person(guest["id_number"]), HOTEL).action == "block"
    finally:
        client.close()


# -- deadlines ---------------------------------------------------------------------------


def test_lift_deadline_counts_working_days_in_china() -> None:
    d = Deadlines()
    # seen Friday 2026-03-06 10:00 CST: Mon, Tue, Wed -> overdue from Thursday 00:00 CST
    assert d.lift_deadline(_cst(2026, 3, 6)) == _dt.datetime(2026, 3, 12, tzinfo=CHINA_TZ)
    # Friday 23:30 CST is still Friday in China (already Friday 15:30 UTC)
    late = _dt.datetime(2026, 3, 6, 23, 30, tzinfo=CHINA_TZ)
    assert d.lift_deadline(late) == _dt.datetime(2026, 3, 12, tzinfo=CHINA_TZ)
    # seen Tuesday -> Wed, Thu, Fri
    assert d.lift_deadline(_cst(2026, 3, 3)) == _dt.datetime(2026, 3, 7, tzinfo=CHINA_TZ)


def test_lift_deadline_skips_holidays_and_counts_extra_workdays() -> None:
    # 2026-09-30 (Wed) seen; 10-01..10-07 National Day; Sunday 10-11 worked (调休)
    holidays = [f"2026-10-0{i}" for i in range(1, 8)]
    d = Deadlines.of(3, 30, holidays, ["2026-10-11"])  # Thu 8, Fri 9, Sun 11
    assert d.lift_deadline(_cst(2026, 9, 30)) == _dt.datetime(2026, 10, 12, tzinfo=CHINA_TZ)
    d2 = Deadlines.of(3, 30, holidays, ["2026-10-10", "2026-10-11"])
    assert d2.lift_deadline(_cst(2026, 9, 30)) == _dt.datetime(2026, 10, 11, tzinfo=CHINA_TZ)
    d5 = Deadlines.of(lift_deadline_days=5)
    assert d5.lift_deadline(_cst(2026, 3, 6)) == _dt.datetime(2026, 3, 14, tzinfo=CHINA_TZ)


@pytest.mark.parametrize(
    "options",
    [
        {"lift_deadline_days": 0},
        {"lift_deadline_days": True},
        {"lift_deadline_days": "3"},
        {"feedback_due_days": 0},
        {"feedback_due_days": 400},
        {"holidays": "2026-10-01"},
        {"holidays": ["2026-13-01"]},
        {"holidays": [_dt.datetime(2026, 10, 1)]},
        {"holidays": ["2026-10-01"], "extra_workdays": ["2026-10-01"]},
    ],
)
def test_bad_deadline_options_raise_configuration_error(
    platform: TestPlatform, tmp_path: Path, options: dict[str, Any]
) -> None:
    with pytest.raises(ConfigurationError):
        _client(platform, tmp_path / "c", Clock(_dt.datetime.now(UTC)), **options)


def test_configured_deadlines_show_in_status_and_the_summary(
    platform: TestPlatform, tmp_path: Path
) -> None:
    clock = Clock(_cst(2026, 2, 10))
    platform.now = clock.t
    guest = platform.add_person()
    client = _client(platform, tmp_path / "c", clock, feedback_due_days=15, lift_deadline_days=5)
    try:
        client.sync()
        _block(client, guest["id_number"])
        platform.revoke(guest["entry_id"])
        client.sync()
        st = client.status()
        assert (st.feedback_due_days, st.lift_deadline_days) == (15, 5)
        assert st.to_dict()["feedback_due_days"] == 15
        # Q1 2026 ends 31 March: due 15 April under the local rule
        s = client.quarterly_summary(2026, 1)
        assert s["due_date"] == "2026-04-15"
        assert s["deadlines"] == {"feedback_due_days": 15, "lift_deadline_days": 5}
        assert s["restrictions"]["enforced"] == 1 and s["restrictions"]["lifts_due"] == 1
        assert s["restrictions"]["overdue_at_end"] == 1  # never lifted before 1 April
        (r,) = client.lifts()
        assert r.deadline == _dt.datetime(2026, 2, 18, tzinfo=CHINA_TZ)  # 5 working days
        json.dumps(st.to_dict())
    finally:
        client.close()


def test_default_summary_due_is_thirty_days(platform: TestPlatform, tmp_path: Path) -> None:
    platform.publish()
    client = _client(platform, tmp_path / "c", Clock(_dt.datetime.now(UTC)))
    try:
        client.sync()
        assert client.quarterly_summary(2026, 4)["due_date"] == "2027-01-30"
        assert client.status().feedback_due_days == 30
    finally:
        client.close()


# -- overdue quarterly summary: warned and uploaded as soon as possible ------------------------


def test_overdue_summary_is_warned_and_uploaded_at_once(
    platform: TestPlatform, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # 20 May 2026: Q1's summary was due on 30 April; this unit (its ledger) has existed
    # since February and never filed it.
    clock = Clock(_cst(2026, 2, 10))
    platform.now = _cst(2026, 5, 20)
    platform.publish()
    Ledger(tmp_path / "c", clock=clock).close()  # the cache existed since February
    clock.t = _cst(2026, 5, 20)
    offline = _client(platform, tmp_path / "c", clock)  # file platform: no sender
    try:
        with caplog.at_level(logging.WARNING, logger="intercept_sdk"):
            offline.sync()
        st = offline.status()
        assert st.summaries_overdue == ("2026Q1",)
        assert st.summary_due == _dt.date(2026, 4, 30)
        assert any("2026Q1" in r.getMessage() and "due" in r.getMessage() for r in caplog.records)
    finally:
        offline.close()
    with platform.serve() as server:
        online = Client(
            server.url,
            platform.trust_root,
            tmp_path / "c",
            platform.subscriber_id,
            subscriber_key=platform.subscriber_key_dir,
            clock=clock,
            push=False,
        )
        try:
            online.sync()  # no flush_reports(): the overdue summary leaves by itself
            deadline = time.monotonic() + 15
            got: list[dict[str, Any]] = []
            while time.monotonic() < deadline and not got:
                got = [
                    _payload(r)
                    for r in httpx.get(
                        f"{server.url}/reports",
                        params={"kind": "quarterly_summary"},
                        headers=server.operator_headers(),
                    )
                    .raise_for_status()
                    .json()
                ]
                time.sleep(0.1)
            assert got, "the overdue summary was not uploaded"
            details = got[0]["details"]
            assert (details["year"], details["quarter"]) == (2026, 1)
            assert online.status().summaries_overdue == ()
            assert online.status().summary_due == _dt.date(2026, 7, 30)
        finally:
            online.close()


# -- links: review outcomes and objections concern a decision ---------------------------------


def test_review_outcome_and_objection_are_linked_to_their_decision(
    platform: TestPlatform, tmp_path: Path
) -> None:
    guest = platform.add_person(measures=[HOTEL, REVIEW])
    clock = Clock(_dt.datetime.now(UTC))
    with platform.serve() as server:
        client = Client(
            server.url,
            platform.trust_root,
            tmp_path / "c",
            platform.subscriber_id,
            subscriber_key=platform.subscriber_key_dir,
            clock=clock,
            push=False,
        )
        try:
            client.sync()
            review = client.block(Person(guest["id_number"]), REVIEW)  # review: returned
            assert review.action == "review"
            intercepted = _block(client, guest["id_number"])
            by_measure = {r.measure: r for r in client.restrictions()}
            assert by_measure[REVIEW].action == "review"
            assert by_measure[HOTEL].ref == intercepted.report_id

            outcome_id = client.report("review_outcome", review, outcome="upheld")
            objection_id = client.report("objection", intercepted, grounds="已履行完毕")
            links = client._core.ledger.links(by_measure[REVIEW].ref)
            assert [(x.report_id, x.kind, x.outcome) for x in links] == [
                (outcome_id, "review_outcome", "upheld")
            ]
            assert [x.report_id for x in client._core.ledger.links(intercepted.report_id)] == [
                objection_id
            ]
            assert client.flush_reports(15)
            stored = httpx.get(
                f"{server.url}/reports", params={"limit": 100}, headers=server.operator_headers()
            ).json()
            by_id = {_payload(r)["report_id"]: _payload(r) for r in stored}
            assert by_id[outcome_id]["details"]["decision_ref"] == by_measure[REVIEW].ref
            # the platform can join the objection to the interception it concerns
            assert by_id[objection_id]["details"]["decision_ref"] == intercepted.report_id
            assert intercepted.report_id in by_id
        finally:
            client.close()


def _payload(stored: dict[str, Any]) -> dict[str, Any]:
    return stored.get("payload", stored)


def test_unknown_decision_ref_is_a_typed_error(platform: TestPlatform, tmp_path: Path) -> None:
    guest = platform.add_person()
    client = _client(platform, tmp_path / "c", Clock(_dt.datetime.now(UTC)))
    try:
        client.sync()
        with pytest.raises(InvalidInput):
            client.report("lift", guest["entry_id"], measure=HOTEL, decision_ref="0" * 32)
        with pytest.raises(InvalidInput):
            client.report("interception", guest["entry_id"], decision_ref="x")
    finally:
        client.close()


# -- privacy -----------------------------------------------------------------------------


def test_ledger_file_is_private_and_holds_no_plaintext_id(
    platform: TestPlatform, tmp_path: Path
) -> None:
    guests = [platform.add_person(name=n) for n in ("王五", "赵六")]
    cache = tmp_path / "c"
    client = _client(platform, cache, Clock(_dt.datetime.now(UTC)))
    try:
        client.sync()
        for g in guests:
            _block(client, g["id_number"])
        platform.revoke(guests[0]["entry_id"])
        client.sync()
        client.report("lift", client.lifts()[0])
    finally:
        client.close()
    path = cache / LEDGER_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    blob = b"".join(p.read_bytes() for p in cache.iterdir() if p.name.startswith(LEDGER_FILE))
    assert blob  # the ledger holds the two restrictions
    for g in guests:
        idn = g["id_number"]
        for form in (idn, idn[:6] + idn[8:17]):  # and the legacy 15-digit form
            assert form.encode() not in blob
            assert form.encode("utf-16-le") not in blob
        assert g["name"].encode() not in blob
        assert g["entry_id"].encode() in blob  # entries are the platform's own ids


def test_pseudonyms_depend_on_the_cache_secret(tmp_path: Path) -> None:
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
    a, b = Ledger(tmp_path / "a"), Ledger(tmp_path / "b")
    try:
        person = Person(make_id_number())
        assert a.pseudonym(person) == a.pseudonym(person)
        assert a.pseudonym(person) != b.pseudonym(person)
        assert len(a.pseudonym(person)) == 32
    finally:
        a.close()
        b.close()


# -- the CLI -------------------------------------------------------------------------------


def test_cli_lifts_lists_reports_and_fails_on_overdue(
    platform: TestPlatform, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from intercept_sdk._cli.main import main

    guest = platform.add_person()
    env = platform.env(tmp_path / "cli-cache")
    clock = Clock(_dt.datetime.now(UTC) - _dt.timedelta(days=10))  # the CLI runs 10 days on
    client = _client(platform, Path(env["INTERCEPT_CACHE_DIR"]), clock)
    client.sync()
    _block(client, guest["id_number"])
    platform.revoke(guest["entry_id"])
    client.close()

    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        assert main(["lifts", "--fail-on-overdue"]) == 0  # not synced yet: nothing due
        assert "0 lifts due" in capsys.readouterr().out
        assert main(["lifts", "--sync", "--fail-on-overdue"]) == 0  # due in 3 working days
        out = capsys.readouterr().out
        assert "1 lifts due, 0 overdue" in out and guest["entry_id"] in out
        assert guest["id_number"] not in out

        assert main(["lifts", "--json"]) == 0
        data = json.loads(capsys.readouterr().out)
        (item,) = data["items"]
        assert item["end_reason"] == "removed" and item["overdue"] is False

        assert main(["lifts", "--lift", item["ref"], "--all", "--json"]) == 0
        out = capsys.readouterr().out
        data = json.loads(out[out.index("{") :])
        assert [i["state"] for i in data["items"]] == ["lifted"] and data["lifts_due"] == 0

        assert main(["lifts", "--lift", "f" * 32]) == 2  # unknown ref: usage error
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# -- the async face, subject narrowing, and a ledger that fails -------------------------------


def test_async_client_keeps_reviews_and_lists_lifts(platform: TestPlatform, tmp_path: Path) -> None:
    import asyncio

    from intercept_sdk import AsyncClient

    guest = platform.add_person(measures=[REVIEW])

    async def run() -> None:
        async with AsyncClient(
            str(platform.site_dir),
            platform.trust_root,
            tmp_path / "a",
            platform.subscriber_id,
            subscriber_key=platform.subscriber_key_dir,
        ) as client:
            got: list[LedgerEvent] = []
            client.listen(got.extend)
            await client.sync()
            d = await client.block(Person(guest["id_number"]), REVIEW)
            assert d.action == "review"
            assert [r.action for r in await client.restrictions()] == ["review"]
            platform.revoke(guest["entry_id"])
            await client.sync()
            assert [r.entry_id for r in await client.lifts()] == [guest["entry_id"]]
            assert [e.kind for e in got] == ["lift_due"]

    asyncio.run(run())


def test_subject_narrows_an_entry_to_one_restriction(
    platform: TestPlatform, tmp_path: Path
) -> None:
    rep, director = make_id_number(), make_id_number()
    firm = platform.add_entity(
        related=[
            {"role": "legal_rep", "name": "甲", "id_number": rep},
            {"role": "principal", "name": "乙", "id_number": director},
        ]
    )
    client = _client(platform, tmp_path / "c", Clock(_dt.datetime.now(UTC)))
    try:
        client.sync()
        _block(client, rep)
        _block(client, director)
        assert len(client.restrictions()) == 2
        platform.revoke(firm["entry_id"])
        client.sync()
        assert len(client.lifts()) == 2
        client.report("lift", firm["entry_id"], measure=HOTEL, subject=Person(rep))
        (left,) = client.lifts()
        assert left.relation == "principal"
        with pytest.raises(InvalidInput):
            client.report("lift", firm["entry_id"], subject="not a subject")
    finally:
        client.close()


def test_a_failing_ledger_never_turns_an_interception_into_an_error(
    platform: TestPlatform, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from intercept_sdk._exceptions import StoreError

    guest = platform.add_person()
    client = _client(platform, tmp_path / "c", Clock(_dt.datetime.now(UTC)))
    try:
        client.sync()

        def broken(*a: Any, **k: Any) -> list[str]:
            raise StoreError("disk full (injected)")

        monkeypatch.setattr(client._core.ledger, "record", broken)
        exc = _block(client, guest["id_number"])  # still Intercepted, still reported
        assert exc.report_id is not None
        monkeypatch.setattr(client._core.ledger, "reconcile", broken)
        platform.revoke(guest["entry_id"])
        client.sync()  # the sync succeeds; reconciling is retried after the next one
        assert client.status().list_version == platform.last.version  # type: ignore[union-attr]
    finally:
        client.close()
