"""The service tree of a broker: registry, directory, core, client listeners."""

from __future__ import annotations

import os
from typing import Any

from twisted.application import strports
from twisted.application.service import Service
from twisted.internet import defer, protocol
from twisted.web.server import Request, Site
from twisted.web.websocket import WebSocketResource
from typing_extensions import override

from mmo.broker.config import BrokerConfig
from mmo.broker.connection import TCPClientProtocol, WebSocketClientProtocol
from mmo.broker.core import Broker
from mmo.data import tokens
from mmo.logic.client import Directory
from mmo.logic.sessions import BROKER_SERVICE
from mmo.registry import Registration, default_instance_id, make_instance
from mmo.service import OrderedMultiService
from mmo.zmq import ZmqContextService


class TCPClientFactory(protocol.Factory):
    """Builds a :class:`TCPClientProtocol` per client."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker

    @override
    def buildProtocol(self, addr: Any) -> TCPClientProtocol:
        """One protocol per connection."""
        return TCPClientProtocol(self.broker)


class WebSocketClientFactory:
    """Builds a :class:`WebSocketClientProtocol` per WebSocket client."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker

    def buildProtocol(self, request: Request) -> WebSocketClientProtocol:
        """One protocol per WebSocket."""
        peer = request.getClientAddress()
        return WebSocketClientProtocol(
            self.broker, f"{getattr(peer, 'host', '?')}:{getattr(peer, 'port', '?')}"
        )


#: Pending connections the listening socket holds (Twisted's default, 50, drops
#: connection attempts under a burst of logins: each then waits a 1 s SYN retry).
BACKLOG = 1024


def with_backlog(description: str) -> str:
    """A ``tcp:`` endpoint description with a listen backlog, unless it names one."""
    if description.startswith("tcp:") and "backlog=" not in description:
        return f"{description}:backlog={BACKLOG}"
    return description


def _port_of(description: str) -> str:
    """The port number in a ``tcp:PORT:...`` endpoint description."""
    parts = description.split(":")
    return parts[1] if len(parts) > 1 and parts[0] == "tcp" else parts[0]


class BrokerService(Service):
    """Starts the core, registers, then listens; stops listening first, then drains."""

    def __init__(
        self, broker: Broker, registration: Registration, listeners: list[Service]
    ) -> None:
        self.broker = broker
        self.registration = registration
        self.listeners = listeners

    @override
    def startService(self) -> None:
        """Bind, register with the internal endpoint, open the client ports."""
        super().startService()
        self.broker.startService()
        self.registration.instance.endpoints = {"rep": self.broker.bind()}
        self.registration.update_meta(now=False, **self.broker.load_meta())
        self.registration.startService()
        for listener in self.listeners:
            listener.startService()
        self.broker.log.info(
            "broker {id} serving clients on {listen}",
            id=self.broker.instance_id,
            listen=self.broker.config.listen,
        )

    @override
    @defer.inlineCallbacks
    def stopService(self) -> Any:
        """Close the client ports, deregister, kick clients (they resume elsewhere), drain."""
        super().stopService()
        for listener in self.listeners:
            yield defer.maybeDeferred(listener.stopService)
        yield self.registration.stopService()
        yield self.broker.stopService()


def make_broker_service(config: BrokerConfig, *, reactor: Any = None) -> OrderedMultiService:
    """Build (without starting) the service tree of a broker process.

    Raises:
        ConfigError: no token signing key (``$MMO_AUTH_KEY``/``$MMO_AUTH_KEY_FILE``,
            or ``MMO_DEMO=1``).
    """
    key = tokens.load_key()
    instance_id = config.instance_id or default_instance_id("broker")
    top = OrderedMultiService()
    zmq_service = ZmqContextService(reactor)
    zmq_service.setServiceParent(top)
    ctx = zmq_service.context
    directory = Directory(ctx, config.yellow, caller_id=instance_id, caller_role="broker")
    directory.setServiceParent(top)

    meta: dict[str, Any] = {
        "address": f"{config.advertise_host}:{_port_of(config.listen)}",
        "pid": os.getpid(),
    }
    if config.websocket:
        meta["websocket"] = f"{config.advertise_host}:{_port_of(config.websocket)}"
    instance = make_instance(
        BROKER_SERVICE, instance_id, {}, meta, heartbeat=config.registry_heartbeat
    )
    registration = Registration(ctx, config.yellow, instance, config.registry_heartbeat)
    broker = Broker(config, ctx, directory, instance_id, registration, key)

    listeners: list[Service] = [
        strports.service(with_backlog(config.listen), TCPClientFactory(broker), reactor=ctx.reactor)
    ]
    if config.websocket:
        resource = WebSocketResource(WebSocketClientFactory(broker))
        resource.isLeaf = True  # ws://host:port/ (any path) is the WebSocket
        site = Site(resource)
        listeners.append(
            strports.service(with_backlog(config.websocket), site, reactor=ctx.reactor)
        )
    edge = BrokerService(broker, registration, listeners)
    edge.setName("broker")
    edge.setServiceParent(top)
    return top
