"""ChatService: rooms, messages, members, how it follows session events, and how several
instances share the rooms through one cache.

The service runs on a fake runtime: ``runtime.sessions`` records its joins,
leaves, bindings and broadcasts; mmo.testing's fake directory stands in for the
session service's PUB events and for the registry. Players' requests go through
the handler's dispatch table (``mmo.testing.call`` with ``as_player``), as a worker
serves them. Two instances sharing one :class:`~mmo.data.memory.MemoryCache` stand
in for instances sharing Redis (the cache's operations are the same).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import pytest
from twisted.internet import defer, task

from mmo.data.memory import MemoryCache
from mmo.errors import BadRequest
from mmo.examples.chat import MAX_CONTENT, ChatService
from mmo.testing import (
    FakeDirectory,
    as_player,
    call,
    fake_cache,
    handler_factory,
    result_of,
)
from mmo.wire.gen.mmo.ttypes import Session


@pytest.fixture
def clock() -> task.Clock:
    """The chat service's clock."""
    clock = task.Clock()
    clock.advance(1000.0)
    return clock


@pytest.fixture
def chat(clock: task.Clock) -> ChatService:
    """A chat service on a fake runtime, with no cache given (the embedded default)."""
    return handler_factory(ChatService, clock=clock)


def ask(chat: ChatService, method: str, **kwargs: Any) -> Any:
    """Call ``method`` as a worker would and read its answer (raising its error)."""
    return result_of(call(chat, method, **kwargs))


def session(sid: str, user: str | None = None, broker: str = "b1", **props: Any) -> Session:
    """A client session as a broker sends it with a request."""
    return Session(id=sid, user_id=user or sid, broker=broker, props=props or None)


def sent(chat: ChatService, method: str) -> list[tuple[Any, ...]]:
    """What the service did to sessions with ``method`` (join, leave, broadcast...)."""
    return chat.runtime.sessions.of(method)  # type: ignore[attr-defined,no-any-return]


def clear(*chats: ChatService) -> None:
    """Forget the session operations recorded so far."""
    for chat in chats:
        chat.runtime.sessions.calls.clear()  # type: ignore[attr-defined]


def lean(s: Session) -> Session:
    """The session as the service keeps it (no props)."""
    return Session(id=s.id, user_id=s.user_id, broker=s.broker)


def rooms(chat: ChatService) -> dict[str, dict[str, str]]:
    """Every room in the chat's cache: room -> {session id: user id}."""
    store = chat.store
    assert isinstance(store, MemoryCache)
    prefix = "chat:room:"
    return {
        key[len(prefix) :]: result_of(store.hgetall(key[len(store.prefix) :]))
        for key in list(store._data)
        if key.startswith(store.prefix + prefix)
    }


def record(chat: ChatService, sid: str) -> dict[str, str]:
    """The session's record in the chat's cache (room, user, broker, instance)."""
    return result_of(chat.store.hgetall(f"chat:session:{sid}"))  # type: ignore[no-any-return]


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
    assert ask(chat, "join", room="lobby", **as_player(alice)) == {
        "room": "lobby",
        "members": ["alice"],
    }
    assert sent(chat, "join") == [(lean(alice), "room:lobby")]
    assert sent(chat, "broadcast") == [
        ("room:lobby", "chat.joined", {"room": "lobby", "user": "alice"})
    ]
    bob = session("s2", "bob", broker="b2")
    assert ask(chat, "join", room="lobby", **as_player(bob)) == {
        "room": "lobby",
        "members": ["alice", "bob"],
    }
    assert rooms(chat) == {"lobby": {"s1": "alice", "s2": "bob"}}
    assert record(chat, "s2") == {
        "room": "lobby",
        "user": "bob",
        "broker": "b2",
        "instance": "test-1",
    }


def test_join_needs_a_logged_in_session(chat: ChatService) -> None:
    """join without a session (a call from another service) is a BadRequest."""
    with pytest.raises(BadRequest, match="session"):
        ask(chat, "join", room="lobby")
    assert rooms(chat) == {}


@pytest.mark.parametrize("room", ["", "x" * 65, 7, None])
def test_join_refuses_bad_room_names(chat: ChatService, room: Any) -> None:
    """A room name must be a string of 1-64 characters."""
    with pytest.raises(BadRequest):
        ask(chat, "join", room=room, **as_player(session("s1")))
    assert rooms(chat) == {}


def test_joining_another_room_leaves_the_first(chat: ChatService) -> None:
    """A session is in one room at most: joining a second one leaves (and announces) the first."""
    alice, bob = session("s1", "alice"), session("s2", "bob")
    ask(chat, "join", room="a", **as_player(alice))
    ask(chat, "join", room="a", **as_player(bob))
    clear(chat)
    assert ask(chat, "join", room="b", **as_player(alice)) == {"room": "b", "members": ["alice"]}
    assert sent(chat, "leave") == [(lean(alice), "room:a")]
    assert sent(chat, "join") == [(lean(alice), "room:b")]
    assert sent(chat, "broadcast") == [
        ("room:a", "chat.left", {"room": "a", "user": "alice"}),
        ("room:b", "chat.joined", {"room": "b", "user": "alice"}),
    ]
    assert ask(chat, "members", room="a") == ["bob"]
    assert record(chat, "s1")["room"] == "b" and record(chat, "s2")["room"] == "a"


def test_joining_the_same_room_again_announces_nothing(chat: ChatService) -> None:
    """A repeated join of the room the session is in only answers the members."""
    alice = session("s1", "alice")
    ask(chat, "join", room="a", **as_player(alice))
    clear(chat)
    assert ask(chat, "join", room="a", **as_player(alice)) == {"room": "a", "members": ["alice"]}
    assert chat.runtime.sessions.calls == []  # type: ignore[attr-defined]


# -- send -----------------------------------------------------------------------------


def test_send_broadcasts_to_the_room_with_the_clock_time(
    chat: ChatService, clock: task.Clock
) -> None:
    """send pushes chat.message (room, from, content, ts = now) to the room's channel."""
    alice = session("s1", "alice")
    ask(chat, "join", room="lobby", **as_player(alice))
    clear(chat)
    assert ask(chat, "send", content="hi", **as_player(alice)) is None
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
    ask(chat, "join", room="lobby", **as_player(alice))
    ask(chat, "send", content="hi", ts=ts, **as_player(alice))
    body = sent(chat, "broadcast")[-1][2]
    assert body["ts"] == ts and type(body["ts"]) is type(ts)


def test_send_allows_1000_characters_and_refuses_more(chat: ChatService) -> None:
    """Content of MAX_CONTENT characters is sent; one more is a BadRequest and sends nothing."""
    alice = session("s1", "alice")
    ask(chat, "join", room="lobby", **as_player(alice))
    ask(chat, "send", content="x" * MAX_CONTENT, **as_player(alice))
    clear(chat)
    with pytest.raises(BadRequest, match="1000"):
        ask(chat, "send", content="x" * (MAX_CONTENT + 1), **as_player(alice))
    assert sent(chat, "broadcast") == []


@pytest.mark.parametrize("kwargs", [{"content": 5}, {"content": "hi", "ts": "now"}])
def test_send_refuses_badly_typed_bodies(chat: ChatService, kwargs: dict[str, Any]) -> None:
    """Content that is not text, or a ts that is not a number, is a BadRequest."""
    alice = session("s1", "alice")
    ask(chat, "join", room="lobby", **as_player(alice))
    with pytest.raises(BadRequest):
        ask(chat, "send", **kwargs, **as_player(alice))


def test_send_outside_a_room_is_refused(chat: ChatService) -> None:
    """A session in no room cannot send, and nothing is broadcast."""
    with pytest.raises(BadRequest, match="join"):
        ask(chat, "send", content="hi", **as_player(session("s1")))
    with pytest.raises(BadRequest):
        ask(chat, "send", content="hi")
    assert sent(chat, "broadcast") == []


# -- members ------------------------------------------------------------------------


def test_members_of_the_callers_room_or_a_named_one(chat: ChatService) -> None:
    """members lists sorted user ids of the caller's room, or of the room named."""
    ask(chat, "join", room="a", **as_player(session("s1", "zed")))
    ask(chat, "join", room="a", **as_player(session("s2", "amy")))
    ask(chat, "join", room="b", **as_player(session("s3", "bob")))
    assert ask(chat, "members", **as_player(session("s1", "zed"))) == ["amy", "zed"]
    assert ask(chat, "members", room="a", **as_player(session("s1", "zed"))) == ["amy", "zed"]
    assert ask(chat, "members", room="b") == ["bob"]
    assert ask(chat, "members", room="nowhere") == []


def test_a_player_may_list_only_their_own_room(chat: ChatService) -> None:
    """A player asking for another room's members (eavesdropping on who is there) is refused;
    a cluster member may list any room."""
    ask(chat, "join", room="secret", **as_player(session("s2", "bob")))
    ask(chat, "join", room="a", **as_player(session("s1", "zed")))
    for who in (session("s1", "zed"), session("s9", "eve")):
        with pytest.raises(BadRequest, match="only the room they are in"):
            ask(chat, "members", room="secret", **as_player(who))
    assert ask(chat, "members", room="secret") == ["bob"]


def test_the_client_routes_are_declared() -> None:
    """join, send, members, leave and echo are client routes; nothing else."""
    assert ChatService.registry_meta()["client"] == ["echo", "join", "leave", "members", "send"]


def test_members_lists_a_user_with_two_sessions_once(chat: ChatService) -> None:
    """A user in a room from two sessions is one member."""
    ask(chat, "join", room="a", **as_player(session("s1", "amy")))
    ask(chat, "join", room="a", **as_player(session("s2", "amy", broker="b2")))
    assert ask(chat, "members", room="a") == ["amy"]


def test_members_without_a_room_is_refused(chat: ChatService) -> None:
    """members with no room named, from a caller in none, is a BadRequest."""
    with pytest.raises(BadRequest):
        ask(chat, "members", **as_player(session("s1")))
    with pytest.raises(BadRequest):
        ask(chat, "members")


# -- leave and echo -----------------------------------------------------------------


def test_leave_removes_the_session_and_tells_the_others(chat: ChatService) -> None:
    """leave takes the session off the channel and broadcasts chat.left to who remains."""
    alice, bob = session("s1", "alice"), session("s2", "bob")
    ask(chat, "join", room="a", **as_player(alice))
    ask(chat, "join", room="a", **as_player(bob))
    clear(chat)
    assert ask(chat, "leave", **as_player(alice)) == {"room": "a"}
    assert sent(chat, "leave") == [(lean(alice), "room:a")]
    assert sent(chat, "broadcast") == [("room:a", "chat.left", {"room": "a", "user": "alice"})]
    assert ask(chat, "members", room="a") == ["bob"]


def test_the_last_to_leave_deletes_the_room(chat: ChatService) -> None:
    """An empty room is forgotten, and nobody is left to announce the leave to."""
    alice = session("s1", "alice")
    ask(chat, "join", room="a", **as_player(alice))
    clear(chat)
    ask(chat, "leave", **as_player(alice))
    assert rooms(chat) == {} and "room" not in record(chat, "s1")
    assert sent(chat, "broadcast") == []


def test_leave_outside_a_room_answers_none(chat: ChatService) -> None:
    """leave from a session in no room answers {"room": None} and sends nothing."""
    assert ask(chat, "leave", **as_player(session("s1"))) == {"room": None}
    assert chat.runtime.sessions.calls == []  # type: ignore[attr-defined]


def test_echo_returns_its_arguments_and_is_idempotent(chat: ChatService) -> None:
    """echo answers its keyword arguments and may be retried on another instance."""
    assert ask(chat, "echo", a=1, b=[1, "x"]) == {"a": 1, "b": [1, "x"]}
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
    ask(chat, "join", room="a", **as_player(session("s1", "alice")))
    ask(chat, "join", room="a", **as_player(session("s2", "bob")))
    clear(chat)
    directory.publish("session", "leave", event("s1", "alice", "b1", "expired"))
    assert ask(chat, "members", room="a") == ["bob"]
    assert sent(chat, "leave") == []
    assert sent(chat, "broadcast") == [("room:a", "chat.left", {"room": "a", "user": "alice"})]


def test_leave_events_of_sessions_in_no_room_are_ignored(
    chat: ChatService, directory: FakeDirectory
) -> None:
    """A leave of a session the chat never saw (or a malformed event) changes nothing."""
    directory.publish("session", "leave", event("other", "carol", "b1", "logout"))
    directory.publish("session", "leave", "garbage")
    directory.publish("session", "online", {"session_id": 3})
    assert rooms(chat) == {}
    assert chat.runtime.sessions.calls == []  # type: ignore[attr-defined]


def test_offline_sessions_keep_their_place(chat: ChatService, directory: FakeDirectory) -> None:
    """An offline event leaves the member in its room (it may resume)."""
    ask(chat, "join", room="a", **as_player(session("s1", "alice")))
    directory.publish("session", "offline", event("s1", "alice", "b1", "closed"))
    assert ask(chat, "members", room="a") == ["alice"]


def test_a_session_resumed_elsewhere_is_kept_with_its_new_broker(
    chat: ChatService, directory: FakeDirectory
) -> None:
    """An online event naming another broker updates the Session the chat keeps."""
    ask(chat, "join", room="a", **as_player(session("s1", "alice", broker="b1")))
    directory.publish("session", "online", event("s1", "alice", "b2", "resumed"))
    assert record(chat, "s1")["broker"] == "b2"
    # Bound again there: the broker restored the session's bindings from the session service.
    assert sent(chat, "bind")[-1] == (Session(id="s1", user_id="alice", broker="b2"), "chat")
    assert ask(chat, "members", room="a") == ["alice"]


def test_a_request_from_a_session_refreshes_where_it_is(chat: ChatService) -> None:
    """The broker of a session's latest request is where the chat reaches it afterwards."""
    ask(chat, "join", room="a", **as_player(session("s1", "alice", broker="b1")))
    ask(chat, "send", content="hi", **as_player(session("s1", "alice", broker="b2")))
    clear(chat)
    ask(chat, "join", room="b", **as_player(session("s1", "alice", broker="b2")))
    assert sent(chat, "leave") == [(Session(id="s1", user_id="alice", broker="b2"), "room:a")]


def test_stop_unsubscribes_from_session_events(chat: ChatService, directory: FakeDirectory) -> None:
    """After stop, session events no longer reach the chat."""
    ask(chat, "join", room="a", **as_player(session("s1", "alice")))
    chat.stop()
    assert directory.subscriptions == []
    directory.publish("session", "leave", event("s1", "alice", "b1", "logout"))
    assert ask(chat, "members", room="a") == ["alice"]


# -- the embedded default and the binding -------------------------------------------


def test_without_a_cache_the_rooms_live_in_this_process(clock: task.Clock) -> None:
    """No --cache: the service keeps its rooms in an in-process MemoryCache (one instance);
    given a cache, it keeps them there."""
    assert isinstance(handler_factory(ChatService, clock=clock).store, MemoryCache)
    cache = fake_cache(clock)
    assert handler_factory(ChatService, clock=clock, cache=cache).store is cache


def test_join_binds_the_sessions_chat_routes_to_this_instance(chat: ChatService) -> None:
    """The instance serving a join binds the session's chat prefix to itself (so one
    instance handles all its messages, in order), once."""
    alice = session("s1", "alice")
    ask(chat, "join", room="a", **as_player(alice))
    assert sent(chat, "bind") == [(lean(alice), "chat")]
    assert record(chat, "s1")["instance"] == "test-1"
    ask(chat, "join", room="b", **as_player(alice))
    ask(chat, "send", content="hi", **as_player(alice))
    assert len(sent(chat, "bind")) == 1


# -- several instances sharing one cache ---------------------------------------------


def instances(
    clock: task.Clock, directory: FakeDirectory, cache: Any, *names: str
) -> list[ChatService]:
    """Chat instances ``names`` sharing ``cache``, registered and started."""
    chats = [
        handler_factory(ChatService, instance_id=n, clock=clock, cache=cache, directory=directory)
        for n in names
    ]
    for chat in chats:
        directory.register("chat", chat.instance_id)
    for chat in chats:
        chat.start()
    return chats


@pytest.fixture
def pair(clock: task.Clock) -> tuple[ChatService, ChatService]:
    """Two chat instances sharing one cache, registered in one (fake) registry."""
    one, two = instances(clock, FakeDirectory(clock), fake_cache(clock), "chat-1", "chat-2")
    return one, two


def directory_of(chat: ChatService) -> FakeDirectory:
    """The fake directory the chat instance runs with."""
    return chat.runtime.directory  # type: ignore[attr-defined,no-any-return]


def test_two_instances_share_the_rooms(pair: tuple[ChatService, ChatService]) -> None:
    """A member who joined on one instance is seen by the other: it lists them, announces
    later joins to the room, and broadcasts their messages to the room's channel."""
    one, two = pair
    alice, bob = session("s1", "alice"), session("s2", "bob", broker="b2")
    ask(one, "join", room="a", **as_player(alice))
    assert ask(two, "join", room="a", **as_player(bob)) == {
        "room": "a",
        "members": ["alice", "bob"],
    }
    assert ask(two, "members", **as_player(alice)) == ["alice", "bob"]
    assert ask(one, "members", room="a") == ["alice", "bob"]
    clear(one, two)
    ask(two, "send", content="hi", **as_player(alice))
    assert [b[:2] for b in sent(two, "broadcast")] == [("room:a", "chat.message")]
    # alice is still served by the instance she joined on: nothing moved.
    assert sent(two, "bind") == [] and record(two, "s1")["instance"] == "chat-1"


def test_a_player_may_not_list_or_send_to_another_room_on_any_instance(
    pair: tuple[ChatService, ChatService],
) -> None:
    """The trust rules hold whichever instance a request reaches: a player lists only the
    room they are in, and sends only to it (or nowhere, if in none)."""
    one, two = pair
    ask(one, "join", room="secret", **as_player(session("s2", "bob")))
    ask(one, "join", room="a", **as_player(session("s1", "zed")))
    for chat in pair:
        with pytest.raises(BadRequest, match="only the room they are in"):
            ask(chat, "members", room="secret", **as_player(session("s1", "zed")))
        with pytest.raises(BadRequest, match="join"):
            ask(chat, "send", content="hi", **as_player(session("s9", "eve")))
    clear(one, two)
    ask(two, "send", content="hi", **as_player(session("s1", "zed")))
    assert [b[0] for b in sent(two, "broadcast")] == ["room:a"]


def test_a_session_leave_event_is_announced_by_exactly_one_instance(
    pair: tuple[ChatService, ChatService],
) -> None:
    """Every instance hears a session's leave event; the one whose hdel removed the member
    broadcasts chat.left, so the room hears it once; the session's records go."""
    one, two = pair
    ask(one, "join", room="a", **as_player(session("s1", "alice")))
    ask(two, "join", room="a", **as_player(session("s2", "bob")))
    clear(one, two)
    directory_of(one).publish("session", "leave", event("s1", "alice", "b1", "expired"))
    assert sent(one, "broadcast") + sent(two, "broadcast") == [
        ("room:a", "chat.left", {"room": "a", "user": "alice"})
    ]
    assert rooms(one) == {"a": {"s2": "bob"}}
    assert record(one, "s1") == {}
    assert result_of(one.store.smembers("chat:bound:chat-1")) == set()


def test_an_online_event_is_acted_on_by_the_bound_instance_only(
    pair: tuple[ChatService, ChatService],
) -> None:
    """A resumed session is bound again on its new broker by the one instance it is bound to
    (the other stays still), which records where it is now."""
    one, two = pair
    ask(two, "join", room="a", **as_player(session("s1", "alice", broker="b1")))
    clear(one, two)
    directory_of(one).publish("session", "online", event("s1", "alice", "b2", "resumed"))
    assert one.runtime.sessions.calls == []  # type: ignore[attr-defined]
    assert sent(two, "bind") == [(Session(id="s1", user_id="alice", broker="b2"), "chat")]
    assert record(one, "s1")["broker"] == "b2"


def test_the_sessions_of_a_dead_instance_are_bound_to_a_survivor(
    pair: tuple[ChatService, ChatService],
) -> None:
    """When the registry drops an instance (kill -9: expired), the survivor takes over its
    sessions: each is bound to the survivor at its broker, and its room goes on (no
    member lost, nothing announced)."""
    one, two = pair
    alice, bob = session("s1", "alice"), session("s2", "bob", broker="b2")
    carol = session("s3", "carol")
    ask(one, "join", room="a", **as_player(alice))
    ask(one, "join", room="a", **as_player(bob))
    ask(two, "join", room="a", **as_player(carol))
    clear(one, two)
    directory_of(one).deregister("chat", "chat-1", "expired")
    assert sorted(sent(two, "bind"), key=lambda b: b[0].id) == [
        (lean(alice), "chat"),
        (lean(bob), "chat"),
    ]
    assert sent(two, "broadcast") == []
    assert {record(two, s)["instance"] for s in ("s1", "s2", "s3")} == {"chat-2"}
    assert result_of(two.store.smembers("chat:bound:chat-1")) == set()
    assert ask(two, "members", room="a") == ["alice", "bob", "carol"]
    ask(two, "send", content="still here", **as_player(alice))
    assert sent(two, "broadcast")[-1][1:3] == (
        "chat.message",
        {"room": "a", "from": "alice", "content": "still here", "ts": two.clock.seconds()},
    )


class LaggingCache:
    """A shared cache each of whose operations reaches the (in-memory) store ``lag`` seconds
    later on the clock, one lag per operation, as over a network: concurrent users of it
    interleave."""

    shared = True
    timeout = 5.0

    def __init__(self, clock: task.Clock, lags: Iterator[float]) -> None:
        self.inner = fake_cache(clock)
        self.clock = clock
        self.lags = lags

    def __getattr__(self, name: str) -> Any:
        operation = getattr(self.inner, name)

        def later(*args: Any) -> defer.Deferred[Any]:
            return task.deferLater(self.clock, next(self.lags), lambda: result_of(operation(*args)))

        return later


def pump(clock: task.Clock, seconds: float) -> None:
    """Let ``seconds`` pass on the clock in 10 ms steps (each step runs what fell due)."""
    clock.pump([0.01] * round(seconds / 0.01))


def test_each_session_of_a_dead_instance_is_taken_by_exactly_one_survivor(
    clock: task.Clock,
) -> None:
    """Two survivors sweeping a dead instance's sessions at once, their cache operations
    interleaved: each session is bound to exactly one of them (the srem claim)."""
    lags = iter([0.01 * (i % 7) for i in range(10_000)])
    directory, cache = FakeDirectory(clock), LaggingCache(clock, lags)
    one, two, three = instances(clock, directory, cache, "chat-1", "chat-2", "chat-3")
    players = [session(f"s{i}", f"user{i}") for i in range(12)]
    for player in players:
        call(one, "join", room="a", **as_player(player))
        pump(clock, 1.0)
    clear(one, two, three)
    directory.deregister("chat", "chat-1", "expired")
    pump(clock, 10.0)
    taken = [b[0].id for b in sent(two, "bind") + sent(three, "bind")]
    assert sorted(taken) == sorted(p.id for p in players)
    assert sent(two, "bind") and sent(three, "bind")  # both took some
    owners = {result_of(cache.inner.hgetall(f"chat:session:{p.id}"))["instance"] for p in players}
    assert owners == {"chat-2", "chat-3"}


def test_one_senders_messages_are_broadcast_in_the_order_they_came(clock: task.Clock) -> None:
    """Messages of one sender whose cache reads would answer in reverse order are still
    broadcast in the order they arrived: an instance serves one session at a time."""
    cache = LaggingCache(clock, itertools.repeat(0.0))
    chat = handler_factory(ChatService, clock=clock, cache=cache)
    alice = session("s1", "alice")
    call(chat, "join", room="a", **as_player(alice))
    pump(clock, 1.0)
    clear(chat)
    # Each send reads the cache once: the first read answers last.
    cache.lags = itertools.chain([0.5, 0.4, 0.3, 0.2, 0.1], itertools.repeat(0.0))
    for n in range(5):
        call(chat, "send", content=f"m{n}", **as_player(alice))
    pump(clock, 10.0)
    assert [b[2]["content"] for b in sent(chat, "broadcast")] == ["m0", "m1", "m2", "m3", "m4"]
    assert chat._turns == {}  # nothing kept once the session is idle


def test_a_request_moves_a_session_whose_instance_is_gone(
    pair: tuple[ChatService, ChatService],
) -> None:
    """A session bound to an instance the registry no longer lists, whose request reaches
    another instance (its broker dropped the dead binding), is taken over by it."""
    one, two = pair
    alice = session("s1", "alice")
    ask(one, "join", room="a", **as_player(alice))
    two.stop()  # deaf to the registry: the DOWN below moves nothing
    directory_of(one).deregister("chat", "chat-1", "expired")
    clear(one, two)
    ask(two, "send", content="hi", **as_player(alice))
    assert sent(two, "bind") == [(lean(alice), "chat")]
    assert record(two, "s1")["instance"] == "chat-2"


def test_an_instance_that_starts_takes_over_sessions_of_instances_gone(
    clock: task.Clock,
) -> None:
    """Sessions bound to an instance that died while no other ran are taken over by the
    next instance to start (once its registry view is complete)."""
    directory, cache = FakeDirectory(clock), fake_cache(clock)
    (one,) = instances(clock, directory, cache, "chat-1")
    ask(one, "join", room="a", **as_player(session("s1", "alice")))
    directory.deregister("chat", "chat-1", "expired")
    (two,) = instances(clock, directory, cache, "chat-2")
    assert sent(two, "bind") == [(lean(session("s1", "alice")), "chat")]
    assert result_of(cache.smembers("chat:instances")) == {"chat-2"}


def test_a_resumed_session_whose_instance_is_gone_is_taken_by_one_instance(
    pair: tuple[ChatService, ChatService], clock: task.Clock
) -> None:
    """An online event for a session bound to an instance the registry does not list: one
    instance (the srem claim) binds it to itself on its new broker."""
    one, two = pair
    # Bound to an instance the registry never listed (it died before the others started).
    ghost = handler_factory(ChatService, instance_id="chat-9", clock=clock, cache=one.store)
    ask(ghost, "join", room="a", **as_player(session("s1", "alice")))
    directory_of(one).publish("session", "online", event("s1", "alice", "b2", "resumed"))
    binds = sent(one, "bind") + sent(two, "bind")
    assert binds == [(Session(id="s1", user_id="alice", broker="b2"), "chat")]
    assert record(one, "s1")["instance"] in {"chat-1", "chat-2"}
    assert record(one, "s1")["broker"] == "b2"


def test_stopped_instances_take_over_nothing(pair: tuple[ChatService, ChatService]) -> None:
    """After stop, an instance no longer follows the registry."""
    one, two = pair
    ask(one, "join", room="a", **as_player(session("s1", "alice")))
    two.stop()
    clear(two)
    directory_of(one).deregister("chat", "chat-1", "expired")
    assert two.runtime.sessions.calls == []  # type: ignore[attr-defined]
