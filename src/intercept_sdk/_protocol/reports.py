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
* A report never carries more personal data than the platform already holds: every
  free-text field (``entry_id``, ``case_no``, ``outcome``) and every key and value of
  ``details`` at any depth (strings, and integers of 15-18 digits) is scanned for something
  shaped like a plaintext resident ID number (18 or legacy 15 digits with a plausible
  birth date) and refused with :class:`InvalidReport`. The entry is named by
  ``entry_id``/``case_no``, which the platform published itself. (``report_id`` is random
  hex, ``subscriber_id`` a registered name, ``measure`` a catalog code.)
* ``details`` must be plain JSON (objects with string keys, arrays, strings, finite
  numbers, booleans, null), at most 16 levels deep, and the whole payload at most
  :data:`MAX_PAYLOAD_BYTES`; nothing is converted silently. The top level holds exactly
  the protocol's fields, and ``created_at`` may be at most :data:`MAX_CREATED_AHEAD`
  ahead of the receiver's clock (:func:`validate_report`'s ``now``).
* :func:`verify_report` trusts nothing before the signature of the subscriber named in
  the payload has verified: the payload is only parsed far enough to learn which key to
  check, then the signature over the exact received bytes is verified, and only then is
  the payload validated and returned.
"""

from __future__ import annotations

import datetime as _dt
import logging
import math
import operator
import os
import re
from collections.abc import Callable, Mapping
from typing import Any, Final, Literal, NamedTuple

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .._exceptions import ConfigurationError, FormatError, InvalidReport, SignatureError
from .._util import format_utc, parse_utc, utcnow
from .names import (
    ENTRY_ID_PATTERN,
    ENTRY_ID_RE,
    SUBSCRIBER_ID_PATTERN,
    is_report_id,
    is_subscriber_id,
)
from .signing import (
    REPORT_TYPE,
    Envelope,
    SigningKey,
    canonical_json,
    sign_single,
    verify_single,
)

__all__ = [
    "CHINA_TZ",
    "MAX_CREATED_AHEAD",
    "MAX_ENVELOPE_BYTES",
    "MAX_PAYLOAD_BYTES",
    "REPORT_KEY_FILE",
    "REPORT_KINDS",
    "REPORT_PUB_FILE",
    "RESTRICTED_KEY_FILE",
    "RESTRICTED_PUB_FILE",
    "ReportKind",
    "build_report",
    "quarterly_window",
    "sign_report",
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

_FIELD_SET: Final = frozenset(_FIELDS)

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

_OUTCOME_PATTERN: Final = r"[a-z][a-z0-9_.-]{0,63}"
_OUTCOME_RE: Final = re.compile(_OUTCOME_PATTERN)
_MAX_DEPTH = 16
#: How far ahead of the receiver's clock ``created_at`` may be: clocks of enforcing units
#: drift, but a report dated more than a day ahead is a broken clock or a forgery (it
#: would also sort after reports that are really newer).
MAX_CREATED_AHEAD: Final = _dt.timedelta(days=1)

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


# A necessary condition for either search below, checked first because nearly every string
# fails it: each match of _ID_RE is at least 15 consecutive digits (``\d``: any Unicode
# decimal digit) of the folded text, or of the text with separators removed. Folding maps
# full-width digits (themselves ``\d``) to ASCII digits and U+FF0D to "-", and changes no
# other character into a digit or a separator, so the original text must hold 15 digits
# with at most separators (or U+FF0D) between them. The classes are disjoint: no
# backtracking blow-up.
_ID_CANDIDATE = re.compile(r"\d(?:[\s\-\u2010-\u2014\u2212\u3000\uff0d]*\d){14}")


def _looks_like_id_number(text: str) -> bool:
    """True if ``text`` contains something shaped like a plaintext resident ID number.

    Full-width digits are folded, and the text is also checked with spaces and hyphens
    removed, since clerks paste numbers as ``110101 19900307 1234``.
    """
    if len(text) < 15 or _ID_CANDIDATE.search(text) is None:
        return False
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
    if type(value) is str or isinstance(value, str):  # exact type first: the usual case
        if _looks_like_id_number(value):
            reasons.append(_id_reason(where))
        return value
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        if 15 <= len(str(abs(value))) <= 18 and _looks_like_id_number(str(abs(value))):
            reasons.append(_id_reason(where))
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            reasons.append(f"{where} is {value!r}, which JSON cannot carry")
        return float(value)
    if type(value) is dict or isinstance(value, Mapping):
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


_measure_codes_fn: Callable[[], frozenset[str]] | None = None


def _measure_codes() -> frozenset[str]:
    # Imported on first use: the catalog pulls in pydantic, which processes that only
    # queue or send reports (the outbox, a sender child) do not otherwise need.
    global _measure_codes_fn
    if _measure_codes_fn is None:
        from .catalog import measure_codes

        _measure_codes_fn = measure_codes
    return _measure_codes_fn()


def _check_str(
    payload: Mapping[str, Any],
    field: str,
    pattern: tuple[re.Pattern[str], str] | None,
    reasons: list[str],
    *,
    max_len: int = 64,
) -> None:
    """A free-text field: a string, no ID number, of ``pattern`` (compiled, shown) if given."""
    value = payload.get(field)
    if value is None:
        return
    if not isinstance(value, str):
        reasons.append(f"{field} must be a string, got {type(value).__name__}")
    elif _looks_like_id_number(value):
        reasons.append(_id_reason(field))
    elif pattern is not None and not pattern[0].fullmatch(value):
        reasons.append(f"{field} {_shown(value)} does not match {pattern[1]}")
    elif not 1 <= len(value) <= max_len:
        reasons.append(f"{field} must be 1..{max_len} characters")


def _check_fields(payload: Mapping[str, Any], reasons: list[str]) -> None:
    """Exactly the protocol's top-level fields: none missing, none unknown."""
    if payload.keys() == _FIELD_SET:
        return
    missing = [f for f in _FIELDS if f not in payload]
    extra = sorted(str(k) for k in payload if k not in _FIELDS)
    if missing:
        reasons.append("missing fields: " + ", ".join(missing))
    if extra:
        reasons.append("unknown fields: " + ", ".join(extra))


def _check_identity(payload: Mapping[str, Any], reasons: list[str]) -> None:
    """``type``, ``kind``, ``report_id`` and ``subscriber_id``: what the report is, by whom."""
    if payload.get("type") != "report":
        reasons.append('type must be "report"')
    kind = payload.get("kind")
    if kind not in REPORT_KINDS:
        reasons.append(f"kind must be one of {', '.join(REPORT_KINDS)}, got {_shown(kind, 40)}")
    if not is_report_id(payload.get("report_id")):
        reasons.append("report_id must be 32 lower-case hex characters (uuid4().hex)")
    if not is_subscriber_id(payload.get("subscriber_id")):
        reasons.append(f"subscriber_id must match {SUBSCRIBER_ID_PATTERN}")


def _check_created(
    created: object, now: _dt.datetime | None, reasons: list[str]
) -> _dt.datetime | None:
    """``created_at`` parsed; not more than :data:`MAX_CREATED_AHEAD` after ``now`` (if given)."""
    try:
        if not isinstance(created, str):
            raise ValueError
        when = parse_utc(created)
    except ValueError:
        reasons.append("created_at must be an ISO 8601 UTC time such as 2026-01-31T08:00:00Z")
        return None
    if now is not None and when > now + MAX_CREATED_AHEAD:
        reasons.append(
            f"created_at {created} is more than {MAX_CREATED_AHEAD.days} day ahead of the "
            f"receiver's clock ({format_utc(now)})"
        )
    return when


def _check_references(payload: Mapping[str, Any], reasons: list[str]) -> None:
    """What the report is about: entry, case, outcome, measure, list version."""
    _check_str(payload, "entry_id", (ENTRY_ID_RE, ENTRY_ID_PATTERN), reasons)
    _check_str(payload, "case_no", None, reasons)
    _check_str(payload, "outcome", (_OUTCOME_RE, _OUTCOME_PATTERN), reasons)
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


def _check_required(kind: object, payload: Mapping[str, Any], reasons: list[str]) -> None:
    """The top-level fields ``kind`` needs (see :data:`_REQUIRED`)."""
    if isinstance(kind, str):
        for field in _REQUIRED.get(kind, ()):
            if payload.get(field) is None:
                reasons.append(f"a {kind} report needs {field}")


def _check_details(kind: object, details: object, reasons: list[str]) -> Any:
    """A plain-JSON copy of ``details`` (see :func:`_plain_json`), and its per-kind keys."""
    if type(details) is not dict and not isinstance(details, Mapping):
        reasons.append(f"details must be a JSON object, got {type(details).__name__}")
        return {}
    plain = _plain_json(details, "details", 1, reasons)
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
    return plain


def _validate(
    payload: Mapping[str, Any], now: _dt.datetime | None
) -> tuple[dict[str, Any], list[str], bytes, _dt.datetime | None]:
    """Check a report payload.

    Returns a plain-JSON copy, the list of problems, and (only meaningful without
    problems) the copy's canonical JSON and ``created_at`` parsed. ``now`` is the
    receiver's clock for the ``created_at`` bound (None: not checked, as when the
    payload's own ``created_at`` was just made from the builder's clock).
    """
    reasons: list[str] = []
    _check_fields(payload, reasons)
    _check_identity(payload, reasons)
    when = _check_created(payload.get("created_at"), now, reasons)
    _check_references(payload, reasons)
    kind = payload.get("kind")
    _check_required(kind, payload, reasons)
    plain_details = _check_details(kind, payload.get("details"), reasons)
    out = {f: payload.get(f) for f in _FIELDS}
    out["details"] = plain_details
    data = b""
    if not reasons:
        data = canonical_json(out)
        if len(data) > MAX_PAYLOAD_BYTES:
            reasons.append(f"payload is {len(data)} bytes, more than {MAX_PAYLOAD_BYTES}")
    return out, reasons, data, when


def validate_report(
    payload: Mapping[str, Any], *, now: _dt.datetime | None = None
) -> dict[str, Any]:
    """Check a report payload against the protocol; return a plain-JSON copy of it.

    This is the one schema of a report, for both sides: exactly the protocol's fields
    (an unknown or missing one is refused), the shapes of every name, only finite
    numbers (no NaN or Infinity anywhere), no string anywhere in the payload's free text
    or in ``details`` (keys and values, at any depth) shaped like a resident ID number,
    and ``created_at`` at most :data:`MAX_CREATED_AHEAD` after ``now`` (an aware
    datetime: the receiver's clock; default the current time).

    Raises :class:`InvalidReport` naming every problem found (never echoing a value that
    looks like an ID number). The platform uses this for received reports, after the
    signature has verified.
    """
    if not isinstance(payload, Mapping):
        raise InvalidReport(f"a report payload must be a JSON object, got {type(payload).__name__}")
    if now is None:
        now = utcnow()
    elif not isinstance(now, _dt.datetime) or now.tzinfo is None:
        raise InvalidReport("now must be a timezone-aware datetime")
    out, reasons, _, _ = _validate(payload, now)
    if reasons:
        raise InvalidReport("invalid report: " + "; ".join(reasons))
    return out


class _ReportMeta(NamedTuple):
    """What the outbox records of a validated payload."""

    report_id: str
    kind: str
    measure: str | None
    created_text: str
    created: _dt.datetime


_SCALARS: Final = frozenset({str, int, float, bool, type(None)})
_is = operator.is_


class _ValidatedReport(dict[str, Any]):
    """A payload :func:`build_report` validated, with the exact canonical bytes it validated.

    :func:`sign_report` signs those bytes without validating again, but only while the
    payload is unchanged; a payload changed after it was built (a value anywhere, nested
    ``details`` included) is validated again in full. So what gets signed is always bytes
    that passed validation, and they are the payload's canonical JSON.

    Unchanged is checked cheaply when the build left plain scalars at the top level: the
    same keys in the same order, the very same value objects (immutable scalars, and the
    same ``details`` dict), and ``details`` holding the same entries (flat: the same key
    and value objects; nested: the same canonical JSON). Otherwise the whole payload's
    canonical JSON is compared.
    """

    __slots__ = ("_canonical", "_details_keys", "_details_values", "_meta", "_values")
    _canonical: bytes
    _meta: _ReportMeta
    # The top-level values at build time (None: compare canonical JSON instead), and of
    # details its keys and, when all are scalars, its values (None: compare its JSON).
    _values: tuple[Any, ...] | None
    _details_keys: tuple[str, ...]
    _details_values: tuple[Any, ...] | bytes

    def _freeze(self, canonical: bytes, meta: _ReportMeta) -> None:
        self._canonical = canonical
        self._meta = meta
        values = tuple(self.values())  # in _FIELDS order: build_report made it so
        details = values[-1]
        plain = type(details) is dict and _SCALARS.issuperset(map(type, values[:-1]))
        self._values = values if plain else None
        self._details_keys = tuple(details) if plain else ()
        inner = tuple(details.values()) if plain else ()
        self._details_values = (
            inner if _SCALARS.issuperset(map(type, inner)) else canonical_json(details)
        )

    def _unchanged(self) -> bool:
        """Whether the payload still serialises to ``_canonical`` (see the class doc)."""
        values = self._values
        if (
            values is not None
            and len(self) == len(_FIELDS)
            and tuple(self) == _FIELDS
            and all(map(_is, self.values(), values))
        ):
            details = values[-1]  # the very dict that was validated ("details" is last)
            expected = self._details_values
            if tuple(details) != self._details_keys:
                return False
            if isinstance(expected, bytes):
                return canonical_json(details) == expected
            return all(map(_is, details.values(), expected))
        try:
            return canonical_json(self) == self._canonical
        except (TypeError, ValueError, RecursionError):
            return False  # changed into something that is not JSON


class _SignedReport(bytes):
    """Envelope bytes made by :func:`sign_report` in this process.

    Carries the metadata of the payload it signed, which had passed validation, so that
    :meth:`Outbox.enqueue <intercept_sdk._client.outbox.Outbox.enqueue>` can check its arguments
    against them instead of parsing the envelope again. Anything else (plain ``bytes``, for
    instance an envelope read back from disk or received from elsewhere) is parsed and
    checked in full by the outbox. Immutable: bytes, and attributes that cannot be set.
    """

    _meta: _ReportMeta

    def __new__(cls, data: bytes, meta: _ReportMeta) -> _SignedReport:
        self = super().__new__(cls, data)
        object.__setattr__(self, "_meta", meta)
        return self

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("signed report envelopes are immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError("signed report envelopes are immutable")

    def __reduce__(self) -> tuple[Any, ...]:
        # A copy that leaves this process is plain bytes (checked in full when enqueued).
        return (bytes, (bytes(self),))

    def _check_metadata(
        self, report_id: str, kind: str, measure: str | None, created_at: str | _dt.datetime
    ) -> str:
        """``created_at`` as stored, if the arguments agree with the signed payload.

        Raises :class:`InvalidReport` naming what disagrees, like the outbox's full check.
        """
        rid, signed_kind, signed_measure, created_text, created_dt = self._meta
        _check_kind_and_id(kind, report_id)
        if created_at == created_text or (
            isinstance(created_at, _dt.datetime)
            and created_at.tzinfo is not None
            and created_at == created_dt
        ):
            created = created_text
        else:
            created = _utc_text_of(created_at)
        _check_agreement(
            (report_id, kind, measure, created), (rid, signed_kind, signed_measure, created_text)
        )
        return created


def _check_kind_and_id(kind: object, report_id: object) -> None:
    """The enqueue arguments' own checks (a known kind, a well-formed report_id)."""
    if kind not in REPORT_KINDS:
        raise InvalidReport(f"unknown report kind {_shown(kind, 40)}")
    if not is_report_id(report_id):
        raise InvalidReport("report_id must be 32 lower-case hex characters")


_AGREED: Final = ("report_id", "kind", "measure", "created_at")


def _check_agreement(given: tuple[object, ...], signed: tuple[object, ...]) -> None:
    """:class:`InvalidReport` naming each of ``report_id, kind, measure, created_at``
    where the enqueue arguments (``given``) differ from the signed payload's."""
    if given != signed:
        mismatched = [name for name, g, a in zip(_AGREED, given, signed, strict=True) if g != a]
        raise InvalidReport(
            "enqueue() arguments disagree with the signed payload: " + ", ".join(mismatched)
        )


def _utc_text_of(value: object) -> str:
    """``YYYY-MM-DDTHH:MM:SSZ`` of an aware datetime or ISO 8601 text; else InvalidReport."""
    try:
        when = parse_utc(value) if isinstance(value, str) else value
    except ValueError:
        raise InvalidReport(f"created_at {_shown(value)} is not an ISO 8601 UTC time") from None
    if not isinstance(when, _dt.datetime) or when.tzinfo is None:
        raise InvalidReport("created_at must be a timezone-aware datetime or ISO 8601 text")
    return format_utc(when)


def _meta_of(plain: Mapping[str, Any], when: _dt.datetime | None) -> _ReportMeta:
    created = plain["created_at"]
    return _ReportMeta(
        plain["report_id"],
        plain["kind"],
        plain["measure"],
        created,
        parse_utc(created) if when is None else when,
    )


# Fresh report ids, made from os.urandom 64 at a time (one system call instead of one per
# report). Each is handed out once (list.pop is atomic); a forked child starts afresh, so
# parent and child never share an id.
_ID_POOL: list[str] = []
_ID_BATCH: Final = 64

if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_ID_POOL.clear)


def _new_report_id() -> str:
    """A fresh ``uuid.uuid4().hex`` (random version 4 UUID from ``os.urandom``)."""
    while True:
        try:
            return _ID_POOL.pop()
        except IndexError:
            pass
        raw = bytearray(os.urandom(16 * _ID_BATCH))
        ids = []
        for i in range(0, len(raw), 16):
            raw[i + 6] = (raw[i + 6] & 0x0F) | 0x40  # version 4
            raw[i + 8] = (raw[i + 8] & 0x3F) | 0x80  # RFC 4122 variant
            ids.append(raw[i : i + 16].hex())
        _ID_POOL.extend(ids)


_UTC = _dt.timezone.utc
# The last created_at text and the UTC second it names: reports come many per second.
_created_cache: tuple[int, str] = (0, "")


def _created_text(when: _dt.datetime) -> str:
    """:func:`format_utc` of an aware datetime, reused within the same UTC second."""
    global _created_cache
    second = math.floor(when.timestamp())
    cached = _created_cache
    if cached[0] == second and cached[1]:
        return cached[1]
    u = when.astimezone(_UTC)
    if u.year < 1000:  # strftime does not pad the year; isoformat does
        return format_utc(when)
    text = u.replace(tzinfo=None).isoformat(timespec="seconds") + "Z"
    _created_cache = (second, text)
    return text


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
        report_id = _new_report_id()
    payload: dict[str, Any] = {
        "type": "report",
        "report_id": report_id,
        "subscriber_id": subscriber_id,
        "kind": kind,
        "created_at": _created_text(when),
        "measure": measure,
        "entry_id": entry_id,
        "case_no": case_no,
        "list_version": list_version,
        "outcome": outcome,
        "details": {} if details is None else details,
    }
    out, reasons, data, parsed = _validate(payload, None)
    if reasons:
        raise InvalidReport("invalid report: " + "; ".join(reasons))
    # Validated once, here: sign_report signs exactly these bytes unless the payload is
    # changed in the meantime (see _ValidatedReport).
    result = _ValidatedReport(out)
    result._freeze(data, _meta_of(out, parsed))
    return result


def sign_report(payload: Mapping[str, Any], key: Ed25519PrivateKey) -> bytes:
    """Validate ``payload`` and return the signed envelope bytes (type ``REPORT_TYPE``).

    The envelope's payload is ``canonical_json(payload)``, so the same report signed twice
    has the same payload bytes (Ed25519 signatures are deterministic too). A payload from
    :func:`build_report` that still serialises to the bytes validated there is not
    validated a second time; any other payload is.
    """
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigurationError("reports are signed with the subscriber's Ed25519 private key")
    data: bytes | None = None
    if type(payload) is _ValidatedReport and payload._unchanged():
        data, meta = payload._canonical, payload._meta
    if data is None:
        plain = validate_report(payload)
        data, meta = canonical_json(plain), _meta_of(plain, None)
    return _SignedReport(sign_single(REPORT_TYPE, data, SigningKey.of(key)), meta)


def verify_report(
    envelope_bytes: bytes,
    subscriber_keys: Mapping[str, Ed25519PublicKey],
    *,
    now: _dt.datetime | None = None,
) -> dict[str, Any]:
    """Verify a report envelope and return its payload.

    Order, so that nothing unauthenticated is acted on: (1) size cap and envelope shape;
    (2) the payload is parsed only to read ``subscriber_id`` (malformed JSON, deep nesting
    and non-objects are refused here, before any other use); (3) the key registered for that
    subscriber must have signed ``PAE(REPORT_TYPE, payload)`` over the exact received
    bytes; (4) only then is the payload validated with :func:`validate_report` and
    returned (``now``: the receiver's clock, see :func:`validate_report`).

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
    if not is_subscriber_id(sid):
        raise InvalidReport(f"subscriber_id must match {SUBSCRIBER_ID_PATTERN}")
    assert isinstance(sid, str)
    key = subscriber_keys.get(sid)
    if key is None:
        raise SignatureError(f"unknown subscriber {_shown(sid)}: no report key registered")
    verify_single(key, envelope)
    # Authenticated from here on.
    return validate_report(unverified, now=now)


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
