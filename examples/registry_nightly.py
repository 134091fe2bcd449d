"""Company registry: nightly screening of every registered company, then supervision.

Listed companies, and companies whose legal representative, director, supervisor or
senior manager is personally listed, are key supervision targets
(``supervision.key_target``: a higher rate of random inspections). Each night the
registry screens its whole register (a CSV here: ``uscc,name,legal_rep_id,legal_rep_name``)
and keeps it under watch: whenever the platform publishes a new list version, the
companies whose status changed are reported, and a restriction that must be lifted
(revoked or deleted listing) is lifted and reported back to the platform.

Configuration from the environment (INTERCEPT_PLATFORM, INTERCEPT_TRUST_ROOT,
INTERCEPT_CACHE_DIR, INTERCEPT_SUBSCRIBER_ID, INTERCEPT_SUBSCRIBER_KEY)::

    python registry_nightly.py --input companies.csv
    python registry_nightly.py --input companies.csv --watch 3600 --poll 5m
    python registry_nightly.py --demo
"""

from __future__ import annotations

import argparse
import collections
import csv
import os
import sys
import tempfile
import threading
from collections.abc import Iterator

from intercept_sdk import Client, Entity, Match, Officer, Person, WatchChange


def client_from_env(poll: str, background: bool) -> Client:
    env = os.environ
    return Client(
        env["INTERCEPT_PLATFORM"],
        env["INTERCEPT_TRUST_ROOT"],
        env["INTERCEPT_CACHE_DIR"],
        env.get("INTERCEPT_SUBSCRIBER_ID"),
        subscriber_key=env.get("INTERCEPT_SUBSCRIBER_KEY"),
        poll_interval=poll,
        background=background,
        unit_name="唐山市市场监督管理局",
    )


def read_register(path: str) -> Iterator[Entity]:
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            officers = []
            if row.get("legal_rep_id"):
                rep = Person(row["legal_rep_id"], name=row.get("legal_rep_name") or None)
                officers.append(Officer("legal_rep", rep))
            yield Entity(uscc=row["uscc"], name=row.get("name") or None, officers=officers)


def describe(company: Entity, action: str, matches: tuple[Match, ...]) -> str:
    found = "; ".join(f"{m.relation} {m.name} {m.case_no}" for m in matches)
    return f"{company.uscc} {company.name or ''} {action} {found}".rstrip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", help="CSV: uscc,name,legal_rep_id,legal_rep_name")
    parser.add_argument("--measure", default="supervision.key_target")
    parser.add_argument("--watch", type=float, default=0, help="then watch for N seconds")
    parser.add_argument("--max-changes", type=int, default=0, help="stop after N changes")
    parser.add_argument("--poll", default="5m", help="poll interval while watching")
    parser.add_argument("--demo", action="store_true", help="run on a throw-away test site")
    args = parser.parse_args(argv)
    if args.demo:
        args.input = setup_demo()
    if not args.input:
        parser.error("--input is required (or --demo)")
    register = list(read_register(args.input))

    with client_from_env(args.poll, background=args.watch > 0) as client:
        client.sync()
        # 1. tonight's screening: one streaming pass, batched lookups
        counts: collections.Counter[str] = collections.Counter()
        for company, d in zip(register, client.screen(register, args.measure), strict=True):
            counts[d.action] += 1
            if d.action != "allow":
                print("FLAGGED", describe(company, d.action, d.matches))
        print(f"SCREENED {len(register)} companies: {dict(sorted(counts.items()))}", flush=True)
        if args.watch <= 0:
            return 0

        # 2. supervision: react to every new list version (runs on the SDK's thread)
        changes_seen = 0
        enough = threading.Event()

        def on_change(changes: list[WatchChange]) -> None:
            nonlocal changes_seen
            for c in changes:
                company = c.subject
                assert isinstance(company, Entity)
                print(c.kind.upper(), describe(company, c.after.action, c.after.matches))
                if c.kind == "lifted" and c.before is not None:
                    for m in c.before.matches:  # tell the platform the measure was lifted
                        client.report("lift", m, measure=args.measure, reason="delisted")
            sys.stdout.flush()
            changes_seen += len(changes)
            if args.max_changes and changes_seen >= args.max_changes:
                enough.set()

        client.watch(register, args.measure, on_change)
        print(f"WATCHING {len(register)} companies", flush=True)
        enough.wait(args.watch)
        client.flush_reports(timeout=5)
    return 0


def setup_demo() -> str:
    """A test site with a listed company and a listed legal representative; a register."""
    from intercept_sdk.testing import TestPlatform, make_id_number, make_uscc

    platform = TestPlatform(tempfile.mkdtemp(prefix="registry-demo-"))
    listed = platform.add_entity(name="唐山市路北区恒达建材有限公司", publish=False)
    debtor = platform.add_person(make_id_number("1966-06-16"), name="王建国")
    os.environ.update(platform.env())
    path = os.path.join(platform.directory, "register.csv")
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["uscc", "name", "legal_rep_id", "legal_rep_name"])
        w.writerow([listed["uscc"], "唐山市路北区恒达建材有限公司", "", ""])
        w.writerow([make_uscc(), "唐山新业贸易有限公司", debtor["id_number"], "王建国"])
        for i in range(50):
            w.writerow([make_uscc(), f"唐山第{i}商贸有限公司", "", ""])
    return path


if __name__ == "__main__":
    sys.exit(main())
