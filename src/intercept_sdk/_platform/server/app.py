"""The platform ASGI app: the parts put together, and the operator's report listing.

Routes: ``GET /events`` (:mod:`.push`), ``GET``/``POST /reports`` (:mod:`.intake`, and the
listing below), ``GET``/``HEAD /<path>`` (:mod:`.static`). ``GET /reports`` lists stored
reports for operators, without authentication: bind the server to loopback or put it
behind your own access control.

``create_app(middleware=...)`` takes Starlette middleware wrapped around the whole app;
the server itself has no test-only code path (fault injection for tests lives in
:mod:`intercept_sdk.testing.faults` and is passed in this way).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import anyio
import anyio.to_thread
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..._exceptions import ConfigurationError
from ..._protocol.reports import REPORT_KINDS
from ..._util import format_utc, parse_utc
from .intake import Intake
from .limits import Limits
from .push import PushHub
from .responses import error
from .static import Manifest, SiteFiles
from .storage import ReportStore, ReportStoreError, SQLiteReportStore
from .subscribers import Subscribers

__all__ = ["Platform", "create_app"]

log = logging.getLogger("intercept_sdk.platform")

_MAX_SUBSCRIBER_PARAM = 128
_MAX_SINCE_PARAM = 64
_WORKER_THREADS = 4  # threads for ingest and queries at once (bounds memory and SQLite)


class Platform:
    """Everything one app instance holds. Reached as ``app.state.platform``."""

    def __init__(
        self,
        site_dir: Path,
        subscribers_dir: Path | None,
        store: ReportStore,
        limits: Limits,
    ) -> None:
        self.site_dir = site_dir
        self.limits = limits
        self.manifest = Manifest(site_dir, limits.max_manifest_bytes)
        self.site = SiteFiles(site_dir, self.manifest)
        self.hub = PushHub(self.manifest, limits)
        self.subscribers = Subscribers(subscribers_dir)
        self.store = store
        self.intake = Intake(self.subscribers, store, limits)
        self._limiter: anyio.CapacityLimiter | None = None

    def begin_shutdown(self) -> None:
        """Ask every ``/events`` listener to finish (from any thread); see :class:`PushHub`."""
        self.hub.begin_shutdown()

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        """Start the poller and the verification threads; stop both and close the store."""
        self.hub.reset()
        self.store.reopen()
        self.intake.start_pool()
        self._limiter = self.intake.limiter = anyio.CapacityLimiter(_WORKER_THREADS)
        state = self.manifest.load()
        if state is not None:
            self.hub.publish(state)
        log.info("serving %s (manifest version %s)", self.site_dir, self.hub.version)
        task = asyncio.create_task(self.hub.poll_manifest(), name="intercept-platform-poll")
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            self.intake.stop_pool()
            self.store.close()

    async def reports(self, request: Request) -> Response:
        """``GET /reports`` lists; ``POST /reports`` is intake."""
        if request.method == "GET":
            return await self.list_reports(request)
        return await self.intake.post(request)

    async def list_reports(self, request: Request) -> Response:
        """``GET /reports?subscriber=&kind=&since=&limit=``: stored payloads, oldest first."""
        q = request.query_params
        subscriber = q.get("subscriber") or None
        kind = q.get("kind") or None
        since = q.get("since") or None
        if subscriber is not None and len(subscriber) > _MAX_SUBSCRIBER_PARAM:
            return error(400, "subscriber is too long")
        if kind is not None and kind not in REPORT_KINDS:
            return error(400, f"kind must be one of {', '.join(sorted(REPORT_KINDS))}")
        if since is not None:
            try:
                since = format_utc(parse_utc(since[:_MAX_SINCE_PARAM]))
            except ValueError:
                return error(400, "since must be an ISO 8601 UTC date-time")
        raw_limit = q.get("limit", "100")
        if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= self.limits.max_list_limit:
            return error(400, f"limit must be within 1..{self.limits.max_list_limit}")
        try:
            rows = await anyio.to_thread.run_sync(
                self.store.query, subscriber, kind, since, int(raw_limit), limiter=self._limiter
            )
        except ReportStoreError:
            log.exception("cannot read reports")
            return error(503, "report store unavailable", retry_after=5)
        return JSONResponse(rows)


def create_app(
    site_dir: Path,
    *,
    subscribers_dir: Path | None,
    state_dir: Path,
    limits: Limits | None = None,
    middleware: Sequence[Middleware] = (),
) -> Starlette:
    """Build the platform ASGI app. Configuration errors raise here, not at first request.

    ``site_dir`` must exist (it may still lack ``manifest.json``); ``state_dir`` is created
    and holds ``reports.sqlite``; ``subscribers_dir=None`` means no subscriber is known, so
    every report batch is refused with 403. ``middleware`` wraps the whole app (outermost
    first). The app's state object is ``app.state.platform``.
    """
    site_dir = Path(site_dir)
    if not site_dir.is_dir():
        raise ConfigurationError(f"site directory {site_dir} does not exist")
    state_dir = Path(state_dir)
    store = SQLiteReportStore(state_dir / "reports.sqlite")
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        store.open()
    except (OSError, ReportStoreError) as exc:
        raise ConfigurationError(f"cannot use state directory {state_dir}: {exc}") from None
    platform = Platform(
        site_dir,
        Path(subscribers_dir) if subscribers_dir is not None else None,
        store,
        limits or Limits(),
    )
    app = Starlette(
        routes=[
            Route("/events", platform.hub.events, methods=["GET"]),
            Route("/reports", platform.reports, methods=["GET", "POST"]),
            Route("/{path:path}", platform.site.get, methods=["GET", "HEAD"]),
        ],
        middleware=list(middleware),
        lifespan=platform.lifespan,
    )
    app.state.platform = platform
    return app
