"""Supervised child processes, spawned with Twisted's process support (no shell): what
mmo-cluster runs its children with and the fight dispatcher its fight processes."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from twisted.application.service import Service
from twisted.internet import defer, error, protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from typing_extensions import override

from mmo.types import DelayedCall

log = Logger()

_TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4} ")


def twistd_argv(role: str, args: Sequence[str]) -> list[str]:
    """The argv running ``twistd -n <role> args`` with this interpreter, through
    :mod:`mmo.process.launch` (own session, stopped if the supervisor dies)."""
    script = Path(sys.executable).with_name("twistd")
    head = (
        [str(script)]
        if script.exists()
        else [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]
    )
    launch = [sys.executable, "-m", "mmo.process.launch"]
    return [*launch, *head, "-n", "--pidfile=", role, *args]


class _ChildProtocol(protocol.ProcessProtocol):
    """Logs a child's output line by line under its name; reports its end."""

    def __init__(self, child: ChildProcess) -> None:
        self.child = child
        self._partial = {1: b"", 2: b""}

    @override
    def childDataReceived(self, childFD: int, data: bytes) -> None:
        """Split output into lines and hand each to the child's sink."""
        lines = (self._partial.get(childFD, b"") + data).split(b"\n")
        self._partial[childFD] = lines.pop()
        for line in lines:
            self.child.output(line.decode(errors="replace"))

    @override
    def processEnded(self, reason: Failure) -> None:
        """Flush what is left and tell the child service."""
        for rest in self._partial.values():
            if rest:
                self.child.output(rest.decode(errors="replace"))
        self.child.ended(reason)


class ChildProcess(Service):
    """One child process: started with the service, restarted with backoff, stopped gently.

    Args:
        name: how the child is named in logs.
        argv: the program and its arguments (run directly, never through a shell).
        restart: restart the child when it exits while the service runs.
        stop_timeout: seconds between SIGTERM and SIGKILL when stopping.
        backoff_max: the longest wait before a restart.
        reactor: the reactor (global one if None).
        sink: called with each line of output (default: logged with the child's name).
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        restart: bool = True,
        stop_timeout: float = 15.0,
        backoff_max: float = 30.0,
        env: dict[str, str] | None = None,
        reactor: Any = None,
        sink: Any = None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.reactor = reactor
        self.name = name
        self.argv = list(argv)
        self.restart = restart
        self.stop_timeout = stop_timeout
        self.backoff_max = backoff_max
        #: Variables the child gets over this process's environment as it is at each
        #: spawn; MMO_NAME: the child's name, which roles use as their default instance id.
        self.env = {"PYTHONUNBUFFERED": "1", "MMO_NAME": name, **(env or {})}
        self.sink = sink
        self.transport: Any = None
        self.restarts = 0
        self._backoff = 0.5
        self._started_at = 0.0
        self._restart_call: DelayedCall | None = None
        self._exited: defer.Deferred[None] | None = None

    @property
    def pid(self) -> int | None:
        """The running child's pid, if any."""
        return self.transport.pid if self.transport is not None else None

    @override
    def startService(self) -> None:
        """Spawn the child."""
        super().startService()
        self._spawn()

    def _spawn(self) -> None:
        self._restart_call = None
        self._started_at = self.reactor.seconds()
        self._exited = defer.Deferred()
        self.transport = self.reactor.spawnProcess(
            _ChildProtocol(self),
            self.argv[0],
            self.argv,
            env={**os.environ, **self.env},
            childFDs={0: "w", 1: "r", 2: "r"},
        )
        log.info("cluster: started {name} (pid {pid})", name=self.name, pid=self.transport.pid)

    def output(self, line: str) -> None:
        """One line the child printed (its own timestamp dropped: ours is enough)."""
        line = _TIMESTAMP.sub("", line, count=1)
        if self.sink is not None:
            self.sink(self.name, line)
        else:
            log.info("[{name}] {line}", name=self.name, line=line)

    def ended(self, reason: Failure) -> None:
        """The child exited: restart it (with backoff) if it should still run."""
        self.transport = None
        exited, self._exited = self._exited, None
        if exited is not None:
            exited.callback(None)
        code = getattr(reason.value, "exitCode", None)
        sig = getattr(reason.value, "signal", None)
        if not self.running or not self.restart:
            log.info(
                "cluster: {name} exited (code {code}, signal {sig})",
                name=self.name,
                code=code,
                sig=sig,
            )
            return
        if self.reactor.seconds() - self._started_at > 10:
            self._backoff = 0.5  # it ran well for a while: start the backoff afresh
        delay = self._backoff
        self._backoff = min(self._backoff * 2, self.backoff_max)
        self.restarts += 1
        log.warn(
            "cluster: {name} died (code {code}, signal {sig}); restarting in {delay:.1f}s",
            name=self.name,
            code=code,
            sig=sig,
            delay=delay,
        )
        self._restart_call = self.reactor.callLater(delay, self._spawn)

    @override
    def stopService(self) -> defer.Deferred[None]:
        """SIGTERM the child; SIGKILL it if it has not exited after ``stop_timeout``."""
        super().stopService()
        if self._restart_call is not None and self._restart_call.active():
            self._restart_call.cancel()
        if self.transport is None or self._exited is None:
            return defer.succeed(None)
        exited = self._exited
        self._signal(signal.SIGCONT)
        self._signal(signal.SIGTERM)
        killer = self.reactor.callLater(self.stop_timeout, self._signal, signal.SIGKILL)

        def done(_: Any) -> None:
            if killer.active():
                killer.cancel()

        return exited.addCallback(done)

    def _signal(self, sig: int) -> None:
        if self.transport is not None:
            with contextlib.suppress(error.ProcessExitedAlready):
                self.transport.signalProcess(sig)
