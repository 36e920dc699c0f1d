"""The yellow registry server: a ROUTER socket in front of a :class:`Registry`; its
telemetry (registry metrics, readiness, Prometheus service discovery at ``/sd``)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any

import zmq
from twisted.application.service import MultiService, Service
from twisted.internet import task
from twisted.logger import Logger
from typing_extensions import override

from mmo.registry import MAX_MESSAGE
from mmo.service import OrderedMultiService
from mmo.telemetry.metrics import Metric, Telemetry, counter, gauge
from mmo.wire import WireError, decode, encode
from mmo.wire.gen.mmo.ttypes import Instance, RegistryMessage, RegistryOp
from mmo.yellow.config import YellowConfig
from mmo.yellow.registry import Registry
from mmo.yellow.sd import ServiceDiscovery
from mmo.zmq import ZmqContextService, ZmqSocket


class YellowServer(Service):
    """Serves the registry protocol (docs/protocol.md, "Registry") on one address.

    Providers send ``REGISTER`` (also the heartbeat) and ``DEREGISTER``;
    consumers send ``QUERY``, or ``WATCH`` to get a ``SNAPSHOT`` and then every
    ``UPDATE`` in order; a watch is a lease the consumer renews.
    """

    log = Logger()

    def __init__(self, config: YellowConfig, zmq_service: ZmqContextService) -> None:
        self.config = config
        self.zmq = zmq_service
        self.yellow_id = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.registry: Registry | None = None
        self.started_at = 0.0
        self.address: str | None = None
        self.bad_messages = 0
        #: Messages served, by op name; changes announced, by reason; watchers dropped
        #: because they could not keep up.
        self.messages: dict[str, int] = {}
        self.changes: dict[str, int] = {}
        self.watchers_dropped = 0
        self._socket: ZmqSocket | None = None
        self._watchers: dict[bytes, float] = {}
        self._sweeper: task.LoopingCall | None = None

    @override
    def startService(self) -> None:
        """Bind the socket and start expiring instances."""
        super().startService()
        ctx = self.zmq.context
        self.registry = Registry(ctx.reactor, self.yellow_id, self._broadcast)
        self.started_at = ctx.reactor.seconds()
        # ROUTER_MANDATORY + a bounded queue: a watcher that cannot keep up raises
        # here and is dropped (it re-snapshots on its next renewal), memory stays bounded.
        self._socket = ctx.socket(
            zmq.ROUTER,
            self._received,
            options={
                zmq.ROUTER_MANDATORY: 1,
                zmq.SNDHWM: 10_000,
                zmq.MAXMSGSIZE: MAX_MESSAGE,
            },
        )
        self.address = self._socket.bind(self.config.listen)
        self._sweeper = task.LoopingCall(self._sweep)
        self._sweeper.clock = ctx.reactor
        self._sweeper.start(self.config.expire_interval, now=False)
        self.log.info(
            "yellow {yellow_id} listening on {address}",
            yellow_id=self.yellow_id,
            address=self.address,
        )

    @override
    def stopService(self) -> None:
        """Stop sweeping and close the socket."""
        super().stopService()
        if self._sweeper is not None and self._sweeper.running:
            self._sweeper.stop()
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    def _sweep(self) -> None:
        assert self.registry is not None
        self.registry.expire()
        now = self.zmq.context.reactor.seconds()
        for ident in [i for i, until in self._watchers.items() if until <= now]:
            del self._watchers[ident]

    def _send(self, ident: bytes, msg: RegistryMessage) -> None:
        if self._socket is None:
            return
        try:
            self._socket.send([ident, encode(msg)])
        except zmq.ZMQError:
            # The peer is not reading; it recovers through a snapshot when it renews.
            self.log.warn("yellow: reply dropped, peer gone or not reading")

    def _broadcast(self, update: RegistryMessage) -> None:
        reason = update.reason or ""
        self.changes[reason] = self.changes.get(reason, 0) + 1
        if not self._watchers:
            return
        data = encode(update)
        assert self._socket is not None
        for ident in list(self._watchers):
            try:
                self._socket.send([ident, data])
            except zmq.ZMQError:
                # A watcher that cannot keep up gets a fresh snapshot on its next renewal.
                del self._watchers[ident]
                self.watchers_dropped += 1

    def _received(self, frames: list[bytes]) -> None:
        if len(frames) != 2:
            self._bad(f"expected 2 frames, got {len(frames)}")
            return
        ident, data = frames
        try:
            msg = decode(RegistryMessage, data)
            self._handle(ident, msg)
        except (WireError, ValueError, TypeError, AttributeError) as e:
            self._bad(str(e))

    def _bad(self, reason: str) -> None:
        self.bad_messages += 1
        self.log.warn("yellow: bad message ({reason})", reason=reason)

    def _handle(self, ident: bytes, msg: RegistryMessage) -> None:
        registry = self.registry
        assert registry is not None
        op = msg.op
        name = RegistryOp._VALUES_TO_NAMES.get(op, "unknown").lower()
        self.messages[name] = self.messages.get(name, 0) + 1
        reply = RegistryMessage(
            op=RegistryOp.ACK, request_id=msg.request_id, yellow_id=self.yellow_id
        )
        if op == RegistryOp.REGISTER:
            instance = msg.instance
            if instance is None or not instance.service_name or not instance.instance_id:
                raise ValueError("REGISTER needs an instance with service_name and instance_id")
            registry.register(msg.instance)
        elif op == RegistryOp.DEREGISTER:
            if not msg.service_name or not msg.instance_id:
                raise ValueError("DEREGISTER needs service_name and instance_id")
            registry.deregister(msg.service_name, msg.instance_id)
        elif op == RegistryOp.QUERY:
            reply.op = RegistryOp.SNAPSHOT
            reply.instances = registry.query(msg.service_name or None)
        elif op == RegistryOp.WATCH:
            now = self.zmq.context.reactor.seconds()
            known = ident in self._watchers and msg.yellow_id == self.yellow_id
            self._watchers[ident] = now + self.config.watch_lease
            if not known:
                reply.op = RegistryOp.SNAPSHOT
                reply.instances = registry.query()
        elif op == RegistryOp.UNWATCH:
            self._watchers.pop(ident, None)
        else:
            raise ValueError(f"unexpected op {op}")
        reply.seq = registry.seq
        if reply.op == RegistryOp.SNAPSHOT:
            age = self.zmq.context.reactor.seconds() - self.started_at
            reply.uptime_ms = int(age * 1000)
        self._send(ident, reply)

    def status(self) -> dict[str, Any]:
        """Counts for operators: instances, watchers, seq, bad messages."""
        return {
            "yellow_id": self.yellow_id,
            "instances": len(self.registry) if self.registry else 0,
            "watchers": len(self._watchers),
            "seq": self.registry.seq if self.registry else 0,
            "bad_messages": self.bad_messages,
        }

    def instances(self) -> list[Instance]:
        """The live instances (none before the server starts)."""
        return self.registry.query() if self.registry is not None else []

    def readiness(self) -> tuple[bool, str]:
        """Ready when the registry's socket is bound."""
        if self._socket is None or self.address is None:
            return False, "not listening"
        return True, f"listening on {self.address}"

    def metrics(self) -> Iterator[Metric]:
        """The registry's metric families (collected when Prometheus scrapes)."""
        by_service: dict[str, int] = {}
        for instance in self.instances():
            by_service[instance.service_name] = by_service.get(instance.service_name, 0) + 1
        yield gauge(
            "mmo_registry_instances",
            "Live instances of each service, as this yellow has them.",
            ("service",),
            [((name,), n) for name, n in sorted(by_service.items())],
        )
        yield gauge(
            "mmo_yellow_watchers", "Consumers watching the registry now.", (), len(self._watchers)
        )
        yield counter(
            "mmo_yellow_messages",
            "Registry messages served, by op (register is also the heartbeat).",
            ("op",),
            [((op,), n) for op, n in sorted(self.messages.items())],
        )
        yield counter(
            "mmo_yellow_changes",
            "Changes announced to the watchers, by reason (registered, changed, "
            "deregistered, expired).",
            ("reason",),
            [((reason,), n) for reason, n in sorted(self.changes.items())],
        )
        yield counter(
            "mmo_yellow_bad_messages",
            "Messages refused as malformed.",
            (),
            self.bad_messages,
        )
        yield counter(
            "mmo_yellow_watchers_dropped",
            "Watchers dropped because they did not read their updates (they re-snapshot).",
            (),
            self.watchers_dropped,
        )
        yield gauge(
            "mmo_yellow_seq",
            "The registry's change sequence number (restarts at 0 with the yellow).",
            (),
            self.registry.seq if self.registry is not None else 0,
        )


def yellow_telemetry(server: YellowServer) -> Telemetry:
    """The telemetry of a yellow: its registry's metrics, ready once its socket is bound,
    and Prometheus service discovery (``/sd``) of every process that publishes its
    operator listener, the yellow included. (It ships no logs: it has no directory.)"""
    telemetry = Telemetry("yellow", server.yellow_id)
    telemetry.add_metrics(server.metrics)
    telemetry.add_check("listening", server.readiness)
    telemetry.resources[b"sd"] = ServiceDiscovery(
        server.instances, lambda: (telemetry.address, server.yellow_id)
    )
    return telemetry


def make_yellow_service(config: YellowConfig, *, reactor: Any = None) -> MultiService:
    """Build (without starting) the service tree of a yellow process; the tree carries
    its telemetry (``top.telemetry``)."""
    top = OrderedMultiService()
    zmq_service = ZmqContextService(reactor)
    zmq_service.setServiceParent(top)
    server = YellowServer(config, zmq_service)
    server.setName("yellow")
    server.setServiceParent(top)
    top.telemetry = yellow_telemetry(server)
    return top
