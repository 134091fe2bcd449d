"""Event hooks: tell the application what the client did, as it happens.

Why: metrics answer "how many"; an integrator also wants to act on single events (page
someone after a failed sync, log an interception in their own system). ``Client(hooks=
fn)`` calls ``fn(event)`` for every :class:`Event`; ``EventHooks`` lets several listeners
subscribe per kind.

Event kinds: ``sync_succeeded`` (``version``, ``mode``), ``sync_failed`` (``error``,
``message``, ``consecutive_failures``), ``version_changed`` (``version``),
``intercepted`` (``measure``, ``entry_ids`` - never an identifier), ``report_queued``
(``kind``, ``report_id``).

Guarantees: a hook runs on the thread that caused the event (keep it short); an
exception in a hook is logged under ``intercept_sdk.hooks`` and never reaches the
client's caller nor stops other hooks.
"""

from __future__ import annotations

import datetime as _dt
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .._util import utcnow

__all__ = ["EVENT_KINDS", "Event", "EventHooks"]

log = logging.getLogger("intercept_sdk.hooks")

EVENT_KINDS = frozenset(
    {"sync_succeeded", "sync_failed", "version_changed", "intercepted", "report_queued"}
)


@dataclass(frozen=True)
class Event:
    """One thing the client did: its ``kind`` (see :data:`EVENT_KINDS`) and details."""

    kind: str
    data: dict[str, Any] = field(default_factory=dict)
    at: _dt.datetime = field(default_factory=utcnow)


class EventHooks:
    """Listeners per event kind (``"*"``: every kind). Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._listeners: dict[str, list[Callable[[Event], object]]] = {}

    def on(self, kind: str, listener: Callable[[Event], object]) -> Callable[[Event], object]:
        """Call ``listener(event)`` for events of ``kind``; returns ``listener`` (so it
        can decorate). Unknown kinds raise :class:`ConfigurationError`."""
        if kind != "*" and kind not in EVENT_KINDS:
            from .._exceptions import ConfigurationError

            raise ConfigurationError(
                f"unknown event kind {kind!r}; one of {', '.join(sorted(EVENT_KINDS))} or '*'"
            )
        with self._lock:
            self._listeners.setdefault(kind, []).append(listener)
        return listener

    def emit(self, kind: str, /, **data: Any) -> None:
        """Deliver an event to its listeners (exceptions logged, never raised)."""
        with self._lock:
            listeners = [*self._listeners.get(kind, ()), *self._listeners.get("*", ())]
        if not listeners:
            return
        event = Event(kind, data)
        for listener in listeners:
            try:
                listener(event)
            except Exception:
                log.exception("event hook %r failed on %s", listener, kind)

    @classmethod
    def of(cls, hooks: object) -> EventHooks:
        """The hooks a ``hooks=`` option names: an ``EventHooks``, one callable for
        every event, or None (none)."""
        if isinstance(hooks, EventHooks):
            return hooks
        out = cls()
        if hooks is None:
            return out
        if not callable(hooks):
            from .._exceptions import ConfigurationError

            raise ConfigurationError("hooks must be an EventHooks or a callable(event)")
        out.on("*", hooks)
        return out
