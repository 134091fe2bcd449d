"""Bad input: fuzzing identifier normalisation, entry parsing, manifest, root and delta
parsing (hypothesis for structured input, a seeded mutation engine for bytes).

For every input only the documented exceptions may escape (``InvalidIdentifier``,
``InvalidEntry``, the ``VerificationError`` family), and their messages must say what was
wrong: not empty, not a bare class name or repr, naming the identifier kind or the
offending field, and never echoing a whole identifier. Anything else is counted as a
failure with the input that caused it (the smallest one seen per exception type).
A delta that fails to apply must leave the store exactly as it was.
"""

from __future__ import annotations

import base64
import gzip
import io
import json
import os
import random
import shutil
import string
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from intercept_sdk import Entity, Person
from intercept_sdk._client.store import Store, _parse_record
from intercept_sdk._client.sync import _iter_lines
from intercept_sdk._client.trust import TrustedState
from intercept_sdk._exceptions import (
    InvalidEntry,
    InvalidIdentifier,
    InvalidInput,
    VerificationError,
)
from intercept_sdk._platform.keys import KeyDir
from intercept_sdk._protocol.identifiers import (
    normalize_id_number,
    normalize_org_code,
    normalize_uscc,
)
from intercept_sdk._protocol.models import parse_entry
from intercept_sdk._protocol.signing import MANIFEST_TYPE, ROOT_TYPE, canonical_json, sign_envelope
from intercept_sdk.testing import TestPlatform, make_uscc

from ._support import FULL, Tally, person_ids, plain_person_entry, size
from .known_bugs import Known

SEED = int(os.environ.get("INTERCEPT_RELIABILITY_SEED", "20261122"))
N_IDENTIFIERS = size(600, 40_000)
N_ENTRIES = size(400, 20_000)
N_MANIFESTS = size(400, 20_000)
N_DELTAS = size(400, 15_000)
N_ROOTS = size(200, 5_000)

pytestmark = pytest.mark.timeout(size(240, 3600))

HYPOTHESIS = {
    "deadline": None,
    "database": None,
    "derandomize": not FULL,
    "suppress_health_check": list(HealthCheck),
}


# =========================================================================== judging outcomes


class Judge:
    """Counts inputs and failures of one target; keeps the smallest failing input per
    exception type (what a shrinker would report)."""

    def __init__(
        self,
        name: str,
        allowed: tuple[type[BaseException], ...],
        known: dict[type[BaseException], Known] | None = None,
    ) -> None:
        self.tally = Tally(f"bad input: {name}")
        self.allowed = allowed
        self.known = known or {}
        self.smallest: dict[str, tuple[int, str]] = {}

    def __call__(
        self,
        value: Any,
        fn: Callable[[], object],
        check_message: Callable[[BaseException], str | None] | None = None,
        *,
        count: bool = True,
    ) -> object:
        """Run ``fn`` on ``value``; ``count=False`` for a further call on an input
        already counted (the table counts inputs)."""
        if count:
            self.tally.runs += 1
        try:
            return fn()
        except self.allowed as exc:
            problem = _message_problem(exc) or (check_message(exc) if check_message else None)
            if problem:
                self._fail(value, f"{type(exc).__name__} with a poor message ({problem}): {exc}")
        except Exception as exc:
            what = f"undocumented {type(exc).__name__} escaped: {str(exc)[:200]}"
            self._fail(value, what, self.known.get(type(exc)))
        return None

    def _fail(self, value: Any, what: str, known: Known | None = None) -> None:
        self.tally.fail("", what, known)
        self.tally.examples.clear()
        shown = repr(value)
        key = what.split(":", 1)[0]
        if key not in self.smallest or len(shown) < self.smallest[key][0]:
            self.smallest[key] = (
                len(shown),
                f"{what}\n    input ({len(shown)} chars): {shown[:300]}",
            )

    def finish(self) -> None:
        self.tally.examples = [v for _, v in self.smallest.values()]
        self.tally.finish()


def _message_problem(exc: BaseException) -> str | None:
    text = str(exc)
    if len(text) < 10:
        return "too short"
    if text.strip() in (type(exc).__name__, repr(exc)):
        return "only the exception's name"
    if not any(c.isalpha() for c in text):
        return "no words"
    return None


# =========================================================================== mutation engine

INTERESTING = [
    b"",
    b"0",
    b"-1",
    b"1e999",
    b"-0",
    b"null",
    b"true",
    b"[]",
    b"{}",
    b'""',
    b'"\\u0000"',
    b"\xff\xfe",
    b"9" * 40,
    b'"' + b"A" * 300 + b'"',
    b"[" * 3000,
    b'{"a":' * 3000,
    "中文".encode(),
    b"\\",
    b'"',
    b",",
    b":",
    b"\n",
    b"\t",
    b"\r\n",
    b"P\t",
    b"D\t",
    b'"\\ud800"',
    b"NaN",
    b"Infinity",
    b"\x00" * 16,
]


# A fixed corpus of classic bad inputs, run before the random ones, so that even the
# short run meets them.
NASTY = [
    b"",
    b" ",
    b"\x00",
    b"\xef\xbb\xbf{}",
    b"\xff\xfe\xfd",
    b"null",
    b"[]",
    b"{}",
    b'"x"',
    b"[" * 100_000,
    b'{"a":' * 50_000,
    b"1e999",
    b"-" + b"9" * 5000,
    b"{" + b" " * 100_000,
    b'{"payload":' * 2000,
    "\ud800".encode("utf-8", "surrogatepass"),
    b"\n" * 1000,
]


def mutate(data: bytes, rng: random.Random, others: list[bytes]) -> bytes:
    """1..8 random edits: bit flips, inserts, deletes, duplications, interesting tokens,
    truncation, splicing with another sample."""
    buf = bytearray(data)
    for _ in range(rng.choice((1, 1, 1, 2, 2, 3, 5, 8))):
        if not buf:
            buf += rng.choice(INTERESTING)
            continue
        i = rng.randrange(len(buf))
        op = rng.randrange(8)
        if op == 0:
            buf[i] ^= 1 << rng.randrange(8)
        elif op == 1:
            buf[i:i] = os.urandom(rng.randint(1, 8))
        elif op == 2:
            del buf[i : i + rng.randint(1, 64)]
        elif op == 3:
            j = min(len(buf), i + rng.randint(1, 64))
            buf[i:i] = buf[i:j]
        elif op == 4:
            buf[i:i] = rng.choice(INTERESTING)
        elif op == 5:
            del buf[i:]
        elif op == 6 and others:
            other = rng.choice(others)
            buf[i:] = other[rng.randrange(len(other) + 1) :]
        else:
            buf[i] = rng.randrange(256)
    return bytes(buf)


def random_json(rng: random.Random, depth: int = 0) -> Any:
    r = rng.randrange(12 if depth < 3 else 8)
    if r == 0:
        return None
    if r == 1:
        return rng.choice([True, False])
    if r == 2:
        return rng.choice([0, -1, 1, 2**63, -(2**64), 10**30, rng.randint(-5, 10**6)])
    if r == 3:
        return rng.choice([0.5, -1e300, 1e-300, 3.0])
    if r == 4:
        return "".join(rng.choice(string.printable) for _ in range(rng.randint(0, 20)))
    if r == 5:
        return rng.choice(
            [
                "",
                "中文名称",
                "\u0000",
                "\ud7ff",
                "x" * 5000,
                "2024-02-30",
                "2026-11-22T08:00:00Z",
                "0" * 64,
                "f" * 63,
                "F" * 64,
            ]
        )
    if r == 6:
        return rng.choice(["snapshots/../x", "deltas/1-2." + "a" * 64 + ".ndjson.gz", "/etc/x"])
    if r == 7:
        return "a" * rng.choice([31, 32, 33, 64])
    if r < 10:
        return [random_json(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    return {random_key(rng): random_json(rng, depth + 1) for _ in range(rng.randint(0, 3))}


def random_key(rng: random.Random) -> str:
    return rng.choice(
        [
            "version",
            "from",
            "path",
            "sha256",
            "length",
            "raw_length",
            "state",
            "entries",
            "sum",
            "expires",
            "x",
            "",
            "中",
        ]
    )


def mutate_json(obj: Any, rng: random.Random) -> Any:
    """Structure-aware edits: replace, drop or add a member somewhere in ``obj``."""
    obj = json.loads(json.dumps(obj))
    for _ in range(rng.choice((1, 1, 2, 3))):
        parent: Any = None
        key: Any = None
        node = obj
        for _ in range(rng.randint(0, 4)):
            if isinstance(node, dict) and node:
                parent, key = node, rng.choice(list(node))
            elif isinstance(node, list) and node:
                parent, key = node, rng.randrange(len(node))
            else:
                break
            node = parent[key]
        if parent is None:
            if isinstance(obj, dict):
                obj[random_key(rng)] = random_json(rng)
            continue
        op = rng.randrange(4)
        if op == 0 and isinstance(parent, dict):
            del parent[key]
        elif op == 1 and isinstance(parent, dict):
            parent[random_key(rng)] = random_json(rng)
        elif op == 2 and isinstance(node, int) and not isinstance(node, bool):
            parent[key] = node + rng.choice([-1, 1, -(10**9), 2**62])
        else:
            parent[key] = random_json(rng)
    return obj


# =========================================================================== identifiers

VALID_IDS = person_ids(50)
VALID_USCC = [make_uscc(random.Random(i)) for i in range(50)]
ID_ALPHABET = list("0123456789Xx０１２３４５６７８９Ｘｘ -‐—‑\u3000\t\u00a0ABCZ")

raw_identifier = st.one_of(
    st.text(st.sampled_from(ID_ALPHABET), max_size=22),
    st.text(max_size=22),
    st.builds(
        lambda base, r: mutate(base.encode(), random.Random(r), []).decode("utf-8", "replace"),
        st.sampled_from(VALID_IDS + VALID_USCC + [u[8:17] for u in VALID_USCC]),
        st.integers(0, 2**32),
    ),
    st.sampled_from(VALID_IDS + VALID_USCC).map(lambda s: s[:15] if len(s) > 15 else s),
)
non_text = st.one_of(st.none(), st.integers(), st.binary(max_size=20), st.lists(st.integers()))


def test_fuzz_identifier_normalisation() -> None:
    judge = Judge("identifier normalisation (ID number, USCC, org code)", (InvalidIdentifier,))
    judge_obj = Judge("identifier objects (Person, Entity) from the same inputs", (InvalidInput,))
    kinds = {
        normalize_id_number: ("id_number", 18),
        normalize_uscc: ("uscc", 18),
        normalize_org_code: ("org_code", 9),
    }

    @seed(SEED)
    @settings(max_examples=N_IDENTIFIERS, **HYPOTHESIS)
    @given(st.one_of(raw_identifier, raw_identifier, raw_identifier, non_text))
    def run(value: Any) -> None:
        for fn, (kind, length) in kinds.items():

            def call(fn: Any = fn, kind: str = kind, length: int = length) -> None:
                out = fn(value)
                assert isinstance(out, str) and len(out) == length and out.isascii(), out
                assert fn(out) == out, "normalising twice changes the value"

            def message(exc: BaseException, kind: str = kind) -> str | None:
                text = str(exc)
                if kind not in text:
                    return f"does not name {kind}"
                if isinstance(value, str) and len(value.strip()) >= 8 and value.strip() in text:
                    return "echoes the identifier"
                return None

            judge(value, call, message, count=fn is normalize_id_number)
        judge_obj(value, lambda: Person(value))
        judge_obj(value, lambda: Entity(uscc=value), count=False)

    run()
    judge.tally.note("each input through the 3 normalisers")
    judge.finish()
    judge_obj.finish()


# =========================================================================== entries

ENTRY_IDS = person_ids(8)


def _valid_entries() -> list[dict[str, Any]]:
    out = [plain_person_entry(ENTRY_IDS[i], f"E{i:05d}") for i in range(4)]
    out.append(
        {
            **plain_person_entry(ENTRY_IDS[4], "E00004"),
            "subject_type": "entity",
            "name": "唐山市某某建材有限公司",
            "uscc": VALID_USCC[0],
            "legal_rep_name": "李四",
            "related": [{"role": "legal_rep", "name": "李四", "id_number": ENTRY_IDS[5]}],
        }
    )
    for e in out[4:]:
        for k in ("id_number", "gender", "age"):
            e.pop(k, None)
    out.append({**out[0], "visibility": "restricted", "audience": ["test-unit"]})
    out.append(
        {
            **out[1],
            "status": "revoked",
            "revoked_at": "2024-06-01T08:00:00+08:00",
            "status_ground": "objection_upheld",
        }
    )
    return out


def _entry_message(exc: BaseException) -> str | None:
    assert isinstance(exc, InvalidEntry)
    if not exc.reasons:
        return "no reasons"
    for r in exc.reasons:
        if ":" not in r or len(r) < 8:
            return f"reason {r!r} names no field"
    return None


def test_fuzz_entry_parsing() -> None:
    judge = Judge("entry parsing", (InvalidEntry,))
    valid = _valid_entries()
    for e in valid:
        parse_entry(e)  # the seeds themselves are valid
    texts = [json.dumps(e, ensure_ascii=False).encode() for e in valid]
    rng = random.Random(SEED)

    @seed(SEED)
    @settings(max_examples=N_ENTRIES // 2, **HYPOTHESIS)
    @given(st.sampled_from(valid), st.integers(0, 2**32))
    def structured(entry: dict[str, Any], r: int) -> None:
        value = mutate_json(entry, random.Random(r))
        judge(
            value,
            lambda: (
                parse_entry(value) if isinstance(value, dict) else parse_entry(json.dumps(value))
            ),
            _entry_message,
        )

    structured()
    for data in NASTY:
        judge(data, lambda data=data: parse_entry(data), _entry_message)
    for _ in range(N_ENTRIES - judge.tally.runs):
        data = mutate(rng.choice(texts), rng, texts)
        judge(data, lambda data=data: parse_entry(data), _entry_message)
    judge.finish()


# =========================================================================== manifests, roots


@pytest.fixture(scope="module")
def signed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A genuine site at version 2 (with its delta from 1) and a cache at version 1."""
    base = tmp_path_factory.mktemp("fuzz-site")
    p = TestPlatform(base)
    ids = person_ids(8)
    for i in range(6):
        p.add_person(ids[i], publish=False)
    p.add(
        p.entity_entry(related=[{"role": "legal_rep", "name": "李四", "id_number": ids[6]}]),
        publish=False,
    )
    p.add_person(ids[7], publish=False, visibility="restricted", audience=["test-unit"])
    p.publish()
    p.client(cache_dir=base / "cache-v1", audit=False).close()
    first = next(iter(p.entries))
    p.revoke(first, publish=False)
    p.add_person(publish=False)
    p.publish()  # v2, with a delta from 1
    p.close()
    keys = KeyDir(p.keys_dir)
    manifest = (p.site_dir / "manifest.json").read_bytes()
    payload = json.loads(base64.b64decode(json.loads(manifest)["payload"]))
    (delta,) = payload["deltas"]
    (box,) = payload["boxes"].values()  # the one registered unit's sealed box (format 2)
    return {
        "cache_v1": base / "cache-v1",
        "root": p.trust_root.read_bytes(),
        "manifest": manifest,
        "payload": payload,
        "online": keys.online_keys(),
        "root_keys": keys.root_keys(),
        "delta": (p.site_dir / delta["path"]).read_bytes(),
        "box": (p.site_dir / box["path"]).read_bytes(),
        "snapshot": (p.site_dir / payload["snapshot"]["path"]).read_bytes(),
    }


def test_fuzz_manifest_parsing(signed: dict[str, Any]) -> None:
    """Mutated envelopes (bytes), and mutated payloads signed with the real online key
    (so the parser behind the signature check is reached)."""
    judge = Judge("manifest parsing and verification", (VerificationError,))
    rng = random.Random(SEED + 1)
    root = signed["root"]
    genuine = signed["manifest"]
    others = [genuine, root]
    TrustedState(root).update_manifest(genuine)  # the seed is accepted
    for data in NASTY:
        judge(data, lambda data=data: TrustedState(root).update_manifest(data))
    for nasty in NASTY[9:11]:  # behind a valid signature: the payload parser
        data = sign_envelope(MANIFEST_TYPE, nasty, signed["online"]).to_bytes()
        judge(data, lambda data=data: TrustedState(root).update_manifest(data))
    for n in range(N_MANIFESTS - judge.tally.runs):
        if n % 2:
            data = mutate(genuine, rng, others)
        else:
            payload = mutate_json(signed["payload"], rng)
            body = (
                canonical_json(payload)
                if rng.random() < 0.8
                else mutate(canonical_json(payload), rng, [])
            )
            data = sign_envelope(MANIFEST_TYPE, body, signed["online"]).to_bytes()
        judge(data, lambda data=data: TrustedState(root).update_manifest(data))
    judge.finish()


def test_fuzz_root_parsing(signed: dict[str, Any]) -> None:
    """A mutated pinned root, and mutated root payloads signed by the real root keys."""
    judge = Judge("trust root parsing", (VerificationError,))
    rng = random.Random(SEED + 2)
    root = signed["root"]
    payload = json.loads(base64.b64decode(json.loads(root)["payload"]))
    for data in NASTY:
        judge(data, lambda data=data: TrustedState(data))
    for n in range(N_ROOTS - judge.tally.runs):
        if n % 2:
            data = mutate(root, rng, [signed["manifest"]])
        else:
            body = canonical_json(mutate_json(payload, rng))
            data = sign_envelope(ROOT_TYPE, body, signed["root_keys"]).to_bytes()
        judge(data, lambda data=data: TrustedState(data))
    judge.finish()


# =========================================================================== deltas


def test_fuzz_delta_parsing(signed: dict[str, Any], tmp_path: Path) -> None:
    """Mutated deltas and snapshots (compressed bytes, and lines re-compressed) through
    the reader and the record parser; every 25th delta also through a store at version
    1, which must refuse it (the signed digest) and keep version 1 exactly."""
    judge = Judge("delta and snapshot parsing", (VerificationError,))
    rng = random.Random(SEED + 3)
    genuine_raw = gzip.decompress(signed["delta"])
    snapshot_raw = gzip.decompress(signed["snapshot"])
    state = signed["payload"]["state"]
    cache = tmp_path / "cache"
    shutil.copytree(signed["cache_v1"], cache)
    store = Store(cache)
    base = store.verify()
    assert base.version == 1

    def consume(data: bytes, is_delta: bool, raw_limit: int | None) -> None:
        stream = gzip.GzipFile(fileobj=io.BytesIO(data))
        for op, rec in _iter_lines(stream, raw_limit, delta=is_delta, name="fuzz", exact=False):
            if op == "P":
                _parse_record(rec)

    def apply(data: bytes) -> None:
        ops = _iter_lines(
            gzip.GzipFile(fileobj=io.BytesIO(data)),
            4 * len(genuine_raw),
            delta=True,
            name="fuzz",
            exact=False,
        )
        store.apply_delta(
            1,
            2,
            ops,
            manifest=signed["manifest"],
            box=signed["box"],
            key_epoch=signed["payload"]["key_epoch"],
            expected_sum=state["sum"],
            expected_sha256=state["sha256"],
            expected_entries=state["entries"],
        )

    applied = 0
    for nasty in NASTY:
        data = gzip.compress(nasty)
        judge(data, lambda data=data: consume(data, True, None))
        judge(nasty, lambda data=nasty: consume(data, False, None))
    try:
        for n in range(N_DELTAS - judge.tally.runs):
            is_delta = n % 4 != 3
            raw = genuine_raw if is_delta else snapshot_raw
            if rng.random() < 0.5:
                data = mutate(gzip.compress(raw, compresslevel=1), rng, [signed["delta"]])
            else:
                data = gzip.compress(mutate(raw, rng, [genuine_raw, snapshot_raw]), 1)
            limit = rng.choice([None, len(raw), 2 * len(data) + 64])
            judge(data, lambda data=data, d=is_delta, lim=limit: consume(data, d, lim))
            if is_delta and n % 25 == 0 and data != signed["delta"]:
                applied += 1
                judge(data, lambda data=data: apply(data), count=False)
                now = store.verify()
                if now.version != 1:  # a harmless mutation reached exactly the signed v2
                    assert now.state_sha256 == state["sha256"], "a bad delta was kept"
                    store.close()
                    shutil.rmtree(cache)
                    shutil.copytree(signed["cache_v1"], cache)
                    store = Store(cache)
                else:
                    assert now == base, "a refused delta changed the store"
    finally:
        store.close()
    judge.tally.note(f"{applied} also applied to a store at version 1")
    judge.finish()
