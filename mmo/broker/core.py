"""The broker's core: sessions, routing to workers, and what logic sends to clients.

Requests from clients go to workers through the :class:`~mmo.logic.client.Directory`
with their bodies untouched (``raw_body``); answers come back the same way. A
player reaches only the routes handlers declare for players (:mod:`mmo.broker.routes`);
every forwarded packet is marked as a player's (``Origin.CLIENT``, or ``LOGIN`` before
login) with the player's address, so the worker checks it again and never takes
identity from the body. Logic reaches clients through the broker's internal endpoint
(a ROUTER bound on the broker's host and registered as ``rep``): one-way ``push``,
``broadcast``, ``join``, ``leave``, ``kick``, ``bind``, ``unbind`` and ``set``
(docs/edge.md), within the channel limits and broadcast budgets of the config.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

import zmq
from twisted.application.service import Service
from twisted.internet import defer, task
from twisted.logger import Logger
from twisted.python.failure import Failure
from typing_extensions import override

from mmo.broker.config import BrokerConfig
from mmo.broker.connection import ClientConnection, packet_bytes
from mmo.broker.limits import Buckets
from mmo.broker.routes import RoutePatterns, RouteTable
from mmo.data import tokens
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
from mmo.logic.sessions import ALL, RESUME_PURPOSE, SESSION_SERVICE
from mmo.net import advertised_host, bind_address, with_host
from mmo.registry import Registration
from mmo.wire import WireError, decode, decode_value, encode_value
from mmo.wire.gen.mmo.ttypes import ClientError, Header, Kind, Origin, Packet, PacketKind
from mmo.zmq import ZmqContext, ZmqSocket

RESUME_ROUTE = "session.resume"
LOGOUT_ROUTE = "session.logout"
REFRESH_ROUTE = "session.refresh"


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


def peer_host(peer: str) -> str:
    """The host part of a carrier's ``host:port`` (what the per-address cap counts)."""
    host, colon, _ = peer.rpartition(":")
    return host if colon else peer


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
        self.key = key
        self.context = context
        self.clock = context.reactor
        self.directory = directory
        self.instance_id = instance_id
        self.registration = registration
        self.connections: set[ClientConnection] = set()
        self.sessions: dict[str, ClientConnection] = {}
        self.channels: dict[str, set[ClientConnection]] = defaultdict(set)
        self.counters: Counter[str] = Counter()
        self.routes = RouteTable(config.routes)
        self.tcp_routes = RoutePatterns(config.listen_routes)
        self.websocket_routes = RoutePatterns(config.websocket_routes)
        self._channel_budget = Buckets(config.channel_budget, config.channel_budget)
        self._sender_budget = Buckets(config.sender_rate, config.sender_burst)
        self._per_address: Counter[str] = Counter()
        self.accepting = False
        self.in_flight = 0
        self.endpoint: str | None = None
        self._socket: ZmqSocket | None = None
        self._sweeper: task.LoopingCall | None = None
        self._load_dirty = False
        self._drained: defer.Deferred[None] | None = None
        directory.view.listen(self.routes.changed)
        directory.on_one_way_error = self._notify_failed

    # -- lifecycle -------------------------------------------------------------

    def bind(self) -> str:
        """Bind the internal endpoint (before registering)."""
        if self.endpoint is None:
            self._socket = self.context.socket(
                zmq.ROUTER, self._internal, options={zmq.MAXMSGSIZE: 16 * 1024 * 1024}
            )
            config = self.config
            bound = self._socket.bind(
                f"tcp://{bind_address(config.bind_host, config.advertise_host)}:*"
            )
            self.endpoint = with_host(
                bound, advertised_host(config.bind_host, config.advertise_host)
            )
        return self.endpoint

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
        for conn in list(self.connections):
            conn.kick(ClientError.SHUTDOWN, "the broker is stopping; resume elsewhere")
        d: defer.Deferred[None]
        if self.in_flight:
            self._drained = d = defer.Deferred()
            d.addTimeout(self.config.drain_timeout, self.clock)
            d.addErrback(lambda _: None)
        else:
            d = defer.succeed(None)
        return d.addCallback(lambda _: self._close())

    def _close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    def count(self, what: str, n: int = 1) -> None:
        """Count an event (see :meth:`stats`)."""
        self.counters[what] += n

    def _count_and_log(self, what: str, message: str, **fields: Any) -> None:
        """Count an event a player can repeat at will; log the first and every 1000th."""
        self.counters[what] += 1
        n = self.counters[what]
        if n == 1 or n % 1000 == 0:
            self.log.warn(message + " ({n} so far)", n=n, **fields)

    def stats(self) -> dict[str, Any]:
        """Counters and gauges for operators."""
        return {
            "connections": len(self.connections),
            "sessions": len(self.sessions),
            "channels": len(self.channels),
            "addresses": len(self._per_address),
            "in_flight": self.in_flight,
            **self.counters,
        }

    def load_meta(self) -> dict[str, Any]:
        """The registry metadata describing this broker's load."""
        return {
            "sessions": len(self.sessions),
            "capacity": self.config.capacity,
            "load": round(len(self.sessions) / self.config.capacity, 6),
        }

    def _sweep(self) -> None:
        now = self.clock.seconds()
        config = self.config
        for conn in list(self.connections):
            if not conn.logged_in and now - conn.connected_at > config.login_timeout:
                self.count("login_timeouts")
                conn.fail(None, ClientError.LOGIN_TIMEOUT, "no login in time")
            elif conn.logged_in and now - conn.last_seen > config.idle_timeout:
                self.count("idle_kicks")
                conn.kick(ClientError.IDLE, "no packet within the idle timeout")
        if self._load_dirty:
            self._load_dirty = False
            self.registration.update_meta(now=False, **self.load_meta())
        self._channel_budget.prune(now)
        self._sender_budget.prune(now)

    # -- connections -----------------------------------------------------------

    def connection_made(self, conn: ClientConnection) -> None:
        """A client connected: admit it unless the broker is full or its address is at the cap."""
        self.count("connections_opened")
        if not self.accepting or len(self.connections) >= self.config.capacity:
            self.count("refused_full")
            conn.fail(None, ClientError.UNAVAILABLE, "the broker is full or stopping")
            return
        host = peer_host(conn.carrier.peer())
        cap = self.config.max_per_address
        if cap and self._per_address[host] >= cap:
            self.count("refused_per_address")
            refused = self.counters["refused_per_address"]
            if refused == 1 or refused % 100 == 0:
                # A flood refuses thousands: log the first and then every 100th.
                self.log.warn(
                    "broker: {host} is at its cap of {cap} connections, refusing"
                    " ({refused} refused so far)",
                    host=host,
                    cap=cap,
                    refused=refused,
                )
            conn.fail(None, ClientError.UNAVAILABLE, "too many connections from your address")
            return
        self._per_address[host] += 1
        conn.host = host
        self.connections.add(conn)

    def connection_lost(self, conn: ClientConnection) -> None:
        """A client's connection is gone: the session goes offline (it may resume)."""
        if conn not in self.connections:
            return
        self.connections.discard(conn)
        host = conn.host
        self._per_address[host] -= 1
        if self._per_address[host] <= 0:
            del self._per_address[host]
        sid = conn.session_id
        if sid is None or self.sessions.get(sid) is not conn:
            return
        del self.sessions[sid]
        for channel in conn.channels:
            self._drop_member(channel, conn)
        self._load_dirty = True
        self.directory.send(SESSION_SERVICE, "closed", encode_value({"session_id": sid}))

    def _drop_member(self, channel: str, conn: ClientConnection) -> None:
        members = self.channels.get(channel)
        if members is not None:
            members.discard(conn)
            if not members:
                del self.channels[channel]

    # -- before login ----------------------------------------------------------

    def before_login(self, conn: ClientConnection, packet: Packet) -> None:
        """Only login, resume and anonymous routes are served before a session exists
        (and the first two only if the service declares them login methods)."""
        route = packet.route or ""
        if packet.kind == PacketKind.REQUEST and not conn.logging_in:
            if route == self.config.login_route:
                self._track(self._login(conn, packet))
                return
            if route == RESUME_ROUTE:
                self._track(self._resume(conn, packet))
                return
            if route in self.config.anonymous_routes:
                self._anonymous(conn, packet)
                return
        self.count("not_logged_in")
        self.log.info(
            "broker: {route!r} from {peer} before login, closing",
            route=route,
            peer=conn.carrier.peer(),
        )
        conn.fail(packet.seq, ClientError.NOT_LOGGED_IN, "log in first")

    def _track(self, d: defer.Deferred[Any]) -> None:
        self.in_flight += 1
        d.addErrback(lambda f: self.log.failure("broker: session request failed", f))
        d.addBoth(self._done)

    def _done(self, result: Any) -> Any:
        self.in_flight -= 1
        if self.in_flight == 0 and self._drained is not None and not self._drained.called:
            self._drained.callback(None)
        return result

    def _pre_login(self, route: str) -> tuple[str, str]:
        """The service and method of a route the config serves before login (the worker
        takes it only if the handler declares it a login method)."""
        prefix, _, method = route.partition(".")
        return self.routes.service_of(prefix), method

    def _anonymous(self, conn: ClientConnection, packet: Packet) -> None:
        """A route served before login (``sso.register``), with the player's body."""
        service, method = self._pre_login(packet.route or "")
        self._forward(conn, packet, service, method, Origin.LOGIN)

    @defer.inlineCallbacks
    def _login(self, conn: ClientConnection, packet: Packet) -> Any:
        conn.logging_in = True
        service, method = self._pre_login(self.config.login_route)
        try:
            raw = yield self.directory.call(
                service,
                method,
                raw_body=packet.body or encode_value({}),
                timeout=self.config.request_timeout,
                origin=Origin.LOGIN,
                peer=conn.host,
            )
            reply = decode_value(raw)
            if not isinstance(reply, dict) or reply.get("user_id") in (None, ""):
                raise BadRequest("the auth service's reply has no user_id")
            user_id = str(reply["user_id"])
            opened = yield self.directory.call(
                SESSION_SERVICE,
                "open",
                {"user_id": user_id, "props": {}},
                timeout=self.config.request_timeout,
            )
        except (MmoError, WireError) as e:
            conn.logging_in = False
            self.count("login_failures")
            code = ClientError.LOGIN_FAILED
            if isinstance(e, NoLiveInstance | DeadlineExceeded):
                code = ClientError.UNAVAILABLE
            message = f"{e.type}: {e.message}" if isinstance(e, RemoteError) else str(e)
            conn.error(packet.seq, code, message)
            return
        conn.logging_in = False
        if conn.closed:
            # Gone while logging in: the session is born offline.
            self.directory.send(
                SESSION_SERVICE, "closed", encode_value({"session_id": opened["session_id"]})
            )
            return
        self._adopt(conn, opened["session_id"], user_id, opened["token"])
        self.count("logins")
        answer = {k: v for k, v in reply.items() if k not in ("session_id", "token")}
        answer.update(
            session_id=conn.session_id,
            user_id=user_id,
            token=conn.token,
            token_ttl=opened.get("token_ttl"),
            heartbeat=self.config.heartbeat,
        )
        conn.respond_value(packet.seq, answer)

    @defer.inlineCallbacks
    def _resume(self, conn: ClientConnection, packet: Packet) -> Any:
        conn.logging_in = True
        try:
            args = decode_value(packet.body or b"")
            if not isinstance(args, dict):
                raise BadRequest("resume takes {session_id, token}")
            session_id, token = str(args.get("session_id", "")), str(args.get("token", ""))
            try:
                if tokens.verify(token, self.key, purpose=RESUME_PURPOSE) != session_id:
                    raise tokens.InvalidToken("the token is not this session's")
            except tokens.TokenError as e:
                self.count("resume_bad_tokens")
                raise BadRequest(f"bad resume token: {e}") from None
            record = yield self.directory.call(
                SESSION_SERVICE,
                "resume",
                {"session_id": session_id, "token": token},
                timeout=self.config.request_timeout,
            )
        except (MmoError, WireError) as e:
            conn.logging_in = False
            self.count("resume_failures")
            message = f"{e.type}: {e.message}" if isinstance(e, RemoteError) else str(e)
            conn.error(packet.seq, ClientError.RESUME_FAILED, message)
            return
        conn.logging_in = False
        if conn.closed:
            return
        self._adopt(conn, record["session_id"], record["user_id"], record["token"])
        conn.set_props(record.get("props") or {})
        conn.bindings.update(record.get("bindings") or {})
        for channel in record.get("channels") or []:
            if self._may_join(conn, channel):
                conn.channels.add(channel)
                self.channels[channel].add(conn)
        self.count("resumes")
        conn.respond_value(
            packet.seq,
            {
                "session_id": conn.session_id,
                "user_id": conn.user_id,
                "token": conn.token,
                "token_ttl": record.get("token_ttl"),
                "resumed": True,
                "heartbeat": self.config.heartbeat,
            },
        )

    def _adopt(self, conn: ClientConnection, sid: str, user_id: str, token: str) -> None:
        old = self.sessions.get(sid)
        if old is not None and old is not conn:
            self.connection_replaced(old)
        conn.session_id, conn.user_id, conn.token = sid, user_id, token
        self.sessions[sid] = conn
        self._load_dirty = True

    def _forget(self, conn: ClientConnection) -> None:
        """Detach a connection from its session (losing it then tells no one)."""
        sid = conn.session_id
        if sid is not None and self.sessions.get(sid) is conn:
            del self.sessions[sid]
            self._load_dirty = True
        for channel in conn.channels:
            self._drop_member(channel, conn)
        conn.session_id = None

    def connection_replaced(self, old: ClientConnection) -> None:
        """The session moved to another connection: end the old one quietly."""
        self._forget(old)
        old.kick(ClientError.REPLACED, "the session was resumed on another connection")

    # -- after login -----------------------------------------------------------

    def _route(self, conn: ClientConnection, packet: Packet) -> tuple[str, str, str | None] | None:
        """Where a logged-in player's packet goes: ``(service, method, bound instance)``,
        or None (refused, as a route that does not exist)."""
        route = packet.route or ""
        target = self.routes.target(route)
        if target is None or not conn.routes.accepts(route):
            self._refuse_route(conn, packet)
            return None
        prefix, service, method = target
        return service, method, conn.bindings.get(prefix)

    def _refuse_route(self, conn: ClientConnection, packet: Packet) -> None:
        self.count("unknown_route")
        conn.error(packet.seq, ClientError.UNKNOWN_ROUTE, unknown_route(packet.route))

    def request(self, conn: ClientConnection, packet: Packet) -> None:
        """Forward a logged-in player's REQUEST to its service; answer with its reply
        or a ClientError."""
        if packet.route in self._session_routes:
            self._track(self._session_routes[packet.route](self, conn, packet))
            return
        target = self._route(conn, packet)
        if target is None:
            return
        service, method, bound = target
        self._forward(conn, packet, service, method, Origin.CLIENT, bound)

    def _forward(
        self,
        conn: ClientConnection,
        packet: Packet,
        service: str,
        method: str,
        origin: int,
        bound: str | None = None,
    ) -> None:
        """Call ``service.method`` with a player's REQUEST (as ``origin``: CLIENT with the
        session, LOGIN without); answer with the reply or a ClientError."""
        logged_in = origin == Origin.CLIENT
        self.count("requests")
        self.in_flight += 1
        d = self.directory.call(
            service,
            method,
            raw_body=packet.body or b"",
            session=conn.session() if logged_in else None,
            instance=bound,
            timeout=self.config.request_timeout,
            client_seq=packet.seq if logged_in else None,
            origin=origin,
            peer=conn.host,
        )
        d.addCallbacks(
            self._answered,
            self._refused,
            callbackArgs=(conn, packet.seq),
            errbackArgs=(conn, packet, bound),
        )
        d.addBoth(self._done)

    def _answered(self, body: bytes, conn: ClientConnection, seq: int | None) -> None:
        conn.respond(seq, body)

    def _refused(
        self, failure: Failure, conn: ClientConnection, packet: Packet, bound: str | None
    ) -> None:
        error = failure.value
        assert error is not None
        if bound is not None and isinstance(error, NoLiveInstance):
            # The bound instance is gone: route by load from now on.
            prefix = (packet.route or "").partition(".")[0]
            conn.bindings.pop(prefix, None)
        code, message = client_error(error, packet.route)
        self.count(f"errors_{ClientError._VALUES_TO_NAMES.get(code, code)}".lower())
        if not isinstance(error, MmoError):
            self.log.failure("broker: forwarding failed", failure)
        conn.error(packet.seq, code, message)

    def notify(self, conn: ClientConnection, packet: Packet) -> None:
        """Forward a NOTIFY one-way, to the same instance as the session's last one
        for that prefix while it lives (so one client's notifies keep their order)."""
        target = self._route(conn, packet)
        if target is None:
            return
        service, method, bound = target
        route = packet.route or ""
        prefix = route.partition(".")[0]
        instance = bound or conn.sticky.get(prefix)
        body = packet.body or b""
        # Marked as a player's, with the route: a failure comes back as an ERROR for them.
        header = {
            "session": conn.session(),
            "origin": Origin.CLIENT,
            "peer": conn.host,
            "route": route,
        }
        sent = self.directory.send(service, method, body, instance=instance, **header)
        if sent is None and instance is not None and bound is None:
            conn.sticky.pop(prefix, None)
            sent = self.directory.send(service, method, body, **header)
        if sent is None:
            conn.error(None, ClientError.UNAVAILABLE, f"{route}: no live instance serves it")
            return
        self.count("notifies")
        if bound is None:
            conn.sticky[prefix] = sent

    @defer.inlineCallbacks
    def _logout(self, conn: ClientConnection, packet: Packet) -> Any:
        sid = conn.session_id
        try:
            yield self.directory.call(
                SESSION_SERVICE,
                "logout",
                {"session_id": sid},
                timeout=self.config.request_timeout,
            )
        except MmoError as e:
            self.log.warn("broker: logout of {sid} not recorded: {e}", sid=sid, e=e)
        self._forget(conn)
        conn.respond_value(packet.seq, {"logged_out": True})
        conn.close()

    @defer.inlineCallbacks
    def _refresh(self, conn: ClientConnection, packet: Packet) -> Any:
        """A new resume token for this session (the old one stops working)."""
        try:
            reply = yield self.directory.call(
                SESSION_SERVICE,
                "refresh",
                {"session_id": conn.session_id},
                timeout=self.config.request_timeout,
            )
        except MmoError as e:
            code, message = client_error(e)
            conn.error(packet.seq, code, message)
            return
        conn.token = reply["token"]
        conn.respond_value(packet.seq, reply)

    _session_routes = {LOGOUT_ROUTE: _logout, REFRESH_ROUTE: _refresh}

    def _notify_failed(self, header: Header) -> None:
        """A worker says a player's NOTIFY failed: tell the player (ERROR, no seq)."""
        error = from_wire(header.error_code, header.error_type, header.error_message)
        route = header.route or f"{header.service_name}.{header.method}"
        code, message = client_error(error, route)
        self.count("notify_errors")
        if not message.startswith(f"{route}:"):
            message = f"{route}: {message}"
        for sid in header.targets or ():
            conn = self.sessions.get(sid)
            if conn is not None:
                conn.error(None, code, message)

    # -- from logic (internal endpoint) -------------------------------------------

    def _internal(self, frames: list[bytes]) -> None:
        if len(frames) != 3:
            self.count("bad_internal")
            return
        _, raw_header, body = frames
        try:
            header = decode(Header, raw_header)
        except WireError as e:
            self.count("bad_internal")
            self.log.warn("broker: bad internal message: {e}", e=e)
            return
        if header.kind != Kind.REQUEST:
            self.count("bad_internal")
            return
        handler = self._methods.get(header.method or "")
        if handler is None:
            self.count("bad_internal")
            self.log.warn("broker: unknown internal method {m!r}", m=header.method)
            return
        try:
            handler(self, header, body)
        except (WireError, TypeError, ValueError) as e:
            self.count("bad_internal")
            self.log.warn("broker: bad {m} message: {e}", m=header.method, e=e)

    def _targets(self, header: Header) -> list[ClientConnection]:
        found = []
        for sid in header.targets or ():
            conn = self.sessions.get(sid)
            if conn is not None:
                found.append(conn)
            else:
                self.count("push_no_session")
        return found

    def _do_push(self, header: Header, body: bytes) -> None:
        frame = packet_bytes(PacketKind.PUSH, None, route=header.route, body=body)
        for conn in self._targets(header):
            conn.send(frame)
            self.count("pushes")

    def _do_broadcast(self, header: Header, body: bytes) -> None:
        channel = header.channel or ""
        members = self.connections if channel == ALL else self.channels.get(channel, ())
        if not members:
            return
        frame = packet_bytes(PacketKind.PUSH, None, route=header.route, body=body)
        now = self.clock.seconds()
        sender = header.session.id if header.session is not None else None
        if sender is not None and not self._sender_budget.take(sender, 1, now):
            self._count_and_log(
                "broadcasts_over_sender_budget",
                "broker: broadcasts caused by session {sender} over its budget, dropped",
                sender=sender,
            )
            return
        if not self._channel_budget.take(channel, len(frame) * len(members), now):
            self._count_and_log(
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
        self.count("broadcasts")
        self.count("pushes", n)

    def _may_join(self, conn: ClientConnection, channel: str) -> bool:
        """Whether ``conn`` may join ``channel`` (within the channel limits; counted if not)."""
        if channel in conn.channels:
            return True
        if len(channel.encode()) > self.config.max_channel_name:
            self._count_and_log(
                "channel_name_too_long",
                "broker: a channel name of {size} bytes refused (limit {limit})",
                size=len(channel.encode()),
                limit=self.config.max_channel_name,
            )
            return False
        if len(conn.channels) >= self.config.max_channels:
            self._count_and_log(
                "channels_over_limit",
                "broker: session {sid} is in {limit} channels; joining {channel!r} refused",
                sid=conn.session_id,
                limit=self.config.max_channels,
                channel=channel,
            )
            return False
        return True

    def _do_join(self, header: Header, body: bytes) -> None:
        channel = header.channel or ""
        if not channel or channel == ALL:
            raise ValueError(f"cannot join channel {channel!r}")
        for conn in self._targets(header):
            if self._may_join(conn, channel):
                conn.channels.add(channel)
                self.channels[channel].add(conn)
                self._record(conn, joined=[channel])

    def _do_leave(self, header: Header, body: bytes) -> None:
        channel = header.channel or ""
        for conn in self._targets(header):
            conn.channels.discard(channel)
            self._drop_member(channel, conn)
            self._record(conn, left=[channel])

    def _do_kick(self, header: Header, body: bytes) -> None:
        reason = decode_value(body) if body else ""
        for conn in self._targets(header):
            if reason == "REPLACED":
                self.connection_replaced(conn)
                continue
            self.count("kicks")
            # A kicked session ends (no resume): logout, not "closed".
            sid = conn.session_id
            self._forget(conn)
            self.directory.send(
                SESSION_SERVICE, "logout", encode_value({"session_id": sid, "reason": "kicked"})
            )
            conn.kick(ClientError.KICKED, str(reason or "kicked"))

    def _do_bind(self, header: Header, body: bytes) -> None:
        prefix = decode_value(body)
        if not isinstance(prefix, str) or not header.instance_id:
            raise ValueError("bind takes a prefix and an instance_id")
        for conn in self._targets(header):
            conn.bindings[prefix] = header.instance_id
            self._record(conn, bound={prefix: header.instance_id})

    def _do_unbind(self, header: Header, body: bytes) -> None:
        prefix = decode_value(body)
        for conn in self._targets(header):
            conn.bindings.pop(prefix, None)
            self._record(conn, unbound=[prefix])

    def _do_set(self, header: Header, body: bytes) -> None:
        props = decode_value(body)
        if not isinstance(props, dict):
            raise ValueError("set takes a map of properties")
        for conn in self._targets(header):
            conn.set_props(props)
            self._record(conn, props=props)

    def _record(self, conn: ClientConnection, **change: Any) -> None:
        """Tell the session service, so that a resume restores this."""
        self.directory.send(
            SESSION_SERVICE, "track", encode_value({"session_id": conn.session_id, **change})
        )

    _methods = {
        "push": _do_push,
        "broadcast": _do_broadcast,
        "join": _do_join,
        "leave": _do_leave,
        "kick": _do_kick,
        "bind": _do_bind,
        "unbind": _do_unbind,
        "set": _do_set,
    }
