"""RegistryView: a watch on one yellow, kept in sync and failed over, with no sockets.

The view runs its real ``YellowLink`` over a fake ZeroMQ context: each socket
records the messages the view sends, and the test plays the yellow by
delivering replies and updates to it. Time is a ``task.Clock``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import zmq
from twisted.internet import defer

from mmo.registry import RegistryView
from mmo.testing import FakeZmqContext, FakeZmqSocket
from mmo.wire import decode, encode
from mmo.wire.gen.mmo.ttypes import Change, Instance, RegistryMessage, RegistryOp

Y1, Y2 = "tcp://127.0.0.1:5555", "tcp://127.0.0.1:5556"
RENEW, QUIET, SETTLE = 1.0, 3.0, 4.0


def told(sock: FakeZmqSocket) -> list[RegistryMessage]:
    """The messages the view sent on ``sock``, in order."""
    return [decode(RegistryMessage, frames[-1]) for frames in sock.sent]


def watches(sock: FakeZmqSocket) -> list[RegistryMessage]:
    """The WATCH messages the view sent on ``sock``."""
    return [m for m in told(sock) if m.op == RegistryOp.WATCH]


def deliver(sock: FakeZmqSocket, **fields: Any) -> None:
    """Hand the view a RegistryMessage of ``fields`` as if the yellow had sent it on ``sock``."""
    sock.deliver([encode(RegistryMessage(**fields))])


def inst(iid: str, service: str = "echo", load: int = 0) -> Instance:
    return Instance(
        service_name=service,
        instance_id=iid,
        endpoints={"rep": f"tcp://127.0.0.1:60{len(iid):02d}"},
        meta={},
        ttl_ms=3000 + load,
    )


def answer(sock: FakeZmqSocket, op: int, yellow_id: str, seq: int, **fields: Any) -> None:
    """Answer the last WATCH on ``sock`` with ``op``, from ``yellow_id`` at ``seq``."""
    request_id = watches(sock)[-1].request_id
    deliver(sock, op=op, request_id=request_id, yellow_id=yellow_id, seq=seq, **fields)


def snapshot(sock: FakeZmqSocket, yellow_id: str, seq: int, instances: list[Instance]) -> None:
    """Answer the last WATCH on ``sock`` with a SNAPSHOT."""
    answer(sock, RegistryOp.SNAPSHOT, yellow_id, seq, instances=instances)


def ack(sock: FakeZmqSocket, yellow_id: str, seq: int) -> None:
    """Answer the last WATCH on ``sock`` with an ACK (a renewed lease)."""
    answer(sock, RegistryOp.ACK, yellow_id, seq)


def update(
    sock: FakeZmqSocket, yellow_id: str, seq: int, change: int, instance: Instance, reason: str
) -> None:
    """Push one UPDATE to the view."""
    deliver(
        sock,
        op=RegistryOp.UPDATE,
        yellow_id=yellow_id,
        seq=seq,
        change=change,
        instance=instance,
        reason=reason,
    )


def ids(view: RegistryView, service: str = "echo") -> list[str]:
    return sorted(i.instance_id for i in view.get(service))


@pytest.fixture
def ctx() -> Iterator[FakeZmqContext]:
    """The view's ZeroMQ context; every socket it made is a DEALER with a callback."""
    ctx = FakeZmqContext()
    yield ctx
    assert all(s.socket_type == zmq.DEALER and s.on_message for s in ctx.sockets)


@pytest.fixture
def events() -> list[tuple[int, str, str]]:
    return []


def start_view(
    ctx: FakeZmqContext, events: list[tuple[int, str, str]], yellows: list[str]
) -> RegistryView:
    view = RegistryView(ctx, yellows, renew=RENEW, quiet=QUIET, settle=SETTLE)  # type: ignore[arg-type]
    view.listen(
        lambda change, instance, reason: events.append((change, instance.instance_id, reason))
    )
    view.startService()
    return view


@pytest.fixture
def view(ctx: FakeZmqContext, events: list[tuple[int, str, str]]) -> Iterator[RegistryView]:
    view = start_view(ctx, events, [Y1])
    yield view
    if view.running:
        view.stopService()


@pytest.fixture
def synced(view: RegistryView, ctx: FakeZmqContext) -> RegistryView:
    """A view holding a snapshot of yellow "A" at seq 5 with instances a and b."""
    snapshot(ctx.last, "A", 5, [inst("a"), inst("b")])
    return view


# -- sync ---------------------------------------------------------------------


def test_start_asks_first_yellow_for_snapshot(view: RegistryView, ctx: FakeZmqContext) -> None:
    """On start the view connects to the first yellow and sends a WATCH with no yellow_id."""
    assert [s.connected for s in ctx.sockets] == [[Y1]]
    (watch,) = told(ctx.last)
    assert watch.op == RegistryOp.WATCH
    assert watch.yellow_id is None
    assert view.synced is False
    assert view.get("echo") == []


def test_no_yellow_is_refused(ctx: FakeZmqContext) -> None:
    """A view with no yellow address is refused at construction."""
    with pytest.raises(ValueError, match="yellow"):
        RegistryView(ctx, [])  # type: ignore[arg-type]


def test_snapshot_fills_view(view: RegistryView, ctx: FakeZmqContext, events: list[Any]) -> None:
    """A SNAPSHOT fills the view, marks it synced and tells listeners of each instance."""
    snapshot(ctx.last, "A", 5, [inst("a"), inst("b"), inst("s", service="sso")])
    assert view.synced is True
    assert ids(view) == ["a", "b"]
    assert ids(view, "sso") == ["s"]
    assert sorted(events) == [
        (Change.UP, "a", "registered"),
        (Change.UP, "b", "registered"),
        (Change.UP, "s", "registered"),
    ]


def test_renewal_reports_position(synced: RegistryView, ctx: FakeZmqContext) -> None:
    """Each renewal is a WATCH carrying the yellow_id and seq the view is current at."""
    ctx.reactor.advance(RENEW)
    renewal = watches(ctx.last)[-1]
    assert (renewal.yellow_id, renewal.seq) == ("A", 5)
    ack(ctx.last, "A", 5)
    assert len(watches(ctx.last)) == 2  # an up-to-date ACK asks for nothing more
    ctx.reactor.advance(RENEW)
    assert watches(ctx.last)[-1].yellow_id == "A"


def test_updates_apply_in_order(
    synced: RegistryView, ctx: FakeZmqContext, events: list[Any]
) -> None:
    """UPDATEs with seq+1 apply in order and listeners get (change, instance, reason)."""
    events.clear()
    sock = ctx.last
    update(sock, "A", 6, Change.UP, inst("c"), "registered")
    update(sock, "A", 7, Change.UP, inst("a", load=1), "changed")
    update(sock, "A", 8, Change.DOWN, inst("b"), "deregistered")
    update(sock, "A", 9, Change.DOWN, inst("c"), "expired")
    assert events == [
        (Change.UP, "c", "registered"),
        (Change.UP, "a", "changed"),
        (Change.DOWN, "b", "deregistered"),
        (Change.DOWN, "c", "expired"),
    ]
    assert ids(synced) == ["a"]
    assert synced.get("echo")[0].ttl_ms == 3001
    assert len(watches(sock)) == 1  # no re-snapshot was needed


def test_listener_sees_instance_record(synced: RegistryView, ctx: FakeZmqContext) -> None:
    """Listeners receive the Instance itself, endpoints included."""
    got: list[Instance] = []
    synced.listen(lambda change, instance, reason: got.append(instance))
    update(ctx.last, "A", 6, Change.UP, inst("new"), "registered")
    assert got == [inst("new")]


def test_last_instance_down_empties_service(synced: RegistryView, ctx: FakeZmqContext) -> None:
    """When a service's last instance goes down, the service has no instances left."""
    update(ctx.last, "A", 6, Change.DOWN, inst("a"), "deregistered")
    update(ctx.last, "A", 7, Change.DOWN, inst("b"), "deregistered")
    assert synced.get("echo") == []
    assert "echo" not in synced.instances


def test_failing_listener_does_not_stop_others(synced: RegistryView, ctx: FakeZmqContext) -> None:
    """A listener that raises does not keep later listeners or the view from updating."""
    seen: list[str] = []

    def broken(change: int, instance: Instance, reason: str) -> None:
        raise RuntimeError("listener bug")

    synced.listen(broken)
    synced.listen(lambda change, instance, reason: seen.append(instance.instance_id))
    update(ctx.last, "A", 6, Change.UP, inst("c"), "registered")
    update(ctx.last, "A", 7, Change.UP, inst("d"), "registered")
    assert seen == ["c", "d"]
    assert ids(synced) == ["a", "b", "c", "d"]


# -- lost updates ----------------------------------------------------------------


def test_seq_gap_asks_for_new_snapshot(
    synced: RegistryView, ctx: FakeZmqContext, events: list[Any]
) -> None:
    """An UPDATE skipping a seq is not applied; the view asks for a snapshot (no yellow_id)."""
    events.clear()
    sock = ctx.last
    update(sock, "A", 7, Change.UP, inst("c"), "registered")
    assert events == []
    assert ids(synced) == ["a", "b"]
    resync = watches(sock)[-1]
    assert len(watches(sock)) == 2
    assert resync.yellow_id is None
    # Updates that race the re-snapshot are ignored: the snapshot will include them.
    update(sock, "A", 8, Change.UP, inst("d"), "registered")
    assert ids(synced) == ["a", "b"]
    snapshot(sock, "A", 8, [inst("a"), inst("b"), inst("c"), inst("d")])
    assert ids(synced) == ["a", "b", "c", "d"]
    update(sock, "A", 9, Change.UP, inst("e"), "registered")
    assert "e" in ids(synced)


def test_resnapshot_after_gap_drops_missing_at_once(
    synced: RegistryView, ctx: FakeZmqContext, events: list[Any]
) -> None:
    """After a lost update, the same yellow's new snapshot is complete: what it lacks goes now."""
    events.clear()
    sock = ctx.last
    update(sock, "A", 7, Change.UP, inst("c"), "registered")  # seq 6 (b leaving) was lost
    snapshot(sock, "A", 7, [inst("a"), inst("c")])
    assert ids(synced) == ["a", "c"]
    assert sorted(events) == [(Change.UP, "c", "registered"), (Change.DOWN, "b", "expired")]
    ctx.reactor.pump([RENEW] * int(2 * SETTLE / RENEW))
    assert len(events) == 2  # nothing more is reported later


def test_duplicate_update_asks_for_new_snapshot(synced: RegistryView, ctx: FakeZmqContext) -> None:
    """An UPDATE with an old seq is not applied twice; the view re-syncs instead."""
    sock = ctx.last
    update(sock, "A", 6, Change.DOWN, inst("a"), "deregistered")
    update(sock, "A", 6, Change.DOWN, inst("a"), "deregistered")
    assert watches(sock)[-1].yellow_id is None
    assert len(watches(sock)) == 2


def test_ack_ahead_of_view_asks_for_new_snapshot(synced: RegistryView, ctx: FakeZmqContext) -> None:
    """A renewal ACK with a seq above the view's (an update was lost) triggers a re-snapshot."""
    ctx.reactor.advance(RENEW)
    ack(ctx.last, "A", 7)
    renewals = watches(ctx.last)
    assert len(renewals) == 3
    assert renewals[-1].yellow_id is None


def test_updates_from_another_yellow_are_ignored(
    synced: RegistryView, ctx: FakeZmqContext, events: list[Any]
) -> None:
    """An UPDATE stamped with a yellow_id the view does not follow changes nothing."""
    events.clear()
    update(ctx.last, "B", 6, Change.DOWN, inst("a"), "deregistered")
    assert events == []
    assert ids(synced) == ["a", "b"]


def test_snapshot_from_same_yellow_drops_missing_at_once(
    synced: RegistryView, ctx: FakeZmqContext, events: list[Any]
) -> None:
    """A fresh snapshot from the same yellow (a lapsed lease) drops what it lacks at once."""
    events.clear()
    ctx.reactor.advance(RENEW)
    snapshot(ctx.last, "A", 9, [inst("a"), inst("c")])
    assert ids(synced) == ["a", "c"]
    assert sorted(events) == [(Change.UP, "c", "registered"), (Change.DOWN, "b", "expired")]


# -- yellow restart ------------------------------------------------------------------


def restart(view: RegistryView, ctx: FakeZmqContext, instances: list[Instance]) -> None:
    """The yellow restarted as "A2": its answer to the next renewal is a snapshot."""
    ctx.reactor.advance(RENEW)
    assert watches(ctx.last)[-1].yellow_id == "A"
    snapshot(ctx.last, "A2", 1, instances)


def test_restart_keeps_missing_until_settled(
    synced: RegistryView, ctx: FakeZmqContext, events: list[Any]
) -> None:
    """After a yellow restart, an instance missing from its snapshot stays until settled."""
    events.clear()
    restart(synced, ctx, [inst("a")])
    assert ids(synced) == ["a", "b"]
    assert events == []
    ctx.reactor.advance(SETTLE - 0.01)
    ack(ctx.last, "A2", 1)
    assert ids(synced) == ["a", "b"]
    assert events == []
    ctx.reactor.advance(0.01)
    assert ids(synced) == ["a"]
    assert events == [(Change.DOWN, "b", "vanished")]


def test_restart_instance_that_reregisters_is_kept(
    synced: RegistryView, ctx: FakeZmqContext, events: list[Any]
) -> None:
    """An instance that re-registers with the restarted yellow within the settle period is kept."""
    events.clear()
    restart(synced, ctx, [inst("a")])
    update(ctx.last, "A2", 2, Change.UP, inst("b"), "registered")
    ctx.reactor.pump([RENEW] * int((SETTLE + RENEW) / RENEW))
    assert ids(synced) == ["a", "b"]
    assert events == []  # the same record: no spurious DOWN then UP


def test_restart_instance_gone_for_good_is_reported_once(
    synced: RegistryView, ctx: FakeZmqContext, events: list[Any]
) -> None:
    """A missing instance is dropped exactly once, even after more renewals and snapshots."""
    events.clear()
    restart(synced, ctx, [inst("a")])
    for _ in range(int(SETTLE / RENEW) + 3):
        ctx.reactor.advance(RENEW)
        ack(ctx.last, "A2", 1)
    assert events == [(Change.DOWN, "b", "vanished")]
    assert ids(synced) == ["a"]


def test_restart_new_instances_apply_at_once(
    synced: RegistryView, ctx: FakeZmqContext, events: list[Any]
) -> None:
    """New or changed instances in the restarted yellow's snapshot apply without waiting."""
    events.clear()
    restart(synced, ctx, [inst("a", load=5), inst("c")])
    assert sorted(events) == [(Change.UP, "a", "registered"), (Change.UP, "c", "registered")]
    assert synced.get("echo")[0].ttl_ms in (3000, 3005)
    assert {i.instance_id: i.ttl_ms for i in synced.get("echo")}["a"] == 3005


# -- wait_for ------------------------------------------------------------------------


def outcome(d: defer.Deferred[Any]) -> list[Any]:
    result: list[Any] = []
    d.addBoth(result.append)
    return result


def test_wait_for_true_fires_at_once(synced: RegistryView) -> None:
    """wait_for with a predicate that already holds has fired when it returns."""
    assert outcome(synced.wait_for(lambda: "a" in ids(synced))) == [None]


def test_wait_for_fires_on_change(view: RegistryView, ctx: FakeZmqContext) -> None:
    """wait_for fires as soon as a snapshot or update makes the predicate true."""
    synced = outcome(view.wait_for(lambda: view.synced, timeout=5))
    has_c = outcome(view.wait_for(lambda: "c" in ids(view), timeout=5))
    assert synced == [] and has_c == []
    snapshot(ctx.last, "A", 1, [inst("a")])
    assert synced == [None]
    assert has_c == []
    update(ctx.last, "A", 2, Change.UP, inst("c"), "registered")
    assert has_c == [None]


def test_wait_for_times_out(synced: RegistryView, ctx: FakeZmqContext) -> None:
    """wait_for fails with a TimeoutError after ``timeout`` seconds, not before."""
    result = outcome(synced.wait_for(lambda: "zz" in ids(synced), timeout=2.5))
    ctx.reactor.advance(2.4)
    assert result == []
    ctx.reactor.advance(0.1)
    assert len(result) == 1
    assert result[0].check(defer.TimeoutError)
    update(ctx.last, "A", 6, Change.UP, inst("zz"), "registered")  # too late: no double fire
    assert len(result) == 1


# -- fail-over ---------------------------------------------------------------------


def test_quiet_yellow_fails_over_to_next(ctx: FakeZmqContext, events: list[Any]) -> None:
    """With two yellows, one silent for more than ``quiet`` seconds is left for the next."""
    view = start_view(ctx, events, [Y1, Y2])
    first = ctx.last
    ctx.reactor.pump([RENEW] * int(QUIET / RENEW))  # silent for exactly `quiet`: patient
    assert [s.connected for s in ctx.sockets] == [[Y1]]
    ctx.reactor.advance(RENEW)
    assert [s.connected for s in ctx.sockets] == [[Y1], [Y2]]
    assert first.closed
    watch = watches(ctx.last)[-1]
    assert watch.yellow_id is None
    snapshot(ctx.last, "B", 3, [inst("a")])
    assert view.synced and ids(view) == ["a"]
    view.stopService()


def test_a_view_is_fresh_while_its_yellow_speaks(view: RegistryView, ctx: FakeZmqContext) -> None:
    """Fresh once synced, as long as the yellow answers; stale after ``quiet`` seconds of
    silence (what it lists may be gone), fresh again at the next answer."""
    assert not view.fresh
    snapshot(ctx.last, "A", 1, [inst("a")])
    assert view.fresh
    ctx.reactor.pump([RENEW] * int(QUIET / RENEW))
    assert view.fresh
    ctx.reactor.advance(RENEW)
    assert not view.fresh and ids(view) == ["a"]
    ack(ctx.last, "A", 1)
    assert view.fresh


def test_answering_yellow_is_kept(ctx: FakeZmqContext, events: list[Any]) -> None:
    """A yellow that answers every renewal is never failed over from."""
    view = start_view(ctx, events, [Y1, Y2])
    snapshot(ctx.last, "A", 1, [])
    for _ in range(20):
        ctx.reactor.advance(RENEW)
        ack(ctx.last, "A", 1)
    assert [s.connected for s in ctx.sockets] == [[Y1]]
    view.stopService()


def test_single_yellow_is_never_abandoned(view: RegistryView, ctx: FakeZmqContext) -> None:
    """With one yellow, silence means retrying it: renewals keep coming on the same link."""
    ctx.reactor.pump([RENEW] * 30)
    assert len(ctx.sockets) == 1
    assert len(watches(ctx.last)) == 31
    assert all(w.yellow_id is None for w in watches(ctx.last))
    snapshot(ctx.last, "A", 1, [inst("a")])
    assert view.synced


def test_fail_over_wraps_around(ctx: FakeZmqContext, events: list[Any]) -> None:
    """When every yellow is quiet the view cycles through them and back to the first."""
    view = start_view(ctx, events, [Y1, Y2])
    ctx.reactor.pump([RENEW] * int(2 * (QUIET + RENEW) / RENEW))
    assert [s.connected for s in ctx.sockets] == [[Y1], [Y2], [Y1]]
    assert [s.closed for s in ctx.sockets] == [True, True, False]
    view.stopService()


def test_fail_over_keeps_instances_until_settled(ctx: FakeZmqContext, events: list[Any]) -> None:
    """After failing over, instances the new yellow has not heard of yet are kept to settle."""
    view = start_view(ctx, events, [Y1, Y2])
    snapshot(ctx.last, "A", 4, [inst("a"), inst("b")])
    ctx.reactor.pump([RENEW] * int((QUIET + RENEW) / RENEW))
    assert ctx.last.connected == [Y2]
    watch = watches(ctx.last)[-1]
    assert (watch.yellow_id, watch.seq) == ("A", 4)
    snapshot(ctx.last, "B", 10, [inst("a")])
    events.clear()
    assert ids(view) == ["a", "b"]
    for _ in range(int(SETTLE / RENEW) - 1):
        ctx.reactor.advance(RENEW)
        ack(ctx.last, "B", 10)
    assert ids(view) == ["a", "b"]
    ctx.reactor.advance(RENEW)
    assert ctx.last.connected == [Y2]
    assert ids(view) == ["a"]
    assert events == [(Change.DOWN, "b", "vanished")]
    view.stopService()


def test_updates_on_abandoned_link_are_ignored(ctx: FakeZmqContext, events: list[Any]) -> None:
    """After a fail-over, a late UPDATE arriving on the old link changes nothing."""
    view = start_view(ctx, events, [Y1, Y2])
    old = ctx.last
    snapshot(old, "A", 1, [inst("a")])
    ctx.reactor.pump([RENEW] * int((QUIET + RENEW) / RENEW))
    events.clear()
    old.on_message(
        [
            encode(
                RegistryMessage(
                    op=RegistryOp.UPDATE,
                    yellow_id="A",
                    seq=2,
                    change=Change.DOWN,
                    instance=inst("a"),
                    reason="deregistered",
                )
            )
        ]
    )
    assert events == []
    assert ids(view) == ["a"]
    view.stopService()


# -- stop ----------------------------------------------------------------------------


def test_stop_unwatches_and_closes(synced: RegistryView, ctx: FakeZmqContext) -> None:
    """Stopping sends UNWATCH, closes the link and sends nothing more afterwards."""
    sock = ctx.last
    synced.stopService()
    assert told(sock)[-1].op == RegistryOp.UNWATCH
    assert sock.closed
    sent = len(sock.sent)
    ctx.reactor.pump([RENEW] * 10)
    assert len(sock.sent) == sent
    assert ctx.reactor.getDelayedCalls() == []


def test_stop_during_settle_cancels_it(
    synced: RegistryView, ctx: FakeZmqContext, events: list[Any]
) -> None:
    """Stopping while instances are settling leaves no timer behind and reports nothing."""
    events.clear()
    restart(synced, ctx, [inst("a")])
    synced.stopService()
    ctx.reactor.pump([RENEW] * int(2 * SETTLE / RENEW))
    assert events == []
    assert ctx.reactor.getDelayedCalls() == []
