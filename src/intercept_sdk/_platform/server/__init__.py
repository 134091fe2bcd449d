"""The reference platform server: the published site, a push channel, and report intake.

Why it exists: the SDK is tested and demonstrated against a real HTTP server process
(uvicorn + starlette), not a mock, and integrators get a runnable platform to try the
whole flow. The site it serves is the same static directory that works unchanged behind
nginx, an object store or a CDN; everything this server adds is optional. One module per
responsibility:

* :mod:`.static` -- ``GET /<path>``: the site, with ETags, byte ranges, path safety;
* :mod:`.push` -- ``GET /events``: server-sent events announcing each new version;
* :mod:`.intake` -- ``POST /reports``: signed reports, verified on a few threads and
  validated with the protocol's own report schema; :mod:`.subscribers` holds the keys;
* :mod:`.storage` -- where accepted reports go, behind the :class:`ReportStore` interface
  (SQLite here);
* :mod:`.app` -- :func:`create_app` (with ``GET /reports`` for operators) and
  :mod:`.limits` -- every bound, in :class:`Limits`;
* :mod:`.process` -- :class:`PlatformServer`, :class:`ServerProcess` and
  ``python -m intercept_sdk._platform.server``.

The server trusts its own site directory (it reads the manifest's version without
verifying it) but trusts nothing a client sends. Every input and every queue is bounded
(:class:`Limits`). Logging goes to ``logging.getLogger("intercept_sdk.platform")``. There
is no fault injection in here: tests wrap the app from outside
(:mod:`intercept_sdk.testing.faults`, passed as ``middleware``).
"""

from __future__ import annotations

from .app import create_app
from .limits import Limits
from .process import PlatformServer, ServerProcess, main, run_server_process
from .storage import ReportStore, ReportStoreError
from .subscribers import VERIFY_BACKEND

__all__ = [
    "VERIFY_BACKEND",
    "Limits",
    "PlatformServer",
    "ReportStore",
    "ReportStoreError",
    "ServerProcess",
    "create_app",
    "main",
    "run_server_process",
]
