"""YellowServer: the registry protocol over its ROUTER socket, with no socket and no reactor.

The server runs on mmo.testing's fake ZeroMQ context: the test plays providers and
consumers by delivering ``[identity, message]`` frames to its ROUTER socket and reads
what the server sent back to each identity. Time is a ``task.Clock``, so heartbeats,
expiry sweeps and watch leases are driven by ``clock.advance``.
"""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
import zmq
from twisted.internet import task

from mmo.registry import MAX_MESSAGE, make_instance
from mmo.testing import FakeZmqContext
from mmo.wire import decode, encode
from mmo.wire.gen.mmo.ttypes import Change, Instance, RegistryMessage, RegistryOp
from mmo.yellow.config import YellowConfig
from mmo.yellow.service import YellowServer, make_yellow_service

LISTEN = "tcp://127.0.0.1:5555"
#: An instance's TTL (seconds) and the sweep interval of the server under test.
TTL, SWEEP, LEASE = 3.0, 0.2, 5.0

PROVIDER, WATCHER, OTHER = b"provider", b"watcher", b"other"


class Yellow:
    """A started YellowServer on a fake context, and the peers the test plays."""

    def __init__(self) -> None:
        self.clock = task.Clock()
        self.ctx = FakeZmqContext(self.clock)
        config = YellowConfig(listen=LISTEN, expire_interval=SWEEP, watch_lease=LEASE)
        self.server = YellowServer(config, SimpleNamespace(context=self.ctx))  # type: ignore[arg-type]
        self.server.startService()
        (self.router,) = self.ctx.sockets
        self._seen: dict[bytes, int] = {}

    def send(self, ident: bytes, op: int, request_id: int | None = None, **fields: Any) -> None:
        """Deliver a registry message from peer ``ident``."""
        msg = RegistryMessage(op=op, request_id=request_id, **fields)
        self.router.deliver([ident, encode(msg)])

    def replies(self, ident: bytes) -> list[RegistryMessage]:
        """What the server sent to ``ident`` since the last look."""
        mine = [decode(RegistryMessage, data) for to, data in self.router.sent if to == ident]
        new = mine[self._seen.get(ident, 0) :]
        self._seen[ident] = len(mine)
        return new

    def register(self, instance: Instance, ident: bytes = PROVIDER) -> RegistryMessage:
        """Register (or heartbeat) ``instance``; the server's answer."""
        self.send(ident, RegistryOp.REGISTER, 1, instance=instance)
        (reply,) = self.replies(ident)
        return reply

    def watch(self, ident: bytes = WATCHER, yellow_id: str | None = None) -> RegistryMessage:
        """Start or renew a watch; the server's answer."""
        self.send(ident, RegistryOp.WATCH, 2, yellow_id=yellow_id)
        (reply,) = self.replies(ident)
        return reply


def instance(iid: str, service: str = "echo", **meta: Any) -> Instance:
    """An instance record with a 3 s TTL."""
    return make_instance(service, iid, {"rep": f"tcp://127.0.0.1:7{len(iid):03d}"}, meta, TTL / 3)


@pytest.fixture
def yellow() -> Iterator[Yellow]:
    """A started yellow; stopped after the test."""
    y = Yellow()
    yield y
    if y.server.running:
        y.server.stopService()


def test_start_binds_one_bounded_router_socket(yellow: Yellow) -> None:
    """The server binds a ROUTER at its listen address, refusing unroutable replies and
    messages bigger than the registry's limit, with a bounded send queue."""
    router = yellow.router
    assert router.socket_type == zmq.ROUTER
    assert router.bound == [LISTEN] and yellow.server.address == LISTEN
    assert router.options[zmq.ROUTER_MANDATORY] == 1
    assert router.options[zmq.MAXMSGSIZE] == MAX_MESSAGE
    assert router.options[zmq.SNDHWM] > 0


def test_register_is_acknowledged_and_then_queried(yellow: Yellow) -> None:
    """REGISTER answers ACK (same request id, the yellow's id, seq 1); QUERY answers a
    SNAPSHOT of that service's instances, with the yellow's uptime."""
    ack = yellow.register(instance("e1"))
    assert (ack.op, ack.request_id, ack.seq) == (RegistryOp.ACK, 1, 1)
    assert ack.yellow_id == yellow.server.yellow_id
    yellow.register(instance("c1", service="chat"))
    yellow.clock.advance(1.5)
    yellow.send(OTHER, RegistryOp.QUERY, 7, service_name="echo")
    (snapshot,) = yellow.replies(OTHER)
    assert (snapshot.op, snapshot.request_id, snapshot.seq) == (RegistryOp.SNAPSHOT, 7, 2)
    assert [i.instance_id for i in snapshot.instances] == ["e1"]
    assert snapshot.uptime_ms == 1500
    yellow.send(OTHER, RegistryOp.QUERY, 8)
    (everything,) = yellow.replies(OTHER)
    assert sorted(i.instance_id for i in everything.instances) == ["c1", "e1"]


def test_heartbeats_keep_an_instance_and_silence_expires_it(yellow: Yellow) -> None:
    """An instance heartbeating within its TTL stays listed; once it stops, the next sweep
    after the TTL drops it and tells watchers it expired."""
    yellow.register(instance("e1"))
    yellow_id = yellow.watch().yellow_id
    for _ in range(5):
        yellow.clock.advance(TTL - 0.5)
        yellow.register(instance("e1"))
        # The watcher renews its lease, and hears of no change: a heartbeat is none.
        assert yellow.watch(yellow_id=yellow_id).op == RegistryOp.ACK
    assert yellow.server.status()["instances"] == 1
    yellow.clock.advance(TTL - SWEEP)
    assert yellow.server.status()["instances"] == 1
    yellow.clock.advance(2 * SWEEP)
    assert yellow.server.status()["instances"] == 0
    (down,) = yellow.replies(WATCHER)
    assert (down.op, down.change, down.reason) == (RegistryOp.UPDATE, Change.DOWN, "expired")
    assert down.instance.instance_id == "e1"


def test_a_watch_gets_a_snapshot_then_every_change_in_order(yellow: Yellow) -> None:
    """WATCH answers a SNAPSHOT; then registrations, changes and goodbyes reach the watcher
    as UPDATEs numbered one after another from the snapshot's seq."""
    yellow.register(instance("e1"))
    snapshot = yellow.watch()
    assert snapshot.op == RegistryOp.SNAPSHOT and snapshot.seq == 1
    assert [i.instance_id for i in snapshot.instances] == ["e1"]
    yellow.register(instance("e2"))
    yellow.register(instance("e1", load=3))
    yellow.send(PROVIDER, RegistryOp.DEREGISTER, 3, service_name="echo", instance_id="e2")
    updates = yellow.replies(WATCHER)
    assert [(u.seq, u.change, u.instance.instance_id, u.reason) for u in updates] == [
        (2, Change.UP, "e2", "registered"),
        (3, Change.UP, "e1", "changed"),
        (4, Change.DOWN, "e2", "deregistered"),
    ]
    assert all(u.op == RegistryOp.UPDATE for u in updates)
    assert yellow.replies(PROVIDER)[-1].op == RegistryOp.ACK


def test_renewing_a_watch_is_acknowledged_without_a_snapshot(yellow: Yellow) -> None:
    """A watcher renewing with the yellow's id gets an ACK with the current seq; naming
    another yellow (it missed a restart) gets a fresh SNAPSHOT."""
    yellow.register(instance("e1"))
    first = yellow.watch()
    renewed = yellow.watch(yellow_id=first.yellow_id)
    assert (renewed.op, renewed.seq) == (RegistryOp.ACK, 1)
    again = yellow.watch(yellow_id="a-yellow-that-restarted")
    assert again.op == RegistryOp.SNAPSHOT


def test_a_watch_lapses_unless_renewed(yellow: Yellow) -> None:
    """A watcher that stops renewing for the lease gets no more updates; one that renews does."""
    yellow.watch(WATCHER)
    first = yellow.watch(OTHER)
    for _ in range(3):
        yellow.clock.advance(LEASE - 1)
        yellow.watch(OTHER, yellow_id=first.yellow_id)
    yellow.register(instance("e1"))
    assert yellow.replies(WATCHER) == []
    assert [u.instance.instance_id for u in yellow.replies(OTHER)] == ["e1"]
    assert yellow.server.status()["watchers"] == 1


def test_unwatch_stops_the_updates(yellow: Yellow) -> None:
    """After UNWATCH a consumer hears of no change."""
    yellow.watch()
    yellow.send(WATCHER, RegistryOp.UNWATCH, 3)
    assert yellow.replies(WATCHER)[-1].op == RegistryOp.ACK
    yellow.register(instance("e1"))
    assert yellow.replies(WATCHER) == []


def test_a_watcher_that_cannot_keep_up_is_dropped_and_others_are_served(yellow: Yellow) -> None:
    """When an update cannot be queued for one watcher, that watcher is dropped (it
    re-snapshots on renewal); the other watchers still get the update."""
    yellow.watch(WATCHER)
    yellow.watch(OTHER)
    yellow.router.refuse = zmq.Again()
    yellow.send(PROVIDER, RegistryOp.REGISTER, 1, instance=instance("e1"))
    yellow.router.refuse = None
    assert yellow.server.status()["watchers"] == 0
    yellow.watch(OTHER)
    yellow.register(instance("e2"))
    assert [u.instance.instance_id for u in yellow.replies(OTHER)] == ["e2"]
    assert yellow.replies(WATCHER) == []


def test_an_unroutable_reply_is_dropped_and_the_server_goes_on(yellow: Yellow) -> None:
    """A reply to a peer that is gone (ROUTER_MANDATORY refuses it) is dropped: the
    registration still counts and the next peer is answered."""
    yellow.router.refuse = zmq.ZMQError(zmq.EHOSTUNREACH)
    yellow.send(PROVIDER, RegistryOp.REGISTER, 1, instance=instance("e1"))
    yellow.router.refuse = None
    assert yellow.server.status()["instances"] == 1
    yellow.send(OTHER, RegistryOp.QUERY, 2)
    assert [i.instance_id for i in yellow.replies(OTHER)[0].instances] == ["e1"]


@pytest.mark.parametrize(
    "frames",
    [
        [b"only-one-frame"],
        [PROVIDER, b"not thrift", b"extra"],
        [PROVIDER, b"\xff\xfe garbage"],
        [PROVIDER, encode(RegistryMessage(op=RegistryOp.REGISTER))],  # no instance
        [PROVIDER, encode(RegistryMessage(op=RegistryOp.DEREGISTER, service_name="echo"))],
        [PROVIDER, encode(RegistryMessage(op=RegistryOp.ACK))],  # a yellow's op, not a peer's
    ],
)
def test_bad_messages_are_counted_unanswered_and_harmless(
    yellow: Yellow, frames: list[bytes]
) -> None:
    """A malformed or unexpected message is counted and logged, gets no answer and
    changes nothing; the server answers the next peer as before."""
    yellow.router.deliver(frames)
    assert yellow.server.status()["bad_messages"] == 1
    assert yellow.router.sent == []
    assert yellow.register(instance("e1")).op == RegistryOp.ACK


def test_stop_closes_the_socket_and_stops_expiring(yellow: Yellow) -> None:
    """After stopService the socket is closed and no sweep runs any more."""
    yellow.register(instance("e1"))
    yellow.server.stopService()
    assert yellow.router.closed
    yellow.clock.advance(10 * TTL)
    assert yellow.server.status()["instances"] == 1
    assert yellow.clock.getDelayedCalls() == []


def test_each_process_has_its_own_yellow_id() -> None:
    """Two yellows (or one restarted) have different ids, so watchers notice a restart."""
    assert Yellow().server.yellow_id != Yellow().server.yellow_id


def test_the_service_tree_holds_the_context_then_the_server() -> None:
    """make_yellow_service builds the ZeroMQ context service first and the named server
    after it (stopped first), without starting anything."""
    top = make_yellow_service(YellowConfig(listen=LISTEN), reactor=task.Clock())
    context_service, server = list(top)
    assert isinstance(server, YellowServer) and server.name == "yellow"
    assert server.zmq is context_service
    assert not top.running and server.address is None
