"""The bridge between clusters (``twistd mmo-bridge``, docs/bridge.md).

Each cluster runs one or more bridge processes. A bridge of cluster ``us`` links to the
bridges of the clusters it names as peers (``eu``): a DEALER to each of their addresses,
over CURVE with the peer's own key (the links of one cluster's members never carry
another's traffic), and a ROUTER the peers' bridges connect to. On these links
(:data:`HELLO` ... :data:`OP`, one frame naming the kind first):

- every :attr:`BridgeConfig.heartbeat` each bridge says HELLO on its DEALERs (its
  cluster, instance and exported services with their methods); the ROUTER side answers
  with its own, so each side knows which peers are alive (heard within
  ``link_timeout``) and what they export;
- the bridge registers, in its own cluster's yellow, each service a live peer exports
  as ``CLUSTER:SERVICE`` (an :class:`ImportHandler` served by a
  :class:`~mmo.logic.server.HandlerServer`, with the exporter's method lists, so that
  brokers route players' requests to it only for client methods): a call, push or
  subscription to ``eu:auction`` in ``us`` reaches a bridge of ``us``, which sends it
  (CALL, PUSH) to a live bridge of ``eu``, which calls ``auction`` in its cluster if it
  exports it, and answers (ANSWER). Deadlines travel (each bridge keeps
  ``hop_margin`` for the way back); errors keep their codes and types; a player's
  call keeps its origin, so the exporter's service still lets players reach only its
  client methods. A session crossing is renamed so that its broker is reachable from
  the other side (``broker-1`` of ``us`` is ``us:broker-1`` in ``eu``);
- events: the *active* bridge of a cluster (the live ``bridge`` instance with the
  smallest id; the others stand by) asks one live peer bridge per cluster to SUBSCRIBE
  it to that cluster's exported services, and republishes each EVENT on the import's
  PUB (so a subscriber in ``us`` hears each ``eu`` event once);
- players across clusters: logic's session operations (:class:`mmo.logic.sessions.Sessions`)
  for a session whose broker is ``CLUSTER:ID`` go to a local bridge (service ``bridge``),
  which relays them (OP) to a bridge of that cluster, which sends them to broker ``ID``;
  and every broadcast is sent to one local bridge too (the same while its link is up,
  then the next: one bridge per message, so no duplicates), which relays those on the
  shared channels (``channels`` prefixes) to each peer cluster, whose bridge broadcasts
  them to its brokers. What a bridge received from a peer is never relayed again (a
  cluster links to every cluster it shares with: no loops).

A bridge with no live link to a cluster withdraws its imports of it: callers there get
``NoLiveInstance`` at once, as for any service with no instance.
"""

from __future__ import annotations

import functools
import itertools
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import zmq
import zmq.auth
from twisted.application.service import MultiService
from twisted.internet import defer, task
from twisted.logger import Logger
from twisted.python.failure import Failure
from typing_extensions import override

from mmo.bridge.config import BridgeConfig
from mmo.config import ConfigError, insecure_mode
from mmo.errors import (
    DeadlineExceeded,
    Forbidden,
    InstanceLost,
    NoLiveInstance,
    UnknownMethod,
    from_wire,
)
from mmo.logic.client import Directory
from mmo.logic.handler import Context, ServiceHandler
from mmo.logic.links import BATCH_META, drained
from mmo.logic.runtime import WorkerRuntime, WorkerService
from mmo.logic.server import HandlerServer, error_fields
from mmo.logic.sessions import BRIDGE_SERVICE, BROKER_SERVICE
from mmo.net import addresses, with_host
from mmo.registry import Registration, default_instance_id, make_instance
from mmo.service import OrderedMultiService
from mmo.telemetry.metrics import Metric, Telemetry, counter, gauge
from mmo.telemetry.trace import from_header
from mmo.types import DelayedCall
from mmo.wire import WireError, decode, decode_value, encode, encode_value, from_value
from mmo.wire.gen.mmo.ttypes import Header, Kind, Origin, Session
from mmo.zmq import ZmqContext, ZmqContextService, ZmqSocket
from mmo.zmq.curve import AUTHORIZED_DIR, CurveKeys, load_curve_keys

__all__ = [
    "Bridge",
    "ImportHandler",
    "crossing",
    "link_keys",
    "make_bridge_service",
    "peer_key",
]

log = Logger()

#: The kinds of link messages (the first frame).
HELLO, CALL, ANSWER, PUSH, SUBSCRIBE, EVENT, OP = b"H", b"C", b"R", b"P", b"S", b"E", b"O"
#: The registry meta of a service that a bridge passes on to the other side.
METHOD_META = ("methods", "idempotent", "client", "login")
#: Largest message a bridge accepts from a peer.
MAX_MESSAGE = 16 * 1024 * 1024
#: Header fields of a session operation a bridge relays as they are.
_OP_FIELDS = ("targets", "channel", "route", "instance_id", "session", "trace_id", "traced")


def peer_key(link_keys: str, cluster: str) -> bytes:
    """The public key of cluster ``cluster``'s bridges: ``authorized/CLUSTER.key`` of the
    bridge's keys directory.

    Raises:
        ValueError: no such key file, or no key in it.
    """
    path = os.path.join(link_keys, AUTHORIZED_DIR, f"{cluster}.key")
    try:
        public, _ = zmq.auth.load_certificate(path)
    except OSError as e:
        raise ValueError(f"{path}: {e.strerror or e}") from e
    if not public:
        raise ValueError(f"{path}: no public key in it")
    return public


@dataclass
class PeerLink:
    """This bridge's connection to one bridge of another cluster (a DEALER).

    Attributes:
        cluster: the peer's cluster.
        address: where it was reached.
        socket: the DEALER.
        heard: reactor time of its last HELLO (None: never).
        instance: its instance id (from its HELLO).
        exports: what it exports: service -> method lists.
    """

    cluster: str
    address: str
    socket: ZmqSocket
    heard: float | None = None
    instance: str | None = None
    exports: dict[str, dict[str, Any]] = field(default_factory=dict)

    def send(self, frames: list[bytes]) -> bool:
        """Send without blocking; whether it went (not while disconnected)."""
        try:
            self.socket.send(frames)
        except zmq.ZMQError:
            return False
        return True


@dataclass
class _Forwarded:
    """A call sent to a peer bridge, waiting for its ANSWER."""

    call_id: int
    d: defer.Deferred[Any]
    cluster: str
    link: PeerLink
    frames: list[bytes]
    idempotent: bool
    timer: DelayedCall
    sends: int = 1


@dataclass
class _Caller:
    """A peer bridge connected to this one's ROUTER."""

    cluster: str
    instance: str
    heard: float
    subscribed_until: float = 0.0


class ImportHandler(ServiceHandler):
    """Service ``CLUSTER:SERVICE`` in this cluster: every call is the bridge's to send on.

    Players (a broker's ``CLIENT``/``LOGIN`` call) reach only the methods the exporter
    declares for them; everything else is forwarded as it came.
    """

    def __init__(self, runtime: Any, bridge: Bridge, cluster: str, service: str) -> None:
        super().__init__(runtime)
        self.bridge = bridge
        self.cluster = cluster
        self.service = service

    @override
    def dispatch(self, ctx: Context, kwargs: dict[str, Any]) -> Any:
        """Forward the call (see the class)."""
        if ctx.method.startswith("ops_"):
            return super().dispatch(ctx, kwargs)
        if ctx.origin != Origin.MEMBER:
            meta = self.bridge.exported(self.cluster, self.service)
            allowed = meta.get("login" if ctx.origin == Origin.LOGIN else "client") or ()
            if ctx.method not in allowed:
                raise UnknownMethod(f"service {ctx.service!r} has no method {ctx.method!r}")
        return self.bridge.forward(self.cluster, self.service, ctx, kwargs)


class ImportServer(HandlerServer):
    """The sockets of an import: pushes are forwarded as pushes (not as calls)."""

    handler: ImportHandler

    @override
    def _pushed(self, header: Header, body: bytes) -> None:
        handler = self.handler
        handler.bridge.forward_push(handler.cluster, handler.service, header, body)


class Bridge(MultiService):
    """One bridge process of a cluster (see the module).

    Args:
        config: its settings.
        context: the cluster's ZeroMQ context (its CURVE keys).
        link_context: the context of the links to other clusters (the bridge's keys).
        directory: this cluster's directory.
        instance_id: its instance id.
        keys: the links' CURVE keys (None: in the clear).
    """

    def __init__(
        self,
        config: BridgeConfig,
        context: ZmqContext,
        link_context: ZmqContext,
        directory: Directory,
        instance_id: str,
        keys: CurveKeys | None,
    ) -> None:
        super().__init__()
        self.config = config
        self.context = context
        self.link_context = link_context
        self.clock = context.reactor
        self.directory = directory
        self.instance_id = instance_id
        self.keys = keys
        self.links: list[PeerLink] = []
        self.callers: dict[bytes, _Caller] = {}
        self.imports: dict[tuple[str, str], WorkerService] = {}
        #: The method lists each import was registered with.
        self._methods: dict[tuple[str, str], dict[str, Any]] = {}
        self.counts: dict[str, int] = dict.fromkeys(
            ("calls_out", "calls_in", "pushes_out", "pushes_in", "events_in", "events_out",
             "ops_out", "ops_in", "broadcasts_out", "broadcasts_in", "refused", "bad",
             "lost", "resent"),
            0,
        )  # fmt: skip
        self._ids = itertools.count(1)
        self._pending: dict[int, _Forwarded] = {}
        self._router: ZmqSocket | None = None
        self._local: ZmqSocket | None = None
        self._subscriptions: list[Any] = []
        self._loop: task.LoopingCall | None = None
        #: This bridge's HELLO, made once a heartbeat (and answered to every peer's).
        self.hello = b""
        self.endpoint: str | None = None
        bind, advertise = addresses(config.bind_host, config.advertise_host)
        self._bind_host, self.advertise_host = bind, advertise
        self.registration = Registration(
            context,
            config.yellow,
            make_instance(
                BRIDGE_SERVICE,
                instance_id,
                {},
                {"cluster": config.cluster, "peers": sorted(config.peers), "pid": os.getpid()},
                heartbeat=config.heartbeat,
            ),
            config.heartbeat,
        )
        self.registration.setServiceParent(self)

    # -- lifecycle -------------------------------------------------------------

    @override
    def startService(self) -> None:
        """Bind the link ROUTER and this cluster's ``bridge`` endpoint, connect to the
        peers, register, and say HELLO every heartbeat."""
        options = {zmq.MAXMSGSIZE: MAX_MESSAGE, zmq.ROUTER_HANDOVER: 1}
        self._router = self.link_context.socket(zmq.ROUTER, self._from_caller, options=options)
        listened = self._router.bind(self.config.listen)
        self._local = self.context.socket(
            zmq.ROUTER, self._from_logic, options={zmq.MAXMSGSIZE: MAX_MESSAGE}
        )
        self.endpoint = with_host(
            self._local.bind(f"tcp://{self._bind_host}:*"), self.advertise_host
        )
        self.registration.instance.endpoints = {"rep": self.endpoint}
        for cluster in sorted(self.config.peers):
            keys_dir = self.config.link_keys
            key = peer_key(keys_dir, cluster) if self.keys and keys_dir else None
            for address in self.config.peer_addresses(cluster):
                dealer = self.link_context.socket(
                    zmq.DEALER,
                    options={zmq.MAXMSGSIZE: MAX_MESSAGE, zmq.IMMEDIATE: 1, zmq.LINGER: 0},
                )
                link = PeerLink(cluster, address, dealer)
                dealer.on_message = lambda frames, link=link: self._from_peer(link, frames)
                dealer.connect(address, server_key=key)
                self.links.append(link)
        super().startService()
        self._loop = task.LoopingCall(self._beat)
        self._loop.clock = self.clock
        self._loop.start(self.config.heartbeat, now=True)
        log.info(
            "bridge {id} of cluster {cluster} listening on {listen} ({secure}); peers {peers}; "
            "exports {exports}; shared channels {channels}",
            id=self.instance_id,
            cluster=self.config.cluster,
            listen=listened,
            secure="CURVE" if self.keys else "in the clear",
            peers=self.config.peers,
            exports=list(self.config.exports),
            channels=list(self.config.channels),
        )

    @override
    def stopService(self) -> defer.Deferred[None]:
        """Withdraw the imports, deregister, fail what is in flight, close the links."""
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        for subscription in self._subscriptions:
            subscription.unsubscribe()
        self._subscriptions = []
        imports = [self._withdraw(key) for key in list(self.imports)]
        d = defer.DeferredList([*imports, defer.maybeDeferred(super().stopService)])

        def close(_: Any) -> None:
            for pending in list(self._pending.values()):
                self._fail(pending, DeadlineExceeded("the bridge is stopping"))
            for sock in (self._router, self._local, *(link.socket for link in self.links)):
                if sock is not None:
                    sock.close()

        return d.addCallback(close)

    # -- what this side knows ------------------------------------------------------

    def alive(self, link: PeerLink) -> bool:
        """Whether ``link``'s peer said HELLO within the link timeout."""
        return (
            link.heard is not None and self.clock.seconds() - link.heard < self.config.link_timeout
        )

    def live_links(self, cluster: str) -> list[PeerLink]:
        """The live links to ``cluster``'s bridges, in a stable order."""
        return [link for link in self.links if link.cluster == cluster and self.alive(link)]

    def send_any(self, cluster: str, frames: list[bytes]) -> PeerLink | None:
        """Send ``frames`` on the first live link to ``cluster`` that takes them; the link,
        or None. A link that cannot send (its connection is gone: the peer died a moment
        ago) is taken for dead at once."""
        for link in self.live_links(cluster):
            if link.send(frames):
                return link
            link.heard = None
        return None

    def exported(self, cluster: str, service: str) -> dict[str, Any]:
        """What the live bridges of ``cluster`` say of ``service`` (its method lists)."""
        for link in self.live_links(cluster):
            if service in link.exports:
                return link.exports[service]
        return {}

    def active(self) -> bool:
        """Whether this bridge is its cluster's active one: the live ``bridge`` instance
        with the smallest id (it alone takes the other clusters' events)."""
        ids = [i.instance_id for i in self.directory.view.get(BRIDGE_SERVICE)]
        return min([*ids, self.instance_id]) == self.instance_id

    def _hello(self) -> bytes:
        exports: dict[str, dict[str, Any]] = {}
        for service in self.config.exports:
            live = [i for i in self.directory.view.get(service) if not drained(i)]
            if live:
                meta = live[0].meta or {}
                exports[service] = {k: from_value(meta[k]) for k in METHOD_META if k in meta}
        hello = {"cluster": self.config.cluster, "instance": self.instance_id, "exports": exports}
        return json.dumps(hello).encode()

    # -- every heartbeat -----------------------------------------------------------

    def _beat(self) -> None:
        hello = self.hello = self._hello()
        active = self.active()
        subscribed: set[str] = set()
        for link in self.links:
            link.send([HELLO, hello])
            if active and link.cluster not in subscribed and self.alive(link):
                # One live bridge per peer cluster sends this one its events.
                subscribed.add(link.cluster)
                link.send([SUBSCRIBE])
        now = self.clock.seconds()
        for ident, caller in list(self.callers.items()):
            if now - caller.heard > self.config.link_timeout:
                del self.callers[ident]
        self._check_links()

    def _check_links(self) -> None:
        """Calls in flight on a dead link go to another (idempotent) or fail; imports
        follow what the live links export."""
        for pending in list(self._pending.values()):
            if not self.alive(pending.link):
                self._lost(pending)
        wanted: dict[tuple[str, str], dict[str, Any]] = {}
        for link in self.links:
            if self.alive(link):
                for service, meta in link.exports.items():
                    wanted.setdefault((link.cluster, service), meta)
        for key in list(self.imports):
            if key not in wanted:
                log.info(
                    "bridge: {c}:{s} withdrawn (no live bridge exports it)", c=key[0], s=key[1]
                )
                self._withdraw(key)
        for key, meta in wanted.items():
            methods = {k: meta.get(k, []) for k in METHOD_META}
            worker = self.imports.get(key)
            if worker is None:
                self._import(key, methods)
            elif self._methods.get(key) != methods:
                worker.registration.update_meta(**methods)
            self._methods[key] = methods

    def _import(self, key: tuple[str, str], meta: dict[str, Any]) -> None:
        cluster, service = key
        name = f"{cluster}:{service}"
        runtime = WorkerRuntime(name, self.instance_id, self.clock, self.directory)
        handler = ImportHandler(runtime, self, cluster, service)
        server = ImportServer(
            self.context,
            handler,
            bind_host=self._bind_host,
            advertise_host=self.advertise_host,
            drain_timeout=self.config.link_timeout,
        )
        runtime.server = server
        instance = make_instance(
            name,
            self.instance_id,
            {},
            {**meta, "bridge": cluster, "pid": os.getpid(), BATCH_META: True},
            heartbeat=self.config.heartbeat,
        )
        registration = Registration(
            self.context, self.config.yellow, instance, self.config.heartbeat
        )
        worker = WorkerService(handler, server, registration)
        self.imports[key] = worker
        worker.setServiceParent(self)
        log.info(
            "bridge: serving {name} (exported by cluster {cluster})", name=name, cluster=cluster
        )

    def _withdraw(self, key: tuple[str, str]) -> defer.Deferred[Any]:
        self._methods.pop(key, None)
        worker = self.imports.pop(key, None)
        if worker is None:
            return defer.succeed(None)
        return defer.maybeDeferred(worker.disownServiceParent)

    # -- calls and pushes of this cluster, to another --------------------------------

    def forward(
        self, cluster: str, service: str, ctx: Context, kwargs: dict[str, Any]
    ) -> defer.Deferred[Any]:
        """Send a call of this cluster to ``cluster``'s ``service``; its answer."""
        links = self.live_links(cluster)
        if not links:
            return defer.fail(NoLiveInstance(f"no live bridge to cluster {cluster!r}"))
        remaining = ctx.remaining() - self.config.hop_margin
        if remaining <= 0:
            return defer.fail(DeadlineExceeded(f"{cluster}:{service}.{ctx.method}: no time left"))
        call_id = next(self._ids)
        header = Header(
            kind=Kind.REQUEST,
            call_id=call_id,
            service_name=service,
            method=ctx.method,
            timeout_ms=max(1, int(remaining * 1000)),
            caller=self.instance_id,
            caller_role="bridge",
            session=crossing(ctx.session, self.config.cluster, cluster),
            origin=ctx.origin,
            peer=ctx.peer,
        )
        frames = [CALL, encode(header), encode_value(kwargs)]
        idempotent = ctx.method in (self.exported(cluster, service).get("idempotent") or ())
        link = self.send_any(cluster, frames)
        if link is None:
            return defer.fail(NoLiveInstance(f"no live bridge to cluster {cluster!r}"))
        d: defer.Deferred[Any] = defer.Deferred()
        timer = self.clock.callLater(remaining, self._expired, call_id)
        self._pending[call_id] = _Forwarded(call_id, d, cluster, link, frames, idempotent, timer)
        self.counts["calls_out"] += 1
        return d

    def forward_push(self, cluster: str, service: str, header: Header, body: bytes) -> None:
        """Send a push of this cluster to ``cluster``'s ``service`` (at most once)."""
        header.service_name, header.caller, header.caller_role = service, self.instance_id, "bridge"
        if self.send_any(cluster, [PUSH, encode(header), body]) is not None:
            self.counts["pushes_out"] += 1
        else:
            self.counts["lost"] += 1
            log.warn("bridge: push to {c}:{s} dropped: no live bridge", c=cluster, s=service)

    def _expired(self, call_id: int) -> None:
        pending = self._pending.get(call_id)
        if pending is not None:
            self._fail(pending, DeadlineExceeded(f"no answer from cluster {pending.cluster!r}"))

    def _lost(self, pending: _Forwarded) -> None:
        """The link of a call in flight died: send it again on another live link
        (idempotent methods, twice at most), or fail it."""
        pending.link.heard = None
        link = self.send_any(pending.cluster, pending.frames) if pending.idempotent else None
        if link is not None and pending.sends < 3:
            pending.link = link
            pending.sends += 1
            self.counts["resent"] += 1
            return
        self._fail(
            pending,
            InstanceLost(
                f"the bridge to cluster {pending.cluster!r} was lost with the call in flight; "
                "it may or may not have run"
            ),
        )

    def _fail(self, pending: _Forwarded, error: Exception) -> None:
        self._pending.pop(pending.call_id, None)
        if pending.timer.active():
            pending.timer.cancel()
        if not pending.d.called:
            pending.d.errback(Failure(error))

    # -- what the peers' bridges send this one -------------------------------------------

    def _from_peer(self, link: PeerLink, frames: list[bytes]) -> None:
        """From a peer bridge over this one's DEALER: HELLO, ANSWER or EVENT."""
        kind = frames[0] if frames else b""
        try:
            if kind == HELLO:
                hello = json.loads(frames[1])
                if hello.get("cluster") != link.cluster:
                    raise ValueError(f"{link.address} says it is {hello.get('cluster')!r}")
                first = link.heard is None or not self.alive(link)
                link.heard = self.clock.seconds()
                link.instance = str(hello.get("instance"))
                link.exports = dict(hello.get("exports") or {})
                if first:
                    log.info(
                        "bridge: linked to {id} of cluster {c} at {a}",
                        id=link.instance,
                        c=link.cluster,
                        a=link.address,
                    )
                    self._check_links()
            elif kind == ANSWER:
                self._answered(decode(Header, frames[1]), frames[2])
            elif kind == EVENT:
                self._event_in(link.cluster, decode(Header, frames[2]), frames[1], frames[3])
            else:
                raise ValueError(f"unexpected kind {kind!r}")
        except (ValueError, IndexError, WireError, TypeError) as e:
            self.counts["bad"] += 1
            log.warn("bridge: bad message from {a}: {e}", a=link.address, e=e)

    def _answered(self, header: Header, body: bytes) -> None:
        pending = self._pending.pop(header.call_id or 0, None)
        if pending is None:
            return  # late: failed over or timed out already
        pending.timer.cancel()
        if header.kind == Kind.REPLY:
            pending.d.callback(decode_value(body) if body else None)
        else:
            pending.d.errback(
                Failure(from_wire(header.error_code, header.error_type, header.error_message))
            )

    def _event_in(self, cluster: str, header: Header, topic: bytes, payload: bytes) -> None:
        worker = self.imports.get((cluster, header.service_name or ""))
        if worker is None or not self.active():
            return
        self.counts["events_in"] += 1
        worker.server.publish(topic.decode(), decode_value(payload))

    def _from_caller(self, frames: list[bytes]) -> None:
        """From a peer bridge over this one's ROUTER: HELLO, CALL, PUSH, SUBSCRIBE, OP."""
        if len(frames) < 2:
            self.counts["bad"] += 1
            return
        ident, kind = frames[0], frames[1]
        try:
            if kind == HELLO:
                hello = json.loads(frames[2])
                cluster = str(hello.get("cluster"))
                if cluster not in self.config.peers:
                    raise ValueError(f"cluster {cluster!r} is not a peer of this bridge")
                caller = self.callers.get(ident)
                now = self.clock.seconds()
                if caller is None:
                    self.callers[ident] = _Caller(cluster, str(hello.get("instance")), now)
                else:
                    caller.heard = now
                self._send_to(ident, [HELLO, self.hello])
                return
            caller = self.callers.get(ident)
            if caller is None:
                raise ValueError("a message before HELLO")
            if kind == CALL:
                self._call_in(ident, caller, decode(Header, frames[2]), frames[3])
            elif kind == PUSH:
                self._push_in(caller, decode(Header, frames[2]), frames[3])
            elif kind == SUBSCRIBE:
                self._subscribe_in(caller)
            elif kind == OP:
                self._op_in(caller, decode(Header, frames[2]), frames[3])
            else:
                raise ValueError(f"unexpected kind {kind!r}")
        except (ValueError, IndexError, WireError, TypeError) as e:
            self.counts["bad"] += 1
            log.warn("bridge: bad message from a peer bridge: {e}", e=e)

    def _send_to(self, ident: bytes, frames: list[bytes]) -> None:
        if self._router is None:
            return
        try:
            self._router.send([ident, *frames])
        except zmq.ZMQError as e:
            log.warn("bridge: answer to a peer bridge dropped ({e})", e=e)

    def _exports(self, caller: _Caller, service: str | None, what: str) -> bool:
        if service in self.config.exports:
            return True
        self.counts["refused"] += 1
        log.warn(
            "bridge: refused {what} of {service!r} from cluster {c} ({id}): not exported",
            what=what,
            service=service,
            c=caller.cluster,
            id=caller.instance,
        )
        return False

    def _call_in(self, ident: bytes, caller: _Caller, header: Header, body: bytes) -> None:
        call_id = header.call_id
        if not self._exports(caller, header.service_name, "a call"):
            error = Forbidden(
                f"cluster {self.config.cluster!r} does not export {header.service_name!r}"
            )
            self._send_to(
                ident, [ANSWER, encode(Header(call_id=call_id, **error_fields(error))), b""]
            )
            return
        self.counts["calls_in"] += 1
        timeout = (header.timeout_ms or 5000) / 1000.0 - self.config.hop_margin
        if timeout <= 0:
            return  # nothing left of its deadline: the caller has failed it already
        d = self.directory.call(
            header.service_name or "",
            header.method or "",
            timeout=timeout,
            session=header.session,
            raw_body=body,
            origin=header.origin,
            peer=header.peer,
            trace=from_header(header),
        )

        def replied(raw: bytes) -> None:
            self._send_to(ident, [ANSWER, encode(Header(kind=Kind.REPLY, call_id=call_id)), raw])

        def failed(failure: Failure) -> None:
            assert failure.value is not None
            fields = error_fields(failure.value)
            self._send_to(ident, [ANSWER, encode(Header(call_id=call_id, **fields)), b""])

        d.addCallbacks(replied, failed)

    def _push_in(self, caller: _Caller, header: Header, body: bytes) -> None:
        if not self._exports(caller, header.service_name, "a push"):
            return
        self.counts["pushes_in"] += 1
        try:
            self.directory.push(header.service_name or "", header.method or "", decode_value(body))
        except Exception as e:
            log.warn("bridge: push to {s} dropped: {e}", s=header.service_name, e=e)

    def _subscribe_in(self, caller: _Caller) -> None:
        caller.subscribed_until = self.clock.seconds() + self.config.link_timeout
        if not self._subscriptions:
            for service in self.config.exports:
                self._subscriptions.append(
                    self.directory.subscribe(
                        service,
                        "",
                        functools.partial(self._event_out, service),
                    )
                )

    def _event_out(self, service: str, topic: str, payload: Any) -> None:
        now = self.clock.seconds()
        frames: list[bytes] | None = None
        for ident, caller in self.callers.items():
            if caller.subscribed_until > now:
                if frames is None:
                    header = Header(kind=Kind.EVENT, topic=topic, service_name=service)
                    frames = [EVENT, topic.encode(), encode(header), encode_value(payload)]
                self.counts["events_out"] += 1
                self._send_to(ident, frames)

    # -- players across clusters -----------------------------------------------------

    def _from_logic(self, frames: list[bytes]) -> None:
        """A session operation of this cluster's logic (service ``bridge``): one for a
        session of another cluster (header ``broker`` ``CLUSTER:ID``) goes to that
        cluster; a broadcast on a shared channel goes to every peer cluster."""
        if len(frames) != 3:
            self.counts["bad"] += 1
            return
        try:
            header = decode(Header, frames[1])
        except WireError as e:
            self.counts["bad"] += 1
            log.warn("bridge: bad message from logic: {e}", e=e)
            return
        body = frames[2]
        if header.method == "broadcast":
            if not self._shared(header.channel):
                return
            frames = [OP, encode(_op_header(header, None)), body]
            for cluster in sorted(self.config.peers):
                if self.send_any(cluster, frames) is not None:
                    self.counts["broadcasts_out"] += 1
                else:
                    self.counts["lost"] += 1
            return
        cluster, _, broker = (header.broker or "").partition(":")
        frames = [OP, encode(_op_header(header, broker)), body]
        if broker and self.send_any(cluster, frames) is not None:
            self.counts["ops_out"] += 1
        else:
            self.counts["lost"] += 1
            log.warn(
                "bridge: {m} for {b} dropped: no live bridge to its cluster",
                m=header.method,
                b=header.broker,
            )

    def _op_in(self, caller: _Caller, header: Header, body: bytes) -> None:
        fields = {f: getattr(header, f) for f in _OP_FIELDS if getattr(header, f) is not None}
        if header.method == "broadcast":
            if not self._shared(header.channel):
                self.counts["refused"] += 1
                return
            self.counts["broadcasts_in"] += 1
            self.directory.send_all(BROKER_SERVICE, "broadcast", body, **fields)
            return
        if header.method not in ("push", "join", "leave", "kick", "set"):
            self.counts["refused"] += 1
            log.warn(
                "bridge: refused {m} from cluster {c}: not a session operation a bridge relays",
                m=header.method,
                c=caller.cluster,
            )
            return
        self.counts["ops_in"] += 1
        if not self.directory.send(
            BROKER_SERVICE, header.method, body, instance=header.broker, **fields
        ):
            self.counts["lost"] += 1

    def _shared(self, channel: str | None) -> bool:
        return channel is not None and any(channel.startswith(p) for p in self.config.channels)

    # -- operators ---------------------------------------------------------------------

    def metrics(self) -> Iterator[Metric]:
        """The bridge's metric families."""
        yield counter(
            "mmo_bridge_messages",
            "What the bridge passed between clusters, refused or lost, by kind.",
            ("kind",),
            [((kind,), n) for kind, n in self.counts.items()],
        )
        yield gauge(
            "mmo_bridge_links",
            "Links to other clusters' bridges, by cluster and whether alive.",
            ("cluster", "alive"),
            [
                ((cluster, alive), sum(
                    1 for link in self.links
                    if link.cluster == cluster and str(self.alive(link)).lower() == alive
                ))
                for cluster in sorted(self.config.peers)
                for alive in ("true", "false")
            ],
        )  # fmt: skip
        yield gauge(
            "mmo_bridge_active",
            "Whether this bridge is its cluster's active one (it takes the events).",
            (),
            1 if self.active() else 0,
        )

    def readiness(self) -> tuple[bool, str]:
        """Ready when every peer cluster has a live link."""
        dead = [c for c in sorted(self.config.peers) if not self.live_links(c)]
        if dead:
            return False, f"no live link to {', '.join(dead)}"
        return True, f"linked to {', '.join(sorted(self.config.peers))}"


def crossing(session: Session | None, here: str, there: str) -> Session | None:
    """``session`` of cluster ``here`` as cluster ``there`` names it: its broker prefixed
    with the cluster it is in (``broker-1`` of ``us`` is ``us:broker-1`` in ``eu``), or
    unprefixed when it is in ``there`` itself (a session of ``eu`` coming back)."""
    if session is None:
        return None
    broker = session.broker or ""
    own = f"{there}:"
    if broker.startswith(own):
        broker = broker[len(own) :]
    elif broker and ":" not in broker:
        broker = f"{here}:{broker}"
    return Session(id=session.id, user_id=session.user_id, broker=broker, props=session.props)


def _op_header(header: Header, broker: str | None) -> Header:
    """The header of a session operation as it travels to another cluster."""
    fields = {f: getattr(header, f) for f in _OP_FIELDS if getattr(header, f) is not None}
    return Header(kind=Kind.REQUEST, method=header.method, broker=broker, one_way=True, **fields)


def make_bridge_service(config: BridgeConfig, *, reactor: Any = None) -> OrderedMultiService:
    """Build (without starting) the service tree of a bridge process.

    Raises:
        ConfigError: (key ``link-keys``) the keys of the links are missing or bad, or
            none were given outside insecure mode.
    """
    top = OrderedMultiService()
    zmq_service = ZmqContextService(reactor)
    zmq_service.setServiceParent(top)
    ctx = zmq_service.context
    keys = link_keys(config)
    link_service = ZmqContextService(ctx.reactor, curve=keys)
    link_service.setServiceParent(top)
    instance_id = config.instance_id or default_instance_id(BRIDGE_SERVICE)
    directory = Directory(ctx, config.yellow, caller_id=instance_id, caller_role="bridge")
    directory.setName("directory")
    directory.setServiceParent(top)
    bridge = Bridge(config, ctx, link_service.context, directory, instance_id, keys)
    bridge.setName("bridge")
    bridge.setServiceParent(top)
    telemetry = Telemetry(BRIDGE_SERVICE, instance_id)
    telemetry.directory = directory
    telemetry.advertise_host = bridge.advertise_host
    telemetry.registrations.append(bridge.registration)
    telemetry.add_metrics(directory.metrics)
    telemetry.add_metrics(bridge.metrics)
    telemetry.add_check("registry", directory.readiness)
    telemetry.add_check("links", bridge.readiness)
    top.telemetry = telemetry
    return top


def link_keys(config: BridgeConfig) -> CurveKeys | None:
    """The CURVE keys of the links between clusters (None: in the clear, which only
    insecure mode allows, loudly).

    Raises:
        ConfigError: the keys directory or a peer's key is missing or bad; or no keys
            outside insecure mode.
    """
    if config.link_keys is None:
        if not insecure_mode():
            raise ConfigError(
                "link-keys",
                "the links between clusters need CURVE keys (`mmo keys DIR`, then each peer "
                "cluster's bridge key as DIR/authorized/CLUSTER.key), or --insecure",
            )
        log.warn("bridge: the links to other clusters run in the clear (insecure mode)")
        return None
    try:
        keys = load_curve_keys(config.link_keys)
        for cluster in config.peers:
            peer_key(config.link_keys, cluster)
    except (ConfigError, ValueError) as e:
        raise ConfigError("link-keys", str(getattr(e, "reason", e))) from e
    return keys
