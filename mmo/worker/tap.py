"""``twistd mmo-worker``: run one logic service."""

from __future__ import annotations

from typing import Any, ClassVar

from twisted.application.service import IService
from typing_extensions import override

from mmo.tap import MemberOptions, exit_if_start_fails
from mmo.worker.config import WorkerConfig


class Options(MemberOptions):
    """Options of ``twistd mmo-worker``."""

    section = "worker"
    config_class = WorkerConfig
    pairs = {"set": "settings"}
    optParameters: ClassVar[list[list[Any]]] = [
        *MemberOptions.optParameters,
        ["service", "s", None, "Service name to register under."],
        ["handler", None, None, "Handler class, module:Class."],
        ["instance-id", None, None, "Instance id (default: service-host-pid)."],
        ["bind-host", None, None, "Interface the worker's sockets bind (0.0.0.0: all)."],
        ["advertise-host", None, None, "Host (or interface) the registry lists (default: bind)."],
        ["heartbeat", None, None, "Seconds between registry heartbeats."],
        ["drain-timeout", None, None, "Seconds a graceful stop waits for calls in flight."],
        ["database", None, None, "Database URL: sqlite:///PATH.db or postgresql://..."],
        [
            "cache",
            None,
            None,
            "Cache URL: memory://, redis://, redis-shards://, sentinel://, twemproxy://",
        ],
        ["memo-ttl", None, None, "Seconds replies are kept for resent client requests (0: off)."],
        ["memo-size", None, None, "Most replies kept for resent client requests."],
    ]

    def opt_set(self, assignment: str) -> None:
        """A handler setting, NAME=VALUE (repeat for several; see the handler's Settings)."""
        self.add_pair("set", assignment)

    @override
    def check(self) -> None:
        """The handler imports and takes its settings."""
        from mmo.logic.runtime import handler_settings, load_handler

        self.handler_class = load_handler(self.config.handler)
        handler_settings(self.handler_class, self.config.settings)

    @override
    def build(self) -> IService:
        """The worker's service tree; the process exits (status 1) if the worker cannot
        start (its database never answers, its handler fails to start)."""
        from mmo.worker.service import make_worker_service

        tree = make_worker_service(self.config, handler_class=self.handler_class)
        exit_if_start_fails(tree.getServiceNamed("worker"))
        return tree


def makeService(options: Options) -> IService:
    """The service tree built while the options were checked."""
    return options.service
