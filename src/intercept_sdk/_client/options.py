"""The client's options, typed and validated once, and the pinned trust root.

Why a module: ``Client(...)`` takes some twenty keyword options; checking and converting
them (durations, the subscriber key, the measures enforced, the trust root, the HTTP
configuration) is one responsibility, kept apart from running the client.
:class:`ClientOptions` lists every option with its default (the single place they are
defined); :class:`ClientOptionsDict` is the same list as a ``TypedDict``, so that
``Client(..., max_stalenes="1h")`` or ``push="yes"`` is an error under ``mypy --strict``
(``**options: Unpack[ClientOptionsDict]``); :func:`configure` turns them, with the four
positional arguments, into a :class:`Config` the core builds its parts from.

Guarantees:

* Every duration option accepts a :class:`datetime.timedelta`, a number of seconds or
  text like ``"90s"``, ``"15m"``, ``"6h"``, ``"7d"``; negative, NaN or infinite values are
  refused.
* An invalid option raises :class:`ConfigurationError` (or :class:`UnknownMeasure` for a
  measure code) before anything is started; an unknown keyword raises
  :class:`UnknownOption` (a ``ConfigurationError`` and a ``TypeError``) naming
  ``Client`` and the closest valid option.
* ``poll_interval`` is at least :data:`MIN_POLL_INTERVAL` (a zero interval would poll in
  a tight loop).
* ``max_staleness``, ``proxy`` and ``ca_bundle`` fall back to ``INTERCEPT_MAX_STALENESS``,
  ``INTERCEPT_PROXY`` and ``INTERCEPT_CA_BUNDLE`` when not given (as the README's table
  pairs them); an explicit keyword always wins.
* One :class:`HttpConfig` (proxy, CA, timeouts, transport) reaches sync, the push channel
  and the report sender alike.
* The trust root must not lie inside the writable cache directory (it would let whoever
  can write the cache replace the root of trust); the cache directory exists with mode
  0700 once :func:`configure` returns.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import difflib
import math
import os
import ssl
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypedDict

import httpx

from .._exceptions import ConfigurationError, TrustRootError
from .._protocol.catalog import get_measure
from .._protocol.jurisdictions import objection_rule
from .._util import ensure_private_dir, parse_duration, utcnow
from .hooks import Event, EventHooks
from .keys import SubscriberKeys, load_subscriber_key
from .metrics import Metrics
from .retry import RetryPolicy

__all__ = [
    "MIN_POLL_INTERVAL",
    "ClientOptions",
    "ClientOptionsDict",
    "Config",
    "Duration",
    "HttpConfig",
    "UnknownOption",
    "build_options",
    "configure",
    "duration_seconds",
]

Duration = _dt.timedelta | float | int | str
"""A duration: a ``timedelta``, seconds, or text like ``"90s"``, ``"15m"``, ``"6h"``, ``"7d"``."""

MIN_POLL_INTERVAL = 0.5
"""The shortest ``poll_interval`` accepted, in seconds."""

ENVIRONMENT = {
    "max_staleness": "INTERCEPT_MAX_STALENESS",
    "proxy": "INTERCEPT_PROXY",
    "ca_bundle": "INTERCEPT_CA_BUNDLE",
}
"""Options read from the environment when not given (the README's configuration table)."""


class UnknownOption(ConfigurationError, TypeError):
    """A keyword option ``Client``/``AsyncClient`` does not have (a typo, usually)."""


def duration_seconds(value: object, name: str) -> float:
    """``value`` (a :data:`Duration`) in seconds; :class:`ConfigurationError` naming the
    option ``name`` for anything else (a bool, a negative/NaN/infinite number, bad text)."""
    if isinstance(value, _dt.timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ConfigurationError(
            f"{name} must be a duration (timedelta, seconds, or text like 90s, 15m, 6h, 7d), "
            f"got {value!r}"
        )
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigurationError(f"{name} must be a finite duration, got {value!r}")
    try:
        return parse_duration(value.strip() if isinstance(value, str) else value)
    except ConfigurationError as exc:
        raise ConfigurationError(f"{name}: {exc}") from None


@dataclass(frozen=True)
class HttpConfig:
    """The one HTTP configuration of a client: sync, push channel and report uploads.

    ``transport`` (an httpx transport, for tests) is used by all three unless
    ``report_transport`` overrides it for uploads. TLS verification is always on:
    ``ca_bundle`` only replaces the trusted CAs.
    """

    proxy: str | None = None
    ca_bundle: str | os.PathLike[str] | None = None
    connect_timeout: float = 5.0
    read_timeout: float = 15.0
    total_timeout: float = 300.0
    transport: httpx.BaseTransport | None = None
    report_transport: httpx.BaseTransport | None = None

    def verify(self) -> ssl.SSLContext | bool:
        """What httpx's ``verify`` gets: the system CAs, or only those of ``ca_bundle``."""
        if self.ca_bundle is None:
            return True
        from .fetch import _ca_context

        return _ca_context(self.ca_bundle)

    def timeout(self, read: float | None = None) -> httpx.Timeout:
        """Bounded connect/read/write/pool timeouts (``read`` overrides the read one)."""
        r = self.read_timeout if read is None else read
        return httpx.Timeout(
            connect=self.connect_timeout, read=r, write=r, pool=self.connect_timeout
        )

    def fetcher_options(self, retry: RetryPolicy) -> dict[str, Any]:
        """The fetcher's keyword arguments."""
        return {
            "connect_timeout": self.connect_timeout,
            "read_timeout": self.read_timeout,
            "total_timeout": self.total_timeout,
            "proxy": self.proxy,
            "ca_bundle": self.ca_bundle,
            "transport": self.transport,
            "retry": retry,
        }


class ClientOptionsDict(TypedDict, total=False):
    """The keyword options of ``Client``/``AsyncClient``, for type checkers (see
    :class:`ClientOptions` for each one's default and meaning)."""

    subscriber_key: str | os.PathLike[str] | SubscriberKeys | None
    measures: Iterable[str] | None
    max_staleness: Duration
    stale_action: Literal["review", "block"]
    poll_interval: Duration
    push: bool
    transport: httpx.BaseTransport | None
    report_transport: httpx.BaseTransport | None
    proxy: str | None
    ca_bundle: str | os.PathLike[str] | None
    connect_timeout: Duration
    read_timeout: Duration
    total_timeout: Duration
    retry: RetryPolicy | None
    outbox_max_bytes: int
    report_rate: float
    unit_name: str | None
    jurisdiction: str
    clock: Callable[[], _dt.datetime]
    audit: bool
    lift_deadline_days: int
    feedback_due_days: int
    holidays: Iterable[str | _dt.date]
    extra_workdays: Iterable[str | _dt.date]
    metrics: Metrics | None
    hooks: EventHooks | Callable[[Event], object] | None


@dataclass(frozen=True, kw_only=True)
class ClientOptions:
    """Every keyword option of ``Client``/``AsyncClient``, with its default (see
    :class:`~.client.Client` for what each means). Validated on construction: a
    ``ClientOptions`` that exists is usable; durations are held in seconds."""

    subscriber_key: str | os.PathLike[str] | SubscriberKeys | None = None
    measures: Iterable[str] | None = None
    max_staleness: Duration = "72h"
    stale_action: Literal["review", "block"] = "review"
    poll_interval: Duration = "5m"
    push: bool = True
    transport: httpx.BaseTransport | None = None
    report_transport: httpx.BaseTransport | None = None
    proxy: str | None = None
    ca_bundle: str | os.PathLike[str] | None = None
    connect_timeout: Duration = 5.0
    read_timeout: Duration = 15.0
    total_timeout: Duration = 300.0
    retry: RetryPolicy | None = None
    outbox_max_bytes: int = 256 * 1024 * 1024
    report_rate: float = 2000.0
    unit_name: str | None = None
    jurisdiction: str = "national"
    """Whose objection rules the notice quotes (``national``, ``jiangsu``, ``huaian``)."""
    clock: Callable[[], _dt.datetime] = utcnow
    audit: bool = True
    lift_deadline_days: int = 3
    """Working days to lift a restriction after the list drops it (the ledger)."""
    feedback_due_days: int = 30
    """Days after a quarter within which its summary is due (15 where a local rule says)."""
    holidays: Iterable[str | _dt.date] = ()
    extra_workdays: Iterable[str | _dt.date] = ()
    metrics: Metrics | None = None
    """A :class:`~.metrics.Metrics` registry to count into (one per client by default)."""
    hooks: EventHooks | Callable[[Event], object] | None = None
    """An :class:`~.hooks.EventHooks` (or a callable taking one :class:`~.hooks.Event`)."""

    def __post_init__(self) -> None:
        for name in ("max_staleness", "poll_interval"):
            object.__setattr__(self, name, duration_seconds(getattr(self, name), name))
        for name in ("connect_timeout", "read_timeout", "total_timeout"):
            seconds = duration_seconds(getattr(self, name), name)
            if seconds <= 0:
                raise ConfigurationError(f"{name} must be positive, got {getattr(self, name)!r}")
            object.__setattr__(self, name, seconds)
        if self.poll_interval < MIN_POLL_INTERVAL:  # type: ignore[operator]
            raise ConfigurationError(
                f"poll_interval must be at least {MIN_POLL_INTERVAL:g}s, got {self.poll_interval!r}"
            )
        _check_types(self)

    @property
    def http(self) -> HttpConfig:
        """The one HTTP configuration (sync, push, reports)."""
        return HttpConfig(
            proxy=self.proxy,
            ca_bundle=self.ca_bundle,
            connect_timeout=float(self.connect_timeout),  # type: ignore[arg-type]
            read_timeout=float(self.read_timeout),  # type: ignore[arg-type]
            total_timeout=float(self.total_timeout),  # type: ignore[arg-type]
            transport=self.transport,
            report_transport=self.report_transport,
        )

    def http_options(self, retry: RetryPolicy) -> dict[str, Any]:
        """The fetcher's HTTP configuration (kept for callers of the old name)."""
        return self.http.fetcher_options(retry)


_BOOLS = ("push", "audit")


def _check_types(o: ClientOptions) -> None:
    for name in _BOOLS:
        if not isinstance(getattr(o, name), bool):
            raise ConfigurationError(f"{name} must be True or False, got {getattr(o, name)!r}")
    if o.stale_action not in ("review", "block"):
        raise ConfigurationError(
            f"stale_action must be 'review' or 'block', got {o.stale_action!r}"
        )
    if isinstance(o.measures, str):
        raise ConfigurationError("measures must be a list of measure codes, not one string")
    if o.proxy is not None and not isinstance(o.proxy, str):
        raise ConfigurationError(f"proxy must be a URL, got {o.proxy!r}")
    if o.retry is not None and not isinstance(o.retry, RetryPolicy):
        raise ConfigurationError("retry must be a RetryPolicy")
    if isinstance(o.outbox_max_bytes, bool) or not isinstance(o.outbox_max_bytes, int):
        raise ConfigurationError("outbox_max_bytes must be an integer number of bytes")
    if isinstance(o.report_rate, bool) or not isinstance(o.report_rate, (int, float)):
        raise ConfigurationError("report_rate must be a number (reports per second)")
    if o.metrics is not None and not isinstance(o.metrics, Metrics):
        raise ConfigurationError("metrics must be an intercept_sdk.Metrics")
    if o.hooks is not None and not (isinstance(o.hooks, EventHooks) or callable(o.hooks)):
        raise ConfigurationError("hooks must be an EventHooks or a callable(event)")
    for name in ("transport", "report_transport"):
        value = getattr(o, name)
        if value is not None and not isinstance(
            value, (httpx.BaseTransport, httpx.AsyncBaseTransport)
        ):
            raise ConfigurationError(f"{name} must be an httpx transport, got {value!r}")


_FIELDS = frozenset(f.name for f in dataclasses.fields(ClientOptions))


def build_options(
    given: Mapping[str, object],
    *,
    owner: str = "Client",
    base: ClientOptions | None = None,
    environ: Mapping[str, str] | None = None,
) -> ClientOptions:
    """A validated :class:`ClientOptions` from keyword options (``given``), over ``base``
    (an options object passed as ``options=``) and the environment (see the module
    docstring). An unknown keyword raises :class:`UnknownOption` naming ``owner``."""
    for name in given:
        if name not in _FIELDS:
            close = difflib.get_close_matches(name, sorted(_FIELDS), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise UnknownOption(f"{owner}() got an unknown option {name!r}{hint}")
    values: dict[str, Any] = {}
    env = os.environ if environ is None else environ
    if base is None:
        for name, var in ENVIRONMENT.items():
            if env.get(var):
                values[name] = env[var]
    else:
        values = {f: getattr(base, f) for f in _FIELDS}
    values.update(given)
    return ClientOptions(**values)


@dataclass(frozen=True)
class Config:
    """The validated configuration of one client."""

    platform: str
    cache_dir: Path
    subscriber_id: str | None
    keys: SubscriberKeys | None
    subscribed: frozenset[str] | None
    root_bytes: bytes
    max_staleness: float
    poll_interval: float
    stale_action: Literal["review", "block"]
    retry: RetryPolicy
    options: ClientOptions


def configure(
    platform: str | os.PathLike[str],
    trust_root: str | os.PathLike[str] | bytes,
    cache_dir: str | os.PathLike[str],
    subscriber_id: str | None,
    options: ClientOptions,
) -> Config:
    """Validate ``options`` with the positional arguments (see the module docstring)."""
    cache = ensure_private_dir(Path(cache_dir))
    max_staleness = duration_seconds(options.max_staleness, "max_staleness")
    poll_interval = duration_seconds(options.poll_interval, "poll_interval")
    objection_rule(options.jurisdiction)  # an unknown jurisdiction fails here, not in a notice
    keys = _subscriber_keys(options.subscriber_key)
    if keys is not None and subscriber_id is None:
        raise ConfigurationError("a subscriber_key needs a subscriber_id")
    subscribed = None
    if options.measures is not None:
        subscribed = frozenset(get_measure(m).code for m in options.measures)
    return Config(
        platform=os.fspath(platform),
        cache_dir=cache,
        subscriber_id=subscriber_id,
        keys=keys,
        subscribed=subscribed,
        root_bytes=read_trust_root(trust_root, cache),
        max_staleness=max_staleness,
        poll_interval=poll_interval,
        stale_action=options.stale_action,
        retry=options.retry or RetryPolicy(),
        options=options,
    )


def _subscriber_keys(
    key: str | os.PathLike[str] | SubscriberKeys | None,
) -> SubscriberKeys | None:
    if key is None or isinstance(key, SubscriberKeys):
        return key
    return load_subscriber_key(Path(key))


def read_trust_root(trust_root: str | os.PathLike[str] | bytes, cache_dir: Path) -> bytes:
    """The pinned root's bytes: given as bytes, or read from a file outside ``cache_dir``."""
    if isinstance(trust_root, bytes):
        return trust_root
    root_path = Path(trust_root).resolve()
    if root_path.is_relative_to(cache_dir.resolve()):
        raise TrustRootError(
            f"trust root {trust_root} lies inside the writable cache directory; pin the "
            "root.json shipped with the application instead"
        )
    try:
        return root_path.read_bytes()
    except OSError as exc:
        raise ConfigurationError(f"cannot read trust root {trust_root}: {exc}") from None
