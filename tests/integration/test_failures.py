"""Failures with real processes: killed, hung and late workers; killed and restarted yellows."""

from __future__ import annotations

import signal

import pytest_twisted
from twisted.internet import defer

from mmo.errors import InstanceLost, MmoError
from mmo.registry import Change

from .conftest import downs, instances, next_change, sleep, until, wait_instances, wait_links


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


def running(load, calls):
    """Fire once ``load`` has made ``calls`` more successful calls than now."""
    target = load.ok + calls
    return until(lambda: load.ok >= target, what=f"{calls} more calls answered")


@pytest_twisted.inlineCallbacks
def test_kill_worker_under_load_loses_no_idempotent_call(cluster, directory_factory):
    """kill -9 of a worker under load: every idempotent call succeeds; the registry expires it
    (a killed process cannot deregister) and it gets nothing more once it is dropped."""
    cluster.yellow()
    cluster.worker("echo-a")
    victim = cluster.worker("echo-b")
    directory = directory_factory(cluster.yellows)
    yield wait_instances(directory, "echo", {"echo-a", "echo-b"})
    load = Load(directory)
    yield running(load, 100)
    gone = next_change(directory, "echo-b", Change.DOWN)
    killed_at = directory.clock.seconds()
    victim.kill()
    down_at, reason = yield gone.addTimeout(30, directory.clock)
    sent_then = directory.stats()["echo"].get("echo-b", {}).get("sent", 0)
    yield running(load, 100)
    yield load.stop()
    print(f"\nFAILURES worker kill -9: DOWN ({reason}) {down_at - killed_at:.2f}s after the kill")
    assert load.errors == []
    assert reason == "expired"
    # Nothing more was sent to the dead instance once the registry dropped it.
    assert directory.stats()["echo"].get("echo-b", {}).get("sent", 0) == sent_then
    assert instances(directory, "echo") == {"echo-a"}


@pytest_twisted.inlineCallbacks
def test_kill_worker_fails_non_idempotent_call_clearly(cluster, directory_factory):
    """A non-idempotent call in flight on a killed worker fails with InstanceLost, not at its
    (long) deadline; the other call goes on."""
    cluster.yellow()
    cluster.worker("echo-a")
    victim = cluster.worker("echo-b")
    directory = directory_factory(cluster.yellows)
    yield wait_instances(directory, "echo", {"echo-a", "echo-b"})
    echo = directory.get_service("echo", timeout=10)
    calls = [echo.work(seconds=3), echo.work(seconds=3)]
    outcomes = defer.DeferredList(calls, consumeErrors=True)
    conns = directory.pools.pools["echo"].conns.values()
    yield until(
        lambda: {c.instance_id for c in conns if c.outstanding} == {"echo-a", "echo-b"},
        what="one call in flight on each instance",
    )
    victim.kill()
    results = yield outcomes
    failures = [r for ok, r in results if not ok]
    assert [ok for ok, _ in results].count(True) == 1
    assert len(failures) == 1 and failures[0].check(InstanceLost)
    # Reported as lost (the instance went away), not as DeadlineExceeded: it did not wait
    # for its 10 s deadline.
    assert "echo-b" in str(failures[0].value)


@pytest_twisted.inlineCallbacks
def test_hung_worker_expires_and_a_stopped_one_deregisters(cluster, directory_factory):
    """A stopped (hung) worker is dropped when its registration expires; a gracefully stopped
    one deregisters, without waiting for its registration to expire."""
    cluster.yellow()
    hung = cluster.worker("echo-a")
    leaving = cluster.worker("echo-b")
    directory = directory_factory(cluster.yellows)
    yield wait_instances(directory, "echo", {"echo-a", "echo-b"})

    gone = next_change(directory, "echo-a", Change.DOWN)
    stopped_at = directory.clock.seconds()
    hung.signal(signal.SIGSTOP)
    hung_down_at, reason = yield gone.addTimeout(30, directory.clock)
    assert reason == "expired"

    gone = next_change(directory, "echo-b", Change.DOWN)
    left_at = directory.clock.seconds()
    leaving.signal(signal.SIGTERM)
    left_down_at, reason = yield gone.addTimeout(30, directory.clock)
    assert reason == "deregistered"
    print(
        f"\nFAILURES hung worker expired {hung_down_at - stopped_at:.2f}s after SIGSTOP;"
        f" a stopped one deregistered {left_down_at - left_at:.2f}s after SIGTERM"
    )
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
    early = directory.get_service("echo", timeout=30).whoami()
    yield sleep(2.0)  # watching that nothing happens: the call waits, it does not fail
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
    dropped = downs(directory)
    load = Load(directory)
    yield running(load, 100)
    yellow.kill()
    before = load.ok
    yield sleep(3.0)  # the outage under test: yellow stays down 3 s
    # Each loop had at most one call in flight at the kill: more answers than loops means
    # calls made while no yellow ran were answered, on the endpoints already known.
    during = load.ok - before
    port = int(cluster.yellows[0].rsplit(":", 1)[1])
    cluster.yellow(port=port, name="yellow-again")
    # A fresh caller sees everyone again from the new yellow's heartbeats alone.
    late = directory_factory(cluster.yellows)
    yield wait_instances(late, "echo", {"echo-a", "echo-b"})
    # Watching past the callers' 4 s settling period: nothing may be dropped meanwhile.
    yield sleep(5.0)
    yield load.stop()
    assert load.errors == []
    assert during > len(load.loops)
    assert dropped == []
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
    first.kill()  # returns once the process is gone
    # A worker that appears after the kill registers only with the live yellow.
    cluster.worker("echo-b")
    yield wait_instances(directory, "echo", {"echo-a", "echo-b"})
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
    yield wait_instances(late, "echo", {"echo-0", "echo-1", "echo-2"})
    assert late.view.synced
