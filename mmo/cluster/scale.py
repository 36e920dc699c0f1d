"""Auto-scaling of a stateless service: every ``interval`` the :class:`Scaler` reads a
signal of the service's instances (requests in flight per instance, the p99 of what they
served, or their CPU), computes how many instances would bring it to the target, and
starts or stops instances through a :class:`ScaleBackend`.

The decision: ``desired = ceil(current * value / target)``, clamped to ``[min, max]`` and
to at most 2 more or 1 fewer than now; a scale up waits ``up_cooldown`` seconds after the
last change, a scale down ``down_cooldown``. Nothing scales while a rolling reload rolls
the same service. Each change is logged with its reason and counted.

:class:`LocalProcesses` is the backend of ``mmo-cluster``: new children of the cluster,
started and stopped as a rolling reload does (:mod:`mmo.cluster.roll`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Protocol

from twisted.application.service import Service
from twisted.internet import defer, task
from twisted.logger import Logger
from typing_extensions import override

from mmo.cluster.config import ScalePolicy
from mmo.types import Clock, InlineCallbacks

__all__ = ["LocalProcesses", "ScaleBackend", "ScaleService", "Scaler", "StatusSignal", "desired"]

log = Logger()

#: Most instances one decision adds, and removes.
MAX_UP = 2
MAX_DOWN = 1


class ScaleBackend(Protocol):
    """What a scaler needs of the platform that runs the instances."""

    def instances(self, service: str) -> list[str]:
        """The instance ids of ``service`` it runs now."""

    def start(self, service: str) -> defer.Deferred[str]:
        """Start a new instance of ``service``; fire with its id once it is ready."""

    def stop(self, service: str, instance: str) -> defer.Deferred[None]:
        """Drain ``instance``, then stop it."""


#: Reads a signal: ``read(service, signal)`` fires with its value now (None: unknown).
SignalReader = Callable[[str, str], defer.Deferred[float | None]]


def desired(policy: ScalePolicy, current: int, value: float) -> int:
    """How many instances ``policy`` wants when ``current`` run and the signal is ``value``."""
    want = math.ceil(current * value / policy.target - 1e-9) if current else policy.min
    want = max(current - MAX_DOWN, min(current + MAX_UP, want))
    return max(policy.min, min(policy.max, want))


class Scaler:
    """Scales one service after its :class:`ScalePolicy` (see the module).

    Args:
        policy: the service and its policy.
        backend: starts and stops its instances.
        read: reads the signal.
        clock: for the cooldowns.
        busy: whether the service must not scale now (a reload rolls it).

    Attributes:
        decisions: changes made, by direction (``up``, ``down``).
        last: the last decision's reason (for logs and tests).
    """

    def __init__(
        self,
        policy: ScalePolicy,
        backend: ScaleBackend,
        read: SignalReader,
        clock: Clock,
        busy: Callable[[], bool] = lambda: False,
    ) -> None:
        self.policy = policy
        self.backend = backend
        self.read = read
        self.clock = clock
        self.busy = busy
        self.decisions = {"up": 0, "down": 0}
        self.changed_at: float | None = None
        self.last = ""

    def instances(self) -> int:
        """How many instances run now."""
        return len(self.backend.instances(self.policy.service))

    @defer.inlineCallbacks
    def tick(self) -> InlineCallbacks[str]:
        """One decision: read, decide, act. Fires with what it did (``up``, ``down``,
        ``hold``, ``cooldown``, ``busy`` or ``unknown``); never fails."""
        try:
            return (yield self._tick())
        except Exception as e:
            log.warn("cluster: scaling of {service} failed: {e}", service=self.policy.service, e=e)
            return "failed"

    @defer.inlineCallbacks
    def _tick(self) -> InlineCallbacks[str]:
        p = self.policy
        if self.busy():
            return "busy"
        value = yield self.read(p.service, p.signal)
        if self.busy():
            return "busy"
        current = self.instances()
        if value is None:
            self.last = f"no {p.signal} value"
            return "unknown"
        want = desired(p, current, value)
        if want == current:
            return "hold"
        direction = "up" if want > current else "down"
        cooldown = p.up_cooldown if direction == "up" else p.down_cooldown
        now = self.clock.seconds()
        if self.changed_at is not None and now - self.changed_at < cooldown:
            return "cooldown"
        self.last = (
            f"{p.signal} {value:.3g} per instance, target {p.target:g}: "
            f"{current} -> {want} instance(s)"
        )
        log.info(
            "cluster: scale {service} {direction}: {reason}",
            service=p.service,
            direction=direction,
            reason=self.last,
            value=value,
            target=p.target,
            current=current,
            desired=want,
        )
        self.decisions[direction] += 1
        self.changed_at = now
        if direction == "up":
            starts = [self.backend.start(p.service) for _ in range(want - current)]
            results = yield defer.DeferredList(starts, consumeErrors=True)
            for ok, outcome in results:
                if not ok:
                    log.warn(
                        "cluster: a new instance of {service} did not start: {e}",
                        service=p.service,
                        e=outcome.value,
                    )
        else:
            instances = self.backend.instances(p.service)
            yield defer.gatherResults(
                [self.backend.stop(p.service, i) for i in instances[want:]], consumeErrors=True
            )
        self.changed_at = self.clock.seconds()
        return direction


class ScaleService(Service):
    """Runs a scaler's ticks every ``policy.interval`` seconds while started."""

    def __init__(self, scaler: Scaler) -> None:
        self.scaler = scaler
        self._loop: task.LoopingCall | None = None

    @override
    def startService(self) -> None:
        """Decide every interval (the first one an interval from now)."""
        super().startService()
        self._loop = task.LoopingCall(self.scaler.tick)
        self._loop.clock = self.scaler.clock  # type: ignore[assignment]
        self._loop.start(self.scaler.policy.interval, now=False)

    @override
    def stopService(self) -> None:
        """No more decisions (one under way finishes or is stopped with the cluster)."""
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None


class StatusSignal:
    """Reads a service's signal from its instances' ``/metrics``, as ``mmo status`` does
    (:func:`mmo.ops.status.scrape`, :func:`~mmo.ops.status.summarize`): the rates and p99
    between this read and the previous one."""

    def __init__(self, reactor: Any, directory: Any, timeout: float = 2.0) -> None:
        self.reactor = reactor
        self.directory = directory
        self.timeout = timeout
        self._previous: dict[str, tuple[float, dict[str, Any]]] = {}
        self._agent: Any = None

    @defer.inlineCallbacks
    def __call__(self, service: str, signal: str) -> InlineCallbacks[float | None]:
        from mmo.ops.status import parse_metrics, quiet_agent, scrape, summarize

        if self._agent is None:
            self._agent = quiet_agent(self.reactor, self.timeout)
        after = yield scrape(self.reactor, self.directory, self.timeout, agent=self._agent)
        after = {k: v for k, v in after.items() if service in (v.get("services") or [])}
        now = self.reactor.seconds()
        previous = self._previous.get(service)
        self._previous[service] = (now, after)
        texts = [s["metrics"] for s in after.values() if s.get("metrics") and not s.get("error")]
        if not texts:
            return None
        if signal == "outstanding":
            total = 0.0
            for text in texts:
                for labels, value in parse_metrics(text).get("mmo_server_requests_in_flight", []):
                    if labels.get("service") == service:
                        total += value
            return total / len(texts)
        if previous is None:
            return None
        then, before = previous
        status = summarize(before, after, max(now - then, 1e-3))
        if signal == "p99":
            for row in status["services"]:
                if row["service"] == service:
                    if row["p99_ms"] is not None:
                        return float(row["p99_ms"])
                    # Measured and idle (no call served): nothing waits, it may shrink.
                    return 0.0 if row["requests_per_s"] == 0 else None
            return None
        cpus = [p["cpu_percent"] for p in status["processes"] if p["cpu_percent"] is not None]
        return sum(cpus) / len(cpus) if cpus else None


class LocalProcesses:
    """Instances as children of the cluster (implements :class:`ScaleBackend`): a new one
    is like the service's first child, named ``SERVICE.sN``; started and stopped as a
    rolling reload does.

    Args:
        roll: the cluster's :class:`~mmo.cluster.roll.Roll` (its supervisor, registry and
            readiness wait).
    """

    def __init__(self, roll: Any) -> None:
        self.roll = roll
        self.supervisor = roll.supervisor
        self.registry = roll.registry
        self._serial = 0

    def instances(self, service: str) -> list[str]:
        """The supervised workers of ``service``."""
        sup = self.supervisor
        return [sup.instance_of(c) for c in sup.candidates(service)]

    def _name(self, service: str) -> str:
        used = {str(c.name) for c in self.supervisor.children}
        while True:
            self._serial += 1
            name = f"{service}.s{self._serial}"
            if name not in used:
                return name

    @defer.inlineCallbacks
    def start(self, service: str) -> InlineCallbacks[str]:
        """Spawn a child like the first of ``service``, wait until it is ready, supervise it."""
        sup = self.supervisor
        olds = sup.candidates(service)
        if not olds:
            raise RuntimeError(f"no supervised mmo-worker serves {service!r}")
        new = sup.spawn(olds[0], self._name(service))
        try:
            yield self.roll.wait_ready(service, new)
        except Exception:
            yield sup.discard(new)
            raise
        sup.adopt(new, olds[0])
        return str(sup.instance_of(new))

    @defer.inlineCallbacks
    def stop(self, service: str, instance: str) -> InlineCallbacks[None]:
        """Drain the child, give callers a moment to see it, stop it (SIGTERM)."""
        sup = self.supervisor
        found = [c for c in sup.candidates(service) if sup.instance_of(c) == instance]
        if not found:
            return
        try:
            yield self.registry.drain(service, instance)
        except Exception as e:  # stopped anyway: SIGTERM deregisters and drains
            log.warn("cluster: could not drain {instance}: {e}", instance=instance, e=e)
        yield task.deferLater(self.roll.clock, self.roll.settle, lambda: None)
        yield sup.retire(found[0])
