"""Operations on sessions reach their broker even when this process's registry view has
not seen that broker yet; what cannot be delivered is dropped after a while, counted."""

from __future__ import annotations

from typing import Any

from twisted.internet import task

from mmo.logic.sessions import BROKER_SERVICE, HOLD_FOR, Sessions
from mmo.wire.gen.mmo.ttypes import Change, Instance, Session


class View:
    def __init__(self) -> None:
        self.listeners: list[Any] = []

    def listen(self, listener: Any) -> None:
        self.listeners.append(listener)

    def up(self, instance_id: str, service: str = BROKER_SERVICE) -> None:
        for listener in self.listeners:
            listener(Change.UP, Instance(service_name=service, instance_id=instance_id), "")


class Directory:
    """Sends reach the brokers in ``live``; what was sent is in ``sent``."""

    def __init__(self) -> None:
        self.clock = task.Clock()
        self.view = View()
        self.live: set[str] = set()
        self.sent: list[tuple[str, str, dict[str, Any]]] = []

    def send(self, service: str, method: str, body: bytes, instance: str, **header: Any) -> bool:
        assert service == BROKER_SERVICE
        if instance not in self.live:
            return False
        self.sent.append((instance, method, header))
        return True

    def appear(self, broker: str) -> None:
        self.live.add(broker)
        self.view.up(broker)


def session(sid: str, broker: str = "broker-1") -> Session:
    return Session(id=sid, user_id=sid, broker=broker)


def test_a_join_for_a_broker_not_yet_in_view_is_sent_once_it_appears_in_order() -> None:
    """The player came through broker-1 before this worker's view listed it: the join
    and what follows wait for it, then go in the order they were made."""
    directory = Directory()
    sessions = Sessions(directory, "chat-1")  # type: ignore[arg-type]
    assert sessions.join(session("alice"), "room:hall")
    assert sessions.push(session("alice"), "chat.message", {"x": 1}) == 1
    assert directory.sent == []
    directory.clock.advance(HOLD_FOR / 2)
    directory.appear("broker-1")
    assert [(b, m) for b, m, _ in directory.sent] == [("broker-1", "join"), ("broker-1", "push")]
    assert directory.sent[0][2]["channel"] == "room:hall"
    # Once in view, operations go at once.
    sessions.leave(session("alice"), "room:hall")
    assert directory.sent[-1][1] == "leave" and sessions.undeliverable == 0


def test_operations_for_a_broker_that_never_appears_are_dropped_and_counted() -> None:
    directory = Directory()
    sessions = Sessions(directory, "chat-1")  # type: ignore[arg-type]
    sessions.join(session("bob", "broker-gone"), "room:hall")
    sessions.kick(session("bob", "broker-gone"), "bye")
    directory.clock.advance(HOLD_FOR + 0.1)
    assert sessions.undeliverable == 2
    directory.appear("broker-gone")  # too late: nothing is sent
    assert directory.sent == []


def test_other_brokers_are_not_held_up() -> None:
    directory = Directory()
    directory.appear("broker-2")
    sessions = Sessions(directory, "chat-1")  # type: ignore[arg-type]
    sessions.join(session("carol", "broker-1"), "room:hall")
    sessions.join(session("dave", "broker-2"), "room:hall")
    assert [(b, m) for b, m, _ in directory.sent] == [("broker-2", "join")]


def test_a_session_without_a_broker_is_dropped_at_once() -> None:
    directory = Directory()
    sessions = Sessions(directory, "chat-1")  # type: ignore[arg-type]
    assert not sessions.join(Session(id="s", user_id="u"), "room:hall")
    assert sessions.undeliverable == 1
