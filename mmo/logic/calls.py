"""Request-reply calls to service instances, and one-way requests on the same links.

A :class:`Call` goes to the live instance with the fewest calls outstanding from
this process (or a chosen one, or the one a player's session hashes to), has a
deadline, and fires with the reply or fails with a distinct error
(:mod:`mmo.errors`):

* before the registry view has its first snapshot, a call waits for it (within
  its deadline); while the yellow is young, a call that finds no instance waits
  for it to know every provider;
* an instance that answers ``Unavailable`` (stopping or drained, it ran nothing) is
  drained and the call sent elsewhere (a call bound to one instance names it in the
  header's ``instance_id``: a drained instance serves those);
* when an instance is lost (its connection drops, or the registry expires it),
  calls in flight to methods it marked idempotent are sent to another instance
  (at most :data:`MAX_ATTEMPTS` in all); the others fail with ``InstanceLost``;
* a one-way request made for a player that fails comes back as an ERROR, which
  goes to :attr:`Calls.on_one_way_error` (brokers tell the player).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from typing import Any

import zmq
from twisted.internet import defer
from twisted.logger import Logger

from mmo.errors import (
    BadRequest,
    DeadlineExceeded,
    InstanceLost,
    MmoError,
    NoLiveInstance,
    Unavailable,
    from_wire,
    outcome,
)
from mmo.logic.links import Link, Pools
from mmo.registry import RegistryView
from mmo.telemetry.metrics import Latencies
from mmo.telemetry.trace import CURRENT, Trace, header_fields, span
from mmo.types import DelayedCall
from mmo.wire import WireError, decode, decode_value, encode_value
from mmo.wire.gen.mmo.ttypes import Header, Kind, Session
from mmo.zmq import ZmqContext

__all__ = ["DEFAULT_TIMEOUT", "MAX_ATTEMPTS", "Call", "Calls", "Done"]

log = Logger()

#: Default deadline of a call, in seconds.
DEFAULT_TIMEOUT = 5.0
#: How many instances an idempotent call is tried on at most.
MAX_ATTEMPTS = 3
_MAX_TIMEOUT_MS = 2**31 - 1


#: What a forwarded call's outcome is handed to: ``done(reply, None)`` or
#: ``done(None, error)``.
Done = Callable[[Any, MmoError | None], None]


class Call:
    """One call in flight: what it asks, where it went, when it expires.

    Attributes:
        d: fires with the reply, or fails with an MmoError (a :meth:`Calls.call`).
        done: called with ``(reply, None)`` or ``(None, error)`` instead (a
            :meth:`Calls.forward`: no Deferred).
        over: answered, failed or cancelled.
        attempts: how many instances it was sent to.
        link: the link it is outstanding on, if any.
        instance: the only instance it may go to (a bound one), if any.
        raw: the reply's body is handed back undecoded.
    """

    __slots__ = (
        "attempts",
        "body",
        "call_id",
        "client_seq",
        "d",
        "deadline",
        "done",
        "instance",
        "link",
        "method",
        "origin",
        "over",
        "peer",
        "raw",
        "service",
        "session",
        "timeout",
        "timer",
        "trace",
    )

    def __init__(
        self,
        call_id: int,
        service: str,
        method: str,
        body: bytes,
        timeout: float,
        deadline: float,
        session: Session | None,
        *,
        instance: str | None,
        client_seq: int | None,
        origin: int | None,
        peer: str | None,
        raw: bool,
        trace: Trace | None,
        done: Done | None,
        on_cancel: Callable[[Call], None],
    ) -> None:
        self.call_id = call_id
        self.service = service
        self.method = method
        self.body = body
        self.timeout = timeout
        self.deadline = deadline
        self.session = session
        self.instance = instance
        self.client_seq = client_seq
        self.origin = origin
        self.peer = peer
        self.raw = raw
        self.trace = trace
        self.attempts = 0
        self.link: Link[Call] | None = None
        self.timer: DelayedCall | None = None
        self.over = False
        self.done = done
        self.d: defer.Deferred[Any] | None = (
            None if done is not None else defer.Deferred(lambda _: on_cancel(self))
        )


class Calls:
    """The calls this process makes, on links it keeps to every instance it calls.

    Args:
        context: the process's ZeroMQ context (its reactor keeps the deadlines).
        view: the registry view (which instances are live).
        caller_id: how this process names itself in calls.
        caller_role: the role it states in calls.
        default_timeout: deadline of a call when none is given, in seconds.

    Attributes:
        pools: the links, by service (their replies and losses come here).
        on_one_way_error: called with the header of each ERROR an instance sends back
            for a failed one-way request made for a player.
        late_replies: replies that came after their call was over.
        latencies: calls made, by service, method and outcome, with how long they took
            (``mmo_client_request_duration_seconds``).
    """

    _call_ids = itertools.count(1)

    def __init__(
        self,
        context: ZmqContext,
        view: RegistryView,
        *,
        caller_id: str,
        caller_role: str,
        default_timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self.clock = context.reactor
        self.view = view
        self.caller_id = caller_id
        self.caller_role = caller_role
        self.default_timeout = default_timeout
        self.pools: Pools[Call] = Pools(context, view, self._answered, self._lost, self._answer)
        self.on_one_way_error: Callable[[Header], None] | None = None
        self.late_replies = 0
        self.latencies = Latencies(
            "mmo_client_request_duration_seconds",
            "Calls this process made to services, by outcome, and how long they took.",
            ("service", "method", "outcome"),
        )

    def call(
        self,
        service: str,
        method: str,
        kwargs: dict[str, Any] | None = None,
        *,
        timeout: float | None = None,
        session: Session | None = None,
        instance: str | None = None,
        raw_body: bytes | None = None,
        client_seq: int | None = None,
        origin: int | None = None,
        peer: str | None = None,
        trace: Trace | None = None,
    ) -> defer.Deferred[Any]:
        """Call ``service.method(**kwargs)``; fire with the reply or fail with an MmoError.

        Args:
            timeout: the deadline in seconds (default: ``default_timeout``).
            session: the client session the call is made for (brokers set it).
            instance: call this instance only (a bound, stateful one).
            raw_body: send these bytes as the body instead of encoding ``kwargs``, and
                fire with the reply's body bytes undecoded (brokers forward both as is).
            client_seq: with ``session``, the client packet's seq (brokers set it): a
                non-idempotent method is then called on the instance the session hashes
                to, whose reply memo answers a resend of it (:mod:`mmo.logic.memo`).
            origin: on whose behalf (``Origin.CLIENT``/``LOGIN``: a player's packet,
                which reaches only methods declared for players; brokers set it).
            peer: with ``origin``, the player's address.
            trace: the client request it serves (default: the one being served, if any:
                :data:`mmo.telemetry.trace.CURRENT`).
        """
        if raw_body is not None:
            body = raw_body
        else:
            try:
                body = encode_value(kwargs or {})
            except WireError as e:
                return defer.fail(BadRequest(f"{service}.{method}: {e}"))
        call = self._start(
            service,
            method,
            body,
            raw=raw_body is not None,
            done=None,
            timeout=timeout,
            session=session,
            instance=instance,
            client_seq=client_seq,
            origin=origin,
            peer=peer,
            trace=trace,
        )
        assert call.d is not None
        return call.d

    def forward(self, service: str, method: str, body: bytes, done: Done, **fields: Any) -> None:
        """:meth:`call` with ``raw_body=body`` for a broker's hot path (``fields``: its
        other keyword arguments, ``kwargs`` aside): the reply's body or the MmoError goes
        to ``done(body, None)`` or ``done(None, error)``, called once (and what it raises
        is logged); no Deferred is made."""
        self._start(service, method, body, raw=True, done=done, **fields)

    def _start(
        self,
        service: str,
        method: str,
        body: bytes,
        *,
        raw: bool,
        done: Done | None,
        timeout: float | None = None,
        session: Session | None = None,
        instance: str | None = None,
        client_seq: int | None = None,
        origin: int | None = None,
        peer: str | None = None,
        trace: Trace | None = None,
    ) -> Call:
        timeout = self.default_timeout if timeout is None else timeout
        call = Call(
            next(self._call_ids),
            service,
            method,
            body,
            timeout,
            self.clock.seconds() + timeout,
            session,
            instance=instance,
            client_seq=client_seq,
            origin=origin,
            peer=peer,
            raw=raw,
            trace=trace or CURRENT.get(),
            done=done,
            on_cancel=self._cancelled,
        )
        call.timer = self.clock.callLater(timeout, self._expired, call)
        if self.view.synced:
            self._dispatch(call)
        else:
            # Before the first snapshot nothing is known yet: wait for it (within the deadline).
            waiting = self.view.wait_for(lambda: self.view.synced, timeout)
            waiting.addCallbacks(lambda _: self._dispatch(call), lambda _: None)
        return call

    def abandon(self, why: str) -> None:
        """Fail every call outstanding on a link with ``DeadlineExceeded(why)``."""
        for link in self.pools.all_links():
            for call in list(link.outstanding.values()):
                self._finish(call, error=DeadlineExceeded(why))

    # -- one-way requests -----------------------------------------------------------

    def send(
        self,
        service: str,
        method: str,
        body: bytes,
        *,
        instance: str | None = None,
        prefer: str | None = None,
        **header: Any,
    ) -> str | None:
        """Send a one-way request (no answer) to ``instance`` (or the least busy one;
        ``prefer`` while its link is connected: see :meth:`Pool.pick`).

        Unlike a push, it travels on the same link as calls, so it keeps its order
        relative to them and can reach one chosen instance. ``header`` sets extra
        ``Header`` fields (session, targets, channel, route, instance_id, origin, peer).
        If it was made for a player (``origin``) and fails, the instance answers with
        an ERROR (see :attr:`on_one_way_error`).
        Returns the instance id it went to, or None (no such live instance).
        """
        link = self.pools.pool(service).pick((), instance, prefer=prefer)
        if link is None or not self._send_one_way(link, service, method, body, header):
            return None
        return link.instance_id

    def send_all(self, service: str, method: str, body: bytes, **header: Any) -> int:
        """Send a one-way request to every live instance of ``service`` (drained ones too:
        a drained broker still holds its players); return how many."""
        sent = 0
        for link in list(self.pools.pool(service).conns.values()):
            if link.draining and not link.drained:
                continue
            if self._send_one_way(link, service, method, body, header):
                sent += 1
        return sent

    def _send_one_way(
        self, link: Link[Call], service: str, method: str, body: bytes, fields: dict[str, Any]
    ) -> bool:
        header = Header(
            kind=Kind.REQUEST,
            service_name=service,
            method=method,
            caller=self.caller_id,
            caller_role=self.caller_role,
            one_way=True,
            timeout_ms=int(self.default_timeout * 1000),
            **{**header_fields(), **fields},
        )
        try:
            link.request(header, body)
        except zmq.ZMQError as e:
            log.warn("send to {id} failed: {e}", id=link.instance_id, e=e)
            return False
        return True

    # -- the state machine --------------------------------------------------------------

    def _dispatch(self, call: Call, exclude: Iterable[str] = ()) -> None:
        if call.over:
            return
        pool = self.pools.pool(call.service)
        affinity = None
        if call.client_seq and call.session is not None and not pool.idempotent(call.method):
            affinity = call.session.id
        link = pool.pick(exclude, call.instance, affinity)
        if link is None and not self.view.warm:
            # The yellow has just started and may not know every instance yet.
            waiting = self.view.wait_for(lambda: self.view.warm, call.timeout)
            waiting.addCallbacks(lambda _: self._dispatch(call, exclude), lambda _: None)
            return
        if link is None:
            which = f"instance {call.instance!r}" if call.instance else "live instance"
            error = NoLiveInstance(f"no {which} of service {call.service!r}")
            self._finish(call, error=error)
            return
        remaining_ms = int((call.deadline - self.clock.seconds()) * 1000)
        header = Header(
            kind=Kind.REQUEST,
            call_id=call.call_id,
            service_name=call.service,
            method=call.method,
            timeout_ms=min(max(remaining_ms, 1), _MAX_TIMEOUT_MS),
            caller=self.caller_id,
            caller_role=self.caller_role,
            session=call.session,
            client_seq=call.client_seq,
            origin=call.origin,
            peer=call.peer,
            # A call bound to one instance says so: a drained instance still serves it.
            instance_id=call.instance,
        )
        if call.trace is not None:
            header.trace_id = call.trace.id
            header.traced = call.trace.traced or None
        call.attempts += 1
        call.link = link
        link.outstanding[call.call_id] = call
        try:
            link.request(header, call.body)
        except zmq.ZMQError as e:
            del link.outstanding[call.call_id]
            self._finish(call, error=NoLiveInstance(f"cannot send to {link.instance_id}: {e}"))

    def _answered(self, link: Link[Call], frames: list[bytes]) -> None:
        """A message on ``link``: one answer ``[header, body]``, or a batch of them
        (``[h1, b1, h2, b2, ...]``, from a worker answering a batch)."""
        if len(frames) < 2:
            frames = [*frames, b""]
        for i in range(0, len(frames) - 1, 2):
            try:
                header = decode(Header, frames[i])
            except WireError as e:
                log.warn("call: bad reply from {id}: {e}", id=link.instance_id, e=e)
                continue
            self._answer(link, header, frames[i + 1])

    def _answer(self, link: Link[Call], header: Header, body: bytes) -> None:
        """An answer on ``link`` (read and decoded, or handed over in process)."""
        if header.one_way:
            # A one-way request made for a player failed: whoever sent it may tell them.
            if self.on_one_way_error is not None:
                self.on_one_way_error(header)
            return
        call = link.outstanding.pop(header.call_id, None)
        if call is None:
            self.late_replies += 1
            return
        self.pools.release(link)
        if header.kind == Kind.REPLY:
            if call.raw:
                self._finish(call, result=body)
                return
            try:
                result = decode_value(body)
            except WireError as e:
                self._finish(call, error=BadRequest(f"undecodable reply: {e}"))
                return
            self._finish(call, result=result)
        else:
            error = from_wire(header.error_code, header.error_type, header.error_message)
            movable = call.instance is None and call.attempts < MAX_ATTEMPTS
            if isinstance(error, Unavailable) and movable:
                # The instance is stopping and ran nothing: safe to send anywhere else.
                link.draining = True
                self._dispatch(call, exclude={link.instance_id})
                return
            self._finish(call, error=error)

    def _finish(self, call: Call, *, result: Any = None, error: MmoError | None = None) -> None:
        if call.timer is not None and call.timer.active():
            call.timer.cancel()
        call.timer = None
        if call.over:
            return
        call.over = True
        took = self.clock.seconds() - (call.deadline - call.timeout)
        ended = outcome(error)
        self.latencies.observe((call.service, call.method, ended), took)
        if call.trace is not None and call.trace.traced:
            peer = call.link.instance_id if call.link is not None else ""
            span(call.trace, "client", call.service, call.method, ended, took, peer)
        if call.done is not None:
            try:
                call.done(result, error)
            except Exception:
                log.failure(
                    "call: the outcome's handler of {service}.{method} failed",
                    service=call.service,
                    method=call.method,
                )
        elif error is None:
            assert call.d is not None
            call.d.callback(result)
        else:
            assert call.d is not None
            call.d.errback(error)

    def _expired(self, call: Call) -> None:
        call.timer = None
        self._detach(call)
        if call.link is not None:
            where = f" (on {call.link.instance_id})"
        elif not self.view.synced:
            where = f" (no answer from the registry at {', '.join(self.view.yellows)})"
        elif not self.view.warm:
            where = " (no instance known yet: the registry started moments ago)"
        else:
            where = ""
        self._finish(
            call,
            error=DeadlineExceeded(
                f"{call.service}.{call.method} got no answer within {call.timeout:g}s{where}"
            ),
        )

    def _cancelled(self, call: Call) -> None:
        call.over = True
        if call.timer is not None and call.timer.active():
            call.timer.cancel()
        self._detach(call)

    def _detach(self, call: Call) -> None:
        """Take a call that will not be answered off its link."""
        if call.link is not None:
            call.link.outstanding.pop(call.call_id, None)
            self.pools.release(call.link)

    def _lost(self, link: Link[Call], why: str) -> None:
        """An instance is gone: move its idempotent calls elsewhere, fail the rest."""
        link.drain_input()
        calls = list(link.outstanding.values())
        link.outstanding.clear()
        if calls:
            log.info(
                "call: instance {id} lost ({why}); {n} calls in flight",
                id=link.instance_id,
                why=why,
                n=len(calls),
            )
        for call in calls:
            movable = call.instance is None and call.method in link.idempotent
            if movable and call.attempts < MAX_ATTEMPTS:
                self._dispatch(call, exclude={link.instance_id})
            else:
                self._finish(
                    call,
                    error=InstanceLost(
                        f"instance {link.instance_id} of {call.service!r} was lost ({why}) "
                        f"with {call.method!r} in flight; it may or may not have run"
                    ),
                )
