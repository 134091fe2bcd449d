"""intercept_sdk.testing: the helpers integrators use in their own test suites."""

from __future__ import annotations

import datetime as _dt
import os
import random
from pathlib import Path

import httpx
import pytest

from intercept_sdk import (
    Client,
    ConfigurationError,
    Entity,
    Intercepted,
    Person,
    id_number_info,
    normalize_uscc,
    parse_entry,
)
from intercept_sdk._client.keys import subscriber_keygen
from intercept_sdk._platform.keys import add_subscriber
from intercept_sdk._protocol.signing import Envelope
from intercept_sdk.testing import TestPlatform, make_id_number, make_uscc


def test_make_id_number_is_valid_with_the_birth_date_and_sex_asked_for() -> None:
    seen = set()
    for i in range(300):
        birth = _dt.date(1940, 1, 1) + _dt.timedelta(days=71 * i)
        male = i % 2 == 0
        idn = make_id_number(birth, male=male)
        info = id_number_info(idn)  # validates the check character
        assert info.birth_date == birth and info.sex == ("男" if male else "女")
        seen.add(idn)
    assert len(seen) == 300
    same_day = {make_id_number("1980-01-01") for _ in range(400)}
    assert len(same_day) == 400  # successive calls do not repeat
    assert make_id_number("1980-01-01", seq=7) == make_id_number("1980-01-01", seq=7)
    assert make_id_number("1980-01-01", area="110105").startswith("110105")


def test_make_uscc_is_valid_and_reproducible() -> None:
    codes = {make_uscc(random.Random(i)) for i in range(200)}
    assert len(codes) == 200
    for code in codes:
        assert normalize_uscc(code) == code  # check characters of uscc and embedded org code
    assert make_uscc(random.Random(5)) == make_uscc(random.Random(5))


def test_entries_are_valid_and_sensible(tmp_path: Path) -> None:
    with TestPlatform(tmp_path) as p:
        person = p.person_entry(published_at="2023-02-01", name="李四")
        entity = p.entity_entry(related=[{"role": "principal", "name": "王五"}])
        for e in (person, entity):
            parse_entry(e)  # the publisher's own validation accepts them
        assert person["age"] == id_number_info(person["id_number"]).age_on(_dt.date(2023, 2, 1))
        assert entity["legal_rep_name"] == "李四"  # default when no legal_rep is related
        assert person["entry_id"] != entity["entry_id"]
        org_only = p.entity_entry(org_code=make_uscc()[8:17])
        assert "uscc" not in org_only
        parse_entry(org_only)


def test_platform_round_trip_add_update_revoke_remove(tmp_path: Path) -> None:
    with TestPlatform(tmp_path) as p:
        e = p.add_person()
        assert p.last is not None and p.last.version == 1
        c = p.client()
        who = Person(e["id_number"])
        with pytest.raises(Intercepted):
            c.block(who, "consumption.star_hotel")
        p.update(e["entry_id"], measures=["travel.flight"])
        assert c.sync().mode == "delta"
        assert c.check(who, "consumption.star_hotel").action == "allow"
        assert c.check(who, "travel.flight").action == "block"
        p.update(
            e["entry_id"], valid_until="2024-06-01", situation=2
        )  # a fixed term: situations 2-6
        c.sync()
        assert c.check(who, "travel.flight").reasons == ("expired",)
        p.update(e["entry_id"], valid_until=None, situation=1)  # None removes the field
        c.sync()
        assert c.check(who, "travel.flight").action == "block"
        p.revoke(e["entry_id"])
        c.sync()
        # site format 2: a revoked entry leaves the list (decision 0011)
        revoked = c.check(who, "travel.flight")
        assert (revoked.action, revoked.reasons) == ("allow", ())
        p.remove(e["entry_id"])
        c.sync()
        assert c.check(who, "travel.flight").reasons == ()
        assert p.last.version == 6 and c.status().list_version == 6


def test_publish_false_batches_changes_into_one_version(tmp_path: Path) -> None:
    with TestPlatform(tmp_path) as p:
        a = p.add_person(publish=False)
        b = p.add_entity(publish=False)
        assert p.last is None
        result = p.publish()
        assert result.version == 1
        c = p.client()
        assert c.check(Person(a["id_number"]), "travel.flight").blocked
        assert c.check(Entity(uscc=b["uscc"]), "bidding.tender").blocked


def test_client_without_sync_and_context_manager_closes_clients(tmp_path: Path) -> None:
    with TestPlatform(tmp_path) as p:
        c = p.client(sync=False)
        assert c.status().list_version is None
        c2 = p.client()
        assert c2.status().list_version == 1
    from intercept_sdk import ClientClosed

    with pytest.raises(ClientClosed):
        c2.check(Person(make_id_number()), "travel.flight")
    p.close()  # idempotent


def test_env_configures_a_client_from_the_environment(tmp_path: Path) -> None:
    with TestPlatform(tmp_path) as p:
        e = p.add_person()
        env = p.env(tmp_path / "env-cache")
        assert set(env) == {
            "INTERCEPT_PLATFORM",
            "INTERCEPT_TRUST_ROOT",
            "INTERCEPT_CACHE_DIR",
            "INTERCEPT_SUBSCRIBER_ID",
            "INTERCEPT_SUBSCRIBER_KEY",
        }
        assert all(isinstance(v, str) for v in env.values())
        with Client(
            env["INTERCEPT_PLATFORM"],
            env["INTERCEPT_TRUST_ROOT"],
            env["INTERCEPT_CACHE_DIR"],
            env["INTERCEPT_SUBSCRIBER_ID"],
            subscriber_key=env["INTERCEPT_SUBSCRIBER_KEY"],
        ) as c:
            c.sync()
            with pytest.raises(Intercepted) as caught:
                c.block(Person(e["id_number"]), "travel.flight")
            assert caught.value.report_id  # the subscriber key is registered and usable


def test_restricted_entries_reach_the_registered_subscriber_only(tmp_path: Path) -> None:
    with TestPlatform(tmp_path) as p:
        secret = p.add_person(visibility="restricted", audience=[p.subscriber_id])
        mine = p.client()
        assert mine.check(Person(secret["id_number"]), "travel.flight").blocked
        public = p.add_person()
        # another registered unit (its own keys): reads the public list, never the entry
        report_pub, box_pub = subscriber_keygen(tmp_path / "other-unit")
        add_subscriber(p.keys_dir, "other-unit", report_pub.read_bytes(), box_pub.read_bytes())
        p.publish()
        with Client(
            p.site_dir,
            p.trust_root,
            tmp_path / "other-cache",
            "other-unit",
            subscriber_key=tmp_path / "other-unit",
        ) as other:
            other.sync()
            assert other.check(Person(public["id_number"]), "travel.flight").blocked
            assert other.check(Person(secret["id_number"]), "travel.flight").action == "allow"
        assert mine.sync().to_version == p.last.version  # type: ignore[union-attr]
        assert mine.check(Person(secret["id_number"]), "travel.flight").blocked
        # site format 2: a client without a subscriber key cannot read the list at all
        keyless = p.client(subscriber_key=None, sync=False)
        with pytest.raises(ConfigurationError, match="X25519"):
            keyless.sync()


def test_publish_time_and_expiry_are_controllable(tmp_path: Path) -> None:
    then = _dt.datetime(2026, 5, 1, tzinfo=_dt.timezone.utc)
    with TestPlatform(tmp_path, now=then, expires=600) as p:
        p.add_person()
        manifest = Envelope.from_bytes((p.site_dir / "manifest.json").read_bytes())
        assert manifest.payload_json()["expires"] == "2026-05-01T00:10:00Z"  # now + 600 s
        # a client whose clock is within that window accepts it
        c = p.client(clock=lambda: then + _dt.timedelta(seconds=60))
        assert c.status().manifest_expires == then + _dt.timedelta(seconds=600)


def test_serve_exposes_the_site_over_http(tmp_path: Path) -> None:
    with TestPlatform(tmp_path) as p:
        e = p.add_person()
        with p.serve() as server:
            r = httpx.get(server.url + "/manifest.json", timeout=10)
            assert r.status_code == 200 and r.headers.get("etag")
            c = p.client(platform=server.url)
            assert c.check(Person(e["id_number"]), "travel.flight").blocked
            assert os.path.isdir(c.status().cache_dir)
