"""Client and AsyncClient: the public face of the SDK.

Both share one :class:`_Core` (store, updater, decision rules, audit log, outbox). The
core is synchronous because everything on the check path is local and takes
microseconds; sync/apply is disk-bound SQLite work, which the async client runs in a
worker thread. Background mode is one daemon thread (Client) or one asyncio task
(AsyncClient) that listens to the platform's push channel (server-sent events) and polls
at a jittered interval when push is unavailable.

Guarantees:

* ``check`` never touches the network and never answers "allow" without a verified list
  (:class:`NeverSynced`); a stale list is flagged and (by default) downgrades block to
  review. Its hot path is one memoised HMAC, one prepared SQLite statement, cached
  staleness deadlines and a deque append to the audit buffer; records are parsed only
  when an identifier hits.
* Every decision of ``check``/``block``/``screen`` is written to the audit log; a watch
  audits the changed decisions it delivers (not its periodic re-evaluations).
* Watch callbacks run on the thread that applied the new version (the SDK's background
  thread, or the caller of ``sync()``); one failing callback is logged, the others run.
* ``close()`` is idempotent and bounded by its timeout; background threads are daemons and
  are re-created lazily in a forked child (``os.register_at_fork``).
* Logs go to the ``intercept_sdk`` logger; the root logger is never configured.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as _dt
import hashlib
import itertools
import json
import logging
import os
import random
import ssl
import threading
import time
import weakref
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx

from .._exceptions import (
    ClientClosed,
    ConfigurationError,
    HTTPStatusError,
    Intercepted,
    InterceptError,
    InvalidInput,
    NeverSynced,
    StoreCorrupted,
    StoreError,
    TooLarge,
    TrustRootError,
)
from .._protocol.catalog import Measure, get_measure
from .._protocol.reports import build_report, quarterly_window, sign_report
from .._util import atomic_write, ensure_private_dir, format_utc, parse_duration, parse_utc, utcnow
from .audit import AuditLog
from .decisions import (
    Decision,
    Entity,
    KeyMaker,
    Match,
    Person,
    Probe,
    Subject,
    allow_decision,
    decide,
    notice_text,
    own_probe,
    probes_for,
)
from .fetch import HttpFetcher, RetryPolicy, _ca_context, make_fetcher
from .keys import SubscriberKeys, load_subscriber_key
from .outbox import Outbox, Sender
from .push import alines as push_alines
from .push import lines as push_lines
from .store import Hit, Store, StoreState
from .summary import summarize
from .sync import SyncResult, Updater

__all__ = ["AsyncClient", "Client", "LastError", "Status", "Watch", "WatchChange"]

log = logging.getLogger("intercept_sdk.client")

_NEVER_SYNCED = (
    "no verified list version in the cache yet: call sync() first "
    "(the SDK never answers 'allow' without a verified list)"
)


_HW_PERSIST_EVERY = _dt.timedelta(seconds=60)
"""How often ``_Core._now`` persists the clock's high-water mark (at most)."""


@dataclass(frozen=True)
class LastError:
    """The most recent failure of a background or explicit sync."""

    kind: str
    message: str
    http_status: int | None
    at: _dt.datetime


@dataclass(frozen=True)
class Status:
    """A snapshot of the client's health, for dashboards and ``intercept-sdk status``."""

    list_version: int | None
    entries: int | None
    last_success: _dt.datetime | None
    manifest_expires: _dt.datetime | None
    stale: bool
    last_error: LastError | None
    pending_reports: int
    dead_letters: int
    sent_reports: int
    report_error: str | None
    platform: str
    cache_dir: str
    push_connected: bool = False

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in self.__dict__.items():
            if isinstance(v, _dt.datetime):
                out[k] = format_utc(v)
            elif isinstance(v, LastError):
                out[k] = {**v.__dict__, "at": format_utc(v.at)}
            else:
                out[k] = v
        return out


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


def _change_kind(
    before: Decision | None, after: Decision
) -> Literal["listed", "lifted", "changed"] | None:
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
    _owner: weakref.ref[_Core] | None = None
    _state: tuple[int, str, str | None] | None = None

    def cancel(self) -> None:
        """Stop watching; idempotent."""
        owner = self._owner() if self._owner else None
        if owner is not None:
            owner.unwatch(self)


def _verify_for(ca_bundle: str | os.PathLike[str] | None) -> ssl.SSLContext | bool:
    """TLS verification for the push channel: always on; a private CA when configured."""
    return True if ca_bundle is None else _ca_context(ca_bundle)


def _event_version(data: str) -> int:
    """The version announced by a push event; -1 for anything unreadable.

    Push events are hints only (the manifest is what gets verified), so a malformed event
    is ignored; it must never raise out of the listener and stop background syncing.
    """
    try:
        value = json.loads(data)["version"]
    except (ValueError, KeyError, TypeError, IndexError, RecursionError):
        return -1
    if isinstance(value, int) and not isinstance(value, bool) and 0 < value < 1 << 62:
        return value
    return -1


def _sse_url(platform: str) -> str | None:
    if platform.startswith(("http://", "https://")):
        return platform.rstrip("/") + "/events"
    return None


class _Core:
    """Everything both clients share. Not public API."""

    def __init__(
        self,
        platform: str | os.PathLike[str],
        trust_root: str | os.PathLike[str] | bytes,
        cache_dir: str | os.PathLike[str],
        subscriber_id: str | None = None,
        *,
        subscriber_key: str | os.PathLike[str] | SubscriberKeys | None = None,
        measures: Iterable[str] | None = None,
        max_staleness: str | float = "72h",
        stale_action: Literal["review", "block"] = "review",
        poll_interval: str | float = "5m",
        push: bool = True,
        transport: httpx.BaseTransport | None = None,
        report_transport: httpx.BaseTransport | None = None,
        proxy: str | None = None,
        ca_bundle: str | os.PathLike[str] | None = None,
        connect_timeout: float = 5.0,
        read_timeout: float = 15.0,
        total_timeout: float = 300.0,
        retry: RetryPolicy | None = None,
        outbox_max_bytes: int = 256 * 1024 * 1024,
        report_rate: float = 2000.0,
        unit_name: str | None = None,
        clock: Callable[[], _dt.datetime] = utcnow,
        audit: bool = True,
    ) -> None:
        self.platform = os.fspath(platform)
        self.cache_dir = ensure_private_dir(Path(cache_dir))
        self.subscriber_id = subscriber_id
        self.max_staleness = parse_duration(max_staleness)
        self.poll_interval = parse_duration(poll_interval)
        if stale_action not in ("review", "block"):
            raise ConfigurationError("stale_action must be 'review' or 'block'")
        self.stale_action: Literal["review", "block"] = stale_action
        self.push = push
        self.unit_name = unit_name
        self._clock = clock
        self._closed = False
        self._keys: SubscriberKeys | None
        if subscriber_key is None or isinstance(subscriber_key, SubscriberKeys):
            self._keys = subscriber_key
        else:
            self._keys = load_subscriber_key(Path(subscriber_key))
        if self._keys is not None and subscriber_id is None:
            raise ConfigurationError("a subscriber_key needs a subscriber_id")
        self._subscribed: frozenset[str] | None = None
        if measures is not None:
            self._subscribed = frozenset(get_measure(m).code for m in measures)
        if isinstance(trust_root, bytes):
            root_bytes = trust_root
        else:
            root_path = Path(trust_root).resolve()
            if root_path.is_relative_to(self.cache_dir.resolve()):
                raise TrustRootError(
                    f"trust root {trust_root} lies inside the writable cache directory; pin the "
                    "root.json shipped with the application instead"
                )
            try:
                root_bytes = root_path.read_bytes()
            except OSError as exc:
                raise ConfigurationError(f"cannot read trust root {trust_root}: {exc}") from None
        http_options: dict[str, Any] = {
            "connect_timeout": connect_timeout,
            "read_timeout": read_timeout,
            "total_timeout": total_timeout,
            "proxy": proxy,
            "ca_bundle": ca_bundle,
            "transport": transport,
            "retry": retry,
        }
        self._http_options = http_options
        self.fetcher = make_fetcher(self.platform, **http_options)
        self.store = Store(self.cache_dir)
        self.updater = Updater(
            self.cache_dir,
            root_bytes,
            self.fetcher,
            self.store,
            subscriber_id=subscriber_id,
            restricted_key=self._keys.restricted if self._keys else None,
            clock=self._now,
        )
        self.audit = (
            AuditLog(
                self.cache_dir / "audit", signing_key=self._keys.report if self._keys else None
            )
            if audit
            else None
        )
        self.outbox = Outbox(self.cache_dir / "outbox.sqlite", max_bytes=outbox_max_bytes)
        self.sender: Sender | None = None
        if isinstance(self.fetcher, HttpFetcher):
            self.sender = Sender(
                self.outbox,
                self.platform,
                transport=report_transport if report_transport is not None else transport,
                max_rate=report_rate,
            )
        self._last_error: LastError | None = None
        self._last_success: _dt.datetime | None = None
        self._last_success_read = 0.0
        self._high_water = self._read_high_water()
        self._hw_persisted = self._high_water
        self._hw_persist_due = self._hw_persisted + _HW_PERSIST_EVERY
        self._validated_state: StoreState | None = None
        self._expiry_cache: dict[int, _dt.datetime] = {}
        self._fresh: tuple[int, _dt.datetime, _dt.datetime, float] | None = None
        self._km: KeyMaker | None = None
        self._measures: dict[str, Measure] = {}
        self._reported_data_errors: set[str] = set()
        self._watches: list[Watch] = []
        self._watch_lock = threading.RLock()
        self._sync_lock = threading.Lock()
        self._bg: threading.Thread | None = None
        self._bg_stop = threading.Event()
        self._bg_wake = threading.Event()
        self._bg_pid = os.getpid()
        self._push_connected = False
        self._sse_client: httpx.Client | None = None
        self._quarter_checked: str | None = None
        _register_fork_handler(self)

    # -- time ---------------------------------------------------------------------
    def _now(self) -> _dt.datetime:
        """The clock, never earlier than the latest time this cache has seen.

        A wall clock jumping backwards must not unfreeze an expired manifest nor make a
        stale list look fresh; the high-water mark is persisted at every successful sync.
        """
        now = self._clock()
        hw = self._high_water
        if now <= hw:
            return hw
        self._high_water = now
        if now > self._hw_persist_due:
            # A clock that jumps forward and back must not make an expired list fresh
            # again, here or after a restart: remember the latest time seen (cheaply: at
            # most one small non-fsync'd write a minute on the check path; the deadline is
            # kept as a datetime so the check path only compares).
            self._hw_persisted = now
            self._hw_persist_due = now + _HW_PERSIST_EVERY
            with contextlib.suppress(OSError):
                atomic_write(
                    self.cache_dir / "clock", format_utc(now).encode(), mode=0o600, durable=False
                )
        return now

    def _read_high_water(self) -> _dt.datetime:
        try:
            return parse_utc((self.cache_dir / "clock").read_text().strip())
        except (OSError, ValueError):
            return _dt.datetime.min.replace(tzinfo=_dt.timezone.utc)

    def _mark_success(self) -> None:
        now = self._now()
        self._high_water = max(self._high_water, now)
        from .._util import atomic_write

        atomic_write(self.cache_dir / "last_sync", format_utc(now).encode(), mode=0o600)
        atomic_write(self.cache_dir / "clock", format_utc(now).encode(), mode=0o600)
        self._last_success = now
        self._last_success_read = time.monotonic()
        self._fresh = None

    def last_success(self) -> _dt.datetime | None:
        """When any process last synced this cache successfully (re-read at most 1/s)."""
        if time.monotonic() - self._last_success_read > 1.0:
            with contextlib.suppress(OSError, ValueError):
                self._last_success = parse_utc((self.cache_dir / "last_sync").read_text().strip())
            self._last_success_read = time.monotonic()
        return self._last_success

    # -- state --------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise ClientClosed("the client is closed")

    def _manifest_expiry(self, state: StoreState) -> _dt.datetime:
        exp = self._expiry_cache.get(state.version)
        if exp is None:
            manifest = self.updater.trusted.manifest
            if manifest is None or manifest.raw != state.manifest:
                # This state's own manifest, verified without touching shared state: going
                # through the store again could see a newer version committed meanwhile.
                manifest = self.updater.trusted.verify_manifest_bytes(state.manifest)
            exp = manifest.expires
            self._expiry_cache = {state.version: exp}
        return exp

    def _validate_state(self, state: StoreState) -> bool:
        """Check a store state not seen before against the verified manifest.

        Returns ``False`` when a newer version has meanwhile become current (another
        process committed it, or this process's pointer check lagged behind): the caller
        reads again instead of answering from the older version.

        Runs once per new state object (a new version, or a database file swapped under a
        running client): the manifest stored with the list must be the one this client
        verified, or must verify now against the trusted root, and must describe exactly
        this list (version, digest, hash key). Otherwise the cache was replaced or
        tampered with, and no decision is made from it.
        """
        trusted = self.updater.trusted.manifest
        if trusted is None or trusted.raw != state.manifest:
            # Verify this state's own manifest bytes (pure: the shared trusted state is not
            # touched, so threads and processes moving between versions do not race).
            # Raises VerificationError when it does not verify: fail closed.
            trusted = self.updater.trusted.verify_manifest_bytes(state.manifest)
        if (
            trusted is None
            or trusted.version != state.version
            or trusted.state_sha256 != state.state_sha256
            or trusted.hash_key != state.hash_key
        ):
            raise StoreCorrupted("the cached list does not match its verified manifest")
        applied = self.updater._applied_version()
        if state.version < applied:
            # Either the cache was pointed back at an older database (a local rollback),
            # or another process committed a newer version after we read this one (and
            # this process's pointer check, made at most every 50 ms, has not seen it yet).
            self.store.refresh()
            fresh = self.store.state()
            if fresh is None or fresh.version < applied:
                raise StoreCorrupted(
                    f"the local list is version {state.version}, but version {applied} was "
                    "already applied to this cache: it was rolled back outside the SDK"
                )
            return False  # a forward update raced this read: read again from it
        self._validated_state = state
        return True

    def is_stale(self, state: StoreState, now: _dt.datetime) -> bool:
        """True when the last successful sync (by any process sharing the cache) is older
        than ``max_staleness`` or the signed manifest has expired.

        The two deadlines are computed once per version and re-derived at most once a
        second (when another process may have synced), so the check path only compares
        two datetimes.
        """
        fresh = self._fresh
        mono = time.monotonic()
        if fresh is None or fresh[0] != state.version or mono > fresh[3]:
            last = self.last_success() or state.applied_at
            fresh = (
                state.version,
                last + _dt.timedelta(seconds=self.max_staleness),
                self._manifest_expiry(state),
                mono + 1.0,
            )
            self._fresh = fresh
        return now > fresh[1] or now >= fresh[2]

    def _measure(self, code: str) -> Measure:
        m = self._measures.get(code) if isinstance(code, str) else None
        if m is None:
            m = get_measure(code)  # UnknownMeasure, with a did-you-mean
            if self._subscribed is not None and m.code not in self._subscribed:
                raise InvalidInput(
                    f"measure {code!r} is not among the measures this client enforces "
                    f"({', '.join(sorted(self._subscribed))})"
                )
            self._measures[code] = m
        return m

    # -- sync ---------------------------------------------------------------------
    def sync(self, progress: Callable[[int, int], None] | None = None) -> SyncResult:
        self._check_open()
        with self._sync_lock:
            try:
                result = self.updater.sync(progress)
            except (InterceptError, OSError) as exc:
                self._record_error(exc)
                raise
            if result.mode != "locked":
                self._mark_success()
                self._last_error = None
        self._after_version_change(result)
        return result

    def _record_error(self, exc: BaseException) -> None:
        status = exc.status_code if isinstance(exc, HTTPStatusError) else None
        self._last_error = LastError(type(exc).__name__, str(exc), status, self._now())
        log.warning("sync failed: %s: %s", type(exc).__name__, exc)

    # -- decisions ----------------------------------------------------------------
    def _keymaker(self) -> KeyMaker:
        """The key maker of the current list's hash key (NeverSynced without a list)."""
        km = self._km
        if km is None:
            state = self.store.state()
            if state is None:
                raise NeverSynced(_NEVER_SYNCED)
            km = self._km = KeyMaker(state.hash_key)
        return km

    def _lookup(
        self, subject: Subject
    ) -> tuple[list[Probe] | None, list[bytes], StoreState, list[Hit]]:
        """Keys of ``subject`` under the current hash key, and their hits in one read.

        Returns ``(probes, keys, state, hits)``; ``probes`` is ``None`` for a Person (its
        one probe is built only if its key hits, see :func:`own_probe`).
        """
        km = self._km or self._keymaker()
        for _ in range(3):
            probes: list[Probe] | None
            if type(subject) is Person:
                probes = None
                keys = [km.person(subject.id_number)]
            else:
                probes = probes_for(subject, km.person, km.org)
                keys = [p.key for p in probes]
            try:
                state, hits = self.store.lookup(keys)
            except NeverSynced:
                raise NeverSynced(_NEVER_SYNCED) from None
            if state is not self._validated_state and not self._validate_state(state):
                continue
            if state.hash_key == km.hash_key:
                return probes, keys, state, hits
            # A version with a new hash key was applied meanwhile: re-key and look again.
            km = self._km = KeyMaker(state.hash_key)
        raise StoreError(
            "the list keeps changing under this read; cannot answer"
        )  # pragma: no cover

    def check(self, subject: Subject, measure: str) -> Decision:
        """The decision for ``subject`` under ``measure``, from the local list only.

        The hot path, profiled: one memoised HMAC, one prepared SQLite statement, no
        record parsing unless an identifier hits (then one parse of the hit record),
        cached staleness deadlines, and a deque append for the audit log (formatted and
        hashed later, in the flush thread).
        """
        if self._closed:
            raise ClientClosed("the client is closed")
        try:
            m = self._measures[measure]
        except (KeyError, TypeError):  # first use of this code, or not a code at all
            m = self._measure(measure)
        if type(subject) is not Person and not isinstance(subject, (Person, Entity)):
            raise InvalidInput("subject must be a Person or an Entity")
        probes, keys, state, hits = self._lookup(subject)
        now = self._now()
        stale = self.is_stale(state, now)
        if not hits:
            decision = allow_decision(m, list_version=state.version, stale=stale, now=now)
        else:
            decision = decide(
                m,
                probes if probes is not None else [own_probe(subject, keys[0])],
                hits,
                list_version=state.version,
                stale=stale,
                stale_action=self.stale_action,
                now=now,
            )
        audit = self.audit
        if audit is not None:
            audit.record(m.code, keys[0], decision.action, decision.entry_ids, state.version, now)
        if decision.data_errors:
            self._report_data_errors(decision)
        return decision

    def _after_decision(self, key: bytes, decision: Decision) -> None:
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
            self._report_data_errors(decision)

    def _report_data_errors(self, decision: Decision) -> None:
        """A minor's listing reached the site: never enforced; say so, once per entry."""
        for entry_id in decision.data_errors:
            if entry_id in self._reported_data_errors:
                continue
            self._reported_data_errors.add(entry_id)
            log.error(
                "entry %s lists a person who was under 18 on its published date; "
                "not enforced (data error)",
                entry_id,
            )
            if self._keys is None:
                continue
            try:
                self.report_raw(
                    "data_error",
                    measure=decision.measure,
                    entry_id=entry_id,
                    list_version=decision.list_version,
                    outcome="not_enforced",
                    details={"description": "listed person was under 18 on the published date"},
                )
            except InterceptError as exc:
                log.error("could not queue data_error report for %s: %s", entry_id, exc)

    def block(self, subject: Subject, measure: str, **context: Any) -> Decision:
        decision = self.check(subject, measure)
        if decision.action == "block":
            raise self.intercepted(decision, context)
        return decision

    def intercepted(self, decision: Decision, context: Mapping[str, Any]) -> Intercepted:
        """Queue the interception report (durably) and build the exception to raise.

        A report that cannot be queued (no subscriber key, a full outbox, a context value
        the report format refuses, such as an ID number) is logged and ``report_id`` is
        ``None``: it never turns the interception into an ordinary error that a
        fail-open handler could swallow.
        """
        report_id = None
        try:
            report_id = self.report("interception", decision, **context)
        except ConfigurationError:
            log.warning("interception not reported: no subscriber key configured")
        except InterceptError as exc:
            log.error("interception not reported: %s: %s", type(exc).__name__, exc)
        return Intercepted(decision, self.notice(decision), report_id)

    def screen(
        self, subjects: Iterable[Subject], measure: str, batch: int = 2000, *, audit: bool = True
    ) -> Iterator[Decision]:
        """Validate now (closed client, unknown measure raise here), then stream lazily."""
        self._check_open()
        m = self._measure(measure)
        if batch < 1:
            raise InvalidInput("batch must be at least 1")
        return self._screen(iter(subjects), m, batch, audit)

    def _screen(
        self, subjects: Iterator[Subject], m: Measure, batch: int, audit: bool
    ) -> Iterator[Decision]:
        while True:
            buf = list(itertools.islice(subjects, batch))
            if not buf:
                return
            yield from self._screen_batch(buf, m, audit)

    def _screen_batch(
        self, subjects: Sequence[Subject], m: Measure, audit: bool = True
    ) -> list[Decision]:
        """Decisions for one batch, equal to :meth:`check` of each subject in turn.

        Per subject, only its key is derived (:meth:`KeyMaker.own_keys`: no Probe, no
        memo) and looked up with the whole batch in one read transaction; only subjects
        whose keys hit (and entities with declared officers) go through :func:`decide`.
        The others, the vast majority, all get the batch's one allow Decision: the same
        immutable object, with the fields each would have had on its own (same measure,
        version, staleness and ``checked_at``, which is one instant for the batch). The
        batch is audited with one :meth:`AuditLog.record_many` call: one record per
        subject, in input order, exactly what :meth:`check` records.
        """
        for s in subjects:
            if not isinstance(s, (Person, Entity)):
                raise InvalidInput("subjects must be Person or Entity objects")
        km = self._keymaker()
        for _ in range(3):
            keys, several = km.own_keys(subjects)
            wanted = keys
            if several:  # entities with officers: their officers' keys too
                wanted = keys + [p.key for ps in several.values() for p in ps[1:]]
            try:
                state, by_key = self.store.lookup_batch(wanted)
            except NeverSynced:
                raise NeverSynced(_NEVER_SYNCED) from None
            if state is not self._validated_state and not self._validate_state(state):
                continue
            if state.hash_key == km.hash_key:
                break
            km = self._km = KeyMaker(state.hash_key)
        else:  # pragma: no cover
            raise StoreError("the list keeps changing under this read; cannot answer")
        now = self._now()
        stale = self.is_stale(state, now)
        allow = allow_decision(m, list_version=state.version, stale=stale, now=now)
        out = [allow] * len(subjects)
        # Indices to decide, in input order: own key hit, or several probes to look at.
        todo = [i for i, k in enumerate(keys) if k in by_key] if by_key else []
        if several:
            todo = sorted(set(todo).union(several))
        for i in todo:
            probes = several.get(i)
            if probes is None:
                probes = [own_probe(subjects[i], keys[i])]
                hits = by_key[keys[i]]
            else:
                hits = [h for k in dict.fromkeys(p.key for p in probes) for h in by_key.get(k, ())]
                if not hits:
                    continue
            out[i] = decide(
                m,
                probes,
                hits,
                list_version=state.version,
                stale=stale,
                stale_action=self.stale_action,
                now=now,
            )
        log_ = self.audit if audit else None
        if log_ is not None:
            actions = [allow.action] * len(out)
            entries: list[Sequence[str]] = [allow.entry_ids] * len(out)
            for i in todo:
                actions[i] = out[i].action
                entries[i] = out[i].entry_ids
            log_.record_many(m.code, keys, actions, entries, state.version, now)
        for i in todo:
            if out[i].data_errors:
                self._report_data_errors(out[i])
        return out

    def notice(self, decision: Decision) -> str:
        return notice_text(decision, self.unit_name)

    # -- reports ------------------------------------------------------------------
    def report_raw(self, kind: str, **fields: Any) -> str:
        self._check_open()
        if self._keys is None or self.subscriber_id is None:
            raise ConfigurationError("reports need subscriber_id and subscriber_key")
        payload = build_report(kind, subscriber_id=self.subscriber_id, now=self._now(), **fields)
        envelope = sign_report(payload, self._keys.report)
        self.outbox.enqueue(
            envelope,
            report_id=payload["report_id"],
            kind=kind,
            measure=payload.get("measure"),
            created_at=parse_utc(payload["created_at"]),
        )
        if self.sender is not None:
            self.sender.notify()
        return str(payload["report_id"])

    def report(self, kind: str, subject_of_report: Any = None, **details: Any) -> str:
        fields: dict[str, Any] = {}
        outcome = details.pop("outcome", None)
        measure = details.pop("measure", None)
        match: Match | None = None
        if isinstance(subject_of_report, Decision):
            fields["measure"] = subject_of_report.measure
            fields["list_version"] = subject_of_report.list_version
            entry_id = details.pop("entry_id", None)
            for mm in subject_of_report.matches:
                if entry_id is None or mm.entry_id == entry_id:
                    match = mm
                    break
            if match is None and subject_of_report.matches:
                raise InvalidInput(f"entry {entry_id!r} is not among the decision's matches")
        elif isinstance(subject_of_report, Match):
            match = subject_of_report
        elif isinstance(subject_of_report, Mapping):
            fields["entry_id"] = subject_of_report.get("entry_id")
            fields["case_no"] = subject_of_report.get("case_no")
        elif isinstance(subject_of_report, str):
            fields["entry_id"] = subject_of_report
        elif subject_of_report is not None:
            raise InvalidInput("report(kind, decision | match | entry dict | entry_id, ...)")
        if match is not None:
            fields["entry_id"] = match.entry_id
            fields["case_no"] = match.case_no
        if measure is not None:
            fields["measure"] = self._measure(measure).code
        if outcome is None:
            outcome = {
                "interception": "blocked",
                "lift": "lifted",
                "objection": "received",
                "data_error": "not_enforced",
            }.get(kind)
        fields["outcome"] = outcome
        return self.report_raw(kind, details=details, **fields)

    def checks_in(self, start: _dt.datetime, end: _dt.datetime) -> int:
        """Checks recorded in the audit log between ``start`` and ``end``."""
        if self.audit is not None:
            self.audit.flush()
        n = 0
        s, e = start.astimezone(_dt.timezone.utc), end.astimezone(_dt.timezone.utc)
        for path in sorted((self.cache_dir / "audit").glob("audit-*.jsonl")):
            with path.open("rb") as f:
                for line in f:
                    try:
                        obj = json.loads(line)
                        t = _dt.datetime.fromisoformat(obj["t"])
                    except (ValueError, KeyError, TypeError):
                        continue
                    if s <= t < e:
                        n += 1
        return n

    def quarterly_summary(self, year: int, quarter: int, *, upload: bool = False) -> dict[str, Any]:
        start, end, _ = quarterly_window(year, quarter)
        summary = summarize(self.outbox, year, quarter, self.checks_in(start, end))
        if upload:
            self.report_raw(
                "quarterly_summary",
                details=summary,
                report_id=hashlib.sha256(
                    f"{self.subscriber_id}|{year}Q{quarter}".encode()
                ).hexdigest()[:32],
            )
        return summary

    def _maybe_quarterly(self) -> None:
        """Upload last quarter's summary once it has closed (idempotent by report id)."""
        if self._keys is None:
            return
        from .._protocol.reports import CHINA_TZ

        now = self._now().astimezone(CHINA_TZ)
        q = (now.month - 1) // 3 + 1
        year, quarter = (now.year - 1, 4) if q == 1 else (now.year, q - 1)
        tag = f"{year}Q{quarter}"
        if self._quarter_checked == tag:
            return
        self._quarter_checked = tag
        rid = hashlib.sha256(f"{self.subscriber_id}|{tag}".encode()).hexdigest()[:32]
        if self.outbox.has_report(rid):
            return
        with contextlib.suppress(InterceptError):
            self.quarterly_summary(year, quarter, upload=True)

    # -- watch --------------------------------------------------------------------
    def watch(
        self,
        subjects: Iterable[Subject],
        measure: str,
        on_change: Callable[[list[WatchChange]], None],
    ) -> Watch:
        self._check_open()
        m = self._measure(measure)
        if not callable(on_change):
            raise InvalidInput("on_change must be callable")
        subs = tuple(subjects)
        for s in subs:
            if not isinstance(s, (Person, Entity)):
                raise InvalidInput("subjects must be Person or Entity objects")
        w = Watch(subs, m.code, on_change, _owner=weakref.ref(self))
        with self._watch_lock:
            self._evaluate(w, notify=False)
            self._watches.append(w)
        return w

    def unwatch(self, w: Watch) -> None:
        with self._watch_lock:
            if w in self._watches:
                self._watches.remove(w)

    def _evaluate(self, w: Watch, *, notify: bool) -> None:
        """Re-decide every subject of ``w`` if the list changed since its last look, and
        hand the subjects whose decision changed to its callback (when ``notify``)."""
        state = self.store.state()
        if state is None:
            return
        ident = (state.version, state.state_sha256, state.restricted_sha256)
        if w._state == ident:
            return
        m = self._measure(w.measure)
        decisions = list(self._screen(iter(w.subjects), m, 2000, audit=False))
        changes: list[WatchChange] = []
        for i, d in enumerate(decisions):
            before = w.last.get(i)
            kind = _change_kind(before, d)
            if kind is not None and notify:
                changes.append(WatchChange(w.subjects[i], before, d, kind))
        w.last = dict(enumerate(decisions))
        w.version = state.version
        w._state = ident
        if not changes:
            return
        for c in changes:  # the decisions acted upon are audited like any other
            self._after_decision(self._subject_key(c.subject), c.after)
        try:
            w.on_change(changes)
        except Exception:
            log.exception("a watch callback raised; the other watches continue")

    def _subject_key(self, subject: Subject) -> bytes:
        km = self._keymaker()
        if isinstance(subject, Person):
            return km.person(subject.id_number)
        return km.org(subject.effective_org_code)

    def _after_version_change(self, result: SyncResult | None = None) -> None:
        with self._watch_lock:
            for w in list(self._watches):
                try:
                    self._evaluate(w, notify=True)
                except Exception:
                    log.exception("watch evaluation failed; it is retried after the next sync")

    # -- background ---------------------------------------------------------------
    def start_background(self) -> None:
        self._check_open()
        if self._bg is not None and self._bg.is_alive():
            return
        self._bg_stop.clear()
        self._bg = threading.Thread(target=self._bg_run, name="intercept-sdk-sync", daemon=True)
        self._bg.start()
        if self.sender is not None:
            self.sender.start()

    def wake(self) -> None:
        """Ask the background thread to sync now."""
        self._bg_wake.set()

    def _bg_sync_once(self) -> None:
        try:
            self.sync()
        except (InterceptError, OSError):
            pass  # recorded in status(); the last good version stays in force
        except Exception:  # never let the thread die silently
            log.exception("unexpected error in background sync")
        with contextlib.suppress(Exception):
            self._maybe_quarterly()

    def _bg_run(self) -> None:
        # Jittered start so a fleet restarted together does not hit the platform at once.
        if self._bg_stop.wait(random.uniform(0, min(2.0, self.poll_interval / 10))):
            return
        self._bg_sync_once()
        sse = _sse_url(self.platform) if self.push else None
        next_poll = time.monotonic() + self.poll_interval * random.uniform(0.9, 1.1)
        while not self._bg_stop.is_set():
            if sse is not None:
                try:
                    self._listen_push(sse, next_poll)
                except Exception:  # the thread must survive anything the channel sends
                    log.exception("push listener failed; falling back to polling")
                    self._bg_wake.wait(max(0.0, next_poll - time.monotonic()))
                    self._bg_wake.clear()
            else:
                self._bg_wake.wait(max(0.0, next_poll - time.monotonic()))
                self._bg_wake.clear()
            if self._bg_stop.is_set():
                break
            self._bg_sync_once()
            next_poll = time.monotonic() + self.poll_interval * random.uniform(0.9, 1.1)

    def _listen_push(self, url: str, deadline: float) -> None:
        """Follow the SSE channel until a new version is announced or the poll is due."""
        local = self.store.state()
        local_version = local.version if local else 0
        try:
            with httpx.Client(
                timeout=httpx.Timeout(20.0, connect=5.0),
                verify=_verify_for(self._http_options["ca_bundle"]),
                proxy=self._http_options["proxy"],
                transport=self._http_options["transport"],
                follow_redirects=False,
            ) as client:
                self._sse_client = client
                with client.stream("GET", url, headers={"Accept": "text/event-stream"}) as resp:
                    if resp.status_code != 200:
                        raise HTTPStatusError(
                            f"push channel: HTTP {resp.status_code}", resp.status_code
                        )
                    self._push_connected = True
                    event = None
                    for line in push_lines(resp.iter_bytes()):
                        if self._bg_stop.is_set() or self._bg_wake.is_set():
                            self._bg_wake.clear()
                            return
                        if line.startswith("event:"):
                            event = line[6:].strip()
                        elif line.startswith("data:") and event == "version":
                            try:
                                v = _event_version(line[5:])
                            except (ValueError, KeyError, TypeError):
                                continue
                            if v > local_version:
                                return
                        if time.monotonic() >= deadline:
                            return
        except (httpx.HTTPError, HTTPStatusError, OSError, TooLarge) as exc:
            # TooLarge: a line past push_lines' cap (a broken or hostile channel); the
            # connection is dropped and the client polls, as for any channel failure.
            log.info("push channel unavailable (%s); polling every %.0fs", exc, self.poll_interval)
        finally:
            self._push_connected = False
            self._sse_client = None
        # Push failed: wait for the poll (or a wake/stop) before trying again.
        self._bg_wake.wait(max(0.0, min(deadline - time.monotonic(), self.poll_interval)))
        self._bg_wake.clear()

    def _after_fork(self) -> None:
        """In a forked child: forget the parent's threads; restart them lazily."""
        self._bg_pid = os.getpid()
        self._sync_lock = threading.Lock()
        self._watch_lock = threading.RLock()
        was_running = self._bg is not None
        self._bg = None
        self._bg_stop = threading.Event()
        self._bg_wake = threading.Event()
        if was_running and not self._closed:
            self.start_background()

    # -- status / verify / close ---------------------------------------------------
    def status(self) -> Status:
        state = self.store.state()
        now = self._now()
        expires = None
        stale = True
        if state is not None:
            with contextlib.suppress(InterceptError):
                expires = self._manifest_expiry(state)
                stale = self.is_stale(state, now)
        return Status(
            list_version=state.version if state else None,
            entries=state.entries if state else None,
            last_success=self.last_success(),
            manifest_expires=expires,
            stale=stale,
            last_error=self._last_error,
            pending_reports=self.outbox.pending_count(),
            dead_letters=self.outbox.dead_count(),
            sent_reports=self.outbox.sent_count(),
            report_error=str(self.sender.last_error)
            if self.sender and self.sender.last_error
            else None,
            platform=self.platform,
            cache_dir=str(self.cache_dir),
            push_connected=self._push_connected,
        )

    def verify(self) -> StoreState:
        state = self.store.verify()
        manifest = self.updater.reload_manifest()
        if manifest is None or manifest.state_sha256 != state.state_sha256:
            raise StoreCorrupted("the cached state does not match the signed manifest's digest")
        return state

    def flush_reports(self, timeout: float = 10.0) -> bool:
        if self.sender is None:
            return self.outbox.pending_count() == 0
        self.sender.start()
        return self.sender.flush(timeout)

    def close(self, timeout: float = 5.0) -> None:
        if self._closed:
            return
        self._closed = True
        deadline = time.monotonic() + timeout
        self._bg_stop.set()
        self._bg_wake.set()
        client = self._sse_client
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()
        bg = self._bg
        if bg is not None and bg is not threading.current_thread():
            bg.join(max(0.0, min(2.0, deadline - time.monotonic())))
        if self.sender is not None:
            self.sender.close(max(0.1, deadline - time.monotonic()))
        if self.audit is not None:
            self.audit.close(max(0.1, min(2.0, deadline - time.monotonic())))
        with contextlib.suppress(Exception):
            self.outbox.close()
        with contextlib.suppress(Exception):
            self.fetcher.close()
        with contextlib.suppress(Exception):
            self.store.close()


class Client:
    """Synchronous client: decisions from a verified local copy of the list.

    ``Client(platform, trust_root, cache_dir, subscriber_id, ...)``: ``platform`` is an
    https URL, a ``file://`` URL or a directory holding a copied site; ``trust_root`` the
    pinned ``root.json`` (path or bytes) shipped with the application; ``cache_dir`` a
    private directory (created 0700), which several processes may share.

    Options (keyword only):

    * ``subscriber_key`` - directory or file of the subscriber's key pair: signs reports
      (interceptions are reported automatically) and opens restricted entries;
    * ``measures`` - the measure codes this deployment enforces; others raise;
    * ``max_staleness`` (``"72h"``) and ``stale_action`` (``"review"``; ``"block"`` keeps
      blocking on a stale list);
    * ``poll_interval`` (``"5m"``), ``push`` (listen to the platform's push channel),
      ``background`` (start the sync thread and the report sender now);
    * ``unit_name`` - who applies the measure, named in notices as where to ask for 复核;
    * ``transport``/``report_transport`` (an ``httpx`` transport, for tests), ``proxy``,
      ``ca_bundle``, timeouts, ``retry``; ``clock`` (a UTC clock, for tests); ``audit``.

    Guarantees: decisions never touch the network; without a verified list every
    decision raises :class:`NeverSynced` instead of allowing; every decision is written to
    the tamper-evident audit log; the client is thread-safe and fork-safe.
    """

    def __init__(
        self,
        platform: str | os.PathLike[str],
        trust_root: str | os.PathLike[str] | bytes,
        cache_dir: str | os.PathLike[str],
        subscriber_id: str | None = None,
        *,
        background: bool = False,
        **options: Any,
    ) -> None:
        self._core = _Core(platform, trust_root, cache_dir, subscriber_id, **options)
        if background:
            self._core.start_background()

    # list
    def sync(self, progress: Callable[[int, int], None] | None = None) -> SyncResult:
        """Bring the local list up to date now; raises on failure (old version stays)."""
        return self._core.sync(progress)

    def start_background(self) -> None:
        """Start the sync thread (push + polling) and the report sender; idempotent.

        The same as ``background=True`` at construction, for applications that create
        the client before they are ready to serve.
        """
        self._core.start_background()

    def check(self, subject: Subject, measure: str) -> Decision:
        """The decision for ``subject`` (:class:`Person` or :class:`Entity`) under the
        measure code ``measure``, from the local list only (microseconds, no network).

        Raises :class:`UnknownMeasure` for a code not in the catalog, and
        :class:`NeverSynced` when no verified list is available.
        """
        return self._core.check(subject, measure)

    def block(self, subject: Subject, measure: str, **context: Any) -> Decision:
        """Like :meth:`check`, but raise :class:`Intercepted` when the action is block.

        The exception carries the decision and ``notice`` (the Chinese text to show the
        person: case, court, what is restricted, how to object). Every interception is
        queued durably as an ``interception`` report (``context`` becomes its details,
        e.g. ``room="1808"``) before the exception is raised. Otherwise the decision
        (allow, monitor, review, or a block downgraded on a stale list) is returned.
        """
        return self._core.block(subject, measure, **context)

    def screen(
        self, subjects: Iterable[Subject], measure: str, *, batch: int = 2000
    ) -> Iterator[Decision]:
        """Decisions for many subjects, streamed in input order.

        ``subjects`` is consumed ``batch`` at a time (any iterable, e.g. a CSV reader),
        each batch answered from one read transaction. The measure is validated now;
        decisions are computed as the iterator is consumed. Each decision is what
        :meth:`check` would answer for that subject at the batch's instant, and is
        audited alike; the subjects of a batch that no identifier hits share one
        (immutable) allow Decision object.
        """
        return self._core.screen(subjects, measure, batch)

    def watch(
        self,
        subjects: Iterable[Subject],
        measure: str,
        on_change: Callable[[list[WatchChange]], None],
    ) -> Watch:
        """Keep ``subjects`` under supervision for ``measure``.

        After each newly applied list version, ``on_change`` receives the subjects whose
        decision changed (:class:`WatchChange`: ``listed``, ``lifted`` - the restriction
        must be lifted - or ``changed``). It runs on the thread that applied the version:
        the SDK's background thread (``background=True``), or the caller of
        :meth:`sync`; keep it short (hand long work to your own queue), since the next
        sync waits for it. An exception in one callback is logged and does not stop the
        other watches. Returns a :class:`Watch` (``cancel()`` stops it).
        """
        return self._core.watch(subjects, measure, on_change)

    def notice(self, decision: Decision) -> str:
        """The Chinese notice text for a decision (what ``Intercepted.notice`` holds)."""
        return self._core.notice(decision)

    # reports
    def report(self, kind: str, decision_or_entry: Any = None, **details: Any) -> str:
        """Queue a signed report durably; returns its id once it is safely on disk."""
        return self._core.report(kind, decision_or_entry, **details)

    def flush_reports(self, timeout: float = 10.0) -> bool:
        """Upload pending reports now; True when the queue is empty within ``timeout``."""
        return self._core.flush_reports(timeout)

    def quarterly_summary(self, year: int, quarter: int, *, upload: bool = False) -> dict[str, Any]:
        """Counts of the quarter (checks, interceptions, lifts, objections...) and due date."""
        return self._core.quarterly_summary(year, quarter, upload=upload)

    # ops
    def status(self) -> Status:
        return self._core.status()

    def verify(self) -> StoreState:
        """Re-check the whole cache against the signed digest (a full scan)."""
        return self._core.verify()

    def close(self, timeout: float = 5.0) -> None:
        """Stop background work, flush what can be flushed within ``timeout``. Idempotent."""
        self._core.close(timeout)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncClient:
    """Asynchronous mirror of :class:`Client` for asyncio applications.

    Local checks run inline (microseconds, no I/O); sync and report flushing run in a
    worker thread; background mode is one asyncio task.
    """

    def __init__(
        self,
        platform: str | os.PathLike[str],
        trust_root: str | os.PathLike[str] | bytes,
        cache_dir: str | os.PathLike[str],
        subscriber_id: str | None = None,
        *,
        background: bool = False,
        **options: Any,
    ) -> None:
        self._core = _Core(platform, trust_root, cache_dir, subscriber_id, **options)
        self._task: asyncio.Task[None] | None = None
        self._background = background

    async def __aenter__(self) -> AsyncClient:
        if self._background:
            self.start_background()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def start_background(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())
            if self._core.sender is not None:
                self._core.sender.start()

    async def _run(self) -> None:
        core = self._core
        with contextlib.suppress(Exception):
            await asyncio.to_thread(core._bg_sync_once)
        sse = _sse_url(core.platform) if core.push else None
        while not core._closed:
            if sse is not None:
                try:
                    await self._listen(sse)
                except Exception:  # the task must survive anything the channel sends
                    log.exception("push listener failed; falling back to polling")
                    await asyncio.sleep(core.poll_interval)
            else:
                await asyncio.sleep(core.poll_interval * random.uniform(0.9, 1.1))
            if core._closed:
                break
            await asyncio.to_thread(core._bg_sync_once)

    async def _listen(self, url: str) -> None:
        core = self._core
        state = core.store.state()
        local_version = state.version if state else 0
        deadline = time.monotonic() + core.poll_interval
        try:
            async with (
                httpx.AsyncClient(
                    timeout=httpx.Timeout(20.0, connect=5.0),
                    verify=_verify_for(core._http_options["ca_bundle"]),
                    proxy=core._http_options["proxy"],
                ) as client,
                client.stream("GET", url) as resp,
            ):
                if resp.status_code != 200:
                    raise HTTPStatusError(
                        f"push channel: HTTP {resp.status_code}", resp.status_code
                    )
                core._push_connected = True
                event = None
                async for line in push_alines(resp.aiter_bytes()):
                    if line.startswith("event:"):
                        event = line[6:].strip()
                    elif line.startswith("data:") and event == "version":
                        with contextlib.suppress(ValueError, KeyError, TypeError):
                            if _event_version(line[5:]) > local_version:
                                return
                    if time.monotonic() >= deadline:
                        return
        except (httpx.HTTPError, HTTPStatusError, OSError, TooLarge) as exc:
            log.info("push channel unavailable (%s); polling", exc)
            await asyncio.sleep(max(0.0, deadline - time.monotonic()))
        finally:
            core._push_connected = False

    async def sync(self) -> SyncResult:
        return await asyncio.to_thread(self._core.sync)

    async def check(self, subject: Subject, measure: str) -> Decision:
        return self._core.check(subject, measure)

    async def block(self, subject: Subject, measure: str, **context: Any) -> Decision:
        """Like :meth:`Client.block`; the durable report write runs in a worker thread."""
        decision = self._core.check(subject, measure)
        if decision.action == "block":
            raise await asyncio.to_thread(self._core.intercepted, decision, context)
        return decision

    def screen(
        self, subjects: Iterable[Subject], measure: str, *, batch: int = 2000
    ) -> AsyncIterator[Decision]:
        """Like :meth:`Client.screen`; validated now, iterated with ``async for``."""
        decisions = self._core.screen(subjects, measure, batch)

        async def stream() -> AsyncIterator[Decision]:
            for d in decisions:
                yield d

        return stream()

    async def watch(
        self,
        subjects: Iterable[Subject],
        measure: str,
        on_change: Callable[[list[WatchChange]], None],
    ) -> Watch:
        return self._core.watch(subjects, measure, on_change)

    def notice(self, decision: Decision) -> str:
        return self._core.notice(decision)

    async def report(self, kind: str, decision_or_entry: Any = None, **details: Any) -> str:
        return await asyncio.to_thread(self._core.report, kind, decision_or_entry, **details)

    async def flush_reports(self, timeout: float = 10.0) -> bool:
        return await asyncio.to_thread(self._core.flush_reports, timeout)

    async def quarterly_summary(
        self, year: int, quarter: int, *, upload: bool = False
    ) -> dict[str, Any]:
        return await asyncio.to_thread(self._core.quarterly_summary, year, quarter, upload=upload)

    async def status(self) -> Status:
        return self._core.status()

    async def verify(self) -> StoreState:
        return await asyncio.to_thread(self._core.verify)

    async def aclose(self, timeout: float = 5.0) -> None:
        task = self._task
        self._task = None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(task, timeout=min(2.0, timeout))
        await asyncio.to_thread(self._core.close, timeout)


_cores: weakref.WeakSet[_Core] = weakref.WeakSet()
_fork_hook_installed = False


def _child_after_fork() -> None:
    for core in list(_cores):
        with contextlib.suppress(Exception):
            core._after_fork()


def _register_fork_handler(core: _Core) -> None:
    """Make a forked child re-create ``core``'s threads lazily (one hook per process)."""
    global _fork_hook_installed
    if not _fork_hook_installed and hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=_child_after_fork)
        _fork_hook_installed = True
    _cores.add(core)
