"""The fight dispatcher with real processes: a yellow, `twistd mmo-fight`, and the fight
processes it spawns; the test process calls it like any logic service would."""

from __future__ import annotations

import os
import signal
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer

from mmo.errors import RemoteError

from .conftest import POLL_TIMEOUT, Cluster, sleep, until

HANDLER = "mmo.examples.fight:TurnFight"

pytestmark = pytest.mark.timeout(90)


def start_dispatcher(cluster: Cluster, *args: str) -> Any:
    """Start `twistd mmo-fight` (instance fight-dispatcher) with the demo handler."""
    yellows = [a for y in cluster.yellows for a in ("--yellow", y)]
    return cluster.processes.start(
        "mmo-fight", *yellows, "--handler", HANDLER, *args, name="fight-dispatcher"
    )


@defer.inlineCallbacks
def wait_status(
    fight: Any, predicate: Callable[[dict[str, Any]], bool], timeout: float = POLL_TIMEOUT
) -> Any:
    """Poll the dispatcher's status until ``predicate`` holds; fail after ``timeout`` seconds."""
    from twisted.internet import reactor

    deadline = reactor.seconds() + timeout
    status: dict[str, Any] = {}
    while reactor.seconds() < deadline:
        try:
            status = yield fight.call("status", {}, timeout=5.0)
            if predicate(status):
                return status
        except RemoteError:
            raise
        except Exception:
            pass  # not registered yet
        yield sleep(0.1)
    raise AssertionError(f"status never matched within {timeout}s: {status}")


def ready(status: dict[str, Any]) -> list[dict[str, Any]]:
    """The ready processes of a status."""
    return [p for p in status["processes"] if p["state"] == "ready"]


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (a child of the dispatcher we started)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest_twisted.inlineCallbacks
def test_200_concurrent_allocations_never_exceed_the_cap_nor_the_maximum(
    cluster, directory_factory
):
    """200 concurrent allocations, cap 10: every process holds at most 10, processes started =
    20 needed + 1 spare; at the maximum (22) further allocations fail with PoolFull."""
    cluster.yellow()
    start_dispatcher(
        cluster, "--cap", "10", "--min-spare", "1", "--max-processes", "22",
        "--reservation-timeout", "120", "--drain-timeout", "1",
    )  # fmt: skip
    directory = directory_factory(cluster.yellows)
    fight = directory.get_service("fight", timeout=40)
    yield wait_status(fight, lambda s: len(ready(s)) == 1)

    replies = yield defer.gatherResults(
        [fight.allocate(players=[f"p{i}"]) for i in range(200)], consumeErrors=True
    )
    per_process = Counter(r["instance"] for r in replies)
    assert len(per_process) == 20 and max(per_process.values()) == 10
    assert len({r["fight_id"] for r in replies}) == 200
    status = yield wait_status(fight, lambda s: len(ready(s)) == 21)
    assert status["counts"]["spawned"] == 21
    assert all(p["peak"] <= 10 for p in status["processes"])
    assert [p["load"] for p in status["processes"]].count(0) == 1

    more = yield defer.DeferredList(
        [fight.call("allocate", {"players": [f"q{i}"]}, timeout=6) for i in range(25)],
        consumeErrors=True,
    )
    served = Counter(r["instance"] for ok, r in more if ok)
    refused = [r.value for ok, r in more if not ok]
    assert sum(served.values()) == 20 and len(refused) == 5
    assert all(isinstance(e, RemoteError) and e.type == "PoolFull" for e in refused)
    status = yield fight.status()
    assert status["counts"]["spawned"] == 22 == len(status["processes"])
    assert all(p["load"] == 10 and p["peak"] <= 10 for p in status["processes"])


@pytest_twisted.inlineCallbacks
def test_unclaimed_reservations_expire_and_idle_processes_are_reaped(cluster, directory_factory):
    """A fight whose players never arrive is released after the reservation timeout while a
    claimed one stays; once idle, processes above the spare count are stopped."""
    cluster.yellow()
    dispatcher = start_dispatcher(
        cluster, "--cap", "2", "--min-spare", "1", "--max-processes", "4",
        "--reservation-timeout", "2", "--idle-timeout", "2",
    )  # fmt: skip
    directory = directory_factory(cluster.yellows)
    fight = directory.get_service("fight", timeout=10)
    yield wait_status(fight, lambda s: len(ready(s)) == 1)
    claimed = yield fight.allocate(players=["a", "b"])
    for player in ("a", "b"):
        yield fight.arrived(fight_id=claimed["fight_id"], player=player)
    from twisted.internet import reactor

    asked_at = reactor.seconds()
    unclaimed = yield fight.allocate(players=["c", "d"])
    assert unclaimed["instance"] != claimed["instance"]
    status = yield wait_status(fight, lambda s: s["counts"]["expired"] == 1)
    # It expired as unclaimed (no player arrived), and not before the reservation timeout
    # (counted from before it was asked for: a slow machine can only make this later).
    assert dispatcher.wait_for_log(
        f"reservation {unclaimed['fight_id']} on {unclaimed['instance']} expired"
        " (0 of 2 players arrived)"
    ), dispatcher.log_tail()
    assert reactor.seconds() - asked_at >= 2.0
    assert status["fights"] == 1
    assert {p["instance"]: p["load"] for p in status["processes"]}[claimed["instance"]] == 2
    # An expired fight cannot be joined any more.
    try:
        yield fight.arrived(fight_id=unclaimed["fight_id"], player="c")
        raise AssertionError("arrived after expiry")
    except RemoteError as e:
        assert e.type == "UnknownFight"

    assert (yield fight.release(fight_id=claimed["fight_id"], result={"winner": "a"}))
    status = yield wait_status(fight, lambda s: len(s["processes"]) == 1)
    assert status["counts"]["reaped"] >= 2 and ready(status)[0]["load"] == 0
    assert (yield fight.results())[-1]["result"] == {"winner": "a"}


@pytest_twisted.inlineCallbacks
def test_graceful_stop_drains_running_fights_then_stops_the_fight_processes(
    cluster, directory_factory
):
    """SIGTERM: no new fights (PoolDraining), the running fight goes on and may still be
    released; then the fight processes are stopped and the dispatcher exits."""
    cluster.yellow()
    dispatcher = start_dispatcher(
        cluster, "--cap", "2", "--min-spare", "1", "--drain-timeout", "30",
    )  # fmt: skip
    directory = directory_factory(cluster.yellows)
    fight = directory.get_service("fight", timeout=10)
    yield wait_status(fight, lambda s: len(ready(s)) == 1)
    running = yield fight.allocate(players=["a", "b"])
    for player in ("a", "b"):
        yield fight.arrived(fight_id=running["fight_id"], player=player)
    status = yield wait_status(fight, lambda s: len(ready(s)) == 2)
    pids = [p["pid"] for p in status["processes"]]

    dispatcher.signal(signal.SIGTERM)
    status = yield wait_status(fight, lambda s: s["draining"])
    try:
        yield fight.allocate(players=["late"])
        raise AssertionError("allocated while draining")
    except RemoteError as e:
        assert e.type == "PoolDraining"
    yield sleep(1.5)  # watching that nothing happens: the running fight is not cut short
    assert dispatcher.alive() and all(pid_alive(pid) for pid in pids)
    assert status["fights"] == 1

    assert (yield fight.release(fight_id=running["fight_id"]))
    code = dispatcher.wait(60)
    assert code in (0, -signal.SIGTERM), dispatcher.log_tail()
    assert "Server Shut Down" in dispatcher.log_tail()
    yield until(lambda: not any(pid_alive(pid) for pid in pids), what="the fight processes gone")


@pytest_twisted.inlineCallbacks
def test_a_hung_fight_process_is_dropped_by_the_registry_killed_and_its_fights_lost(
    cluster, directory_factory
):
    """SIGSTOP of a fight process (no exit to see): the registry drops it (its registration
    expires), the dispatcher kills it, reports its fight lost and keeps a spare with room."""
    cluster.yellow()
    dispatcher = start_dispatcher(cluster, "--cap", "2", "--min-spare", "1", "--max-processes", "4")
    directory = directory_factory(cluster.yellows)
    fight = directory.get_service("fight", timeout=10)
    yield wait_status(fight, lambda s: len(ready(s)) == 1)
    held = yield fight.allocate(players=["a", "b"])
    status = yield wait_status(fight, lambda s: len(ready(s)) == 2)
    victim = next(p for p in status["processes"] if p["instance"] == held["instance"])
    os.kill(victim["pid"], signal.SIGSTOP)  # a child of the dispatcher this test started
    status = yield wait_status(fight, lambda s: s["counts"]["lost"] == 1)
    assert status["counts"]["crashed"] == 1 and status["fights"] == 0
    # Noticed through the registry (a stopped process does not exit): it expired.
    assert dispatcher.wait_for_log(
        f"fight: {victim['instance']} dropped by the registry (expired); killing it"
    ), dispatcher.log_tail()
    yield until(lambda: not pid_alive(victim["pid"]), what="the hung fight process killed")
    status = yield wait_status(fight, lambda s: len(s["processes"]) == 1 and len(ready(s)) == 1)
    assert status["processes"][0]["instance"] != held["instance"]


@pytest_twisted.inlineCallbacks
def test_past_the_maximum_a_burst_is_refused_with_pool_full_before_the_callers_deadline(
    cluster, directory_factory
):
    """200 allocations at once with room for 120 (cap 10, at most 12 processes): every one is
    answered before the caller's own deadline, seats or PoolFull (never the caller's
    DeadlineExceeded), no process over the cap, and a status call behind the burst is
    answered while the processes start."""
    from twisted.internet import reactor

    cluster.yellow()
    start_dispatcher(
        cluster, "--cap", "10", "--min-spare", "1", "--max-processes", "12",
        "--reservation-timeout", "120", "--drain-timeout", "1",
    )  # fmt: skip
    directory = directory_factory(cluster.yellows)
    fight = directory.get_service("fight", timeout=40)
    yield wait_status(fight, lambda s: len(ready(s)) == 1)

    asked_at = reactor.seconds()
    burst = defer.DeferredList(
        [fight.call("allocate", {"players": [f"p{i}"]}, timeout=5) for i in range(200)],
        consumeErrors=True,
    )
    status = yield fight.call("status", {}, timeout=5)
    status_after = reactor.seconds() - asked_at
    results = yield burst
    took = reactor.seconds() - asked_at
    served = Counter(r["instance"] for ok, r in results if ok)
    refused = Counter(
        r.value.type if isinstance(r.value, RemoteError) else type(r.value).__name__
        for ok, r in results
        if not ok
    )
    print(
        f"burst of 200 past the maximum: served {sum(served.values())}, refused {dict(refused)};"
        f" status answered after {status_after:.3f}s (waiting {status['waiting']}),"
        f" all answered after {took:.3f}s"
    )
    assert set(refused) <= {"PoolFull"}, refused
    assert sum(served.values()) + refused["PoolFull"] == 200
    assert max(served.values()) <= 10 and len(served) <= 12
    status = yield fight.status()
    assert all(p["peak"] <= 10 for p in status["processes"]) and len(status["processes"]) <= 12
