"""The auto-scaler's decisions, with a fake backend and a fake clock."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet import defer, task

from mmo.cluster.config import ClusterConfig, ScalePolicy
from mmo.cluster.scale import Scaler, desired
from mmo.config import ConfigError, build


class Backend:
    """Instances as names; start and stop answer at once (or when told)."""

    def __init__(self, n: int = 1) -> None:
        self.running = [f"echo-{i}" for i in range(1, n + 1)]
        self.serial = n
        self.started: list[str] = []
        self.stopped: list[str] = []

    def instances(self, service: str) -> list[str]:
        return list(self.running)

    def start(self, service: str) -> defer.Deferred[str]:
        self.serial += 1
        name = f"echo.s{self.serial}"
        self.running.append(name)
        self.started.append(name)
        return defer.succeed(name)

    def stop(self, service: str, instance: str) -> defer.Deferred[None]:
        self.running.remove(instance)
        self.stopped.append(instance)
        return defer.succeed(None)


def policy(**kw: Any) -> ScalePolicy:
    values = {"min": 1, "max": 5, "target": 2, "up_cooldown": 5, "down_cooldown": 20, **kw}
    return build(ScalePolicy, {"service": "echo", **values})


def scaler(values: list[float | None], n: int = 1, busy: bool = False, **kw: Any) -> Any:
    clock = task.Clock()
    backend = Backend(n)
    reads = iter(values)
    s = Scaler(
        policy(**kw),
        backend,
        lambda service, signal: defer.succeed(next(reads)),
        clock,
        busy=lambda: busy,
    )
    return s, backend, clock


def tick(s: Scaler) -> str:
    results: list[str] = []
    s.tick().addCallback(results.append)
    assert results, "the tick did not finish"
    return results[0]


def test_desired_is_proportional_and_clamped() -> None:
    p = policy(min=1, max=5)
    assert desired(p, 2, 2.0) == 2  # at target
    assert desired(p, 2, 3.0) == 3
    assert desired(p, 1, 10.0) == 3  # at most +2 a decision
    assert desired(p, 4, 10.0) == 5  # at most max
    assert desired(p, 4, 0.0) == 3  # at most -1 a decision
    assert desired(p, 1, 0.0) == 1  # at least min
    assert desired(policy(min=2), 1, 0.0) == 2


def test_no_action_at_target_or_without_a_value() -> None:
    s, backend, _ = scaler([2.0, 1.6, None], n=2)
    assert tick(s) == "hold"
    assert tick(s) == "hold"  # ceil(2 * 1.6 / 2) = 2
    assert tick(s) == "unknown"
    assert backend.started == backend.stopped == []
    assert s.decisions == {"up": 0, "down": 0}


def test_scales_up_then_waits_for_the_up_cooldown() -> None:
    s, backend, clock = scaler([10.0, 10.0, 10.0], max=5)
    assert tick(s) == "up"
    assert backend.running == ["echo-1", "echo.s2", "echo.s3"]
    assert "1 -> 3" in s.last and "target 2" in s.last
    clock.advance(4)
    assert tick(s) == "cooldown"
    clock.advance(1)
    assert tick(s) == "up"
    assert len(backend.running) == 5
    assert s.decisions == {"up": 2, "down": 0}


def test_scales_down_one_at_a_time_after_the_down_cooldown() -> None:
    s, backend, clock = scaler([0.0] * 4, n=3, down_cooldown=20)
    assert tick(s) == "down"
    assert backend.stopped == ["echo-3"]
    clock.advance(19)
    assert tick(s) == "cooldown"
    clock.advance(1)
    assert tick(s) == "down"
    assert backend.running == ["echo-1"]
    assert tick(s) == "hold"  # at min
    assert s.decisions == {"up": 0, "down": 2}


def test_never_scales_while_a_reload_rolls_the_service() -> None:
    s, backend, _ = scaler([10.0], busy=True)
    assert tick(s) == "busy"
    assert backend.started == []


def test_a_failing_start_is_logged_not_raised() -> None:
    s, backend, _ = scaler([10.0])
    backend.start = lambda service: defer.fail(RuntimeError("no"))
    assert tick(s) == "up"
    assert backend.running == ["echo-1"]


@pytest.mark.parametrize(
    ("values", "reason"),
    [
        ({"min": 0}, "at least 1"),
        ({"min": 3, "max": 2}, "at least min"),
        ({"target": 0}, "above 0"),
        ({"signal": "rps"}, "not one of"),
    ],
)
def test_policy_values_are_checked(values: dict[str, Any], reason: str) -> None:
    with pytest.raises(ConfigError, match=reason):
        policy(**values)


WORKER = {"name": "echo", "role": "mmo-worker", "args": ["--service", "echo"]}


def test_the_cluster_config_reads_scale_tables() -> None:
    config = build(
        ClusterConfig,
        {
            "yellow": "tcp://127.0.0.1:1",
            "process": [WORKER],
            "scale": {"echo": {"max": 3, "signal": "p99", "target": 50, "up-cooldown": 1}},
        },
    )
    (p,) = config.policies()
    assert (p.service, p.min, p.max, p.signal, p.target) == ("echo", 1, 3, "p99", 50.0)
    assert (p.interval, p.up_cooldown, p.down_cooldown) == (2.0, 1.0, 20.0)


def test_a_scale_table_needs_a_worker_of_its_service_and_a_yellow() -> None:
    with pytest.raises(ConfigError, match="no mmo-worker child serves"):
        build(
            ClusterConfig,
            {"yellow": "tcp://x:1", "process": [WORKER], "scale": {"chat": {"target": 1}}},
        )
    with pytest.raises(ConfigError, match="needs"):
        build(ClusterConfig, {"process": [WORKER], "scale": {"echo": {"target": 1}}})
