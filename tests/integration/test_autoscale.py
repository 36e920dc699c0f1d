"""Auto-scaling under `twistd mmo-cluster`: an echo service grows under slow calls and
shrinks back once they stop, without a failed call."""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted  # type: ignore[import-untyped]
from twisted.internet import defer

from mmo.testing import free_port

from .conftest import controlled_cluster_config, instances, sleep, start_cluster, until

pytestmark = pytest.mark.timeout(90)


def scale_policy(signal: str, target: float, down_cooldown: float) -> str:
    """The echo service's policy: 1 to 3 instances, deciding every second, 2 s between
    scale-ups."""
    return f"""[cluster.scale.echo]
min = 1
max = 3
signal = "{signal}"
target = {target}
interval = 1
up_cooldown = 2
down_cooldown = {down_cooldown}
"""


@pytest.fixture
def scaled_cluster(tmp_path: Any) -> Any:
    yellow = f"tcp://127.0.0.1:{free_port()}"
    policy = scale_policy(signal="outstanding", target=2, down_cooldown=4)
    config = controlled_cluster_config(yellow, "mmo.examples.echo:EchoService", 1, policy)
    cluster = start_cluster(tmp_path, config)
    yield yellow, cluster
    cluster.stop(timeout=30)
    print(cluster.log_tail(80))


class SlowLoad:
    """Keeps ``width`` calls of ``echo.sleep`` in flight until stopped."""

    def __init__(self, directory: Any, width: int = 10, seconds: float = 0.2) -> None:
        self.directory = directory
        self.width = width
        self.seconds = seconds
        self.running = True
        self.answered = 0
        self.failures: list[str] = []

    @defer.inlineCallbacks
    def lane(self) -> Any:
        while self.running:
            try:
                yield self.directory.call("echo", "sleep", {"seconds": self.seconds}, timeout=15)
                self.answered += 1
            except Exception as e:
                self.failures.append(str(e))

    def run(self) -> defer.Deferred[Any]:
        return defer.gatherResults([self.lane() for _ in range(self.width)])


@pytest_twisted.inlineCallbacks
def test_echo_grows_under_load_and_shrinks_after_it(scaled_cluster, directory_factory):
    yellow, cluster = scaled_cluster
    directory = directory_factory([yellow], caller_role="tool")
    yield until(lambda: instances(directory, "echo") == {"echo"}, what="one echo instance")
    yield until(lambda: instances(directory, "cluster"), what="the control endpoint")
    load = SlowLoad(directory)
    running = load.run()
    try:
        yield until(
            lambda: len(instances(directory, "echo")) == 3, timeout=20, what="3 echo instances"
        )
        for _ in range(10):  # under the same load it stays at its max
            yield sleep(0.5)
            assert len(instances(directory, "echo")) == 3
    finally:
        load.running = False
        yield running
    assert load.failures == [], load.failures[:5]
    assert load.answered > 50
    yield until(
        lambda: instances(directory, "echo") == {"echo"}, timeout=25, what="back to one instance"
    )
    children = yield directory.call("cluster", "children", {}, timeout=5)
    assert {c["name"] for c in children} == {"yellow", "echo"}
    log = cluster.log_tail(400)
    assert "scale echo up" in log and "scale echo down" in log, log


#: An echo whose instances each have the capacity of a small resource (one connection,
#: 100 ms a call): its latency grows with the calls waiting, whatever the CPU (long enough
#: that the delays of a busy machine count little beside it).
BOUNDED = """
from twisted.internet import defer, task

from mmo.examples.echo import EchoService


class BoundedEcho(EchoService):
    def __init__(self, runtime):
        super().__init__(runtime)
        self.slots = defer.DeferredSemaphore(1)

    def on_work(self, ctx):
        return self.slots.run(task.deferLater, self.clock, 0.1, lambda: "done")
"""


#: The p99 (s) the ramp's policy keeps: what 12 callers see with 3 instances.
TARGET_S = 0.4


class Ramp:
    """Closed-loop callers of ``echo.work``, one more every ``step`` seconds up to
    ``width``; each call's end time and latency are kept."""

    def __init__(self, directory: Any, width: int = 12, step: float = 0.25) -> None:
        self.directory = directory
        self.width = width
        self.step = step
        self.running = True
        self.calls: list[tuple[float, float]] = []
        self.failures: list[str] = []

    @defer.inlineCallbacks
    def lane(self) -> Any:
        from twisted.internet import reactor

        while self.running:
            start = reactor.seconds()
            try:
                yield self.directory.call("echo", "work", {}, timeout=15)
                self.calls.append((reactor.seconds(), reactor.seconds() - start))
            except Exception as e:
                self.failures.append(str(e))

    @defer.inlineCallbacks
    def run(self) -> Any:
        lanes = []
        for _ in range(self.width):
            if not self.running:
                break
            lanes.append(self.lane())
            yield sleep(self.step)
        yield defer.gatherResults(lanes)

    def p99(self, since: float, until: float) -> float:
        """The p99 latency (s) of the calls that ended in ``[since, until)``."""
        window = sorted(lat for end, lat in self.calls if since <= end < until)
        assert len(window) >= 10, window
        return window[int(len(window) * 0.99)]


@pytest_twisted.inlineCallbacks
def test_a_ramp_grows_the_service_to_its_max_on_p99_and_latency_recovers(
    tmp_path: Any, directory_factory: Any
) -> None:
    """1 to 12 closed-loop callers of an echo whose instance serves 1 call at a time: the
    p99 policy grows it to its max (3) once the p99 passes its target, under the same load
    the p99 comes back near the target, and once the load stops it shrinks back to 1; no
    call fails."""
    from twisted.internet import reactor

    (tmp_path / "boundedecho.py").write_text(BOUNDED)
    yellow = f"tcp://127.0.0.1:{free_port()}"
    policy = scale_policy(signal="p99", target=TARGET_S * 1000, down_cooldown=3)
    cluster = start_cluster(
        tmp_path, controlled_cluster_config(yellow, "boundedecho:BoundedEcho", 1, policy)
    )
    try:
        directory = directory_factory([yellow], caller_role="tool")
        yield until(lambda: instances(directory, "echo") == {"echo"}, what="one echo instance")
        yield until(lambda: instances(directory, "cluster"), what="the control endpoint")
        ramp = Ramp(directory)
        started = reactor.seconds()
        running = ramp.run()
        try:
            yield until(
                lambda: len(instances(directory, "echo")) == 3, timeout=40, what="3 instances"
            )
            at_max = reactor.seconds()
            yield sleep(4.0)  # pacing: the same full load, served by 3 instances
            ended = reactor.seconds()
        finally:
            ramp.running = False
            yield running
        assert ramp.failures == [], ramp.failures[:5]
        peak = max(ramp.p99(t, t + 2.0) for t in _seconds(started, at_max - 2.0))
        recovered = ramp.p99(ended - 2.0, ended)
        print(f"RAMP p99 peak {peak * 1000:.0f} ms -> {recovered * 1000:.0f} ms at 3 instances "
              f"(3 instances {at_max - started:.1f} s after the ramp began)")  # fmt: skip
        # The load outgrew one instance (its p99 passed the policy's target), and three keep
        # it near the target again: 12 callers over 3 instances of 10 calls/s is 0.4 s.
        assert peak > TARGET_S, (peak, recovered)
        assert recovered < 1.5 * TARGET_S, (peak, recovered)
        yield until(
            lambda: instances(directory, "echo") == {"echo"}, timeout=40, what="back to one"
        )
        log = cluster.log_tail(400)
        assert "scale echo up: p99" in log and "scale echo down: p99" in log, log
    finally:
        cluster.stop(timeout=30)
        print(cluster.log_tail(40))


def _seconds(start: float, end: float) -> list[float]:
    """The starts of the whole seconds from ``start`` that end by ``end``."""
    return [start + i for i in range(int(end - start))] or [start]
