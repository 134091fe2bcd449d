"""Subjects, decisions, and the rules that turn store hits into an action.

Rules (see the decisions issue and the seed documents):

* Identifiers decide; names never block. A person is matched by ID number (a 15-digit ID
  matches its 18-digit form, since both normalise alike); an entity by its organisation
  code, given or embedded in the USCC, so USCC and organisation-code queries meet.
* Relations: ``self`` (the subject is the listed debtor); ``legal_rep``, ``principal``,
  ``actual_controller``, ``responsible_person`` ... (a person recorded with that role in a
  listed entity); ``officer:<role>`` (an Entity whose declared officer is listed). Which
  relations a measure covers comes from the catalog.
* An entry counts only when active, covering the measure, not past ``valid_until`` (offline
  too), and not a listing of a minor (never enforced; reported as a data error).
* The action is the strongest among counted matches: block > review > monitor > allow.
* When the list is stale a block is downgraded (by default) to review, reason ``stale``.

This module is pure: no I/O. The client feeds it store hits and the clock.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import pydantic_core

from ._catalog import Measure
from ._exceptions import FormatError, InvalidInput
from ._identifiers import normalize_id_number, normalize_org_code, normalize_uscc
from ._models import ROLES

__all__ = [
    "Action",
    "Decision",
    "Entity",
    "Match",
    "Officer",
    "Person",
    "Subject",
    "decide",
]

Action = Literal["block", "review", "monitor", "allow"]
_STRENGTH: dict[str, int] = {"allow": 0, "monitor": 1, "review": 2, "block": 3}


@dataclass(frozen=True, slots=True)
class Person:
    """A natural person, identified by resident ID number (validated on construction)."""

    id_number: str
    name: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "id_number", normalize_id_number(self.id_number))

    def __repr__(self) -> str:  # never print a full ID number in logs or tracebacks
        masked = self.id_number[:4] + "**********" + self.id_number[-4:]
        return f"Person(id_number={masked!r}, name={self.name!r})"

    @property
    def birth_date(self) -> _dt.date:
        n = self.id_number
        return _dt.date(int(n[6:10]), int(n[10:12]), int(n[12:14]))

    def age_on(self, day: _dt.date) -> int:
        b = self.birth_date
        return day.year - b.year - ((day.month, day.day) < (b.month, b.day))


@dataclass(frozen=True, slots=True)
class Officer:
    """A person holding a role in an Entity (legal representative, director, ...)."""

    role: str
    person: Person

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise InvalidInput(f"officer role {self.role!r} is not one of {', '.join(ROLES)}")
        if not isinstance(self.person, Person):
            raise InvalidInput("officer person must be a Person")


@dataclass(frozen=True, slots=True)
class Entity:
    """An organisation, identified by USCC and/or organisation code (at least one)."""

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
        officers = tuple(self.officers)
        for o in officers:
            if not isinstance(o, Officer):
                raise InvalidInput("officers must be Officer(role, Person) objects")
        object.__setattr__(self, "uscc", uscc)
        object.__setattr__(self, "org_code", org)
        object.__setattr__(self, "officers", officers)

    @property
    def effective_org_code(self) -> str:
        return self.org_code if self.org_code is not None else str(self.uscc)[8:17]


Subject = Person | Entity


@dataclass(frozen=True)
class Match:
    """One list entry that matched the subject, with what a clerk needs to see."""

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
    matched_person: str | None = None  # for role/officer relations: whose ID matched

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


@dataclass(frozen=True)
class Decision:
    """The answer for one subject and one measure. Never contains a plaintext ID."""

    action: Action
    measure: str
    matches: tuple[Match, ...]
    reasons: tuple[str, ...]
    stale: bool
    list_version: int
    checked_at: _dt.datetime
    measure_title: str = ""
    data_errors: tuple[str, ...] = field(default=(), repr=False)  # entry ids not enforced

    @property
    def blocked(self) -> bool:
        return self.action == "block"

    def to_dict(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "measure": self.measure,
            "measure_title": self.measure_title,
            "matches": [m.to_dict() for m in self.matches],
            "reasons": list(self.reasons),
            "stale": self.stale,
            "list_version": self.list_version,
            "checked_at": self.checked_at.isoformat(),
        }


@dataclass(frozen=True, slots=True)
class Probe:
    """One identifier key to look up, and what a hit on it would mean."""

    key: bytes
    kind: Literal["person", "entity"]
    person: Person | None  # the person whose ID the key is (for minors / names)
    officer_role: str | None = None  # set when the person is an Entity's officer
    name: str | None = None


def probes_for(subject: Subject, person_key: Any, org_key: Any) -> list[Probe]:
    """Keys to look up for ``subject``. ``person_key``/``org_key`` map a value to a key."""
    if isinstance(subject, Person):
        return [Probe(person_key(subject.id_number), "person", subject, None, subject.name)]
    out = [Probe(org_key(subject.effective_org_code), "entity", None, None, subject.name)]
    for o in subject.officers:
        out.append(Probe(person_key(o.person.id_number), "person", o.person, o.role, o.person.name))
    return out


def _parse(record: bytes) -> Mapping[str, Any]:
    try:
        obj = pydantic_core.from_json(record)
    except ValueError:
        raise FormatError("a stored record is not JSON") from None
    if not isinstance(obj, dict):
        raise FormatError("a stored record is not a JSON object")
    return obj


def decide(
    measure: Measure,
    probes: Sequence[Probe],
    hits: Iterable[tuple[Probe, str, bytes]],
    *,
    list_version: int,
    stale: bool,
    stale_action: Literal["review", "block"],
    now: _dt.datetime,
) -> Decision:
    """Apply the rules to the hits of ``probes`` (each hit: probe, relation, record)."""
    today = now.date()
    matches: list[Match] = []
    reasons: list[str] = []
    data_errors: list[str] = []
    seen: set[tuple[str, str]] = set()
    for probe, stored_relation, record in hits:
        rec = _parse(record)
        entry_id = str(rec.get("entry_id"))
        # Which relation does this hit mean for the *subject*?
        if probe.officer_role is not None:
            if stored_relation != "self":
                continue  # an officer who is only related to another listed entity
            relation = f"officer:{probe.officer_role}"
        else:
            relation = stored_relation
        if (entry_id, relation) in seen:
            continue
        seen.add((entry_id, relation))
        if rec.get("status", "active") != "active":
            reasons.append(f"{rec.get('status')}_entry:{entry_id}")
            continue
        codes = rec.get("measures") or ()
        if "*" not in codes and measure.code not in codes:
            reasons.append(f"measure_not_covered:{entry_id}")
            continue
        valid_until = rec.get("valid_until")
        if isinstance(valid_until, str) and valid_until < today.isoformat():
            reasons.append(f"expired_entry:{entry_id}")
            continue
        if not measure.applies_to(relation):
            reasons.append(f"relation_not_covered:{relation}:{entry_id}")
            continue
        published = str(rec.get("published_at", ""))
        if probe.person is not None and stored_relation == "self" and published:
            try:
                age = probe.person.age_on(_dt.date.fromisoformat(published))
            except ValueError:
                age = 18
            if age < 18:
                reasons.append(f"minor_entry_not_enforced:{entry_id}")
                data_errors.append(entry_id)
                continue
        # Name check: names never block, but a difference is worth a look.
        listed_name = rec.get("name")
        matched_person = None
        if stored_relation != "self":
            for rel in rec.get("related") or ():
                if rel.get("role") == stored_relation:
                    matched_person = rel.get("name")
                    break
            listed_name_for_probe = matched_person
        else:
            listed_name_for_probe = listed_name
        if probe.name and listed_name_for_probe and probe.name != listed_name_for_probe:
            reasons.append(f"name_mismatch:{entry_id}")
        masked = rec.get("id_masked") or rec.get("uscc") or rec.get("org_code")
        matches.append(
            Match(
                entry_id=entry_id,
                case_no=str(rec.get("case_no", "")),
                court=str(rec.get("court", "")),
                relation=relation,
                name=str(listed_name or ""),
                masked_id=masked,
                obligation=str(rec.get("obligation", "")),
                unperformed_amount=str(rec.get("unperformed_amount", "")),
                published_at=published,
                subject_type=str(rec.get("subject_type", "")),
                valid_until=valid_until if isinstance(valid_until, str) else None,
                matched_person=matched_person
                or (probe.person.name if probe.officer_role and probe.person else None),
            )
        )
    action: Action = measure.action if matches else "allow"
    if matches:
        reasons.insert(0, "listed")
    if stale:
        reasons.append("stale")
        if action == "block" and stale_action == "review":
            action = "review"
    return Decision(
        action=action,
        measure=measure.code,
        matches=tuple(matches),
        reasons=tuple(reasons),
        stale=stale,
        list_version=list_version,
        checked_at=now,
        measure_title=measure.title,
        data_errors=tuple(data_errors),
    )


def strongest(actions: Iterable[str]) -> Action:
    """The strongest of ``actions`` (block > review > monitor > allow)."""
    best = "allow"
    for a in actions:
        if _STRENGTH[a] > _STRENGTH[best]:
            best = a
    return best  # type: ignore[return-value]


def notice_text(decision: Decision, unit_name: str | None = None) -> str:
    """The Chinese notice a clerk can show the person when a measure blocks them."""
    lines = [f"根据失信被执行人联合惩戒规定，您被限制：{decision.measure_title}。"]
    for m in decision.matches:
        who = (
            "本人"
            if m.relation == "self"
            else f"关联关系（{_REL_TITLES.get(m.relation, m.relation)}）"
        )
        lines.append(
            f"案号：{m.case_no}；执行法院：{m.court}；被执行人：{m.name}；{who}；"
            f"未履行金额：{m.unperformed_amount}元；发布日期：{m.published_at}。"
        )
    unit = unit_name or "本单位"
    lines.append(
        "如对失信信息有异议，可向执行法院书面申请纠正；"
        f"如对本次限制措施有异议，可向{unit}申请复核。"
        "履行义务后，法院将依法删除失信信息，限制随之解除。"
    )
    if decision.stale:
        lines.append("（提示：本地名单未及时更新，本决定需人工复核。）")
    return "\n".join(lines)


_REL_TITLES = {
    "legal_rep": "法定代表人",
    "principal": "主要负责人",
    "actual_controller": "实际控制人",
    "responsible_person": "直接责任人员",
    "director": "董事",
    "supervisor": "监事",
    "senior_manager": "高级管理人员",
    **{
        f"officer:{r}": f"本单位{t}被列入名单"
        for r, t in [
            ("legal_rep", "法定代表人"),
            ("principal", "主要负责人"),
            ("actual_controller", "实际控制人"),
            ("responsible_person", "直接责任人员"),
            ("director", "董事"),
            ("supervisor", "监事"),
            ("senior_manager", "高级管理人员"),
        ]
    },
}
