"""``TurnFight``: a turn-based fight for the fight dispatcher's processes (the demo).

Run by ``twistd mmo-fight --handler mmo.examples.fight:TurnFight --cap N ...``;
players reach it with their ``fight.*`` routes bound to its process:

1. ``fight.matchmake {"size": 2}`` (relayed to the dispatcher): once two players
   wait, both get the push ``fight.start {"fight_id", "instance", "players"}``.
2. ``fight.join {"fight_id"}``: the player arrives. When all have, everyone gets
   ``fight.turn`` with ``hp`` and whose ``turn`` it is.
3. ``fight.attack {}``: on your turn, hit the next living opponent for 15-30;
   everyone gets ``fight.turn`` (``by``, ``target``, ``damage``, ``hp``, ``turn``).
4. The last one standing wins: everyone gets ``fight.end`` (``winner``), the
   fight routes are unbound, the result is stored (the data layer's
   ``self.db`` if the worker has one, table ``fight_results``; always also in
   memory, see ``results``) and the seats are released at the dispatcher.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from mmo.fight import FightError, FightHandler, require_session
from mmo.fight.handler import moved_session
from mmo.logic import Context, client_method, idempotent
from mmo.logic.handler import Runtime, Session
from mmo.types import InlineCallbacks

__all__ = ["FightNotStarted", "NotFighting", "NotYourTurn", "TurnFight"]

log = Logger()

_CREATE_RESULTS = (
    "CREATE TABLE IF NOT EXISTS fight_results ("
    "fight_id TEXT PRIMARY KEY, winner TEXT NOT NULL, players TEXT NOT NULL, "
    "turns INTEGER NOT NULL, instance TEXT NOT NULL)"
)
_INSERT_RESULT = (
    "INSERT INTO fight_results (fight_id, winner, players, turns, instance) "
    "VALUES (%s, %s, %s, %s, %s)"
)


class NotFighting(FightError):
    """The player has no fight on this process."""


class FightNotStarted(FightError):
    """Not every player has joined yet."""


class NotYourTurn(FightError):
    """Another player is to act."""


@dataclass(eq=False)
class Duel:
    """One fight's state on its process.

    Attributes:
        fight_id: its id (from the dispatcher).
        players: the players, in turn order.
        hp: hit points left, by player.
        sessions: the sessions of the players who joined.
        turn: index in ``players`` of who acts next.
        turns: attacks so far.
        started: whether every player has joined.
    """

    fight_id: str
    players: list[str]
    hp: dict[str, int]
    sessions: dict[str, Session] = field(default_factory=dict)
    turn: int = 0
    turns: int = 0
    started: bool = False


class TurnFight(FightHandler):
    """Players take turns hitting each other until one is left.

    Attributes:
        max_hp: hit points each player starts with.
        damage: the range of one hit (inclusive).
        rng: where damage comes from (replace it for a deterministic test).
        results: results of the fights that ended here (the latest ``max_results``).
    """

    max_hp = 100
    damage = (15, 30)
    max_results = 1000

    def __init__(self, runtime: Runtime) -> None:
        super().__init__(runtime)
        self.fights: dict[str, Duel] = {}
        self.by_player: dict[str, str] = {}
        self.results: deque[dict[str, Any]] = deque(maxlen=self.max_results)
        self.rng = random.Random()

    @defer.inlineCallbacks
    def start(self) -> InlineCallbacks[None]:
        """What every fight process does at start (:meth:`FightHandler.start`), then create
        the results table when a database is configured."""
        super().start()
        db = getattr(self, "db", None)
        if db is not None:
            try:
                yield db.run_operation(_CREATE_RESULTS)
            except Exception as e:
                log.warn("fight: no fight_results table ({e}); results stay in memory", e=e)
                self.db = None

    # -- players' requests ---------------------------------------------------

    @client_method
    @defer.inlineCallbacks
    def on_join(self, ctx: Context, fight_id: str) -> InlineCallbacks[dict[str, Any]]:
        """The caller's player arrives in ``fight_id``; answers the fight's state."""
        session = require_session(ctx)
        player = session.user_id or ""
        duel = self.fights.get(fight_id)
        if duel is None or player not in duel.sessions:
            # The dispatcher checks the seat and keeps the session (to report a crash).
            info = yield self.arrive(ctx, fight_id)
            duel = self.fights.get(fight_id)
            if duel is None:
                players = list(info["players"])
                duel = Duel(fight_id, players, dict.fromkeys(players, self.max_hp))
                self.fights[fight_id] = duel
        duel.sessions[player] = session
        self.by_player[player] = fight_id
        if not duel.started and set(duel.sessions) == set(duel.players):
            duel.started = True
            self.sessions.push(list(duel.sessions.values()), "fight.turn", self._state(duel))
        elif not duel.started:
            others = [s for p, s in duel.sessions.items() if p != player]
            if others:
                joined = {"fight_id": fight_id, "player": player}
                self.sessions.push(others, "fight.joined", joined)
        return self._state(duel)

    @client_method
    def on_attack(self, ctx: Context, fight_id: str | None = None) -> Any:
        """Hit the next living opponent (on your turn); answers the turn's event."""
        player, duel = self._duel_of(ctx, fight_id)
        if not duel.started:
            waiting = sorted(set(duel.players) - set(duel.sessions))
            raise FightNotStarted(f"waiting for {', '.join(waiting)} to join")
        if duel.players[duel.turn] != player:
            raise NotYourTurn(f"it is {duel.players[duel.turn]}'s turn")
        target = duel.players[self._next_alive(duel, duel.turn)]
        damage = self.rng.randint(*self.damage)
        duel.hp[target] = max(0, duel.hp[target] - damage)
        duel.turns += 1
        event: dict[str, Any] = {
            "fight_id": duel.fight_id,
            "by": player,
            "target": target,
            "damage": damage,
            "hp": dict(duel.hp),
            "turns": duel.turns,
        }
        alive = [p for p in duel.players if duel.hp[p] > 0]
        if len(alive) == 1:
            return self._finish(duel, alive[0], event)
        duel.turn = self._next_alive(duel, duel.turn)
        event["turn"] = duel.players[duel.turn]
        self.sessions.push(list(duel.sessions.values()), "fight.turn", event)
        return event

    @client_method
    @idempotent
    def on_state(self, ctx: Context, fight_id: str | None = None) -> dict[str, Any]:
        """The state of ``fight_id`` (default: the caller's fight; a player sees only theirs)."""
        if fight_id is not None and not ctx.from_client:
            duel = self.fights.get(fight_id)
            if duel is None:
                raise NotFighting(f"no fight {fight_id!r} here")
            return self._state(duel)
        return self._state(self._duel_of(ctx, fight_id)[1])

    @idempotent
    def on_results(self, ctx: Context, limit: int = 100) -> list[dict[str, Any]]:
        """Results of the fights that ended on this process (oldest first)."""
        return list(self.results)[-max(0, int(limit)) :] if limit else []

    # -- the dispatcher's side -------------------------------------------------

    def session_moved(self, session_id: str, broker: str) -> None:
        """A player resumed on another broker: the fight's pushes follow them there."""
        for duel in self.fights.values():
            for player, session in duel.sessions.items():
                duel.sessions[player] = moved_session(session, session_id, broker)

    def fight_cancelled(self, fight_id: str, reason: str) -> None:
        """Forget a fight whose players did not all arrive."""
        duel = self.fights.pop(fight_id, None)
        if duel is not None:
            for player in duel.sessions:
                if self.by_player.get(player) == fight_id:
                    del self.by_player[player]

    # -- internals -------------------------------------------------------------

    def _duel_of(self, ctx: Context, fight_id: str | None) -> tuple[str, Duel]:
        player = require_session(ctx).user_id or ""
        fight_id = fight_id or self.by_player.get(player)
        duel = self.fights.get(fight_id) if fight_id else None
        if duel is None or player not in duel.sessions:
            raise NotFighting(f"{player} has no fight here; join one first")
        # The request comes from where the player is now (it may have resumed elsewhere).
        duel.sessions[player] = require_session(ctx)
        return player, duel

    @staticmethod
    def _next_alive(duel: Duel, index: int) -> int:
        n = len(duel.players)
        for step in range(1, n + 1):
            candidate = (index + step) % n
            if duel.hp[duel.players[candidate]] > 0 and candidate != index:
                return candidate
        return index

    @staticmethod
    def _state(duel: Duel) -> dict[str, Any]:
        return {
            "fight_id": duel.fight_id,
            "players": list(duel.players),
            "joined": sorted(duel.sessions),
            "hp": dict(duel.hp),
            "turn": duel.players[duel.turn] if duel.started else None,
            "turns": duel.turns,
        }

    @defer.inlineCallbacks
    def _finish(
        self, duel: Duel, winner: str, event: dict[str, Any]
    ) -> InlineCallbacks[dict[str, Any]]:
        result = {
            "fight_id": duel.fight_id,
            "winner": winner,
            "players": list(duel.players),
            "turns": duel.turns,
            "hp": dict(duel.hp),
        }
        del self.fights[duel.fight_id]
        for player in duel.players:
            if self.by_player.get(player) == duel.fight_id:
                del self.by_player[player]
        self.results.append(result)
        end = {**event, "winner": winner, "turn": None}
        sessions = list(duel.sessions.values())
        self.sessions.push(sessions, "fight.end", end)
        for session in sessions:
            self.sessions.unbind(session, "fight")
        self.release_fight(duel.fight_id, result)
        yield self._store(result)
        return end

    @defer.inlineCallbacks
    def _store(self, result: dict[str, Any]) -> InlineCallbacks[None]:
        db = getattr(self, "db", None)
        if db is None:
            return
        try:
            yield db.run_operation(
                _INSERT_RESULT,
                (
                    result["fight_id"],
                    result["winner"],
                    ",".join(result["players"]),
                    result["turns"],
                    self.instance_id,
                ),
            )
        except Exception as e:
            log.warn("fight: result of {id} not stored: {e}", id=result["fight_id"], e=e)
