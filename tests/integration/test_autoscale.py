"""Auto-scaling under `twistd mmo-cluster`: an echo service grows under slow calls and
shrinks back once they stop, without a failed call."""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted  # type: ignore[import-untyped]
from twisted.internet import defer

from mmo.testing import free_port
from mmo.testing.processes import TwistdProcess

from .conftest import controlled_cluster_config, instances, sleep, until

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def scaled_cluster(tmp_path: Any) -> Any:
    yellow = f"tcp://127.0.0.1:{free_port()}"
    config = tmp_path / "cluster.toml"
    policy = """[cluster.scale.echo]
min = 1
max = 3
signal = "outstanding"
target = 2
interval = 1
up_cooldown = 2
down_cooldown = 4
"""
    config.write_text(controlled_cluster_config(yellow, "mmo.examples.echo:EchoService", 1, policy))
    cluster = TwistdProcess("mmo-cluster", ["--config", str(config)], tmp_path, "cluster").start()
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
