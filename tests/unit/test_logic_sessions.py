"""Operations on sessions reach their broker even when this process's registry view has
not seen that broker yet; what cannot be delivered is dropped after a while, counted."""

from __future__ import annotations

from mmo.logic.sessions import BRIDGE_SERVICE, BROKER_SERVICE, HOLD_FOR, Sessions
from mmo.testing import FakeDirectory
from mmo.wire.gen.mmo.ttypes import Session


def session(sid: str, broker: str = "broker-1") -> Session:
    return Session(id=sid, user_id=sid, broker=broker)


def delivered(directory: FakeDirectory) -> list[tuple[str | None, str]]:
    """``(broker, operation)`` of what was sent, in order (only ever to brokers)."""
    assert {s.service for s in directory.sent} <= {BROKER_SERVICE}
    return [(s.instance, s.method) for s in directory.sent]


def test_a_join_for_a_broker_not_yet_in_view_is_sent_once_it_appears_in_order() -> None:
    """The player came through broker-1 before this worker's view listed it: the join
    and what follows wait for it, then go in the order they were made."""
    directory = FakeDirectory()
    sessions = Sessions(directory, "chat-1")  # type: ignore[arg-type]
    assert sessions.join(session("alice"), "room:hall")
    assert sessions.push(session("alice"), "chat.message", {"x": 1}) == 1
    assert delivered(directory) == []
    directory.clock.advance(HOLD_FOR / 2)
    directory.register(BROKER_SERVICE, "broker-1")
    assert delivered(directory) == [("broker-1", "join"), ("broker-1", "push")]
    assert directory.sent[0].header["channel"] == "room:hall"
    # Once in view, operations go at once.
    sessions.leave(session("alice"), "room:hall")
    assert delivered(directory)[-1][1] == "leave" and sessions.undeliverable == 0


def test_operations_for_a_broker_that_never_appears_are_dropped_and_counted() -> None:
    """Operations held for a broker the view never lists are dropped after HOLD_FOR."""
    directory = FakeDirectory()
    sessions = Sessions(directory, "chat-1")  # type: ignore[arg-type]
    sessions.join(session("bob", "broker-gone"), "room:hall")
    sessions.kick(session("bob", "broker-gone"), "bye")
    directory.clock.advance(HOLD_FOR + 0.1)
    assert sessions.undeliverable == 2
    directory.register(BROKER_SERVICE, "broker-gone")  # too late: nothing is sent
    assert delivered(directory) == []


def test_other_brokers_are_not_held_up() -> None:
    """Operations for a listed broker go at once while another broker's wait."""
    directory = FakeDirectory()
    directory.register(BROKER_SERVICE, "broker-2")
    sessions = Sessions(directory, "chat-1")  # type: ignore[arg-type]
    sessions.join(session("carol", "broker-1"), "room:hall")
    sessions.join(session("dave", "broker-2"), "room:hall")
    assert delivered(directory) == [("broker-2", "join")]


def test_a_session_without_a_broker_is_dropped_at_once() -> None:
    """A session that names no broker: the operation is dropped and counted."""
    directory = FakeDirectory()
    sessions = Sessions(directory, "chat-1")  # type: ignore[arg-type]
    assert not sessions.join(Session(id="s", user_id="u"), "room:hall")
    assert sessions.undeliverable == 1


def test_operations_on_a_session_of_another_cluster_go_to_one_bridge() -> None:
    """A session whose broker is ``us:broker-1`` lives in another cluster: its operations
    go to a bridge (the first by id while its link is up), naming that broker; without a
    bridge they are dropped and counted."""
    directory = FakeDirectory()
    sessions = Sessions(directory, "chat-1")  # type: ignore[arg-type]
    assert not sessions.push(session("erin", "us:broker-1"), "chat.message", {"x": 1})
    assert sessions.undeliverable == 1 and directory.sent == []
    for bridge in ("bridge-b", "bridge-a"):
        directory.register(BRIDGE_SERVICE, bridge)
    sessions.join(session("erin", "us:broker-1"), "room:world")
    sessions.push(session("erin", "us:broker-1"), "chat.message", {"x": 2})
    sent = [(s.service, s.instance, s.method, s.header["broker"]) for s in directory.sent]
    assert sent == [
        (BRIDGE_SERVICE, "bridge-a", "join", "us:broker-1"),
        (BRIDGE_SERVICE, "bridge-a", "push", "us:broker-1"),
    ]


def test_a_broadcast_goes_to_every_broker_and_to_one_bridge() -> None:
    directory = FakeDirectory()
    for broker in ("broker-1", "broker-2"):
        directory.register(BROKER_SERVICE, broker)
    sessions = Sessions(directory, "chat-1")  # type: ignore[arg-type]
    assert sessions.broadcast("room:world", "chat.message", {"x": 1}) == 2
    assert {s.service for s in directory.sent} == {BROKER_SERVICE}  # no bridge: brokers only
    directory.sent.clear()
    for bridge in ("bridge-a", "bridge-b"):
        directory.register(BRIDGE_SERVICE, bridge)
    assert sessions.broadcast("room:world", "chat.message", {"x": 2}) == 2
    to = sorted((s.service, s.instance) for s in directory.sent)
    assert to == [(BRIDGE_SERVICE, "bridge-a"), (BROKER_SERVICE, "broker-1"),
                  (BROKER_SERVICE, "broker-2")]  # fmt: skip
