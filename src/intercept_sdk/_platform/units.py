"""Enforcing units (执行单位) as records: who a subscriber is, and what it must enforce.

Why records: the policy texts make each unit accountable through its responsible
department (责任部门) and region, for the measures it enforces. A key pair says only that a
report came from a subscriber; the unit record says which department answers for it and
which measures it may report on, so report intake can flag a report on a measure the unit
does not enforce and the statistics can be grouped the way a 通报 is written.

Storage: ``<keys>/subscribers/<id>.unit.json`` beside the subscriber's public keys (what
``intercept-sdk subscriber add --name ... --measures ...`` writes). Guarantees:

* A record on disk always validated when written: the id has the protocol's subscriber-id
  shape, name/department/region are 1..200 printable characters, ``measures`` is a
  non-empty list of distinct codes of the measure catalog. A file that does not validate
  when read raises :class:`ConfigurationError` naming the file (:func:`load_unit`) or is
  skipped with a warning (:func:`load_units`, used by a running server).
* Writes are atomic (temp file, fsync, rename) with mode 0600 in a 0700 directory.
* :func:`flag_report` is pure: it reads nothing and returns the reasons a report is
  inconsistent with its unit's record (empty when it is consistent).
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from .._exceptions import ConfigurationError
from .._protocol.catalog import measure_codes
from .._protocol.names import is_subscriber_id
from .._util import atomic_write, ensure_private_dir, format_utc, utcnow
from .keys import validate_subscriber_id

__all__ = [
    "UNIT_SUFFIX",
    "Unit",
    "flag_report",
    "list_subscribers",
    "load_unit",
    "load_units",
    "parse_measures",
    "remove_subscriber",
    "save_unit",
    "unit_path",
]

log = logging.getLogger("intercept_sdk.platform")

UNIT_SUFFIX: Final = ".unit.json"
_KEY_SUFFIXES: Final = (".ed25519.pem", ".x25519.pem")
_MAX_TEXT = 200
_MAX_FILE = 64 * 1024
_FIELDS: Final = frozenset(
    {"type", "id", "name", "department", "region", "measures", "created_at", "updated_at"}
)


@dataclass(frozen=True)
class Unit:
    """One enforcing unit: id (= subscriber id), name, department, region, measures."""

    id: str
    name: str
    department: str
    region: str
    measures: tuple[str, ...]
    created_at: str = ""
    updated_at: str = ""

    def __post_init__(self) -> None:
        reasons = _problems(self)
        if reasons:
            raise ConfigurationError(f"unit {self.id!r} is invalid: " + "; ".join(reasons))

    def enforces(self, measure: str) -> bool:
        """Whether ``measure`` is among the measures this unit enforces."""
        return measure in self.measures

    def to_json(self) -> dict[str, Any]:
        """The record's JSON form (what :func:`save_unit` writes)."""
        return {
            "type": "unit",
            "id": self.id,
            "name": self.name,
            "department": self.department,
            "region": self.region,
            "measures": list(self.measures),
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }

    @classmethod
    def from_json(cls, data: object, where: str = "unit record") -> Unit:
        """A validated unit from its JSON form; :class:`ConfigurationError` naming ``where``."""
        if not isinstance(data, Mapping) or data.get("type") != "unit":
            raise ConfigurationError(f"{where}: not a unit record (type must be 'unit')")
        extra = sorted(str(k) for k in data if k not in _FIELDS)
        if extra:
            raise ConfigurationError(f"{where}: unknown fields {', '.join(extra)}")
        measures = data.get("measures")
        if not isinstance(measures, list):
            raise ConfigurationError(f"{where}: measures must be a list of measure codes")
        try:
            return cls(
                id=data.get("id"),  # type: ignore[arg-type]  # checked in __post_init__
                name=data.get("name"),  # type: ignore[arg-type]
                department=data.get("department"),  # type: ignore[arg-type]
                region=data.get("region"),  # type: ignore[arg-type]
                measures=tuple(measures),
                created_at=str(data.get("created_at") or ""),
                updated_at=str(data.get("updated_at") or ""),
            )
        except ConfigurationError as exc:
            raise ConfigurationError(f"{where}: {exc}") from None


def _text_problem(field: str, value: object) -> str | None:
    if not isinstance(value, str) or not value.strip():
        return f"{field} must be non-empty text"
    if len(value) > _MAX_TEXT:
        return f"{field} must be at most {_MAX_TEXT} characters"
    if any(unicodedata.category(c).startswith("C") for c in value):
        return f"{field} must not contain control characters"
    return None


def _problems(unit: Unit) -> list[str]:
    reasons: list[str] = []
    if not is_subscriber_id(unit.id):
        reasons.append("id must be a subscriber id (letters, digits, . _ -; at most 64)")
    for field in ("name", "department", "region"):
        problem = _text_problem(field, getattr(unit, field))
        if problem:
            reasons.append(problem)
    if not unit.measures:
        reasons.append("a unit enforces at least one measure")
    known = measure_codes()
    unknown = [m for m in unit.measures if not isinstance(m, str) or m not in known]
    if unknown:
        reasons.append("measures not in the catalog: " + ", ".join(repr(m) for m in unknown[:5]))
    if len(set(unit.measures)) != len(unit.measures):
        reasons.append("measures must not repeat")
    return reasons


def parse_measures(text: str | Iterable[str]) -> tuple[str, ...]:
    """Measure codes from ``a,b c`` text (or an iterable), order kept, duplicates dropped."""
    items = text.replace(",", " ").split() if isinstance(text, str) else list(text)
    return tuple(dict.fromkeys(items))


def unit_path(keys_dir: Path | str, unit_id: str) -> Path:
    """``<keys_dir>/subscribers/<id>.unit.json`` (the id is validated first)."""
    validate_subscriber_id(unit_id)
    return Path(keys_dir) / "subscribers" / f"{unit_id}{UNIT_SUFFIX}"


def save_unit(keys_dir: Path | str, unit: Unit, *, now: _dt.datetime | None = None) -> Path:
    """Write ``unit`` atomically (0600), stamping ``updated_at``; returns the path.

    ``created_at`` (from when the unit owes quarterly summaries) is kept from an existing
    record, else it is ``now``.
    """
    path = unit_path(keys_dir, unit.id)
    ensure_private_dir(path.parent)
    stamp = format_utc(now or utcnow())
    old = load_unit(keys_dir, unit.id) if path.exists() else None
    record = unit.to_json()
    record["created_at"] = unit.created_at or (old.created_at if old else "") or stamp
    record["updated_at"] = stamp
    data = json.dumps(record, ensure_ascii=False, indent=2, sort_keys=True).encode() + b"\n"
    atomic_write(path, data, mode=0o600)
    log.info("unit %s recorded (%s, %s)", unit.id, unit.department, ", ".join(unit.measures))
    return path


def _read(path: Path) -> Unit:
    try:
        with path.open("rb") as f:
            raw = f.read(_MAX_FILE + 1)
    except OSError as exc:
        raise ConfigurationError(f"cannot read unit record {path}: {exc.strerror}") from None
    if len(raw) > _MAX_FILE:
        raise ConfigurationError(f"unit record {path} is larger than {_MAX_FILE} bytes")
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        raise ConfigurationError(f"unit record {path} is not JSON") from None
    unit = Unit.from_json(data, str(path))
    if f"{unit.id}{UNIT_SUFFIX}" != path.name:
        raise ConfigurationError(f"unit record {path} names another unit ({unit.id})")
    return unit


def load_unit(keys_dir: Path | str, unit_id: str) -> Unit | None:
    """The unit's record, or None when it has none; a broken file raises."""
    path = unit_path(keys_dir, unit_id)
    if not path.exists():
        return None
    return _read(path)


def load_units(subscribers_dir: Path | None) -> dict[str, Unit]:
    """Every readable unit record in a subscribers directory (a bad file is skipped with a
    warning, so one broken record does not hide the others from a running server)."""
    units: dict[str, Unit] = {}
    if subscribers_dir is None:
        return units
    try:
        names = sorted(os.listdir(subscribers_dir))
    except OSError:
        return units
    for name in names:
        if name.startswith(".") or not name.endswith(UNIT_SUFFIX):
            continue
        try:
            unit = _read(Path(subscribers_dir) / name)
        except ConfigurationError as exc:
            log.warning("skipping unit record: %s", exc)
            continue
        units[unit.id] = unit
    return units


def list_subscribers(keys_dir: Path | str) -> list[tuple[str, Unit | None, tuple[str, ...]]]:
    """Every registered subscriber: (id, its unit record or None, which key kinds it has).

    A subscriber with keys but no unit record (registered before units existed) is listed
    with ``None``; so is a record whose file cannot be read (with a warning).
    """
    directory = Path(keys_dir) / "subscribers"
    found: dict[str, list[str]] = {}
    try:
        names = sorted(os.listdir(directory))
    except OSError:
        return []
    for name in names:
        for suffix, kind in ((".ed25519.pem", "report"), (".x25519.pem", "restricted")):
            if name.endswith(suffix) and not name.startswith("."):
                found.setdefault(name[: -len(suffix)], []).append(kind)
        if name.endswith(UNIT_SUFFIX) and not name.startswith("."):
            found.setdefault(name[: -len(UNIT_SUFFIX)], [])
    units = load_units(directory)
    return [(sid, units.get(sid), tuple(kinds)) for sid, kinds in sorted(found.items())]


def remove_subscriber(keys_dir: Path | str, unit_id: str) -> list[Path]:
    """Delete the subscriber's keys and unit record; returns the files removed.

    Reports it already sent stay in the report store (they are evidence); from now on its
    reports are refused, because its key is gone. Raises :class:`ConfigurationError` when
    nothing is registered under ``unit_id``.
    """
    validate_subscriber_id(unit_id)
    directory = Path(keys_dir) / "subscribers"
    removed: list[Path] = []
    for suffix in (*_KEY_SUFFIXES, UNIT_SUFFIX):
        path = directory / f"{unit_id}{suffix}"
        try:
            path.unlink()
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise ConfigurationError(f"cannot remove {path}: {exc.strerror}") from None
        removed.append(path)
    if not removed:
        raise ConfigurationError(f"no subscriber {unit_id!r} is registered in {keys_dir}")
    log.info("removed subscriber %s (%d files)", unit_id, len(removed))
    return removed


def flag_report(unit: Unit | None, report: Mapping[str, Any]) -> list[str]:
    """Why ``report`` (a verified, validated payload) does not fit its unit's record.

    Empty when it fits. Flags: the subscriber has no unit record; the report names a
    measure the unit does not enforce; a quarterly summary counts reports under measures
    the unit does not enforce. A flagged report is still stored (it is signed evidence);
    the flag is what an operator looks at.
    """
    sid = report.get("subscriber_id")
    if unit is None:
        return [f"subscriber {sid!r} has no unit record (department, region, measures)"]
    flags: list[str] = []
    if sid != unit.id:
        flags.append(f"report of {sid!r} checked against the record of {unit.id!r}")
    measure = report.get("measure")
    if isinstance(measure, str) and not unit.enforces(measure):
        flags.append(f"measure {measure} is not among the measures {unit.id} enforces")
    details = report.get("details")
    if report.get("kind") == "quarterly_summary" and isinstance(details, Mapping):
        by_measure = details.get("by_measure")
        if isinstance(by_measure, Mapping):
            for code in sorted(str(k) for k in by_measure):
                if code != "unspecified" and not unit.enforces(code):
                    flags.append(
                        f"quarterly summary counts measure {code}, which {unit.id} does not enforce"
                    )
    return flags
