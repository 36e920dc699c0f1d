"""ChildProcess: spawning, restarts with backoff, gentle stops, output, with no real process.

The reactor is a ``task.Clock`` that also spawns: each ``spawnProcess`` gives a fake
process transport recording the signals sent to it, and the test ends the process by
handing its protocol the ``processEnded`` reason Twisted would.
"""

from __future__ import annotations

import signal
import sys
from typing import Any

import pytest
from twisted.internet import error, task
from twisted.python.failure import Failure

from mmo.process import ChildProcess, twistd_argv

ARGV = ["/usr/bin/game-server", "--port", "7000"]


class FakeProcess:
    """What ``spawnProcess`` returns: a pid, and the signals sent to it."""

    def __init__(self, reactor: SpawningClock, protocol: Any, pid: int) -> None:
        self.reactor = reactor
        self.protocol = protocol
        self.pid = pid
        self.signals: list[int] = []
        self.exited = False

    def signalProcess(self, sig: int) -> None:
        if self.exited:
            raise error.ProcessExitedAlready()
        self.signals.append(sig)

    def exit(self, code: int | None = 1, sig: int | None = None) -> None:
        """End the process as Twisted reports it: ``processEnded`` with the exit status."""
        self.exited = True
        if code == 0 and sig is None:
            reason = Failure(error.ProcessDone(0))
        else:
            reason = Failure(error.ProcessTerminated(exitCode=code, signal=sig))
        self.protocol.processEnded(reason)


class SpawningClock(task.Clock):
    """A Clock that records what it spawns."""

    def __init__(self) -> None:
        super().__init__()
        self.spawned: list[dict[str, Any]] = []
        self.processes: list[FakeProcess] = []

    def spawnProcess(self, protocol: Any, executable: str, args: list[str], **kw: Any) -> Any:
        self.spawned.append({"executable": executable, "args": args, **kw})
        proc = FakeProcess(self, protocol, 100 + len(self.processes))
        self.processes.append(proc)
        protocol.makeConnection(proc)
        return proc

    @property
    def current(self) -> FakeProcess:
        """The process spawned last."""
        return self.processes[-1]


@pytest.fixture
def reactor() -> SpawningClock:
    """A Clock that spawns fake processes."""
    return SpawningClock()


def child(reactor: SpawningClock, **kwargs: Any) -> ChildProcess:
    """A started ChildProcess of ARGV on the fake reactor."""
    kwargs.setdefault("sink", lambda name, line: None)
    service = ChildProcess("game-1", ARGV, reactor=reactor, **kwargs)
    service.startService()
    return service


def respawn_delays(reactor: SpawningClock, service: ChildProcess, deaths: int) -> list[float]:
    """Kill the child ``deaths`` times at once after each start; the delay before each
    restart, measured on the clock."""
    delays = []
    for _ in range(deaths):
        reactor.current.exit(1)
        (pending,) = reactor.getDelayedCalls()
        delays.append(pending.getTime() - reactor.seconds())
        reactor.advance(delays[-1])
    return delays


def test_start_spawns_the_argv_without_a_shell_with_its_name(reactor: SpawningClock) -> None:
    """Starting spawns argv[0] with argv as given, the environment plus MMO_NAME and
    unbuffered output, stdin writable and stdout/stderr read; pid is the child's."""
    service = child(reactor, env={"EXTRA": "1"})
    (spawn,) = reactor.spawned
    assert spawn["executable"] == ARGV[0] and spawn["args"] == ARGV
    env = spawn["env"]
    assert (env["MMO_NAME"], env["PYTHONUNBUFFERED"], env["EXTRA"]) == ("game-1", "1", "1")
    assert env["PATH"]  # the supervisor's environment is passed on
    assert spawn["childFDs"] == {0: "w", 1: "r", 2: "r"}
    assert service.pid == 100


def test_a_dead_child_is_restarted_with_a_backoff_that_doubles_up_to_the_max(
    reactor: SpawningClock,
) -> None:
    """Each death in a row waits twice as long before the restart, capped at backoff_max;
    every restart is counted."""
    service = child(reactor, backoff_max=5.0)
    assert respawn_delays(reactor, service, 6) == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]
    assert len(reactor.spawned) == 7 and service.restarts == 6
    assert service.pid == reactor.current.pid


def test_a_child_that_ran_well_for_a_while_restarts_quickly_again(reactor: SpawningClock) -> None:
    """After a run of more than ten seconds, the next death restarts after the first delay."""
    service = child(reactor)
    assert respawn_delays(reactor, service, 3) == [0.5, 1.0, 2.0]
    reactor.advance(11)
    assert respawn_delays(reactor, service, 2) == [0.5, 1.0]


def test_nothing_runs_while_waiting_to_restart(reactor: SpawningClock) -> None:
    """Between a death and its restart the service has no child (no pid), and the restart
    comes only when the delay has passed."""
    service = child(reactor)
    reactor.current.exit(3)
    assert service.pid is None
    reactor.advance(0.49)
    assert len(reactor.spawned) == 1
    reactor.advance(0.01)
    assert len(reactor.spawned) == 2 and service.pid == 101


def test_without_restart_a_dead_child_stays_dead(reactor: SpawningClock) -> None:
    """restart=False: a child that exits is not spawned again."""
    service = child(reactor, restart=False)
    reactor.current.exit(1)
    reactor.advance(60)
    assert len(reactor.spawned) == 1 and service.restarts == 0 and service.pid is None


def test_stop_sends_sigterm_and_fires_when_the_child_exits(reactor: SpawningClock) -> None:
    """stopService sends SIGCONT then SIGTERM (a stopped child must wake to handle it), and
    its Deferred fires once the child has exited; no SIGKILL follows, no restart either."""
    service = child(reactor, stop_timeout=15.0)
    proc = reactor.current
    stopped = service.stopService()
    assert proc.signals == [signal.SIGCONT, signal.SIGTERM]
    assert not stopped.called
    reactor.advance(3)
    proc.exit(0)
    assert stopped.called
    reactor.advance(60)
    assert proc.signals == [signal.SIGCONT, signal.SIGTERM]
    assert len(reactor.spawned) == 1


def test_a_child_that_ignores_sigterm_is_killed_after_the_stop_timeout(
    reactor: SpawningClock,
) -> None:
    """If the child has not exited stop_timeout seconds after SIGTERM, it gets SIGKILL;
    the stop completes when it is gone."""
    service = child(reactor, stop_timeout=15.0)
    proc = reactor.current
    stopped = service.stopService()
    reactor.advance(14.9)
    assert signal.SIGKILL not in proc.signals
    reactor.advance(0.1)
    assert proc.signals[-1] == signal.SIGKILL
    assert not stopped.called
    proc.exit(None, sig=signal.SIGKILL)
    assert stopped.called and len(reactor.spawned) == 1


def test_stopping_while_waiting_to_restart_cancels_the_restart(reactor: SpawningClock) -> None:
    """A stop during the backoff wait completes at once and nothing is spawned later."""
    service = child(reactor)
    reactor.current.exit(1)
    stopped = service.stopService()
    assert stopped.called
    reactor.advance(60)
    assert len(reactor.spawned) == 1 and reactor.getDelayedCalls() == []


def test_a_child_gone_before_the_signal_is_no_error(reactor: SpawningClock) -> None:
    """A child that exits just as it is signalled (ProcessExitedAlready) stops cleanly."""
    service = child(reactor)
    proc = reactor.current
    proc.exited = True  # gone, its end not yet reported
    stopped = service.stopService()
    proc.protocol.processEnded(Failure(error.ProcessDone(0)))
    assert stopped.called and proc.signals == []


def test_output_is_passed_on_line_by_line_under_the_childs_name(reactor: SpawningClock) -> None:
    """Output is split into lines across chunks, from stdout and stderr, its own leading
    timestamp dropped; a last line without a newline is passed on when the child ends."""
    lines: list[tuple[str, str]] = []
    child(reactor, sink=lambda name, line: lines.append((name, line)), restart=False)
    protocol = reactor.current.protocol
    protocol.childDataReceived(1, b"2024-05-01T10:00:00+0000 [worker] listening\nhal")
    protocol.childDataReceived(2, b"oops\n")
    protocol.childDataReceived(1, b"f a line\nno newline")
    reactor.current.exit(0)
    assert lines == [
        ("game-1", "[worker] listening"),
        ("game-1", "oops"),
        ("game-1", "half a line"),
        ("game-1", "no newline"),
    ]


def test_twistd_argv_runs_the_role_through_the_launcher() -> None:
    """twistd_argv runs ``twistd -n --pidfile= <role> args`` with this interpreter, by way
    of mmo.process.launch (own session, stopped with its supervisor)."""
    argv = twistd_argv("mmo-worker", ["--service", "echo"])
    assert argv[:3] == [sys.executable, "-m", "mmo.process.launch"]
    assert argv[-5:] == ["-n", "--pidfile=", "mmo-worker", "--service", "echo"]
