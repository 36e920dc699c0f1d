"""ChatService: rooms, messages, members, and how it follows session events.

The service runs on a fake runtime: ``runtime.sessions`` records its joins,
leaves and broadcasts; mmo.testing's fake directory stands in for the session
service's PUB events. Players' requests go through the handler's dispatch table
(``mmo.testing.call`` with ``as_player``), as a worker serves them.
"""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet import task

from mmo.errors import BadRequest
from mmo.examples.chat import MAX_CONTENT, ChatService
from mmo.testing import FakeDirectory, as_player, call, handler_factory
from mmo.wire.gen.mmo.ttypes import Session


@pytest.fixture
def clock() -> task.Clock:
    """The chat service's clock."""
    clock = task.Clock()
    clock.advance(1000.0)
    return clock


@pytest.fixture
def chat(clock: task.Clock) -> ChatService:
    """A chat service on a fake runtime."""
    return handler_factory(ChatService, clock=clock)


def session(sid: str, user: str | None = None, broker: str = "b1", **props: Any) -> Session:
    """A client session as a broker sends it with a request."""
    return Session(id=sid, user_id=user or sid, broker=broker, props=props or None)


def sent(chat: ChatService, method: str) -> list[tuple[Any, ...]]:
    """What the service did to sessions with ``method`` (join, leave, broadcast...)."""
    return chat.runtime.sessions.of(method)  # type: ignore[attr-defined,no-any-return]


def clear(chat: ChatService) -> None:
    """Forget the session operations recorded so far."""
    chat.runtime.sessions.calls.clear()  # type: ignore[attr-defined]


def lean(s: Session) -> Session:
    """The session as the service keeps it (no props)."""
    return Session(id=s.id, user_id=s.user_id, broker=s.broker)


@pytest.fixture
def directory(chat: ChatService) -> FakeDirectory:
    """The chat service started on a runtime with a (fake) directory, which plays the
    session service's events (``directory.publish("session", topic, event)``)."""
    directory = FakeDirectory()
    chat.runtime.directory = directory  # type: ignore[attr-defined]
    chat.start()
    assert [(name, pattern) for name, pattern, _ in directory.asked] == [("session", "PUB")]
    return directory


def event(sid: str, user: str, broker: str, reason: str) -> dict[str, str]:
    """A session service event payload."""
    return {"session_id": sid, "user_id": user, "broker": broker, "reason": reason}


# -- join ---------------------------------------------------------------------------


def test_join_adds_the_session_to_the_room_channel_and_announces_it(chat: ChatService) -> None:
    """join puts the session in channel room:<room>, broadcasts chat.joined, lists members."""
    alice = session("s1", "alice", level=3)
    assert call(chat, "join", room="lobby", **as_player(alice)) == {
        "room": "lobby",
        "members": ["alice"],
    }
    assert sent(chat, "join") == [(lean(alice), "room:lobby")]
    assert sent(chat, "broadcast") == [
        ("room:lobby", "chat.joined", {"room": "lobby", "user": "alice"})
    ]
    bob = session("s2", "bob", broker="b2")
    assert call(chat, "join", room="lobby", **as_player(bob)) == {
        "room": "lobby",
        "members": ["alice", "bob"],
    }
    assert chat.rooms["lobby"]["s2"] == {"user": "bob", "session": lean(bob)}


def test_join_needs_a_logged_in_session(chat: ChatService) -> None:
    """join without a session (a call from another service) is a BadRequest."""
    with pytest.raises(BadRequest, match="session"):
        call(chat, "join", room="lobby")
    assert chat.rooms == {}


@pytest.mark.parametrize("room", ["", "x" * 65, 7, None])
def test_join_refuses_bad_room_names(chat: ChatService, room: Any) -> None:
    """A room name must be a string of 1-64 characters."""
    with pytest.raises(BadRequest):
        call(chat, "join", room=room, **as_player(session("s1")))
    assert chat.rooms == {}


def test_joining_another_room_leaves_the_first(chat: ChatService) -> None:
    """A session is in one room at most: joining a second one leaves (and announces) the first."""
    alice, bob = session("s1", "alice"), session("s2", "bob")
    call(chat, "join", room="a", **as_player(alice))
    call(chat, "join", room="a", **as_player(bob))
    clear(chat)
    assert call(chat, "join", room="b", **as_player(alice)) == {"room": "b", "members": ["alice"]}
    assert sent(chat, "leave") == [(lean(alice), "room:a")]
    assert sent(chat, "join") == [(lean(alice), "room:b")]
    assert sent(chat, "broadcast") == [
        ("room:a", "chat.left", {"room": "a", "user": "alice"}),
        ("room:b", "chat.joined", {"room": "b", "user": "alice"}),
    ]
    assert call(chat, "members", room="a") == ["bob"]
    assert chat.where == {"s1": "b", "s2": "a"}


def test_joining_the_same_room_again_announces_nothing(chat: ChatService) -> None:
    """A repeated join of the room the session is in only answers the members."""
    alice = session("s1", "alice")
    call(chat, "join", room="a", **as_player(alice))
    clear(chat)
    assert call(chat, "join", room="a", **as_player(alice)) == {"room": "a", "members": ["alice"]}
    assert chat.runtime.sessions.calls == []  # type: ignore[attr-defined]


# -- send -----------------------------------------------------------------------------


def test_send_broadcasts_to_the_room_with_the_clock_time(
    chat: ChatService, clock: task.Clock
) -> None:
    """send pushes chat.message (room, from, content, ts = now) to the room's channel."""
    alice = session("s1", "alice")
    call(chat, "join", room="lobby", **as_player(alice))
    clear(chat)
    assert call(chat, "send", content="hi", **as_player(alice)) is None
    assert sent(chat, "broadcast") == [
        (
            "room:lobby",
            "chat.message",
            {"room": "lobby", "from": "alice", "content": "hi", "ts": clock.seconds()},
            ("sender", lean(alice)),
        )
    ]


@pytest.mark.parametrize("ts", [1712345678.123456, 17, 0.0])
def test_send_passes_a_given_ts_through_unchanged(chat: ChatService, ts: float) -> None:
    """A ts in the body is pushed exactly as given (benchmarks measure latency with it)."""
    alice = session("s1", "alice")
    call(chat, "join", room="lobby", **as_player(alice))
    call(chat, "send", content="hi", ts=ts, **as_player(alice))
    body = sent(chat, "broadcast")[-1][2]
    assert body["ts"] == ts and type(body["ts"]) is type(ts)


def test_send_allows_1000_characters_and_refuses_more(chat: ChatService) -> None:
    """Content of MAX_CONTENT characters is sent; one more is a BadRequest and sends nothing."""
    alice = session("s1", "alice")
    call(chat, "join", room="lobby", **as_player(alice))
    call(chat, "send", content="x" * MAX_CONTENT, **as_player(alice))
    clear(chat)
    with pytest.raises(BadRequest, match="1000"):
        call(chat, "send", content="x" * (MAX_CONTENT + 1), **as_player(alice))
    assert sent(chat, "broadcast") == []


@pytest.mark.parametrize("kwargs", [{"content": 5}, {"content": "hi", "ts": "now"}])
def test_send_refuses_badly_typed_bodies(chat: ChatService, kwargs: dict[str, Any]) -> None:
    """Content that is not text, or a ts that is not a number, is a BadRequest."""
    alice = session("s1", "alice")
    call(chat, "join", room="lobby", **as_player(alice))
    with pytest.raises(BadRequest):
        call(chat, "send", **kwargs, **as_player(alice))


def test_send_outside_a_room_is_refused(chat: ChatService) -> None:
    """A session in no room cannot send, and nothing is broadcast."""
    with pytest.raises(BadRequest, match="join"):
        call(chat, "send", content="hi", **as_player(session("s1")))
    with pytest.raises(BadRequest):
        call(chat, "send", content="hi")
    assert sent(chat, "broadcast") == []


# -- members ------------------------------------------------------------------------


def test_members_of_the_callers_room_or_a_named_one(chat: ChatService) -> None:
    """members lists sorted user ids of the caller's room, or of the room named."""
    call(chat, "join", room="a", **as_player(session("s1", "zed")))
    call(chat, "join", room="a", **as_player(session("s2", "amy")))
    call(chat, "join", room="b", **as_player(session("s3", "bob")))
    assert call(chat, "members", **as_player(session("s1", "zed"))) == ["amy", "zed"]
    assert call(chat, "members", room="a", **as_player(session("s1", "zed"))) == ["amy", "zed"]
    assert call(chat, "members", room="b") == ["bob"]
    assert call(chat, "members", room="nowhere") == []


def test_a_player_may_list_only_their_own_room(chat: ChatService) -> None:
    """A player asking for another room's members (eavesdropping on who is there) is refused;
    a cluster member may list any room."""
    call(chat, "join", room="secret", **as_player(session("s2", "bob")))
    call(chat, "join", room="a", **as_player(session("s1", "zed")))
    for who in (session("s1", "zed"), session("s9", "eve")):
        with pytest.raises(BadRequest, match="only the room they are in"):
            call(chat, "members", room="secret", **as_player(who))
    assert call(chat, "members", room="secret") == ["bob"]


def test_the_client_routes_are_declared() -> None:
    """join, send, members, leave and echo are client routes; nothing else."""
    assert ChatService.registry_meta()["client"] == ["echo", "join", "leave", "members", "send"]


def test_members_lists_a_user_with_two_sessions_once(chat: ChatService) -> None:
    """A user in a room from two sessions is one member."""
    call(chat, "join", room="a", **as_player(session("s1", "amy")))
    call(chat, "join", room="a", **as_player(session("s2", "amy", broker="b2")))
    assert call(chat, "members", room="a") == ["amy"]


def test_members_without_a_room_is_refused(chat: ChatService) -> None:
    """members with no room named, from a caller in none, is a BadRequest."""
    with pytest.raises(BadRequest):
        call(chat, "members", **as_player(session("s1")))
    with pytest.raises(BadRequest):
        call(chat, "members")


# -- leave and echo -----------------------------------------------------------------


def test_leave_removes_the_session_and_tells_the_others(chat: ChatService) -> None:
    """leave takes the session off the channel and broadcasts chat.left to who remains."""
    alice, bob = session("s1", "alice"), session("s2", "bob")
    call(chat, "join", room="a", **as_player(alice))
    call(chat, "join", room="a", **as_player(bob))
    clear(chat)
    assert call(chat, "leave", **as_player(alice)) == {"room": "a"}
    assert sent(chat, "leave") == [(lean(alice), "room:a")]
    assert sent(chat, "broadcast") == [("room:a", "chat.left", {"room": "a", "user": "alice"})]
    assert call(chat, "members", room="a") == ["bob"]


def test_the_last_to_leave_deletes_the_room(chat: ChatService) -> None:
    """An empty room is forgotten, and nobody is left to announce the leave to."""
    alice = session("s1", "alice")
    call(chat, "join", room="a", **as_player(alice))
    clear(chat)
    call(chat, "leave", **as_player(alice))
    assert chat.rooms == {} and chat.where == {}
    assert sent(chat, "broadcast") == []


def test_leave_outside_a_room_answers_none(chat: ChatService) -> None:
    """leave from a session in no room answers {"room": None} and sends nothing."""
    assert call(chat, "leave", **as_player(session("s1"))) == {"room": None}
    assert chat.runtime.sessions.calls == []  # type: ignore[attr-defined]


def test_echo_returns_its_arguments_and_is_idempotent(chat: ChatService) -> None:
    """echo answers its keyword arguments and may be retried on another instance."""
    assert call(chat, "echo", a=1, b=[1, "x"]) == {"a": 1, "b": [1, "x"]}
    assert ChatService.method_names()["echo"] is True
    assert ChatService.method_names()["send"] is False


# -- session events -----------------------------------------------------------------


def test_start_without_a_directory_subscribes_to_nothing(chat: ChatService) -> None:
    """On a runtime with no directory, start does nothing."""
    assert chat.start() is None


def test_a_session_that_leaves_is_removed_from_its_room(
    chat: ChatService, directory: FakeDirectory
) -> None:
    """A session leave event removes the member and announces chat.left, sending the
    (gone) session no channel leave."""
    call(chat, "join", room="a", **as_player(session("s1", "alice")))
    call(chat, "join", room="a", **as_player(session("s2", "bob")))
    clear(chat)
    directory.publish("session", "leave", event("s1", "alice", "b1", "expired"))
    assert call(chat, "members", room="a") == ["bob"]
    assert sent(chat, "leave") == []
    assert sent(chat, "broadcast") == [("room:a", "chat.left", {"room": "a", "user": "alice"})]


def test_leave_events_of_sessions_in_no_room_are_ignored(
    chat: ChatService, directory: FakeDirectory
) -> None:
    """A leave of a session the chat never saw (or a malformed event) changes nothing."""
    directory.publish("session", "leave", event("other", "carol", "b1", "logout"))
    directory.publish("session", "leave", "garbage")
    directory.publish("session", "online", {"session_id": 3})
    assert chat.rooms == {}
    assert chat.runtime.sessions.calls == []  # type: ignore[attr-defined]


def test_offline_sessions_keep_their_place(chat: ChatService, directory: FakeDirectory) -> None:
    """An offline event leaves the member in its room (it may resume)."""
    call(chat, "join", room="a", **as_player(session("s1", "alice")))
    directory.publish("session", "offline", event("s1", "alice", "b1", "closed"))
    assert call(chat, "members", room="a") == ["alice"]


def test_a_session_resumed_elsewhere_is_kept_with_its_new_broker(
    chat: ChatService, directory: FakeDirectory
) -> None:
    """An online event naming another broker updates the Session the chat keeps."""
    call(chat, "join", room="a", **as_player(session("s1", "alice", broker="b1")))
    directory.publish("session", "online", event("s1", "alice", "b2", "resumed"))
    assert chat.rooms["a"]["s1"]["session"] == Session(id="s1", user_id="alice", broker="b2")
    assert call(chat, "members", room="a") == ["alice"]


def test_a_request_from_a_session_refreshes_where_it_is(chat: ChatService) -> None:
    """The broker of a session's latest request is where the chat reaches it afterwards."""
    call(chat, "join", room="a", **as_player(session("s1", "alice", broker="b1")))
    call(chat, "send", content="hi", **as_player(session("s1", "alice", broker="b2")))
    clear(chat)
    call(chat, "join", room="b", **as_player(session("s1", "alice", broker="b2")))
    assert sent(chat, "leave") == [(Session(id="s1", user_id="alice", broker="b2"), "room:a")]


def test_stop_unsubscribes_from_session_events(chat: ChatService, directory: FakeDirectory) -> None:
    """After stop, session events no longer reach the chat."""
    call(chat, "join", room="a", **as_player(session("s1", "alice")))
    chat.stop()
    assert directory.subscriptions == []
    directory.publish("session", "leave", event("s1", "alice", "b1", "logout"))
    assert call(chat, "members", room="a") == ["alice"]
