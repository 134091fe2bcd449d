"""Synthetic data for the benchmarks: cached lists, subjects, baseline rows, the 10M site.

All lists come from :func:`intercept_sdk.testing.synth.generate_entries` (the demo's generator:
valid ID numbers and credit codes, realistic field sizes, 30 % entities, each with a
legal representative and some with more related persons). Generating a million entries
takes a minute or two and ten million much longer, so the source files (and the published
10M site) are cached under ``OUT/data`` and reused across runs; the cache names carry the
size, the seed and a fingerprint of the generator (the 10M site: a data-format version,
see :data:`LARGE_VERSION`).

The 10M site is built by a pipeline: a child process generates the entries and writes
them as JSON Lines into a pipe (``python -m benchmarks.data``), which the publisher reads
with its worker processes. The artefacts are the same as publishing the generator's dicts
in one process (every generated entry takes the publisher's fast path either way, and a
line and its dict give the same record); generation and publishing just overlap.
"""

from __future__ import annotations

import datetime as _dt
import gzip
import hashlib
import json
import os
import random
import re
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from pydantic_core import to_json

from intercept_sdk import Entity, Person
from intercept_sdk._client.keys import subscriber_keygen
from intercept_sdk._platform.keys import add_subscriber, keygen
from intercept_sdk._platform.publish import PublishResult, current_hash_key, publish
from intercept_sdk._platform.units import Unit, save_unit
from intercept_sdk._protocol.keyedhash import identifier_key
from intercept_sdk._protocol.sealing import record_id
from intercept_sdk.testing.synth import (
    REFERENCE_TODAY,
    generate_entries,
    valid_id_number,
    valid_uscc,
)
from intercept_sdk.testing.synth import __file__ as _synth_file

from . import REPO_ROOT
from .harness import Context, log, rm, worker_env

SEED = 1
SUBSCRIBER = "bench-unit"
LARGE_SEED = 10
LARGE_VERSION = 2
"""Bump to force a rebuild of the cached 10M site (format change)."""
LARGE_EXPIRES = 300 * 86400.0
"""The cached 10M site's manifest lives 300 days (its root 365), then it is rebuilt."""
REVOKED_AT = f"{REFERENCE_TODAY.isoformat()}T10:00:00+08:00"

_RID_RE = re.compile(rb'"r":"([0-9a-f]{32})"')
KEY_BYTES = 32


def fingerprint() -> str:
    """Short hash of the generator's source: a changed generator means new cached lists."""
    return hashlib.sha256(Path(_synth_file).read_bytes()).hexdigest()[:10]


# --------------------------------------------------------------------------- platforms


def new_platform(directory: Path) -> dict[str, Path]:
    """Fresh platform keys (1-of-1 root and online role) and one registered subscriber."""
    keys = directory / "keys"
    root = keygen(keys)
    sub = directory / "subscriber"
    report_pub, box_pub = subscriber_keygen(sub)
    add_subscriber(keys, SUBSCRIBER, report_pub.read_bytes(), box_pub.read_bytes())
    # its unit record, as a real deployment registers it (reports are checked against it)
    save_unit(
        keys,
        Unit(
            id=SUBSCRIBER,
            name="benchmark hotel",
            department="商务局",
            region="唐山",
            measures=("consumption.star_hotel",),
        ),
    )
    return {"keys": keys, "root": root, "subscriber": sub, "site": directory / "site"}


def hash_key(keys: Path) -> bytes:
    """The hash key of the site's current key epoch (the publisher state's)."""
    return current_hash_key(keys)[1]


# --------------------------------------------------------------------------- source lists


def list_v1(ctx: Context, n: int) -> Path:
    """The cached JSON Lines source of ``n`` entries (seed :data:`SEED`)."""
    from intercept_sdk.testing.synth import write_jsonl

    path = ctx.data_dir / f"list-{n}-s{SEED}-{fingerprint()}.jsonl"
    if not path.exists():
        log(f"generating {n:,} entries into {path.name} (cached for later runs)")
        t = time.monotonic()
        write_jsonl(path, generate_entries(n, seed=SEED))
        log(f"generated in {time.monotonic() - t:.1f}s")
    return path


def list_v2(ctx: Context, n: int, v1: Path, fraction: float) -> tuple[Path, dict[str, int]]:
    """``v1`` with ``fraction`` of its entries changed: 70 % revoked, 15 % removed, 15 % new.

    The total stays ``n``. Cached next to ``v1``; the counts are returned.
    """
    changes = max(3, round(n * fraction))
    n_remove = changes * 15 // 100
    n_add = n_remove
    n_revoke = changes - n_remove - n_add
    counts = {"changed": changes, "revoked": n_revoke, "removed": n_remove, "added": n_add}
    path = v1.with_name(v1.stem + f"-delta{fraction:g}.jsonl")
    if path.exists():
        return path, counts
    log(f"deriving {path.name}: {counts}")
    picked = random.Random(SEED + 1).sample(range(n), n_revoke + n_remove)
    revoke = set(picked[:n_revoke])
    remove = set(picked[n_revoke:])
    tmp = path.with_suffix(".tmp")
    with v1.open("rb") as src, tmp.open("wb") as out:
        for i, line in enumerate(src):
            if i in remove:
                continue
            if i in revoke:
                obj = json.loads(line)
                obj["status"] = "revoked"
                obj["status_ground"] = "wrongly_listed"
                obj["revoked_at"] = REVOKED_AT
                out.write(json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode())
                out.write(b"\n")
            else:
                out.write(line)
        for entry in generate_entries(n_add, seed=SEED + 2, start_id=n + 1):
            out.write(json.dumps(entry, ensure_ascii=False, separators=(",", ":")).encode())
            out.write(b"\n")
    os.replace(tmp, path)
    return path, counts


# --------------------------------------------------------------------------- subjects


def sample_listed(path: Path, n: int, k: int, seed: int) -> list[dict[str, Any]]:
    """``k`` published entries of the list at ``path`` (``n`` lines), drawn at random
    positions (revoked, deleted and restricted entries are not on the site: skipped)."""
    want = set(random.Random(seed).sample(range(n), min(k, n)))
    out: list[dict[str, Any]] = []
    with path.open("rb") as f:
        for i, line in enumerate(f):
            if i in want:
                e = json.loads(line)
                if e.get("status", "active") == "active" and e.get("visibility") != "restricted":
                    out.append(e)
    random.Random(seed + 1).shuffle(out)
    return out


def subject_for(entry: dict[str, Any]) -> Person | Entity:
    if entry["subject_type"] == "person":
        return Person(entry["id_number"])
    if entry.get("uscc"):
        return Entity(uscc=entry["uscc"])
    return Entity(org_code=entry["org_code"])


def key_for(entry: dict[str, Any], hk: bytes) -> bytes:
    """The identifier key a lookup of ``entry``'s subject uses."""
    if entry["subject_type"] == "person":
        return identifier_key(hk, "id", entry["id_number"])
    org = entry.get("org_code") or entry["uscc"][8:17]
    return identifier_key(hk, "org", org)


def miss_subjects(
    count: int, seed: int, listed_keys: set[bytes], hk: bytes
) -> list[tuple[Person | Entity, bytes]]:
    """Valid subjects (70 % persons, 30 % entities) whose keys are not on the list."""
    rng = random.Random(seed)
    out: list[tuple[Person | Entity, bytes]] = []
    while len(out) < count:
        subject: Person | Entity
        if rng.random() < 0.3:
            uscc = valid_uscc(rng)
            subject, key = Entity(uscc=uscc), identifier_key(hk, "org", uscc[8:17])
        else:
            idn = valid_id_number(rng)
            subject, key = Person(idn), identifier_key(hk, "id", idn)
        if key not in listed_keys:
            out.append((subject, key))
    return out


# --------------------------------------------------------------------------- baseline rows


def _secrets_of(entry: dict[str, Any], hk: bytes) -> list[bytes]:
    """Every identifier secret of ``entry`` (its own first)."""
    out = [key_for(entry, hk)]
    out += [identifier_key(hk, "id", r["id_number"]) for r in entry.get("related", [])
            if r.get("id_number")]  # fmt: skip
    return out


def rows_file(
    snapshot: Path,
    dest: Path,
    *,
    source: Path | None = None,
    hk: bytes | None = None,
    collect_keys: bool = False,
) -> tuple[int, set[bytes]]:
    """Write the snapshot's sealed lines as baseline rows ``(key, line)`` to ``dest``.

    With ``source`` and ``hk``, the key is the entry's own identifier secret (32 bytes):
    the one a check of that subject derives, so the baseline ``SELECT`` looks up what
    check() looks up. Without, the key is the line's record id (zero-padded): for the
    bulk-insert baseline only. Format: 32-byte key, 4-byte little-endian length, line.
    Returns the row count and (if asked) every identifier secret of the published entries.
    """
    lines: dict[bytes, bytes] = {}
    with gzip.open(snapshot, "rb") as src:
        for line in src:
            m = _RID_RE.search(line)
            if m is not None:
                lines[bytes.fromhex(m.group(1).decode())] = line[:-1]
    keys: set[bytes] = set()
    count = 0
    with dest.open("wb", buffering=1 << 20) as out:
        write = out.write

        def row(key: bytes, record: bytes) -> None:
            write(key.ljust(KEY_BYTES, b"\0"))
            write(len(record).to_bytes(4, "little"))
            write(record)

        if source is None or hk is None:
            for rid, record in lines.items():
                row(rid, record)
                count += 1
            return count, keys
        with source.open("rb") as f:
            for raw in f:
                entry = json.loads(raw)
                sealed = lines.get(record_id(hk, entry["entry_id"]))
                if sealed is None:  # withdrawn, restricted or quarantined: not on the site
                    continue
                secrets = _secrets_of(entry, hk)
                row(secrets[0], sealed)
                count += 1
                if collect_keys:
                    keys.update(secrets)
    return count, keys


def iter_rows(path: Path) -> Iterator[tuple[bytes, bytes]]:
    with path.open("rb", buffering=1 << 20) as f:
        read = f.read
        while True:
            head = read(KEY_BYTES + 4)
            if len(head) < KEY_BYTES + 4:
                return
            yield head[:KEY_BYTES], read(int.from_bytes(head[KEY_BYTES:], "little"))


def sqlite_bulk_insert(rows: Path, db: Path) -> float:
    """Baseline of a full sync: bulk insert of the same rows into a plain sqlite table.

    ``(k BLOB PRIMARY KEY, v BLOB)``, one transaction, ``executemany``, no journal and no
    syncs while loading (as the store builds a snapshot), one fsync at the end; a 128 MiB
    page cache (four times the store build's 32 MiB: never slower for the baseline).
    Returns seconds.
    """
    for suffix in ("", "-journal", "-wal", "-shm"):
        rm(Path(f"{db}{suffix}"))
    t = time.perf_counter()
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode = OFF")
    conn.execute("PRAGMA synchronous = OFF")
    conn.execute("PRAGMA cache_size = -131072")
    conn.execute("CREATE TABLE t(k BLOB PRIMARY KEY, v BLOB)")
    conn.execute("BEGIN")
    conn.executemany("INSERT OR IGNORE INTO t(k, v) VALUES (?, ?)", iter_rows(rows))
    conn.execute("COMMIT")
    conn.close()
    fd = os.open(db, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return time.perf_counter() - t


# --------------------------------------------------------------------------- the 10M site


def large_site(ctx: Context, n: int) -> dict[str, Any]:
    """The cached published site of ``n`` entries (built once: generate + publish)."""
    base = ctx.data_dir / f"site-{n}-s{LARGE_SEED}-v{LARGE_VERSION}"
    meta_path = base / "meta.json"
    now = _dt.datetime.now(_dt.timezone.utc)
    if meta_path.exists():
        meta: dict[str, Any] = json.loads(meta_path.read_text())
        expires = _dt.datetime.fromisoformat(meta["manifest_expires"])
        if expires - now > _dt.timedelta(days=1) and (base / "site" / "manifest.json").exists():
            meta["cached"] = True
            return meta
        log(f"cached {base.name} expires {expires}: rebuilding")
    rm(base)
    tmp = base.with_name(base.name + ".building")
    rm(tmp)
    tmp.mkdir(parents=True)
    paths = new_platform(tmp)
    log(f"building the {n:,}-entry site {base.name} (generate + publish; cached afterwards)")
    t = time.monotonic()
    last = [t]

    def progress(lines: int) -> None:
        if time.monotonic() - last[0] > 60:
            last[0] = time.monotonic()
            log(f"  publish: {lines:,} of {n:,} source entries read")

    result = _publish_generated(n, LARGE_SEED, tmp, paths, progress)
    seconds = time.monotonic() - t
    meta = {
        "entries": result.entries,
        "seed": LARGE_SEED,
        "built_at": now.isoformat(),
        "generate_and_publish_seconds": seconds,
        "synth_fingerprint": fingerprint(),
        "manifest_expires": (now + _dt.timedelta(seconds=LARGE_EXPIRES)).isoformat(),
        "snapshot_bytes": result.snapshot.length,
        "snapshot_raw_bytes": result.snapshot.raw_length,
        "snapshot_path": result.snapshot.path,
    }
    # The publisher's private state holds the key epoch's hash key: kept (private data of
    # the benchmark), a later publish or an analysis may need it.
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    os.replace(tmp, base)
    log(f"built {base.name} in {seconds:.0f}s")
    meta["cached"] = False
    return meta


def _publish_generated(
    n: int, seed: int, tmp: Path, paths: dict[str, Path], progress: Callable[[int], None]
) -> PublishResult:
    """Publish ``generate_entries(n, seed=seed)``, generated in a child process meanwhile."""
    fifo = tmp / "source.fifo"
    os.mkfifo(fifo, 0o600)
    writer = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.data", "write-entries", str(n), str(seed), str(fifo)],
        cwd=REPO_ROOT,
        env=worker_env(),
    )
    try:
        result = publish(
            fifo, paths["keys"], paths["site"], expires=LARGE_EXPIRES, progress=progress
        )
        status = writer.wait()
    finally:
        if writer.poll() is None:  # the publish failed before reading everything
            writer.kill()
            writer.wait()
        fifo.unlink(missing_ok=True)
    if status != 0 or result.entries != n or result.quarantined:
        raise RuntimeError(
            f"building the {n:,}-entry site failed: generator exit status {status}, "
            f"{result.entries:,} entries published, {len(result.quarantined)} quarantined"
        )
    return result


def write_entries(n: int, seed: int, path: Path) -> None:
    """``generate_entries(n, seed=seed)`` as JSON Lines into ``path`` (the pipe's end).

    pydantic-core's ``to_json`` (compact, several times faster than :mod:`json`): the
    publisher parses the lines back to the very same values.
    """
    with open(path, "wb", buffering=1 << 20) as f:
        batch: list[bytes] = []
        for entry in generate_entries(n, seed=seed):
            batch.append(to_json(entry))
            if len(batch) >= 1000:
                batch.append(b"")
                f.write(b"\n".join(batch))
                batch.clear()
        if batch:
            batch.append(b"")
            f.write(b"\n".join(batch))


def large_paths(ctx: Context, n: int) -> dict[str, Path]:
    base = ctx.data_dir / f"site-{n}-s{LARGE_SEED}-v{LARGE_VERSION}"
    return {
        "base": base,
        "keys": base / "keys",
        "root": base / "keys" / "root.json",
        "site": base / "site",
        "subscriber": base / "subscriber",
    }


def prepare(ctx: Context) -> None:
    """``--prepare-only``: build every cached data set this size needs."""
    s = ctx.sizes
    v1 = list_v1(ctx, s.entries)
    list_v2(ctx, s.entries, v1, s.delta_fraction)
    if s.large_entries:
        large_site(ctx, s.large_entries)


def chunks(items: list[Any], size: int) -> Iterable[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


if __name__ == "__main__":
    # python -m benchmarks.data write-entries N SEED PATH (the 10M site's generator process)
    if len(sys.argv) != 5 or sys.argv[1] != "write-entries":
        sys.exit("usage: python -m benchmarks.data write-entries N SEED PATH")
    write_entries(int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4]))
