"""The keyed hash of identifiers: the secret a sealed record is found and opened by
(decisions 0004 and 0011).

``secret = HMAC-SHA256(hash_key, kind ":" value)`` (32 bytes) where ``kind`` is ``id`` (a
person's normalised 18-character resident ID number) or ``org`` (a normalised 9-character
organisation code), and ``hash_key`` is the key of the current key epoch, which reaches a
subscriber only inside its sealed box (site format 2). The publisher derives every
identifier's secret to seal a record (:mod:`~intercept_sdk._protocol.sealing`: the first 4
bytes are the public lookup tag, the whole derives the key-encryption key); the client
derives the same secret from the identifier it is asked about. The two meet only if both
compute exactly this, so it is written once, here, in two forms that give the same bytes
(the tests compare them on many keys, key lengths and values):

* :func:`identifier_key`: one call, the plain :func:`hmac.digest` (the reference);
* :class:`KeyedHash`: the same HMAC for many messages under one hash key, with the key's
  inner and outer pad states (RFC 2104) hashed once instead of on every call: two SHA-256
  compressions less per identifier, which is most of the cost of a key (about 0.6 instead
  of 1.1 us here). The check path (one key per call), screening (one per subject) and
  the publisher (one to a few per entry) all use it.

Nothing here keeps an identifier: a :class:`KeyedHash` holds the hash key and two hash
states, never a value it was given.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Final, Literal

__all__ = ["KEY_LENGTH", "IdentifierKind", "KeyedHash", "hmac_sha256", "identifier_key"]

#: Bytes of an identifier secret (the whole SHA-256 output; format 1 kept 16).
KEY_LENGTH: Final = 32
IdentifierKind = Literal["id", "org"]

_BLOCK = 64  # SHA-256's block size, the HMAC key length
_IPAD: Final = bytes(b ^ 0x36 for b in range(256))
_OPAD: Final = bytes(b ^ 0x5C for b in range(256))


def identifier_key(hash_key: bytes, kind: IdentifierKind, value: str) -> bytes:
    """``HMAC-SHA256(hash_key, kind ":" value)``: the secret of one identifier.

    ``value`` must already be normalised (18-character ID number, 9-character
    organisation code); this function does not check it.
    """
    return hmac.digest(hash_key, f"{kind}:{value}".encode(), "sha256")


def hmac_sha256(key: bytes, message: bytes) -> bytes:
    """``HMAC-SHA256(key, message)`` for a key of at most 64 bytes, computed with
    hashlib's SHA-256 (RFC 2104 written out): the same bytes as :func:`hmac.digest`.

    Why: on check()'s hit path the identifier's secret was just computed with this same
    SHA-256 code (:class:`KeyedHash`), while OpenSSL's HMAC code is not used anywhere
    near; with one check per identifier its instructions are cold every time. Measured
    in the benchmark's interleaved loop, the key-encryption key cost ~6 us through
    :func:`hmac.digest` and ~2 us here.
    """
    if len(key) > _BLOCK:
        raise ValueError("hmac_sha256 takes keys of at most 64 bytes")
    k = key.ljust(_BLOCK, b"\0")
    inner = hashlib.sha256(k.translate(_IPAD) + message).digest()
    return hashlib.sha256(k.translate(_OPAD) + inner).digest()


class KeyedHash:
    """:func:`identifier_key` under one ``hash_key``, for many identifiers.

    HMAC as in RFC 2104 with the inner and outer pad states computed once per hash key
    (and the inner state once more per kind, after ``id:``/``org:``), then copied per
    message. Immutable after construction and safe to share between threads: every call
    works on copies of the states.
    """

    __slots__ = ("_inner", "_inner_id", "_inner_org", "_outer", "hash_key")

    def __init__(self, hash_key: bytes) -> None:
        if not isinstance(hash_key, (bytes, bytearray)):
            raise TypeError("hash_key must be bytes")
        self.hash_key = bytes(hash_key)
        key = hashlib.sha256(hash_key).digest() if len(hash_key) > _BLOCK else bytes(hash_key)
        key = key.ljust(_BLOCK, b"\0")
        self._inner = hashlib.sha256(key.translate(_IPAD))
        self._outer = hashlib.sha256(key.translate(_OPAD))
        self._inner_id = self._inner.copy()
        self._inner_id.update(b"id:")
        self._inner_org = self._inner.copy()
        self._inner_org.update(b"org:")

    def person(self, id_number: str) -> bytes:
        """``identifier_key(hash_key, "id", id_number)``."""
        h = self._inner_id.copy()
        h.update(id_number.encode())
        o = self._outer.copy()
        o.update(h.digest())
        return o.digest()

    def org(self, org_code: str) -> bytes:
        """``identifier_key(hash_key, "org", org_code)``."""
        h = self._inner_org.copy()
        h.update(org_code.encode())
        o = self._outer.copy()
        o.update(h.digest())
        return o.digest()

    def key(self, kind: IdentifierKind, value: str) -> bytes:
        """``identifier_key(hash_key, kind, value)``."""
        if kind == "id":
            return self.person(value)
        if kind == "org":
            return self.org(value)
        raise ValueError(f"kind must be 'id' or 'org', got {kind!r}")
