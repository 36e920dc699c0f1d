"""The fight dispatcher's PoolService: the registry's news of fight processes reaches the
pool, the pool's size goes into the dispatcher's registry record, and a stop drains it.

A real FightPool runs on a ``task.Clock`` with the fake spawner of test_fight_pool; the
directory is mmo.testing's ``FakeDirectory``, whose registry the test plays.
"""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet import task

from mmo.fight.config import FightConfig
from mmo.fight.pool import READY, STARTING, STOPPING, Fight, FightPool
from mmo.fight.service import PoolService
from mmo.testing import FakeDirectory, FakeRegistration, result_of

from .test_fight_pool import FakeSpawner, Recorder

WORKERS = "fight-worker"


class Rig:
    """A PoolService over a real pool, a fake spawner, directory and registration."""

    def __init__(self, **settings: Any) -> None:
        self.clock = task.Clock()
        config = FightConfig(yellow=("tcp://127.0.0.1:1",), handler="m:C", cap=4, **settings)
        self.spawner = FakeSpawner()
        self.listener = Recorder()
        self.pool = FightPool(config, self.clock, self.spawner, self.listener)
        self.directory = FakeDirectory(self.clock)
        self.registration = FakeRegistration()
        self.service = PoolService(
            self.pool,
            self.directory,  # type: ignore[arg-type]
            self.registration,  # type: ignore[arg-type]
            WORKERS,
        )

    def register(self, iid: str, pid: int | None = None, service: str = WORKERS) -> None:
        """A fight process registers (its record names its pid)."""
        meta = {} if pid is None else {"pid": pid}
        self.directory.register(service, iid, meta=meta)

    def state(self, iid: str) -> str:
        return self.pool.processes[iid].state


def arrive(rig: Rig, fight: Fight) -> None:
    """Every player of ``fight`` arrived: it runs, its seats no longer expire."""
    for player in fight.players:
        rig.pool.arrived(fight.fight_id, player)


@pytest.fixture
def rig() -> Rig:
    """A PoolService with its pool, not started."""
    return Rig()


def test_start_spawns_a_spare_and_takes_processes_already_registered(rig: Rig) -> None:
    """Starting starts the pool's spare; a fight process the registry already lists (with
    the spare's pid) is taken as ready at once."""
    rig.register("fight-1", pid=1000)
    rig.service.startService()
    assert list(rig.spawner.children) == ["fight-1"]
    assert rig.state("fight-1") == READY


def test_a_registered_fight_process_becomes_ready(rig: Rig) -> None:
    """A spawned process is starting until the registry lists it under the fight processes'
    service with its own pid; then it takes fights."""
    rig.service.startService()
    assert rig.state("fight-1") == STARTING
    rig.register("fight-1", pid=1000, service="chat")
    rig.register("fight-1", pid=4242)  # another process of that name: not ours
    assert rig.state("fight-1") == STARTING
    rig.register("fight-1", pid=1000)
    assert rig.state("fight-1") == READY
    fight = result_of(rig.pool.allocate(["a", "b"], timeout=5.0))
    assert fight.instance_id == "fight-1"


def test_a_process_the_registry_drops_is_killed_and_its_fights_lost(rig: Rig) -> None:
    """A fight process that expires from the registry (hung, or gone unseen) is killed
    and its fights are reported lost."""
    rig.service.startService()
    rig.register("fight-1", pid=1000)
    fight = result_of(rig.pool.allocate(["a", "b"], timeout=5.0))
    rig.directory.deregister(WORKERS, "fight-1", "expired")
    assert rig.spawner.children["fight-1"].killed
    assert [fid for fid, _ in rig.listener.lost] == [fight.fight_id]


def test_a_killed_process_is_dropped_from_the_registry_once_it_is_dead(rig: Rig) -> None:
    """A process killed after the registry dropped it (a cut network) may have registered
    again meanwhile (the cut healed): once it is dead its record is dropped at once, so
    brokers stop routing players' calls to it (they would wait for its lease to run out)."""
    rig.service.startService()
    rig.register("fight-1", pid=1000)
    rig.spawner.auto_exit = False
    rig.directory.deregister(WORKERS, "fight-1", "expired")
    rig.register("fight-1", pid=1000)  # back before the kill took effect
    assert rig.registration.forgotten == []
    rig.spawner.children["fight-1"].exit("was killed by signal 9")
    assert rig.registration.forgotten == [(WORKERS, "fight-1")]


def test_a_process_saying_goodbye_takes_no_new_fights_and_is_not_killed(rig: Rig) -> None:
    """A fight process that deregisters (it is stopping by itself) is neither killed nor
    given new fights; its fights are not declared lost yet."""
    rig.service.startService()
    rig.register("fight-1", pid=1000)
    result_of(rig.pool.allocate(["a"], timeout=5.0))
    rig.directory.deregister(WORKERS, "fight-1")
    assert rig.state("fight-1") == STOPPING
    assert not rig.spawner.children["fight-1"].killed and rig.listener.lost == []


def test_the_pools_size_goes_into_the_registry_record_when_it_changes(rig: Rig) -> None:
    """At start and then each second, the dispatcher's registry meta gets the pool's
    processes, fights, players, cap and draining flag, with the next heartbeat
    (now=False), and only when something changed."""
    rig.service.startService()
    assert rig.registration.updates == [
        (False, {"processes": 1, "fights": 0, "players": 0, "cap": 4, "draining": False})
    ]
    rig.clock.advance(1)
    assert len(rig.registration.updates) == 1
    rig.register("fight-1", pid=1000)
    result_of(rig.pool.allocate(["a", "b"], timeout=5.0))
    rig.clock.advance(1)
    now, meta = rig.registration.updates[-1]
    assert not now and (meta["fights"], meta["players"]) == (1, 2)


def test_stop_drains_the_pool_then_stops_every_process(rig: Rig) -> None:
    """A stop refuses new fights, waits for the running one to be released, then stops the
    fight processes; its Deferred fires once they have exited, and the meta updates end."""
    rig.service.startService()
    rig.register("fight-1", pid=1000)
    fight = result_of(rig.pool.allocate(["a", "b"], timeout=5.0))
    arrive(rig, fight)
    stopped = rig.service.stopService()
    assert rig.pool.draining
    updates = len(rig.registration.updates)
    rig.clock.advance(5)
    assert len(rig.registration.updates) == updates
    assert not stopped.called and not rig.spawner.children["fight-1"].terminated
    assert rig.pool.release(fight.fight_id) is fight
    assert rig.spawner.children["fight-1"].terminated
    assert stopped.called


def test_stop_cuts_off_fights_that_outlast_the_drain_timeout() -> None:
    """Fights still running when the drain timeout passes are reported lost, and the stop
    completes."""
    rig = Rig(drain_timeout=30.0)
    rig.service.startService()
    rig.register("fight-1", pid=1000)
    fight = result_of(rig.pool.allocate(["a", "b"], timeout=5.0))
    arrive(rig, fight)
    stopped = rig.service.stopService()
    rig.clock.advance(29)
    assert not stopped.called
    rig.clock.advance(1)
    assert stopped.called
    assert [fid for fid, _ in rig.listener.lost] == [fight.fight_id]
