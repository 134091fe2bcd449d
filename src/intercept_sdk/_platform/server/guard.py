"""A guard in front of uvicorn's HTTP/1.1 protocol: a header deadline and a per-client cap.

Why: uvicorn (0.55, ``h11_impl.H11Protocol``) starts no timer when a connection opens,
and cancels its keep-alive timer as soon as any byte arrives, so a connection that sends
half a request line and then nothing is held forever; with ``limit_concurrency`` reached,
every request is answered 503. 4,100 such sockets from one address stopped the whole
server (issue 16). This subclass adds two things and nothing else:

* **header deadline** -- a request head must be complete within
  ``Limits.header_timeout`` of the connection opening or of the previous response, else
  the connection is closed. A request whose head arrived is not affected (the body has
  its own deadline in :mod:`.intake`, and ``/events`` streams may last);
* **per-client connection cap** -- at most ``Limits.max_connections_per_client`` open
  connections from one peer address; the next is answered ``429`` with ``Retry-After``
  and closed before any of it is parsed.

Both are enforced on the event loop with no per-byte cost. See
``docs/decisions/0015-platform-service.md``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

from .limits import Limits

__all__ = ["guarded_protocol"]

log = logging.getLogger("intercept_sdk.platform")

_TOO_MANY_BODY = b'{"error": "too many connections from your address"}'
_TOO_MANY = (
    b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 5\r\nContent-Type: application/json\r\n"
    b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(_TOO_MANY_BODY), _TOO_MANY_BODY)
)


def guarded_protocol(limits: Limits) -> type[H11Protocol]:
    """An ``H11Protocol`` subclass for one server, with its own per-client counts."""
    per_client: dict[str, int] = {}

    class GuardedH11Protocol(H11Protocol):
        _peer: str | None = None
        _deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            peer = self.client[0] if self.client else ""
            count = per_client.get(peer, 0)
            if count >= limits.max_connections_per_client:
                transport.write(_TOO_MANY)
                transport.close()
                return
            per_client[peer] = count + 1
            self._peer = peer
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            peer, self._peer = self._peer, None
            if peer is not None:
                left = per_client.get(peer, 1) - 1
                if left > 0:
                    per_client[peer] = left
                else:
                    per_client.pop(peer, None)
            self._disarm()
            super().connection_lost(exc)

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm()  # the next request head has the same deadline

        def _arm(self) -> None:
            self._disarm()
            self._deadline = self.loop.call_later(limits.header_timeout, self._expired, self.cycle)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _expired(self, cycle_when_armed: Any) -> None:
            self._deadline = None
            if self.cycle is cycle_when_armed and not self.transport.is_closing():
                # No request head arrived since the timer was armed.
                log.debug("closing a connection that sent no request head in time")
                self.transport.close()

    return GuardedH11Protocol
