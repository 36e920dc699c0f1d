"""The serving side of a logic service: sockets in front of a handler.

A :class:`HandlerServer` binds three ZeroMQ sockets (see docs/protocol.md):
``rep`` (ROUTER: requests, answered with a REPLY or an ERROR), ``pull``
(PULL: one-way pushes) and ``pub`` (PUB: events the handler publishes). It
dispatches to a :class:`~mmo.logic.handler.ServiceHandler` and, when stopped,
drains: it stops taking work, answers what it holds (up to a limit), then closes.
An operator may also drain it while it runs (:meth:`HandlerServer.drain`, called by
the handler's built-in ``ops_drain``): it then answers ``Unavailable`` to the calls
its callers may send elsewhere, and still serves what it holds (calls bound to its
instance, one-way requests, pushes) and the operators' ``ops_*`` calls, until it is
taken back. A client request resent to a non-idempotent method is answered from the
:class:`~mmo.logic.memo.ReplyMemo` instead of running again.

A player's one-way request (a NOTIFY the broker forwarded) that fails is answered
all the same, with an ERROR naming the session, so the broker can tell the
player. A handler's unexpected exception is logged with its traceback once per
(service, method, error type) per :attr:`ErrorReport.interval`, with a count of
the repeats, so that no player can flood the log; errors the caller caused
(``BadRequest``, ``UnknownMethod``, ...) are answered, not logged.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import zmq
from twisted.application.service import Service
from twisted.internet import defer
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure
from typing_extensions import override

from mmo.errors import BadRequest, MmoError, RemoteError, Unavailable, outcome
from mmo.logic.handler import OPS_PREFIX, Context, ServiceHandler
from mmo.logic.links import LOCAL_SERVERS, flush_batches
from mmo.logic.memo import Entry, Key, ReplyMemo
from mmo.net import with_host
from mmo.telemetry.metrics import Latencies, Metric, counter, gauge
from mmo.telemetry.trace import CURRENT, Trace, from_header, span
from mmo.types import Clock
from mmo.wire import WireError, decode, decode_value, encode, encode_value
from mmo.wire.gen.mmo.ttypes import ErrorCode, Header, Kind, Origin
from mmo.zmq import ZmqContext, ZmqSocket

log = Logger()

_EMPTY = b""
_REPLY = {"kind": Kind.REPLY}


class ErrorReport:
    """Logs handlers' unexpected exceptions without letting a flood fill the log.

    The first exception of each (service, method, error type) is logged at error
    level with its traceback; repeats within :attr:`interval` seconds are only
    counted, and the next one logged after the interval says how many there were.

    Args:
        clock: the reactor (or a ``task.Clock``).
        interval: seconds between two tracebacks of the same kind.
        max_kinds: kinds remembered at most (the oldest are forgotten first).
    """

    def __init__(self, clock: Clock, interval: float = 60.0, max_kinds: int = 1000) -> None:
        self.clock = clock
        self.interval = interval
        self.max_kinds = max_kinds
        #: Exceptions logged, and those only counted.
        self.logged = 0
        self.suppressed = 0
        # kind -> [when last logged, repeats since]
        self._kinds: dict[tuple[str, str, str], list[float]] = {}

    def failed(self, failure: Failure, service: str, method: str | None) -> None:
        """Report a handler's exception (logged, or counted as a repeat)."""
        error_type = failure.type.__qualname__ if failure.type is not None else "?"
        kind = (service, method or "?", error_type)
        now = self.clock.seconds()
        seen = self._kinds.get(kind)
        if seen is not None and now - seen[0] < self.interval:
            seen[1] += 1
            self.suppressed += 1
            return
        repeats = int(seen[1]) if seen is not None else 0
        self._kinds.pop(kind, None)
        if len(self._kinds) >= self.max_kinds:
            del self._kinds[next(iter(self._kinds))]
        self._kinds[kind] = [now, 0]
        self.logged += 1
        log.failure(
            "{service}.{method} raised {error_type}"
            " ({repeats} more since the last one logged; at most one logged per {interval:g}s)",
            failure,
            level=LogLevel.error,
            service=service,
            method=method,
            error_type=error_type,
            repeats=repeats,
            interval=self.interval,
        )


def error_fields(error: BaseException) -> dict[str, Any]:
    """The ERROR header fields that describe ``error`` to the caller."""
    error_type = type(error).__name__
    if isinstance(error, RemoteError):
        # A nested call's error passes through with the original type.
        code, error_type = error.code, error.type
    elif isinstance(error, MmoError):
        code = error.code
    else:
        code = ErrorCode.REMOTE
    return {
        "kind": Kind.ERROR,
        "error_code": code,
        "error_type": error_type,
        "error_message": str(getattr(error, "message", None) or error),
    }


class HandlerServer(Service):
    """Serves one handler on ROUTER, PULL and PUB sockets.

    Args:
        context: the process's ZeroMQ context.
        handler: the handler instance to dispatch to.
        bind_host: interface to bind (ports are picked by the system; ``0.0.0.0``: all).
        advertise_host: the host the registered endpoints name (default: ``bind_host``;
            see :mod:`mmo.net`).
        drain_timeout: seconds :meth:`stopService` waits for calls in flight.
        max_message: largest message accepted, in bytes (ZeroMQ drops a bigger sender).
        memo: where outcomes of non-idempotent client requests are kept for resends
            (None: a resend runs again).
        colocated: callers in this process reach it in process, not over ZeroMQ
            (:data:`mmo.logic.links.LOCAL_SERVERS`; a broker's hosted handlers).

    Attributes:
        latencies: requests served, by method and outcome, with how long they took
            (``mmo_server_request_duration_seconds``; a method the handler does not have
            is counted as ``(unknown)``).
        draining: an operator drained it (:meth:`drain`).
        drain_listeners: called with the new state by :meth:`drain` (the registry
            entry's meta, the telemetry's readiness).
    """

    def __init__(
        self,
        context: ZmqContext,
        handler: ServiceHandler,
        *,
        bind_host: str = "127.0.0.1",
        advertise_host: str | None = None,
        drain_timeout: float = 10.0,
        max_message: int = 16 * 1024 * 1024,
        memo: ReplyMemo | None = None,
        colocated: bool = False,
    ) -> None:
        self.context = context
        self.colocated = colocated
        #: Callers in this process (co-located): identity -> where their answers go.
        self._local: dict[bytes, Callable[[Header, bytes], None]] = {}
        #: Callers that send batches (so take them: :meth:`_send_answer`), and this turn's
        #: answers to them.
        self._batching: set[bytes] = set()
        self._outbox: dict[bytes, list[bytes]] = {}
        self._flush: Any = None
        self.handler = handler
        self.bind_host = bind_host
        self.advertise_host = advertise_host or bind_host
        self.drain_timeout = drain_timeout
        self.max_message = max_message
        self.memo = memo
        self.errors = ErrorReport(context.reactor)
        methods = handler.method_names()
        self._idempotent = {name for name, safe in methods.items() if safe}
        self._methods = set(methods) | handler.ops_names()
        self.latencies = Latencies(
            "mmo_server_request_duration_seconds",
            "Requests this process served, by outcome, and how long they took.",
            ("service", "method", "outcome"),
        )
        self.endpoints: dict[str, str] = {}
        self.in_flight = 0
        self.served = 0
        self.bad_messages = 0
        self.accepting = False
        self.draining = False
        self.drain_listeners: list[Callable[[bool], None]] = []
        self._rep: ZmqSocket | None = None
        self._pull: ZmqSocket | None = None
        self._pub: ZmqSocket | None = None
        self._drained: defer.Deferred[None] | None = None

    def bind(self) -> dict[str, str]:
        """Bind the sockets (before registering, so the endpoints are known)."""
        if not self.endpoints:
            any_port = f"tcp://{self.bind_host}:*"
            limits = {zmq.MAXMSGSIZE: self.max_message}
            self._rep = self.context.socket(
                zmq.ROUTER, self._request, options={zmq.SNDHWM: 0, **limits}
            )
            self._pull = self.context.socket(zmq.PULL, self._push, options=limits)
            self._pub = self.context.socket(zmq.PUB)
            bound = {
                "rep": self._rep.bind(any_port),
                "pull": self._pull.bind(any_port),
                "pub": self._pub.bind(any_port),
            }
            # What others connect to: the port each got, under the advertised host.
            self.endpoints = {k: with_host(v, self.advertise_host) for k, v in bound.items()}
            if self.colocated:
                LOCAL_SERVERS[self.handler.instance_id] = self
        return self.endpoints

    # -- callers in this process (co-located: mmo.logic.links.LocalLink) --------------

    @property
    def rep_endpoint(self) -> str | None:
        """The ``rep`` address it is registered with (once bound)."""
        return self.endpoints.get("rep")

    def attach(self, ident: bytes, answer: Callable[[Header, bytes], None]) -> None:
        """Send the answers to requests from ``ident`` to ``answer(header, body)``, not
        to the ROUTER socket (nothing encoded: a caller of this process)."""
        self._local[ident] = answer

    def detach(self, ident: bytes) -> None:
        """Forget a caller of this process."""
        self._local.pop(ident, None)

    def take(self, ident: bytes, header: Header, body: bytes) -> None:
        """A request of a caller in this process (attached as ``ident``): served as if
        the ROUTER had read it, the header as it was made (not encoded, not decoded)."""
        self._serve(ident, header, body)

    @override
    def startService(self) -> None:
        """Bind (if not yet) and take requests."""
        super().startService()
        self.bind()
        self.accepting = True

    @override
    def stopService(self) -> defer.Deferred[None]:
        """Stop taking work, wait for calls in flight (up to the drain timeout), close."""
        super().stopService()
        self.accepting = False
        if self._pull is not None:
            self._pull.close()
            self._pull = None
        if self.in_flight:
            self._drained = defer.Deferred()
            self._drained.addTimeout(self.drain_timeout, self.context.reactor)
            self._drained.addErrback(lambda _: log.warn("worker: drain timed out"))
            return self._drained.addBoth(self._close)
        self._close(None)
        return defer.succeed(None)

    def drain(self, draining: bool = True) -> None:
        """Drain (``draining``): answer ``Unavailable`` to new calls callers may send
        elsewhere, serve the rest (:meth:`held`); or take every call again. Tells
        :attr:`drain_listeners` (each time: a repeat re-announces the state)."""
        if draining != self.draining:
            log.info(
                "worker {id}: {what}",
                id=self.handler.instance_id,
                what="drained: taking no new calls" if draining else "taking calls again",
            )
        self.draining = draining
        for listener in self.drain_listeners:
            listener(draining)

    def held(self, header: Header) -> bool:
        """Whether a drained server still takes this request (one that is stopping takes
        none): what its callers cannot send elsewhere, an operator's (``ops_*``), a
        one-way request, or a call bound to this instance (its caller names the instance
        in the header's ``instance_id``: a session's or a fight's)."""
        return (
            bool(header.one_way)
            or (header.method or "").startswith(OPS_PREFIX)
            or header.instance_id == self.handler.instance_id
        )

    def _close(self, _: Any) -> None:
        if self._flush is not None and self._flush.active():
            self._flush.cancel()
            self._flush_answers()
        if LOCAL_SERVERS.get(self.handler.instance_id) is self:
            del LOCAL_SERVERS[self.handler.instance_id]
        for sock in (self._rep, self._pub):
            if sock is not None:
                sock.close()
        self._rep = self._pub = None

    def publish(self, topic: str, payload: Any) -> None:
        """Send an event to every subscriber of ``topic``."""
        if self._pub is None:
            raise RuntimeError("the service is not running")
        header = encode(
            Header(kind=Kind.EVENT, topic=topic, service_name=self.handler.service_name)
        )
        self._pub.send([topic.encode(), header, encode_value(payload)])

    def metrics(self) -> Iterator[Metric]:
        """What this server served (a metrics source)."""
        yield from self.latencies.collect()
        service = (self.handler.service_name,)
        yield gauge(
            "mmo_server_requests_in_flight",
            "Requests being served now.",
            ("service",),
            [(service, self.in_flight)],
        )
        yield counter(
            "mmo_server_bad_messages",
            "Messages refused as malformed (frames, header, kind).",
            ("service",),
            [(service, self.bad_messages)],
        )
        yield counter(
            "mmo_server_handler_errors",
            "Unexpected exceptions of the handler (logged once per kind per minute).",
            ("service", "logged"),
            [((*service, "yes"), self.errors.logged), ((*service, "no"), self.errors.suppressed)],
        )
        if self.memo is not None:
            yield counter(
                "mmo_server_resends_answered",
                "Client requests resent and answered from the reply memo, not run again.",
                ("service",),
                [(service, self.memo.replayed + self.memo.joined)],
            )

    def readiness(self) -> tuple[bool, str]:
        """Whether it takes requests (a readiness check; a drained one is not ready
        either, by the telemetry's ``draining``)."""
        if self.accepting:
            drained = " (drained: only what it holds)" if self.draining else ""
            return True, f"serving on {self.endpoints.get('rep')}{drained}"
        return False, "not taking requests (starting or draining)"

    # -- incoming ------------------------------------------------------------

    def _bad(self, reason: str) -> None:
        self.bad_messages += 1
        log.warn("worker: bad message ({reason})", reason=reason)

    def _request(self, frames: list[bytes]) -> None:
        """A message on the ROUTER: ``[ident, header, body]``, or a caller's batch
        ``[ident, h1, b1, h2, b2, ...]`` (served in order; answered in batches too)."""
        if len(frames) < 3 or len(frames) % 2 == 0:
            self._bad(f"expected an identity and header-body pairs, got {len(frames)} frames")
            return
        ident = frames[0]
        if len(frames) > 3:
            self._batching.add(ident)
        for i in range(1, len(frames), 2):
            try:
                header = decode(Header, frames[i])
            except WireError as e:
                self._bad(str(e))
                continue
            self._serve(ident, header, frames[i + 1])

    def _serve(self, ident: bytes, header: Header, body: bytes) -> None:
        """Serve one request (read from the ROUTER, or handed over in process)."""
        if header.kind != Kind.REQUEST:
            self._bad(f"unexpected kind {header.kind} on the request socket")
            return
        if header.call_id is None and not header.one_way:
            self._bad("a request without call_id")
            return
        timeout_ms = header.timeout_ms if header.timeout_ms is not None else 5000
        if timeout_ms <= 0:
            return
        taking = self.accepting and (not self.draining or self.held(header))
        memo: tuple[Key, Entry] | None = None
        if (
            self.memo is not None
            and header.client_seq
            and header.session is not None
            and not header.one_way
            and header.method not in self._idempotent
        ):
            key = (header.session.id, header.client_seq)
            fingerprint = ReplyMemo.fingerprint(header.method or "", body)
            known = self.memo.find(key, fingerprint)
            if known is not None:
                self._resent(known, ident, header.call_id)
                return
            if taking:
                memo = (key, self.memo.start(key, fingerprint))
        if not taking:
            # Stopping or drained: nothing runs, so the caller may resend it anywhere.
            why = "is draining" if self.accepting else "is stopping"
            self._error(
                Failure(Unavailable(f"{self.handler.instance_id} {why}")),
                ident,
                header.call_id,
            )
            return
        clock = self.context.reactor
        self.in_flight += 1
        start = clock.seconds()
        trace = from_header(header)
        try:
            result = self._traced(trace, header, body, start + timeout_ms / 1000.0)
        except Exception:
            failure = Failure()
            self._observe(failure, header, start, trace)
            if header.one_way:
                self._one_way_failed(failure, ident, header)
            else:
                self._failed(failure, ident, header, memo)
            self._done(None)
            return
        if isinstance(result, defer.Deferred):
            result.addBoth(self._observe, header, start, trace)
            if header.one_way:
                result.addErrback(self._one_way_failed, ident, header)
            else:
                result.addCallbacks(
                    self._reply,
                    self._failed,
                    callbackArgs=(ident, header.call_id, memo),
                    errbackArgs=(ident, header, memo),
                )
            result.addBoth(self._done)
            return
        # A plain value (most handlers): answer at once, no Deferred needed.
        self._observe(None, header, start, trace)
        if not header.one_way:
            self._reply(result, ident, header.call_id, memo)
        self._done(None)

    def _resent(self, entry: Entry, ident: bytes, call_id: int) -> None:
        """A resend of a request the memo knows: answer it as the first run was."""
        assert self.memo is not None
        if entry.outcome is None:
            self.memo.joined += 1
            entry.waiters.append((ident, call_id))
        else:
            self.memo.replayed += 1
            self._answer(entry.outcome, ident, call_id)

    def _push(self, frames: list[bytes]) -> None:
        if len(frames) != 2:
            self._bad(f"expected 2 frames, got {len(frames)}")
            return
        try:
            header = decode(Header, frames[0])
        except WireError as e:
            self._bad(str(e))
            return
        if header.kind != Kind.PUSH:
            self._bad(f"unexpected kind {header.kind} on the push socket")
            return
        self._pushed(header, frames[1])

    def _pushed(self, header: Header, body: bytes) -> None:
        """Serve a well-formed push: the handler runs it, nothing answers."""
        self.in_flight += 1
        start = self.context.reactor.seconds()
        trace = from_header(header)
        d = defer.maybeDeferred(self._traced, trace, header, body, start + 3600.0)
        d.addBoth(self._observe, header, start, trace)
        d.addErrback(self._report, header.method)
        d.addBoth(self._done)

    def _traced(self, trace: Trace | None, header: Header, body: bytes, deadline: float) -> Any:
        """:meth:`_call` with ``trace`` as the current trace (the handler's calls and log
        events carry it)."""
        if trace is None:
            return self._call(header, body, deadline)
        token = CURRENT.set(trace)
        try:
            return self._call(header, body, deadline)
        finally:
            CURRENT.reset(token)

    def _observe(self, result: Any, header: Header, start: float, trace: Trace | None) -> Any:
        """Count a request served (``result``: its outcome, a Failure if it failed)."""
        method = header.method if header.method in self._methods else "(unknown)"
        error = result.value if isinstance(result, Failure) else None
        took = self.context.reactor.seconds() - start
        ended = outcome(error)
        self.latencies.observe((self.handler.service_name, method, ended), took)
        if trace is not None and trace.traced:
            span(
                trace, "server", self.handler.service_name, method, ended, took, header.caller or ""
            )
        return result

    def _call(self, header: Header, body: bytes, deadline: float) -> Any:
        """Decode the arguments and run the handler: its result, a Deferred, or a raise."""
        struct = self.handler.body_types.get(header.method or "")
        kwargs: Any
        try:
            if struct is not None:
                # The route declares a Thrift struct: it arrives as the ``body`` argument.
                kwargs = {"body": decode(struct, body)}
            else:
                kwargs = decode_value(body) if body else {}
        except WireError as e:
            raise BadRequest(str(e)) from e
        if not isinstance(kwargs, dict):
            raise BadRequest("the body of a call must be a map of keyword arguments")
        ctx = Context(
            service=header.service_name or self.handler.service_name,
            method=header.method or "",
            caller=header.caller,
            session=header.session,
            deadline=deadline,
            clock=self.context.reactor,
            caller_role=header.caller_role,
            origin=header.origin or Origin.MEMBER,
            peer=header.peer,
        )
        return self.handler.dispatch(ctx, kwargs)

    def _done(self, result: Any) -> Any:
        self.in_flight -= 1
        self.served += 1
        if self.in_flight == 0 and self._drained is not None and not self._drained.called:
            self._drained.callback(None)
        return result

    # -- outgoing ------------------------------------------------------------

    def _send_answer(self, ident: bytes, header: Header, body: bytes) -> None:
        """Answer the caller ``ident``: in process (a co-located caller); batched, at the
        end of this turn of the reactor, to a caller that sends batches; else at once."""
        if self._local:
            answer = self._local.get(ident)
            if answer is not None:
                answer(header, body)
                return
        if ident not in self._batching:
            flush_batches()  # what the handler sent before its answer goes first
            self._send([ident, encode(header), body])
            return
        pending = self._outbox.get(ident)
        if pending is None:
            pending = self._outbox[ident] = [ident]
            if self._flush is None:
                self._flush = self.context.reactor.callLater(0, self._flush_answers)
        pending += (encode(header), body)

    def _flush_answers(self) -> None:
        """Send each batching caller this turn's answers, as one message (after what the
        handlers sent before them)."""
        flush_batches()
        self._flush = None
        outbox, self._outbox = self._outbox, {}
        for frames in outbox.values():
            self._send(frames)

    def _send(self, frames: list[bytes]) -> None:
        if self._rep is None:
            return
        try:
            self._rep.send(frames)
        except zmq.ZMQError as e:
            log.warn("worker: reply dropped ({e})", e=e)

    def _answer(self, outcome: tuple[dict[str, Any], bytes], ident: bytes, call_id: int) -> None:
        fields, body = outcome
        self._send_answer(ident, Header(call_id=call_id, **fields), body)

    def _answered(
        self,
        fields: dict[str, Any],
        body: bytes,
        ident: bytes,
        call_id: int,
        memo: tuple[Key, Entry] | None,
    ) -> None:
        outcome = (fields, body)
        self._answer(outcome, ident, call_id)
        if memo is not None:
            key, entry = memo
            assert self.memo is not None
            self.memo.end(key, entry, fields, body)
            waiters, entry.waiters = entry.waiters, []
            for waiter in waiters:
                self._answer(outcome, *waiter)

    def _reply(
        self, result: Any, ident: bytes, call_id: int, memo: tuple[Key, Entry] | None = None
    ) -> None:
        try:
            body = encode(result) if hasattr(result, "thrift_spec") else encode_value(result)
        except WireError as e:
            # The handler returned what cannot travel: a bug of the handler's.
            self.errors.failed(Failure(e), self.handler.service_name, "(reply)")
            self._error(Failure(e), ident, call_id, memo)
            return
        self._answered(_REPLY, body, ident, call_id, memo)

    def _failed(
        self, failure: Failure, ident: bytes, header: Header, memo: tuple[Key, Entry] | None
    ) -> None:
        self._report(failure, header.method)
        self._error(failure, ident, header.call_id, memo)

    def _error(
        self,
        failure: Failure,
        ident: bytes,
        call_id: int,
        memo: tuple[Key, Entry] | None = None,
    ) -> None:
        error = failure.value
        assert error is not None
        self._answered(error_fields(error), _EMPTY, ident, call_id, memo)

    def _report(self, failure: Failure, method: str | None) -> None:
        """Log an unexpected exception (rate-limited); errors the caller caused are not."""
        if not isinstance(failure.value, MmoError):
            self.errors.failed(failure, self.handler.service_name, method)

    def _one_way_failed(self, failure: Failure, ident: bytes, header: Header) -> None:
        """A one-way request failed: report it, and tell the broker of a player's NOTIFY."""
        self._report(failure, header.method)
        if header.origin != Origin.CLIENT or header.session is None:
            return
        error = failure.value
        assert error is not None
        fields = error_fields(error)
        reply = Header(
            one_way=True,
            targets=[header.session.id],
            route=header.route,
            service_name=header.service_name,
            method=header.method,
            **fields,
        )
        self._send_answer(ident, reply, _EMPTY)
