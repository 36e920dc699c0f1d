"""A fake :class:`~mmo.zmq.ZmqContext`: sockets that record what is sent and take what a
test delivers, on a ``task.Clock``.

Code that owns ZeroMQ sockets (a server role, a registry link) makes them with
``context.socket(type, on_message, options=...)`` and uses ``context.reactor`` for time.
Given a :class:`FakeZmqContext` instead, it binds, connects and sends without a socket:
each :class:`FakeZmqSocket` keeps the multipart messages sent on it (:attr:`FakeZmqSocket.sent`),
and the test plays the peers with :meth:`FakeZmqSocket.deliver` (a message arriving) and
:meth:`FakeZmqSocket.link_up`/:meth:`FakeZmqSocket.link_down` (monitor events).

Example::

    ctx = FakeZmqContext()
    server = YellowServer(YellowConfig(), SimpleNamespace(context=ctx))
    server.startService()
    (router,) = ctx.sockets
    router.deliver([b"peer", encode(RegistryMessage(op=RegistryOp.QUERY))])
    ident, reply = router.sent[-1]
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import zmq
from twisted.internet import task

from mmo.types import Clock
from mmo.zmq import EVENT_CONNECTED, EVENT_DISCONNECTED

__all__ = ["FakeZmqContext", "FakeZmqSocket"]

_ports = itertools.count(30000)


class FakeZmqSocket:
    """A ZeroMQ socket stand-in with the surface of :class:`~mmo.zmq.ZmqSocket`.

    Attributes:
        socket_type: ``zmq.ROUTER``, ``zmq.DEALER``...
        on_message: the callback :meth:`deliver` hands messages to.
        options: socket options, as given and as set since.
        bound: addresses bound (a ``*`` port replaced by a made-up one), in order.
        connected: addresses connected to and not disconnected since.
        subscriptions: topic prefixes a SUB socket subscribes to.
        sent: every multipart message sent, in order.
        refuse: when set, :meth:`send` raises it (``zmq.Again()``: the peer's queue is
            full; ``zmq.ZMQError(zmq.EHOSTUNREACH)``: a ROUTER's peer is gone).
        closed: whether :meth:`close` was called.
    """

    def __init__(
        self,
        context: FakeZmqContext,
        socket_type: int,
        on_message: Callable[[list[bytes]], None] | None,
        options: Mapping[Any, Any],
    ) -> None:
        self.context = context
        self.socket_type = socket_type
        self.on_message = on_message
        self.options: dict[Any, Any] = dict(options)
        self.bound: list[str] = []
        self.connected: list[str] = []
        self.subscriptions: list[bytes] = []
        self.sent: list[list[bytes]] = []
        self.refuse: BaseException | None = None
        self.closed = False
        self.on_event: Callable[[int, str], None] | None = None

    @property
    def socket(self) -> FakeZmqSocket:
        """The raw socket (``subscribe``, ``unsubscribe``, ``set``, ``get``): this fake."""
        return self

    # -- what the code under test does ---------------------------------------

    def bind(self, address: str) -> str:
        """Record a bind; return the address, a ``*`` port replaced by a made-up one."""
        self._check_open()
        if address.endswith(":*"):
            address = f"{address[:-1]}{next(_ports)}"
        self.bound.append(address)
        return address

    def connect(self, address: str) -> None:
        """Record a connect."""
        self._check_open()
        self.connected.append(address)

    def disconnect(self, address: str) -> None:
        """Forget a connect (a missing one is ignored, as on a ZmqSocket)."""
        if address in self.connected:
            self.connected.remove(address)

    def monitor(self, on_event: Callable[[int, str], None]) -> None:
        """Report the events the test plays (:meth:`link_up`, :meth:`link_down`)."""
        self.on_event = on_event

    def send(self, message: Sequence[bytes]) -> None:
        """Record a multipart message (or raise :attr:`refuse`)."""
        self._check_open()
        if self.refuse is not None:
            raise self.refuse
        self.sent.append(list(message))

    def subscribe(self, topic: bytes) -> None:
        """Record a SUB socket's topic filter."""
        self.subscriptions.append(topic)

    def unsubscribe(self, topic: bytes) -> None:
        """Drop a topic filter."""
        if topic in self.subscriptions:
            self.subscriptions.remove(topic)

    def set(self, option: Any, value: Any) -> None:
        """Set a socket option."""
        self.options[option] = value

    def get(self, option: Any) -> Any:
        """A socket option (``zmq.LAST_ENDPOINT``: the last bound address, as bytes)."""
        if option == zmq.LAST_ENDPOINT:
            return self.bound[-1].encode() if self.bound else b""
        return self.options.get(option)

    def doRead(self) -> None:
        """Nothing to read: messages arrive through :meth:`deliver`."""

    def close(self) -> None:
        """Close the socket: it sends and receives no more."""
        self.closed = True

    # -- what the test does ---------------------------------------------------

    def deliver(self, message: Sequence[bytes]) -> None:
        """Hand a multipart message to the socket's callback, as if a peer had sent it."""
        assert not self.closed, "a message delivered to a closed socket"
        if self.on_message is not None:
            self.on_message(list(message))

    def link_up(self, address: str | None = None) -> None:
        """Play the monitor's "connected" event (for ``address``, default the last connect)."""
        self._event(EVENT_CONNECTED, address)

    def link_down(self, address: str | None = None) -> None:
        """Play the monitor's "disconnected" event."""
        self._event(EVENT_DISCONNECTED, address)

    def _event(self, event: int, address: str | None) -> None:
        assert self.on_event is not None, "the socket is not monitored"
        peer = address if address is not None else (self.connected or self.bound or [""])[-1]
        self.on_event(event, peer)

    def _check_open(self) -> None:
        if self.closed:
            raise zmq.ZMQError(zmq.ENOTSOCK, "the socket is closed")


class FakeZmqContext:
    """A :class:`~mmo.zmq.ZmqContext` stand-in making :class:`FakeZmqSocket` sockets.

    Args:
        reactor: the clock the code under test reads as ``context.reactor``
            (default: a new ``task.Clock``).
        curve: what ``context.curve`` says (None: links are not encrypted).

    Attributes:
        sockets: every socket made, in order.
        closed: whether :meth:`close` was called.
    """

    def __init__(self, reactor: Clock | None = None, *, curve: Any = None) -> None:
        self.reactor: Any = reactor if reactor is not None else task.Clock()
        self.curve = curve
        self.sockets: list[FakeZmqSocket] = []
        self.closed = False

    def socket(
        self,
        socket_type: int,
        on_message: Callable[[list[bytes]], None] | None = None,
        *,
        options: Mapping[Any, Any] | None = None,
    ) -> FakeZmqSocket:
        """Make a socket of ``socket_type``."""
        if self.closed:
            raise zmq.ZMQError(zmq.ETERM, "the context is terminated")
        sock = FakeZmqSocket(self, socket_type, on_message, options or {})
        self.sockets.append(sock)
        return sock

    def security_options(self, address: str, *, server: bool) -> dict[int, Any]:
        """No CURVE options: fake links are not encrypted."""
        return {}

    def of_type(self, socket_type: int) -> list[FakeZmqSocket]:
        """The sockets of ``socket_type`` made so far, in order."""
        return [s for s in self.sockets if s.socket_type == socket_type]

    @property
    def last(self) -> FakeZmqSocket:
        """The socket made last."""
        return self.sockets[-1]

    def close(self) -> None:
        """Close every socket and terminate the context."""
        for sock in self.sockets:
            sock.close()
        self.closed = True
