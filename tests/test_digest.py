"""The state digests: one definition, used by the publisher and by the client's store.

``state.sha256`` (SHA-256 of the records in entry_id order, one per line) and ``state.sum``
(order-independent sum of the records' SHA-256, mod 2**256) are what a client checks a
synced version against; if the two sides computed them differently, every sync would fail
(or, worse, a wrong state pass). Both import :mod:`intercept_sdk._protocol.digest`.
"""

from __future__ import annotations

import hashlib
import random

from intercept_sdk._client import store
from intercept_sdk._platform import publish
from intercept_sdk._protocol import digest
from intercept_sdk._protocol.digest import (
    SUM_MODULUS,
    digest_int,
    record_int,
    record_sum,
    record_total,
    state_sha256,
    sum_hex,
)

RECORDS = [b'{"entry_id":"E1"}', b'{"entry_id":"E2","x":"\xe5\xbc\xa0"}', b"{}"]


def test_definitions() -> None:
    assert SUM_MODULUS == 1 << 256
    for r in RECORDS:
        assert record_int(r) == int.from_bytes(hashlib.sha256(r).digest(), "big")
        assert digest_int(hashlib.sha256(r).digest()) == record_int(r)
    assert record_total(RECORDS) == sum(map(record_int, RECORDS))
    assert record_sum(RECORDS) == record_total(RECORDS) % SUM_MODULUS
    assert state_sha256(RECORDS) == hashlib.sha256(b"".join(r + b"\n" for r in RECORDS)).hexdigest()
    assert state_sha256([]) == hashlib.sha256(b"").hexdigest()


def test_sum_is_order_independent_and_incremental() -> None:
    rng = random.Random(1)
    records = [rng.randbytes(rng.randrange(1, 50)) for _ in range(200)]
    shuffled = records[:]
    rng.shuffle(shuffled)
    assert record_sum(records) == record_sum(shuffled)
    # remove one record and add another: the sum follows without a re-scan
    total = record_total(records) - record_int(records[7]) + record_int(b"new")
    assert sum_hex(total) == sum_hex(record_sum([*records[:7], *records[8:], b"new"]))


def test_sum_hex_is_64_lowercase_hex_mod_2_256() -> None:
    assert sum_hex(0) == "0" * 64
    assert sum_hex(1) == "0" * 63 + "1"
    assert sum_hex(-1) == "f" * 64
    assert sum_hex(SUM_MODULUS) == "0" * 64
    assert sum_hex(SUM_MODULUS + 255) == "0" * 62 + "ff"


def test_publisher_and_store_use_the_one_definition() -> None:
    assert publish.record_sum is digest.record_sum
    assert publish.sum_hex is digest.sum_hex
    assert vars(store)["_record_int"] is digest.record_int
    assert vars(store)["_SUM_MOD"] == SUM_MODULUS
    d = store._Digest()
    for i, r in enumerate(RECORDS):
        d.add(f"E{i}", r)
    assert d.sha.hexdigest() == state_sha256(RECORDS)
    assert d.sum_hex == sum_hex(record_sum(RECORDS))
