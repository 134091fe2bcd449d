"""The list entry: what the platform publishes about one listed debtor.

One strict pydantic model covers every field the seed documents name (art. 6 of the SPC
rule: name, identifiers, legal representative, obligation and its performance, the
specific dishonest situation, enforcement basis, case number, filing date, court), plus
what distribution needs (status, visibility, audience, measures, related persons).

Field names are exactly those of the publisher's JSON Lines source. :func:`parse_entry`
collects *every* problem of an entry into one :class:`InvalidEntry` so the publisher's
quarantine report can say all that is wrong at once.
"""

from __future__ import annotations

import datetime as _dt
import re
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ._catalog import measure_codes
from ._exceptions import InvalidEntry, InvalidIdentifier
from ._identifiers import (
    IdNumberInfo,
    normalize_id_number,
    normalize_org_code,
    normalize_uscc,
)

__all__ = ["ROLES", "Entry", "Related", "parse_entry", "validate_entry"]

#: Roles a person can hold in a listed entity's ``related`` list.
ROLES = (
    "legal_rep",
    "principal",
    "actual_controller",
    "responsible_person",
    "director",
    "supervisor",
    "senior_manager",
)
Role = Literal[
    "legal_rep",
    "principal",
    "actual_controller",
    "responsible_person",
    "director",
    "supervisor",
    "senior_manager",
]

_DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_AMOUNT_RE = re.compile(r"^(0|[1-9]\d{0,15})(\.\d{1,2})?$")
_CASE_RE = re.compile(
    r"^[(（][0-9]{4}[)）][\u4e00-\u9fff]{1,2}[0-9]{0,4}[\u4e00-\u9fff]{1,4}[0-9]+号$"
)
_ENTRY_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")


def _parse_date(value: object) -> object:
    if isinstance(value, str):
        if not _DATE_RE.match(value):
            raise ValueError("must be a date written YYYY-MM-DD")
        return _dt.date.fromisoformat(value)
    return value


def _parse_datetime(value: object) -> object:
    if isinstance(value, str):
        try:
            parsed = _dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError("must be an ISO 8601 date-time") from None
        if parsed.tzinfo is None:
            raise ValueError("must be an ISO 8601 date-time with a UTC offset")
        return parsed
    return value


class Related(BaseModel):
    """A person related to a listed entity (legal representative, controller, ...).

    ``id_number`` may be absent: such a person is shown but never matched, because names
    never decide.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    role: Role
    name: str = Field(min_length=1, max_length=100)
    id_number: str | None = None

    @field_validator("id_number", mode="before")
    @classmethod
    def _norm_id(cls, v: object) -> object:
        return normalize_id_number(v) if isinstance(v, str) else v


class Entry(BaseModel):
    """One entry of the list of dishonest judgment debtors, as the platform holds it."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    entry_id: str = Field(pattern=_ENTRY_ID_RE.pattern)
    case_no: str = Field(min_length=6, max_length=64)
    subject_type: Literal["person", "entity"]
    name: str = Field(min_length=1, max_length=200)
    id_number: str | None = None
    gender: Literal["男", "女"] | None = None
    age: int | None = Field(default=None, ge=0, le=150)
    uscc: str | None = None
    org_code: str | None = None
    legal_rep_name: str | None = Field(default=None, max_length=100)
    court: str = Field(min_length=2, max_length=100)
    basis_doc_no: str = Field(min_length=1, max_length=100)
    basis_issuer: str = Field(min_length=1, max_length=100)
    obligation: str = Field(min_length=1, max_length=2000)
    performance: Literal["全部未履行", "部分未履行"]
    situation: int = Field(ge=1, le=6)
    published_at: _dt.date
    filed_at: _dt.date
    performed_amount: str = Field(pattern=_AMOUNT_RE.pattern)
    unperformed_amount: str = Field(pattern=_AMOUNT_RE.pattern)
    severity: int = Field(ge=1, le=3)
    valid_until: _dt.date | None = None
    status: Literal["active", "revoked", "deleted"] = "active"
    revoked_at: _dt.datetime | None = None
    visibility: Literal["public", "restricted"] = "public"
    measures: tuple[str, ...] = Field(min_length=1)
    related: tuple[Related, ...] = ()
    audience: tuple[str, ...] = ()

    _d1 = field_validator("published_at", "filed_at", "valid_until", mode="before")(
        classmethod(lambda cls, v: _parse_date(v))
    )
    _d2 = field_validator("revoked_at", mode="before")(
        classmethod(lambda cls, v: _parse_datetime(v))
    )

    @field_validator("measures", "related", "audience", mode="before")
    @classmethod
    def _listish(cls, v: object) -> object:
        return tuple(v) if isinstance(v, list) else v

    @field_validator("id_number", mode="before")
    @classmethod
    def _norm_id(cls, v: object) -> object:
        return normalize_id_number(v) if isinstance(v, str) else v

    @field_validator("uscc", mode="before")
    @classmethod
    def _norm_uscc(cls, v: object) -> object:
        return normalize_uscc(v) if isinstance(v, str) else v

    @field_validator("org_code", mode="before")
    @classmethod
    def _norm_org(cls, v: object) -> object:
        return normalize_org_code(v) if isinstance(v, str) else v

    # -- derived --------------------------------------------------------------------
    @property
    def effective_org_code(self) -> str | None:
        """The organisation code, given or embedded in the USCC (positions 9-17)."""
        if self.org_code:
            return self.org_code
        return self.uscc[8:17] if self.uscc else None

    def is_minor_listing(self) -> bool:
        """True when a person was under 18 on ``published_at`` (may never be listed)."""
        if self.subject_type != "person" or self.id_number is None:
            return False
        return _info_of_normalised(self.id_number).age_on(self.published_at) < 18

    def to_json_dict(self) -> dict[str, Any]:
        """JSON-ready dict with only the fields that are set (the source format)."""
        return self.model_dump(mode="json", exclude_none=True)


def _info_of_normalised(number: str) -> IdNumberInfo:
    """Birth date and sex of an already-normalised ID number (no second validation)."""
    birth = _dt.date(int(number[6:10]), int(number[10:12]), int(number[12:14]))
    return IdNumberInfo(number, birth, "男" if int(number[16]) % 2 == 1 else "女")


def _semantic_reasons(e: Entry, known_measures: frozenset[str] | None) -> list[str]:
    reasons: list[str] = []
    if e.subject_type == "person":
        if e.id_number is None:
            reasons.append("id_number: required for a person")
        if e.uscc or e.org_code or e.legal_rep_name:
            reasons.append("uscc/org_code/legal_rep_name: only for an entity")
        if e.related:
            reasons.append("related: only an entity has related persons")
        if e.id_number is not None:
            info = _info_of_normalised(e.id_number)
            age = info.age_on(e.published_at)
            if age < 18:
                reasons.append(
                    f"minor: the person was {age} on published_at {e.published_at}; "
                    "minors may not be listed"
                )
            if e.gender is not None and e.gender != info.sex:
                reasons.append("gender: inconsistent with the sex digit of id_number")
            if e.age is not None and abs(e.age - age) > 1:
                reasons.append(f"age: {e.age} inconsistent with id_number ({age} on published_at)")
    else:
        if e.uscc is None and e.org_code is None:
            reasons.append("uscc/org_code: an entity needs at least one")
        if e.id_number is not None or e.gender is not None or e.age is not None:
            reasons.append("id_number/gender/age: only for a person")
        if e.uscc and e.org_code and e.uscc[8:17] != e.org_code:
            reasons.append("org_code: differs from the code embedded in uscc (positions 9-17)")
    if e.valid_until is not None and e.valid_until < e.published_at:
        reasons.append("valid_until: before published_at")
    if e.filed_at > e.published_at:
        reasons.append("filed_at: after published_at")
    if (e.status == "active") != (e.revoked_at is None):
        reasons.append("revoked_at: required exactly when status is revoked or deleted")
    if e.visibility == "restricted" and not e.audience:
        reasons.append("audience: required for a restricted entry")
    if e.visibility == "public" and e.audience:
        reasons.append("audience: only for a restricted entry")
    if not _CASE_RE.match(e.case_no):
        reasons.append("case_no: not a case number like (2019)冀0203执123号")
    if known_measures is not None:
        for code in e.measures:
            if code != "*" and code not in known_measures:
                reasons.append(f"measures: unknown measure code {code!r}")
        if "*" in e.measures and len(e.measures) > 1:
            reasons.append('measures: "*" must stand alone')
    return reasons


def _pydantic_reasons(err: ValidationError) -> list[str]:
    out: list[str] = []
    for item in err.errors(include_url=False):
        loc = ".".join(str(p) for p in item["loc"]) or "entry"
        ctx_err = (item.get("ctx") or {}).get("error")
        if isinstance(ctx_err, InvalidIdentifier):
            out.append(f"{loc}: {ctx_err}")
        else:
            out.append(f"{loc}: {item['msg']}")
    return out


def _entry_id_of_json(line: str | bytes) -> str | None:
    """Best-effort entry_id of a JSON line, so a quarantine report can name the entry."""
    import json

    try:
        obj = json.loads(line)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    value = obj.get("entry_id") if isinstance(obj, dict) else None
    return value if isinstance(value, str) else None


def parse_entry(obj: Mapping[str, Any] | str | bytes, *, check_measures: bool = True) -> Entry:
    """Build and fully validate an :class:`Entry` from a dict or one JSON line.

    Raises :class:`InvalidEntry` listing every reason. Identifiers come out normalised.
    """
    entry_id = None
    try:
        if isinstance(obj, (str, bytes)):
            entry_id = _entry_id_of_json(obj)
            entry = Entry.model_validate_json(obj)
        else:
            entry_id = obj.get("entry_id") if isinstance(obj.get("entry_id"), str) else None
            entry = Entry.model_validate(dict(obj))
    except ValidationError as exc:
        raise InvalidEntry(entry_id, _pydantic_reasons(exc)) from None
    validate_entry(entry, check_measures=check_measures)
    return entry


def validate_entry(entry: Entry, *, check_measures: bool = True) -> None:
    """Run the cross-field rules on an already-typed entry; raise InvalidEntry."""
    known = measure_codes() if check_measures else None
    reasons = _semantic_reasons(entry, known)
    if reasons:
        raise InvalidEntry(entry.entry_id, reasons)
