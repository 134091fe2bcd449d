"""The publisher's fast path and worker processes give exactly what the full model gives.

Why: publishing validates millions of entries, so the publisher first tries a hand-written
check of the common entry shape (:func:`intercept_sdk._protocol.models.fast_entry_dict`) and a
direct record builder, and can spread that work over worker processes. Both are only
allowed if nothing observable changes: an entry the fast path accepts must be one the
pydantic model accepts, with the very same normalised fields and public record bytes;
everything else must go to the model, which gives the reasons. And a publish must write
the same artefacts, quarantine report and result whatever path and number of workers.

These tests mutate many generated entries (wrong types, lengths, formats, identifiers,
dates, cross-field rules, unicode oddities) and compare, entry by entry, from dicts and from
JSON lines; then they publish the same list serially without the fast path, serially with
it, and with worker processes, and compare every byte.
"""

from __future__ import annotations

import datetime as dt
import gzip
import itertools
import json
import os
import random
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from _site_v2 import locator
from intercept_sdk._client.keys import load_subscriber_key, subscriber_keygen
from intercept_sdk._exceptions import ConfigurationError, InvalidEntry
from intercept_sdk._platform import publish as _site
from intercept_sdk._platform.keys import add_subscriber, keygen
from intercept_sdk._platform.publish import PublishResult, current_hash_key, publish
from intercept_sdk._protocol import sealing
from intercept_sdk._protocol.catalog import measure_codes
from intercept_sdk._protocol.identifiers import id_check
from intercept_sdk._protocol.models import fast_entry_dict, parse_entry
from intercept_sdk._protocol.sealing import WorkFactor, box_context, parse_box_payload, unpad
from intercept_sdk._protocol.signing import Envelope, open_box
from intercept_sdk.testing.synth import generate_entries

NOW = dt.datetime(2026, 11, 22, 8, 0, tzinfo=dt.timezone.utc)
HASH_KEY = bytes(range(32))
SEALER = _site.Sealer(HASH_KEY, WorkFactor())
KNOWN = measure_codes()
Value = Any
Mutation = Callable[[dict[str, Any], random.Random], None]


# -- mutations ------------------------------------------------------------------------------


def _fullwidth(text: str) -> str:
    return "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in text)


def _id_for(birth: dt.date, male: bool = True) -> str:
    body = f"110101{birth:%Y%m%d}12{1 if male else 2}"
    return body + id_check(body)


def _shift(day: dt.date, years: int, days: int = 0) -> dt.date:
    try:
        d = day.replace(year=day.year + years)
    except ValueError:
        d = day.replace(year=day.year + years, day=28)
    return d + dt.timedelta(days=days)


def _id_variants(e: dict[str, Any], rng: random.Random) -> Value:
    idn = e.get("id_number")
    if not (isinstance(idn, str) and len(idn) == 18 and idn[:17].isdigit() and idn.isascii()):
        idn = _id_for(dt.date(1980, 1, 1))
    pub = dt.date.fromisoformat(e["published_at"]) if _is_date(e.get("published_at")) else None
    options: list[Value] = [
        None,
        "",
        idn.lower(),
        _fullwidth(idn),
        " " + idn[:6] + " " + idn[6:] + " ",
        idn[:17] + ("0" if idn[17] != "0" else "1"),  # checksum
        idn[:6] + idn[8:17],  # legacy 15 digits
        "110101" + "20991231" + "123",
        idn[:10] + "1399" + idn[14:],  # impossible date
        int(idn[:17]),
        idn + "\n",
        "１" * 18,
        "\u017f" * 18,
    ]
    if pub is not None and pub.year > 1900:  # around the 18th birthday
        for years, days in ((-18, 0), (-18, 1), (-18, -1), (-17, 0), (-19, 0)):
            options.append(_id_for(_shift(pub, years, days), rng.random() < 0.5))
    return rng.choice(options)


def _is_date(value: object) -> bool:
    if not isinstance(value, str):
        return False
    try:
        dt.date.fromisoformat(value)
    except ValueError:
        return False
    return len(value) == 10


_DATES: list[Value] = [
    "2019-02-29",
    "2020-02-29",
    "2019-2-01",
    "\u0662\u0660\u0661\u0669-03-01",
    "2019-03-01\n",
    "2019-03-01T00:00:00",
    "0000-01-01",
    "0001-01-01",
    "9999-12-31",
    "2030-01-01",
    "2010-06-15",
    "",
    20190301,
    None,
]
_AMOUNTS: list[Value] = [
    "0",
    "00",
    "01",
    "1.",
    "1.5",
    "1.55",
    "1.555",
    "-1",
    "1e3",
    "\u0661\u0662\u0663",
    "9999999999999999",
    "10000000000000000",
    "0\n",
    " 1",
    0,
    1.5,
    None,
]
_REVOKED: list[Value] = [
    None,
    "2021-01-05T09:30:00+08:00",
    "2021-01-05T09:30:00Z",
    "2021-01-05T09:30:00-00:00",
    "2021-01-05T09:30:00+00:00",
    "2021-01-05T09:30:00-05:30",
    "2021-01-05T09:30:00.5+08:00",
    "2021-01-05T09:30+08:00",
    "2021-01-05 09:30:00+08:00",
    "2021-01-05T09:30:00",
    "2021-01-05",
    "2021-01-05T24:00:00+08:00",
    "2021-01-05T09:30:00+14:00",
    "2021-01-05T09:30:00+24:00",
    "2021-02-30T09:30:00+08:00",
    "2021-01-05T09:30:00+08:00\n",
    5,
]
_STRINGS: list[Value] = [
    "",
    " ",
    "a\n",
    "\ud800",
    "\x00",
    '"',
    "\\",
    "\t\x1f\x08\x0c\r\x7f",
    "\u2028\u2029\ufeff",
    "😀\U0010ffff",
    "</script>&<'",
    "x" * 101,
    "x" * 201,
    1,
    True,
    None,
    [],
]
_RELATED: list[Value] = [
    [],
    None,
    "legal_rep",
    [{"role": "legal_rep", "name": "李四"}],
    [{"role": "boss", "name": "李四"}],
    [{"role": "legal_rep", "name": ""}],
    [{"role": "legal_rep", "name": "x" * 101}],
    [{"role": "legal_rep", "name": "李四", "id_number": None}],
    [{"role": "legal_rep", "name": "李四", "id_number": "120103198806018241"}],
    [{"role": "legal_rep", "name": "李四", "id_number": "12010319880601824１"}],
    [{"role": "legal_rep", "name": "李四", "id_number": "120103198806018242"}],
    [{"role": "legal_rep", "name": "李四", "id_number": 5}],
    [{"role": "legal_rep", "name": "李四", "extra": 1}],
    [{"role": "director", "name": "\ud800"}],
    [{"name": "李四"}],
    ["李四"],
    ({"role": "supervisor", "name": "李四"},),
]


def _set(
    field: str, values: list[Value] | Callable[[dict[str, Any], random.Random], Value]
) -> Mutation:
    def mutate(e: dict[str, Any], rng: random.Random) -> None:
        e[field] = values(e, rng) if callable(values) else rng.choice(values)

    return mutate


def _delete(e: dict[str, Any], rng: random.Random) -> None:
    if e:
        del e[rng.choice(sorted(e))]


def _extra(e: dict[str, Any], rng: random.Random) -> None:
    e[rng.choice(["unexpected", "Entry_id", "id_key", ""])] = rng.choice([1, None, "x"])


def _swap_subject(e: dict[str, Any], rng: random.Random) -> None:
    e["subject_type"] = "entity" if e.get("subject_type") == "person" else "person"


def _case(e: dict[str, Any], rng: random.Random) -> None:
    raw = e.get("case_no")
    case: str = raw if isinstance(raw, str) else "(2019)冀0203执123号"
    e["case_no"] = rng.choice(
        [
            case + "\n",
            case.replace("(", "（").replace(")", "）"),
            case.replace("号", ""),
            case[:5],
            case + " ",
            "x" * 70,
            "(2019)冀0203执" + "1" * 60 + "号",
            5,
            None,
        ]
    )


def _a_uscc(e: dict[str, Any]) -> str:
    u = e.get("uscc")
    return u if isinstance(u, str) and len(u) == 18 and u.isascii() else "91110000600037341L"


def _uscc(e: dict[str, Any], rng: random.Random) -> Value:
    u = _a_uscc(e)
    return rng.choice(
        [None, "", u.lower(), _fullwidth(u), u[:17] + ("0" if u[17] != "0" else "1"), u[1:], 5]
    )


def _org(e: dict[str, Any], rng: random.Random) -> Value:
    u = _a_uscc(e)
    org = u[8:17]
    return rng.choice(
        [None, "", org, org[:8] + "-" + org[8], org.lower(), "600037341", "12345678X", 5]
    )


def _age(e: dict[str, Any], rng: random.Random) -> Value:
    raw = e.get("age")
    age: int = raw if isinstance(raw, int) and not isinstance(raw, bool) else 30
    return rng.choice([None, 0, 150, 151, -1, True, 30.0, "30", age - 2, age - 1, age + 1, age + 2])


MUTATIONS: list[Mutation] = [
    _set("entry_id", ["E1\n", "", "-E1", "E" * 64, "E" * 65, "Ｅ1", "e.1:x-y_", "E 1", 5, None]),
    _case,
    _set("subject_type", ["person", "entity", "Person", None, 1]),
    _set("name", [*_STRINGS, "x" * 200]),
    _set("id_number", _id_variants),
    _set("gender", ["男", "女", None, "M", 1]),
    _set("age", _age),
    _set("uscc", _uscc),
    _set("org_code", _org),
    _set("legal_rep_name", [*_STRINGS, "x" * 100]),
    _set("court", [*_STRINGS, "xx", "x" * 100]),
    _set("basis_doc_no", [*_STRINGS, "x" * 100]),
    _set("basis_issuer", [*_STRINGS, "x" * 100]),
    _set("obligation", [*_STRINGS, "x" * 2000, "x" * 2001]),
    _set("performance", ["全部未履行", "部分未履行", "未履行", None]),
    _set("situation", [0, 1, 6, 7, True, 1.0, "1", None]),
    _set("severity", [0, 1, 3, 4, False, None]),
    _set("published_at", _DATES),
    _set("filed_at", _DATES),
    _set("valid_until", _DATES),
    _set("performed_amount", _AMOUNTS),
    _set("unperformed_amount", _AMOUNTS),
    _set("status", ["active", "revoked", "deleted", "Active", None]),
    _set("revoked_at", _REVOKED),
    _set("visibility", ["public", "restricted", "private", None]),
    _set(
        "audience",
        [[], ["bank-a"], ["\ud800"], [1], "bank-a", None, ("bank-a",), ["bank-a", "bank-a"], [""]],
    ),
    _set(
        "measures",
        [
            ["*"],
            ["*", "travel.flight"],
            [],
            ["travel.flight"],
            ["travel.flight", "travel.flight"],
            ["no.such_measure"],
            "*",
            None,
            ("*",),
            [1],
            ["TRAVEL.FLIGHT"],
        ],
    ),
    _set("related", _RELATED),
    _delete,
    _extra,
    _swap_subject,
]


def corpus(n: int, seed: int) -> list[dict[str, Any]]:
    """``n`` generated entries (some minors, restricted, revoked), each also mutated."""
    rng = random.Random(seed)
    base = list(
        generate_entries(
            n,
            seed=seed,
            minors=n // 50,
            restricted=n // 20,
            audience=["bank-a", "nobody"],
            revoked_ratio=0.1,
        )
    )
    out: list[dict[str, Any]] = []
    for e in base:
        out.append(e)
        for _ in range(4):
            m = json.loads(json.dumps(e))
            for _ in range(rng.choice((1, 1, 1, 2, 3))):
                rng.choice(MUTATIONS)(m, rng)
            out.append(m)
    return out


def _line(obj: dict[str, Any], rng: random.Random) -> bytes:
    return json.dumps(obj, ensure_ascii=rng.random() < 0.3).encode("utf-8", "surrogatepass")


def _open(line: bytes, item: bytes | dict[str, Any]) -> dict[str, Any]:
    """The plaintext of a sealed line, opened with the debtor's own identifier."""
    fields = parse_entry(json.loads(item) if isinstance(item, bytes) else item).to_json_dict()
    if fields.get("id_number"):
        secret = sealing.identifier_secret(HASH_KEY, "id", fields["id_number"])
    else:
        org = fields.get("org_code") or fields["uscc"][8:17]
        secret = sealing.identifier_secret(HASH_KEY, "org", org)
    sealed = sealing.parse_sealed(line)
    for t, blob in sealed.wraps:
        opened = sealing.open_wrap(sealing.kek(secret, WorkFactor()), sealed.rid, t, blob)
        if opened is not None:
            plain: dict[str, Any] = json.loads(
                sealing.open_body(opened[0], sealed.rid, sealed.body)
            )
            return plain
    raise AssertionError("the sealed line does not open with the entry's identifier")


def _slow(item: bytes | dict[str, Any]) -> Any:
    try:
        return _site._slow_item(item, SEALER)
    except InvalidEntry:
        return "invalid"
    except Exception as exc:  # whatever the model path raises, the fast path must defer
        return f"error {type(exc).__name__}"


# -- entry by entry -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def entries() -> list[dict[str, Any]]:
    return corpus(1500, seed=7)


def test_fast_entry_dict_agrees_with_the_model(entries: list[dict[str, Any]]) -> None:
    accepted = rejected = deferred = 0
    for obj in entries:
        before = json.dumps(obj, sort_keys=True)
        fast = fast_entry_dict(obj, KNOWN)
        assert json.dumps(obj, sort_keys=True) == before, "the input must not change"
        try:
            slow = parse_entry(obj).to_json_dict()
        except InvalidEntry:
            slow = None
        if fast is None:
            if slow is None:
                rejected += 1
            else:
                deferred += 1
        else:
            assert slow is not None, obj
            assert fast == slow, obj
            accepted += 1
    # Both sides are exercised: many accepted, many refused (by the model), few deferred.
    assert accepted > 2000
    assert rejected > 2000
    assert deferred < accepted // 4, (accepted, deferred)


def test_fast_item_equals_slow_item_from_dicts_and_lines(entries: list[dict[str, Any]]) -> None:
    rng = random.Random(3)
    fast_count = 0
    for obj in entries:
        line = _line(obj, rng)
        for item in (obj, line):
            fast = _site._fast_item(item, SEALER, KNOWN)
            if fast is not None:
                assert fast == _slow(item), item
                fast_count += 1
            # Same decision for the line as for the dict it came from, unless unusual.
    assert fast_count > 4000


def test_every_generated_entry_takes_the_fast_path() -> None:
    """The benchmark lists are generated: none of their published entries may need the
    slow path (withdrawn ones, rare and never published, take it on purpose: their ground
    is checked by the model); either way both paths agree."""
    rng = random.Random(5)
    for e in generate_entries(
        3000, seed=11, restricted=40, audience=["bank-a"], revoked_ratio=0.2, minors=0
    ):
        for item in (e, _line(e, rng)):
            fast = _site._fast_item(item, SEALER, KNOWN)
            if e["status"] != "active":
                assert fast is None
                assert _slow(item)[3] is None  # valid, and not published
                continue
            assert fast is not None, e
            assert fast == _slow(item)


def test_fast_path_refuses_odd_json_the_model_refuses() -> None:
    e = next(iter(generate_entries(1, seed=3)))
    good = json.dumps(e, ensure_ascii=False, separators=(",", ":"))
    odd = [
        b"\xef\xbb\xbf" + good.encode(),  # a BOM on a line other than the first
        good.encode()[:-1],
        good.encode() + b"x",
        good.replace('"situation":', '"situation":1.0,"x":').encode(),
        good.replace('"name":"', '"name":"\\ud800').encode(),
        good.encode().replace(b'"subject_type":"', b'"subject_type":"\xff'),
        good.replace('"severity":', '"severity":NaN,"severity2":').encode(),
        b"[" + good.encode() + b"]",
        b"null",
    ]
    for line in odd:
        assert line != good.encode()
        assert _site._fast_item(line, SEALER, KNOWN) is None
        assert isinstance(_slow(line), str)  # refused by the model too
    # Duplicate keys: the last one counts, for the model and for the fast path alike.
    dup = good[:-1] + ',"name":"李四"}'
    fast = _site._fast_item(dup.encode(), SEALER, KNOWN)
    assert fast is not None and fast == _slow(dup.encode())
    assert fast[3] is not None and _open(fast[3], dup.encode())["name"] == "李四"


def test_fast_path_does_not_cache_wrong_answers() -> None:
    """Date and date-time answers are cached; the cache must not change any decision."""
    e = next(iter(generate_entries(1, seed=4, revoked_ratio=1.0)))
    for _ in range(3):
        for value in _REVOKED:
            m = {**e, "revoked_at": value}
            fast = _site._fast_item(m, SEALER, KNOWN)
            assert fast is None or fast == _slow(m)
        for value in _DATES:
            m = {**e, "filed_at": value}
            fast = _site._fast_item(m, SEALER, KNOWN)
            assert fast is None or fast == _slow(m)


# -- whole publishes ------------------------------------------------------------------------


def _source_lines(n: int, seed: int) -> list[bytes]:
    """Generated and mutated entries, duplicates, blank and broken lines."""
    rng = random.Random(seed)
    objs = corpus(n, seed)
    rng.shuffle(objs)
    lines = [_line(o, rng) for o in objs]
    for i in rng.sample(range(len(lines)), 30):  # duplicated entry_ids
        lines.insert(rng.randrange(len(lines)), lines[i])
    for junk in (b"", b"   ", b"[1, 2]", b'{"entry_id": "TRUNC", ', b"null", b"\xff\xfe"):
        lines.insert(rng.randrange(len(lines)), junk)
    return lines


def _write(path: Path, lines: list[bytes], *, crlf: bool = False) -> Path:
    sep = b"\r\n" if crlf else b"\n"
    path.write_bytes(b"\xef\xbb\xbf" + sep.join(lines) + sep)
    return path


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A key directory template with one registered subscriber (``bank-a``) and one key
    epoch: an empty list was published once (into a scratch site), so every copy of the
    template publishes under the same hash key and their artefacts can be compared."""
    base = tmp_path_factory.mktemp("platform")
    keys = base / "keys"
    keygen(keys, now=NOW - dt.timedelta(days=1))
    report_pub, box_pub = subscriber_keygen(base / "sub")
    add_subscriber(keys, "bank-a", report_pub.read_bytes(), box_pub.read_bytes())
    publish([], keys, base / "scratch-site", now=NOW - dt.timedelta(hours=1))
    return keys


def _bank_a(keys: Path) -> X25519PrivateKey:
    """The private box key of the template's subscriber (next to the template)."""
    key = load_subscriber_key(keys.parent / "sub").restricted
    assert key is not None
    return key


def _site_view(site: Path, bank_a: X25519PrivateKey, result: PublishResult) -> dict[str, Any]:
    """Everything a publish produced, with the (randomly sealed) boxes reduced to their
    locator, length and content opened with the subscriber's private key."""
    files = {}
    for p in sorted(site.rglob("*")):
        if p.is_file() and p.suffix != ".box" and p.name != "manifest.json":
            files[p.relative_to(site).as_posix()] = p.read_bytes()
    manifest = Envelope.from_bytes((site / "manifest.json").read_bytes()).payload_json()
    boxes = {}
    for loc, art in manifest["boxes"].items():
        sealed = (site / art["path"]).read_bytes()
        assert len(sealed) == art["length"]
        payload = unpad(open_box(bank_a, sealed, box_context(loc, manifest["version"])))
        boxes[loc] = (art["length"], payload)
    manifest["boxes"] = boxes
    assert list(boxes) == [locator("bank-a", bank_a)]
    return {
        "files": files,
        "manifest": manifest,
        "quarantine": result.quarantine_path.read_bytes(),
        "result": (
            result.version,
            result.entries,
            result.restricted_entries,
            result.quarantined,
            result.snapshot,
            result.deltas,
            {loc: a.length for loc, a in result.boxes.items()},
            result.key_epoch,
            result.rotated,
            result.state_sha256,
            result.state_sum,
        ),
    }


def _publish_all(
    keys_template: Path,
    root: Path,
    sources: list[Path],
    *,
    workers: int,
    progress: list[int],
) -> list[dict[str, Any]]:
    keys = root / "keys"
    shutil.copytree(keys_template, keys)
    bank_a = _bank_a(keys_template)
    site = root / "site"
    views = []
    for i, source in enumerate(sources):
        r = publish(
            source,
            keys,
            site,
            now=NOW + dt.timedelta(minutes=i),
            workers=workers,
            progress=progress.append,
        )
        views.append(_site_view(site, bank_a, r))
    return views


def test_publish_same_bytes_slow_fast_and_parallel(
    platform: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lines = _source_lines(600, seed=21)
    v1 = _write(tmp_path / "v1.jsonl", lines)
    # Version 2: some lines gone, some revoked, a few new; CRLF line ends.
    rng = random.Random(22)
    kept = [x for x in lines if rng.random() > 0.05]
    for i in rng.sample(range(len(kept)), 40):
        try:
            obj = json.loads(kept[i])
        except ValueError:
            continue
        if isinstance(obj, dict):
            obj["status"] = "revoked"
            obj["revoked_at"] = "2026-11-01T10:00:00+08:00"
            kept[i] = _line(obj, rng)
    kept += [_line(e, rng) for e in generate_entries(50, seed=23, start_id=90_000)]
    v2 = _write(tmp_path / "v2.jsonl", kept, crlf=True)

    monkeypatch.setattr(_site, "_PROGRESS_EVERY", 97)
    p_slow: list[int] = []
    p_fast: list[int] = []
    p_par: list[int] = []
    with monkeypatch.context() as m:
        m.setattr(_site, "_fast_item", lambda *_a: None)  # the full model only
        slow = _publish_all(platform, tmp_path / "slow", [v1, v2], workers=0, progress=p_slow)
    fast = _publish_all(platform, tmp_path / "fast", [v1, v2], workers=0, progress=p_fast)
    monkeypatch.setattr(_site, "_BATCH_LINES", 101)  # many batches, a partial last one
    par = _publish_all(platform, tmp_path / "par", [v1, v2], workers=3, progress=p_par)
    one = _publish_all(platform, tmp_path / "one", [v1, v2], workers=1, progress=[])

    assert slow[0]["result"][3], "the list must have quarantined lines"
    assert slow[0]["result"][2], "the list must have restricted entries"
    (loc,) = slow[0]["manifest"]["boxes"]
    box = parse_box_payload(slow[0]["manifest"]["boxes"][loc][1], version=2)
    assert box.restricted, "bank-a's box must hold restricted entries"
    assert slow[1]["manifest"]["deltas"], "version 2 must have a delta"
    assert fast == slow
    assert par == slow
    assert one == slow
    assert p_fast == p_slow == p_par


def test_parallel_publish_of_the_generated_list_equals_serial(
    platform: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The benchmark's case: a large well-formed list, every line on the fast path."""
    src = tmp_path / "list.jsonl"
    with src.open("wb") as f:
        for e in generate_entries(5000, seed=1):
            f.write(json.dumps(e, ensure_ascii=False, separators=(",", ":")).encode() + b"\n")
    serial = _publish_all(platform, tmp_path / "s", [src], workers=0, progress=[])
    parallel = _publish_all(platform, tmp_path / "p", [src], workers=2, progress=[])
    assert serial == parallel
    assert serial[0]["result"][1] == 5000


def test_failed_worker_fails_the_publish_cleanly(
    platform: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = tmp_path / "keys"
    shutil.copytree(platform, keys)
    site = tmp_path / "site"
    src = _write(tmp_path / "l.jsonl", _source_lines(50, seed=5))
    first = publish(src, keys, site, now=NOW, workers=0)
    before = (site / "manifest.json").read_bytes()
    monkeypatch.setattr(
        _site, "_WORKER_CODE", "import sys\nsys.stdin.buffer.read(8)\nsys.exit(3)\n"
    )
    with pytest.raises((RuntimeError, OSError)):
        publish(src, keys, site, now=NOW + dt.timedelta(minutes=1), workers=2)
    assert (site / "manifest.json").read_bytes() == before
    assert not (keys / "state" / "scratch.sqlite3").exists()
    monkeypatch.undo()
    again = publish(src, keys, site, now=NOW + dt.timedelta(minutes=2), workers=2)
    assert again.version == first.version + 1
    assert again.snapshot.sha256 == first.snapshot.sha256


def test_workers_argument(platform: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    keys = tmp_path / "keys"
    shutil.copytree(platform, keys)
    for bad in (-1, True, 1.5, "2"):
        with pytest.raises(ConfigurationError, match="workers"):
            publish([], keys, tmp_path / "site", now=NOW, workers=bad)  # type: ignore[arg-type]
    small = _write(tmp_path / "small.jsonl", [b"{}"])
    assert _site._auto_workers(small) == 0
    assert _site._auto_workers([{"entry_id": "x"}]) == 0
    assert _site._auto_workers(tmp_path / "missing.jsonl") == 0
    monkeypatch.setattr(_site, "_PARALLEL_MIN_BYTES", 1)
    for cpus, expected in ((8, 4), (5, 4), (4, 3), (3, 0), (2, 0), (1, 0)):
        monkeypatch.setattr(os, "sched_getaffinity", lambda _pid, n=cpus: set(range(n)))
        assert _site._auto_workers(small) == expected
        assert _site._auto_workers(str(small)) == expected
    # A mapping source is published in this process whatever ``workers`` says.
    r = publish(list(generate_entries(20, seed=2)), keys, tmp_path / "site", now=NOW, workers=4)
    assert (r.entries, r.workers) == (20, 0)


def test_threaded_gzip_artefact_writes_the_same_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_site, "_BUFFER", 1000)  # many chunks through the thread
    rng = random.Random(9)
    lines = [
        bytes(rng.randrange(32, 127) for _ in range(rng.randrange(1, 900))) for _ in range(3000)
    ]
    arts = []
    for threaded in (False, True):
        d = tmp_path / str(threaded)
        w = _site._GzipArtefact(d, 6, threaded=threaded)
        for line in lines:
            w.write_line(line)
        art = w.finish(lambda h: f"1.{h}.ndjson.gz", tmp_path)
        arts.append((art, w.raw.hexdigest(), w.count, (tmp_path / art.path).read_bytes()))
    (a1, h1, c1, b1), (a2, h2, c2, b2) = arts
    assert (a1.sha256, a1.length, a1.raw_length, h1, c1, b1) == (
        a2.sha256,
        a2.length,
        a2.raw_length,
        h2,
        c2,
        b2,
    )
    assert gzip.decompress(b2) == b"".join(x + b"\n" for x in lines)


def test_threaded_gzip_artefact_abort_and_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_site, "_BUFFER", 10)
    w = _site._GzipArtefact(tmp_path / "a", 6, threaded=True)
    for _ in range(100):
        w.write_line(b"x" * 20)
    w.abort()
    assert not list((tmp_path / "a").iterdir())

    w = _site._GzipArtefact(tmp_path / "b", 6, threaded=True)

    def boom(_data: bytes) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(w, "_emit", boom)

    def fill_and_finish() -> None:
        for _ in range(1000):
            w.write_line(b"y" * 20)
        w.finish(lambda h: f"1.{h}.ndjson.gz", tmp_path)

    with pytest.raises(OSError, match="disk full"):
        fill_and_finish()
    w.abort()
    assert not list((tmp_path / "b").iterdir())


def _expected_snapshot(lines: list[bytes], hash_key: bytes) -> list[bytes]:
    """The snapshot's lines by an independent route: every valid, active, public entry
    whose entry_id occurs once in ``lines``, sealed by the model path, in record id order."""
    sealer = _site.Sealer(hash_key, WorkFactor())
    by_id: dict[str, list[dict[str, Any]]] = {}
    for line in lines:
        try:
            fields = parse_entry(line).to_json_dict()
        except InvalidEntry:
            continue
        by_id.setdefault(fields["entry_id"], []).append(fields)
    sealed = []
    for copies in by_id.values():
        if len(copies) == 1 and copies[0].get("visibility") != "restricted":
            out = sealer.seal_fields(copies[0])
            if out is not None:
                sealed.append(out)
    return [line for _, line in sorted(sealed)]


def test_snapshot_is_in_record_id_order_whatever_the_source_order(
    platform: Path, tmp_path: Path
) -> None:
    """The snapshot is the sealed lines of the public entries sorted by record id (which
    the hash key scrambles), whatever order the source is in, with duplicates left out."""
    rng = random.Random(31)
    entries = list(generate_entries(800, seed=31, restricted=40, audience=["bank-a"], minors=10))
    lines = [_line(e, rng) for e in entries]  # sorted by entry_id, minors invalid
    for i in sorted(rng.sample(range(len(lines)), 20), reverse=True):
        bad = json.loads(lines[i])
        bad["severity"] = 9
        lines.insert(i, _line(bad, rng))  # an invalid copy before: no duplicate
    shuffled = list(lines)
    rng.shuffle(shuffled)
    dup = lines[len(lines) // 2]
    sources = {
        "sorted": lines,
        "shuffled": shuffled,
        "dup_at_end": [*lines, dup],
        "dup_shuffled": [*shuffled, dup],
    }
    results: dict[str, tuple[Any, ...]] = {}
    for name, src_lines in sources.items():
        keys = tmp_path / name / "keys"
        shutil.copytree(platform, keys)
        site = tmp_path / name / "site"
        r = publish(_write(tmp_path / f"{name}.jsonl", src_lines), keys, site, now=NOW, workers=0)
        snap = gzip.decompress((site / r.snapshot.path).read_bytes()).splitlines()
        rids = [sealing.parse_sealed(x).rid for x in snap]
        assert all(a < b for a, b in itertools.pairwise(rids)), name  # strictly increasing
        assert snap == _expected_snapshot(src_lines, current_hash_key(keys)[1]), name
        assert r.entries == len(snap)
        results[name] = (r.snapshot, r.state_sha256, r.state_sum, r.entries)
    assert results["sorted"] == results["shuffled"]
    assert results["dup_at_end"] == results["dup_shuffled"]
    assert results["dup_at_end"][3] == results["sorted"][3] - 1
    assert results["sorted"][3] > 600


def test_workers_stop_when_the_publish_fails_midway(
    platform: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    started: list[Any] = []

    class Spy(_site._Workers):
        def __init__(self, count: int, sealer: _site.Sealer) -> None:
            super().__init__(count, sealer)
            started.extend(self.procs)

    monkeypatch.setattr(_site, "_Workers", Spy)
    monkeypatch.setattr(_site, "_BATCH_LINES", 50)
    monkeypatch.setattr(_site, "_PROGRESS_EVERY", 100)
    keys = tmp_path / "keys"
    shutil.copytree(platform, keys)
    src = tmp_path / "list.jsonl"
    src.write_bytes(b"".join(_line(e, random.Random(1)) + b"\n" for e in generate_entries(1000)))

    def stop(n: int) -> None:
        if n >= 300:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        publish(src, keys, tmp_path / "site", now=NOW, workers=2, progress=stop)
    assert len(started) == 2
    assert all(proc.returncode is not None for proc in started)
    assert not (tmp_path / "site" / "manifest.json").exists()
    assert not list((tmp_path / "site").rglob("*.part"))


def test_benchmark_pipeline_publishes_what_the_generator_gives(tmp_path: Path) -> None:
    """The 10M site is generated in a child process into a pipe: same artefacts."""
    repo = str(Path(__file__).resolve().parent.parent)
    sys.path.insert(0, repo)
    try:
        from benchmarks import data
    finally:
        sys.path.remove(repo)
    a = data.new_platform(tmp_path / "a")
    # One key epoch for both copies (the first publish draws the hash key).
    publish([], a["keys"], tmp_path / "scratch-site")
    b_dir = tmp_path / "b"
    shutil.copytree(tmp_path / "a", b_dir)
    piped = data._publish_generated(1500, 10, tmp_path / "a", a, lambda _n: None)
    direct = publish(
        generate_entries(1500, seed=10), b_dir / "keys", b_dir / "site", expires=data.LARGE_EXPIRES
    )
    assert (piped.entries, piped.snapshot.sha256, piped.state_sum, piped.key_epoch) == (
        direct.entries,
        direct.snapshot.sha256,
        direct.state_sum,
        direct.key_epoch,
    )
    assert not piped.rotated and piped.entries == 1500
    assert not (tmp_path / "a" / "source.fifo").exists()
