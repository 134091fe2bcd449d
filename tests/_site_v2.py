"""Reading a published site (format 2) the way a client would, for the publisher's tests.

Why a helper: the publisher tests check what is on the site, not how the publisher builds
it, so they need a small independent reader: verify the manifest, fetch content-addressed
artefacts, open boxes with a subscriber's private key and sealed records with an
identifier held, and apply deltas (``P <sealed line>`` / ``D <record id>``) by record id.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from intercept_sdk._platform.keys import KeyDir
from intercept_sdk._protocol.catalog import KEY_RELATIONS
from intercept_sdk._protocol.digest import record_sum, sum_hex
from intercept_sdk._protocol.sealing import (
    BoxContents,
    WorkFactor,
    box_context,
    box_locator,
    identifier_secret,
    kek,
    open_body,
    open_wrap,
    parse_box_payload,
    parse_sealed,
    record_id,
    tag,
    unpad,
)
from intercept_sdk._protocol.signing import MANIFEST_TYPE, Envelope, open_box

Ident = tuple[str, str]
"""``(kind, value)``: ``("id", 18-character ID number)`` or ``("org", 9-character code)``."""


def verified_manifest(site: Path, keys: Path) -> dict[str, Any]:
    """Check the manifest with the online role of the newest root; return the payload."""
    env = Envelope.from_bytes((site / "manifest.json").read_bytes())
    assert env.payload_type == MANIFEST_TYPE
    online, threshold = KeyDir(keys).role("online")
    assert len(env.valid_keyids(online)) >= threshold
    root_role, _ = KeyDir(keys).role("root")
    assert not env.valid_keyids(root_role)  # roles are separate
    payload: dict[str, Any] = env.payload_json()
    assert payload["spec"] == 2
    assert "hash_key" not in payload
    assert "restricted" not in payload
    return payload


def fetch(site: Path, art: dict[str, Any]) -> bytes:
    """An artefact's bytes, checked against its manifest entry and content address."""
    data: bytes = (site / str(art["path"])).read_bytes()
    assert len(data) == art["length"]
    assert hashlib.sha256(data).hexdigest() == art["sha256"]
    assert art["sha256"] in art["path"]
    return data


def rid(hash_key: bytes, entry_id: str) -> str:
    """The record id (hex) an entry has under ``hash_key``."""
    return record_id(hash_key, entry_id).hex()


def rid_of(line: bytes) -> str:
    return parse_sealed(line).rid.hex()


def snapshot_lines(site: Path, m: dict[str, Any]) -> list[bytes]:
    raw = gzip.decompress(fetch(site, m["snapshot"]))
    assert len(raw) == m["snapshot"]["raw_length"]
    assert raw == b"" or raw.endswith(b"\n")
    return raw.splitlines()


def check_state(lines: list[bytes], m: dict[str, Any]) -> None:
    """Strict record id order, and the manifest's three state digests match."""
    rids = [rid_of(x) for x in lines]
    assert rids == sorted(set(rids))
    assert m["state"]["entries"] == len(lines)
    assert m["state"]["sha256"] == hashlib.sha256(b"".join(r + b"\n" for r in lines)).hexdigest()
    assert m["state"]["sum"] == sum_hex(record_sum(lines))


def delta_ops(raw: bytes) -> list[tuple[str, str]]:
    """``[(op, record id hex)]`` of a delta, in order."""
    out = []
    for line in raw.splitlines():
        op, _, rest = line.partition(b"\t")
        out.append((op.decode(), rid_of(rest) if op == b"P" else rest.decode()))
    return out


def apply_delta(lines: list[bytes], delta: bytes) -> list[bytes]:
    """What a client does with a delta; asserts it is well-formed (sorted, unique, D only
    for a record the base has)."""
    by_rid = {rid_of(r): r for r in lines}
    order = []
    for line in delta.splitlines():
        op, _, rest = line.partition(b"\t")
        if op == b"P":
            r = rid_of(rest)
            by_rid[r] = rest
        else:
            assert op == b"D"
            r = rest.decode()
            assert r in by_rid, "D for a record the base does not have"
            del by_rid[r]
        order.append(r)
    assert order == sorted(set(order))
    return [by_rid[k] for k in sorted(by_rid)]


def sum_after_delta(old_sum: str, old_lines: list[bytes], delta: bytes) -> str:
    """A client's incremental update of ``state.sum`` from the delta lines only."""
    by_rid = {rid_of(r): r for r in old_lines}
    total = int(old_sum, 16)
    for line in delta.splitlines():
        op, _, rest = line.partition(b"\t")
        r = rid_of(rest) if op == b"P" else rest.decode()
        if r in by_rid:
            total -= record_sum([by_rid[r]])
        if op == b"P":
            total += record_sum([rest])
    return sum_hex(total)


def locator(sub: str, key: X25519PrivateKey) -> str:
    return box_locator(sub, key.public_key().public_bytes_raw())


def open_site_box(
    site: Path, m: dict[str, Any], sub: str, key: X25519PrivateKey
) -> tuple[BoxContents, bytes]:
    """``(contents, unpadded payload)`` of subscriber ``sub``'s box in manifest ``m``."""
    loc = locator(sub, key)
    sealed = fetch(site, m["boxes"][loc])
    payload = unpad(open_box(key, sealed, box_context(loc, m["version"])))
    contents = parse_box_payload(payload, version=m["version"])
    assert contents.key_epoch == m["key_epoch"]
    return contents, payload


def open_record(
    line: bytes, hash_key: bytes, ident: Ident, work: WorkFactor | None = None
) -> tuple[str, dict[str, Any]] | None:
    """``(relation, plaintext)`` of a sealed line opened with one identifier, or None."""
    kind, value = ident
    secret = identifier_secret(hash_key, kind, value)  # type: ignore[arg-type]
    sealed = parse_sealed(line)
    for t, blob in sealed.wraps:
        if t == tag(secret):
            opened = open_wrap(kek(secret, work or WorkFactor()), sealed.rid, t, blob)
            if opened is not None:
                record_key, relation = opened
                plain: dict[str, Any] = json.loads(open_body(record_key, sealed.rid, sealed.body))
                return KEY_RELATIONS[relation], plain
    return None


def open_any(line: bytes, hash_key: bytes, idents: Iterable[Ident]) -> dict[str, Any]:
    """The plaintext of a sealed line opened by the first identifier that opens it."""
    for ident in idents:
        opened = open_record(line, hash_key, ident)
        if opened is not None:
            return opened[1]
    raise AssertionError("the sealed line opens with none of the identifiers given")
