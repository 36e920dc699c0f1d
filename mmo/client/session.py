"""``Client``: a game client's session with the edge layer, across reconnections.

A :class:`Client` finds a broker (the least-loaded one in the brokerlist, or a fixed
address), connects, logs in and then keeps the session: when the connection drops
unexpectedly it reconnects (to any broker the brokerlist then names) and resumes the
session with its token, while requests made meanwhile wait for the new connection.

Usage, inside ``inlineCallbacks``::

    client = Client(reactor, brokerlist="http://127.0.0.1:6080/")
    yield client.connect()
    yield client.login(user="harry", password="...")
    client.on("chat.message", lambda route, body: print(body))
    reply = yield client.request("chat.join", {"room": "lobby"})
    ...
    yield client.logout()

A broker is reached over TCP or WebSocket (``transport``), inside TLS when the
brokerlist says the broker's address speaks it (its ``tls`` list), or always
(``tls=True``); TLS checks the broker's certificate against ``ca_file`` or the system's
trust store (:mod:`mmo.client.transports`). After a lost connection, each attempt to
reconnect waits a random time: the first up to ``backoff_initial`` ("full jitter": the
players of a broker that died come back spread out rather than all in the same instant),
the later ones between half and all of a bound that doubles up to ``backoff_max``.

Connecting and fetching the brokerlist are injectable (``connector``, ``fetcher``), so
the reconnect logic is testable with ``task.Clock`` and ``StringTransport``.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any, cast

from twisted.internet import defer, task
from twisted.logger import Logger

from mmo.client import transports
from mmo.client.errors import (
    ClientConnectError,
    ClientDisconnected,
    ClientException,
    ClientRequestError,
    ClientTimeout,
)
from mmo.client.protocol import (
    DEFAULT_HEARTBEAT,
    MAX_SEQ,
    ClientProtocol,
    ErrorCallback,
    Listeners,
    PushCallback,
)
from mmo.client.transports import split_address, split_url
from mmo.types import Clock, DelayedCall, InlineCallbacks
from mmo.wire.gen.mmo.ttypes import ClientError

log = Logger()

#: ``connector(url, protocol)``: connect ``protocol`` to the broker at ``url``
#: (``tcp://host:port``, ``tls://...``, ``ws://host:port/``, ``wss://...``: see
#: :mod:`mmo.client.transports`); fires with the protocol once its connection is made.
Connector = Callable[[str, ClientProtocol], defer.Deferred[ClientProtocol]]
#: ``fetcher(url)``: the body of an HTTP ``GET`` of ``url``.
Fetcher = Callable[[str], defer.Deferred[bytes]]

#: Kicks after which the session is over: no reconnect.
FINAL_KICKS = frozenset({ClientError.KICKED, ClientError.REPLACED})

CONNECTING = "connecting"
ONLINE = "online"
RECONNECTING = "reconnecting"
CLOSED = "closed"


# -- brokers ---------------------------------------------------------------------


@dataclass(frozen=True)
class BrokerList:
    """What the brokerlist says.

    Attributes:
        brokers: TCP client addresses ``"host:port"`` -> load.
        websockets: WebSocket client addresses -> load.
        tls: the addresses (of either list) that speak TLS.
    """

    brokers: dict[str, float]
    websockets: dict[str, float]
    tls: frozenset[str]

    def for_transport(self, transport: str) -> dict[str, float]:
        """The addresses of ``transport`` (``"tcp"`` or ``"websocket"``) -> load."""
        return self.websockets if transport == "websocket" else self.brokers


def _addresses(document: dict[str, Any], key: str) -> dict[str, float]:
    table = document.get(key, {})
    if not isinstance(table, dict):
        raise ClientConnectError(f"brokerlist: {key!r} is not an object")
    brokers: dict[str, float] = {}
    for address, load in table.items():
        if isinstance(load, bool) or not isinstance(load, int | float) or not math.isfinite(load):
            raise ClientConnectError(f"brokerlist: load of {address!r} is not a number: {load!r}")
        try:
            split_address(address)
        except ValueError as e:
            raise ClientConnectError(f"brokerlist: {e}") from e
        brokers[address] = float(load)
    return brokers


def read_brokerlist(data: bytes | str) -> BrokerList:
    """A brokerlist answer: ``{"version", "brokerList": {"host:port": load},
    "websocketList": {...}, "tls": ["host:port", ...]}`` (the last two optional).

    Raises:
        ClientConnectError: the document is not of that shape.
    """
    try:
        document = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise ClientConnectError(f"brokerlist: not JSON: {e}") from e
    if not isinstance(document, dict) or not isinstance(document.get("brokerList"), dict):
        raise ClientConnectError('brokerlist: expected an object with a "brokerList" object')
    tls = document.get("tls", [])
    if not isinstance(tls, list) or not all(isinstance(a, str) for a in tls):
        raise ClientConnectError('brokerlist: "tls" is not a list of addresses')
    return BrokerList(
        _addresses(document, "brokerList"), _addresses(document, "websocketList"), frozenset(tls)
    )


def parse_brokerlist(data: bytes | str) -> dict[str, float]:
    """The TCP brokers of a brokerlist answer: ``{"host:port": load}``.

    Raises:
        ClientConnectError: the document is not a brokerlist.
    """
    return read_brokerlist(data).brokers


def pick_broker(
    brokers: Mapping[str, float],
    avoid: Collection[str] = (),
    rng: random.Random | None = None,
) -> str:
    """The least-loaded broker.

    Args:
        brokers: ``{"host:port": load}``, as :func:`parse_brokerlist` returns.
        avoid: addresses to pass over unless nothing else is listed (the broker just lost).
        rng: breaks ties at random when given (so that clients starting together spread
            out); without it the lowest address wins a tie.

    Raises:
        ClientConnectError: no broker is listed.
    """
    if not brokers:
        raise ClientConnectError("brokerlist: no broker available")
    candidates = {a: load for a, load in brokers.items() if a not in avoid} or dict(brokers)
    least = min(candidates.values())
    best = sorted(a for a, load in candidates.items() if load == least)
    return rng.choice(best) if rng is not None else best[0]


def http_fetcher(reactor: Any, timeout: float = 5.0) -> Fetcher:
    """A :data:`Fetcher` with ``twisted.web.client.Agent`` (``timeout`` s for the whole GET)."""
    from twisted.web.client import Agent
    from twisted.web.http_headers import Headers

    from mmo.client.http import read_body

    agent = Agent(reactor, connectTimeout=timeout)

    def fetch(url: str) -> defer.Deferred[bytes]:
        d = agent.request(b"GET", url.encode("utf-8"), Headers({b"Accept": [b"application/json"]}))

        def got(response: Any) -> defer.Deferred[bytes]:
            body = read_body(response)
            if response.code != 200:

                def refuse(_: bytes) -> bytes:
                    raise ClientConnectError(f"brokerlist {url}: HTTP {response.code}")

                body.addCallback(refuse)
            return body

        def failed(failure: Any) -> Any:
            if failure.check(ClientConnectError):
                return failure
            raise ClientConnectError(f"brokerlist {url}: {failure.getErrorMessage()}")

        result: defer.Deferred[bytes] = d.addCallback(got)
        result.addTimeout(timeout, reactor)
        return result.addErrback(failed)

    return fetch


# -- the client ------------------------------------------------------------------


@dataclass
class _Waiter:
    deferred: defer.Deferred[ClientProtocol]
    timer: DelayedCall | None


class Client:
    """A game client's connection and session, kept across broker failures.

    Attributes:
        resume_window: seconds to keep trying to reconnect and resume after a drop.
        request_timeout: default deadline of :meth:`request` (seconds).
        backoff_initial: the bound of the random pause before the first reconnect
            attempt (seconds, from 0); it doubles with each attempt (from half of it).
        backoff_max: the largest bound of the random pause between attempts (seconds).
        transport: ``"tcp"`` or ``"websocket"``.
        tls: True: always TLS; False: never; None: as the brokerlist says.
        login_reply: the last login (or resume) reply.
    """

    #: The protocol built for each connection (a subclass may add to it).
    protocol_class: type[ClientProtocol] = ClientProtocol
    login_route: str
    resume_route = "session.resume"
    logout_route = "session.logout"
    refresh_route = "session.refresh"
    register_route = "sso.register"

    def __init__(
        self,
        reactor: Any = None,
        brokerlist: str | None = None,
        broker: str | None = None,
        login_route: str = "sso.login",
        *,
        resume_window: float = 30.0,
        request_timeout: float = 5.0,
        connect_timeout: float = 5.0,
        backoff_initial: float = 0.5,
        backoff_max: float = 8.0,
        transport: str = "tcp",
        tls: bool | None = None,
        ca_file: str | None = None,
        connector: Connector | None = None,
        fetcher: Fetcher | None = None,
        rng: random.Random | None = None,
    ) -> None:
        """Describe where to connect; nothing happens until :meth:`connect`.

        Args:
            reactor: provides time and, unless ``connector``/``fetcher`` are given, TCP;
                the global reactor if None (a ``task.Clock`` will do with both injected).
            brokerlist: URL of the brokerlist; reconnects always consult it.
            broker: ``"host:port"`` of a broker (reached by ``transport``, in TLS only
                with ``tls=True``), or its URL (``tls://host:port``, ``wss://host:port/``,
                ...): the first connection goes there, without asking the brokerlist
                (without a brokerlist, every connection does).
            login_route: the broker's login route.
            resume_window: see the attribute.
            request_timeout: see the attribute.
            connect_timeout: seconds allowed for TCP connect and for the brokerlist GET.
            backoff_initial: see the attribute.
            backoff_max: see the attribute.
            transport: ``"tcp"`` or ``"websocket"``: which of the brokerlist's lists to
                use, and how to connect.
            tls: see the attribute.
            ca_file: a PEM file of the CA certificates TLS trusts (default: the system's).
            connector: how to connect a protocol (default: :func:`mmo.client.transports.
                connector`, every scheme).
            fetcher: how to GET the brokerlist (default: :func:`http_fetcher`).
            rng: breaks ties between equally loaded brokers, and draws the reconnect pauses.

        Raises:
            ValueError: neither ``brokerlist`` nor ``broker`` is given, ``broker`` is not
                ``host:port`` or a broker URL, or ``transport`` is unknown.
        """
        if brokerlist is None and broker is None:
            raise ValueError("give a brokerlist URL or a broker address")
        if transport not in ("tcp", "websocket"):
            raise ValueError(f"transport is tcp or websocket, not {transport!r}")
        # A broker given as a URL is reached as it says; "host:port" as the others.
        self._broker_url: str | None = broker if broker is not None and "://" in broker else None
        if broker is not None:
            _, host, port = split_url(broker)
            broker = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.reactor = reactor
        self.clock: Clock = cast(Clock, reactor)
        self.brokerlist = brokerlist
        self.broker = broker
        self.login_route = login_route
        self.resume_window = resume_window
        self.request_timeout = request_timeout
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.transport = transport
        self.tls = tls
        self.login_reply: dict[str, Any] | None = None
        self._connector = connector or transports.connector(reactor, connect_timeout, ca_file)
        self._tls_addresses: frozenset[str] | None = None
        self._fetcher = fetcher or http_fetcher(reactor, connect_timeout)
        self._rng = rng if rng is not None else random.Random()
        self._listeners = Listeners()
        self._resumed: list[Callable[[dict[str, Any]], object]] = []
        self._closed: list[Callable[[ClientDisconnected | None], object]] = []
        self._state = CLOSED
        self._protocol: ClientProtocol | None = None
        self._address: str | None = None
        self._session_id: str | None = None
        self._user_id: Any = None
        self._token: str | None = None
        self._heartbeat: float = DEFAULT_HEARTBEAT
        self._closing = False
        self._ended = True  # on_closed already fired for the current lifetime
        self._waiters: list[_Waiter] = []
        self._next_seq = 1
        self._refresh_timer: DelayedCall | None = None
        self._reconnecting: defer.Deferred[None] | None = None

    # -- what it is now ----------------------------------------------------------

    @property
    def state(self) -> str:
        """``"connecting"``, ``"online"``, ``"reconnecting"`` or ``"closed"``."""
        return self._state

    @property
    def broker_address(self) -> str | None:
        """``"host:port"`` of the broker of the current (or last) connection."""
        return self._address

    @property
    def session_id(self) -> str | None:
        """The session's id once logged in."""
        return self._session_id

    @property
    def user_id(self) -> Any:
        """The user id the login returned."""
        return self._user_id

    @property
    def token(self) -> str | None:
        """The token that resumes the session (each resume replaces it)."""
        return self._token

    @property
    def protocol(self) -> ClientProtocol | None:
        """The protocol of the current connection, if it is up."""
        return self._protocol

    # -- connecting and the session ----------------------------------------------

    @defer.inlineCallbacks
    def connect(self) -> InlineCallbacks[str]:
        """Connect to a broker (``broker``, else the brokerlist's least loaded).

        Returns:
            A Deferred firing with the broker's ``"host:port"``; failing with
            :class:`ClientConnectError` (the state is then ``"closed"`` again).
        """
        if self._state != CLOSED:
            raise ClientException(f"connect: already {self._state}")
        self._closing = False
        self._ended = False
        self._state = CONNECTING
        try:
            address = self.broker if self.broker is not None else (yield self._choose(None))
            protocol = yield self._open(address)
        except BaseException as e:
            if self._state == CONNECTING:
                self._state = CLOSED
                self._ended = True
                self._fail_waiters(ClientDisconnected(f"connect failed: {e}"))
            raise
        if self._closing:
            protocol.close()
            raise ClientDisconnected("closed while connecting")
        self._adopt(protocol, address)
        return address

    @defer.inlineCallbacks
    def login(self, **credentials: Any) -> InlineCallbacks[dict[str, Any]]:
        """Log in with the login route; keep the session id, user id and token.

        Args:
            credentials: the login route's arguments (e.g. ``user``, ``password``).

        Returns:
            A Deferred firing with the login reply (``session_id``, ``user_id``, ``token``,
            ``heartbeat`` and what the auth service added); failing with
            :class:`ClientRequestError` (``LOGIN_FAILED``: the connection stays up).
        """
        reply = yield self.request(self.login_route, credentials)
        if not isinstance(reply, dict) or not reply.get("session_id"):
            raise ClientException(f"login: the broker's reply has no session_id: {reply!r}")
        self._session_started(reply)
        return cast(dict[str, Any], reply)

    def register(self, **credentials: Any) -> defer.Deferred[Any]:
        """Create an account (``sso.register``; allowed before login)."""
        return self.request(self.register_route, credentials)

    @defer.inlineCallbacks
    def logout(self) -> InlineCallbacks[None]:
        """End the session (``session.logout``) and close the connection.

        A connection already lost (or lost while logging out) is not an error: the
        broker ends the session anyway after its grace period.
        """
        protocol = self._protocol
        self._closing = True
        try:
            if protocol is not None and self._session_id is not None:
                yield protocol.request(self.logout_route, timeout=self.request_timeout)
        except ClientDisconnected:
            pass
        finally:
            self._forget_session()
            yield self.close()

    def close(self) -> defer.Deferred[None]:
        """Close the connection (the session stays resumable on the broker's side).

        Stops any reconnecting; waiting requests fail with :class:`ClientDisconnected`.
        Returns a Deferred firing once the connection is closed.
        """
        self._closing = True
        self._state = CLOSED
        self._schedule_refresh(None)
        reconnecting, self._reconnecting = self._reconnecting, None
        if reconnecting is not None:
            reconnecting.cancel()
        self._fail_waiters(ClientDisconnected("client closed"))
        protocol, self._protocol = self._protocol, None
        self._fire_closed(None)
        if protocol is None:
            return defer.succeed(None)
        protocol.stop_heartbeat()
        return protocol.close().addCallback(lambda _: None)

    # -- traffic -------------------------------------------------------------------

    def request(
        self,
        route: str,
        body: Any = None,
        timeout: float | None = None,
        *,
        raw: bool = False,
        reply_type: type | None = None,
        trace: str | None = None,
    ) -> defer.Deferred[Any]:
        """Send a request; see :meth:`ClientProtocol.request` (``trace``: a trace id of
        your own, to follow the request with ``mmo trace``).

        Requests are numbered per client, not per connection. While reconnecting, a
        request waits for the new connection; one in flight when the connection drops
        is sent again, with the same seq, once the session is resumed (the service
        answers such a resend from its reply memo rather than running it twice). The
        wait counts against ``timeout`` (default :attr:`request_timeout`).
        """
        if timeout is None:
            timeout = self.request_timeout
        seq = self._next_seq
        self._next_seq = 1 if seq >= MAX_SEQ else seq + 1
        deadline = self.clock.seconds() + timeout
        return self._send(route, body, seq, deadline, raw, reply_type, trace)

    def _send(
        self,
        route: str,
        body: Any,
        seq: int,
        deadline: float,
        raw: bool,
        reply_type: type | None,
        trace: str | None = None,
    ) -> defer.Deferred[Any]:
        protocol = self._protocol
        remaining = deadline - self.clock.seconds()
        if self._state == ONLINE and protocol is not None:
            d = protocol.request(
                route, body, remaining, raw=raw, reply_type=reply_type, seq=seq, trace=trace
            )
        else:

            def send(protocol: ClientProtocol) -> defer.Deferred[Any]:
                left = deadline - self.clock.seconds()
                if left <= 0:
                    raise ClientTimeout(f"{route}: not reconnected in time")
                return protocol.request(
                    route, body, left, raw=raw, reply_type=reply_type, seq=seq, trace=trace
                )

            d = self._when_online(route, remaining).addCallback(send)

        def dropped(failure: Any) -> Any:
            # The connection went while the request was out: resend it after the resume.
            failure.trap(ClientDisconnected)
            if self._state != RECONNECTING or deadline <= self.clock.seconds():
                return failure
            log.info("request {seq} {route}: resending after the resume", seq=seq, route=route)
            return self._send(route, body, seq, deadline, raw, reply_type, trace)

        return d.addErrback(dropped)

    def notify(self, route: str, body: Any = None, *, raw: bool = False) -> None:
        """Send a one-way notification.

        While reconnecting it is queued (in order with requests) and sent once the
        session is resumed; it is dropped if the session cannot be resumed.

        Raises:
            ClientDisconnected: the client is closed.
        """
        protocol = self._protocol
        if self._state == ONLINE and protocol is not None:
            protocol.notify(route, body, raw=raw)
            return
        if self._state == CLOSED:
            raise ClientDisconnected(f"{route}: not connected")

        def send(protocol: ClientProtocol) -> None:
            protocol.notify(route, body, raw=raw)

        def dropped(failure: Any) -> None:
            log.warn("notify {route} dropped: {e}", route=route, e=failure.getErrorMessage())

        self._when_online(route, None).addCallback(send).addErrback(dropped)

    def on(
        self, route: str, callback: PushCallback, body_type: type | None = None
    ) -> Callable[[], None]:
        """Call ``callback(route, body)`` for pushes on ``route`` (``"*"``: all).

        Registrations outlive reconnections. Returns a function that removes it.
        """
        return self._listeners.on(route, callback, body_type)

    def on_error(self, callback: ErrorCallback) -> None:
        """Call ``callback(error)`` for each ``ERROR`` with seq 0 (a refused notify...)."""
        self._listeners.on_error(callback)

    def on_kick(self, callback: ErrorCallback) -> None:
        """Call ``callback(error)`` when the broker kicks this connection."""
        self._listeners.on_kick(callback)

    def on_resumed(self, callback: Callable[[dict[str, Any]], object]) -> None:
        """Call ``callback(reply)`` after each successful resume on a new connection."""
        self._resumed.append(callback)

    def on_closed(self, callback: Callable[[ClientDisconnected | None], object]) -> None:
        """Call ``callback(reason)`` when the client ends up closed.

        ``reason`` is ``None`` after :meth:`close`/:meth:`logout`, else a
        :class:`ClientDisconnected` saying why: a final kick (its ``cause``), a drop
        before login, or a resume that was refused (``RESUME_FAILED``) or ran out of time.
        """
        self._closed.append(callback)

    # -- internals -------------------------------------------------------------------

    def _build_protocol(self) -> ClientProtocol:
        return self.protocol_class(self.clock, self._listeners)

    @defer.inlineCallbacks
    def _choose(self, avoid: str | None) -> InlineCallbacks[str]:
        if self.brokerlist is None:
            return cast(str, self.broker)
        listing = read_brokerlist((yield self._fetcher(self.brokerlist)))
        self._tls_addresses = listing.tls
        brokers = listing.for_transport(self.transport)
        return pick_broker(brokers, avoid=(avoid,) if avoid else (), rng=self._rng)

    def _url(self, address: str) -> str:
        """How to reach broker ``address``: as given, or as transport and TLS say."""
        if self._broker_url is not None and address == self.broker:
            return self._broker_url
        tls = self.tls if self.tls is not None else address in (self._tls_addresses or ())
        return transports.broker_url(address, self.transport, tls)

    def _open(self, address: str) -> defer.Deferred[ClientProtocol]:
        url = self._url(address)
        log.debug("connecting to {url}", url=url)
        return self._connector(url, self._build_protocol())

    def _adopt(self, protocol: ClientProtocol, address: str) -> None:
        self._protocol = protocol
        self._address = address
        self._state = ONLINE
        protocol.when_closed().addCallback(self._lost, protocol)
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if waiter.timer is not None and waiter.timer.active():
                waiter.timer.cancel()
            waiter.deferred.callback(protocol)

    def _session_started(self, reply: dict[str, Any]) -> None:
        self.login_reply = reply
        self._session_id = str(reply["session_id"])
        self._user_id = reply.get("user_id", self._user_id)
        self._token = reply.get("token", self._token)
        self._take_heartbeat(reply)
        self._schedule_refresh(reply.get("token_ttl"))
        if self._protocol is not None:
            self._protocol.start_heartbeat(self._heartbeat)

    def _take_heartbeat(self, reply: dict[str, Any]) -> None:
        heartbeat = reply.get("heartbeat")
        if isinstance(heartbeat, int | float) and not isinstance(heartbeat, bool) and heartbeat > 0:
            self._heartbeat = float(heartbeat)

    def _forget_session(self) -> None:
        self._session_id = None
        self._token = None
        self._schedule_refresh(None)

    def _schedule_refresh(self, ttl: Any) -> None:
        """Refresh the token at half its lifetime (a token that expires while the
        session is online would not resume it after a drop)."""
        if self._refresh_timer is not None and self._refresh_timer.active():
            self._refresh_timer.cancel()
        self._refresh_timer = None
        if isinstance(ttl, int | float) and not isinstance(ttl, bool) and ttl > 0:
            self._refresh_timer = self.clock.callLater(ttl / 2, self._refresh, float(ttl))

    def _refresh(self, ttl: float) -> None:
        self._refresh_timer = None
        if self._session_id is None or self._state == CLOSED:
            return

        def refreshed(reply: Any) -> None:
            if isinstance(reply, dict) and reply.get("token"):
                self._token = reply["token"]
                self._schedule_refresh(reply.get("token_ttl"))

        def failed(failure: Any) -> None:
            log.info("token refresh failed: {e}", e=failure.getErrorMessage())
            if self._session_id is not None and self._state != CLOSED:
                # Try again well before the token runs out.
                self._schedule_refresh(ttl / 2)

        self.request(self.refresh_route).addCallbacks(refreshed, failed)

    def _lost(self, lost: ClientDisconnected, protocol: ClientProtocol) -> None:
        if protocol is not self._protocol:
            return
        self._protocol = None
        if self._closing or self._state == CLOSED:
            self._state = CLOSED
            return
        kick = protocol.kicked
        if kick is not None and kick.code in FINAL_KICKS:
            self._end(ClientDisconnected("session ended", kick))
        elif self._session_id is None or self._token is None:
            self._end(lost)
        else:
            log.info("connection to {address} lost: {lost}", address=self._address, lost=lost)
            self._state = RECONNECTING
            self._reconnecting = self._reconnect()
            self._reconnecting.addErrback(self._reconnect_crashed)

    def _end(self, reason: ClientException) -> None:
        if isinstance(reason, ClientDisconnected):
            error = reason
        elif isinstance(reason, ClientRequestError):
            error = ClientDisconnected("session ended", reason)
        else:
            error = ClientDisconnected(str(reason))
        log.info("client closed: {error}", error=error)
        self._state = CLOSED
        self._forget_session()
        self._fail_waiters(error)
        self._fire_closed(error)

    @defer.inlineCallbacks
    def _reconnect(self) -> InlineCallbacks[None]:
        """Reconnect and resume, with backoff, until it works or the window closes."""
        deadline = self.clock.seconds() + self.resume_window
        lost_address = self._address
        last: Exception | None = None
        attempt = 0
        while not self._closing:
            # The first attempt after a random pause of up to backoff_initial ("full
            # jitter"): every player of a dead broker loses it in the same instant, and
            # they come back spread out. Later ones wait at least half their doubling
            # bound, so that failing attempts always back off.
            bound = min(self.backoff_max, self.backoff_initial * 2**attempt)
            low = 0.0 if attempt == 0 else bound / 2
            attempt += 1
            pause = min(self._rng.uniform(low, bound), max(0.0, deadline - self.clock.seconds()))
            # Always through the reactor, even for no pause: never a loop in one turn.
            yield task.deferLater(cast(Any, self.clock), pause)
            if self._closing:
                return
            protocol: ClientProtocol | None = None
            try:
                address = yield self._choose(lost_address)
                protocol = yield self._open(address)
                remaining = deadline - self.clock.seconds()
                reply = yield protocol.request(
                    self.resume_route,
                    {"session_id": self._session_id, "token": self._token},
                    max(min(self.request_timeout, remaining), 0.1),
                )
            except ClientRequestError as e:
                if protocol is not None:
                    protocol.close()
                if e.code == ClientError.RESUME_FAILED:
                    self._reconnecting = None
                    self._end(e)
                    return
                last = e
            except defer.CancelledError:
                if protocol is not None:
                    protocol.close()
                return
            except Exception as e:
                if protocol is not None:
                    protocol.close()
                last = e
            else:
                if self._closing:
                    protocol.close()
                    return
                if protocol.is_connected and isinstance(reply, dict):
                    self._reconnecting = None
                    self._resumed_on(protocol, address, reply)
                    return
                protocol.close()
                last = ClientException(f"resume: bad reply or connection lost: {reply!r}")
            if self._closing:
                return
            log.info("resume failed: {e}", e=last)
            if deadline - self.clock.seconds() <= 0:
                break
        if not self._closing:
            self._reconnecting = None
            self._end(
                ClientDisconnected(f"could not resume within {self.resume_window:g} s: {last}")
            )

    def _resumed_on(self, protocol: ClientProtocol, address: str, reply: dict[str, Any]) -> None:
        log.info("session {id} resumed on {address}", id=self._session_id, address=address)
        self._adopt(protocol, address)
        self._token = reply.get("token", self._token)
        self._user_id = reply.get("user_id", self._user_id)
        self._schedule_refresh(reply.get("token_ttl"))
        # The resume reply need not repeat the interval: keep the login's then.
        self._take_heartbeat(reply)
        protocol.start_heartbeat(self._heartbeat)
        for callback in list(self._resumed):
            try:
                callback(reply)
            except Exception:
                log.failure("on_resumed callback failed")

    def _reconnect_crashed(self, failure: Any) -> None:
        if failure.check(defer.CancelledError):
            return
        log.failure("reconnecting failed", failure)
        self._end(ClientDisconnected(f"reconnecting failed: {failure.getErrorMessage()}"))

    def _when_online(self, route: str, timeout: float | None) -> defer.Deferred[ClientProtocol]:
        if self._state == CLOSED:
            return defer.fail(ClientDisconnected(f"{route}: not connected"))

        def cancel(d: defer.Deferred[ClientProtocol]) -> None:
            for waiter in list(self._waiters):
                if waiter.deferred is d:
                    self._waiters.remove(waiter)
                    if waiter.timer is not None and waiter.timer.active():
                        waiter.timer.cancel()

        d: defer.Deferred[ClientProtocol] = defer.Deferred(cancel)
        waiter = _Waiter(d, None)

        def expire() -> None:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
                d.errback(ClientTimeout(f"{route}: not reconnected within {timeout:g} s"))

        if timeout is not None:
            waiter.timer = self.clock.callLater(max(0.0, timeout), expire)
        self._waiters.append(waiter)
        return d

    def _fail_waiters(self, error: ClientException) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if waiter.timer is not None and waiter.timer.active():
                waiter.timer.cancel()
            waiter.deferred.errback(error)

    def _fire_closed(self, reason: ClientDisconnected | None) -> None:
        if self._ended:
            return
        self._ended = True
        for callback in list(self._closed):
            try:
                callback(reason)
            except Exception:
                log.failure("on_closed callback failed")
