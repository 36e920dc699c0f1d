"""``twistd mmo-broker``: the edge, where game clients connect."""

from __future__ import annotations

from typing import Any, ClassVar

from twisted.application.service import IService
from typing_extensions import override

from mmo.broker.config import BrokerConfig
from mmo.config import ConfigError
from mmo.tap import MemberOptions


class Options(MemberOptions):
    """Options of ``twistd mmo-broker``."""

    section = "broker"
    config_class = BrokerConfig
    pairs = {"route": "routes", "serve": "serve"}
    optParameters: ClassVar[list[list[Any]]] = [
        *MemberOptions.optParameters,
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
        ["trace-sample", None, None, "Share of requests traced at every hop (0 to 1)."],
    ]

    def opt_route(self, mapping: str) -> None:
        """Route prefix to service, PREFIX=SERVICE (repeat for several)."""
        self.add_pair("route", mapping)

    def opt_serve(self, mapping: str) -> None:
        """Host a handler in this process, SERVICE=module:Class (repeat for several)."""
        self.add_pair("serve", mapping)

    @override
    def check(self) -> None:
        """Every hosted handler loads."""
        from mmo.logic.runtime import load_handler

        for service, path in self.config.serve.items():
            try:
                load_handler(path)
            except Exception as e:
                raise ConfigError(f"serve.{service}", f"{path}: {e}") from e

    @override
    def build(self) -> IService:
        """The broker's service tree (a missing token key is a usage error)."""
        from mmo.broker.service import make_broker_service

        return make_broker_service(self.config)


def makeService(options: Options) -> IService:
    """The service tree built while the options were checked."""
    return options.service
