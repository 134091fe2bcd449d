"""``intercept-sdk demo``: the whole system on one machine, no network, about a minute.

Generates a realistic synthetic list, publishes it as a signed static site, runs the
reference platform on a free loopback port, syncs a client, and walks through a hotel
check-in, a ticket purchase, a registry screening with supervision (watch), a revocation
lifted through push, and the feedback reports arriving at the platform.
"""

from __future__ import annotations

import datetime as _dt
import json
import random
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from .._client.client import Client, WatchChange
from .._client.decisions import Entity, Officer, Person
from .._client.keys import subscriber_keygen
from .._exceptions import Intercepted
from .._platform.keys import add_subscriber, keygen
from .._platform.publish import PublishResult, publish
from .._platform.units import Unit, save_unit
from ..testing.synth import generate_entries, valid_id_number, valid_uscc, write_jsonl

SUBSCRIBER = "hotel-tangshan-001"
N_ENTRIES = 20_000


class _Out:
    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.t0 = time.monotonic()

    def step(self, title: str) -> None:
        if not self.quiet:
            print(f"\n== {title}  [{time.monotonic() - self.t0:5.1f}s]", flush=True)

    def say(self, text: str = "") -> None:
        if not self.quiet:
            print(text, flush=True)


def _person_entry(entry_id: str, id_number: str, name: str, **kw: Any) -> dict[str, Any]:
    from .._protocol.identifiers import id_number_info

    info = id_number_info(id_number)
    published = kw.pop("published_at", "2025-03-18")
    return {
        "entry_id": entry_id,
        "case_no": kw.pop("case_no", "(2024)冀0203执1024号"),
        "subject_type": "person",
        "name": name,
        "id_number": id_number,
        "gender": info.sex,
        "age": info.age_on(_dt.date.fromisoformat(published)),
        "court": "唐山市路北区人民法院",
        "basis_doc_no": "(2023)冀0203民初3311号",
        "basis_issuer": "唐山市路北区人民法院",
        "obligation": "被执行人应于判决生效后十日内偿还借款本金人民币86000元及利息",
        "performance": "全部未履行",
        "situation": 1,
        "published_at": published,
        "filed_at": "2024-11-02",
        "performed_amount": "0",
        "unperformed_amount": "86000.00",
        "severity": 2,
        "status": "active",
        "visibility": "public",
        "measures": ["*"],
        **kw,
    }


@dataclass
class _World:
    """The demo's platform side after step 1, and the people and company it is about."""

    base: Path
    rng: random.Random
    keys: Path
    site: Path
    cache: Path
    trust_root: Path
    source: Path
    first: PublishResult
    guest_id: str  # 王建国, listed: refused at the hotel, then revoked
    rep_id: str  # 赵立新, legal representative of the listed company
    company_uscc: str
    secret_id: str  # a restricted entry, readable only by SUBSCRIBER
    minor_id: str  # a minor's entry: quarantined by the publisher


def run_demo(out_dir: Path | None = None, *, quiet: bool = False) -> int:
    """Run the whole demo (see the module docstring); 0 if the platform received the
    interception and the lift reports it should have, else 1.

    Each step is a function below, in the order it runs; the platform server and the
    client are stopped on every exit.
    """
    o = _Out(quiet)
    base = Path(out_dir) if out_dir else Path(tempfile.mkdtemp(prefix="intercept-demo-"))
    base.mkdir(parents=True, exist_ok=True)
    w = _step_platform(o, base, random.Random(7))

    from .._platform.server import PlatformServer

    server = PlatformServer(
        w.site, subscribers_dir=w.keys / "subscribers", state_dir=base / "platform-state"
    )
    server.start()
    client: Client | None = None
    try:
        o.step(f"2. The reference platform is serving on {server.url}")
        o.say("   static site (ETag, Range), /events push channel, /reports endpoint")
        client = _step_sync(o, w, server.url)
        _step_hotel(o, w, client)
        _step_tickets(o, w, client)
        lifted = _step_registry(o, w, client)
        _step_revocation(o, w, client, lifted)
        kinds = _step_reports(o, client, server.url, server.operator_headers())
        overdue = _step_supervision(o, w, client, server.url)
        console = _console_url(server.url, server.operator_headers())
        o.say(f"   operator console (charts of interceptions, lifts, freshness): {console}")
    finally:
        if client is not None:
            client.close()
        server.stop()
    _step_done(o, w)
    if not overdue:
        return 1
    return 0 if kinds.get("interception") and kinds.get("lift") else 1


def _step_platform(o: _Out, base: Path, rng: random.Random) -> _World:
    """Step 1: platform keys, a subscriber, a synthetic list with the demo's people, and
    the first signed version of the static site."""
    o.step("1. The platform: keys, a synthetic list, a signed static site")
    keys, site = base / "platform-keys", base / "site"
    trust_root = keygen(keys)
    report_pub, box_pub = subscriber_keygen(base / "subscriber-keys")
    add_subscriber(keys, SUBSCRIBER, report_pub.read_bytes(), box_pub.read_bytes())
    # The unit's record: its reports are checked against the measures it enforces (the
    # demo's one client stands for a hotel, a ticket office and a registry at once).
    save_unit(
        keys,
        Unit(
            id=SUBSCRIBER,
            name="唐山某某大酒店",
            department="唐山市商务局",
            region="河北省唐山市路北区",
            measures=(
                "consumption.star_hotel",
                "travel.rail_premium",
                "bidding.tender",
                "supervision.key_target",
            ),
        ),
    )
    guest_id = valid_id_number(rng, birth_from=_dt.date(1975, 1, 1), birth_to=_dt.date(1990, 1, 1))
    rep_id = valid_id_number(rng, birth_from=_dt.date(1970, 1, 1), birth_to=_dt.date(1985, 1, 1))
    company_uscc = valid_uscc(rng)
    secret_id = valid_id_number(rng, birth_from=_dt.date(1980, 1, 1), birth_to=_dt.date(1990, 1, 1))
    minor_id = valid_id_number(rng, birth_from=_dt.date(2010, 1, 1), birth_to=_dt.date(2011, 1, 1))
    special = _special_entries(guest_id, rep_id, company_uscc, secret_id, minor_id)
    source = base / "list.jsonl"
    n = write_jsonl(source, [*special, *generate_entries(N_ENTRIES, seed=1, minors=3)])
    result = publish(source, keys, site, expires=3600)
    o.say(f"   source: {n:,} entries in {source.name}")
    o.say(
        f"   published version {result.version}: {result.entries:,} public entries, "
        f"{result.restricted_entries} restricted (encrypted to {SUBSCRIBER} only), "
        f"{len(result.quarantined)} quarantined:"
    )
    for item in result.quarantined[:4]:
        o.say(f"     - {item[1]}: {'; '.join(item[2])[:90]}")
    o.say(f"   snapshot {result.snapshot.length:,} bytes gzip; trust root to pin: {trust_root}")
    return _World(
        base=base,
        rng=rng,
        keys=keys,
        site=site,
        cache=base / "client-cache",
        trust_root=trust_root,
        source=source,
        first=result,
        guest_id=guest_id,
        rep_id=rep_id,
        company_uscc=company_uscc,
        secret_id=secret_id,
        minor_id=minor_id,
    )


def _special_entries(
    guest_id: str, rep_id: str, company_uscc: str, secret_id: str, minor_id: str
) -> list[dict[str, Any]]:
    """The entries the demo's steps are about (the rest of the list is synthetic)."""
    special = [
        _person_entry("D0000001", guest_id, "王建国", case_no="(2024)冀0203执1024号"),
        {
            **_person_entry("D0000002", rep_id, "赵立新"),
            "subject_type": "entity",
            "name": "唐山市路北区恒达建材有限公司",
            "uscc": company_uscc,
            "legal_rep_name": "赵立新",
            "case_no": "(2024)冀0203执2048号",
            "unperformed_amount": "1250000.00",
            "related": [
                {"role": "legal_rep", "name": "赵立新", "id_number": rep_id},
                {"role": "director", "name": "钱多多"},
            ],
        },
        _person_entry(
            "D0000003",
            secret_id,
            "孙某",
            visibility="restricted",
            audience=[SUBSCRIBER],
            case_no="(2025)冀0203执77号",
        ),
        _person_entry("D0000004", minor_id, "李小明", published_at="2025-01-10"),
    ]
    for e in special:
        if e["subject_type"] == "entity":
            for k in ("id_number", "gender", "age"):
                e.pop(k, None)
    return special


def _step_sync(o: _Out, w: _World, url: str) -> Client:
    """Step 3: a hotel's client, synced from the platform at ``url``."""
    o.step("3. A hotel's SDK client syncs and verifies the list")
    client = Client(
        url,
        w.trust_root,
        w.cache,
        SUBSCRIBER,
        subscriber_key=w.base / "subscriber-keys",
        unit_name="唐山某某大酒店",
        poll_interval="10m",
    )
    r = client.sync()
    st = client.status()
    o.say(
        f"   {r.mode}: version {r.to_version}, {st.entries:,} entries, "
        f"{r.bytes_downloaded:,} bytes, stale={st.stale}"
    )
    return client


def _step_hotel(o: _Out, w: _World, client: Client) -> None:
    """Step 4: check-in of a listed and an unlisted guest, a restricted entry, a minor."""
    o.step("4. Hotel check-in (consumption.star_hotel)")
    for who, idn in (
        ("王建国 (listed)", w.guest_id),
        ("a guest not on the list", valid_id_number(w.rng)),
    ):
        t = time.perf_counter()
        try:
            d = client.block(
                Person(idn, name=who.split(" ")[0]),
                "consumption.star_hotel",
                room="1808",
                desk="front-1",
            )
            o.say(f"   {who}: {d.action} ({(time.perf_counter() - t) * 1e6:.0f} µs)")
        except Intercepted as exc:
            o.say(
                f"   {who}: BLOCKED in {(time.perf_counter() - t) * 1e6:.0f} µs; "
                f"interception report {exc.report_id} queued. Notice for the guest:"
            )
            for line in exc.notice.splitlines():
                o.say(f"     | {line}")
    d = client.check(Person(w.secret_id), "consumption.star_hotel")
    o.say(f"   restricted (依法不宜公开) entry, readable only by this subscriber: {d.action}")
    d = client.check(Person(w.minor_id), "consumption.star_hotel")
    o.say(f"   a minor's entry (quarantined by the publisher, never on the site): {d.action}")


def _step_tickets(o: _Out, w: _World, client: Client) -> None:
    """Step 5: the legal representative of a listed company, under two measures."""
    o.step("5. Ticket office: premium train for the legal representative of a listed company")
    d = client.check(Person(w.rep_id, name="赵立新"), "travel.rail_premium")
    m = d.matches[0]
    o.say(
        f"   {d.action}: relation={m.relation}, {m.name} {m.case_no}, "
        f"未履行 {m.unperformed_amount} 元"
    )
    d = client.check(Person(w.rep_id), "bidding.tender")
    o.say(f"   same person, bidding.tender (debtor itself only): {d.action}")


def _step_registry(o: _Out, w: _World, client: Client) -> threading.Event:
    """Step 6: screen a portfolio of companies, then watch it; the returned event is set
    once the watch has seen a listing lifted (and filed the lift reports)."""
    o.step("6. Company registry: nightly screening + supervision of a portfolio")
    portfolio = [Entity(uscc=valid_uscc(w.rng)) for _ in range(2000)]
    portfolio.append(Entity(uscc=w.company_uscc, name="唐山市路北区恒达建材有限公司"))
    portfolio.append(
        Entity(
            uscc=valid_uscc(w.rng),
            name="唐山新业贸易有限公司",
            officers=[Officer("legal_rep", Person(w.guest_id))],
        )
    )
    t = time.perf_counter()
    decisions = list(client.screen(portfolio, "supervision.key_target"))
    dt = time.perf_counter() - t
    counts: dict[str, int] = {}
    for dd in decisions:
        counts[dd.action] = counts.get(dd.action, 0) + 1
    o.say(f"   screened {len(portfolio):,} companies in {dt * 1000:.0f} ms: {counts}")
    for dd in decisions:
        if dd.matches:
            o.say(f"     {dd.action}: {dd.matches[0].name} relation={dd.matches[0].relation}")
    lifted = threading.Event()

    def on_change(changes: list[WatchChange]) -> None:
        for c in changes:
            o.say(f"   watch: {c.kind} -> {c.after.action} (list version {c.after.list_version})")
            if c.kind == "lifted" and c.before is not None:
                for mm in c.before.matches:
                    client.report("lift", mm, measure=c.after.measure, reason="delisted")
                lifted.set()

    client.watch(portfolio, "supervision.key_target", on_change)
    o.say(f"   watching {len(portfolio):,} companies")
    return lifted


def _step_revocation(o: _Out, w: _World, client: Client, lifted: threading.Event) -> None:
    """Step 7: the guest's listing is revoked and republished; push brings the delta."""
    o.step("7. The court revokes 王建国's listing; the platform publishes; push delivers it")
    client._core.start_background()
    time.sleep(0.5)
    entries = [json.loads(line) for line in w.source.read_text(encoding="utf-8").splitlines()]
    for e in entries:
        if e["entry_id"] == "D0000001":
            e["status"] = "revoked"
            e["status_ground"] = "objection_upheld"
            e["revoked_at"] = _dt.datetime.now(_dt.timezone.utc).isoformat()
    write_jsonl(w.source, entries)
    result2 = publish(w.source, w.keys, w.site, expires=3600)
    t = time.monotonic()
    delta = result2.deltas.get(w.first.version)
    o.say(
        f"   published version {result2.version} (delta from {w.first.version}: "
        f"{delta.length if delta else '?'} bytes)"
    )
    lifted.wait(15)
    o.say(
        f"   revocation enforced {time.monotonic() - t:.2f}s after publish "
        f"(push connected: {client.status().push_connected})"
    )
    d = client.check(Person(w.guest_id), "consumption.star_hotel")
    o.say(f"   王建国 at the hotel now: {d.action}")
    obj = client.report(
        "objection",
        client.check(Person(w.rep_id), "travel.rail_premium"),
        grounds="已与申请执行人达成和解协议，正在履行",
    )
    o.say(f"   a 复核 objection filed by 赵立新 queued as report {obj}")


def _step_reports(o: _Out, client: Client, url: str, auth: dict[str, str]) -> dict[str, int]:
    """Step 8: flush the reports; returns how many of each kind the platform holds."""
    o.step("8. Feedback reports (惩戒情况) reach the platform")
    ok = client.flush_reports(15)
    resp = httpx.get(url + "/reports", params={"limit": 100}, headers=auth, timeout=10)
    got = resp.json()
    items = got.get("reports", got) if isinstance(got, dict) else got
    kinds: dict[str, int] = {}
    for it in items:
        kinds[it["kind"]] = kinds.get(it["kind"], 0) + 1
    o.say(f"   flushed={ok}; the platform holds {len(items)} signed reports: {kinds}")
    now = _dt.datetime.now(_dt.timezone(_dt.timedelta(hours=8)))
    q = (now.month - 1) // 3 + 1
    summary = client.quarterly_summary(now.year, q)
    o.say(
        f"   quarterly summary {now.year}Q{q}: checks {summary['checks_performed']}, "
        f"interceptions {summary['interceptions']}, lifts {summary['lifts']}, "
        f"objections {summary['objections']}, due {summary['due_date']}"
    )
    st = client.status()
    o.say(
        f"   status: version {st.list_version}, stale={st.stale}, "
        f"pending reports {st.pending_reports}"
    )
    return kinds


def _step_supervision(o: _Out, w: _World, client: Client, url: str) -> bool:
    """Step 9: the restriction ledger after the revocation: the hotel's block of 王建国 is
    now *lift due* (3 working days); a client on the same cache whose clock says a week
    later shows it overdue. Returns whether that overdue item was seen."""
    o.step("9. Supervision: lifts due, their deadlines, and what is overdue")
    client.sync()  # the ledger reconciles with the list after every sync
    due = client.lifts()
    for r in due:
        deadline = r.deadline.isoformat(timespec="minutes") if r.deadline else "?"
        o.say(
            f"   lift due: {r.measure} ({r.case_no}), the list dropped entry {r.entry_id}; "
            f"lift before {deadline} (3 working days)"
        )
    later = _dt.datetime.now(_dt.timezone.utc) + _dt.timedelta(days=7)
    week = Client(
        url,
        w.keys / "root.json",
        w.cache,
        SUBSCRIBER,
        subscriber_key=w.base / "subscriber-keys",
        push=False,
        clock=lambda: later,
    )
    try:
        st = week.status()
        late = [r for r in week.lifts() if r.overdue(later)]
    finally:
        week.close()
    o.say(f"   a week later, with nothing lifted: {st.lifts_due} due, {st.lifts_overdue} overdue")
    for r in late:
        o.say(f"     OVERDUE: {r.measure} on {r.case_no} (decision {r.ref[:12]}…)")
    return bool(late)


def _console_url(url: str, auth: dict[str, str]) -> str:
    token = auth["Authorization"].split(" ", 1)[1]
    return f"{url}/console/#token={token}"


def _step_done(o: _Out, w: _World) -> None:
    """Step 10: where the files are."""
    o.step("10. Done")
    o.say(f"   everything stopped. Files are in {w.base}:")
    o.say(
        f"     {w.site.name}/ (the static site: serve it with any web server or CDN), "
        f"{w.keys.name}/ (platform keys: keep offline), {w.cache.name}/ (the client cache, 0700),"
    )
    o.say("     platform-state/reports.sqlite (reports received), list.jsonl (the source list)")
    o.say(
        f"   to look at the console again: intercept-sdk serve --site {w.site} "
        f"--subscribers {w.keys / 'subscribers'} --state {w.base / 'platform-state'} "
        "and open /console/#token=<platform-state/operator.token>"
    )


if __name__ == "__main__":  # pragma: no cover
    sys.exit(run_demo())
