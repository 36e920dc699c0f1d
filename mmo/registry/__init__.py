"""Client side of the registry: register with every yellow, watch one live yellow.

* :class:`Registration` keeps one instance registered with every configured
  yellow: a full ``REGISTER`` each heartbeat, ``DEREGISTER`` when it stops.
  A restarted yellow therefore knows everyone again after one heartbeat.
* :class:`RegistryView` keeps a local copy of the registry from a watch on one
  live yellow, fails over to another when it goes quiet, and tells listeners of
  each instance that comes up, changes or goes down. After a switch or a
  yellow restart, instances missing from the new snapshot are kept for a
  settling period (they may simply not have re-registered yet), so callers keep
  using cached endpoints while the registry refills.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterable
from typing import Any

import zmq
from twisted.application.service import Service
from twisted.internet import defer, task
from twisted.logger import Logger
from typing_extensions import override

from mmo.errors import DeadlineExceeded
from mmo.types import DelayedCall
from mmo.wire import WireError, decode, encode, from_value, to_value
from mmo.wire.gen.mmo.ttypes import Change, Instance, RegistryMessage, RegistryOp
from mmo.zmq import LIVENESS, ZmqContext, ZmqSocket

__all__ = [
    "Change",
    "Instance",
    "Registration",
    "RegistryView",
    "YellowLink",
    "meta_names",
    "pid_of",
]

log = Logger()

#: Default heartbeat interval in seconds; an instance expires after 3 missed beats.
HEARTBEAT = 1.0
#: Largest registry message accepted (ZeroMQ drops the connection of a bigger sender).
MAX_MESSAGE = 16 * 1024 * 1024


class YellowLink:
    """One DEALER socket to one yellow, with request/reply matching.

    Args:
        context: the process's ZeroMQ context.
        address: the yellow's ZeroMQ address.
        on_push: called with each message that answers no request (``UPDATE``).
    """

    _ids = itertools.count(1)

    def __init__(
        self,
        context: ZmqContext,
        address: str,
        on_push: Callable[[YellowLink, RegistryMessage], None] | None = None,
    ) -> None:
        self.context = context
        self.address = address
        self.on_push = on_push
        self.last_heard = -1.0
        self._full = False
        self._pending: dict[int, defer.Deferred[RegistryMessage]] = {}
        self._socket: ZmqSocket | None = context.socket(
            zmq.DEALER,
            self._received,
            options={**LIVENESS, zmq.SNDHWM: 16, zmq.RCVHWM: 0, zmq.MAXMSGSIZE: MAX_MESSAGE},
        )
        self._socket.connect(address)

    def send(self, msg: RegistryMessage) -> None:
        """Send without waiting for an answer (dropped if the queue is full)."""
        if self._socket is None:
            return
        try:
            self._socket.send([encode(msg)])
            self._full = False
        except zmq.Again:
            # The yellow is away: the queue holds a few messages, the rest wait for a
            # later heartbeat or renewal. Said once per outage.
            if not self._full:
                log.warn("registry: yellow at {address} is not reading", address=self.address)
            self._full = True

    def request(
        self, msg: RegistryMessage, timeout: float = 2.0
    ) -> defer.Deferred[RegistryMessage]:
        """Send ``msg`` and fire with the answer, or fail with DeadlineExceeded."""
        request_id = next(self._ids)
        msg.request_id = request_id
        d: defer.Deferred[RegistryMessage] = defer.Deferred(lambda _: self._forget(request_id))
        self._pending[request_id] = d
        self.send(msg)

        def timed_out(failure: Any, _timeout: float) -> Any:
            self._pending.pop(request_id, None)
            raise DeadlineExceeded(f"yellow at {self.address} did not answer in {timeout:g}s")

        d.addTimeout(timeout, self.context.reactor, onTimeoutCancel=timed_out)
        return d

    def _forget(self, request_id: int) -> None:
        self._pending.pop(request_id, None)

    def _received(self, frames: list[bytes]) -> None:
        try:
            msg = decode(RegistryMessage, frames[-1])
        except WireError as e:
            log.warn("registry: bad message from {address}: {e}", address=self.address, e=e)
            return
        self.last_heard = self.context.reactor.seconds()
        waiting = self._pending.pop(msg.request_id, None) if msg.request_id else None
        if waiting is not None:
            waiting.callback(msg)
        elif self.on_push is not None and msg.op == RegistryOp.UPDATE:
            self.on_push(self, msg)

    def close(self) -> None:
        """Close the socket; pending requests fail."""
        if self._socket is not None:
            self._socket.close()
            self._socket = None
        for d in list(self._pending.values()):
            d.cancel()


def pid_of(instance: Instance) -> int | None:
    """The process id ``instance`` registered (its meta ``pid``), if any."""
    pid = from_value(instance.meta["pid"]) if "pid" in (instance.meta or {}) else None
    return pid if isinstance(pid, int) and not isinstance(pid, bool) else None


def make_instance(
    service: str,
    instance_id: str,
    endpoints: dict[str, str],
    meta: dict[str, Any],
    heartbeat: float = HEARTBEAT,
) -> Instance:
    """Build the ``Instance`` record a :class:`Registration` sends."""
    return Instance(
        service_name=service,
        instance_id=instance_id,
        endpoints=dict(endpoints),
        meta={k: to_value(v) for k, v in meta.items()},
        ttl_ms=int(heartbeat * 3000),
    )


def meta_names(instance: Instance, key: str) -> frozenset[str]:
    """The names an instance's metadata lists under ``key`` (the methods its handler
    declares ``client``, ``idempotent``...); none if the key is missing or not a list."""
    value = (instance.meta or {}).get(key)
    names = from_value(value) if value is not None else None
    if not isinstance(names, list):
        return frozenset()
    return frozenset(n for n in names if isinstance(n, str))


def default_instance_id(service: str) -> str:
    """The instance id of a process that was given none: ``$MMO_NAME`` (set by
    ``mmo-cluster`` and the test helpers to the child's name), else ``service-host-pid``."""
    return os.environ.get("MMO_NAME") or f"{service}-{os.uname().nodename}-{os.getpid()}"


class Registration(Service):
    """Keeps one instance registered with every yellow until stopped.

    Args:
        context: the process's ZeroMQ context.
        yellows: addresses of the yellows (all are told).
        instance: the record to register; :meth:`update_meta` changes it.
        heartbeat: seconds between heartbeats.
    """

    def __init__(
        self,
        context: ZmqContext,
        yellows: Iterable[str],
        instance: Instance,
        heartbeat: float = HEARTBEAT,
    ) -> None:
        self._context = context
        self.yellows = tuple(yellows)
        self.instance = instance
        self.heartbeat = heartbeat
        self._links: list[YellowLink] = []
        self._loop: task.LoopingCall | None = None

    @override
    def startService(self) -> None:
        """Connect to every yellow and start heartbeating."""
        super().startService()
        ctx = self._context
        self._links = [YellowLink(ctx, address) for address in self.yellows]
        self._loop = task.LoopingCall(self.beat)
        self._loop.clock = ctx.reactor
        self._loop.start(self.heartbeat, now=True)

    def beat(self) -> None:
        """Send the full record to every yellow (register and heartbeat are one)."""
        msg = RegistryMessage(op=RegistryOp.REGISTER, instance=self.instance)
        for link in self._links:
            link.send(msg)

    def update_meta(self, now: bool = True, **meta: Any) -> None:
        """Change metadata (load, ...); tell the yellows at once, or with the next beat."""
        assert self.instance.meta is not None
        for key, value in meta.items():
            self.instance.meta[key] = to_value(value)
        if now and self.running:
            self.beat()

    def forget(self, service: str, instance_id: str) -> None:
        """Tell every yellow to drop another instance's record at once: one this process
        knows is dead (a child it killed), which would otherwise be routed to until its
        lease ran out."""
        msg = RegistryMessage(
            op=RegistryOp.DEREGISTER, service_name=service, instance_id=instance_id
        )
        for link in self._links:
            link.send(msg)

    @override
    def stopService(self) -> defer.Deferred[None]:
        """Deregister from every yellow (waiting up to 1 s for them), then close."""
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        links, self._links = self._links, []
        msg = RegistryMessage(
            op=RegistryOp.DEREGISTER,
            service_name=self.instance.service_name,
            instance_id=self.instance.instance_id,
        )
        waits = [link.request(msg, timeout=1.0) for link in links]

        def close(_: Any) -> None:
            for link in links:
                link.close()

        return defer.DeferredList(waits, consumeErrors=True).addCallback(close)


#: ``listener(change, instance, reason)``; reason: registered, changed, deregistered,
#: expired, vanished (missing after a yellow switch).
Listener = Callable[[int, Instance, str], None]


class RegistryView(Service):
    """A live local copy of the registry, kept by watching one yellow at a time.

    Args:
        context: the process's ZeroMQ context.
        yellows: addresses of the yellows; the view uses the first that answers.
        renew: seconds between watch renewals (which double as liveness probes).
        quiet: seconds without a word from the yellow before failing over.
        settle: seconds that instances missing after a switch are kept.
        warmup: how long a yellow must have run before its snapshot is taken as
            complete (every provider has heartbeated since it started).
    """

    def __init__(
        self,
        context: ZmqContext,
        yellows: Iterable[str],
        *,
        renew: float = 1.0,
        quiet: float = 3.0,
        settle: float = 4.0,
        warmup: float = 2.5,
    ) -> None:
        self._context = context
        self.yellows = tuple(yellows)
        if not self.yellows:
            raise ValueError("at least one yellow address is needed")
        self.renew = renew
        self.quiet = quiet
        self.settle = settle
        self.warmup = warmup
        self._warm_at = 0.0
        self.instances: dict[str, dict[str, Instance]] = {}
        self.synced = False
        self._listeners: list[Listener] = []
        self._link: YellowLink | None = None
        self._index = 0
        self._yellow_id: str | None = None
        self._resync = False
        self._batch = False
        self._seq = 0
        self._since = 0.0
        self._unconfirmed: set[tuple[str, str]] = set()
        self._settle_call: DelayedCall | None = None
        self._warm_call: DelayedCall | None = None
        self._loop: task.LoopingCall | None = None
        self._waiters: list[tuple[Callable[[], bool], defer.Deferred[None]]] = []

    # -- public API --------------------------------------------------------

    def listen(self, listener: Listener) -> None:
        """Call ``listener(change, instance, reason)`` for every UP and DOWN from now on."""
        self._listeners.append(listener)

    @property
    def watching(self) -> str | None:
        """The yellow this view watches now, if any."""
        return self._link.address if self._link is not None else None

    @property
    def last_heard(self) -> float:
        """When the yellow watched last said anything (reactor seconds; -1: never)."""
        return self._link.last_heard if self._link is not None else -1.0

    @property
    def fresh(self) -> bool:
        """Whether the view is synced and its yellow spoke within ``quiet`` seconds: a
        stale view (a cut network) may still list instances the cluster has dropped."""
        now = self._context.reactor.seconds()
        return self.synced and now - self.last_heard <= self.quiet

    @property
    def warm(self) -> bool:
        """Whether the view is synced with a yellow old enough to know every provider."""
        return self.synced and self._context.reactor.seconds() >= self._warm_at

    def get(self, service: str) -> list[Instance]:
        """The live instances of ``service`` as last known."""
        return list(self.instances.get(service, {}).values())

    def wait_for(
        self, predicate: Callable[[], bool], timeout: float = 10.0
    ) -> defer.Deferred[None]:
        """Fire once ``predicate()`` holds (checked after every change)."""
        if predicate():
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._waiters.append((predicate, d))
        d.addTimeout(timeout, self._context.reactor)
        return d

    # -- service -----------------------------------------------------------

    @override
    def startService(self) -> None:
        """Start watching the first yellow."""
        super().startService()
        ctx = self._context
        self._since = ctx.reactor.seconds()
        self._connect()
        self._loop = task.LoopingCall(self._tick)
        self._loop.clock = ctx.reactor
        self._loop.start(self.renew, now=True)

    @override
    def stopService(self) -> None:
        """Stop watching."""
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        for call in (self._settle_call, self._warm_call):
            if call is not None and call.active():
                call.cancel()
        if self._link is not None:
            self._link.send(RegistryMessage(op=RegistryOp.UNWATCH))
            self._link.close()
            self._link = None

    # -- internals ---------------------------------------------------------

    def _connect(self) -> None:
        address = self.yellows[self._index % len(self.yellows)]
        self._link = YellowLink(self._context, address, self._pushed)
        self._since = self._context.reactor.seconds()

    def _tick(self) -> None:
        link = self._link
        assert link is not None
        now = self._context.reactor.seconds()
        if len(self.yellows) > 1 and now - max(link.last_heard, self._since) > self.quiet:
            log.info("registry: yellow {address} is quiet, failing over", address=link.address)
            link.close()
            self._index += 1
            self._connect()
            link = self._link
            assert link is not None
        self._watch(link)

    def _watch(self, link: YellowLink) -> None:
        # Naming no yellow_id asks for a fresh snapshot.
        known = None if self._resync else self._yellow_id
        msg = RegistryMessage(op=RegistryOp.WATCH, yellow_id=known, seq=self._seq)
        d = link.request(msg, timeout=self.renew * 2)
        d.addCallbacks(lambda reply: self._answered(link, reply), lambda _: None)

    def _answered(self, link: YellowLink, reply: RegistryMessage) -> None:
        if link is not self._link:
            return
        if reply.op == RegistryOp.SNAPSHOT:
            self._snapshot(reply)
        elif reply.yellow_id != self._yellow_id or (reply.seq or 0) > self._seq:
            # An update went missing (or the yellow restarted): start afresh.
            self._resync = True
            self._watch(link)

    def _pushed(self, link: YellowLink, msg: RegistryMessage) -> None:
        if link is not self._link or self._resync or msg.yellow_id != self._yellow_id:
            return
        if msg.seq != self._seq + 1:
            self._resync = True
            self._watch(link)
            return
        self._seq = msg.seq
        assert msg.instance is not None
        self._apply(msg.change, msg.instance, msg.reason or "")

    def _snapshot(self, msg: RegistryMessage) -> None:
        fresh = {(i.service_name, i.instance_id): i for i in msg.instances or []}
        settling = self._settle_call is not None and self._settle_call.active()
        # A second snapshot of the new yellow while it settles (the WATCH renewals
        # queued during the outage each get one) is still part of the switch.
        switched = self.synced and (msg.yellow_id != self._yellow_id or settling)
        self._resync = False
        self._yellow_id = msg.yellow_id
        self._seq = msg.seq or 0
        young = self.warmup - (msg.uptime_ms or 0) / 1000.0
        if young > 0:
            self._warm_at = self._context.reactor.seconds() + young
            if self._warm_call is not None and self._warm_call.active():
                self._warm_call.cancel()
            self._warm_call = self._context.reactor.callLater(young, self._check_waiters)
        # Waiters are checked once the whole snapshot is in, never on a partial view.
        self._batch = True
        for instance in fresh.values():
            self._apply(Change.UP, instance, "registered")
        missing = {
            (svc, iid) for svc, by_id in self.instances.items() for iid in by_id
        } - fresh.keys()
        if switched:
            # A new or restarted yellow may not have heard every heartbeat yet.
            self._unconfirmed |= missing
            if self._settle_call is None or not self._settle_call.active():
                self._settle_call = self._context.reactor.callLater(self.settle, self._settled)
        else:
            for svc, iid in missing:
                self._apply(Change.DOWN, self.instances[svc][iid], "expired")
        self._batch = False
        self.synced = True
        self._check_waiters()

    def _settled(self) -> None:
        for svc, iid in list(self._unconfirmed):
            instance = self.instances.get(svc, {}).get(iid)
            if instance is not None:
                self._apply(Change.DOWN, instance, "vanished")
        self._unconfirmed.clear()

    def _apply(self, change: int, instance: Instance, reason: str) -> None:
        key = (instance.service_name, instance.instance_id)
        self._unconfirmed.discard(key)
        if change == Change.UP:
            by_id = self.instances.setdefault(instance.service_name, {})
            if by_id.get(instance.instance_id) == instance:
                return
            by_id[instance.instance_id] = instance
        else:
            # A service with no instance left is no key at all (callers test membership).
            by_id = self.instances.get(instance.service_name, {})
            if by_id.pop(instance.instance_id, None) is None:
                return
            if not by_id:
                del self.instances[instance.service_name]
        for listener in list(self._listeners):
            try:
                listener(change, instance, reason)
            except Exception:
                log.failure("registry listener failed")
        self._check_waiters()

    def _check_waiters(self) -> None:
        if not self._waiters or self._batch:
            return
        still = []
        for predicate, d in self._waiters:
            if d.called:
                continue
            if predicate():
                d.callback(None)
            else:
                still.append((predicate, d))
        self._waiters = still
