"""intercept_sdk._protocol.sealing: sealed records, wraps, work factors and padded boxes."""

from __future__ import annotations

import base64
import json
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from intercept_sdk._exceptions import ConfigurationError, FormatError, VerificationError
from intercept_sdk._protocol import sealing as S

HASH_KEY = bytes(range(32))
ID_A = "110223197908136972"
ID_B = "360426199101010071"
ORG = "600037341"


def _keks(hash_key: bytes, work: S.WorkFactor, *ids: tuple[S.IdentifierKind, str, int]):
    out = []
    for kind, value, rel in ids:
        secret = S.identifier_secret(hash_key, kind, value)
        out.append((secret, S.kek(secret, work), rel))
    return out


def _open(hash_key: bytes, work: S.WorkFactor, line: bytes, kind: S.IdentifierKind, value: str):
    """What a client does: tag lookup, then unwrap and open the body (None if no match)."""
    rec = S.parse_sealed(line)
    secret = S.identifier_secret(hash_key, kind, value)
    t = S.tag(secret)
    for tag_value, blob in rec.wraps:
        if tag_value != t:
            continue
        opened = S.open_wrap(S.kek(secret, work), rec.rid, tag_value, blob)
        if opened is not None:
            record_key, rel = opened
            return S.open_body(record_key, rec.rid, rec.body), rel
    return None


def test_every_identifier_opens_the_record_and_others_do_not() -> None:
    work = S.WorkFactor()
    plain = json.dumps({"entry_id": "E1", "name": "某公司"}, ensure_ascii=False).encode()
    line = S.seal_record(
        HASH_KEY, "E1", plain, _keks(HASH_KEY, work, ("org", ORG, 0), ("id", ID_A, 1))
    )
    assert _open(HASH_KEY, work, line, "org", ORG) == (plain, 0)
    assert _open(HASH_KEY, work, line, "id", ID_A) == (plain, 1)
    assert _open(HASH_KEY, work, line, "id", ID_B) is None
    # another hash key opens nothing, even with the right identifier
    assert _open(bytes(32), work, line, "id", ID_A) is None


def test_the_line_reveals_no_plaintext_and_no_full_identifier_hash() -> None:
    work = S.WorkFactor()
    plain = b'{"entry_id":"E1","name":"ZHANG San","case_no":"(2024)X1"}'
    line = S.seal_record(HASH_KEY, "E1", plain, _keks(HASH_KEY, work, ("id", ID_A, 0)))
    for needle in (b"ZHANG", b"E1", b"2024", ID_A.encode()):
        assert needle not in line
    secret = S.identifier_secret(HASH_KEY, "id", ID_A)
    assert secret[:16].hex().encode() not in line  # format 1's published key
    assert secret[: S.TAG_BYTES].hex().encode() in line  # only the 32-bit tag


def test_sealing_is_deterministic_and_content_bound() -> None:
    work = S.WorkFactor()
    keks = _keks(HASH_KEY, work, ("id", ID_A, 0), ("id", ID_B, 2))
    a = S.seal_record(HASH_KEY, "E1", b'{"v":1}', keks)
    assert a == S.seal_record(HASH_KEY, "E1", b'{"v":1}', list(reversed(keks)))
    b = S.seal_record(HASH_KEY, "E1", b'{"v":2}', keks)
    assert a != b
    ra, rb = S.parse_sealed(a), S.parse_sealed(b)
    assert ra.rid == rb.rid  # same entry, same pseudonymous id
    # a changed record never reuses a wrap nonce under the same identifier key
    assert {w[1][:12] for w in ra.wraps}.isdisjoint({w[1][:12] for w in rb.wraps})


def test_one_identifier_with_two_relations_gets_two_wraps_with_distinct_nonces() -> None:
    work = S.WorkFactor()
    keks = _keks(HASH_KEY, work, ("id", ID_A, 1), ("id", ID_A, 3))
    rec = S.parse_sealed(S.seal_record(HASH_KEY, "E1", b"{}", keks))
    assert len(rec.wraps) == 2
    assert rec.wraps[0][1][:12] != rec.wraps[1][1][:12]


def test_scrypt_work_factor_round_trips_and_differs_from_hmac() -> None:
    work = S.WorkFactor("scrypt", 10, 8, 1)
    line = S.seal_record(HASH_KEY, "E1", b"{}", _keks(HASH_KEY, work, ("id", ID_A, 0)))
    assert _open(HASH_KEY, work, line, "id", ID_A) == (b"{}", 0)
    assert _open(HASH_KEY, S.WorkFactor(), line, "id", ID_A) is None


@pytest.mark.parametrize(
    "value",
    [
        {"alg": "hmac", "log2_n": 1},
        {"alg": "scrypt", "log2_n": 9, "r": 8, "p": 1},
        {"alg": "scrypt", "log2_n": 18, "r": 8, "p": 1},
        {"alg": "scrypt", "log2_n": 14, "r": 8},
        {"alg": "scrypt", "log2_n": True, "r": 8, "p": 1},
        {"alg": "argon2"},
        ["hmac"],
    ],
)
def test_work_factor_json_is_strict(value: object) -> None:
    with pytest.raises(FormatError):
        S.WorkFactor.from_json(value)


def test_work_factor_parse_and_json() -> None:
    assert S.WorkFactor.parse("hmac") == S.WorkFactor()
    assert S.WorkFactor.parse("scrypt") == S.WorkFactor("scrypt", 14, 8, 1)
    assert S.WorkFactor.parse("scrypt:17") == S.WorkFactor.maximum()
    for w in (S.WorkFactor(), S.WorkFactor("scrypt", 12, 4, 2)):
        assert S.WorkFactor.from_json(w.to_json()) == w
    for bad in ("scrypt:20", "scrypt:x", "md5", "scrypt:14:8:1:1"):
        with pytest.raises(ConfigurationError):
            S.WorkFactor.parse(bad)


def _mutations(line: bytes) -> list[bytes]:
    obj = json.loads(line)
    out = []
    for field, value in (("r", obj["r"].upper()), ("r", obj["r"][:-2]), ("b", obj["b"] + "!")):
        out.append(json.dumps({**obj, field: value}).encode())
    out.append(json.dumps({**obj, "x": 1}).encode())
    out.append(json.dumps({"b": obj["b"], "r": obj["r"]}).encode())
    out.append(json.dumps({**obj, "w": []}).encode())
    out.append(json.dumps({**obj, "w": [obj["w"][0][:1]]}).encode())
    out.append(
        json.dumps({**obj, "w": [[obj["w"][0][0], base64.b64encode(b"x").decode()]]}).encode()
    )
    out.append(json.dumps({**obj, "w": [obj["w"][0]] * (S.MAX_WRAPS + 1)}).encode())
    out.append(b"not json")
    out.append(b"[]")
    return out


def test_parse_sealed_refuses_malformed_lines() -> None:
    line = S.seal_record(HASH_KEY, "E1", b"{}", _keks(HASH_KEY, S.WorkFactor(), ("id", ID_A, 0)))
    S.parse_sealed(line)
    for bad in _mutations(line):
        with pytest.raises(FormatError):
            S.parse_sealed(bad)


def test_a_tampered_body_or_wrap_does_not_open() -> None:
    work = S.WorkFactor()
    line = S.seal_record(HASH_KEY, "E1", b'{"a":1}', _keks(HASH_KEY, work, ("id", ID_A, 0)))
    rec = S.parse_sealed(line)
    secret = S.identifier_secret(HASH_KEY, "id", ID_A)
    t, blob = rec.wraps[0]
    flipped = blob[:-1] + bytes((blob[-1] ^ 1,))
    assert S.open_wrap(S.kek(secret, work), rec.rid, t, flipped) is None
    assert S.open_wrap(S.kek(secret, work), bytes(16), t, blob) is None  # moved to another rid
    opened = S.open_wrap(S.kek(secret, work), rec.rid, t, blob)
    assert opened is not None
    with pytest.raises(VerificationError):
        S.open_body(opened[0], rec.rid, rec.body[:-1] + bytes((rec.body[-1] ^ 1,)))


def test_box_locator_is_opaque_and_bound_to_the_key() -> None:
    pub1, pub2 = os.urandom(32), os.urandom(32)
    a = S.box_locator("hotel-001", pub1)
    assert len(a) == 32 and "hotel" not in a
    assert a != S.box_locator("hotel-001", pub2)
    assert a != S.box_locator("hotel-002", pub1)
    assert S.box_context(a, 3) != S.box_context(a, 4)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=9000), min_size=1, max_size=5))
def test_padding_hides_sizes_and_round_trips(payloads: list[bytes]) -> None:
    size = S.padded_size([len(p) for p in payloads])
    assert size % S.BOX_PAD_QUANTUM == 0
    padded = [S.pad(p, size) for p in payloads]
    assert {len(p) for p in padded} == {size}
    assert [S.unpad(p) for p in padded] == payloads


def test_unpad_refuses_bad_padding() -> None:
    good = S.pad(b"abc", 4096)
    for bad in (good[:3], good[:-1] + b"\x01", (5000).to_bytes(4, "big") + good[4:]):
        with pytest.raises(FormatError):
            S.unpad(bad)
    with pytest.raises(ValueError):
        S.pad(b"x" * 4093, 4096)


def test_box_payload_round_trips_and_is_bound_to_its_version() -> None:
    work = S.WorkFactor()
    lines = [
        S.seal_record(HASH_KEY, f"R{i}", b"{}", _keks(HASH_KEY, work, ("id", ID_A, 0)))
        for i in range(3)
    ]
    payload = S.box_payload(7, 2, HASH_KEY, lines)
    box = S.parse_box_payload(payload, version=7)
    assert (box.version, box.key_epoch, box.hash_key) == (7, 2, HASH_KEY)
    in_rid_order = sorted(lines, key=lambda line: S.parse_sealed(line).rid)
    assert list(box.restricted) == in_rid_order
    assert box.restricted_sha256 == S.lines_sha256(in_rid_order)
    with pytest.raises(FormatError):
        S.parse_box_payload(payload, version=8)
    empty = S.parse_box_payload(S.box_payload(1, 1, HASH_KEY, []), version=1)
    assert empty.restricted == ()


def test_box_payload_refuses_tampering() -> None:
    lines = [S.seal_record(HASH_KEY, "R", b"{}", _keks(HASH_KEY, S.WorkFactor(), ("id", ID_A, 0)))]
    payload = S.box_payload(1, 1, HASH_KEY, lines)
    head, rest = payload.split(b"\n", 1)
    header = json.loads(head)
    bad = [
        payload[:-1],
        json.dumps({**header, "spec": 1}).encode() + b"\n" + rest,
        json.dumps({**header, "key_epoch": 0}).encode() + b"\n" + rest,
        json.dumps({**header, "extra": 1}).encode() + b"\n" + rest,
        json.dumps({**header, "restricted": {"entries": 2, "sha256": "0" * 64}}).encode()
        + b"\n"
        + rest,
        head + b"\n" + rest + rest,  # a line added
        head + b"\n" + b'{"b":"","r":"","w":[]}\n',
    ]
    for payload_bad in bad:
        with pytest.raises(FormatError):
            S.parse_box_payload(payload_bad, version=1)


def test_bodies_are_deflated_with_the_protocol_dictionary_and_capped() -> None:
    import zlib

    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    work = S.WorkFactor()
    plain = (
        '{"case_no":"(2024)冀0203执1号","court":"唐山市路北区人民法院","entry_id":"R1",'
        '"measures":["*"],"name":"王建国","obligation":"支付货款100000元及利息",'
        '"performance":"全部未履行","published_at":"2025-03-18","severity":1,'
        '"status":"active","subject_type":"person","unperformed_amount":"86000.00",'
        '"visibility":"public"}'
    ).encode()
    line = S.seal_record(HASH_KEY, "R1", plain, _keks(HASH_KEY, work, ("id", ID_A, 0)))
    rec = S.parse_sealed(line)
    assert len(rec.body) < len(plain) // 2  # the dictionary does most of the work
    secret = S.identifier_secret(HASH_KEY, "id", ID_A)
    opened = S.open_wrap(S.kek(secret, work), rec.rid, S.tag(secret), rec.wraps[0][1])
    assert opened is not None and S.open_body(opened[0], rec.rid, rec.body) == plain
    with pytest.raises(ValueError):
        S.seal_record(HASH_KEY, "R2", b" " * (S.MAX_PLAINTEXT + 1), [])
    # a bomb: a body that inflates past the cap is refused, not inflated
    key = bytes(32)
    bomb = zlib.compressobj(9, zlib.DEFLATED, -15)
    data = bomb.compress(b"\0" * (S.MAX_PLAINTEXT + 1)) + bomb.flush()
    body = AESGCM(key).encrypt(bytes(12), data, rec.rid)
    with pytest.raises(FormatError):
        S.open_body(key, rec.rid, body)
    with pytest.raises(FormatError):  # not DEFLATE at all
        S.open_body(key, rec.rid, AESGCM(key).encrypt(bytes(12), b"\xff\xff", rec.rid))


def test_the_fast_wrap_reader_agrees_with_the_strict_parser(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    work = S.WorkFactor()
    keks = _keks(HASH_KEY, work, ("id", ID_A, 0), ("id", ID_A, 3), ("org", "600037341", 0))
    line = S.seal_record(HASH_KEY, "R9", b'{"entry_id":"R9"}', keks)
    rec = S.parse_sealed(line)
    expected = {
        t: (rec.rid, rec.body, [b for u, b in rec.wraps if u == t])
        for t in {t for t, _ in rec.wraps} | {12345}
    }
    with monkeypatch.context() as mp:  # a canonical line never needs the strict parser
        mp.setattr(S, "parse_sealed", None)
        for t, want in expected.items():
            assert S.wraps_of(line, t) == want
    # a line in another (non-canonical but valid) layout takes the strict path
    spaced = json.dumps(json.loads(line), indent=1).encode()
    t0 = rec.wraps[0][0]
    assert S.wraps_of(spaced, t0) == S.wraps_of(line, t0)
    for bad in (line[:-1], line.replace(b'"r":"', b'"r":"0'), line + b" x"):
        with pytest.raises(FormatError):
            S.wraps_of(bad, t0)


def test_the_packed_form_rebuilds_the_line_and_opens_alike() -> None:
    """A cache keeps canonical lines packed (binary, ~1/3 smaller): unpack gives the very
    signed bytes back, and opening the packed form answers what opening the line does."""
    work = S.WorkFactor()
    plain = json.dumps({"entry_id": "E7", "name": "某公司"}, ensure_ascii=False).encode()
    ids = [("org", ORG, 0), ("id", ID_A, 1), ("id", ID_A, 4), ("id", ID_B, 5)]
    line = S.seal_record(HASH_KEY, "E7", plain, _keks(HASH_KEY, work, *ids))  # type: ignore[arg-type]
    packed = S.pack_sealed(line)
    assert packed is not None and len(packed) < 0.75 * len(line)
    assert S.unpack_sealed(packed) == line
    for kind, value in (("org", ORG), ("id", ID_A), ("id", ID_B), ("id", "110101199003077777")):
        secret = S.identifier_secret(HASH_KEY, kind, value)  # type: ignore[arg-type]
        key = S.kek(secret, work)
        via_line = S.open_sealed(key, line, S.tag(secret))
        via_packed = S.open_packed(key, packed, secret[: S.TAG_BYTES])
        assert via_packed == via_line
    secret = S.identifier_secret(HASH_KEY, "id", ID_A)
    got = S.open_packed(S.kek(secret, work), packed, secret[:4])
    assert got is not None and got[1] == plain and sorted(got[2]) == [1, 4]
    # a wrap of the tag that another key cannot open: None, as for the line
    stranger = S.kek(bytes(32), work)
    assert S.open_packed(stranger, packed, secret[:4]) is None


def test_only_lines_that_rebuild_exactly_are_packed() -> None:
    work = S.WorkFactor()
    line = S.seal_record(
        HASH_KEY, "E1", b'{"entry_id":"E1"}', _keks(HASH_KEY, work, ("id", ID_A, 0))
    )
    obj = json.loads(line)
    for other in (
        json.dumps(obj, indent=1).encode(),  # valid, not canonical
        line.replace(obj["r"].encode(), obj["r"].upper().encode()),  # upper-case hex
        line[:-1],
        line + b" ",
        b'{"b":"' + b"\x00" * 40 + line[6:],
        line.replace(b'"w":[["', b'"w":[[" '),
    ):
        assert S.pack_sealed(other) is None
    assert S.pack_sealed(line) is not None


def test_a_tampered_packed_record_is_refused() -> None:
    work = S.WorkFactor()
    line = S.seal_record(
        HASH_KEY, "E1", b'{"entry_id":"E1"}', _keks(HASH_KEY, work, ("id", ID_A, 0))
    )
    packed = S.pack_sealed(line)
    assert packed is not None
    secret = S.identifier_secret(HASH_KEY, "id", ID_A)
    key = S.kek(secret, work)
    body_flipped = packed[:-1] + bytes((packed[-1] ^ 1,))
    with pytest.raises(VerificationError):
        S.open_packed(key, body_flipped, secret[:4])
    wrap_flipped = packed[:30] + bytes((packed[30] ^ 1,)) + packed[31:]
    assert S.open_packed(key, wrap_flipped, secret[:4]) is None
    for bad in (
        b"",
        packed[:20],
        packed[:16] + b"\x00" + packed[17:],
        packed[:16] + b"\x41" + packed[17:],
    ):
        with pytest.raises(FormatError):
            S.open_packed(key, bad, secret[:4])
        with pytest.raises(FormatError):
            S.unpack_sealed(bad)
