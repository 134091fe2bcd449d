"""The operator console: a web page with charts, and the statistics exports behind it.

Routes (see :func:`console_routes`), all under ``/console/``:

* ``/console/`` (the page), ``console.js`` and ``chart.umd.min.js`` (Chart.js 4, vendored
  in ``console_static/``, so the console works with no internet): static, no data.
* ``data.json`` (what the page draws), ``stats.json`` and ``stats.csv`` (the per
  unit/measure/quarter table for the 通报): every request passes ``require_operator``
  first; the figures are computed in a worker thread from the report store.

Why the page itself carries no credential check: a browser cannot add a bearer header to
a navigation, so the page takes the operator token from the URL fragment
(``/console/#token=...``, never sent to a server or written to an access log) and sends it
on its own ``fetch`` of ``data.json``. The page and its scripts contain no figures. A
strict Content-Security-Policy (scripts only from this origin) and DOM text nodes (never
HTML built from unit names) keep a unit's record from running script in an operator's
browser.

The server app does not import this module; :func:`console_routes` is wired in where the
operator credential exists, or :func:`console_middleware` wraps an existing app.
"""

from __future__ import annotations

import hmac
import inspect
import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Final

import anyio.to_thread
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route, Router
from starlette.types import ASGIApp, Receive, Scope, Send

from .responses import error
from .stats import ALL_MEASURES, Statistics, StatsSource, to_csv
from .storage import ReportStoreError

__all__ = [
    "OperatorCheck",
    "chart_data",
    "console_middleware",
    "console_routes",
    "operator_token",
]

log = logging.getLogger("intercept_sdk.platform")

#: ``require_operator(request)``: None lets the request through; a Response refuses it.
OperatorCheck = Callable[[Request], "Response | Awaitable[Response | None] | None"]

_STATIC: Final = Path(__file__).with_name("console_static")
_FILES: Final = {
    "": ("index.html", "text/html; charset=utf-8"),
    "console.js": ("console.js", "text/javascript; charset=utf-8"),
    "chart.umd.min.js": ("chart.umd.min.js", "text/javascript; charset=utf-8"),
}
_SECURITY_HEADERS: Final = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'unsafe-inline'; "
        "connect-src 'self'; img-src 'self' data:; base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
_FRESHNESS_ORDER: Final = ("current", "1 behind", "2+ behind", "unknown")


def operator_token(token: str) -> OperatorCheck:
    """A ``require_operator`` that accepts ``Authorization: Bearer <token>`` (constant-time
    comparison). For tests and the demo; the server's own operator credential replaces it."""
    if not isinstance(token, str) or len(token) < 16:
        from ..._exceptions import ConfigurationError

        raise ConfigurationError("an operator token must be at least 16 characters")
    expected = token.encode()

    def check(request: Request) -> Response | None:
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), expected):
            return None
        return error(401, "operator credential required")

    return check


def chart_data(stats: Statistics) -> dict[str, Any]:
    """The three charts' series (labels and datasets) from the statistics.

    ``per-measure``: interceptions and lifts per measure per quarter (all units);
    ``freshness``: units by how far their list is behind the published version;
    ``overdue``: overdue quarterly summaries and overdue lifts per unit.
    """
    per: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    for r in stats.rows:
        if r["measure"] == ALL_MEASURES or not (r["interceptions"] or r["lifts"]):
            continue
        slot = per[(r["quarter"], r["measure"])]
        slot[0] += r["interceptions"]
        slot[1] += r["lifts"]
    keys = sorted(per)
    fresh = {k: 0 for k in _FRESHNESS_ORDER}
    for u in stats.units:
        fresh[u["freshness"]] = fresh.get(u["freshness"], 0) + 1
    overdue: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for s in stats.overdue_summaries:
        if s["status"] == "overdue":
            overdue[s["unit"]][0] += 1
    for lift in stats.overdue_lifts:
        overdue[lift["unit"]][1] += 1
    units = sorted(overdue)
    return {
        "per-measure": {
            "type": "bar",
            "title": "Interceptions and lifts per measure per quarter",
            "labels": [f"{q} {m}" for q, m in keys],
            "datasets": [
                {"label": "interceptions", "data": [per[k][0] for k in keys]},
                {"label": "lifts", "data": [per[k][1] for k in keys]},
            ],
        },
        "freshness": {
            "type": "doughnut",
            "title": "Units by list freshness",
            "labels": list(fresh),
            "datasets": [{"label": "units", "data": list(fresh.values())}],
        },
        "overdue": {
            "type": "bar",
            "title": "Overdue summaries and lifts per unit",
            "labels": units,
            "datasets": [
                {"label": "overdue summaries", "data": [overdue[u][0] for u in units]},
                {"label": "overdue lifts", "data": [overdue[u][1] for u in units]},
            ],
        },
    }


class _Console:
    def __init__(self, source: StatsSource, require_operator: OperatorCheck) -> None:
        self.source = source
        self.require_operator = require_operator
        self._limiter = anyio.CapacityLimiter(1)  # one computation at a time

    async def _refused(self, request: Request) -> Response | None:
        result = self.require_operator(request)
        if inspect.isawaitable(result):
            result = await result
        return result

    async def _stats(self) -> Statistics:
        return await anyio.to_thread.run_sync(self.source.compute, limiter=self._limiter)

    async def static(self, request: Request) -> Response:
        name, media = _FILES[request.path_params.get("name", "")]
        cache = "no-cache" if name != "chart.umd.min.js" else "public, max-age=86400"
        return FileResponse(
            _STATIC / name, media_type=media, headers={**_SECURITY_HEADERS, "Cache-Control": cache}
        )

    async def data(self, request: Request) -> Response:
        refused = await self._refused(request)
        if refused is not None:
            return refused
        try:
            stats = await self._stats()
        except ReportStoreError:
            log.exception("console: cannot read reports")
            return error(503, "report store unavailable", retry_after=5)
        kind = request.path_params["kind"]
        headers = {"Cache-Control": "no-store", **_SECURITY_HEADERS}
        if kind == "stats.csv":
            headers["Content-Disposition"] = 'attachment; filename="intercept-stats.csv"'
            # UTF-8 with a BOM: spreadsheets then read the Chinese names correctly.
            body = ("\ufeff" + to_csv(stats)).encode("utf-8")
            return Response(body, media_type="text/csv; charset=utf-8", headers=headers)
        payload = stats.to_json()
        if kind == "data.json":
            payload["charts"] = chart_data(stats)
        return JSONResponse(payload, headers=headers)


def console_routes(source: StatsSource, require_operator: OperatorCheck) -> list[Route]:
    """The console's routes under ``/console/`` (see the module docstring)."""
    c = _Console(source, require_operator)
    return [
        Route("/console", _to_slash, methods=["GET"]),
        Route("/console/", c.static, methods=["GET"]),
        Route("/console/{name:path}", _dispatch(c), methods=["GET"]),
    ]


async def _to_slash(request: Request) -> Response:
    return RedirectResponse("/console/", 308)


def _dispatch(c: _Console) -> Callable[[Request], Awaitable[Response]]:
    async def handle(request: Request) -> Response:
        name = request.path_params["name"]
        if name in _FILES:
            return await c.static(request)
        if name in ("data.json", "stats.json", "stats.csv"):
            request.path_params["kind"] = name
            return await c.data(request)
        return error(404, "not found")

    return handle


class _ConsoleMiddleware:
    """Send ``/console`` requests to the console's routes, everything else to the app."""

    def __init__(self, app: ASGIApp, source: StatsSource, require_operator: OperatorCheck) -> None:
        self.app = app
        self.router = Router(routes=console_routes(source, require_operator))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if path == "/console" or path.startswith("/console/"):
            await self.router(scope, receive, send)
        else:
            await self.app(scope, receive, send)


def console_middleware(source: StatsSource, require_operator: OperatorCheck) -> Middleware:
    """The console as middleware for ``create_app(middleware=[...])`` (or
    ``TestPlatform.serve(middleware=[...])``), for a server built without its routes."""
    return Middleware(_ConsoleMiddleware, source=source, require_operator=require_operator)
