"""The keyed hash of identifiers: one definition, two forms that give the same bytes.

The publisher seals every record under ``HMAC-SHA256(hash_key, kind ":" value)`` (the
identifier secret: its tag indexes the record, its KEK wraps the record key) and the client
derives it again for every lookup; both use
:mod:`intercept_sdk._protocol.keyedhash`. These tests pin the definition to the plain
:mod:`hmac` and check that the fast form (pad states hashed once) agrees with it for every
key length (shorter than, equal to and longer than SHA-256's 64-byte block) and every
entry point the two sides use.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import random

import pytest

from intercept_sdk._client import decisions as _decisions
from intercept_sdk._client.decisions import KeyMaker
from intercept_sdk._platform import publish as _site
from intercept_sdk._protocol import sealing
from intercept_sdk._protocol.catalog import RELATIONS
from intercept_sdk._protocol.keyedhash import KEY_LENGTH, KeyedHash, identifier_key

KEY_SIZES = (0, 1, 16, 32, 63, 64, 65, 100, 200)
VALUES = ("110101198001010011", "600037341", "", "é" * 40, "x" * 200)


def test_identifier_key_is_the_whole_hmac() -> None:
    hk = bytes(range(32))
    want = hmac.new(hk, b"id:110101198001010011", hashlib.sha256).digest()
    assert identifier_key(hk, "id", "110101198001010011") == want
    assert KEY_LENGTH == 32
    assert identifier_key(hk, "id", "600037341") != identifier_key(hk, "org", "600037341")


@pytest.mark.parametrize("size", KEY_SIZES)
def test_fast_form_agrees_with_the_single_call(size: int) -> None:
    key = random.Random(size).randbytes(size)
    kh = KeyedHash(key)
    for value in VALUES:
        for kind in ("id", "org"):
            want = identifier_key(key, kind, value)
            assert kh.key(kind, value) == want
        assert kh.person(value) == identifier_key(key, "id", value)
        assert kh.org(value) == identifier_key(key, "org", value)


def test_fast_form_refuses_unknown_kinds_and_non_bytes_keys() -> None:
    kh = KeyedHash(b"k" * 32)
    with pytest.raises(ValueError, match="kind"):
        kh.key("uscc", "x")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        KeyedHash("not bytes")  # type: ignore[arg-type]


def test_publisher_and_client_meet_on_the_same_keys() -> None:
    """Both sides call the protocol's definition (no copy of the HMAC left elsewhere), and
    a record the publisher seals opens with exactly the secrets the client derives."""
    assert vars(_site)["KeyedHash"] is KeyedHash and vars(_decisions)["KeyedHash"] is KeyedHash
    rng = random.Random(3)
    for size in (16, 32, 64, 65, 100):
        hk = rng.randbytes(size)
        km = KeyMaker(hk)
        idn, org = "11010119800101001" + "1", f"{rng.randrange(10**8):08d}X"
        assert km.person(idn) == identifier_key(hk, "id", idn)
        assert km.org(org) == identifier_key(hk, "org", org)
        assert km.person(idn) == identifier_key(hk, "id", idn)  # from the memo: the same
        # the publisher's sealer and the client's key maker meet on a real sealed record
        sealer = _site.Sealer(hk, sealing.WorkFactor())
        sealed = sealer.seal_fields(
            {
                "entry_id": f"K{size}",
                "subject_type": "entity",
                "name": "某公司",
                "org_code": org,
                "status": "active",
                "related": [{"role": "director", "id_number": idn}],
            }
        )
        assert sealed is not None
        rid_hex, line = sealed
        rec = sealing.parse_sealed(line)
        assert rid_hex == rec.rid.hex() == sealing.record_id(hk, f"K{size}").hex()
        for secret, relation in ((km.org(org), 0), (km.person(idn), RELATIONS.index("director"))):
            opened = _open(rec, secret)
            assert opened is not None and opened[1] == relation
            assert json.loads(sealing.open_body(opened[0], rec.rid, rec.body))["org_code"] == org
        # a secret under another hash key opens nothing, even when handed the right tag
        assert _open(rec, KeyMaker(hk + b"x").person(idn), any_tag=True) is None


def _open(
    rec: sealing.SealedRecord, secret: bytes, any_tag: bool = False
) -> tuple[bytes, int] | None:
    """The (record key, relation index) ``secret`` opens among ``rec``'s wraps, or None."""
    for tag_value, blob in rec.wraps:
        if any_tag or tag_value == sealing.tag(secret):
            got = sealing.open_wrap(
                sealing.kek(secret, sealing.WorkFactor()), rec.rid, tag_value, blob
            )
            if got is not None:
                return got
    return None


def test_keyed_hash_states_are_not_shared_between_calls() -> None:
    """Each call works on copies: interleaved and repeated calls give stable answers."""
    kh = KeyedHash(b"s" * 32)
    first = [kh.person(v) for v in VALUES]
    for v in VALUES:
        kh.org(v)
        kh.key("id", "noise")
    assert [kh.person(v) for v in VALUES] == first


def test_hmac_sha256_is_the_standard_hmac() -> None:
    """The key-encryption key's HMAC, written out with hashlib (check()'s hit path), is
    byte for byte hmac.digest(key, message, "sha256") for every key length it takes."""
    from intercept_sdk._protocol.keyedhash import hmac_sha256

    rng = random.Random(3)
    for size in (0, 1, 16, 31, 32, 33, 63, 64):
        for n in (0, 1, 20, 55, 56, 64, 200):
            key, msg = rng.randbytes(size), rng.randbytes(n)
            assert hmac_sha256(key, msg) == hmac.digest(key, msg, "sha256")
    with pytest.raises(ValueError):
        hmac_sha256(bytes(65), b"x")
    secret = rng.randbytes(32)
    assert sealing.kek_function(sealing.WorkFactor())(secret) == sealing.kek(
        secret, sealing.WorkFactor()
    )
