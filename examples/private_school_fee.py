"""Private school fees: a listed parent may not pay high fees at a private school.

The seeds restrict listed debtors (and the legal representative, principal, actual
controller or directly responsible person of a listed company) from paying for their
children's attendance at high-fee private schools (measure
``consumption.private_school``). The bursar checks the *payer* before accepting the fee;
the child is never the subject.

Configuration from the environment (INTERCEPT_PLATFORM, INTERCEPT_TRUST_ROOT,
INTERCEPT_CACHE_DIR, INTERCEPT_SUBSCRIBER_ID, INTERCEPT_SUBSCRIBER_KEY)::

    python private_school_fee.py --payer 360426199101010071:张三 --amount 68000 --student S-2024-031
    python private_school_fee.py --demo
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

from intercept_sdk import Client, Intercepted, InterceptError, Person

MEASURE = "consumption.private_school"


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


def accept_fee(client: Client, payer: Person, amount: str, student: str) -> dict[str, object]:
    """The bursar's decision, as a record for the school's own payment system."""
    try:
        decision = client.block(payer, MEASURE, amount=amount, student=student)
    except Intercepted as refused:
        return {
            "accepted": False,
            "report_id": refused.report_id,
            "cases": [m.case_no for m in refused.decision.matches],
            "relations": [m.relation for m in refused.decision.matches],
            "notice": refused.notice,
        }
    # allow, or review when the local list is stale: a person decides, the SDK does not
    return {
        "accepted": decision.action == "allow",
        "action": decision.action,
        "reasons": list(decision.reasons),
        "list_version": decision.list_version,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--payer", help="ID_NUMBER[:NAME] of the person paying")
    parser.add_argument("--amount", default="0")
    parser.add_argument("--student", default="")
    parser.add_argument("--school", default="唐山某某外国语学校")
    parser.add_argument("--demo", action="store_true", help="run on a throw-away test site")
    args = parser.parse_args(argv)
    payers = setup_demo() if args.demo else [args.payer]
    if not all(payers):
        parser.error("--payer is required (or --demo)")
    refused = 0
    with client_from_env(args.school) as client:
        client.sync()
        for payer in payers:
            id_number, _, name = payer.partition(":")
            try:
                result = accept_fee(
                    client, Person(id_number, name or None), args.amount, args.student
                )
            except InterceptError as exc:
                print(json.dumps({"error": str(exc)}, ensure_ascii=False))
                return 2
            print(json.dumps(result, ensure_ascii=False))
            refused += not result["accepted"]
    return 1 if refused else 0


def setup_demo() -> list[str]:
    """A test site where one payer is the legal representative of a listed company."""
    from intercept_sdk.testing import TestPlatform, make_id_number

    platform = TestPlatform(tempfile.mkdtemp(prefix="school-demo-"))
    rep = make_id_number("1978-08-08")
    platform.add_entity(related=[{"role": "legal_rep", "name": "赵立新", "id_number": rep}])
    os.environ.update(platform.env())
    return [f"{rep}:赵立新", f"{make_id_number('1985-03-03')}:陈红"]


if __name__ == "__main__":
    sys.exit(main())
