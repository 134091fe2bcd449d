"""The publisher (site format 2): signatures, sealed records, deltas by record id, boxes,
key epochs, pruning, quarantine, refusals.

Every test reads the site as a client would (tests/_site_v2.py): verify the manifest,
fetch content-addressed artefacts, open boxes with a subscriber's private key and sealed
records with an identifier held. Nothing here depends on how the publisher stages data.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import gzip
import hashlib
import hmac
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from _site_v2 import (
    Ident,
    apply_delta,
    check_state,
    delta_ops,
    fetch,
    locator,
    open_any,
    open_record,
    open_site_box,
    rid,
    rid_of,
    snapshot_lines,
    sum_after_delta,
    verified_manifest,
)
from intercept_sdk._exceptions import ConfigurationError, VerificationError
from intercept_sdk._platform import publish as _site
from intercept_sdk._platform.keys import KeyDir, add_subscriber, keygen, rotate_root
from intercept_sdk._platform.publish import (
    Sealer,
    current_hash_key,
    publish,
    record_sum,
    sealed_record,
    sum_hex,
)
from intercept_sdk._protocol.identifiers import id_check
from intercept_sdk._protocol.keyedhash import identifier_key
from intercept_sdk._protocol.models import parse_entry
from intercept_sdk._protocol.sealing import (
    BOX_PAD_QUANTUM,
    WorkFactor,
    box_context,
    box_locator,
    parse_sealed,
    tag,
    unpad,
)
from intercept_sdk._protocol.signing import Envelope, open_box

NOW = dt.datetime(2026, 11, 22, 8, 0, tzinfo=dt.timezone.utc)
ID_A = "360426199101010071"
ID_B = "120103198806018241"
ID_C = "110223197908136972"
USCC_1 = "91110000600037341L"
USCC_2 = "91110108551385082Q"


def make_id(area: str = "110101", birth: str = "19800101", seq: int = 1) -> str:
    body = f"{area}{birth}{seq:03d}"
    return body + id_check(body)


_BASE: dict[str, Any] = {
    "case_no": "(2019)冀0203执123号",
    "court": "唐山市路北区人民法院",
    "basis_doc_no": "(2018)冀0203民初1号",
    "basis_issuer": "唐山市路北区人民法院",
    "obligation": "支付货款100000元及利息",
    "performance": "全部未履行",
    "situation": 1,
    "published_at": "2020-05-01",
    "filed_at": "2020-01-10",
    "performed_amount": "0",
    "unperformed_amount": "100000.00",
    "severity": 2,
    "measures": ["consumption.star_hotel", "travel.flight"],
}


def person(entry_id: str, id_number: str, name: str = "张三", **kw: Any) -> dict[str, Any]:
    return {
        **_BASE,
        "entry_id": entry_id,
        "subject_type": "person",
        "name": name,
        "id_number": id_number,
        **kw,
    }


def entity(entry_id: str, name: str = "某某有限公司", **kw: Any) -> dict[str, Any]:
    out = {**_BASE, "entry_id": entry_id, "subject_type": "entity", "name": name, **kw}
    if "uscc" not in out and "org_code" not in out:
        out["uscc"] = USCC_1
    out.setdefault("legal_rep_name", "李四")  # an entity's entry names its legal representative
    return out


def revoked(e: dict[str, Any]) -> dict[str, Any]:
    return {
        **e,
        "status": "revoked",
        "revoked_at": "2026-11-01T00:00:00Z",
        "status_ground": "objection_upheld",
    }


# -- helpers ------------------------------------------------------------------------------


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    k = tmp_path / "keys"
    keygen(k, signers=2, threshold=2, now=NOW - dt.timedelta(days=1))
    return k


def _x25519() -> tuple[X25519PrivateKey, bytes]:
    k = X25519PrivateKey.generate()
    pem = k.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return k, pem


def _register(keys: Path, sub: str) -> X25519PrivateKey:
    k, pem = _x25519()
    add_subscriber(keys, sub, None, pem)
    return k


def _unregister(keys: Path, sub: str) -> None:
    (keys / "subscribers" / f"{sub}.x25519.pem").unlink()


def hash_key(keys: Path) -> bytes:
    return current_hash_key(keys)[1]


def ids_of(source: list[dict[str, Any]]) -> list[Ident]:
    """Every identifier a list names (debtors, organisations, related persons)."""
    out: list[Ident] = []
    for e in source:
        if e.get("id_number"):
            out.append(("id", e["id_number"]))
        if e.get("uscc"):
            out.append(("org", e["uscc"][8:17]))
        if e.get("org_code"):
            out.append(("org", e["org_code"].replace("-", "")))
        out.extend(("id", r["id_number"]) for r in e.get("related", []) if r.get("id_number"))
    return out


def plaintexts(lines: list[bytes], hk: bytes, source: list[dict[str, Any]]) -> dict[str, Any]:
    """``{entry_id: plaintext}`` of sealed lines opened with the list's identifiers."""
    out = {}
    for line in lines:
        plain = open_any(line, hk, ids_of(source))
        assert rid_of(line) == rid(hk, plain["entry_id"])
        out[plain["entry_id"]] = plain
    return out


def all_site_bytes(
    site: Path, openers: dict[str, tuple[str, X25519PrivateKey]] | None = None
) -> Iterator[tuple[Path, bytes]]:
    """Every file under the site, gzip decompressed, envelopes' payloads, and boxes opened
    (unpadded payload) with ``openers`` (locator -> (subscriber, private key))."""
    for p in sorted(site.rglob("*")):
        if not p.is_file():
            continue
        data = p.read_bytes()
        yield p, data
        if p.name.endswith(".gz"):
            yield p, gzip.decompress(data)
        if p.name.endswith(".box") and openers:
            loc = p.name.split(".")[0]
            if loc in openers:
                plain = open_box(openers[loc][1], data, box_context(loc, int(p.parent.name)))
                yield p, unpad(plain)
        if p.name.endswith(".json"):
            yield p, Envelope.from_bytes(data).payload


# -- records ------------------------------------------------------------------------------


def test_identifier_key_is_the_full_hmac() -> None:
    hk = bytes(range(32))
    want = hmac.new(hk, b"id:" + ID_A.encode(), hashlib.sha256).digest()
    assert identifier_key(hk, "id", ID_A) == want
    assert len(identifier_key(hk, "org", "600037341")) == 32
    assert identifier_key(hk, "id", "600037341") != identifier_key(hk, "org", "600037341")
    assert identifier_key(b"\x00" * 32, "id", ID_A) != want


def test_record_sum_and_hex() -> None:
    records = [b'{"a":1}', b'{"b":2}', b'{"c":3}']
    assert record_sum(records) == record_sum(reversed(records))
    assert record_sum([]) == 0
    assert sum_hex(0) == "0" * 64
    assert sum_hex(1) == "0" * 63 + "1"
    assert sum_hex(-1) == "f" * 64
    assert sum_hex(1 << 256) == "0" * 64
    total = sum(int.from_bytes(hashlib.sha256(r).digest(), "big") for r in records)
    assert record_sum(records) == total % (1 << 256)


_PRIVATE_FIELDS = {"id_number", "id_masked", "age", "gender", "revoked_at", "audience", "id_key"}


def test_sealed_record_person_entity_related() -> None:
    hk = os.urandom(32)
    sealer = Sealer(hk, WorkFactor())
    p = parse_entry(person("P1", ID_A, gender="男"))
    sealed = sealed_record(p, sealer)
    assert sealed is not None
    key, line = sealed
    assert key == rid(hk, "P1") == rid_of(line)
    assert ID_A.encode() not in line and "张三".encode() not in line
    opened = open_record(line, hk, ("id", ID_A))
    assert opened is not None
    relation, rec = opened
    assert relation == "self"
    assert not _PRIVATE_FIELDS & set(rec)
    assert "related" not in rec
    assert rec["name"] == "张三"
    assert rec["measures"] == ["consumption.star_hotel", "travel.flight"]
    assert rec["published_at"] == "2020-05-01"
    assert "valid_until" not in rec  # unset fields omitted
    assert list(rec) == sorted(rec)
    # Only the identifier opens it: another ID, another key, a shared-tag miss.
    assert open_record(line, hk, ("id", ID_B)) is None
    assert open_record(line, os.urandom(32), ("id", ID_A)) is None
    # Deterministic: the same entry, key and work factor give the same line.
    assert sealed_record(p, Sealer(hk, WorkFactor())) == sealed

    e = parse_entry(
        entity(
            "E1",
            uscc=USCC_1,
            legal_rep_name="李四",
            related=[
                {"role": "legal_rep", "name": "李四", "id_number": ID_B},
                {"role": "director", "name": "王五", "id_number": ID_C},
                {"role": "supervisor", "name": "赵六"},
            ],
        )
    )
    sealed_e = sealed_record(e, sealer)
    assert sealed_e is not None
    eline = sealed_e[1]
    # USCC positions 9-17 are the organisation code: both forms open the one record.
    by_org = open_record(eline, hk, ("org", USCC_1[8:17]))
    assert by_org is not None and by_org[0] == "self"
    rec = by_org[1]
    assert rec["uscc"] == USCC_1
    assert rec["related"] == [
        {"role": "legal_rep", "name": "李四"},
        {"role": "director"},
        {"role": "supervisor"},
    ]
    assert not _PRIVATE_FIELDS & set(rec)
    assert "王五" not in json.dumps(rec, ensure_ascii=False)  # officers carry no name
    legal = open_record(eline, hk, ("id", ID_B))
    director = open_record(eline, hk, ("id", ID_C))
    assert legal is not None and legal == ("legal_rep", rec)
    assert director is not None and director == ("director", rec)
    e2 = parse_entry(entity("E2", org_code=USCC_1[8:16] + "-" + USCC_1[16]))
    sealed_e2 = sealed_record(e2, sealer)
    assert sealed_e2 is not None
    rec2 = open_record(sealed_e2[1], hk, ("org", USCC_1[8:17]))
    assert rec2 is not None and rec2[1]["org_code"] == USCC_1[8:17]
    tags = {t for t, _ in parse_sealed(eline).wraps}
    assert tags & {t for t, _ in parse_sealed(sealed_e2[1]).wraps}  # one org, one tag
    for value in (ID_B, ID_C, "王五", "赵六"):
        assert value.encode() not in eline
    # Withdrawn entries are not published at all.
    assert sealed_record(parse_entry(revoked(person("P9", ID_A))), sealer) is None
    assert tag(identifier_key(hk, "id", ID_A)) in {t for t, _ in parse_sealed(line).wraps}


# -- publish ------------------------------------------------------------------------------


def test_publish_twice_signed_artefacts_and_delta(keys: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    v1_source = [
        person("P1", ID_A),
        person("P2", ID_B, name="李四"),
        person("P3", ID_C, name="王五"),
        entity("E1", uscc=USCC_1),
        entity("E2", uscc=USCC_2, name="另一公司"),
    ]
    r1 = publish(v1_source, keys, site, now=NOW)
    assert (r1.version, r1.entries, r1.key_epoch, r1.rotated) == (1, 5, 1, True)
    assert r1.quarantined == []
    assert r1.deltas == {}
    assert r1.boxes == {}  # nobody registered
    m1 = verified_manifest(site, keys)
    assert m1["type"] == "manifest"
    assert m1["version"] == 1
    assert m1["root_version"] == 1
    assert m1["published_at"] == "2026-11-22T08:00:00Z"
    assert m1["expires"] == "2026-11-23T08:00:00Z"
    assert m1["key_epoch"] == 1
    assert m1["kdf"] == {"alg": "hmac"}
    assert m1["deltas"] == []
    assert m1["boxes"] == {}
    assert m1["snapshot"]["path"].startswith("snapshots/1.")
    hk = hash_key(keys)
    assert hk.hex().encode() not in (site / "manifest.json").read_bytes()
    recs1 = snapshot_lines(site, m1)
    check_state(recs1, m1)
    assert sorted(plaintexts(recs1, hk, v1_source)) == ["E1", "E2", "P1", "P2", "P3"]
    assert r1.state_sha256 == m1["state"]["sha256"]
    assert (site / "root" / "1.root.json").read_bytes() == (keys / "root.json").read_bytes()

    # v2: P1 changed, P2 revoked, P3 removed, E3 added, E1/E2 unchanged.
    v2_source = [
        person(
            "P1",
            ID_A,
            unperformed_amount="50000.00",
            performance="部分未履行",
            performed_amount="50000.00",
        ),
        revoked(person("P2", ID_B, name="李四")),
        entity("E1", uscc=USCC_1),
        entity("E2", uscc=USCC_2, name="另一公司"),
        entity("E3", org_code="55138508-2", name="第三公司"),
    ]
    r2 = publish(v2_source, keys, site, now=NOW + dt.timedelta(hours=1), expires=7200)
    assert (r2.version, r2.entries, r2.key_epoch, r2.rotated) == (2, 4, 1, False)
    m2 = verified_manifest(site, keys)
    assert m2["expires"] == "2026-11-22T11:00:00Z"
    assert hash_key(keys) == hk  # same key epoch
    recs2 = snapshot_lines(site, m2)
    check_state(recs2, m2)
    plain2 = plaintexts(recs2, hk, v2_source)
    assert sorted(plain2) == ["E1", "E2", "E3", "P1"]  # the revoked entry is gone
    assert plain2["P1"]["unperformed_amount"] == "50000.00"
    assert [d["from"] for d in m2["deltas"]] == [1]
    d12 = m2["deltas"][0]
    assert d12["path"].startswith("deltas/1-2.")
    delta = gzip.decompress(fetch(site, d12))
    assert len(delta) == d12["raw_length"]
    want = {
        (rid(hk, "P1"), "P"),
        (rid(hk, "E3"), "P"),
        (rid(hk, "P2"), "D"),
        (rid(hk, "P3"), "D"),
    }
    assert {(r, op) for op, r in delta_ops(delta)} == want
    assert apply_delta(recs1, delta) == recs2
    assert sum_after_delta(m1["state"]["sum"], recs1, delta) == m2["state"]["sum"]

    # v3: identical content -> new version, fresh expiry, empty delta from 2.
    r3 = publish(v2_source, keys, site, now=NOW + dt.timedelta(hours=2))
    m3 = verified_manifest(site, keys)
    assert r3.version == m3["version"] == 3
    assert m3["expires"] == "2026-11-23T10:00:00Z"
    assert [d["from"] for d in m3["deltas"]] == [1, 2]
    assert gzip.decompress(fetch(site, m3["deltas"][1])) == b""
    delta13 = gzip.decompress(fetch(site, m3["deltas"][0]))
    assert delta13 == delta  # cumulative 1 -> 3 equals 1 -> 2 when nothing changed after
    assert m3["state"] == m2["state"]
    # Same content, same epoch, deterministic sealing and gzip: the same snapshot bytes.
    assert m3["snapshot"]["sha256"] == m2["snapshot"]["sha256"]
    assert snapshot_lines(site, m3) == recs2


def test_deltas_compose_over_many_versions(keys: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    ids = [make_id(seq=i) for i in range(1, 30)]
    versions: list[list[dict[str, Any]]] = [
        [person(f"P{i:02d}", ids[i]) for i in range(10)],
        # change two, remove one, add one
        [person(f"P{i:02d}", ids[i], severity=3 if i in (1, 2) else 2) for i in range(9)]
        + [person("P20", ids[20])],
        # re-add the removed one, revert one change, remove the added one
        [person(f"P{i:02d}", ids[i], severity=3 if i == 2 else 2) for i in range(10)],
        # add-and-remove churn: P21 only here
        [person(f"P{i:02d}", ids[i], severity=3 if i == 2 else 2) for i in range(10)]
        + [person("P21", ids[21])],
        [person(f"P{i:02d}", ids[i]) for i in range(5)],
    ]
    snapshots: dict[int, list[bytes]] = {}
    manifests: dict[int, dict[str, Any]] = {}
    for n, src in enumerate(versions, start=1):
        publish(src, keys, site, now=NOW, keep_deltas=3, keep_versions=10)
        m = verified_manifest(site, keys)
        assert m["version"] == n
        snapshots[n] = snapshot_lines(site, m)
        manifests[n] = m
        check_state(snapshots[n], m)
        assert [d["from"] for d in m["deltas"]] == list(range(max(1, n - 3), n))
        for d in m["deltas"]:
            raw = gzip.decompress(fetch(site, d))
            f = d["from"]
            assert apply_delta(snapshots[f], raw) == snapshots[n], f"delta {f}->{n}"
            assert (
                sum_after_delta(manifests[f]["state"]["sum"], snapshots[f], raw)
                == (m["state"]["sum"])
            )
    # An entry added after the base and removed again never shows up as a D.
    p21 = rid(hash_key(keys), "P21")
    d35 = next(d for d in manifests[5]["deltas"] if d["from"] == 3)
    assert p21 not in {r for _, r in delta_ops(gzip.decompress(fetch(site, d35)))}
    d45 = next(d for d in manifests[5]["deltas"] if d["from"] == 4)
    assert ("D", p21) in delta_ops(gzip.decompress(fetch(site, d45)))


def test_old_artefacts_pruned(keys: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    _register(keys, "alice")
    # Site format 1's boxes (restricted/<sub>/<V>.<sha>.box) are never referred to again.
    old = site / "restricted" / "alice"
    old.mkdir(parents=True)
    (old / f"7.{'ab' * 32}.box").write_bytes(b"format 1 box")
    for n in range(1, 6):
        publish(
            [person("P1", ID_A, severity=1 + n % 3)],
            keys,
            site,
            now=NOW,
            keep_versions=2,
            keep_deltas=2,
        )
        if n == 1:
            assert not (site / "restricted").exists()
    snaps = sorted(p.name.split(".")[0] for p in (site / "snapshots").iterdir())
    assert snaps == ["4", "5"]
    deltas = sorted(p.name.split(".")[0] for p in (site / "deltas").iterdir())
    assert deltas == ["2-4", "3-4", "3-5", "4-5"]
    assert sorted(p.name for p in (site / "boxes").iterdir()) == ["4", "5"]
    assert all(len(list((site / "boxes" / v).iterdir())) == 1 for v in ("4", "5"))
    assert not list(site.rglob("*.part"))
    # Files the publisher did not make are left alone.
    (site / "snapshots" / "README").write_text("mine")
    publish([person("P1", ID_A)], keys, site, now=NOW, keep_versions=1)
    assert (site / "snapshots" / "README").read_text() == "mine"
    assert sorted(p.name for p in (site / "boxes").iterdir()) == ["6"]


def test_boxes_for_every_subscriber(
    keys: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    site = tmp_path / "site"
    alice = _register(keys, "alice")
    bob = _register(keys, "bob")
    dave = _register(keys, "dave")  # registered, never named
    src = [
        person("P1", ID_A),
        person("R1", ID_B, visibility="restricted", audience=["alice", "carol"]),
        person("R2", ID_C, visibility="restricted", audience=["alice", "bob"]),
        entity("R3", visibility="restricted", audience=["bob"]),
    ]
    with caplog.at_level(logging.WARNING, logger="intercept_sdk._platform.publish"):
        r = publish(src, keys, site, now=NOW)
    assert "carol" in caplog.text
    assert r.entries == 1
    assert r.restricted_entries == 3
    m = verified_manifest(site, keys)
    hk = hash_key(keys)
    subs = {"alice": alice, "bob": bob, "dave": dave}
    locs = {sub: locator(sub, k) for sub, k in subs.items()}
    assert sorted(m["boxes"]) == sorted(locs.values()) == sorted(r.boxes)
    # One size for all: neither who holds restricted entries nor how many shows.
    sizes = {a["length"] for a in m["boxes"].values()}
    assert len(sizes) == 1
    manifest_bytes = (site / "manifest.json").read_bytes()
    for sub in ("alice", "bob", "carol", "dave"):
        assert sub.encode() not in Envelope.from_bytes(manifest_bytes).payload
    for loc in locs.values():
        assert m["boxes"][loc]["path"].startswith(f"boxes/1/{loc}.")
    recs = snapshot_lines(site, m)
    assert [rid_of(x) for x in recs] == [rid(hk, "P1")]

    def box_entries(sub: str, mm: dict[str, Any]) -> list[str]:
        contents, _ = open_site_box(site, mm, sub, subs[sub])
        assert contents.hash_key == hash_key(keys)
        out = []
        for line in contents.restricted:
            plain = open_any(line, contents.hash_key, ids_of(src))
            assert "visibility" not in plain and "audience" not in plain
            out.append(plain["entry_id"])
        return out

    assert sorted(box_entries("alice", m)) == ["R1", "R2"]
    assert sorted(box_entries("bob", m)) == ["R2", "R3"]
    assert box_entries("dave", m) == []
    a_contents, _ = open_site_box(site, m, "alice", alice)
    assert [rid_of(x) for x in a_contents.restricted] == sorted([rid(hk, "R1"), rid(hk, "R2")])
    # Not with another subscriber's key, nor under another locator or version.
    alice_box = fetch(site, m["boxes"][locs["alice"]])
    with pytest.raises(VerificationError):
        open_box(bob, alice_box, box_context(locs["alice"], 1))
    with pytest.raises(VerificationError):
        open_box(alice, alice_box, box_context(locs["bob"], 1))
    with pytest.raises(VerificationError):
        open_box(alice, alice_box, box_context(locs["alice"], 2))

    # v2: alice loses all her restricted entries -> her box is empty (clears her
    # partition); R2 becomes public -> P line in the public delta.
    src2 = [
        person("P1", ID_A),
        person("R2", ID_C),
        entity("R3", visibility="restricted", audience=["bob"]),
    ]
    r2 = publish(src2, keys, site, now=NOW)
    assert not r2.rotated
    m2 = verified_manifest(site, keys)
    assert sorted(m2["boxes"]) == sorted(locs.values())
    assert box_entries("alice", m2) == []
    assert box_entries("bob", m2) == ["R3"]
    delta = gzip.decompress(fetch(site, m2["deltas"][0]))
    assert delta_ops(delta) == [("P", rid(hk, "R2"))]
    assert open_any(delta.split(b"\t", 1)[1].rstrip(b"\n"), hk, [("id", ID_C)])["entry_id"] == (
        "R2"
    )
    # v3: every registered subscriber still gets a box, all of one size.
    publish(src2, keys, site, now=NOW)
    m3 = verified_manifest(site, keys)
    assert sorted(m3["boxes"]) == sorted(locs.values())
    assert len({a["length"] for a in m3["boxes"].values()}) == 1
    assert box_entries("alice", m3) == []

    # Nothing restricted leaks into public files: no record id of R1/R3 outside boxes.
    for p, data in all_site_bytes(site):
        if p.suffix == ".box":
            continue
        for entry_id in ("R1", "R3"):
            assert rid(hk, entry_id).encode() not in data, p
            assert f'"{entry_id}"'.encode() not in data


def test_boxes_padded_to_one_size_whatever_the_counts(keys: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    big = _register(keys, "big")
    small = _register(keys, "small")
    src = [
        person(f"R{i:03d}", make_id(seq=i), visibility="restricted", audience=["big"])
        for i in range(1, 80)
    ]
    r = publish(src, keys, site, now=NOW)
    m = verified_manifest(site, keys)
    lengths = {a.length for a in r.boxes.values()}
    assert len(lengths) == 1
    (big_c, big_p), (small_c, small_p) = (
        open_site_box(site, m, "big", big),
        open_site_box(site, m, "small", small),
    )
    assert (len(big_c.restricted), len(small_c.restricted)) == (79, 0)
    assert len(big_p) > BOX_PAD_QUANTUM > len(small_p)  # padded well beyond the small one
    loc = locator("small", small)
    padded = open_box(small, fetch(site, m["boxes"][loc]), box_context(loc, 1))
    assert len(padded) % BOX_PAD_QUANTUM == 0
    assert len(padded) >= len(big_p) + 4


def test_explicit_subscribers_override_registry(keys: Path, tmp_path: Path) -> None:
    _register(keys, "registered")
    k, _ = _x25519()
    src = [person("R1", ID_B, visibility="restricted", audience=["x1"])]
    site = tmp_path / "site"
    r = publish(src, keys, site, now=NOW, subscribers={"x1": k.public_key()})
    loc = box_locator("x1", k.public_key().public_bytes_raw())
    assert list(r.boxes) == [loc]
    contents, _ = open_site_box(site, verified_manifest(site, keys), "x1", k)
    assert [rid_of(x) for x in contents.restricted] == [rid(hash_key(keys), "R1")]
    with pytest.raises(ConfigurationError):
        publish(src, keys, site, now=NOW, subscribers={"../x": k.public_key()})


def test_quarantine(keys: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    minor_id = make_id(birth="20100315", seq=7)
    bad_checksum = ID_A[:-1] + ("2" if ID_A[-1] != "2" else "3")
    lines = [
        json.dumps(person("OK1", ID_A), ensure_ascii=False),
        json.dumps(person("MINOR", minor_id), ensure_ascii=False),  # 10 on published_at
        json.dumps(person("BADID", bad_checksum), ensure_ascii=False),
        "",  # blank lines are skipped
        '{"entry_id": "TRUNC", "case_no": ',
        json.dumps(person("DUP", ID_B), ensure_ascii=False),
        "[1, 2]",
        json.dumps(person("DUP", ID_C), ensure_ascii=False),
        json.dumps(entity("BADMEASURE", measures=["no.such_measure"]), ensure_ascii=False),
        json.dumps({**person("EXTRA", ID_C), "unexpected": 1}, ensure_ascii=False),
        json.dumps(person("OK2", ID_C), ensure_ascii=False),
    ]
    src = tmp_path / "list.jsonl"
    src.write_text("\ufeff" + "\n".join(lines) + "\n", encoding="utf-8")
    seen: list[int] = []
    r = publish(src, keys, site, now=NOW, progress=seen.append)
    assert seen[-1] == 11
    assert r.entries == 2
    q = {item.line: item for item in r.quarantined}
    assert sorted(q) == [2, 3, 5, 6, 7, 8, 9, 10]
    assert q[2].entry_id == "MINOR"
    assert any("minor" in reason for reason in q[2].reasons)
    assert q[3].entry_id == "BADID"
    assert any("checksum" in reason for reason in q[3].reasons)
    assert q[5].entry_id is None
    assert q[6].entry_id == q[8].entry_id == "DUP"
    assert any("duplicate" in reason and "6, 8" in reason for reason in q[6].reasons)
    assert q[7].entry_id is None
    assert any("no.such_measure" in reason for reason in q[9].reasons)
    assert q[10].entry_id == "EXTRA"
    # Quarantine report: private state dir, never on the site.
    assert r.quarantine_path == keys / "state" / "quarantine-1.jsonl"
    report = [json.loads(x) for x in r.quarantine_path.read_text().splitlines()]
    assert [x["line"] for x in report] == [2, 3, 5, 6, 7, 8, 9, 10]
    assert not [p for p in site.rglob("*") if "quarantine" in p.name]
    m = verified_manifest(site, keys)
    hk = hash_key(keys)
    assert [rid_of(x) for x in snapshot_lines(site, m)] == sorted([rid(hk, "OK1"), rid(hk, "OK2")])
    # Reasons never echo an ID number (the minor's, the bad one).
    text = r.quarantine_path.read_text()
    assert minor_id not in text
    assert bad_checksum not in text


def test_no_plaintext_id_anywhere_on_site(keys: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    alice = _register(keys, "alice")
    openers = {locator("alice", alice): ("alice", alice)}
    people = [
        make_id(area="3101" + f"{i:02d}", birth=f"19{60 + i}0{1 + i % 9}1{i % 9}", seq=i)
        for i in range(20)
    ]
    src = [person(f"P{i:02d}", n) for i, n in enumerate(people[:10])]
    src += [
        entity(
            "E1",
            legal_rep_name="某甲",
            related=[
                {"role": "legal_rep", "name": "某甲", "id_number": people[10]},
                {"role": "director", "name": "某乙", "id_number": people[11]},
            ],
        ),
        person("R1", people[12], visibility="restricted", audience=["alice"]),
        revoked(person("RV", people[13], name="撤销人")),
    ]
    publish(src, keys, site, now=NOW)
    src2 = [e for e in src if e["entry_id"] != "P00"] + [person("P99", people[14])]
    publish(src2, keys, site, now=NOW)
    hk = hash_key(keys)
    plaintext = set(people[:15])
    # Also the legacy 15-digit forms, the body without the check digit, the masked form.
    forms = (
        plaintext
        | {n[:6] + n[8:17] for n in plaintext}
        | {n[:17] for n in plaintext}
        | {n[:4] + "*" * 10 + n[-4:] for n in plaintext}
        | {"某乙", "撤销人"}
    )
    # Every sealed line on the site, opened with the identifiers the list names: the
    # plaintext a holder of the hash key and an identifier sees is checked too.
    blobs = list(all_site_bytes(site, openers))
    opened: dict[str, dict[str, Any]] = {}
    for p, data in blobs:
        if p.suffix == ".gz" or p.suffix == ".box":
            for raw in data.splitlines():
                line = raw.split(b"\t", 1)[-1]
                if line.startswith(b'{"b":'):
                    plain = open_any(line, hk, ids_of(src2 + src))
                    opened[plain["entry_id"]] = plain
                    blobs.append((p, json.dumps(plain, ensure_ascii=False).encode()))
    checked = 0
    for p, data in blobs:
        checked += 1
        for value in forms:
            assert value.encode() not in data, f"{value} in {p}"
    assert checked > 8
    # The scan did look at real records: every published entry was opened, the revoked
    # one is on no file, and none carries a field that narrows an ID number down.
    assert sorted(opened) == sorted([f"P{i:02d}" for i in range(10)] + ["E1", "P99", "R1"])
    assert all(not _PRIVATE_FIELDS & set(x) for x in opened.values())
    assert opened["E1"]["related"] == [{"name": "某甲", "role": "legal_rep"}, {"role": "director"}]
    assert "某甲".encode() in json.dumps(opened["E1"], ensure_ascii=False).encode()


def test_root_rotation_reaches_site_and_manifest(keys: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    src = [person("P1", ID_A)]
    publish(src, keys, site, now=NOW)
    old_online, _ = KeyDir(keys).role("online")
    rotate_root(keys, new_root_signers=3, new_threshold=2, now=NOW)
    rotate_root(keys, rotate_online=True, now=NOW)
    publish(src, keys, site, now=NOW)
    m = verified_manifest(site, keys)
    assert m["root_version"] == 3
    assert sorted(p.name for p in (site / "root").iterdir()) == [
        "1.root.json",
        "2.root.json",
        "3.root.json",
    ]
    for n in (1, 2, 3):
        assert (site / "root" / f"{n}.root.json").read_bytes() == (
            keys / "root" / f"{n}.root.json"
        ).read_bytes()
    env = Envelope.from_bytes((site / "manifest.json").read_bytes())
    assert not env.valid_keyids(old_online)  # signed by the new online key only


def test_publish_works_with_root_keys_offline(keys: Path, tmp_path: Path) -> None:
    for p in keys.glob("root-*.pem"):
        p.unlink()
    r = publish([person("P1", ID_A)], keys, tmp_path / "site", now=NOW)
    assert r.version == 1


def test_refuses_site_inside_keys_expired_root_and_bad_arguments(
    keys: Path, tmp_path: Path
) -> None:
    with pytest.raises(ConfigurationError, match="separate"):
        publish([], keys, keys / "site", now=NOW)
    with pytest.raises(ConfigurationError, match="separate"):
        publish([], keys, keys.parent, now=NOW)
    with pytest.raises(ConfigurationError, match="expired"):
        publish([], keys, tmp_path / "site", now=NOW + dt.timedelta(days=400))
    with pytest.raises(ConfigurationError):
        publish([], keys, tmp_path / "site", now=NOW, expires=0)
    with pytest.raises(ConfigurationError):
        publish([], keys, tmp_path / "site", now=NOW, keep_deltas=-1)
    for bad in (0, -1, True, "30d"):
        with pytest.raises(ConfigurationError, match="rotate_after"):
            publish([], keys, tmp_path / "site", now=NOW, rotate_after=bad)  # type: ignore[arg-type]
    for work in ("md5", 5):
        with pytest.raises(ConfigurationError):
            publish([], keys, tmp_path / "site", now=NOW, work_factor=work)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="nothing published"):
        current_hash_key(keys)
    assert not (tmp_path / "site" / "manifest.json").exists()


def test_empty_list(keys: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    r = publish([], keys, site, now=NOW)
    m = verified_manifest(site, keys)
    assert r.entries == m["state"]["entries"] == 0
    assert m["state"]["sha256"] == hashlib.sha256(b"").hexdigest()
    assert m["state"]["sum"] == "0" * 64
    assert snapshot_lines(site, m) == []


def test_refuses_when_state_lost(keys: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    publish([person("P1", ID_A)], keys, site, now=NOW)
    publish([person("P1", ID_A)], keys, site, now=NOW)
    for p in (keys / "state").glob("publisher.sqlite3*"):
        p.unlink()
    before = (site / "manifest.json").read_bytes()
    with pytest.raises(ConfigurationError, match="rollback"):
        publish([person("P1", ID_A)], keys, site, now=NOW)
    assert (site / "manifest.json").read_bytes() == before


def test_failed_publish_leaves_site_and_state_unchanged(
    keys: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = tmp_path / "site"
    publish([person("P1", ID_A)], keys, site, now=NOW)
    before = (site / "manifest.json").read_bytes()

    def boom(*_a: Any, **_k: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(_site, "_copy_roots", boom)
    with pytest.raises(OSError, match="disk full"):
        publish([person("P1", ID_A), person("P2", ID_B)], keys, site, now=NOW)
    assert (site / "manifest.json").read_bytes() == before
    assert not list(site.rglob("*.part"))
    assert not (keys / "state" / "scratch.sqlite3").exists()
    monkeypatch.undo()
    r = publish([person("P1", ID_A), person("P2", ID_B)], keys, site, now=NOW)
    assert r.version == 2
    m = verified_manifest(site, keys)
    delta = gzip.decompress(fetch(site, m["deltas"][0]))
    assert delta_ops(delta) == [("P", rid(hash_key(keys), "P2"))]


def test_concurrent_publish_refused(keys: Path, tmp_path: Path) -> None:
    lock = keys / "state" / "publish.lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with pytest.raises(ConfigurationError, match="another publish"):
            publish([person("P1", ID_A)], keys, tmp_path / "site", now=NOW)
    finally:
        os.close(fd)


def test_state_never_in_site_and_private(keys: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    _register(keys, "alice")
    r = publish([person("P1", ID_A), revoked(person("P2", ID_B))], keys, site, now=NOW)
    names = {p.relative_to(site).parts[0] for p in site.rglob("*")}
    assert names <= {"manifest.json", "root", "snapshots", "deltas", "boxes"}
    state = keys / "state"
    assert (state.stat().st_mode & 0o777) == 0o700
    for p in state.iterdir():
        if p.is_file():
            assert (p.stat().st_mode & 0o077) == 0, p
    # The hash key is in the private state only, never on the site in the clear.
    hk = hash_key(keys)
    assert all(hk.hex().encode() not in data for _, data in all_site_bytes(site))
    # Revoked entries are not published at all (format 1 listed them with a status).
    m = verified_manifest(site, keys)
    assert r.entries == m["state"]["entries"] == 1
    assert [rid_of(x) for x in snapshot_lines(site, m)] == [rid(hk, "P1")]


def test_raising_keep_deltas_serves_only_bases_with_history(keys: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    for n in range(1, 5):
        publish([person("P1", ID_A, severity=1 + n % 3)], keys, site, now=NOW, keep_deltas=1)
        assert [d["from"] for d in verified_manifest(site, keys)["deltas"]] == (
            [n - 1] if n > 1 else []
        )
    publish([person("P1", ID_A), person("P2", ID_B)], keys, site, now=NOW, keep_deltas=8)
    m = verified_manifest(site, keys)
    assert [d["from"] for d in m["deltas"]] == [4]
    publish([person("P2", ID_B)], keys, site, now=NOW, keep_deltas=8)
    m6 = verified_manifest(site, keys)
    assert [d["from"] for d in m6["deltas"]] == [4, 5]
    d46 = gzip.decompress(fetch(site, m6["deltas"][0]))
    hk = hash_key(keys)
    assert sorted(delta_ops(d46)) == [("D", rid(hk, "P1")), ("P", rid(hk, "P2"))]


# -- key epochs ---------------------------------------------------------------------------


def _epoch_view(site: Path, keys: Path) -> tuple[dict[str, Any], bytes, list[bytes]]:
    m = verified_manifest(site, keys)
    return m, hash_key(keys), snapshot_lines(site, m)


def test_key_rotates_after_rotate_after_and_deltas_never_cross(keys: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    alice = _register(keys, "alice")
    src = [person("P1", ID_A), person("P2", ID_B), entity("E1")]
    day = dt.timedelta(days=1)
    r1 = publish(src, keys, site, now=NOW, rotate_after=2 * 86400)
    _, hk1, lines1 = _epoch_view(site, keys)
    r2 = publish(src[:2], keys, site, now=NOW + day, rotate_after=2 * 86400)
    m2, hk2, _ = _epoch_view(site, keys)
    assert (r1.key_epoch, r1.rotated, r2.key_epoch, r2.rotated) == (1, True, 1, False)
    assert hk2 == hk1 and [d["from"] for d in m2["deltas"]] == [1]
    # Two days after the epoch started: a new hash key, every client takes the snapshot.
    r3 = publish(src, keys, site, now=NOW + 2 * day, rotate_after=2 * 86400)
    m3, hk3, lines3 = _epoch_view(site, keys)
    assert (r3.key_epoch, r3.rotated, m3["key_epoch"]) == (2, True, 2)
    assert hk3 != hk1
    assert r3.deltas == {} and m3["deltas"] == []
    assert not (site / "deltas").exists() or not [
        p for p in (site / "deltas").iterdir() if p.name.split(".")[0].endswith("-3")
    ]
    # Same content, all-new record ids and sealed lines; the old key opens none of them.
    assert {rid_of(x) for x in lines3}.isdisjoint(rid_of(x) for x in lines1)
    assert sorted(rid_of(x) for x in lines3) == sorted(rid(hk3, e) for e in ("P1", "P2", "E1"))
    assert all(open_record(x, hk1, ("id", ID_A)) is None for x in lines3)
    assert plaintexts(lines3, hk3, src).keys() == {"P1", "P2", "E1"}
    # The box carries the new key and epoch.
    contents, _ = open_site_box(site, m3, "alice", alice)
    assert (contents.key_epoch, contents.hash_key) == (2, hk3)
    # The next version has deltas again, only from inside the new epoch.
    r4 = publish(src[:1], keys, site, now=NOW + 3 * day, rotate_after=2 * 86400)
    m4, hk4, lines4 = _epoch_view(site, keys)
    assert (r4.key_epoch, r4.rotated, hk4) == (2, False, hk3)
    assert [d["from"] for d in m4["deltas"]] == [3]
    assert apply_delta(lines3, gzip.decompress(fetch(site, m4["deltas"][0]))) == lines4
    # The default serves 30 days.
    publish(src, keys, site, now=NOW + 31 * day)
    assert current_hash_key(keys)[0] == 2
    r6 = publish(src, keys, site, now=NOW + 33 * day)
    assert (r6.key_epoch, r6.rotated, r6.deltas) == (3, True, {})


def test_key_rotates_when_a_subscriber_is_removed_or_rekeyed_not_added(
    keys: Path, tmp_path: Path
) -> None:
    site = tmp_path / "site"
    src = [person("P1", ID_A), person("R1", ID_B, visibility="restricted", audience=["bob"])]
    alice = _register(keys, "alice")
    r1 = publish(src, keys, site, now=NOW)
    hk1 = hash_key(keys)
    # A new subscriber joins: no rotation, it gets the current key in its box.
    bob = _register(keys, "bob")
    r2 = publish(src, keys, site, now=NOW)
    m2 = verified_manifest(site, keys)
    assert (r1.key_epoch, r2.key_epoch, r2.rotated) == (1, 1, False)
    assert [d["from"] for d in m2["deltas"]] == [1]
    bob_box, _ = open_site_box(site, m2, "bob", bob)
    assert bob_box.hash_key == hk1
    assert [rid_of(x) for x in bob_box.restricted] == [rid(hk1, "R1")]
    # Bob re-keys: a new epoch; his old key opens nothing published from now on.
    old_bob = bob
    bob = _register(keys, "bob")
    r3 = publish(src, keys, site, now=NOW)
    m3 = verified_manifest(site, keys)
    hk3 = hash_key(keys)
    assert (r3.key_epoch, r3.rotated, m3["deltas"], hk3 != hk1) == (2, True, [], True)
    assert locator("bob", old_bob) not in m3["boxes"]
    assert sorted(m3["boxes"]) == sorted([locator("alice", alice), locator("bob", bob)])
    for art in m3["boxes"].values():
        box = fetch(site, art)
        loc = art["path"].split("/")[-1].split(".")[0]
        with pytest.raises(VerificationError):
            open_box(old_bob, box, box_context(loc, 3))
    assert open_site_box(site, m3, "bob", bob)[0].hash_key == hk3
    # Alice is removed: a new epoch, no box for her, and the key she holds (epoch 2)
    # opens none of the new records even with the identifier.
    alice_key = open_site_box(site, m3, "alice", alice)[0].hash_key
    _unregister(keys, "alice")
    r4 = publish(src, keys, site, now=NOW)
    m4, hk4, lines4 = _epoch_view(site, keys)
    assert (r4.key_epoch, r4.rotated, m4["deltas"]) == (3, True, [])
    assert list(m4["boxes"]) == [locator("bob", bob)]
    assert alice_key == hk3 != hk4
    assert open_record(lines4[0], alice_key, ("id", ID_A)) is None
    assert open_record(lines4[0], hk4, ("id", ID_A)) is not None
    # Unchanged membership afterwards: the epoch holds.
    r5 = publish(src, keys, site, now=NOW)
    assert (r5.key_epoch, r5.rotated) == (3, False)


def test_failed_rotating_publish_keeps_the_old_epoch(
    keys: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = tmp_path / "site"
    _register(keys, "alice")
    publish([person("P1", ID_A)], keys, site, now=NOW)
    before = current_hash_key(keys)
    _unregister(keys, "alice")

    def boom(*_a: Any, **_k: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(_site, "_copy_roots", boom)
    with pytest.raises(OSError, match="disk full"):
        publish([person("P1", ID_A)], keys, site, now=NOW)
    assert current_hash_key(keys) == before
    monkeypatch.undo()
    r = publish([person("P1", ID_A)], keys, site, now=NOW)
    assert (r.version, r.key_epoch, r.rotated) == (2, 2, True)
    assert current_hash_key(keys)[1] != before[1]
