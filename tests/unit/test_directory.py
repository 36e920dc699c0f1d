"""The Directory and its parts (links, calls, pub-sub), with no sockets and no reactor.

A real :class:`~mmo.logic.client.Directory` runs over a fake ZeroMQ context: every
socket records what it is connected to and what it sends, and the test plays both
the yellow (snapshots and updates to the registry view) and the instances (connection
events, replies, errors, events). Time is a ``task.Clock``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import zmq
from twisted.internet import defer
from twisted.logger import capturedLogs

from mmo.errors import DeadlineExceeded, InstanceLost, NoLiveInstance
from mmo.logic.client import Directory, get_service
from mmo.registry import make_instance
from mmo.testing import failure_of
from mmo.testing.fakes import result_of
from mmo.testing.sockets import FakeZmqContext, FakeZmqSocket
from mmo.wire import decode, decode_value, encode, encode_value
from mmo.wire.gen.mmo.ttypes import (
    Change,
    ErrorCode,
    Header,
    Instance,
    Kind,
    RegistryMessage,
    RegistryOp,
    Session,
)

YELLOW = "tcp://yellow.test:7000"


def link_to(ctx: FakeZmqContext, address: str) -> FakeZmqSocket:
    """The open DEALER socket connected to ``address`` (a link to an instance, or the
    registry view's to the yellow)."""
    (sock,) = [s for s in ctx.of_type(zmq.DEALER) if address in s.connected and not s.closed]
    return sock


def requests(sock: FakeZmqSocket) -> list[Header]:
    """The headers of the messages sent on ``sock``."""
    return [decode(Header, frames[0]) for frames in sock.sent]


def inst(iid: str, service: str = "echo", idempotent: tuple[str, ...] = ()) -> Instance:
    """An instance with a rep, a pull and a pub endpoint (named after it)."""
    endpoints = {kind: f"tcp://{iid}.test:{port}" for kind, port in REP_PULL_PUB.items()}
    return make_instance(service, iid, endpoints, {"idempotent": list(idempotent)})


REP_PULL_PUB = {"rep": 1, "pull": 2, "pub": 3}


def rep(iid: str) -> str:
    return f"tcp://{iid}.test:1"


class Yellow:
    """Plays the yellow the directory's registry view watches."""

    def __init__(self, ctx: FakeZmqContext) -> None:
        self.ctx = ctx
        self.seq = 0

    @property
    def socket(self) -> FakeZmqSocket:
        return link_to(self.ctx, YELLOW)

    def snapshot(self, *instances: Instance) -> None:
        """Answer the view's last WATCH with every live instance (an old yellow: warm)."""
        watch = decode(RegistryMessage, self.socket.sent[-1][-1])
        assert watch.op == RegistryOp.WATCH
        self.socket.deliver(
            [
                encode(
                    RegistryMessage(
                        op=RegistryOp.SNAPSHOT,
                        request_id=watch.request_id,
                        yellow_id="Y",
                        seq=self.seq,
                        instances=list(instances),
                        uptime_ms=60_000,
                    )
                )
            ]
        )

    def change(self, change: int, instance: Instance, reason: str) -> None:
        """Push one update (UP, or DOWN with ``deregistered``/``expired``)."""
        self.seq += 1
        self.socket.deliver(
            [
                encode(
                    RegistryMessage(
                        op=RegistryOp.UPDATE,
                        yellow_id="Y",
                        seq=self.seq,
                        change=change,
                        instance=instance,
                        reason=reason,
                    )
                )
            ]
        )


def reply(sock: FakeZmqSocket, request: Header, value: Any) -> None:
    """The instance answers ``request`` with ``value``."""
    sock.deliver([encode(Header(kind=Kind.REPLY, call_id=request.call_id)), encode_value(value)])


def error(sock: FakeZmqSocket, request: Header, code: int, kind: str, message: str) -> None:
    """The instance answers ``request`` with an ERROR."""
    header = Header(
        kind=Kind.ERROR,
        call_id=request.call_id,
        error_code=code,
        error_type=kind,
        error_message=message,
    )
    sock.deliver([encode(header), b""])


def fired(d: defer.Deferred[Any]) -> bool:
    return bool(d.called)


def ignore(d: defer.Deferred[Any]) -> None:
    """A call the test leaves unanswered (the directory's stop fails it)."""
    d.addErrback(lambda _: None)


@pytest.fixture
def ctx() -> FakeZmqContext:
    return FakeZmqContext()


@pytest.fixture
def yellow(ctx: FakeZmqContext) -> Yellow:
    return Yellow(ctx)


@pytest.fixture
def directory(ctx: FakeZmqContext) -> Iterator[Directory]:
    """A started Directory over the fake context (the process's current one)."""
    made = Directory(ctx, [YELLOW], caller_id="tester", caller_role="tool")  # type: ignore[arg-type]
    made.startService()
    yield made
    if made.running:
        made.stopService()


def live(
    directory: Directory, ctx: FakeZmqContext, yellow: Yellow, *instances: Instance
) -> list[FakeZmqSocket]:
    """The registry lists ``instances``; their links are open and connected."""
    yellow.snapshot(*instances)
    for service in {i.service_name for i in instances}:
        directory.links(service)
    links = [link_to(ctx, rep(i.instance_id)) for i in instances]
    for link in links:
        link.link_up()
    return links


# -- calls ---------------------------------------------------------------------------


def test_a_call_fires_with_the_reply_of_the_instance_it_went_to(
    directory: Directory, ctx: FakeZmqContext, yellow: Yellow
) -> None:
    """The request names the caller, its role and the method, carries the arguments and
    the remaining deadline; the reply is decoded."""
    (link,) = live(directory, ctx, yellow, inst("echo-a"))
    d = directory.call("echo", "whoami", {"n": 1}, timeout=2.0)
    (request,) = requests(link)
    assert (request.kind, request.service_name, request.method) == (Kind.REQUEST, "echo", "whoami")
    assert (request.caller, request.caller_role, request.timeout_ms) == ("tester", "tool", 2000)
    assert decode_value(link.sent[0][1]) == {"n": 1}
    assert not fired(d)
    reply(link, request, {"me": "echo-a"})
    assert result_of(d) == {"me": "echo-a"}


def test_a_call_without_an_answer_fails_at_its_deadline_and_a_late_reply_is_dropped(
    directory: Directory, ctx: FakeZmqContext, yellow: Yellow
) -> None:
    """No answer within the timeout: DeadlineExceeded naming the instance; the reply that
    comes after changes nothing and is counted as late."""
    (link,) = live(directory, ctx, yellow, inst("echo-a"))
    d = directory.call("echo", "slow", timeout=2.0)
    ctx.reactor.advance(1.9)
    assert not fired(d)
    ctx.reactor.advance(0.2)
    e = failure_of(d)
    assert isinstance(e, DeadlineExceeded)
    assert "echo.slow got no answer within 2s (on echo-a)" in str(e)
    assert directory.stats()["echo"]["echo-a"]["outstanding"] == 0
    reply(link, requests(link)[0], "too late")
    assert directory.late_replies == 1


def test_a_forwarded_call_hands_its_outcome_to_its_callback_once(
    directory: Directory, ctx: FakeZmqContext, yellow: Yellow
) -> None:
    """forward (a broker's players' requests): the body goes out as it is, the reply's
    body comes back undecoded to ``done``; an unanswered one gets its DeadlineExceeded
    there, once, and a reply after it changes nothing; what ``done`` raises is logged
    and the next calls are served."""
    (link,) = live(directory, ctx, yellow, inst("echo-a"))
    outcomes: list[tuple[Any, Any]] = []
    body = encode_value({"n": 1})
    directory.forward("echo", "whoami", body, lambda *o: outcomes.append(o), timeout=2.0)
    directory.forward("echo", "slow", body, lambda *o: outcomes.append(o), timeout=2.0)
    first, slow = requests(link)
    assert link.sent[0][1] == body and not outcomes
    reply(link, first, {"me": "echo-a"})
    assert outcomes == [(encode_value({"me": "echo-a"}), None)]
    ctx.reactor.advance(2.1)
    assert outcomes[1][0] is None and isinstance(outcomes[1][1], DeadlineExceeded)
    reply(link, slow, "too late")
    assert len(outcomes) == 2 and directory.late_replies == 1

    def broken(reply: Any, error: Any) -> None:
        raise RuntimeError("a bug in the caller")

    directory.forward("echo", "whoami", body, broken, timeout=2.0)
    with capturedLogs() as events:
        reply(link, requests(link)[-1], "x")
    assert any(e.get("log_failure") is not None for e in events)
    d = directory.call("echo", "whoami", timeout=2.0)
    reply(link, requests(link)[-1], "still served")
    assert result_of(d) == "still served"


def test_a_call_waits_for_the_first_snapshot_and_says_when_the_registry_never_answered(
    directory: Directory, ctx: FakeZmqContext, yellow: Yellow
) -> None:
    """Made before the registry answered, a call is sent once it does; if it never does,
    the call's error says the registry did not answer."""
    early = directory.call("echo", "whoami", timeout=5.0)
    yellow.snapshot(inst("echo-a"))
    link = link_to(ctx, rep("echo-a"))
    reply(link, requests(link)[0], "a")
    assert result_of(early) == "a"

    other = FakeZmqContext()
    lonely = Directory(other, [YELLOW], caller_id="lonely")  # type: ignore[arg-type]
    lonely.startService()
    try:
        d = lonely.call("echo", "whoami", timeout=3.0)
        other.reactor.advance(3.0)
        e = failure_of(d)
        assert isinstance(e, DeadlineExceeded)
        assert f"no answer from the registry at {YELLOW}" in str(e)
    finally:
        lonely.stopService()


def test_calls_go_to_the_connected_instances_with_the_fewest_outstanding(
    directory: Directory, ctx: FakeZmqContext, yellow: Yellow
) -> None:
    """Calls spread over the connected instances by calls outstanding; one whose link is
    not up gets none while others are up."""
    a, b = live(directory, ctx, yellow, inst("echo-a"), inst("echo-b"))
    directory.links("echo")
    yellow.change(Change.UP, inst("echo-c"), "registered")
    c = link_to(ctx, rep("echo-c"))  # opened, never connected
    for _ in range(4):
        ignore(directory.call("echo", "work"))
    assert (len(a.sent), len(b.sent), len(c.sent)) == (2, 2, 0)
    for request in requests(a):
        reply(a, request, None)
    ignore(directory.call("echo", "work"))
    assert (len(a.sent), len(b.sent), len(c.sent)) == (3, 2, 0)
    assert directory.links("echo") == {"echo-a": True, "echo-b": True, "echo-c": False}


def test_a_sessions_requests_stick_to_one_instance_unless_the_method_is_idempotent(
    directory: Directory, ctx: FakeZmqContext, yellow: Yellow
) -> None:
    """A player's non-idempotent request (with its client seq) goes to the instance its
    session hashes to, however busy; an idempotent one goes by load."""
    links = live(
        directory, ctx, yellow, inst("shop-a", "shop", ("look",)), inst("shop-b", "shop", ("look",))
    )
    session = Session(id="session-42")
    for seq in range(1, 6):
        ignore(directory.call("shop", "buy", session=session, client_seq=seq))
    assert sorted(len(link.sent) for link in links) == [0, 5]
    for seq in range(6, 10):
        ignore(directory.call("shop", "look", session=session, client_seq=seq))
    assert sorted(len(link.sent) for link in links) == [4, 5]


def test_a_call_to_a_bound_instance_that_is_gone_fails_with_no_live_instance(
    directory: Directory, ctx: FakeZmqContext, yellow: Yellow
) -> None:
    """``instance=`` calls that instance only: if it is not live, the call fails at once."""
    (link,) = live(directory, ctx, yellow, inst("echo-a"))
    e = failure_of(directory.call("echo", "whoami", instance="echo-zz"))
    assert isinstance(e, NoLiveInstance)
    assert "no instance 'echo-zz' of service 'echo'" in str(e)
    assert link.sent == []
    assert isinstance(failure_of(directory.call("nosuch", "x")), NoLiveInstance)


def test_cancelling_a_call_frees_its_place(
    directory: Directory, ctx: FakeZmqContext, yellow: Yellow
) -> None:
    """A cancelled call is no longer outstanding; its reply, if it comes, is late."""
    (link,) = live(directory, ctx, yellow, inst("echo-a"))
    d = directory.call("echo", "slow", timeout=10.0)
    d.cancel()
    assert isinstance(failure_of(d), defer.CancelledError)
    assert directory.stats()["echo"]["echo-a"]["outstanding"] == 0
    reply(link, requests(link)[0], None)
    assert directory.late_replies == 1


# -- instances that die or leave ------------------------------------------------------------


def test_an_idempotent_call_moves_to_another_instance_when_its_instance_dies(
    directory: Directory, ctx: FakeZmqContext, yellow: Yellow
) -> None:
    """The link drops with calls in flight: an idempotent one is resent elsewhere and
    fires with that reply; a non-idempotent one fails with InstanceLost."""
    (a,) = live(directory, ctx, yellow, inst("echo-a", idempotent=("get",)))
    yellow.change(Change.UP, inst("echo-b"), "registered")
    b = link_to(ctx, rep("echo-b"))
    safe = directory.call("echo", "get")
    unsafe = directory.call("echo", "buy")
    assert [r.method for r in requests(a)] == ["get", "buy"] and b.sent == []
    b.link_up()
    a.link_down()
    (resent,) = requests(b)
    assert (resent.method, resent.call_id) == ("get", requests(a)[0].call_id)
    reply(b, resent, "got")
    assert result_of(safe) == "got"
    e = failure_of(unsafe)
    assert isinstance(e, InstanceLost)
    assert "instance echo-a of 'echo' was lost (its connection dropped)" in str(e)
    assert "it may or may not have run" in str(e)


def test_an_idempotent_call_is_tried_on_three_instances_at_most(
    directory: Directory, ctx: FakeZmqContext, yellow: Yellow
) -> None:
    """Each instance it is sent to dies: after the third, the call fails with InstanceLost
    (a fourth live instance is not tried)."""
    links = live(directory, ctx, yellow, *(inst(f"echo-{n}", idempotent=("get",)) for n in "abcd"))
    d = directory.call("echo", "get")
    dropped: list[FakeZmqSocket] = []
    for _ in range(3):
        assert not fired(d)
        (holder,) = [link for link in links if link.sent and link not in dropped]
        holder.link_down()
        dropped.append(holder)
    assert isinstance(failure_of(d), InstanceLost)
    assert sum(len(link.sent) for link in links) == 3


def test_an_instance_that_is_stopping_hands_the_call_to_another_and_gets_no_more(
    directory: Directory, ctx: FakeZmqContext, yellow: Yellow
) -> None:
    """An instance answering UNAVAILABLE ran nothing: the call goes to another instance,
    and the stopping one gets no new calls."""
    (a,) = live(directory, ctx, yellow, inst("echo-a"))
    yellow.change(Change.UP, inst("echo-b"), "registered")
    b = link_to(ctx, rep("echo-b"))
    d = directory.call("echo", "buy")
    b.link_up()
    error(a, requests(a)[0], ErrorCode.UNAVAILABLE, "Unavailable", "stopping")
    (moved,) = requests(b)
    reply(b, moved, "bought")
    assert result_of(d) == "bought"
    assert directory.links("echo") == {"echo-b": True}
    for _ in range(3):
        ignore(directory.call("echo", "buy"))
    assert (len(a.sent), len(b.sent)) == (1, 4)


def test_a_deregistered_instance_answers_what_it_holds_then_its_link_closes(
    directory: Directory, ctx: FakeZmqContext, yellow: Yellow
) -> None:
    """A graceful stop (deregistered while connected): new calls go elsewhere, the call
    in flight still gets its answer, then the link is closed."""
    a, b = live(directory, ctx, yellow, inst("echo-a"), inst("echo-b"))
    first = directory.call("echo", "buy", instance="echo-a")
    yellow.change(Change.DOWN, inst("echo-a"), "deregistered")
    assert not a.closed
    for _ in range(3):
        ignore(directory.call("echo", "buy"))
    assert (len(a.sent), len(b.sent)) == (1, 3)
    reply(a, requests(a)[0], "bought")
    assert result_of(first) == "bought"
    assert a.closed


def test_an_expired_instance_fails_its_calls_at_once(
    directory: Directory, ctx: FakeZmqContext, yellow: Yellow
) -> None:
    """The registry expires an instance (a crash): its calls fail now, not at their
    deadline, its link is closed, and the service has no instance left."""
    (a,) = live(directory, ctx, yellow, inst("echo-a"))
    d = directory.call("echo", "buy", timeout=30.0)
    yellow.change(Change.DOWN, inst("echo-a"), "expired")
    e = failure_of(d)
    assert isinstance(e, InstanceLost) and "(expired)" in str(e)
    assert a.closed
    assert isinstance(failure_of(directory.call("echo", "buy")), NoLiveInstance)


def test_an_instance_restarted_on_new_ports_gets_a_new_link(
    directory: Directory, ctx: FakeZmqContext, yellow: Yellow
) -> None:
    """The same instance id registered with another rep endpoint: calls on the old link
    are lost, the old link closed, a new one opened."""
    (old,) = live(directory, ctx, yellow, inst("echo-a"))
    d = directory.call("echo", "buy")
    moved = make_instance("echo", "echo-a", {"rep": "tcp://echo-a.test:9"}, {})
    yellow.change(Change.UP, moved, "registered")
    assert isinstance(failure_of(d), InstanceLost)
    assert old.closed
    assert not link_to(ctx, "tcp://echo-a.test:9").closed


# -- one-way requests ------------------------------------------------------------------------


def test_send_reaches_the_chosen_instance_or_reports_none(
    directory: Directory, ctx: FakeZmqContext, yellow: Yellow
) -> None:
    """``send`` goes one-way to the instance asked for (or the least busy), with the extra
    header fields; it says which, or None when no such instance lives. ``send_all``
    reaches every live instance."""
    a, b = live(directory, ctx, yellow, inst("broker-a", "broker"), inst("broker-b", "broker"))
    sent = directory.send("broker", "push", b"hi", instance="broker-b", targets=["s1"])
    assert sent == "broker-b"
    (header,) = requests(b)
    assert (header.one_way, header.method, header.targets) == (True, "push", ["s1"])
    assert b.sent[0][1] == b"hi"
    assert directory.send("broker", "push", b"hi", instance="broker-zz") is None
    assert directory.send("nosuch", "push", b"hi") is None
    assert directory.send_all("broker", "broadcast", b"all", channel="room") == 2
    assert [h.channel for h in requests(a)] == ["room"]


def test_a_failed_one_way_request_goes_to_the_one_way_error_callback(
    directory: Directory, ctx: FakeZmqContext, yellow: Yellow
) -> None:
    """An ERROR for a one-way request made for a player reaches ``on_one_way_error``
    (the broker tells the player), and is not taken for a call's answer."""
    (link,) = live(directory, ctx, yellow, inst("chat-a", "chat"))
    pending = directory.call("chat", "history")
    ignore(pending)
    failed = Header(
        kind=Kind.ERROR,
        one_way=True,
        call_id=requests(link)[0].call_id,
        targets=["s1"],
        route="chat.send",
        error_code=ErrorCode.BAD_REQUEST,
        error_type="BadRequest",
        error_message="too long",
    )
    link.deliver([encode(failed), b""])  # nobody listening yet: dropped
    heard: list[Header] = []
    directory.on_one_way_error = heard.append
    link.deliver([encode(failed), b""])
    assert [(h.route, h.targets, h.error_message) for h in heard] == [
        ("chat.send", ["s1"], "too long")
    ]
    assert not fired(pending)


# -- push-pull and pub-sub -------------------------------------------------------------------


def test_a_push_goes_to_the_services_pull_endpoints_and_needs_a_live_instance(
    directory: Directory, ctx: FakeZmqContext, yellow: Yellow
) -> None:
    """A push without any instance fails with NoLiveInstance (a failed Deferred through
    the proxy); with instances, one PUSH socket reaches every instance's pull endpoint."""
    live(directory, ctx, yellow, inst("echo-a"), inst("echo-b"))
    with pytest.raises(NoLiveInstance):
        directory.push("nosuch", "note", {"x": 1})
    assert isinstance(failure_of(get_service("nosuch", "PULL").note(x=1)), NoLiveInstance)
    assert result_of(get_service("echo", "PULL").note(x=1)) is None
    (push,) = [s for s in ctx.of_type(zmq.PUSH) if s.connected]
    assert sorted(push.connected) == ["tcp://echo-a.test:2", "tcp://echo-b.test:2"]
    (header,) = requests(push)
    assert (header.kind, header.method, header.caller) == (Kind.PUSH, "note", "tester")
    assert decode_value(push.sent[0][1]) == {"x": 1}


def test_subscriptions_get_the_events_under_their_topic(
    directory: Directory, ctx: FakeZmqContext, yellow: Yellow
) -> None:
    """Each subscription gets the events whose topic starts with its own; one failing
    callback does not keep the others from theirs; unsubscribing removes the filter."""
    live(directory, ctx, yellow, inst("room-a", "room"), inst("room-b", "room"))
    got: dict[str, list[tuple[str, Any]]] = {"rooms": [], "all": [], "again": []}

    def boom(topic: str, payload: Any) -> None:
        raise RuntimeError("a broken subscriber")

    directory.subscribe("room", "room.1", boom)
    rooms = directory.subscribe("room", "room.", lambda t, p: got["rooms"].append((t, p)))
    directory.subscribe("room", "", lambda t, p: got["all"].append((t, p)))
    (sub,) = ctx.of_type(zmq.SUB)
    assert sorted(sub.connected) == ["tcp://room-a.test:3", "tcp://room-b.test:3"]
    assert sub.subscriptions == [b"room.1", b"room.", b""]
    sub.deliver([b"room.1", b"", encode_value({"said": "hi"})])
    sub.deliver([b"lobby", b"", encode_value(2)])
    sub.deliver([b"room.1", b""])  # malformed: dropped
    assert got["rooms"] == [("room.1", {"said": "hi"})]
    assert got["all"] == [("room.1", {"said": "hi"}), ("lobby", 2)]
    rooms.unsubscribe()
    rooms.unsubscribe()  # twice: nothing more happens
    assert sub.subscriptions == [b"room.1", b""]
    sub.deliver([b"room.2", b"", encode_value(3)])
    assert got["rooms"] == [("room.1", {"said": "hi"})]
    directory.get_service("room", "PUB").subscribe("lob", lambda t, p: got["again"].append(p))
    sub.deliver([b"lobby", b"", encode_value(4)])
    assert got["again"] == [4]


def test_two_subscriptions_to_one_topic_share_one_filter(
    directory: Directory, ctx: FakeZmqContext, yellow: Yellow
) -> None:
    """The topic's filter stays while one subscription wants it and goes with the last
    (ZeroMQ counts filters: one per subscription would leave events flowing to no one)."""
    live(directory, ctx, yellow, inst("room-a", "room"))
    first = directory.subscribe("room", "room.", lambda t, p: None)
    second = directory.subscribe("room", "room.", lambda t, p: None)
    (sub,) = ctx.of_type(zmq.SUB)
    assert sub.subscriptions == [b"room."]
    first.unsubscribe()
    assert sub.subscriptions == [b"room."]
    second.unsubscribe()
    assert sub.subscriptions == []


def test_the_event_sockets_follow_the_registry(
    directory: Directory, ctx: FakeZmqContext, yellow: Yellow
) -> None:
    """A new instance's pub and pull endpoints are connected to; a gone one's are not."""
    live(directory, ctx, yellow, inst("room-a", "room"))
    directory.subscribe("room", "", lambda t, p: None)
    directory.push("room", "note")
    (sub,) = ctx.of_type(zmq.SUB)
    (push,) = [s for s in ctx.of_type(zmq.PUSH) if s.connected]
    yellow.change(Change.UP, inst("room-b", "room"), "registered")
    assert sorted(sub.connected) == ["tcp://room-a.test:3", "tcp://room-b.test:3"]
    assert sorted(push.connected) == ["tcp://room-a.test:2", "tcp://room-b.test:2"]
    yellow.change(Change.DOWN, inst("room-a", "room"), "expired")
    assert (sub.connected, push.connected) == (["tcp://room-b.test:3"], ["tcp://room-b.test:2"])


# -- the process's directory ------------------------------------------------------------------


def test_the_started_directory_serves_get_service_and_its_stop_ends_everything(
    ctx: FakeZmqContext, yellow: Yellow
) -> None:
    """``get_service`` works through the directory started first, and fails once it has
    stopped; the stop fails calls in flight (they would never be answered) and closes
    every socket."""
    with pytest.raises(RuntimeError, match="no mmo Directory is running"):
        get_service("echo")
    directory = Directory(ctx, [YELLOW], caller_id="tester")  # type: ignore[arg-type]
    second = Directory(FakeZmqContext(), [YELLOW])  # type: ignore[arg-type]
    directory.startService()
    second.startService()
    try:
        (link,) = live(directory, ctx, yellow, inst("echo-a"))
        d = get_service("echo", timeout=30.0).whoami()
        assert [r.method for r in requests(link)] == ["whoami"]
        directory.subscribe("echo", "", lambda t, p: None)
    finally:
        directory.stopService()
        second.stopService()
    e = failure_of(d)
    assert isinstance(e, DeadlineExceeded) and "shutting down" in str(e)
    assert all(sock.closed for sock in ctx.sockets)
    with pytest.raises(RuntimeError):
        get_service("echo")


# -- telemetry -----------------------------------------------------------------------


def test_calls_carry_the_current_trace_and_are_counted_by_outcome(
    directory: Directory, ctx: FakeZmqContext, yellow: Yellow
) -> None:
    """A call or one-way request made while serving a traced request carries its trace
    id on; every call ends in the caller's latency histogram under its outcome."""
    from mmo.telemetry.trace import CURRENT, Trace

    (link,) = live(directory, ctx, yellow, inst("echo-a"))
    token = CURRENT.set(Trace("t-9", True))
    try:
        traced = directory.call("echo", "ping")
        directory.send("echo", "note", encode_value({}))
    finally:
        CURRENT.reset(token)
    plain = directory.call("echo", "ping", timeout=1.0)
    first, note, second = requests(link)
    assert (first.trace_id, first.traced) == ("t-9", True)
    assert (note.trace_id, note.traced, note.one_way) == ("t-9", True, True)
    assert (second.trace_id, second.traced) == (None, None)
    reply(link, first, "pong")
    result_of(traced)
    ctx.reactor.advance(1.5)
    assert isinstance(failure_of(plain), DeadlineExceeded)
    latencies = directory.calls.latencies
    assert latencies.count(service="echo", method="ping", outcome="ok") == 1
    assert latencies.count(service="echo", method="ping", outcome="deadline") == 1
    names = {family.name for family in directory.metrics()}
    assert {"mmo_client_request_duration_seconds", "mmo_registry_instances"} <= names
