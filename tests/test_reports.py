"""Feedback reports: building, the personal-data guard, signing/verifying, keys, summaries."""

from __future__ import annotations

import base64
import datetime as dt
import json
import logging
import os
import stat
import uuid
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from intercept_sdk import ConfigurationError, InvalidInput, InvalidReport, SignatureError
from intercept_sdk._client.keys import SubscriberKeys, load_subscriber_key, subscriber_keygen
from intercept_sdk._client.outbox import Outbox
from intercept_sdk._client.summary import summarize
from intercept_sdk._protocol.identifiers import id_check
from intercept_sdk._protocol.reports import (
    MAX_ENVELOPE_BYTES,
    REPORT_KINDS,
    build_report,
    quarterly_window,
    sign_report,
    validate_report,
    verify_report,
)
from intercept_sdk._protocol.signing import (
    MANIFEST_TYPE,
    REPORT_TYPE,
    Envelope,
    SigningKey,
    canonical_json,
    sign_envelope,
)

SUB = "hotel-001"
CASE = "(2019)冀0203执123号"
NOW = dt.datetime(2026, 2, 3, 4, 5, 6, tzinfo=dt.timezone.utc)

#: Minimal valid arguments per kind.
KIND_ARGS: dict[str, dict[str, Any]] = {
    "interception": {
        "measure": "consumption.star_hotel",
        "entry_id": "E1",
        "case_no": CASE,
        "list_version": 42,
        "outcome": "blocked",
    },
    "review_outcome": {"measure": "finance.credit", "entry_id": "E1", "outcome": "rejected"},
    "lift": {"measure": "consumption.star_hotel", "entry_id": "E1", "outcome": "lifted"},
    "objection": {"entry_id": "E1", "details": {"grounds": "已全部履行"}},
    "data_error": {"entry_id": "E1", "details": {"description": "案号与法院不符"}},
    "quarterly_summary": {"details": {"year": 2026, "quarter": 1}},
}


def valid_id18(body17: str = "11010119900307123") -> str:
    return body17 + id_check(body17)


def report(kind: str = "interception", **over: Any) -> dict[str, Any]:
    args: dict[str, Any] = {"subscriber_id": SUB, "now": NOW, **KIND_ARGS[kind], **over}
    return build_report(kind, **args)


# --------------------------------------------------------------------------- build


@pytest.mark.parametrize("kind", REPORT_KINDS)
def test_every_kind_builds_a_complete_payload(kind: str) -> None:
    p = report(kind)
    assert set(p) == {
        "type",
        "report_id",
        "subscriber_id",
        "kind",
        "created_at",
        "measure",
        "entry_id",
        "case_no",
        "list_version",
        "outcome",
        "details",
    }
    assert p["type"] == "report"
    assert p["kind"] == kind
    assert p["created_at"] == "2026-02-03T04:05:06Z"
    assert uuid.UUID(hex=p["report_id"]).version == 4
    assert p["report_id"] == uuid.UUID(hex=p["report_id"]).hex
    # Plain JSON: survives a canonical round trip unchanged.
    assert json.loads(canonical_json(p)) == p


def test_report_ids_are_fresh_and_overridable() -> None:
    assert report()["report_id"] != report()["report_id"]
    rid = uuid.uuid4().hex
    assert report(report_id=rid)["report_id"] == rid
    with pytest.raises(InvalidReport, match="report_id"):
        report(report_id="not-hex")
    with pytest.raises(InvalidReport, match="report_id"):
        report(report_id=rid.upper())


def test_default_now_is_current_utc() -> None:
    p = build_report("interception", subscriber_id=SUB, **KIND_ARGS["interception"])
    created = dt.datetime.fromisoformat(p["created_at"].replace("Z", "+00:00"))
    assert abs((created - dt.datetime.now(dt.timezone.utc)).total_seconds()) < 5


def test_naive_now_is_refused() -> None:
    with pytest.raises(InvalidReport, match="timezone-aware"):
        report(now=dt.datetime(2026, 1, 1))


def test_unknown_kind() -> None:
    with pytest.raises(InvalidReport, match="kind must be one of"):
        build_report("complaint", subscriber_id=SUB)


@pytest.mark.parametrize(
    ("kind", "drop", "needs"),
    [
        ("interception", "measure", "needs measure"),
        ("interception", "list_version", "needs list_version"),
        ("interception", "case_no", "needs case_no"),
        ("interception", "outcome", "needs outcome"),
        ("review_outcome", "outcome", "needs outcome"),
        ("lift", "entry_id", "needs entry_id"),
        ("objection", "entry_id", "needs entry_id"),
    ],
)
def test_required_fields_per_kind(kind: str, drop: str, needs: str) -> None:
    args = {**KIND_ARGS[kind], drop: None}
    with pytest.raises(InvalidReport, match=needs):
        build_report(kind, subscriber_id=SUB, **args)


@pytest.mark.parametrize(
    ("kind", "details", "needs"),
    [
        ("objection", {}, "grounds"),
        ("objection", {"grounds": "  "}, "grounds"),
        ("data_error", {}, "description"),
        ("quarterly_summary", {"year": 2026}, "quarter"),
        ("quarterly_summary", {"year": 2026, "quarter": 5}, "quarter"),
        ("quarterly_summary", {"year": "2026", "quarter": 1}, "year"),
    ],
)
def test_required_details_per_kind(kind: str, details: dict[str, Any], needs: str) -> None:
    with pytest.raises(InvalidReport, match=needs):
        report(kind, details=details)


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(InvalidReport) as err:
        build_report(
            "interception",
            subscriber_id="bad id/..",
            measure="travel.flights",
            entry_id="E1",
            case_no=CASE,
            list_version=-1,
            outcome="Blocked",
        )
    text = str(err.value)
    for part in ("subscriber_id", "measure", "list_version", "outcome"):
        assert part in text
    assert isinstance(err.value, InvalidInput)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("subscriber_id", "../etc"),
        ("subscriber_id", ""),
        ("entry_id", "E 1"),
        ("case_no", ""),
        ("case_no", "x" * 65),
        ("list_version", True),
        ("list_version", "42"),
        ("outcome", "blocked!"),
        ("measure", "nope"),
    ],
)
def test_field_shapes(field: str, value: Any) -> None:
    with pytest.raises(InvalidReport):
        report(**{field: value})


# --------------------------------------------------------------------------- personal data


@pytest.mark.parametrize(
    "value",
    [
        valid_id18(),
        valid_id18()[:-1] + ("0" if valid_id18()[-1] != "0" else "1"),  # bad checksum too
        "11010119900307123X",
        "11010119900307123x",
        "110101900307123",  # legacy 15 digits
        "身份证110101199003071234号",
        "guest: 110101 19900307 1234",
        "110101-19900307-1234",
        "１１０１０１１９９００３０７１２３４",  # full-width digits
    ],
)
def test_plaintext_id_numbers_are_refused(value: str) -> None:
    with pytest.raises(InvalidReport, match="plaintext resident ID number") as err:
        report(details={"guest": value})
    # The value is never echoed.
    assert value not in str(err.value)


def test_error_messages_never_echo_an_id_number() -> None:
    number = valid_id18()
    for over in (
        {"outcome": f"x{number}"},
        {"measure": f"m.{number}"},
        {"details": {number: {"when": dt.datetime(2026, 1, 1)}}},
    ):
        with pytest.raises(InvalidReport) as err:
            report(**over)
        assert number not in str(err.value)
    with pytest.raises(InvalidReport) as err:
        build_report(f"k{number}", subscriber_id=SUB)
    assert number not in str(err.value)


def test_id_numbers_are_found_anywhere() -> None:
    for details in (
        {"nested": {"deeper": [1, {"x": valid_id18()}]}},
        {valid_id18(): "as a key"},
        {"as_int": int(valid_id18()[:17] + "1")},
        {"list": ["a", "b", "110101900307123"]},
    ):
        with pytest.raises(InvalidReport, match="plaintext resident ID number"):
            report(details=details)
    with pytest.raises(InvalidReport, match="plaintext resident ID number"):
        report("objection", details={"grounds": f"我的身份证号是{valid_id18()}"})
    with pytest.raises(InvalidReport, match="plaintext resident ID number"):
        report(entry_id=valid_id18())


@pytest.mark.parametrize(
    "value",
    [
        "1101**********1234",  # masked form
        "13800138000",  # phone number
        "1234567890123456789",  # 19 digits: not an ID number
        "1000000000000.50",  # an amount
        "2026-01-31T08:00:00Z",
        "order 20260131123456",  # 14 digits
        "000000000000000000",  # no area code
        "110101199013071234",  # month 13
    ],
)
def test_harmless_numbers_pass(value: str) -> None:
    assert report(details={"v": value})["details"]["v"] == value


@pytest.mark.parametrize(
    "details",
    [
        {"when": dt.datetime(2026, 1, 1)},
        {"set": {1, 2}},
        {"bytes": b"x"},
        {"nan": float("nan")},
        {"inf": float("inf")},
        {1: "int key"},
        {"obj": object()},
    ],
)
def test_details_must_be_plain_json(details: dict[Any, Any]) -> None:
    with pytest.raises(InvalidReport):
        report(details=details)


def test_details_depth_and_size_are_bounded() -> None:
    deep: dict[str, Any] = {}
    node = deep
    for _ in range(20):
        node["a"] = {}
        node = node["a"]
    with pytest.raises(InvalidReport, match="nested deeper"):
        report(details=deep)
    with pytest.raises(InvalidReport, match="bytes, more than"):
        report(details={"blob": "x" * 70_000})


def test_details_tuples_and_mappings_become_plain() -> None:
    from types import MappingProxyType

    p = report(details=MappingProxyType({"t": (1, 2), "f": 1.5, "b": True, "n": None}))
    assert p["details"] == {"t": [1, 2], "f": 1.5, "b": True, "n": None}
    assert type(p["details"]) is dict


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=100, deadline=None)
@given(details=st.dictionaries(st.text(max_size=10), json_values, max_size=5))
def test_any_json_details_build_or_fail_cleanly(details: dict[str, Any]) -> None:
    try:
        p = report(details=details)
    except InvalidReport:
        return
    assert json.loads(canonical_json(p)) == p


@settings(max_examples=200, deadline=None)
@given(
    area=st.integers(100000, 999999),
    birth=st.dates(dt.date(1900, 1, 1), dt.date(2025, 12, 31)),
    seq=st.integers(0, 999),
    prefix=st.text(alphabet="abc 姓名:", max_size=5),
)
def test_any_generated_id_number_is_caught(
    area: int, birth: dt.date, seq: int, prefix: str
) -> None:
    body = f"{area}{birth:%Y%m%d}{seq:03d}"
    with pytest.raises(InvalidReport, match="plaintext"):
        report(details={"x": prefix + body + id_check(body)})


# --------------------------------------------------------------------------- sign/verify


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def test_sign_verify_round_trip(key: Ed25519PrivateKey) -> None:
    p = report()
    env = sign_report(p, key)
    assert json.loads(env)["payload_type"] == REPORT_TYPE
    assert Envelope.from_bytes(env).payload == canonical_json(p)
    assert verify_report(env, {SUB: key.public_key()}) == p
    # Deterministic: the same report signs to the same bytes.
    assert sign_report(p, key) == env


def test_sign_refuses_invalid_payload_and_wrong_key(key: Ed25519PrivateKey) -> None:
    p = report()
    with pytest.raises(InvalidReport):
        sign_report({**p, "details": {"id": valid_id18()}}, key)
    with pytest.raises(ConfigurationError):
        sign_report(p, "not a key")  # type: ignore[arg-type]


def _forge(payload: dict[str, Any], key: Ed25519PrivateKey, ptype: str = REPORT_TYPE) -> bytes:
    """Sign anything, bypassing sign_report's validation."""
    return sign_envelope(ptype, canonical_json(payload), [SigningKey(key)]).to_bytes()


def test_verify_rejects_other_keys_and_tampering(key: Ed25519PrivateKey) -> None:
    other = Ed25519PrivateKey.generate()
    p = report()
    env = sign_report(p, key)
    with pytest.raises(SignatureError, match="unknown subscriber"):
        verify_report(env, {"someone-else": key.public_key()})
    with pytest.raises(SignatureError):
        verify_report(env, {SUB: other.public_key()})
    # Signed by hotel-002's key but claiming to be hotel-001.
    with pytest.raises(SignatureError):
        verify_report(_forge(p, other), {SUB: key.public_key(), "hotel-002": other.public_key()})
    # Payload altered after signing.
    obj = json.loads(env)
    altered = {**p, "outcome": "allowed"}
    obj["payload"] = base64.b64encode(canonical_json(altered)).decode()
    with pytest.raises(SignatureError):
        verify_report(json.dumps(obj).encode(), {SUB: key.public_key()})


def test_verify_checks_signature_before_content(key: Ed25519PrivateKey) -> None:
    bad_payload = {**report(), "details": {"id": valid_id18()}}
    other = Ed25519PrivateKey.generate()
    # Invalid content with a bad signature: the signature is what fails.
    with pytest.raises(SignatureError):
        verify_report(_forge(bad_payload, other), {SUB: key.public_key()})
    # Invalid content with a good signature: refused after verification.
    with pytest.raises(InvalidReport, match="plaintext"):
        verify_report(_forge(bad_payload, key), {SUB: key.public_key()})


@pytest.mark.parametrize(
    "blob",
    [
        b"",
        b"not json",
        b"[]",
        b'{"payload": "!!!", "payload_type": "x", "signatures": []}',
        b'{"payload": "", "payload_type": "' + REPORT_TYPE.encode() + b'", "signatures": []}',
    ],
)
def test_verify_rejects_malformed(blob: bytes, key: Ed25519PrivateKey) -> None:
    with pytest.raises(InvalidReport):
        verify_report(blob, {SUB: key.public_key()})


def test_verify_rejects_wrong_type_oversize_and_deep_json(key: Ed25519PrivateKey) -> None:
    with pytest.raises(InvalidReport, match="envelope type"):
        verify_report(_forge(report(), key, MANIFEST_TYPE), {SUB: key.public_key()})
    with pytest.raises(InvalidReport, match="more than"):
        verify_report(b" " * (MAX_ENVELOPE_BYTES + 1), {SUB: key.public_key()})
    deep = b"[" * 50_000 + b"]" * 50_000
    env = sign_envelope(REPORT_TYPE, deep, [SigningKey(key)]).to_bytes()
    with pytest.raises(InvalidReport):
        verify_report(env, {SUB: key.public_key()})
    no_sig = Envelope(REPORT_TYPE, canonical_json(report()), ()).to_bytes()
    with pytest.raises(SignatureError):
        verify_report(no_sig, {SUB: key.public_key()})


def test_validate_report_rejects_unknown_and_missing_fields() -> None:
    p = report()
    with pytest.raises(InvalidReport, match="unknown fields: extra"):
        validate_report({**p, "extra": 1})
    q = dict(p)
    del q["details"]
    with pytest.raises(InvalidReport, match="missing fields: details"):
        validate_report(q)
    with pytest.raises(InvalidReport):
        validate_report([])  # type: ignore[arg-type]
    with pytest.raises(InvalidReport, match="created_at"):
        validate_report({**p, "created_at": "yesterday"})


# --------------------------------------------------------------------------- the one schema


def test_created_at_far_ahead_of_the_receivers_clock_is_refused(key: Ed25519PrivateKey) -> None:
    """A report dated more than a day ahead of the receiver's clock is refused; ``now`` is
    the receiver's clock (injectable), not the one the report was built with."""
    p = report()  # created 2026-02-03 04:05:06Z
    assert validate_report(p, now=NOW) == p
    assert validate_report(p, now=NOW - dt.timedelta(hours=23, minutes=59)) == p
    assert validate_report(p, now=NOW - dt.timedelta(days=1)) == p  # exactly a day: fine
    with pytest.raises(InvalidReport, match="more than 1 day ahead"):
        validate_report(p, now=NOW - dt.timedelta(days=1, seconds=1))
    env = sign_report(p, key)
    assert verify_report(env, {SUB: key.public_key()}, now=NOW) == p
    with pytest.raises(InvalidReport, match="ahead"):
        verify_report(env, {SUB: key.public_key()}, now=NOW - dt.timedelta(days=3))
    with pytest.raises(InvalidReport, match="timezone-aware"):
        validate_report(p, now=dt.datetime(2026, 2, 3))


def test_created_at_is_checked_against_the_current_time_by_default() -> None:
    ahead = dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=2)
    p = report(now=ahead)  # the builder's own clock: accepted when built
    with pytest.raises(InvalidReport, match="ahead"):
        validate_report(p)
    assert validate_report(report(now=dt.datetime.now(dt.timezone.utc))) is not None


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("list_version", float("nan")),
        ("list_version", float("inf")),
        ("details", {"a": [1, {"b": float("-inf")}]}),
        ("details", {"a": float("nan")}),
    ],
)
def test_nan_and_infinity_are_refused_anywhere(field: str, value: Any) -> None:
    with pytest.raises(InvalidReport):
        validate_report({**report(), field: value}, now=NOW)


@pytest.mark.parametrize("token", [b"NaN", b"Infinity", b"-Infinity", b"1e999"])
def test_nan_and_infinity_in_a_signed_payload_are_refused(
    token: bytes, key: Ed25519PrivateKey
) -> None:
    """JSON text may carry NaN/Infinity tokens (Python's parser accepts them): a signed
    payload holding one is refused after the signature verified."""
    raw = canonical_json(report()).replace(b'"details":{}', b'"details":{"x":' + token + b"}")
    assert token in raw
    env = sign_envelope(REPORT_TYPE, raw, [SigningKey(key)]).to_bytes()
    with pytest.raises(InvalidReport, match="JSON cannot carry"):
        verify_report(env, {SUB: key.public_key()}, now=NOW)


def test_unknown_top_level_fields_are_refused_on_every_path(key: Ed25519PrivateKey) -> None:
    extra = {**report(), "id_number_hash": "x"}
    with pytest.raises(InvalidReport, match="unknown fields: id_number_hash"):
        validate_report(extra, now=NOW)
    with pytest.raises(InvalidReport, match="unknown fields"):
        sign_report(extra, key)
    with pytest.raises(InvalidReport, match="unknown fields"):
        verify_report(_forge(extra, key), {SUB: key.public_key()}, now=NOW)


def test_id_numbers_anywhere_in_details_of_a_received_report(key: Ed25519PrivateKey) -> None:
    for details in (
        {"deep": [[{"k": f"客人 {valid_id18()[:6]} {valid_id18()[6:14]} {valid_id18()[14:]}"}]]},
        {"list": [int(valid_id18()[:17] + "1")]},
        {"a": {valid_id18(): 1}},
    ):
        with pytest.raises(InvalidReport, match="plaintext resident ID number") as err:
            verify_report(_forge({**report(), "details": details}, key), {SUB: key.public_key()})
        assert valid_id18() not in str(err.value)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("outcome", "blocked\n"),
        ("report_id", "0123456789abcdef" * 2 + "\n"),
        ("subscriber_id", "hotel-001\n"),
        ("entry_id", "E1\n"),
    ],
)
def test_a_trailing_newline_is_refused(field: str, value: str) -> None:
    """The patterns match whole values (``$`` with ``re.match`` accepted a final newline)."""
    with pytest.raises(InvalidReport, match=field):
        validate_report({**report(), field: value}, now=NOW)


# --------------------------------------------------------------------------- keys


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_keygen_writes_four_files_with_modes(tmp_path: Path) -> None:
    out = tmp_path / "keys"
    report_pub, restricted_pub = subscriber_keygen(out)
    assert report_pub == out / "report.ed25519.pub.pem"
    assert restricted_pub == out / "restricted.x25519.pub.pem"
    assert _mode(out / "report.ed25519.pem") == 0o600
    assert _mode(out / "restricted.x25519.pem") == 0o600
    assert _mode(out) == 0o700
    assert b"PUBLIC KEY" in report_pub.read_bytes()
    keys = load_subscriber_key(out)
    assert isinstance(keys, SubscriberKeys)
    assert keys.restricted is not None
    from intercept_sdk._protocol.signing import load_public_key

    assert load_public_key(report_pub).public_bytes_raw() == keys.report_public.public_bytes_raw()
    assert len(keys.keyid) == 64
    # Reports signed with the loaded key verify with the written public key.
    env = sign_report(report(), keys.report)
    assert verify_report(env, {SUB: load_public_key(report_pub)})["subscriber_id"] == SUB


def test_keygen_never_replaces_keys_silently(tmp_path: Path) -> None:
    subscriber_keygen(tmp_path)
    before = (tmp_path / "report.ed25519.pem").read_bytes()
    with pytest.raises(ConfigurationError, match="refusing"):
        subscriber_keygen(tmp_path)
    assert (tmp_path / "report.ed25519.pem").read_bytes() == before
    subscriber_keygen(tmp_path, overwrite=True)
    assert (tmp_path / "report.ed25519.pem").read_bytes() != before


def test_load_from_file_and_without_restricted(tmp_path: Path) -> None:
    subscriber_keygen(tmp_path)
    from_file = load_subscriber_key(tmp_path / "report.ed25519.pem")
    assert from_file.restricted is not None  # the sibling is picked up
    os.unlink(tmp_path / "restricted.x25519.pem")
    assert load_subscriber_key(str(tmp_path)).restricted is None


def test_load_errors(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(ConfigurationError, match="does not exist"):
        load_subscriber_key(tmp_path / "missing")
    with pytest.raises(ConfigurationError, match="holds no"):
        load_subscriber_key(tmp_path)
    subscriber_keygen(tmp_path)
    # An X25519 key where the Ed25519 report key is expected.
    with pytest.raises(ConfigurationError, match="Ed25519"):
        load_subscriber_key(tmp_path / "restricted.x25519.pem")
    os.chmod(tmp_path / "report.ed25519.pem", 0o644)
    with caplog.at_level(logging.WARNING, logger="intercept_sdk.reports"):
        load_subscriber_key(tmp_path)
    assert any("readable by other users" in r.getMessage() for r in caplog.records)


# --------------------------------------------------------------------------- quarters


@pytest.mark.parametrize(
    ("quarter", "start", "end", "due"),
    [
        (1, (2026, 1, 1), (2026, 4, 1), (2026, 4, 30)),
        (2, (2026, 4, 1), (2026, 7, 1), (2026, 7, 30)),
        (3, (2026, 7, 1), (2026, 10, 1), (2026, 10, 30)),
        (4, (2026, 10, 1), (2027, 1, 1), (2027, 1, 30)),
    ],
)
def test_quarterly_window(
    quarter: int, start: tuple[int, int, int], end: tuple[int, int, int], due: tuple[int, ...]
) -> None:
    s, e, d = quarterly_window(2026, quarter)
    assert (s.year, s.month, s.day, s.hour) == (*start, 0)
    assert (e.year, e.month, e.day, e.hour) == (*end, 0)
    assert s.utcoffset() == dt.timedelta(hours=8)
    assert d == dt.date(*due)
    # Due = last day of the quarter + 30 days.
    assert d - (e - dt.timedelta(days=1)).date() == dt.timedelta(days=30)


def test_quarters_tile_the_year() -> None:
    for q in (1, 2, 3):
        assert quarterly_window(2026, q)[1] == quarterly_window(2026, q + 1)[0]
    assert quarterly_window(2026, 4)[1] == quarterly_window(2027, 1)[0]
    for bad in ((2026, 0), (2026, 5), (1999, 1), (True, 1)):
        with pytest.raises(InvalidReport):
            quarterly_window(*bad)


def _enqueue(box: Outbox, key: Ed25519PrivateKey, kind: str, when: dt.datetime, **kw: Any) -> str:
    p = report(kind, now=when, **kw)
    box.enqueue(
        sign_report(p, key),
        report_id=p["report_id"],
        kind=p["kind"],
        measure=p["measure"],
        created_at=p["created_at"],
    )
    return str(p["report_id"])


def test_summarize_counts_the_quarter_in_china_time(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    box = Outbox(tmp_path / "outbox.sqlite")
    utc = dt.timezone.utc
    q1_first = dt.datetime(2025, 12, 31, 16, 0, 0, tzinfo=utc)  # 2026-01-01 00:00 CST
    q1_last = dt.datetime(2026, 3, 31, 15, 59, 59, tzinfo=utc)  # 2026-03-31 23:59:59 CST
    q2_first = dt.datetime(2026, 3, 31, 16, 0, 0, tzinfo=utc)  # 2026-04-01 00:00 CST
    before = dt.datetime(2025, 12, 31, 15, 59, 59, tzinfo=utc)
    sent = _enqueue(box, key, "interception", q1_first)
    dead = _enqueue(box, key, "interception", q1_last)
    _enqueue(box, key, "lift", q1_last)
    _enqueue(box, key, "objection", q1_last)
    _enqueue(box, key, "review_outcome", q1_last)
    _enqueue(box, key, "data_error", q1_last)
    _enqueue(box, key, "quarterly_summary", q1_last, details={"year": 2025, "quarter": 4})
    _enqueue(box, key, "interception", q2_first)
    _enqueue(box, key, "interception", before)
    box.mark_sent([sent])
    box.mark_dead([dead], 400, "test")
    s = summarize(box, 2026, 1, checks_performed=1234)
    assert s["interceptions"] == 2  # pending, sent and dead all count
    assert s["lifts"] == 1
    assert s["objections"] == 1
    assert s["review_outcomes"] == 1
    assert s["data_errors"] == 1
    assert s["checks_performed"] == 1234
    assert s["due_date"] == "2026-04-30"
    assert s["period_start"] == "2025-12-31T16:00:00Z"
    assert s["period_end"] == "2026-03-31T16:00:00Z"
    assert s["by_measure"] == {
        "consumption.star_hotel": {"interception": 2, "lift": 1},
        "finance.credit": {"review_outcome": 1},
        "unspecified": {"objection": 1, "data_error": 1},
    }
    # The summary is itself a valid quarterly_summary report.
    p = build_report("quarterly_summary", subscriber_id=SUB, details=s)
    assert p["details"] == s
    with pytest.raises(InvalidReport):
        summarize(box, 2026, 1, checks_performed=-1)
    box.close()


# --------------------------------------------------------------------------- fast paths
# build_report validates once; sign_report signs the validated bytes as long as the payload
# still serialises to them; the ID scan has a cheap pre-filter. Each must refuse exactly
# what the slow path refuses.

_SEPARATORS_REF = __import__("re").compile(r"[\s\-\u2010-\u2014\u2212\u3000]")


def _looks_like_id_number_reference(text: str) -> bool:
    """The scan as it was before the pre-filter (kept here as the oracle)."""
    from intercept_sdk._protocol.reports import _FULLWIDTH, _ID_RE

    folded = text.translate(_FULLWIDTH)
    if _ID_RE.search(folded):
        return True
    squeezed = _SEPARATORS_REF.sub("", folded)
    return squeezed != folded and _ID_RE.search(squeezed) is not None


_ID_ALPHABET = (
    "0123456789" * 4
    + "Xx -\u2010\u2014\u2212\u3000\t\n\uff0d"
    + "".join(chr(0xFF10 + i) for i in range(10))  # full-width digits
    + "\u0660\u0665\u0969\u09e7"  # other Unicode decimal digits (\d matches them)
    + "ab号:\uff21"
)


_ID_BODIES = [
    "110101199003071234",
    "11010119900307123X",
    "110101900307123",
    "１１０１０１１９９００３０７１２３４",
]
_GAPS = ["", "", "", " ", "-", "\uff0d", "\u3000", "\u2012", "\u2212", "\t", "a", "\uff21"]


@st.composite
def _id_like_text(draw: st.DrawFn) -> str:
    body = draw(st.sampled_from(_ID_BODIES))
    cut = draw(st.integers(0, 3))  # also shorter runs (14-17 digits) that must not match
    body = body[: len(body) - cut]
    gaps = draw(st.lists(st.sampled_from(_GAPS), min_size=len(body), max_size=len(body)))
    pre = draw(st.text(alphabet=_ID_ALPHABET, max_size=4))
    post = draw(st.text(alphabet=_ID_ALPHABET, max_size=4))
    return pre + "".join(c + g for c, g in zip(body, gaps, strict=True)) + post


@settings(max_examples=3000, deadline=None)
@given(text=st.text(alphabet=_ID_ALPHABET, max_size=40) | _id_like_text())
def test_id_scan_prefilter_refuses_exactly_what_the_full_scan_refuses(text: str) -> None:
    from intercept_sdk._protocol.reports import _looks_like_id_number

    assert _looks_like_id_number(text) == _looks_like_id_number_reference(text)


def test_id_scan_prefilter_on_known_shapes() -> None:
    from intercept_sdk._protocol.reports import _looks_like_id_number

    for text in (
        valid_id18(),
        "１１０１０１１９９００３０７１２３４",
        "110101 19900307 1234",
        "110101\uff0d19900307\uff0d1234",  # full-width hyphen-minus folds to "-"
        "110101\u300019900307\u30001234",
        "ID 110101900307123 end",
    ):
        assert _looks_like_id_number(text), text
        assert _looks_like_id_number_reference(text), text
    for text in ("", "short 1234", "x" * 1000, "1101**********1234", "13800138000"):
        assert not _looks_like_id_number(text), text


def test_built_payload_is_signed_without_a_second_validation(
    key: Ed25519PrivateKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    import intercept_sdk._protocol.reports as reports_mod

    p = report()
    calls: list[int] = []
    real = reports_mod.validate_report

    def counting(payload: Any, **kw: Any) -> dict[str, Any]:
        calls.append(1)
        return real(payload, **kw)

    monkeypatch.setattr(reports_mod, "validate_report", counting)
    env = sign_report(p, key)
    assert calls == []  # validated once, in build_report
    assert Envelope.from_bytes(env).payload == canonical_json(p)
    assert verify_report(env, {SUB: key.public_key()}) == p
    calls.clear()
    # A plain dict (not from build_report) is validated, even with the same content.
    assert sign_report(dict(p), key) == env
    assert calls == [1]


@pytest.mark.parametrize(
    "tamper",
    [
        pytest.param(lambda p: p["details"].__setitem__("guest", valid_id18()), id="nested-id"),
        pytest.param(lambda p: p.__setitem__("outcome", valid_id18()), id="top-level-id"),
        pytest.param(lambda p: p.__setitem__("list_version", True), id="bool-for-int"),
        pytest.param(lambda p: p.__setitem__("kind", "gossip"), id="unknown-kind"),
        pytest.param(lambda p: p.__setitem__("extra", 1), id="extra-field"),
        pytest.param(lambda p: p.pop("case_no"), id="missing-field"),
        pytest.param(lambda p: p["details"].__setitem__("nan", float("nan")), id="nan"),
        pytest.param(
            lambda p: p["details"].__setitem__("when", dt.datetime(2026, 1, 1)), id="not-json"
        ),
        pytest.param(
            lambda p: dict.__setitem__(p, "details", {"x": {"y": valid_id18()}}),
            id="dict-setitem-bypass",
        ),
        pytest.param(lambda p: p["details"].__setitem__("blob", "x" * 70_000), id="oversize"),
        pytest.param(lambda p: p["details"].__setitem__("room", valid_id18()), id="same-key"),
        pytest.param(
            lambda p: p["details"].setdefault("deep", {"list": []})["list"].append(valid_id18()),
            id="deep-list",
        ),
        pytest.param(
            lambda p: p["details"].setdefault("deep", {}).__setitem__("n", valid_id18()),
            id="deep-dict",
        ),
        pytest.param(
            lambda p: (p.pop("outcome"), p.__setitem__("outcome", valid_id18())),
            id="reinserted-key",
        ),
    ],
)
@pytest.mark.parametrize(
    "details",
    [
        {"room": "1808", "deep": {"list": ["a"], "n": 1}},  # nested: compared as JSON
        {"room": "1808", "deep": {"list": ["a"], "n": 1}, "seen": True},
        {"room": "1808"},  # flat: compared object by object
        {"room": "1808", "floor": 18, "vip": False, "note": None, "rate": 1.5},
    ],
    ids=["nested", "nested-more", "flat", "flat-scalars"],
)
def test_payload_tampered_after_build_is_validated_again(
    key: Ed25519PrivateKey, tamper: Any, details: dict[str, Any]
) -> None:
    p = report(details=json.loads(json.dumps(details)))
    tamper(p)
    with pytest.raises(InvalidReport):
        sign_report(p, key)


def test_unchanged_payload_check_on_each_path(key: Ed25519PrivateKey) -> None:
    from intercept_sdk._protocol.reports import _ValidatedReport

    for details in ({"a": "1", "b": 2}, {"a": ["1"], "b": {"c": None}}, {}):
        p = report(details=details)
        assert type(p) is _ValidatedReport and p._unchanged()
        assert p._values is not None
        # Equal but new objects: not the same objects, so the JSON decides (still equal).
        q = report(details=details)
        q["details"] = json.loads(json.dumps(q["details"]))
        q["outcome"] = "".join(["bl", "ocked"])
        assert q._unchanged()
        assert sign_report(q, key) == sign_report(dict(q), key)
        # A real change anywhere is seen on every path.
        r = report(details=details)
        r["details"]["z"] = "new"
        assert not r._unchanged()
        env = sign_report(r, key)
        assert verify_report(env, {SUB: key.public_key()})["details"]["z"] == "new"
    # A top-level value that is not a plain scalar object disables the shortcut.
    from intercept_sdk._protocol.reports import build_report as build

    class Text(str):
        pass

    t = build("objection", subscriber_id=SUB, entry_id=Text("E1"), details={"grounds": "x"})
    assert t._values is None and t._unchanged()
    t["entry_id"] = "E2"
    assert not t._unchanged()
    assert verify_report(sign_report(t, key), {SUB: key.public_key()})["entry_id"] == "E2"


def test_payload_changed_after_build_signs_what_it_now_says(key: Ed25519PrivateKey) -> None:
    p = report(details={"room": "1808"})
    p["details"]["room"] = "1809"
    p["outcome"] = "allowed"
    env = sign_report(p, key)
    signed = verify_report(env, {SUB: key.public_key()})
    assert signed["details"] == {"room": "1809"}
    assert signed["outcome"] == "allowed"
    # Mappings that json cannot serialise directly are validated (and made plain) too.
    from types import MappingProxyType

    p["details"] = MappingProxyType({"t": (1, 2)})
    assert verify_report(sign_report(p, key), {SUB: key.public_key()})["details"] == {"t": [1, 2]}


def test_signed_envelope_marker_is_immutable_and_leaves_the_process_as_bytes(
    key: Ed25519PrivateKey,
) -> None:
    import pickle

    env = sign_report(report(), key)
    assert isinstance(env, bytes)
    with pytest.raises(AttributeError):
        env._meta = None  # type: ignore[attr-defined, misc]
    with pytest.raises(AttributeError):
        del env._meta  # type: ignore[attr-defined]
    copy = pickle.loads(pickle.dumps(env))
    assert type(copy) is bytes and copy == env
    assert type(bytes(env)) is bytes


def test_sign_single_is_the_canonical_envelope(key: Ed25519PrivateKey) -> None:
    from intercept_sdk._protocol.signing import sign_single

    sk = SigningKey(key)
    for ptype, payload in (
        (REPORT_TYPE, canonical_json(report())),
        (MANIFEST_TYPE, b"{}"),
        ('odd "type" \\ é', b"\x00\xff"),  # needs escaping: the general path
    ):
        assert sign_single(ptype, payload, sk) == sign_envelope(ptype, payload, [sk]).to_bytes()


def test_signing_key_id_is_derived_once(monkeypatch: pytest.MonkeyPatch) -> None:
    import intercept_sdk._protocol.signing as signing_mod

    calls: list[int] = []
    real = signing_mod.keyid_of

    def counting(public: Any) -> str:
        calls.append(1)
        return real(public)

    monkeypatch.setattr(signing_mod, "keyid_of", counting)
    private = Ed25519PrivateKey.generate()
    first = SigningKey.of(private)
    assert SigningKey.of(private) is first
    for _ in range(5):
        assert first.keyid == real(private.public_key())
    for _ in range(3):
        sign_report(report(), private)
    assert calls == [1]
    # Bounded: many keys do not grow the cache without limit.
    for _ in range(3 * signing_mod._SIGNING_KEYS_MAX):
        SigningKey.of(Ed25519PrivateKey.generate())
    assert len(signing_mod._SIGNING_KEYS) <= signing_mod._SIGNING_KEYS_MAX


@settings(max_examples=300, deadline=None)
@given(value=json_values | st.dictionaries(st.text(max_size=5), json_values, max_size=5))
def test_canonical_json_is_json_dumps(value: Any) -> None:
    expected = json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    assert canonical_json(value) == expected.encode()


def test_canonical_json_errors_are_json_dumps_errors() -> None:
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(ValueError, match="Circular"):
        canonical_json(loop)
    with pytest.raises(TypeError):
        canonical_json({"x": object()})
    with pytest.raises(TypeError):
        canonical_json({1: "a", "b": 2})  # mixed keys cannot be sorted
    assert canonical_json("é") == json.dumps("é", ensure_ascii=False).encode()
    assert canonical_json(float("nan")) == b"NaN"


@settings(max_examples=300, deadline=None)
@given(
    when=st.datetimes(
        min_value=dt.datetime(1, 1, 2),
        max_value=dt.datetime(9999, 12, 30),
        timezones=st.sampled_from(
            [
                dt.timezone.utc,
                dt.timezone(dt.timedelta(hours=8)),
                dt.timezone(dt.timedelta(hours=-5, minutes=-30)),
            ]
        ),
    )
)
def test_created_at_text_is_format_utc(when: dt.datetime) -> None:
    from intercept_sdk._protocol.reports import _created_text
    from intercept_sdk._util import format_utc

    assert _created_text(when) == format_utc(when)


def test_generated_report_ids_are_uuid4() -> None:
    from intercept_sdk._protocol.reports import _new_report_id

    ids = {_new_report_id() for _ in range(2000)}
    assert len(ids) == 2000
    for rid in list(ids)[:200]:
        u = uuid.UUID(hex=rid)
        assert u.hex == rid and u.version == 4 and u.variant == uuid.RFC_4122


@settings(max_examples=500, deadline=None)
@given(
    data=st.one_of(
        st.builds(canonical_json, st.dictionaries(st.text(max_size=5), json_values)),
        st.binary(max_size=20).map(lambda b: b"{" + b),
        st.sampled_from(
            [
                b"{",
                b"{\x00",
                b'{\x00"\x00}\x00',
                b'{"a":1}',
                b'{"a":"\xff"}',
                b'{"a":"\xed\xa0\x80"}',
                b"\xef\xbb\xbf{}",
                b"[]",
                b"",
                b'{"a":1} x',
                b'{"a":NaN}',
            ]
        ),
    )
)
def test_payload_json_decodes_like_json_loads(data: bytes) -> None:
    from intercept_sdk._exceptions import FormatError

    try:
        expected: Any = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError):
        expected = FormatError
    if not isinstance(expected, dict):
        expected = FormatError
    try:
        got: Any = Envelope(REPORT_TYPE, data, ()).payload_json()
    except FormatError:
        got = FormatError
    assert got == expected or (got is not FormatError and json.dumps(got) == json.dumps(expected))


def test_report_ids_are_not_shared_with_a_forked_child() -> None:
    from intercept_sdk._protocol import reports as reports_mod

    reports_mod._new_report_id()  # the pool now holds ids made in this process
    remaining = set(reports_mod._ID_POOL)
    assert remaining
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            os.write(w, ",".join(reports_mod._new_report_id() for _ in range(3)).encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        child_ids = f.read().split(",")
    os.waitpid(pid, 0)
    assert len(child_ids) == 3
    assert not set(child_ids) & remaining
    assert reports_mod._new_report_id() in remaining  # the parent keeps its own pool


def test_created_at_text_is_cached_per_second_only() -> None:
    from intercept_sdk._protocol.reports import _created_text

    base = dt.datetime(2026, 3, 4, 5, 6, 7, 100, tzinfo=dt.timezone.utc)
    assert _created_text(base) == "2026-03-04T05:06:07Z"
    assert _created_text(base.replace(microsecond=999_999)) == "2026-03-04T05:06:07Z"
    assert _created_text(base + dt.timedelta(seconds=1)) == "2026-03-04T05:06:08Z"
    cst = dt.timezone(dt.timedelta(hours=8))
    assert _created_text(base.astimezone(cst)) == "2026-03-04T05:06:07Z"
    assert _created_text(base - dt.timedelta(microseconds=101)) == "2026-03-04T05:06:06Z"
    early = dt.datetime(999, 1, 1, tzinfo=dt.timezone.utc)
    assert _created_text(early) == _created_text(early) == format_utc_ref(early)


def format_utc_ref(when: dt.datetime) -> str:
    from intercept_sdk._util import format_utc

    return format_utc(when)


@settings(max_examples=50, deadline=None)
@given(seed=st.binary(min_size=32, max_size=32), message=st.binary(max_size=2000))
def test_signing_backends_make_the_same_signature(seed: bytes, message: bytes) -> None:
    """libsodium (when PyNaCl is installed) and cryptography sign identically (RFC 8032)."""

    private = Ed25519PrivateKey.from_private_bytes(seed)
    expected = private.sign(message)
    assert SigningKey(private).sign(message) == expected
    private.public_key().verify(SigningKey(private).sign(message), message)


def test_signing_falls_back_to_cryptography(monkeypatch: pytest.MonkeyPatch) -> None:
    from intercept_sdk._protocol import signing as _signing

    monkeypatch.setattr(_signing, "_nacl_sign", None)
    private = Ed25519PrivateKey.generate()
    key = SigningKey(private)
    assert key._sodium_secret is None
    assert key.sign(b"abc") == private.sign(b"abc")
    if _signing.SIGN_BACKEND == "libsodium":
        monkeypatch.undo()
        assert SigningKey(private)._sodium_secret is not None
