"""Metrics: cheap counters and latency histograms on the hot paths, and the
:class:`Telemetry` of a process that the operator listener exposes.

Hot paths (every request, at the broker and at the worker) count into plain Python
structures (:class:`Latencies`, a broker's counters) that are turned into Prometheus metric
families only when scraped, by collectors registered in a ``prometheus_client``
``CollectorRegistry``. prometheus_client's own ``Counter``/``Histogram`` take a lock and a
label lookup per sample: about 2.5 us per request and side here, some 5% of a request's
whole server CPU (``docs/operations.md``); these take about 0.3 us. Everything else
(families, exposition formats, process CPU and memory) is prometheus_client's.

A source of metrics is any callable returning metric families; it runs in the reactor
thread, when Prometheus scrapes.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, GCCollector, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from mmo.wire import to_value

__all__ = [
    "BUCKETS",
    "Latencies",
    "Metric",
    "Source",
    "Telemetry",
    "counter",
    "gauge",
]

#: Latency buckets, in seconds (upper bounds; +Inf is implied).
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_LE = [*(f"{b:g}" for b in BUCKETS), "+Inf"]
#: Label values past this many series of one metric are counted under ``OTHER``.
MAX_SERIES = 2000
OTHER = "(other)"

Source = Callable[[], Iterable[Metric]]


class Latencies:
    """Latency histograms by label values (``observe(("echo", "ping", "ok"), 0.0012)``).

    Args:
        name: the metric's name (``mmo_server_request_duration_seconds``).
        documentation: its help text.
        labelnames: the labels, in the order :meth:`observe` is given their values.
    """

    def __init__(self, name: str, documentation: str, labelnames: tuple[str, ...]) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = labelnames
        # labels -> [count per bucket (len(BUCKETS) + 1: the last is +Inf), then the sum]
        self.series: dict[tuple[str, ...], list[Any]] = {}

    def observe(self, labels: tuple[str, ...], seconds: float) -> None:
        """Count one event of ``labels`` that took ``seconds``."""
        series = self.series.get(labels)
        if series is None:
            series = self._new(labels)
        series[bisect_left(BUCKETS, seconds)] += 1
        series[-1] += seconds

    def _new(self, labels: tuple[str, ...]) -> list[Any]:
        if len(self.series) >= MAX_SERIES:
            labels = (OTHER,) * len(self.labelnames)
            if labels in self.series:
                return self.series[labels]
        series: list[Any] = [0] * (len(BUCKETS) + 1) + [0.0]
        self.series[labels] = series
        return series

    def count(self, **match: str) -> int:
        """How many events were observed with the given label values (all by default)."""
        index = [(self.labelnames.index(k), v) for k, v in match.items()]
        return sum(
            sum(s[:-1])
            for labels, s in self.series.items()
            if all(labels[i] == v for i, v in index)
        )

    def collect(self) -> Iterator[Metric]:
        """The histogram family, as Prometheus reads it."""
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for labels, series in self.series.items():
            cumulative = 0
            buckets = []
            for le, n in zip(_LE, series, strict=False):
                cumulative += n
                buckets.append((le, cumulative))
            family.add_metric(list(labels), buckets, series[-1])
        yield family


def counter(
    name: str,
    documentation: str,
    labelnames: tuple[str, ...] = (),
    values: Iterable[tuple[tuple[str, ...], float]] | float = 0,
) -> Metric:
    """A counter family (``name`` without its ``_total``) from ``(labels, value)`` pairs,
    or one value when it has no labels."""
    family = CounterMetricFamily(name, documentation, labels=labelnames)
    _fill(family, labelnames, values)
    return family


def gauge(
    name: str,
    documentation: str,
    labelnames: tuple[str, ...] = (),
    values: Iterable[tuple[tuple[str, ...], float]] | float = 0,
) -> Metric:
    """A gauge family from ``(labels, value)`` pairs, or one value when it has no labels."""
    family = GaugeMetricFamily(name, documentation, labels=labelnames)
    _fill(family, labelnames, values)
    return family


def _fill(family: Any, labelnames: tuple[str, ...], values: Any) -> None:
    if not labelnames:
        family.add_metric([], values)
        return
    for labels, value in values:
        family.add_metric(list(labels), value)


class _Collector:
    def __init__(self, source: Source) -> None:
        self.collect = source


class Telemetry:
    """What one process (or one role's tree) tells its operators: metric sources and
    readiness checks, served by the operator listener (:mod:`mmo.telemetry.site`).

    Args:
        role: the role (``broker``, ``worker``, ...).
        instance: the instance id, when known (a role may set it later).

    Attributes:
        registry: the Prometheus registry the sources are collected from (process CPU,
            memory and garbage collection included).
        checks: readiness checks by name: each returns ``(ok, detail)``.
        resources: extra pages of the listener by path segment (``{"sd": resource}``).
        address: ``host:port`` of the listener, once it listens.
        advertise_host: the host others reach the listener at (default: where it listens).
        directory: the role's view of the cluster (a ``Directory``), if it has one: its
            log events are shipped through it to the log collector.
        registrations: the role's registry entries: they publish the listener's address
            (meta ``metrics``) for Prometheus' service discovery.
        draining: the process is stopping or told to drain: not ready.
    """

    def __init__(self, role: str, instance: str = "") -> None:
        self.role = role
        self.instance = instance
        self.registry = CollectorRegistry(auto_describe=False)
        ProcessCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self.checks: dict[str, Callable[[], tuple[bool, str]]] = {}
        self.resources: dict[bytes, Any] = {}
        self.address: str | None = None
        self.advertise_host: str | None = None
        self.directory: Any = None
        self.registrations: list[Any] = []
        self.draining = False
        self.add_metrics(self._info)

    def add_metrics(self, source: Source) -> None:
        """Collect ``source`` (a callable returning metric families) on every scrape."""
        self.registry.register(_Collector(source))

    def listening(self, address: str) -> None:
        """The operator listener listens at ``address``: the registry entries say so
        (meta ``metrics``, with the role as meta ``role``)."""
        self.address = address
        for registration in self.registrations:
            registration.instance.meta["metrics"] = to_value(address)
            registration.instance.meta["role"] = to_value(self.role)

    def publish_to(self, registration: Any) -> None:
        """One more registry entry that says where the listener is (now, if it listens
        already: an entry made after the process started)."""
        self.registrations.append(registration)
        if self.address is not None:
            registration.instance.meta["metrics"] = to_value(self.address)
            registration.instance.meta["role"] = to_value(self.role)

    def add_check(self, name: str, check: Callable[[], tuple[bool, str]]) -> None:
        """A condition of readiness: ``check()`` returns ``(ok, why)``."""
        self.checks[name] = check

    def readiness(self) -> tuple[bool, dict[str, dict[str, Any]]]:
        """Whether the process is ready, and each check's outcome."""
        results: dict[str, dict[str, Any]] = {}
        if self.draining:
            results["draining"] = {"ok": False, "detail": "the process is draining"}
        for name, check in self.checks.items():
            try:
                ok, detail = check()
            except Exception as e:  # a broken check says so, it does not break the page
                ok, detail = False, f"check failed: {e!r}"
            results[name] = {"ok": bool(ok), "detail": detail}
        return all(r["ok"] for r in results.values()), results

    def _info(self) -> Iterator[Metric]:
        from mmo import __version__

        yield gauge(
            "mmo_info",
            "The process's role, instance id and mmo version (always 1).",
            ("role", "mmo_instance", "version"),
            [((self.role, self.instance, __version__), 1)],
        )
