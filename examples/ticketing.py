"""Ticketing: no flights and no G-train seats for restricted passengers.

Listed debtors, and the legal representative, principal, actual controller or directly
responsible person of a listed company, may not fly (``travel.flight``) nor take any seat
on a G-series train or first class and above on other EMU trains
(``travel.rail_premium``). A booking is checked passenger by passenger; a refused
passenger gets the notice, the others get their tickets.

Configuration from the environment (INTERCEPT_PLATFORM, INTERCEPT_TRUST_ROOT,
INTERCEPT_CACHE_DIR, INTERCEPT_SUBSCRIBER_ID, INTERCEPT_SUBSCRIBER_KEY)::

    python ticketing.py --train G1234 --seat second --passenger 360426199101010071:张三
    python ticketing.py --flight CA1501 --passenger ... --passenger ...
    python ticketing.py --demo
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

from intercept_sdk import Client, Intercepted, Person

PREMIUM_SEATS = {"business", "first", "premium"}


def client_from_env() -> Client:
    env = os.environ
    return Client(
        env["INTERCEPT_PLATFORM"],
        env["INTERCEPT_TRUST_ROOT"],
        env["INTERCEPT_CACHE_DIR"],
        env.get("INTERCEPT_SUBSCRIBER_ID"),
        subscriber_key=env.get("INTERCEPT_SUBSCRIBER_KEY"),
        unit_name="铁路客票系统",
    )


def measure_for(flight: str | None, train: str | None, seat: str) -> str | None:
    """Which restriction a ticket falls under (None: an ordinary ticket, no check)."""
    if flight:
        return "travel.flight"
    if train and (train.upper().startswith("G") or seat in PREMIUM_SEATS):
        return "travel.rail_premium"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flight")
    parser.add_argument("--train")
    parser.add_argument("--seat", default="second")
    parser.add_argument("--passenger", action="append", default=[], help="ID_NUMBER[:NAME]")
    parser.add_argument("--demo", action="store_true", help="run on a throw-away test site")
    args = parser.parse_args(argv)
    if args.demo:
        args.train, args.passenger = "G1234", setup_demo()
    measure = measure_for(args.flight, args.train, args.seat)
    service = args.flight or args.train
    refused = 0
    with client_from_env() as client:
        client.sync()
        for n, text in enumerate(args.passenger, 1):
            id_number, _, name = text.partition(":")
            passenger = Person(id_number, name=name or None)
            if measure is None:
                print(f"TICKET  #{n} {passenger.name or ''} {service} (no restriction applies)")
                continue
            try:
                d = client.block(passenger, measure, service=service, seat=args.seat)
            except Intercepted as exc:
                refused += 1
                m = exc.decision.matches[0]
                print(f"REFUSED #{n} {passenger.name or ''} {service}: {m.relation} {m.case_no}")
                print(exc.notice)
                continue
            status = "TICKET " if d.action == "allow" else "REVIEW "
            print(f"{status} #{n} {passenger.name or ''} {service} ({d.action})")
    return 1 if refused else 0


def setup_demo() -> list[str]:
    """A test site: one listed passenger, one legal representative of a listed company."""
    from intercept_sdk.testing import TestPlatform, make_id_number

    platform = TestPlatform(tempfile.mkdtemp(prefix="ticketing-demo-"))
    debtor = platform.add_person(make_id_number("1969-06-01"), name="王建国", publish=False)
    rep = make_id_number("1972-02-02")
    platform.add_entity(related=[{"role": "legal_rep", "name": "赵立新", "id_number": rep}])
    os.environ.update(platform.env())
    return [
        f"{debtor['id_number']}:王建国",
        f"{rep}:赵立新",
        f"{make_id_number('1991-01-01')}:李娜",
    ]


if __name__ == "__main__":
    sys.exit(main())
