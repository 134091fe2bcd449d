"""Every bound the reference platform server enforces, in one frozen object."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..._exceptions import ConfigurationError

__all__ = ["Limits"]


@dataclass(frozen=True)
class Limits:
    """Every bound the server enforces. The defaults suit a real deployment.

    Tests shrink ``poll_interval``/``heartbeat_interval`` to run fast; nothing here can be
    set from HTTP.
    """

    max_body_bytes: int = 8 * 1024 * 1024
    """Largest ``POST /reports`` body; larger -> 413."""
    max_reports_per_batch: int = 5000
    """Most reports in one batch; more -> 413."""
    max_signatures_per_report: int = 8
    """Most signatures on one report envelope; more -> 400."""
    max_inflight_report_requests: int = 16
    """Report uploads processed at once (bounds memory); more -> 503 with Retry-After."""
    max_drain_bytes: int = 32 * 1024 * 1024
    """How much of an oversize body is read and discarded so the client sees the 413."""
    max_listeners: int = 1000
    """Concurrent ``/events`` listeners; more -> 503 with Retry-After."""
    max_manifest_bytes: int = 16 * 1024 * 1024
    """A larger ``manifest.json`` is not served (it is held in memory)."""
    max_list_limit: int = 1000
    """Largest ``limit`` accepted by ``GET /reports``."""
    poll_interval: float = 0.2
    """How often the manifest is checked for changes (seconds)."""
    heartbeat_interval: float = 15.0
    """Idle time after which an ``/events`` listener gets a ``: ping`` comment (seconds)."""
    graceful_shutdown: int = 2
    """Seconds uvicorn waits for in-flight requests when stopping before cancelling them."""
    header_timeout: float = 10.0
    """A request head (request line and headers) must arrive within this many seconds of
    the connection opening or of the previous response; else the connection is closed
    (uvicorn itself has no such bound: :mod:`.guard`)."""
    body_timeout: float = 60.0
    """A ``POST /reports`` body must arrive within this many seconds; else 408."""
    max_connections_per_client: int = 256
    """Open connections from one client address; more are answered 429 and closed."""
    max_listeners_per_client: int = 32
    """Concurrent ``/events`` listeners from one client address; more -> 429."""
    max_uploads_per_client: int = 4
    """Report uploads in progress from one client address; more -> 429 with Retry-After."""
    max_connections: int = 4096
    """All open connections; beyond it uvicorn answers 503."""

    @classmethod
    def behind_proxy(cls, **changes: object) -> Limits:
        """Limits for a server behind a load balancer, where every request comes from the
        balancer's address: the per-client caps become the global ones (enforce per-client
        limits at the balancer instead, see docs/operations.md)."""
        base = cls(**changes)  # type: ignore[arg-type]
        return dataclasses.replace(
            base,
            max_connections_per_client=base.max_connections,
            max_listeners_per_client=base.max_listeners,
            max_uploads_per_client=base.max_inflight_report_requests,
        )

    def __post_init__(self) -> None:
        for name in (
            "max_body_bytes",
            "max_reports_per_batch",
            "max_signatures_per_report",
            "max_inflight_report_requests",
            "max_listeners",
            "max_manifest_bytes",
            "max_list_limit",
            "max_connections_per_client",
            "max_listeners_per_client",
            "max_uploads_per_client",
            "max_connections",
        ):
            if getattr(self, name) < 1:
                raise ConfigurationError(f"Limits.{name} must be at least 1")
        if self.max_drain_bytes < 0 or self.graceful_shutdown < 0:
            raise ConfigurationError("Limits.max_drain_bytes/graceful_shutdown must be >= 0")
        if not (0.01 <= self.poll_interval <= 60 and 0.05 <= self.heartbeat_interval <= 3600):
            raise ConfigurationError("Limits.poll_interval/heartbeat_interval out of range")
        if not (0.05 <= self.header_timeout <= 600 and 0.05 <= self.body_timeout <= 3600):
            raise ConfigurationError("Limits.header_timeout/body_timeout out of range")
