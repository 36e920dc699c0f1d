"""The dispatcher's handler on a fake runtime: allocate, arrived, release, matchmake, and
what players are told when a fight is lost or cancelled."""

from __future__ import annotations

from typing import Any

import pytest

from mmo.errors import Forbidden, UnknownMethod
from mmo.fight.dispatcher import FightDispatcher
from mmo.fight.errors import BadFight, PoolFull
from mmo.fight.pool import FightPool
from mmo.logic.handler import Session
from mmo.testing import FakeDirectory, as_player, call, handler_factory, result_of

from .test_fight_pool import FakeSpawner, ready_all


def session(user: str, broker: str = "broker-1") -> Session:
    """A client session of ``user``."""
    return Session(id=f"s-{user}", user_id=user, broker=broker)


def make_dispatcher(
    cap: int = 4, **settings: Any
) -> tuple[FightDispatcher, FightPool, FakeSpawner, FakeDirectory]:
    """A dispatcher on a fake runtime serving a started pool with one ready process; its
    directory records the calls to the fight processes (which answer None)."""
    from mmo.fight.config import FightConfig

    directory = FakeDirectory()
    directory.reply("fight-worker", None, None)
    dispatcher = handler_factory(FightDispatcher, directory=directory)
    config = FightConfig(yellow=("tcp://127.0.0.1:1",), handler="m:C", cap=cap, **settings)
    spawner = FakeSpawner()
    pool = FightPool(config, dispatcher.clock, spawner, dispatcher)
    dispatcher.pool = pool
    pool.start()
    ready_all(pool)
    return dispatcher, pool, spawner, directory


def test_allocate_answers_fight_id_and_instance():
    """allocate answers {fight_id, instance, players} on a ready process."""
    dispatcher, _, _, _ = make_dispatcher()
    reply = result_of(call(dispatcher, "allocate", players=["a", "b"]))
    assert reply["instance"] == "fight-1" and reply["players"] == ["a", "b"]
    assert len(reply["fight_id"]) == 16


def test_allocate_waits_within_the_callers_deadline():
    """With no room and no process allowed, allocate fails with PoolFull before the deadline."""
    dispatcher, _, _, _ = make_dispatcher(cap=2, max_processes=1, min_spare=1)
    result_of(call(dispatcher, "allocate", players=["a", "b"]))
    d = call(dispatcher, "allocate", players=["c"], timeout=2.0)
    dispatcher.clock.advance(1.79)
    assert not d.called
    dispatcher.clock.advance(0.02)
    with pytest.raises(PoolFull):
        result_of(d)


@pytest.mark.parametrize(
    ("method", "kwargs"),
    [
        ("allocate", {"players": ["m"]}),
        ("release", {"fight_id": "f"}),
        ("arrived", {"fight_id": "f"}),
        ("matchmake", {}),
        ("status", {}),
    ],
)
def test_players_reach_no_dispatcher_method(method: str, kwargs: dict[str, Any]):
    """A player's packet reaching the dispatcher finds no method at all (not even status)."""
    dispatcher, pool, _, _ = make_dispatcher()
    with pytest.raises(UnknownMethod):
        call(dispatcher, method, kwargs, **as_player(session("mallory")))
    assert not pool.fights


def test_arrived_keeps_the_session_and_release_keeps_the_result():
    """A fight process reports an arrival with the player's session; release records the result."""
    dispatcher, pool, _, _ = make_dispatcher()
    fight = result_of(call(dispatcher, "allocate", players=["a", "b"]))
    fid = fight["fight_id"]
    reply = call(dispatcher, "arrived", session=session("a"), caller="fight-1", fight_id=fid)
    assert reply["arrived"] == ["a"]
    assert pool.fights[fid].sessions["a"].id == "s-a"
    assert call(dispatcher, "release", caller="fight-1", fight_id=fid, result={"winner": "a"})
    assert not call(dispatcher, "release", caller="fight-1", fight_id=fid)
    [kept] = call(dispatcher, "results")
    assert kept["result"] == {"winner": "a"} and kept["players"] == ["a", "b"]


def test_a_lost_fight_unbinds_and_tells_its_players():
    """When a fight process dies, each known player's fight routes are unbound, then they get
    the push fight.lost; subscribers get the event lost."""
    dispatcher, _, spawner, _ = make_dispatcher()
    fight = result_of(call(dispatcher, "allocate", players=["a", "b"]))
    for user in ("a", "b"):
        call(
            dispatcher,
            "arrived",
            session=session(user),
            caller="fight-1",
            fight_id=fight["fight_id"],
        )
    spawner.children["fight-1"].exit("was killed by signal 9")
    sessions = dispatcher.runtime.sessions  # type: ignore[attr-defined]
    ops = [(name, args[0].user_id, args[1]) for name, args in sessions.calls]
    assert ops == [
        ("unbind", "a", "fight"),
        ("push", "a", "fight.lost"),
        ("unbind", "b", "fight"),
        ("push", "b", "fight.lost"),
    ]
    body = sessions.of("push")[0][2]
    assert body["fight_id"] == fight["fight_id"] and "killed by signal 9" in body["reason"]
    topic, event = dispatcher.runtime.published[0]  # type: ignore[attr-defined]
    assert topic == "lost" and event["players"] == ["a", "b"]


def test_a_player_already_in_a_newer_fight_keeps_its_binding():
    """A lost fight does not unbind a player who was placed in another fight since."""
    dispatcher, pool, spawner, _ = make_dispatcher(cap=2, min_spare=1)
    old = result_of(call(dispatcher, "allocate", players=["a", "b"]))
    call(dispatcher, "arrived", session=session("a"), caller="fight-1", fight_id=old["fight_id"])
    ready_all(pool)
    result_of(call(dispatcher, "allocate", players=["a"]))
    spawner.children["fight-1"].exit("was killed by signal 9")
    assert dispatcher.runtime.sessions.calls == []  # type: ignore[attr-defined]


def test_an_expired_fight_is_dropped_by_its_process_and_its_players_told():
    """Expiry tells the fight process (expired, on that instance) and pushes fight.cancelled."""
    dispatcher, _, _, directory = make_dispatcher(reservation_timeout=15)
    fight = result_of(call(dispatcher, "allocate", players=["a", "b"]))
    call(dispatcher, "arrived", session=session("a"), caller="fight-1", fight_id=fight["fight_id"])
    dispatcher.clock.advance(15)
    assert [(c.method, c.kwargs, c.instance) for c in directory.calls_to("fight-worker")] == [
        ("expired", {"fight_id": fight["fight_id"]}, "fight-1")
    ]
    pushes = dispatcher.runtime.sessions.of("push")  # type: ignore[attr-defined]
    assert [(p[0].user_id, p[1], p[2]["missing"]) for p in pushes] == [
        ("a", "fight.cancelled", ["b"])
    ]


def test_matchmake_pairs_players_binds_them_then_pushes_the_start():
    """Two players matchmaking: one fight; each is bound to its process, then gets fight.start."""
    dispatcher, _, _, _ = make_dispatcher()
    first = call(dispatcher, "matchmake", session=session("a"), caller="fight-1", size=2)
    assert not first.called
    second = call(dispatcher, "matchmake", session=session("b", "broker-2"), caller="fight-1")
    reply = result_of(first)
    assert result_of(second) == reply and reply["players"] == ["a", "b"]
    calls = dispatcher.runtime.sessions.calls  # type: ignore[attr-defined]
    assert [(name, args[0].user_id) for name, args in calls] == [
        ("bind", "a"),
        ("push", "a"),
        ("bind", "b"),
        ("push", "b"),
    ]
    assert calls[0][1][1:] == ("fight", "fight-1")
    assert calls[1][1][1:] == ("fight.start", reply)


def test_matchmake_alone_gives_up_before_the_deadline():
    """A player left waiting alone gets BadFight before the call's deadline; the queue empties."""
    dispatcher, _, _, _ = make_dispatcher()
    d = call(dispatcher, "matchmake", session=session("a"), caller="fight-1", timeout=3.0)
    dispatcher.clock.advance(3.0)
    with pytest.raises(BadFight, match="formed in time"):
        result_of(d)
    # The same player may try again.
    again = call(dispatcher, "matchmake", session=session("a"), caller="fight-1")
    assert not again.called


def test_matchmake_needs_a_session_and_refuses_a_second_queueing():
    """matchmake is a player's request; the same player cannot queue twice."""
    dispatcher, _, _, _ = make_dispatcher()
    with pytest.raises(Forbidden, match="client session"):
        call(dispatcher, "matchmake")
    call(dispatcher, "matchmake", session=session("a"), caller="fight-1")
    with pytest.raises(BadFight, match="already waiting"):
        call(dispatcher, "matchmake", session=session("a"), caller="fight-1")
    with pytest.raises(BadFight, match="size"):
        call(dispatcher, "matchmake", session=session("b"), caller="fight-1", size=99)


def test_status_names_the_dispatcher():
    """status is the pool's status plus the dispatcher's instance and service."""
    dispatcher, _, _, _ = make_dispatcher()
    status = call(dispatcher, "status")
    assert status["instance"] == "test-1" and status["service"] == "fight"
    assert [p["instance"] for p in status["processes"]] == ["fight-1"]


def test_a_draining_dispatcher_sends_new_work_elsewhere_when_another_is_registered():
    """Draining: allocate answers Unavailable (callers resend it to another instance) while
    another dispatcher is registered, and PoolDraining when it is the only one."""
    from mmo.errors import Unavailable
    from mmo.fight.errors import PoolDraining

    dispatcher, pool, _, directory = make_dispatcher()
    pool.drain()
    with pytest.raises(PoolDraining):
        result_of(call(dispatcher, "allocate", players=["a"]))
    directory.register("fight", "fight-other")
    with pytest.raises(Unavailable):
        result_of(call(dispatcher, "allocate", players=["a"]))


def test_fight_lost_reaches_a_player_on_the_broker_they_resumed_on():
    """After a session's online event (resumed on broker-2), fight.lost goes to broker-2."""
    dispatcher, pool, spawner, _ = make_dispatcher()
    fight = result_of(call(dispatcher, "allocate", players=["a"]))
    pool.arrived(fight["fight_id"], "a", session("a", "broker-1"))
    dispatcher.session_online("online", {"session_id": "s-a", "broker": "broker-2"})
    spawner.children[fight["instance"]].exit("was killed by signal 9")
    [(target, _, _)] = [p for p in dispatcher.sessions.of("push") if p[1] == "fight.lost"]
    assert target.broker == "broker-2" and target.id == "s-a"
