"""Client and AsyncClient: the public face of the SDK.

Both are thin faces over one shared core (:class:`~.core._Core`: store, updater,
decision rules, audit log, outbox, see :mod:`.core` for its parts). The core is
synchronous because everything on the check path is local and takes microseconds;
sync/apply is disk-bound SQLite work, which the async client runs in a worker thread.
Background mode is one engine (:mod:`.background`: poll at a jittered interval, listen
to the platform's push channel in between, back off after channel failures) driven by
one daemon thread (Client) or one asyncio task (AsyncClient), with the same push
channel code and HTTP configuration.

Guarantees:

* ``check`` never touches the network and never answers "allow" without a verified list
  (:class:`NeverSynced`); a stale list is flagged and (by default) downgrades block to
  review. Its hot path is one memoised HMAC, one prepared SQLite statement, cached
  staleness deadlines and a deque append to the audit buffer; records are parsed only
  when an identifier hits.
* Every decision of ``check``/``block``/``screen`` is written to the audit log; a watch
  audits the changed decisions it delivers (not its periodic re-evaluations).
* Watch callbacks run on the thread that applied the new version (the SDK's background
  thread, a worker thread of AsyncClient, or the caller of ``sync()``); one failing
  callback is logged, the others run.
* ``close()`` is idempotent and bounded by its timeout; background threads are daemons and
  are re-created lazily in a forked child (``os.register_at_fork``).
* Logs go to the ``intercept_sdk`` logger; the root logger is never configured.
* Options are typed (``**options: Unpack[ClientOptionsDict]``): a misspelt or mistyped
  option is an error for ``mypy --strict`` and, at run time, an :class:`UnknownOption`
  or :class:`ConfigurationError` naming the option.
* ``AsyncClient(background=True)`` starts its task at construction when an event loop
  is running, else at its first awaited call (or ``async with``); a coroutine function
  given as a watch's ``on_change`` is awaited on the client's event loop.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, cast

from .background import AsyncDriver
from .core import _Core
from .decisions import Decision, Subject
from .health import Health
from .hooks import EventHooks
from .ledger import LedgerEvent, Restriction
from .metrics import Metrics
from .options import ClientOptions, build_options
from .status import LastError, Status
from .store import StoreState
from .sync import SyncResult
from .watches import Listener, Watch, WatchChange

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from .options import ClientOptionsDict

log = logging.getLogger("intercept_sdk.client")

ASYNC_CALLBACK_TIMEOUT = 60.0
"""How long a sync waits for an async watch callback before going on (seconds)."""

# LastError, Status, Watch, WatchChange and _Core are defined in the modules named above
# and importable from here, where they always were.
__all__ = [
    "AsyncClient",
    "Client",
    "LastError",
    "LedgerEvent",
    "Listener",
    "Restriction",
    "Status",
    "Watch",
    "WatchChange",
    "_Core",
]


class Client:
    """Synchronous client: decisions from a verified local copy of the list.

    ``Client(platform, trust_root, cache_dir, subscriber_id, ...)``: ``platform`` is an
    https URL, a ``file://`` URL or a directory holding a copied site; ``trust_root`` the
    pinned ``root.json`` (path or bytes) shipped with the application; ``cache_dir`` a
    private directory (created 0700), which several processes may share.

    Options (keyword only):

    * ``subscriber_key`` - directory or file of the subscriber's key pair: signs reports
      (interceptions are reported automatically) and opens restricted entries;
    * ``measures`` - the measure codes this deployment enforces; others raise;
    * ``max_staleness`` (``"72h"``) and ``stale_action`` (``"review"``; ``"block"`` keeps
      blocking on a stale list);
    * ``poll_interval`` (``"5m"``), ``push`` (listen to the platform's push channel),
      ``background`` (start the sync thread and the report sender now);
    * ``unit_name`` - who applies the measure, named in notices as where to ask for 复核;
      ``jurisdiction`` (``"national"``; ``"jiangsu"``, ``"huaian"``) - whose objection
      rule (deadlines, 复议) the notices state;
    * ``transport``/``report_transport`` (an ``httpx`` transport, for tests), ``proxy``,
      ``ca_bundle``, timeouts (the push channel uses the same transport, proxy, CA and
      connect timeout); ``retry`` (a :class:`RetryPolicy`, used by sync requests, report
      uploads and push reconnects alike); ``clock`` (a UTC clock, for tests); ``audit``;
    * ``metrics`` (a :class:`Metrics` to count into) and ``hooks`` (an :class:`EventHooks`
      or one callable receiving every :class:`Event`);
    * ``options`` - a :class:`ClientOptions` holding any of the above (keywords given
      too override it).

    Durations accept a ``timedelta``, seconds or text like ``"15m"``; ``max_staleness``,
    ``proxy`` and ``ca_bundle`` default to ``INTERCEPT_MAX_STALENESS``,
    ``INTERCEPT_PROXY`` and ``INTERCEPT_CA_BUNDLE``. :meth:`from_env` reads the four
    positional arguments and the subscriber key from ``INTERCEPT_*`` too.

    Guarantees: decisions never touch the network; without a verified list every
    decision raises :class:`NeverSynced` instead of allowing; every decision is written to
    the tamper-evident audit log; the client is thread-safe and fork-safe.
    """

    def __init__(
        self,
        platform: str | os.PathLike[str],
        trust_root: str | os.PathLike[str] | bytes,
        cache_dir: str | os.PathLike[str],
        subscriber_id: str | None = None,
        *,
        background: bool = False,
        options: ClientOptions | None = None,
        **kwargs: Unpack[ClientOptionsDict],
    ) -> None:
        opts = build_options(kwargs, owner=type(self).__name__, base=options)
        self._core = _Core(platform, trust_root, cache_dir, subscriber_id, opts)
        if type(self) is Client:
            # check() is the hot path: straight to the decider, one Python call less per
            # check (the method below stays what a subclass overrides and what help() shows)
            self.check = self._core.check  # type: ignore[method-assign,assignment]
        if background:
            self._core.start_background()

    @classmethod
    def from_env(
        cls,
        *,
        background: bool = False,
        environ: dict[str, str] | None = None,
        **kwargs: Unpack[ClientOptionsDict],
    ) -> Client:
        """A client configured from ``INTERCEPT_PLATFORM``, ``INTERCEPT_TRUST_ROOT``,
        ``INTERCEPT_CACHE_DIR``, ``INTERCEPT_SUBSCRIBER_ID`` and
        ``INTERCEPT_SUBSCRIBER_KEY`` (and the optional ones the constructor reads);
        keywords override. A missing required variable raises ConfigurationError."""
        args, extra = _from_env(os.environ if environ is None else environ)
        return cls(*args, background=background, **{**extra, **kwargs})

    # list
    def sync(self, progress: Callable[[int, int], None] | None = None) -> SyncResult:
        """Bring the local list up to date now; raises on failure (old version stays)."""
        return self._core.sync(progress)

    def start_background(self) -> None:
        """Start the sync thread (push + polling) and the report sender; idempotent.

        The same as ``background=True`` at construction, for applications that create
        the client before they are ready to serve.
        """
        self._core.start_background()

    def check(self, subject: Subject, measure: str) -> Decision:
        """The decision for ``subject`` (:class:`Person` or :class:`Entity`) under the
        measure code ``measure``, from the local list only (microseconds, no network).

        Raises :class:`UnknownMeasure` for a code not in the catalog, and
        :class:`NeverSynced` when no verified list is available.
        """
        return self._core.check(subject, measure)

    def block(self, subject: Subject, measure: str, **context: Any) -> Decision:
        """Like :meth:`check`, but raise :class:`Intercepted` when the action is block.

        The exception carries the decision and ``notice`` (the Chinese text to show the
        person: case, court, what is restricted, how to object). Every interception is
        queued durably as an ``interception`` report (``context`` becomes its details,
        e.g. ``room="1808"``) before the exception is raised. Otherwise the decision
        (allow, monitor, review, or a block downgraded on a stale list) is returned.
        """
        return self._core.block(subject, measure, **context)

    def screen(
        self, subjects: Iterable[Subject], measure: str, *, batch: int = 2000
    ) -> Iterator[Decision]:
        """Decisions for many subjects, streamed in input order.

        ``subjects`` is consumed ``batch`` at a time (any iterable, e.g. a CSV reader),
        each batch answered from one read transaction. The measure is validated now;
        decisions are computed as the iterator is consumed. Each decision is what
        :meth:`check` would answer for that subject at the batch's instant, and is
        audited alike; the subjects of a batch that no identifier hits share one
        (immutable) allow Decision object.
        """
        return self._core.decider.screen(subjects, measure, batch)

    def watch(
        self,
        subjects: Iterable[Subject],
        measure: str,
        on_change: Callable[[list[WatchChange]], None],
    ) -> Watch:
        """Keep ``subjects`` under supervision for ``measure``.

        After each newly applied list version, ``on_change`` receives the subjects whose
        decision changed (:class:`WatchChange`: ``listed``, ``lifted`` - the restriction
        must be lifted - or ``changed``). It runs on the thread that applied the version:
        the SDK's background thread (``background=True``), or the caller of
        :meth:`sync`; keep it short (hand long work to your own queue), since the next
        sync waits for it. An exception in one callback is logged and does not stop the
        other watches. Returns a :class:`Watch` (``cancel()`` stops it).
        """
        return self._core.watches.watch(subjects, measure, on_change)

    def notice(self, decision: Decision) -> str:
        """The Chinese notice text for a decision (what ``Intercepted.notice`` holds)."""
        return self._core.reporter.notice(decision)

    # the restriction ledger
    def lifts(self) -> list[Restriction]:
        """Restrictions this unit enforced that the list no longer supports and that are
        not reported lifted yet, earliest deadline first (``r.overdue(now)`` says which
        are late). Durable: the same after a restart. ``report("lift", r)`` closes one."""
        return self._core.ledger.items(["lift_due"])

    def restrictions(self) -> list[Restriction]:
        """Every restriction in the ledger (in force, lift due, lifted), oldest first."""
        return self._core.ledger.items()

    def listen(self, on_event: Callable[[list[LedgerEvent]], None]) -> Listener:
        """Receive the ledger's events (:class:`LedgerEvent`: ``lift_due`` after a sync,
        ``lift_overdue`` once a deadline passed, ``lifted`` when a lift is reported) on
        the thread that caused them; keep ``on_event`` short. ``cancel()`` stops it."""
        return self._core.watches.listen(on_event)

    # reports
    def report(self, kind: str, decision_or_entry: Any = None, **details: Any) -> str:
        """Queue a signed report durably; returns its id once it is safely on disk."""
        return self._core.report(kind, decision_or_entry, **details)

    def flush_reports(self, timeout: float = 10.0) -> bool:
        """Upload pending reports now; True when the queue is empty within ``timeout``."""
        return self._core.flush_reports(timeout)

    def quarterly_summary(self, year: int, quarter: int, *, upload: bool = False) -> dict[str, Any]:
        """Counts of the quarter (checks, interceptions, lifts, objections...) and due date."""
        return self._core.reporter.quarterly_summary(year, quarter, upload=upload)

    # ops
    def status(self) -> Status:
        """A snapshot: list version, staleness, the newest sync error on the cache (any
        process), the outbox."""
        return self._core.status()

    def health(self) -> Health:
        """Liveness and readiness for probes: ready once a verified, fresh list is in use."""
        return self._core.health()

    @property
    def metrics(self) -> Metrics:
        """The client's metrics (``render_prometheus()``, exporters)."""
        return self._core.metrics

    @property
    def hooks(self) -> EventHooks:
        """The client's event hooks (``client.hooks.on("sync_failed", fn)``)."""
        return self._core.hooks

    def verify(self) -> StoreState:
        """Re-check the whole cache against the signed digest (a full scan)."""
        return self._core.verify()

    def close(self, timeout: float = 5.0) -> None:
        """Stop background work, flush what can be flushed within ``timeout``. Idempotent."""
        self._core.close(timeout)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncClient:
    """Asynchronous mirror of :class:`Client` for asyncio applications.

    Local checks run inline (microseconds, no I/O); sync, report writes and flushing run
    in a worker thread; background mode is one asyncio task driving the same engine as
    :class:`Client`'s thread (start jitter, polling, the push channel through the same
    ``transport``, headers and timeouts, backoff after channel failures).
    """

    def __init__(
        self,
        platform: str | os.PathLike[str],
        trust_root: str | os.PathLike[str] | bytes,
        cache_dir: str | os.PathLike[str],
        subscriber_id: str | None = None,
        *,
        background: bool = False,
        options: ClientOptions | None = None,
        **kwargs: Unpack[ClientOptionsDict],
    ) -> None:
        opts = build_options(kwargs, owner=type(self).__name__, base=options)
        self._core = _Core(platform, trust_root, cache_dir, subscriber_id, opts)
        self._driver = AsyncDriver(self._core.tasks)
        self._pending_start = background
        if background:
            try:
                asyncio.get_running_loop()
            except RuntimeError:
                pass  # no loop yet: started by the first awaited call or ``async with``
            else:
                self.start_background()

    def _ensure_started(self) -> None:
        """Start background mode asked for at construction without a running loop."""
        if self._pending_start and not self._core._life.closed:
            self.start_background()

    async def __aenter__(self) -> AsyncClient:
        self._ensure_started()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def start_background(self) -> None:
        """Start the background task (on the running loop) and the report sender;
        idempotent."""
        self._core._life.check_open()
        self._pending_start = False
        self._driver.start()
        if self._core.sender is not None:
            self._core.sender.start()

    async def sync(self, progress: Callable[[int, int], None] | None = None) -> SyncResult:
        """Like :meth:`Client.sync`; runs in a worker thread (``progress`` is called there)."""
        self._ensure_started()
        return await asyncio.to_thread(self._core.sync, progress)

    async def check(self, subject: Subject, measure: str) -> Decision:
        """Like :meth:`Client.check` (inline: no I/O)."""
        if self._pending_start:
            self._ensure_started()
        return self._core.check(subject, measure)

    async def block(self, subject: Subject, measure: str, **context: Any) -> Decision:
        """Like :meth:`Client.block`; the durable report write runs in a worker thread."""
        if self._pending_start:
            self._ensure_started()
        decision = self._core.check(subject, measure)
        if decision.action == "block":
            raise await asyncio.to_thread(self._core.intercepted, decision, context, subject)
        if decision.action == "review":
            await asyncio.to_thread(self._core.reporter.enforced, subject, decision)
        return decision

    def screen(
        self, subjects: Iterable[Subject], measure: str, *, batch: int = 2000
    ) -> AsyncIterator[Decision]:
        """Like :meth:`Client.screen`; validated now, iterated with ``async for``."""
        decisions = self._core.decider.screen(subjects, measure, batch)

        async def stream() -> AsyncIterator[Decision]:
            for d in decisions:
                yield d

        return stream()

    async def watch(
        self,
        subjects: Iterable[Subject],
        measure: str,
        on_change: Callable[[list[WatchChange]], None]
        | Callable[[list[WatchChange]], Awaitable[None]],
    ) -> Watch:
        """Like :meth:`Client.watch`. ``on_change`` may be a coroutine function: it is
        then awaited on this event loop (the sync that found the change waits for it, at
        most :data:`ASYNC_CALLBACK_TIMEOUT` seconds); a plain function runs on the
        syncing worker thread, as with :class:`Client`."""
        self._ensure_started()
        if inspect.iscoroutinefunction(on_change) or inspect.iscoroutinefunction(
            getattr(on_change, "__call__", None)  # noqa: B004 - an object with async __call__
        ):
            return self._core.watches.watch(
                subjects,
                measure,
                _on_loop(
                    cast("Callable[[list[WatchChange]], Awaitable[None]]", on_change),
                    asyncio.get_running_loop(),
                ),
            )
        return self._core.watches.watch(subjects, measure, on_change)  # type: ignore[arg-type]

    def notice(self, decision: Decision) -> str:
        return self._core.reporter.notice(decision)

    async def lifts(self) -> list[Restriction]:
        """Like :meth:`Client.lifts`."""
        return await asyncio.to_thread(self._core.ledger.items, ["lift_due"])

    async def restrictions(self) -> list[Restriction]:
        return await asyncio.to_thread(self._core.ledger.items)

    def listen(self, on_event: Callable[[list[LedgerEvent]], None]) -> Listener:
        """Like :meth:`Client.listen` (``on_event`` runs in the worker thread that synced)."""
        return self._core.watches.listen(on_event)

    async def report(self, kind: str, decision_or_entry: Any = None, **details: Any) -> str:
        """Like :meth:`Client.report`; the durable write runs in a worker thread."""
        return await asyncio.to_thread(self._core.report, kind, decision_or_entry, **details)

    async def flush_reports(self, timeout: float = 10.0) -> bool:
        return await asyncio.to_thread(self._core.flush_reports, timeout)

    async def quarterly_summary(
        self, year: int, quarter: int, *, upload: bool = False
    ) -> dict[str, Any]:
        return await asyncio.to_thread(
            self._core.reporter.quarterly_summary, year, quarter, upload=upload
        )

    async def status(self) -> Status:
        """Like :meth:`Client.status`."""
        self._ensure_started()
        return await asyncio.to_thread(self._core.status)

    async def health(self) -> Health:
        """Like :meth:`Client.health`."""
        return await asyncio.to_thread(self._core.health)

    @property
    def metrics(self) -> Metrics:
        """The client's metrics."""
        return self._core.metrics

    @property
    def hooks(self) -> EventHooks:
        """The client's event hooks."""
        return self._core.hooks

    async def verify(self) -> StoreState:
        return await asyncio.to_thread(self._core.verify)

    async def aclose(self, timeout: float = 5.0) -> None:
        """Stop the background task, then close like :meth:`Client.close`. Idempotent."""
        await self._driver.stop(min(2.0, timeout))
        await asyncio.to_thread(self._core.close, timeout)


def _on_loop(
    callback: Callable[[list[WatchChange]], Awaitable[None]], loop: asyncio.AbstractEventLoop
) -> Callable[[list[WatchChange]], None]:
    """A plain callback (run on the syncing thread) that awaits ``callback`` on ``loop``."""

    def deliver(changes: list[WatchChange]) -> None:
        async def run() -> None:
            await callback(changes)

        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:  # called on the loop itself: cannot block it, schedule
            task = loop.create_task(run())
            task.add_done_callback(_log_failure)
            return
        try:
            future = asyncio.run_coroutine_threadsafe(run(), loop)
        except RuntimeError:
            log.error("async watch callback dropped: the event loop is closed")
            return
        future.result(timeout=ASYNC_CALLBACK_TIMEOUT)  # raised errors are logged by Watches

    return deliver


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("async watch callback failed", exc_info=task.exception())


_ENV_REQUIRED = ("INTERCEPT_PLATFORM", "INTERCEPT_TRUST_ROOT", "INTERCEPT_CACHE_DIR")


def _from_env(env: Any) -> tuple[tuple[str, str, str, str | None], dict[str, Any]]:
    """The positional arguments and the subscriber key from ``INTERCEPT_*``."""
    from .._exceptions import ConfigurationError

    missing = [v for v in _ENV_REQUIRED if not env.get(v)]
    if missing:
        raise ConfigurationError(f"missing environment variable(s): {', '.join(missing)}")
    extra: dict[str, Any] = {}
    if env.get("INTERCEPT_SUBSCRIBER_KEY"):
        extra["subscriber_key"] = env["INTERCEPT_SUBSCRIBER_KEY"]
    args = (
        env["INTERCEPT_PLATFORM"],
        env["INTERCEPT_TRUST_ROOT"],
        env["INTERCEPT_CACHE_DIR"],
        env.get("INTERCEPT_SUBSCRIBER_ID") or None,
    )
    return args, extra
