"""The cluster's status from every process's operator listener: what ``mmo status`` prints
and the admin console shows.

Finds every live process through the registry (every registered instance; a process that
registered under several services is one process, known by the operator listener it
publishes as meta ``metrics``), reads ``/readyz`` and ``/metrics`` from each, and sums it
up per process and per service (docs/status.md). A process that does not answer within
the timeout shows as unreachable.

The computation is pure (:func:`summarize`, :func:`histogram_quantile`); :func:`scrape`
and :func:`gather` do the I/O.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from typing import Any

from twisted.internet import defer, task

from mmo.client.http import read_body
from mmo.types import InlineCallbacks

__all__ = [
    "NoRegistry",
    "gather",
    "histogram_quantile",
    "parse_metrics",
    "quiet_agent",
    "samples_of",
    "scrape",
    "summarize",
    "targets",
]


class NoRegistry(Exception):
    """No yellow answered."""


SERVED = "mmo_server_request_duration_seconds"
CPU = "process_cpu_seconds_total"
RSS = "process_resident_memory_bytes"
SESSIONS = "mmo_broker_sessions"
FORWARDED = "mmo_broker_forwarded_total"
#: Seconds to wait for the registry view to be complete (a yellow younger than its
#: warm-up may not know every process yet) before listing what it knows.
VIEW_WAIT = 5.0
#: Services that are their role's name (a process without a listener has no ``role`` meta).
ROLE_SERVICES = frozenset({"broker", "brokerlist", "yellow", "logs", "bridge", "cluster"})

Samples = dict[str, list[tuple[dict[str, str], float]]]
Buckets = dict[float, float]


# -- pure functions ------------------------------------------------------------------------


def parse_metrics(text: str) -> Samples:
    """The samples of a Prometheus text exposition, by sample name (``x_bucket``,
    ``x_count``, ``y_total``...): each a list of ``(labels, value)``."""
    from prometheus_client.parser import text_string_to_metric_families

    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return samples


def samples_of(snapshot: Mapping[str, Any]) -> Samples | None:
    """The samples of a read's ``/metrics`` (None if it has none), parsed once: a read is
    the second of one summary and the first of the next, and the console reads it too."""
    if snapshot.get("error") or not snapshot.get("metrics"):
        return None
    parsed: Samples | None = snapshot.get("samples")
    if parsed is None:
        parsed = parse_metrics(snapshot["metrics"])
        if isinstance(snapshot, dict):  # what scrape() reads: kept for the next summary
            snapshot["samples"] = parsed
    return parsed


def histogram_quantile(q: float, buckets: Iterable[tuple[float, float]]) -> float:
    """The ``q`` quantile of a histogram, as Prometheus' ``histogram_quantile`` computes it:
    linear interpolation within the bucket the rank falls in.

    Args:
        q: the quantile (0.99).
        buckets: ``(upper bound, cumulative count)`` pairs, with the ``+Inf`` bucket.

    Returns:
        The quantile; NaN when there are no observations, fewer than two buckets or no
        ``+Inf`` bucket; the highest finite bound when the rank falls in ``+Inf``.
    """
    if math.isnan(q):
        return math.nan
    if q < 0:
        return -math.inf
    if q > 1:
        return math.inf
    merged: dict[float, float] = {}
    for bound, count in buckets:
        merged[float(bound)] = merged.get(float(bound), 0.0) + float(count)
    ordered = sorted(merged.items())
    if len(ordered) < 2 or not math.isinf(ordered[-1][0]):
        return math.nan
    # Counts are cumulative: a lower count after a higher one is a scrape artefact.
    fixed: list[tuple[float, float]] = []
    highest = 0.0
    for bound, count in ordered:
        highest = max(highest, count)
        fixed.append((bound, highest))
    total = fixed[-1][1]
    if total <= 0:
        return math.nan
    rank = q * total
    b = next((i for i, (_, count) in enumerate(fixed[:-1]) if count >= rank), len(fixed) - 1)
    if b == len(fixed) - 1:
        return fixed[-2][0]
    if b == 0 and fixed[0][0] <= 0:
        return fixed[0][0]
    start, end, count = 0.0, fixed[b][0], fixed[b][1]
    if b > 0:
        start = fixed[b - 1][0]
        count -= fixed[b - 1][1]
        rank -= fixed[b - 1][1]
    if count <= 0:
        return start
    return start + (end - start) * (rank / count)


def _value(samples: Samples | None, name: str) -> float | None:
    """The sum of the samples ``name`` (None when there are none)."""
    if samples is None or name not in samples:
        return None
    return sum(value for _, value in samples[name])


def _delta(before: float | None, after: float | None) -> float | None:
    """How much a counter grew (all of ``after`` when it went back: the process restarted)."""
    if after is None:
        return None
    if before is None:
        before = 0.0
    return after - before if after >= before else after


class _Served:
    """What a process served between two scrapes, by series ``(service, method, outcome)``:
    the growth of each series's count and buckets."""

    def __init__(self, before: Samples, after: Samples) -> None:
        self.counts: dict[tuple[str, str, str], float] = {}
        self.buckets: dict[tuple[str, str, str], Buckets] = {}
        old_counts = self._counts(before)
        new_counts = self._counts(after)
        old_buckets = self._buckets(before)
        new_buckets = self._buckets(after)
        for key, count in new_counts.items():
            old = old_counts.get(key, 0.0)
            restarted = count < old
            self.counts[key] = count if restarted else count - old
            was = {} if restarted else old_buckets.get(key, {})
            self.buckets[key] = {
                le: max(0.0, n - was.get(le, 0.0)) for le, n in new_buckets.get(key, {}).items()
            }

    @staticmethod
    def _key(labels: Mapping[str, str]) -> tuple[str, str, str]:
        return (labels.get("service", ""), labels.get("method", ""), labels.get("outcome", ""))

    def _counts(self, samples: Samples) -> dict[tuple[str, str, str], float]:
        counts: dict[tuple[str, str, str], float] = {}
        for labels, value in samples.get(f"{SERVED}_count", []):
            key = self._key(labels)
            counts[key] = counts.get(key, 0.0) + value
        return counts

    def _buckets(self, samples: Samples) -> dict[tuple[str, str, str], Buckets]:
        buckets: dict[tuple[str, str, str], Buckets] = {}
        for labels, value in samples.get(f"{SERVED}_bucket", []):
            try:
                le = float(labels.get("le", ""))
            except ValueError:
                continue
            series = buckets.setdefault(self._key(labels), {})
            series[le] = series.get(le, 0.0) + value
        return buckets

    def select(self, service: str | None = None) -> tuple[float, float, Buckets]:
        """Requests, errors (outcome other than ``ok``) and buckets, of ``service`` or all."""
        requests = errors = 0.0
        merged: Buckets = {}
        for key, count in self.counts.items():
            if service is not None and key[0] != service:
                continue
            requests += count
            if key[2] != "ok":
                errors += count
            for le, n in self.buckets.get(key, {}).items():
                merged[le] = merged.get(le, 0.0) + n
        return requests, errors, merged


def _ms(q: float, buckets: Buckets) -> float | None:
    """The ``q`` quantile of ``buckets`` in milliseconds (None when it has no answer)."""
    seconds = histogram_quantile(q, buckets.items())
    return None if math.isnan(seconds) or math.isinf(seconds) else round(seconds * 1000, 3)


def _rate(n: float | None, seconds: float) -> float | None:
    return None if n is None or seconds <= 0 else round(n / seconds, 3)


def _health(snapshot: Mapping[str, Any]) -> tuple[str, str | None]:
    """``(health, detail)`` of a process from its scrape."""
    if not snapshot.get("address"):
        return "no metrics", "no operator listener (started without --metrics)"
    if snapshot.get("error"):
        return "unreachable", str(snapshot["error"])
    ready = snapshot.get("ready")
    if not isinstance(ready, dict):
        return "unreachable", "no readiness answer"
    if ready.get("ready"):
        return "ready", None
    checks = ready.get("checks") or {}
    for name, check in checks.items():
        if isinstance(check, dict) and not check.get("ok"):
            return "not ready", str(check.get("detail") or name)
    return "not ready", "not ready"


def _add(a: float | None, b: float | None) -> float | None:
    if a is None:
        return b
    return a if b is None else a + b


def summarize(
    before: Mapping[str, Mapping[str, Any]],
    after: Mapping[str, Mapping[str, Any]],
    interval: float,
) -> dict[str, Any]:
    """The cluster's status from two scrapes ``interval`` seconds apart.

    Args:
        before, after: scrapes by process key (see :func:`scrape`), each a dict with
            ``role``, ``service``, ``services`` (every service it registered as),
            ``instance``, ``address`` (its operator listener, None if it has none),
            ``metrics`` (the ``/metrics`` text), ``ready`` (the ``/readyz`` body),
            ``error`` (why it could not be read) and ``time`` (when it was read; the
            rates use the time between a process's two reads when both are known).
        interval: seconds between the scrapes.

    Returns:
        ``{"interval", "cluster": {...}, "processes": [...], "services": [...]}``: the
        processes of ``after`` (a process only there has no rates), each with its health
        and rates; per service, the instances registered and what they served. Values
        that cannot be known are None.
    """
    processes: list[dict[str, Any]] = []
    # What each process read twice served: (served, seconds, services it registered as).
    measured: list[tuple[_Served, float, list[str]]] = []
    instances: dict[str, int] = {}
    for key, snap in after.items():
        old = before.get(key)
        ready = snap.get("ready") if isinstance(snap.get("ready"), dict) else {}
        assert isinstance(ready, dict)
        role = snap.get("role") or ready.get("role") or "?"
        for service in snap.get("services") or []:
            instances[service] = instances.get(service, 0) + 1
        health, detail = _health(snap)
        row: dict[str, Any] = {
            "role": role,
            "service": snap.get("service") or role,
            "instance": snap.get("instance") or ready.get("instance") or "?",
            "address": snap.get("address"),
            "health": health,
            "detail": detail,
            "requests_per_s": None,
            "errors_per_s": None,
            "p99_ms": None,
            "cpu_percent": None,
            "rss_mib": None,
            "sessions": None,
            "forwarded_per_s": None,
        }
        processes.append(row)
        new_samples = samples_of(snap)
        if new_samples is None:
            continue
        rss = _value(new_samples, RSS)
        row["rss_mib"] = None if rss is None else round(rss / 2**20, 1)
        sessions = _value(new_samples, SESSIONS)
        row["sessions"] = None if sessions is None else int(sessions)
        old_samples = samples_of(old) if old is not None else None
        if old_samples is None:
            continue
        assert old is not None
        seconds = interval
        t0, t1 = old.get("time"), snap.get("time")
        if isinstance(t0, int | float) and isinstance(t1, int | float) and t1 > t0:
            seconds = float(t1 - t0)
        served = _Served(old_samples, new_samples)
        requests, errors, buckets = served.select()
        row["requests_per_s"] = _rate(requests, seconds)
        row["errors_per_s"] = _rate(errors, seconds)
        row["p99_ms"] = _ms(0.99, buckets)
        cpu = _delta(_value(old_samples, CPU), _value(new_samples, CPU))
        row["cpu_percent"] = None if cpu is None else round(100 * cpu / seconds, 1)
        if FORWARDED in new_samples:
            forwarded = _delta(_value(old_samples, FORWARDED), _value(new_samples, FORWARDED))
            row["forwarded_per_s"] = _rate(forwarded, seconds)
        measured.append((served, seconds, list(snap.get("services") or [])))

    processes.sort(key=lambda r: (str(r["role"]), str(r["service"]), str(r["instance"])))

    names = set(instances)
    for served, _, _ in measured:
        names.update(key[0] for key in served.counts)
    services = []
    for name in sorted(names):
        requests_rate: float | None = None
        errors_rate: float | None = None
        merged: Buckets = {}
        for served, seconds, registered in measured:
            if name not in registered and not any(key[0] == name for key in served.counts):
                continue
            requests, errors, buckets = served.select(name)
            requests_rate = _add(requests_rate, requests / seconds)
            errors_rate = _add(errors_rate, errors / seconds)
            for le, n in buckets.items():
                merged[le] = merged.get(le, 0.0) + n
        services.append(
            {
                "service": name,
                "instances": instances.get(name, 0),
                "requests_per_s": None if requests_rate is None else round(requests_rate, 3),
                "errors_per_s": None if errors_rate is None else round(errors_rate, 3),
                "p50_ms": _ms(0.5, merged),
                "p99_ms": _ms(0.99, merged),
            }
        )

    everything: Buckets = {}
    requests_total: float | None = None
    errors_total: float | None = None
    for served, seconds, _ in measured:
        requests, errors, buckets = served.select()
        requests_total = _add(requests_total, requests / seconds)
        errors_total = _add(errors_total, errors / seconds)
        for le, n in buckets.items():
            everything[le] = everything.get(le, 0.0) + n
    healths = [p["health"] for p in processes]
    cluster = {
        "processes": len(processes),
        "ready": healths.count("ready"),
        "not_ready": healths.count("not ready"),
        "unreachable": healths.count("unreachable"),
        "no_metrics": healths.count("no metrics"),
        "sessions": sum(p["sessions"] or 0 for p in processes),
        "requests_per_s": None if requests_total is None else round(requests_total, 3),
        "errors_per_s": None if errors_total is None else round(errors_total, 3),
        "p99_ms": _ms(0.99, everything),
    }
    return {
        "interval": round(interval, 3),
        "cluster": cluster,
        "processes": processes,
        "services": services,
    }


def _meta(instance: Any) -> dict[str, Any]:
    from mmo.wire import from_value

    meta: dict[str, Any] = {}
    for key, value in (instance.meta or {}).items():
        try:
            meta[key] = from_value(value)
        except Exception:  # a value this tool cannot read is not worth failing for
            continue
    return meta


def targets(view: Any, extra: Iterable[str] = ()) -> dict[str, dict[str, Any]]:
    """The processes to read, by key (their operator listener's address, or
    ``service/instance`` for one without): every instance the registry ``view`` has,
    one per listener, and the listeners of ``extra``."""
    found: dict[str, dict[str, Any]] = {}
    for service in sorted(view.instances):
        for instance_id in sorted(view.instances[service]):
            meta = _meta(view.instances[service][instance_id])
            address = meta.get("metrics")
            address = address if isinstance(address, str) and address else None
            key = address or f"{service}/{instance_id}"
            if key in found:
                found[key]["services"].append(service)
                continue
            role = meta.get("role")
            if not isinstance(role, str) or not role:
                role = service if service in ROLE_SERVICES else "worker"
            found[key] = {
                "role": role,
                "service": service,
                "services": [service],
                "instance": instance_id,
                "address": address,
            }
    for address in extra:
        found.setdefault(
            address,
            {"role": None, "service": None, "services": [], "instance": None, "address": address},
        )
    return found


def _reason(failure: Any, timeout: float) -> str:
    error = failure.value
    reasons = getattr(error, "reasons", None)  # twisted.web's ResponseNeverReceived & co
    if reasons:
        error = reasons[0].value
    if isinstance(error, defer.TimeoutError | defer.CancelledError):
        return f"no answer within {timeout:g} s"
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0][:200]


@defer.inlineCallbacks
def _get(
    agent: Any, reactor: Any, url: str, timeout: float
) -> InlineCallbacks[tuple[int, bytes, float]]:
    """``(status, body, when)`` of ``GET url``, within ``timeout`` seconds; ``when``: the
    reactor's time when the answer began to arrive (the page was made just before)."""
    from twisted.web.http_headers import Headers

    def body(response: Any) -> defer.Deferred[tuple[int, bytes, float]]:
        when = reactor.seconds()
        return read_body(response).addCallback(lambda data: (response.code, data, when))

    d = agent.request(b"GET", url.encode(), Headers({b"accept": [b"text/plain"]}))
    d.addCallback(body)
    d.addTimeout(timeout, reactor)
    return (yield d)


@defer.inlineCallbacks
def _read(
    agent: Any, reactor: Any, target: dict[str, Any], timeout: float
) -> InlineCallbacks[dict[str, Any]]:
    """``target`` with what its listener answers (``ready``, ``metrics``, ``time``) or why
    it did not (``error``)."""
    snapshot = {**target, "ready": None, "metrics": None, "error": None, "time": None}
    address = target["address"]
    if not address:
        return snapshot
    base = f"http://{address}"
    results = yield defer.DeferredList(
        [
            _get(agent, reactor, f"{base}/readyz", timeout),
            _get(agent, reactor, f"{base}/metrics", timeout),
        ],
        consumeErrors=True,
    )
    (ok_ready, ready), (ok_metrics, metrics) = results
    if not ok_ready or not ok_metrics:
        snapshot["error"] = _reason(ready if not ok_ready else metrics, timeout)
        return snapshot
    status, body, _ = ready
    try:
        snapshot["ready"] = json.loads(body)
    except ValueError:
        snapshot["error"] = f"/readyz answered {status} without JSON"
        return snapshot
    status, text, when = metrics
    if status != 200:
        snapshot["error"] = f"/metrics answered {status}"
        return snapshot
    snapshot["metrics"] = text.decode("utf-8", "replace")
    snapshot["time"] = when
    return snapshot


@defer.inlineCallbacks
def _view(directory: Any) -> InlineCallbacks[Any]:
    """The directory's registry view, once complete (or as it is after :data:`VIEW_WAIT`).

    Raises:
        NoRegistry: no yellow answered.
    """
    view = directory.view
    try:
        yield view.wait_for(lambda: view.warm, VIEW_WAIT)
    except defer.TimeoutError:
        if not view.synced:
            raise NoRegistry(f"no yellow answered at {', '.join(view.yellows)}") from None
    return view


def quiet_agent(reactor: Any, timeout: float = 2.0) -> Any:
    """An HTTP agent that keeps its connections (one reader polling every few seconds
    reuses them) and does not log each one it opens and closes."""
    from twisted.web.client import Agent, HTTPConnectionPool, _HTTP11ClientFactory

    class Quiet(_HTTP11ClientFactory):
        noisy = False

    pool = HTTPConnectionPool(reactor, persistent=True)
    pool._factory = Quiet
    return Agent(reactor, connectTimeout=timeout, pool=pool)


@defer.inlineCallbacks
def scrape(
    reactor: Any,
    directory: Any,
    timeout: float = 2.0,
    extra: Iterable[str] = (),
    agent: Any = None,
) -> InlineCallbacks[dict[str, dict[str, Any]]]:
    """Read every process the registry lists (and the listeners of ``extra``) once: their
    ``/readyz`` and ``/metrics``, each within ``timeout`` seconds, all at once (with
    ``agent``, or a :func:`quiet_agent` of its own).

    Raises:
        NoRegistry: no yellow answered.
    """
    view = yield _view(directory)
    found = targets(view, extra)
    agent = agent or quiet_agent(reactor, timeout)
    keys = list(found)
    results = yield defer.gatherResults([_read(agent, reactor, found[k], timeout) for k in keys])
    return dict(zip(keys, results, strict=True))


@defer.inlineCallbacks
def gather(
    reactor: Any,
    directory: Any,
    interval: float = 1.0,
    *,
    timeout: float = 2.0,
    extra: Iterable[str] = (),
) -> InlineCallbacks[dict[str, Any]]:
    """The cluster's status (:func:`summarize`) from two scrapes, the second ``interval``
    seconds after the first is done, of every process ``directory``'s registry view lists
    (and ``extra`` listeners).

    Raises:
        NoRegistry: no yellow answered.
    """
    extra = list(extra)
    before = yield scrape(reactor, directory, timeout, extra)
    # From the end of the first read: every process's two reads are ``interval`` apart
    # at least (the first read of a process may come late, after a slow one of another).
    read = reactor.seconds()
    yield task.deferLater(reactor, interval, lambda: None)
    after = yield scrape(reactor, directory, timeout, extra)
    elapsed = reactor.seconds() - read
    return summarize(before, after, elapsed)
