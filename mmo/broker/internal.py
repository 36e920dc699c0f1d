"""The broker's internal endpoint: how logic reaches the players at this broker.

A ROUTER socket bound on the broker's host (registered as its ``rep`` endpoint)
takes one-way requests from logic: ``push``, ``broadcast``, ``join``, ``leave``,
``kick``, ``bind``, ``unbind`` and ``set`` (docs/edge.md), for the sessions the
header's ``targets`` name (or the channel it names). Broadcasts are held to the
config's budgets: bytes per second per channel, and broadcasts per second caused by
one sender. A change a resume must restore is told to the session service.

One more is for operators only (header ``caller_role`` ``admin`` or ``tool``; from any
other role it is refused, counted ``forbidden_internal`` and logged): ``drain``, body
``{"draining": true|false}``, drains the broker (it admits no new connection, its
players stay) or takes it back (:meth:`mmo.broker.core.Broker.drain`).
"""

from __future__ import annotations

from collections.abc import Callable

import zmq
from twisted.logger import Logger

from mmo.broker.config import BrokerConfig
from mmo.broker.connection import packet_bytes
from mmo.broker.counters import Counters
from mmo.broker.limits import Buckets
from mmo.broker.login import LoginGate
from mmo.broker.table import SessionTable
from mmo.logic.handler import OPERATOR_ROLES
from mmo.logic.sessions import ALL
from mmo.net import addresses, with_host
from mmo.telemetry.trace import CURRENT, from_header, span
from mmo.wire import WireError, decode, decode_value
from mmo.wire.gen.mmo.ttypes import ClientError, Header, Kind, PacketKind
from mmo.zmq import ZmqContext, ZmqSocket

__all__ = ["InternalEndpoint"]

#: Largest message logic may send to a broker.
MAX_MESSAGE = 16 * 1024 * 1024


class InternalEndpoint:
    """Fans logic's messages out to the players at this broker.

    Args:
        config: the broker's settings (bind and advertised host, broadcast budgets).
        context: the process's ZeroMQ context.
        table: the broker's sessions and channels.
        gate: tells the session service of kicks and of changes a resume restores.
        counters: where deliveries and bad messages are counted.

    Attributes:
        endpoint: the address logic reaches it at, once bound.
        on_drain: called with ``draining`` by an operator's ``drain`` (the broker's
            :meth:`~mmo.broker.core.Broker.drain`).
    """

    log = Logger()

    def __init__(
        self,
        config: BrokerConfig,
        context: ZmqContext,
        table: SessionTable,
        gate: LoginGate,
        counters: Counters,
    ) -> None:
        self.config = config
        self.context = context
        self.clock = context.reactor
        self.table = table
        self.gate = gate
        self.counters = counters
        self.endpoint: str | None = None
        self.on_drain: Callable[[bool], None] | None = None
        self._socket: ZmqSocket | None = None
        self._channel_budget = Buckets(config.channel_budget, config.channel_budget)
        self._sender_budget = Buckets(config.sender_rate, config.sender_burst)

    def reconfigure(self, config: BrokerConfig) -> None:
        """Take the budgets of ``config`` (a reload): the buckets keep their levels."""
        self.config = config
        self._channel_budget.rate = self._channel_budget.burst = config.channel_budget
        self._sender_budget.rate = config.sender_rate
        self._sender_budget.burst = config.sender_burst

    def bind(self) -> str:
        """Bind the ROUTER socket (once); the address to register."""
        if self.endpoint is None:
            self._socket = self.context.socket(
                zmq.ROUTER, self.received, options={zmq.MAXMSGSIZE: MAX_MESSAGE}
            )
            bind_host, advertise_host = addresses(self.config.bind_host, self.config.advertise_host)
            self.endpoint = with_host(self._socket.bind(f"tcp://{bind_host}:*"), advertise_host)
        return self.endpoint

    def close(self) -> None:
        """Close the socket."""
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    def prune(self, now: float) -> None:
        """Forget the budgets that have refilled (they would start full anyway)."""
        self._channel_budget.prune(now)
        self._sender_budget.prune(now)

    def received(self, frames: list[bytes]) -> None:
        """One message from logic: ``[identity, header, body]``, or a batch of what one
        process sent in one turn, ``[identity, h1, b1, h2, b2, ...]`` (in order)."""
        if len(frames) < 3 or len(frames) % 2 == 0:
            self.counters.count("bad_internal")
            return
        for i in range(1, len(frames), 2):
            self._one(frames[i], frames[i + 1])

    def _one(self, raw_header: bytes, body: bytes) -> None:
        try:
            header = decode(Header, raw_header)
        except WireError as e:
            self.counters.count("bad_internal")
            self.log.warn("broker: bad internal message: {e}", e=e)
            return
        if header.kind != Kind.REQUEST:
            self.counters.count("bad_internal")
            return
        handler = self._methods.get(header.method or "")
        if handler is None:
            self.counters.count("bad_internal")
            self.log.warn("broker: unknown internal method {m!r}", m=header.method)
            return
        trace = from_header(header)
        token = CURRENT.set(trace) if trace is not None else None
        try:
            handler(self, header, body)
        except (WireError, TypeError, ValueError) as e:
            self.counters.count("bad_internal")
            self.log.warn("broker: bad {m} message: {e}", m=header.method, e=e)
        finally:
            if token is not None:
                CURRENT.reset(token)
        if trace is not None and trace.traced:
            # What logic asked of this broker for a traced request (a push, a broadcast).
            span(trace, "server", "broker", header.method or "", "ok", 0.0, header.caller or "")

    # -- the methods -------------------------------------------------------------

    def _push(self, header: Header, body: bytes) -> None:
        frame = packet_bytes(PacketKind.PUSH, None, route=header.route, body=body)
        targets = self.table.targets(header.targets or ())
        for conn in targets:
            conn.send(frame)
        self.counters.count("pushes", len(targets))

    def _broadcast(self, header: Header, body: bytes) -> None:
        channel = header.channel or ""
        members = self.table.members(channel)
        if not members:
            return
        now = self.clock.seconds()
        sender = header.session.id if header.session is not None else None
        if sender is not None and not self._sender_budget.take(sender, 1, now):
            self.counters.count_and_log(
                "broadcasts_over_sender_budget",
                "broker: broadcasts caused by session {sender} over its budget, dropped",
                sender=sender,
            )
            return
        frame = packet_bytes(PacketKind.PUSH, None, route=header.route, body=body)
        if not self._channel_budget.take(channel, len(frame) * len(members), now):
            self.counters.count_and_log(
                "broadcasts_over_channel_budget",
                "broker: broadcasts to {channel!r} over its budget, dropped",
                channel=channel,
            )
            return
        n = 0
        for conn in list(members):
            if conn.logged_in:
                conn.send(frame)
                n += 1
        self.counters.count("broadcasts")
        self.counters.count("broadcast_deliveries", n)
        self.counters.count("pushes", n)

    def _join(self, header: Header, body: bytes) -> None:
        channel = header.channel or ""
        if not channel or channel == ALL:
            raise ValueError(f"cannot join channel {channel!r}")
        for conn in self.table.targets(header.targets or ()):
            if self.table.join(conn, channel):
                self.gate.track(conn, joined=[channel])

    def _leave(self, header: Header, body: bytes) -> None:
        channel = header.channel or ""
        for conn in self.table.targets(header.targets or ()):
            self.table.leave(conn, channel)
            self.gate.track(conn, left=[channel])

    def _kick(self, header: Header, body: bytes) -> None:
        reason = decode_value(body) if body else ""
        for conn in self.table.targets(header.targets or ()):
            if reason == "REPLACED":
                self.table.replace(conn)
                continue
            self.counters.count("kicks")
            # A kicked session ends (no resume): logout, not "closed".
            sid = conn.session_id
            self.table.forget(conn)
            self.gate.kicked(sid)
            conn.kick(ClientError.KICKED, str(reason or "kicked"))

    def _bind(self, header: Header, body: bytes) -> None:
        prefix = decode_value(body)
        if not isinstance(prefix, str) or not header.instance_id:
            raise ValueError("bind takes a prefix and an instance_id")
        for conn in self.table.targets(header.targets or ()):
            conn.bindings[prefix] = header.instance_id
            self.gate.track(conn, bound={prefix: header.instance_id})

    def _unbind(self, header: Header, body: bytes) -> None:
        prefix = decode_value(body)
        for conn in self.table.targets(header.targets or ()):
            conn.bindings.pop(prefix, None)
            self.gate.track(conn, unbound=[prefix])

    def _set(self, header: Header, body: bytes) -> None:
        props = decode_value(body)
        if not isinstance(props, dict):
            raise ValueError("set takes a map of properties")
        for conn in self.table.targets(header.targets or ()):
            conn.set_props(props)
            self.gate.track(conn, props=props)

    def _drain(self, header: Header, body: bytes) -> None:
        if header.caller_role not in OPERATOR_ROLES:
            self.counters.count_and_log(
                "forbidden_internal",
                "broker: drain from {caller} refused: role {role!r} is not an operator's",
                caller=header.caller,
                role=header.caller_role,
            )
            return
        asked = decode_value(body) if body else {}
        draining = asked.get("draining", True) if isinstance(asked, dict) else None
        if not isinstance(draining, bool):
            raise ValueError('drain takes {"draining": true|false}')
        if self.on_drain is not None:
            self.on_drain(draining)

    _methods: dict[str, Callable[[InternalEndpoint, Header, bytes], None]] = {
        "push": _push,
        "broadcast": _broadcast,
        "join": _join,
        "leave": _leave,
        "kick": _kick,
        "bind": _bind,
        "unbind": _unbind,
        "set": _set,
        "drain": _drain,
    }
