"""The calling side of the logic layer: a :class:`Directory` of services and their proxies.

``get_service(name, pattern)`` gives a proxy whose attribute calls are remote
calls: ``reply = yield get_service("sso", "REP").login(user="harry")``.

* ``"REP"`` (request-reply): each call goes to the live instance with the
  fewest calls outstanding from this process, has a deadline, and fires with
  the reply or fails with a distinct error (:mod:`mmo.errors`). When an
  instance is lost (its connection drops, or the registry expires it), calls in
  flight to methods it marked idempotent are sent to another instance; the
  others fail with ``InstanceLost``.
* ``"PULL"`` (push-pull): one-way; each push goes to one instance, at most once.
* ``"PUB"`` (pub-sub): ``subscribe(topic, callback)`` to the events the
  service's instances publish.
"""

from __future__ import annotations

import hashlib
import itertools
import os
from collections.abc import Callable, Iterable
from typing import Any, ClassVar

import zmq
from twisted.application.service import MultiService
from twisted.internet import defer
from twisted.logger import Logger
from typing_extensions import override

from mmo.errors import (
    BadRequest,
    DeadlineExceeded,
    InstanceLost,
    MmoError,
    NoLiveInstance,
    Unavailable,
    from_wire,
)
from mmo.registry import Change, Instance, RegistryView
from mmo.types import DelayedCall
from mmo.wire import WireError, decode, decode_value, encode, encode_value, from_value
from mmo.wire.gen.mmo.ttypes import Header, Kind, Session
from mmo.zmq import EVENT_CONNECTED, EVENT_DISCONNECTED, ZmqContext, ZmqSocket

__all__ = ["Directory", "PushProxy", "ServiceProxy", "Subscriber", "connect", "get_service"]

log = Logger()

#: Default deadline of a call, in seconds.
DEFAULT_TIMEOUT = 5.0
#: How many instances an idempotent call is tried on at most.
MAX_ATTEMPTS = 3
_MAX_TIMEOUT_MS = 2**31 - 1

# ZeroMQ heartbeats on each link to an instance: a hung (stopped) process is
# disconnected after HEARTBEAT_TIMEOUT and its calls fail over like a dead one's.
_LINK_OPTIONS = {
    zmq.HEARTBEAT_IVL: 1000,
    zmq.HEARTBEAT_TIMEOUT: 3000,
    zmq.SNDHWM: 0,
    zmq.RCVHWM: 0,
}


class _Call:
    __slots__ = (
        "attempts",
        "body",
        "call_id",
        "client_seq",
        "conn",
        "d",
        "deadline",
        "instance",
        "method",
        "origin",
        "peer",
        "raw",
        "service",
        "session",
        "timeout",
        "timer",
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
    ) -> None:
        self.call_id = call_id
        self.service = service
        self.method = method
        self.body = body
        self.timeout = timeout
        self.deadline = deadline
        self.session = session
        self.client_seq: int | None = None
        self.origin: int | None = None
        self.peer: str | None = None
        self.attempts = 0
        self.instance: str | None = None
        self.raw = False
        self.conn: _Conn | None = None
        self.timer: DelayedCall | None = None
        self.d: defer.Deferred[Any] = defer.Deferred()


class _Conn:
    """The link from this process to one instance's request socket."""

    def __init__(self, directory: Directory, instance: Instance) -> None:
        self.directory = directory
        self.instance = instance
        self.instance_id = instance.instance_id
        self.up = False
        self.draining = False
        self.outstanding: dict[int, _Call] = {}
        self.sent = 0
        self.idempotent = _meta_set(instance, "idempotent")
        assert instance.endpoints is not None
        self.socket: ZmqSocket | None = directory.context.socket(
            zmq.DEALER, self._received, options=_LINK_OPTIONS
        )
        self.socket.monitor(self._event)
        self.socket.connect(instance.endpoints["rep"])

    def update(self, instance: Instance) -> None:
        self.instance = instance
        self.idempotent = _meta_set(instance, "idempotent")

    def send(self, frames: list[bytes]) -> None:
        assert self.socket is not None
        self.socket.send(frames)
        self.sent += 1

    def _received(self, frames: list[bytes]) -> None:
        self.directory._answered(self, frames)

    def _event(self, event: int, _address: str) -> None:
        if event == EVENT_CONNECTED:
            self.up = True
        elif event == EVENT_DISCONNECTED and self.up:
            self.up = False
            self.directory._lost(self, "its connection dropped")

    def drain_input(self) -> None:
        """Read replies that arrived before the connection dropped."""
        if self.socket is not None:
            self.socket.doRead()

    def close(self) -> None:
        if self.socket is not None:
            self.socket.close()
            self.socket = None


def _meta_set(instance: Instance, key: str) -> frozenset[str]:
    value = (instance.meta or {}).get(key)
    if value is None:
        return frozenset()
    items = from_value(value)
    return frozenset(items) if isinstance(items, list) else frozenset()


class _Pool:
    """What this process knows of one service: links to its instances."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.conns: dict[str, _Conn] = {}
        self.turn = 0
        self.push: ZmqSocket | None = None
        self.push_endpoints: dict[str, str] = {}
        self.sub: ZmqSocket | None = None
        self.sub_endpoints: dict[str, str] = {}
        self.subscriptions: list[Subscription] = []

    def pick(
        self,
        exclude: Iterable[str] = (),
        instance: str | None = None,
        affinity: str | None = None,
    ) -> _Conn | None:
        """The live instance with the fewest calls outstanding (connected ones first),
        or ``instance`` if given (None if it is not live), or, with ``affinity``, the
        connected instance that key hashes to (rendezvous hashing: every process that
        knows the same instances picks the same one, and losing one moves only its keys)."""
        if instance is not None:
            conn = self.conns.get(instance)
            if conn is None or conn.draining or instance in exclude:
                return None
            return conn
        if affinity is not None:
            return max(
                (c for c in self.conns.values() if not c.draining and c.instance_id not in exclude),
                # Connected links first (a killed instance is not chosen while the
                # registry still lists it), then the hash.
                key=lambda c: (c.up, _rendezvous(affinity, c.instance_id)),
                default=None,
            )
        best: _Conn | None = None
        best_key: tuple[int, int, int] | None = None
        self.turn += 1
        for i, conn in enumerate(self.conns.values()):
            if conn.draining or conn.instance_id in exclude:
                continue
            # Rotate among equals so that an idle pool spreads calls evenly.
            key = (0 if conn.up else 1, len(conn.outstanding), (i - self.turn) % len(self.conns))
            if best_key is None or key < best_key:
                best, best_key = conn, key
        return best

    def idempotent(self, method: str) -> bool:
        """Whether the service's instances say ``method`` is idempotent."""
        return any(method in conn.idempotent for conn in self.conns.values())


def _rendezvous(key: str, instance_id: str) -> bytes:
    return hashlib.blake2b(f"{key}\0{instance_id}".encode(), digest_size=8).digest()


class Subscription:
    """One ``subscribe`` of a callback to a topic prefix; :meth:`unsubscribe` ends it."""

    def __init__(self, pool: _Pool, topic: str, callback: Callable[[str, Any], Any]) -> None:
        self.pool = pool
        self.topic = topic
        self.callback = callback

    def unsubscribe(self) -> None:
        """Stop receiving (the topic's filter is removed when no one else uses it)."""
        if self in self.pool.subscriptions:
            self.pool.subscriptions.remove(self)
            if self.pool.sub is not None and not any(
                s.topic == self.topic for s in self.pool.subscriptions
            ):
                self.pool.sub.socket.unsubscribe(self.topic.encode())


class Directory(MultiService):
    """How a process finds and calls services: a registry view plus links to instances.

    Args:
        context: the process's ZeroMQ context.
        yellows: addresses of the yellows.
        caller_id: how this process names itself in calls (default: ``pid-N``).
        caller_role: the role it states in calls (``broker``, ``worker``, ``tool``...;
            handlers may allow a method to some roles only).
        default_timeout: deadline of a call when none is given, in seconds.

    Attributes:
        on_one_way_error: called with the header of each ERROR an instance sends back
            for a failed one-way request made for a player (brokers tell the player).
    """

    _current: ClassVar[Directory | None] = None
    _call_ids = itertools.count(1)

    def __init__(
        self,
        context: ZmqContext,
        yellows: Iterable[str],
        *,
        caller_id: str | None = None,
        caller_role: str = "tool",
        default_timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        super().__init__()
        self.context = context
        self.clock = context.reactor
        self.caller_id = caller_id or f"pid-{os.getpid()}"
        self.caller_role = caller_role
        self.on_one_way_error: Callable[[Header], None] | None = None
        self.default_timeout = default_timeout
        self.view = RegistryView(context, yellows)
        self.view.setServiceParent(self)
        self.view.listen(self._changed)
        self._pools: dict[str, _Pool] = {}
        self.late_replies = 0
        #: Close the ZeroMQ context when stopping (a standalone directory owns it).
        self.owns_context = False

    @classmethod
    def current(cls) -> Directory:
        """The directory of this process (the first one started)."""
        if cls._current is None:
            raise RuntimeError(
                "no mmo Directory is running in this process: run inside a worker, "
                "or start one with mmo.logic.connect(yellows)"
            )
        return cls._current

    @override
    def startService(self) -> None:
        """Start watching the registry; become the process's directory."""
        super().startService()
        if Directory._current is None:
            Directory._current = self

    @override
    def stopService(self) -> defer.Deferred[None]:
        """Fail what is outstanding, close every link, stop watching."""
        if Directory._current is self:
            Directory._current = None
        for pool in self._pools.values():
            for conn in pool.conns.values():
                for call in list(conn.outstanding.values()):
                    self._finish(call, error=DeadlineExceeded("the caller is shutting down"))
                conn.close()
            for sock in (pool.push, pool.sub):
                if sock is not None:
                    sock.close()
        self._pools.clear()
        d: defer.Deferred[None] = defer.maybeDeferred(super().stopService)
        if self.owns_context:
            d.addBoth(lambda _: self.context.close())
        return d

    def links(self, service: str) -> dict[str, bool]:
        """Instance id -> whether this process's link to it is connected, for every
        instance of ``service`` that is not leaving (draining ones are left out).

        Opens links to every instance, now and later, so that a dead instance is seen
        at once (its connection drops), before the registry says so.
        """
        return {
            iid: conn.up for iid, conn in self._pool(service).conns.items() if not conn.draining
        }

    def stats(self) -> dict[str, dict[str, dict[str, Any]]]:
        """Per service and instance: calls sent, outstanding, connected, draining."""
        return {
            name: {
                iid: {
                    "sent": conn.sent,
                    "outstanding": len(conn.outstanding),
                    "up": conn.up,
                    "draining": conn.draining,
                }
                for iid, conn in pool.conns.items()
            }
            for name, pool in self._pools.items()
        }

    # -- proxies -------------------------------------------------------------

    def get_service(self, name: str, pattern: str = "REP", timeout: float | None = None) -> Any:
        """A proxy to service ``name``: ``"REP"``, ``"PULL"`` or ``"PUB"`` (see module doc)."""
        kind = pattern.upper()
        if kind in ("REP", "REQ"):
            return ServiceProxy(self, name, timeout)
        if kind in ("PULL", "PUSH"):
            return PushProxy(self, name)
        if kind in ("PUB", "SUB"):
            return Subscriber(self, name)
        raise ValueError(f"unknown pattern {pattern!r}: use REP, PULL or PUB")

    # -- request-reply -------------------------------------------------------

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
    ) -> defer.Deferred[Any]:
        """Call ``service.method(**kwargs)``; fire with the reply or fail with an MmoError.

        Args:
            timeout: the deadline in seconds (default: the directory's).
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
        """
        timeout = self.default_timeout if timeout is None else timeout
        if raw_body is not None:
            body = raw_body
        else:
            try:
                body = encode_value(kwargs or {})
            except WireError as e:
                return defer.fail(BadRequest(f"{service}.{method}: {e}"))
        call = _Call(
            next(self._call_ids),
            service,
            method,
            body,
            timeout,
            self.clock.seconds() + timeout,
            session,
        )
        call.instance = instance
        call.client_seq = client_seq
        call.origin = origin
        call.peer = peer
        call.raw = raw_body is not None
        call.d = defer.Deferred(lambda _: self._cancelled(call))
        call.timer = self.clock.callLater(timeout, self._expired, call)
        if self.view.synced:
            self._dispatch(call)
        else:
            # Before the first snapshot nothing is known yet: wait for it (within the deadline).
            waiting = self.view.wait_for(lambda: self.view.synced, timeout)
            waiting.addCallbacks(lambda _: self._dispatch(call), lambda _: None)
        return call.d

    def _pool(self, service: str) -> _Pool:
        pool = self._pools.get(service)
        if pool is None:
            pool = self._pools[service] = _Pool(service)
            for instance in self.view.get(service):
                self._add(pool, instance)
        return pool

    def _add(self, pool: _Pool, instance: Instance) -> None:
        endpoints = instance.endpoints or {}
        iid = instance.instance_id
        conn = pool.conns.get(iid)
        if conn is not None and (conn.instance.endpoints or {}).get("rep") != endpoints.get("rep"):
            # Restarted under the same id, on new ports: the old link is dead.
            self._lost(conn, "restarted")
            self._remove(conn)
            conn = None
        if conn is not None:
            conn.update(instance)
            conn.draining = False
        elif "rep" in endpoints:
            pool.conns[iid] = _Conn(self, instance)
        for kind, sock, known in (
            ("pull", pool.push, pool.push_endpoints),
            ("pub", pool.sub, pool.sub_endpoints),
        ):
            address = endpoints.get(kind)
            if sock is None or known.get(iid) == address:
                continue
            old = known.pop(iid, None)
            if old:
                sock.disconnect(old)
            if address:
                known[iid] = address
                sock.connect(address)

    def _dispatch(self, call: _Call, exclude: Iterable[str] = ()) -> None:
        if call.d.called:
            return
        pool = self._pool(call.service)
        affinity = None
        if call.client_seq and call.session is not None and not pool.idempotent(call.method):
            affinity = call.session.id
        conn = pool.pick(exclude, call.instance, affinity)
        if conn is None and not self.view.warm:
            # The yellow has just started and may not know every instance yet.
            waiting = self.view.wait_for(lambda: self.view.warm, call.timeout)
            waiting.addCallbacks(lambda _: self._dispatch(call, exclude), lambda _: None)
            return
        if conn is None:
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
        )
        call.attempts += 1
        call.conn = conn
        conn.outstanding[call.call_id] = call
        try:
            conn.send([encode(header), call.body])
        except zmq.ZMQError as e:
            del conn.outstanding[call.call_id]
            self._finish(call, error=NoLiveInstance(f"cannot send to {conn.instance_id}: {e}"))

    def _answered(self, conn: _Conn, frames: list[bytes]) -> None:
        try:
            header = decode(Header, frames[0])
        except (WireError, IndexError) as e:
            log.warn("call: bad reply from {id}: {e}", id=conn.instance_id, e=e)
            return
        if header.one_way:
            # A one-way request made for a player failed: whoever sent it may tell them.
            if self.on_one_way_error is not None:
                self.on_one_way_error(header)
            return
        call = conn.outstanding.pop(header.call_id, None)
        if call is None:
            self.late_replies += 1
            return
        self._release(conn)
        if header.kind == Kind.REPLY:
            if call.raw:
                self._finish(call, result=frames[1] if len(frames) > 1 else b"")
                return
            try:
                result = decode_value(frames[1])
            except (WireError, IndexError) as e:
                self._finish(call, error=BadRequest(f"undecodable reply: {e}"))
                return
            self._finish(call, result=result)
        else:
            error = from_wire(header.error_code, header.error_type, header.error_message)
            if isinstance(error, Unavailable) and call.instance is None and call.attempts < 3:
                # The instance is stopping and ran nothing: safe to send anywhere else.
                conn.draining = True
                self._dispatch(call, exclude={conn.instance_id})
                return
            self._finish(call, error=error)

    def _finish(self, call: _Call, *, result: Any = None, error: MmoError | None = None) -> None:
        if call.timer is not None and call.timer.active():
            call.timer.cancel()
        call.timer = None
        if call.d.called:
            return
        if error is None:
            call.d.callback(result)
        else:
            call.d.errback(error)

    def _expired(self, call: _Call) -> None:
        call.timer = None
        if call.conn is not None:
            call.conn.outstanding.pop(call.call_id, None)
            self._release(call.conn)
        if call.conn is not None:
            where = f" (on {call.conn.instance_id})"
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

    def _cancelled(self, call: _Call) -> None:
        if call.timer is not None and call.timer.active():
            call.timer.cancel()
        if call.conn is not None:
            call.conn.outstanding.pop(call.call_id, None)
            self._release(call.conn)

    def _lost(self, conn: _Conn, why: str) -> None:
        """An instance is gone: move its idempotent calls elsewhere, fail the rest."""
        conn.drain_input()
        calls = list(conn.outstanding.values())
        conn.outstanding.clear()
        if calls:
            log.info(
                "call: instance {id} lost ({why}); {n} calls in flight",
                id=conn.instance_id,
                why=why,
                n=len(calls),
            )
        for call in calls:
            movable = call.instance is None and call.method in conn.idempotent
            if movable and call.attempts < MAX_ATTEMPTS:
                self._dispatch(call, exclude={conn.instance_id})
            else:
                self._finish(
                    call,
                    error=InstanceLost(
                        f"instance {conn.instance_id} of {call.service!r} was lost ({why}) "
                        f"with {call.method!r} in flight; it may or may not have run"
                    ),
                )

    def _release(self, conn: _Conn) -> None:
        """Close a draining link once nothing is outstanding on it."""
        if conn.draining and not conn.outstanding:
            self._remove(conn)

    def _remove(self, conn: _Conn) -> None:
        pool = self._pools.get(conn.instance.service_name)
        if pool is not None and pool.conns.get(conn.instance_id) is conn:
            del pool.conns[conn.instance_id]
        conn.close()

    def _changed(self, change: int, instance: Instance, reason: str) -> None:
        pool = self._pools.get(instance.service_name)
        if pool is None:
            return
        if change == Change.UP:
            self._add(pool, instance)
            return
        for sock, known in ((pool.push, pool.push_endpoints), (pool.sub, pool.sub_endpoints)):
            address = known.pop(instance.instance_id, None)
            if sock is not None and address:
                sock.disconnect(address)
        conn = pool.conns.get(instance.instance_id)
        if conn is None:
            return
        if reason == "deregistered" and conn.up:
            # A graceful stop: the instance answers what it holds, then leaves.
            conn.draining = True
            self._release(conn)
        else:
            self._lost(conn, reason)
            self._remove(conn)

    # -- one-way sends on the request links ------------------------------------

    def send(
        self,
        service: str,
        method: str,
        body: bytes,
        *,
        instance: str | None = None,
        **header: Any,
    ) -> str | None:
        """Send a one-way request (no answer) to ``instance`` (or the least busy one).

        Unlike a push, it travels on the same link as calls, so it keeps its order
        relative to them and can reach one chosen instance. ``header`` sets extra
        ``Header`` fields (session, targets, channel, route, instance_id, origin, peer).
        If it was made for a player (``origin``) and fails, the instance answers with
        an ERROR (see ``on_one_way_error``).
        Returns the instance id it went to, or None (no such live instance).
        """
        conn = self._pool(service).pick((), instance)
        if conn is None or not self._send_one_way(conn, service, method, body, header):
            return None
        return conn.instance_id

    def send_all(self, service: str, method: str, body: bytes, **header: Any) -> int:
        """Send a one-way request to every live instance of ``service``; return how many."""
        sent = 0
        for conn in list(self._pool(service).conns.values()):
            if not conn.draining and self._send_one_way(conn, service, method, body, header):
                sent += 1
        return sent

    def _send_one_way(
        self, conn: _Conn, service: str, method: str, body: bytes, fields: dict[str, Any]
    ) -> bool:
        header = Header(
            kind=Kind.REQUEST,
            service_name=service,
            method=method,
            caller=self.caller_id,
            caller_role=self.caller_role,
            one_way=True,
            timeout_ms=int(self.default_timeout * 1000),
            **fields,
        )
        try:
            conn.send([encode(header), body])
        except zmq.ZMQError as e:
            log.warn("send to {id} failed: {e}", id=conn.instance_id, e=e)
            return False
        return True

    # -- push-pull and pub-sub ------------------------------------------------

    def push(self, service: str, method: str, kwargs: dict[str, Any] | None = None) -> None:
        """Send a one-way call to one instance of ``service`` (at most once).

        Raises:
            NoLiveInstance: no instance of the service is known.
            BadRequest: the arguments cannot be encoded.
        """
        pool = self._pool(service)
        if pool.push is None:
            pool.push = self.context.socket(zmq.PUSH, options={zmq.SNDHWM: 10000})
            for instance in self.view.get(service):
                self._add(pool, instance)
        if not pool.push_endpoints:
            raise NoLiveInstance(f"no live instance of service {service!r}")
        try:
            body = encode_value(kwargs or {})
        except WireError as e:
            raise BadRequest(f"{service}.{method}: {e}") from e
        header = Header(
            kind=Kind.PUSH,
            service_name=service,
            method=method,
            caller=self.caller_id,
            caller_role=self.caller_role,
        )
        try:
            pool.push.send([encode(header), body])
        except zmq.Again as e:
            raise NoLiveInstance(f"service {service!r} is not taking pushes (queue full)") from e

    def subscribe(
        self, service: str, topic: str, callback: Callable[[str, Any], Any]
    ) -> Subscription:
        """Call ``callback(topic, payload)`` for each event of ``service`` whose topic
        starts with ``topic`` (``""`` for all)."""
        pool = self._pool(service)
        if pool.sub is None:
            pool.sub = self.context.socket(zmq.SUB, lambda frames: self._event(pool, frames))
            for instance in self.view.get(service):
                self._add(pool, instance)
        pool.sub.socket.subscribe(topic.encode())
        subscription = Subscription(pool, topic, callback)
        pool.subscriptions.append(subscription)
        return subscription

    def _event(self, pool: _Pool, frames: list[bytes]) -> None:
        try:
            topic = frames[0].decode()
            payload = decode_value(frames[2])
        except (WireError, IndexError, UnicodeDecodeError) as e:
            log.warn("event: bad message from {service}: {e}", service=pool.name, e=e)
            return
        for subscription in list(pool.subscriptions):
            if topic.startswith(subscription.topic):
                try:
                    subscription.callback(topic, payload)
                except Exception:
                    log.failure("subscriber of {topic} failed", topic=topic)


class ServiceProxy:
    """Request-reply proxy: ``proxy.<method>(**kwargs)`` returns a Deferred of the reply."""

    def __init__(self, directory: Directory, name: str, timeout: float | None = None) -> None:
        self._directory = directory
        self._name = name
        self._timeout = timeout

    def call(
        self,
        method: str,
        kwargs: dict[str, Any] | None = None,
        *,
        timeout: float | None = None,
        session: Session | None = None,
        instance: str | None = None,
    ) -> defer.Deferred[Any]:
        """Call ``method`` with ``kwargs``, with a deadline of ``timeout`` seconds
        (on ``instance`` only, if given)."""
        return self._directory.call(
            self._name,
            method,
            kwargs,
            timeout=self._timeout if timeout is None else timeout,
            session=session,
            instance=instance,
        )

    def __getattr__(self, method: str) -> Callable[..., defer.Deferred[Any]]:
        if method.startswith("_"):
            raise AttributeError(method)
        return lambda **kwargs: self.call(method, kwargs)

    def __repr__(self) -> str:
        return f"<ServiceProxy {self._name} REP>"


class PushProxy:
    """Push-pull proxy: ``proxy.<method>(**kwargs)`` sends a one-way call."""

    def __init__(self, directory: Directory, name: str) -> None:
        self._directory = directory
        self._name = name

    def __getattr__(self, method: str) -> Callable[..., defer.Deferred[None]]:
        if method.startswith("_"):
            raise AttributeError(method)

        def push(**kwargs: Any) -> defer.Deferred[None]:
            try:
                self._directory.push(self._name, method, kwargs)
            except MmoError:
                return defer.fail()
            return defer.succeed(None)

        return push

    def __repr__(self) -> str:
        return f"<PushProxy {self._name} PULL>"


class Subscriber:
    """Pub-sub proxy: ``subscribe(topic, callback)`` to the service's events."""

    def __init__(self, directory: Directory, name: str) -> None:
        self._directory = directory
        self._name = name

    def subscribe(self, topic: str, callback: Callable[[str, Any], Any]) -> Subscription:
        """Call ``callback(topic, payload)`` for events whose topic starts with ``topic``."""
        return self._directory.subscribe(self._name, topic, callback)


def get_service(name: str, pattern: str = "REP", timeout: float | None = None) -> Any:
    """A proxy to service ``name`` through this process's :class:`Directory`."""
    return Directory.current().get_service(name, pattern, timeout)


def connect(
    yellows: Iterable[str] | str,
    *,
    reactor: Any = None,
    caller_id: str | None = None,
    caller_role: str = "tool",
    default_timeout: float = DEFAULT_TIMEOUT,
) -> Directory:
    """Start a standalone :class:`Directory` (for scripts and tools); stop it when done.

    Its links use the CURVE keys ``$MMO_CURVE_KEYS`` names, if any (a cluster that runs
    CURVE, the default, answers nothing else).
    """
    if isinstance(yellows, str):
        yellows = [y.strip() for y in yellows.split(",") if y.strip()]
    directory = Directory(
        ZmqContext(reactor),
        yellows,
        caller_id=caller_id,
        caller_role=caller_role,
        default_timeout=default_timeout,
    )
    directory.owns_context = True
    directory.startService()
    return directory
