"""The measure catalog: every restriction the seed policy documents impose on a listed debtor.

A list entry names the measures that apply to it by code (``"travel.flight"``,
``"finance.credit"`` ...). This module is the single place those codes are defined, so
that the SDK, the platform and the notices agree on what a code means, who it reaches
and what the integrator must do.

The catalog ships as package data (``intercept_sdk/data/measures.json``) and is read with
:mod:`importlib.resources`, so it works from a wheel, a zip or an editable install without
touching the network or the working directory. It is parsed and validated once per process
and cached; every object handed out is immutable, so callers may keep and share them.

Guarantees, checked when the catalog is loaded (a catalog that breaks one is a packaging
bug, reported as :class:`RuntimeError` on first use rather than silently half-loaded):

* codes are unique, lower snake case ``category.name``, and the category prefix is a
  category the catalog declares;
* ``action`` is ``block`` (the seeds say 限制/禁止/不得), ``review`` (从严审核/审慎性参考/
  作为参考) or ``monitor`` (重点监管/提高抽查比例);
* ``relations`` only uses ``self``, the role names of :data:`ROLES` and ``officer``, and
  ``officer_roles`` is non-empty exactly when ``officer`` is among the relations;
* every measure cites the seed file and a verbatim passage (at most 200 characters) that it
  was taken from, so a notice can quote its legal basis (two consumption measures of the
  SPC rules that no seed names cite ``DOMAIN.md``, the project's digest of those rules);
* ``trigger`` says whether the listing alone sets the measure off or only a court's
  assistance notice does (see :data:`TRIGGERS`).

``docs/legal.md`` maps every seed rule to the measure, entry rule or notice that implements
it and to the test that pins it.
"""

from __future__ import annotations

import difflib
import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from types import MappingProxyType
from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .._exceptions import InvalidInput, UnknownMeasure
from .names import pydantic_pattern

__all__ = [
    "ACTIONS",
    "KEY_RELATIONS",
    "RELATIONS",
    "ROLES",
    "ROLE_TITLES",
    "TRIGGERS",
    "Action",
    "Measure",
    "Relation",
    "Role",
    "Trigger",
    "get_measure",
    "measure_codes",
    "measures",
]

#: What the integrator is asked to do when a measure hits.
Action = Literal["block", "review", "monitor"]
ACTIONS: tuple[Action, ...] = ("block", "review", "monitor")

#: What sets a measure off: the listing itself (``listing``, the default: the entry naming
#: the measure is enough), or a court's assistance notice about this debtor
#: (``court_notice``: the seeds tie e.g. 停止建设审批 and 动产抵押登记 to 协助执行通知书, so
#: a platform names such a measure in an entry only once the court has sent that notice).
Trigger = Literal["listing", "court_notice"]
TRIGGERS: tuple[Trigger, ...] = get_args(Trigger)

#: Roles a person can hold towards a listed entity: the ``role`` of an entry's related
#: persons, of a client's declared officers, and what a measure's relations name. This
#: Literal is the one definition of the role list; :data:`ROLES` is read from it.
Role = Literal[
    "legal_rep",
    "principal",
    "actual_controller",
    "responsible_person",
    "director",
    "supervisor",
    "senior_manager",
]
#: The roles, in their fixed order. The order is part of the client's cache format
#: (see :data:`KEY_RELATIONS`): new roles go at the end, none is ever removed or moved.
ROLES: tuple[Role, ...] = get_args(Role)

#: Whom a measure reaches: the listed subject itself, a person holding a role in a listed
#: entity, or (``officer``) an entity one of whose officers is a listed person.
Relation = Literal["self", Role, "officer"]
RELATIONS: tuple[Relation, ...] = get_args(Relation)

#: How an identifier stands in a sealed record: the record's own subject (``self``: the
#: debtor's ID number or organisation code) or a related person holding a role. Each wrap
#: of a sealed record carries the index of its relation in this tuple (site format 2,
#: :mod:`~intercept_sdk._protocol.sealing`), so its order is fixed (``self`` first, then
#: :data:`ROLES` in order; new roles go at the end).
KEY_RELATIONS: tuple[str, ...] = ("self", *ROLES)

#: The Chinese title of each role, as notices and reports name it.
ROLE_TITLES: Mapping[str, str] = MappingProxyType(
    {
        "legal_rep": "法定代表人",
        "principal": "主要负责人",
        "actual_controller": "实际控制人",
        "responsible_person": "影响债务履行的直接责任人员",
        "director": "董事",
        "supervisor": "监事",
        "senior_manager": "高级管理人员",
    }
)

_OFFICER_PREFIX = "officer:"
_MAX_PASSAGE = 200
_CATEGORY_PATTERN = r"[a-z][a-z0-9_]*"
_CODE_PATTERN = pydantic_pattern(rf"{_CATEGORY_PATTERN}\.{_CATEGORY_PATTERN}")
_CATEGORY_RE = re.compile(_CATEGORY_PATTERN)


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, strict=True, extra="forbid")


def _no_duplicates(field: str, values: tuple[str, ...]) -> None:
    seen: set[str] = set()
    for value in values:
        if value in seen:
            raise ValueError(f"{field} lists {value!r} twice")
        seen.add(value)


class Measure(_Frozen):
    """One restriction, as the seeds word it, with whom it reaches and who enforces it.

    ``relations`` decides who is hit when an entry carries this measure:

    * ``"self"`` - the listed person or entity itself;
    * a role name (``"legal_rep"`` ...) - a person recorded with that role in a listed
      entity's ``related`` persons (e.g. the legal representative of a listed company may
      not fly);
    * ``"officer"`` - an entity one of whose declared officers, holding a role in
      ``officer_roles``, is a listed person (e.g. a company whose director is listed is a
      key supervision target).

    ``source_passage`` is copied verbatim from ``source_seed``, including any line break or
    stray space the seed document has in mid-sentence; collapse whitespace before showing it.
    """

    code: str = Field(pattern=_CODE_PATTERN)
    title: str = Field(min_length=1)
    category: str = Field(min_length=1)
    category_title: str = Field(min_length=1)
    action: Action
    relations: tuple[Relation, ...] = Field(min_length=1)
    officer_roles: tuple[Role, ...]
    departments: tuple[str, ...] = Field(min_length=1)
    source_seed: str = Field(min_length=1)
    source_passage: str = Field(min_length=1, max_length=_MAX_PASSAGE)
    trigger: Trigger = "listing"

    @model_validator(mode="after")
    def _consistent(self) -> Measure:
        if self.code.split(".", 1)[0] != self.category:
            raise ValueError(f"code {self.code!r} does not start with category {self.category!r}")
        _no_duplicates("relations", self.relations)
        _no_duplicates("officer_roles", self.officer_roles)
        _no_duplicates("departments", self.departments)
        if ("officer" in self.relations) != bool(self.officer_roles):
            raise ValueError(
                "officer_roles must be non-empty exactly when relations include 'officer'"
            )
        if any(not d.strip() for d in self.departments):
            raise ValueError("departments must not contain blank names")
        return self

    def applies_to(self, relation: str) -> bool:
        """Whether this measure reaches a subject standing in ``relation`` to a listing.

        ``relation`` is ``"self"``, a role name from :data:`ROLES` (a person holding that
        role in a listed entity), or ``"officer:<role>"`` (an entity whose officer with that
        role is listed; true iff ``"officer"`` is in ``relations`` and the role is in
        ``officer_roles``).

        Anything else raises :class:`~intercept_sdk.InvalidInput` instead of answering
        ``False``: a misspelt relation must not quietly let a restricted subject through.
        """
        if relation.startswith(_OFFICER_PREFIX):
            role = relation[len(_OFFICER_PREFIX) :]
            if role not in ROLES:
                raise InvalidInput(
                    f"unknown officer role {role!r} in relation {relation!r}; "
                    f"expected one of {', '.join(ROLES)}"
                )
            return "officer" in self.relations and role in self.officer_roles
        if relation == "self" or relation in ROLES:
            return relation in self.relations
        raise InvalidInput(
            f"unknown relation {relation!r}; expected 'self', a role "
            f"({', '.join(ROLES)}) or 'officer:<role>'"
        )


class _RawSource(_Frozen):
    seed: str
    passage: str


class _RawMeasure(_Frozen):
    code: str
    title: str
    category: str
    action: Action
    relations: tuple[Relation, ...]
    officer_roles: tuple[Role, ...]
    departments: tuple[str, ...]
    source: _RawSource
    trigger: Trigger = "listing"


class _RawCatalog(_Frozen):
    version: Literal[1]
    categories: dict[str, str]
    measures: tuple[_RawMeasure, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _consistent(self) -> _RawCatalog:
        for key, title in self.categories.items():
            if not _CATEGORY_RE.fullmatch(key) or not title.strip():
                raise ValueError(f"bad category {key!r}: {title!r}")
        seen: set[str] = set()
        for m in self.measures:
            if m.code in seen:
                raise ValueError(f"measure code {m.code!r} appears twice")
            seen.add(m.code)
            if m.category not in self.categories:
                raise ValueError(f"measure {m.code!r} uses undeclared category {m.category!r}")
        return self


@dataclass(frozen=True)
class _Catalog:
    measures: tuple[Measure, ...]
    by_code: Mapping[str, Measure]
    codes: frozenset[str]


def _build(raw: _RawCatalog) -> _Catalog:
    items = tuple(
        Measure(
            code=m.code,
            title=m.title,
            category=m.category,
            category_title=raw.categories[m.category],
            action=m.action,
            relations=m.relations,
            officer_roles=m.officer_roles,
            departments=m.departments,
            source_seed=m.source.seed,
            source_passage=m.source.passage,
            trigger=m.trigger,
        )
        for m in raw.measures
    )
    by_code = MappingProxyType({m.code: m for m in items})
    return _Catalog(measures=items, by_code=by_code, codes=frozenset(by_code))


@functools.lru_cache(maxsize=1)
def _catalog() -> _Catalog:
    resource = resources.files("intercept_sdk").joinpath("data").joinpath("measures.json")
    try:
        text = resource.read_text(encoding="utf-8")
        return _build(_RawCatalog.model_validate_json(text))
    except (OSError, UnicodeDecodeError, ValidationError) as exc:
        raise RuntimeError(
            f"the packaged measure catalog intercept_sdk/data/measures.json is unusable "
            f"(broken installation): {exc}"
        ) from exc


def measures() -> tuple[Measure, ...]:
    """Every measure in the catalog, in file order (grouped by category).

    The same tuple is returned on every call; it and its items are immutable.
    """
    return _catalog().measures


def measure_codes() -> frozenset[str]:
    """The set of valid measure codes (what an entry's ``measures`` may name)."""
    return _catalog().codes


def get_measure(code: str) -> Measure:
    """The measure with this exact code.

    Raises :class:`~intercept_sdk.UnknownMeasure` for any other value; the message names
    the code and, when there are any, the closest known codes (a typo such as
    ``"travel.flights"`` gets ``did you mean 'travel.flight'?``).
    """
    cat = _catalog()
    if not isinstance(code, str):
        raise UnknownMeasure(f"measure code must be a string, got {type(code).__name__}")
    found = cat.by_code.get(code)
    if found is not None:
        return found
    close = difflib.get_close_matches(code, [m.code for m in cat.measures], n=3, cutoff=0.6)
    message = f"unknown measure code {code!r}"
    if close:
        message += "; did you mean " + " or ".join(repr(c) for c in close) + "?"
    else:
        message += f"; the catalog has {len(cat.codes)} codes, see measure_codes()"
    raise UnknownMeasure(message)
