"""The recovery attacks of the private-distribution issue, as reusable test code.

An outsider holds only what a site publishes (a CDN or mirror copy); a thief holds a copy
of an audit log. Each function tries every way it knows to turn those files into plaintext
ID numbers, and returns what it recovered, so a test can assert the number is zero and a
benchmark can time the attempts. Nothing here verifies signatures: an attacker does not
need to.

Against site format 1 (hash key in the manifest, masked ID and age in each record) the
site attack recovers every person: the masked form leaves the district (2 digits) and
the birth date (one or two years, from the published age) to guess, and the checksum and
the published key confirm the guess.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as _dt
import gzip
import hmac
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_CHECK = "10X98765432"


def _check_char(body17: str) -> str:
    return _CHECK[sum(int(c) * w for c, w in zip(body17, _WEIGHTS, strict=True)) % 11]


def _manifest_payload(site: Path) -> dict[str, Any]:
    envelope = json.loads((site / "manifest.json").read_bytes())
    payload: dict[str, Any] = json.loads(base64.b64decode(envelope["payload"]))
    return payload


def _public_records(site: Path, manifest: dict[str, Any]) -> Iterator[dict[str, Any]]:
    snapshot = manifest.get("snapshot") or {}
    path = site / str(snapshot.get("path", ""))
    if not path.is_file():
        return
    for line in gzip.decompress(path.read_bytes()).splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict):
            yield rec


def _birth_dates(age: int | None, published_at: str | None) -> Iterable[_dt.date]:
    """Birth dates consistent with ``age`` on ``published_at`` (nothing without an age)."""
    if age is None or not published_at:
        return []
    on = _dt.date.fromisoformat(published_at[:10])
    latest = on.replace(year=on.year - age)
    earliest = on.replace(year=on.year - age - 1) + _dt.timedelta(days=1)
    return (earliest + _dt.timedelta(days=i) for i in range((latest - earliest).days + 1))


def _sweep(hash_key: bytes, key_hex: str, masked: str, dates: Iterable[_dt.date]) -> str | None:
    if len(masked) != 18 or "*" not in masked:
        return None
    prefix, seq, check = masked[:4], masked[-4:-1], masked[-1]
    target = bytes.fromhex(key_hex)
    for day in dates:
        birth = day.strftime("%Y%m%d")
        for district in range(100):
            body = f"{prefix}{district:02d}{birth}{seq}"
            if _check_char(body) != check:
                continue
            candidate = body + check
            if hmac.digest(hash_key, f"id:{candidate}".encode(), "sha256")[:16] == target:
                return candidate
    return None


def recover_ids_from_public_site(site: Path) -> dict[str, str]:
    """``{id_key: ID number}`` recovered from a site's public files alone.

    Uses the hash key if the manifest publishes one, and every hint a record carries
    (masked ID, age, publication date) for debtors and related persons alike.
    """
    manifest = _manifest_payload(site)
    key_hex = manifest.get("hash_key")
    if not isinstance(key_hex, str):
        return {}
    hash_key = bytes.fromhex(key_hex)
    found: dict[str, str] = {}
    for rec in _public_records(site, manifest):
        people = [rec, *[r for r in rec.get("related", []) if isinstance(r, dict)]]
        for person in people:
            key, masked = person.get("id_key"), person.get("id_masked")
            if not isinstance(key, str) or not isinstance(masked, str) or key in found:
                continue
            age = person.get("age", rec.get("age") if person is rec else None)
            dates = _birth_dates(age if isinstance(age, int) else None, rec.get("published_at"))
            hit = _sweep(hash_key, key, masked, dates)
            if hit is not None:
                found[key] = hit
    return found


def _candidate_forms(hash_key: bytes, candidate: str) -> list[str]:
    """Every way a format-1 or format-2 keyed hash of ``candidate`` is written (hex)."""
    full = hmac.digest(hash_key, f"id:{candidate}".encode(), "sha256")
    return [full.hex(), full[:16].hex(), full[:4].hex()]


def recover_ids_from_audit_log(
    audit_dir: Path, hash_key: bytes | None, candidates: Iterable[str]
) -> dict[str, str]:
    """``{key: ID number}`` for audit lines whose key an attacker can match.

    The attacker is given the best case: a candidate list that contains the true ID
    numbers of the people checked, and the list's hash key (public in format 1; leaked
    in format 2). Keys are matched in every form a keyed hash takes (whole, truncated to
    16 bytes, 4-byte tag) and the plain and masked ID numbers are searched for too. A log
    keyed by a per-cache secret the attacker lacks yields nothing.
    """
    candidates = list(candidates)
    by_key: dict[str, str] = {}
    if hash_key is not None:
        for c in candidates:
            for form in _candidate_forms(hash_key, c):
                by_key[form] = c
    found: dict[str, str] = {}
    for path in sorted(p for p in audit_dir.rglob("*") if p.is_file()):
        data = path.read_bytes()
        for c in candidates:
            if c.encode() in data or (c[:4] + "*" * 10 + c[-4:]).encode() in data:
                found[c] = c
        for line in data.splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            key = rec.get("key") if isinstance(rec, dict) else None
            if isinstance(key, str) and key in by_key:
                found[key] = by_key[key]
    return found


def plaintext_leaks(directory: Path, secrets: Iterable[str]) -> dict[str, list[str]]:
    """``{secret: [file, ...]}`` for every secret string found in any file below
    ``directory``, read as stored and, for gzip files, decompressed.

    The generic attack: whatever the format, a value the files carry in the clear (an ID
    number, a name, a case number, a subscriber id) is found by a substring search.
    """
    needles = [(s, s.encode()) for s in secrets if s]
    found: dict[str, list[str]] = {}
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        data = path.read_bytes()
        blobs = [data]
        if data[:2] == b"\x1f\x8b":
            with contextlib.suppress(OSError, EOFError):
                blobs.append(gzip.decompress(data))
        for secret, needle in needles:
            if any(needle in blob for blob in blobs):
                found.setdefault(secret, []).append(str(path.relative_to(directory)))
    return found
