"""The generator's own lean client: many connections, one process, no SDK.

A :class:`BenchConnection` is an ``Int32StringReceiver`` that speaks the client
wire with :mod:`mmo.bench.wire` and hands what arrives to plain callbacks (no
Deferred per request). A :class:`ClientPool` opens connections with a bounded
number of handshakes (connect + login) in flight, keeps idle ones alive with
heartbeats, and closes them all.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from twisted.internet import defer, protocol, task
from twisted.protocols.basic import Int32StringReceiver
from twisted.python.failure import Failure
from typing_extensions import override

from mmo.bench import wire
from mmo.bench.wire import Frame
from mmo.wire import decode_value, encode_value

__all__ = ["BenchConnection", "ClientPool", "LoginError"]

#: Called with (connection, the answering packet) for a REQUEST's RESPONSE or ERROR.
Answer = Callable[["BenchConnection", Frame], None]
#: Called with (connection, route, body) for each PUSH.
PushHandler = Callable[["BenchConnection", str, bytes], None]

_HEARTBEAT = wire.frame_packet(wire.HEARTBEAT)


class LoginError(Exception):
    """A bench client could not connect or log in."""


class BenchConnection(Int32StringReceiver):
    """One client connection of the generator.

    Attributes:
        index: the client's number in its pool.
        pending: seq -> what to call with the answer.
        on_made: called once the TCP connection is up.
        on_push: called for each PUSH (``None``: pushes are counted only).
        on_lost: called once when the connection is gone.
        errors: ERROR packets without a waiting request, KICKs and bad packets.
        pushes: PUSH packets received.
        last_sent: monotonic time of the last write (for heartbeats).
        open: whether the connection is still up.
        heartbeat: seconds between heartbeats (the broker says at login).
        connector: the TCP connector (to stop a connection attempt).
    """

    MAX_LENGTH = 16 * 1024 * 1024

    def __init__(self, index: int) -> None:
        self.index = index
        self.seq = 0
        self.pending: dict[int, Answer] = {}
        self.on_made: Callable[[BenchConnection], None] | None = None
        self.on_push: PushHandler | None = None
        self.on_lost: Callable[[BenchConnection], None] | None = None
        self.errors = 0
        self.pushes = 0
        self.last_sent = time.monotonic()
        self.open = False
        self.heartbeat = 10.0
        self.connector: Any = None

    @override
    def connectionMade(self) -> None:
        """Mark the connection open; small packets must not wait for Nagle."""
        self.open = True
        self._tcp().setTcpNoDelay(True)
        if self.on_made is not None:
            self.on_made(self)

    @override
    def stringReceived(self, data: bytes) -> None:
        """Dispatch one packet."""
        try:
            frame = wire.parse_packet(data)
        except ValueError:
            self.errors += 1
            return
        kind = frame.kind
        if kind == wire.PUSH:
            self.pushes += 1
            if self.on_push is not None:
                self.on_push(self, frame.route or "", frame.body or b"")
        elif kind == wire.RESPONSE or kind == wire.ERROR:
            answer = self.pending.pop(frame.seq, None) if frame.seq else None
            if answer is not None:
                answer(self, frame)
            else:
                self.errors += 1
        elif kind != wire.HEARTBEAT:
            # KICK, or a packet a client never receives.
            self.errors += 1

    @override
    def connectionLost(self, reason: Failure = Failure(Exception())) -> None:  # noqa: B008
        """Fail what waits and tell the owner."""
        self.open = False
        pending, self.pending = self.pending, {}
        lost = Frame(wire.ERROR, None, None, None, 0, "connection lost")
        for seq, answer in pending.items():
            answer(self, lost._replace(seq=seq))
        if self.on_lost is not None:
            self.on_lost(self)

    # -- sending -----------------------------------------------------------------

    def request(self, route: str, body: bytes, answer: Answer) -> int:
        """Send a REQUEST; ``answer`` gets its RESPONSE or ERROR. Return its seq."""
        self.seq = seq = self.seq % 0x7FFFFFFF + 1
        self.pending[seq] = answer
        self._tcp().write(wire.frame_packet(wire.REQUEST, seq, route, body))
        self.last_sent = time.monotonic()
        return seq

    def notify(self, route: str, body: bytes) -> None:
        """Send a one-way NOTIFY."""
        self._tcp().write(wire.frame_packet(wire.NOTIFY, None, route, body))
        self.last_sent = time.monotonic()

    def send_heartbeat(self) -> None:
        """Send a HEARTBEAT."""
        self._tcp().write(_HEARTBEAT)
        self.last_sent = time.monotonic()

    def abort(self) -> None:
        """Drop the connection at once (or stop connecting)."""
        if self.open and self.transport is not None:
            self._tcp().abortConnection()
        elif self.connector is not None and self.connector.state == "connecting":
            self.connector.stopConnecting()

    def _tcp(self) -> Any:
        # A TCP transport (ITCPTransport + abortConnection); typed as ITransport upstream.
        return self.transport


class _Factory(protocol.ClientFactory):
    def __init__(self, conn: BenchConnection, done: defer.Deferred[BenchConnection]) -> None:
        self.conn = conn
        self.done = done

    @override
    def buildProtocol(self, addr: Any) -> BenchConnection:
        self.conn.factory = self
        return self.conn

    @override
    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        if not self.done.called:
            self.done.errback(LoginError(f"connect failed: {reason.getErrorMessage()}"))


class ClientPool:
    """Opens, keeps and closes the generator's connections to one broker.

    Args:
        reactor: the reactor.
        host: the broker's host.
        port: the broker's client port.
        user: ``user(i)`` is the account client ``i`` logs in as.
        password: the accounts' password.
        login_route: the broker's login route.
        register: register each account (``sso.register``) before logging in.

    Attributes:
        clients: the connections opened, in order.
        errors: connects and logins that failed.
        login_latencies: seconds from connect to login answer, per client.
    """

    def __init__(
        self,
        reactor: Any,
        host: str,
        port: int,
        *,
        user: Callable[[int], str],
        password: str,
        login_route: str = "sso.login",
        register: bool = False,
    ) -> None:
        self.reactor = reactor
        self.host = host
        self.port = port
        self.user = user
        self.password = password
        self.login_route = login_route
        self.register = register
        self.clients: list[BenchConnection] = []
        self.errors = 0
        self.first_error: str | None = None
        self.login_latencies: list[float] = []
        self._keepalive: task.LoopingCall | None = None
        self._connecting: set[BenchConnection] = set()

    def _settled(self, result: Any, conn: BenchConnection) -> Any:
        self._connecting.discard(conn)
        return result

    def connect_one(self, index: int) -> defer.Deferred[BenchConnection]:
        """Connect client ``index`` and log it in; fires with the connection."""
        done: defer.Deferred[BenchConnection] = defer.Deferred()
        conn = BenchConnection(index)
        started = time.monotonic()
        user = self.user(index)
        login_body = encode_value({"user": user, "password": self.password})

        def logged_in(conn: BenchConnection, frame: Frame) -> None:
            if done.called:
                return
            if frame.kind != wire.RESPONSE:
                why = f"refused: {frame.code} {frame.message}" if frame.code else frame.message
                done.errback(LoginError(f"login of {user}: {why}"))
                conn.abort()
                return
            try:
                reply = decode_value(frame.body) if frame.body else {}
            except ValueError:
                reply = {}
            if isinstance(reply, dict) and isinstance(reply.get("heartbeat"), int | float):
                conn.heartbeat = float(reply["heartbeat"])
            self.login_latencies.append(time.monotonic() - started)
            done.callback(conn)

        def registered(conn: BenchConnection, frame: Frame) -> None:
            # An existing account is fine: the login says whether the password fits.
            conn.request(self.login_route, login_body, logged_in)

        def made(conn: BenchConnection) -> None:
            if self.register:
                conn.request("sso.register", login_body, registered)
            else:
                conn.request(self.login_route, login_body, logged_in)

        def lost(conn: BenchConnection) -> None:
            if not done.called:
                done.errback(LoginError(f"connection of {user} lost while logging in"))

        conn.on_made = made
        conn.on_lost = lost
        self._connecting.add(conn)
        done.addBoth(self._settled, conn)
        conn.connector = self.reactor.connectTCP(
            self.host, self.port, _Factory(conn, done), timeout=10
        )
        return done

    def open(
        self,
        count: int,
        *,
        in_flight: int = 100,
        timeout: float = 60.0,
    ) -> defer.Deferred[list[BenchConnection]]:
        """Open and log in ``count`` more clients, at most ``in_flight`` handshakes at once.

        Fires with the clients that logged in (failures are counted in
        :attr:`errors`), or when ``timeout`` seconds have passed.
        """
        done: defer.Deferred[list[BenchConnection]] = defer.Deferred()
        opened: list[BenchConnection] = []
        first = len(self.clients)
        state = {"next": first, "busy": 0}
        last = first + count
        deadline = time.monotonic() + timeout

        def finish() -> None:
            if not done.called:
                done.callback(opened)

        def start_next() -> None:
            while state["next"] < last and state["busy"] < in_flight:
                if time.monotonic() > deadline:
                    break
                index = state["next"]
                state["next"] += 1
                state["busy"] += 1
                d = self.connect_one(index)
                d.addCallbacks(ok, failed)
            if state["busy"] == 0:
                finish()

        def ok(conn: BenchConnection) -> None:
            conn.on_lost = None
            self.clients.append(conn)
            opened.append(conn)
            state["busy"] -= 1
            start_next()

        def failed(failure: Failure) -> None:
            self.errors += 1
            if self.first_error is None:
                self.first_error = failure.getErrorMessage()
            state["busy"] -= 1
            start_next()

        if count <= 0:
            finish()
        else:
            start_next()
            # Handshakes in flight end by themselves (connect and login time out at
            # the broker), but a silent server must not hold the run forever.
            guard = self.reactor.callLater(timeout + 15.0, finish)

            def unguard(result: list[BenchConnection]) -> list[BenchConnection]:
                if guard.active():
                    guard.cancel()
                return result

            done.addCallback(unguard)
        return done

    def keep_alive(self) -> None:
        """Send a HEARTBEAT on every connection idle for its heartbeat interval."""
        if self._keepalive is not None:
            return

        def beat() -> None:
            now = time.monotonic()
            for conn in self.clients:
                if conn.open and now - conn.last_sent >= conn.heartbeat * 0.8:
                    conn.send_heartbeat()

        self._keepalive = task.LoopingCall(beat)
        self._keepalive.clock = self.reactor
        self._keepalive.start(1.0, now=False)

    def still_open(self) -> int:
        """How many connections are up."""
        return sum(1 for conn in self.clients if conn.open)

    def close(self) -> None:
        """Stop heartbeats and drop every connection."""
        if self._keepalive is not None and self._keepalive.running:
            self._keepalive.stop()
        self._keepalive = None
        for conn in [*self.clients, *self._connecting]:
            conn.on_lost = None
            conn.on_push = None
            conn.abort()
