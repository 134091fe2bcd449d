"""Private distribution (site format 2): what an outsider, a cache thief and a log thief learn.

One test per attack of the private-distribution issue, against a site published from a
synthetic list with persons, entities, officers and restricted entries, and two registered
units. The attacks themselves are in ``tests/_privacy.py`` (shared with the benchmarks).
"""

from __future__ import annotations

import base64
import datetime as dt
import gzip
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from _privacy import plaintext_leaks, recover_ids_from_audit_log, recover_ids_from_public_site
from intercept_sdk import Client, FormatError, NotRegistered, Person
from intercept_sdk._client.keys import subscriber_keygen
from intercept_sdk._platform.keys import KeyDir, add_subscriber, keygen
from intercept_sdk._platform.publish import publish
from intercept_sdk._protocol import sealing
from intercept_sdk._protocol.keyedhash import identifier_key
from intercept_sdk._protocol.signing import MANIFEST_TYPE, canonical_json, sign_envelope
from intercept_sdk.testing.synth import generate_entries, write_jsonl

N = 1500
UNITS = ("hotel-a", "bank-b")


class Site:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.keys = root / "keys"
        self.site = root / "site"
        self.source = root / "list.jsonl"
        keygen(self.keys)
        self.unit_keys: dict[str, Path] = {}
        for unit in UNITS:
            d = root / unit
            rep, box = subscriber_keygen(d)
            add_subscriber(self.keys, unit, rep.read_bytes(), box.read_bytes())
            self.unit_keys[unit] = d
        self.entries = list(
            generate_entries(N, seed=5, restricted=12, audience=["hotel-a"], revoked_ratio=0.05)
        )
        write_jsonl(self.source, self.entries)

    def publish(self, **options: Any) -> Any:
        return publish(self.source, self.keys, self.site, **options)

    def client(self, unit: str = "hotel-a", cache: str | None = None) -> Client:
        return Client(
            self.site,
            self.keys / "root.json",
            self.root / (cache or f"cache-{unit}"),
            subscriber_id=unit,
            subscriber_key=self.unit_keys[unit],
        )

    def hash_key(self) -> bytes:
        """The current epoch's hash key (what a leaked box or a compromised unit gives)."""
        import sqlite3

        db = sqlite3.connect(KeyDir(self.keys).state_dir / "publisher.sqlite3")
        try:
            (value,) = db.execute("SELECT value FROM meta WHERE key='epoch_hash_key'").fetchone()
        finally:
            db.close()
        return bytes.fromhex(value)


def _ids(entries: list[dict[str, Any]]) -> list[str]:
    out = []
    for e in entries:
        if e.get("id_number"):
            out.append(e["id_number"])
        out += [r["id_number"] for r in e.get("related", []) if r.get("id_number")]
    return out


def _secrets_of(entries: list[dict[str, Any]]) -> list[str]:
    """Every value an attacker must not read off the public site: ID numbers, their
    masked forms, names, case numbers, unified credit codes of debtors' officers."""
    out: list[str] = []
    for e in entries:
        for field in ("id_number", "name", "case_no"):
            if e.get(field):
                out.append(str(e[field]))
        for r in e.get("related", []):
            if r.get("id_number"):
                out.append(r["id_number"])
            if r.get("name"):
                out.append(r["name"])
    for i in list(out):
        if len(i) == 18 and i[:17].isdigit():
            out.append(i[:4] + "*" * 10 + i[-4:])
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Site:
    s = Site(tmp_path_factory.mktemp("privacy"))
    s.publish()
    return s


def _manifest(site: Path) -> dict[str, Any]:
    env = json.loads((site / "manifest.json").read_bytes())
    payload: dict[str, Any] = json.loads(base64.b64decode(env["payload"]))
    return payload


def test_the_format_1_attack_recovers_nothing_from_a_format_2_site(world: Site) -> None:
    manifest = _manifest(world.site)
    assert manifest["spec"] == 2 and "hash_key" not in manifest
    assert recover_ids_from_public_site(world.site) == {}


def test_no_identifier_name_or_case_number_is_readable_on_the_site(world: Site) -> None:
    secrets = _secrets_of(world.entries)
    assert len(secrets) > N  # the list really has persons, officers and entities
    assert plaintext_leaks(world.site, secrets) == {}


def test_the_manifest_names_no_unit_and_boxes_are_all_one_size(world: Site) -> None:
    manifest = _manifest(world.site)
    assert plaintext_leaks(world.site, UNITS) == {}
    assert "restricted" not in manifest
    sizes = {b["length"] for b in manifest["boxes"].values()}
    assert len(manifest["boxes"]) == len(UNITS) and len(sizes) == 1
    # hotel-a has restricted entries, bank-b none: the boxes do not say so
    files = sorted((world.site / "boxes").rglob("*.box"))
    assert {f.stat().st_size for f in files} == sizes


def test_withdrawn_entries_and_private_fields_leave_the_site(world: Site) -> None:
    manifest = _manifest(world.site)
    published = [e for e in world.entries if e.get("status", "active") == "active"]
    restricted = [e for e in published if e.get("visibility") == "restricted"]
    assert manifest["state"]["entries"] == len(published) - len(restricted)
    assert len(published) < len(world.entries)  # some were revoked


def test_a_record_opens_only_with_its_identifier(world: Site) -> None:
    """Even with the hash key (a compromised unit), a record opens only for an identifier
    of its entry, and carries no masked ID, age or gender; officers carry no name."""
    hk = world.hash_key()
    work = sealing.WorkFactor()
    lines = gzip.decompress(
        (world.site / _manifest(world.site)["snapshot"]["path"]).read_bytes()
    ).splitlines()
    by_rid = {sealing.parse_sealed(line).rid: sealing.parse_sealed(line) for line in lines}
    entity = next(
        e
        for e in world.entries
        if e["subject_type"] == "entity"
        and e.get("status", "active") == "active"
        and e.get("visibility") != "restricted"
        and any(r.get("id_number") for r in e.get("related", []))
    )
    rec = by_rid[sealing.record_id(hk, entity["entry_id"])]
    officer = next(r for r in entity["related"] if r.get("id_number"))
    secret = identifier_key(hk, "id", officer["id_number"])
    opened = [
        sealing.open_wrap(sealing.kek(secret, work), rec.rid, t, blob)
        for t, blob in rec.wraps
        if t == sealing.tag(secret)
    ]
    got = [o for o in opened if o is not None]
    assert got, "the officer's identifier opens the entity's record"
    plain = json.loads(sealing.open_body(got[0][0], rec.rid, rec.body))
    for field in ("id_masked", "age", "gender", "audience", "revoked_at", "id_number"):
        assert field not in plain
    for person in plain.get("related", []):
        assert set(person) <= {"role", "name"}
        assert "name" not in person or person["role"] == "legal_rep"
    stranger = identifier_key(hk, "id", "110101199001010015")
    for t, blob in rec.wraps:
        assert sealing.open_wrap(sealing.kek(stranger, work), rec.rid, t, blob) is None


def test_a_copied_audit_log_gives_no_id_back_even_with_the_hash_key(
    world: Site, tmp_path: Path
) -> None:
    listed = [e for e in world.entries if e["subject_type"] == "person"][:20]
    guests = [e["id_number"] for e in listed]
    guests += ["110101199001010015", "110101198001010010"]  # two checked, not listed
    c = world.client(cache=str(tmp_path / "cache"))
    try:
        c.sync()
        for g in guests:
            c.check(Person(g), "consumption.star_hotel")
    finally:
        c.close()
    stolen = tmp_path / "stolen-audit"
    shutil.copytree(tmp_path / "cache" / "audit", stolen)
    assert any(stolen.rglob("*.jsonl")), "the audit log recorded the checks"
    assert recover_ids_from_audit_log(stolen, world.hash_key(), guests) == {}


def test_a_cache_without_the_unit_key_reveals_no_one(world: Site, tmp_path: Path) -> None:
    c = world.client(cache=str(tmp_path / "cache"))
    try:
        c.sync()
        listed = next(e for e in world.entries if e.get("visibility") == "restricted")
        if listed.get("id_number"):
            assert c.check(Person(listed["id_number"]), "consumption.star_hotel").matches
    finally:
        c.close()
    assert plaintext_leaks(tmp_path / "cache", _secrets_of(world.entries)) == {}


def test_a_removed_unit_gets_no_key_for_later_versions(tmp_path: Path) -> None:
    s = Site(tmp_path)
    first = s.publish()
    old_key = s.hash_key()
    c = s.client("bank-b")
    c.sync()
    c.close()
    for f in (s.keys / "subscribers").glob("bank-b.*"):
        f.unlink()
    second = s.publish()
    assert second.rotated and second.key_epoch == first.key_epoch + 1
    assert s.hash_key() != old_key
    assert second.deltas == {}  # no delta across key epochs
    manifest = _manifest(s.site)
    assert len(manifest["boxes"]) == 1
    c = s.client("bank-b")
    try:
        with pytest.raises(NotRegistered):
            c.sync()
    finally:
        c.close()
    # the key bank-b held opens nothing of the new version
    person = next(e for e in s.entries if e.get("id_number") and e.get("status") == "active")
    secret = identifier_key(old_key, "id", person["id_number"])
    lines = gzip.decompress((s.site / manifest["snapshot"]["path"]).read_bytes()).splitlines()
    work = sealing.WorkFactor()
    for line in lines:
        rec = sealing.parse_sealed(line)
        for t, blob in rec.wraps:
            assert sealing.open_wrap(sealing.kek(secret, work), rec.rid, t, blob) is None


def test_the_key_rotates_on_schedule_and_clients_follow(tmp_path: Path) -> None:
    s = Site(tmp_path)
    t0 = dt.datetime.now(dt.timezone.utc)
    s.publish(now=t0, rotate_after=3600)
    c = s.client()
    try:
        c.sync()
        person = next(
            e
            for e in s.entries
            if e["subject_type"] == "person"
            and e.get("status", "active") == "active"
            and e.get("visibility") != "restricted"
        )
        who = Person(person["id_number"])
        assert c.check(who, "consumption.star_hotel").matches
        same = s.publish(now=t0 + dt.timedelta(minutes=30), rotate_after=3600)
        assert not same.rotated and same.deltas
        assert c.sync().mode == "delta"
        later = s.publish(now=t0 + dt.timedelta(hours=2), rotate_after=3600)
        assert later.rotated and later.deltas == {}
        result = c.sync()
        assert result.mode == "snapshot"
        assert c.check(who, "consumption.star_hotel").matches
    finally:
        c.close()


def test_a_format_1_manifest_is_refused_with_a_clear_error(tmp_path: Path) -> None:
    s = Site(tmp_path)
    s.publish()
    payload = _manifest(s.site)
    v1 = {k: v for k, v in payload.items() if k not in ("boxes", "key_epoch", "kdf")}
    v1.update(spec=1, version=payload["version"] + 1, hash_key="00" * 32, restricted={})
    env = sign_envelope(MANIFEST_TYPE, canonical_json(v1), KeyDir(s.keys).online_keys())
    (s.site / "manifest.json").write_bytes(env.to_bytes())
    c = s.client()
    try:
        with pytest.raises(FormatError, match="site format 1"):
            c.sync()
    finally:
        c.close()
