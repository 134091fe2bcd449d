"""The benchmark harness: sizes, rows, stages, machine details, JSON and Markdown output.

A run is a sequence of *stages* (``reports``, ``push``, ``publish``, ``sync``, ``check``,
``screen``, ``delta``, ``large``, ``start``); each fills some *rows* of the table. Every
row of :data:`ROW_SPECS` is always reported: a row whose stage did not run (``--only``,
or the 10M rows outside ``--size full``) says so, a stage that failed marks its rows
``error`` with the message, and a measured row carries its value, its baseline measured
in the same run, the ratio, the target and whether it is met. Targets are never adjusted
to the measurement: a miss is reported as a miss.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import math
import os
import platform
import shutil
import sqlite3
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import REPO_ROOT

# --------------------------------------------------------------------------- sizes


@dataclass(frozen=True)
class Sizes:
    """How big each figure's data is for one ``--size``."""

    name: str
    entries: int
    """The list of the "1M" rows (check, screen, full and delta sync, publish, sizes)."""
    check_samples: int
    """check(): hits and misses timed, each (plus a warm-up of a tenth)."""
    screen_subjects: int
    screen_hit_ratio: float
    delta_fraction: float
    large_entries: int | None
    """The "10M" rows (full sync, client start); ``None``: not run at this size."""
    push_entries: int
    push_rounds: int
    enqueue_reports: int
    upload_reports: int
    start_runs: int


SIZES: dict[str, Sizes] = {
    "smoke": Sizes(
        name="smoke",
        entries=5_000,
        check_samples=500,
        screen_subjects=5_000,
        screen_hit_ratio=0.02,
        delta_fraction=0.01,
        large_entries=8_000,
        push_entries=300,
        push_rounds=3,
        enqueue_reports=200,
        upload_reports=1_000,
        start_runs=1,
    ),
    "default": Sizes(
        name="default",
        entries=1_000_000,
        check_samples=10_000,
        screen_subjects=1_000_000,
        screen_hit_ratio=0.02,
        delta_fraction=0.01,
        large_entries=None,
        push_entries=10_000,
        push_rounds=10,
        enqueue_reports=2_000,
        upload_reports=20_000,
        start_runs=3,
    ),
}
SIZES["full"] = Sizes(**{**asdict(SIZES["default"]), "name": "full", "large_entries": 10_000_000})

MEASURE = "consumption.star_hotel"
"""The measure every check and screen asks about (a hotel check-in)."""

# --------------------------------------------------------------------------- rows


@dataclass(frozen=True)
class RowSpec:
    id: str
    stage: str
    figure: str  # str.format()-ed with n, large, screen, start_n, push_n
    unit: str
    target: str


ROW_SPECS: tuple[RowSpec, ...] = (
    RowSpec("check_hit_p50", "check", "check() latency p50, hit, {n}-entry list", "µs",
            "≤ 4× sqlite3 SELECT p50"),
    RowSpec("check_hit_p99", "check", "check() latency p99, hit, {n}-entry list", "µs",
            "≤ 10× sqlite3 SELECT p99"),
    RowSpec("check_miss_p50", "check", "check() latency p50, miss, {n}-entry list", "µs",
            "≤ 3× sqlite3 SELECT p50"),
    RowSpec("check_miss_p99", "check", "check() latency p99, miss, {n}-entry list", "µs",
            "≤ 10× sqlite3 SELECT p99"),
    RowSpec("screen", "screen", "screen() throughput, {screen} subjects vs {n} entries",
            "subjects/s", "≥ 100,000/s and ≥ 0.5× baseline"),
    RowSpec("sync_full", "sync",
            "full sync, {n} entries, reference platform on loopback (download, verify, apply)",
            "s", "≤ 4× baseline"),
    RowSpec("sync_full_rss", "sync", "full sync, {n} entries: peak RSS of the client", "MB",
            "≤ 250 MB"),
    RowSpec("sync_large", "large", "full sync, {large} entries", "s", "completes; time reported"),
    RowSpec("sync_large_rss", "large", "full sync, {large} entries: peak RSS of the client",
            "MB", "≤ 300 MB"),
    RowSpec("delta_time", "delta", "delta sync, 1% of {n} changed", "s",
            "≤ 5% of the full sync"),
    RowSpec("delta_bytes", "delta", "delta sync, 1% of {n} changed: bytes on the wire",
            "bytes", "≤ 3% of the snapshot"),
    RowSpec("delta_rss", "delta", "delta sync, 1% of {n} changed: peak RSS of the client",
            "MB", "reported"),
    RowSpec("propagation_p50", "push",
            "revocation propagation p50: manifest replaced → background client's decision "
            "changes (push, {push_n}-entry list)", "s", "≤ 2 s"),
    RowSpec("propagation_max", "push", "revocation propagation, max of the rounds", "s",
            "reported"),
    RowSpec("enqueue", "reports", "report() enqueue, durable", "reports/s", "≥ 0.5× baseline"),
    RowSpec("upload", "reports", "report upload to the reference platform (Sender.flush)",
            "reports/s", "≥ 5,000 reports/s"),
    RowSpec("upload_default_rate", "reports",
            "report upload with the Client's default report_rate", "reports/s", "reported"),
    RowSpec("start", "start", "client start with a {start_n}-entry cache (Client() + first "
            "check())", "ms", "≤ 100 ms, no list loaded into memory"),
    RowSpec("size_snapshot", "publish", "size per entry: snapshot (gzip), {n} entries",
            "B/entry", "reported"),
    RowSpec("size_delta", "delta", "size per changed entry: delta (gzip)", "B/entry",
            "reported"),
    RowSpec("size_cache", "sync", "size per entry: local cache, {n} entries", "B/entry",
            "≤ 250 B/entry"),
    RowSpec("size_cache_large", "large", "size per entry: local cache, {large} entries",
            "B/entry", "≤ 250 B/entry"),
    RowSpec("publish_v1", "publish", "publish {n} entries, first version (snapshot)", "s",
            "reported"),
    RowSpec("publish_v2", "delta", "publish {n} entries, 1% changed (snapshot + delta)", "s",
            "reported"),
    RowSpec("artefact_snapshot", "publish", "artefact: snapshot of {n} entries (gzip)", "MB",
            "reported"),
    RowSpec("artefact_delta", "delta", "artefact: delta, 1% of {n} changed (gzip)", "kB",
            "reported"),
    RowSpec("artefact_manifest", "delta", "artefact: manifest.json", "bytes", "reported"),
    RowSpec("agent_check_p50", "agent", "agent (local sidecar) check latency p50 over loopback",
            "ms", "≤ 1 ms"),
    RowSpec("agent_rate", "agent", "agent checks per second, one keep-alive connection",
            "checks/s", "reported"),
    RowSpec("intake_sqlite", "intake", "report intake over HTTP, SQLite report store",
            "reports/s", "reported, next to the raw insert"),
    RowSpec("intake_postgresql", "intake", "report intake over HTTP, PostgreSQL report store",
            "reports/s", "reported, next to the raw insert"),
    RowSpec("privacy_sweep_default", "privacy",
            "leaked-key sweep of the ID space, cost per recovered ID, default work factor "
            "({n}-entry list)", "CPU-s/ID", "reported (a sanity recovery must succeed)"),
    RowSpec("privacy_sweep_max", "privacy",
            "leaked-key sweep of the ID space, cost per recovered ID, maximum work factor "
            "({n}-entry list)", "CPU-s/ID", "reported (a sanity recovery must succeed)"),
)  # fmt: skip

STAGE_ORDER = (
    "reports", "push", "publish", "sync", "check", "screen", "delta", "large", "start",
    "privacy", "agent", "intake",
)  # fmt: skip
STAGE_DEPS: dict[str, tuple[str, ...]] = {
    "sync": ("publish",),
    "check": ("sync",),
    "screen": ("sync",),
    "delta": ("sync",),
}
ALIASES = {"sync10m": "large", "10m": "large", "propagation": "push", "upload": "reports"}


@dataclass
class Row:
    """One line of the table. ``status``: met, missed, not run, error."""

    id: str
    stage: str
    figure: str
    unit: str
    target: str
    status: str = "not run"
    measured: float | None = None
    measured_text: str = ""
    baseline: float | None = None
    baseline_text: str = "—"
    ratio: float | None = None
    ratio_text: str = "—"
    notes: str = ""
    load1: float | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def verdict(self) -> str:
        return self.status


def fmt_num(value: float | None, unit: str = "") -> str:
    """A number for the table: thousands separators, sensible precision."""
    if value is None:
        return "—"
    a = abs(value)
    if a >= 1000:
        text = f"{value:,.0f}"
    elif a >= 100:
        text = f"{value:.0f}"
    elif a >= 10:
        text = f"{value:.1f}"
    elif a >= 1:
        text = f"{value:.2f}"
    elif a == 0:
        text = "0"
    else:
        text = f"{value:.3g}"
    return f"{text} {unit}".strip()


def fmt_ratio(value: float | None) -> str:
    if value is None:
        return "—"
    if value >= 100:
        return f"{value:,.0f}×"
    if value >= 0.1:
        return f"{value:.2f}×"
    return f"{value * 100:.2g}%"


# --------------------------------------------------------------------------- context


def log(msg: str) -> None:
    """Progress on stderr (the table goes to files)."""
    elapsed = time.monotonic() - _T0
    print(f"[{elapsed:7.1f}s] {msg}", file=sys.stderr, flush=True)


_T0 = time.monotonic()


def load1() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:  # pragma: no cover
        return None


@dataclass
class Context:
    """Shared state of one run: sizes, directories, rows, artefacts between stages."""

    sizes: Sizes
    out: Path
    data_dir: Path
    work: Path
    keep: bool = False
    rows: dict[str, Row] = field(default_factory=dict)
    state: dict[str, Any] = field(default_factory=dict)
    stage_info: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        s = self.sizes
        fmt = {
            "n": f"{s.entries:,}",
            "large": f"{s.large_entries:,}" if s.large_entries else "10,000,000",
            "screen": f"{s.screen_subjects:,}",
            "start_n": f"{(s.large_entries or s.entries):,}",
            "push_n": f"{s.push_entries:,}",
        }
        for spec in ROW_SPECS:
            self.rows[spec.id] = Row(
                spec.id, spec.stage, spec.figure.format(**fmt), spec.unit, spec.target
            )

    def row(
        self,
        row_id: str,
        measured: float,
        *,
        met: bool | None,
        baseline: float | None = None,
        baseline_text: str | None = None,
        ratio: float | None = None,
        ratio_text: str | None = None,
        measured_text: str | None = None,
        notes: str = "",
        **details: Any,
    ) -> Row:
        """Record a measurement. ``met=None`` for a "reported" row (no target): met."""
        r = self.rows[row_id]
        r.measured = float(measured)
        r.measured_text = measured_text or fmt_num(measured, r.unit)
        r.baseline = baseline
        if baseline_text is not None:
            r.baseline_text = baseline_text
        elif baseline is not None:
            r.baseline_text = fmt_num(baseline, r.unit)
        r.ratio = ratio
        r.ratio_text = ratio_text if ratio_text is not None else fmt_ratio(ratio)
        r.status = "met" if met is None or met else "missed"
        r.notes = notes
        r.load1 = load1()
        r.details.update(details)
        log(
            f"  {r.figure}: {r.measured_text} (baseline {r.baseline_text}, "
            f"ratio {r.ratio_text}) target {r.target}: {r.status}"
        )
        return r

    def fail_stage(self, stage: str, message: str) -> None:
        for r in self.rows.values():
            if r.stage == stage and r.status == "not run":
                r.status = "error"
                r.notes = message

    def skip_stage(self, stage: str, message: str) -> None:
        for r in self.rows.values():
            if r.stage == stage and r.status == "not run":
                r.notes = message

    def tmp(self, name: str) -> Path:
        """A fresh directory under the run's work directory."""
        p = self.work / name
        if p.exists():
            shutil.rmtree(p)
        p.mkdir(parents=True)
        return p


# --------------------------------------------------------------------------- helpers


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_values:
        raise ValueError("no values")
    k = max(0, min(len(sorted_values) - 1, math.ceil(p / 100 * len(sorted_values)) - 1))
    return sorted_values[k]


def worker_env() -> dict[str, str]:
    """Environment for subprocess workers: ``benchmarks`` importable from the repo root."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    return env


def run_worker(module: str, args: list[str], *, timeout: float) -> dict[str, Any]:
    """Run ``python -m <module> args`` and return the JSON object on its last stdout line."""
    cmd = [sys.executable, "-m", module, *args]
    proc = subprocess.run(
        cmd,
        cwd=REPO_ROOT,
        env=worker_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(
            f"{module} failed (exit {proc.returncode}): {proc.stderr.strip()[-2000:]}"
        )
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def dir_bytes(path: Path) -> int:
    total = 0
    for p in path.rglob("*"):
        with contextlib.suppress(OSError):
            if p.is_file():
                total += p.stat().st_size
    return total


def rm(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def server_process(site: Path, *, subscribers: Path | None, state: Path) -> Iterator[Any]:
    """The reference platform as a separate process (``run_server_process``)."""
    from intercept_sdk._platform.server import run_server_process

    proc = run_server_process(
        site, subscribers_dir=subscribers, state_dir=state, log_level="warning", timeout=30.0
    )
    try:
        yield proc
    finally:
        proc.stop()


# --------------------------------------------------------------------------- machine


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def machine_details() -> dict[str, Any]:
    cpu = "unknown"
    flags = ""
    for line in _read("/proc/cpuinfo").splitlines():
        if line.startswith("model name") and cpu == "unknown":
            cpu = line.split(":", 1)[1].strip()
        if line.startswith("flags") and not flags:
            flags = line
    mem_kb = 0
    for line in _read("/proc/meminfo").splitlines():
        if line.startswith("MemTotal:"):
            mem_kb = int(line.split()[1])
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover
        affinity = os.cpu_count() or 0
    git = {}
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        ).stdout.strip()
        git = {"commit": head, "dirty": bool(dirty)}
    import intercept_sdk

    disk = shutil.disk_usage(REPO_ROOT)
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "usable_cores": affinity,
        "ram_gb": round(mem_kb / 1024 / 1024, 1),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "sqlite": sqlite3.sqlite_version,
        "os": f"{platform.system()} {platform.release()}",
        "disk_free_gb": round(disk.free / 1e9, 1),
        "intercept_sdk": getattr(intercept_sdk, "__version__", "?"),
        "git": git,
        "aes_ni": " aes " in f" {flags} ",
    }


# --------------------------------------------------------------------------- stages

StageFn = Callable[[Context], None]


def _stages() -> dict[str, StageFn]:
    from . import agent, lookups, privacy, push, report_intake, reports, syncs

    return {
        "reports": reports.run,
        "push": push.run,
        "publish": syncs.publish_v1,
        "sync": syncs.full_sync,
        "check": lookups.check,
        "screen": lookups.screen,
        "delta": syncs.delta,
        "large": syncs.large,
        "start": syncs.start,
        "privacy": privacy.privacy,
        "agent": agent.stage,
        "intake": report_intake.stage,
    }


def _selected(only: str | None, sizes: Sizes) -> list[str]:
    if not only:
        chosen = set(STAGE_ORDER)
    else:
        chosen = set()
        for given in only.split(","):
            name = ALIASES.get(given.strip().lower(), given.strip().lower())
            if name not in STAGE_ORDER:
                raise SystemExit(f"unknown stage {name!r}; choose from {', '.join(STAGE_ORDER)}")
            chosen.add(name)
    # prerequisites
    changed = True
    while changed:
        changed = False
        for name in list(chosen):
            for dep in STAGE_DEPS.get(name, ()):
                if dep not in chosen:
                    chosen.add(dep)
                    changed = True
    if "start" in chosen and sizes.large_entries is None:
        chosen.add("sync")
        chosen.add("publish")
    if "start" in chosen and sizes.large_entries is not None:
        chosen.add("large")
    return [s for s in STAGE_ORDER if s in chosen]


def run(ctx: Context, stages: list[str]) -> None:
    fns = _stages()
    failed: set[str] = set()
    for name in STAGE_ORDER:
        if name not in stages:
            continue
        if name == "large" and ctx.sizes.large_entries is None:
            ctx.skip_stage("large", "full run only (--size full)")
            continue
        deps = set(STAGE_DEPS.get(name, ()))
        if name == "start":
            deps.add("large" if ctx.sizes.large_entries else "sync")
        broken = deps & failed
        if broken:
            failed.add(name)
            ctx.fail_stage(name, f"not measured: stage {', '.join(sorted(broken))} failed")
            ctx.stage_info[name] = {"status": "skipped", "seconds": 0.0}
            continue
        log(f"stage {name} (load {load1()})")
        t = time.monotonic()
        try:
            fns[name](ctx)
        except Exception as exc:
            failed.add(name)
            msg = f"{type(exc).__name__}: {exc}"
            log(f"stage {name} FAILED: {msg}")
            traceback.print_exc(file=sys.stderr)
            ctx.fail_stage(name, msg[:500])
            ctx.stage_info[name] = {
                "status": "error",
                "seconds": time.monotonic() - t,
                "error": msg[:2000],
            }
        else:
            ctx.stage_info[name] = {"status": "ok", "seconds": time.monotonic() - t}
        log(f"stage {name} done in {time.monotonic() - t:.1f}s")


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="intercept-sdk benchmarks, each figure next to its baseline.",
    )
    parser.add_argument("--size", choices=sorted(SIZES), default="default")
    parser.add_argument(
        "--only", help=f"comma-separated stages ({', '.join(STAGE_ORDER)}); prerequisites run too"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="results directory (default benchmarks/results); cached data goes to OUT/data",
    )
    parser.add_argument(
        "--markdown",
        type=Path,
        default=None,
        help="where to write the Markdown table (default docs/benchmarks.md for a complete "
        "default/full run into benchmarks/results, else OUT/benchmarks-<size>.md)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument(
        "--prepare-only",
        action="store_true",
        help="build the cached data sets (lists, the 10M site) and stop",
    )
    parser.add_argument(
        "--render",
        type=Path,
        metavar="JSON",
        help="only re-render the Markdown from a result JSON (to --markdown, default "
        "docs/benchmarks.md)",
    )
    args = parser.parse_args(argv)
    if args.render is not None:
        from .render import render

        md = args.markdown or REPO_ROOT / "docs" / "benchmarks.md"
        md.write_text(render(json.loads(args.render.read_text())))
        log(f"rendered {args.render} to {md}")
        return 0

    sizes = SIZES[args.size]
    out = (args.out or REPO_ROOT / "benchmarks" / "results").resolve()
    data_dir = out / "data"
    work = out / f"work-{sizes.name}"
    out.mkdir(parents=True, exist_ok=True)
    data_dir.mkdir(parents=True, exist_ok=True)
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    ctx = Context(sizes=sizes, out=out, data_dir=data_dir, work=work, keep=args.keep)

    if args.prepare_only:
        from . import data

        data.prepare(ctx)
        return 0

    started = _dt.datetime.now(_dt.timezone.utc)
    t0 = time.monotonic()
    machine = machine_details()
    machine["load_start"] = os.getloadavg()
    stages = _selected(args.only, sizes)
    log(f"size {sizes.name}: stages {', '.join(stages)}; results in {out}")
    try:
        run(ctx, stages)
    finally:
        machine["load_end"] = os.getloadavg()
        total = time.monotonic() - t0
        result = {
            "started": started.isoformat(),
            "finished": _dt.datetime.now(_dt.timezone.utc).isoformat(),
            "total_seconds": total,
            "size": sizes.name,
            "sizes": asdict(sizes),
            "only": args.only,
            "machine": machine,
            "stages": ctx.stage_info,
            "state": {k: v for k, v in ctx.state.items() if _jsonable(v)},
            "rows": [asdict(r) for r in ctx.rows.values()],
        }
        stamp = started.strftime("%Y%m%dT%H%M%SZ")
        json_path = out / f"benchmarks-{sizes.name}-{stamp}.json"
        json_path.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
        shutil.copyfile(json_path, out / f"latest-{sizes.name}.json")
        from .render import render

        md_path = args.markdown
        if md_path is None:
            complete = not args.only and sizes.name != "smoke" and args.out is None
            md_path = (
                REPO_ROOT / "docs" / "benchmarks.md"
                if complete
                else out / f"benchmarks-{sizes.name}.md"
            )
        md_path.parent.mkdir(parents=True, exist_ok=True)
        md_path.write_text(render(result))
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        log(f"done in {total:.0f}s: {json_path} and {md_path}")
    return 0


def _jsonable(v: Any) -> bool:
    try:
        json.dumps(v)
    except (TypeError, ValueError):
        return False
    return True
