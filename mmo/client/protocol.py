"""One game-client connection to a broker: packets, requests by seq, pushes, heartbeats.

:class:`ClientProtocol` speaks the client wire of ``docs/edge.md``: each frame is a
4-byte big-endian length and one binary-protocol ``Packet``. It knows nothing of
sessions or reconnection (that is :class:`mmo.client.Client`); it matches answers to
requests, enforces each request's deadline, sends heartbeats once told to, and hands
what the broker sends unasked (pushes, errors with seq 0, kicks) to its
:class:`Listeners`.

Bodies: a Python value is sent as a ``Value``; an instance of a generated Thrift struct
(anything with ``thrift_spec``) is sent as that struct; with ``raw=True`` the body is
bytes sent as they are. Replies are decoded the same way (``reply_type``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from twisted.internet import defer, task
from twisted.internet.interfaces import IAddress
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.protocols.basic import Int32StringReceiver
from twisted.python.failure import Failure
from typing_extensions import override

from mmo.client.errors import (
    ClientDisconnected,
    ClientRequestError,
    ClientTimeout,
)
from mmo.types import Clock, DelayedCall
from mmo.wire import WireError, decode, decode_value, encode, encode_value
from mmo.wire.gen.mmo.ttypes import Packet, PacketKind

log = Logger()

#: Register a push callback under this route to receive every push.
ANY_ROUTE = "*"
#: Requests without an explicit timeout get this many seconds.
DEFAULT_TIMEOUT = 5.0
#: Heartbeat interval when the broker did not say (seconds).
DEFAULT_HEARTBEAT = 10.0
#: The largest ``seq``: it is an ``i32`` on the wire.
MAX_SEQ = 2**31 - 1

#: ``callback(route, body)`` for pushes.
PushCallback = Callable[[str, Any], object]
#: ``callback(error)`` for an ``ERROR`` with seq 0, or a ``KICK``.
ErrorCallback = Callable[[ClientRequestError], object]


def encode_body(body: Any, raw: bool = False) -> bytes:
    """The bytes of a packet body.

    Args:
        body: a Python value (sent as a ``Value``; ``None`` sends an empty map, i.e.
            no arguments), a Thrift struct instance (sent as is), or bytes with ``raw``.
        raw: send ``body`` (bytes) without encoding it.

    Raises:
        WireError: the body cannot be encoded.
    """
    if raw:
        if not isinstance(body, bytes | bytearray | memoryview):
            raise WireError(f"raw body must be bytes, not {type(body).__name__}")
        return bytes(body)
    if body is None:
        return encode_value({})
    if getattr(body, "thrift_spec", None) is not None:
        return encode(body)
    return encode_value(body)


def decode_body(data: bytes | None, body_type: type | None = None) -> Any:
    """Decode a packet body.

    Args:
        data: the body bytes (``None`` or empty when the packet had none).
        body_type: ``None`` for a ``Value`` (an absent body is ``None``), ``bytes`` for
            the bytes as they are, or a generated Thrift struct class.

    Raises:
        WireError: the bytes are not a valid ``body_type``.
    """
    if body_type is bytes:
        return data or b""
    if body_type is None:
        return decode_value(data) if data else None
    return decode(body_type, data or b"")


@dataclass
class _Registration:
    callback: PushCallback
    body_type: type | None


class Listeners:
    """Callbacks for what the broker sends unasked: pushes, errors with seq 0, kicks.

    One instance may be shared by successive connections (the :class:`mmo.client.Client`
    does so), so that registrations survive a reconnect. A callback that raises is
    logged and does not disturb the others or the connection.
    """

    def __init__(self) -> None:
        self._pushes: dict[str, list[_Registration]] = {}
        self._errors: list[ErrorCallback] = []
        self._kicks: list[ErrorCallback] = []

    def on(
        self, route: str, callback: PushCallback, body_type: type | None = None
    ) -> Callable[[], None]:
        """Call ``callback(route, body)`` for each push on ``route`` (``"*"``: every push).

        Args:
            route: the push route, e.g. ``"chat.message"``, or :data:`ANY_ROUTE`.
            callback: called with the route and the decoded body.
            body_type: how to decode the body (see :func:`decode_body`); a body that
                does not decode is logged and this callback skipped.

        Returns:
            A function that removes this registration.
        """
        registration = _Registration(callback, body_type)
        self._pushes.setdefault(route, []).append(registration)

        def remove() -> None:
            registrations = self._pushes.get(route, [])
            if registration in registrations:
                registrations.remove(registration)

        return remove

    def on_error(self, callback: ErrorCallback) -> None:
        """Call ``callback(error)`` for each ``ERROR`` the broker sends with seq 0.

        Those refuse a ``NOTIFY``, or explain why the broker is closing the connection.
        """
        self._errors.append(callback)

    def on_kick(self, callback: ErrorCallback) -> None:
        """Call ``callback(error)`` when the broker sends ``KICK`` (it then closes)."""
        self._kicks.append(callback)

    def push(self, route: str, data: bytes | None) -> int:
        """Dispatch a push to the callbacks of its route, then the catch-all ones.

        Returns:
            How many callbacks were called.
        """
        registrations = [*self._pushes.get(route, ()), *self._pushes.get(ANY_ROUTE, ())]
        if not registrations:
            log.debug("push on {route} with no callback", route=route)
        decoded: dict[type | None, Any] = {}
        called = 0
        for registration in registrations:
            kind = registration.body_type
            if kind not in decoded:
                try:
                    decoded[kind] = decode_body(data, kind)
                except WireError as e:
                    log.warn("push on {route}: undecodable body: {e}", route=route, e=e)
                    continue
            called += 1
            try:
                registration.callback(route, decoded[kind])
            except Exception:
                log.failure("push callback for {route} failed", route=route)
        return called

    def error(self, error: ClientRequestError) -> None:
        """Dispatch an ``ERROR`` with seq 0."""
        log.info("broker error: {error}", error=error)
        self._call(self._errors, error)

    def kick(self, error: ClientRequestError) -> None:
        """Dispatch a ``KICK``."""
        log.info("kicked: {error}", error=error)
        self._call(self._kicks, error)

    def _call(self, callbacks: list[ErrorCallback], error: ClientRequestError) -> None:
        for callback in list(callbacks):
            try:
                callback(error)
            except Exception:
                log.failure("error callback failed")


@dataclass
class _Pending:
    route: str
    deferred: defer.Deferred[Any]
    timer: DelayedCall
    reply_type: type | None


class ClientProtocol(Int32StringReceiver):
    """The client side of one broker connection.

    Attributes:
        listeners: where pushes, errors with seq 0 and kicks go.
        kicked: the ``KICK`` the broker sent (code and message), if any.
        last_error: the last ``ERROR`` with seq 0 (often why the broker closed).
        heartbeat_interval: seconds between heartbeats once started, else ``None``.
    """

    #: The broker's own frames may be large (pushes); refuse anything above this.
    MAX_LENGTH = 16 * 1024 * 1024
    #: Close the connection when nothing arrived for this many heartbeat intervals.
    DEAD_AFTER_BEATS = 3

    def __init__(self, clock: Clock | None = None, listeners: Listeners | None = None) -> None:
        """Build an unconnected protocol.

        Args:
            clock: the reactor's time (``task.Clock`` in tests); the global reactor if None.
            listeners: shared callbacks; a fresh :class:`Listeners` if None.
        """
        if clock is None:
            from twisted.internet import reactor

            clock = cast(Clock, reactor)
        self.clock: Clock = clock
        self.listeners = listeners if listeners is not None else Listeners()
        #: Writes one encoded packet: framed by its length over TCP; a WebSocket carrier
        #: sends it as one binary message instead.
        self.send_frame: Callable[[bytes], None] = self.sendString
        self.kicked: ClientRequestError | None = None
        self.last_error: ClientRequestError | None = None
        self.heartbeat_interval: float | None = None
        self.last_received = self.clock.seconds()
        self._pending: dict[int, _Pending] = {}
        self._next_seq = 1
        self._heartbeat: task.LoopingCall | None = None
        self._is_connected = False
        self._closed: list[defer.Deferred[ClientDisconnected]] = []
        self._lost: ClientDisconnected | None = None

    # -- Twisted calls these -------------------------------------------------

    @override
    def connectionMade(self) -> None:
        self._is_connected = True
        self.last_received = self.clock.seconds()

    @override
    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._is_connected = False
        self.stop_heartbeat()
        cause = self.kicked or self.last_error
        lost = ClientDisconnected(f"connection lost: {reason.getErrorMessage()}", cause)
        self._lost = lost
        # Whoever watches the connection (a Client) learns of the loss before the
        # requests fail, so that an errback retrying its request sees the new state.
        waiters, self._closed = self._closed, []
        for waiter in waiters:
            waiter.callback(lost)
        pending, self._pending = self._pending, {}
        for seq, call in sorted(pending.items()):
            if call.timer.active():
                call.timer.cancel()
            log.debug("request {seq} {route}: connection lost", seq=seq, route=call.route)
            call.deferred.errback(ClientDisconnected(f"{call.route}: {lost}", cause))

    @override
    def stringReceived(self, string: bytes) -> None:
        self.last_received = self.clock.seconds()
        try:
            packet = decode(Packet, string)
        except WireError as e:
            # A broker never sends this: the stream can no longer be trusted.
            log.warn("undecodable packet from the broker: {e}", e=e)
            self._abort()
            return
        self.packet_received(packet)

    @override
    def lengthLimitExceeded(self, length: int) -> None:
        log.warn(
            "frame of {length} bytes from the broker is over {limit}",
            length=length,
            limit=self.MAX_LENGTH,
        )
        self._abort()

    # -- public API ------------------------------------------------------------

    @property
    def is_connected(self) -> bool:
        """Whether the connection is up (made, and neither lost nor closing)."""
        transport = self.transport
        return (
            self._is_connected
            and transport is not None
            and not getattr(transport, "disconnecting", False)
        )

    @property
    def in_flight(self) -> int:
        """How many requests await their answer."""
        return len(self._pending)

    @property
    def peer(self) -> IAddress | None:
        """The broker's address, while connected."""
        return self.transport.getPeer() if self.transport is not None else None

    def request(
        self,
        route: str,
        body: Any = None,
        timeout: float | None = DEFAULT_TIMEOUT,
        *,
        raw: bool = False,
        reply_type: type | None = None,
        seq: int | None = None,
        trace: str | None = None,
    ) -> defer.Deferred[Any]:
        """Send a ``REQUEST`` and wait for its ``RESPONSE``.

        Args:
            route: ``"service.method"``.
            body: see :func:`encode_body` (``None``: an empty map).
            timeout: seconds until the Deferred fails with :class:`ClientTimeout`
                (``None``: :data:`DEFAULT_TIMEOUT`; every request has a deadline).
            raw: ``body`` is bytes sent as is, and the reply is returned as bytes
                (unless ``reply_type`` says otherwise).
            reply_type: a generated Thrift struct class to decode the reply into
                (``bytes``: the reply's bytes as they are).
            seq: the packet's seq (default: the next free one of this connection). A
                :class:`~mmo.client.Client` numbers requests per session and resends
                one with its seq, so that the service runs it once (docs/protocol.md).
            trace: a trace id of the client's own (1-64 of ``[0-9A-Za-z_-]``): the request
                is traced at every hop under it (``mmo trace ID``; docs/operations.md).

        Returns:
            A Deferred firing with the decoded reply, or failing with
            :class:`ClientRequestError` (the broker's ``ERROR``), :class:`ClientTimeout`,
            :class:`ClientDisconnected` or ``WireError`` (a body that does not encode
            or a reply that does not decode). Cancelling it forgets the request.
        """
        if not self.is_connected:
            return defer.fail(self._disconnected(route))
        try:
            data = encode_body(body, raw)
        except WireError as e:
            return defer.fail(e)
        if raw and reply_type is None:
            reply_type = bytes
        if seq is None:
            seq = self._allocate_seq()

        def cancel(_: defer.Deferred[Any]) -> None:
            call = self._pending.pop(seq, None)
            if call is not None and call.timer.active():
                call.timer.cancel()

        d: defer.Deferred[Any] = defer.Deferred(cancel)
        if timeout is None:
            timeout = DEFAULT_TIMEOUT
        timer = self.clock.callLater(max(0.0, timeout), self._expire, seq, timeout)
        self._pending[seq] = _Pending(route, d, timer, reply_type)
        self.send_packet(
            Packet(kind=PacketKind.REQUEST, seq=seq, route=route, body=data, trace=trace)
        )
        return d

    def notify(
        self, route: str, body: Any = None, *, raw: bool = False, trace: str | None = None
    ) -> None:
        """Send a one-way ``NOTIFY`` (a refusal comes back as an error with seq 0;
        ``trace``: as for :meth:`request`).

        Raises:
            ClientDisconnected: the connection is not up.
            WireError: the body cannot be encoded.
        """
        if not self.is_connected:
            raise self._disconnected(route)
        data = encode_body(body, raw)
        self.send_packet(Packet(kind=PacketKind.NOTIFY, route=route, body=data, trace=trace))

    def on(
        self, route: str, callback: PushCallback, body_type: type | None = None
    ) -> Callable[[], None]:
        """Register a push callback; see :meth:`Listeners.on`."""
        return self.listeners.on(route, callback, body_type)

    def on_error(self, callback: ErrorCallback) -> None:
        """Register a callback for errors with seq 0; see :meth:`Listeners.on_error`."""
        self.listeners.on_error(callback)

    def start_heartbeat(self, interval: float | None = None) -> None:
        """Send ``HEARTBEAT`` every ``interval`` seconds from now on (restarts if running).

        Call it once logged in: the broker refuses anything but a login first. When
        nothing at all arrived for :attr:`DEAD_AFTER_BEATS` intervals, the broker is
        taken for dead and the connection is dropped.

        Args:
            interval: seconds; :data:`DEFAULT_HEARTBEAT` when ``None`` or not positive.
        """
        self.stop_heartbeat()
        if interval is None or interval <= 0:
            interval = DEFAULT_HEARTBEAT
        self.heartbeat_interval = float(interval)
        beat = task.LoopingCall(self._beat)
        beat.clock = cast(Any, self.clock)
        self._heartbeat = beat
        beat.start(self.heartbeat_interval, now=False).addErrback(
            lambda f: log.failure("heartbeat loop failed", f)
        )

    def stop_heartbeat(self) -> None:
        """Stop sending heartbeats."""
        beat, self._heartbeat = self._heartbeat, None
        if beat is not None and beat.running:
            beat.stop()

    def send_heartbeat(self) -> None:
        """Send one ``HEARTBEAT`` now (if connected)."""
        if self.is_connected:
            self.send_packet(Packet(kind=PacketKind.HEARTBEAT))

    def send_packet(self, packet: Packet) -> None:
        """Encode and send one packet."""
        self.send_frame(encode(packet))

    def close(self) -> defer.Deferred[ClientDisconnected]:
        """Close the connection; the Deferred fires once it is lost."""
        d = self.when_closed()
        if self.transport is not None and self._is_connected:
            self.transport.loseConnection()
        return d

    def when_closed(self) -> defer.Deferred[ClientDisconnected]:
        """A Deferred firing (never failing) with the :class:`ClientDisconnected` of the loss."""
        if self._lost is not None:
            return defer.succeed(self._lost)
        d: defer.Deferred[ClientDisconnected] = defer.Deferred()
        self._closed.append(d)
        return d

    # -- packets from the broker -----------------------------------------------

    def packet_received(self, packet: Packet) -> None:
        """Act on one decoded packet from the broker."""
        kind = packet.kind
        if kind == PacketKind.RESPONSE:
            self._answer(packet, None)
        elif kind == PacketKind.ERROR:
            error = ClientRequestError(packet.code or 0, packet.message or "")
            if packet.seq:
                self._answer(packet, error)
            else:
                self.last_error = error
                self.listeners.error(error)
        elif kind == PacketKind.PUSH:
            self.listeners.push(packet.route or "", packet.body)
        elif kind == PacketKind.HEARTBEAT:
            pass  # last_received is all it is for
        elif kind == PacketKind.KICK:
            self.kicked = ClientRequestError(packet.code or 0, packet.message or "")
            self.listeners.kick(self.kicked)
            if self.transport is not None:
                self.transport.loseConnection()
        else:
            log.warn("ignored a packet of kind {kind} from the broker", kind=kind)

    # -- internals ---------------------------------------------------------------

    def _answer(self, packet: Packet, error: ClientRequestError | None) -> None:
        call = self._pending.pop(packet.seq or 0, None)
        if call is None:
            # Typically the answer to a request that timed out here.
            log.info("answer to no pending request (seq {seq})", seq=packet.seq)
            return
        if call.timer.active():
            call.timer.cancel()
        if error is not None:
            call.deferred.errback(error)
            return
        try:
            reply = decode_body(packet.body, call.reply_type)
        except WireError as e:
            call.deferred.errback(e)
            return
        call.deferred.callback(reply)

    def _expire(self, seq: int, timeout: float) -> None:
        call = self._pending.pop(seq, None)
        if call is not None:
            call.deferred.errback(
                ClientTimeout(f"{call.route}: no answer within {timeout:g} s (seq {seq})")
            )

    def _allocate_seq(self) -> int:
        while True:
            seq = self._next_seq
            self._next_seq = 1 if seq >= MAX_SEQ else seq + 1
            if seq not in self._pending:
                return seq

    def _beat(self) -> None:
        interval = self.heartbeat_interval or DEFAULT_HEARTBEAT
        silent = self.clock.seconds() - self.last_received
        if silent >= self.DEAD_AFTER_BEATS * interval:
            log.warn("nothing from the broker for {silent:.1f} s: dropping it", silent=silent)
            self._abort()
            return
        self.send_heartbeat()

    def _abort(self) -> None:
        self.stop_heartbeat()
        transport = self.transport
        if transport is not None:
            # Every TCP transport has it (ITCPTransport); ITransport does not say so.
            cast(Any, transport).abortConnection()

    def _disconnected(self, route: str) -> ClientDisconnected:
        if self._lost is not None:
            return ClientDisconnected(f"{route}: {self._lost}", self._lost.cause)
        return ClientDisconnected(f"{route}: not connected")
