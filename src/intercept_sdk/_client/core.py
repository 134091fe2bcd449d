"""The core both clients share: its parts, built once, and the client's life cycle.

Why: ``Client`` and ``AsyncClient`` are thin faces over one core, so the two cannot
drift apart in what they verify, decide or report (decision 0007). The core itself only
assembles small parts, each with one responsibility, and owns what belongs to the whole
client (sync and its errors, status, verify, close, fork):

========================  =============================================================
:mod:`.options`           the options, validated; the pinned trust root
:mod:`.freshness`         the cache's clock (high-water mark) and staleness
:mod:`.lookup`            keys and hits of subjects in the verified list
:mod:`.screening`         ``check`` and ``screen``, audited
:mod:`.reporting`         reports, interceptions, data errors, the quarterly summary
:mod:`.watches`           watches and their change events; ledger listeners
:mod:`.ledger`            the restriction ledger: what was enforced, lifts due
:mod:`.background`        the background engine and its thread driver
:mod:`.health`            sync outcomes shared by every process on the cache; probes
:mod:`.metrics`           counters and gauges (Prometheus text, OpenTelemetry)
:mod:`.hooks`             event hooks
========================  =============================================================

Guarantees: ``close()`` is idempotent and bounded by its timeout; the background thread
is a daemon, re-created lazily in a forked child (``os.register_at_fork``); one sync at
a time per client (and per cache, by the updater's lock); a failed sync leaves the last
good version in force and is reported in ``status()`` of every process on the cache
(:mod:`.health`); ``close()`` also delivers reports left queued (by this process or by
one that was killed) within its timeout.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

from .._exceptions import HTTPStatusError, Intercepted, InterceptError, StoreCorrupted
from .audit import AuditLog
from .background import Engine, SyncOutcome, Tasks, ThreadDriver
from .decisions import Decision, Subject
from .fetch import HttpFetcher, make_fetcher
from .freshness import CacheClock, Staleness
from .health import Health, SharedOutcomes, health_of
from .hooks import EventHooks
from .ledger import Deadlines, Ledger, LedgerEvent
from .lookup import Lookup
from .metrics import Metrics
from .options import ClientOptions, Config, configure
from .outbox import Outbox, Sender
from .push import PushChannel
from .reporting import Reporter
from .screening import Decider, Measures
from .status import LastError, Lifecycle, Status
from .store import Store, StoreState
from .sync import SyncResult, Updater
from .watches import Watches

__all__ = ["_Core"]

log = logging.getLogger("intercept_sdk.client")


class _Core:
    """Everything both clients share (see the module docstring). Not public API."""

    def __init__(
        self,
        platform: str | os.PathLike[str],
        trust_root: str | os.PathLike[str] | bytes,
        cache_dir: str | os.PathLike[str],
        subscriber_id: str | None = None,
        options: ClientOptions | None = None,
    ) -> None:
        cfg = self.config = configure(
            platform, trust_root, cache_dir, subscriber_id, options or ClientOptions()
        )
        self.metrics: Metrics = cfg.options.metrics or Metrics()
        self.hooks = EventHooks.of(cfg.options.hooks)
        self.outcomes = SharedOutcomes(cfg.cache_dir)
        self.platform, self.cache_dir, self.subscriber_id = (
            cfg.platform,
            cfg.cache_dir,
            subscriber_id,
        )
        o = cfg.options
        self.deadlines = Deadlines.of(
            o.lift_deadline_days, o.feedback_due_days, o.holidays, o.extra_workdays
        )
        self._life = Lifecycle()
        self.clock = CacheClock(cfg.cache_dir, cfg.options.clock)
        self.http = cfg.options.http
        self.fetcher = make_fetcher(cfg.platform, **self.http.fetcher_options(cfg.retry))
        self.store = Store(cfg.cache_dir)
        self.updater = Updater(
            cfg.cache_dir,
            cfg.root_bytes,
            self.fetcher,
            self.store,
            subscriber_id=subscriber_id,
            restricted_key=cfg.keys.restricted if cfg.keys else None,
            clock=self.clock.now,
        )
        self._build_parts(cfg)
        self._sync_lock = threading.Lock()
        self._last_error: LastError | None = None
        self._push_connected = False
        self.background = ThreadDriver(self.tasks)
        self.metrics.gauges = self._gauges
        _register_fork_handler(self)

    def _build_parts(self, cfg: Config) -> None:
        """The audit log, the outbox and its sender, and the parts that decide and report."""
        opts = cfg.options
        self.audit = (
            AuditLog(cfg.cache_dir / "audit", signing_key=cfg.keys.report if cfg.keys else None)
            if opts.audit
            else None
        )
        self.outbox = Outbox(cfg.cache_dir / "outbox.sqlite", max_bytes=opts.outbox_max_bytes)
        http = self.http
        self.sender = (
            Sender(
                self.outbox,
                cfg.platform,
                transport=http.report_transport
                if http.report_transport is not None
                else http.transport,
                max_rate=opts.report_rate,
                retry=cfg.retry,
                proxy=http.proxy,
                verify=http.verify(),
                timeout=http.timeout(read=max(http.read_timeout, 30.0)),
            )
            if isinstance(self.fetcher, HttpFetcher)
            else None
        )
        self.staleness = Staleness(self.clock, self.updater, cfg.max_staleness)
        self.lookup = Lookup(self.store, self.updater)
        self.ledger = Ledger(cfg.cache_dir, self.deadlines, clock=self.clock.now)
        measures = Measures(cfg.subscribed)
        self.reporter = Reporter(
            self.outbox,
            self.sender,
            self.clock,
            life=self._life,
            subscriber_id=cfg.subscriber_id,
            keys=cfg.keys,
            unit_name=opts.unit_name,
            jurisdiction=opts.jurisdiction,
            measure=measures,
            audit=self.audit,
            audit_dir=cfg.cache_dir / "audit",
            ledger=self.ledger,
            on_events=self._deliver,
        )
        self.decider = Decider(
            self.lookup,
            self.clock,
            self.staleness,
            self.audit,
            life=self._life,
            stale_action=cfg.stale_action,
            measures=measures,
            on_data_errors=self.reporter.data_errors,
            metrics=self.metrics,
        )
        self.watches = Watches(self.store, self.lookup, self.decider, self._life)
        # The hot path goes straight to the decider (no extra call per check).
        self.check: Callable[[Subject, str], Decision] = self.decider.check
        self.tasks = Tasks(
            sync=self.background_sync,
            local_version=self.local_version,
            connected=self._set_push_connected,
            closed=lambda: self._life.closed,
            channel=self._push_channel(cfg),
            engine=lambda: Engine(
                cfg.poll_interval, push=self.tasks.channel is not None, retry=cfg.retry
            ),
        )

    def _push_channel(self, cfg: Config) -> PushChannel | None:
        url = PushChannel.url_of(cfg.platform) if cfg.options.push else None
        if url is None:
            return None
        return PushChannel(
            url,
            connect_timeout=self.http.connect_timeout,
            proxy=self.http.proxy,
            verify=self.http.verify(),
            transport=self.http.transport,
        )

    # -- sync ----------------------------------------------------------------------------
    def sync(self, progress: Callable[[int, int], None] | None = None) -> SyncResult:
        """Bring the list up to date now; raises on failure (recorded for ``status()`` of
        every process on the cache, counted, and told to the ``sync_failed`` hooks)."""
        self._life.check_open()
        with self._sync_lock:
            try:
                result = self.updater.sync(progress)
            except (InterceptError, OSError) as exc:
                self._sync_failed(exc)
                raise
            if result.mode == "locked":
                self.metrics.count_sync("busy")
            else:
                self._sync_succeeded(result)
        self.watches.after_version_change()
        self._after_sync()
        return result

    def _deliver(self, events: list[LedgerEvent]) -> None:
        """Ledger events to the listeners (the watches part holds them)."""
        self.watches.deliver(events)

    def _after_sync(self) -> None:
        """Reconcile the restriction ledger with the list just verified (lift-due and
        overdue events to the listeners) and queue owed quarterly summaries; logged,
        never raised (the sync itself succeeded)."""
        try:
            events = self.ledger.reconcile(
                self.lookup.published, self.local_version(), now=self.clock.now()
            )
            self.watches.deliver(events)
        except Exception:
            log.exception("restriction ledger not reconciled; retried after the next sync")
        with contextlib.suppress(Exception):
            self.reporter.maybe_quarterly()

    def _sync_failed(self, exc: BaseException) -> None:
        status = exc.status_code if isinstance(exc, HTTPStatusError) else None
        error = self._last_error = LastError(type(exc).__name__, str(exc), status, self.clock.now())
        outcome = self.outcomes.record(error, error.at)
        self.metrics.count_sync("failed")
        log.warning(
            "sync failed (%d in a row): %s: %s", outcome.consecutive_failures, error.kind, exc
        )
        self.hooks.emit(
            "sync_failed",
            error=error.kind,
            message=error.message,
            http_status=status,
            consecutive_failures=outcome.consecutive_failures,
        )

    def _sync_succeeded(self, result: SyncResult) -> None:
        self.clock.mark_success()
        self.staleness.forget()
        self._last_error = None
        self.outcomes.record(None, self.clock.now())
        self.metrics.count_sync("ok")
        self.hooks.emit("sync_succeeded", version=result.to_version, mode=result.mode)
        if result.mode in ("delta", "snapshot"):
            self.hooks.emit("version_changed", version=result.to_version)

    def background_sync(self) -> SyncOutcome:
        """One sync for the background engine; never raises (failures are in
        ``status()``, the last good version stays in force). ``"busy"`` when another
        process held the cache's sync lock. Also uploads last quarter's summary once it
        has closed."""
        outcome: SyncOutcome = "failed"
        try:
            outcome = "busy" if self.sync().mode == "locked" else "ok"
        except (InterceptError, OSError):
            pass  # recorded in status()
        except Exception as exc:  # never let the background loop die silently
            log.exception("unexpected error in background sync")
            with contextlib.suppress(Exception):
                self._sync_failed(exc)
        with contextlib.suppress(Exception):
            self.reporter.maybe_quarterly()
        return outcome

    def local_version(self) -> int:
        state = self.store.state()
        return state.version if state else 0

    def _set_push_connected(self, connected: bool) -> None:
        self._push_connected = connected

    # -- background ----------------------------------------------------------------------
    def start_background(self) -> None:
        """Start the sync thread and the report sender; idempotent."""
        self._life.check_open()
        self.background.start()
        if self.sender is not None:
            self.sender.start()

    def wake(self) -> None:
        """Ask the background thread to sync now."""
        self.background.wake()

    @property
    def _bg(self) -> threading.Thread | None:
        """The background thread, if started (for white-box tests)."""
        return self.background.thread

    def _after_fork(self) -> None:
        """In a forked child: forget the parent's threads and locks; restart lazily."""
        self._sync_lock = threading.Lock()
        self.watches.after_fork()
        if self.background.after_fork() and not self._life.closed:
            self.start_background()

    # -- what the faces cannot take from one part -----------------------------------------
    def block(self, subject: Subject, measure: str, **context: Any) -> Decision:
        """``check``, and on a block the interception (reported) raised."""
        decision = self.check(subject, measure)
        if decision.action == "block":
            raise self.intercepted(decision, context, subject)
        self.reporter.enforced(subject, decision)  # a review is kept too (never raises)
        return decision

    def intercepted(
        self, decision: Decision, context: dict[str, Any], subject: Subject | None = None
    ) -> Intercepted:
        """The interception of a block decision: reported durably (and kept in the
        restriction ledger when ``subject`` is given), told to the hooks."""
        exc = self.reporter.intercepted(decision, context, subject)
        self.hooks.emit(
            "intercepted",
            measure=decision.measure,
            entry_ids=list(decision.entry_ids),
            report_id=exc.report_id,
        )
        return exc

    def report(self, kind: str, decision_or_entry: Any = None, **details: Any) -> str:
        """Queue a signed report (see ``Client.report``), told to the hooks."""
        report_id = self.reporter.report(kind, decision_or_entry, **details)
        self.hooks.emit("report_queued", kind=kind, report_id=report_id)
        return report_id

    def flush_reports(self, timeout: float = 10.0) -> bool:
        """Upload pending reports now; True when the queue is empty within ``timeout``."""
        if self.sender is None:
            return self.outbox.pending_count() == 0
        self.sender.start()
        return self.sender.flush(timeout)

    # -- status / verify / close ---------------------------------------------------------
    def status(self) -> Status:
        state = self.store.state()
        now = self.clock.now()
        expires = None
        stale = True
        if state is not None:
            with contextlib.suppress(InterceptError):
                expires = self.staleness.manifest_expiry(state)
                stale = self.staleness.is_stale(state, now)
        sender_error = self.sender.last_error if self.sender else None
        return Status(
            list_version=state.version if state else None,
            entries=state.entries if state else None,
            last_success=self.clock.last_success(),
            manifest_expires=expires,
            stale=stale,
            last_error=self._shared_last_error(),
            pending_reports=self.outbox.pending_count(),
            dead_letters=self.outbox.dead_count(),
            sent_reports=self.outbox.sent_count(),
            report_error=str(sender_error) if sender_error else None,
            platform=self.platform,
            cache_dir=str(self.cache_dir),
            push_connected=self._push_connected,
            **self.reporter.accountability(now),
        )

    def _shared_last_error(self) -> LastError | None:
        """The newest sync outcome on the cache (any process), else this process's."""
        shared = self.outcomes.read()
        if shared is None:
            return self._last_error
        return shared.error if not shared.ok else None

    def health(self) -> Health:
        """Liveness and readiness, for probes (see :class:`~.health.Health`)."""
        if self._life.closed:
            return Health(False, False, ("the client is closed",), None, 0)
        return health_of(self.status(), self.outcomes.read(), closed=self._life.closed)

    def _gauges(self) -> dict[str, float | None]:
        """The metrics' gauges, read at scrape time."""
        st = self.status()
        now = self.clock.now()
        shared = self.outcomes.read()
        lag = (now - st.last_success).total_seconds() if st.last_success else None
        return {
            "sync_lag_seconds": lag,
            "list_version": st.list_version,
            "list_age_seconds": lag,
            "list_stale": 1.0 if st.stale else 0.0,
            "outbox_pending": st.pending_reports,
            "outbox_dead_letters": st.dead_letters,
            "sync_consecutive_failures": shared.consecutive_failures if shared else 0,
        }

    def verify(self) -> StoreState:
        state = self.store.verify()
        manifest = self.updater.reload_manifest()
        if manifest is None or manifest.state_sha256 != state.state_sha256:
            raise StoreCorrupted("the cached state does not match the signed manifest's digest")
        return state

    def close(self, timeout: float = 5.0) -> None:
        if self._life.closed:
            return
        self._life.closed = True
        deadline = time.monotonic() + timeout
        self.background.stop(max(0.0, min(2.0, deadline - time.monotonic())))
        if self.sender is not None:
            # Reports still queued (this process's, or a killed one's): deliver them now,
            # within the timeout, even if this client never ran in background mode.
            with contextlib.suppress(InterceptError, OSError):
                if self.outbox.has_pending():
                    self.sender.start()
            self.sender.close(max(0.1, deadline - time.monotonic()))
        if self.audit is not None:
            self.audit.close(max(0.1, min(2.0, deadline - time.monotonic())))
        for part in (self.outbox, self.fetcher, self.store, self.ledger):
            with contextlib.suppress(Exception):
                part.close()


_cores: weakref.WeakSet[_Core] = weakref.WeakSet()
_fork_hook_installed = False


def _child_after_fork() -> None:
    for core in list(_cores):
        with contextlib.suppress(Exception):
            core._after_fork()


def _register_fork_handler(core: _Core) -> None:
    """Make a forked child re-create ``core``'s threads lazily (one hook per process)."""
    global _fork_hook_installed
    if not _fork_hook_installed and hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=_child_after_fork)
        _fork_hook_installed = True
    _cores.add(core)
