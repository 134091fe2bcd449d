"""Client: block (Intercepted + automatic interception report), screen, watch, options,
the async mirror, and check() latency. Real signed sites (TestPlatform); HTTP tests run
the reference platform server on loopback."""

from __future__ import annotations

import asyncio
import datetime as _dt
import logging
import random
import statistics
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from intercept_sdk import (
    AsyncClient,
    Client,
    ConfigurationError,
    Entity,
    Intercepted,
    InterceptError,
    InvalidInput,
    Officer,
    Person,
    WatchChange,
)
from intercept_sdk._platform.publish import current_hash_key
from intercept_sdk._protocol.signing import Envelope
from intercept_sdk.testing import TestPlatform, make_id_number, make_uscc
from intercept_sdk.testing.synth import valid_id_number


def _queued(client: Client) -> list[dict[str, Any]]:
    """Payloads of the reports waiting in the client's outbox."""
    return [Envelope.from_bytes(env).payload_json() for _, env in client._core.outbox.batch(1000)]


@pytest.fixture
def platform(tmp_path: Path) -> Iterator[TestPlatform]:
    with TestPlatform(tmp_path) as p:
        yield p


# -- block -----------------------------------------------------------------------------------


def test_block_raises_intercepted_with_notice_and_queues_a_report(platform: TestPlatform) -> None:
    guest = platform.add_person(name="张三")
    client = platform.client(unit_name="唐山某某大酒店")
    with pytest.raises(Intercepted) as caught:
        client.block(Person(guest["id_number"], name="张三"), "consumption.star_hotel", room="1808")
    exc = caught.value
    assert not isinstance(exc, InterceptError)  # a fail-open handler cannot swallow it
    assert exc.decision.action == "block" and exc.decision.matches[0].entry_id == guest["entry_id"]
    notice = exc.notice
    assert guest["case_no"] in notice and guest["court"] in notice
    assert "限制住宿星级以上宾馆饭店" in notice
    assert "执行法院" in notice and "纠正" in notice
    assert "向唐山某某大酒店申请复核" in notice
    assert guest["id_number"] not in notice
    reports = _queued(client)
    assert [r["kind"] for r in reports] == ["interception"]
    (r,) = reports
    assert r["report_id"] == exc.report_id
    assert r["entry_id"] == guest["entry_id"] and r["case_no"] == guest["case_no"]
    assert r["measure"] == "consumption.star_hotel" and r["outcome"] == "blocked"
    assert r["details"] == {"room": "1808"}
    assert r["list_version"] == exc.decision.list_version
    assert client.status().pending_reports == 1


def test_block_returns_the_decision_when_not_blocking(platform: TestPlatform) -> None:
    listed = platform.add_person()
    client = platform.client()
    d = client.block(Person(listed["id_number"]), "finance.credit")  # a review measure
    assert d.action == "review"
    d = client.block(Person(make_id_number("1990-09-09")), "consumption.star_hotel")
    assert d.action == "allow"
    assert _queued(client) == []  # only interceptions are reported


def test_block_of_a_stale_list_reviews_instead(platform: TestPlatform) -> None:
    listed = platform.add_person()
    now = [_dt.datetime.now(_dt.timezone.utc)]
    client = platform.client(clock=lambda: now[0], max_staleness="1h")
    strict = platform.client(clock=lambda: now[0], max_staleness="1h", stale_action="block")
    now[0] += _dt.timedelta(hours=2)
    d = client.block(Person(listed["id_number"]), "travel.flight")
    assert d.action == "review" and d.stale
    with pytest.raises(Intercepted) as caught:
        strict.block(Person(listed["id_number"]), "travel.flight")
    assert "人工复核" in caught.value.notice


def test_without_subscriber_key_the_client_cannot_read_the_list_and_fails_closed(
    platform: TestPlatform,
) -> None:
    """Site format 2: the list opens only with the hash key in the unit's sealed box, so a
    unit without its X25519 key reads nothing and never answers 'allow' (format 1 let such
    a client block, unreported; now it cannot decide at all)."""
    listed = platform.add_person()
    client = platform.client(subscriber_key=None, sync=False)
    with pytest.raises(ConfigurationError, match="subscriber"):
        client.sync()
    for call in (client.check, client.block):
        with pytest.raises(InterceptError):  # NeverSynced: no decision, never 'allow'
            call(Person(listed["id_number"]), "travel.flight")
    # A cache synced with the key does not help a client started without it: the hash key
    # is never stored in the clear, so that client cannot look anyone up either.
    cache = platform.directory / "keyed-cache"
    platform.client(cache).close()
    with Client(platform.site_dir, platform.trust_root, cache, platform.subscriber_id) as keyless:
        for call in (keyless.check, keyless.block):
            with pytest.raises(ConfigurationError, match="X25519"):
                call(Person(listed["id_number"]), "travel.flight")


def test_block_still_intercepts_when_the_report_is_refused(
    platform: TestPlatform, caplog: pytest.LogCaptureFixture
) -> None:
    listed = platform.add_person()
    client = platform.client()
    # an ID number in the context is refused by the report format (no plaintext IDs)...
    with caplog.at_level(logging.ERROR, "intercept_sdk"), pytest.raises(Intercepted) as caught:
        client.block(Person(listed["id_number"]), "travel.flight", guest=listed["id_number"])
    # ...but the person is still intercepted, never let through by an ordinary error
    assert caught.value.report_id is None and caught.value.decision.blocked
    assert "interception not reported: InvalidReport" in caplog.text
    assert listed["id_number"] not in caplog.text
    assert _queued(client) == []


def test_intercepted_is_picklable(platform: TestPlatform) -> None:
    import pickle

    listed = platform.add_person()
    client = platform.client()
    with pytest.raises(Intercepted) as caught:
        client.block(Person(listed["id_number"]), "travel.rail_premium")
    again = pickle.loads(pickle.dumps(caught.value))
    assert again.decision == caught.value.decision and again.notice == caught.value.notice


# -- screen -----------------------------------------------------------------------------------


def test_screen_streams_in_input_order_and_agrees_with_check(platform: TestPlatform) -> None:
    rng = random.Random(5)
    listed = [platform.add_person(publish=False) for _ in range(5)]
    rep_id = make_id_number("1970-01-01", seq=99)
    company = platform.add_entity(
        related=[{"role": "legal_rep", "name": "赵六", "id_number": rep_id}], publish=False
    )
    platform.publish()
    client = platform.client()
    subjects: list[Person | Entity] = [Person(valid_id_number(rng)) for _ in range(300)]
    for i, e in enumerate(listed):
        subjects.insert(i * 50, Person(e["id_number"]))
    subjects.append(Entity(uscc=company["uscc"]))
    subjects.append(Person(rep_id))
    subjects.append(Entity(uscc=make_uscc(rng), officers=[Officer("director", subjects[0])]))  # type: ignore[arg-type]
    subjects.append(Person(listed[0]["id_number"]))  # a repeat

    consumed = 0

    def source() -> Iterator[Person | Entity]:
        nonlocal consumed
        for s in subjects:
            consumed += 1
            yield s

    stream = client.screen(source(), "supervision.key_target", batch=100)
    assert consumed == 0  # nothing read before the first decision is asked for
    first = next(stream)
    assert consumed == 100  # one batch at a time
    decisions = [first, *stream]
    assert len(decisions) == len(subjects)
    for s, d in zip(subjects, decisions, strict=True):
        c = client.check(s, "supervision.key_target")
        assert (d.action, d.matches, d.reasons) == (c.action, c.matches, c.reasons)
    actions = [d.action for d in decisions]
    assert actions.count("monitor") == 5 + 1 + 1 + 1  # 5 people, company, officer, repeat
    assert decisions[-4].matches[0].relation == "self"
    assert decisions[-2].matches[0].relation == "officer:director"
    # legal_rep is not reached by supervision.key_target: allow, with the reason why
    assert decisions[-3].action == "allow" and decisions[-3].reasons == ("relation_not_covered",)


def test_screen_ten_thousand_subjects_is_fast(platform: TestPlatform) -> None:
    listed = platform.add_person()
    client = platform.client()
    rng = random.Random(8)
    subjects = [Entity(uscc=make_uscc(rng)) for _ in range(10_000)]
    subjects.append(
        Entity(uscc=make_uscc(rng), officers=[Officer("legal_rep", Person(listed["id_number"]))])
    )
    t = time.perf_counter()
    decisions = list(client.screen(subjects, "supervision.key_target"))
    elapsed = time.perf_counter() - t
    assert [d.action for d in decisions].count("monitor") == 1
    assert decisions[-1].action == "monitor"
    assert elapsed < 10.0, elapsed  # ~0.3 s on a laptop; generous for loaded CI


def test_screen_rejects_bad_input_eagerly(platform: TestPlatform) -> None:
    client = platform.client()
    with pytest.raises(InvalidInput):
        client.screen([Person(make_id_number())], "travel.flight", batch=0)
    stream = client.screen(["360426199101010071"], "travel.flight")  # type: ignore[list-item]
    with pytest.raises(InvalidInput):
        next(stream)


# -- watch ------------------------------------------------------------------------------------


def test_watch_reports_listing_and_revocation(platform: TestPlatform) -> None:
    old = platform.add_person()
    rng = random.Random(11)
    new_id = make_id_number("1977-07-07", seq=1)
    quiet = [Person(valid_id_number(rng)) for _ in range(20)]
    client = platform.client()
    seen: list[list[WatchChange]] = []
    threads: list[str] = []

    def on_change(changes: list[WatchChange]) -> None:
        threads.append(threading.current_thread().name)
        seen.append(changes)

    watched = [*quiet, Person(old["id_number"]), Person(new_id)]
    w = client.watch(watched, "consumption.star_hotel", on_change)
    assert [w.last[i].action for i in range(len(watched))][-2:] == ["block", "allow"]
    client.sync()
    assert seen == []  # no new version, no call
    # newly listed
    newly = platform.add_person(new_id)
    client.sync()
    assert len(seen) == 1
    (change,) = seen[0]
    assert change.kind == "listed" and change.subject == Person(new_id)
    assert change.before is not None and change.before.action == "allow"
    assert change.after.action == "block" and change.after.matches[0].entry_id == newly["entry_id"]
    # revoked: the restriction must be lifted
    platform.revoke(old["entry_id"])
    client.sync()
    (change,) = seen[1]
    assert change.kind == "lifted" and change.subject == Person(old["id_number"])
    # site format 2: a revoked entry is no longer published, so the person is not listed
    assert change.after.action == "allow" and change.after.reasons == ()
    assert change.after.matches == ()
    assert change.before is not None and change.before.matches[0].entry_id == old["entry_id"]
    # deleted from the list: lifted as well
    platform.remove(newly["entry_id"])
    client.sync()
    assert [c.kind for c in seen[2]] == ["lifted"]
    assert w.version == client.status().list_version
    # a cancelled watch hears nothing more
    w.cancel()
    w.cancel()
    platform.add_person(quiet[0].id_number)
    client.sync()
    assert len(seen) == 3
    assert set(threads) == {threading.current_thread().name}  # the thread that synced


def test_watch_change_between_two_restrictions(platform: TestPlatform) -> None:
    idn = make_id_number("1960-01-01", seq=5)
    first = platform.add_person(idn)
    client = platform.client()
    seen: list[WatchChange] = []
    client.watch([Person(idn)], "travel.flight", seen.extend)
    second = platform.add_person(idn)  # listed a second time: still blocked, more entries
    client.sync()
    (c,) = seen
    assert c.kind == "changed" and c.after.action == "block"
    assert set(c.after.entry_ids) == {first["entry_id"], second["entry_id"]}


def test_a_failing_callback_is_logged_and_does_not_stop_the_others(
    platform: TestPlatform, caplog: pytest.LogCaptureFixture
) -> None:
    idn = make_id_number("1965-05-05", seq=3)
    client = platform.client()
    got: list[str] = []

    def broken(changes: list[WatchChange]) -> None:
        raise RuntimeError("integrator bug")

    client.watch([Person(idn)], "travel.flight", broken)
    client.watch([Person(idn)], "travel.flight", lambda ch: got.extend(c.kind for c in ch))
    entry = platform.add_person(idn)
    with caplog.at_level(logging.ERROR, "intercept_sdk"):
        client.sync()  # the sync itself succeeds
    assert got == ["listed"]
    assert "watch callback raised" in caplog.text and "integrator bug" in caplog.text
    # the broken watch is still evaluated on later versions
    platform.revoke(entry["entry_id"])
    client.sync()
    assert got == ["listed", "lifted"]


def test_watch_started_before_the_first_sync(platform: TestPlatform) -> None:
    listed = platform.add_person()
    client = platform.client(sync=False)
    seen: list[WatchChange] = []
    client.watch(
        [Person(listed["id_number"]), Person(make_id_number())], "travel.flight", seen.extend
    )
    client.sync()
    assert [(c.kind, c.before) for c in seen] == [("listed", None)]


def test_watch_callbacks_run_on_the_sdk_thread_in_background(platform: TestPlatform) -> None:
    idn = make_id_number("1979-09-09", seq=8)
    client = platform.client(background=True, poll_interval=0.5)
    done = threading.Event()
    info: dict[str, Any] = {}

    def on_change(changes: list[WatchChange]) -> None:
        info["thread"] = threading.current_thread().name
        info["kinds"] = [c.kind for c in changes]
        done.set()

    client.watch([Person(idn)], "travel.flight", on_change)
    platform.add_person(idn)
    assert done.wait(15), "background sync did not deliver the change"
    assert info == {"thread": "intercept-sdk-sync", "kinds": ["listed"]}


def test_push_over_http_delivers_a_revocation_quickly(platform: TestPlatform) -> None:
    listed = platform.add_person()
    with platform.serve() as server:
        client = platform.client(platform=server.url, background=True, poll_interval="10m")
        lifted = threading.Event()
        client.watch(
            [Person(listed["id_number"])],
            "consumption.star_hotel",
            lambda ch: lifted.set() if ch[0].kind == "lifted" else None,
        )
        deadline = time.monotonic() + 10
        while not client.status().push_connected and time.monotonic() < deadline:
            time.sleep(0.05)
        assert client.status().push_connected
        t = time.monotonic()
        platform.revoke(listed["entry_id"])
        assert lifted.wait(10), "push did not deliver the revocation"
        assert time.monotonic() - t < 10  # poll_interval is 10 minutes: this was push
        assert client.check(Person(listed["id_number"]), "consumption.star_hotel").action == "allow"
        client.close()


# -- options ----------------------------------------------------------------------------------


def test_options_are_validated(platform: TestPlatform, tmp_path: Path) -> None:
    site, root = platform.site_dir, platform.trust_root
    platform.publish()
    with pytest.raises(ConfigurationError, match="subscriber_id"):
        Client(site, root, tmp_path / "a", subscriber_key=platform.subscriber_key_dir)
    with pytest.raises(ConfigurationError):
        Client(site, root, tmp_path / "b", stale_action="allow")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        Client(site, root, tmp_path / "c", max_staleness="three days")
    with pytest.raises(ConfigurationError, match="trust root"):
        Client(site, tmp_path / "missing-root.json", tmp_path / "d")
    from intercept_sdk import UnknownMeasure

    with pytest.raises(UnknownMeasure):
        Client(site, root, tmp_path / "e", measures=["travel.flights"])


def test_client_enforces_only_its_subscribed_measures(platform: TestPlatform) -> None:
    listed = platform.add_person()
    client = platform.client(measures=["consumption.star_hotel"])
    assert client.check(Person(listed["id_number"]), "consumption.star_hotel").action == "block"
    with pytest.raises(InvalidInput, match="not among the measures"):
        client.check(Person(listed["id_number"]), "travel.flight")


def test_trust_root_as_bytes_and_cache_reuse(platform: TestPlatform, tmp_path: Path) -> None:
    listed = platform.add_person()
    platform.publish()
    cache = tmp_path / "shared-cache"
    unit = (platform.subscriber_id,)
    key = platform.subscriber_key_dir
    with Client(
        platform.site_dir, platform.trust_root.read_bytes(), cache, *unit, subscriber_key=key
    ) as a:
        a.sync()
        assert a.check(Person(listed["id_number"]), "travel.flight").blocked
    assert (cache.stat().st_mode & 0o777) == 0o700
    # a second client (another process in production) answers from the same cache
    with Client(platform.site_dir, platform.trust_root, cache, *unit, subscriber_key=key) as b:
        assert b.check(Person(listed["id_number"]), "travel.flight").blocked


def test_a_new_key_epoch_is_picked_up_between_checks(tmp_path: Path) -> None:
    """A client reading a cache that another client (another process) moved to a new key
    epoch must re-key: answering with the previous epoch's hash key would miss everyone."""
    with TestPlatform(tmp_path / "p") as p:
        listed = p.add_person()
        writer = p.client(p.directory / "shared")
        reader = p.client(p.directory / "shared", sync=False)
        assert reader.check(Person(listed["id_number"]), "travel.flight").blocked
        epoch, old_key = current_hash_key(p.keys_dir)
        newly = p.add_person(publish=False)
        p.publish(rotate_after=1e-6)  # a new key epoch: a fresh random hash key
        new_epoch, new_key = current_hash_key(p.keys_dir)
        assert new_epoch == epoch + 1 and new_key != old_key
        assert writer.sync().mode == "snapshot"  # deltas never cross a key epoch
        # The reader has not synced itself; it notices the new version of the shared cache
        # within its pointer-check interval (50 ms), then must read it under the new key.
        deadline = time.monotonic() + 5.0
        while reader.check(Person(listed["id_number"]), "travel.flight").list_version == 1:
            assert time.monotonic() < deadline, "the reader never saw the new version"
            time.sleep(0.02)
        for subject in (listed, newly):
            decision = reader.check(Person(subject["id_number"]), "travel.flight")
            assert decision.blocked and decision.matches[0].entry_id == subject["entry_id"]
        assert reader.status().list_version == p.last.version  # type: ignore[union-attr]


def test_status_reflects_the_list(platform: TestPlatform) -> None:
    platform.add_person()
    client = platform.client()
    st = client.status()
    assert st.list_version == platform.last.version and st.entries == 1  # type: ignore[union-attr]
    assert not st.stale and st.last_error is None and st.last_success is not None
    assert st.to_dict()["list_version"] == st.list_version


# -- async ------------------------------------------------------------------------------------


def test_async_client_mirrors_the_sync_one(platform: TestPlatform) -> None:
    listed = platform.add_person()
    platform.publish()

    async def main() -> None:
        async with AsyncClient(
            platform.site_dir,
            platform.trust_root,
            platform.directory / "async-cache",
            platform.subscriber_id,
            subscriber_key=platform.subscriber_key_dir,
        ) as client:
            await client.sync()
            d = await client.check(Person(listed["id_number"]), "travel.flight")
            assert d.action == "block"
            with pytest.raises(Intercepted) as caught:
                await client.block(Person(listed["id_number"]), "travel.flight", seat="1A")
            assert caught.value.report_id
            got = [d async for d in client.screen([Person(listed["id_number"])], "travel.flight")]
            assert [d.action for d in got] == ["block"]
            st = await client.status()
            assert st.pending_reports == 1

    asyncio.run(main())


# -- latency ----------------------------------------------------------------------------------


def test_check_latency_smoke(tmp_path: Path) -> None:
    """p50 of 2,000 checks on a 10k-entry list stays well under 200 µs."""
    rng = random.Random(12)
    with TestPlatform(tmp_path) as p:
        listed = [
            p.add_person(valid_id_number(rng), publish=False)["id_number"] for _ in range(10_000)
        ]
        p.publish()
        client = p.client()
        misses = [Person(valid_id_number(rng)) for _ in range(1_600)]
        hits = [Person(x) for x in listed[:400]]
        people = misses + hits
        rng.shuffle(people)
        for person in people[:100]:  # warm up connections and caches
            client.check(person, "consumption.star_hotel")
        timings = []
        blocked = 0
        for person in people:
            t = time.perf_counter_ns()
            d = client.check(person, "consumption.star_hotel")
            timings.append(time.perf_counter_ns() - t)
            blocked += d.blocked
        assert blocked == 400
        p50 = statistics.median(timings) / 1000
        assert p50 < 200, f"p50 {p50:.1f} µs"


def test_http_platform_with_injected_transport(platform: TestPlatform) -> None:
    """``transport=`` lets a test serve the site from memory over the real HTTP code path."""
    listed = platform.add_person()
    platform.publish()
    site = platform.site_dir

    def handler(request: httpx.Request) -> httpx.Response:
        path = site / request.url.path.lstrip("/")
        if not path.is_file():
            return httpx.Response(404)
        return httpx.Response(200, content=path.read_bytes())

    client = Client(
        "https://platform.example",
        platform.trust_root,
        platform.directory / "transport-cache",
        platform.subscriber_id,
        subscriber_key=platform.subscriber_key_dir,
        transport=httpx.MockTransport(handler),
        push=False,
    )
    try:
        assert client.sync().mode == "snapshot"
        assert client.check(Person(listed["id_number"]), "travel.flight").blocked
    finally:
        client.close()
