"""Hotel check-in: refuse a room to a person restricted from star-rated hotels.

A star-rated hotel may not accommodate listed judgment debtors, nor the legal
representative, principal, actual controller or directly responsible person of a listed
company (measure ``consumption.star_hotel``). At the front desk, for each guest:

* ``client.block()`` answers from the local, signature-verified copy of the list
  (microseconds, no network, works offline);
* a restricted guest raises ``Intercepted``: show ``notice`` (case number, court, how to
  object) and do not check the guest in. The interception report is queued for the
  platform automatically.

Configuration comes from the environment (INTERCEPT_PLATFORM, INTERCEPT_TRUST_ROOT,
INTERCEPT_CACHE_DIR, INTERCEPT_SUBSCRIBER_ID, INTERCEPT_SUBSCRIBER_KEY)::

    python hotel_checkin.py --room 1808 --guest 360426199101010071:张三
    python hotel_checkin.py --demo      # builds a throw-away signed site and runs on it
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

from intercept_sdk import Client, Intercepted, InterceptError, Person, SyncError

MEASURE = "consumption.star_hotel"


def client_from_env(unit_name: str) -> Client:
    env = os.environ
    return Client(
        env["INTERCEPT_PLATFORM"],
        env["INTERCEPT_TRUST_ROOT"],
        env["INTERCEPT_CACHE_DIR"],
        env.get("INTERCEPT_SUBSCRIBER_ID"),
        subscriber_key=env.get("INTERCEPT_SUBSCRIBER_KEY"),
        unit_name=unit_name,
    )


def parse_person(text: str) -> Person:
    """``ID_NUMBER[:NAME]`` -> Person (the ID number is validated: InvalidIdentifier)."""
    id_number, _, name = text.partition(":")
    return Person(id_number, name=name or None)


def check_in(client: Client, guest: Person, room: str) -> bool:
    """True when the guest may be checked in."""
    try:
        decision = client.block(guest, MEASURE, room=room, desk="front-1")
    except Intercepted as refused:
        print(f"REFUSED {guest.name or ''} room {room} (report {refused.report_id})")
        print(refused.notice)
        return False
    if decision.action == "review":  # e.g. the local list is stale: ask the duty manager
        print(f"REVIEW  {guest.name or ''} room {room}: {', '.join(decision.reasons)}")
        return False
    print(f"ALLOW   {guest.name or ''} room {room} (list version {decision.list_version})")
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--guest", action="append", default=[], help="ID_NUMBER[:NAME]")
    parser.add_argument("--room", default="0000")
    parser.add_argument("--hotel", default="唐山某某大酒店", help="named in the notice (复核)")
    parser.add_argument("--demo", action="store_true", help="run on a throw-away test site")
    args = parser.parse_args(argv)
    if args.demo:
        args.guest = setup_demo()
    with client_from_env(args.hotel) as client:
        try:
            client.sync()  # in a long-running service: Client(..., background=True)
        except SyncError as exc:  # keep working from the cached list (flagged if stale)
            print(f"warning: list not updated ({exc}); using the cached version", file=sys.stderr)
        try:
            results = [check_in(client, parse_person(g), args.room) for g in args.guest]
        except InterceptError as exc:  # bad ID number, no list yet, ...
            print(f"ERROR {exc}", file=sys.stderr)
            return 2
    return 0 if all(results) else 1


def setup_demo() -> list[str]:
    """A signed test site with one listed guest; the environment points at it."""
    from intercept_sdk.testing import TestPlatform, make_id_number

    platform = TestPlatform(tempfile.mkdtemp(prefix="hotel-demo-"))
    listed = platform.add_person(make_id_number("1975-05-05"), name="王建国")
    os.environ.update(platform.env())
    return [f"{listed['id_number']}:王建国", f"{make_id_number('1990-09-09')}:李娜"]


if __name__ == "__main__":
    sys.exit(main())
