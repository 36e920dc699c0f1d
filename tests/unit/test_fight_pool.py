"""The fight pool's bookkeeping on a task.Clock with a fake spawner: cap, spares, maximum,
reservations, idle reaping, crashes, start failures and draining."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import defer, task

from mmo.fight.config import FightConfig
from mmo.fight.errors import BadFight, NotInFight, PoolDraining, PoolFull, UnknownFight
from mmo.fight.pool import READY, STARTING, STOPPING, Fight, FightPool
from mmo.testing import result_of as result


class FakeChild:
    """A spawned fight process that exits when told to (or at once when terminated/killed)."""

    def __init__(self, spawner: FakeSpawner, instance_id: str, on_exit: Any, pid: int) -> None:
        self.spawner = spawner
        self.instance_id = instance_id
        self.on_exit = on_exit
        self._pid: int | None = pid
        self.terminated = False
        self.killed = False
        self._exited: defer.Deferred[None] = defer.Deferred()

    @property
    def pid(self) -> int | None:
        return self._pid

    def terminate(self) -> defer.Deferred[None]:
        self.terminated = True
        d: defer.Deferred[None] = defer.Deferred()
        self._exited.addBoth(lambda _: d.callback(None))
        if self.spawner.auto_exit:
            self.exit("stopped")
        return d

    def kill(self) -> None:
        self.killed = True
        if self.spawner.auto_exit:
            self.exit("was killed by signal 9")

    def exit(self, description: str = "exited with code 1") -> None:
        if self._pid is None:
            return
        self._pid = None
        self._exited.callback(None)
        self.on_exit(self.instance_id, description)


class FakeSpawner:
    """Records what the pool spawns."""

    def __init__(self, auto_exit: bool = True) -> None:
        self.auto_exit = auto_exit
        self.children: dict[str, FakeChild] = {}
        self.fail_next = 0

    def spawn(self, instance_id: str, on_exit: Any) -> FakeChild:
        if self.fail_next:
            self.fail_next -= 1
            raise OSError("no such file")
        child = FakeChild(self, instance_id, on_exit, 1000 + len(self.children))
        self.children[instance_id] = child
        return child

    @property
    def spawned(self) -> int:
        return len(self.children)

    def alive(self) -> list[FakeChild]:
        return [c for c in self.children.values() if c.pid is not None]


class Recorder:
    """A PoolListener that records what it is told."""

    def __init__(self) -> None:
        self.lost: list[tuple[str, str]] = []
        self.expired: list[str] = []

    def fight_lost(self, fight: Fight, reason: str) -> None:
        self.lost.append((fight.fight_id, reason))

    def fight_expired(self, fight: Fight) -> None:
        self.expired.append(fight.fight_id)


def make_pool(
    cap: int = 10, start: bool = True, **settings: Any
) -> tuple[FightPool, task.Clock, FakeSpawner, Recorder]:
    """A started pool on a Clock with a fake spawner and a recording listener."""
    config = FightConfig(
        yellow=("tcp://127.0.0.1:1",),
        handler="mmo.examples.fight:TurnFight",
        cap=cap,
        **settings,
    )
    clock = task.Clock()
    spawner = FakeSpawner()
    listener = Recorder()
    pool = FightPool(config, clock, spawner, listener)
    if start:
        pool.start()
        clock.advance(0)  # the pool starts one process per reactor turn
    return pool, clock, spawner, listener


def settle(pool: FightPool) -> None:
    """Run the reactor turns that are due (the pool starts one process per turn)."""
    pool.clock.advance(0)  # type: ignore[attr-defined]


def ready_all(pool: FightPool) -> None:
    """The processes due to start have started, and every starting one registers."""
    settle(pool)
    for proc in list(pool.processes.values()):
        if proc.state == STARTING:
            pool.process_ready(proc.instance_id, proc.handle.pid)


def loads(pool: FightPool) -> dict[str, int]:
    """Load per process."""
    return {iid: p.load for iid, p in pool.processes.items()}


def test_starts_min_spare_processes():
    """Starting the pool spawns min-spare processes, and no more once they are ready."""
    pool, _, spawner, _ = make_pool(min_spare=2)
    assert spawner.spawned == 2
    ready_all(pool)
    pool.tick()
    assert spawner.spawned == 2
    assert {p.state for p in pool.processes.values()} == {READY}


def test_allocates_to_the_least_loaded_ready_process():
    """Each allocation goes to the ready process with the fewest players."""
    pool, _, _, _ = make_pool(cap=10, min_spare=2)
    ready_all(pool)
    first = result(pool.allocate(["a", "b", "c"], timeout=1))
    second = result(pool.allocate(["d"], timeout=1))
    third = result(pool.allocate(["e"], timeout=1))
    assert second.instance_id != first.instance_id
    assert third.instance_id == second.instance_id
    assert sorted(loads(pool).values()) == [2, 3]


def test_200_concurrent_allocations_never_exceed_the_cap():
    """200 allocations at once, cap 10: all served, none over 10, started = 20 needed + 1 spare."""
    pool, _, spawner, _ = make_pool(cap=10, min_spare=1, max_processes=30)
    ready_all(pool)
    calls = [pool.allocate([f"p{i}"], timeout=30) for i in range(200)]
    while pool.waiting or any(p.state == STARTING for p in pool.processes.values()):
        ready_all(pool)  # two start at a time (max-starting): the next as these register
    fights = [result(d) for d in calls]
    per_process: dict[str, int] = {}
    for fight in fights:
        per_process[fight.instance_id] = per_process.get(fight.instance_id, 0) + 1
    assert max(per_process.values()) == 10 and len(per_process) == 20
    assert all(p.peak <= 10 for p in pool.processes.values())
    assert spawner.spawned == 21
    spare = [p for p in pool.processes.values() if p.load == 0]
    assert len(spare) == 1 and spare[0].state == READY


def test_when_all_are_full_a_new_process_is_spawned_and_the_call_answered_once_ready():
    """An allocation that finds no room waits for a new process and is answered when it is ready."""
    pool, _, spawner, _ = make_pool(cap=2, min_spare=0)
    assert spawner.spawned == 0
    waiting = pool.allocate(["a", "b"], timeout=10)
    assert not waiting.called and spawner.spawned == 1
    ready_all(pool)
    assert result(waiting).instance_id == "fight-1"
    assert spawner.spawned == 1  # min-spare 0: no spare


def test_keeps_min_spare_ready_processes_with_room():
    """Once the spare fills up another one is started."""
    pool, _, spawner, _ = make_pool(cap=2, min_spare=1)
    ready_all(pool)
    result(pool.allocate(["a", "b"], timeout=1))
    assert spawner.spawned == 2
    ready_all(pool)
    assert [p.load for p in pool.processes.values()] == [2, 0]


def test_never_more_than_max_processes_and_pool_full_at_the_deadline():
    """At the maximum, a waiting allocation fails with PoolFull at its deadline; no extra spawn."""
    pool, clock, spawner, _ = make_pool(cap=2, min_spare=1, max_processes=2)
    ready_all(pool)
    result(pool.allocate(["a", "b"], timeout=1))
    ready_all(pool)
    result(pool.allocate(["c", "d"], timeout=1))
    waiting = pool.allocate(["e"], timeout=2)
    assert spawner.spawned == 2
    clock.advance(2)
    with pytest.raises(PoolFull, match="2 of at most 2"):
        result(waiting)
    assert pool.waiting == 0


def test_a_release_serves_a_waiting_allocation():
    """Seats freed by a release go to the allocation waiting for them."""
    pool, _, _, _ = make_pool(cap=2, min_spare=0, max_processes=1)
    pool.allocate(["x"], timeout=1)  # starts the one process
    ready_all(pool)
    first = result(pool.allocate(["a"], timeout=1))
    waiting = pool.allocate(["b", "c"], timeout=5)
    assert not waiting.called
    pool.release(first.fight_id)
    assert not waiting.called  # x still holds one seat
    x = next(f for f in pool.fights.values() if f.players == ("x",))
    pool.release(x.fight_id)
    assert result(waiting).players == ("b", "c")


def test_no_fight_is_handed_out_while_the_registry_is_out_of_reach():
    """While the dispatcher's registry view is stale (a cut network) an allocation waits,
    starts nothing (there is room), and is served once the view is fresh again, on a
    process the registry still lists; if the view does not come back it fails in time."""
    pool, clock, spawner, _ = make_pool(cap=10, min_spare=1)
    ready_all(pool)
    fresh = [False]
    pool.routable = lambda: fresh[0]
    waiting = pool.allocate(["a", "b"], timeout=5)
    given_up = pool.allocate(["c"], timeout=1)
    clock.advance(1.5)
    assert not waiting.called and spawner.spawned == 1
    assert given_up.called and isinstance(given_up.result.value, PoolFull)
    given_up.addErrback(lambda _: None)
    fresh[0] = True
    clock.advance(1.0)  # the pool's next tick
    assert result(waiting).players == ("a", "b")


def test_unclaimed_reservation_expires_and_a_claimed_one_stays():
    """A fight whose players do not all arrive in time is released; a claimed one is kept."""
    pool, clock, _, listener = make_pool(cap=10, reservation_timeout=15)
    ready_all(pool)
    claimed = result(pool.allocate(["a", "b"], timeout=1))
    partly = result(pool.allocate(["c", "d"], timeout=1))
    pool.arrived(claimed.fight_id, "a")
    pool.arrived(claimed.fight_id, "b")
    pool.arrived(partly.fight_id, "c")
    clock.advance(14.9)
    assert listener.expired == []
    clock.advance(0.2)
    assert listener.expired == [partly.fight_id]
    assert set(pool.fights) == {claimed.fight_id}
    assert sum(loads(pool).values()) == 2
    assert pool.counts["expired"] == 1


def test_arrived_checks_the_fight_the_player_and_the_process():
    """Arrivals for unknown fights, foreign players or the wrong process are refused."""
    pool, _, _, _ = make_pool()
    ready_all(pool)
    fight = result(pool.allocate(["a", "b"], timeout=1))
    with pytest.raises(UnknownFight):
        pool.arrived("nope", "a")
    with pytest.raises(NotInFight):
        pool.arrived(fight.fight_id, "mallory")
    with pytest.raises(NotInFight):
        pool.arrived(fight.fight_id, "a", instance="fight-9")
    assert pool.arrived(fight.fight_id, "a", instance=fight.instance_id).arrived == {"a"}


def test_idle_processes_above_the_spare_count_are_reaped():
    """After idle-timeout, idle processes beyond min-spare are stopped; the spare stays."""
    pool, clock, spawner, _ = make_pool(cap=2, min_spare=1, idle_timeout=5)
    ready_all(pool)
    fights = [result(pool.allocate([f"p{i}", f"q{i}"], timeout=1)) for i in range(1)]
    ready_all(pool)
    fights += [result(pool.allocate(["p1", "q1"], timeout=1))]
    ready_all(pool)
    assert spawner.spawned == 3
    for fight in fights:
        pool.release(fight.fight_id)
    clock.pump([1.0] * 4)
    assert len(spawner.alive()) == 3
    clock.pump([1.0] * 2)
    assert len(spawner.alive()) == 1
    assert pool.counts["reaped"] == 2
    clock.pump([1.0] * 10)
    assert spawner.spawned == 3  # nothing restarted


def test_busy_processes_are_not_reaped():
    """A process holding a fight is never reaped, however long it runs."""
    pool, clock, spawner, _ = make_pool(cap=2, min_spare=0, idle_timeout=1, reservation_timeout=99)
    waiting = pool.allocate(["a", "b"], timeout=1)
    ready_all(pool)
    fight = result(waiting)
    clock.pump([0.5] * 20)
    assert spawner.alive() and fight.fight_id in pool.fights


def test_a_crashed_process_loses_its_fights_and_is_replaced():
    """A process that exits reports each of its fights lost, leaves the pool, and a spare is
    started in its place."""
    pool, _, spawner, listener = make_pool(cap=4, min_spare=1)
    ready_all(pool)
    one = result(pool.allocate(["a", "b"], timeout=1))
    two = result(pool.allocate(["c", "d"], timeout=1))
    ready_all(pool)
    assert spawner.spawned == 2
    spawner.children["fight-1"].exit("was killed by signal 9")
    assert sorted(fid for fid, _ in listener.lost) == sorted([one.fight_id, two.fight_id])
    assert "killed by signal 9" in listener.lost[0][1]
    assert "fight-1" not in pool.processes and not pool.fights
    assert pool.counts["crashed"] == 1
    # fight-2 is an idle spare already: no replacement is needed for the spare count.
    assert spawner.spawned == 2
    spawner.children["fight-2"].exit()
    settle(pool)
    assert spawner.spawned == 3


def test_a_process_dropped_by_the_registry_is_killed_and_its_fights_lost_at_once():
    """Registry DOWN (expired: hung) of a ready process: its fights are lost and it is killed."""
    pool, _, spawner, listener = make_pool(cap=4, min_spare=1)
    ready_all(pool)
    fight = result(pool.allocate(["a"], timeout=1))
    spawner.auto_exit = False
    pool.process_down("fight-1", "expired")
    assert listener.lost and listener.lost[0][0] == fight.fight_id
    assert spawner.children["fight-1"].killed
    assert pool.processes["fight-1"].state == STOPPING
    assert spawner.spawned == 2  # a spare to replace it
    spawner.children["fight-1"].exit("was killed by signal 9")
    assert "fight-1" not in pool.processes and len(listener.lost) == 1


def test_a_deregistered_process_takes_no_new_fights():
    """A process that deregisters by itself gets no new fights; its exit reports its fights."""
    pool, _, spawner, listener = make_pool(cap=4, min_spare=1)
    spawner.auto_exit = False
    ready_all(pool)
    fight = result(pool.allocate(["a"], timeout=1))
    pool.process_down("fight-1", "deregistered")
    assert listener.lost == []
    ready_all(pool)
    assert result(pool.allocate(["b"], timeout=1)).instance_id == "fight-2"
    spawner.children["fight-1"].exit("exited with code 0")
    assert listener.lost[0][0] == fight.fight_id


def test_a_process_failing_to_start_is_retried_with_backoff():
    """A process that dies before registering is restarted after a growing delay, not at once."""
    pool, clock, spawner, _ = make_pool(min_spare=1)
    spawner.children["fight-1"].exit("exited with code 1")
    assert spawner.spawned == 1 and pool.counts["failed"] == 1
    clock.advance(0.5)
    assert spawner.spawned == 2
    spawner.children["fight-2"].exit("exited with code 1")
    clock.advance(0.5)
    assert spawner.spawned == 2
    clock.advance(0.5)
    assert spawner.spawned == 3
    ready_all(pool)
    assert pool.processes["fight-3"].state == READY


def test_a_spawn_error_is_retried_with_backoff():
    """An exception from the spawner counts as a failed start and is retried later."""
    config = FightConfig(yellow=("tcp://127.0.0.1:1",), handler="m:C", cap=2)
    clock = task.Clock()
    spawner = FakeSpawner()
    spawner.fail_next = 1
    pool = FightPool(config, clock, spawner)
    pool.start()
    assert spawner.spawned == 0 and pool.counts["failed"] == 1
    clock.advance(0.5)
    assert spawner.spawned == 1


def test_a_process_that_never_registers_is_killed_after_the_start_timeout():
    """start-timeout: a process still starting is killed and counted as failed."""
    pool, clock, spawner, _ = make_pool(min_spare=1, start_timeout=5)
    clock.advance(5)
    assert spawner.children["fight-1"].killed
    assert pool.counts["failed"] == 1


def test_stale_registration_with_another_pid_is_ignored():
    """A registry record whose pid is not our child's does not make the process ready."""
    pool, _, _, _ = make_pool(min_spare=1)
    pool.process_ready("fight-1", pid=4242)
    assert pool.processes["fight-1"].state == STARTING


def test_fight_id_makes_allocate_idempotent():
    """The same fight_id with the same players answers the same fight; other players are refused."""
    pool, _, _, _ = make_pool()
    ready_all(pool)
    first = result(pool.allocate(["a", "b"], "f-1", timeout=1))
    assert result(pool.allocate(["a", "b"], "f-1", timeout=1)) is first
    with pytest.raises(BadFight):
        result(pool.allocate(["a", "c"], "f-1", timeout=1))
    with pytest.raises(BadFight):
        result(pool.allocate(["a", "c"], 7, timeout=1))  # type: ignore[arg-type]
    assert pool.counts["allocated"] == 1


@pytest.mark.parametrize(
    "players", [[], ["a", "a"], "ab", None, 3, ["a", ""], ["a", 1], [f"p{i}" for i in range(11)]]
)
def test_bad_player_lists_are_refused(players):
    """No players, repeats, not a list, empty or non-string names, more than the cap: BadFight."""
    pool, _, _, _ = make_pool(cap=10)
    ready_all(pool)
    with pytest.raises(BadFight):
        result(pool.allocate(players, timeout=1))


def test_drain_refuses_new_fights_lets_running_ones_end_then_stops_every_process():
    """Drain: waiting and new allocations fail with PoolDraining; it waits for the running
    fight to be released, then terminates every process."""
    pool, clock, spawner, _ = make_pool(cap=2, min_spare=1, max_processes=2)
    ready_all(pool)
    fight = result(pool.allocate(["a", "b"], timeout=1))
    ready_all(pool)
    result(pool.allocate(["c", "d"], timeout=1))
    pool.arrived(fight.fight_id, "a")
    pool.arrived(fight.fight_id, "b")
    waiting = pool.allocate(["e"], timeout=10)
    drained = pool.drain()
    with pytest.raises(PoolDraining):
        result(waiting)
    with pytest.raises(PoolDraining):
        result(pool.allocate(["f"], timeout=1))
    clock.advance(20)  # the unclaimed fight expires; the claimed one runs on
    assert not drained.called
    assert not any(c.terminated for c in spawner.children.values())
    pool.release(fight.fight_id)
    assert drained.called
    assert all(c.terminated for c in spawner.children.values())
    assert not pool.processes


def test_drain_limit_cuts_off_fights_that_run_too_long():
    """Fights still running at the drain timeout are reported lost, then processes stop."""
    pool, clock, spawner, listener = make_pool(cap=2, drain_timeout=30, reservation_timeout=99)
    ready_all(pool)
    fight = result(pool.allocate(["a", "b"], timeout=1))
    drained = pool.drain()
    clock.advance(29)
    assert not drained.called
    clock.advance(1)
    assert drained.called
    assert listener.lost == [(fight.fight_id, "the fight dispatcher shut down before it ended")]
    assert spawner.children["fight-1"].terminated
    assert not spawner.alive() and not pool.processes


def test_status_shows_processes_load_and_counts():
    """status() lists each process with state, load, room, fights and peak."""
    pool, _, _, _ = make_pool(cap=4, min_spare=1)
    ready_all(pool)
    result(pool.allocate(["a", "b", "c"], timeout=1))
    status = pool.status()
    assert status["cap"] == 4 and status["fights"] == 1 and status["players"] == 3
    assert status["reserved"] == 1  # no player has arrived yet
    proc = status["processes"][0]
    assert proc["instance"] == "fight-1" and proc["state"] == READY
    assert (proc["load"], proc["room"], proc["fights"], proc["peak"]) == (3, 1, 1, 3)
    assert status["counts"]["spawned"] == 1  # fight-1 still has room: it is the spare


OPS = st.lists(
    st.one_of(
        st.tuples(st.just("allocate"), st.integers(1, 4)),
        st.tuples(st.just("release"), st.integers(0, 50)),
        st.tuples(st.just("ready"), st.just(0)),
        st.tuples(st.just("crash"), st.integers(0, 10)),
        st.tuples(st.just("advance"), st.integers(1, 20)),
    ),
    max_size=80,
)


@settings(max_examples=150, deadline=None)
@given(OPS)
def test_random_operations_never_break_cap_or_maximum(ops):
    """Under any interleaving of allocations, releases, readiness, crashes and time, no
    process is over the cap, the maximum holds, and every answered fight had room."""
    pool, clock, spawner, _ = make_pool(
        cap=4, min_spare=1, max_processes=4, idle_timeout=3, reservation_timeout=5
    )
    counter = 0
    pending: list[defer.Deferred[Any]] = []
    for op, arg in ops:
        if op == "allocate":
            players = [f"p{counter + i}" for i in range(arg)]
            counter += arg
            d = pool.allocate(players, timeout=4)
            d.addErrback(lambda f: f.trap(PoolFull))
            pending.append(d)
        elif op == "release" and pool.fights:
            fights = sorted(pool.fights)
            pool.release(fights[arg % len(fights)])
        elif op == "ready":
            ready_all(pool)
        elif op == "crash":
            alive = spawner.alive()
            if alive:
                alive[arg % len(alive)].exit("was killed by signal 9")
        elif op == "advance":
            clock.advance(arg / 4)
        assert all(p.load <= 4 for p in pool.processes.values())
        assert all(
            p.load == sum(len(f.players) for f in p.fights.values())
            for p in pool.processes.values()
        )
        assert len(spawner.alive()) <= 4
        assert len(pool.processes) <= 4


def test_a_process_that_registers_again_after_a_foreign_goodbye_takes_fights_again():
    """A deregistration followed by the same process registering again (an old namesake said
    goodbye) makes it ready again rather than leaving it stopping forever."""
    pool, _, spawner, _ = make_pool(cap=4, min_spare=1)
    spawner.auto_exit = False
    ready_all(pool)
    pool.process_down("fight-1", "deregistered")
    assert pool.processes["fight-1"].state == STOPPING
    pool.process_ready("fight-1", spawner.children["fight-1"].pid)
    assert pool.processes["fight-1"].state == READY
    assert result(pool.allocate(["a"], timeout=1)).instance_id in {"fight-1", "fight-2"}


def test_processes_start_one_per_reactor_turn():
    """A burst that needs many processes starts them one reactor turn after another, so the
    dispatcher's loop (its registry heartbeats, its answers) runs between two starts."""
    pool, clock, spawner, _ = make_pool(cap=2, min_spare=0, max_processes=10, max_starting=10)
    for i in range(10):
        pool.allocate([f"p{i}"], timeout=5)
    assert spawner.spawned == 1
    (next_turn,) = [c for c in clock.getDelayedCalls() if c.getTime() == clock.seconds()]
    assert next_turn.func == pool.maintain
    clock.advance(0)  # runs the turns that follow, one start each
    assert spawner.spawned == 5


def test_at_most_max_starting_processes_start_at_once():
    """A burst needing 10 processes starts two at a time (max-starting 2): the next ones
    start as these register, and the burst is served all the same."""
    pool, _, spawner, _ = make_pool(cap=2, min_spare=0, max_processes=10, max_starting=2)
    calls = [pool.allocate([f"p{i}"], timeout=60) for i in range(20)]
    settle(pool)
    assert spawner.spawned == 2
    while pool.waiting:
        assert sum(p.state == STARTING for p in pool.processes.values()) <= 2
        ready_all(pool)
    assert spawner.spawned == 10 and all(result(d) for d in calls)


class FakeAdopted:
    """A process another dispatcher started, as adopted: records signals, told when gone."""

    pid = 4242

    def __init__(self) -> None:
        self.killed = self.gone = False

    def terminate(self) -> defer.Deferred[None]:
        return defer.succeed(None)

    def kill(self) -> None:
        self.killed = True

    def exited(self) -> None:
        self.gone = True


def test_adopted_processes_keep_their_fights_count_against_the_maximum_and_start_nothing():
    """While adopting nothing starts; an adopted process brings its fights (load, sessions),
    takes new ones up to the cap, counts against the maximum (one more is refused), and its
    leaving the registry is its end: its fights are lost."""
    pool, _, spawner, listener = make_pool(cap=4, start=False, min_spare=1, max_processes=2)
    pool.start(adopting=True)
    settle(pool)
    assert spawner.spawned == 0
    waiting = pool.allocate(["x"], timeout=30)
    fights = [{"fight_id": "f1", "players": ["a", "b"], "arrived": ["a", "b"],
               "sessions": {"a": {"id": "s-a", "user_id": "a", "broker": "broker-2"}}}]  # fmt: skip
    handle = FakeAdopted()
    assert pool.adopt("old-3", handle, fights)
    served = result(waiting)
    assert served.instance_id == "old-3" and pool.processes["old-3"].load == 3
    assert pool.fights["f1"].sessions["a"].broker == "broker-2"
    assert pool.adopt("old-4", FakeAdopted(), [])
    pool.adopted_all()
    settle(pool)
    assert spawner.spawned == 0 and len(pool.processes) == 2  # at the maximum already
    assert not pool.adopt("old-5", FakeAdopted(), [])
    pool.process_down("old-3", "expired")
    assert handle.killed and handle.gone and "old-3" not in pool.processes
    assert {fid for fid, _ in listener.lost} == {"f1", served.fight_id}


def test_recycle_lets_every_fight_finish_on_its_process_and_starts_fresh_ones():
    """A reload: the processes running now take no new fight; an idle one stops at once,
    one holding a fight stops when it ends; fresh processes take the new fights."""
    pool, _, spawner, listener = make_pool(cap=2, min_spare=1)
    ready_all(pool)
    held = result(pool.allocate(["a", "b"], timeout=1))  # fills fight-1
    ready_all(pool)  # fight-2: the spare
    spawner.auto_exit = False
    assert pool.recycle() == ["fight-1", "fight-2"]
    assert spawner.children["fight-2"].terminated and not spawner.children["fight-1"].terminated
    ready_all(pool)  # fight-3: the fresh spare
    fresh = result(pool.allocate(["c"], timeout=1))
    assert fresh.instance_id == "fight-3"
    assert pool.processes["fight-1"].fights == {held.fight_id: held}
    pool.release(held.fight_id)
    assert spawner.children["fight-1"].terminated
    assert listener.lost == [] and pool.counts["recycled"] == 2
