"""``python -m benchmarks.start_worker``: how long a process takes to answer its first check.

Runs in a fresh process against an already synced cache: times ``import intercept_sdk``
(reported separately, it is the interpreter's business), then ``Client(...)`` plus the
first ``check()``, which is what "start" means to an application: from constructing the
client to the first decision. Resident memory is read before and after, to show that
no list is loaded into memory. Prints one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .sync_worker import proc_status_kb


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.start_worker")
    parser.add_argument("--platform", required=True)
    parser.add_argument("--root", required=True, type=Path)
    parser.add_argument("--cache", required=True, type=Path)
    parser.add_argument("--subscriber-id", required=True)
    parser.add_argument("--subscriber-key", required=True, type=Path)
    parser.add_argument("--id-number", required=True, help="a person to check")
    parser.add_argument("--measure", default="consumption.star_hotel")
    args = parser.parse_args(argv)

    t = time.perf_counter()
    from intercept_sdk import Client, Person

    import_seconds = time.perf_counter() - t
    subject = Person(args.id_number)
    rss_before = proc_status_kb("VmRSS")
    t0 = time.perf_counter()
    client = Client(
        args.platform,
        args.root,
        args.cache,
        args.subscriber_id,
        subscriber_key=args.subscriber_key,
    )
    t1 = time.perf_counter()
    decision = client.check(subject, args.measure)
    t2 = time.perf_counter()
    rss_after = proc_status_kb("VmRSS")
    t3 = time.perf_counter()
    client.check(subject, args.measure)
    t4 = time.perf_counter()
    entries = client.status().entries
    client.close()
    print(
        json.dumps(
            {
                "start_seconds": t2 - t0,
                "client_seconds": t1 - t0,
                "first_check_seconds": t2 - t1,
                "second_check_seconds": t4 - t3,
                "import_seconds": import_seconds,
                "vmrss_before_kb": rss_before,
                "vmrss_after_kb": rss_after,
                "action": decision.action,
                "entries": entries,
            }
        ),
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
