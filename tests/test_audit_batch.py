"""AuditLog.record_many (a screened batch in one call) writes exactly what record() one by
one writes, and the line formatter's reuse of shared parts never changes a byte."""

from __future__ import annotations

import datetime as _dt
import hmac
import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

import _audit_forge as forge
from intercept_sdk._client.audit import (
    AuditLog,
    _dumps,
    _Keys,
    _LineFormat,
    _record_line,
    _TimeFormat,
    read_audit_key,
    verify_audit,
)

NOW = _dt.datetime(2026, 1, 31, 8, 0, 0, 123456, tzinfo=_dt.timezone.utc)
MEASURE = "travel.flight"
KEYS = _Keys(bytes(range(32)))
CHAIN_KEY = forge.chain_key(bytes(range(32)))


def _batch(n: int, seed: int = 1) -> tuple[list[bytes], list[str], list[Sequence[str]]]:
    rng = random.Random(seed)
    keys = [rng.randbytes(16) for _ in range(n)]
    actions = ["allow"] * n
    none: tuple[str, ...] = ()
    entries: list[Sequence[str]] = [none] * n
    for i in rng.sample(range(n), n // 5):
        actions[i] = rng.choice(("block", "review", "monitor"))
        entries[i] = tuple(f"E{rng.randrange(10**6):06d}" for _ in range(1 + i % 2))
    return keys, actions, entries


def _one_by_one(
    log: AuditLog,
    keys: list[bytes],
    actions: list[str],
    entries: list[Sequence[str]],
    version: int,
    t: _dt.datetime,
) -> None:
    for k, a, e in zip(keys, actions, entries, strict=True):
        log.record(MEASURE, k, a, e, version, t)


@pytest.mark.parametrize("signed", [False, True])
def test_record_many_writes_exactly_what_record_writes(tmp_path: Path, signed: bool) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate() if signed else None
    single = AuditLog(tmp_path / "single", signing_key=key, flush_interval=3600)
    many = AuditLog(tmp_path / "many", signing_key=key, flush_interval=3600)
    for round_, n in enumerate((1, 300, 0, 2000)):
        keys, actions, entries = _batch(n, seed=round_)
        t = NOW + _dt.timedelta(seconds=round_, microseconds=round_ * 7)
        _one_by_one(single, keys, actions, entries, 42, t)
        many.record_many(MEASURE, keys, actions, entries, 42, t)
        assert single.pending() == many.pending()
        if round_ == 1:  # flushes in between and at the end
            single.flush()
            many.flush()
    # an ordinary check between batches
    single.record(MEASURE, b"k" * 16, "block", ("E1",), 42, NOW)
    many.record(MEASURE, b"k" * 16, "block", ("E1",), 42, NOW)
    single.close()
    many.close()
    assert single.path.read_bytes() == many.path.read_bytes()
    report = verify_audit(tmp_path / "many", public_key=key.public_key() if key else None)
    assert report.ok and report.records == 1 + 300 + 2000 + 1
    lines = [json.loads(x) for x in many.path.read_bytes().splitlines()]
    records = [x for x in lines if "checkpoint" not in x]
    secret = read_audit_key(tmp_path / "audit.key")  # both logs share it: same pseudonyms
    assert [r["key"] for r in records[1:301]] == [
        hmac.digest(secret, k, "sha256")[:16].hex() for k in _batch(300, seed=1)[0]
    ]


def test_record_many_overflow_drops_like_record(tmp_path: Path) -> None:
    single = AuditLog(tmp_path / "single", flush_interval=3600, max_buffer=7)
    many = AuditLog(tmp_path / "many", flush_interval=3600, max_buffer=7)
    keys, actions, entries = _batch(5)
    for log in (single, many):
        log.record(MEASURE, b"x" * 16, "allow", (), 1, NOW)
    _one_by_one(single, keys, actions, entries, 1, NOW)
    many.record_many(MEASURE, keys, actions, entries, 1, NOW)  # 1 + 5 of 7: all fit
    _one_by_one(single, keys, actions, entries, 1, NOW)
    many.record_many(MEASURE, keys, actions, entries, 1, NOW)  # 1 fits, 4 dropped
    _one_by_one(single, keys, actions, entries, 1, NOW)
    many.record_many(MEASURE, keys, actions, entries, 1, NOW)  # full: 5 dropped
    assert single.pending() == many.pending() == 7
    assert single._dropped == many._dropped == 9
    single.close()
    many.close()

    def content(log: AuditLog) -> list[dict[str, object]]:
        # the gap line carries the time of the flush: the rest is compared as is
        lines = [json.loads(x) for x in log.path.read_bytes().splitlines()]
        return [
            {k: v for k, v in x.items() if k not in ("h", "prev") and ("gap" not in x or k != "t")}
            for x in lines
        ]

    assert content(single) == content(many)
    report = verify_audit(tmp_path / "many")
    assert report.ok and report.records == 7
    assert "9 records dropped" in report.warnings[0]


def test_record_many_checks_lengths_and_ignores_after_close(tmp_path: Path) -> None:
    log = AuditLog(tmp_path, flush_interval=3600)
    keys, actions, entries = _batch(3)
    with pytest.raises(ValueError, match="as many"):
        log.record_many(MEASURE, keys, actions[:2], entries, 1, NOW)
    with pytest.raises(ValueError, match="as many"):
        log.record_many(MEASURE, keys, actions, entries[:2], 1, NOW)
    assert log.pending() == 0
    log.close()
    log.record_many(MEASURE, keys, actions, entries, 1, NOW)
    assert log.pending() == 0 and not log.path.exists()


def test_line_format_reusing_shared_parts_is_the_canonical_json() -> None:
    """Runs of records sharing (or not) each part, in every order, with values that need
    escaping in between: every line is byte for byte what _dumps gives."""
    rng = random.Random(8)
    measures = [MEASURE, "consumption.star_hotel", "m\u00e9sure"]  # the last needs escaping
    actions = ["allow", "block", 'bl"ock']
    entries_pool: list[Sequence[str]] = [(), ("E1",), ["E2", "E3"], ("条目",), ('E"4',)]
    versions: list[object] = [7, 8, True, 2**70]
    times = [NOW + _dt.timedelta(microseconds=i * 999_999) for i in range(4)]
    times.append(times[0].astimezone(_dt.timezone(_dt.timedelta(hours=8))))
    fmt = _LineFormat(KEYS)
    prev = "0" * 64
    for seq in range(1, 3000):
        item = (
            rng.choice(times),
            rng.choice(measures) if seq % 3 else measures[0],
            rng.randbytes(16),
            rng.choice(actions) if seq % 4 == 0 else "allow",
            rng.choice(entries_pool) if seq % 5 == 0 else (),
            rng.choice(versions) if seq % 11 == 0 else 7,
        )
        line, h = fmt(prev, seq, item)  # type: ignore[arg-type]
        again, h2 = _record_line(KEYS, prev, seq, item, _TimeFormat())  # type: ignore[arg-type]
        assert (line, h) == (again, h2)
        body = json.loads(line)
        assert body.pop("h") == h
        assert _dumps(body) == line[: line.rindex(b',"h":')] + b"}"
        assert h == hmac.digest(CHAIN_KEY, prev.encode() + _dumps(body), "sha256").hex()
        assert body["seq"] == seq and body["version"] == item[5]
        assert _dt.datetime.fromisoformat(str(body["t"])) == item[0]
        prev = h


def test_line_format_many_equals_one_call_per_record() -> None:
    """The batch formatter of a flush: the same lines and chain as calling the formatter
    on each record in turn, over runs sharing every part, some parts, or none, and
    records that need escaping."""
    rng = random.Random(9)
    measures = [MEASURE, "consumption.star_hotel", "m\u00e9sure"]
    actions = ["allow", "block", 'bl"ock']
    entries_pool: list[Sequence[str]] = [(), ("E1",), ["E2", "E3"], ("条目",)]
    times = [NOW + _dt.timedelta(microseconds=i * 999_999) for i in range(3)]
    shared = (times[0], MEASURE, b"", "allow", entries_pool[0], 7)
    items: list[Any] = []
    for i in range(3000):
        if i % 100 < 60:  # a screened run: every part the very same object
            items.append((shared[0], shared[1], rng.randbytes(16), *shared[3:]))
        else:
            items.append(
                (
                    rng.choice(times),
                    rng.choice(measures) if i % 3 else MEASURE,
                    rng.randbytes(16),
                    rng.choice(actions) if i % 4 == 0 else "allow",
                    rng.choice(entries_pool) if i % 5 == 0 else (),
                    rng.choice([7, 8, True]) if i % 11 == 0 else 7,
                )
            )
    one = _LineFormat(KEYS)
    prev, lines = "f" * 64, []
    for seq, item in enumerate(items, 41):
        line, prev = one(prev, seq, item)
        lines.append(line)
    data, last, seq = _LineFormat(KEYS).many("f" * 64, 40, items)
    assert data == b"".join(lines)
    assert (last, seq) == (prev, 40 + len(items))
    assert _LineFormat(KEYS).many(prev, seq, []) == (b"", prev, seq)
    # the inline HMACs of a screened run are the standard ones
    for line in data.splitlines()[:5]:
        body = json.loads(line)
        h = body.pop("h")
        assert h == hmac.digest(CHAIN_KEY, body["prev"].encode() + _dumps(body), "sha256").hex()
