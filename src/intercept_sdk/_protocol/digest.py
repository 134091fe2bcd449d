"""The two state digests of a list version (``docs/protocol.md``, *State digests*; decision 0005).

A manifest signs, for the public records of its version:

* ``state.sha256``: SHA-256 of the records in ``entry_id`` order, each followed by
  ``"\\n"`` (exactly the uncompressed snapshot file);
* ``state.sum``: the sum of ``SHA-256(record)`` read as big-endian integers, modulo
  2**256, written as 64 lower-case hex characters. It does not depend on the order and
  is updated by adding and subtracting single records, which is what lets a client check
  a delta it applied in place without re-reading every record.

The publisher computes both while writing a version and the client's store recomputes them
after every sync (and in ``verify()``); a version is accepted only when they agree, so both
sides use these definitions. The functions are small on purpose: callers that stream
millions of records inline nothing but :func:`record_int` and keep their own running
total (any integer; reduce it with :func:`sum_hex` at the end).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Final

__all__ = [
    "SUM_MODULUS",
    "digest_int",
    "record_int",
    "record_sum",
    "record_total",
    "state_sha256",
    "sum_hex",
]

#: ``state.sum`` is taken modulo this.
SUM_MODULUS: Final = 1 << 256

_sha256 = hashlib.sha256
_from_bytes = int.from_bytes


def digest_int(digest: bytes) -> int:
    """A record's SHA-256 digest as the big-endian integer ``state.sum`` adds up."""
    return _from_bytes(digest, "big")


def record_int(record: bytes) -> int:
    """``digest_int(sha256(record))``: what one record adds to ``state.sum``."""
    return _from_bytes(_sha256(record).digest(), "big")


def record_total(records: Iterable[bytes]) -> int:
    """The plain (not yet reduced) sum of :func:`record_int` over ``records``."""
    total = 0
    for record in records:
        total += _from_bytes(_sha256(record).digest(), "big")
    return total


def record_sum(records: Iterable[bytes]) -> int:
    """``state.sum`` of ``records`` as an integer: :func:`record_total` mod 2**256."""
    return record_total(records) % SUM_MODULUS


def sum_hex(value: int) -> str:
    """``state.sum`` as written in the manifest: ``value`` mod 2**256, 64 lower-case hex."""
    return f"{value % SUM_MODULUS:064x}"


def state_sha256(records: Iterable[bytes]) -> str:
    """``state.sha256`` of ``records`` (already in ``entry_id`` order), as hex."""
    h = _sha256()
    for record in records:
        h.update(record)
        h.update(b"\n")
    return h.hexdigest()
