"""BrokerService: the broker's part of its process tree, started and stopped on fakes.

A real tree: the real Broker (core) on a fake ZeroMQ context and a fake directory, real
client listeners on a memory reactor (which hands out port numbers for port 0), and the
real Registration, whose messages the test reads as the yellow would. Time is the
memory reactor's clock; nothing listens or connects for real.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import zmq
from twisted.internet import defer, protocol, ssl
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import globalLogPublisher

from mmo.broker.config import BrokerConfig
from mmo.broker.core import Broker
from mmo.broker.service import BrokerService, ClientListener, TCPClientFactory
from mmo.registry import Registration, make_instance
from mmo.testing import FakeCall, FakeDirectory, FakeZmqContext, FakeZmqSocket
from mmo.wire import decode, encode, from_value
from mmo.wire.gen.mmo.ttypes import ClientError, Packet, PacketKind, RegistryMessage, RegistryOp

from .test_broker_fuzz import frame, list_services, parse_output, scripted_directory
from .test_directory import link_to

YELLOW = "tcp://yellow.test:7000"


class Port:
    """A listening port of the memory reactor; its close is recorded (or fails)."""

    def __init__(self, reactor: Reactor, address: IPv4Address) -> None:
        self.reactor = reactor
        self.address = address

    def getHost(self) -> IPv4Address:
        return self.address

    def stopListening(self) -> None:
        if self.address.port in self.reactor.broken:
            raise OSError(f"port {self.address.port} will not close")
        self.reactor.events.append(f"close port {self.address.port}")


class Reactor(MemoryReactorClock):
    """A memory reactor whose ports are numbered like a kernel's (port 0: the next free)."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[str] = []
        self.broken: set[int] = set()
        self._free = 40001

    def listenTCP(self, port: int, factory: Any, backlog: int = 50, interface: str = "") -> Any:
        super().listenTCP(port, factory, backlog, interface)
        if port == 0:
            port, self._free = self._free, self._free + 1
        return Port(self, IPv4Address("TCP", interface or "0.0.0.0", port))


@dataclass
class Tree:
    """A BrokerService and its parts."""

    service: BrokerService
    broker: Broker
    registration: Registration
    reactor: Reactor
    ctx: FakeZmqContext
    directory: FakeDirectory
    held: list[defer.Deferred[Any]]

    @property
    def yellow(self) -> FakeZmqSocket:
        """The registration's socket to the yellow."""
        return link_to(self.ctx, YELLOW)

    def told(self) -> list[RegistryMessage]:
        """What the yellow has been sent."""
        return [decode(RegistryMessage, frames[-1]) for frames in self.yellow.sent]

    def internal(self) -> FakeZmqSocket:
        """The broker's internal endpoint (its ROUTER socket)."""
        (sock,) = self.ctx.of_type(zmq.ROUTER)
        return sock


def make_tree(*, public_host: str | None = None, websocket_tls: bool = True) -> Tree:
    """A broker tree (core, ``address`` on a free port, ``websocket`` on 6200 with TLS,
    registration), built but not started."""
    reactor = Reactor()
    ctx = FakeZmqContext(reactor)
    directory = scripted_directory(reactor)
    held: list[defer.Deferred[Any]] = []

    def hold(_: FakeCall) -> defer.Deferred[Any]:
        """Hold an ``echo.echo`` call until the test answers it."""
        held.append(defer.Deferred())
        return held[-1]

    directory.reply("echo", "echo", hold)
    # Requests may outlive the drain (request-timeout 30 s): the drain is what ends them.
    config = BrokerConfig(
        yellow=(YELLOW,),
        bind_host="0.0.0.0",
        advertise_host="10.0.0.5",
        drain_timeout=5.0,
        request_timeout=30.0,
    )
    instance = make_instance("broker", "broker-1", {}, {"pid": 7})
    registration = Registration(ctx, config.yellow, instance)  # type: ignore[arg-type]
    broker = Broker(config, ctx, directory, "broker-1", registration, b"k" * 16)  # type: ignore[arg-type]
    list_services(directory)
    tls = ssl.CertificateOptions() if websocket_tls else None
    listeners = {
        "address": ClientListener("tcp:0", TCPClientFactory(broker), reactor),
        "websocket": ClientListener("tcp:6200", protocol.Factory(), reactor, tls),
    }
    service = BrokerService(broker, registration, listeners, public_host, "10.0.0.5")
    return Tree(service, broker, registration, reactor, ctx, directory, held)


def record(tree: Tree, verb: str) -> None:
    """Add ``"<verb> <child name>"`` to the reactor's events as each child starts or stops."""
    for child in tree.service:
        method = "startService" if verb == "start" else "stopService"
        original = getattr(child, method)

        def recorded(original: Any = original, name: str = child.name) -> Any:
            tree.reactor.events.append(f"{verb} {name}")
            return original()

        setattr(child, method, recorded)


def ack(request: RegistryMessage) -> bytes:
    """The yellow's answer to ``request``."""
    return encode(RegistryMessage(op=RegistryOp.ACK, request_id=request.request_id))


def client(tree: Tree) -> tuple[Any, StringTransport]:
    """A logged-in TCP client of the broker (through the address listener's factory)."""
    factory = tree.service.getServiceNamed("address").factory
    proto = factory.buildProtocol(None)
    transport = StringTransport(peerAddress=IPv4Address("TCP", "10.9.9.9", 50000))
    proto.makeConnection(transport)
    proto.dataReceived(frame(Packet(kind=PacketKind.REQUEST, seq=1, route="sso.login")))
    return proto, transport


def test_children_are_named_and_started_in_order() -> None:
    """The tree holds core, the listeners and the registration, by name, and starts them
    in that order."""
    tree = make_tree()
    assert [c.name for c in tree.service] == ["core", "address", "websocket", "registration"]
    assert tree.service.getServiceNamed("core") is tree.broker
    record(tree, "start")
    tree.service.startService()
    try:
        assert tree.reactor.events == [
            "start core",
            "start address",
            "start websocket",
            "start registration",
        ]
        assert [(port, interface) for port, _, _, interface in tree.reactor.tcpServers] == [
            (0, ""),
            (6200, ""),
        ]
    finally:
        tree.service.stopService()


def test_the_registration_lists_the_ports_the_listeners_got_and_which_need_tls() -> None:
    """The first REGISTER the yellow gets names the ports the listeners really got (never
    0), under the advertised host, which of them speak TLS, the load, and the internal
    endpoint."""
    tree = make_tree()
    tree.service.startService()
    try:
        (register,) = tree.told()
        assert register.op == RegistryOp.REGISTER
        assert register.instance is not None
        meta = {k: from_value(v) for k, v in (register.instance.meta or {}).items()}
        assert meta == {
            "pid": 7,
            "address": "10.0.0.5:40001",
            "websocket": "10.0.0.5:6200",
            "tls": ["10.0.0.5:6200"],
            "sessions": 0,
            "capacity": 10_000,
            "load": 0.0,
        }
        (bound,) = tree.internal().bound
        assert bound.startswith("tcp://0.0.0.0:") and not bound.endswith(":*")
        port = bound.rpartition(":")[2]
        assert register.instance.endpoints == {"rep": f"tcp://10.0.0.5:{port}"}
    finally:
        tree.service.stopService()


def test_a_public_host_is_what_players_are_sent_to() -> None:
    """With ``public-host``, the registered addresses use it; without TLS, ``tls`` is empty."""
    tree = make_tree(public_host="play.example.com", websocket_tls=False)
    tree.service.startService()
    try:
        meta = tree.registration.instance.meta or {}
        assert from_value(meta["address"]) == "play.example.com:40001"
        assert from_value(meta["websocket"]) == "play.example.com:6200"
        assert from_value(meta["tls"]) == []
    finally:
        tree.service.stopService()


def test_stop_deregisters_then_closes_the_ports_then_the_core_drains() -> None:
    """Stopping: the yellow is told first (and answers), then the ports close, then the
    core kicks its clients (they resume elsewhere), waits for the request in flight, and
    closes its internal endpoint last."""
    tree = make_tree()
    tree.service.startService()
    proto, transport = client(tree)
    proto.dataReceived(frame(Packet(kind=PacketKind.REQUEST, seq=2, route="echo.echo")))
    assert len(tree.held) == 1
    transport.clear()
    record(tree, "stop")

    stopped = tree.service.stopService()
    deregister = tree.told()[-1]
    assert deregister.op == RegistryOp.DEREGISTER
    assert tree.reactor.events == ["stop registration"], "ports wait for the yellow's answer"
    tree.yellow.deliver([ack(deregister)])
    assert tree.reactor.events == [
        "stop registration",
        "stop websocket",
        "close port 6200",
        "stop address",
        "close port 40001",
        "stop core",
    ]
    (kick,) = parse_output(transport.value())
    assert (kick.kind, kick.code) == (PacketKind.KICK, ClientError.SHUTDOWN)
    assert not stopped.called and not tree.internal().closed, "the core waits for the request"
    tree.held[0].callback(b"late")
    assert stopped.called
    assert tree.internal().closed


def test_the_core_stops_waiting_after_the_drain_timeout() -> None:
    """A request that never comes back holds the stop for drain-timeout seconds, no more."""
    tree = make_tree()
    tree.service.startService()
    proto, _ = client(tree)
    proto.dataReceived(frame(Packet(kind=PacketKind.REQUEST, seq=2, route="echo.echo")))
    stopped = tree.service.stopService()
    tree.reactor.advance(1.0)  # the yellow never answers the DEREGISTER: 1 s
    assert not stopped.called
    tree.reactor.advance(4.9)
    assert not stopped.called
    tree.reactor.advance(0.2)
    assert stopped.called
    assert tree.internal().closed


def test_a_child_whose_stop_fails_does_not_keep_the_others_running() -> None:
    """The address port will not close: that is logged, and the core still drains and
    closes."""
    tree = make_tree()
    tree.service.startService()
    tree.reactor.broken.add(40001)
    logged: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(logged.append)
    try:
        stopped = tree.service.stopService()
        tree.reactor.advance(1.0)  # no answer to the DEREGISTER
    finally:
        globalLogPublisher.removeObserver(logged.append)
    assert stopped.called
    assert tree.reactor.events == ["close port 6200"]
    assert tree.internal().closed
    assert not any(child.running for child in tree.service)
    failures = [e for e in logged if "log_failure" in e]
    assert [e["child"] for e in failures] == ["address"]
    assert "port 40001 will not close" in str(failures[0]["log_failure"].value)
