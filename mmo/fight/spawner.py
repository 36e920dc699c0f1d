"""Fight processes as real children: ``twistd -n mmo-worker`` through Twisted's
``spawnProcess`` (no shell), each in its own session (a Ctrl-C at the dispatcher's
terminal reaches only the dispatcher, which stops them in order).

Unlike ``mmo-cluster``'s children they outlive a dispatcher that dies without a
graceful stop: their fights go on, and a restarted dispatcher (or another one)
adopts them (:class:`AdoptedProcess`). One that nobody adopts stops by itself after
``orphan-timeout`` (:meth:`mmo.fight.FightHandler.check_orphaned`).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from pathlib import Path
from typing import Any

from twisted.internet import defer
from twisted.python.failure import Failure
from typing_extensions import override

from mmo.fight.config import FightConfig
from mmo.fight.pool import ExitCallback
from mmo.process import ChildProcess, twistd_argv

#: Run in a new session, then exec the rest of the command line (no parent-death
#: signal, unlike :mod:`mmo.process.launch`: a fight process outlives a crashed dispatcher).
_DETACH = "import os, sys; os.setsid(); os.execv(sys.argv[1], sys.argv[1:])"
_LAUNCH = [sys.executable, "-m", "mmo.process.launch"]


def describe_exit(reason: Failure) -> str:
    """``exited with code 3`` or ``was killed by signal 9``, from ``processEnded``'s reason."""
    sig = getattr(reason.value, "signal", None)
    if sig:
        return f"was killed by signal {sig}"
    return f"exited with code {getattr(reason.value, 'exitCode', None)}"


class FightChild(ChildProcess):
    """One fight process: never restarted by itself (the pool decides), reports its exit.

    Args:
        name: its instance id (also its ``$MMO_NAME`` and log prefix).
        argv: the command line.
        on_exit: called as ``on_exit(name, description)`` once it has exited.
        kwargs: the rest of :class:`ChildProcess`'s arguments.
    """

    def __init__(self, name: str, argv: list[str], on_exit: ExitCallback, **kwargs: Any) -> None:
        super().__init__(name, argv, restart=False, **kwargs)
        self.instance_id = name
        self.on_exit = on_exit

    @override
    def ended(self, reason: Failure) -> None:
        """Log the exit, then tell the pool (processEnded: at once, also after kill -9)."""
        super().ended(reason)
        self.on_exit(self.instance_id, describe_exit(reason))

    def terminate(self) -> defer.Deferred[None]:
        """SIGTERM (the worker drains), SIGKILL after the stop timeout; fires on exit."""
        if not self.running:
            return defer.succeed(None)
        return self.stopService()

    def kill(self) -> None:
        """SIGKILL now."""
        self._signal(signal.SIGKILL)


class ProcessSpawner:
    """Starts fight processes for a dispatcher.

    Args:
        config: the dispatcher's config (yellows, handler, names, timeouts, extra args).
        dispatcher_id: the dispatcher's instance id (fight processes call it back).
        reactor: the reactor (global one if None).
    """

    def __init__(self, config: FightConfig, dispatcher_id: str, reactor: Any = None) -> None:
        self.config = config
        self.dispatcher_id = dispatcher_id
        self.reactor = reactor

    def argv(self, instance_id: str) -> list[str]:
        """The command line of fight process ``instance_id``."""
        config = self.config
        args = [
            "--yellow",
            ",".join(config.yellow),
            "--handler",
            config.handler,
            "--service",
            config.worker_service,
            "--instance-id",
            instance_id,
            *(["--bind-host", config.bind_host] if config.bind_host else []),
            *(["--advertise-host", config.advertise_host] if config.advertise_host else []),
            *("--set", f"dispatcher={config.service}"),
            *("--set", f"dispatcher-id={self.dispatcher_id}"),
            *("--set", f"cap={config.cap}"),
            *("--set", f"orphan-timeout={config.orphan_timeout:g}"),
            *config.worker_args,
        ]
        argv = twistd_argv("mmo-worker", args)
        assert argv[: len(_LAUNCH)] == _LAUNCH
        return [sys.executable, "-c", _DETACH, *argv[len(_LAUNCH) :]]

    def spawn(self, instance_id: str, on_exit: ExitCallback) -> FightChild:
        """Start fight process ``instance_id``."""
        child = FightChild(
            instance_id,
            self.argv(instance_id),
            on_exit,
            stop_timeout=self.config.stop_timeout,
            reactor=self.reactor,
        )
        child.startService()
        return child


def runs_instance(pid: int, instance_id: str) -> bool:
    """Whether process ``pid`` runs on this machine as fight process ``instance_id`` (its
    command line says so): a registry record's pid is signalled only then."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"--instance-id" in argv and instance_id.encode() in argv


class AdoptedProcess:
    """A fight process this dispatcher did not start, adopted: stopped with signals to
    its pid (checked with :func:`runs_instance`); its end is learnt from the registry.

    Args:
        instance_id: its instance id.
        pid: its process id.
        stop_timeout: seconds between SIGTERM and SIGKILL.
        reactor: the reactor (global one if None).
    """

    def __init__(
        self, instance_id: str, pid: int, stop_timeout: float = 10.0, reactor: Any = None
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor
        self.instance_id = instance_id
        self._pid: int | None = pid
        self.stop_timeout = stop_timeout
        self.reactor = reactor
        self._gone: defer.Deferred[None] = defer.Deferred()

    @property
    def pid(self) -> int | None:
        """Its process id, until it is gone."""
        return self._pid

    def terminate(self) -> defer.Deferred[None]:
        """SIGTERM (the worker drains), SIGKILL after the stop timeout; fires once the
        registry has dropped it."""
        if self._gone.called:
            return defer.succeed(None)
        self._signal(signal.SIGTERM)
        killer = self.reactor.callLater(self.stop_timeout, self._signal, signal.SIGKILL)
        gone: defer.Deferred[None] = defer.Deferred()

        def done(result: Any) -> Any:
            if killer.active():
                killer.cancel()
            gone.callback(None)
            return result

        self._gone.addBoth(done)
        return gone

    def kill(self) -> None:
        """SIGKILL now."""
        self._signal(signal.SIGKILL)

    def exited(self) -> None:
        """The registry dropped it: it is gone."""
        self._pid = None
        if not self._gone.called:
            self._gone.callback(None)

    def _signal(self, sig: int) -> None:
        pid = self._pid
        if pid is not None and runs_instance(pid, self.instance_id):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
