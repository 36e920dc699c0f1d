"""Failures with real processes: killed, hung and late workers; killed and restarted yellows."""

from __future__ import annotations

import signal

import pytest_twisted
from twisted.internet import defer

from mmo.errors import InstanceLost, MmoError
from mmo.registry import Change

from .conftest import instances, sleep, wait_instances, wait_links


class Load:
    """Closed-loop callers making idempotent calls until stopped; counts what happens."""

    def __init__(self, directory, concurrency: int = 10, method: str = "sleep") -> None:
        self.echo = directory.get_service("echo", "REP", timeout=5.0)
        self.method = method
        self.ok = 0
        self.errors: list[str] = []
        self.running = True
        self.loops = [self._loop() for _ in range(concurrency)]

    @defer.inlineCallbacks
    def _loop(self):
        while self.running:
            try:
                yield self.echo.call(self.method, {"seconds": 0.01})
                self.ok += 1
            except MmoError as e:
                self.errors.append(f"{type(e).__name__}: {e}")

    def stop(self):
        self.running = False
        return defer.gatherResults(self.loops)


def down_time(directory, instance_id):
    """A Deferred firing with the clock time at which ``instance_id`` goes DOWN."""
    d: defer.Deferred[float] = defer.Deferred()

    def listener(change, instance, reason):
        if change == Change.DOWN and instance.instance_id == instance_id and not d.called:
            d.callback(directory.clock.seconds())

    directory.view.listen(listener)
    return d


@pytest_twisted.inlineCallbacks
def test_kill_worker_under_load_loses_no_idempotent_call(cluster, directory_factory):
    """kill -9 of a worker under load: every idempotent call succeeds; it gets nothing after 4 s."""
    cluster.yellow()
    cluster.worker("echo-a")
    victim = cluster.worker("echo-b")
    directory = directory_factory(cluster.yellows)
    yield wait_instances(directory, "echo", {"echo-a", "echo-b"})
    load = Load(directory)
    yield sleep(1.5)
    gone = down_time(directory, "echo-b")
    killed_at = directory.clock.seconds()
    victim.kill()
    down_at = yield gone.addTimeout(6, directory.clock)
    sent_then = directory.stats()["echo"].get("echo-b", {}).get("sent", 0)
    yield sleep(1.5)
    yield load.stop()
    assert load.errors == []
    assert load.ok > 100
    assert down_at - killed_at <= 4.0
    # Nothing more was sent to the dead instance once the registry dropped it.
    assert directory.stats()["echo"].get("echo-b", {}).get("sent", 0) == sent_then
    assert instances(directory, "echo") == {"echo-a"}


@pytest_twisted.inlineCallbacks
def test_kill_worker_fails_non_idempotent_call_clearly(cluster, directory_factory):
    """A non-idempotent call in flight on a killed worker fails fast with InstanceLost."""
    cluster.yellow()
    cluster.worker("echo-a")
    victim = cluster.worker("echo-b")
    directory = directory_factory(cluster.yellows)
    yield wait_instances(directory, "echo", {"echo-a", "echo-b"})
    echo = directory.get_service("echo", timeout=10)
    calls = [echo.work(seconds=3), echo.work(seconds=3)]
    outcomes = defer.DeferredList(calls, consumeErrors=True)
    yield sleep(0.3)
    started = directory.clock.seconds()
    victim.kill()
    results = yield outcomes
    failures = [r for ok, r in results if not ok]
    assert [ok for ok, _ in results].count(True) == 1
    assert len(failures) == 1 and failures[0].check(InstanceLost)
    assert "echo-b" in str(failures[0].value)
    # The survivor's call took its 3 s; the lost one was reported well before its 10 s deadline.
    assert directory.clock.seconds() - started < 5


@pytest_twisted.inlineCallbacks
def test_hung_worker_expires_and_deregistration_is_quick(cluster, directory_factory):
    """A stopped (hung) worker is gone within 4 s; a gracefully stopped one within 1 s."""
    cluster.yellow()
    hung = cluster.worker("echo-a")
    leaving = cluster.worker("echo-b")
    directory = directory_factory(cluster.yellows)
    yield wait_instances(directory, "echo", {"echo-a", "echo-b"})

    gone = down_time(directory, "echo-a")
    stopped_at = directory.clock.seconds()
    hung.signal(signal.SIGSTOP)
    assert (yield gone.addTimeout(6, directory.clock)) - stopped_at <= 4.0

    gone = down_time(directory, "echo-b")
    stopped_at = directory.clock.seconds()
    leaving.signal(signal.SIGTERM)
    assert (yield gone.addTimeout(3, directory.clock)) - stopped_at <= 1.0
    # twistd re-raises the SIGTERM it handled once shut down, hence -15.
    assert leaving.wait(10) in (0, -signal.SIGTERM)
    assert "Server Shut Down" in leaving.log_tail()


@pytest_twisted.inlineCallbacks
def test_workers_started_before_yellow_join_when_it_comes(cluster, directory_factory):
    """Workers and callers started before yellow find each other once it is up."""
    from mmo.testing import free_port

    address = f"tcp://127.0.0.1:{free_port()}"
    cluster.yellows.append(address)
    cluster.worker("echo-a")
    cluster.worker("echo-b")
    directory = directory_factory(cluster.yellows)
    early = directory.get_service("echo", timeout=15).whoami()
    yield sleep(2.0)
    assert not early.called
    cluster.yellow(port=int(address.rsplit(":", 1)[1]))
    yield wait_instances(directory, "echo", {"echo-a", "echo-b"})
    assert (yield early) in {"echo-a", "echo-b"}


@pytest_twisted.inlineCallbacks
def test_yellow_restart_under_load(cluster, directory_factory):
    """kill -9 and restart yellow under load: calls go on on cached endpoints; all re-register."""
    yellow = cluster.yellow()
    cluster.worker("echo-a")
    cluster.worker("echo-b")
    directory = directory_factory(cluster.yellows)
    yield wait_instances(directory, "echo", {"echo-a", "echo-b"})
    load = Load(directory)
    yield sleep(1.0)
    yellow.kill()
    yield sleep(3.0)
    during = load.ok
    port = int(cluster.yellows[0].rsplit(":", 1)[1])
    cluster.yellow(port=port, name="yellow-again")
    # A fresh caller sees everyone again from the new yellow's heartbeats alone.
    late = directory_factory(cluster.yellows)
    yield wait_instances(late, "echo", {"echo-a", "echo-b"}, timeout=5)
    yield sleep(5.0)  # past the settling period: nothing was dropped
    yield load.stop()
    assert load.errors == []
    assert during > 100
    assert instances(directory, "echo") == {"echo-a", "echo-b"}


@pytest_twisted.inlineCallbacks
def test_consumers_fail_over_between_yellows(cluster, directory_factory):
    """With two yellows, killing the watched one moves the caller to the other, calls go on."""
    first = cluster.yellow()
    cluster.yellow()
    cluster.worker("echo-a")
    directory = directory_factory(cluster.yellows)
    yield wait_instances(directory, "echo", {"echo-a"})
    load = Load(directory, concurrency=4)
    first.kill()
    yield sleep(1.0)
    # A worker that appears after the kill registers only with the live yellow.
    cluster.worker("echo-b")
    yield wait_instances(directory, "echo", {"echo-a", "echo-b"}, timeout=20)
    yield wait_links(directory, "echo", {"echo-a", "echo-b"})
    yield load.stop()
    assert load.errors == []
    whos = yield defer.gatherResults([directory.get_service("echo").whoami() for _ in range(20)])
    assert set(whos) == {"echo-a", "echo-b"}


@pytest_twisted.inlineCallbacks
def test_late_watcher_converges(cluster, directory_factory):
    """A caller started after the cluster sees every live instance from the snapshot."""
    cluster.yellow()
    for i in range(3):
        cluster.worker(f"echo-{i}")
    early = directory_factory(cluster.yellows)
    yield wait_instances(early, "echo", {"echo-0", "echo-1", "echo-2"})
    late = directory_factory(cluster.yellows)
    yield wait_instances(late, "echo", {"echo-0", "echo-1", "echo-2"}, timeout=3)
    assert late.view.synced
