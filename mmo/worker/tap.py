"""``twistd mmo-worker``: run one logic service."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from twisted.application.service import MultiService
from twisted.python import usage
from typing_extensions import override

from mmo.config import ConfigError
from mmo.tap import RoleOptions, build_role
from mmo.worker.config import WorkerConfig


class Options(RoleOptions):
    """Options of ``twistd mmo-worker``."""

    section = "worker"
    config_class = WorkerConfig
    multi = ("yellow", "set")
    optParameters: ClassVar[list[list[Any]]] = [
        *RoleOptions.optParameters,
        ["service", "s", None, "Service name to register under."],
        ["handler", None, None, "Handler class, module:Class."],
        ["instance-id", None, None, "Instance id (default: service-host-pid)."],
        ["bind-host", None, None, "Interface the worker's sockets bind (0.0.0.0: all)."],
        ["advertise-host", None, None, "Host (or interface) the registry lists (default: bind)."],
        ["heartbeat", None, None, "Seconds between registry heartbeats."],
        ["drain-timeout", None, None, "Seconds a graceful stop waits for calls in flight."],
        ["database", None, None, "Database URL: sqlite:///PATH.db or postgresql://..."],
        ["cache", None, None, "Cache URL: memory://, redis://HOST:PORT/DB, redis-shards://..."],
        ["memo-ttl", None, None, "Seconds replies are kept for resent client requests (0: off)."],
        ["memo-size", None, None, "Most replies kept for resent client requests."],
    ]

    def opt_yellow(self, address: str) -> None:
        """Yellow address (repeat, or separate with commas, for several)."""
        self["yellow"].extend(a.strip() for a in address.split(",") if a.strip())

    def opt_set(self, assignment: str) -> None:
        """A handler setting, NAME=VALUE (repeat for several; see the handler's Settings)."""
        name, eq, value = assignment.partition("=")
        if not eq or not name.strip():
            raise usage.UsageError(f"--set takes NAME=VALUE, not {assignment!r}")
        self["set"].append((name.strip(), value.strip()))

    @override
    def postOptions(self) -> None:
        """Build the config, check the handler imports and its settings fit, before
        anything starts."""
        assignments = dict(self["set"])
        self["set"] = []
        super().postOptions()
        if assignments:
            self.config = dataclasses.replace(
                self.config, settings={**self.config.settings, **assignments}
            )
        from mmo.worker.service import handler_settings, load_handler

        try:
            self.handler_class = load_handler(self.config.handler)
            handler_settings(self.handler_class, self.config.settings)
        except ConfigError as e:
            raise usage.UsageError(str(e)) from e


def makeService(options: Options) -> MultiService:
    """Build the worker service tree from parsed options.

    A ConfigError raised while building it (a handler refusing its environment,
    e.g. sso without ``$MMO_AUTH_KEY``) ends the process with that message, not a traceback.
    """
    from mmo.worker.service import make_worker_service

    return build_role(
        "mmo-worker",
        lambda: make_worker_service(options.config, handler_class=options.handler_class),
    )
