"""Shared machinery of the reliability suite: sizes, counted results, worker processes,
and a chain of genuinely published list versions with known decisions.

Why worker processes come from a fork server: importing the SDK takes seconds on a busy
machine, and the crash scenarios start hundreds of processes. ``multiprocessing``'s
fork server imports the SDK once (``set_forkserver_preload``) and forks each worker from
that clean, single-threaded process, so a worker is ready in milliseconds and is a real,
separate process that ``kill -9`` can hit anywhere.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import multiprocessing
import os
import shutil
import signal
import sqlite3
import time
import traceback
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from intercept_sdk import Client, Person
from intercept_sdk._platform.keys import rotate_root
from intercept_sdk.testing import TestPlatform, entry_fields, make_id_number

from .known_bugs import Known

MEASURE = "consumption.star_hotel"
SUBSCRIBER = "test-unit"
FULL = os.environ.get("INTERCEPT_RELIABILITY", "short").strip().lower() == "full"
SIZE_NAME = "full" if FULL else "short"


def size(short: Any, full: Any) -> Any:
    """The short value by default, the full one with ``INTERCEPT_RELIABILITY=full``."""
    return full if FULL else short


# =========================================================================== counted results


@dataclass
class Tally:
    """Runs and failures of one scenario. A failing run is counted, not raised, so one
    bad run does not hide how the others went; :meth:`finish` fails the test."""

    name: str
    runs: int = 0
    failures: int = 0
    notes: list[str] = field(default_factory=list)
    examples: list[str] = field(default_factory=list)
    known_bug: str | None = None
    known_failures: int = 0  # failures explained by a known bug (known_bugs.py)

    def __post_init__(self) -> None:
        RESULTS[self.name] = self

    @contextlib.contextmanager
    def run(self, label: str = "", known: Known | None = None) -> Iterator[None]:
        """One counted run; an exception (or a failed ``pytest.raises``) fails it. A
        failure that the known bug ``known`` explains is counted as such."""
        self.runs += 1
        try:
            yield
        except (Exception, pytest.fail.Exception) as exc:
            self.fail(label, exc, known if known is not None and known.explains(exc) else None)

    def fail(self, label: str, exc: BaseException | str, known: Known | None = None) -> None:
        """Count a failed run; ``known`` is the known bug that explains it, if any."""
        self.failures += 1
        if known is not None:
            self.known_failures += 1
            self.known_bug = known.text
        if len(self.examples) < 5:
            if isinstance(exc, BaseException):
                tb = "".join(traceback.format_exception(exc)[-3:])
                text = f"{type(exc).__name__}: {exc}\n{tb}"
            else:
                text = exc
            self.examples.append(f"[{label}] {text[:3000]}")

    def note(self, text: str) -> None:
        self.notes.append(text)

    def finish(self) -> None:
        """Fail the test when any run failed (with the first few failures); when every
        failure is explained by a known bug, the test is an expected failure instead."""
        assert self.runs > 0, f"{self.name}: no run at all"
        if self.failures > self.known_failures:
            shown = "\n\n".join(self.examples)
            raise AssertionError(
                f"{self.name}: {self.failures} of {self.runs} runs failed; first ones:\n{shown}"
            )
        if self.known_failures:
            pytest.xfail(f"{self.known_failures} runs hit a known bug: {self.known_bug}")


RESULTS: dict[str, Tally] = {}


def finish_all(*tallies: Tally) -> None:
    """Finish several tallies of one test: any unexplained failure fails the test (all
    of them reported); otherwise a failure explained by a known bug makes it an xfail."""
    problems = []
    known = []
    for t in tallies:
        try:
            t.finish()
        except AssertionError as exc:
            problems.append(str(exc))
        except pytest.xfail.Exception as exc:
            known.append(exc)
    if problems:
        raise AssertionError("\n\n".join(problems))
    if known:
        raise known[0]


# =========================================================================== worker processes

_CTX: Any = None


def mp() -> Any:
    """The fork-server context (SDK preloaded); workers are forked from it."""
    global _CTX
    if _CTX is None:
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(
            [
                "intercept_sdk",
                "intercept_sdk.testing",
                "intercept_sdk._platform.server",
                "reliability._jobs",
            ]
        )
        _CTX = ctx
    return _CTX


class Worker:
    """One worker process and its line log (written with unbuffered appends, so what the
    worker wrote before a ``kill -9`` is all there)."""

    _seq = 0

    def __init__(self, directory: Path, target: Any, *args: Any) -> None:
        Worker._seq += 1
        directory.mkdir(parents=True, exist_ok=True)
        self.log = directory / f"worker-{os.getpid()}-{Worker._seq}.log"
        self.log.unlink(missing_ok=True)
        self.proc = mp().Process(target=target, args=(*args, str(self.log)), daemon=True)

    def start(self) -> Worker:
        self.proc.start()
        return self

    def lines(self) -> list[str]:
        try:
            data = self.log.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return []
        # A torn last line (killed mid-write) has no newline: leave it out.
        return data.split("\n")[:-1]

    def wait_for(self, prefix: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while True:
            for line in self.lines():
                if line.startswith(prefix):
                    return line
                if line.startswith("ERROR"):
                    raise AssertionError(f"worker failed: {self.log.read_text()}")
            if not self.proc.is_alive() and self.proc.exitcode is not None:
                for line in self.lines():
                    if line.startswith(prefix):
                        return line
                raise AssertionError(
                    f"worker exited ({self.proc.exitcode}) before {prefix!r}: "
                    f"{self.log.read_text() if self.log.exists() else ''}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(f"worker said no {prefix!r} within {timeout}s")
            time.sleep(0.002)

    def kill(self) -> None:
        """SIGKILL this worker (by its own pid) and reap it."""
        if self.proc.pid is not None and self.proc.exitcode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.join(30)

    def join(self, timeout: float) -> int | None:
        self.proc.join(timeout)
        return self.proc.exitcode


# =========================================================================== the platform side


def platform_report_rows(state_dir: Path) -> list[str]:
    """Every report_id the reference platform stored (one row per stored report)."""
    path = state_dir / "reports.sqlite"
    if not path.exists():
        return []
    conn = sqlite3.connect(path, timeout=30)
    try:
        return [r[0] for r in conn.execute("SELECT report_id FROM reports")]
    finally:
        conn.close()


def outbox_ids(cache: Path) -> dict[str, set[str]]:
    """The outbox journal of ``cache``: report ids by state, read with plain SQLite; also
    checks the database's integrity (a crash must never leave a broken file)."""
    conn = sqlite3.connect(cache / "outbox.sqlite", timeout=30)
    try:
        ok = conn.execute("PRAGMA integrity_check").fetchone()[0]
        assert ok == "ok", f"outbox integrity_check: {ok}"
        out: dict[str, set[str]] = {"pending": set(), "sent": set(), "dead": set()}
        for rid, state in conn.execute("SELECT report_id, state FROM journal"):
            out[state].add(rid)
        pending_rows = {r[0] for r in conn.execute("SELECT report_id FROM pending")}
        assert pending_rows == out["pending"], "pending table and journal disagree"
        return out
    finally:
        conn.close()


# =========================================================================== a chain of versions


def person_ids(n: int) -> list[str]:
    """``n`` distinct valid ID numbers (deterministic)."""
    return [
        make_id_number(dt.date(1960, 1, 1) + dt.timedelta(days=7 * (i // 400)), seq=i % 400)
        for i in range(n)
    ]


def last_change(i: int, version: int, period: int) -> int:
    """The latest version <= ``version`` at which entry ``i`` changed (0: never)."""
    r = i % period
    if version < r or version < 1:
        return 0
    last = version - ((version - r) % period)
    return last if last >= 1 else 0


def entry_state(i: int, last: int) -> str:
    """absent, revoked or active: a fixed pseudo-random function of (entry, change)."""
    h = hashlib.sha256(f"{i}:{last}".encode()).digest()[0] % 6
    return "absent" if h == 0 else "revoked" if h == 1 else "active"


def amount_marker(last: int) -> str:
    """The unperformed amount an entry carries after its change ``last``: it says which
    change of the entry a record is, so a record of another version is recognised."""
    return f"{1000 + last}.00"


@dataclass
class Chain:
    """Versions 1..V of one list, genuinely published and kept; decisions known.

    Persons ``0..n_public-1`` are public entries, the next ``n_restricted`` restricted to
    the test subscriber. Each version changes every ``period``-th entry (its state and its
    amount marker). Root 2 (with new online keys) takes effect at ``rotate_at``.
    ``caches[v]`` is a closed cache synced to version ``v``, to copy.
    """

    platform: TestPlatform
    directory: Path
    pinned: Path
    ids: list[str]
    n_public: int
    period: int
    versions: int
    rotate_at: int | None
    manifests: dict[int, bytes] = field(default_factory=dict)
    root_of: dict[int, int] = field(default_factory=dict)
    caches: dict[int, Path] = field(default_factory=dict)

    # -- content ------------------------------------------------------------------------
    def state(self, i: int, version: int) -> tuple[str, str]:
        last = last_change(i, version, self.period)
        return entry_state(i, last), amount_marker(last)

    def entries(self, version: int) -> dict[str, dict[str, Any]]:
        p = self.platform
        out: dict[str, dict[str, Any]] = {}
        for i, idn in enumerate(self.ids):
            st, amount = self.state(i, version)
            if st == "absent":
                continue
            extra: dict[str, Any] = {}
            if i >= self.n_public:
                extra = {"visibility": "restricted", "audience": [SUBSCRIBER]}
            e = p.person_entry(idn, entry_id=f"E{i:05d}", unperformed_amount=amount, **extra)
            if st == "revoked":
                e["status"] = "revoked"
                e["revoked_at"] = "2024-06-01T08:00:00+08:00"
            out[e["entry_id"]] = e
        return out

    def expected(self, version: int) -> list[tuple[str, str | None]]:
        """(action, amount marker of the match or None) of every person at ``version``."""
        out: list[tuple[str, str | None]] = []
        for i in range(len(self.ids)):
            st, amount = self.state(i, version)
            out.append(("block", amount) if st == "active" else ("allow", None))
        return out

    def persons(self) -> list[Person]:
        return [Person(x) for x in self.ids]

    # -- site ---------------------------------------------------------------------------
    def make_served(self, served: Path) -> Path:
        """A directory serving the whole chain: hard links to every artefact; the
        manifest (and the roots that go with it) are set by :meth:`install`."""
        site = self.platform.site_dir
        for path in site.rglob("*"):
            rel = path.relative_to(site)
            if path.is_dir() or rel.as_posix() == "manifest.json" or rel.parts[0] == "root":
                continue
            dest = served / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            if not dest.exists():
                os.link(path, dest)
        (served / "root").mkdir(parents=True, exist_ok=True)
        return served

    def install(self, served: Path, version: int) -> None:
        """Serve ``version``: the roots up to its root version, then its manifest."""
        from intercept_sdk._util import atomic_write

        site_roots = self.platform.site_dir / "root"
        want = self.root_of[version]
        for f in site_roots.glob("*.root.json"):
            n = int(f.name.split(".", 1)[0])
            dest = served / "root" / f.name
            if n <= want and not dest.exists():
                shutil.copyfile(f, dest)
            elif n > want:
                dest.unlink(missing_ok=True)
        atomic_write(served / "manifest.json", self.manifests[version], durable=False)

    # -- clients ------------------------------------------------------------------------
    def client(self, platform: str | Path, cache: Path, **options: Any) -> Client:
        options.setdefault("push", False)
        options.setdefault("audit", False)
        return Client(
            str(platform),
            self.pinned,
            cache,
            SUBSCRIBER,
            subscriber_key=self.platform.subscriber_key_dir,
            **options,
        )

    def copy_cache(self, version: int, dest: Path) -> Path:
        if dest.exists():
            shutil.rmtree(dest)
        shutil.copytree(self.caches[version], dest)
        return dest


def build_chain(
    directory: Path,
    *,
    n_public: int,
    n_restricted: int,
    versions: int,
    period: int = 10,
    rotate_at: int | None = None,
    keep_deltas: int = 8,
    baselines: bool = True,
) -> Chain:
    """Publish the chain (every artefact kept) and sync a baseline cache per version."""
    directory.mkdir(parents=True, exist_ok=True)
    platform = TestPlatform(directory / "platform")
    pinned = directory / "pinned-root.json"
    shutil.copyfile(platform.trust_root, pinned)
    chain = Chain(
        platform,
        directory,
        pinned,
        person_ids(n_public + n_restricted),
        n_public,
        period,
        versions,
        rotate_at,
    )
    root_version = 1
    for v in range(1, versions + 1):
        if rotate_at is not None and v == rotate_at:
            root_version = rotate_root(platform.keys_dir, rotate_online=True)
        platform.entries = chain.entries(v)
        platform.publish(keep_versions=10_000, keep_deltas=keep_deltas)
        chain.manifests[v] = (platform.site_dir / "manifest.json").read_bytes()
        chain.root_of[v] = root_version
    if baselines:
        served = chain.make_served(directory / "served-baselines")
        master = directory / "master-cache"
        for v in range(1, versions + 1):
            chain.install(served, v)
            with chain.client(served, master) as c:
                c.sync()
                assert c.status().list_version == v
            chain.caches[v] = directory / f"baseline-{v}"
            shutil.copytree(master, chain.caches[v])
    return chain


def check_decisions(
    client: Client, chain: Chain, version: int, persons: Sequence[Person] | None = None
) -> None:
    """Every person's decision is the one of ``version``: action, list version, and the
    matched record is that version's (its amount marker)."""
    persons = persons if persons is not None else chain.persons()
    want = chain.expected(version)
    decisions = list(client.screen(persons, MEASURE))
    bad = []
    for i, d in enumerate(decisions):
        action, amount = want[i]
        got_amount = d.matches[0].unperformed_amount if d.matches else None
        if d.list_version != version or d.action != action or got_amount != amount:
            bad.append((i, d.list_version, d.action, got_amount, action, amount))
    assert not bad, f"{len(bad)} decisions are not those of version {version}: {bad[:5]}"
    # The single-check path too, for a sample (it reads through another statement).
    for i in range(0, len(persons), max(1, len(persons) // 25)):
        d = client.check(persons[i], MEASURE)
        assert (d.list_version, d.action) == (version, want[i][0]), (i, d, want[i])


def leftovers(cache: Path) -> list[str]:
    """Files a finished sync must not leave behind (dead builds, pointer temp files)."""
    names = os.listdir(cache)
    bad = [n for n in names if n.startswith(".build-") or n.startswith(".CURRENT.")]
    dbs = [n for n in names if n.startswith("list-") and n.endswith(".sqlite")]
    if len(dbs) > 2:
        bad.append(f"{len(dbs)} list databases: {dbs}")
    return bad


def fmt_counts(items: Iterable[tuple[str, int]]) -> str:
    return ", ".join(f"{n} {k}" for k, n in items if n)


# =========================================================================== concurrency model


def plain_person_entry(id_number: str, entry_id: str, **over: Any) -> dict[str, Any]:
    """A valid source entry for one person (what TestPlatform.person_entry makes),
    without needing a TestPlatform (workers publish with the key directory only)."""
    from intercept_sdk._protocol.identifiers import id_number_info

    info = id_number_info(id_number)
    fields: dict[str, Any] = {
        "entry_id": entry_id,
        "subject_type": "person",
        "name": "张三",
        "id_number": info.id_number,
        "gender": info.sex,
        "age": info.age_on(dt.date(2024, 5, 1)),
    }
    return entry_fields(int(entry_id[1:]) + 1, **{**fields, **over})


def concurrency_state(i: int, version: int) -> str:
    """Person ``i`` at ``version`` of the concurrency list: every record changes at every
    version (its amount marker is the version), and its state cycles."""
    return ("absent", "revoked", "active")[(i + version) % 3]


def entries_at(ids: Sequence[str], version: int) -> list[dict[str, Any]]:
    out = []
    for i, idn in enumerate(ids):
        st = concurrency_state(i, version)
        if st == "absent":
            continue
        e = plain_person_entry(idn, f"E{i:05d}", unperformed_amount=f"{1000 + version}.00")
        if st == "revoked":
            e["status"] = "revoked"
            e["revoked_at"] = "2024-06-01T08:00:00+08:00"
        out.append(e)
    return out


def expected_at(i: int, version: int) -> tuple[str, str | None]:
    if concurrency_state(i, version) == "active":
        return "block", f"{1000 + version}.00"
    return "allow", None
