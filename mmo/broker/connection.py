"""One client connection at the broker, whatever carries it (TCP or WebSocket).

A :class:`ClientConnection` takes whole packets (bytes) from its carrier,
enforces the session rules of docs/edge.md (login first, rate, idle, slow
consumers) and hands requests to the broker, which it knows only as an
:class:`Edge` (what a connection needs of it; :class:`~mmo.broker.core.Broker` is
one). The carriers (:class:`TCPClientProtocol`, :class:`WebSocketClientProtocol`)
only frame bytes and apply back-pressure.
"""

from __future__ import annotations

import struct
from collections import deque
from typing import TYPE_CHECKING, Any, Protocol

from twisted.internet.interfaces import IPushProducer, ITCPTransport
from twisted.internet.tcp import Connection as TCPConnection
from twisted.logger import Logger
from twisted.protocols.basic import Int32StringReceiver
from twisted.python.failure import Failure
from typing_extensions import override
from zope.interface import implementer

from mmo.wire import WireError, decode, encode, encode_value
from mmo.wire.gen.mmo.ttypes import ClientError, Packet, PacketKind, Session, Value

if TYPE_CHECKING:
    from mmo.broker.config import BrokerConfig
    from mmo.broker.routes import RoutePatterns
    from mmo.types import Clock

_HEARTBEAT = None  # filled lazily: the encoded HEARTBEAT frame
_LENGTH = struct.Struct("!I")


def send_now(transport: Any, data: bytes) -> None:
    """Write ``data`` to ``transport``; on a plain TCP connection with nothing waiting to
    be sent, with one ``send(2)`` at once.

    Twisted's ``write`` queues the data and registers the socket for writing; the next
    poll sends it and unregisters it: two ``epoll_ctl`` and a turn of the loop for every
    answer, a large share of a broker's CPU under small request-reply traffic
    (docs/benchmarks.md). What the kernel does not take at once, and anything on a
    connection with data already queued (order), a TLS one or another kind, goes through
    ``write`` as usual, so back-pressure and errors are Twisted's own.
    """
    # Twisted's own buffers (``_tempDataBuffer``, ``dataBuffer`` from ``offset``): private,
    # but stable for a decade; any other transport (TLS, a test's) takes the plain path.
    if (
        isinstance(transport, TCPConnection)
        and transport.connected
        and not transport.disconnecting
        and not transport._tempDataBuffer
        and len(transport.dataBuffer) == transport.offset
    ):
        try:
            sent = transport.socket.send(data)
        except OSError:
            sent = 0  # full (EAGAIN), or broken: write() finds out and reports it
        if sent == len(data):
            return
        data = data[sent:]
    transport.write(data)


def packet_bytes(kind: int, seq: int | None = None, **fields: Any) -> bytes:
    """Encode one packet."""
    return encode(Packet(kind=kind, seq=seq, **fields))


def error_bytes(seq: int | None, code: int, message: str) -> bytes:
    """Encode an ERROR packet."""
    return packet_bytes(PacketKind.ERROR, seq, code=code, message=message)


class Carrier(Protocol):
    """What a connection needs of the transport-specific protocol."""

    def send_frame(self, data: bytes) -> None:
        """Send one packet."""
        ...

    def close(self, abort: bool = False) -> None:
        """Close the connection (``abort``: drop what is queued)."""
        ...

    def peer(self) -> str:
        """The client's address, for logs."""
        ...

    def queued(self) -> int:
        """Bytes waiting for the client to read them (its outbound queue)."""
        ...


class Edge(Protocol):
    """What a connection and its carrier need of the broker they belong to.

    Attributes:
        clock: the reactor's clock (timeouts, the packet rate).
        config: the broker's settings (limits, timeouts).
        instance_id: the broker's id (sessions travel with it).
        log: where connections log.
        tcp_routes: the routes a TCP client may use.
        websocket_routes: the routes a WebSocket client may use.
        packets_in, bytes_in, packets_out, bytes_out: client packets (and their bytes,
            without framing) read and written.
    """

    clock: Clock
    config: BrokerConfig
    instance_id: str
    log: Logger
    tcp_routes: RoutePatterns
    websocket_routes: RoutePatterns
    packets_in: int
    bytes_in: int
    packets_out: int
    bytes_out: int

    def count(self, what: str, n: int = 1) -> None:
        """Count an event (the broker's stats)."""
        ...

    def connection_made(self, conn: ClientConnection) -> None:
        """A client connected: admit it, or refuse it (``conn.fail``)."""
        ...

    def connection_lost(self, conn: ClientConnection) -> None:
        """A client's connection is gone."""
        ...

    def before_login(self, conn: ClientConnection, packet: Packet) -> None:
        """A REQUEST or NOTIFY from a client without a session."""
        ...

    def request(self, conn: ClientConnection, packet: Packet) -> None:
        """A REQUEST from a logged-in client."""
        ...

    def notify(self, conn: ClientConnection, packet: Packet) -> None:
        """A NOTIFY from a logged-in client."""
        ...


class ClientConnection:
    """The broker's side of one client: login state, session, limits.

    Args:
        broker: the broker (what a connection needs of it).
        carrier: the transport-specific protocol.
        routes: the routes the listener it came in on accepts.

    Attributes:
        host: the client's address (IP), set when the broker admits it.
        session_id: set once logged in (or resumed).
        user_id: the logged-in user.
        props: session properties (travel with each request).
        channels: channels this session is in (at this broker).
        bindings: route prefix -> instance id (dynamic routing).
    """

    # One per client: slots save the per-instance dict.
    __slots__ = (
        "_dropped_in_row",
        "_refilled",
        "_session",
        "_tokens",
        "bindings",
        "broker",
        "carrier",
        "channels",
        "closed",
        "connected_at",
        "host",
        "last_seen",
        "logging_in",
        "props",
        "routes",
        "session_id",
        "sticky",
        "token",
        "user_id",
    )

    def __init__(self, broker: Edge, carrier: Carrier, routes: RoutePatterns) -> None:
        self.broker = broker
        self.carrier = carrier
        self.routes = routes
        self.host = ""
        clock = broker.clock
        self.connected_at = clock.seconds()
        self.last_seen = self.connected_at
        self.session_id: str | None = None
        self.user_id: str | None = None
        self.token: str | None = None
        self.props: dict[str, Any] = {}
        self.channels: set[str] = set()
        self.bindings: dict[str, str] = {}
        self.sticky: dict[str, str] = {}
        self.logging_in = False
        self.closed = False
        self._session: Session | None = None
        self._tokens = float(broker.config.burst)
        self._refilled = self.connected_at
        self._dropped_in_row = 0

    # -- state ---------------------------------------------------------------

    @property
    def logged_in(self) -> bool:
        """Whether the connection holds a session."""
        return self.session_id is not None

    def session(self) -> Session:
        """The session as it travels with each request (cached until props change)."""
        if self._session is None:
            from mmo.wire import to_value

            props: dict[str, Value] = {k: to_value(v) for k, v in self.props.items()}
            self._session = Session(
                id=self.session_id or "",
                user_id=self.user_id,
                broker=self.broker.instance_id,
                props=props,
            )
        return self._session

    def set_props(self, props: dict[str, Any]) -> None:
        """Merge properties (``None`` deletes)."""
        for key, value in props.items():
            if value is None:
                self.props.pop(key, None)
            else:
                self.props[key] = value
        self._session = None

    # -- incoming --------------------------------------------------------------

    def frame_received(self, data: bytes) -> None:
        """One whole packet from the client."""
        broker = self.broker
        broker.packets_in += 1
        broker.bytes_in += len(data)
        try:
            packet = decode(Packet, data)
            if packet.kind is None:
                raise WireError("no kind")
        except WireError as e:
            broker.count("bad_packets")
            broker.log.info("broker: bad packet from {peer}: {e}", peer=self.carrier.peer(), e=e)
            self.fail(None, ClientError.BAD_PACKET, f"undecodable packet: {e}")
            return
        now = broker.clock.seconds()
        self.last_seen = now
        kind = packet.kind
        if kind == PacketKind.HEARTBEAT:
            self.send(_heartbeat())
            return
        if kind not in (PacketKind.REQUEST, PacketKind.NOTIFY):
            broker.count("bad_packets")
            self.send(error_bytes(packet.seq, ClientError.BAD_PACKET, f"unexpected kind {kind}"))
            return
        if not self._take_token(now):
            return
        if not self.logged_in:
            broker.before_login(self, packet)
        elif kind == PacketKind.REQUEST:
            broker.request(self, packet)
        else:
            broker.notify(self, packet)

    def _take_token(self, now: float) -> bool:
        config = self.broker.config
        self._tokens = min(float(config.burst), self._tokens + (now - self._refilled) * config.rate)
        self._refilled = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            self._dropped_in_row = 0
            return True
        self._dropped_in_row += 1
        self.broker.count("rate_limited")
        if self._dropped_in_row > 5 * config.burst:
            self.broker.count("floods")
            self.broker.log.warn(
                "broker: flood from {peer} ({user}), closing",
                peer=self.carrier.peer(),
                user=self.user_id,
            )
            self.fail(None, ClientError.RATE_LIMITED, "flood: too many packets over the rate")
        elif self._dropped_in_row == 1 or self._dropped_in_row % 100 == 0:
            self.send(error_bytes(None, ClientError.RATE_LIMITED, "over the packet rate"))
        return False

    # -- outgoing --------------------------------------------------------------

    def send(self, frame: bytes) -> None:
        """Send one encoded packet (dropped once closed)."""
        if not self.closed:
            broker = self.broker
            broker.packets_out += 1
            broker.bytes_out += len(frame)
            self.carrier.send_frame(frame)

    def respond(self, seq: int | None, body: bytes) -> None:
        """Answer the REQUEST ``seq``."""
        self.send(packet_bytes(PacketKind.RESPONSE, seq, body=body))

    def respond_value(self, seq: int | None, value: Any) -> None:
        """Answer the REQUEST ``seq`` with a Value."""
        self.respond(seq, encode_value(value))

    def error(self, seq: int | None, code: int, message: str) -> None:
        """Refuse the REQUEST ``seq`` (the connection stays open)."""
        self.send(error_bytes(seq, code, message))

    def fail(self, seq: int | None, code: int, message: str) -> None:
        """Send an ERROR and close the connection."""
        self.send(error_bytes(seq, code, message))
        self.close()

    def kick(self, code: int, message: str) -> None:
        """Send a KICK and close the connection."""
        self.send(packet_bytes(PacketKind.KICK, None, code=code, message=message))
        self.close()

    def close(self, abort: bool = False) -> None:
        """Close the connection."""
        if not self.closed:
            self.closed = True
            self.carrier.close(abort)

    def slow_consumer(self) -> None:
        """The client stopped reading and its queue is full: drop it."""
        self.broker.count("slow_consumers")
        self.broker.log.warn(
            "broker: slow consumer {peer} ({user}) disconnected",
            peer=self.carrier.peer(),
            user=self.user_id,
        )
        self.closed = True
        self.carrier.close(abort=True)

    def lost(self) -> None:
        """The carrier's connection is gone."""
        self.closed = True
        self.broker.connection_lost(self)


def _heartbeat() -> bytes:
    global _HEARTBEAT
    if _HEARTBEAT is None:
        _HEARTBEAT = packet_bytes(PacketKind.HEARTBEAT)
    return _HEARTBEAT


@implementer(IPushProducer)
class _OutboundQueue:
    """Back-pressure: frames wait here while the transport is full; too many: drop the client.

    One per connection, so it is kept small (slots; the deque only while paused).
    """

    __slots__ = ("limit", "on_overflow", "paused", "queued", "size", "write")

    def __init__(self, write: Any, limit: int, on_overflow: Any) -> None:
        self.write = write
        self.limit = limit
        self.on_overflow = on_overflow
        self.paused = False
        self.queued: deque[bytes] | None = None
        self.size = 0

    def send(self, data: bytes) -> None:
        if not self.paused:
            self.write(data)
            return
        if self.queued is None:
            self.queued = deque()
        self.queued.append(data)
        self.size += len(data)
        if self.size > self.limit:
            self.stopProducing()
            self.on_overflow()

    def pauseProducing(self) -> None:
        """The transport's buffer is full."""
        self.paused = True

    def resumeProducing(self) -> None:
        """The transport drained: send what waited."""
        self.paused = False
        queued = self.queued
        while queued and not self.paused:
            data = queued.popleft()
            self.size -= len(data)
            self.write(data)
        if not queued:
            self.queued = None

    def stopProducing(self) -> None:
        """The connection is gone (a resume in progress stops writing)."""
        if self.queued is not None:
            self.queued.clear()
            self.queued = None
        self.size = 0


class _Carrier:
    """What both carriers do alike: hand lost connections to the broker, send via the queue."""

    connection: ClientConnection | None
    _queue: _OutboundQueue | None

    def _lost(self) -> None:
        if self._queue is not None:
            self._queue.stopProducing()
        if self.connection is not None:
            self.connection.lost()

    def queued(self) -> int:
        """Bytes waiting for the client to read them."""
        return self._queue.size if self._queue is not None else 0

    def send_frame(self, data: bytes) -> None:
        """Send one packet through the back-pressure queue."""
        assert self._queue is not None
        self._queue.send(data)


class TCPClientProtocol(_Carrier, Int32StringReceiver):
    """TCP carrier: 4-byte big-endian length, then a Thrift ``Packet``."""

    def __init__(self, broker: Edge) -> None:
        self.broker = broker
        self.connection: ClientConnection | None = None
        self._queue: _OutboundQueue | None = None

    @property
    def MAX_LENGTH(self) -> int:  # type: ignore[override]
        """The largest frame: the broker's ``max-frame`` now (a reload changes it)."""
        return self.broker.config.max_frame

    @override
    def connectionMade(self) -> None:
        """Admit the client (or refuse it when full)."""
        self.connection = ClientConnection(self.broker, self, self.broker.tcp_routes)
        self._queue = _OutboundQueue(
            self._send_string, self.broker.config.max_outbound, self.connection.slow_consumer
        )
        tcp = self._tcp()
        # Small packets must leave at once: Nagle's algorithm held pushes for up to
        # 40 ms (the delayed ACK of the client) and made a room's p99 that long.
        if ITCPTransport.providedBy(tcp):
            tcp.setTcpNoDelay(True)
        tcp.registerProducer(self._queue, True)
        self.broker.connection_made(self.connection)

    def _send_string(self, data: bytes) -> None:
        """Send one length-prefixed frame (:func:`send_now`)."""
        send_now(self.transport, _LENGTH.pack(len(data)) + data)

    @override
    def stringReceived(self, data: bytes) -> None:
        """A whole frame arrived."""
        if self.connection is not None and not self.connection.closed:
            self.connection.frame_received(data)

    @override
    def lengthLimitExceeded(self, length: int) -> None:
        """The length prefix is over the limit: refuse before buffering the frame."""
        self.broker.count("too_large")
        self.broker.log.info(
            "broker: {peer} announced a {length}-byte frame (limit {limit}), closing",
            peer=self.peer(),
            length=length,
            limit=self.MAX_LENGTH,
        )
        if self.connection is not None:
            self.connection.fail(
                None, ClientError.TOO_LARGE, f"frame of {length} bytes is over the limit"
            )

    @override
    def connectionLost(self, reason: Failure = Failure(Exception())) -> None:  # noqa: B008
        """Tell the broker."""
        self._lost()

    # -- Carrier ---------------------------------------------------------------

    def close(self, abort: bool = False) -> None:
        """Close (after what is written, unless ``abort``)."""
        if abort:
            self._tcp().abortConnection()
        else:
            self._tcp().loseConnection()

    def peer(self) -> str:
        """host:port of the client."""
        address: Any = self._tcp().getPeer()
        return f"{getattr(address, 'host', '?')}:{getattr(address, 'port', '?')}"

    def _tcp(self) -> Any:
        # A TCP transport (ITCPTransport + IProducerConsumer); typed as ITransport upstream.
        return self.transport


class WebSocketClientProtocol(_Carrier):
    """WebSocket carrier: one packet per binary message (``twisted.web.websocket``)."""

    def __init__(self, broker: Edge, peer: str) -> None:
        self.broker = broker
        self._peer = peer
        self.transport: Any = None
        self.connection: ClientConnection | None = None
        self._queue: _OutboundQueue | None = None

    def negotiationStarted(self, transport: Any) -> None:
        """The WebSocket handshake began."""
        self.transport = transport

    def negotiationFinished(self) -> None:
        """The WebSocket is open: admit the client."""
        self.connection = ClientConnection(self.broker, self, self.broker.websocket_routes)
        self._queue = _OutboundQueue(
            self.transport.sendBytesMessage,
            self.broker.config.max_outbound,
            self.connection.slow_consumer,
        )
        self.broker.connection_made(self.connection)
        # The HTTP channel is still the transport's producer during the handshake:
        # take its place once the handshake's request is done.
        self.broker.clock.callLater(0, self._attach)

    def _attach(self) -> None:
        if self.transport is None or self._queue is None or self.connection is None:
            return
        if self.connection.closed:
            return
        # Twisted's WebSocket upgrade leaves the HTTP channel registered as the TCP
        # transport's producer; the socket is ours now, so is its back-pressure.
        tcp = getattr(self.transport, "transport", None)
        if tcp is not None and getattr(tcp, "producer", None) is not None:
            tcp.unregisterProducer()
        try:
            self.transport.attachProducer(self._queue)
        except RuntimeError as e:
            # No back-pressure on this socket: the idle and rate limits still hold.
            self.broker.log.warn("broker: WebSocket back-pressure unavailable: {e}", e=e)

    def bytesMessageReceived(self, data: bytes | bytearray) -> None:
        """One binary message = one packet."""
        if self.connection is None or self.connection.closed:
            return
        if len(data) > self.broker.config.max_frame:
            self.broker.count("too_large")
            self.connection.fail(
                None, ClientError.TOO_LARGE, f"message of {len(data)} bytes is over the limit"
            )
            return
        self.connection.frame_received(bytes(data))

    def textMessageReceived(self, message: str) -> None:
        """Packets are binary: a text message is refused."""
        if self.connection is not None:
            self.broker.count("bad_packets")
            self.connection.fail(None, ClientError.BAD_PACKET, "packets are binary messages")

    def pongReceived(self, payload: bytes) -> None:
        """Pongs count as life."""
        if self.connection is not None:
            self.connection.last_seen = self.broker.clock.seconds()

    def connectionLost(self, reason: Failure) -> None:
        """Tell the broker."""
        self._lost()

    # -- Carrier ---------------------------------------------------------------

    def close(self, abort: bool = False) -> None:
        """Close the WebSocket."""
        if self.transport is not None:
            self.transport.loseConnection()

    def peer(self) -> str:
        """host:port of the client."""
        return self._peer
