"""``intercept-sdk lifts``: restrictions this unit must lift, from the durable ledger.

Why a command: an auditor (or the unit's own cron job) must be able to ask, without
writing code and after any restart, which restrictions the list no longer supports,
their deadlines, and which are overdue; and to record that a restriction was lifted.

::

    intercept-sdk lifts                    # lift-due items, overdue first flagged
    intercept-sdk lifts --sync             # sync first (reconciles the ledger)
    intercept-sdk lifts --all --json       # every restriction, JSON
    intercept-sdk lifts --lift REF         # report the lift of REF (queued, signed)
    intercept-sdk lifts --fail-on-overdue  # exit 5 when a lift is overdue (monitoring)

Nothing printed carries an ID number: subjects are the ledger's pseudonyms.
"""

from __future__ import annotations

import argparse
from typing import Any

from .._exceptions import InterceptError
from .._util import format_utc
from .main import EXIT_OK, _client_args, _make_client, _Parser, _print_json

__all__ = ["EXIT_OVERDUE", "add_lifts_command", "cmd_lifts"]

EXIT_OVERDUE = 5


def add_lifts_command(sub: argparse._SubParsersAction[_Parser]) -> None:
    """Register ``lifts`` (one call from :func:`~.main.build_parser`)."""
    s = sub.add_parser("lifts", help="restrictions to lift (revoked/deleted/expired entries)")
    _client_args(s)
    s.add_argument("--sync", action="store_true", help="sync first (reconciles the ledger)")
    s.add_argument("--all", action="store_true", help="every restriction, not only lifts due")
    s.add_argument("--json", action="store_true", help="one JSON document instead of a table")
    s.add_argument("--lift", metavar="REF", action="append", default=[], help="report a lift")
    s.add_argument("--fail-on-overdue", action="store_true", help="exit 5 if any lift is overdue")
    s.set_defaults(func=cmd_lifts)


def cmd_lifts(args: argparse.Namespace) -> int:
    with _make_client(args, audit=False) as client:
        if args.sync:
            try:
                client.sync()
            except InterceptError as exc:
                print(f"sync failed ({type(exc).__name__}: {exc}); showing the ledger as kept")
        ledger = client._core.ledger
        for ref in args.lift:
            item = ledger.resolve(ref=ref)[0]
            report_id = client.report("lift", item)
            print(f"lift of {ref} reported ({item.entry_id}, {item.measure}): report {report_id}")
        now = client._core.clock.now()
        items = client.restrictions() if args.all else client.lifts()
        st = client.status()
        if args.json:
            _print_json(
                {
                    "now": format_utc(now),
                    "lifts_due": st.lifts_due,
                    "lifts_overdue": st.lifts_overdue,
                    "lift_deadline_days": st.lift_deadline_days,
                    "items": [i.to_dict(now) for i in items],
                }
            )
        else:
            _print_table(items, now, st)
    if args.fail_on_overdue and st.lifts_overdue:
        return EXIT_OVERDUE
    return EXIT_OK


def _print_table(items: list[Any], now: Any, st: Any) -> None:
    print(
        f"{st.lifts_due} lifts due, {st.lifts_overdue} overdue "
        f"(deadline {st.lift_deadline_days} working days)"
    )
    for i in items:
        flag = "OVERDUE" if i.overdue(now) else i.state.upper().replace("_", " ")
        deadline = format_utc(i.deadline) if i.deadline else "-"
        print(
            f"  {flag:9} {i.ref}  {i.entry_id} {i.case_no} {i.measure} ({i.action}) "
            f"{i.end_reason or ''} deadline {deadline}"
        )
