"""The broker's core: one Service composing the parts of an edge process.

* :class:`~mmo.broker.table.SessionTable`: the connections, sessions and channels.
* :class:`~mmo.broker.login.LoginGate`: login, resume, logout and refresh with the
  session service, and what it is told of sessions.
* :class:`~mmo.broker.forwarder.Forwarder`: players' requests and notifies to workers,
  through the :class:`~mmo.logic.client.Directory`, and the answers back.
* :class:`~mmo.broker.internal.InternalEndpoint`: what logic sends to players (push,
  broadcast, join, kick...).

The :class:`Broker` admits connections (it is the :class:`~mmo.broker.connection.Edge`
they talk to), sweeps idle ones, keeps the registry's load current, counts, and stops
gracefully: every client is kicked (they resume elsewhere), requests in flight are
waited for, and the internal endpoint is closed last. An operator may drain it while
it runs (:meth:`Broker.drain`, the internal endpoint's ``drain``): it admits no new
connection, keeps its players, says ``drained: true`` in its registry entry (the
brokerlist stops listing it) and is not ready; taken back, it admits again.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, ClassVar

from twisted.application.service import Service
from twisted.internet import defer, task
from twisted.logger import Logger
from typing_extensions import override

from mmo.broker.config import BrokerConfig
from mmo.broker.connection import ClientConnection
from mmo.broker.counters import Counters, InFlight
from mmo.broker.forwarder import Forwarder
from mmo.broker.internal import InternalEndpoint
from mmo.broker.login import LoginGate
from mmo.broker.routes import RoutePatterns, RouteTable
from mmo.broker.table import SessionTable
from mmo.logic.client import Directory
from mmo.registry import Registration
from mmo.wire.gen.mmo.ttypes import ClientError, Packet
from mmo.zmq import ZmqContext

__all__ = ["Broker"]


class Broker(Service):
    """Sessions and routing of one broker process.

    Args:
        config: the broker's settings.
        context: the process's ZeroMQ context.
        directory: the process's directory (calls to workers, the session service).
        instance_id: this broker's id in the registry.
        registration: this broker's registry entry (its load is kept current).
        key: the key resume tokens are signed with (shared with the session service):
            a forged or expired token is turned away here.

    Attributes:
        table: the connections, sessions and channels.
        gate: the exchange with the session service.
        forwarder: the routing of players' packets to workers.
        internal: the endpoint logic reaches players through.
        counters: events counted (see :meth:`stats`).
        in_flight: the requests in flight (a stop waits for them).
        accepting: whether new connections are admitted (between start and stop).
        draining: an operator drained it (:meth:`drain`): it admits no new connection.
        drain_listeners: called with the new state by :meth:`drain` (the telemetry's
            readiness).
    """

    log = Logger()

    def __init__(
        self,
        config: BrokerConfig,
        context: ZmqContext,
        directory: Directory,
        instance_id: str,
        registration: Registration,
        key: bytes,
    ) -> None:
        self.config = config
        self.clock = context.reactor
        self.directory = directory
        self.instance_id = instance_id
        self.registration = registration
        self.counters = Counters()
        self.in_flight = InFlight()
        self.routes = RouteTable(directory.view, config.routes)
        self.tcp_routes = RoutePatterns(config.listen_routes)
        self.websocket_routes = RoutePatterns(config.websocket_routes)
        self.table = SessionTable(config, self.counters)
        self.forwarder = Forwarder(
            config, directory, self.routes, self.table, self.counters, self.in_flight
        )
        self.gate = LoginGate(
            config,
            directory,
            key,
            self.routes,
            self.table,
            self.counters,
            self.in_flight,
            self.forwarder,
        )
        self.internal = InternalEndpoint(config, context, self.table, self.gate, self.counters)
        self.accepting = False
        self.draining = False
        self.drain_listeners: list[Callable[[bool], None]] = []
        self.internal.on_drain = self.drain
        self.packets_in = self.bytes_in = self.packets_out = self.bytes_out = 0
        self._sweeper: task.LoopingCall | None = None
        self._published_sessions = 0
        directory.on_one_way_error = self.forwarder.notify_failed

    #: The settings :meth:`reload` applies while the broker runs; the others (listeners,
    #: addresses, instance id, yellow, TLS, login routes) need a restart.
    LIVE: ClassVar[frozenset[str]] = frozenset(
        {
            "max_frame",
            "rate",
            "burst",
            "idle_timeout",
            "login_timeout",
            "heartbeat",
            "max_outbound",
            "capacity",
            "max_per_address",
            "max_channels",
            "max_channel_name",
            "channel_budget",
            "sender_rate",
            "sender_burst",
            "request_timeout",
            "trace_sample",
            "drain_timeout",
            "routes",
            "listen_routes",
            "websocket_routes",
        }
    )

    def reload(self, config: BrokerConfig) -> frozenset[str]:
        """Apply the :attr:`LIVE` settings of ``config`` (checked already; a reload of the
        process's configuration): limits, routes, client-route narrowing. Connections in
        place take the new limits from their next packet (their outbound queue's
        ``max-outbound`` excepted: new connections get it). Returns the settings applied."""
        config = dataclasses.replace(
            self.config, **{name: getattr(config, name) for name in self.LIVE}
        )
        capacity_changed = config.capacity != self.config.capacity
        self.config = self.table.config = self.forwarder.config = self.gate.config = config
        self.internal.reconfigure(config)
        self.routes.routes = dict(config.routes)
        self.tcp_routes.set(config.listen_routes)
        self.websocket_routes.set(config.websocket_routes)
        if self._sweeper is not None:
            self._sweeper.interval = min(1.0, config.login_timeout / 2)
        if capacity_changed and self.running:
            self.registration.update_meta(now=False, **self.load_meta())
        return self.LIVE

    # -- lifecycle -------------------------------------------------------------

    def bind(self) -> str:
        """Bind the internal endpoint (before registering); its address."""
        return self.internal.bind()

    @override
    def startService(self) -> None:
        """Bind, then sweep idle connections and keep the load current."""
        super().startService()
        self.bind()
        self.accepting = True
        self._sweeper = task.LoopingCall(self._sweep)
        self._sweeper.clock = self.clock
        self._sweeper.start(min(1.0, self.config.login_timeout / 2), now=False)

    @override
    def stopService(self) -> defer.Deferred[None]:
        """Kick every client (SHUTDOWN: they resume elsewhere), wait for requests, close."""
        super().stopService()
        self.accepting = False
        if self._sweeper is not None and self._sweeper.running:
            self._sweeper.stop()
        for conn in list(self.table.connections):
            conn.kick(ClientError.SHUTDOWN, "the broker is stopping; resume elsewhere")
        d = self.in_flight.drained(self.config.drain_timeout, self.clock)
        return d.addCallback(lambda _: self.internal.close())

    def drain(self, draining: bool = True) -> None:
        """Admit no new connection (``draining``; the players here stay, and logic still
        reaches them), or admit again; the registry entry says so at once (meta
        ``draining``), and :attr:`drain_listeners` are told."""
        if draining != self.draining:
            self.log.info(
                "broker {id}: {what}",
                id=self.instance_id,
                what="drained: admitting no new players" if draining else "admitting again",
            )
        self.draining = draining
        self.registration.update_meta(drained=draining)
        for listener in self.drain_listeners:
            listener(draining)

    def _sweep(self) -> None:
        """Close connections past the login or idle timeout; publish the load if it changed."""
        now = self.clock.seconds()
        config = self.config
        for conn in list(self.table.connections):
            if not conn.logged_in and now - conn.connected_at > config.login_timeout:
                self.count("login_timeouts")
                conn.fail(None, ClientError.LOGIN_TIMEOUT, "no login in time")
            elif conn.logged_in and now - conn.last_seen > config.idle_timeout:
                self.count("idle_kicks")
                conn.kick(ClientError.IDLE, "no packet within the idle timeout")
        if len(self.table.sessions) != self._published_sessions:
            self.registration.update_meta(now=False, **self.load_meta())
        self.internal.prune(now)

    # -- counters ----------------------------------------------------------------

    def count(self, what: str, n: int = 1) -> None:
        """Count an event (see :meth:`stats`)."""
        self.counters.count(what, n)

    def stats(self) -> dict[str, Any]:
        """Counters and gauges for operators."""
        table = self.table
        return {
            "connections": len(table.connections),
            "sessions": len(table.sessions),
            "channels": len(table.channels),
            "addresses": len(table.per_address),
            "in_flight": self.in_flight.count,
            "packets_in": self.packets_in,
            "bytes_in": self.bytes_in,
            "packets_out": self.packets_out,
            "bytes_out": self.bytes_out,
            **self.counters,
        }

    def readiness(self) -> tuple[bool, str]:
        """Whether it admits players (a readiness check)."""
        if self.draining:
            return False, "not admitting players (drained by an operator)"
        if self.accepting:
            return True, f"{len(self.table.sessions)} sessions of {self.config.capacity}"
        return False, "not admitting players (starting or stopping)"

    def load_meta(self) -> dict[str, Any]:
        """The registry metadata describing this broker's load (what it publishes)."""
        sessions = self._published_sessions = len(self.table.sessions)
        return {
            "sessions": sessions,
            "capacity": self.config.capacity,
            "load": round(sessions / self.config.capacity, 6),
        }

    # -- what connections ask (Edge) -------------------------------------------------

    def connection_made(self, conn: ClientConnection) -> None:
        """A client connected: admit it unless the broker is full or its address is at the cap."""
        self.count("connections_opened")
        if self.draining and self.accepting:
            self.count("refused_draining")
            conn.fail(None, ClientError.UNAVAILABLE, "the broker is draining; connect to another")
            return
        if not self.accepting or self.table.full():
            self.count("refused_full")
            conn.fail(None, ClientError.UNAVAILABLE, "the broker is full or stopping")
            return
        self.table.admit(conn)

    def connection_lost(self, conn: ClientConnection) -> None:
        """A client's connection is gone: the session goes offline (it may resume)."""
        sid = self.table.release(conn)
        if sid is not None:
            self.gate.closed(sid)

    def before_login(self, conn: ClientConnection, packet: Packet) -> None:
        """A packet from a client without a session (see :class:`LoginGate`)."""
        self.gate.before_login(conn, packet)

    def request(self, conn: ClientConnection, packet: Packet) -> None:
        """A logged-in player's REQUEST: a session route, or forwarded to its service."""
        if self.gate.serves(packet.route):
            self.gate.request(conn, packet)
        else:
            self.forwarder.request(conn, packet)

    def notify(self, conn: ClientConnection, packet: Packet) -> None:
        """A logged-in player's NOTIFY, forwarded one-way to its service."""
        self.forwarder.notify(conn, packet)
