"""What the console shows of the cluster, kept current: every process (from the registry,
read through its operator listener every ``poll`` seconds: :mod:`mmo.ops.status`), and
the traffic of each service over the last ``history`` seconds.

Each poll makes a new *state*, a JSON-ready dict the page renders (pushed to it over
Server-Sent Events, :mod:`mmo.admin.web`). A process that left the registry stays in the
state, marked ``gone``, for a minute.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Any

from twisted.application.service import Service
from twisted.internet import defer, task
from twisted.logger import Logger
from typing_extensions import override

from mmo.ops.status import NoRegistry, quiet_agent, samples_of, scrape, summarize
from mmo.wire import from_value

__all__ = ["ClusterState"]

log = Logger()

#: Seconds a process that left the registry is still shown (marked gone).
GONE_SHOWN = 60.0


def _first(samples: dict[str, list[tuple[dict[str, str], float]]], name: str) -> Any:
    values = samples.get(name)
    return values[0] if values else None


class ClusterState(Service):
    """Reads every process each ``poll`` seconds and keeps the state the page shows.

    Args:
        directory: the console's directory (its registry view lists the processes).
        poll: seconds between two reads.
        history: seconds of traffic kept for the charts.
        extra: operator listeners to read that the registry does not list (the yellows').
        timeout: seconds a process has to answer.

    Attributes:
        state: the latest state (None before the second read).
        listeners: called with each new state.
    """

    def __init__(
        self,
        directory: Any,
        poll: float,
        history: float,
        extra: tuple[str, ...] = (),
        timeout: float = 2.0,
    ) -> None:
        self.directory = directory
        self.reactor = directory.clock
        self.poll = poll
        self.extra = extra
        self.timeout = min(timeout, poll)
        self.state: dict[str, Any] | None = None
        self.listeners: list[Callable[[dict[str, Any]], None]] = []
        # service -> deque of [time, requests/s, errors/s, p50 ms, p99 ms]
        self.series: dict[str, deque[list[Any]]] = {}
        self._points = max(2, int(history / poll))
        self._last: tuple[float, dict[str, Any]] | None = None
        self._gone: dict[str, tuple[float, dict[str, Any]]] = {}
        self._loop: task.LoopingCall | None = None
        self._reading = False
        self._agent = quiet_agent(self.reactor, self.timeout)

    @override
    def startService(self) -> None:
        """Start reading."""
        super().startService()
        self._loop = task.LoopingCall(self.read)
        self._loop.clock = self.reactor
        self._loop.start(self.poll, now=True)

    @override
    def stopService(self) -> None:
        """Stop reading."""
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()

    @defer.inlineCallbacks
    def read(self) -> Any:
        """Read every process once; make a new state from this read and the last."""
        if self._reading:
            return
        self._reading = True
        try:
            now = self.reactor.seconds()
            snapshots = yield scrape(
                self.reactor, self.directory, self.timeout, self.extra, self._agent
            )
        except NoRegistry as e:
            log.warn("admin: {e}", e=e)
            return
        except Exception:
            log.failure("admin: reading the cluster failed")
            return
        finally:
            self._reading = False
        if self._last is not None:
            then, before = self._last
            self.state = self._make(summarize(before, snapshots, now - then), snapshots, now)
            for listener in list(self.listeners):
                listener(self.state)
        self._last = (now, snapshots)

    def _make(
        self, summary: dict[str, Any], snapshots: dict[str, Any], now: float
    ) -> dict[str, Any]:
        wall = time.time()
        view = self.directory.view
        processes = summary["processes"]
        by_address = {s.get("address"): s for s in snapshots.values()}
        for row in processes:
            self._describe(row, by_address.get(row.get("address")) or {}, view, wall)
        keys = {f"{p['service']}/{p['instance']}" for p in processes}
        for key in [k for k, (since, _) in self._gone.items() if now - since > GONE_SHOWN]:
            del self._gone[key]
        if self.state is not None:
            for old in self.state["processes"]:
                key = f"{old['service']}/{old['instance']}"
                if key not in keys and not old.get("gone"):
                    self._gone[key] = (now, {**old, "gone": True, "health": "gone"})
        for key, (_, row) in self._gone.items():
            if key not in keys:
                processes.append(row)
        for service in summary["services"]:
            points = self.series.setdefault(service["service"], deque(maxlen=self._points))
            points.append(
                [
                    round(wall, 3),
                    service["requests_per_s"],
                    service["errors_per_s"],
                    service["p50_ms"],
                    service["p99_ms"],
                ]
            )
        return {
            "time": round(wall, 3),
            "poll": self.poll,
            "cluster": summary["cluster"],
            "processes": processes,
            "services": summary["services"],
            "series": {name: list(points) for name, points in sorted(self.series.items())},
        }

    def _describe(
        self, row: dict[str, Any], snapshot: dict[str, Any], view: Any, wall: float
    ) -> None:
        """Add what the console shows beyond ``mmo status``: endpoints, version, uptime,
        connections, whether it drains."""
        instance = (view.instances.get(row["service"]) or {}).get(row["instance"])
        meta = {}
        if instance is not None:
            row["endpoints"] = dict(instance.endpoints or {})
            meta = {k: from_value(v) for k, v in (instance.meta or {}).items()}
        # Drained by an operator, or (a fight dispatcher) draining as it stops.
        row["draining"] = bool(meta.get("drained") or meta.get("draining"))
        row["load"] = meta.get("load")
        row["version"] = row["uptime_s"] = row["connections"] = None
        samples = samples_of(snapshot) if snapshot else None
        if samples is not None:
            info = _first(samples, "mmo_info")
            if info is not None:
                row["version"] = info[0].get("version")
            started = _first(samples, "process_start_time_seconds")
            if started is not None:
                row["uptime_s"] = round(wall - started[1], 1)
            connections = _first(samples, "mmo_broker_connections")
            if connections is not None:
                row["connections"] = int(connections[1])
