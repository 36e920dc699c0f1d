"""The floor: the least a Twisted TCP -> ZeroMQ -> echo chain can cost, for comparison.

Two tiny programs with none of mmo's features (no registry, sessions, limits,
routing, deadlines, logging):

* ``python -m mmo.bench.floor echo --bind tcp://127.0.0.1:PORT``: a ZeroMQ
  ROUTER on the Twisted reactor (txZMQ) that sends every message back as it came.
* ``python -m mmo.bench.floor server --port PORT --echo tcp://127.0.0.1:PORT``:
  a Twisted TCP server speaking the client wire (4-byte length + Thrift
  ``Packet``). It answers HEARTBEAT itself; any REQUEST's body goes over a
  DEALER to the echo, and what comes back is sent to the client as the
  RESPONSE with the request's seq. So a login "succeeds" (its body is echoed)
  and W1 runs against it unchanged.

This is the same per-packet work a broker and a worker cannot avoid: decode the
packet, cross ZeroMQ twice, encode the response.
"""

from __future__ import annotations

import argparse
import itertools
import struct
from typing import Any

import zmq
from twisted.application.service import Service
from twisted.internet import protocol
from twisted.protocols.basic import Int32StringReceiver
from twisted.python.failure import Failure
from txzmq import ZmqConnection, ZmqEndpoint, ZmqFactory
from typing_extensions import override

from mmo.wire import WireError, decode, encode
from mmo.wire.gen.mmo.ttypes import Packet, PacketKind

__all__ = [
    "EchoRouter",
    "EchoService",
    "FloorProtocol",
    "FloorServer",
    "FloorServerService",
    "main",
]

_ID = struct.Struct(">Q")
_SEQ = struct.Struct(">i")


class EchoRouter(ZmqConnection):
    """A ROUTER that returns each multipart message to its sender, unchanged."""

    socketType = zmq.ROUTER

    @override
    def messageReceived(self, message: list[bytes]) -> None:
        """Send the message back (the first frame routes it to its DEALER)."""
        self.send(message)


class FloorDealer(ZmqConnection):
    """The server's DEALER: frames ``[connection id, seq, body]`` go out and come back."""

    socketType = zmq.DEALER

    def __init__(self, factory: ZmqFactory, server: FloorServer) -> None:
        self.server = server
        super().__init__(factory)

    @override
    def messageReceived(self, message: list[bytes]) -> None:
        """An echoed request: answer the client it came from."""
        conn_id, seq, body = message
        client = self.server.clients.get(_ID.unpack(conn_id)[0])
        if client is not None:
            packet = Packet(kind=PacketKind.RESPONSE, seq=_SEQ.unpack(seq)[0], body=body)
            client.sendString(encode(packet))


class FloorProtocol(Int32StringReceiver):
    """One client of the floor server."""

    MAX_LENGTH = 4096

    def __init__(self, server: FloorServer, conn_id: int) -> None:
        self.server = server
        self.conn_id = conn_id
        self.key = _ID.pack(conn_id)

    @override
    def connectionMade(self) -> None:
        """Register the client so that echoes find it."""
        self.server.clients[self.conn_id] = self

    @override
    def stringReceived(self, data: bytes) -> None:
        """Forward a REQUEST's body to the echo; answer a HEARTBEAT."""
        try:
            packet = decode(Packet, data)
        except WireError:
            self.transport.loseConnection()  # type: ignore[union-attr]
            return
        if packet.kind == PacketKind.REQUEST:
            self.server.dealer.send([self.key, _SEQ.pack(packet.seq or 0), packet.body or b""])
        elif packet.kind == PacketKind.HEARTBEAT:
            self.sendString(encode(Packet(kind=PacketKind.HEARTBEAT)))

    @override
    def connectionLost(self, reason: Failure = Failure(Exception())) -> None:  # noqa: B008
        """Forget the client."""
        self.server.clients.pop(self.conn_id, None)


class FloorServer(protocol.ServerFactory):
    """The floor's TCP server: clients by id, and the DEALER to the echo.

    Args:
        dealer: the socket to the echo (set by :class:`FloorServerService`).
    """

    def __init__(self) -> None:
        self.clients: dict[int, FloorProtocol] = {}
        self._ids = itertools.count(1)
        self.dealer: Any = None

    @override
    def buildProtocol(self, addr: Any) -> FloorProtocol:
        """One protocol per client."""
        return FloorProtocol(self, next(self._ids))


class FloorServerService(Service):
    """Listens for clients on 127.0.0.1:``port`` and connects the DEALER to ``echo``.

    Args:
        port: the TCP port.
        echo: the echo's ZeroMQ address.
    """

    def __init__(self, port: int, echo: str) -> None:
        self.port = port
        self.echo = echo
        self.factory = FloorServer()
        self._zmq: ZmqFactory | None = None
        self._listening: Any = None

    @override
    def startService(self) -> None:
        """Connect to the echo, then listen."""
        from twisted.internet import reactor

        super().startService()
        self._zmq = ZmqFactory()
        self._zmq.lingerPeriod = 0
        self.factory.dealer = FloorDealer(self._zmq, self.factory)
        self.factory.dealer.addEndpoints([ZmqEndpoint("connect", self.echo)])
        self._listening = reactor.listenTCP(
            self.port, self.factory, backlog=1024, interface="127.0.0.1"
        )

    @override
    def stopService(self) -> Any:
        """Stop listening, close the socket."""
        super().stopService()
        d = self._listening.stopListening() if self._listening is not None else None
        if self._zmq is not None:
            self._zmq.shutdown()
            self._zmq = None
        return d


class EchoService(Service):
    """Binds the echo's ROUTER to ``address``.

    Args:
        address: the ZeroMQ address to bind.
    """

    def __init__(self, address: str) -> None:
        self.address = address
        self._zmq: ZmqFactory | None = None

    @override
    def startService(self) -> None:
        """Bind."""
        super().startService()
        self._zmq = ZmqFactory()
        self._zmq.lingerPeriod = 0
        EchoRouter(self._zmq).addEndpoints([ZmqEndpoint("bind", self.address)])

    @override
    def stopService(self) -> None:
        """Close the socket."""
        super().stopService()
        if self._zmq is not None:
            self._zmq.shutdown()
            self._zmq = None


def main(argv: list[str] | None = None) -> None:
    """Run the floor's ``server`` or ``echo`` until SIGTERM or SIGINT."""
    parser = argparse.ArgumentParser(prog="python -m mmo.bench.floor")
    sub = parser.add_subparsers(dest="program", required=True)
    echo = sub.add_parser("echo", help="ZeroMQ ROUTER echo")
    echo.add_argument("--bind", required=True, help="ZeroMQ address to bind")
    server = sub.add_parser("server", help="TCP server forwarding to the echo")
    server.add_argument("--port", type=int, required=True, help="TCP port on 127.0.0.1")
    server.add_argument("--echo", required=True, help="the echo's ZeroMQ address")
    args = parser.parse_args(argv)

    from twisted.internet import reactor

    service: Service
    if args.program == "echo":
        service = EchoService(args.bind)
    else:
        service = FloorServerService(args.port, args.echo)
    service.startService()
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    # The reactor stops on SIGTERM and SIGINT by itself.
    reactor.run()


if __name__ == "__main__":
    main()
