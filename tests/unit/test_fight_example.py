"""The turn-based fight demo on a fake runtime: joining, turns, winning, storing the result,
and the FightHandler plumbing (arrive, release, matchmake relay, expired)."""

from __future__ import annotations

import random
from typing import Any

import pytest
from twisted.internet import defer

from mmo.errors import UnknownMethod
from mmo.examples.fight import FightNotStarted, NotFighting, NotYourTurn, TurnFight
from mmo.fight import Forbidden, UnknownFight
from mmo.logic.handler import Origin, Session
from mmo.testing import fake_context, handler_factory

from .test_fight_pool import result


class FakeDispatcher:
    """The dispatcher as a fight process calls it: knows one fight, records every call."""

    def __init__(self, fights: dict[str, list[str]]) -> None:
        self.fights = fights
        self.calls: list[tuple[str, dict[str, Any], Session | None, str | None]] = []

    def call(
        self,
        method: str,
        kwargs: dict[str, Any],
        *,
        session: Session | None = None,
        instance: str | None = None,
        timeout: float | None = None,
    ) -> defer.Deferred[Any]:
        self.calls.append((method, kwargs, session, instance))
        if method == "arrived":
            players = self.fights.get(kwargs["fight_id"])
            if players is None or kwargs["player"] not in players:
                return defer.fail(UnknownFight(f"no fight {kwargs['fight_id']!r}"))
            return defer.succeed({"fight_id": kwargs["fight_id"], "players": players})
        return defer.succeed({"method": method})


class FakeDB:
    """A Database recording its statements."""

    def __init__(self) -> None:
        self.statements: list[tuple[str, Any]] = []

    def run_operation(self, sql: str, params: Any = None, **_: Any) -> defer.Deferred[None]:
        self.statements.append((sql, params))
        return defer.succeed(None)


def session(user: str) -> Session:
    """A client session of ``user``."""
    return Session(id=f"s-{user}", user_id=user, broker="broker-1")


def make_fight(**attributes: Any) -> tuple[TurnFight, FakeDispatcher]:
    """A TurnFight whose dispatcher knows fight f1 of alice and bob."""
    dispatcher = FakeDispatcher({"f1": ["alice", "bob"]})
    fight = handler_factory(
        TurnFight,
        instance_id="fight-1",
        services={"fight": dispatcher},
        rng=random.Random(7),
        **attributes,
    )
    return fight, dispatcher


def call(handler: TurnFight, method: str, user: str | None, **kwargs: Any) -> Any:
    """Call ``on_<method>`` as ``user``'s request through a broker (or, with no user, as
    a cluster member's call without a session)."""
    if user is None:
        ctx = fake_context(handler, method)
    else:
        ctx = fake_context(handler, method, session=session(user), origin=Origin.CLIENT)
    out = handler.dispatch(ctx, kwargs)
    return result(out) if isinstance(out, defer.Deferred) else out


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
    state = call(fight, "join", "alice", fight_id="f1")
    assert state["joined"] == ["alice"] and state["turn"] is None
    assert dispatcher.calls[0][0] == "arrived" and dispatcher.calls[0][2].user_id == "alice"
    assert dispatcher.calls[0][1]["instance"] == "fight-1"
    state = call(fight, "join", "bob", fight_id="f1")
    assert state["turn"] == "alice" and state["hp"] == {"alice": 100, "bob": 100}
    assert pushes(fight) == [(["alice", "bob"], "fight.turn")]


def test_turns_alternate_and_the_winner_is_stored_released_and_unbound():
    """Players hit in turn until one falls: fight.end to both, routes unbound, result kept in
    memory and in the database, seats released at the dispatcher."""
    db = FakeDB()
    fight, dispatcher = make_fight(db=db)
    call(fight, "join", "alice", fight_id="f1")
    call(fight, "join", "bob", fight_id="f1")
    with pytest.raises(NotYourTurn):
        call(fight, "attack", "bob")
    turn, end = "alice", None
    for _ in range(20):
        event = call(fight, "attack", turn)
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
    release = [c for c in dispatcher.calls if c[0] == "release"]
    assert release[0][1]["fight_id"] == "f1" and release[0][1]["result"]["winner"] == end["winner"]
    [stored] = call(fight, "results", None)
    assert stored["winner"] == end["winner"] and stored["turns"] == end["turns"]
    assert db.statements[-1][1][:2] == ("f1", end["winner"])
    with pytest.raises(NotFighting):
        call(fight, "attack", "alice")


def test_no_attack_before_everyone_joined():
    """Attacking before the opponent joined is refused with FightNotStarted."""
    fight, _ = make_fight()
    call(fight, "join", "alice", fight_id="f1")
    with pytest.raises(FightNotStarted, match="bob"):
        call(fight, "attack", "alice")


def test_a_stranger_cannot_join():
    """The dispatcher's refusal of a player without a seat comes back to the client."""
    fight, _ = make_fight()
    with pytest.raises(UnknownFight):
        call(fight, "join", "mallory", fight_id="f1")
    with pytest.raises(Forbidden):
        call(fight, "join", None, fight_id="f1")


def test_matchmake_is_relayed_to_the_dispatcher_with_the_session():
    """fight.matchmake from a player goes to the dispatcher, session attached."""
    fight, dispatcher = make_fight()
    fight.dispatcher_id = "fight-dispatcher"
    assert call(fight, "matchmake", "alice", size=2) == {"method": "matchmake"}
    method, kwargs, sess, instance = dispatcher.calls[0]
    assert (method, kwargs, instance) == ("matchmake", {"size": 2}, "fight-dispatcher")
    assert sess is not None and sess.user_id == "alice"


def test_expired_comes_only_from_the_dispatcher_and_drops_the_fight():
    """expired does not exist for a player, is Forbidden to other members and to another
    dispatcher; from the dispatcher that spawned the process it forgets the fight."""
    fight, _ = make_fight()
    fight.dispatcher_id = "fight-dispatcher"
    call(fight, "join", "alice", fight_id="f1")
    with pytest.raises(UnknownMethod):
        call(fight, "expired", "alice", fight_id="f1")
    for caller, role in [("chat-1", "worker"), ("other-dispatcher", "fight")]:
        with pytest.raises(Forbidden):
            ctx = fake_context(fight, "expired", caller=caller, caller_role=role)
            fight.dispatch(ctx, {"fight_id": "f1"})
    ctx = fake_context(fight, "expired", caller="fight-dispatcher", caller_role="fight")
    fight.dispatch(ctx, {"fight_id": "f1"})
    assert "f1" not in fight.fights and "alice" not in fight.by_player


def test_the_client_routes_are_declared():
    """Players may matchmake, join, attack and see their state; results are not theirs."""
    assert TurnFight.registry_meta()["client"] == ["attack", "join", "matchmake", "state"]
