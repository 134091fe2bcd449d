"""The ``intercept-sdk`` command line.

Exit codes: 0 success; 2 usage error or invalid input (the message says what was wrong,
e.g. the InvalidIdentifier reason); 1 any other error; ``check --fail-on-block`` exits 3
when the decision is block (4 when review), for shell scripting; ``status`` exits 0 only
when the cache is ready (a verified, fresh list), 1 otherwise.

Every command answers in JSON with ``--json`` (before or after the command name);
errors are one line on stderr (``{"error": ..., "kind": ...}`` in JSON mode), never a
traceback (``-v`` adds one to the log for unexpected errors). ``screen`` reports a bad
row as an ``error`` row and goes on.

Client commands read their configuration from flags or from the environment:
INTERCEPT_PLATFORM, INTERCEPT_TRUST_ROOT, INTERCEPT_CACHE_DIR, INTERCEPT_SUBSCRIBER_ID,
INTERCEPT_SUBSCRIBER_KEY, INTERCEPT_MAX_STALENESS, INTERCEPT_CA_BUNDLE, INTERCEPT_PROXY.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

from .._exceptions import ConfigurationError, InterceptError, InvalidInput, NeverSynced
from . import units as _units

log = logging.getLogger("intercept_sdk.cli")

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_BLOCK, EXIT_REVIEW = 0, 1, 2, 3, 4

DESCRIPTION = (
    "Sync, verify and enforce the signed list of dishonest judgment debtors "
    "(失信被执行人) offline; publish and serve it on the platform side. Client commands "
    "read INTERCEPT_PLATFORM, INTERCEPT_TRUST_ROOT, INTERCEPT_CACHE_DIR, "
    "INTERCEPT_SUBSCRIBER_ID, INTERCEPT_SUBSCRIBER_KEY (and INTERCEPT_MAX_STALENESS, "
    "INTERCEPT_CA_BUNDLE, INTERCEPT_PROXY) when their flags are not given."
)
EPILOG = (
    "exit codes: 0 success; 1 error; 2 usage error or invalid input; check --fail-on-block: "
    "3 block, 4 review; status: 1 when the cache is not ready"
)


def _wants_json(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "json", False) or getattr(args, "json_all", False))


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("intercept-sdk")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        from .. import __version__

        return __version__


class Progress:
    """A progress bar on stderr, shown only on a terminal and without --quiet."""

    def __init__(self, label: str, total: int | None, *, quiet: bool, stream: TextIO | None = None):
        self.stream = stream or sys.stderr
        self.enabled = not quiet and self.stream.isatty()
        self.label, self.total, self.done = label, total, 0
        self._last = 0.0
        self._start = time.monotonic()

    def update(self, done: int, total: int | None = None) -> None:
        self.done = done
        if total is not None:
            self.total = total
        now = time.monotonic()
        if self.enabled and now - self._last >= 0.1:
            self._last = now
            self._draw()

    def advance(self, n: int = 1) -> None:
        self.update(self.done + n)

    def _draw(self) -> None:
        rate = self.done / max(1e-9, time.monotonic() - self._start)
        if self.total:
            frac = min(1.0, self.done / self.total)
            bar = "#" * int(frac * 30)
            text = (
                f"\r{self.label} [{bar:<30}] {frac:6.1%} {self.done:,}/{self.total:,} {rate:,.0f}/s"
            )
        else:
            text = f"\r{self.label} {self.done:,} {rate:,.0f}/s"
        self.stream.write(text)
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self._draw()
            self.stream.write("\n")
            self.stream.flush()


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # argparse exits 2 on usage errors already
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _env(name: str) -> str | None:
    value = os.environ.get(name)
    return value if value else None


def _client_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("client configuration (flags or environment)")
    g.add_argument(
        "--platform",
        default=_env("INTERCEPT_PLATFORM"),
        help="platform URL, file:// URL or site directory [INTERCEPT_PLATFORM]",
    )
    g.add_argument(
        "--trust-root",
        default=_env("INTERCEPT_TRUST_ROOT"),
        help="pinned root.json [INTERCEPT_TRUST_ROOT]",
    )
    g.add_argument(
        "--cache-dir",
        default=_env("INTERCEPT_CACHE_DIR"),
        help="local cache directory [INTERCEPT_CACHE_DIR]",
    )
    g.add_argument(
        "--subscriber-id",
        default=_env("INTERCEPT_SUBSCRIBER_ID"),
        help="this unit's subscriber id [INTERCEPT_SUBSCRIBER_ID]",
    )
    g.add_argument(
        "--subscriber-key",
        default=_env("INTERCEPT_SUBSCRIBER_KEY"),
        help="subscriber key directory [INTERCEPT_SUBSCRIBER_KEY]",
    )
    g.add_argument(
        "--max-staleness",
        default=_env("INTERCEPT_MAX_STALENESS") or "72h",
        help="age after which the list is stale (default 72h) [INTERCEPT_MAX_STALENESS]",
    )
    g.add_argument(
        "--ca-bundle",
        default=_env("INTERCEPT_CA_BUNDLE"),
        help="CA bundle for https [INTERCEPT_CA_BUNDLE]",
    )
    g.add_argument("--proxy", default=_env("INTERCEPT_PROXY"), help="HTTP proxy [INTERCEPT_PROXY]")


def _make_client(args: argparse.Namespace, **extra: Any) -> Any:
    from .._client.client import Client

    missing = [n for n in ("platform", "trust_root", "cache_dir") if not getattr(args, n)]
    if missing:
        flags = ", ".join("--" + n.replace("_", "-") for n in missing)
        raise ConfigurationError(f"missing {flags} (or the INTERCEPT_* environment variables)")
    return Client(
        args.platform,
        args.trust_root,
        args.cache_dir,
        args.subscriber_id,
        subscriber_key=args.subscriber_key,
        max_staleness=args.max_staleness,
        ca_bundle=args.ca_bundle,
        proxy=args.proxy,
        **extra,
    )


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, ensure_ascii=False, indent=2, default=str))


# -- platform-side commands -----------------------------------------------------------
def cmd_keygen(args: argparse.Namespace) -> int:
    from .._platform.keys import keygen
    from .._util import parse_duration

    root = keygen(
        Path(args.keys),
        signers=args.signers,
        threshold=args.threshold,
        online_signers=args.online_signers,
        online_threshold=args.online_threshold,
        root_expires=parse_duration(args.root_expires),
    )
    if _wants_json(args):
        _print_json({"keys": args.keys, "trust_root": str(root)})
        return EXIT_OK
    print(f"keys written to {args.keys}; trust root (pin this in clients): {root}")
    return EXIT_OK


def cmd_root_rotate(args: argparse.Namespace) -> int:
    from .._platform.keys import rotate_root
    from .._util import parse_duration

    version = rotate_root(
        Path(args.keys),
        new_root_signers=args.signers,
        new_threshold=args.threshold,
        rotate_online=args.rotate_online,
        expires=parse_duration(args.expires),
    )
    if _wants_json(args):
        _print_json({"root_version": version})
        return EXIT_OK
    print(f"root version {version} written; publish again to put it on the site")
    return EXIT_OK


def cmd_publish(args: argparse.Namespace) -> int:
    from .._platform.publish import publish
    from .._util import parse_duration

    bar = Progress("publish", None, quiet=args.quiet)
    result = publish(
        Path(args.source),
        Path(args.keys),
        Path(args.site),
        expires=parse_duration(args.expires),
        keep_deltas=args.keep_deltas,
        progress=bar.update,
        work_factor=args.work_factor,
        rotate_after=parse_duration(args.rotate_after),
    )
    bar.close()
    if _wants_json(args):
        _print_json(
            {
                "version": result.version,
                "entries": result.entries,
                "restricted_entries": result.restricted_entries,
                "quarantined": len(result.quarantined),
                "quarantine_path": str(result.quarantine_path),
                "snapshot_bytes": result.snapshot.length,
                "deltas": len(result.deltas),
                "seconds": round(result.seconds, 3),
            }
        )
    elif not args.quiet:
        print(
            f"published version {result.version}: {result.entries:,} public entries, "
            f"{result.restricted_entries} restricted, {len(result.quarantined)} quarantined "
            f"({result.quarantine_path}), snapshot {result.snapshot.length:,} bytes, "
            f"{len(result.deltas)} deltas, {len(result.boxes)} subscriber boxes, key epoch "
            f"{result.key_epoch}{' (new)' if result.rotated else ''}, {result.seconds:.1f}s"
        )
        for item in result.quarantined[:10]:
            print(f"  quarantined line {item[0]} {item[1]}: {'; '.join(item[2])}")
    return EXIT_OK


def cmd_serve(args: argparse.Namespace) -> int:
    from .._platform.server.process import default_state_dir, serve_command

    state = Path(args.state) if args.state else default_state_dir()

    def ready(url: str) -> None:
        print(f"listening on {url} (serving {args.site}; Ctrl-C stops)", flush=True)
        print(f"state in {state}; operator token: {state / 'operator.token'}", flush=True)

    return serve_command(
        site=Path(args.site),
        subscribers=Path(args.subscribers) if args.subscribers else None,
        state=state,
        database=args.database,
        behind_proxy=args.behind_proxy,
        host=args.host,
        port=args.port,
        log_level="info" if args.verbose else "warning",
        access_log=args.verbose,
        on_ready=ready,
    )


def cmd_subscriber_keygen(args: argparse.Namespace) -> int:
    from .._client.keys import subscriber_keygen

    report_pub, box_pub = subscriber_keygen(Path(args.out))
    if _wants_json(args):
        _print_json({"report_key": str(report_pub), "restricted_key": str(box_pub)})
        return EXIT_OK
    print(f"subscriber keys in {args.out}; register the public keys with the platform:")
    print(f"  report key:     {report_pub}\n  restricted key: {box_pub}")
    return EXIT_OK


def cmd_subscriber_add(args: argparse.Namespace) -> int:
    from .._platform.keys import add_subscriber

    def read(p: str | None) -> bytes | None:
        if p is None:
            return None
        try:
            return Path(p).read_bytes()
        except OSError as exc:
            raise ConfigurationError(f"cannot read {p}: {exc.strerror}") from None

    pub = args.public_key
    restricted = args.restricted_key
    if pub and Path(pub).is_dir():  # a directory made by `subscriber keygen`
        d = Path(pub)
        pub, restricted = str(d / "report.ed25519.pub.pem"), str(d / "restricted.x25519.pub.pem")
    add_subscriber(Path(args.keys), args.id, read(pub), read(restricted))
    print(f"subscriber {args.id} registered in {args.keys}")
    if args.token:
        from .._platform.keys import issue_subscriber_token

        token = issue_subscriber_token(Path(args.keys), args.id)
        print(f"read token for {args.id} (shown once; GET /reports with Bearer): {token}")
    return EXIT_OK


# -- client commands ------------------------------------------------------------------
def cmd_sync(args: argparse.Namespace) -> int:
    with _make_client(args) as client:
        bar = Progress("sync", None, quiet=args.quiet)
        result = client.sync(progress=bar.update)
        bar.close()
        if _wants_json(args):
            _print_json(
                {
                    "mode": result.mode,
                    "from_version": result.from_version,
                    "to_version": result.to_version,
                    "bytes_downloaded": result.bytes_downloaded,
                    "fallback_reason": result.fallback_reason,
                }
            )
        elif not args.quiet:
            print(
                f"{result.mode}: version {result.from_version} -> {result.to_version}, "
                f"{result.bytes_downloaded:,} bytes downloaded"
                + (f" (fallback: {result.fallback_reason})" if result.fallback_reason else "")
            )
    return EXIT_OK


def _subject_from(row: dict[str, str | None]) -> Any:
    from .._client.decisions import Entity, Person

    idn, uscc, org = row.get("id_number"), row.get("uscc"), row.get("org_code")
    name = row.get("name") or None
    if idn:
        return Person(idn, name)
    if uscc or org:
        return Entity(uscc=uscc or None, org_code=org or None, name=name)
    raise InvalidInput("give --id-number, --uscc or --org-code")


def cmd_check(args: argparse.Namespace) -> int:
    subject = _subject_from(
        {
            "id_number": args.id_number,
            "uscc": args.uscc,
            "org_code": args.org_code,
            "name": args.name,
        }
    )
    with _make_client(args, audit=True) as client:
        decision = client.check(subject, args.measure)
        if _wants_json(args):
            _print_json(decision.to_dict())
        else:
            print(
                f"{decision.action.upper()}  {decision.measure} ({decision.measure_title}), "
                f"list version {decision.list_version}{'  [STALE]' if decision.stale else ''}"
            )
            for m in decision.matches:
                print(
                    f"  {m.entry_id} {m.case_no} {m.court} relation={m.relation} {m.name} "
                    f"{m.masked_id or ''} 未履行 {m.unperformed_amount}"
                )
            if decision.reasons:
                print("  reasons: " + ", ".join(decision.reasons))
            if decision.action == "block":
                print(client.notice(decision))
    if args.fail_on_block and decision.action == "block":
        return EXIT_BLOCK
    if args.fail_on_block and decision.action == "review":
        return EXIT_REVIEW
    return EXIT_OK


def _pairs(items: Sequence[str] | None, flag: str) -> dict[str, str]:
    """``key=value`` arguments as a dict (InvalidInput naming ``flag`` otherwise)."""
    out: dict[str, str] = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InvalidInput(f"{flag} takes key=value, got {item!r}")
        out[key] = value
    return out


def cmd_block(args: argparse.Namespace) -> int:
    """``check``, and on block queue the interception report and exit 3 (the notice on
    stdout, or the JSON ``{"intercepted", "decision", "notice", "report_id"}``)."""
    from .._exceptions import Intercepted

    subject = _subject_from(
        {
            "id_number": args.id_number,
            "uscc": args.uscc,
            "org_code": args.org_code,
            "name": args.name,
        }
    )
    context = _pairs(args.context, "--context")
    with _make_client(args) as client:
        try:
            decision = client.block(subject, args.measure, **context)
        except Intercepted as stop:
            if _wants_json(args):
                _print_json(
                    {
                        "intercepted": True,
                        "decision": stop.decision.to_dict(),
                        "notice": stop.notice,
                        "report_id": stop.report_id,
                    }
                )
            else:
                print(stop.notice)
                print(f"interception report queued: {stop.report_id}", file=sys.stderr)
            client.flush_reports(args.timeout)
            return EXIT_BLOCK
        if _wants_json(args):
            _print_json({"intercepted": False, "decision": decision.to_dict()})
        else:
            print(
                f"{decision.action.upper()}  {decision.measure}, "
                f"list version {decision.list_version}"
            )
    return EXIT_REVIEW if decision.action == "review" else EXIT_OK


def _file_report(args: argparse.Namespace, client: Any) -> int:
    """``reports file``: queue one signed report and try to upload it within --timeout."""
    if not args.kind:
        raise InvalidInput("reports file needs --kind (objection, lift, review_outcome, ...)")
    details = _pairs(args.detail, "--detail")
    report_id = client.report(args.kind, args.entry_id, **details)
    sent = client.flush_reports(args.timeout)
    if _wants_json(args):
        _print_json({"report_id": report_id, "uploaded": sent})
    else:
        print(f"report {report_id} queued" + (" and uploaded" if sent else " (upload pending)"))
    return EXIT_OK


def _read_subjects(path: str) -> Iterator[Any]:
    """The subjects of a CSV file; a bad row raises :class:`InvalidInput` naming its line."""
    for _line, row in _read_rows(path):
        if isinstance(row, InvalidInput):
            raise row
        yield row


def _read_rows(path: str) -> Iterator[tuple[int, Any]]:
    """``(line, subject or InvalidInput)`` for each data row of a CSV file."""
    with open(path, newline="", encoding="utf-8-sig") as f:
        for n, row in enumerate(csv.DictReader(f), 2):
            try:
                yield n, _subject_from(row)
            except InvalidInput as exc:
                yield n, InvalidInput(f"{path} line {n}: {exc}")


_SCREEN_COLUMNS = [
    "row",
    "action",
    "measure",
    "entries",
    "case_nos",
    "relations",
    "reasons",
    "stale",
    "list_version",
    "error",
]


def _screened(client: Any, path: str, measure: str) -> Iterator[tuple[int, Any]]:
    """``(row number, Decision or InvalidInput)`` in input order: bad rows are reported
    in place and do not stop the screening."""
    import itertools

    rows = _read_rows(path)
    i = 0
    while True:
        chunk = list(itertools.islice(rows, 2000))
        if not chunk:
            return
        good = [subject for _, subject in chunk if not isinstance(subject, InvalidInput)]
        decisions = iter(client.screen(good, measure)) if good else iter(())
        for _, subject in chunk:
            i += 1
            yield i, subject if isinstance(subject, InvalidInput) else next(decisions)


def _screen_row(i: int, d: Any) -> list[Any]:
    if isinstance(d, InvalidInput):
        return [i, "error", "", "", "", "", "", "", "", str(d)]
    return [
        i,
        d.action,
        d.measure,
        ";".join(m.entry_id for m in d.matches),
        ";".join(m.case_no for m in d.matches),
        ";".join(m.relation for m in d.matches),
        ";".join(d.reasons),
        d.stale,
        d.list_version,
        "",
    ]


def cmd_screen(args: argparse.Namespace) -> int:
    with open(args.input, encoding="utf-8-sig") as f:
        total = max(0, sum(1 for _ in f) - 1)
    as_json = _wants_json(args)
    counts: dict[str, int] = {}
    with _make_client(args) as client:
        client.screen([], args.measure)  # an unknown measure fails before any output
        out = (
            open(args.output, "w", newline="", encoding="utf-8")  # noqa: SIM115 - closed below
            if args.output != "-"
            else sys.stdout
        )
        try:
            bar = Progress("screen", total, quiet=args.quiet or args.output == "-")
            writer = csv.writer(out)
            if not as_json:
                writer.writerow(_SCREEN_COLUMNS)
            for i, d in _screened(client, args.input, args.measure):
                action = "error" if isinstance(d, InvalidInput) else d.action
                counts[action] = counts.get(action, 0) + 1
                if as_json:
                    body = {"row": i, "error": str(d)} if action == "error" else d.to_dict()
                    out.write(json.dumps({"row": i, **body}, ensure_ascii=False) + "\n")
                else:
                    writer.writerow(_screen_row(i, d))
                bar.advance()
            bar.close()
        finally:
            if out is not sys.stdout:
                out.close()
    if not args.quiet and args.output != "-":
        print(
            "screened " + ", ".join(f"{k}: {v:,}" for k, v in sorted(counts.items())),
            file=sys.stderr,
        )
    return EXIT_ERROR if counts.get("error") and args.strict else EXIT_OK


def cmd_watch(args: argparse.Namespace) -> int:
    subjects = list(_read_subjects(args.input))

    as_json = _wants_json(args)

    def on_change(changes: Sequence[Any]) -> None:
        for c in changes:
            ids = ";".join(m.entry_id for m in c.after.matches) or "-"
            if as_json:
                event = {
                    "event": "change",
                    "kind": c.kind,
                    "row": subjects.index(c.subject) + 2,
                    "decision": c.after.to_dict(),
                }
                print(json.dumps(event, ensure_ascii=False), flush=True)
                continue
            print(
                f"{c.kind}: row {subjects.index(c.subject) + 2} -> {c.after.action} ({ids}) "
                f"version {c.after.list_version}",
                flush=True,
            )

    with _make_client(args, poll_interval=args.interval) as client:
        try:
            client.sync()
        except InterceptError as exc:
            print(f"initial sync failed: {exc}", file=sys.stderr)
        w = client.watch(subjects, args.measure, on_change)
        listed = sum(1 for d in w.last.values() if d.action != "allow")
        if as_json:
            start = {"event": "watching", "subjects": len(subjects), "restricted": listed}
            print(json.dumps({**start, "measure": args.measure}), flush=True)
        else:
            print(
                f"watching {len(subjects)} subjects for {args.measure}: "
                f"{listed} currently restricted",
                flush=True,
            )
        client.start_background()
        deadline = time.monotonic() + (args.duration if args.duration else float("inf"))
        try:
            while time.monotonic() < deadline:
                time.sleep(0.2)
        except KeyboardInterrupt:
            pass
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    """Status and readiness: exits 0 only when the cache is ready (see the module doc)."""
    with _make_client(args, audit=False) as client:
        st = client.status()
        health = client.health()
        data = {**st.to_dict(), "ready": health.ready, "reasons": list(health.reasons)}
        if _wants_json(args):
            _print_json(data)
        else:
            for k, v in data.items():
                print(f"{k:18} {v}")
    return EXIT_OK if health.ready else EXIT_ERROR


def cmd_verify(args: argparse.Namespace) -> int:
    with _make_client(args, audit=False) as client:
        state = client.verify()
        if _wants_json(args):
            _print_json({"ok": True, "version": state.version, "entries": state.entries})
        else:
            print(f"ok: version {state.version}, {state.entries:,} entries match the signed digest")
    return EXIT_OK


def cmd_audit_verify(args: argparse.Namespace) -> int:
    """Verify the audit log: the keyed chains, INDEX, and every checkpoint signature.

    Needs the subscriber's public key (``--public-key``, else derived from the configured
    subscriber key) and the cache's ``audit.key``; without a key it refuses (exit 2)
    rather than pass a log it could not check.
    """
    from .._client.audit import AUDIT_KEY_FILE, load_verifying_key, verify_audit

    source = args.public_key or args.subscriber_key
    if not source:
        raise ConfigurationError(
            "audit verify needs the subscriber's public key to check the signed checkpoints: "
            "give --public-key (report.ed25519.pub.pem or the key directory) or set "
            "INTERCEPT_SUBSCRIBER_KEY"
        )
    key = load_verifying_key(source)
    directory = Path(args.dir) if args.dir else Path(args.cache_dir or ".") / "audit"
    audit_key = Path(args.audit_key) if args.audit_key else directory.parent / AUDIT_KEY_FILE
    report = verify_audit(directory, public_key=key, audit_key=audit_key)
    if _wants_json(args):
        _print_json(
            {
                "ok": report.ok,
                "files": report.files,
                "records": report.records,
                "checkpoints": report.checkpoints,
                "warnings": [str(w) for w in report.warnings],
                "problems": [str(p) for p in report.problems],
            }
        )
        return EXIT_OK if report.ok else EXIT_ERROR
    print(
        f"{report.files} files, {report.records:,} records, {report.checkpoints} signed checkpoints"
    )
    for w in report.warnings:
        print(f"  WARNING {w}")
    for p in report.problems:
        print(f"  PROBLEM {p}")
    return EXIT_OK if report.ok else EXIT_ERROR


def cmd_reports(args: argparse.Namespace) -> int:
    if args.server:
        import httpx

        token = os.environ.get("INTERCEPT_PLATFORM_TOKEN", "")  # operator or subscriber
        resp = httpx.get(
            args.server.rstrip("/") + "/reports",
            params={"limit": args.limit},
            headers={"Authorization": f"Bearer {token}"} if token else None,
            timeout=10,
        )
        resp.raise_for_status()
        _print_json(resp.json())
        return EXIT_OK
    action = args.action or "list"
    with _make_client(args, audit=False) as client:
        core = client._core
        if action == "file":
            return _file_report(args, client)
        if action == "list":
            st = client.status()
            if _wants_json(args):
                dead = [
                    {"report_id": d.report_id, "status": d.status, "reason": d.reason}
                    for d in core.outbox.dead_letters()
                ]
                _print_json(
                    {
                        "pending": st.pending_reports,
                        "sent": st.sent_reports,
                        "dead_letters": st.dead_letters,
                        "dead": dead,
                    }
                )
                return EXIT_OK
            print(
                f"pending {st.pending_reports}, sent {st.sent_reports}, "
                f"dead letters {st.dead_letters}"
            )
            for d in core.outbox.dead_letters():
                print(f"  DEAD {d}")
        elif action == "flush":
            ok = client.flush_reports(args.timeout)
            st = client.status()
            if _wants_json(args):
                _print_json(
                    {
                        "flushed": ok,
                        "pending": st.pending_reports,
                        "sent": st.sent_reports,
                        "dead_letters": st.dead_letters,
                    }
                )
                return EXIT_OK if ok else EXIT_ERROR
            print(
                f"{'flushed' if ok else 'NOT flushed'}: pending {st.pending_reports}, "
                f"sent {st.sent_reports}, dead {st.dead_letters}"
            )
            return EXIT_OK if ok else EXIT_ERROR
        elif action == "summary":
            q = args.quarter or ""
            if len(q) != 6 or q[4] != "Q" or not q[:4].isdigit() or q[5] not in "1234":
                raise InvalidInput("--quarter must look like 2026Q4")
            _print_json(client.quarterly_summary(int(q[:4]), int(q[5]), upload=args.upload))
    return EXIT_OK


def cmd_measures(args: argparse.Namespace) -> int:
    from .._protocol.catalog import measures

    ms = measures()
    if args.json:
        _print_json(
            [
                {
                    "code": m.code,
                    "title": m.title,
                    "category": m.category,
                    "category_title": m.category_title,
                    "action": m.action,
                    "relations": list(m.relations),
                    "officer_roles": list(m.officer_roles),
                    "departments": list(m.departments),
                    "source": {"seed": m.source_seed, "passage": m.source_passage},
                    "trigger": m.trigger,
                }
                for m in ms
            ]
        )
        return EXIT_OK
    print(f"{'code':46} {'action':7} {'relations':55} title")
    for m in ms:
        rel = ",".join(m.relations)
        if m.officer_roles and "officer" in m.relations:
            rel += f" (officer roles: {len(m.officer_roles)})"
        # a measure set off only by a court's assistance notice says so
        title = m.title + (" [须有法院协助执行通知]" if m.trigger == "court_notice" else "")
        print(f"{m.code:46} {m.action:7} {rel:55} {title}")
    categories = len({m.category for m in ms})
    print(f"{len(ms)} measures in {categories} categories")
    return EXIT_OK


def cmd_agent(args: argparse.Namespace) -> int:
    """Run the local sidecar (``_cli/agent.py``) until SIGTERM/Ctrl-C; background mode
    keeps the shared cache in sync unless ``--no-background``."""
    import signal

    from .agent import AgentServer, shutdown_from_signal

    token = _env("INTERCEPT_AGENT_TOKEN")
    if args.token_file:
        try:
            token = Path(args.token_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigurationError(f"cannot read {args.token_file}: {exc.strerror}") from None
    with _make_client(args, poll_interval=args.interval) as client:
        if not args.no_background:
            client.start_background()
        server = AgentServer(
            client,
            host=args.host,
            port=args.port,
            unix_socket=args.unix_socket,
            token=token,
            allow_remote=args.allow_remote,
        )
        signal.signal(signal.SIGTERM, shutdown_from_signal(server))
        ready = {"event": "listening", "url": server.url}
        if _wants_json(args):
            print(json.dumps(ready), flush=True)
        else:
            print(f"agent listening on {server.url} (Ctrl-C stops)", flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            server.stop()
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(Path(args.out) if args.out else None, quiet=args.quiet)


def build_parser() -> argparse.ArgumentParser:
    """The whole command line: global options, then one builder per command group (the
    order of the calls is the order ``--help`` lists the commands in)."""
    p = _Parser(prog="intercept-sdk", description=DESCRIPTION, epilog=EPILOG)
    p.add_argument("-v", "--verbose", action="store_true", help="log to stderr (INFO)")
    p.add_argument("--version", action="version", version=f"intercept-sdk {_version()}")
    p.add_argument(
        "--json", dest="json_all", action="store_true", help="answer in JSON (any command)"
    )
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _add_platform_commands(sub)
    _add_subscriber_commands(sub)
    _add_client_commands(sub)
    __import__("intercept_sdk._cli.lifts", fromlist=["*"]).add_lifts_command(sub)
    _add_record_commands(sub)
    _add_agent_command(sub)
    _add_tool_commands(sub)
    return p


def _add_platform_commands(sub: argparse._SubParsersAction[_Parser]) -> None:
    """The platform's side: keys, root rotation, publishing, the reference server."""
    s = sub.add_parser("keygen", help="create platform keys and root metadata v1")
    s.add_argument("--keys", required=True, help="directory to write the platform keys to")
    s.add_argument("--signers", type=int, default=1, help="root signers (default 1)")
    s.add_argument("--threshold", type=int, default=1, help="root threshold (default 1)")
    s.add_argument(
        "--online-signers", type=int, default=1, help="online (manifest) signers (default 1)"
    )
    s.add_argument(
        "--online-threshold", type=int, default=1, help="online signature threshold (default 1)"
    )
    s.add_argument("--root-expires", default="365d", help="root metadata lifetime (default 365d)")
    s.set_defaults(func=cmd_keygen)

    s = sub.add_parser("root", help="root metadata operations")
    rs = s.add_subparsers(dest="root_command", required=True, parser_class=_Parser)
    r = rs.add_parser("rotate", help="publish root N+1 signed by root N and N+1")
    r.add_argument("--keys", required=True, help="the platform's keys directory")
    r.add_argument("--signers", type=int, default=None, help="new root signers (default: keep)")
    r.add_argument("--threshold", type=int, default=None, help="new root threshold (default: keep)")
    r.add_argument("--rotate-online", action="store_true", help="also replace the online keys")
    r.add_argument("--expires", default="365d", help="new root lifetime (default 365d)")
    r.set_defaults(func=cmd_root_rotate)

    s = sub.add_parser("publish", help="sign the full list into the next site version")
    s.add_argument(
        "--source",
        required=True,
        help="the full list as JSON Lines, one entry per line (docs/source-list.md)",
    )
    s.add_argument("--keys", required=True, help="the platform's keys directory")
    s.add_argument("--site", required=True, help="site directory to publish into")
    s.add_argument("--expires", default="24h", help="manifest lifetime (default 24h)")
    s.add_argument(
        "--keep-deltas", type=int, default=8, help="deltas kept for old versions (default 8)"
    )
    s.add_argument(
        "--work-factor",
        default="hmac",
        help="cost of opening one record: hmac (default) or scrypt[:log2n[:r[:p]]], "
        "log2n 10-17 (decision 0011)",
    )
    s.add_argument(
        "--rotate-after",
        default="30d",
        help="how long one hash key serves before a new key epoch (default 30d)",
    )
    s.add_argument("--quiet", action="store_true", help="no progress bar and no summary")
    s.set_defaults(func=cmd_publish)

    s = sub.add_parser("serve", help="run the reference platform server")
    s.add_argument("--site", required=True)
    s.add_argument(
        "--subscribers", help="directory of registered subscriber keys (KEYS/subscribers)"
    )
    s.add_argument(
        "--state", help="state directory (default $INTERCEPT_PLATFORM_STATE or "
        "~/.local/state/intercept-sdk/platform): operator.token, reports.sqlite"
    )  # fmt: skip
    s.add_argument("--database", help="postgresql://user@host/db (default: SQLite in --state)")
    s.add_argument(
        "--behind-proxy", action="store_true", help="per-client limits off (enforce at the LB)"
    )
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8470, help="0 picks a free port (default 8470)")
    s.add_argument("--verbose-access", dest="verbose", action="store_true", help="access log")
    s.set_defaults(func=cmd_serve)


def _add_subscriber_commands(sub: argparse._SubParsersAction[_Parser]) -> None:
    """A subscriber's key pairs, and their registration with the platform."""
    s = sub.add_parser("subscriber", help="subscriber keys and registration")
    ss = s.add_subparsers(dest="subscriber_command", required=True, parser_class=_Parser)
    k = ss.add_parser("keygen", help="make a subscriber's key pairs")
    k.add_argument("--out", required=True, help="directory to write the key pairs to")
    k.set_defaults(func=cmd_subscriber_keygen)
    a = ss.add_parser("add", help="register a subscriber's public keys with the platform")
    a.add_argument("id")
    a.add_argument("--public-key", required=True, help="report.ed25519.pub.pem (or the keygen dir)")
    a.add_argument("--restricted-key", help="restricted.x25519.pub.pem")
    a.add_argument("--keys", required=True, help="the platform's keys directory")
    a.add_argument(
        "--token", action="store_true", help="also issue a token to read its own reports"
    )
    a.set_defaults(func=cmd_subscriber_add)
    _units.register(ss, sub)  # unit records: add --name..., list, remove; and `stats`


def _subject_args(s: argparse.ArgumentParser) -> None:
    """The one subject of ``check`` and ``block``: an ID number, a USCC or an org code."""
    g = s.add_mutually_exclusive_group(required=True)
    g.add_argument("--id-number", help="a person's 18-character ID number")
    g.add_argument("--uscc", help="an entity's unified social credit code")
    g.add_argument("--org-code", help="an entity's organisation code (older entities)")
    s.add_argument("--name", help="the subject's name (checked against the entry's)")


def _add_client_commands(sub: argparse._SubParsersAction[_Parser]) -> None:
    """The unit's side: sync, decisions (check, screen, watch), status and verify; each
    takes the client configuration (flags or environment, see :func:`_client_args`)."""
    s = sub.add_parser("sync", help="bring the local list up to date")
    _client_args(s)
    s.add_argument("--quiet", action="store_true", help="no progress bar and no summary")
    s.add_argument("--json", action="store_true", help="print the result as JSON")
    s.set_defaults(func=cmd_sync)

    s = sub.add_parser("check", help="decision for one subject")
    _client_args(s)
    s.add_argument("--measure", required=True, help="measure code (intercept-sdk measures)")
    _subject_args(s)
    s.add_argument("--json", action="store_true", help="print the decision as JSON")
    s.add_argument("--fail-on-block", action="store_true", help="exit 3 on block, 4 on review")
    s.set_defaults(func=cmd_check)

    s = sub.add_parser("block", help="check one subject; on block report it and exit 3")
    _client_args(s)
    s.add_argument("--measure", required=True, help="measure code (intercept-sdk measures)")
    _subject_args(s)
    s.add_argument(
        "--context", action="append", metavar="KEY=VALUE", help="report detail, e.g. room=1808"
    )
    s.add_argument("--timeout", type=float, default=10.0, help="seconds to try uploading (10)")
    s.add_argument("--json", action="store_true", help="print the outcome as JSON")
    s.set_defaults(func=cmd_block)

    s = sub.add_parser("screen", help="CSV in (id_number,uscc,org_code,name), CSV of decisions out")
    _client_args(s)
    s.add_argument("--measure", required=True, help="measure code (intercept-sdk measures)")
    s.add_argument("--input", required=True, help="CSV with id_number,uscc,org_code,name columns")
    s.add_argument("--output", default="-", help="where to write decisions (default stdout)")
    s.add_argument("--quiet", action="store_true", help="no progress bar and no summary")
    s.add_argument("--json", action="store_true", help="JSON Lines out, one object per row")
    s.add_argument("--strict", action="store_true", help="exit 1 if any row was an error")
    s.set_defaults(func=cmd_screen)

    s = sub.add_parser("watch", help="supervise a CSV portfolio; print changes as versions arrive")
    _client_args(s)
    s.add_argument("--measure", required=True, help="measure code (intercept-sdk measures)")
    s.add_argument("--input", required=True, help="CSV with id_number,uscc,org_code,name columns")
    s.add_argument("--interval", default="5m", help="poll interval when push is down")
    s.add_argument("--json", action="store_true", help="JSON Lines events")
    s.add_argument(
        "--duration", type=float, default=0, help="stop after N seconds (0: until Ctrl-C)"
    )
    s.set_defaults(func=cmd_watch)

    for name, func, hlp in (
        ("status", cmd_status, "health of the local list"),
        ("verify", cmd_verify, "re-check the cache against the signed digest"),
    ):
        s = sub.add_parser(name, help=hlp)
        _client_args(s)
        s.add_argument("--json", action="store_true", help="print the result as JSON")
        s.set_defaults(func=func)


def _add_record_commands(sub: argparse._SubParsersAction[_Parser]) -> None:
    """What the unit keeps and sends: the audit log, feedback reports."""
    s = sub.add_parser("audit", help="audit log operations")
    au = s.add_subparsers(dest="audit_command", required=True, parser_class=_Parser)
    v = au.add_parser("verify", help="check the audit log's chains, INDEX and signatures")
    v.add_argument(
        "--cache-dir",
        default=_env("INTERCEPT_CACHE_DIR"),
        help="cache directory [INTERCEPT_CACHE_DIR]",
    )
    v.add_argument("--json", action="store_true", help="print the result as JSON")
    v.add_argument("--dir", help="audit directory (default CACHE_DIR/audit)")
    v.add_argument("--audit-key", help="the cache's audit secret (default audit.key beside DIR)")
    v.add_argument("--public-key", help="subscriber report public key (file or key directory)")
    v.add_argument(
        "--subscriber-key",
        default=_env("INTERCEPT_SUBSCRIBER_KEY"),
        help="subscriber key directory, when no --public-key [INTERCEPT_SUBSCRIBER_KEY]",
    )
    v.set_defaults(func=cmd_audit_verify)

    s = sub.add_parser("reports", help="feedback reports: list, flush, summary")
    _client_args(s)
    s.add_argument(
        "action",
        nargs="?",
        choices=["list", "flush", "summary", "file"],
        help="what to do (default list); file: queue one report (--kind, --entry-id, --detail)",
    )
    s.add_argument("--kind", help="file: report kind (objection, lift, review_outcome, ...)")
    s.add_argument("--entry-id", help="file: the entry the report is about")
    s.add_argument(
        "--detail", action="append", metavar="KEY=VALUE", help="file: a report detail (repeat)"
    )
    s.add_argument("--server", help="list the reports a platform server received (GET /reports)")
    s.add_argument("--limit", type=int, default=100, help="with --server: at most N (default 100)")
    s.add_argument(
        "--timeout", type=float, default=30.0, help="flush: seconds to wait (default 30)"
    )
    s.add_argument("--json", action="store_true", help="print the result as JSON")
    s.add_argument("--quarter", help="e.g. 2026Q4 (for summary)")
    s.add_argument("--upload", action="store_true", help="also queue the summary as a report")
    s.set_defaults(func=cmd_reports)


def _add_agent_command(sub: argparse._SubParsersAction[_Parser]) -> None:
    """The local HTTP sidecar for non-Python systems."""
    s = sub.add_parser(
        "agent", help="local HTTP sidecar: check, block, screen, report, status, metrics"
    )
    _client_args(s)
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    s.add_argument("--port", type=int, default=8471, help="TCP port (default 8471; 0 picks one)")
    s.add_argument("--unix-socket", help="listen on this Unix socket (mode 0600) instead of TCP")
    s.add_argument(
        "--token-file", help="require 'Authorization: Bearer <token>' [INTERCEPT_AGENT_TOKEN]"
    )
    s.add_argument(
        "--allow-remote", action="store_true", help="allow a non-loopback --host (needs a token)"
    )
    s.add_argument("--interval", default="5m", help="poll interval when push is down")
    s.add_argument("--no-background", action="store_true", help="do not sync in the background")
    s.add_argument("--json", action="store_true", help="print the listening URL as JSON")
    s.set_defaults(func=cmd_agent)


def _add_tool_commands(sub: argparse._SubParsersAction[_Parser]) -> None:
    """Reference material and the end-to-end demo."""
    s = sub.add_parser("measures", help="the measure catalog")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_measures)

    s = sub.add_parser("demo", help="end-to-end demo on an embedded local platform")
    s.add_argument("--out", help="where to keep the demo files (default: a new temp dir)")
    s.add_argument("--quiet", action="store_true", help="print only the summary")
    s.set_defaults(func=cmd_demo)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.verbose:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
        logging.getLogger("intercept_sdk").addHandler(handler)
        logging.getLogger("intercept_sdk").setLevel(logging.INFO)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return EXIT_OK
    except Exception as exc:  # the command line never shows a traceback
        return _report_error(args, exc)


def _report_error(args: argparse.Namespace, exc: BaseException) -> int:
    """One line on stderr (JSON with --json) and the exit code for ``exc``."""
    code = EXIT_ERROR
    if isinstance(exc, NeverSynced):
        message = "no verified list in the cache yet: run `intercept-sdk sync` first"
    elif isinstance(exc, (InvalidInput, ConfigurationError)):
        message, code = str(exc), EXIT_USAGE
    elif isinstance(exc, FileNotFoundError):
        message, code = f"no such file: {exc.filename}", EXIT_USAGE
    elif isinstance(exc, OSError):
        message = f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else "")
    elif isinstance(exc, InterceptError):
        message = str(exc)
    else:
        log.debug("unexpected error", exc_info=exc)
        message = f"unexpected error: {exc}"
    kind = type(exc).__name__
    if _wants_json(args):
        print(json.dumps({"error": message, "kind": kind}, ensure_ascii=False), file=sys.stderr)
    elif code == EXIT_USAGE:
        print(f"intercept-sdk: error: {message}", file=sys.stderr)
    else:
        print(f"intercept-sdk: {kind}: {message}", file=sys.stderr)
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
