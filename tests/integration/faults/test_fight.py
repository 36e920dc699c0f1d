"""Fault injection: the fight dispatcher killed -9 with fights in progress, restarted.

Beside the steady load, the edge cluster runs a fight dispatcher (``mmo-fight``, the demo's
``TurnFight``) holding fights whose players have arrived, and a caller that allocates and
releases fights one after another (2 s deadline each, as a matchmaker would). The
dispatcher is killed -9 and restarted 1 s later, as its supervisor would. Counted:
allocations answered, failed (by error), and when they work again; whether the restarted
dispatcher adopts the fight processes with the fights in progress (each released once, as
the fights end), never running more processes than its maximum.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest_twisted  # type: ignore[import-untyped]
from twisted.internet import defer, reactor

from mmo.errors import MmoError

from ..conftest import sleep, until
from ..test_fight import HANDLER, ready, wait_status
from ..test_fight_restart import join, kill_all
from .load import FaultCluster, assert_no_loss, close_clients, report, run_with_load

#: The dispatcher's settings: 2 seats a process, one spare, at most 4 processes.
CAP, MAX = 2, 4
#: The fights in progress when the dispatcher dies.
HELD = 3
#: An allocation's deadline, in seconds.
ALLOCATE_DEADLINE = 2.0


@defer.inlineCallbacks
def allocate_loop(fight: Any, outcomes: list[tuple[float, str]], running: list[bool]) -> Any:
    """Allocate a fight and release it, again and again while ``running[0]``; record
    ``(when, "ok" or the error's type)`` of each allocation."""
    n = 0
    while running[0]:
        n += 1
        try:
            got = yield fight.call(
                "allocate", {"players": [f"m{n}a", f"m{n}b"]}, timeout=ALLOCATE_DEADLINE
            )
            outcomes.append((reactor.seconds(), "ok"))
            yield fight.call("release", {"fight_id": got["fight_id"]}, timeout=ALLOCATE_DEADLINE)
        except MmoError as e:
            outcomes.append((reactor.seconds(), type(e).__name__))
            yield sleep(0.1)  # as a matchmaker would, before trying again
        yield sleep(0.05)


@pytest_twisted.inlineCallbacks
def test_fight_dispatcher_kill(edge: FaultCluster, directory_factory: Any) -> Any:
    """kill -9 of the fight dispatcher with fights in progress, restarted 1 s later, under
    load: echo and chat untouched; allocations fail clearly only while it is away; the
    restarted dispatcher adopts the running processes with their fights (each released
    once), never past its maximum, and allocates again."""
    args = ["--yellow", edge.yellow, "--handler", HANDLER, "--cap", str(CAP)]
    args += ["--min-spare", "1", "--max-processes", str(MAX), "--orphan-timeout", "20"]
    edge.add("fight", "mmo-fight", args)
    directory = directory_factory([edge.yellow])
    fight = directory.get_service("fight", timeout=10)
    yield wait_status(fight, lambda s: len(ready(s)) >= 1)
    held = []
    for i in range(HELD):
        got = yield fight.allocate(players=[f"h{i}a", f"h{i}b"])
        yield join(directory, got, f"h{i}a", f"h{i}b")
        held.append(got)
    status = yield fight.status()
    pids = {p["pid"] for p in status["processes"]}
    clients, traffic = yield run_with_load(edge)
    outcomes: list[tuple[float, str]] = []
    running = [True]
    loop = allocate_loop(fight, outcomes, running)
    try:
        yield sleep(1.0)
        fault_at = reactor.seconds()
        edge.processes["fight"].kill()
        yield sleep(1.0)  # a supervisor restarts it
        edge.restart("fight")
        status = yield wait_status(
            fight, lambda s: s["counts"]["adopted"] >= 1 and not s["waiting"], timeout=30
        )
        adopted_at = reactor.seconds()
        pids |= {p["pid"] for p in status["processes"]}
        yield until(
            lambda: any(t > adopted_at and o == "ok" for t, o in outcomes),
            what="an allocation after the restart",
        )
        yield sleep(2.0)  # the load and the allocations go on
        running[0] = False
        yield loop
        yield traffic.stop()
        released = yield defer.gatherResults(
            [fight.release(fight_id=f["fight_id"]) for f in held], consumeErrors=True
        )
        twice = yield fight.release(fight_id=held[0]["fight_id"])
        status = yield fight.status()
        pids |= {p["pid"] for p in status["processes"]}
    finally:
        running[0] = False
        yield close_clients(clients)
        kill_all(pids)
    failed = [(t, o) for t, o in outcomes if o != "ok"]
    back_at = min(t for t, o in outcomes if o == "ok" and t > fault_at)
    figures = traffic.figures("fight dispatcher kill -9 + restart 1 s later", fault_at)
    figures.extra["adopted"] = adopted_at - fault_at
    figures.extra["allocating_again"] = back_at - fault_at
    figures.counts.update(
        allocations=len(outcomes),
        allocations_failed=len(failed),
        adopted=status["counts"]["adopted"],
    )
    report(figures)
    print(f"allocation failures: {dict(Counter(o for _, o in failed))}")
    assert_no_loss(figures, traffic)
    assert figures.errors == 0 and figures.missed == 0
    # Every fight in progress was kept: released once, by the restarted dispatcher.
    assert released == [True] * HELD and twice is False
    assert len(status["processes"]) <= MAX and all(p["peak"] <= CAP for p in status["processes"])
    # Allocations failed only while the dispatcher was away, each with a clear error.
    assert all(fault_at - ALLOCATE_DEADLINE <= t <= back_at for t, _ in failed), failed
    assert {o for _, o in failed} <= {
        "NoLiveInstance",
        "DeadlineExceeded",
        "InstanceLost",
        "Unavailable",
    }
