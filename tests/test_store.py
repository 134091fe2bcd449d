"""The local list store against real SQLite files: atomicity, digests, tampering, crashes.

The crash and concurrency tests run helper processes with ``sys.executable -c`` that
import this module (``_child_*`` functions), so the record fixtures are shared.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import os
import random
import signal
import sqlite3
import stat
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pytest

import intercept_sdk._client.store
from intercept_sdk._client.store import RELATIONS, ChangeSet, Hit, Store, _Codec
from intercept_sdk._exceptions import (
    BaseVersionMismatch,
    DigestMismatch,
    FormatError,
    NeverSynced,
    StoreCorrupted,
    StoreError,
)
from intercept_sdk._protocol.sealing import (
    TAG_BYTES,
    IdentifierKind,
    WorkFactor,
    identifier_secret,
    kek,
    open_body,
    open_wrap,
    parse_sealed,
    record_id,
    seal_record,
    tag,
    unpack_sealed,
)

HASH_KEY = bytes(range(32))
TESTS = Path(__file__).resolve().parent
PACKAGE = Path(intercept_sdk._client.store.__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------
# fixtures: sealed records as the publisher writes them (site format 2, decision 0011)
# ---------------------------------------------------------------------------------------
WORK = WorkFactor()
LOCATOR = "0123456789abcdef" * 2
KEY_EPOCH = 1


def secret(kind: IdentifierKind, value: str) -> bytes:
    return identifier_secret(HASH_KEY, kind, value)


def key(kind: IdentifierKind, value: str) -> bytes:
    """The lookup key of an identifier: the 4-byte tag of its secret (what the index holds)."""
    return secret(kind, value)[:TAG_BYTES]


def rid(entry_id: str) -> str:
    """The record id (hex) of an entry: what the store's entry_id column holds."""
    return record_id(HASH_KEY, entry_id).hex()


def canon(obj: dict[str, object]) -> bytes:
    return json.dumps(obj, ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode()


def seal(
    entry_id: str, plain: dict[str, object], idents: list[tuple[IdentifierKind, str, str]]
) -> bytes:
    """Seal ``plain`` so that each ``(kind, value, relation)`` opens it."""
    keks = [
        (secret(kind, value), kek(secret(kind, value), WORK), RELATIONS.index(relation))
        for kind, value, relation in idents
    ]
    return seal_record(HASH_KEY, entry_id, canon(plain), keks)


def line(stored: bytes) -> bytes:
    """The signed line of a record as a store lookup returns it (packed or raw)."""
    return unpack_sealed(stored[1:]) if stored[:1] == b"\x06" else stored


def open_record(record: bytes, kind: IdentifierKind, value: str) -> tuple[str, dict[str, Any]]:
    """``(relation, plaintext)`` of a sealed record (a line, or a store lookup's packed
    form) opened with an identifier held."""
    sealed = parse_sealed(line(record))
    s = secret(kind, value)
    for t, blob in sealed.wraps:
        if t == tag(s):
            opened = open_wrap(kek(s, WORK), sealed.rid, t, blob)
            if opened is not None:
                record_key, relation = opened
                body = open_body(record_key, sealed.rid, sealed.body)
                return RELATIONS[relation], json.loads(body)
    raise AssertionError(f"the record does not open with {kind}:{value}")


def id_number(i: int) -> str:
    return f"1302031980{(i % 12) + 1:02d}{(i % 28) + 1:02d}{i % 1000:03d}{i % 10}"


def person(eid: str, idn: str, *, marker: str = "", visibility: str = "public") -> bytes:
    plain: dict[str, object] = {
        "entry_id": eid,
        "case_no": "(2019)冀0203执123号",
        "subject_type": "person",
        "name": "张伟",
        "court": "唐山市路南区人民法院",
        "basis_doc_no": "(2018)冀0203民初456号",
        "basis_issuer": "唐山市路南区人民法院",
        "obligation": f"被告张伟于本判决生效之日起十日内偿还原告借款本金50000元及利息{marker}",
        "performance": "全部未履行",
        "situation": 3,
        "published_at": "2019-06-01",
        "filed_at": "2019-03-02",
        "performed_amount": "0",
        "unperformed_amount": "50000",
        "severity": 1,
        "status": "active",
        "visibility": visibility,
        "measures": ["*"],
    }
    return seal(eid, plain, [("id", idn, "self")])


def entity(
    eid: str, org: str, related: Sequence[tuple[str, str, str | None]], marker: str = ""
) -> bytes:
    rel: list[dict[str, object]] = []
    idents: list[tuple[IdentifierKind, str, str]] = [("org", org, "self")]
    for role, name, idn in related:
        rel.append({"role": role, "name": name} if role == "legal_rep" else {"role": role})
        if idn is not None:
            idents.append(("id", idn, role))
    plain: dict[str, object] = {
        "entry_id": eid,
        "case_no": "(2020)冀0203执77号",
        "subject_type": "entity",
        "name": "唐山市某某建材有限公司",
        "uscc": f"91130203{org}X",
        "org_code": org,
        "legal_rep_name": related[0][1],
        "related": rel,
        "court": "唐山市路南区人民法院",
        "basis_doc_no": "(2019)冀0203民初9号",
        "basis_issuer": "唐山市路南区人民法院",
        "obligation": f"被执行人支付货款120000元{marker}",
        "performance": "部分未履行",
        "situation": 1,
        "published_at": "2020-01-10",
        "filed_at": "2019-12-01",
        "performed_amount": "1000",
        "unperformed_amount": "119000",
        "severity": 2,
        "status": "active",
        "visibility": "public",
        "measures": ["*"],
    }
    return seal(eid, plain, idents)


def digests(records: Iterable[bytes]) -> tuple[str, str, int]:
    sha = hashlib.sha256()
    total = 0
    n = 0
    for r in records:
        sha.update(r + b"\n")
        total += int.from_bytes(hashlib.sha256(r).digest(), "big")
        n += 1
    return sha.hexdigest(), f"{total % (1 << 256):064x}", n


def manifest(version: int, records: list[bytes], key_epoch: int = KEY_EPOCH) -> bytes:
    """A manifest envelope of site format 2 (the store keeps it as is; trust checks it)."""
    sha, total, n = digests(records)
    payload = {
        "type": "manifest",
        "spec": 2,
        "version": version,
        "key_epoch": key_epoch,
        "kdf": WORK.to_json(),
        "state": {"entries": n, "sha256": sha, "sum": total},
        "boxes": {
            LOCATOR: {
                "path": f"boxes/{version}/{LOCATOR}.{hashlib.sha256(box(version)).hexdigest()}.box",
                "sha256": hashlib.sha256(box(version)).hexdigest(),
                "length": len(box(version)),
            }
        },
    }
    return json.dumps(
        {
            "payload": base64.b64encode(json.dumps(payload).encode()).decode(),
            "payload_type": "application/vnd.intercept-sdk.manifest+json",
            "signatures": [],
        }
    ).encode()


def box(version: int) -> bytes:
    """Stands for the subscriber's sealed box of ``version``: the store keeps it opaque."""
    return f"sealed box of version {version}".encode() + hashlib.sha256(b"box").digest()


def eid_of(record: bytes) -> str:
    """The record id (hex) of a sealed line: snapshot order and the store's entry_id.

    A line that is not a sealed record sorts first ("": the store decides what it is).
    """
    try:
        obj = json.loads(record)
    except ValueError:
        return ""
    return str(obj.get("r", "")) if isinstance(obj, dict) else ""


def snapshot(
    store: Store,
    version: int,
    records: list[bytes],
    restricted: list[bytes] | None = None,
    key_epoch: int = KEY_EPOCH,
) -> ChangeSet:
    records = sorted(records, key=eid_of)
    sha, total, _n = digests(records)
    if restricted is not None:
        restricted = sorted(restricted, key=eid_of)
    rsha = None if restricted is None else digests(restricted)[0]
    return store.write_snapshot(
        version,
        iter(records),
        manifest=manifest(version, records, key_epoch),
        box=box(version),
        key_epoch=key_epoch,
        expected_sha256=sha,
        expected_sum=total,
        restricted=restricted,
        restricted_sha256=rsha,
    )


def delta(
    store: Store,
    old: list[bytes],
    new: list[bytes],
    from_version: int,
    to_version: int,
    restricted: list[bytes] | None = None,
    key_epoch: int = KEY_EPOCH,
) -> ChangeSet:
    """Apply the delta that turns ``old`` into ``new`` (as the publisher would write it:
    ``P <sealed line>`` and ``D <record id>``)."""
    before = {eid_of(r): r for r in old}
    after = {eid_of(r): r for r in new}
    ops: list[tuple[str, bytes]] = []
    for eid in sorted(before.keys() | after.keys()):
        if eid not in after:
            ops.append(("D", eid.encode()))
        elif before.get(eid) != after[eid]:
            ops.append(("P", after[eid]))
    new_sorted = sorted(new, key=eid_of)
    sha, total, n = digests(new_sorted)
    if restricted is not None:
        restricted = sorted(restricted, key=eid_of)
    return store.apply_delta(
        from_version,
        to_version,
        ops,
        manifest=manifest(to_version, new_sorted, key_epoch),
        box=box(to_version),
        key_epoch=key_epoch,
        expected_sum=total,
        expected_entries=n,
        expected_sha256=sha,
        restricted=restricted,
        restricted_sha256=None if restricted is None else digests(restricted)[0],
    )


def opened(hit: Hit, kind: IdentifierKind, value: str) -> str:
    """The relation a hit's record opens with for the identifier held."""
    return open_record(hit.record, kind, value)[0]


def flip_body(record: bytes) -> bytes:
    """``record`` with one base64 character of its sealed body changed (still a valid line)."""
    obj = json.loads(record)
    b = obj["b"]
    i = len(b) // 2
    obj["b"] = b[:i] + ("B" if b[i] != "B" else "C") + b[i + 1 :]
    return canon(obj)


def base_records(n: int = 20) -> list[bytes]:
    return [person(f"E{i:05d}", id_number(i)) for i in range(n)]


def db_path(cache: Path) -> Path:
    return cache / (cache / "CURRENT").read_text().strip()


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"


# ---------------------------------------------------------------------------------------
# codec
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "record",
    [
        person("E1", id_number(1)),
        entity(
            "E2", "123456789", [("legal_rep", "李四", id_number(2)), ("director", "王五", None)]
        ),
        b'{"entry_id":"E3","name":"\xf0\x9f\x98\x80 emoji","x":"\\u0001"}',  # non-BMP, escapes
        b'{ "entry_id" : "E4" , "id_key":"' + b"a" * 32 + b'"}',  # not canonical
        b'{"name":"x","entry_id":"E5"}',  # entry_id last: no comma to strip
        b'{"id_key":"' + b"A" * 32 + b'","entry_id":"E6","org_key":"0123"}',  # not markable
        b'{"entry_id":"E7","raw":"\x01\x02\x03"}',  # marker bytes present: stored as is
        b'{"entry_id":"E8","bad":"\xff\xfe"}',  # invalid UTF-8
        b'{"entry_id":"' + rid("E1").encode() + b'","x":1}',  # an entry_id member that is a rid
    ],
)
def test_codec_returns_exact_bytes(record: bytes) -> None:
    codec = _Codec()
    canonical = record.startswith(b'{"b":"')  # a sealed line as the publisher writes it
    for eid in ("E1", "E2", "E3", "E4", "E5", "E6", "E7", "E8", "X", rid("E1"), rid("E2")):
        body = codec.encode(record, eid)
        assert body == codec.encode_parsed(record, eid)
        # canonical lines are packed (form 6: ~1/3 smaller), anything else kept as is
        assert body[:1] == (b"\x06" if canonical else b"\x05")
        if canonical:
            assert len(body) < len(record) * 0.75
        else:
            assert body == b"\x05" + record
        assert codec.decode(body, eid) == record


def test_codec_keeps_lines_that_would_not_rebuild_exactly() -> None:
    """A valid line in any layout but the canonical one (spaces, upper-case hex, a base64
    character with stray low bits) is stored raw: packing must give back the very bytes
    that were signed."""
    codec = _Codec()
    line = person("E1", id_number(1))
    sealed = json.loads(line)
    body_b64 = sealed["b"]
    variants = [
        json.dumps(sealed, indent=1).encode(),
        line.replace(sealed["r"].encode(), sealed["r"].upper().encode()),
    ]
    # the same bytes, with non-zero padding bits in the body's last base64 character
    if body_b64.endswith("=="):
        last = body_b64[-3]
        alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
        odd = alphabet[alphabet.index(last) | 1] if alphabet.index(last) % 2 == 0 else last
        if odd != last:
            variants.append(line.replace(body_b64.encode(), (body_b64[:-3] + odd + "==").encode()))
    for v in variants:
        body = codec.encode(v, "E1")
        assert body == b"\x05" + v
        assert codec.decode(body, "E1") == v
    assert codec.encode(line, "E1")[:1] == b"\x06"


def test_codec_rejects_garbage_bodies() -> None:
    codec = _Codec()
    body = codec.encode(person("E1", id_number(1)), "E1")
    for bad in (b"", b"\x05", b"\x06", b"\x06" + body[1:20], b"\x09" + body[1:], b"\x01\x00\x00"):
        with pytest.raises(StoreCorrupted):
            codec.decode(bad, "E1")


def test_codec_refuses_the_retired_body_forms() -> None:
    """Forms 0-4 (raw, deflate, zstd with a dictionary: files of store schemas 1-2) are
    no longer read: only a file of another schema held them, and such a file is never
    decoded. Schema 4 keeps canonical sealed lines packed (form 6), others as they are
    (form 5)."""
    codec = _Codec()
    record = person("E1", id_number(1))
    deflate = zlib.compressobj(6, zlib.DEFLATED, -15)
    deflated = deflate.compress(record) + deflate.flush()
    for bad in (b"\x00" + record, b"\x01" + deflated, b"\x02" + deflated, b"\x03" + record):
        with pytest.raises(StoreCorrupted, match="unknown body form"):
            codec.decode(bad, "E1")
    assert codec.decode(codec.encode(record, "E1"), "E1") == record


def test_build_insert_error_leaves_the_old_version(
    cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = Store(cache)
    v1 = base_records(10)
    snapshot(store, 1, v1)
    calls = []

    def failing_insert(*args: object) -> None:
        calls.append(threading.current_thread().name)
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(intercept_sdk._client.store, "_insert_flat", failing_insert)
    with pytest.raises(StoreError, match="disk I/O error"):
        snapshot(store, 2, base_records(12))
    assert calls == [threading.current_thread().name]  # the build runs on the caller's thread
    assert store.state() is not None and store.state().version == 1  # type: ignore[union-attr]
    assert not [f for f in os.listdir(cache) if f.startswith(".build-")]
    assert store.verify().version == 1


def test_build_stops_on_a_bad_record_mid_stream(
    cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(intercept_sdk._client.store, "_BATCH_ROWS", 7)
    store = Store(cache)
    records = sorted(base_records(40), key=eid_of)
    bad = json.loads(records[30])
    bad["w"] = "x"
    records[30] = canon(bad)
    with pytest.raises(FormatError, match="w must be a list"):
        store.write_snapshot(
            1,
            iter(records),
            manifest=b"{}",
            box=box(1),
            key_epoch=KEY_EPOCH,
            expected_sha256="0" * 64,
            expected_sum="0" * 64,
        )
    assert store.state() is None
    assert not [f for f in os.listdir(cache) if f.startswith(".build-")]
    good = base_records(40)
    snapshot(store, 1, good)  # many batches, in order
    assert store.verify().entries == 40
    assert line(store.lookup([key("id", id_number(39))])[1][0].record) == good[39]


@pytest.mark.parametrize(("batch", "record_rows", "key_rows"), [(7, 3, 2), (5, 5, 4), (50, 7, 300)])
def test_build_multi_row_inserts_store_every_row(
    cache: Path, monkeypatch: pytest.MonkeyPatch, batch: int, record_rows: int, key_rows: int
) -> None:
    """Rows go in by multi-row INSERTs; the rest of each batch waits for the next one."""
    monkeypatch.setattr(intercept_sdk._client.store, "_BATCH_ROWS", batch)
    monkeypatch.setattr(intercept_sdk._client.store, "_BUILD_RECORD_ROWS", record_rows)
    monkeypatch.setattr(intercept_sdk._client.store, "_BUILD_KEY_ROWS", key_rows)
    people = base_records(23)
    firms = [
        entity(
            f"F{i:04d}",
            f"ORG{i:05d}",
            [("legal_rep", "王五", id_number(100 + i)), ("director", "赵六", id_number(200 + i))]
            + [("supervisor", "钱七", id_number(300 + i))] * (i % 3),  # duplicates collapse
        )
        for i in range(17)
    ]
    store = Store(cache)
    progress: list[int] = []
    records = sorted(people + firms, key=eid_of)
    sha, total, n = digests(records)
    store.write_snapshot(
        1,
        iter(records),
        manifest=manifest(1, records),
        box=box(1),
        key_epoch=KEY_EPOCH,
        expected_sha256=sha,
        expected_sum=total,
        progress=progress.append,
    )
    assert progress[-1] == n == 40 and progress == sorted(progress)
    st = store.verify()  # recomputes the digests and the key index from every record
    assert (st.entries, st.state_sha256, st.state_sum) == (n, sha, total)
    conn = sqlite3.connect(db_path(cache))
    rids = [r for (r,) in conn.execute("SELECT rid FROM records ORDER BY entry_id")]
    n_keys = conn.execute("SELECT count(*) FROM keys").fetchone()[0]
    conn.close()
    assert rids == list(range(1, n + 1))
    assert n_keys == 23 + 17 * 3 + sum(1 for i in range(17) if i % 3)
    held: dict[bytes, tuple[IdentifierKind, str]] = {
        key("id", id_number(300 + 2)): ("id", id_number(300 + 2)),
        key("org", "ORG00016"): ("org", "ORG00016"),
    }
    _, hits = store.lookup(list(held))
    # The index holds relation 0 (self) for every tag; the relation is inside the wrap.
    assert sorted(
        (h.entry_id, h.relation, open_record(h.record, *held[h.key])[0]) for h in hits
    ) == sorted([(rid("F0002"), "self", "supervisor"), (rid("F0016"), "self", "self")])
    for i in (0, 22):
        assert line(store.lookup([key("id", id_number(i))])[1][0].record) == people[i]


def test_build_stream_digest_covers_every_line(cache: Path) -> None:
    """state.sha256 is hashed a batch at a time; any change in any record must show."""
    records = sorted(base_records(12), key=eid_of)
    sha, total, _ = digests(records)
    tampered = [*records[:-1], flip_body(records[-1])]
    assert tampered[-1] != records[-1] and eid_of(tampered[-1]) == eid_of(records[-1])
    store = Store(cache)
    with pytest.raises(DigestMismatch):
        store.write_snapshot(
            1,
            tampered,
            manifest=b"m",
            box=box(1),
            key_epoch=KEY_EPOCH,
            expected_sha256=sha,
            expected_sum=total,
        )
    assert store.state() is None


def _line(**over: object) -> bytes:
    """A valid sealed line with some members replaced (``None`` removes one)."""
    obj: dict[str, object] = json.loads(person("E1", id_number(1)))
    for name, value in over.items():
        if value is None:
            del obj[name]
        else:
            obj[name] = value
    return canon(obj)


_GOOD = person("E1", id_number(1))
_WRAP = json.loads(_GOOD)["w"][0]
_R = rid("E1")
_PARSE_CASES = [
    _GOOD,
    entity("E2", "123456789", [("legal_rep", "李四", id_number(2)), ("director", "王五", None)]),
    _line(w=[_WRAP, [_WRAP[0], _WRAP[1]]]),  # one tag twice: one index row
    _line(w=[_WRAP] * 64),
    _line(w=[_WRAP] * 65),
    _line(w=[]),
    _line(w={}),
    _line(w=[[_WRAP[0]]]),
    _line(w=[[_WRAP[0], _WRAP[1], "x"]]),
    _line(w=[1]),
    _line(w=[[_WRAP[0].upper(), _WRAP[1]]]),
    _line(w=[[_WRAP[0][:7], _WRAP[1]]]),
    _line(w=[[_WRAP[0] + "\n", _WRAP[1]]]),  # anchors: no final newline
    _line(w=[[1, _WRAP[1]]]),
    _line(r=_R.upper()),
    _line(r=_R[:31]),
    _line(r=_R + "\n"),
    _line(r=1),
    _line(r=None),
    _line(b=None),
    _line(x=1),
    _line(b=1),
    _GOOD.replace(b'"r":"', b'"r":"' + _R.encode() + b'","r":"', 1),  # duplicate member
    _GOOD.replace(b'"r":"' + _R[:1].encode(), b'"r":"\\u00' + _R[:1].encode().hex().encode(), 1),
    _GOOD[:-1] + b',"x":"\x03"}',
    _GOOD[:-1] + b',"x":"\xff"}',
    _GOOD + b" x",
    b"[]",
    b'{"entry_id":"E1"}',  # a format-1 record
    b'{"entry_id":"E1","id_key":"' + b"a" * 32 + b'"}',
]


@pytest.mark.parametrize("record", _PARSE_CASES)
def test_parse_fast_path_agrees_with_the_full_parse(record: bytes) -> None:
    """The pydantic-core view accepts exactly the lines the protocol parser accepts (as
    far as the store reads them), and indexes exactly their record id and tags."""
    from intercept_sdk._client.store import _parse_record

    try:
        strict = parse_sealed(record)
        want: object = (
            strict.rid.hex(),
            list(dict.fromkeys((t.to_bytes(TAG_BYTES, "big"), 0) for t, _ in strict.wraps)),
            False,
        )
    except FormatError:
        want = FormatError
    try:
        got: object = _parse_record(record)
    except FormatError:
        got = FormatError
    assert got == want


def test_parsed_records_never_hold_a_marker_byte() -> None:
    """encode_parsed skips the marker check: JSON has no raw control characters."""
    from intercept_sdk._client.store import _parse_record

    for marker in (b"\x01", b"\x02", b"\x03"):
        for record in (
            b'{"entry_id":"E1","x":"a' + marker + b'"}',
            b'{"entry_id":"E1",' + marker + b'"x":1}',
        ):
            with pytest.raises(FormatError):
                _parse_record(record)
    record = person("E00001", id_number(1))
    eid = _parse_record(record)[0]
    assert eid == rid("E00001")
    codec = _Codec()
    assert codec.encode_parsed(record, eid) == codec.encode(record, eid)
    assert codec.decode(codec.encode_parsed(record, eid), eid) == record


def test_never_synced(cache: Path) -> None:
    store = Store(cache)
    assert store.state() is None
    with pytest.raises(NeverSynced):
        store.lookup([key("id", id_number(1))])
    with pytest.raises(NeverSynced):
        store.lookup_batch([key("id", id_number(1))])
    with pytest.raises(NeverSynced):
        store.verify()
    ro = Store(cache.parent / "missing", readonly=True)
    assert ro.state() is None
    assert not (cache.parent / "missing").exists()
    with pytest.raises(StoreError):
        snapshot(ro, 1, base_records(2))


def test_cache_dir_is_private(cache: Path) -> None:
    cache.mkdir(mode=0o755)
    os.chmod(cache, 0o755)
    store = Store(cache)
    assert stat.S_IMODE(cache.stat().st_mode) == 0o700
    snapshot(store, 1, base_records(3))
    for f in cache.iterdir():
        if f.name.startswith("list-") or f.name in ("CURRENT", "LOCK"):
            assert stat.S_IMODE(f.stat().st_mode) & 0o077 == 0, f.name


def test_snapshot_and_lookup(cache: Path) -> None:
    rep, director, org = id_number(900), id_number(901), "987654321"
    ent = entity("E90000", org, [("legal_rep", "李四", rep), ("director", "王五", director)])
    records = [*base_records(10), ent]
    store = Store(cache)
    changes = snapshot(store, 7, records)
    assert changes == ChangeSet(None, 7, frozenset(), frozenset(), frozenset())

    st = store.state()
    assert st is not None
    assert (st.version, st.entries, st.key_epoch, st.box) == (7, 11, KEY_EPOCH, box(7))
    assert st.manifest == manifest(7, sorted(records, key=eid_of))
    assert st.restricted_sha256 is None and st.restricted_entries == 0

    st2, hits = store.lookup([key("id", id_number(3))])
    assert st2 == st
    assert [(h.entry_id, h.relation, line(h.record)) for h in hits] == [
        (rid("E00003"), "self", records[3])
    ]
    assert hits[0].key == key("id", id_number(3))

    _, hits = store.lookup([key("org", org)])
    assert [(h.entry_id, h.relation, line(h.record)) for h in hits] == [
        (rid("E90000"), "self", ent)
    ]
    _, hits = store.lookup([key("id", rep), key("id", director), key("id", "nobody")])
    assert sorted(h.key for h in hits) == sorted([key("id", rep), key("id", director)])
    assert all(line(h.record) == ent and h.relation == "self" for h in hits)
    # the relation and the record open only with the identifier held
    relation, plain = open_record(ent, "id", rep)
    assert relation == "legal_rep" and plain["entry_id"] == "E90000"
    assert plain["related"] == [{"name": "李四", "role": "legal_rep"}, {"role": "director"}]
    assert open_record(ent, "id", director)[0] == "director"
    assert open_record(ent, "org", org)[0] == "self"
    assert open_record(records[3], "id", id_number(3))[1]["entry_id"] == "E00003"
    with pytest.raises(AssertionError):
        open_record(records[3], "id", id_number(4))
    assert store.lookup([key("id", "nobody")]) == (st, [])
    assert store.lookup([]) == (st, [])

    many = [key("id", id_number(i)) for i in range(10)] + [
        os.urandom(TAG_BYTES) for _ in range(1200)
    ]
    st3, found = store.lookup_batch(many)
    assert st3 == st and set(found) == set(many[:10])
    assert line(found[many[4]][0].record) == records[4]
    _, hits = store.lookup(many[:20])  # more than the small-lookup limit
    assert [h.entry_id for h in hits] == [rid(f"E{i:05d}") for i in range(10)]

    assert store.get_records([rid("E00001"), rid("E90000"), "nope"]) == {
        rid("E00001"): records[1],
        rid("E90000"): ent,
    }
    assert store.verify() == st
    store.close()
    store.close()
    with pytest.raises(StoreError):
        store.lookup([key("id", id_number(3))])


def test_no_plaintext_id_in_files(cache: Path) -> None:
    secret = "11010519491231002X"
    store = Store(cache)
    snapshot(store, 1, [*base_records(5), person("E77777", secret)])
    assert store.lookup([key("id", secret)])[1][0].entry_id == rid("E77777")
    store.close()
    for f in cache.iterdir():
        data = f.read_bytes()
        for needle in (secret, "张伟", "E77777", "唐山市路南区人民法院"):  # sealed, not stored
            assert needle.encode() not in data, (f.name, needle)
            assert needle.encode("utf-16-le") not in data, (f.name, needle)
        assert HASH_KEY not in data and HASH_KEY.hex().encode() not in data, f.name
    bad = canon({"entry_id": "E1", "id_number": secret})
    with pytest.raises(FormatError):
        snapshot(Store(cache), 2, [bad])


def test_snapshot_digest_mismatch_keeps_old_version(cache: Path) -> None:
    store = Store(cache)
    snapshot(store, 1, base_records(5))
    records = sorted(base_records(6), key=eid_of)
    sha, total, _ = digests(records)
    with pytest.raises(DigestMismatch):
        store.write_snapshot(
            2,
            records,
            manifest=b"m",
            box=box(2),
            key_epoch=KEY_EPOCH,
            expected_sha256=sha,
            expected_sum="0" * 64,
        )
    with pytest.raises(DigestMismatch):
        store.write_snapshot(
            2,
            records,
            manifest=b"m",
            box=box(2),
            key_epoch=KEY_EPOCH,
            expected_sha256="0" * 64,
            expected_sum=total,
        )
    st = store.verify()
    assert (st.version, st.entries) == (1, 5)
    assert not [f for f in os.listdir(cache) if f.startswith(".build")]
    assert len([f for f in os.listdir(cache) if f.endswith(".sqlite")]) == 1


@pytest.mark.parametrize(
    "records",
    [
        sorted([person("E2", id_number(2)), person("E1", id_number(1))], key=eid_of)[::-1],
        [person("E1", id_number(1)), person("E1", id_number(2))],  # duplicate record id
        [person("E1", id_number(1)).replace(b'"r":"', b'"r":"X', 1)],  # bad record id
        [b'{"entry_id":"E1","id_key":"' + b"a" * 32 + b'"}'],  # a format-1 record
        [person("E1", id_number(1)) + b"\n" + person("E2", id_number(2))],
        [b"[1,2]", b"not json"],
        [person("E1", id_number(1)).replace(b'"w":[[', b'"w":[["X', 1)],  # bad tag
    ],
)
def test_snapshot_format_errors(cache: Path, records: list[bytes]) -> None:
    store = Store(cache)
    sha, total, _ = digests(records)
    with pytest.raises(FormatError):
        store.write_snapshot(
            1,
            records,
            manifest=b"m",
            box=box(1),
            key_epoch=KEY_EPOCH,
            expected_sha256=sha,
            expected_sum=total,
        )
    assert store.state() is None


def test_snapshot_changeset_and_cleanup(cache: Path) -> None:
    store = Store(cache)
    v1 = base_records(10)
    snapshot(store, 1, v1)
    v2 = [r for r in v1 if eid_of(r) != rid("E00002")]
    v2[0] = person("E00000", id_number(0), marker="changed")
    v2.append(person("E00050", id_number(50)))
    changes = snapshot(store, 2, v2)
    assert changes == ChangeSet(
        1, 2, frozenset({rid("E00050")}), frozenset({rid("E00000")}), frozenset({rid("E00002")})
    )
    v3 = [*v2, person("E00051", id_number(51))]
    assert snapshot(store, 3, v3).added == frozenset({rid("E00051")})
    dbs = sorted(f for f in os.listdir(cache) if f.endswith(".sqlite"))
    assert len(dbs) == 2  # the current file and the previous one
    assert store.verify().version == 3
    assert store.lookup([key("id", id_number(51))])[1][0].entry_id == rid("E00051")


def test_delta_put_change_delete(cache: Path) -> None:
    store = Store(cache)
    ent_rep = id_number(300)
    v1 = [*base_records(8), entity("E00100", "111111111", [("legal_rep", "赵六", ent_rep)])]
    snapshot(store, 1, v1)
    v2 = [r for r in v1 if eid_of(r) not in (rid("E00001"), rid("E00100"))]
    v2[0] = person("E00000", id_number(0), marker="v2")
    v2.append(person("E00009", id_number(9)))
    changes = delta(store, v1, v2, 1, 2)
    assert changes == ChangeSet(
        1,
        2,
        frozenset({rid("E00009")}),
        frozenset({rid("E00000")}),
        frozenset({rid("E00001"), rid("E00100")}),
    )
    st, hits = store.lookup([key("id", id_number(0))])
    assert st.version == 2 and st.entries == 8 and line(hits[0].record) == v2[0]
    assert store.lookup([key("id", id_number(1))])[1] == []
    assert store.lookup([key("id", ent_rep), key("org", "111111111")])[1] == []
    assert store.lookup([key("id", id_number(9))])[1][0].entry_id == rid("E00009")
    assert store.verify().version == 2
    # the same person key changed in place: old key gone, new key found
    v3 = [r for r in v2 if eid_of(r) != rid("E00003")] + [person("E00003", id_number(333))]
    changes = delta(store, v2, v3, 2, 5)
    assert changes.changed == frozenset({rid("E00003")}) and changes.to_version == 5
    assert store.lookup([key("id", id_number(3))])[1] == []
    assert store.lookup([key("id", id_number(333))])[1][0].entry_id == rid("E00003")
    assert store.verify().version == 5


def test_delta_rewrites_only_the_key_rows_that_differ(cache: Path) -> None:
    """A revocation keeps every key; an entity whose officers change keeps the unchanged
    ones. Either way the index afterwards is exactly the records' keys (verify() re-derives
    it) and lookups see the new state."""
    store = Store(cache)
    a, b, c, d = (id_number(400 + i) for i in range(4))
    ent = entity("E00100", "222222222", [("legal_rep", "钱七", a), ("principal", "孙八", b)])
    v1 = [*base_records(4), ent]
    snapshot(store, 1, v1)
    # (a revoked entry leaves the site in format 2: a new amount is the change that
    # keeps every key)
    revoked = person("E00002", id_number(2), marker="已部分履行")
    assert revoked != person("E00002", id_number(2))
    ent2 = entity(
        "E00100",
        "222222222",
        [("legal_rep", "钱七", a), ("principal", "周九", c), ("actual_controller", "吴十", d)],
    )
    v2 = [r for r in v1 if eid_of(r) not in (rid("E00002"), rid("E00100"))] + [revoked, ent2]
    changes = delta(store, v1, v2, 1, 2)
    assert changes.changed == frozenset({rid("E00002"), rid("E00100")})
    assert store.verify().version == 2
    hits = store.lookup([key("id", id_number(2))])[1]
    assert [line(h.record) for h in hits] == [revoked]
    assert [(h.entry_id, opened(h, "id", a)) for h in store.lookup([key("id", a)])[1]] == [
        (rid("E00100"), "legal_rep")
    ]
    assert store.lookup([key("id", b)])[1] == []
    assert [opened(h, "id", c) for h in store.lookup([key("id", c)])[1]] == ["principal"]
    assert [opened(h, "id", d) for h in store.lookup([key("id", d)])[1]] == ["actual_controller"]
    # and back: a key that moves from one role to another keeps its index row (tag, rid,
    # 0); the relation it opens with is the new one
    ent3 = entity("E00100", "222222222", [("principal", "钱七", a)])
    v3 = [r for r in v2 if eid_of(r) != rid("E00100")] + [ent3]
    delta(store, v2, v3, 2, 3)
    assert store.verify().version == 3
    assert [opened(h, "id", a) for h in store.lookup([key("id", a)])[1]] == ["principal"]
    assert store.lookup([key("id", c)])[1] == [] and store.lookup([key("id", d)])[1] == []


def test_delta_wrong_base(cache: Path) -> None:
    store = Store(cache)
    with pytest.raises(BaseVersionMismatch):
        delta(store, [], base_records(2), 1, 2)
    v1 = base_records(4)
    snapshot(store, 1, v1)
    with pytest.raises(BaseVersionMismatch):
        delta(store, v1, base_records(5), 3, 4)
    with pytest.raises(FormatError):
        delta(store, v1, base_records(5), 1, 1)
    assert store.verify().version == 1


@pytest.mark.parametrize("fault", ["sum", "entries", "delete-unknown"])
def test_delta_digest_mismatch_rolls_back(cache: Path, fault: str) -> None:
    store = Store(cache)
    v1 = base_records(6)
    snapshot(store, 1, v1)
    before = store.state()
    v2 = [*v1[1:], person("E00020", id_number(20))]
    sha, total, n = digests(sorted(v2, key=eid_of))
    ops: list[tuple[str, bytes]] = [("D", rid("E00000").encode()), ("P", v2[-1])]
    if fault == "sum":
        total = "1" * 64
    elif fault == "entries":
        n += 1
    else:
        ops.append(("D", rid("E99999").encode()))
    with pytest.raises(DigestMismatch):
        store.apply_delta(
            1,
            2,
            ops,
            manifest=b"m",
            box=box(2),
            key_epoch=KEY_EPOCH,
            expected_sum=total,
            expected_entries=n,
            expected_sha256=sha,
        )
    assert store.state() == before
    assert line(store.lookup([key("id", id_number(0))])[1][0].record) == v1[0]
    assert store.lookup([key("id", id_number(20))])[1] == []
    assert store.verify() == before


def test_restricted_partition(cache: Path) -> None:
    store = Store(cache)
    pub = base_records(5)
    secret = person("E00700", id_number(700), visibility="restricted")
    snapshot(store, 1, pub, restricted=[secret])
    st, hits = store.lookup([key("id", id_number(700))])
    assert line(hits[0].record) == secret and st.restricted_entries == 1
    assert st.restricted_sha256 == digests([secret])[0]
    assert store.verify() == st

    # a snapshot without restricted data carries the partition over
    snapshot(store, 2, pub)
    assert line(store.lookup([key("id", id_number(700))])[1][0].record) == secret
    assert store.verify().restricted_entries == 1

    # restricted digest mismatch: nothing changes
    other = person("E00701", id_number(701), visibility="restricted")
    with pytest.raises(DigestMismatch):
        store.replace_restricted(2, [other], restricted_sha256="0" * 64)
    with pytest.raises(BaseVersionMismatch):
        store.replace_restricted(1, [other], restricted_sha256=None)
    changes = store.replace_restricted(2, [other], restricted_sha256=digests([other])[0])
    assert changes == ChangeSet(
        2, 2, frozenset({rid("E00701")}), frozenset(), frozenset({rid("E00700")})
    )
    assert store.lookup([key("id", id_number(700))])[1] == []
    assert store.state() is not None and store.verify().restricted_entries == 1

    # an entry moves from restricted to public within one delta
    public_now = person("E00701", id_number(701))
    changes = delta(store, pub, [*pub, public_now], 2, 3, restricted=[])
    assert changes.changed == frozenset({rid("E00701")}) and not changes.added
    st = store.verify()
    assert (st.entries, st.restricted_entries) == (6, 0)
    assert line(store.lookup([key("id", id_number(701))])[1][0].record) == public_now
    with pytest.raises(FormatError):  # a restricted partition of malformed records
        snapshot(store, 4, pub, restricted=[person("E1", "x").replace(b'"r":"', b'"r":"X', 1)])
    with pytest.raises(FormatError):  # the same record twice in the restricted partition
        snapshot(store, 4, pub, restricted=[secret, secret])
    assert store.verify().version == 3


# ---------------------------------------------------------------------------------------
# tampering
# ---------------------------------------------------------------------------------------
def _tamper(cache: Path, sql: str, *args: object) -> None:
    conn = sqlite3.connect(db_path(cache))
    conn.execute(sql, args)
    conn.commit()
    conn.close()


def _body_flip(cache: Path) -> None:
    conn = sqlite3.connect(db_path(cache))
    rid, body = conn.execute(
        "SELECT rid, body FROM records ORDER BY rid LIMIT 1 OFFSET 3"
    ).fetchone()
    body = bytearray(body)
    body[len(body) // 2] ^= 0x01
    conn.execute("UPDATE records SET body = ? WHERE rid = ?", (bytes(body), rid))
    conn.commit()
    conn.close()


@pytest.mark.parametrize(
    "tamper",
    [
        "body-byte",
        "delete-row",
        "delete-key",
        "add-key",
        "entry-id",
        "part",
        "meta-entries",
        "meta-sha",
        "manifest",
        "box",
        "key-epoch",
    ],
)
def test_verify_detects_tampering(cache: Path, tamper: str) -> None:
    store = Store(cache)
    snapshot(store, 1, base_records(12))
    store.verify()
    if tamper == "body-byte":
        _body_flip(cache)
    elif tamper == "delete-row":
        _tamper(cache, "DELETE FROM records WHERE entry_id = ?", rid("E00004"))
    elif tamper == "delete-key":
        _tamper(cache, "DELETE FROM keys WHERE k = ?", key("id", id_number(5)))
    elif tamper == "add-key":
        _tamper(cache, "INSERT INTO keys VALUES (?, 1, 0)", key("id", "someone else"))
    elif tamper == "entry-id":
        _tamper(
            cache,
            "UPDATE records SET entry_id = ? WHERE entry_id = ?",
            rid("E99999"),
            rid("E00002"),
        )
    elif tamper == "part":
        _tamper(cache, "UPDATE records SET part = 1 WHERE entry_id = ?", rid("E00002"))
    elif tamper == "box":
        _tamper(cache, "UPDATE meta SET v = ? WHERE k = 'box'", box(2))
    elif tamper == "key-epoch":
        _tamper(cache, "UPDATE meta SET v = 2 WHERE k = 'key_epoch'")
    elif tamper == "meta-entries":
        _tamper(cache, "UPDATE meta SET v = 11 WHERE k = 'entries'")
    elif tamper == "meta-sha":
        _tamper(cache, "UPDATE meta SET v = ? WHERE k = 'state_sha256'", "0" * 64)
    else:
        _tamper(cache, "UPDATE meta SET v = ? WHERE k = 'manifest'", manifest(1, base_records(3)))
    with pytest.raises(StoreCorrupted):
        Store(cache).verify()


def test_verify_detects_foreign_current(cache: Path) -> None:
    store = Store(cache)
    snapshot(store, 1, base_records(4))
    real = db_path(cache)
    copy = cache / "list-1-0123456789abcdef.sqlite"
    copy.write_bytes(real.read_bytes())
    cases = {
        copy.name: StoreCorrupted,  # a copy under another name: its file_id differs
        "list-1-fedcba9876543210.sqlite": StoreCorrupted,  # missing
        "../../etc/passwd": StoreCorrupted,
        "junk": StoreCorrupted,
    }
    (cache / "list-2-aaaaaaaaaaaaaaaa.sqlite").write_bytes(b"not a database at all" * 300)
    cases["list-2-aaaaaaaaaaaaaaaa.sqlite"] = StoreCorrupted
    for name, exc in cases.items():
        (cache / "CURRENT").write_text(name + "\n")
        with pytest.raises(exc):
            Store(cache).verify()
        with pytest.raises(exc):
            Store(cache).lookup([key("id", id_number(1))])
    # a fresh snapshot repairs the store
    (cache / "CURRENT").write_text("junk\n")
    snapshot(Store(cache), 2, base_records(4))
    assert Store(cache).verify().version == 2


@pytest.mark.parametrize("schema", [0, 1, 2, 3, 5])
def test_a_file_of_another_schema_is_never_read(
    cache: Path, schema: int, caplog: pytest.LogCaptureFixture
) -> None:
    """A list file whose schema marker (PRAGMA user_version) is not this version's, as an
    older (3: site format 2 with raw lines; 2: site format 1; 1, and 0) or newer (5) SDK
    leaves it: every read refuses it
    with NeverSynced (one warning, not one per read), writes in place refuse it as no
    base, verify() does not mark it damaged, and the next snapshot replaces it (the old
    file is not kept)."""
    v1 = base_records(8)
    v2 = [*v1[1:], person("E00050", id_number(50))]
    snapshot(Store(cache), 1, v1)
    old = db_path(cache)
    with contextlib.closing(sqlite3.connect(old)) as conn:
        conn.execute(f"PRAGMA user_version = {schema}")
    store = Store(cache)
    with caplog.at_level(logging.WARNING, logger="intercept_sdk.store"):
        assert store.state() is None
        for _ in range(3):
            with pytest.raises(NeverSynced, match=f"store schema {schema}"):
                store.lookup([key("id", id_number(1))])
        with pytest.raises(NeverSynced):
            store.lookup_batch([key("id", id_number(1))] * 20)
        with pytest.raises(NeverSynced):
            store.get_records([rid("E00001")])
        with pytest.raises(NeverSynced):
            store.verify()
        with pytest.raises(BaseVersionMismatch, match="another SDK version"):
            delta(store, v1, v2, 1, 2)
        with pytest.raises(BaseVersionMismatch):
            store.replace_restricted(1, [], restricted_sha256=None)
    told = [r for r in caplog.records if "store schema" in r.getMessage()]
    assert len(told) == 1 and told[0].levelno == logging.WARNING
    assert not store.damaged()
    with contextlib.closing(sqlite3.connect(old)) as conn:  # refused, not changed
        assert conn.execute("PRAGMA user_version").fetchone()[0] == schema
    changes = snapshot(store, 2, v2)
    assert changes.from_version is None  # nothing readable to compare with
    assert not old.exists()
    assert [p.name for p in cache.glob("list-*.sqlite")] == [db_path(cache).name]
    st, hits = store.lookup([key("id", id_number(50)), key("id", id_number(0))])
    assert st.version == 2 and [line(h.record) for h in hits] == [v2[-1]]
    assert store.verify().version == 2


def test_a_foreign_sqlite_file_is_corrupt_not_another_schema(cache: Path) -> None:
    """Another application's id in the file: that is not an SDK upgrade but a foreign or
    damaged file, refused as StoreCorrupted and marked for replacement by verify()."""
    snapshot(Store(cache), 1, base_records(4))
    with contextlib.closing(sqlite3.connect(db_path(cache))) as conn:
        conn.execute("PRAGMA application_id = 1234")
    store = Store(cache)
    with pytest.raises(StoreCorrupted, match="not an intercept-sdk list store"):
        store.lookup([key("id", id_number(1))])
    with pytest.raises(StoreCorrupted):
        store.verify()
    assert store.damaged()


# ---------------------------------------------------------------------------------------
# concurrency within a process, fork
# ---------------------------------------------------------------------------------------
def test_other_store_sees_swap_and_delta(cache: Path) -> None:
    writer, reader = Store(cache), Store(cache)
    v1 = base_records(6)
    snapshot(writer, 1, v1)
    assert reader.lookup([key("id", id_number(1))])[0].version == 1
    v2 = [*v1, person("E00030", id_number(30))]
    delta(writer, v1, v2, 1, 2)
    st, hits = reader.lookup([key("id", id_number(30))])  # same file: seen at once
    assert st.version == 2 and hits
    wal = Path(f"{db_path(cache)}-wal")  # checkpointed and truncated despite the reader
    assert not wal.exists() or wal.stat().st_size == 0
    snapshot(writer, 3, v2)
    # A swapped CURRENT is noticed by the pointer check, made every 50 ms, without
    # refresh(): wait for it (a bounded wait, not a fixed sleep that a loaded machine
    # could outlast).
    deadline = time.monotonic() + 10
    while reader.lookup([key("id", id_number(30))])[0].version != 3:
        assert time.monotonic() < deadline, "the swap was not noticed"
        time.sleep(0.01)
    assert reader.state() is not None


def test_refresh_sees_a_pointer_moved_by_another_store(
    cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """refresh() re-reads CURRENT at once; without it, a swap by another Store object is
    seen only at the next periodic pointer check (made never here, to show the difference)."""
    writer, reader = Store(cache), Store(cache)
    v1 = base_records(6)
    snapshot(writer, 1, v1)
    state = reader.state()
    assert state is not None and state.version == 1
    monkeypatch.setattr(intercept_sdk._client.store, "_POINTER_CHECK_S", 3600.0)
    snapshot(writer, 2, v1)
    for _ in range(3):  # the reader still answers from the file it has open
        assert reader.lookup([key("id", id_number(1))])[0].version == 1
    reader.refresh()
    st, hits = reader.lookup([key("id", id_number(1))])
    assert st.version == 2 and [h.entry_id for h in hits] == [rid("E00001")]
    state = reader.state()
    assert state is not None and state.version == 2
    reader.close()
    with pytest.raises(StoreError, match="closed"):
        reader.refresh()


def test_lookup_redone_when_a_write_lands_between_its_reads(
    cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writer, reader = Store(cache), Store(cache)
    v1 = base_records(6)
    snapshot(writer, 1, v1)
    v2 = [person("E00000", id_number(0), marker="@v2@"), *v1[1:]]
    real = intercept_sdk._client.store._read_state
    fired: list[int] = []

    def racing(conn: sqlite3.Connection) -> object:
        if not fired:  # the reader's hits are read; a delta commits before its state is
            fired.append(1)
            delta(writer, v1, v2, 1, 2)
        return real(conn)

    monkeypatch.setattr(intercept_sdk._client.store, "_read_state", racing)
    st, hits = reader.lookup([key("id", id_number(0))])
    assert fired and st.version == 2 and [line(h.record) for h in hits] == [v2[0]]


def test_threads_share_a_store(cache: Path) -> None:
    store = Store(cache)
    snapshot(store, 1, base_records(30))
    rids = [rid(f"E{i:05d}") for i in range(30)]
    errors: list[BaseException] = []

    def work(seed: int) -> None:
        rng = random.Random(seed)
        try:
            for _ in range(300):
                i = rng.randrange(30)
                _, hits = store.lookup([key("id", id_number(i))])
                assert hits[0].entry_id == rids[i]
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(s,)) for s in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    store.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_fork_reopens_connections(cache: Path) -> None:
    store = Store(cache)
    snapshot(store, 1, base_records(5))
    assert store.lookup([key("id", id_number(2))])[1]
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 1
        try:
            code = (
                0 if store.lookup([key("id", id_number(2))])[1][0].entry_id == rid("E00002") else 2
            )
            store.close()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert store.lookup([key("id", id_number(3))])[1][0].entry_id == rid("E00003")


# ---------------------------------------------------------------------------------------
# crash safety: kill -9 at random moments
# ---------------------------------------------------------------------------------------
CRASH_N = 200


def crash_content(version: int) -> list[bytes]:
    """Deterministic public records of ``version`` (sorted): some appear, change, vanish."""
    out = []
    for i in range(CRASH_N):
        if i % 11 == version % 11:
            continue
        changed_at = version - ((version - i) % 5)
        out.append(person(f"E{i:05d}", id_number(i), marker=f"@v{changed_at}@"))
    return sorted(out, key=eid_of)  # snapshot order: by record id


def _child_crash_writer(path: str) -> None:
    """Writes versions forever (deltas, and every fourth one a full snapshot), printing
    ``committed <version>`` after each."""
    print("ready", flush=True)
    sys.stdin.readline()  # the parent says when: imports overlap the previous round
    store = Store(Path(path))
    while True:
        st = store.state()
        if st is None:
            snapshot(store, 1, crash_content(1))
            continue
        v = st.version
        if (v + 1) % 4 == 0:
            snapshot(store, v + 1, crash_content(v + 1))
        else:
            delta(store, crash_content(v), crash_content(v + 1), v, v + 1)
        print("committed", v + 1, flush=True)


def _run_child(func: str, *args: str) -> subprocess.Popen[bytes]:
    # The child loads only the store's modules under a bare package: the package
    # __init__ pulls in the whole client, whose import time would dominate these loops.
    code = (
        "import sys, types; pkg = types.ModuleType('intercept_sdk'); "
        f"pkg.__path__ = [{str(PACKAGE)!r}]; sys.modules['intercept_sdk'] = pkg; "
        f"sys.path.insert(0, {str(TESTS)!r}); import test_store; "
        f"test_store.{func}(*sys.argv[1:])"
    )
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _crash_loop(cache: Path, iterations: int) -> None:
    rng = random.Random(1234)
    expected: dict[int, str] = {}
    seen_versions = set()
    snapshot(Store(cache), 1, crash_content(1))
    upcoming = _run_child("_child_crash_writer", str(cache))
    for i in range(iterations):
        proc = upcoming
        assert proc.stdin is not None and proc.stdout is not None
        assert proc.stdout.readline() == b"ready\n", proc.communicate()[1].decode()
        proc.stdin.write(b"go\n")
        proc.stdin.flush()
        upcoming = _run_child("_child_crash_writer", str(cache))
        if i % 2:
            # Every other round waits until this writer has committed a version, however
            # slow the machine: the kill then lands in a later write, and the versions
            # provably move on (seen_versions below). The other rounds kill at any moment
            # from the start, including while the writer opens (and recovers) the file.
            out = proc.stdout.readline()
            assert out.startswith(b"committed "), proc.communicate()[1].decode()
        time.sleep(rng.uniform(0.0, 0.4))
        assert proc.poll() is None, proc.communicate()[1].decode()
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        store = Store(cache)
        try:
            st = store.verify()
        except NeverSynced:
            continue
        if st.version not in expected:
            expected[st.version] = digests(crash_content(st.version))[0]
        assert st.state_sha256 == expected[st.version]
        _, hits = store.lookup([key("id", id_number(i)) for i in range(5)])
        first5 = {rid(f"E{i:05d}") for i in range(5)}
        want = [r for r in crash_content(st.version) if eid_of(r) in first5]
        assert sorted(line(h.record) for h in hits) == sorted(want)
        seen_versions.add(st.version)
        store.close()
    upcoming.kill()
    upcoming.communicate()
    assert len(seen_versions) > 1
    leftover = [f for f in os.listdir(cache) if f.startswith(".build")]
    store = Store(cache)
    last = store.state()
    assert last is not None
    snapshot(store, last.version + 1, crash_content(last.version + 1))
    assert not [f for f in os.listdir(cache) if f.startswith(".build")], leftover
    assert len([f for f in os.listdir(cache) if f.endswith(".sqlite")]) <= 2


def test_kill9_leaves_a_complete_version(cache: Path) -> None:
    _crash_loop(cache, 20)


@pytest.mark.slow
def test_kill9_leaves_a_complete_version_200(cache: Path) -> None:
    _crash_loop(cache, 200)


# ---------------------------------------------------------------------------------------
# readers in other processes while a writer applies deltas
# ---------------------------------------------------------------------------------------
READ_N = 60


def reader_content(version: int) -> list[bytes]:
    """Every record of ``version`` carries the marker @v<version>@; the count varies."""
    return [
        person(f"E{i:05d}", id_number(i), marker=f"@v{version}@")
        for i in range(READ_N)
        if i % 7 != version % 7
    ]


def _child_reader(path: str, stop: str) -> None:
    """Looks up all keys until ``stop`` exists; each answer must be one whole version."""
    store = Store(Path(path))
    keys = [key("id", id_number(i)) for i in range(READ_N)]
    checks = 0
    versions = set()
    rng = random.Random(os.getpid())
    index = {rid(f"E{i:05d}"): i for i in range(READ_N)}
    store.lookup(keys[:1])
    print("ready", flush=True)
    while not os.path.exists(stop):
        if rng.random() < 0.5:
            st, hits = store.lookup(keys[:16])
            want = {i for i in range(16) if i % 7 != st.version % 7}
        else:
            st, by_key = store.lookup_batch(keys)
            hits = [h for hs in by_key.values() for h in hs]
            want = {i for i in range(READ_N) if i % 7 != st.version % 7}
        marker = f"@v{st.version}@".encode()
        assert {index[h.entry_id] for h in hits} == want, (st.version, len(hits))
        for h in hits:  # each record opened with the ID held carries this version's marker
            plain = open_record(h.record, "id", id_number(index[h.entry_id]))[1]
            assert marker.decode() in plain["obligation"], st.version
        checks += 1
        versions.add(st.version)
    print(checks, len(versions))


def test_readers_see_whole_versions_while_writer_applies(cache: Path) -> None:
    store = Store(cache)
    snapshot(store, 1, reader_content(1))
    stop = cache.parent / "stop"
    readers = [_run_child("_child_reader", str(cache), str(stop)) for _ in range(4)]
    try:
        for r in readers:  # wait until every reader is up and has read version 1
            assert r.stdout is not None
            assert r.stdout.readline() == b"ready\n", r.communicate()[1].decode()
        v = 1
        deadline = time.monotonic() + 4
        while time.monotonic() < deadline or v < 8:
            if v % 10 == 9:
                snapshot(store, v + 1, reader_content(v + 1))
            else:
                delta(store, reader_content(v), reader_content(v + 1), v, v + 1)
            v += 1
    finally:
        stop.touch()
    for r in readers:
        out, err = r.communicate(timeout=60)
        assert r.returncode == 0, err.decode()
        checks, versions = map(int, out.split())
        assert checks > 20 and versions > 1, (checks, versions)
    assert store.verify().version == v


def test_relations_table_is_the_protocol_one() -> None:
    assert RELATIONS[0] == "self"
    assert set(RELATIONS[1:]) == {
        "legal_rep",
        "principal",
        "actual_controller",
        "responsible_person",
        "director",
        "supervisor",
        "senior_manager",
    }


def test_a_delta_over_orphaned_index_rows_is_refused_as_damage(cache: Path) -> None:
    """A record row lost while its index rows stay (a damaged file): a delta that puts a
    record there raises StoreCorrupted (the sync then repairs from the snapshot), never
    a FormatError blaming the signed delta."""
    store = Store(cache)
    a, b = person("E1", id_number(1)), person("E2", id_number(2))
    snapshot(store, 1, [a, b])
    db = cache / (cache / "CURRENT").read_text().strip()
    with contextlib.closing(sqlite3.connect(db)) as conn:
        (top, eid) = conn.execute(
            "SELECT rid, entry_id FROM records ORDER BY rid DESC LIMIT 1"
        ).fetchone()
        conn.execute("DELETE FROM records WHERE rid = ?", (top,))
        conn.commit()
    lost = a if eid_of(a) == eid else b
    changed = person("E1" if lost is a else "E2", id_number(1 if lost is a else 2), marker="!")
    with pytest.raises(StoreCorrupted, match="missing record"):
        delta(store, [x for x in (a, b) if x is not lost], [a, b, changed][1:], 1, 2)
