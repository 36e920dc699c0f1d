"""``twistd mmo-broker``: the edge, where game clients connect."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from twisted.python import usage
from typing_extensions import override

from mmo.broker.config import BrokerConfig
from mmo.service import OrderedMultiService
from mmo.tap import RoleOptions, build_role


class Options(RoleOptions):
    """Options of ``twistd mmo-broker``."""

    section = "broker"
    config_class = BrokerConfig
    multi = ("yellow", "route")
    optParameters: ClassVar[list[list[Any]]] = [
        *RoleOptions.optParameters,
        ["listen", "l", None, "Endpoint for TCP clients, e.g. tcp:6100:interface=127.0.0.1."],
        ["websocket", "w", None, "Endpoint for WebSocket clients."],
        ["instance-id", None, None, "Instance id (default: $MMO_NAME or broker-host-pid)."],
        ["bind-host", None, None, "Interface of the internal endpoint (default: advertised)."],
        ["advertise-host", None, None, "Host (or interface) workers reach this broker at."],
        ["public-host", None, None, "Host clients are told (default: the listen interface)."],
        ["tls-cert", None, None, "PEM certificate file: the client listeners speak TLS."],
        ["tls-key", None, None, "PEM private key file of --tls-cert."],
        ["login-route", None, None, "Route of the login request (default sso.login)."],
        ["max-frame", None, None, "Largest client frame, in bytes."],
        ["capacity", None, None, "Sessions this broker takes."],
        ["max-per-address", None, None, "Connections one client IP may hold (0: no cap)."],
        ["idle-timeout", None, None, "Seconds without a packet before closing."],
        ["login-timeout", None, None, "Seconds a new connection has to log in."],
        ["rate", None, None, "Packets per second a session may send."],
        ["burst", None, None, "Packets a session may send at once."],
        ["listen-routes", None, None, "Routes TCP clients may use: patterns, comma-separated."],
        ["websocket-routes", None, None, "Routes WebSocket clients may use (patterns)."],
        ["max-channels", None, None, "Channels one session may be in."],
        ["channel-budget", None, None, "Bytes/s one channel's broadcasts may fan out here."],
        ["sender-rate", None, None, "Broadcasts/s one sender may cause here."],
        ["sender-burst", None, None, "Broadcasts one sender may cause at once here."],
    ]

    def opt_yellow(self, address: str) -> None:
        """Yellow address (repeat, or separate with commas, for several)."""
        self["yellow"].extend(a.strip() for a in address.split(",") if a.strip())

    def opt_route(self, mapping: str) -> None:
        """Route prefix to service, PREFIX=SERVICE (repeat for several)."""
        prefix, eq, service = mapping.partition("=")
        if not eq or not prefix.strip() or not service.strip():
            raise usage.UsageError(f"--route takes PREFIX=SERVICE, not {mapping!r}")
        self["route"].append((prefix.strip(), service.strip()))

    @override
    def postOptions(self) -> None:
        """Routes from the command line join those of the file."""
        routes = dict(self["route"])
        self["route"] = []
        super().postOptions()
        if routes:
            self.config = dataclasses.replace(self.config, routes={**self.config.routes, **routes})


def makeService(options: Options) -> OrderedMultiService:
    """Build the broker service tree from parsed options (a ConfigError, such as a
    missing token key, ends the process with its message)."""
    from mmo.broker.service import make_broker_service

    return build_role("mmo-broker", lambda: make_broker_service(options.config))
