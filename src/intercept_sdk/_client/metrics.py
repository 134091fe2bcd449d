"""Metrics: what a client did and how fresh its list is, for Prometheus or OpenTelemetry.

Why: an enforcing unit must notice when its list stops updating long before an auditor
does. Counters are kept by the client itself (no dependency); they are rendered in the
Prometheus text format (:meth:`Metrics.render_prometheus`, served by the agent's
``/metrics``), registered with ``prometheus_client`` (extra ``prometheus``,
:meth:`Metrics.prometheus_collector`) or as OpenTelemetry observable instruments (extra
``otel``, :meth:`Metrics.bind_opentelemetry`).

Series (all prefixed ``intercept_``):

* ``checks_total{measure,action}`` - decisions of check/block/screen;
* ``syncs_total{outcome}`` - sync attempts by ``ok``/``failed``/``busy`` (another
  process held the cache's sync lock);
* ``sync_lag_seconds`` - seconds since the last successful sync (any process);
* ``list_version``, ``list_age_seconds`` - the verified version in use and its age;
* ``list_stale`` - 1 while the list is stale;
* ``outbox_pending``, ``outbox_dead_letters`` - reports waiting, reports refused;
* ``sync_consecutive_failures`` - failed syncs in a row on the cache (any process).

Guarantees: counting is thread-safe and costs one uncontended lock per decision (per
batch for screen); labels hold measure codes, actions and outcomes only, never an
identifier; gauges are read at scrape time from ``status()`` (never stale).
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

__all__ = ["Metrics", "Sample"]


@dataclass(frozen=True)
class Sample:
    """One value of a series: ``name`` (without prefix), labels, value, kind, help."""

    name: str
    labels: tuple[tuple[str, str], ...]
    value: float
    kind: str  # "counter" or "gauge"
    help: str


_HELP = {
    "checks_total": ("counter", "Decisions made, by measure and action."),
    "syncs_total": ("counter", "Sync attempts by outcome (ok, failed, busy)."),
    "sync_lag_seconds": ("gauge", "Seconds since the last successful sync."),
    "list_version": ("gauge", "Verified list version in use."),
    "list_age_seconds": ("gauge", "Seconds since the list in use was verified."),
    "list_stale": ("gauge", "1 while the list is stale."),
    "outbox_pending": ("gauge", "Reports waiting to be uploaded."),
    "outbox_dead_letters": ("gauge", "Reports the platform refused."),
    "sync_consecutive_failures": ("gauge", "Failed syncs in a row on this cache."),
}


class Metrics:
    """Counters of one client (or several sharing it) and the gauges of a status source.

    ``gauges`` is set by the client: a callable returning the current gauge values.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._checks: Counter[tuple[str, str]] = Counter()
        self._syncs: Counter[str] = Counter()
        self.gauges: Callable[[], dict[str, float | None]] | None = None

    # -- counting (the client calls these) ---------------------------------------------
    def count_check(self, measure: str, action: str) -> None:
        with self._lock:
            self._checks[(measure, action)] += 1

    def count_checks(self, measure: str, actions: Iterable[str]) -> None:
        counted = Counter(actions)
        with self._lock:
            for action, n in counted.items():
                self._checks[(measure, action)] += n

    def count_sync(self, outcome: str) -> None:
        with self._lock:
            self._syncs[outcome] += 1

    # -- reading -----------------------------------------------------------------------
    def checks(self) -> dict[tuple[str, str], int]:
        """``(measure, action) -> count`` so far."""
        with self._lock:
            return dict(self._checks)

    def syncs(self) -> dict[str, int]:
        """``outcome -> count`` so far."""
        with self._lock:
            return dict(self._syncs)

    def samples(self) -> Iterator[Sample]:
        """Every series' current values."""
        for (measure, action), n in sorted(self.checks().items()):
            yield self._sample("checks_total", n, measure=measure, action=action)
        syncs = self.syncs()
        for outcome in ("ok", "failed", "busy"):
            yield self._sample("syncs_total", syncs.get(outcome, 0), outcome=outcome)
        gauges = self.gauges() if self.gauges is not None else {}
        for name, value in gauges.items():
            if value is not None:
                yield self._sample(name, value)

    @staticmethod
    def _sample(name: str, value: float, **labels: str) -> Sample:
        kind, text = _HELP[name]
        return Sample(name, tuple(sorted(labels.items())), float(value), kind, text)

    def render_prometheus(self) -> str:
        """The Prometheus text exposition format (version 0.0.4)."""
        lines: list[str] = []
        seen: set[str] = set()
        for s in self.samples():
            full = f"intercept_{s.name}"
            if full not in seen:
                seen.add(full)
                lines.append(f"# HELP {full} {s.help}")
                lines.append(f"# TYPE {full} {s.kind}")
            label_text = ",".join(f'{k}="{_escape(v)}"' for k, v in s.labels)
            lines.append(
                f"{full}{{{label_text}}} {_number(s.value)}"
                if label_text
                else f"{full} {_number(s.value)}"
            )
        return "\n".join(lines) + "\n"

    # -- exporters (optional extras) ---------------------------------------------------
    def prometheus_collector(self) -> Any:
        """A ``prometheus_client`` collector of these metrics (extra ``prometheus``):
        ``prometheus_client.REGISTRY.register(client.metrics.prometheus_collector())``."""
        try:
            from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
        except ImportError as exc:  # pragma: no cover - depends on the extra
            from .._exceptions import ConfigurationError

            raise ConfigurationError(
                "prometheus_client is not installed: pip install 'intercept-sdk[prometheus]'"
            ) from exc
        metrics = self

        class _Collector:
            def collect(self) -> Iterator[Any]:
                families: dict[str, Any] = {}
                for s in metrics.samples():
                    fam = families.get(s.name)
                    if fam is None:
                        cls = CounterMetricFamily if s.kind == "counter" else GaugeMetricFamily
                        name = f"intercept_{s.name}"
                        if s.kind == "counter":
                            name = name.removesuffix("_total")
                        fam = families[s.name] = cls(name, s.help, labels=[k for k, _ in s.labels])
                    fam.add_metric([v for _, v in s.labels], s.value)
                yield from families.values()

        return _Collector()

    def bind_opentelemetry(self, meter: Any) -> list[Any]:
        """Register observable instruments on an OpenTelemetry ``meter`` (extra
        ``otel``); returns them. Values are read at each collection."""
        try:
            from opentelemetry.metrics import Observation
        except ImportError as exc:  # pragma: no cover - depends on the extra
            from .._exceptions import ConfigurationError

            raise ConfigurationError(
                "opentelemetry-api is not installed: pip install 'intercept-sdk[otel]'"
            ) from exc
        instruments = []
        for name, (kind, text) in _HELP.items():

            def observe(_options: Any, name: str = name) -> list[Any]:
                return [
                    Observation(s.value, dict(s.labels)) for s in self.samples() if s.name == name
                ]

            make = (
                meter.create_observable_counter
                if kind == "counter"
                else meter.create_observable_gauge
            )
            instruments.append(make(f"intercept.{name}", callbacks=[observe], description=text))
        return instruments


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    return str(int(value)) if value.is_integer() else repr(value)
