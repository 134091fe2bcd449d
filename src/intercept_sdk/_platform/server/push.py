"""The push hub: ``GET /events``, a server-sent-events channel announcing new versions.

``event: version`` with ``{"version": N}`` on connect and whenever ``manifest.json``
changes, ``: ping`` after ``Limits.heartbeat_interval`` of silence. One background task
(:meth:`PushHub.poll_manifest`) polls the manifest's (inode, size, mtime) every
``Limits.poll_interval`` for all listeners, so a thousand listeners cost one ``stat``.
Listeners are capped overall (``Limits.max_listeners``, then 503 with ``Retry-After``) and
per client address (``Limits.max_listeners_per_client``, then 429 with ``Retry-After``),
so one client opening a thousand streams cannot push the real clients back to polling.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import AsyncIterator

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from .limits import Limits
from .static import Manifest, ManifestState

__all__ = ["PushHub"]

log = logging.getLogger("intercept_sdk.platform")

_MAX_LOGGED_FAILURES = 3


class PushHub:
    """Fan-out of manifest changes to ``/events`` listeners on the server's event loop.

    A change bumps ``seq`` and fires the current ``asyncio.Event``, which is then replaced:
    each listener grabs the event and reads ``seq`` in one synchronous step, so no change
    can slip between the two. ``closing`` is a ``threading.Event`` so that any thread may
    ask listeners to finish; the poller notices it within one poll interval.
    """

    def __init__(self, manifest: Manifest, limits: Limits) -> None:
        self._manifest = manifest
        self._limits = limits
        self.seq = 0
        self.version: int | None = None
        self.etag: str | None = None
        self.listeners = 0
        self.per_client: dict[str, int] = {}
        self.closing = threading.Event()
        self._changed: asyncio.Event | None = None

    # -- state

    def changed(self) -> asyncio.Event:
        if self._changed is None:
            self._changed = asyncio.Event()
        return self._changed

    def reset(self) -> None:
        """Start afresh on a (new) event loop: the app's lifespan begins."""
        self.closing.clear()
        self._changed = asyncio.Event()

    def fire(self) -> None:
        old = self.changed()
        self._changed = asyncio.Event()
        old.set()

    def publish(self, state: ManifestState) -> None:
        """Announce ``state`` if its bytes differ from the last announced ones."""
        if state.etag == self.etag:
            return
        self.etag = state.etag
        if state.version is None:
            return
        if self.version is not None:
            log.info("manifest changed: version %s -> %s", self.version, state.version)
        self.version = state.version
        self.seq += 1
        self.fire()

    def begin_shutdown(self) -> None:
        """Ask every listener to finish (from any thread)."""
        self.closing.set()

    # -- the poller

    async def poll_manifest(self) -> None:
        """The one background task that watches ``manifest.json`` for all listeners."""
        failures = 0
        while True:
            if self.closing.is_set():
                self.fire()
                await asyncio.sleep(self._limits.poll_interval)
                continue
            try:
                state = self._manifest.load()
                failures = 0
            except Exception:  # never let the poller die; log a bounded number of times
                failures += 1
                if failures <= _MAX_LOGGED_FAILURES:
                    log.exception("cannot read manifest.json")
                state = None
            if state is not None:
                self.publish(state)
            await asyncio.sleep(self._limits.poll_interval)

    # -- the endpoint

    async def events(self, request: Request) -> Response:
        """``GET``/``HEAD /events``."""
        if request.method == "HEAD":  # no stream to hold open for a HEAD
            return Response(media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        if self.listeners >= self._limits.max_listeners:
            return JSONResponse({"error": "too many listeners"}, 503, headers={"Retry-After": "5"})
        peer = request.client.host if request.client is not None else ""
        if self.per_client.get(peer, 0) >= self._limits.max_listeners_per_client:
            return JSONResponse(
                {"error": "too many listeners from your address"}, 429, headers={"Retry-After": "5"}
            )
        return _EventStream(self, self._event_source(), peer)

    async def _event_source(self) -> AsyncIterator[bytes]:
        sent = 0
        while not self.closing.is_set():
            changed = self.changed()  # grab the event and read seq with no await between
            if self.seq != sent and self.version is not None:
                sent = self.seq
                yield (
                    b"event: version\ndata: %s\n\n" % json.dumps({"version": self.version}).encode()
                )
                continue
            with anyio.move_on_after(self._limits.heartbeat_interval) as scope:
                await changed.wait()
            if scope.cancelled_caught and not self.closing.is_set():
                yield b": ping\n\n"


class _EventStream(StreamingResponse):
    """A StreamingResponse that keeps the hub's listener count exact."""

    def __init__(self, hub: PushHub, content: AsyncIterator[bytes], peer: str) -> None:
        super().__init__(
            content,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
        self._hub = hub
        self._peer = peer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        hub, peer = self._hub, self._peer
        hub.listeners += 1
        hub.per_client[peer] = hub.per_client.get(peer, 0) + 1
        try:
            await super().__call__(scope, receive, send)
        finally:
            hub.listeners -= 1
            left = hub.per_client.get(peer, 1) - 1
            if left > 0:
                hub.per_client[peer] = left
            else:
                hub.per_client.pop(peer, None)
