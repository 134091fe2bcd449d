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
from collections.abc import Callable, Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

from .._exceptions import InvalidEntry, InvalidIdentifier
from .catalog import ROLES, Role, measure_codes
from .identifiers import (
    IdNumberInfo,
    normalize_id_number,
    normalize_org_code,
    normalize_uscc,
)
from .names import ENTRY_ID_PATTERN, ENTRY_ID_RE, pydantic_pattern

__all__ = ["ROLES", "Entry", "Related", "fast_entry_dict", "parse_entry", "validate_entry"]

_DATE_PATTERN = r"[0-9]{4}-[0-9]{2}-[0-9]{2}"
_AMOUNT_PATTERN = r"(?:0|[1-9][0-9]{0,15})(?:\.[0-9]{1,2})?"
_DATE_RE = re.compile(_DATE_PATTERN)
_CASE_RE = re.compile(
    r"[(（][0-9]{4}[)）][\u4e00-\u9fff]{1,2}[0-9]{0,4}[\u4e00-\u9fff]{1,4}[0-9]+号"
)


def _parse_date(value: object) -> object:
    if isinstance(value, str):
        if not _DATE_RE.fullmatch(value):
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

    entry_id: str = Field(pattern=pydantic_pattern(ENTRY_ID_PATTERN))
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
    performed_amount: str = Field(pattern=pydantic_pattern(_AMOUNT_PATTERN))
    unperformed_amount: str = Field(pattern=pydantic_pattern(_AMOUNT_PATTERN))
    severity: int = Field(ge=1, le=3)
    valid_until: _dt.date | None = None
    term_extension_years: int | None = Field(default=None, ge=1, le=3)
    obligation_kind: Literal["monetary", "non_monetary"] | None = None
    status: Literal["active", "revoked", "deleted"] = "active"
    status_ground: str | None = None
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


#: Why an entry is revoked (it should never have been listed, or was corrected).
REVOCATION_GROUNDS = frozenset({"wrongly_listed", "objection_upheld", "minor"})
#: Why an entry is deleted (法释〔2017〕7号 art. 10; the fixed term's end).
DELETION_GROUNDS = frozenset(
    {
        "performed",
        "settlement_performed",
        "creditor_request",
        "no_assets_after_termination",
        "enforcement_suspended",
        "not_to_be_enforced",
        "enforcement_terminated",
        "term_ended",
    }
)
_BASE_TERM_YEARS = 2  # situations 2-6; situation 1 has no fixed term
_MAX_EXTENSION_YEARS = 3  # 情节严重或具有多项失信行为: extended by 1-3 years


def _add_years(day: _dt.date, years: int) -> _dt.date:
    if day.year + years > _dt.MAXYEAR:
        return _dt.date.max
    try:
        return day.replace(year=day.year + years)
    except ValueError:  # 29 February -> 28 February
        return day.replace(year=day.year + years, day=28)


def _amount_reasons(e: Entry) -> list[str]:
    """Performance against the amounts (monetary obligations; the default)."""
    if e.obligation_kind == "non_monetary":
        if e.performed_amount != "0" or e.unperformed_amount != "0":
            return ["performed_amount/unperformed_amount: must be 0 for a non-monetary obligation"]
        return []
    performed = float(e.performed_amount)
    unperformed = float(e.unperformed_amount)
    reasons = []
    if unperformed <= 0:
        reasons.append("unperformed_amount: a listed monetary obligation has an unperformed part")
    if e.performance == "全部未履行" and performed > 0:
        reasons.append("performance: 全部未履行 but performed_amount is not 0")
    if e.performance == "部分未履行" and performed <= 0:
        reasons.append("performance: 部分未履行 needs a performed_amount above 0")
    return reasons


def _term_reasons(e: Entry) -> list[str]:
    """The listing term: none for situation 1; 2 years (+1-3 extension) for 2-6."""
    if e.situation == 1:
        if e.valid_until is not None or e.term_extension_years is not None:
            return ["valid_until: situation 1 has no fixed term (listed until deleted)"]
        return []
    if e.valid_until is None:
        if e.term_extension_years is not None:
            return ["term_extension_years: needs the valid_until it extends"]
        return [
            f"valid_until: situation {e.situation} is listed for a term (2 years, extendable "
            "by 1-3 years): the entry must say until when"
        ]
    # Without term_extension_years the source may still carry an extended term in
    # valid_until alone: the longest lawful one (2 + 3 years) is the bound then.
    ext = e.term_extension_years
    years = _BASE_TERM_YEARS + (_MAX_EXTENSION_YEARS if ext is None else ext)
    latest = _add_years(e.published_at, years)
    if e.valid_until > latest:
        return [
            f"valid_until: {e.valid_until} exceeds the {years}-year term of situation "
            f"{e.situation} (at most {latest}; extensions are 1-3 years)"
        ]
    return []


def _ground_reasons(e: Entry) -> list[str]:
    """A ground, when given, fits the status (revocation vs deletion grounds)."""
    g = e.status_ground
    if g is None:
        if e.status != "active":
            return [
                f"status_ground: a {e.status} entry says why (revoked: "
                f"{', '.join(sorted(REVOCATION_GROUNDS))}; deleted: "
                f"{', '.join(sorted(DELETION_GROUNDS))})"
            ]
        return []
    if e.status == "active":
        return ["status_ground: only for a revoked or deleted entry"]
    allowed = REVOCATION_GROUNDS if e.status == "revoked" else DELETION_GROUNDS
    if g not in allowed:
        return [
            f"status_ground: {g!r} is not a ground for {e.status} ({', '.join(sorted(allowed))})"
        ]
    return []


def _person_reasons(e: Entry) -> list[str]:
    """What is wrong with a person's entry: identifiers, age on publication, consistency."""
    reasons: list[str] = []
    if e.id_number is None:
        reasons.append("id_number: required for a person")
    if e.uscc or e.org_code or e.legal_rep_name:
        reasons.append("uscc/org_code/legal_rep_name: only for an entity")
    if e.related:
        reasons.append("related: only an entity has related persons")
    if e.id_number is None:
        return reasons
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
    return reasons


def _entity_reasons(e: Entry) -> list[str]:
    """What is wrong with an entity's entry: which codes it has, and that they agree."""
    reasons: list[str] = []
    if e.uscc is None and e.org_code is None:
        reasons.append("uscc/org_code: an entity needs at least one")
    if e.id_number is not None or e.gender is not None or e.age is not None:
        reasons.append("id_number/gender/age: only for a person")
    if e.uscc and e.org_code and e.uscc[8:17] != e.org_code:
        reasons.append("org_code: differs from the code embedded in uscc (positions 9-17)")
    if not (e.legal_rep_name or "").strip() and not any(
        r.role in ("legal_rep", "principal") and r.name.strip() for r in e.related
    ):
        reasons.append(
            "legal_rep_name: an entity's entry names its 法定代表人或者负责人 "
            "(legal_rep_name, or a related legal_rep/principal with a name)"
        )
    return reasons


def _listing_reasons(e: Entry) -> list[str]:
    """What is wrong with the listing itself: dates, status, visibility, case number."""
    reasons: list[str] = []
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
    if not _CASE_RE.fullmatch(e.case_no):
        reasons.append("case_no: not a case number like (2019)冀0203执123号")
    return reasons


def _measure_reasons(e: Entry, known_measures: frozenset[str]) -> list[str]:
    """Unknown measure codes, and a ``"*"`` that does not stand alone."""
    reasons = [
        f"measures: unknown measure code {code!r}"
        for code in e.measures
        if code != "*" and code not in known_measures
    ]
    if "*" in e.measures and len(e.measures) > 1:
        reasons.append('measures: "*" must stand alone')
    return reasons


def _semantic_reasons(e: Entry, known_measures: frozenset[str] | None) -> list[str]:
    """Every cross-field rule an entry breaks, in a fixed order (subject, listing, measures)."""
    reasons = _person_reasons(e) if e.subject_type == "person" else _entity_reasons(e)
    reasons += _listing_reasons(e)
    reasons += _amount_reasons(e) + _term_reasons(e) + _ground_reasons(e)
    if known_measures is not None:
        reasons += _measure_reasons(e, known_measures)
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


# -- fast path ----------------------------------------------------------------------------
# The publisher validates millions of entries; building a pydantic model per entry is most
# of its cost. ``fast_entry_dict`` accepts only the plain, common shape (exact ``str``/
# ``int``/``list`` types, ASCII dates and amounts, canonical date-times) and answers None
# for anything else, so that the caller falls back to :func:`parse_entry`, which stays the
# authority on what is refused and why. ``tests/test_site_fast.py`` checks on many
# generated valid and mutated entries that a non-None answer always equals
# ``parse_entry(obj).to_json_dict()`` (from the dict and from its JSON line).

_FIELDS = frozenset(Entry.model_fields)
_RELATED_FIELDS = frozenset(Related.model_fields)
_NULLABLE = (
    "id_number",
    "gender",
    "age",
    "uscc",
    "org_code",
    "legal_rep_name",
    "valid_until",
    "revoked_at",
)
_ROLE_SET = frozenset(ROLES)
#: Fields the fast path leaves to parse_entry (rare: non-monetary, extended, grounds).
_SLOW_ONLY = frozenset({"term_extension_years", "obligation_kind", "status_ground"})
_SEXES = ("女", "男")  # by the parity of the 17th digit
_FAST_AMOUNT = re.compile(_AMOUNT_PATTERN)
_FAST_DATETIME = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:Z|[+-][0-9]{2}:[0-9]{2})\Z"
)
_DATETIME_ADAPTER: TypeAdapter[_dt.datetime] = TypeAdapter(_dt.datetime)
_CACHE_LIMIT = 100_000
_date_ok: dict[str, bool] = {}
_datetime_json: dict[str, str | None] = {}


def _fast_date(value: object) -> bool:
    """True when ``value`` is a plain ``str`` holding a real date as YYYY-MM-DD (ASCII)."""
    if type(value) is not str:
        return False
    ok = _date_ok.get(value)
    if ok is None:
        ok = _DATE_RE.fullmatch(value) is not None
        if ok:
            try:
                _dt.date.fromisoformat(value)
            except ValueError:
                ok = False
        if len(_date_ok) >= _CACHE_LIMIT:
            _date_ok.clear()
        _date_ok[value] = ok
    return ok


def _fast_datetime(value: str) -> str | None:
    """The model's JSON form of a ``revoked_at`` string, or None when unusual."""
    out = _datetime_json.get(value, "")
    if out == "":
        out = None
        if _FAST_DATETIME.fullmatch(value):
            try:
                parsed = _parse_datetime(value)
            except ValueError:
                parsed = None
            if isinstance(parsed, _dt.datetime):
                dumped = _DATETIME_ADAPTER.dump_python(parsed, mode="json")
                out = dumped if isinstance(dumped, str) else None
        if len(_datetime_json) >= _CACHE_LIMIT:
            _datetime_json.clear()
        _datetime_json[value] = out
    return out


def _str_len(value: object, low: int, high: int) -> bool:
    return type(value) is str and low <= len(value) <= high


def fast_entry_dict(obj: object, known_measures: frozenset[str]) -> dict[str, Any] | None:
    """``parse_entry(obj).to_json_dict()`` for a common, valid entry; None = not sure.

    ``obj`` is the dict of one entry (as ``json.loads`` gives it, or a plain source dict;
    it is not modified). None means the entry is unusual or invalid: call
    :func:`parse_entry`, which decides and gives the reasons. The measure codes are
    always checked against ``known_measures``.
    """
    if type(obj) is not dict or not obj.keys() <= _FIELDS or not obj.keys().isdisjoint(_SLOW_ONLY):
        return None
    try:
        return _fast_entry_dict(obj, known_measures)
    except Exception:  # anything unexpected: the full model decides
        return None


class _Unsure(Exception):
    """Raised inside the fast path for an entry it does not decide (parse_entry will)."""


def _fast_entry_dict(obj: dict[str, Any], known: frozenset[str]) -> dict[str, Any] | None:
    """:func:`fast_entry_dict` of a plain dict, by parts; raises for anything unusual."""
    d = dict(obj)
    g = d.get
    texts = _fast_required(g)
    published: str = d["published_at"]
    valid_until = g("valid_until")
    if valid_until is None and d["situation"] != 1:
        return None  # situations 2-6 need a term: the model words the reason
    if valid_until is not None and (
        not _fast_date(valid_until)
        or valid_until < published
        or d["situation"] == 1
        or valid_until
        > str(int(published[:4]) + _BASE_TERM_YEARS + _MAX_EXTENSION_YEARS) + published[4:]
    ):
        return None
    if not _fast_amounts_agree(d["performance"], d["performed_amount"], d["unperformed_amount"]):
        return None
    status = _fast_status(d)
    visibility, audience = _fast_visibility(g, texts)
    measures: Any = g("measures")
    _fast_measures(measures, known)
    related = g("related", [])
    if type(related) is not list and type(related) is not tuple:
        return None
    subject_type = g("subject_type")
    if type(subject_type) is not str:
        return None
    if subject_type == "person":
        if related:
            return None
        _fast_person(d, published)
        new_related: list[dict[str, str]] = []
    elif subject_type == "entity":
        _fast_entity(d, texts)
        new_related = _fast_related(related, texts)
    else:
        return None
    # The model refuses strings with lone surrogates (not valid Unicode): encoding the
    # free-text fields raises for them (the other strings are ASCII or checked above).
    "".join(texts).encode()
    for key in _NULLABLE:
        if key in d and d[key] is None:
            del d[key]
    d["status"] = status
    d["visibility"] = visibility
    d["measures"] = list(measures)
    d["related"] = new_related
    d["audience"] = list(audience)
    return d


def _fast_required(g: Callable[[str], Any]) -> list[str]:
    """Check the fields every entry has; return its free texts (checked at the end)."""
    entry_id = g("entry_id")
    case_no: Any = g("case_no")
    name = g("name")
    court = g("court")
    doc_no = g("basis_doc_no")
    issuer = g("basis_issuer")
    obligation = g("obligation")
    performance = g("performance")
    situation = g("situation")
    severity = g("severity")
    published: Any = g("published_at")
    filed: Any = g("filed_at")
    performed = g("performed_amount")
    unperformed = g("unperformed_amount")
    if not (
        type(entry_id) is str
        and type(case_no) is str
        and type(name) is str
        and type(court) is str
        and type(doc_no) is str
        and type(issuer) is str
        and type(obligation) is str
        and type(performance) is str
        and type(situation) is int
        and type(severity) is int
        and type(published) is str
        and type(filed) is str
        and type(performed) is str
        and type(unperformed) is str
        and 6 <= len(case_no) <= 64
        and 0 < len(name) <= 200
        and 1 < len(court) <= 100
        and 0 < len(doc_no) <= 100
        and 0 < len(issuer) <= 100
        and 0 < len(obligation) <= 2000
        and 1 <= situation <= 6
        and 1 <= severity <= 3
        and performance in {"全部未履行", "部分未履行"}
        and filed <= published
        and ENTRY_ID_RE.fullmatch(entry_id)
        and _CASE_RE.fullmatch(case_no)
        and _FAST_AMOUNT.fullmatch(performed)
        and _FAST_AMOUNT.fullmatch(unperformed)
        and (_date_ok.get(published) or _fast_date(published))
        and (_date_ok.get(filed) or _fast_date(filed))
    ):
        raise _Unsure
    return [name, court, doc_no, issuer, obligation]


def _fast_amounts_agree(performance: str, performed: str, unperformed: str) -> bool:
    """The monetary rule of :func:`_amount_reasons` (True: the amounts fit performance)."""
    done = float(performed) > 0
    return float(unperformed) > 0 and done == (performance == "部分未履行")


def _fast_status(d: dict[str, Any]) -> str:
    """``status``, with ``revoked_at`` (required exactly when not active) put in JSON form."""
    status = d.get("status", "active")
    if type(status) is not str or status not in ("active", "revoked", "deleted"):
        raise _Unsure
    if status != "active":
        raise _Unsure  # withdrawn entries (rare) need a status_ground: the model decides
    revoked_at = d.get("revoked_at")
    if revoked_at is None:
        if status != "active":
            raise _Unsure
        return status
    if type(revoked_at) is not str or status == "active":
        raise _Unsure
    revoked_json = _fast_datetime(revoked_at)
    if revoked_json is None:
        raise _Unsure
    d["revoked_at"] = revoked_json
    return status


def _fast_visibility(g: Callable[..., Any], texts: list[str]) -> tuple[str, Any]:
    """``(visibility, audience)``: a public entry has no audience, a restricted one needs it."""
    visibility = g("visibility", "public")
    audience = g("audience", [])
    if type(visibility) is not str or (type(audience) is not list and type(audience) is not tuple):
        raise _Unsure
    if visibility == "public":
        if audience:
            raise _Unsure
    elif visibility == "restricted" and audience:
        for sub in audience:
            if type(sub) is not str:
                raise _Unsure
        texts += audience
    else:
        raise _Unsure
    return visibility, audience


def _fast_measures(measures: Any, known: frozenset[str]) -> None:
    """Known measure codes, or ``"*"`` alone."""
    if (type(measures) is not list and type(measures) is not tuple) or not measures:
        raise _Unsure
    if len(measures) == 1:
        code = measures[0]
        if type(code) is not str or (code != "*" and code not in known):
            raise _Unsure
        return
    for code in measures:
        if type(code) is not str or code not in known:  # "*" must stand alone
            raise _Unsure


def _fast_person(d: dict[str, Any], published: str) -> None:
    """A person: an adult's ID number (normalised in ``d``), consistent gender and age."""
    g = d.get
    if g("uscc") is not None or g("org_code") is not None or g("legal_rep_name") is not None:
        raise _Unsure
    raw_id = g("id_number")
    if type(raw_id) is not str:
        raise _Unsure
    id_number = normalize_id_number(raw_id)
    years = (
        int(published[0:4])
        - int(id_number[6:10])
        - ((published[5:7] + published[8:10]) < id_number[10:14])
    )
    if years < 18:
        raise _Unsure
    gender = g("gender")
    if gender is not None and (type(gender) is not str or gender != _SEXES[int(id_number[16]) % 2]):
        raise _Unsure
    age = g("age")
    if age is not None and (type(age) is not int or not 0 <= age <= 150 or abs(age - years) > 1):
        raise _Unsure
    d["id_number"] = id_number


def _fast_entity(d: dict[str, Any], texts: list[str]) -> None:
    """An entity: its codes normalised in ``d`` (at least one, agreeing), no person fields."""
    g = d.get
    if g("id_number") is not None or g("gender") is not None or g("age") is not None:
        raise _Unsure
    legal_rep_name = g("legal_rep_name")
    if legal_rep_name is None or not _str_len(legal_rep_name, 1, 100) or not legal_rep_name.strip():
        raise _Unsure  # the model decides (a related legal_rep/principal may name it)
    texts.append(legal_rep_name)
    raw_uscc = g("uscc")
    raw_org = g("org_code")
    if raw_uscc is None and raw_org is None:
        raise _Unsure
    if raw_uscc is not None:
        if type(raw_uscc) is not str:
            raise _Unsure
        d["uscc"] = normalize_uscc(raw_uscc)
    if raw_org is not None:
        if type(raw_org) is not str:
            raise _Unsure
        d["org_code"] = normalize_org_code(raw_org)
        if raw_uscc is not None and d["uscc"][8:17] != d["org_code"]:
            raise _Unsure


def _fast_related(related: Any, texts: list[str]) -> list[dict[str, str]]:
    """An entity's related persons as the model writes them (ID numbers normalised)."""
    out: list[dict[str, str]] = []
    for person in related:
        if type(person) is not dict or not person.keys() <= _RELATED_FIELDS:
            raise _Unsure
        role: Any = person.get("role")
        rel_name: Any = person.get("name")
        if type(role) is not str or role not in _ROLE_SET or not _str_len(rel_name, 1, 100):
            raise _Unsure
        texts.append(rel_name)
        item: dict[str, str] = {"role": role, "name": rel_name}
        rel_id = person.get("id_number")
        if rel_id is not None:
            if type(rel_id) is not str:
                raise _Unsure
            item["id_number"] = normalize_id_number(rel_id)
        out.append(item)
    return out
