"""The publisher: site artefacts, signatures, deltas, restricted boxes, quarantine."""

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

from intercept_sdk._exceptions import ConfigurationError, VerificationError
from intercept_sdk._platform import publish as _site
from intercept_sdk._platform.keys import KeyDir, add_subscriber, keygen, rotate_root
from intercept_sdk._platform.publish import (
    identifier_key,
    public_record,
    publish,
    record_sum,
    sum_hex,
)
from intercept_sdk._protocol.identifiers import id_check
from intercept_sdk._protocol.models import parse_entry
from intercept_sdk._protocol.signing import MANIFEST_TYPE, Envelope, open_box

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
    return out


def revoked(e: dict[str, Any]) -> dict[str, Any]:
    return {**e, "status": "revoked", "revoked_at": "2026-11-01T00:00:00Z"}


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


def verified_manifest(site: Path, keys: Path) -> dict[str, Any]:
    """Check the manifest with the online role of the newest root; return the payload."""
    env = Envelope.from_bytes((site / "manifest.json").read_bytes())
    assert env.payload_type == MANIFEST_TYPE
    online, threshold = KeyDir(keys).role("online")
    assert len(env.valid_keyids(online)) >= threshold
    # Not signed by the root role: roles are separate.
    root_role, _ = KeyDir(keys).role("root")
    assert not env.valid_keyids(root_role)
    return env.payload_json()


def fetch(site: Path, art: dict[str, Any]) -> bytes:
    data = (site / art["path"]).read_bytes()
    assert len(data) == art["length"]
    assert hashlib.sha256(data).hexdigest() == art["sha256"]
    assert art["sha256"] in art["path"]
    return data


def snapshot_records(site: Path, m: dict[str, Any]) -> list[bytes]:
    raw = gzip.decompress(fetch(site, m["snapshot"]))
    assert len(raw) == m["snapshot"]["raw_length"]
    assert raw == b"" or raw.endswith(b"\n")
    return raw.splitlines()


def check_state(records: list[bytes], m: dict[str, Any]) -> None:
    ids = [json.loads(r)["entry_id"] for r in records]
    assert ids == sorted(ids)
    assert m["state"]["entries"] == len(records)
    assert m["state"]["sha256"] == hashlib.sha256(b"".join(r + b"\n" for r in records)).hexdigest()
    assert m["state"]["sum"] == sum_hex(record_sum(records))


def apply_delta(records: list[bytes], delta: bytes) -> list[bytes]:
    by_id = {json.loads(r)["entry_id"]: r for r in records}
    lines = delta.splitlines()
    keys_in_order = []
    for line in lines:
        op, _, rest = line.partition(b"\t")
        if op == b"P":
            eid = json.loads(rest)["entry_id"]
            by_id[eid] = rest
        else:
            assert op == b"D"
            eid = rest.decode()
            assert eid in by_id, "D for an entry the base does not have"
            del by_id[eid]
        keys_in_order.append(eid)
    assert keys_in_order == sorted(keys_in_order)
    assert len(set(keys_in_order)) == len(keys_in_order)
    return [by_id[k] for k in sorted(by_id)]


def sum_after_delta(old_sum: str, old_records: list[bytes], delta: bytes) -> str:
    """What a client does: update state.sum incrementally from the delta lines only."""
    by_id = {json.loads(r)["entry_id"]: r for r in old_records}
    total = int(old_sum, 16)
    for line in delta.splitlines():
        op, _, rest = line.partition(b"\t")
        eid = json.loads(rest)["entry_id"] if op == b"P" else rest.decode()
        if eid in by_id:
            total -= int.from_bytes(hashlib.sha256(by_id[eid]).digest(), "big")
        if op == b"P":
            total += int.from_bytes(hashlib.sha256(rest).digest(), "big")
    return sum_hex(total)


def all_site_bytes(
    site: Path, openers: dict[str, X25519PrivateKey] | None = None
) -> Iterator[tuple[Path, bytes]]:
    """Every file under the site, gzip decompressed and boxes opened when possible."""
    for p in sorted(site.rglob("*")):
        if not p.is_file():
            continue
        data = p.read_bytes()
        yield p, data
        if p.name.endswith(".gz"):
            yield p, gzip.decompress(data)
        if p.name.endswith(".box") and openers:
            sub = p.parent.name
            version = p.name.split(".")[0]
            if sub in openers:
                plain = open_box(openers[sub], data, f"{sub}|{version}".encode())
                yield p, gzip.decompress(plain)
        if p.name.endswith(".json"):
            env = Envelope.from_bytes(data)
            yield p, env.payload


# -- records ------------------------------------------------------------------------------


def test_identifier_key_is_truncated_hmac() -> None:
    hk = bytes(range(32))
    want = hmac.new(hk, b"id:" + ID_A.encode(), hashlib.sha256).digest()[:16]
    assert identifier_key(hk, "id", ID_A) == want
    assert len(identifier_key(hk, "org", "600037341")) == 16
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


def test_public_record_person_entity_related() -> None:
    hk = os.urandom(32)
    p = parse_entry(person("P1", ID_A, gender="男"))
    rec = json.loads(public_record(p, hk))
    assert rec["id_key"] == identifier_key(hk, "id", ID_A).hex()
    assert rec["id_masked"] == "3604**********0071"
    assert "id_number" not in rec
    assert "related" not in rec
    assert "audience" not in rec
    assert rec["measures"] == ["consumption.star_hotel", "travel.flight"]
    assert rec["published_at"] == "2020-05-01"
    assert "valid_until" not in rec  # unset fields omitted
    # canonical: sorted keys, no spaces, non-ASCII kept
    raw = public_record(p, hk)
    assert (
        raw == json.dumps(rec, ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode()
    )
    assert "张三".encode() in raw

    e = parse_entry(
        entity(
            "E1",
            uscc=USCC_1,
            legal_rep_name="李四",
            related=[
                {"role": "legal_rep", "name": "李四", "id_number": ID_B},
                {"role": "director", "name": "王五"},
            ],
        )
    )
    rec = json.loads(public_record(e, hk))
    assert rec["uscc"] == USCC_1
    # USCC positions 9-17 are the organisation code: both queries meet on one key.
    assert rec["org_key"] == identifier_key(hk, "org", USCC_1[8:17]).hex()
    e2 = parse_entry(entity("E2", org_code=USCC_1[8:16] + "-" + USCC_1[16]))
    rec2 = json.loads(public_record(e2, hk))
    assert rec2["org_code"] == USCC_1[8:17]
    assert rec2["org_key"] == rec["org_key"]
    assert rec["related"] == [
        {
            "role": "legal_rep",
            "name": "李四",
            "id_key": identifier_key(hk, "id", ID_B).hex(),
            "id_masked": "1201**********8241",
        },
        {"role": "director", "name": "王五"},
    ]
    assert ID_B.encode() not in public_record(e, hk)


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
    assert r1.version == 1
    assert r1.entries == 5
    assert r1.quarantined == []
    assert r1.deltas == {}
    m1 = verified_manifest(site, keys)
    assert m1["type"] == "manifest"
    assert m1["spec"] == 1
    assert m1["version"] == 1
    assert m1["root_version"] == 1
    assert m1["published_at"] == "2026-11-22T08:00:00Z"
    assert m1["expires"] == "2026-11-23T08:00:00Z"
    assert m1["hash_key"] == KeyDir(keys).hash_key().hex()
    assert m1["deltas"] == []
    assert m1["restricted"] == {}
    assert m1["snapshot"]["path"].startswith("snapshots/1.")
    recs1 = snapshot_records(site, m1)
    check_state(recs1, m1)
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
    assert r2.version == 2
    m2 = verified_manifest(site, keys)
    assert m2["expires"] == "2026-11-22T11:00:00Z"
    recs2 = snapshot_records(site, m2)
    check_state(recs2, m2)
    assert [d["from"] for d in m2["deltas"]] == [1]
    d12 = m2["deltas"][0]
    assert d12["path"].startswith("deltas/1-2.")
    delta = gzip.decompress(fetch(site, d12))
    assert len(delta) == d12["raw_length"]
    ops = [(line.split(b"\t")[0], line) for line in delta.splitlines()]
    assert [op for op, _ in ops] == [b"P", b"P", b"P", b"D"]  # E3, P1, P2, P3
    assert ops[3][1] == b"D\tP3"
    assert json.loads(ops[2][1].split(b"\t", 1)[1])["status"] == "revoked"
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
    # Same content, deterministic gzip: the same snapshot bytes.
    assert m3["snapshot"]["sha256"] == m2["snapshot"]["sha256"]
    assert snapshot_records(site, m3) == recs2


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
        snapshots[n] = snapshot_records(site, m)
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
    d35 = next(d for d in manifests[5]["deltas"] if d["from"] == 3)
    assert b"P21" not in gzip.decompress(fetch(site, d35))
    d45 = next(d for d in manifests[5]["deltas"] if d["from"] == 4)
    assert b"D\tP21" in gzip.decompress(fetch(site, d45))


def test_old_artefacts_pruned(keys: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    for n in range(1, 6):
        publish(
            [person("P1", ID_A, severity=1 + n % 3)],
            keys,
            site,
            now=NOW,
            keep_versions=2,
            keep_deltas=2,
        )
    snaps = sorted(p.name.split(".")[0] for p in (site / "snapshots").iterdir())
    assert snaps == ["4", "5"]
    deltas = sorted(p.name.split(".")[0] for p in (site / "deltas").iterdir())
    assert deltas == ["2-4", "3-4", "3-5", "4-5"]
    assert not list(site.rglob("*.part"))


def test_restricted_boxes(keys: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    site = tmp_path / "site"
    alice, alice_pem = _x25519()
    bob, bob_pem = _x25519()
    add_subscriber(keys, "alice", None, alice_pem)
    add_subscriber(keys, "bob", None, bob_pem)
    add_subscriber(keys, "dave", None, _x25519()[1])  # registered, never named
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
    assert sorted(m["restricted"]) == ["alice", "bob"]
    recs = snapshot_records(site, m)
    assert [json.loads(x)["entry_id"] for x in recs] == ["P1"]

    def open_for(sub: str, key: X25519PrivateKey, version: int, art: dict[str, Any]) -> list[Any]:
        box = fetch(site, art)
        raw = gzip.decompress(open_box(key, box, f"{sub}|{version}".encode()))
        assert hashlib.sha256(raw).hexdigest() == art["state_sha256"]
        lines = raw.splitlines()
        assert art["entries"] == len(lines)
        return [json.loads(x) for x in lines]

    a = open_for("alice", alice, 1, m["restricted"]["alice"])
    assert [x["entry_id"] for x in a] == ["R1", "R2"]
    assert all(x["visibility"] == "restricted" and "audience" not in x for x in a)
    assert a[0]["id_key"] == identifier_key(KeyDir(keys).hash_key(), "id", ID_B).hex()
    b = open_for("bob", bob, 1, m["restricted"]["bob"])
    assert [x["entry_id"] for x in b] == ["R2", "R3"]
    assert m["restricted"]["alice"]["path"].startswith("restricted/alice/1.")
    # Not with another subscriber's key, nor under another name or version.
    alice_box = fetch(site, m["restricted"]["alice"])
    with pytest.raises(VerificationError):
        open_box(bob, alice_box, b"alice|1")
    with pytest.raises(VerificationError):
        open_box(alice, alice_box, b"bob|1")
    with pytest.raises(VerificationError):
        open_box(alice, alice_box, b"alice|2")

    # v2: alice loses all her restricted entries -> she gets an empty box (clears her
    # partition); R2 becomes public -> P line in the public delta.
    src2 = [
        person("P1", ID_A),
        person("R2", ID_C),
        entity("R3", visibility="restricted", audience=["bob"]),
    ]
    publish(src2, keys, site, now=NOW)
    m2 = verified_manifest(site, keys)
    assert sorted(m2["restricted"]) == ["alice", "bob"]
    assert open_for("alice", alice, 2, m2["restricted"]["alice"]) == []
    assert [x["entry_id"] for x in open_for("bob", bob, 2, m2["restricted"]["bob"])] == ["R3"]
    delta = gzip.decompress(fetch(site, m2["deltas"][0]))
    assert [line.split(b"\t")[0] for line in delta.splitlines()] == [b"P"]
    assert json.loads(delta.split(b"\t", 1)[1])["entry_id"] == "R2"
    # v3: alice still empty, no longer listed.
    publish(src2, keys, site, now=NOW)
    assert sorted(verified_manifest(site, keys)["restricted"]) == ["bob"]

    # Nothing restricted leaks into public files: no R1/R3 outside boxes.
    for p, data in all_site_bytes(site):
        if p.suffix == ".box":
            continue
        assert b'"R1"' not in data
        assert b'"R3"' not in data


def test_explicit_subscribers_override_registry(keys: Path, tmp_path: Path) -> None:
    k, _ = _x25519()
    src = [person("R1", ID_B, visibility="restricted", audience=["x1"])]
    r = publish(src, keys, tmp_path / "site", now=NOW, subscribers={"x1": k.public_key()})
    assert list(r.restricted) == ["x1"]
    with pytest.raises(ConfigurationError):
        publish(src, keys, tmp_path / "site", now=NOW, subscribers={"../x": k.public_key()})


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
    assert [json.loads(x)["entry_id"] for x in snapshot_records(site, m)] == ["OK1", "OK2"]
    # Reasons never echo an ID number (the minor's, the bad one).
    text = r.quarantine_path.read_text()
    assert minor_id not in text
    assert bad_checksum not in text


def test_no_plaintext_id_anywhere_on_site(keys: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    alice, alice_pem = _x25519()
    add_subscriber(keys, "alice", None, alice_pem)
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
        revoked(person("RV", people[13])),
    ]
    publish(src, keys, site, now=NOW)
    src2 = [e for e in src if e["entry_id"] != "P00"] + [person("P99", people[14])]
    publish(src2, keys, site, now=NOW)
    plaintext = {n for n in people[:15]}
    # Also the legacy 15-digit forms and the body without the check digit.
    forms = plaintext | {n[:6] + n[8:17] for n in plaintext} | {n[:17] for n in plaintext}
    checked = 0
    for p, data in all_site_bytes(site, {"alice": alice}):
        checked += 1
        for value in forms:
            assert value.encode() not in data, f"{value} in {p}"
    assert checked > 8
    # The masked forms are there, so the scan did look at real records.
    everything = b"".join(d for _, d in all_site_bytes(site, {"alice": alice}))
    assert (people[12][:4] + "*" * 10 + people[12][-4:]).encode() in everything
    assert (people[10][:4] + "*" * 10 + people[10][-4:]).encode() in everything


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


def test_refuses_site_inside_keys_and_expired_root(keys: Path, tmp_path: Path) -> None:
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
    assert not (tmp_path / "site" / "manifest.json").exists()


def test_empty_list(keys: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    r = publish([], keys, site, now=NOW)
    m = verified_manifest(site, keys)
    assert r.entries == m["state"]["entries"] == 0
    assert m["state"]["sha256"] == hashlib.sha256(b"").hexdigest()
    assert m["state"]["sum"] == "0" * 64
    assert snapshot_records(site, m) == []


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
    assert [json.loads(x.split(b"\t", 1)[1])["entry_id"] for x in delta.splitlines()] == ["P2"]


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
    publish([person("P1", ID_A), revoked(person("P2", ID_B))], keys, site, now=NOW)
    names = {p.relative_to(site).parts[0] for p in site.rglob("*")}
    assert names <= {"manifest.json", "root", "snapshots", "deltas", "restricted"}
    state = keys / "state"
    assert (state.stat().st_mode & 0o777) == 0o700
    for p in state.iterdir():
        if p.is_file():
            assert (p.stat().st_mode & 0o077) == 0, p
    # Revoked entries stay listed, with their status.
    m = verified_manifest(site, keys)
    recs = {json.loads(x)["entry_id"]: json.loads(x) for x in snapshot_records(site, m)}
    assert recs["P2"]["status"] == "revoked"
    assert recs["P2"]["revoked_at"] == "2026-11-01T00:00:00Z"


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
    assert [line.split(b"\t")[0] for line in d46.splitlines()] == [b"D", b"P"]
