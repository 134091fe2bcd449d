"""Decisions: ``check`` one subject, ``screen`` many, each audited.

Why a module: the decision paths are the SDK's hot paths (``check`` is benchmarked per
call, ``screen`` per subject); they share the lookup (:mod:`.lookup`), the clock and
staleness (:mod:`.freshness`) and the audit log, and nothing else of the client.

Guarantees:

* Decisions never touch the network; without a verified list they raise
  :class:`NeverSynced` instead of answering "allow".
* ``screen`` answers each subject exactly what ``check`` would at the batch's instant,
  in input order, and audits exactly what ``check`` would record (one record per
  subject); a decision acted upon by a watch is audited the same way (:meth:`record`).
* A listed minor (a data error) is never enforced; the decision carries the entry in
  ``data_errors`` and ``on_data_errors`` is told once per decision that has any.
* Every decision is counted in ``metrics`` (by measure and action) when one is given.
"""

from __future__ import annotations

import datetime as _dt
import itertools
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Literal

from .._exceptions import ClientClosed, InvalidInput
from .._protocol.catalog import Measure, get_measure
from .audit import AuditLog
from .decisions import (
    Decision,
    Entity,
    Person,
    Probe,
    Subject,
    allow_decision,
    decide,
    decide_own,
    own_probe,
)
from .freshness import CacheClock, Staleness
from .lookup import Lookup
from .metrics import Metrics
from .status import Lifecycle
from .store import Hit, StoreState

__all__ = ["Decider", "Measures"]


class Measures:
    """The measures this client enforces, resolved from their codes (memoised)."""

    def __init__(self, subscribed: frozenset[str] | None) -> None:
        self._subscribed = subscribed
        self.memo: dict[str, Measure] = {}
        """Code -> measure, for the codes already resolved (read directly on the hot path)."""

    def __call__(self, code: str) -> Measure:
        """The measure ``code`` names, if this client enforces it."""
        m = self.memo.get(code) if isinstance(code, str) else None
        if m is None:
            m = get_measure(code)  # UnknownMeasure, with a did-you-mean
            if self._subscribed is not None and m.code not in self._subscribed:
                raise InvalidInput(
                    f"measure {code!r} is not among the measures this client enforces "
                    f"({', '.join(sorted(self._subscribed))})"
                )
            self.memo[code] = m
        return m


class Decider:
    """Answers ``check`` and ``screen`` (see the module docstring)."""

    def __init__(
        self,
        lookup: Lookup,
        clock: CacheClock,
        staleness: Staleness,
        audit: AuditLog | None,
        *,
        life: Lifecycle,
        stale_action: Literal["review", "block"],
        measures: Measures,
        on_data_errors: Callable[[Decision], None],
        metrics: Metrics | None = None,
    ) -> None:
        self.lookup = lookup
        self.clock = clock
        self.staleness = staleness
        self.audit = audit
        self.life = life
        self.stale_action: Literal["review", "block"] = stale_action
        self.measure = measures
        self._measures = measures.memo
        self._on_data_errors = on_data_errors
        self.metrics = metrics

    # -- check -------------------------------------------------------------------------
    def check(self, subject: Subject, measure: str) -> Decision:
        """The decision for ``subject`` under ``measure``, from the local list only.

        The hot path, profiled: one memoised HMAC, one prepared SQLite statement, no
        record parsing unless an identifier hits (then one parse of the hit record),
        cached staleness deadlines, and a deque append for the audit log (formatted and
        hashed later, in the flush thread).
        """
        if self.life.closed:
            raise ClientClosed("the client is closed")
        try:
            m = self._measures[measure]
        except (KeyError, TypeError):  # first use of this code, or not a code at all
            m = self.measure(measure)
        kind = type(subject)
        probes: list[Probe] | None = None
        if kind is Person or (kind is Entity and not subject.officers):  # type: ignore[union-attr]
            # one key, the subject's own: the fast path (Lookup.own, decide_own)
            key, state, hits = self.lookup.own(subject)
        elif isinstance(subject, (Person, Entity)):
            probes, keys, state, hits = self.lookup.subject(subject)
            key = keys[0]
        else:
            raise InvalidInput("subject must be a Person or an Entity")
        now = self.clock.now()
        stale = self.staleness.is_stale(state, now)
        if not hits:
            decision = allow_decision(m, list_version=state.version, stale=stale, now=now)
        elif probes is None:  # own_probe(subject, key), without the call
            probe = Probe(key, subject if kind is Person else None, None, subject.name)  # type: ignore[arg-type]
            decision = decide_own(m, probe, hits, state.version, stale, self.stale_action, now)
        else:
            decision = decide(
                m,
                probes,
                hits,
                list_version=state.version,
                stale=stale,
                stale_action=self.stale_action,
                now=now,
            )
        audit = self.audit
        if audit is not None:
            audit.record(m.code, key, decision.action, decision.entry_ids, state.version, now)
        metrics = self.metrics
        if metrics is not None:
            metrics.count_check(m.code, decision.action)
        if decision.data_errors:
            self._on_data_errors(decision)
        return decision

    def record(self, key: bytes, decision: Decision) -> None:
        """Audit a decision made elsewhere (a watch's change), as ``check`` would."""
        audit = self.audit
        if audit is not None:
            audit.record(
                decision.measure,
                key,
                decision.action,
                decision.entry_ids,
                decision.list_version,
                decision.checked_at,
            )
        if decision.data_errors:
            self._on_data_errors(decision)

    # -- screen ------------------------------------------------------------------------
    def screen(
        self, subjects: Iterable[Subject], measure: str, batch: int = 2000, *, audit: bool = True
    ) -> Iterator[Decision]:
        """Validate now (closed client, unknown measure raise here), then stream lazily."""
        self.life.check_open()
        m = self.measure(measure)
        if batch < 1:
            raise InvalidInput("batch must be at least 1")
        return self.stream(iter(subjects), m, batch, audit)

    def stream(
        self, subjects: Iterator[Subject], m: Measure, batch: int, audit: bool
    ) -> Iterator[Decision]:
        """Decisions of ``subjects``, ``batch`` at a time, in input order."""
        while True:
            buf = list(itertools.islice(subjects, batch))
            if not buf:
                return
            yield from self.screen_batch(buf, m, audit)

    def screen_batch(
        self, subjects: Sequence[Subject], m: Measure, audit: bool = True
    ) -> list[Decision]:
        """Decisions for one batch, equal to :meth:`check` of each subject in turn.

        Per subject, only its key is derived and looked up with the whole batch in one
        read transaction (:meth:`Lookup.batch`); only subjects whose keys hit (and
        entities with declared officers) go through :func:`decide`. The others, the vast
        majority, all get the batch's one allow Decision: the same immutable object, with
        the fields each would have had on its own (same measure, version, staleness and
        ``checked_at``, which is one instant for the batch). The batch is audited with
        one :meth:`AuditLog.record_many` call: one record per subject, in input order,
        exactly what :meth:`check` records.
        """
        keys, several, state, by_key = self.lookup.batch(subjects)
        now = self.clock.now()
        stale = self.staleness.is_stale(state, now)
        allow = allow_decision(m, list_version=state.version, stale=stale, now=now)
        out = [allow] * len(subjects)
        # Indices to decide, in input order: own key hit, or several probes to look at.
        todo = [i for i, k in enumerate(keys) if k in by_key] if by_key else []
        if several:
            todo = sorted(set(todo).union(several))
        for i in todo:
            probes = several.get(i) or [own_probe(subjects[i], keys[i])]
            hits = _hits_of(probes, by_key)
            if hits:
                out[i] = decide(
                    m,
                    probes,
                    hits,
                    list_version=state.version,
                    stale=stale,
                    stale_action=self.stale_action,
                    now=now,
                )
        log = self.audit if audit else None
        if log is not None:
            _audit_batch(log, m, keys, out, todo, allow, state, now)
        if self.metrics is not None:
            self.metrics.count_checks(m.code, (d.action for d in out))
        for i in todo:
            if out[i].data_errors:
                self._on_data_errors(out[i])
        return out


def _hits_of(probes: list[Probe], by_key: dict[bytes, list[Hit]]) -> list[Hit]:
    """The hits of ``probes``' keys, each key once, in probe order."""
    if len(probes) == 1:
        return by_key.get(probes[0].key, [])
    return [h for k in dict.fromkeys(p.key for p in probes) for h in by_key.get(k, ())]


def _audit_batch(  # noqa: PLR0917 - one call per batch, positional like record_many
    log: AuditLog,
    m: Measure,
    keys: list[bytes],
    out: list[Decision],
    todo: list[int],
    allow: Decision,
    state: StoreState,
    now: _dt.datetime,
) -> None:
    """One :meth:`AuditLog.record_many` call for the batch: the shared allow decision's
    action and entries, with the decided subjects' own in their places."""
    actions = [allow.action] * len(out)
    entries: list[Sequence[str]] = [allow.entry_ids] * len(out)
    for i in todo:
        actions[i] = out[i].action
        entries[i] = out[i].entry_ids
    log.record_many(m.code, keys, actions, entries, state.version, now)
