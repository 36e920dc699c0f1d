"""The turn-based fight demo on a fake runtime: joining, turns, winning, storing the result,
and the FightHandler plumbing (arrive, release, matchmake relay, expired)."""

from __future__ import annotations

import random
import signal
from typing import Any

import pytest
from twisted.internet import task

from mmo.errors import UnknownMethod
from mmo.examples.fight import FightNotStarted, NotFighting, NotYourTurn, TurnFight
from mmo.fight import Forbidden, UnknownFight
from mmo.logic.handler import Session
from mmo.testing import (
    FakeCall,
    FakeDatabase,
    FakeDirectory,
    as_player,
    call,
    handler_factory,
    result_of,
)

FIGHTS = {"f1": ["alice", "bob"]}


def dispatcher_answer(request: FakeCall) -> Any:
    """The dispatcher as a fight process calls it: it knows fight f1 of alice and bob."""
    kwargs = request.kwargs or {}
    if request.method == "arrived":
        players = FIGHTS.get(kwargs["fight_id"])
        if players is None or kwargs["player"] not in players:
            raise UnknownFight(f"no fight {kwargs['fight_id']!r}")
        return {"fight_id": kwargs["fight_id"], "players": players}
    return {"method": request.method}


def session(user: str) -> Session:
    """A client session of ``user``."""
    return Session(id=f"s-{user}", user_id=user, broker="broker-1")


def player(user: str) -> dict[str, Any]:
    """The options of ``call`` making it ``user``'s request, forwarded by their broker."""
    return as_player(session(user))


def make_fight(**attributes: Any) -> tuple[TurnFight, FakeDirectory]:
    """A TurnFight whose dispatcher (service ``fight``) knows fight f1 of alice and bob."""
    directory = FakeDirectory()
    directory.reply("fight", None, dispatcher_answer)
    fight = handler_factory(
        TurnFight,
        instance_id="fight-1",
        directory=directory,
        rng=random.Random(7),
        **attributes,
    )
    return fight, directory


def pushes(handler: TurnFight) -> list[tuple[list[str], str]]:
    """(users, route) of each push so far."""
    out = []
    for args in handler.runtime.sessions.of("push"):  # type: ignore[attr-defined]
        targets = args[0] if isinstance(args[0], list) else [args[0]]
        out.append((sorted(s.user_id for s in targets), args[1]))
    return out


def test_joining_reports_arrival_and_the_fight_starts_when_all_are_in():
    """Each join is reported to the dispatcher with the session; when both are in, both get the
    first fight.turn."""
    fight, dispatcher = make_fight()
    state = result_of(call(fight, "join", fight_id="f1", **player("alice")))
    assert state["joined"] == ["alice"] and state["turn"] is None
    (arrived,) = dispatcher.calls
    assert arrived.method == "arrived" and arrived.session is not None
    assert arrived.session.user_id == "alice" and arrived.kwargs["instance"] == "fight-1"
    state = result_of(call(fight, "join", fight_id="f1", **player("bob")))
    assert state["turn"] == "alice" and state["hp"] == {"alice": 100, "bob": 100}
    assert pushes(fight) == [(["alice", "bob"], "fight.turn")]


def test_turns_alternate_and_the_winner_is_stored_released_and_unbound():
    """Players hit in turn until one falls: fight.end to both, routes unbound, result kept in
    memory and in the database, seats released at the dispatcher."""
    db = FakeDatabase()
    fight, dispatcher = make_fight(db=db)
    result_of(fight.start())  # as its worker does: creates the results table
    result_of(call(fight, "join", fight_id="f1", **player("alice")))
    result_of(call(fight, "join", fight_id="f1", **player("bob")))
    with pytest.raises(NotYourTurn):
        result_of(call(fight, "attack", **player("bob")))
    turn, end = "alice", None
    for _ in range(20):
        event = result_of(call(fight, "attack", **player(turn)))
        if "winner" in event:
            end = event
            break
        assert event["by"] == turn and event["target"] != turn
        assert 15 <= event["damage"] <= 30
        turn = event["turn"]
    assert end is not None and end["hp"][end["winner"]] > 0
    assert pushes(fight)[-1] == (["alice", "bob"], "fight.end")
    unbound = fight.runtime.sessions.of("unbind")  # type: ignore[attr-defined]
    assert sorted((s.user_id, prefix) for s, prefix in unbound) == [
        ("alice", "fight"),
        ("bob", "fight"),
    ]
    (release,) = dispatcher.calls_to("fight", "release")
    assert release.kwargs is not None and release.kwargs["fight_id"] == "f1"
    assert release.kwargs["result"]["winner"] == end["winner"]
    [stored] = result_of(call(fight, "results"))
    assert stored["winner"] == end["winner"] and stored["turns"] == end["turns"]
    rows = result_of(
        db.run_query("SELECT fight_id, winner, players, turns, instance FROM fight_results")
    )
    assert [tuple(row) for row in rows] == [
        ("f1", end["winner"], "alice,bob", end["turns"], "fight-1")
    ]
    with pytest.raises(NotFighting):
        result_of(call(fight, "attack", **player("alice")))


def test_no_attack_before_everyone_joined():
    """Attacking before the opponent joined is refused with FightNotStarted."""
    fight, _ = make_fight()
    result_of(call(fight, "join", fight_id="f1", **player("alice")))
    with pytest.raises(FightNotStarted, match="bob"):
        result_of(call(fight, "attack", **player("alice")))


def test_a_stranger_cannot_join():
    """The dispatcher's refusal of a player without a seat comes back to the client."""
    fight, _ = make_fight()
    with pytest.raises(UnknownFight):
        result_of(call(fight, "join", fight_id="f1", **player("mallory")))
    with pytest.raises(Forbidden):
        result_of(call(fight, "join", fight_id="f1"))


def test_matchmake_is_relayed_to_the_dispatcher_with_the_session():
    """fight.matchmake from a player goes to the dispatcher, session attached."""
    fight, dispatcher = make_fight()
    fight.dispatcher_id = "fight-dispatcher"
    assert result_of(call(fight, "matchmake", size=2, **player("alice"))) == {"method": "matchmake"}
    (relayed,) = dispatcher.calls
    assert (relayed.method, relayed.kwargs, relayed.instance) == (
        "matchmake",
        {"size": 2},
        "fight-dispatcher",
    )
    assert relayed.session is not None and relayed.session.user_id == "alice"


def test_expired_comes_only_from_the_dispatcher_and_drops_the_fight():
    """expired does not exist for a player, is Forbidden to other members and to another
    dispatcher; from the dispatcher that spawned the process it forgets the fight."""
    fight, _ = make_fight()
    fight.dispatcher_id = "fight-dispatcher"
    result_of(call(fight, "join", fight_id="f1", **player("alice")))
    with pytest.raises(UnknownMethod):
        result_of(call(fight, "expired", fight_id="f1", **player("alice")))
    for caller, role in [("chat-1", "worker"), ("other-dispatcher", "fight")]:
        with pytest.raises(Forbidden):
            call(fight, "expired", fight_id="f1", caller=caller, caller_role=role)
    call(fight, "expired", fight_id="f1", caller="fight-dispatcher", caller_role="fight")
    assert "f1" not in fight.fights and "alice" not in fight.by_player


def test_the_client_routes_are_declared():
    """Players may matchmake, join, attack and see their state; results are not theirs."""
    assert TurnFight.registry_meta()["client"] == ["attack", "join", "matchmake", "state"]


def test_an_adopted_process_whose_dispatcher_is_unreachable_stops_after_the_orphan_timeout(
    monkeypatch,
):
    """Adopted by a dispatcher that then died together with the registry (the view still
    lists it, nobody says it is gone): once its connection has been down for the orphan
    timeout the process stops itself (SIGTERM: it drains) instead of running forever; a
    connection back before then resets the count."""
    stopped = []
    monkeypatch.setattr("mmo.fight.handler.os.kill", lambda pid, sig: stopped.append(sig))
    directory = FakeDirectory()
    directory.register("fight", "fight-d")
    clock = task.Clock()
    fight = handler_factory(
        TurnFight,
        instance_id="fight-1",
        directory=directory,
        clock=clock,
        settings={"dispatcher_id": "fight-d", "orphan_timeout": 10.0},
    )
    fight.adopted = True
    link = directory.link("fight", "fight-d")
    link.up = False
    fight.check_orphaned()
    clock.advance(9)
    link.up = True
    fight.check_orphaned()  # back in time: the count starts again
    link.up = False
    fight.check_orphaned()
    clock.advance(9)
    fight.check_orphaned()
    assert stopped == []
    clock.advance(1)
    fight.check_orphaned()
    assert stopped == [signal.SIGTERM]


def test_a_started_turn_fight_watches_for_orphanhood_and_follows_resumed_sessions(monkeypatch):
    """The demo's fight process runs what every fight process runs at start: it follows
    the session service's online events, and once its dispatcher has been out of reach for
    the orphan timeout it stops itself."""
    stopped = []
    monkeypatch.setattr("mmo.fight.handler.os.kill", lambda pid, sig: stopped.append(sig))
    directory = FakeDirectory()
    directory.register("fight", "fight-d")
    clock = task.Clock()
    fight = handler_factory(
        TurnFight,
        instance_id="fight-1",
        directory=directory,
        clock=clock,
        settings={"dispatcher_id": "fight-d", "orphan_timeout": 5.0},
    )
    fight.start()
    assert [(s.service, s.topic) for s in directory.subscriptions] == [("session", "online")]
    fight.adopted = True
    directory.link("fight", "fight-d").up = False
    clock.pump([1.0] * 10)
    assert stopped == [signal.SIGTERM]
    fight.stop()
