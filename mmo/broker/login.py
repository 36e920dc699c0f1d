"""The broker's side of the session service: login, resume, logout, refresh, and what it is told.

Before a connection holds a session, the :class:`LoginGate` serves only the login
route, ``session.resume`` (checking the resume token itself, with the key shared
with the session service) and the anonymous routes of the config; anything else
closes the connection. A logged-in player may ask for ``session.logout`` and
``session.refresh``. The session service also hears, one-way, of every session that
goes offline (``closed``), is kicked (``logout``) or changes what a resume restores
(``track``: channels, bindings, properties).
"""

from __future__ import annotations

from collections import deque
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from mmo.broker.config import BrokerConfig
from mmo.broker.connection import ClientConnection
from mmo.broker.counters import Counters, InFlight
from mmo.broker.forwarder import Forwarder, client_error
from mmo.broker.routes import RouteTable
from mmo.broker.table import SessionTable
from mmo.data import tokens
from mmo.errors import (
    BadRequest,
    DeadlineExceeded,
    InstanceLost,
    MmoError,
    NoLiveInstance,
    RemoteError,
    Unavailable,
)
from mmo.logic.client import Directory
from mmo.logic.sessions import RESUME_PURPOSE, RESUME_REFUSED, SESSION_SERVICE
from mmo.telemetry.trace import CURRENT, Trace
from mmo.wire import WireError, decode_value, encode_value
from mmo.wire.gen.mmo.ttypes import ClientError, Origin, Packet, PacketKind

__all__ = ["LOGOUT_ROUTE", "REFRESH_ROUTE", "RESUME_ROUTE", "LoginGate"]

RESUME_ROUTE = "session.resume"
LOGOUT_ROUTE = "session.logout"
REFRESH_ROUTE = "session.refresh"
#: The errors of a call that did not reach a live instance, or got no answer in time.
_OUT_OF_REACH = (NoLiveInstance, DeadlineExceeded, InstanceLost, Unavailable)
#: How many times a report to the session service is sent before it is given up.
REPORT_ATTEMPTS = 3


class LoginGate:
    """Opens, resumes and ends sessions with the session service.

    Args:
        config: the broker's settings (login route, anonymous routes, deadlines).
        directory: the process's directory (the session service, the auth service).
        key: the key resume tokens are signed with (shared with the session service):
            a forged or expired token is turned away here.
        routes: the route table (which service a pre-login route names).
        table: the broker's sessions.
        counters: where logins, resumes and their failures are counted.
        in_flight: the broker's requests in flight (a stop waits for them).
        forwarder: forwards the anonymous routes.
    """

    log = Logger()

    def __init__(
        self,
        config: BrokerConfig,
        directory: Directory,
        key: bytes,
        routes: RouteTable,
        table: SessionTable,
        counters: Counters,
        in_flight: InFlight,
        forwarder: Forwarder,
    ) -> None:
        self.config = config
        self.directory = directory
        self.key = key
        self.routes = routes
        self.table = table
        self.counters = counters
        self.in_flight = in_flight
        self.forwarder = forwarder
        # session id -> the reports to the session service not yet acknowledged, in order:
        # (method, body, the trace of what caused it).
        self._reports: dict[str, deque[tuple[str, dict[str, Any], Trace | None]]] = {}

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
                service, method = self._pre_login(route)
                self.forwarder.forward(conn, packet, service, method, Origin.LOGIN)
                return
        self.counters.count("not_logged_in")
        self.log.info(
            "broker: {route!r} from {peer} before login, closing",
            route=route,
            peer=conn.carrier.peer(),
        )
        conn.fail(packet.seq, ClientError.NOT_LOGGED_IN, "log in first")

    def _track(self, d: defer.Deferred[Any]) -> None:
        d.addErrback(lambda f: self.log.failure("broker: session request failed", f))
        self.in_flight.track(d)

    def _pre_login(self, route: str) -> tuple[str, str]:
        """The service and method of a route the config serves before login (the worker
        takes it only if the handler declares it a login method)."""
        prefix, _, method = route.partition(".")
        return self.routes.service_of(prefix), method

    @defer.inlineCallbacks
    def _login(self, conn: ClientConnection, packet: Packet) -> Any:
        conn.logging_in = True
        service, method = self._pre_login(self.config.login_route)
        reply = None
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
            self.counters.count("login_failures")
            code = ClientError.LOGIN_FAILED
            if isinstance(e, _OUT_OF_REACH):
                code = ClientError.UNAVAILABLE
            elif isinstance(e, BadRequest) and reply is None:
                # The body does not fit the login method: the client is wrong, not the
                # password (and nothing reached the handler, so no login failed).
                code = ClientError.BAD_REQUEST
            conn.error(packet.seq, code, _error_text(e))
            return
        conn.logging_in = False
        if conn.closed:
            # Gone while logging in: the session is born offline.
            self.closed(opened["session_id"])
            return
        self.table.adopt(conn, opened["session_id"], user_id, opened["token"])
        self.counters.count("logins")
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
                self.counters.count("resume_bad_tokens")
                raise BadRequest(f"bad resume token: {e}") from None
            record = yield self.directory.call(
                SESSION_SERVICE,
                "resume",
                {"session_id": session_id, "token": token},
                timeout=self.config.request_timeout,
            )
        except (MmoError, WireError) as e:
            conn.logging_in = False
            self.counters.count("resume_failures")
            # Only a refusal ends the session at the client (its token was bad, or the
            # session service refused it); anything else (the service out of reach, its
            # cache down, a fault of its own) is UNAVAILABLE: the client tries again.
            refused = isinstance(e, BadRequest | WireError) or (
                isinstance(e, RemoteError) and e.type == RESUME_REFUSED
            )
            code = ClientError.RESUME_FAILED if refused else ClientError.UNAVAILABLE
            conn.error(packet.seq, code, _error_text(e))
            return
        conn.logging_in = False
        if conn.closed:
            # Gone while resuming: the session service has it online here; say it is not.
            self.closed(record["session_id"])
            return
        self.table.adopt(conn, record["session_id"], record["user_id"], record["token"])
        conn.set_props(record.get("props") or {})
        conn.bindings.update(record.get("bindings") or {})
        for channel in record.get("channels") or []:
            self.table.join(conn, channel)
        self.counters.count("resumes")
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

    # -- after login -----------------------------------------------------------

    def serves(self, route: str | None) -> bool:
        """Whether a logged-in player's request to ``route`` is for the gate."""
        return route in self._session_routes

    def request(self, conn: ClientConnection, packet: Packet) -> None:
        """A logged-in player's ``session.logout`` or ``session.refresh``."""
        self._track(self._session_routes[packet.route or ""](self, conn, packet))

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
        self.table.forget(conn)
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

    # -- what the session service is told ------------------------------------------

    def closed(self, sid: str | None) -> None:
        """The session's connection is gone: it is offline (it may resume)."""
        self._report(sid, "closed", {"session_id": sid})

    def kicked(self, sid: str | None) -> None:
        """The session was kicked: it ends (no resume)."""
        self._report(sid, "logout", {"session_id": sid, "reason": "kicked"})

    def track(self, conn: ClientConnection, **change: Any) -> None:
        """The session's channels, bindings or properties changed: so that a resume
        restores them."""
        self._report(conn.session_id, "track", {"session_id": conn.session_id, **change})

    def _report(self, sid: str | None, method: str, body: dict[str, Any]) -> None:
        """Tell the session service what happened to session ``sid``: in order (a report
        waits for the one before it) and acknowledged, so that none is lost with a
        session instance that dies (the service retries a report on another instance
        when it sees one die, and this sends one that failed again: a report has the
        same effect however often it runs). Each is sent under the trace of what caused
        it (the request being served when it was made, if any)."""
        if sid is None:
            return
        report = (method, body, CURRENT.get())
        queue = self._reports.get(sid)
        if queue is not None:
            queue.append(report)
            return
        self._reports[sid] = deque([report])
        self._track(self._send_reports(sid))

    @defer.inlineCallbacks
    def _send_reports(self, sid: str) -> Any:
        queue = self._reports[sid]
        try:
            while queue:
                method, body, trace = queue[0]
                # This loop's context is a copy of the first report's: each report is
                # sent under its own trace, not the first one's.
                CURRENT.set(trace)
                for attempt in range(1, REPORT_ATTEMPTS + 1):
                    try:
                        yield self.directory.call(
                            SESSION_SERVICE, method, body, timeout=self.config.request_timeout
                        )
                        break
                    except _OUT_OF_REACH as e:
                        if attempt == REPORT_ATTEMPTS:
                            self.counters.count("session_reports_lost")
                            self.log.warn(
                                "broker: session.{method} of {sid} not recorded"
                                " after {n} attempts: {e}",
                                method=method,
                                sid=sid,
                                n=attempt,
                                e=e,
                            )
                    except MmoError as e:
                        self.log.warn(
                            "broker: session.{method} of {sid} refused: {e}",
                            method=method,
                            sid=sid,
                            e=e,
                        )
                        break
                queue.popleft()
        finally:
            del self._reports[sid]


def _error_text(e: Exception) -> str:
    """What a refused login or resume tells the player: ``Type: message`` for an error a
    service raised, the error's own text for the broker's."""
    return f"{e.type}: {e.message}" if isinstance(e, RemoteError) else str(e)
