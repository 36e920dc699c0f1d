"""Players' requests and notifies on their way to workers, and the answers on their way back.

A player reaches only the routes handlers declare for players
(:mod:`mmo.broker.routes`); anything else is refused exactly as a route that does
not exist. Each packet goes through the :class:`~mmo.logic.client.Directory` with
its body untouched (``raw_body``), marked as a player's (``Origin.CLIENT``, or
``LOGIN`` before login) with the player's address, so the worker checks it again
and never takes identity from the body. A failure comes back to the player as a
``ClientError`` (:func:`client_error`).
"""

from __future__ import annotations

import random
from typing import Any

from mmo.broker.config import BrokerConfig
from mmo.broker.connection import ClientConnection
from mmo.broker.counters import Counters, InFlight
from mmo.broker.routes import RouteTable
from mmo.broker.table import SessionTable
from mmo.errors import (
    BadRequest,
    DeadlineExceeded,
    MmoError,
    NoLiveInstance,
    RemoteError,
    UnknownMethod,
    from_wire,
)
from mmo.logic.client import Directory
from mmo.telemetry.trace import Trace, client_trace, new_trace_id
from mmo.wire.gen.mmo.ttypes import ClientError, Header, Origin, Packet

__all__ = ["Forwarder", "client_error", "unknown_route"]


def unknown_route(route: str | None) -> str:
    """What a player is told of a route it may not use: the same for a route that does
    not exist, a method no handler declares for players, and one its listener refuses."""
    return f"no such route {route!r}"


def client_error(error: BaseException, route: str | None = None) -> tuple[int, str]:
    """The ClientError code and message a failed forwarded request (to ``route``) becomes;
    a method the worker does not have, or not for players, reads as any refused route."""
    if isinstance(error, RemoteError):
        return ClientError.SERVICE_ERROR, f"{error.type}: {error.message}"
    if isinstance(error, UnknownMethod):
        return ClientError.UNKNOWN_ROUTE, unknown_route(route)
    if isinstance(error, BadRequest):
        return ClientError.BAD_REQUEST, str(error)
    if isinstance(error, DeadlineExceeded):
        return ClientError.TIMEOUT, "the service did not answer in time"
    if isinstance(error, MmoError):
        return ClientError.UNAVAILABLE, str(error)
    return ClientError.SERVICE_ERROR, "internal error"


class Forwarder:
    """Routes players' packets to the services that serve them and answers the players.

    Args:
        config: the broker's settings (the request deadline).
        directory: the process's directory (calls and one-way sends to workers).
        routes: the routes players may call, kept current from the registry.
        table: the broker's sessions (whom a failed notify is reported to).
        counters: where requests, notifies and errors are counted.
        in_flight: the broker's requests in flight (a stop waits for them).
    """

    def __init__(
        self,
        config: BrokerConfig,
        directory: Directory,
        routes: RouteTable,
        table: SessionTable,
        counters: Counters,
        in_flight: InFlight,
    ) -> None:
        self.config = config
        self.directory = directory
        self.routes = routes
        self.table = table
        self.counters = counters
        self.in_flight = in_flight

    def request(self, conn: ClientConnection, packet: Packet) -> None:
        """Forward a logged-in player's REQUEST to its service; answer with its reply
        or a ClientError."""
        target = self._route(conn, packet)
        if target is None:
            return
        _, service, method, bound = target
        self.forward(conn, packet, service, method, Origin.CLIENT, bound)

    def forward(
        self,
        conn: ClientConnection,
        packet: Packet,
        service: str,
        method: str,
        origin: int,
        bound: str | None = None,
    ) -> None:
        """Call ``service.method`` with a player's REQUEST (as ``origin``: CLIENT with the
        session, LOGIN without; on the ``bound`` instance, if given); answer with the
        reply or a ClientError."""
        logged_in = origin == Origin.CLIENT
        self.counters.count("requests")
        in_flight = self.in_flight

        def done(body: Any, error: MmoError | None) -> None:
            in_flight.end()
            if error is None:
                conn.respond(packet.seq, body)
            else:
                self._refused(error, conn, packet, bound)

        in_flight.begin()
        self.directory.forward(
            service,
            method,
            packet.body or b"",
            done,
            session=conn.session() if logged_in else None,
            instance=bound,
            timeout=self.config.request_timeout,
            client_seq=packet.seq if logged_in else None,
            origin=origin,
            peer=conn.host,
            trace=self.trace(packet),
        )

    def notify(self, conn: ClientConnection, packet: Packet) -> None:
        """Forward a NOTIFY one-way, to the same instance as the session's last one
        for that prefix while it lives (so one client's notifies keep their order)."""
        target = self._route(conn, packet)
        if target is None:
            return
        prefix, service, method, bound = target
        # The bound instance, else the last one, while its connection is up; dropped
        # (killed, most likely: the registry says so seconds later), a connected one takes
        # the notify rather than a dead link losing it. A binding stays: the instance that
        # takes it may bind the session to itself (chat does), and a request still finds
        # out whether the bound one is gone.
        sent = self.directory.send(
            service,
            method,
            packet.body or b"",
            prefer=bound or conn.sticky.get(prefix),
            # Marked as a player's, with the route: a failure comes back as an ERROR for them.
            session=conn.session(),
            origin=Origin.CLIENT,
            peer=conn.host,
            route=packet.route,
            **self.trace(packet).fields(),
        )
        if sent is None:
            conn.error(None, ClientError.UNAVAILABLE, f"{packet.route}: no live instance serves it")
            return
        self.counters.count("notifies")
        if bound is None:
            conn.sticky[prefix] = sent

    def trace(self, packet: Packet) -> Trace:
        """The trace of a player's packet: the client's own id (traced at every hop), or
        a new one (traced if sampled: ``trace_sample``)."""
        if packet.trace is not None:
            own = client_trace(packet.trace)
            if own is not None:
                return Trace(own, True)
        sample = self.config.trace_sample
        return Trace(new_trace_id(), bool(sample) and random.random() < sample)

    def notify_failed(self, header: Header) -> None:
        """A worker says a player's NOTIFY failed: tell the player (ERROR, no seq)."""
        error = from_wire(header.error_code, header.error_type, header.error_message)
        route = header.route or f"{header.service_name}.{header.method}"
        code, message = client_error(error, route)
        self.counters.count("notify_errors")
        if not message.startswith(f"{route}:"):
            message = f"{route}: {message}"
        for sid in header.targets or ():
            conn = self.table.sessions.get(sid)
            if conn is not None:
                conn.error(None, code, message)

    def _route(
        self, conn: ClientConnection, packet: Packet
    ) -> tuple[str, str, str, str | None] | None:
        """Where a logged-in player's packet goes: ``(prefix, service, method, bound
        instance)``, or None (refused, as a route that does not exist)."""
        route = packet.route or ""
        target = self.routes.target(route)
        if target is None or not conn.routes.accepts(route):
            self.counters.count("unknown_route")
            conn.error(packet.seq, ClientError.UNKNOWN_ROUTE, unknown_route(packet.route))
            return None
        prefix, service, method = target
        return prefix, service, method, conn.bindings.get(prefix)

    def _refused(
        self, error: MmoError, conn: ClientConnection, packet: Packet, bound: str | None
    ) -> None:
        if bound is not None and isinstance(error, NoLiveInstance):
            # The bound instance is gone: route by load from now on.
            prefix = (packet.route or "").partition(".")[0]
            conn.bindings.pop(prefix, None)
        code, message = client_error(error, packet.route)
        self.counters.count(f"errors_{ClientError._VALUES_TO_NAMES.get(code, code)}".lower())
        conn.error(packet.seq, code, message)
