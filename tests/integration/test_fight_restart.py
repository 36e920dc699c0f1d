"""Fight dispatchers that stop, die and come back, with real processes: a draining one
leaves routing to the live one; a restarted (or a second) one adopts the fight processes
still running, with their fights, under its maximum, and keeps allocating."""

from __future__ import annotations

import contextlib
import os
import signal
from collections import Counter
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer

from mmo.errors import RemoteError
from mmo.logic.handler import Session

from .conftest import POLL_TIMEOUT, Cluster, until
from .test_fight import HANDLER, pid_alive, ready, wait_status

pytestmark = pytest.mark.timeout(120)


def start_dispatcher(cluster: Cluster, name: str, *args: str) -> Any:
    """Start `twistd mmo-fight` as instance ``name`` (service fight) with the demo handler."""
    yellows = [a for y in cluster.yellows for a in ("--yellow", y)]
    return cluster.processes.start(
        "mmo-fight", *yellows, "--handler", HANDLER, "--stop-timeout", "3", *args, name=name
    )


@defer.inlineCallbacks
def join(directory: Any, fight: dict[str, Any], *players: str) -> Any:
    """``players`` join ``fight`` on its process (as their brokers would relay fight.join),
    so that the process books their arrival."""
    worker = directory.get_service("fight-worker", timeout=10)
    # The dispatcher may answer before this process's view has the new fight process.
    view = directory.view
    yield view.wait_for(
        lambda: any(i.instance_id == fight["instance"] for i in view.get("fight-worker")),
        POLL_TIMEOUT,
    )
    for player in players:
        session = Session(id=f"s-{player}", user_id=player, broker="broker-nowhere")
        yield worker.call(
            "join", {"fight_id": fight["fight_id"]}, instance=fight["instance"], session=session
        )


def kill_all(pids: set[int]) -> None:
    """SIGKILL what is left of fight processes this test's dispatchers started (an orphan
    outlives its dispatcher, so the test's cleanup stops it)."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@pytest_twisted.inlineCallbacks
def test_a_draining_dispatcher_leaves_routing_to_the_live_one(cluster, directory_factory):
    """Two dispatchers; SIGTERM to one holding a running fight: while it drains, every new
    allocation is served by the other (none gets PoolDraining), and the running fight is
    still released on the draining one."""
    cluster.yellow()
    one = start_dispatcher(cluster, "fight-a", "--cap", "2", "--drain-timeout", "60")
    # fight-b seats 10 per process: the 20 allocations below need two processes, not ten
    # started at once (on a loaded machine ten take longer than the calls' deadline).
    start_dispatcher(cluster, "fight-b", "--cap", "10", "--drain-timeout", "1")
    directory = directory_factory(cluster.yellows)
    fight = directory.get_service("fight", timeout=10)
    a = yield wait_status(fight, lambda s: s["instance"] == "fight-a" and len(ready(s)) == 1)
    yield until(
        lambda: {i.instance_id for i in directory.view.get("fight")} == {"fight-a", "fight-b"},
        what="both dispatchers registered",
    )
    running = None
    while running is None:  # calls spread over both: take one on fight-a
        reply = yield fight.allocate(players=["a", "b"])
        if reply["instance"].startswith("fight-a"):
            running = reply
        else:
            owner = reply["instance"].rsplit("-", 1)[0]
            yield fight.call("release", {"fight_id": reply["fight_id"]}, instance=owner)
    assert a["fights"] == 0

    one.signal(signal.SIGTERM)
    yield until(lambda: one.wait_for_log("draining the pool", timeout=0.1), what="draining")
    results = yield defer.DeferredList(
        [fight.call("allocate", {"players": [f"p{i}"]}, timeout=10) for i in range(20)],
        consumeErrors=True,
    )
    refused = Counter(
        r.value.type if isinstance(r.value, RemoteError) else type(r.value).__name__
        for ok, r in results
        if not ok
    )
    served = Counter(r["instance"].rsplit("-", 1)[0] for ok, r in results if ok)
    print(f"20 allocations while fight-a drains: served by {dict(served)}, refused {dict(refused)}")
    assert not refused and set(served) == {"fight-b"}
    # Calls made to it by name (as its fight processes make them, from processes that did
    # not hear Unavailable from it) still reach it.
    assert one.alive()
    own = directory_factory(cluster.yellows).get_service("fight", timeout=10)
    released = yield own.call("release", {"fight_id": running["fight_id"]}, instance="fight-a")
    assert released is True
    assert one.wait(60) is not None, one.log_tail()


@pytest_twisted.inlineCallbacks
def test_a_restarted_dispatcher_adopts_the_running_processes_and_their_fights(
    cluster, directory_factory
):
    """kill -9 of the dispatcher: its fight processes go on; restarted, it adopts them with
    the fights their players arrived in (never more than --max-processes), releases them,
    and allocates on them again."""
    cluster.yellow()
    args = ("--cap", "2", "--min-spare", "1", "--max-processes", "3")
    first = start_dispatcher(cluster, "fight-d", *args)
    directory = directory_factory(cluster.yellows)
    fight = directory.get_service("fight", timeout=10)
    yield wait_status(fight, lambda s: len(ready(s)) == 1)
    held = yield fight.allocate(players=["a", "b"])
    yield join(directory, held, "a", "b")
    before = yield wait_status(fight, lambda s: len(ready(s)) == 2)
    pids = {p["pid"] for p in before["processes"]}
    try:
        first.signal(signal.SIGKILL)
        first.wait(10)
        assert all(pid_alive(pid) for pid in pids)

        start_dispatcher(cluster, "fight-d", *args)
        status = yield wait_status(
            fight, lambda s: s["counts"]["adopted"] >= 1 and not s["waiting"], timeout=30
        )
        print(f"restarted dispatcher: {status['counts']}, {len(status['processes'])} processes")
        assert len(status["processes"]) <= 3
        adopted = {p["instance"]: p for p in status["processes"] if p["adopted"]}
        assert held["instance"] in adopted
        pids |= {p["pid"] for p in status["processes"]}
        assert (yield fight.release(fight_id=held["fight_id"])) is True
        again = yield fight.allocate(players=["c", "d"])
        status = yield fight.status()
        assert again["instance"] in {p["instance"] for p in status["processes"]}
        assert len(status["processes"]) <= 3
        assert all(p["peak"] <= 2 for p in status["processes"])
    finally:
        kill_all(pids)


@pytest_twisted.inlineCallbacks
def test_a_second_dispatcher_adopts_the_processes_of_one_that_died(cluster, directory_factory):
    """Two dispatchers; kill -9 of one: the other adopts its processes (up to its own
    maximum) once the registry drops it, and serves their fights' releases."""
    cluster.yellow()
    one = start_dispatcher(cluster, "fight-x", "--cap", "2", "--max-processes", "2")
    start_dispatcher(cluster, "fight-y", "--cap", "2", "--max-processes", "4")
    directory = directory_factory(cluster.yellows)
    fight = directory.get_service("fight", timeout=10)
    yield until(
        lambda: {i.instance_id for i in directory.view.get("fight")} == {"fight-x", "fight-y"},
        what="both dispatchers registered",
    )
    x = yield fight.call("allocate", {"players": ["a", "b"]}, instance="fight-x")
    yield join(directory, x, "a", "b")
    status = yield fight.call("status", {}, instance="fight-x")
    pids = {p["pid"] for p in status["processes"]}
    try:
        one.signal(signal.SIGKILL)
        one.wait(10)

        def adopted() -> Any:
            # Processes are adopted one by one: wait for the one holding the fight.
            d = fight.call("status", {}, instance="fight-y")
            return d.addCallback(
                lambda s: s if x["instance"] in {p["instance"] for p in s["processes"]} else None
            )

        status = yield until(adopted, what="fight-y adopting the process of fight-x's fight")
        pids |= {p["pid"] for p in status["processes"]}
        assert x["instance"] in {p["instance"] for p in status["processes"]}
        assert len(status["processes"]) <= 4
        released = yield fight.call("release", {"fight_id": x["fight_id"]}, instance="fight-y")
        assert released is True
    finally:
        kill_all(pids)
