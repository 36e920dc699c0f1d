"""``twistd mmo-fight``: the fight dispatcher and its pool of fight processes."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from twisted.application.service import MultiService
from twisted.python import usage
from typing_extensions import override

from mmo.config import ConfigError
from mmo.fight.config import FightConfig
from mmo.tap import RoleOptions, build_role


class Options(RoleOptions):
    """Options of ``twistd mmo-fight``."""

    section = "fight"
    config_class = FightConfig
    multi = ("yellow",)
    optParameters: ClassVar[list[list[Any]]] = [
        *RoleOptions.optParameters,
        ["handler", None, None, "Fight processes' handler class, module:Class (a FightHandler)."],
        ["cap", None, None, "Players one fight process holds at most."],
        ["min-spare", None, None, "Ready fight processes with room kept (default 1)."],
        ["max-processes", None, None, "Fight processes alive at once, at most (default 16)."],
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

    def __init__(self) -> None:
        super().__init__()
        self["worker-arg"] = []

    def opt_yellow(self, address: str) -> None:
        """Yellow address (repeat, or separate with commas, for several)."""
        self["yellow"].extend(a.strip() for a in address.split(",") if a.strip())

    def opt_worker_arg(self, arg: str) -> None:
        """An extra argument for each fight process's mmo-worker (repeat for several)."""
        self["worker-arg"].append(arg)

    @override
    def postOptions(self) -> None:
        """Build the config and check the fight handler imports, before anything starts."""
        super().postOptions()
        if self["worker-arg"]:
            self.config = dataclasses.replace(self.config, worker_args=tuple(self["worker-arg"]))
        from mmo.fight.handler import FightHandler
        from mmo.worker.service import load_handler

        try:
            handler = load_handler(self.config.handler)
            if not issubclass(handler, FightHandler):
                raise ConfigError(
                    "handler", f"{self.config.handler!r} is not a mmo.fight.FightHandler subclass"
                )
        except ConfigError as e:
            raise usage.UsageError(str(e)) from e


def makeService(options: Options) -> MultiService:
    """Build the dispatcher's service tree from parsed options."""
    from mmo.fight.service import make_fight_service

    return build_role("mmo-fight", lambda: make_fight_service(options.config))
