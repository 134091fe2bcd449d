"""Subjects, decisions, and the rules that turn store hits into an action.

This module is pure: no I/O, no clock of its own. The client feeds it the hits of one
lookup and the time; everything here is deterministic and unit-testable.

The rules (the "Decisions" issue and the seed documents):

* **Identifiers decide; names never block.** A person is matched by resident ID number
  (a legacy 15-digit number normalises to its 18-digit form, so both meet). An entity is
  matched by its organisation code, given directly or embedded in the USCC (positions
  9-17): the publisher keys every entity on that code, so a USCC query finds an entry
  published with only the organisation code, and the other way round. A name that differs
  from the listed one adds the reason ``name_mismatch`` (and ``Match.name_mismatch``) but
  never changes the action.
* **Relations.** ``self``: the subject is the listed debtor. ``legal_rep``, ``principal``,
  ``actual_controller``, ``responsible_person`` (and the other roles of :data:`ROLES`): the
  subject is a person recorded with that role among a listed entity's related persons.
  ``officer:<role>``: the subject is an Entity and one of its declared officers is itself
  listed. Which relations a measure reaches comes from the catalog
  (:meth:`Measure.applies_to`). A related person published without an ID number is shown
  in :attr:`Match.related` but can never be matched, because only identifiers decide.
* **Which entries count.** Only entries that are ``active``, whose ``measures`` include the
  measure (or ``"*"``), that are not past ``valid_until`` (compared with the date in China,
  offline too), that reach the relation, and that are not the listing of a minor. An entry
  naming a person who was under 18 on its published date is never enforced and is
  reported as a data error (:attr:`Decision.data_errors`).
* **The action** is the strongest among counted matches (block > review > monitor >
  allow); with no counted match it is ``allow``.
* **Staleness.** When the list is stale the reason ``stale`` is added and, unless the
  integrator chose ``stale_action="block"``, a block is downgraded to review.

Reasons are a small fixed vocabulary (:data:`REASONS`), each at most once per decision;
the entries concerned are in :attr:`Decision.matches` (counted) and
:attr:`Decision.ignored` (hit by an identifier but not counted, with why).
"""

from __future__ import annotations

import datetime as _dt
import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal, NamedTuple, Protocol

import pydantic_core

from .._exceptions import FormatError, InvalidInput
from .._protocol.catalog import ROLE_TITLES, ROLES, Measure
from .._protocol.identifiers import (
    mask_identifier,
    normalize_id_number,
    normalize_org_code,
    normalize_uscc,
)
from .._protocol.jurisdictions import objection_rule
from .._protocol.keyedhash import KeyedHash
from .._protocol.reports import CHINA_TZ

__all__ = [
    "REASONS",
    "Action",
    "Decision",
    "Entity",
    "Ignored",
    "KeyMaker",
    "Match",
    "Officer",
    "Person",
    "Probe",
    "RelatedPerson",
    "Subject",
    "allow_decision",
    "decide",
    "is_minor",
    "notice_text",
    "probes_for",
    "strongest",
]

Action = Literal["block", "review", "monitor", "allow"]
_STRENGTH: Final[dict[str, int]] = {"allow": 0, "monitor": 1, "review": 2, "block": 3}

#: List dates (published_at, valid_until) are calendar dates in China Standard Time.
_CHINA_OFFSET_S: Final = round(CHINA_TZ.utcoffset(None).total_seconds())

# -- reasons ------------------------------------------------------------------------------
LISTED: Final = "listed"
"""At least one entry counts against the subject (see ``Decision.matches``)."""
NAME_MISMATCH: Final = "name_mismatch"
"""A counted entry's listed name differs from the name given (``Match.name_mismatch``)."""
STALE: Final = "stale"
"""The local list is stale; a block is downgraded to review unless configured otherwise."""
REVOKED: Final = "revoked"
"""An identifier hit an entry the court revoked (should never have been listed)."""
DELETED: Final = "deleted"
"""An identifier hit an entry that was deleted (debt performed, term ended ...)."""
EXPIRED: Final = "expired"
"""An identifier hit an entry past its ``valid_until`` date."""
MEASURE_NOT_COVERED: Final = "measure_not_covered"
"""An identifier hit an entry whose ``measures`` do not include this measure."""
RELATION_NOT_COVERED: Final = "relation_not_covered"
"""An identifier hit an entry through a relation this measure does not reach."""
MINOR_NOT_ENFORCED: Final = "minor_not_enforced"
"""An identifier hit the listing of a minor: never enforced, reported as a data error."""

#: Every reason a decision can carry, in the order they appear in ``Decision.reasons``.
REASONS: Final = (
    LISTED,
    NAME_MISMATCH,
    REVOKED,
    DELETED,
    EXPIRED,
    MEASURE_NOT_COVERED,
    RELATION_NOT_COVERED,
    MINOR_NOT_ENFORCED,
    STALE,
)
_REASON_ORDER: Final = {r: i for i, r in enumerate(REASONS)}


# -- subjects -------------------------------------------------------------------------------


def _clean_name(name: object, what: str) -> str | None:
    if name is None:
        return None
    if not isinstance(name, str):
        raise InvalidInput(f"{what} name must be a string or None")
    name = name.strip()
    return name or None


@dataclass(frozen=True, slots=True)
class Person:
    """A natural person, identified by resident ID number.

    ``id_number`` is normalised on construction (full-width digits, spaces and a lower-case
    ``x`` are accepted; a legacy 15-digit number becomes its 18-digit form) and validated
    (length, birth date, check character): :class:`InvalidIdentifier` otherwise. ``name``
    is only compared, never used to match. ``repr()`` masks the ID number, so a Person in
    a log line or a traceback never shows it in full.
    """

    id_number: str
    name: str | None = None
    _adult_on: str = field(init=False, repr=False, compare=False)
    """The 18th birthday as YYYYMMDD (derived once here: every decision about this person
    asks whether they were a minor, see ``_not_counted``)."""

    def __post_init__(self) -> None:
        n = normalize_id_number(self.id_number)
        object.__setattr__(self, "id_number", n)
        object.__setattr__(self, "name", _clean_name(self.name, "a person's"))
        object.__setattr__(self, "_adult_on", _adult_on_of(n))

    def __repr__(self) -> str:
        return f"Person(id_number={mask_identifier(self.id_number)!r}, name={self.name!r})"

    @property
    def birth_date(self) -> _dt.date:
        """The birth date encoded in positions 7-14 of the ID number."""
        n = self.id_number
        return _dt.date(int(n[6:10]), int(n[10:12]), int(n[12:14]))

    def age_on(self, day: _dt.date) -> int:
        """Completed years of age on ``day``."""
        b = self.birth_date
        return day.year - b.year - ((day.month, day.day) < (b.month, b.day))


@dataclass(frozen=True, slots=True)
class Officer:
    """A person holding ``role`` (one of :data:`ROLES`) in an :class:`Entity`.

    Declaring officers lets measures that reach ``officer`` (finance.credit,
    supervision.key_target ...) find an entity whose legal representative, director ...
    is personally listed.
    """

    role: str
    person: Person

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise InvalidInput(f"officer role {self.role!r} is not one of {', '.join(ROLES)}")
        if not isinstance(self.person, Person):
            raise InvalidInput("an officer's person must be a Person")


@dataclass(frozen=True, slots=True)
class Entity:
    """An organisation, identified by USCC and/or organisation code (at least one).

    Both are normalised and validated on construction (:class:`InvalidIdentifier`); when
    both are given, the organisation code must be the one embedded in the USCC.
    ``officers`` are optional declared officers (see :class:`Officer`).
    """

    uscc: str | None = None
    org_code: str | None = None
    name: str | None = None
    officers: Sequence[Officer] = ()

    def __post_init__(self) -> None:
        uscc = normalize_uscc(self.uscc) if self.uscc is not None else None
        org = normalize_org_code(self.org_code) if self.org_code is not None else None
        if uscc is None and org is None:
            raise InvalidInput("an Entity needs a uscc or an org_code")
        if uscc is not None and org is not None and uscc[8:17] != org:
            raise InvalidInput("org_code differs from the code embedded in the uscc")
        if isinstance(self.officers, (str, bytes)) or not isinstance(self.officers, Iterable):
            raise InvalidInput("officers must be a list of Officer(role, Person)")
        officers = tuple(self.officers)
        for o in officers:
            if not isinstance(o, Officer):
                raise InvalidInput("officers must be Officer(role, Person) objects")
        object.__setattr__(self, "uscc", uscc)
        object.__setattr__(self, "org_code", org)
        object.__setattr__(self, "name", _clean_name(self.name, "an entity's"))
        object.__setattr__(self, "officers", officers)

    @property
    def effective_org_code(self) -> str:
        """The organisation code: given, or positions 9-17 of the USCC."""
        if self.org_code is not None:
            return self.org_code
        assert self.uscc is not None
        return self.uscc[8:17]


Subject = Person | Entity


# -- results ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RelatedPerson:
    """A person published with a role in a listed entity. ``masked_id`` is ``None`` when
    the platform published no ID number: such a person is shown, never matched."""

    role: str
    name: str
    masked_id: str | None

    def to_dict(self) -> dict[str, Any]:
        return {"role": self.role, "name": self.name, "masked_id": self.masked_id}


@dataclass(frozen=True)
class Match:
    """One list entry that counts against the subject, with what a clerk needs to see.

    ``name`` and ``masked_id`` are the listed debtor's (an entity's codes are public and
    shown as published; a person's ID number is masked by the publisher). ``relation``
    says how the subject stands to the entry (``self``, a role, ``officer:<role>``).
    ``matched_person`` is, for a role relation, the listed name of the related person
    whose ID number matched. ``name_mismatch`` is true when the name given for the
    matched person or entity differs from the listed one.
    """

    entry_id: str
    case_no: str
    court: str
    relation: str
    name: str
    masked_id: str | None
    obligation: str
    unperformed_amount: str
    published_at: str
    subject_type: str
    valid_until: str | None = None
    matched_person: str | None = None
    name_mismatch: bool = False
    related: tuple[RelatedPerson, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict; ``None`` fields are left out. Never a plaintext ID number."""
        out = {k: v for k, v in self.__dict__.items() if v is not None}
        out["related"] = [r.to_dict() for r in self.related]
        return out


@dataclass(frozen=True, slots=True)
class Ignored:
    """An entry an identifier hit that did not count, and the reason (see REASONS)."""

    entry_id: str
    relation: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"entry_id": self.entry_id, "relation": self.relation, "reason": self.reason}


@dataclass(frozen=True)
class Decision:
    """The answer for one subject and one measure, from one verified list version.

    ``action`` is ``block``, ``review``, ``monitor`` or ``allow``; ``reasons`` are codes
    from :data:`REASONS` (each at most once); ``matches`` the entries that count;
    ``ignored`` the entries hit by an identifier that do not count (revoked, expired,
    other measures ...); ``data_errors`` the entry ids that must never be enforced (a
    minor's listing) and were reported. ``stale`` is true when the list was stale at
    ``checked_at`` (UTC). A Decision never contains a plaintext ID number.
    """

    action: Action
    measure: str
    matches: tuple[Match, ...]
    reasons: tuple[str, ...]
    stale: bool
    list_version: int
    checked_at: _dt.datetime
    measure_title: str = ""
    data_errors: tuple[str, ...] = ()
    ignored: tuple[Ignored, ...] = ()

    @property
    def blocked(self) -> bool:
        """True when the action is ``block``."""
        return self.action == "block"

    @property
    def entry_ids(self) -> tuple[str, ...]:
        """Entry ids of the counted matches, without repeats (what the audit log records)."""
        matches = self.matches
        if not matches:
            return ()
        if len(matches) == 1:
            return (matches[0].entry_id,)
        return tuple(dict.fromkeys(m.entry_id for m in matches))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (``checked_at`` in ISO 8601). Never a plaintext ID number."""
        return {
            "action": self.action,
            "measure": self.measure,
            "measure_title": self.measure_title,
            "matches": [m.to_dict() for m in self.matches],
            "reasons": list(self.reasons),
            "stale": self.stale,
            "list_version": self.list_version,
            "checked_at": self.checked_at.isoformat(),
            "ignored": [i.to_dict() for i in self.ignored],
            "data_errors": list(self.data_errors),
        }


_new = object.__new__
_NO_REASONS: Final[tuple[str, ...]] = ()
_STALE_ONLY: Final = (STALE,)


def _make_decision(  # noqa: PLR0917 - internal, called positionally on the hot path
    action: Action,
    measure: Measure,
    matches: tuple[Match, ...],
    reasons: tuple[str, ...],
    stale: bool,
    list_version: int,
    now: _dt.datetime,
    data_errors: tuple[str, ...] = (),
    ignored: tuple[Ignored, ...] = (),
) -> Decision:
    # The check path builds one Decision per call; filling __dict__ directly skips the
    # frozen dataclass's per-field object.__setattr__ (several times faster). The result
    # is an ordinary, fully initialised frozen Decision.
    d: Decision = _new(Decision)
    d.__dict__.update(
        action=action,
        measure=measure.code,
        matches=matches,
        reasons=reasons,
        stale=stale,
        list_version=list_version,
        checked_at=now,
        measure_title=measure.title,
        data_errors=data_errors,
        ignored=ignored,
    )
    return d


_ALLOW_TEMPLATES: dict[tuple[str, int, bool], dict[str, Any]] = {}


def allow_decision(
    measure: Measure, *, list_version: int, stale: bool, now: _dt.datetime
) -> Decision:
    """The decision when no identifier hit anything (the common case, kept cheap: every
    field but ``checked_at`` comes from a template per measure, version and staleness)."""
    template = _ALLOW_TEMPLATES.get((measure.code, list_version, stale))
    if template is None:
        if len(_ALLOW_TEMPLATES) > 1024:
            _ALLOW_TEMPLATES.clear()
        template = _make_decision(
            "allow", measure, (), _STALE_ONLY if stale else _NO_REASONS, stale, list_version, now
        ).__dict__
        _ALLOW_TEMPLATES[(measure.code, list_version, stale)] = template
    d: Decision = _new(Decision)
    fields = d.__dict__
    fields.update(template)
    fields["checked_at"] = now
    return d


# -- lookups ----------------------------------------------------------------------------------


class KeyMaker:
    """The identifier keys of one list's hash key, with a memo of recent identifiers.

    The keys are :class:`~intercept_sdk._protocol.keyedhash.KeyedHash`'s (the protocol's
    one definition, which the publisher uses too): the HMAC's pad states are hashed once
    per hash key, not on every call (the one-shot HMAC re-derives them, which dominated
    ``check()``). On top, a bounded memo of recent identifiers (a guest checked at the desk
    is often checked again at the lift). The memo lives in memory only and is dropped with
    the KeyMaker, which the client replaces whenever the list's hash key changes.
    """

    __slots__ = ("_hash", "_memo", "_org_key", "_person_key", "hash_key")
    MEMO_SIZE: Final = 4096

    def __init__(self, hash_key: bytes) -> None:
        self.hash_key = hash_key
        self._hash = KeyedHash(hash_key)
        self._person_key = self._hash.person
        self._org_key = self._hash.org
        # one memo for both kinds, found by the identifier itself: a normalised ID number
        # has 18 characters and an organisation code 9, so the two never collide
        self._memo: dict[str, bytes] = {}

    def person(self, id_number: str) -> bytes:
        """Key of a normalised 18-character ID number."""
        k = self._memo.get(id_number)
        return k if k is not None else self._remember(id_number)

    def org(self, org_code: str) -> bytes:
        """Key of a normalised 9-character organisation code."""
        k = self._memo.get(org_code)
        return k if k is not None else self._remember(org_code)

    def _remember(self, value: str) -> bytes:
        """The key of an identifier not in the memo (told apart by its length), kept."""
        k = (self._person_key if len(value) == 18 else self._org_key)(value)
        memo = self._memo
        if len(memo) >= self.MEMO_SIZE:
            memo.clear()
        memo[value] = k
        return k

    def own_keys(self, subjects: Sequence[Subject]) -> tuple[list[bytes], dict[int, list[Probe]]]:
        """Each subject's own key, in order, for screening many subjects at once.

        Returns ``(keys, probes)``: ``keys[i]`` is the key :func:`probes_for` puts first
        for ``subjects[i]`` (what the audit log records), and ``probes`` maps the index
        of every subject not handled inline (an Entity with declared officers, whose
        officers' keys are looked up too, or an instance of a subclass of Person or
        Entity) to its full :func:`probes_for` list. For every other subject the only
        probe is :func:`own_probe` of its key, which the caller builds only when that
        key hits.

        The keys are the same as :meth:`person`/:meth:`org` (the tests compare them),
        computed without the memo: a customer base is mostly distinct identifiers, which
        would only evict the recent ones the desk checks again.
        Raises :class:`InvalidInput` for anything but a Person or an Entity.
        """
        person = self._person_key
        org = self._org_key
        keys: list[bytes] = []
        append = keys.append
        extra: dict[int, list[Probe]] = {}
        for i, s in enumerate(subjects):
            if type(s) is Person:
                append(person(s.id_number))
            elif type(s) is Entity and not s.officers:
                code = s.org_code
                append(org(code if code is not None else s.effective_org_code))
            else:
                probes = probes_for(s, self.person, self.org)
                extra[i] = probes
                append(probes[0].key)
        return keys, extra


class Probe(NamedTuple):
    """One identifier key to look up, and what a hit on it means for the subject.

    ``person`` is set when the key is a person's ID (the subject itself, or an officer);
    ``officer_role`` when that person is a declared officer of the Entity checked.
    """

    key: bytes
    person: Person | None
    officer_role: str | None
    name: str | None


def own_probe(subject: Subject, key: bytes) -> Probe:
    """The probe of a Person, or of an Entity without officers, whose own key is ``key``:
    the one :func:`probes_for` returns for it."""
    if isinstance(subject, Person):
        return Probe(key, subject, None, subject.name)
    return Probe(key, None, None, subject.name)


def probes_for(
    subject: Subject,
    person_key: Callable[[str], bytes],
    org_key: Callable[[str], bytes],
) -> list[Probe]:
    """The keys to look up for ``subject``; the first is the subject's own key."""
    if type(subject) is Person:
        return [Probe(person_key(subject.id_number), subject, None, subject.name)]
    if not isinstance(subject, Entity):
        if isinstance(subject, Person):
            return [Probe(person_key(subject.id_number), subject, None, subject.name)]
        raise InvalidInput("subject must be a Person or an Entity")
    out = [Probe(org_key(subject.effective_org_code), None, None, subject.name)]
    for o in subject.officers:
        out.append(Probe(person_key(o.person.id_number), o.person, o.role, o.person.name))
    return out


# -- the rules ----------------------------------------------------------------------------------


class HitLike(Protocol):
    """One store hit as :func:`decide` reads it (``_store.Hit`` is one): the record
    ``entry_id`` is stored under, how ``key`` appears in it (``relation``: ``self`` or a
    role), the key, and the exact signed record bytes."""

    @property
    def entry_id(self) -> str: ...
    @property
    def relation(self) -> str: ...
    @property
    def key(self) -> bytes: ...
    @property
    def record(self) -> bytes: ...


class _Record:
    """What the rules need from one signed record, parsed once and cached by its bytes."""

    __slots__ = (
        "entry_id",
        "measures",
        "published",
        "published_compact",
        "raw",
        "rec",
        "related",
        "status",
        "valid_until",
    )

    def __init__(self, record: bytes) -> None:
        self.raw = record
        try:
            # no string cache: a record's strings are seldom seen again, and probing the
            # cache costs a hit ~4 us in check() (measured, decision 0010)
            rec = pydantic_core.from_json(record, cache_strings=False)
        except ValueError:
            raise FormatError("a stored record is not JSON") from None
        if not isinstance(rec, dict):
            raise FormatError("a stored record is not a JSON object")
        self.rec: dict[str, Any] = rec
        get = rec.get
        self.entry_id = str(get("entry_id"))
        self.status = get("status", "active")
        measures = get("measures")
        # a list of one to three codes: membership in it is cheaper than a set's creation
        self.measures: Sequence[object] = measures if isinstance(measures, list) else ()
        valid_until = get("valid_until")
        self.valid_until = valid_until if isinstance(valid_until, str) else None
        published = get("published_at")
        self.published = published if isinstance(published, str) else ""
        self.published_compact = self.published.replace("-", "")
        items = get("related")
        self.related: tuple[RelatedPerson, ...] = ()
        if items and isinstance(items, list):
            related = []
            for r in items:
                if not isinstance(r, dict):
                    continue
                person = None
                if "name" not in r and r.get("id_masked") is None:
                    person = _NAMELESS.get(r.get("role"))  # type: ignore[arg-type]
                if person is None:
                    person = RelatedPerson(
                        str(r.get("role", "")), str(r.get("name", "")), r.get("id_masked")
                    )
                related.append(person)
            self.related = tuple(related)


#: The related persons format 2 publishes without a name (every role but the legal
#: representative's), one shared immutable object per role: an entity's record lists
#: several, and making each anew cost ~0.4 us apiece on check()'s hit path.
_NAMELESS: Final[dict[str, RelatedPerson]] = {role: RelatedPerson(role, "", None) for role in ROLES}


_RECORDS: dict[str, _Record] = {}
_RECORDS_MAX = 2048


def _record(entry_id: str, record: bytes) -> _Record:
    # Records are immutable signed bytes: equal bytes parse alike, whatever version they
    # came from, so a bounded memo is always correct (listed people are checked often).
    # It is found by entry id and used only when its bytes are equal to ``record`` (a
    # memcmp, cheaper than hashing the whole record as a dict key); a record that
    # changed in a new version (revoked ...) is parsed again and replaces it.
    r = _RECORDS.get(entry_id)
    if r is None or r.raw != record:
        r = _Record(record)
        if len(_RECORDS) >= _RECORDS_MAX:
            _RECORDS.clear()
        _RECORDS[entry_id] = r
    return r


_DOTS = str.maketrans({c: "·" for c in "•‧・∙⋅．.・"})


def _norm_name(name: str) -> str:
    """Names compared after NFKC, without whitespace, with one kind of middle dot."""
    return "".join(unicodedata.normalize("NFKC", name).translate(_DOTS).split())


def _names_differ(given: str | None, listed: object) -> bool:
    if not given or not isinstance(listed, str) or not listed:
        return False
    return given != listed and _norm_name(given) != _norm_name(listed)


def is_minor(role: str, birth_date: _dt.date, as_of: _dt.date) -> bool:
    """Whether a person born on ``birth_date`` is a minor on ``as_of`` (under 18).

    ``role`` (``"self"``, a role of :data:`ROLES`, or ``"officer:<role>"``) is accepted and
    checked but changes nothing, on purpose: a minor is never enforced against, whether
    listed (法释〔2017〕7号: 被执行人是未成年人的，不得纳入失信名单) or recorded as a listed
    company's legal representative, actual controller, officer ... (a minor holds no such
    post under the law, so such a record is a data error). The caller passes the birth
    date from the ID number it holds (``identifiers.id_number_info``); ``as_of`` is the
    earlier of the listing's publication date and today (a minor on either date).
    """
    if (
        role != "self"
        and role not in ROLES
        and not (role.startswith("officer:") and role[8:] in ROLES)
    ):
        raise InvalidInput(f"unknown relation {role!r}")
    years = (
        as_of.year
        - birth_date.year
        - ((as_of.month, as_of.day) < (birth_date.month, birth_date.day))
    )
    return years < 18


def _was_minor(id_number: str, published_compact: str) -> bool:
    """True when the holder of ``id_number`` was under 18 on the date YYYYMMDD.

    The 18th birthday as YYYYMMDD compared as text: someone born on 29 February is of age
    on 1 March of a common year, exactly as completed-years arithmetic says.
    """
    if len(published_compact) != 8:
        return False
    return published_compact < _adult_on_of(id_number)


def _adult_on_of(id_number: str) -> str:
    """The 18th birthday of the holder of a valid ``id_number``, as YYYYMMDD text."""
    # birth years of valid ID numbers have four digits, and so has the year + 18
    return str(int(id_number[6:10]) + 18) + id_number[10:14]


def decide(
    measure: Measure,
    probes: Sequence[Probe],
    hits: Sequence[HitLike],
    *,
    list_version: int,
    stale: bool,
    stale_action: Literal["review", "block"],
    now: _dt.datetime,
) -> Decision:
    """Apply the rules to the ``hits`` of ``probes`` (see :class:`HitLike`: the store's
    hits as they are).

    ``now`` must be timezone-aware; expiry is judged on its date in China.
    """
    if len(probes) == 1 and len(hits) == 1:
        return _decide_one(measure, probes[0], hits[0], list_version, stale, stale_action, now)
    tally = _count_hits(measure, _probes_by_key(probes), hits, now)
    return _decision_of(tally, measure, list_version, stale, stale_action, now)


def decide_own(  # noqa: PLR0917 - internal, positional on the hot path
    measure: Measure,
    probe: Probe,
    hits: Sequence[HitLike],
    list_version: int,
    stale: bool,
    stale_action: Literal["review", "block"],
    now: _dt.datetime,
) -> Decision:
    """:func:`decide` of a subject's one ``probe`` (its own key: a Person, or an Entity
    without officers, as :func:`own_probe` makes it) and the ``hits`` of that key.

    The same rules (:func:`_not_counted`, :func:`_match`); the common case, one hit that
    counts, is written out here with as few calls as it takes: on check()'s hit path,
    each Python call costs about a microsecond of a ~40 us budget (measured).
    """
    key = probe.key
    if len(hits) != 1:
        tally = _count_hits(measure, {key: (probe,)}, hits, now)
        return _decision_of(tally, measure, list_version, stale, stale_action, now)
    hit = hits[0]
    record = hit.record
    r = _RECORDS.get(hit.entry_id)  # _record(), its memo read here
    if r is None or r.raw != record:
        r = _Record(record)
        if len(_RECORDS) >= _RECORDS_MAX:
            _RECORDS.clear()
        _RECORDS[hit.entry_id] = r
    relation = hit.relation
    if hit.key != key or _not_counted(measure, r, relation, relation, probe, now) is not None:
        return _decide_one(measure, probe, hit, list_version, stale, stale_action, now)
    match = _match(r, relation, relation, probe, key)
    action: Action = measure.action
    if stale and action == "block" and stale_action == "review":
        action = "review"
    d: Decision = _new(Decision)
    d.__dict__.update(  # as _make_decision
        action=action,
        measure=measure.code,
        matches=(match,),
        reasons=_LISTED_REASONS[match.name_mismatch, stale],
        stale=stale,
        list_version=list_version,
        checked_at=now,
        measure_title=measure.title,
        data_errors=(),
        ignored=(),
    )
    return d


def _probes_by_key(probes: Sequence[Probe]) -> Mapping[bytes, Sequence[Probe]]:
    """Which probes each key is (several for an entity with officers)."""
    if len(probes) == 1:
        return {probes[0].key: probes}
    by_key: dict[bytes, list[Probe]] = {}
    for p in probes:
        by_key.setdefault(p.key, []).append(p)
    return by_key


_Tally = tuple[list[Match], list[Ignored], list[str], set[str]]
"""What the hits of one decision came to: counted matches, ignored hits (and why),
entry ids of minors' listings, and the reasons seen (a plain tuple: built per decide)."""


def _count_hits(
    measure: Measure,
    by_key: Mapping[bytes, Sequence[Probe]],
    hits: Sequence[HitLike],
    now: _dt.datetime,
) -> _Tally:
    """Each hit for each probe whose key it is: counted, or ignored with the reason; once
    per entry and relation, however many keys lead there."""
    matches: list[Match] = []
    ignored: list[Ignored] = []
    data_errors: list[str] = []
    reasons: set[str] = set()
    seen: set[tuple[str, str]] = set()
    for hit in hits:
        stored_relation = hit.relation
        for probe in by_key.get(hit.key, ()):
            if probe.officer_role is None:
                relation = stored_relation
            elif stored_relation == "self":
                relation = "officer:" + probe.officer_role
            else:
                continue  # the officer is only *related* to another listed entity
            r = _record(hit.entry_id, hit.record)
            if (r.entry_id, relation) in seen:
                continue
            seen.add((r.entry_id, relation))
            why = _not_counted(measure, r, relation, stored_relation, probe, now)
            if why is not None:
                ignored.append(Ignored(r.entry_id, relation, why))
                reasons.add(why)
                if why == MINOR_NOT_ENFORCED:
                    data_errors.append(r.entry_id)
                continue
            match = _match(r, relation, stored_relation, probe, hit.key)
            if match.name_mismatch:
                reasons.add(NAME_MISMATCH)
            matches.append(match)
    return matches, ignored, data_errors, reasons


def _decision_of(  # noqa: PLR0917 - internal, called once per decide()
    tally: _Tally,
    measure: Measure,
    list_version: int,
    stale: bool,
    stale_action: Literal["review", "block"],
    now: _dt.datetime,
) -> Decision:
    """The measure's action if anything counted (a block downgraded when stale and so
    configured), reasons in the order of :data:`REASONS`, matches/ignored by entry."""
    matches, ignored, data_errors, reasons = tally
    action: Action = "allow"
    if matches:
        reasons.add(LISTED)
        action = measure.action
    if stale:
        reasons.add(STALE)
        if action == "block" and stale_action == "review":
            action = "review"
    if len(matches) > 1:
        matches.sort(key=_match_order)
    if len(ignored) > 1:
        ignored.sort(key=_ignored_order)
    return _make_decision(
        action,
        measure,
        tuple(matches),
        # in the order of REASONS (a sort of one or two items, cheaper than a scan of all)
        tuple(sorted(reasons, key=_REASON_ORDER.__getitem__)) if len(reasons) > 1 else (*reasons,),
        stale,
        list_version,
        now,
        tuple(dict.fromkeys(data_errors)) if data_errors else (),
        tuple(ignored) if ignored else (),
    )


def _decide_one(  # noqa: PLR0917 - internal, positional on the hot path
    measure: Measure,
    probe: Probe,
    hit: HitLike,
    list_version: int,
    stale: bool,
    stale_action: Literal["review", "block"],
    now: _dt.datetime,
) -> Decision:
    """:func:`decide` for one probe and one hit (a check() that hits): the same rules,
    without the bookkeeping several hits need (which probes a key is, repeats, sorting)."""
    key = hit.key
    stored_relation = hit.relation
    if key != probe.key or (probe.officer_role is not None and stored_relation != "self"):
        reasons: tuple[str, ...] = _STALE_ONLY if stale else _NO_REASONS
        return _make_decision("allow", measure, (), reasons, stale, list_version, now)
    relation = stored_relation if probe.officer_role is None else "officer:" + probe.officer_role
    r = _record(hit.entry_id, hit.record)
    why = _not_counted(measure, r, relation, stored_relation, probe, now)
    if why is not None:
        return _make_decision(
            "allow",
            measure,
            (),
            (why, STALE) if stale else (why,),
            stale,
            list_version,
            now,
            (r.entry_id,) if why == MINOR_NOT_ENFORCED else (),
            (Ignored(r.entry_id, relation, why),),
        )
    match = _match(r, relation, stored_relation, probe, key)
    action: Action = measure.action
    if stale and action == "block" and stale_action == "review":
        action = "review"
    return _make_decision(
        action,
        measure,
        (match,),
        _LISTED_REASONS[match.name_mismatch, stale],
        stale,
        list_version,
        now,
    )


#: The reasons of one counted match, by (name mismatch, stale), in the order of REASONS.
_LISTED_REASONS: Final = {
    (False, False): (LISTED,),
    (True, False): (LISTED, NAME_MISMATCH),
    (False, True): (LISTED, STALE),
    (True, True): (LISTED, NAME_MISMATCH, STALE),
}


_EPOCH: Final = _dt.date(1970, 1, 1)
_today: tuple[int, str, str] = (-1, "", "")


def _china_day(now: _dt.datetime) -> tuple[int, str, str]:
    """``(day number, YYYY-MM-DD, YYYYMMDD)`` of the date in China at ``now`` (cached)."""
    global _today
    day = int((now.timestamp() + _CHINA_OFFSET_S) // 86400)
    cached = _today  # one tuple: read and replaced atomically
    if cached[0] != day:
        iso = (_EPOCH + _dt.timedelta(days=day)).isoformat()
        cached = _today = (day, iso, iso.replace("-", ""))
    return cached


def china_date(now: _dt.datetime) -> str:
    """The calendar date in China (UTC+8) at ``now``, as YYYY-MM-DD (cached per day).

    List dates (``valid_until``, ``published_at``) are Chinese calendar dates, so a term
    ends at midnight in China whatever the server's time zone.
    """
    return _china_day(now)[1]


def _match_order(m: Match) -> tuple[str, str]:
    return (m.entry_id, m.relation)


def _ignored_order(i: Ignored) -> tuple[str, str]:
    return (i.entry_id, i.relation)


def _not_counted(  # noqa: PLR0917 - internal helper of decide()
    measure: Measure,
    r: _Record,
    relation: str,
    stored_relation: str,
    probe: Probe,
    now: _dt.datetime,
) -> str | None:
    """Why this hit does not count, or ``None`` when it does (the date in China at
    ``now`` is only computed for an entry with a ``valid_until``)."""
    if r.status != "active":
        return REVOKED if r.status == "revoked" else DELETED
    person = probe.person
    today: tuple[int, str, str] | None = None
    # Minors are never enforced against, in any role (listed debtor, legal representative,
    # actual controller, officer ...): minor on the listing's date, or still minor today.
    if person is not None:
        today = _today  # _china_day(now), without the call when the day is cached
        if today[0] != int((now.timestamp() + _CHINA_OFFSET_S) // 86400):
            today = _china_day(now)
        adult_on = person._adult_on  # as _was_minor: the 18th birthday compared as text
        published = r.published_compact
        if today[2] < adult_on or (len(published) == 8 and published < adult_on):
            return MINOR_NOT_ENFORCED
    measures = r.measures
    if measure.code not in measures and "*" not in measures:
        return MEASURE_NOT_COVERED
    if r.valid_until is not None and r.valid_until < (today or _china_day(now))[1]:
        return EXPIRED
    # "self" is the common case: the same answer as applies_to, without its checks
    if not (("self" in measure.relations) if relation == "self" else measure.applies_to(relation)):
        return RELATION_NOT_COVERED
    return None


def _match(
    r: _Record,
    relation: str,
    stored_relation: str,
    probe: Probe,
    key: bytes,
) -> Match:
    rec = r.rec
    listed_name = rec.get("name")
    matched_person: str | None = None
    compare_with: object = listed_name
    if stored_relation != "self":
        # Site format 2 names only the legal representative among related persons; the
        # relation comes from the wrap the identifier opened (decision 0011).
        for rel in rec.get("related") or ():
            if isinstance(rel, dict) and rel.get("role") == stored_relation:
                matched_person = rel.get("name")
                break
        compare_with = matched_person
    person = probe.person
    if stored_relation == "self" and person is not None:
        # the record carries no masked ID: the one in hand is masked (it matched)
        masked: object = mask_identifier(person.id_number)
    else:
        masked = rec.get("uscc") or rec.get("org_code")
    m: Match = _new(Match)
    m.__dict__.update(  # see _make_decision: same frozen Match, without per-field setattr
        entry_id=r.entry_id,
        case_no=str(rec.get("case_no", "")),
        court=str(rec.get("court", "")),
        relation=relation,
        name=str(listed_name or ""),
        masked_id=masked if isinstance(masked, str) else None,
        obligation=str(rec.get("obligation", "")),
        unperformed_amount=str(rec.get("unperformed_amount", "")),
        published_at=r.published,
        subject_type=str(rec.get("subject_type", "")),
        valid_until=r.valid_until,
        matched_person=matched_person,
        name_mismatch=_names_differ(probe.name, compare_with) if probe.name else False,
        related=r.related,
    )
    return m


def strongest(actions: Iterable[str]) -> Action:
    """The strongest of ``actions`` (block > review > monitor > allow)."""
    best: Action = "allow"
    for a in actions:
        if _STRENGTH[a] > _STRENGTH[best]:
            best = a  # type: ignore[assignment]
    return best


# -- the notice -----------------------------------------------------------------------------


def _relation_text(m: Match) -> str:
    if m.relation == "self":
        who = "您" if m.subject_type == "person" else "贵单位"
        return f"{who}（{m.name}）已被列入失信被执行人名单"
    if m.relation.startswith("officer:"):
        role = ROLE_TITLES.get(m.relation[8:], m.relation[8:])
        return f"贵单位{role}{m.name}已被列入失信被执行人名单"
    role = ROLE_TITLES.get(m.relation, m.relation)
    return f"您系失信被执行人{m.name}的{role}"


def notice_text(
    decision: Decision, unit_name: str | None = None, jurisdiction: str | None = None
) -> str:
    """The Chinese notice a clerk shows the person when a measure restricts them.

    It says what is restricted (the measure), on which listing (case number, enforcing
    court, debtor, unperformed amount, publication date) and how to object, by the rule
    of ``jurisdiction`` (:mod:`~intercept_sdk._protocol.jurisdictions`; default the SPC's
    national rule: correction by the enforcing court within 15 days, then 复议; Jiangsu and
    Huai'an: apply within 10 days, review within 3 days, then 复议), the listing staying in
    force meanwhile; and 复核 of this measure with the unit that applied it (``unit_name``,
    default 本单位). An unknown jurisdiction raises :class:`ConfigurationError`.
    """
    rule = objection_rule(jurisdiction)
    unit = unit_name or "本单位"
    lines = [
        f"根据失信被执行人联合惩戒的有关规定，{unit}对您采取以下措施：{decision.measure_title}。"
    ]
    for m in decision.matches:
        lines.append(
            f"{_relation_text(m)}。案号：{m.case_no}；执行法院：{m.court}；"
            f"未履行金额：{m.unperformed_amount}元；发布日期：{m.published_at}。"
        )
    courts = "、".join(dict.fromkeys(m.court for m in decision.matches)) or "执行法院"
    lines.append(
        f"{rule.objection_sentence(courts)}；"
        f"如对本次限制措施有异议，可向{unit}申请复核。"
        "履行义务或失信信息被删除、撤销后，限制随之解除。"
    )
    if decision.stale:
        lines.append("（提示：本地名单未及时更新，本决定须经人工复核。）")
    return "\n".join(lines)
