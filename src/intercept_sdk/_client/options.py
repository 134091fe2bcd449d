"""The client's options, validated once, and the pinned trust root.

Why a module: ``Client(...)`` takes some twenty keyword options; checking and converting
them (durations, the subscriber key, the measures enforced, the trust root) is one
responsibility, kept apart from running the client. :class:`ClientOptions` lists every
option with its default (the single place they are defined: ``Client`` and
``AsyncClient`` pass their keywords through); :func:`configure` turns them, with the four
positional arguments, into a :class:`Config` the core builds its parts from.

Guarantees: an invalid option raises :class:`ConfigurationError` (or
:class:`UnknownMeasure` for a measure code) before anything is started; an unknown
keyword raises ``TypeError``; the trust root must not lie inside the writable cache
directory (it would let whoever can write the cache replace the root of trust); the
cache directory exists with mode 0700 once :func:`configure` returns.
"""

from __future__ import annotations

import datetime as _dt
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import httpx

from .._exceptions import ConfigurationError, TrustRootError
from .._protocol.catalog import get_measure
from .._protocol.jurisdictions import objection_rule
from .._util import ensure_private_dir, parse_duration, utcnow
from .keys import SubscriberKeys, load_subscriber_key
from .retry import RetryPolicy

__all__ = ["ClientOptions", "Config", "configure"]


@dataclass(frozen=True, kw_only=True)
class ClientOptions:
    """Every keyword option of ``Client``/``AsyncClient``, with its default (see
    :class:`~.client.Client` for what each means)."""

    subscriber_key: str | os.PathLike[str] | SubscriberKeys | None = None
    measures: Iterable[str] | None = None
    max_staleness: str | float = "72h"
    stale_action: Literal["review", "block"] = "review"
    poll_interval: str | float = "5m"
    push: bool = True
    transport: httpx.BaseTransport | None = None
    report_transport: httpx.BaseTransport | None = None
    proxy: str | None = None
    ca_bundle: str | os.PathLike[str] | None = None
    connect_timeout: float = 5.0
    read_timeout: float = 15.0
    total_timeout: float = 300.0
    retry: RetryPolicy | None = None
    outbox_max_bytes: int = 256 * 1024 * 1024
    report_rate: float = 2000.0
    unit_name: str | None = None
    jurisdiction: str = "national"
    clock: Callable[[], _dt.datetime] = utcnow
    audit: bool = True
    lift_deadline_days: int = 3
    feedback_due_days: int = 30
    holidays: Iterable[str | _dt.date] = ()
    extra_workdays: Iterable[str | _dt.date] = ()

    def http_options(self, retry: RetryPolicy) -> dict[str, Any]:
        """The fetcher's HTTP configuration (also the push channel's)."""
        return {
            "connect_timeout": self.connect_timeout,
            "read_timeout": self.read_timeout,
            "total_timeout": self.total_timeout,
            "proxy": self.proxy,
            "ca_bundle": self.ca_bundle,
            "transport": self.transport,
            "retry": retry,
        }


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
    max_staleness = parse_duration(options.max_staleness)
    poll_interval = parse_duration(options.poll_interval)
    if options.stale_action not in ("review", "block"):
        raise ConfigurationError("stale_action must be 'review' or 'block'")
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
