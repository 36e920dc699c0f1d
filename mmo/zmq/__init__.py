"""ZeroMQ sockets on the Twisted reactor (a thin layer over txZMQ).

One :class:`ZmqContext` per process owns the ZeroMQ context; sockets are made
from it with :meth:`ZmqContext.socket`, one class per use rather than per
pattern: a :class:`ZmqSocket` hands each multipart message to a callback and can
report connection events (connected, disconnected) through a monitor socket.

Links over ``tcp://`` are encrypted and authenticated with CURVE when
``$MMO_CURVE_KEYS`` names a keys directory (:mod:`mmo.zmq.curve`); ``inproc://``
links (monitors) always use NULL security.
"""

from __future__ import annotations

import contextlib
import enum
import itertools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import zmq
from twisted.application.service import Service
from twisted.logger import Logger
from txzmq import ZmqConnection, ZmqEndpoint, ZmqFactory
from typing_extensions import override
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils.monitor import parse_monitor_message

from mmo.zmq.curve import (
    CurveKeys,
    curve_keys_from_environment,
    role_curve_keys,
    start_authenticator,
)

__all__ = [
    "EVENT_CONNECTED",
    "EVENT_DISCONNECTED",
    "FOR_ROLE",
    "FROM_ENVIRONMENT",
    "LIVENESS",
    "CurveKeys",
    "ZmqContext",
    "ZmqContextService",
    "ZmqSocket",
]

log = Logger()

EVENT_CONNECTED = zmq.EVENT_HANDSHAKE_SUCCEEDED
EVENT_DISCONNECTED = zmq.EVENT_DISCONNECTED

MessageHandler = Callable[[list[bytes]], None]
EventHandler = Callable[[int, str], None]

#: Options for a link that must notice a dead peer by itself: ZeroMQ heartbeats drop a
#: connection silent for 3 s (a hung process, a cut network) and ZeroMQ connects again; a
#: connection attempt still unanswered after 1 s is given up and made afresh, so that a
#: healed network is used within a second or so, not after the kernel's SYN back-off.
LIVENESS = {
    zmq.HEARTBEAT_IVL: 1000,
    zmq.HEARTBEAT_TIMEOUT: 3000,
    zmq.CONNECT_TIMEOUT: 1000,
}

_monitor_ids = itertools.count(1)
# Plain ints: combining pyzmq's enum flags on every frame costs more than the send.
_MORE = int(zmq.NOBLOCK) | int(zmq.SNDMORE)
_LAST = int(zmq.NOBLOCK)
_POLLIN = int(zmq.POLLIN)


class _Default(enum.Enum):
    FROM_ENVIRONMENT = "from the environment"
    FOR_ROLE = "required for a role"


#: ``ZmqContext(curve=...)``'s default: the keys ``$MMO_CURVE_KEYS`` names, if any.
FROM_ENVIRONMENT = _Default.FROM_ENVIRONMENT
#: ``ZmqContextService(curve=...)``'s default: the keys ``$MMO_CURVE_KEYS`` names,
#: required unless insecure links were chosen (:func:`mmo.zmq.curve.role_curve_keys`).
FOR_ROLE = _Default.FOR_ROLE


class ZmqContext:
    """The process's ZeroMQ context, bound to one reactor.

    Args:
        reactor: the reactor sockets register with (the global one if ``None``).
        curve: the CURVE keys securing ``tcp://`` links, ``None`` for NULL security;
            by default read from ``$MMO_CURVE_KEYS`` (:mod:`mmo.zmq.curve`).

    Raises:
        mmo.config.ConfigError: ``$MMO_CURVE_KEYS`` is set but its keys are missing or bad.
    """

    def __init__(
        self, reactor: Any = None, *, curve: CurveKeys | _Default | None = FROM_ENVIRONMENT
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.reactor = reactor
        if curve is FROM_ENVIRONMENT:
            self.curve = curve_keys_from_environment()
        elif curve is FOR_ROLE:
            self.curve = role_curve_keys()
        else:
            assert not isinstance(curve, _Default)
            self.curve = curve
        self._lazy_factory: ZmqFactory | None = None
        self._authenticator: ThreadAuthenticator | None = None

    @property
    def _factory(self) -> ZmqFactory:
        # Made on first use: a ZeroMQ context starts an I/O thread.
        if self._lazy_factory is None:
            self._lazy_factory = ZmqFactory()
            self._lazy_factory.reactor = self.reactor
            self._lazy_factory.lingerPeriod = 0
        return self._lazy_factory

    def socket(
        self,
        socket_type: int,
        on_message: MessageHandler | None = None,
        *,
        options: Mapping[Any, Any] | None = None,
    ) -> ZmqSocket:
        """Make a socket of ``socket_type`` (``zmq.ROUTER``, ...) on this context."""
        return ZmqSocket(self, socket_type, on_message, options or {})

    def security_options(self, address: str, *, server: bool) -> dict[int, Any]:
        """Socket options securing a bind (``server``) or a connect to ``address``.

        The first CURVE bind starts the ZAP authenticator that checks clients.
        """
        if self.curve is None or not address.startswith("tcp://"):
            return {}
        if not server:
            return self.curve.client_options()
        if self._authenticator is None:
            self._authenticator = start_authenticator(
                self._factory.context, self.curve, self.reactor
            )
            log.info(
                "CURVE on: tcp:// links encrypted, clients checked against {authorized}",
                authorized=self.curve.authorized_dir,
            )
        return self.curve.server_options()

    def close(self) -> None:
        """Close every socket, stop the authenticator and terminate the context."""
        factory, self._lazy_factory = self._lazy_factory, None
        authenticator, self._authenticator = self._authenticator, None
        if factory is not None:
            for conn in list(factory.connections):
                conn.close()
            if authenticator is not None:
                authenticator.stop()
            factory.shutdown()


class ZmqContextService(Service):
    """Owns a role's :class:`ZmqContext`: closes it when the service stops.

    Its construction reads ``$MMO_CURVE_KEYS``, required by default (``FOR_ROLE``:
    see :func:`mmo.zmq.curve.role_curve_keys`), so missing or bad keys stop a role
    while its service tree is built, before anything starts. Put it first in a
    service tree: children stop in reverse order, so every socket user has stopped
    before the context is terminated.
    """

    def __init__(
        self, reactor: Any = None, *, curve: CurveKeys | _Default | None = FOR_ROLE
    ) -> None:
        self.context = ZmqContext(reactor, curve=curve)

    @override
    def stopService(self) -> None:
        """Terminate the context."""
        super().stopService()
        self.context.close()


class ZmqSocket(ZmqConnection):
    """A ZeroMQ socket whose messages go to ``on_message`` on the reactor thread.

    Sends never block: when ZeroMQ's high-water mark is reached, :meth:`send`
    raises ``zmq.Again`` and the caller decides (the logic layer fails that call).
    """

    def __init__(
        self,
        context: ZmqContext,
        socket_type: int,
        on_message: MessageHandler | None,
        options: Mapping[Any, Any],
    ) -> None:
        self.socketType = socket_type
        self.on_message = on_message
        self._ctx = context
        self._monitor: ZmqSocket | None = None
        self.read_scheduled: Any = None
        self.closed = False
        super().__init__(context._factory)
        for opt, value in options.items():
            self.socket.set(opt, value)

    def bind(self, address: str) -> str:
        """Bind to ``address`` (``tcp://127.0.0.1:*`` picks a free port); return the address."""
        self._secure(address, server=True)
        self.addEndpoints([ZmqEndpoint("bind", address)])
        return str(self.socket.get(zmq.LAST_ENDPOINT).decode())

    def connect(self, address: str, *, server_key: bytes | None = None) -> None:
        """Connect to ``address``; ZeroMQ reconnects by itself when the link drops.

        Args:
            server_key: with CURVE, the server's public key when it is not the
                context's (another cluster's bridge).
        """
        self._secure(address, server=False, server_key=server_key)
        self.addEndpoints([ZmqEndpoint("connect", address)])

    def _secure(self, address: str, *, server: bool, server_key: bytes | None = None) -> None:
        # ZeroMQ copies a socket's options into each bind and connect as it is made.
        options = self._ctx.security_options(address, server=server)
        if options and server_key is not None:
            options[zmq.CURVE_SERVERKEY] = server_key  # last: it makes the socket a client
        for option, value in options.items():
            self.socket.set(option, value)

    def disconnect(self, address: str) -> None:
        """Stop connecting to ``address``."""
        with contextlib.suppress(zmq.ZMQError):
            self.socket.disconnect(address)

    def monitor(self, on_event: EventHandler) -> None:
        """Report connection events as ``on_event(event, peer_address)``."""
        address = f"inproc://mmo-monitor-{id(self)}-{next(_monitor_ids)}"
        self.socket.monitor(address, EVENT_CONNECTED | EVENT_DISCONNECTED)

        def got(frames: list[bytes]) -> None:
            event = parse_monitor_message(frames)
            on_event(event["event"], event["endpoint"].decode(errors="replace"))

        self._monitor = self._ctx.socket(zmq.PAIR, got)
        self._monitor.connect(address)
        # The descriptor is edge-triggered and the socket was first read before it was
        # connected: read once more now, or the first event never raises an edge.
        self._monitor.doRead()

    @override
    def send(self, message: Sequence[bytes]) -> None:
        """Send a multipart message without blocking."""
        sock = self.socket
        for part in message[:-1]:
            sock.send(part, _MORE)
        sock.send(message[-1], _LAST)
        # ZeroMQ's descriptor is edge-triggered: touching the socket may swallow
        # the read edge, so look for input on the next reactor turn.
        if self.read_scheduled is None:
            self.read_scheduled = self._ctx.reactor.callLater(0, self.doRead)

    @override
    def doRead(self) -> None:
        """Hand every complete message waiting on the socket to the callback.

        txZMQ's own loop reads frame by frame (a ``recv`` and an ``RCVMORE`` lookup each)
        and wraps every message in a logging context; this one takes a message with one
        ``recv_multipart`` while ``EVENTS`` says one is waiting (the check that also
        re-arms ZeroMQ's edge-triggered descriptor), and only catches what the callback
        raises: logged, and the messages after it are still read (nothing left behind
        would raise another edge).
        """
        scheduled, self.read_scheduled = self.read_scheduled, None
        if scheduled is not None and scheduled.active():
            scheduled.cancel()
        sock = self.socket
        while not self.closed and sock.get(zmq.EVENTS) & _POLLIN:
            try:
                message = sock.recv_multipart(_LAST)
            except zmq.Again:
                continue
            if self.on_message is not None:
                try:
                    self.on_message(message)
                except Exception:
                    log.failure("mmo.zmq: a message's handler failed")

    def close(self) -> None:
        """Close the socket (and its monitor)."""
        if self.closed:
            return
        self.closed = True
        if self._monitor is not None:
            with contextlib.suppress(zmq.ZMQError):
                self.socket.disable_monitor()
            self._monitor.close()
            self._monitor = None
        self.shutdown()

    @override
    def logPrefix(self) -> str:
        """Prefix for Twisted's log lines."""
        return "mmo.zmq"
