"""SessionService: open, resume, closed, logout, track, get, find, grace and lost brokers.

The service runs on a fake runtime (``mmo.testing.handler_factory``): what it
publishes is in ``runtime.published``, what it does to sessions (kicks) in
``runtime.sessions``; time is a ``task.Clock``.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from twisted.internet import task

from mmo.config import ConfigError
from mmo.data import MemoryCache
from mmo.data.tokens import issue, verify
from mmo.errors import BadRequest, Forbidden, MmoError, UnknownMethod
from mmo.registry import Change, Instance
from mmo.sessions import ResumeFailed, SessionService
from mmo.sessions.service import RESUME_PURPOSE, TooManySessions
from mmo.testing import FakeDirectory, as_player, handler_factory, result_of
from mmo.testing import call as call_handler
from mmo.wire.gen.mmo.ttypes import ErrorCode, Session

GRACE = 30.0
URLSAFE = re.compile(r"[A-Za-z0-9_-]+")


@pytest.fixture
def clock() -> task.Clock:
    """The session service's clock."""
    return task.Clock()


@pytest.fixture
def svc(clock: task.Clock) -> SessionService:
    """A session service on a fake runtime (grace: the class default, 30 s)."""
    return handler_factory(SessionService, clock=clock)


def call(*args: Any, **kwargs: Any) -> Any:
    """``mmo.testing.call``'s result (the service's methods read and write the in-process
    cache: their Deferreds have fired when they return)."""
    return result_of(call_handler(*args, **kwargs))


def stored(svc: SessionService) -> list[str]:
    """The keys the service keeps in its cache, but for the list of brokers to sweep."""
    return [k for k in svc.store.cache.live_keys() if k != "session:brokers"]  # type: ignore[attr-defined]


def brief(found: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Sessions as ``find`` answers them, cut down to id, broker and online flag."""
    return [{k: s[k] for k in ("session_id", "broker", "online")} for s in found]


def as_broker(instance_id: Any) -> dict[str, Any]:
    """The options of ``mmo.testing.call`` that make a call broker ``instance_id``'s (the
    caller a session is held by)."""
    return {"caller": instance_id, "caller_role": "broker"}


def published(svc: SessionService) -> list[tuple[str, Any]]:
    """The (topic, payload) events published so far."""
    return svc.runtime.published  # type: ignore[attr-defined,no-any-return]


def kicks(svc: SessionService) -> list[tuple[Any, ...]]:
    """The (session, reason) of each kick sent to a broker."""
    return svc.runtime.sessions.of("kick")  # type: ignore[attr-defined,no-any-return]


def topics(svc: SessionService) -> list[str]:
    """The topics published so far, in order."""
    return [topic for topic, _ in published(svc)]


def open_session(svc: SessionService, user: str = "alice", broker: str = "b1") -> dict[str, str]:
    """Open a session as a broker does after a login."""
    return call(svc, "open", user_id=user, **as_broker(broker))  # type: ignore[no-any-return]


def broker(instance_id: str) -> Instance:
    """A broker's registry record."""
    return Instance(service_name="broker", instance_id=instance_id)


# -- open, get, find ------------------------------------------------------------


def test_open_returns_random_urlsafe_id_and_token_and_publishes_enter(svc: SessionService) -> None:
    """open answers a URL-safe session id and token and publishes enter with the full payload."""
    reply = open_session(svc)
    assert set(reply) == {"session_id", "token", "token_ttl"}
    assert URLSAFE.fullmatch(reply["session_id"]) and len(reply["session_id"]) == 16
    assert verify(reply["token"], svc.key, purpose=RESUME_PURPOSE) == reply["session_id"]
    assert reply["token_ttl"] == svc.token_ttl
    assert published(svc) == [
        (
            "enter",
            {
                "session_id": reply["session_id"],
                "user_id": "alice",
                "broker": "b1",
                "reason": "login",
            },
        )
    ]


def test_open_gives_every_session_its_own_id_and_token(svc: SessionService) -> None:
    """Two sessions of the same user never share an id or a token."""
    a, b = open_session(svc), open_session(svc)
    assert a["session_id"] != b["session_id"]
    assert a["token"] != b["token"]


def test_get_returns_the_record_without_the_token(svc: SessionService, clock: task.Clock) -> None:
    """get shows user, broker, online, since when, props, channels and bindings, never the
    token; offline, until when it may be resumed."""
    clock.advance(100.0)
    sid = call(svc, "open", user_id="alice", **as_broker("b1"), props={"level": 3})["session_id"]
    assert call(svc, "get", session_id=sid) == {
        "session_id": sid,
        "user_id": "alice",
        "broker": "b1",
        "online": True,
        "since": 100.0,
        "offline_until": None,
        "props": {"level": 3},
        "channels": [],
        "bindings": {},
    }
    clock.advance(5.0)
    call(svc, "closed", session_id=sid, **as_broker("b1"))
    record = call(svc, "get", session_id=sid)
    assert (record["online"], record["since"], record["offline_until"]) == (
        False,
        100.0,
        105.0 + GRACE,
    )


def test_get_of_an_unknown_session_is_none(svc: SessionService) -> None:
    """get answers None for a session id it does not know."""
    assert call(svc, "get", session_id="nope") is None


def test_numeric_user_ids_are_kept_as_strings(svc: SessionService) -> None:
    """A numeric user id (as some auth services answer) is stored and found as a string."""
    sid = call(svc, "open", user_id=42, **as_broker("b1"))["session_id"]
    assert call(svc, "get", session_id=sid)["user_id"] == "42"
    assert brief(call(svc, "find", user_id=42)) == [
        {"session_id": sid, "broker": "b1", "online": True}
    ]


@pytest.mark.parametrize(
    ("broker", "kwargs"),
    [
        ("b1", {"user_id": ""}),
        ("b1", {"user_id": True}),
        (7, {"user_id": "alice"}),
        ("b1", {"user_id": "alice", "props": [1, 2]}),
    ],
)
def test_open_refuses_bad_arguments(
    svc: SessionService, broker: Any, kwargs: dict[str, Any]
) -> None:
    """open raises BadRequest for an empty or non-string user, a bad broker or non-map props."""
    with pytest.raises(BadRequest):
        call(svc, "open", **kwargs, **as_broker(broker))
    assert stored(svc) == []


def test_find_lists_a_users_sessions_oldest_first(clock: task.Clock) -> None:
    """find answers each of the user's sessions as get does (broker, online flag...),
    oldest first."""
    svc = handler_factory(SessionService, clock=clock, settings={"max_sessions_per_user": 2})
    a = open_session(svc, "alice", "b1")["session_id"]
    open_session(svc, "bob", "b1")
    b = open_session(svc, "alice", "b2")["session_id"]
    call(svc, "closed", session_id=a, **as_broker("b1"))
    assert brief(call(svc, "find", user_id="alice")) == [
        {"session_id": a, "broker": "b1", "online": False},
        {"session_id": b, "broker": "b2", "online": True},
    ]
    assert call(svc, "find", user_id="alice")[1] == call(svc, "get", session_id=b)
    assert call(svc, "find", user_id="carol") == []


def test_what_a_broker_reports_is_retried_on_another_instance_but_open_and_resume() -> None:
    """The reads and the broker's reports (refresh, closed, logout, track: the same effect
    however often they run) are marked safe to retry on another instance when one dies;
    open and resume are not (a second run would open a second session, or find the token
    already replaced)."""
    methods = SessionService.method_names()
    assert set(methods) == {
        "open",
        "resume",
        "refresh",
        "closed",
        "logout",
        "track",
        "get",
        "find",
        "channels",
    }
    assert {m for m, safe in methods.items() if not safe} == {"open", "resume"}


# -- closed and grace ---------------------------------------------------------------


def test_closed_sets_offline_and_the_grace_period_ends_the_session(
    svc: SessionService, clock: task.Clock
) -> None:
    """closed publishes offline; after grace seconds the session leaves and is forgotten."""
    sid = open_session(svc)["session_id"]
    call(svc, "closed", session_id=sid, **as_broker("b1"))
    assert call(svc, "get", session_id=sid)["online"] is False
    assert published(svc)[-1] == (
        "offline",
        {"session_id": sid, "user_id": "alice", "broker": "b1", "reason": "closed"},
    )
    clock.advance(GRACE - 0.1)
    assert call(svc, "get", session_id=sid) is not None
    clock.advance(0.1)
    assert published(svc)[-1] == (
        "leave",
        {"session_id": sid, "user_id": "alice", "broker": "b1", "reason": "expired"},
    )
    assert call(svc, "get", session_id=sid) is None
    assert call(svc, "find", user_id="alice") == []


def test_closed_from_a_broker_that_no_longer_holds_the_session_is_ignored(
    svc: SessionService,
) -> None:
    """A closed naming another broker changes nothing and publishes nothing."""
    sid = open_session(svc)["session_id"]
    call(svc, "closed", session_id=sid, **as_broker("b2"))
    assert call(svc, "get", session_id=sid)["online"] is True
    assert topics(svc) == ["enter"]


def test_closed_twice_publishes_offline_once_and_keeps_the_first_deadline(
    svc: SessionService, clock: task.Clock
) -> None:
    """A repeated closed neither republishes offline nor restarts the grace period."""
    sid = open_session(svc)["session_id"]
    call(svc, "closed", session_id=sid, **as_broker("b1"))
    clock.advance(GRACE / 2)
    call(svc, "closed", session_id=sid, **as_broker("b1"))
    clock.advance(GRACE / 2)
    assert topics(svc) == ["enter", "offline", "leave"]


def test_closed_of_an_unknown_session_is_ignored(svc: SessionService) -> None:
    """closed for an unknown (or malformed) session id does nothing."""
    call(svc, "closed", session_id="nope", **as_broker("b1"))
    call(svc, "closed", session_id=["not", "a", "string"], **as_broker("b1"))
    assert published(svc) == []


def test_grace_is_a_setting(clock: task.Clock) -> None:
    """The grace setting ([worker.settings] grace, --set grace=...) sets the grace period."""
    svc = handler_factory(SessionService, clock=clock, settings={"grace": "0.5"})
    assert svc.grace == 0.5
    sid = open_session(svc)["session_id"]
    call(svc, "closed", session_id=sid, **as_broker("b1"))
    clock.advance(0.5)
    assert call(svc, "get", session_id=sid) is None


@pytest.mark.parametrize(
    "settings",
    [
        {"grace": "soon"},
        {"grace": -1},
        {"grace": "nan"},
        {"grace": "inf"},
        {"max_sessions_per_user": 0},
        {"when_full": "evict"},
        {"sweep_interval": 0},
        {"nosuch": 1},
    ],
)
def test_bad_settings_are_a_config_error(settings: dict[str, Any]) -> None:
    """A setting of the wrong type, out of range or unknown is refused, naming it."""
    with pytest.raises(ConfigError, match=next(iter(settings)).replace("_", "[-_]")):
        handler_factory(SessionService, settings=settings)


def test_stop_cancels_the_grace_timers(svc: SessionService, clock: task.Clock) -> None:
    """stop leaves no timer behind on the reactor."""
    sid = open_session(svc)["session_id"]
    call(svc, "closed", session_id=sid, **as_broker("b1"))
    assert clock.getDelayedCalls()
    svc.stop()
    assert clock.getDelayedCalls() == []


# -- resume ---------------------------------------------------------------------


def test_resume_restores_the_session_with_a_new_token_and_publishes_online(
    svc: SessionService, clock: task.Clock
) -> None:
    """resume within grace answers the record and a fresh token, and publishes online."""
    opened = open_session(svc)
    sid = opened["session_id"]
    call(svc, "closed", session_id=sid, **as_broker("b1"))
    clock.advance(GRACE - 1)
    reply = call(svc, "resume", session_id=sid, token=opened["token"], **as_broker("b2"))
    assert reply == {
        "session_id": sid,
        "user_id": "alice",
        "token": reply["token"],
        "token_ttl": svc.token_ttl,
        "props": {},
        "channels": [],
        "bindings": {},
    }
    assert reply["token"] != opened["token"]
    assert verify(reply["token"], svc.key, purpose=RESUME_PURPOSE) == sid
    assert published(svc)[-1] == (
        "online",
        {"session_id": sid, "user_id": "alice", "broker": "b2", "reason": "resumed"},
    )
    assert call(svc, "get", session_id=sid)["broker"] == "b2"
    assert call(svc, "get", session_id=sid)["online"] is True


def test_resume_cancels_the_grace_period(svc: SessionService, clock: task.Clock) -> None:
    """A resumed session no longer expires when its old grace period ends."""
    opened = open_session(svc)
    sid = opened["session_id"]
    call(svc, "closed", session_id=sid, **as_broker("b1"))
    call(svc, "resume", session_id=sid, token=opened["token"], **as_broker("b1"))
    clock.advance(GRACE * 2)
    assert call(svc, "get", session_id=sid)["online"] is True
    assert "leave" not in topics(svc)


def test_the_old_token_stops_working_after_a_resume(svc: SessionService) -> None:
    """Each resume rotates the token: the previous one is refused, the new one works."""
    opened = open_session(svc)
    sid = opened["session_id"]
    second = call(svc, "resume", session_id=sid, token=opened["token"], **as_broker("b1"))
    with pytest.raises(ResumeFailed):
        call(svc, "resume", session_id=sid, token=opened["token"], **as_broker("b1"))
    third = call(svc, "resume", session_id=sid, token=second["token"], **as_broker("b1"))
    assert len({opened["token"], second["token"], third["token"]}) == 3


@pytest.mark.parametrize("token", ["wrong", "", None, 12345, "ünïcode"])
def test_resume_with_a_wrong_token_fails(svc: SessionService, token: Any) -> None:
    """A wrong, empty, missing, non-string or non-ASCII token is a ResumeFailed."""
    sid = open_session(svc)["session_id"]
    with pytest.raises(ResumeFailed):
        call(svc, "resume", session_id=sid, token=token, **as_broker("b1"))
    assert topics(svc) == ["enter"]


def test_resume_with_a_forged_expired_or_foreign_token_fails(
    svc: SessionService, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Signed with another key, for another purpose, for another session, or past its
    expiry: ResumeFailed, and the session is still there for its real token."""
    opened, other = open_session(svc), open_session(svc, user="bob")
    sid = opened["session_id"]
    forged = [
        issue(sid, b"not-the-cluster-key-at-all", ttl=60, purpose=RESUME_PURPOSE),
        issue(sid, svc.key, ttl=60, purpose="auth"),
        other["token"],
        issue(sid, svc.key, ttl=-1, purpose=RESUME_PURPOSE),
    ]
    for token in forged:
        with pytest.raises(ResumeFailed):
            call(svc, "resume", session_id=sid, token=token, **as_broker("b1"))
    short = handler_factory(SessionService, clock=task.Clock(), settings={"token_ttl": 0})
    expired = open_session(short)
    with pytest.raises(ResumeFailed, match="expired"):
        call(
            short,
            "resume",
            session_id=expired["session_id"],
            token=expired["token"],
            **as_broker("b1"),
        )
    assert call(svc, "resume", session_id=sid, token=opened["token"], **as_broker("b1"))["user_id"]


def test_refresh_gives_a_new_token_to_the_session_online_on_that_broker(
    svc: SessionService,
) -> None:
    """refresh replaces the token (the old one stops working); only the holding broker may."""
    opened = open_session(svc)
    sid = opened["session_id"]
    with pytest.raises(ResumeFailed):
        call(svc, "refresh", session_id=sid, **as_broker("b2"))
    fresh = call(svc, "refresh", session_id=sid, **as_broker("b1"))
    assert fresh == {"token": fresh["token"], "token_ttl": svc.token_ttl}
    with pytest.raises(ResumeFailed):
        call(svc, "resume", session_id=sid, token=opened["token"], **as_broker("b1"))
    assert call(svc, "resume", session_id=sid, token=fresh["token"], **as_broker("b1"))["user_id"]
    call(svc, "closed", session_id=sid, **as_broker("b1"))
    with pytest.raises(ResumeFailed):
        call(svc, "refresh", session_id=sid, **as_broker("b1"))


def test_the_service_refuses_to_start_without_a_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """No $MMO_AUTH_KEY, no key file, no MMO_DEMO=1: a ConfigError naming the variable."""
    for name in ("MMO_AUTH_KEY", "MMO_AUTH_KEY_FILE", "MMO_DEMO"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ConfigError, match="MMO_AUTH_KEY"):
        handler_factory(SessionService, clock=task.Clock())


def test_resume_of_an_unknown_or_expired_session_fails(
    svc: SessionService, clock: task.Clock
) -> None:
    """An unknown session, and one resumed after its grace period, give ResumeFailed."""
    with pytest.raises(ResumeFailed):
        call(svc, "resume", session_id="nope", token="x", **as_broker("b1"))
    opened = open_session(svc)
    call(svc, "closed", session_id=opened["session_id"], **as_broker("b1"))
    clock.advance(GRACE)
    with pytest.raises(ResumeFailed):
        call(
            svc, "resume", session_id=opened["session_id"], token=opened["token"], **as_broker("b1")
        )


def test_resume_failed_reaches_callers_as_a_typed_remote_error() -> None:
    """ResumeFailed is an MmoError with the REMOTE code, so callers see its type name."""
    error = ResumeFailed("x")
    assert isinstance(error, MmoError)
    assert error.code == ErrorCode.REMOTE
    assert type(error).__name__ == "ResumeFailed"


def test_resume_elsewhere_kicks_the_connection_still_holding_it(svc: SessionService) -> None:
    """Resuming on another broker while online sends KICK REPLACED to the old broker first."""
    opened = open_session(svc, broker="b1")
    sid = opened["session_id"]
    call(svc, "resume", session_id=sid, token=opened["token"], **as_broker("b2"))
    assert kicks(svc) == [(Session(id=sid, broker="b1"), "REPLACED")]
    assert call(svc, "get", session_id=sid)["broker"] == "b2"


def test_resume_of_an_offline_or_same_broker_session_kicks_nobody(svc: SessionService) -> None:
    """No kick when the session is offline, or online on the broker resuming it."""
    opened = open_session(svc, broker="b1")
    sid = opened["session_id"]
    again = call(svc, "resume", session_id=sid, token=opened["token"], **as_broker("b1"))
    call(svc, "closed", session_id=sid, **as_broker("b1"))
    call(svc, "resume", session_id=sid, token=again["token"], **as_broker("b2"))
    assert kicks(svc) == []


def test_late_messages_from_the_replaced_broker_change_nothing(
    svc: SessionService, clock: task.Clock
) -> None:
    """After a move, the old broker's closed, track and logout are ignored."""
    opened = open_session(svc, broker="b1")
    sid = opened["session_id"]
    call(svc, "track", session_id=sid, **as_broker("b1"), joined=["room:a"])
    call(svc, "resume", session_id=sid, token=opened["token"], **as_broker("b2"))
    call(svc, "closed", session_id=sid, **as_broker("b1"))
    call(svc, "track", session_id=sid, **as_broker("b1"), left=["room:a"])
    assert call(svc, "logout", session_id=sid, **as_broker("b1")) is False
    clock.advance(GRACE * 2)
    record = call(svc, "get", session_id=sid)
    assert record["online"] is True and record["channels"] == ["room:a"]
    assert topics(svc) == ["enter", "online"]


# -- logout -----------------------------------------------------------------------


def test_logout_ends_the_session_at_once(svc: SessionService) -> None:
    """logout answers True, publishes leave (reason logout) and forgets the session."""
    sid = open_session(svc)["session_id"]
    assert call(svc, "logout", session_id=sid, **as_broker("b1")) is True
    assert published(svc)[-1] == (
        "leave",
        {"session_id": sid, "user_id": "alice", "broker": "b1", "reason": "logout"},
    )
    assert call(svc, "get", session_id=sid) is None
    assert stored(svc) == []


def test_logout_may_name_its_reason(svc: SessionService) -> None:
    """A broker ending a kicked session may give the leave event its reason."""
    sid = open_session(svc)["session_id"]
    call(svc, "logout", session_id=sid, **as_broker("b1"), reason="kicked")
    assert published(svc)[-1][1]["reason"] == "kicked"


def test_logout_of_an_unknown_session_or_from_another_broker_is_false(
    svc: SessionService,
) -> None:
    """logout answers False and publishes nothing for an unknown session or a wrong broker."""
    sid = open_session(svc)["session_id"]
    assert call(svc, "logout", session_id="nope", **as_broker("b1")) is False
    assert call(svc, "logout", session_id=sid, **as_broker("b2")) is False
    assert topics(svc) == ["enter"]


def test_logout_of_an_offline_session_cancels_its_grace_period(
    svc: SessionService, clock: task.Clock
) -> None:
    """An offline session logged out leaves once, not again when its grace would end."""
    sid = open_session(svc)["session_id"]
    call(svc, "closed", session_id=sid, **as_broker("b1"))
    call(svc, "logout", session_id=sid, **as_broker("b1"))
    assert clock.getDelayedCalls() == []
    clock.advance(GRACE)
    assert topics(svc) == ["enter", "offline", "leave"]


# -- channels (for operators) ------------------------------------------------------


def test_channels_counts_the_members_of_every_channel_largest_first(
    svc: SessionService,
) -> None:
    """channels answers each channel with how many sessions are in it, online or offline
    (a resume restores their channels), largest first then by name; left channels and
    ended sessions are not counted; ``prefix`` and ``limit`` narrow it."""
    sids = [open_session(svc, f"user{i}", f"b{i % 2}")["session_id"] for i in range(4)]
    for i, sid in enumerate(sids):
        rooms = ["room:all", "guild:red" if i % 2 else "guild:blue", *(["room:x"] * (i == 0))]
        call(svc, "track", session_id=sid, **as_broker(f"b{i % 2}"), joined=rooms)
    call(svc, "track", session_id=sids[0], **as_broker("b0"), left=["room:all"])
    call(svc, "closed", session_id=sids[1], **as_broker("b1"))  # offline: still counted
    call(svc, "logout", session_id=sids[2], **as_broker("b0"))  # ended: gone
    operator = {"caller_role": "admin"}
    assert call(svc, "channels", **operator) == {
        "guild:red": 2,
        "room:all": 2,
        "guild:blue": 1,
        "room:x": 1,
    }
    assert call(svc, "channels", prefix="room:", **operator) == {"room:all": 2, "room:x": 1}
    assert call(svc, "channels", limit=1, caller_role="tool") == {"guild:red": 2}
    assert call(svc, "channels", prefix="nope", **operator) == {}


def test_channels_is_for_operators_only(svc: SessionService) -> None:
    """Another member gets Forbidden, a player a method that does not exist; bad
    arguments are BadRequest; the method is no client route."""
    open_session(svc)
    with pytest.raises(Forbidden):
        call(svc, "channels", caller_role="broker")
    with pytest.raises(UnknownMethod):
        call(svc, "channels", **as_player(Session(id="s", user_id="eve", broker="b1")))
    for wrong in ({"prefix": 3}, {"limit": -1}, {"limit": True}):
        with pytest.raises(BadRequest):
            call(svc, "channels", caller_role="tool", **wrong)
    assert "channels" not in SessionService.registry_meta()["client"]


# -- track --------------------------------------------------------------------------


def test_track_records_what_a_resume_restores(svc: SessionService) -> None:
    """Joins, leaves, props (None deletes) and bindings tracked are answered by resume."""
    opened = open_session(svc)
    sid = opened["session_id"]
    call(
        svc, "track", session_id=sid, **as_broker("b1"), joined=["room:a", "room:b"], props={"x": 1}
    )
    call(
        svc,
        "track",
        session_id=sid,
        **as_broker("b1"),
        left=["room:a"],
        props={"x": None, "y": "z"},
    )
    call(
        svc, "track", session_id=sid, **as_broker("b1"), bound={"fight": "fight-1", "map": "map-2"}
    )
    call(svc, "track", session_id=sid, **as_broker("b1"), unbound=["map"])
    reply = call(svc, "resume", session_id=sid, token=opened["token"], **as_broker("b2"))
    assert reply["channels"] == ["room:b"]
    assert reply["props"] == {"y": "z"}
    assert reply["bindings"] == {"fight": "fight-1"}


def test_track_applies_joined_before_left(svc: SessionService) -> None:
    """A channel both joined and left in one track ends up left."""
    sid = open_session(svc)["session_id"]
    call(svc, "track", session_id=sid, **as_broker("b1"), joined=["c"], left=["c"])
    assert call(svc, "get", session_id=sid)["channels"] == []


@pytest.mark.parametrize(
    "kwargs",
    [
        {"joined": "room:a"},
        {"left": [1]},
        {"props": ["x"]},
        {"bound": {"fight": 3}},
        {"unbound": "fight"},
    ],
)
def test_track_refuses_badly_typed_changes(svc: SessionService, kwargs: dict[str, Any]) -> None:
    """track raises BadRequest for lists that are not lists of strings and maps that are not."""
    sid = open_session(svc)["session_id"]
    with pytest.raises(BadRequest):
        call(svc, "track", session_id=sid, **as_broker("b1"), **kwargs)


def test_track_of_an_unknown_session_is_ignored(svc: SessionService) -> None:
    """track for a session that has ended does nothing (and does not fail)."""
    assert call(svc, "track", session_id="gone", **as_broker("b1"), joined=["c"]) is None
    assert stored(svc) == []


# -- lost brokers ------------------------------------------------------------------


def test_start_listens_to_the_registry_when_the_runtime_has_a_directory(
    svc: SessionService,
) -> None:
    """With a directory (a real worker), start registers a registry listener."""
    directory = FakeDirectory()
    svc.runtime.directory = directory  # type: ignore[attr-defined]
    svc.start()
    assert directory.view.listeners == [svc.registry_changed]


def test_start_without_a_directory_does_nothing(svc: SessionService) -> None:
    """On a runtime with no directory (a unit test), start needs nothing."""
    assert svc.start() is None


@pytest.mark.parametrize("reason", ["expired", "deregistered", "vanished"])
def test_a_broker_going_down_sets_its_sessions_offline(
    svc: SessionService, clock: task.Clock, reason: str
) -> None:
    """Any DOWN of a broker sets its online sessions offline (broker lost), each with grace."""
    directory = FakeDirectory()
    svc.runtime.directory = directory  # type: ignore[attr-defined]
    svc.start()
    directory.register("broker", "b1")
    a = open_session(svc, "alice", "b1")["session_id"]
    b = open_session(svc, "bob", "b1")["session_id"]
    c = open_session(svc, "carol", "b2")["session_id"]
    del published(svc)[:]
    directory.deregister("broker", "b1", reason)
    # In no particular order: a broker's sessions are a set.
    assert sorted(published(svc), key=lambda event: event[1]["user_id"]) == [
        ("offline", {"session_id": a, "user_id": "alice", "broker": "b1", "reason": "broker lost"}),
        ("offline", {"session_id": b, "user_id": "bob", "broker": "b1", "reason": "broker lost"}),
    ]
    assert call(svc, "get", session_id=c)["online"] is True
    clock.advance(GRACE)
    assert call(svc, "get", session_id=a) is None and call(svc, "get", session_id=b) is None
    assert call(svc, "get", session_id=c) is not None


def test_sessions_of_a_lost_broker_can_be_resumed_elsewhere(svc: SessionService) -> None:
    """A session whose broker died resumes on another broker without any kick."""
    opened = open_session(svc, broker="b1")
    svc.registry_changed(Change.DOWN, broker("b1"), "expired")
    reply = call(
        svc, "resume", session_id=opened["session_id"], token=opened["token"], **as_broker("b2")
    )
    assert reply["session_id"] == opened["session_id"]
    assert kicks(svc) == []


def test_other_registry_changes_leave_sessions_alone(svc: SessionService) -> None:
    """A broker coming UP, or another service going DOWN, changes no session."""
    sid = open_session(svc, broker="b1")["session_id"]
    svc.registry_changed(Change.UP, broker("b1"), "registered")
    svc.registry_changed(Change.DOWN, Instance(service_name="chat", instance_id="b1"), "expired")
    assert call(svc, "get", session_id=sid)["online"] is True
    assert topics(svc) == ["enter"]


def test_a_lost_broker_does_not_restart_grace_of_sessions_already_offline(
    svc: SessionService, clock: task.Clock
) -> None:
    """Sessions already offline keep their deadline and get no second offline event."""
    sid = open_session(svc, broker="b1")["session_id"]
    call(svc, "closed", session_id=sid, **as_broker("b1"))
    clock.advance(GRACE / 2)
    assert result_of(svc.broker_lost("b1")) == 0
    clock.advance(GRACE / 2)
    assert topics(svc) == ["enter", "offline", "leave"]


# -- memory ----------------------------------------------------------------------


def test_memory_is_released_when_sessions_leave(svc: SessionService, clock: task.Clock) -> None:
    """Once every session has left (logout or expiry) nothing of them is kept."""
    for i in range(10):
        sid = open_session(svc, f"user{i % 3}")["session_id"]
        if i % 2:
            call(svc, "logout", session_id=sid, **as_broker("b1"))
        else:
            call(svc, "closed", session_id=sid, **as_broker("b1"))
    clock.advance(GRACE)
    assert stored(svc) == []
    assert clock.getDelayedCalls() == []


# -- who may call, sessions per user, orphans ----------------------------------------


@pytest.mark.parametrize(
    ("method", "kwargs"),
    [
        ("open", {"user_id": "mallory"}),
        ("resume", {"session_id": "s", "token": "t"}),
        ("refresh", {"session_id": "s"}),
        ("closed", {"session_id": "s"}),
        ("logout", {"session_id": "s"}),
        ("track", {"session_id": "s", "joined": ["room:x"]}),
    ],
)
def test_only_brokers_may_change_sessions(
    svc: SessionService, method: str, kwargs: dict[str, Any]
) -> None:
    """The methods that open, resume or change a session are Forbidden to other members
    and do not exist for players."""
    for role in ("worker", "tool"):
        with pytest.raises(Forbidden):
            call(svc, method, kwargs, caller="chat-1", caller_role=role)
    with pytest.raises(UnknownMethod):
        call(svc, method, kwargs, **as_player(Session(id="x", broker="b1")))
    assert stored(svc) == []


def test_the_broker_is_the_caller_never_the_body(svc: SessionService) -> None:
    """A body naming a broker is refused (unexpected argument): the record's broker is the
    calling broker's instance id."""
    with pytest.raises(BadRequest, match="unexpected keyword argument 'broker'"):
        call(svc, "open", {"user_id": "alice", "broker": "elsewhere"}, **as_broker("b1"))
    sid = open_session(svc, "alice", "b7")["session_id"]
    assert call(svc, "get", session_id=sid)["broker"] == "b7"


def test_a_new_login_replaces_the_users_session(svc: SessionService) -> None:
    """By default a user holds one session: a second login ends the first (kick + leave)."""
    first = open_session(svc, "alice", "b1")["session_id"]
    second = open_session(svc, "alice", "b2")["session_id"]
    assert call(svc, "get", session_id=first) is None
    assert brief(call(svc, "find", user_id="alice")) == [
        {"session_id": second, "broker": "b2", "online": True}
    ]
    ((kicked, reason),) = kicks(svc)
    assert (kicked.id, kicked.broker) == (first, "b1") and "replaced" in reason
    assert (
        "leave",
        {"session_id": first, "user_id": "alice", "broker": "b1", "reason": "replaced"},
    ) in published(svc)
    assert svc.counters["replaced"] == 1


def test_when_full_refuse_keeps_the_old_session(clock: task.Clock) -> None:
    """when_full = refuse: a login past the limit fails with TooManySessions."""
    svc = handler_factory(SessionService, clock=clock, settings={"when_full": "refuse"})
    first = open_session(svc, "alice")["session_id"]
    with pytest.raises(TooManySessions):
        open_session(svc, "alice", "b2")
    assert call(svc, "get", session_id=first)["online"] is True
    assert svc.counters["refused"] == 1


class SweptView:
    """A registry view for the sweep: the brokers it lists and whether it is warm."""

    def __init__(self, *brokers: str, warm: bool = True) -> None:
        self.instances = {"broker": {b: broker(b) for b in brokers}}
        self.warm = warm


def test_sessions_of_a_broker_the_registry_does_not_list_go_offline_then_end(
    svc: SessionService, clock: task.Clock
) -> None:
    """A record held by an unknown broker goes offline at the sweep and ends after grace;
    nothing is swept while the view is not warm (a restarted registry)."""
    kept = open_session(svc, "alice", "b1")["session_id"]
    orphan = open_session(svc, "bob", "ghost")["session_id"]
    assert result_of(svc.sweep(SweptView("b1", warm=False))) == 0
    assert result_of(svc.sweep(SweptView("b1"))) == 1
    assert call(svc, "get", session_id=orphan)["online"] is False
    clock.advance(GRACE)
    assert call(svc, "get", session_id=orphan) is None
    assert call(svc, "get", session_id=kept)["online"] is True


# -- several instances sharing one cache -------------------------------------------------


@pytest.fixture
def pair(clock: task.Clock) -> tuple[SessionService, SessionService]:
    """Two session instances sharing one cache, as two processes sharing a Redis."""
    cache = MemoryCache(clock)
    cache.startService()
    return (
        handler_factory(SessionService, clock=clock, cache=cache, instance_id="session-1"),
        handler_factory(SessionService, clock=clock, cache=cache, instance_id="session-2"),
    )


def test_any_instance_answers_for_a_session_another_opened(
    pair: tuple[SessionService, SessionService],
) -> None:
    """Opened on one instance, tracked on the other, resumed on the first: the channels,
    props and bindings a broker reported reach the resume whichever instance heard them."""
    one, two = pair
    opened = open_session(one, "alice", "b1")
    sid = opened["session_id"]
    call(two, "track", session_id=sid, joined=["room:a", "room:b"], **as_broker("b1"))
    call(one, "track", session_id=sid, left=["room:a"], props={"lvl": 3}, **as_broker("b1"))
    call(two, "track", session_id=sid, bound={"fight": "fight-2"}, **as_broker("b1"))
    call(two, "closed", session_id=sid, **as_broker("b1"))
    resumed = call(one, "resume", session_id=sid, token=opened["token"], **as_broker("b2"))
    assert (resumed["channels"], resumed["props"], resumed["bindings"]) == (
        ["room:b"],
        {"lvl": 3},
        {"fight": "fight-2"},
    )
    assert call(two, "get", session_id=sid)["broker"] == "b2"
    assert topics(one) == ["enter", "online"] and topics(two) == ["offline"]


def test_a_dead_instances_offline_sessions_end_at_another_instances_sweep(
    pair: tuple[SessionService, SessionService], clock: task.Clock
) -> None:
    """The instance that took a session offline dies (its grace timer with it): another
    instance's sweep ends the session once its grace is over, and publishes leave once."""
    one, two = pair
    sid = open_session(one, "alice", "b1")["session_id"]
    call(one, "closed", session_id=sid, **as_broker("b1"))
    one.stop()  # the process is gone: its timers too
    clock.advance(GRACE - 1)
    result_of(two.sweep(SweptView("b1")))
    assert call(two, "get", session_id=sid) is not None  # still within its grace
    clock.advance(1)
    result_of(two.sweep(SweptView("b1")))
    assert call(two, "get", session_id=sid) is None
    assert topics(two) == ["leave"] and topics(one) == ["enter", "offline"]
    assert stored(two) == []


def test_a_broker_lost_is_acted_on_once_by_all_the_instances_told(
    pair: tuple[SessionService, SessionService], clock: task.Clock
) -> None:
    """Every instance hears a broker go DOWN: each of its sessions goes offline once (one
    offline event in all), and ends once."""
    one, two = pair
    sids = {open_session(one, f"user{i}", "b1")["session_id"] for i in range(5)}
    assert result_of(one.broker_lost("b1")) + result_of(two.broker_lost("b1")) == 5
    clock.advance(GRACE)
    result_of(two.sweep(SweptView()))
    events = published(one) + published(two)
    assert sorted(p["session_id"] for t, p in events if t == "offline") == sorted(sids)
    assert sorted(p["session_id"] for t, p in events if t == "leave") == sorted(sids)


def test_a_token_resumes_once_across_instances(
    pair: tuple[SessionService, SessionService],
) -> None:
    """A resume on one instance replaces the token: the same token fails on the other."""
    one, two = pair
    opened = open_session(one, "alice", "b1")
    call(one, "resume", session_id=opened["session_id"], token=opened["token"], **as_broker("b2"))
    with pytest.raises(ResumeFailed):
        call(
            two, "resume", session_id=opened["session_id"], token=opened["token"], **as_broker("b3")
        )
