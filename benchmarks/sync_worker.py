"""``python -m benchmarks.sync_worker``: one ``Client.sync()`` in a process of its own.

The syncing client runs alone in this process so that its peak resident memory
(``VmHWM``: the interpreter, the SDK's imports and the sync itself) is not polluted by the
harness, the generator or the publisher. Prints one JSON object on stdout::

    {"seconds": <Client.sync() wall time>, "download_seconds": <until the last byte of
     the artefact arrived>, "mode": "snapshot"|"delta", "bytes_downloaded": ...,
     "vmhwm_kb": ..., "vmrss_after_import_kb": ..., ...}
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path


def proc_status_kb(field: str) -> int | None:
    """A ``kB`` field of ``/proc/self/status`` (VmHWM, VmRSS), or None off Linux."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:  # pragma: no cover - not Linux
        return None
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.sync_worker")
    parser.add_argument("--platform", required=True)
    parser.add_argument("--root", required=True, type=Path)
    parser.add_argument("--cache", required=True, type=Path)
    parser.add_argument("--subscriber-id", required=True)
    parser.add_argument("--subscriber-key", required=True, type=Path)
    args = parser.parse_args(argv)

    from intercept_sdk import Client

    rss_import = proc_status_kb("VmRSS")
    t0 = time.perf_counter()
    client = Client(
        args.platform,
        args.root,
        args.cache,
        args.subscriber_id,
        subscriber_key=args.subscriber_key,
    )
    t1 = time.perf_counter()
    rss_client = proc_status_kb("VmRSS")
    events: list[tuple[float, int, int]] = []

    def progress(done: int, total: int) -> None:
        if done >= total:
            events.append((time.perf_counter(), done, total))

    t2 = time.perf_counter()
    result = client.sync(progress)
    t3 = time.perf_counter()
    status = client.status()
    client.close()
    out = {
        "seconds": t3 - t2,
        "client_seconds": t1 - t0,
        "download_seconds": (events[-1][0] - t2) if events else None,
        "mode": result.mode,
        "from_version": result.from_version,
        "to_version": result.to_version,
        "bytes_downloaded": result.bytes_downloaded,
        "fallback_reason": result.fallback_reason,
        "entries": status.entries,
        "vmhwm_kb": proc_status_kb("VmHWM"),
        "vmrss_after_import_kb": rss_import,
        "vmrss_after_client_kb": rss_client,
        "ru_maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    }
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
