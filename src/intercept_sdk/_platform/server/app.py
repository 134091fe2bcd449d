"""The platform ASGI app: the parts put together, and the operator's report listing.

Routes, and who may call them (:mod:`.auth`):

=====================  ==========================================================
``GET /<path>``        anyone: the published site (signed; :mod:`.static`)
``GET /events``        anyone: version announcements (:mod:`.push`), capped per address
``POST /reports``      a registered subscriber: every report is signed with its key
                       (:mod:`.intake`); no token needed
``GET /reports``       the operator (every report), or a subscriber with its token
                       (its own reports only; another's -> 403); nobody else (401)
``GET /stats``         the operator only: report counts per subscriber and kind
=====================  ==========================================================

``create_app(middleware=...)`` takes Starlette middleware wrapped around the whole app;
the server itself has no test-only code path (fault injection for tests lives in
:mod:`intercept_sdk.testing.faults` and is passed in this way).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..._exceptions import ConfigurationError
from ..._protocol.reports import REPORT_KINDS
from ..._util import ensure_private_dir, format_utc, parse_utc
from .auth import Auth, Principal, ensure_operator_token
from .console import console_routes
from .intake import Intake
from .limits import Limits
from .push import PushHub
from .responses import error
from .static import Manifest, SiteFiles
from .stats import StatsSource
from .storage import ReportStore, ReportStoreError, open_report_store
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
        operator_token: Path,
    ) -> None:
        self.site_dir = site_dir
        self.limits = limits
        self.manifest = Manifest(site_dir, limits.max_manifest_bytes)
        self.site = SiteFiles(site_dir, self.manifest)
        self.hub = PushHub(self.manifest, limits)
        self.subscribers = Subscribers(subscribers_dir)
        self.store = store
        self.intake = Intake(self.subscribers, store, limits)
        self.auth = Auth(operator_token, self.subscribers)
        self._limiter: anyio.CapacityLimiter | None = None

    def require_operator(self, request: Request) -> Response | None:
        """``None`` for the platform operator's credential, else the 401/403 answer (the
        console's and the statistics exports' guard)."""
        who = self.auth.identify(request)
        if isinstance(who, Response):
            return who
        if not who.is_operator:
            return error(403, "the console is for the platform operator")
        return None

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
        """``GET /reports?subscriber=&kind=&since=&limit=``: stored payloads, oldest first.

        The operator sees every subscriber's; a subscriber only its own (asking for
        another's is 403); no or an unknown credential is 401.
        """
        who = self.auth.identify(request)
        if isinstance(who, Response):
            return who
        q = request.query_params
        subscriber = q.get("subscriber") or None
        kind = q.get("kind") or None
        since = q.get("since") or None
        if subscriber is not None and len(subscriber) > _MAX_SUBSCRIBER_PARAM:
            return error(400, "subscriber is too long")
        denied = _scope_of(who, subscriber)
        if isinstance(denied, Response):
            return denied
        subscriber = denied
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
        return _json_rows(rows)

    async def stats(self, request: Request) -> Response:
        """``GET /stats`` (operator only): ``{"reports": n, "by_subscriber": {id: {kind: n}}}``."""
        who = self.auth.identify(request)
        if isinstance(who, Response):
            return who
        if not who.is_operator:
            return error(403, "statistics are for the platform operator")
        try:
            counts = await anyio.to_thread.run_sync(self.store.counts, limiter=self._limiter)
        except ReportStoreError:
            log.exception("cannot count reports")
            return error(503, "report store unavailable", retry_after=5)
        by: dict[str, dict[str, int]] = {}
        for sid, kind, n in counts:
            by.setdefault(sid, {})[kind] = n
        return JSONResponse({"reports": sum(n for _, _, n in counts), "by_subscriber": by})


def _scope_of(who: Principal, asked: str | None) -> str | Response | None:
    """The subscriber filter a caller gets: the operator what it asked for, a subscriber
    always itself (403 when it asked for someone else)."""
    if who.is_operator:
        return asked
    if asked is not None and asked != who.subscriber_id:
        return error(403, "a subscriber may read only its own reports")
    return who.subscriber_id


def _json_rows(rows: list[dict[str, Any]]) -> Response:
    """The listing as JSON. A row that is not strict JSON (a non-finite number stored by
    an older server that skipped the report schema) is left out and logged, instead of
    turning every listing into a 500."""
    try:
        return JSONResponse(rows)
    except ValueError:
        good = []
        for row in rows:
            try:
                json.dumps(row, allow_nan=False)
            except ValueError:
                log.warning("report %s is not strict JSON; left out", row.get("report_id"))
                continue
            good.append(row)
        return JSONResponse(good)


def create_app(
    site_dir: Path,
    *,
    subscribers_dir: Path | None,
    state_dir: Path,
    limits: Limits | None = None,
    middleware: Sequence[Middleware] = (),
    database: str | None = None,
) -> Starlette:
    """Build the platform ASGI app. Configuration errors raise here, not at first request.

    ``site_dir`` must exist (it may still lack ``manifest.json``); ``state_dir`` is
    created 0700 (tightened if it exists) and holds ``operator.token`` (0600, created at
    first start) and, unless ``database`` names another store (``postgresql://...``,
    see :func:`open_report_store`), ``reports.sqlite`` (0600). ``subscribers_dir=None``
    means no subscriber is known, so every report batch is refused with 403.
    ``middleware`` wraps the whole app (outermost first). The app's state object is
    ``app.state.platform``.
    """
    site_dir = Path(site_dir)
    if not site_dir.is_dir():
        raise ConfigurationError(f"site directory {site_dir} does not exist")
    state_dir = Path(state_dir)
    store = open_report_store(database, state_dir)
    try:
        ensure_private_dir(state_dir)
        token = ensure_operator_token(state_dir)
        store.open()
    except (OSError, ReportStoreError) as exc:
        store.close()
        where = database.split("@")[-1] if database else f"state directory {state_dir}"
        raise ConfigurationError(f"cannot use {where}: {exc}") from None
    platform = Platform(
        site_dir,
        Path(subscribers_dir) if subscribers_dir is not None else None,
        store,
        limits or Limits(),
        token,
    )
    stats = StatsSource(
        store,
        Path(subscribers_dir) if subscribers_dir is not None else None,
        current_version=lambda: platform.hub.version,
    )
    app = Starlette(
        routes=[
            Route("/events", platform.hub.events, methods=["GET"]),
            Route("/reports", platform.reports, methods=["GET", "POST"]),
            Route("/stats", platform.stats, methods=["GET"]),
            *console_routes(stats, platform.require_operator),
            Route("/{path:path}", platform.site.get, methods=["GET", "HEAD"]),
        ],
        middleware=list(middleware),
        lifespan=platform.lifespan,
    )
    app.state.platform = platform
    return app
