"""The same client packets as binary WebSocket messages (twisted.web.websocket)."""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.web.websocket import WebSocketClientEndpoint

from mmo.wire import decode, decode_value, encode, encode_value
from mmo.wire.gen.mmo.ttypes import ClientError, Packet, PacketKind

from .edge import EdgeCluster


@pytest.fixture(scope="module")
def edge(tmp_path_factory):
    """One edge cluster with a WebSocket port."""
    cluster = EdgeCluster(tmp_path_factory.mktemp("edge-ws"), brokers=1)
    try:
        cluster.wait_ready()
        yield cluster
    finally:
        cluster.stop()


class WSClient:
    """A WebSocket test client: one Packet per binary message."""

    def __init__(self) -> None:
        self.transport: Any = None
        self.received: defer.DeferredQueue[Packet] = defer.DeferredQueue()
        self.closed: defer.Deferred[None] = defer.Deferred()

    def negotiationStarted(self, transport: Any) -> None:
        self.transport = transport

    def negotiationFinished(self) -> None:
        pass

    def bytesMessageReceived(self, data: bytes) -> None:
        self.received.put(decode(Packet, bytes(data)))

    def textMessageReceived(self, text: str) -> None:
        raise AssertionError("the broker sends binary messages only")

    def pongReceived(self, payload: bytes) -> None:
        pass

    def connectionLost(self, reason: Any) -> None:
        self.closed.callback(None)

    def send(self, kind: int, seq: int | None = None, route: str | None = None, body: Any = None):
        packet = Packet(kind=kind, seq=seq, route=route, body=encode_value(body or {}))
        self.transport.sendBytesMessage(encode(packet))

    def next(self) -> defer.Deferred[Packet]:
        return self.received.get().addTimeout(5, reactor)


class Factory:
    """Builds the test client."""

    def buildProtocol(self, url: str) -> WSClient:
        return WSClient()


def connect(edge) -> defer.Deferred[WSClient]:
    """Open a WebSocket to the broker."""
    endpoint = WebSocketClientEndpoint.new(reactor, f"ws://127.0.0.1:{edge.ws_ports[0]}/")
    return defer.ensureDeferred(endpoint.connect(Factory()))


@pytest_twisted.inlineCallbacks
def test_websocket_login_request_and_heartbeat(edge):
    """Over WebSocket a client logs in, gets replies and heartbeats, like over TCP."""
    client = yield connect(edge)
    client.send(PacketKind.REQUEST, 1, "sso.login", {"user": "alice", "password": "pw-alice"})
    reply = yield client.next()
    assert reply.kind == PacketKind.RESPONSE and decode_value(reply.body)["user_id"] == "alice"
    client.send(PacketKind.REQUEST, 2, "echo.echo", {"over": "websocket"})
    reply = yield client.next()
    assert (reply.seq, decode_value(reply.body)) == (2, {"over": "websocket"})
    client.send(PacketKind.HEARTBEAT)
    assert (yield client.next()).kind == PacketKind.HEARTBEAT
    client.transport.loseConnection()
    yield client.closed


@pytest_twisted.inlineCallbacks
def test_websocket_bad_input_closes(edge):
    """A text message or an oversize binary message is refused and the socket closed."""
    client = yield connect(edge)
    client.transport.sendTextMessage("hello")
    error = yield client.next()
    assert error.kind == PacketKind.ERROR and error.code == ClientError.BAD_PACKET
    yield client.closed.addTimeout(5, reactor)

    client = yield connect(edge)
    client.transport.sendBytesMessage(b"\x00" * 10_000)
    error = yield client.next()
    assert error.kind == PacketKind.ERROR and error.code == ClientError.TOO_LARGE
    yield client.closed.addTimeout(5, reactor)
