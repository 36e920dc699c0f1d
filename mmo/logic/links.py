"""A process's links to the instances of the services it uses, kept current from the registry.

For each service it uses, a process holds a :class:`Pool`: a DEALER :class:`Link`
to each live instance's request (``rep``) endpoint, and, once asked for, one socket
connected to every instance's ``pull`` or ``pub`` endpoint. :class:`Pools` opens
and closes them as instances come and go, and tells its owner what links carry
(replies) and which links are lost (their connection dropped, or the registry
expired or restarted the instance). A link to an instance that deregistered drains:
it takes no new calls and closes once nothing is outstanding on it.

An instance an operator drained (registry meta ``drained: true``, see
``ServiceHandler.on_ops_drain``) is *drained*: its link is draining too (no call goes
to it by load or by session, and ``connected`` leaves it out), but it stays open and a
call or one-way request that names the instance still reaches it (what it holds, the
operator's own ``ops_*`` calls, a broker's players' pushes and broadcasts). Its ``pull``
endpoint is disconnected, so pushes go to the others. An UP whose meta no longer says
``draining`` takes it back.

**Co-located services.** A :class:`~mmo.logic.server.HandlerServer` made ``colocated``
(a broker hosting handlers: ``mmo-broker --serve``) is listed in :data:`LOCAL_SERVERS`
under its instance id. A process's link to that instance (the same id and ``rep``
endpoint as the registry lists) is a :class:`LocalLink`: the request's frames are handed
to the server in process and its answer comes back the same way, so the call keeps every
rule of the wire (deadline, errors, origin and client-method checks, memo, drain) with
no ZeroMQ on the way. The instance stays registered: other processes reach it over
ZeroMQ as usual, and the callers of this process send to the other instances of the
service as well, once the local one has :data:`LOCAL_PREFERENCE` more calls in flight
than they have (the local one is busy) or when it is gone.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from typing import Any, Generic, Protocol, TypeVar

import zmq
from typing_extensions import override

from mmo.registry import Change, Instance, RegistryView, meta_names
from mmo.wire import WireError, decode, encode, from_value
from mmo.wire.gen.mmo.ttypes import Header
from mmo.zmq import EVENT_CONNECTED, EVENT_DISCONNECTED, LIVENESS, ZmqContext, ZmqSocket

__all__ = [
    "BATCH_META",
    "LOCAL_PREFERENCE",
    "LOCAL_SERVERS",
    "Link",
    "LocalLink",
    "LocalServer",
    "Pool",
    "Pools",
    "drained",
    "flush_batches",
]

#: What is outstanding on a link (the calls in flight: :class:`mmo.logic.calls.Call`).
C = TypeVar("C")

# ZeroMQ heartbeats on each link to an instance: a hung (stopped) process is
# disconnected after HEARTBEAT_TIMEOUT and its calls fail over like a dead one's.
_LINK_OPTIONS = {
    **LIVENESS,
    zmq.SNDHWM: 0,
    zmq.RCVHWM: 0,
}


#: The registry meta of an instance that takes batches on its ``rep`` endpoint (several
#: ``header, body`` pairs in one message: :meth:`Link.send`); callers send one message at
#: a time to the others.
BATCH_META = "batch"

#: How many more calls in flight a co-located instance may have than a remote one before
#: the remote one is picked instead (the local one costs no hop; past this it is busy).
LOCAL_PREFERENCE = 8


class LocalServer(Protocol):
    """A server of this process that takes requests in process (a co-located service)."""

    @property
    def rep_endpoint(self) -> str | None:
        """The ``rep`` address it is registered with."""

    def attach(self, ident: bytes, answer: Callable[[Header, bytes], None]) -> None:
        """Send what is answered to requests from ``ident`` to ``answer(header, body)``."""

    def detach(self, ident: bytes) -> None:
        """Forget ``ident``."""

    def take(self, ident: bytes, header: Header, body: bytes) -> None:
        """One request from ``ident``, its header as made (not encoded)."""


#: The co-located servers of this process, by instance id.
LOCAL_SERVERS: dict[str, LocalServer] = {}

#: The links of this process holding a batch for the end of the turn.
_BATCHING: set[Link[Any]] = set()


def flush_batches() -> None:
    """Hand every link's batch to ZeroMQ now: what the process sent before an answer it
    is about to send at once leaves before that answer (as without batches)."""
    if _BATCHING:  # asked before every answer sent at once: most often there is none
        for link in list(_BATCHING):
            link.flush()


def _takes_batches(instance: Instance) -> bool:
    value = (instance.meta or {}).get(BATCH_META)
    try:
        return value is not None and from_value(value) is True
    except WireError:
        return False


def drained(instance: Instance) -> bool:
    """Whether an operator drained ``instance`` (its registry meta says ``drained: true``;
    ``draining``, which a fight dispatcher publishes while it stops, is not that)."""
    value = (instance.meta or {}).get("drained")
    if value is None:
        return False
    try:
        return from_value(value) is True
    except WireError:
        return False


def _rendezvous(key: str, instance_id: str) -> bytes:
    return hashlib.blake2b(f"{key}\0{instance_id}".encode(), digest_size=8).digest()


class Link(Generic[C]):
    """The link from this process to one instance's request socket.

    Args:
        context: the process's ZeroMQ context.
        instance: the instance's registry record (with a ``rep`` endpoint).
        on_reply: called with ``(link, frames)`` for each message from the instance.
        on_lost: called with ``(link, why)`` when its connection drops.

    Attributes:
        up: whether the connection is up.
        draining: the instance is leaving, or drained: no new calls go to it.
        drained: an operator drained the instance (meta ``draining``): the link stays
            open, and calls naming the instance still go to it.
        outstanding: call id -> what is in flight on it (its owner keeps this).
        sent: messages sent on it.
        idempotent: the methods the instance says are safe to run twice.
    """

    def __init__(
        self,
        context: ZmqContext,
        instance: Instance,
        on_reply: Callable[[Link[C], list[bytes]], None],
        on_lost: Callable[[Link[C], str], None],
    ) -> None:
        self.instance = instance
        self.instance_id = instance.instance_id
        self.on_reply = on_reply
        self.on_lost = on_lost
        self.up = False
        self.drained = drained(instance)
        self.draining = self.drained
        self.outstanding: dict[int, C] = {}
        self.sent = 0
        self.idempotent = meta_names(instance, "idempotent")
        self.batching = _takes_batches(instance)
        self.socket: ZmqSocket | None = None
        self._batch: list[bytes] = []
        self._flush: Any = None
        self._reactor = context.reactor if context is not None else None
        self._open(context)

    def _open(self, context: ZmqContext) -> None:
        assert self.instance.endpoints is not None
        self.socket = context.socket(zmq.DEALER, self._received, options=_LINK_OPTIONS)
        self.socket.monitor(self._event)
        self.socket.connect(self.instance.endpoints["rep"])

    def update(self, instance: Instance) -> None:
        """The instance's record changed (same endpoint)."""
        self.instance = instance
        self.idempotent = meta_names(instance, "idempotent")
        self.drained = drained(instance)
        self.batching = _takes_batches(instance)

    def send(self, frames: list[bytes]) -> None:
        """Send one message, ``[header, body]`` (raises ``zmq.ZMQError`` if it cannot).

        To an instance that takes batches, what is sent in one turn of the reactor
        leaves at the end of it as one ZeroMQ message (``[h1, b1, h2, b2, ...]``), in the
        order it was sent: never held back by a timer, and one message's cost for many.
        """
        assert self.socket is not None
        if not self.batching:
            self.socket.send(frames)
            self.sent += 1
            return
        self._batch += frames
        if self._flush is None:
            self._flush = self._reactor.callLater(0, self.flush)
            _BATCHING.add(self)

    def flush(self) -> None:
        """Send what this turn batched (a link that cannot is lost: its calls fail over)."""
        if self._flush is not None and self._flush.active():
            self._flush.cancel()
        self._flush = None
        _BATCHING.discard(self)
        batch, self._batch = self._batch, []
        if not batch or self.socket is None:
            return
        try:
            self.socket.send(batch)
        except zmq.ZMQError as e:
            self.on_lost(self, f"a send failed: {e}")
            return
        self.sent += 1

    def request(self, header: Header, body: bytes) -> None:
        """Send one request (raises ``zmq.ZMQError`` if it cannot)."""
        self.send([encode(header), body])

    def _received(self, frames: list[bytes]) -> None:
        self.on_reply(self, frames)

    def _event(self, event: int, _address: str) -> None:
        if event == EVENT_CONNECTED:
            self.up = True
        elif event == EVENT_DISCONNECTED and self.up:
            self.up = False
            self.on_lost(self, "its connection dropped")

    def drain_input(self) -> None:
        """Read replies that arrived before the connection dropped."""
        if self.socket is not None:
            self.socket.doRead()

    def close(self) -> None:
        """Close the socket (what is batched goes first)."""
        self.flush()
        if self.socket is not None:
            self.socket.close()
            self.socket = None


class LocalLink(Link[C]):
    """The link to a co-located instance: requests and answers are handed over in
    process (see the module); it is always up.

    Args:
        server: the instance's server, in this process.
        instance, on_reply, on_lost: as :class:`Link`'s.
    """

    _idents = iter(range(1, 2**62))

    def __init__(
        self,
        server: LocalServer,
        instance: Instance,
        on_reply: Callable[[Link[C], list[bytes]], None],
        on_lost: Callable[[Link[C], str], None],
        on_answer: Callable[[Link[C], Header, bytes], None],
    ) -> None:
        self.server = server
        self.on_answer = on_answer
        # Not a ZeroMQ routing id (those are 5 bytes, first byte 0): never mistaken for one.
        self.ident = b"local-" + next(self._idents).to_bytes(8, "big")
        super().__init__(None, instance, on_reply, on_lost)  # type: ignore[arg-type]

    @override
    def _open(self, context: ZmqContext) -> None:
        self.server.attach(self.ident, self._answered)
        self.up = True

    def _answered(self, header: Header, body: bytes) -> None:
        self.on_answer(self, header, body)

    @override
    def send(self, frames: list[bytes]) -> None:
        """Hand one encoded request to the server."""
        self.request(decode(Header, frames[0]), frames[1])

    @override
    def request(self, header: Header, body: bytes) -> None:
        """Hand one request to the server, its header as made (its answer may come back
        before this returns)."""
        self.sent += 1
        self.server.take(self.ident, header, body)

    @override
    def flush(self) -> None:
        """Nothing is batched: requests are handed over as they are made."""

    @override
    def drain_input(self) -> None:
        """Nothing waits to be read: answers are handed over as they are made."""

    @override
    def close(self) -> None:
        """Stop taking the server's answers."""
        self.server.detach(self.ident)
        self.up = False


class Pool(Generic[C]):
    """What this process knows of one service: links to its instances.

    Attributes:
        conns: instance id -> the link to it.
        sockets: endpoint kind (``pull``, ``pub``) -> the one socket connected to that
            endpoint of every instance, once someone asked for it.
        endpoints: endpoint kind -> instance id -> the address that socket connects to.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.conns: dict[str, Link[C]] = {}
        self._idempotent: frozenset[str] | None = None
        self.turn = 0
        self.sockets: dict[str, ZmqSocket] = {}
        self.endpoints: dict[str, dict[str, str]] = {}

    def pick(
        self,
        exclude: Iterable[str] = (),
        instance: str | None = None,
        affinity: str | None = None,
        prefer: str | None = None,
    ) -> Link[C] | None:
        """The live instance with the fewest calls outstanding (connected ones first),
        or ``instance`` if given (None if it is not live or leaving; a drained one is
        taken), or, with ``affinity``, the
        connected instance that key hashes to (rendezvous hashing: every process that
        knows the same instances picks the same one, and losing one moves only its keys).
        ``prefer`` is taken while its link is connected, else the pick goes on as without
        it (a killed instance's connection drops seconds before the registry says so)."""
        if prefer is not None:
            link = self.conns.get(prefer)
            if link is not None and link.up and not link.draining and prefer not in exclude:
                return link
        if instance is not None:
            link = self.conns.get(instance)
            if link is None or (link.draining and not link.drained) or instance in exclude:
                return None
            return link
        if affinity is not None:
            eligible = [
                k for k in self.conns.values() if not k.draining and k.instance_id not in exclude
            ]
            if len(eligible) == 1:
                return eligible[0]  # nothing to choose: no hash to compute
            return max(
                eligible,
                # Connected links first (a killed instance is not chosen while the
                # registry still lists it), then the hash.
                key=lambda k: (k.up, _rendezvous(affinity, k.instance_id)),
                default=None,
            )
        best: Link[C] | None = None
        best_key: tuple[int, int, int] | None = None
        self.turn += 1
        for i, link in enumerate(self.conns.values()):
            if link.draining or link.instance_id in exclude:
                continue
            load = len(link.outstanding)
            if isinstance(link, LocalLink):
                load -= LOCAL_PREFERENCE  # no hop: taken first until it is busy
            # Rotate among equals so that an idle pool spreads calls evenly.
            key = (0 if link.up else 1, load, (i - self.turn) % len(self.conns))
            if best_key is None or key < best_key:
                best, best_key = link, key
        return best

    def idempotent(self, method: str) -> bool:
        """Whether the service's instances say ``method`` is idempotent (asked for every
        call: the union is kept until an instance comes, changes or goes)."""
        if self._idempotent is None:
            self._idempotent = frozenset().union(*(link.idempotent for link in self.conns.values()))
        return method in self._idempotent

    def changed(self) -> None:
        """An instance came, changed or went: what is idempotent is read again."""
        self._idempotent = None


class Pools(Generic[C]):
    """The pools of every service this process uses, following a registry view.

    Args:
        context: the process's ZeroMQ context.
        view: the registry view (its listener is :meth:`changed`).
        on_reply: called with ``(link, frames)`` for each message on a link.
        on_lost: called with ``(link, why)`` when a link is lost, before it is closed
            (its outstanding calls may be moved elsewhere).
        on_answer: called with ``(link, header, body)`` for each answer on a link to a
            co-located instance (nothing to decode).
    """

    def __init__(
        self,
        context: ZmqContext,
        view: RegistryView,
        on_reply: Callable[[Link[C], list[bytes]], None],
        on_lost: Callable[[Link[C], str], None],
        on_answer: Callable[[Link[C], Header, bytes], None],
    ) -> None:
        self.context = context
        self.view = view
        self.on_reply = on_reply
        self.on_lost = on_lost
        self.on_answer = on_answer
        self.pools: dict[str, Pool[C]] = {}

    def pool(self, service: str) -> Pool[C]:
        """The pool of ``service``, opening links to every instance the view knows
        (and to every one that comes later)."""
        pool = self.pools.get(service)
        if pool is None:
            pool = self.pools[service] = Pool(service)
            for instance in self.view.get(service):
                self._add(pool, instance)
        return pool

    def share(self, service: str, kind: str, socket: ZmqSocket) -> Pool[C]:
        """Connect ``socket`` to the ``kind`` endpoint (``pull``, ``pub``) of every
        instance of ``service``, now and as they come; the service's pool."""
        pool = self.pool(service)
        pool.sockets[kind] = socket
        for instance in self.view.get(service):
            self._add(pool, instance)
        return pool

    def connected(self, service: str) -> dict[str, bool]:
        """Instance id -> whether the link to it is up, for every instance of ``service``
        that is not leaving."""
        return {iid: link.up for iid, link in self.pool(service).conns.items() if not link.draining}

    def stats(self) -> dict[str, dict[str, dict[str, Any]]]:
        """Per service and instance: messages sent, outstanding, connected, draining,
        drained by an operator."""
        return {
            name: {
                iid: {
                    "sent": link.sent,
                    "outstanding": len(link.outstanding),
                    "up": link.up,
                    "draining": link.draining,
                    "drained": link.drained,
                }
                for iid, link in pool.conns.items()
            }
            for name, pool in self.pools.items()
        }

    def all_links(self) -> list[Link[C]]:
        """Every link of every pool."""
        return [link for pool in self.pools.values() for link in pool.conns.values()]

    def release(self, link: Link[C]) -> None:
        """Close a draining link once nothing is outstanding on it (not a drained one:
        its instance stays)."""
        if link.draining and not link.drained and not link.outstanding:
            self._remove(link)

    def close(self) -> None:
        """Close every link and socket and forget every pool."""
        for pool in self.pools.values():
            for link in pool.conns.values():
                link.close()
            for sock in pool.sockets.values():
                sock.close()
        self.pools.clear()

    def changed(self, change: int, instance: Instance, reason: str) -> None:
        """Registry listener: open links to an instance that came up, drain or drop
        those of one that went down."""
        pool = self.pools.get(instance.service_name)
        if pool is None:
            return
        if change == Change.UP:
            self._add(pool, instance)
            return
        for kind, sock in pool.sockets.items():
            address = pool.endpoints.get(kind, {}).pop(instance.instance_id, None)
            if address:
                sock.disconnect(address)
        link = pool.conns.get(instance.instance_id)
        if link is None:
            return
        if reason == "deregistered" and link.up:
            # A graceful stop: the instance answers what it holds, then leaves.
            link.draining, link.drained = True, False
            self.release(link)
        else:
            self.on_lost(link, reason)
            self._remove(link)

    def _add(self, pool: Pool[C], instance: Instance) -> None:
        endpoints = instance.endpoints or {}
        iid = instance.instance_id
        link = pool.conns.get(iid)
        if link is not None and (link.instance.endpoints or {}).get("rep") != endpoints.get("rep"):
            # Restarted under the same id, on new ports: the old link is dead.
            self.on_lost(link, "restarted")
            self._remove(link)
            link = None
        if link is not None:
            link.update(instance)
            pool.changed()
            # Back (an UP ends a goodbye), or drained by an operator.
            link.draining = link.drained
        elif "rep" in endpoints:
            local = LOCAL_SERVERS.get(iid)
            if local is not None and local.rep_endpoint == endpoints["rep"]:
                pool.conns[iid] = LocalLink(
                    local, instance, self.on_reply, self.on_lost, self.on_answer
                )
            else:
                pool.conns[iid] = Link(self.context, instance, self.on_reply, self.on_lost)
            pool.changed()
        off = drained(instance)
        for kind, sock in pool.sockets.items():
            known = pool.endpoints.setdefault(kind, {})
            # A drained instance takes no new pushes: they go to the others.
            address = None if off and kind == "pull" else endpoints.get(kind)
            if known.get(iid) == address:
                continue
            old = known.pop(iid, None)
            if old:
                sock.disconnect(old)
            if address:
                known[iid] = address
                sock.connect(address)

    def _remove(self, link: Link[C]) -> None:
        pool = self.pools.get(link.instance.service_name)
        if pool is not None and pool.conns.get(link.instance_id) is link:
            del pool.conns[link.instance_id]
            pool.changed()
        link.close()
