"""``twistd mmo-logs``: the log collector."""

from __future__ import annotations

import os
from typing import Any, ClassVar

from twisted.application.service import IService
from typing_extensions import override

from mmo.config import ConfigError
from mmo.logs.config import LogsConfig
from mmo.tap import MemberOptions, exit_if_start_fails


class Options(MemberOptions):
    """Options of ``twistd mmo-logs``."""

    section = "logs"
    config_class = LogsConfig
    optParameters: ClassVar[list[list[Any]]] = [
        *MemberOptions.optParameters,
        ["dir", None, None, "Directory of mmo.log and its rotated files (default ./var/logs)."],
        ["ring", None, None, "Events kept in memory for queries (default 100000)."],
        ["rotate-bytes", None, None, "Rotate mmo.log at this size (default 10485760)."],
        ["keep", None, None, "Rotated files kept (default 10)."],
        ["instance-id", None, None, "Instance id (default: logs-host-pid)."],
        ["bind-host", None, None, "Interface the collector's sockets bind (0.0.0.0: all)."],
        ["advertise-host", None, None, "Host (or interface) the registry lists (default: bind)."],
        ["heartbeat", None, None, "Seconds between registry heartbeats."],
        ["drain-timeout", None, None, "Seconds a graceful stop waits for calls in flight."],
    ]

    @override
    def check(self) -> None:
        """The directory exists and is writable, or can be made."""
        path = os.path.abspath(self.config.dir)
        existing = path
        while not os.path.exists(existing):
            existing = os.path.dirname(existing)
        if not os.path.isdir(existing):
            raise ConfigError("dir", f"{existing} is not a directory")
        if not os.access(existing, os.W_OK | os.X_OK):
            raise ConfigError("dir", f"{existing} is not writable")

    @override
    def build(self) -> IService:
        """The collector's service tree; the process exits (status 1) if it cannot start
        (its directory cannot be written)."""
        from mmo.logs.service import make_logs_service

        tree = make_logs_service(self.config)
        exit_if_start_fails(tree.getServiceNamed("worker"))
        return tree


def makeService(options: Options) -> IService:
    """The service tree built while the options were checked."""
    return options.service
