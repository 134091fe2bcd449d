"""``intercept-sdk subscriber add/list/remove`` for unit records, and ``stats`` (exports).

Registered from ``main.py`` by :func:`register` (one call): it adds ``list`` and
``remove`` to the ``subscriber`` group, and ``--name --department --region --measures``
to ``subscriber add`` (wrapping its handler: the unit record is validated *before* any
key is written, and written after the keys). ``stats`` writes the per unit/measure/quarter
table as CSV or JSON for the 通报.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._exceptions import ConfigurationError

if TYPE_CHECKING:  # pragma: no cover
    from .._platform.units import Unit

__all__ = ["register"]

_UNIT_FLAGS = ("name", "department", "region", "measures")
Handler = Callable[[argparse.Namespace], int]


def _unit_from_args(args: argparse.Namespace) -> Unit | None:
    """The record ``subscriber add`` should write (None when no unit flag was given)."""
    from .._platform.units import Unit, load_unit, parse_measures

    given = {f: getattr(args, f, None) for f in _UNIT_FLAGS}
    if all(v is None for v in given.values()):
        return None
    old = load_unit(Path(args.keys), args.id)
    if old is None and any(v is None for v in given.values()):
        missing = ", ".join(f"--{f}" for f, v in given.items() if v is None)
        raise ConfigurationError(f"a new unit record needs {missing} as well")
    measures = parse_measures(given["measures"]) if given["measures"] is not None else None
    return Unit(
        args.id,
        given["name"] if given["name"] is not None else old.name,  # type: ignore[union-attr]
        given["department"] if given["department"] is not None else old.department,  # type: ignore[union-attr]
        given["region"] if given["region"] is not None else old.region,  # type: ignore[union-attr]
        measures if measures is not None else old.measures,  # type: ignore[union-attr]
    )


def _with_unit(add: Handler) -> Handler:
    def run(args: argparse.Namespace) -> int:
        unit = _unit_from_args(args)  # validated before any key is written
        rc = add(args)
        if rc == 0 and unit is not None:
            from .._platform.units import save_unit

            path = save_unit(Path(args.keys), unit)
            print(f"unit record {path} ({unit.department}, {len(unit.measures)} measure(s))")
        return rc

    return run


def cmd_list(args: argparse.Namespace) -> int:
    from .._platform.units import list_subscribers

    rows: list[dict[str, Any]] = []
    for sid, unit, keys in list_subscribers(Path(args.keys)):
        row: dict[str, Any] = {"id": sid, "keys": list(keys)}
        row.update(
            {k: v for k, v in unit.to_json().items() if k not in ("type", "id")} if unit else {}
        )
        rows.append(row)
    if args.json:
        print(json.dumps(rows, ensure_ascii=False, indent=2))
        return 0
    for r in rows:
        measures = ",".join(r.get("measures", [])) or "-"
        print(
            f"{r['id']:24} {r.get('name', '(no unit record)')}  {r.get('department', '')}  "
            f"{r.get('region', '')}  keys={'+'.join(r['keys']) or '-'}  measures={measures}"
        )
    print(f"{len(rows)} subscriber(s)")
    return 0


def cmd_remove(args: argparse.Namespace) -> int:
    from .._platform.units import remove_subscriber

    removed = remove_subscriber(Path(args.keys), args.id)
    print(f"subscriber {args.id} removed ({len(removed)} file(s)); its stored reports are kept")
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    from .._platform.server.stats import StatsSource, revocations_from_source, to_csv
    from .._platform.server.storage import ReportStoreError, SQLiteReportStore

    db = Path(args.state) / "reports.sqlite"
    if not db.is_file():
        raise ConfigurationError(f"no report database at {db}")
    store = SQLiteReportStore(db)
    try:
        store.open()
        revocations = revocations_from_source(Path(args.source)) if args.source else {}
        source = StatsSource(
            store,
            Path(args.keys) / "subscribers" if args.keys else None,
            revocations=lambda: revocations,
            due_days=args.due_days,
            lift_working_days=args.lift_working_days,
        )
        stats = source.compute()
    except (ReportStoreError, OSError) as exc:
        raise ConfigurationError(f"cannot read reports: {exc}") from None
    finally:
        store.close()
    text = (
        to_csv(stats)
        if args.format == "csv"
        else json.dumps(stats.to_json(), ensure_ascii=False, indent=2) + "\n"
    )
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8-sig" if args.format == "csv" else "utf-8")
        print(f"{len(stats.rows)} row(s) written to {args.out}")
    else:
        sys.stdout.write(text)
    return 0


def register(subscriber_commands: argparse._SubParsersAction[Any], top: Any = None) -> None:
    """Add ``list``/``remove`` and the unit flags of ``add``; ``stats`` under ``top``."""
    add = subscriber_commands.choices["add"]
    add.add_argument("--name", help="the unit's name (unit record)")
    add.add_argument("--department", help="its responsible department, 责任部门")
    add.add_argument("--region", help="its region, e.g. 河北省唐山市")
    add.add_argument("--measures", help="measure codes it enforces, comma-separated")
    add.set_defaults(func=_with_unit(add.get_default("func")))
    ls = subscriber_commands.add_parser("list", help="registered subscribers and their units")
    ls.add_argument("--keys", required=True, help="the platform's keys directory")
    ls.add_argument("--json", action="store_true", help="one JSON document instead of a table")
    ls.set_defaults(func=cmd_list)
    rm = subscriber_commands.add_parser("remove", help="remove a subscriber's keys and record")
    rm.add_argument("id", help="the subscriber id to remove (its keys and unit record)")
    rm.add_argument("--keys", required=True, help="the platform's keys directory")
    rm.set_defaults(func=cmd_remove)
    if top is not None:
        st = top.add_parser("stats", help="per unit/measure/quarter statistics (CSV or JSON)")
        st.add_argument("--state", required=True, help="the server's state directory")
        st.add_argument("--keys", help="the platform's keys directory (unit records)")
        st.add_argument("--source", help="the source list (JSONL): revocation times")
        st.add_argument(
            "--format", choices=("csv", "json"), default="csv", help="export format (default csv)"
        )
        st.add_argument("--due-days", type=int, default=30, help="summary due days (30)")
        st.add_argument("--lift-working-days", type=int, default=3, help="lift deadline (3)")
        st.add_argument("--out", help="write to this file instead of stdout")
        st.set_defaults(func=cmd_stats)
