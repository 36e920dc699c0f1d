"""Fight processes as real children: ``twistd -n mmo-worker`` through Twisted's
``spawnProcess`` (no shell), by way of :mod:`mmo.process.launch` so that none
outlives a killed dispatcher."""

from __future__ import annotations

import signal
from typing import Any

from twisted.internet import defer
from twisted.python.failure import Failure
from typing_extensions import override

from mmo.fight.config import FightConfig
from mmo.fight.pool import ExitCallback
from mmo.process import ChildProcess, twistd_argv


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
            *config.worker_args,
        ]
        return twistd_argv("mmo-worker", args)

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
