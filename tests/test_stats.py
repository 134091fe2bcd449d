"""Statistics per unit, measure and quarter (issue 17, platform half).

The end-to-end test runs the reference platform on loopback, lets a real Client block
listed people and report, and checks that the platform's figures equal the reports the
unit sent (and its own quarterly summary). The other tests feed signed reports straight
into a real SQLite report store to pin deadlines, lift latency and the exports.
"""

from __future__ import annotations

import csv
import datetime as _dt
import io
import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from intercept_sdk import Intercepted, InvalidInput, Person
from intercept_sdk._platform.server.stats import (
    ALL_MEASURES,
    COLUMNS,
    StatsSource,
    compute,
    iter_reports,
    quarter_of,
    revocations_from_source,
    to_csv,
)
from intercept_sdk._platform.server.storage import ReportRow, SQLiteReportStore
from intercept_sdk._platform.units import Unit, save_unit
from intercept_sdk._protocol.deadlines import lift_deadline
from intercept_sdk._protocol.reports import CHINA_TZ, build_report, sign_report
from intercept_sdk._protocol.signing import SigningKey
from intercept_sdk.testing import TestPlatform

UTC = _dt.timezone.utc
HOTEL = "consumption.star_hotel"
FLIGHT = "travel.flight"
CREDIT = "finance.credit"
_ENTRIES = itertools.count(1)


def _unit(uid: str = "hotel-001", measures: tuple[str, ...] = (HOTEL, FLIGHT)) -> Unit:
    return Unit(uid, "唐山某某大酒店", "县文化广电和旅游局", "河北省唐山市", measures)


class _Store:
    """A real SQLite report store fed with reports signed by one unit's key."""

    def __init__(self, path: Path, uid: str = "hotel-001") -> None:
        self.store = SQLiteReportStore(path)
        self.store.open()
        self.key = SigningKey.generate()
        self.uid = uid

    def send(self, kind: str, when: _dt.datetime, **fields: Any) -> dict[str, Any]:
        fields.setdefault("subscriber_id", self.uid)
        if kind in ("interception", "review_outcome", "lift", "objection", "data_error"):
            fields.setdefault("entry_id", f"E{next(_ENTRIES):07d}")
        if kind == "interception":
            fields.setdefault("case_no", "(2024)冀0203执123号")
            fields.setdefault("list_version", 3)
            fields.setdefault("outcome", "blocked")
        if kind == "review_outcome":
            fields.setdefault("outcome", "upheld")
        if kind == "objection":
            fields.setdefault("details", {"grounds": "已履行"})
        if kind == "data_error":
            fields.setdefault("details", {"description": "minor"})
        payload = build_report(kind, now=when, **fields)
        env = sign_report(payload, self.key.private)
        row = ReportRow(
            payload["report_id"], payload["subscriber_id"], kind, payload["measure"],
            payload["entry_id"], payload["case_no"], payload["created_at"], env,
        )  # fmt: skip
        accepted, _ = self.store.insert([row])
        assert accepted == [payload["report_id"]]
        return dict(payload)


@pytest.fixture
def reports(tmp_path: Path) -> Iterator[_Store]:
    s = _Store(tmp_path / "reports.sqlite")
    yield s
    s.store.close()


def _at(y: int, m: int, d: int, h: int = 10) -> _dt.datetime:
    return _dt.datetime(y, m, d, h, tzinfo=CHINA_TZ)


# -- end to end: the figures at the platform equal the reports the unit sent ----------------


def test_quarterly_figures_at_the_platform_equal_the_reports_the_unit_sent(
    tmp_path: Path,
) -> None:
    with TestPlatform(tmp_path) as p:
        save_unit(p.keys_dir, _unit(p.subscriber_id, (HOTEL, FLIGHT, CREDIT)))
        guests = [p.add_person(publish=False) for _ in range(4)]
        p.publish()
        with p.serve() as server:
            client = p.client(platform=server.url)
            for g in guests[:3]:
                with pytest.raises(Intercepted):
                    client.block(Person(g["id_number"]), HOTEL)
            with pytest.raises(Intercepted):
                client.block(Person(guests[3]["id_number"]), FLIGHT)
            decision = client.check(Person(guests[0]["id_number"]), HOTEL)
            client.report("lift", decision)
            client.report("review_outcome", decision, outcome="upheld")
            client.report("objection", guests[1]["entry_id"], grounds="已全部履行")
            client.report("lift", guests[3]["entry_id"], measure="travel.rail_premium")
            now = _dt.datetime.now(CHINA_TZ)
            year, quarter = now.year, (now.month - 1) // 3 + 1
            summary = client.quarterly_summary(year, quarter, upload=True)
            assert client.flush_reports(timeout=20)
            version = p.last.version if p.last else None
        store = SQLiteReportStore(tmp_path / "platform-state" / "reports.sqlite")
        source = StatsSource(store, p.keys_dir / "subscribers", current_version=lambda: version)
        stats = source.compute()
        store.close()

    tag = f"{year}Q{quarter}"
    row = stats.row(p.subscriber_id, tag)
    assert row["interceptions"] == summary["interceptions"] == 4
    assert row["reviews"] == summary["review_outcomes"] == 1
    assert row["lifts"] == summary["lifts"] == 2
    assert row["objections"] == summary["objections"] == 1
    assert row["data_errors"] == summary["data_errors"] == 0
    assert row["checks"] == summary["checks_performed"] > 0
    assert row["summary_status"] == "on_time" and row["summary_received_at"]
    assert row["last_list_version"] == version and row["versions_behind"] == 0
    assert row["department"] == "县文化广电和旅游局" and row["region"] == "河北省唐山市"
    for measure, kinds in summary["by_measure"].items():
        mrow = stats.row(p.subscriber_id, tag, measure)
        assert mrow["interceptions"] == kinds.get("interception", 0)
        assert mrow["lifts"] == kinds.get("lift", 0)
    # the lift on a measure the unit does not enforce is flagged (twice: the report and
    # the summary that counts it)
    assert stats.row(p.subscriber_id, tag, "travel.rail_premium")["flagged"] == 1
    reasons = [r for f in stats.flags for r in f["reasons"]]
    assert any("travel.rail_premium is not among" in r for r in reasons)
    assert any("quarterly summary counts measure travel.rail_premium" in r for r in reasons)
    assert stats.units[0]["freshness"] == "current"


# -- deadlines ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("due_days", "received", "expected"),
    [
        (30, _at(2026, 4, 30, 23), "on_time"),  # last day of the 30 days, China time
        (30, _at(2026, 5, 1, 0), "late"),
        (15, _at(2026, 4, 15, 12), "on_time"),
        (15, _at(2026, 4, 16, 9), "late"),
    ],
)
def test_summary_on_time_or_late_by_the_configured_due_days(
    reports: _Store, due_days: int, received: _dt.datetime, expected: str
) -> None:
    payload = reports.send(
        "quarterly_summary", _at(2026, 4, 2), details={"year": 2026, "quarter": 1}
    )
    payload["received_at"] = received.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    stats = compute([payload], {"hotel-001": _unit()}, due_days=due_days, now=_at(2026, 6, 1))
    row = stats.row("hotel-001", "2026Q1")
    assert row["summary_status"] == expected
    assert row["summary_due"] == ("2026-04-30" if due_days == 30 else "2026-04-15")
    assert [s["quarter"] for s in stats.overdue_summaries] == (
        ["2026Q1"] if expected == "late" else []
    )


def test_missing_summary_is_pending_then_overdue(reports: _Store) -> None:
    reports.send("interception", _at(2026, 2, 10), measure=HOTEL)
    units = {"hotel-001": _unit()}
    before = StatsSource(reports.store, now=lambda: _at(2026, 4, 20)).compute()
    assert before.row("hotel-001", "2026Q1")["summary_status"] == "pending"
    # the record-less unit is flagged, and still counted
    assert before.flags and "no unit record" in before.flags[0]["reasons"][0]
    after = compute(iter_reports(reports.store), units, now=_at(2026, 5, 1, 0))
    row = after.row("hotel-001", "2026Q1")
    assert row["summary_status"] == "overdue" and row["summary_received_at"] is None
    assert after.overdue_summaries[0]["status"] == "overdue"
    assert not after.flags


def test_a_registered_unit_that_sends_nothing_owes_its_summaries(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    save_unit(keys, _unit("silent-1"), now=_at(2025, 11, 3))
    store = SQLiteReportStore(tmp_path / "r.sqlite")
    store.open()
    stats = StatsSource(store, keys / "subscribers", now=lambda: _at(2026, 5, 2)).compute()
    store.close()
    assert [(s["unit"], s["quarter"]) for s in stats.overdue_summaries] == [
        ("silent-1", "2025Q4"),
        ("silent-1", "2026Q1"),
    ]
    assert stats.units[0]["freshness"] == "unknown"


def test_lift_latency_and_overdue_lifts(reports: _Store) -> None:
    revoked = _at(2026, 1, 9, 10)  # a Friday
    lifted = reports.send("interception", _at(2026, 1, 5), measure=HOTEL)
    late = reports.send("interception", _at(2026, 1, 6), measure=HOTEL)
    hinted = reports.send("interception", _at(2026, 1, 6), measure=FLIGHT)
    reports.send("lift", _at(2026, 1, 12, 10), measure=HOTEL, entry_id=lifted["entry_id"])
    reports.send(
        "lift", _at(2026, 1, 10, 10), measure=FLIGHT, entry_id=hinted["entry_id"],
        details={"revoked_at": "2026-01-09T02:00:00Z"},
    )  # fmt: skip
    revocations = {lifted["entry_id"]: revoked, late["entry_id"]: revoked}
    # due: the end of the 3rd working day after Friday 9 January = Wednesday 14 January
    assert lift_deadline(revoked, 3) == _at(2026, 1, 15, 0)
    calm = compute(iter_reports(reports.store), {}, revocations=revocations, now=_at(2026, 1, 14))
    assert calm.overdue_lifts == []
    stats = compute(
        iter_reports(reports.store), {}, revocations=revocations, now=_at(2026, 1, 16, 10)
    )
    (item,) = stats.overdue_lifts
    assert item["entry_id"] == late["entry_id"] and item["days_overdue"] == 1.4
    assert stats.row("hotel-001", "2026Q1", HOTEL)["lift_latency_avg_hours"] == 72.0
    assert stats.row("hotel-001", "2026Q1", FLIGHT)["lift_latency_max_hours"] == 24.0
    whole = stats.row("hotel-001", "2026Q1")
    assert whole["lift_latency_avg_hours"] == 48.0 and whole["lifts_overdue"] == 1
    five = compute(
        iter_reports(reports.store), {}, revocations=revocations, lift_working_days=5,
        now=_at(2026, 1, 16, 10),
    )  # fmt: skip
    assert five.overdue_lifts == []


def test_revocations_from_the_platform_source_list(tmp_path: Path) -> None:
    with TestPlatform(tmp_path) as p:
        a = p.add_person(publish=False)
        p.add_person(publish=False)
        p.revoke(a["entry_id"], publish=False)
        source = tmp_path / "source.jsonl"
        source.write_text(
            "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in p.entries.values())
        )
    got = revocations_from_source(source)
    assert list(got) == [a["entry_id"]]
    assert got[a["entry_id"]] == _dt.datetime(2024, 6, 1, tzinfo=UTC)


# -- reading the store, exports -------------------------------------------------------------


def test_iter_reports_reads_every_report_once_across_pages(reports: _Store) -> None:
    sent = {
        reports.send("interception", _at(2026, 2, 1), measure=HOTEL)["report_id"] for _ in range(23)
    }
    # all 23 share one received_at second: pages of 5 must still make progress
    got = [r["report_id"] for r in iter_reports(reports.store, page=5)]
    assert sorted(got) == sorted(sent) and len(got) == 23


def test_csv_export_is_the_rows_and_neutralises_formulas(reports: _Store) -> None:
    reports.send("interception", _at(2026, 2, 1), measure=HOTEL)
    evil = Unit("hotel-001", '=HYPERLINK("http://x")', "+局", "-区", (HOTEL,))
    stats = compute(iter_reports(reports.store), {"hotel-001": evil}, now=_at(2026, 3, 1))
    rows = list(csv.DictReader(io.StringIO(to_csv(stats))))
    assert tuple(rows[0]) == COLUMNS
    assert [(r["measure"], r["interceptions"]) for r in rows] == [(ALL_MEASURES, "1"), (HOTEL, "1")]
    assert rows[0]["name"].startswith("'=") and rows[0]["department"] == "'+局"
    assert rows[1]["checks"] == ""  # not carried by the reports: empty, not 0
    assert json.loads(json.dumps(stats.to_json()))["rows"] == stats.rows


def test_bad_deadlines_are_refused(reports: _Store) -> None:
    with pytest.raises(InvalidInput):
        StatsSource(reports.store, due_days=-1)
    with pytest.raises(InvalidInput):
        StatsSource(reports.store, lift_working_days=True)  # type: ignore[arg-type]


def test_quarter_of_uses_china_time() -> None:
    assert quarter_of(_dt.datetime(2025, 12, 31, 16, 30, tzinfo=UTC)) == "2026Q1"
    assert quarter_of(_dt.datetime(2025, 12, 31, 15, 59, tzinfo=UTC)) == "2025Q4"


def test_the_platform_and_the_unit_count_a_lift_deadline_alike() -> None:
    """One rule (``_protocol.deadlines``): the unit's ledger and the platform's statistics
    give the same deadline for the same start, whatever the day of the week."""
    from intercept_sdk._client.ledger import Deadlines

    unit = Deadlines.of(lift_deadline_days=3)
    for day in range(1, 15):
        start = _at(2026, 1, day, 21)
        assert unit.lift_deadline(start) == lift_deadline(start, 3)
    with pytest.raises(ValueError):
        lift_deadline(_at(2026, 1, 1), -1)
