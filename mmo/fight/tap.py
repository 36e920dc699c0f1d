"""``twistd mmo-fight``: the fight dispatcher and its pool of fight processes."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from twisted.application.service import IService
from typing_extensions import override

from mmo.config import ConfigError
from mmo.fight.config import FightConfig
from mmo.tap import MemberOptions, exit_if_start_fails, inherit_ops


class Options(MemberOptions):
    """Options of ``twistd mmo-fight``."""

    section = "fight"
    config_class = FightConfig
    multi = ("yellow", "worker-arg")
    optParameters: ClassVar[list[list[Any]]] = [
        *MemberOptions.optParameters,
        ["handler", None, None, "Fight processes' handler class, module:Class (a FightHandler)."],
        ["cap", None, None, "Players one fight process holds at most."],
        ["min-spare", None, None, "Ready fight processes with room kept (default 1)."],
        ["max-processes", None, None, "Fight processes alive at once, at most (default 16)."],
        ["max-starting", None, None, "Fight processes starting at once, at most (default 2)."],
        ["orphan-timeout", None, None, "Seconds an orphaned process waits to be adopted (60)."],
        ["idle-timeout", None, None, "Seconds an idle process above the spares lives (60)."],
        ["reservation-timeout", None, None, "Seconds a fight's players have to arrive (15)."],
        ["drain-timeout", None, None, "Seconds a graceful stop lets fights go on (60)."],
        ["start-timeout", None, None, "Seconds a new fight process has to register (30)."],
        ["stop-timeout", None, None, "Seconds between SIGTERM and SIGKILL of a child (10)."],
        ["service", "s", None, "Service name of the dispatcher (default fight)."],
        ["worker-service", None, None, "Service name of the fight processes (fight-worker)."],
        ["process-prefix", None, None, "Fight processes are named PREFIX-1, PREFIX-2, ..."],
        ["instance-id", None, None, "Instance id (default: $MMO_NAME or service-host-pid)."],
        ["bind-host", None, None, "Interface the sockets bind (0.0.0.0: all)."],
        ["advertise-host", None, None, "Host (or interface) the registry lists (default: bind)."],
        ["heartbeat", None, None, "Seconds between registry heartbeats."],
    ]

    def opt_worker_arg(self, arg: str) -> None:
        """An extra argument for each fight process's mmo-worker (repeat for several)."""
        self["worker-arg"].append(arg)

    @override
    def merge(self, values: dict[str, Any]) -> dict[str, Any]:
        """``--worker-arg`` replaces the file's ``worker-args``."""
        values = super().merge(values)
        worker_args = values.pop("worker-arg", None)
        if worker_args:
            values.pop("worker_args", None)
            values["worker-args"] = worker_args
        return values

    @override
    def check(self) -> None:
        """The fight handler imports, is a FightHandler and takes FightSettings."""
        from mmo.fight.handler import FightHandler, FightSettings
        from mmo.logic.runtime import load_handler

        handler = load_handler(self.config.handler)
        if not issubclass(handler, FightHandler):
            raise ConfigError(
                "handler", f"{self.config.handler!r} is not a mmo.fight.FightHandler subclass"
            )
        if not issubclass(handler.Settings, FightSettings):
            raise ConfigError(
                "handler",
                f"the Settings of {self.config.handler!r} must subclass mmo.fight.FightSettings",
            )

    @override
    def build(self) -> IService:
        """The dispatcher's service tree; the process exits (status 1) if it cannot start."""
        from mmo.fight.service import make_fight_service

        # Its fight processes get an operator listener and log format like its own.
        worker_args = inherit_ops(self.ops, self.config.worker_args)
        tree = make_fight_service(dataclasses.replace(self.config, worker_args=worker_args))
        exit_if_start_fails(tree.getServiceNamed("worker"))
        return tree


def makeService(options: Options) -> IService:
    """The service tree built while the options were checked."""
    return options.service
