"""The service tree of a broker: registry, directory, core, client listeners.

Client listeners take any Twisted endpoint description (``tcp:6101:interface=...``,
``ssl:...``, ``tcp6:...``); with ``tls-cert``/``tls-key`` they speak TLS (TCP + TLS,
and WSS for the WebSocket listener). The broker registers the ports its listeners got,
under its public host (``public-host``, else the listener's interface, else
``advertise-host``), and which of them need TLS (meta ``tls``), for the brokerlist.
"""

from __future__ import annotations

import os
from typing import Any

from OpenSSL import crypto
from twisted.application.service import Service
from twisted.internet import defer, endpoints, protocol, ssl
from twisted.internet.interfaces import IListeningPort
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.web.server import Request, Site
from twisted.web.websocket import WebSocketResource
from typing_extensions import override

from mmo.broker.config import BrokerConfig
from mmo.broker.connection import TCPClientProtocol, WebSocketClientProtocol
from mmo.broker.core import Broker
from mmo.broker.metrics import broker_metrics
from mmo.config import ConfigError
from mmo.data import tokens
from mmo.logic.client import Directory
from mmo.logic.links import BATCH_META
from mmo.logic.memo import MEMO_TTL
from mmo.logic.runtime import handler_settings, load_handler, make_worker
from mmo.logic.sessions import BROKER_SERVICE
from mmo.net import WILDCARDS, advertised_host
from mmo.registry import Registration, default_instance_id, make_instance
from mmo.service import OrderedMultiService
from mmo.telemetry.metrics import Telemetry
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
    """A ``tcp:`` or ``ssl:`` endpoint description with a listen backlog, unless it names one."""
    if description.startswith(("tcp:", "ssl:")) and "backlog=" not in description:
        return f"{description}:backlog={BACKLOG}"
    return description


def load_tls(cert: str, key: str) -> ssl.CertificateOptions:
    """TLS options for the client listeners from PEM files: a certificate (chain) and its key.

    Raises:
        ConfigError: a file is missing or is not PEM of the right kind.
    """
    try:
        with open(key, "rb") as f:
            key_pem = f.read()
        with open(cert, "rb") as f:
            cert_pem = f.read()
        chain = ssl.Certificate.loadPEM(cert_pem)
        private = ssl.PrivateCertificate.fromCertificateAndKeyPair(
            chain, ssl.KeyPair.load(key_pem, crypto.FILETYPE_PEM)
        )
        extra = [ssl.Certificate.loadPEM(pem).original for pem in _more_pems(cert_pem)]
    except OSError as e:
        raise ConfigError("tls-cert", f"cannot read {e.filename}: {e.strerror}") from e
    except (crypto.Error, ValueError) as e:
        raise ConfigError("tls-cert", f"{cert} / {key}: not a PEM certificate and key: {e}") from e
    return ssl.CertificateOptions(
        privateKey=private.privateKey.original,
        certificate=private.original,
        extraCertChain=extra,
    )


def _more_pems(pem: bytes) -> list[bytes]:
    """The certificates after the first in a PEM chain file (intermediates)."""
    marker = b"-----BEGIN CERTIFICATE-----"
    return [marker + part for part in pem.split(marker)[2:]]


class ClientListener(Service):
    """Listens for game clients on a Twisted endpoint description (``tcp:6101:...``,
    ``ssl:...``, ``tcp6:...``), optionally speaking TLS with the broker's certificate.

    Args:
        description: the endpoint, parsed by Twisted (``serverFromString``).
        factory: the protocol factory.
        reactor: the reactor.
        tls: TLS options (the broker's ``tls-cert``/``tls-key``), or None.

    Attributes:
        secure: whether clients must speak TLS to it (``tls`` given, or an ``ssl:`` endpoint).
        port: the listening port, once started.
    """

    def __init__(
        self,
        description: str,
        factory: Any,
        reactor: Any,
        tls: ssl.CertificateOptions | None = None,
    ) -> None:
        self.endpoint = endpoints.serverFromString(reactor, with_backlog(description))
        self.factory: Any = factory if tls is None else TLSMemoryBIOFactory(tls, False, factory)
        self.secure = tls is not None or isinstance(self.endpoint, endpoints.SSL4ServerEndpoint)
        self.port: IListeningPort | None = None

    @override
    def startService(self) -> None:
        """Listen (TCP and TLS endpoints listen at once: a taken port raises here)."""
        super().startService()
        outcome: list[Any] = []
        self.endpoint.listen(self.factory).addBoth(outcome.append)
        if not outcome:
            raise RuntimeError(f"{self.endpoint!r} did not listen at once")
        if isinstance(outcome[0], Failure):
            outcome[0].raiseException()
        self.port = outcome[0]

    @override
    def stopService(self) -> defer.Deferred[None]:
        """Stop listening."""
        super().stopService()
        port, self.port = self.port, None
        if port is None:
            return defer.succeed(None)
        return defer.maybeDeferred(port.stopListening).addCallback(lambda _: None)

    def address(self, public_host: str | None, fallback: str) -> str:
        """``host:port`` clients connect to: the port it got, under ``public_host``, else
        the interface it listens on, else ``fallback`` when that is every interface."""
        assert self.port is not None, "not listening"
        bound: Any = self.port.getHost()
        host = public_host or (bound.host if bound.host not in WILDCARDS else fallback)
        shown = f"[{host}]" if ":" in host else host
        return f"{shown}:{bound.port}"


class BrokerService(OrderedMultiService):
    """The broker's part of its process tree, as named children: ``core`` (the internal
    endpoint, sessions and routing), a listener per client port (``address``,
    ``websocket``), then ``registration``, which lists the ports the listeners got (so
    the registry never holds a port name or 0).

    Stops in reverse: deregister, close the client ports, then the core kicks its
    clients (they resume elsewhere) and drains.
    """

    def __init__(
        self,
        broker: Broker,
        registration: Registration,
        listeners: dict[str, ClientListener],
        public_host: str | None,
        advertise_host: str,
    ) -> None:
        super().__init__()
        self.broker = broker
        self.registration = registration
        self.listeners = listeners
        self.public_host = public_host
        self.advertise_host = advertise_host
        for name, child in [("core", broker), *listeners.items(), ("registration", registration)]:
            child.setName(name)
            child.setServiceParent(self)

    @override
    def startService(self) -> None:
        """Start the children in order; the registration once it can list the ports."""
        Service.startService(self)
        for child in self:
            if child is self.registration:
                self._advertise()
            child.startService()

    def _advertise(self) -> None:
        meta: dict[str, Any] = {"tls": []}
        for name, listener in self.listeners.items():
            address = listener.address(self.public_host, self.advertise_host)
            meta[name] = address
            if listener.secure:
                meta["tls"].append(address)
        self.registration.instance.endpoints = {"rep": self.broker.bind()}
        self.registration.update_meta(now=False, **meta, **self.broker.load_meta())
        self.broker.log.info(
            "broker {id} serving clients on {addresses} (TLS: {tls})",
            id=self.broker.instance_id,
            addresses=", ".join(f"{n} {meta[n]}" for n in self.listeners),
            tls=", ".join(meta["tls"]) or "none",
        )


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

    hosted = []
    for service, path in sorted(config.serve.items()):
        handler_class = load_handler(path)
        hosted.append(
            make_worker(
                handler_class,
                service=service,
                instance_id=f"{instance_id}.{service}",
                yellow=config.yellow,
                directory=directory,
                settings=handler_settings(handler_class, {}),
                bind_host=config.bind_host,
                advertise_host=config.advertise_host,
                heartbeat=config.registry_heartbeat,
                drain_timeout=config.drain_timeout,
                memo_ttl=MEMO_TTL,
                colocated=True,
            )
        )
    for worker in hosted:
        # Started after the directory, stopped after the edge (its players' calls first).
        worker.setName(f"serve-{worker.handler.service_name}")
        worker.setServiceParent(top)

    # Its internal endpoint takes batches (several operations of one process in one message).
    meta: dict[str, Any] = {"pid": os.getpid(), BATCH_META: True}
    instance = make_instance(
        BROKER_SERVICE, instance_id, {}, meta, heartbeat=config.registry_heartbeat
    )
    registration = Registration(ctx, config.yellow, instance, config.registry_heartbeat)
    broker = Broker(config, ctx, directory, instance_id, registration, key)

    tls = load_tls(config.tls_cert, config.tls_key) if config.tls_cert and config.tls_key else None
    factories: dict[str, tuple[str, str, Any]] = {
        "address": ("listen", config.listen, TCPClientFactory(broker))
    }
    if config.websocket:
        resource = WebSocketResource(WebSocketClientFactory(broker))
        resource.isLeaf = True  # ws://host:port/ (any path) is the WebSocket
        factories["websocket"] = ("websocket", config.websocket, Site(resource))
    listeners = {}
    for name, (setting, description, factory) in factories.items():
        try:
            listeners[name] = ClientListener(description, factory, ctx.reactor, tls)
        except (ValueError, TypeError, OSError) as e:
            raise ConfigError(setting, f"not a usable endpoint {description!r}: {e}") from e
    edge = BrokerService(
        broker,
        registration,
        listeners,
        config.public_host,
        advertised_host(config.bind_host, config.advertise_host),
    )
    edge.setName("broker")
    edge.setServiceParent(top)
    telemetry = Telemetry("broker", instance_id)
    telemetry.directory = directory
    telemetry.advertise_host = advertised_host(config.bind_host, config.advertise_host)
    telemetry.registrations.append(registration)
    telemetry.add_metrics(directory.metrics)
    telemetry.add_metrics(lambda: broker_metrics(broker))
    telemetry.add_check("admitting", broker.readiness)
    telemetry.add_check("registry", directory.readiness)
    for worker in hosted:
        telemetry.add_metrics(worker.server.metrics)
        telemetry.add_check(f"serving {worker.handler.service_name}", worker.server.readiness)

    def drained(draining: bool) -> None:
        telemetry.draining = draining

    broker.drain_listeners.append(drained)
    top.telemetry = telemetry
    top.reload = broker.reload  # type: ignore[attr-defined]
    return top
