"""The rolling reload's sequence (mmo.cluster.roll), with a fake supervisor and registry."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet import defer, task

from mmo.cluster.roll import RestartRoll, Roll, RollError, next_name


class Child:
    def __init__(self, name: str) -> None:
        self.name = name
        self.gone = False


class Fakes:
    """Supervisor and registry at once, recording what the roll does, in order."""

    def __init__(self, clock: task.Clock, names: list[str], ready_after: float = 1.0) -> None:
        self.clock = clock
        self.children = [Child(n) for n in names]
        self.log: list[tuple[str, str]] = []
        self.ready_after = ready_after
        self.born: dict[str, float] = {}
        self.dies: set[str] = set()

    # Supervisor
    def candidates(self, service: str) -> list[Child]:
        return list(self.children) if service == "echo" else []

    def pools(self, service: str) -> list[Child]:
        return [Child("fight-a"), Child("fight-b")] if service == "fight" else []

    def instance_of(self, child: Child) -> str:
        return child.name

    def spawn(self, old: Child) -> Child:
        new = Child(next_name(old.name))
        self.born[new.name] = self.clock.seconds()
        self.log.append(("start", new.name))
        if new.name in self.dies:
            new.gone = True
        return new

    def exited(self, child: Child) -> bool:
        return child.gone

    def output_tail(self, child: Child) -> str:
        return "SyntaxError: boom"

    def discard(self, child: Child) -> defer.Deferred[Any]:
        self.log.append(("discard", child.name))
        return defer.succeed(None)

    def replace(self, old: Child, new: Child) -> defer.Deferred[Any]:
        self.log.append(("stop", old.name))
        self.children[self.children.index(old)] = new
        return defer.succeed(None)

    # Registry
    def ready(self, service: str, instance_id: str) -> defer.Deferred[bool]:
        ok = self.clock.seconds() - self.born[instance_id] >= self.ready_after
        if ok and ("ready", instance_id) not in self.log:
            self.log.append(("ready", instance_id))
        return defer.succeed(ok)

    def drain(self, service: str, instance_id: str) -> defer.Deferred[Any]:
        self.log.append(("drain", instance_id))
        return defer.succeed({"draining": True})

    def recycle(self, service: str, instance_id: str) -> defer.Deferred[dict[str, Any]]:
        self.log.append(("recycle", instance_id))
        if instance_id in self.dies:
            return defer.fail(RuntimeError("no answer"))
        return defer.succeed({"recycled": [f"{instance_id}-1"], "fights": 2})


def run(clock: task.Clock, d: defer.Deferred[Any], seconds: float = 120) -> Any:
    clock.pump([0.1] * int(seconds * 10))
    results: list[Any] = []
    d.addBoth(results.append)
    assert results, "the roll did not end"
    return results[0]


def test_next_name():
    assert next_name("echo-1") == "echo-1.r1"
    assert next_name("echo-1.r1") == "echo-1.r2"
    assert next_name("a.r9") == "a.r10"


def test_roll_starts_new_waits_drains_then_stops_old_one_at_a_time():
    clock = task.Clock()
    fakes = Fakes(clock, ["echo-1", "echo-2"])
    roll = Roll(fakes, fakes, clock, settle=1.5)
    result = run(clock, roll.run("echo"))
    assert result == {
        "service": "echo",
        "replaced": [["echo-1", "echo-1.r1"], ["echo-2", "echo-2.r1"]],
    }
    assert fakes.log == [
        ("start", "echo-1.r1"),
        ("ready", "echo-1.r1"),
        ("drain", "echo-1"),
        ("stop", "echo-1"),
        ("start", "echo-2.r1"),
        ("ready", "echo-2.r1"),
        ("drain", "echo-2"),
        ("stop", "echo-2"),
    ]
    assert [c.name for c in fakes.children] == ["echo-1.r1", "echo-2.r1"]
    assert roll.rolling is None


def test_roll_waits_the_settle_time_between_drain_and_stop():
    clock = task.Clock()
    fakes = Fakes(clock, ["echo-1"], ready_after=0)
    roll = Roll(fakes, fakes, clock, settle=1.5)
    d = roll.run("echo")
    clock.advance(0)
    assert fakes.log[-1] == ("drain", "echo-1")
    clock.advance(1.4)
    assert fakes.log[-1] == ("drain", "echo-1")
    clock.advance(0.2)
    assert fakes.log[-1] == ("stop", "echo-1")
    assert d.called


def test_roll_in_batches():
    clock = task.Clock()
    fakes = Fakes(clock, ["echo-1", "echo-2", "echo-3"])
    result = run(clock, Roll(fakes, fakes, clock).run("echo", batch=2))
    assert len(result["replaced"]) == 3
    kinds = [k for k, _ in fakes.log]
    # two started before any drain; the third after both old ones stopped
    assert kinds[:2] == ["start", "start"]
    assert kinds.index("drain") > kinds.index("ready")
    assert fakes.log.index(("start", "echo-3.r1")) > fakes.log.index(("stop", "echo-2"))


def test_a_new_process_that_exits_stops_the_roll_and_leaves_the_old():
    clock = task.Clock()
    fakes = Fakes(clock, ["echo-1", "echo-2"])
    fakes.dies.add("echo-2.r1")
    roll = Roll(fakes, fakes, clock)
    failure = run(clock, roll.run("echo"))
    assert isinstance(failure.value, RollError)
    assert "echo-2.r1 exited" in str(failure.value) and "SyntaxError: boom" in str(failure.value)
    assert fakes.log[-2:] == [("start", "echo-2.r1"), ("discard", "echo-2.r1")]
    assert ("drain", "echo-2") not in fakes.log and ("stop", "echo-2") not in fakes.log
    assert [c.name for c in fakes.children] == ["echo-1.r1", "echo-2"]
    assert roll.rolling is None


def test_a_new_process_never_ready_stops_the_roll_at_the_deadline():
    clock = task.Clock()
    fakes = Fakes(clock, ["echo-1"], ready_after=1000)
    failure = run(clock, Roll(fakes, fakes, clock, ready_timeout=30).run("echo"))
    assert isinstance(failure.value, RollError) and "not ready within 30 s" in str(failure.value)
    assert fakes.log == [("start", "echo-1.r1"), ("discard", "echo-1.r1")]


def test_nothing_to_roll_and_one_roll_at_a_time():
    clock = task.Clock()
    fakes = Fakes(clock, ["echo-1"])
    roll = Roll(fakes, fakes, clock)
    failure = run(clock, roll.run("ghost"))
    assert isinstance(failure.value, RollError) and "no supervised" in str(failure.value)
    first = roll.run("echo")
    second = run(clock, roll.run("echo"), seconds=0.1)
    assert isinstance(second.value, RollError) and "under way" in str(second.value)
    run(clock, first)
    with pytest.raises(RollError):
        run(clock, roll.run("echo", batch=0)).raiseException()


def supervised(reactor: Any) -> tuple[Any, Any, list[Any]]:
    """A started tier of two echo workers and a yellow, on a reactor spawning fakes."""
    from twisted.application.service import MultiService

    from mmo.cluster.control import ClusterSupervisor
    from mmo.process import ChildProcess

    tier = MultiService()
    children: list[Any] = []
    specs: dict[Any, Any] = {}
    for name, role, args in [
        ("yellow", "mmo-yellow", ("--listen", "tcp://127.0.0.1:1")),
        ("echo-1", "mmo-worker", ("--handler", "mmo.examples.echo:EchoService")),
        ("echo-2", "mmo-worker", ("--service", "echo", "--instance-id", "e2")),
        ("chat", "mmo-worker", ("--handler", "mmo.examples.chat:ChatService")),
    ]:
        child = ChildProcess(name, [role, *args], reactor=reactor, sink=lambda n, line: None)
        child.setName(name)
        child.setServiceParent(tier)
        children.append(child)
        specs[child] = (role, args)
    tier.startService()
    return ClusterSupervisor(children, specs, sink=lambda n, line: None), tier, children


def test_the_supervisor_finds_the_workers_of_a_service_and_their_instance_ids():
    from tests.unit.test_process import SpawningClock

    sup, _, children = supervised(SpawningClock())
    assert [c.name for c in sup.candidates("echo")] == ["echo-1", "echo-2"]
    assert [c.name for c in sup.candidates("chat")] == ["chat"]
    assert sup.candidates("yellow") == []
    assert [sup.instance_of(c) for c in children[1:3]] == ["echo-1", "e2"]


def test_the_supervisor_spawns_a_successor_and_puts_it_in_the_old_ones_place():
    import signal

    from tests.unit.test_process import SpawningClock

    reactor = SpawningClock()
    sup, tier, children = supervised(reactor)
    old = children[2]
    old_proc = reactor.processes[2]
    new = sup.spawn(old)
    spawned = reactor.spawned[-1]
    assert new.name == "echo-2.r1" and spawned["env"]["MMO_NAME"] == "echo-2.r1"
    assert spawned["args"][-4:] == ["--service", "echo", "--instance-id", "e2.r1"]
    assert sup.instance_of(new) == "e2.r1" and not new.restart and new.running
    reactor.current.protocol.childDataReceived(1, b"hello\n")
    assert sup.output_tail(new) == "hello"

    stopped = sup.replace(old, new)
    assert old_proc.signals == [signal.SIGCONT, signal.SIGTERM]
    old_proc.exit(0)
    assert stopped.called
    assert [s.name for s in tier] == ["yellow", "echo-1", "echo-2.r1", "chat"]
    assert tier.getServiceNamed("echo-2.r1") is new and new.restart
    assert [c.name for c in sup.children] == ["yellow", "echo-1", "echo-2.r1", "chat"]
    assert len(reactor.spawned) == 5  # the new one was not started twice


def test_a_discarded_successor_is_stopped_and_not_restarted():
    from tests.unit.test_process import SpawningClock

    reactor = SpawningClock()
    sup, tier, children = supervised(reactor)
    new = sup.spawn(children[1])
    reactor.current.exit(1)  # its import failed
    assert sup.exited(new)
    reactor.advance(60)
    assert len(reactor.spawned) == 5
    sup.discard(new)
    assert [s.name for s in tier] == ["yellow", "echo-1", "echo-2", "chat"]


def test_a_fight_pool_is_recycled_by_each_dispatcher_without_replacing_it():
    """No worker serves ``fight``, dispatchers of it do: each recycles its pool (its fight
    processes finish their fights, then stop), the dispatchers themselves stay."""
    clock = task.Clock()
    fakes = Fakes(clock, ["echo-1"])
    roll = Roll(fakes, fakes, clock)
    assert run(clock, roll.run("fight")) == {
        "service": "fight",
        "recycled": ["fight-a-1", "fight-b-1"],
        "fights": 4,
    }
    assert fakes.log == [("recycle", "fight-a"), ("recycle", "fight-b")]


def test_a_dispatcher_that_cannot_recycle_is_reported():
    clock = task.Clock()
    fakes = Fakes(clock, ["echo-1"])
    fakes.dies.add("fight-b")
    failure = run(clock, Roll(fakes, fakes, clock).run("fight"))
    assert isinstance(failure.value, RollError)
    assert "fight-b could not recycle its pool: no answer" in str(failure.value)


def test_a_service_nothing_supervised_serves_is_refused():
    clock = task.Clock()
    fakes = Fakes(clock, ["echo-1"])
    failure = run(clock, Roll(fakes, fakes, clock).run("chat"))
    assert "no supervised mmo-worker or mmo-fight serves 'chat'" in str(failure.value)


class InPlace:
    """Registry and restarter of instances another supervisor runs: a restart gives the
    instance a new pid, listed and ready ``ready_after`` seconds later."""

    def __init__(self, clock: task.Clock, names: list[str], ready_after: float = 1.0) -> None:
        self.clock = clock
        self.pids = {n: 100 + i for i, n in enumerate(names)}
        self.ready_at: dict[str, float] = {}
        self.ready_after = ready_after
        self.log: list[tuple[str, str]] = []
        self.fails: set[str] = set()

    def instances(self, service: str) -> list[str]:
        return sorted(self.pids) if service == "echo" else []

    def pid(self, service: str, instance_id: str) -> int | None:
        return self.pids.get(instance_id)

    def drain(self, service: str, instance_id: str, draining: bool = True) -> defer.Deferred[Any]:
        self.log.append(("drain" if draining else "undrain", instance_id))
        return defer.succeed({"draining": draining})

    def ready(self, service: str, instance_id: str) -> defer.Deferred[bool]:
        return defer.succeed(self.clock.seconds() >= self.ready_at.get(instance_id, 0.0))

    def restart(self, instance_id: str) -> defer.Deferred[Any]:
        self.log.append(("restart", instance_id))
        if instance_id in self.fails:
            return defer.fail(RollError("`systemctl restart` exited with 1: no such unit"))
        self.pids[instance_id] += 1000
        self.ready_at[instance_id] = self.clock.seconds() + self.ready_after
        return defer.succeed(None)


def test_restart_in_place_drains_restarts_and_waits_for_each_in_turn():
    clock = task.Clock()
    fakes = InPlace(clock, ["echo-1", "echo-2"])
    result = run(clock, RestartRoll(fakes, fakes, clock, settle=1.5).run("echo"))
    assert result == {"service": "echo", "restarted": ["echo-1", "echo-2"]}
    assert fakes.log == [
        ("drain", "echo-1"),
        ("restart", "echo-1"),
        ("drain", "echo-2"),
        ("restart", "echo-2"),
    ]


def test_restart_in_place_waits_for_a_new_process_that_is_ready():
    """The next instance is drained only once the restarted one is back, ready."""
    clock = task.Clock()
    fakes = InPlace(clock, ["echo-1", "echo-2"], ready_after=5.0)
    d = RestartRoll(fakes, fakes, clock, settle=0.0).run("echo")
    clock.advance(0)
    clock.advance(4.8)
    assert fakes.log[-1] == ("restart", "echo-1")
    clock.pump([0.2] * 3)
    assert ("drain", "echo-2") in fakes.log
    run(clock, d)


def test_restart_in_place_stops_at_a_failed_restart_or_one_never_ready():
    clock = task.Clock()
    fakes = InPlace(clock, ["echo-1", "echo-2"])
    fakes.fails.add("echo-2")
    failure = run(clock, RestartRoll(fakes, fakes, clock).run("echo"))
    assert "no such unit (restarted before: ['echo-1'])" in str(failure.value)
    assert fakes.log[-1] == ("undrain", "echo-2")  # if it still runs, it serves again
    fakes = InPlace(clock, ["echo-1", "echo-2"], ready_after=100.0)
    failure = run(clock, RestartRoll(fakes, fakes, clock, ready_timeout=10).run("echo"))
    assert "echo-1 was not listed again, ready, with a new process within 10 s" in str(
        failure.value
    )
    assert ("drain", "echo-2") not in fakes.log


def test_restart_in_place_needs_two_instances():
    clock = task.Clock()
    fakes = InPlace(clock, ["echo-1"])
    failure = run(clock, RestartRoll(fakes, fakes, clock).run("echo"))
    assert "'echo' has 1 instance(s): restarting in place needs two at least" in str(failure.value)
    assert fakes.log == []
