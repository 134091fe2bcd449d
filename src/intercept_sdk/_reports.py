"""Feedback reports (惩戒情况反馈): building, signing and verifying them, and subscriber keys.

Why reports exist: the joint-punishment policy requires every enforcing unit to feed back
what it did with the list (each interception, the outcome of a review, a lifted
restriction, a data error it found) within 30 days after each quarter, and lets the
person concerned object (复核). A report is a small JSON payload, signed by the
subscriber's own Ed25519 key inside the same envelope format as the list's metadata (see
``docs/protocol.md``, section *Reports*), so the platform can attribute it and nobody on
the way can alter it.

Guarantees:

* :func:`build_report` only returns payloads that :func:`validate_report` accepts: a
  known kind, the fields that kind needs, a fresh uuid4 ``report_id`` (the idempotency
  key: the outbox and the platform de-duplicate on it), ``created_at`` in UTC.
* A report never carries more personal data than the platform already holds: every string
  (and every long integer) in the payload, including the keys and values of ``details``,
  is scanned for something shaped like a plaintext resident ID number (18 or legacy 15
  digits with a plausible birth date) and refused with :class:`InvalidReport`. The entry
  is named by ``entry_id``/``case_no``, which the platform published itself.
* ``details`` must be plain JSON (objects with string keys, arrays, strings, finite
  numbers, booleans, null), at most 16 levels deep, and the whole payload at most
  :data:`MAX_PAYLOAD_BYTES`; nothing is converted silently.
* :func:`verify_report` trusts nothing before the signature of the subscriber named in
  the payload has verified: the payload is only parsed far enough to learn which key to
  check, then the signature over the exact received bytes is verified, and only then is
  the payload validated and returned.
"""

from __future__ import annotations

import datetime as _dt
import logging
import math
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from ._exceptions import ConfigurationError, FormatError, InvalidReport, SignatureError
from ._signing import (
    REPORT_TYPE,
    Envelope,
    SigningKey,
    canonical_json,
    load_private_key,
    load_x25519_private,
    sign_envelope,
    verify_single,
    write_private_key,
    write_public_key,
)
from ._util import format_utc, parse_utc, utcnow

if TYPE_CHECKING:  # pragma: no cover
    from ._outbox import Outbox

__all__ = [
    "CHINA_TZ",
    "MAX_ENVELOPE_BYTES",
    "MAX_PAYLOAD_BYTES",
    "REPORT_KEY_FILE",
    "REPORT_KINDS",
    "REPORT_PUB_FILE",
    "RESTRICTED_KEY_FILE",
    "RESTRICTED_PUB_FILE",
    "ReportKind",
    "SubscriberKeys",
    "build_report",
    "load_subscriber_key",
    "quarterly_window",
    "sign_report",
    "subscriber_keygen",
    "summarize",
    "validate_report",
    "verify_report",
]

_log = logging.getLogger("intercept_sdk.reports")

ReportKind = Literal[
    "interception", "review_outcome", "lift", "objection", "data_error", "quarterly_summary"
]
REPORT_KINDS: Final[tuple[ReportKind, ...]] = (
    "interception",
    "review_outcome",
    "lift",
    "objection",
    "data_error",
    "quarterly_summary",
)

#: Largest canonical payload :func:`build_report` produces / :func:`validate_report` accepts.
MAX_PAYLOAD_BYTES: Final = 64 * 1024
#: Largest signed envelope :func:`verify_report` (and the outbox) will look at.
MAX_ENVELOPE_BYTES: Final = 128 * 1024

REPORT_KEY_FILE: Final = "report.ed25519.pem"
REPORT_PUB_FILE: Final = "report.ed25519.pub.pem"
RESTRICTED_KEY_FILE: Final = "restricted.x25519.pem"
RESTRICTED_PUB_FILE: Final = "restricted.x25519.pub.pem"

_FIELDS: Final = (
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
)

#: Top-level fields each kind must set (non-null). ``details`` keys required per kind are
#: in :data:`_REQUIRED_DETAILS`.
_REQUIRED: Final[Mapping[str, tuple[str, ...]]] = {
    "interception": ("measure", "entry_id", "case_no", "list_version", "outcome"),
    "review_outcome": ("measure", "entry_id", "outcome"),
    "lift": ("measure", "entry_id"),
    "objection": ("entry_id",),
    "data_error": ("entry_id",),
    "quarterly_summary": (),
}
_REQUIRED_DETAILS: Final[Mapping[str, tuple[str, ...]]] = {
    "objection": ("grounds",),
    "data_error": ("description",),
    "quarterly_summary": ("year", "quarter"),
}

# Subscriber ids also name a directory on the platform's site (restricted/<subscriber>/),
# so they are path-safe by construction.
_SUBSCRIBER_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_ENTRY_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")
_OUTCOME_RE = re.compile(r"^[a-z][a-z0-9_.-]{0,63}$")
_REPORT_ID_RE = re.compile(r"^[0-9a-f]{32}$")
_MAX_DEPTH = 16

# Something shaped like a resident ID number: area code, a plausible birth date, sequence
# and check character (18), or the legacy 15-digit form. The checksum is deliberately not
# required: a mistyped ID number is still somebody's personal data.
_DATE8 = r"(?:18|19|20)\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])"
_DATE6 = r"\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])"
_ID_RE = re.compile(
    rf"(?<!\d)[1-9]\d{{5}}(?:{_DATE8}\d{{3}}[0-9Xx]|{_DATE6}\d{{3}})(?![0-9])",
)
_FULLWIDTH = {cp: cp - 0xFEE0 for cp in range(0xFF01, 0xFF5F)}
_SEPARATORS = re.compile(r"[\s\-\u2010-\u2014\u2212\u3000]")


def _looks_like_id_number(text: str) -> bool:
    """True if ``text`` contains something shaped like a plaintext resident ID number.

    Full-width digits are folded, and the text is also checked with spaces and hyphens
    removed, since clerks paste numbers as ``110101 19900307 1234``.
    """
    folded = text.translate(_FULLWIDTH)
    if _ID_RE.search(folded):
        return True
    squeezed = _SEPARATORS.sub("", folded)
    return squeezed != folded and _ID_RE.search(squeezed) is not None


def _shown(value: object, limit: int = 80) -> str:
    """``repr`` for an error message, unless it could carry an ID number (never echoed)."""
    text = str(value)
    if _looks_like_id_number(text):
        return "<value withheld: it looks like an ID number>"
    return repr(text[:limit])


def _id_reason(where: str) -> str:
    return (
        f"{where} contains what looks like a plaintext resident ID number; a report never "
        "carries more personal data than the platform already holds (name the entry by "
        "entry_id/case_no, or use the masked form 1101**********1234)"
    )


def _plain_json(value: object, where: str, depth: int, reasons: list[str]) -> Any:
    """A plain-JSON copy of ``value``; problems are appended to ``reasons``."""
    if depth > _MAX_DEPTH:
        reasons.append(f"{where} is nested deeper than {_MAX_DEPTH} levels")
        return None
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        if _looks_like_id_number(value):
            reasons.append(_id_reason(where))
        return value
    if isinstance(value, int):
        if 15 <= len(str(abs(value))) <= 18 and _looks_like_id_number(str(abs(value))):
            reasons.append(_id_reason(where))
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            reasons.append(f"{where} is {value!r}, which JSON cannot carry")
        return float(value)
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for k, v in value.items():
            if not isinstance(k, str):
                reasons.append(f"{where} has a key of type {type(k).__name__}; keys must be str")
                continue
            child = f"{where}.{k}"
            if _looks_like_id_number(k):
                reasons.append(_id_reason(f"a key of {where}"))
                child = f"{where}.<withheld key>"
            out[k] = _plain_json(v, child, depth + 1, reasons)
        return out
    if isinstance(value, (list, tuple)):
        return [_plain_json(v, f"{where}[{i}]", depth + 1, reasons) for i, v in enumerate(value)]
    reasons.append(
        f"{where} is of type {type(value).__name__}, which is not JSON "
        "(convert it to a string or number first)"
    )
    return None


def _measure_codes() -> frozenset[str]:
    # Imported on first use: the catalog pulls in pydantic, which processes that only
    # queue or send reports (the outbox, a sender child) do not otherwise need.
    from ._catalog import measure_codes

    return measure_codes()


def _check_str(
    payload: Mapping[str, Any],
    field: str,
    pattern: re.Pattern[str] | None,
    reasons: list[str],
    *,
    max_len: int = 64,
) -> None:
    value = payload.get(field)
    if value is None:
        return
    if not isinstance(value, str):
        reasons.append(f"{field} must be a string, got {type(value).__name__}")
    elif _looks_like_id_number(value):
        reasons.append(_id_reason(field))
    elif pattern is not None and not pattern.match(value):
        reasons.append(f"{field} {_shown(value)} does not match {pattern.pattern}")
    elif not 1 <= len(value) <= max_len:
        reasons.append(f"{field} must be 1..{max_len} characters")


def _validate(payload: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Check a report payload; return a plain-JSON copy and the list of problems."""
    reasons: list[str] = []
    missing = [f for f in _FIELDS if f not in payload]
    extra = sorted(str(k) for k in payload if k not in _FIELDS)
    if missing:
        reasons.append("missing fields: " + ", ".join(missing))
    if extra:
        reasons.append("unknown fields: " + ", ".join(extra))
    if payload.get("type") != "report":
        reasons.append('type must be "report"')
    kind = payload.get("kind")
    if kind not in REPORT_KINDS:
        reasons.append(f"kind must be one of {', '.join(REPORT_KINDS)}, got {_shown(kind, 40)}")
    rid = payload.get("report_id")
    if not isinstance(rid, str) or not _REPORT_ID_RE.match(rid):
        reasons.append("report_id must be 32 lower-case hex characters (uuid4().hex)")
    sid = payload.get("subscriber_id")
    if not isinstance(sid, str) or not _SUBSCRIBER_RE.match(sid):
        reasons.append(f"subscriber_id must match {_SUBSCRIBER_RE.pattern}")
    created = payload.get("created_at")
    try:
        if not isinstance(created, str):
            raise ValueError
        parse_utc(created)
    except ValueError:
        reasons.append("created_at must be an ISO 8601 UTC time such as 2026-01-31T08:00:00Z")
    _check_str(payload, "entry_id", _ENTRY_ID_RE, reasons)
    _check_str(payload, "case_no", None, reasons)
    _check_str(payload, "outcome", _OUTCOME_RE, reasons)
    measure = payload.get("measure")
    if measure is not None:
        if not isinstance(measure, str):
            reasons.append(f"measure must be a string, got {type(measure).__name__}")
        elif measure not in _measure_codes():
            reasons.append(f"measure {_shown(measure)} is not a code of the measure catalog")
    version = payload.get("list_version")
    if version is not None and (
        not isinstance(version, int) or isinstance(version, bool) or version < 0
    ):
        reasons.append("list_version must be a non-negative integer")
    if isinstance(kind, str) and kind in _REQUIRED:
        for field in _REQUIRED[kind]:
            if payload.get(field) is None:
                reasons.append(f"a {kind} report needs {field}")
    details = payload.get("details")
    plain_details: Any = {}
    if not isinstance(details, Mapping):
        reasons.append(f"details must be a JSON object, got {type(details).__name__}")
    else:
        plain_details = _plain_json(details, "details", 1, reasons)
        if isinstance(kind, str):
            for key in _REQUIRED_DETAILS.get(kind, ()):
                value = details.get(key)
                if value is None or (isinstance(value, str) and not value.strip()):
                    reasons.append(f"a {kind} report needs details[{key!r}]")
        if kind == "quarterly_summary":
            year, quarter = details.get("year"), details.get("quarter")
            if not isinstance(year, int) or isinstance(year, bool) or not 2000 <= year <= 9999:
                reasons.append("details['year'] must be a year such as 2026")
            if quarter not in (1, 2, 3, 4) or isinstance(quarter, bool):
                reasons.append("details['quarter'] must be 1, 2, 3 or 4")
    out = {f: payload.get(f) for f in _FIELDS}
    out["details"] = plain_details
    if not reasons:
        size = len(canonical_json(out))
        if size > MAX_PAYLOAD_BYTES:
            reasons.append(f"payload is {size} bytes, more than {MAX_PAYLOAD_BYTES}")
    return out, reasons


def validate_report(payload: Mapping[str, Any]) -> dict[str, Any]:
    """Check a report payload against the protocol; return a plain-JSON copy of it.

    Raises :class:`InvalidReport` naming every problem found (never echoing a value that
    looks like an ID number). The platform uses this for received reports, after the
    signature has verified.
    """
    if not isinstance(payload, Mapping):
        raise InvalidReport(f"a report payload must be a JSON object, got {type(payload).__name__}")
    out, reasons = _validate(payload)
    if reasons:
        raise InvalidReport("invalid report: " + "; ".join(reasons))
    return out


def build_report(
    kind: str,
    *,
    subscriber_id: str,
    measure: str | None = None,
    entry_id: str | None = None,
    case_no: str | None = None,
    list_version: int | None = None,
    outcome: str | None = None,
    details: Mapping[str, Any] | None = None,
    now: _dt.datetime | None = None,
    report_id: str | None = None,
) -> dict[str, Any]:
    """Build a report payload (``docs/protocol.md``, section *Reports*).

    Every field of the protocol is present in the result, ``null`` where it does not
    apply. Which fields each kind needs:

    ==================  ====================================================================
    interception        measure, entry_id, case_no, list_version, outcome
    review_outcome      measure, entry_id, outcome
    lift                measure, entry_id
    objection           entry_id, details["grounds"] (the person's stated grounds, 复核理由)
    data_error          entry_id, details["description"]
    quarterly_summary   details["year"], details["quarter"] (see :func:`summarize`)
    ==================  ====================================================================

    ``now`` (an aware :class:`datetime.datetime`, default: the current time) becomes
    ``created_at``; ``report_id`` defaults to a fresh ``uuid4().hex`` and is the
    idempotency key of the report everywhere downstream, so pass the same id again only
    to mean the same report. Raises :class:`InvalidReport` with every problem found.
    """
    if now is None:
        when = utcnow()
    elif isinstance(now, _dt.datetime) and now.tzinfo is not None:
        when = now
    else:
        raise InvalidReport("now must be a timezone-aware datetime")
    if report_id is None:
        report_id = uuid.uuid4().hex
    payload: dict[str, Any] = {
        "type": "report",
        "report_id": report_id,
        "subscriber_id": subscriber_id,
        "kind": kind,
        "created_at": format_utc(when),
        "measure": measure,
        "entry_id": entry_id,
        "case_no": case_no,
        "list_version": list_version,
        "outcome": outcome,
        "details": {} if details is None else details,
    }
    return validate_report(payload)


def sign_report(payload: Mapping[str, Any], key: Ed25519PrivateKey) -> bytes:
    """Validate ``payload`` and return the signed envelope bytes (type ``REPORT_TYPE``).

    The envelope's payload is ``canonical_json(payload)``, so the same report signed twice
    has the same payload bytes (Ed25519 signatures are deterministic too).
    """
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigurationError("reports are signed with the subscriber's Ed25519 private key")
    plain = validate_report(payload)
    return sign_envelope(REPORT_TYPE, canonical_json(plain), [SigningKey(key)]).to_bytes()


def verify_report(
    envelope_bytes: bytes, subscriber_keys: Mapping[str, Ed25519PublicKey]
) -> dict[str, Any]:
    """Verify a report envelope and return its payload.

    Order, so that nothing unauthenticated is acted on: (1) size cap and envelope shape;
    (2) the payload is parsed only to read ``subscriber_id`` (malformed JSON, deep nesting
    and non-objects are refused here, before any other use); (3) the key registered for that
    subscriber must have signed ``PAE(REPORT_TYPE, payload)`` over the exact received
    bytes; (4) only then is the payload validated with :func:`validate_report` and
    returned.

    Raises :class:`SignatureError` for an unknown subscriber or a missing/bad signature,
    :class:`InvalidReport` for anything malformed.
    """
    if not isinstance(envelope_bytes, (bytes, bytearray)):
        raise InvalidReport("a report envelope must be bytes")
    if len(envelope_bytes) > MAX_ENVELOPE_BYTES:
        raise InvalidReport(
            f"report envelope is {len(envelope_bytes)} bytes, more than {MAX_ENVELOPE_BYTES}"
        )
    try:
        envelope = Envelope.from_bytes(bytes(envelope_bytes))
    except FormatError as exc:
        raise InvalidReport(f"malformed report envelope: {exc}") from None
    if envelope.payload_type != REPORT_TYPE:
        raise InvalidReport(f"envelope type must be {REPORT_TYPE}")
    try:
        unverified = envelope.payload_json()
    except (FormatError, RecursionError):
        raise InvalidReport("report payload is not a JSON object") from None
    sid = unverified.get("subscriber_id")
    if not isinstance(sid, str) or not _SUBSCRIBER_RE.match(sid):
        raise InvalidReport(f"subscriber_id must match {_SUBSCRIBER_RE.pattern}")
    key = subscriber_keys.get(sid)
    if key is None:
        raise SignatureError(f"unknown subscriber {_shown(sid)}: no report key registered")
    verify_single(key, envelope)
    # Authenticated from here on.
    return validate_report(unverified)


@dataclass(frozen=True)
class SubscriberKeys:
    """A subscriber's private keys.

    ``report`` signs feedback reports; ``restricted`` (optional) opens the subscriber's
    box of restricted entries. Only the public halves ever leave the unit.
    """

    report: Ed25519PrivateKey
    restricted: X25519PrivateKey | None = None

    @property
    def report_public(self) -> Ed25519PublicKey:
        return self.report.public_key()

    @property
    def keyid(self) -> str:
        """Key id of the report key, as it appears in the envelope's signatures."""
        return SigningKey(self.report).keyid


def subscriber_keygen(out_dir: Path, *, overwrite: bool = False) -> tuple[Path, Path]:
    """Create a subscriber's key pairs in ``out_dir`` and return the two public key files.

    Writes ``report.ed25519.pem`` (mode 0600) + ``report.ed25519.pub.pem`` and
    ``restricted.x25519.pem`` (0600) + ``restricted.x25519.pub.pem``, each atomically. The
    returned ``(report public, restricted public)`` paths are what the unit registers with
    the platform. Existing private keys are never replaced unless ``overwrite=True``
    (:class:`ConfigurationError`): losing a report key means every queued report becomes
    unverifiable.
    """
    out = Path(out_dir)
    targets = [out / REPORT_KEY_FILE, out / RESTRICTED_KEY_FILE]
    if not overwrite:
        existing = [p.name for p in targets if p.exists()]
        if existing:
            raise ConfigurationError(
                f"{out} already holds {', '.join(existing)}; refusing to replace a private key "
                "(pass overwrite=True to rotate)"
            )
    if not out.exists():
        out.mkdir(mode=0o700, parents=True)
    report = Ed25519PrivateKey.generate()
    restricted = X25519PrivateKey.generate()
    write_private_key(out / REPORT_KEY_FILE, report)
    write_public_key(out / REPORT_PUB_FILE, report.public_key())
    write_private_key(out / RESTRICTED_KEY_FILE, restricted)
    write_public_key(out / RESTRICTED_PUB_FILE, restricted.public_key())
    return out / REPORT_PUB_FILE, out / RESTRICTED_PUB_FILE


def _warn_if_readable(path: Path) -> None:
    try:
        mode = path.stat().st_mode
    except OSError:
        return
    if mode & 0o077:
        _log.warning(
            "private key %s is readable by other users (mode %o); chmod 600 it", path, mode & 0o777
        )


def load_subscriber_key(path_or_dir: Path | str) -> SubscriberKeys:
    """Load a subscriber's private keys from a key directory or a report key file.

    A directory must hold ``report.ed25519.pem``; ``restricted.x25519.pem`` is loaded when
    present. A file is the Ed25519 report key; a ``restricted.x25519.pem`` next to it is
    loaded when present. Raises :class:`ConfigurationError` for a missing or wrong key; a
    private key readable by group/others is loaded but logged as a warning.
    """
    path = Path(path_or_dir)
    if path.is_dir():
        report_path = path / REPORT_KEY_FILE
        if not report_path.is_file():
            raise ConfigurationError(f"{path} holds no {REPORT_KEY_FILE} (run subscriber keygen)")
    elif path.is_file():
        report_path = path
    else:
        raise ConfigurationError(f"subscriber key {path} does not exist")
    restricted_path = report_path.parent / RESTRICTED_KEY_FILE
    _warn_if_readable(report_path)
    report = load_private_key(report_path)
    restricted = None
    if restricted_path.is_file() and restricted_path != report_path:
        _warn_if_readable(restricted_path)
        restricted = load_x25519_private(restricted_path)
    return SubscriberKeys(report=report, restricted=restricted)


#: Quarters are calendar quarters in China Standard Time (UTC+8, no daylight saving).
CHINA_TZ: Final = _dt.timezone(_dt.timedelta(hours=8), "CST")
#: Feedback for a quarter is due within this many days after the quarter ends.
SUMMARY_DUE_DAYS: Final = 30


def quarterly_window(year: int, quarter: int) -> tuple[_dt.datetime, _dt.datetime, _dt.date]:
    """``(start, end, due_date)`` of a calendar quarter in China Standard Time.

    ``start`` is inclusive and ``end`` exclusive (both aware datetimes, UTC+8), so windows
    of consecutive quarters tile time without gaps or overlap. ``due_date`` is the last
    day (inclusive) on which the quarter's feedback is on time: the quarter's last day
    plus 30 days (Q1 -> 30 April, Q4 -> 30 January of the next year).
    """
    if isinstance(year, bool) or not isinstance(year, int) or not 2000 <= year <= 9998:
        raise InvalidReport("year must be an integer such as 2026")
    if isinstance(quarter, bool) or quarter not in (1, 2, 3, 4):
        raise InvalidReport("quarter must be 1, 2, 3 or 4")
    start = _dt.datetime(year, 3 * quarter - 2, 1, tzinfo=CHINA_TZ)
    end = (
        _dt.datetime(year + 1, 1, 1, tzinfo=CHINA_TZ)
        if quarter == 4
        else _dt.datetime(year, 3 * quarter + 1, 1, tzinfo=CHINA_TZ)
    )
    last_day = (end - _dt.timedelta(days=1)).date()
    return start, end, last_day + _dt.timedelta(days=SUMMARY_DUE_DAYS)


_SUMMARY_COUNTS: Final = (
    ("interception", "interceptions"),
    ("review_outcome", "review_outcomes"),
    ("lift", "lifts"),
    ("objection", "objections"),
    ("data_error", "data_errors"),
)


def summarize(outbox: Outbox, year: int, quarter: int, checks_performed: int) -> dict[str, Any]:
    """The quarterly feedback summary (惩戒情况) of one unit, from the outbox's journal.

    Counts every report *created* in the quarter (by ``created_at``), whether it is still
    queued, already sent or dead-lettered, so the summary does not depend on connectivity;
    ``quarterly_summary`` reports themselves are not counted. ``checks_performed`` (how
    many list checks the unit ran) comes from the caller. The result is plain JSON and is
    meant to be sent as the ``details`` of a ``quarterly_summary`` report::

        {"year": 2026, "quarter": 1, "period_start": "2025-12-31T16:00:00Z",
         "period_end": "2026-03-31T16:00:00Z", "due_date": "2026-04-30",
         "checks_performed": 1200, "interceptions": 7, "review_outcomes": 2, "lifts": 1,
         "objections": 1, "data_errors": 0,
         "by_measure": {"consumption.star_hotel": {"interception": 7, "lift": 1},
                        "unspecified": {"objection": 1}}}
    """
    if isinstance(checks_performed, bool) or not isinstance(checks_performed, int):
        raise InvalidReport("checks_performed must be a non-negative integer")
    if checks_performed < 0:
        raise InvalidReport("checks_performed must be a non-negative integer")
    start, end, due = quarterly_window(year, quarter)
    counts = outbox.stats_by(start, end)
    by_kind: dict[str, int] = {}
    by_measure: dict[str, dict[str, int]] = {}
    for (measure, kind), n in sorted(counts.items(), key=lambda kv: (kv[0][0] or "", kv[0][1])):
        if kind == "quarterly_summary":
            continue
        by_kind[kind] = by_kind.get(kind, 0) + n
        slot = by_measure.setdefault(measure or "unspecified", {})
        slot[kind] = slot.get(kind, 0) + n
    summary: dict[str, Any] = {
        "year": year,
        "quarter": quarter,
        "period_start": format_utc(start),
        "period_end": format_utc(end),
        "due_date": due.isoformat(),
        "checks_performed": checks_performed,
    }
    for kind, label in _SUMMARY_COUNTS:
        summary[label] = by_kind.get(kind, 0)
    summary["by_measure"] = by_measure
    return summary
