"""Watches: portfolios under supervision, re-decided after each applied list version.

Why a module: a watch is the client's one push-style answer (``on_change`` callbacks)
and has its own rules: what counts as a change, when callbacks run, what is audited.

Guarantees:

* After each newly applied version (identified by version and digests), every watch's
  subjects are decided again (as ``screen`` would, not audited) and ``on_change``
  receives those whose decision changed: ``listed``, ``lifted`` (the restriction must be
  lifted) or ``changed``. Periodic re-evaluations of an unchanged list deliver nothing.
* The decisions delivered are audited like any other decision.
* Callbacks run on the thread that applied the version; one failing callback is logged
  and the other watches still run.
* Listeners (:meth:`Watches.listen`) receive the restriction ledger's events
  (:class:`~.ledger.LedgerEvent`: ``lift_due``, ``lift_overdue``, ``lifted``) on the
  thread that caused them (the sync that reconciled the ledger, or the caller reporting
  a lift); the same isolation applies. Events are durable in the ledger: a listener
  that missed them (a restart) finds the items with :meth:`Client.lifts`.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Literal

from .._exceptions import InvalidInput
from .decisions import Decision, Entity, Person, Subject
from .ledger import LedgerEvent
from .lookup import Lookup
from .screening import Decider
from .status import Lifecycle
from .store import Store

__all__ = ["Listener", "Watch", "WatchChange", "Watches"]

log = logging.getLogger("intercept_sdk.client")


@dataclass(frozen=True)
class WatchChange:
    """A watched subject whose decision changed after a new list version was applied.

    ``kind`` is ``"listed"`` (was allow, now restricted: apply the measure),
    ``"lifted"`` (was restricted, now allow: the entry was revoked, deleted or expired, so
    the restriction **must be lifted**; file a ``lift`` report), or ``"changed"`` (still
    restricted, but the action or the entries differ). ``before`` is ``None`` only when
    the watch started before the first sync.
    """

    subject: Subject
    before: Decision | None
    after: Decision
    kind: Literal["listed", "lifted", "changed"]


def change_kind(
    before: Decision | None, after: Decision
) -> Literal["listed", "lifted", "changed"] | None:
    """How ``after`` differs from ``before`` for a watch, or None if it does not."""
    if before is None:
        return "listed" if after.action != "allow" else None
    if before.action == after.action and before.entry_ids == after.entry_ids:
        return None
    if before.action == "allow":
        return "listed"
    if after.action == "allow":
        return "lifted"
    return "changed"


@dataclass(eq=False)
class Watch:
    """A portfolio under supervision (see :meth:`Client.watch`); ``cancel()`` stops it.

    ``last`` maps each subject's index in ``subjects`` to its current decision, and
    ``version`` is the list version they were taken from.
    """

    subjects: tuple[Subject, ...]
    measure: str
    on_change: Callable[[list[WatchChange]], None]
    last: dict[int, Decision] = field(default_factory=dict)
    version: int | None = None
    _owner: weakref.ref[Watches] | None = None
    _state: tuple[int, str, str | None] | None = None

    def cancel(self) -> None:
        """Stop watching; idempotent."""
        owner = self._owner() if self._owner else None
        if owner is not None:
            owner.unwatch(self)


@dataclass(eq=False)
class Listener:
    """A registered ledger listener (see :meth:`Client.listen`); ``cancel()`` stops it."""

    on_event: Callable[[list[LedgerEvent]], None]
    _owner: weakref.ref[Watches] | None = None

    def cancel(self) -> None:
        """Stop listening; idempotent."""
        owner = self._owner() if self._owner else None
        if owner is not None:
            owner.unlisten(self)


class Watches:
    """The client's watches and ledger listeners (see the module docstring)."""

    def __init__(self, store: Store, lookup: Lookup, decider: Decider, life: Lifecycle) -> None:
        self._store = store
        self._lookup = lookup
        self._decider = decider
        self._life = life
        self._watches: list[Watch] = []
        self._listeners: list[Listener] = []
        self._lock = threading.RLock()

    def listen(self, on_event: Callable[[list[LedgerEvent]], None]) -> Listener:
        """Deliver the restriction ledger's events to ``on_event`` from now on."""
        self._life.check_open()
        if not callable(on_event):
            raise InvalidInput("on_event must be callable")
        listener = Listener(on_event, weakref.ref(self))
        with self._lock:
            self._listeners.append(listener)
        return listener

    def unlisten(self, listener: Listener) -> None:
        with self._lock:
            if listener in self._listeners:
                self._listeners.remove(listener)

    def deliver(self, events: list[LedgerEvent]) -> None:
        """Hand ``events`` to every listener; a failing listener is logged, never raised."""
        if not events:
            return
        with self._lock:
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener.on_event(list(events))
            except Exception:
                log.exception("a ledger listener raised; the other listeners continue")

    def watch(
        self,
        subjects: Iterable[Subject],
        measure: str,
        on_change: Callable[[list[WatchChange]], None],
    ) -> Watch:
        """Start watching ``subjects`` for ``measure`` (their current decisions taken now,
        not delivered)."""
        self._life.check_open()
        m = self._decider.measure(measure)
        if not callable(on_change):
            raise InvalidInput("on_change must be callable")
        subs = tuple(subjects)
        for s in subs:
            if not isinstance(s, (Person, Entity)):
                raise InvalidInput("subjects must be Person or Entity objects")
        w = Watch(subs, m.code, on_change, _owner=weakref.ref(self))
        with self._lock:
            self._evaluate(w, notify=False)
            self._watches.append(w)
        return w

    def unwatch(self, w: Watch) -> None:
        with self._lock:
            if w in self._watches:
                self._watches.remove(w)

    def after_version_change(self) -> None:
        """Re-evaluate every watch (after a sync); failures are logged, never raised."""
        with self._lock:
            for w in list(self._watches):
                try:
                    self._evaluate(w, notify=True)
                except Exception:
                    log.exception("watch evaluation failed; it is retried after the next sync")

    def after_fork(self) -> None:
        """In a forked child: a fresh lock (the parent's may be held by a dead thread)."""
        self._lock = threading.RLock()

    def _evaluate(self, w: Watch, *, notify: bool) -> None:
        """Re-decide every subject of ``w`` if the list changed since its last look, and
        hand the subjects whose decision changed to its callback (when ``notify``)."""
        state = self._store.state()
        if state is None:
            return
        ident = (state.version, state.state_sha256, state.restricted_sha256)
        if w._state == ident:
            return
        m = self._decider.measure(w.measure)
        decisions = list(self._decider.stream(iter(w.subjects), m, 2000, audit=False))
        changes: list[WatchChange] = []
        for i, d in enumerate(decisions):
            before = w.last.get(i)
            kind = change_kind(before, d)
            if kind is not None and notify:
                changes.append(WatchChange(w.subjects[i], before, d, kind))
        w.last = dict(enumerate(decisions))
        w.version = state.version
        w._state = ident
        if not changes:
            return
        for c in changes:  # the decisions acted upon are audited like any other
            self._decider.record(self._lookup.subject_key(c.subject), c.after)
        try:
            w.on_change(changes)
        except Exception:
            log.exception("a watch callback raised; the other watches continue")
