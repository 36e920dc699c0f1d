"""``MapService`` (service ``map``): players on maps, handed between processes through the cache.

Several ``map`` workers each serve some maps; the setting ``maps`` gives the whole
table, the same for every instance: ``"forest=map-a,cave=map-a,desert=map-b"``
(map id = the instance id serving it). A player is on one instance at a time.

* ``enter(player_id, map_id)`` (on the instance serving the map) takes a pending
  hand-off from the cache, else loads the player from the ``player`` service.
* ``move(player_id, dx, dy, coins)`` changes the state in memory.
* ``transfer(player_id, to_map)`` to a map served elsewhere writes the state to
  the cache under ``handoff:<player_id>`` and calls ``arrive`` on the serving
  instance (``instance=``), which *takes* it (get-and-delete, so exactly one
  process ends up with the player). If that call fails, the source tries to
  take the hand-off back: if it can, the player stays; if the destination took
  it already, the player has moved. With a cache that is not shared between
  processes (``memory://``), the state goes through the ``player`` service
  instead (saved, then loaded by the destination).
* ``leave(player_id)`` saves the player to the ``player`` service and drops it;
  a graceful stop does the same for everyone still here.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from mmo.config import ConfigError
from mmo.errors import BadRequest, MmoError
from mmo.logic import Context, ServiceHandler, idempotent
from mmo.types import InlineCallbacks
from mmo.wire.gen.mmo.ttypes import ErrorCode

__all__ = [
    "HandoffMissing",
    "MapError",
    "MapService",
    "MapSettings",
    "NotHere",
    "WrongMap",
    "parse_maps",
]

log = Logger()


class MapError(MmoError):
    """Base of the map service's errors."""

    code = ErrorCode.REMOTE


class WrongMap(MapError):
    """The map is not served by this instance (the message names the one that does)."""


class NotHere(MapError):
    """The player is not on this instance."""


class HandoffMissing(MapError):
    """``arrive`` found no hand-off in the cache (expired, or taken by another)."""


def parse_maps(spec: str) -> dict[str, str]:
    """``"map=instance,..."`` as a dict; ConfigError naming the setting if malformed."""
    table: dict[str, str] = {}
    for entry in filter(None, (e.strip() for e in spec.split(","))):
        map_id, sep, instance = (part.strip() for part in entry.partition("="))
        if not sep or not map_id or not instance:
            raise ConfigError("maps", f"expected map=instance, got {entry!r}")
        if map_id in table:
            raise ConfigError("maps", f"map {map_id!r} is listed twice")
        table[map_id] = instance
    return table


@dataclass(frozen=True)
class MapSettings:
    """Settings of the map service (``[worker.settings]`` or ``--set maps=...``).

    Attributes:
        maps: which instance serves which map, ``"forest=map-1,cave=map-2"``: the same
            table for every instance (each serves the maps naming it).
    """

    maps: str = ""

    def validate(self) -> None:
        """Check that the table parses."""
        parse_maps(self.maps)


def _fresh(player_id: str) -> dict[str, Any]:
    return {"player_id": player_id, "pos": [0, 0], "coins": 0, "moves": 0, "visited": []}


class MapService(ServiceHandler):
    """The ``map`` service: ``enter``, ``move``, ``transfer``, ``arrive``, ``leave``, ``where``.

    Attributes:
        maps: map id -> the instance serving it (the setting ``maps``).
        players: the players on this instance's maps, by id.
        handoff_ttl: seconds a hand-off waits in the cache for its destination.
    """

    default_service = "map"
    Settings = MapSettings
    settings: MapSettings
    handoff_ttl: float = 60.0

    def __init__(self, runtime: Any) -> None:
        super().__init__(runtime)
        self.maps = parse_maps(self.settings.maps)
        if self.instance_id not in self.maps.values():
            raise ConfigError("maps", f"no map is served by instance {self.instance_id!r}")
        self.players: dict[str, dict[str, Any]] = {}
        self._moving: set[str] = set()

    # -- the service -------------------------------------------------------------

    @defer.inlineCallbacks
    def on_enter(self, ctx: Context, player_id: str, map_id: str) -> InlineCallbacks[Any]:
        """Put a player on ``map_id`` (served here); its state.

        The state comes from a pending hand-off in the cache if there is one, else
        from the ``player`` service.
        """
        self._serves(map_id)
        self._check_player(player_id)
        if player_id in self.players:
            return self.players[player_id]
        state = None
        if self.cache is not None and self.cache.shared:
            handed = yield self.cache.take(self._key(player_id))
            state = None if handed is None else json.loads(handed)
        if state is None:
            loaded = yield self.get_service("player").load(player_id=player_id)
            state = loaded["state"] or _fresh(player_id)
        if player_id in self.players:  # entered twice at once: the first one won
            return self.players[player_id]
        return self._place(player_id, state, map_id)

    def on_move(
        self, ctx: Context, player_id: str, dx: int = 0, dy: int = 0, coins: int = 0
    ) -> dict[str, Any]:
        """Move a player by ``(dx, dy)`` and give it ``coins``; its state."""
        state = self._here(player_id)
        for value in (dx, dy, coins):
            if isinstance(value, bool) or not isinstance(value, int):
                raise BadRequest("dx, dy and coins are integers")
        state["pos"] = [state["pos"][0] + dx, state["pos"][1] + dy]
        state["coins"] += coins
        state["moves"] += 1
        return state

    @idempotent
    def on_where(self, ctx: Context, player_id: str) -> dict[str, Any]:
        """``{"here": bool, "map": map id or None}`` for a player on this instance."""
        state = self.players.get(player_id)
        return {"here": state is not None, "map": None if state is None else state["map"]}

    @idempotent
    def on_players(self, ctx: Context) -> list[str]:
        """The ids of the players on this instance."""
        return sorted(self.players)

    @defer.inlineCallbacks
    def on_transfer(self, ctx: Context, player_id: str, to_map: str) -> InlineCallbacks[Any]:
        """Move a player to ``to_map``, handing it to the instance serving that map.

        Returns:
            ``{"map", "instance", "via"}``: where the player is now and how it got there
            (``"local"``, ``"cache"`` or ``"store"``).

        Raises:
            WrongMap: no instance serves ``to_map``.
            MmoError: the hand-off failed; the player is still here.
        """
        state = self._here(player_id)
        owner = self.maps.get(to_map)
        if owner is None:
            raise WrongMap(f"no instance serves map {to_map!r}")
        if owner == self.instance_id:
            self._place(player_id, state, to_map)
            return {"map": to_map, "instance": owner, "via": "local"}
        # From here on the player is in transit: moves are refused, not lost.
        del self.players[player_id]
        self._moving.add(player_id)
        try:
            result = yield self._hand_off(player_id, state, to_map, owner)
        finally:
            self._moving.discard(player_id)
        return result

    @defer.inlineCallbacks
    def on_arrive(
        self, ctx: Context, player_id: str, map_id: str, via: str
    ) -> InlineCallbacks[Any]:
        """Receive a player handed over by another instance (called by ``transfer``)."""
        self._serves(map_id)
        if via == "cache":
            if self.cache is None or not self.cache.shared:
                raise HandoffMissing("this instance has no shared cache to take the player from")
            handed = yield self.cache.take(self._key(player_id))
            if handed is None:
                raise HandoffMissing(f"no hand-off of player {player_id!r} in the cache")
            state = json.loads(handed)
        elif via == "store":
            loaded = yield self.get_service("player").load(player_id=player_id)
            state = loaded["state"] or _fresh(player_id)
        else:
            raise BadRequest(f"via must be 'cache' or 'store', not {via!r}")
        return self._place(player_id, state, map_id)

    @defer.inlineCallbacks
    def on_leave(self, ctx: Context, player_id: str) -> InlineCallbacks[Any]:
        """Save a player to the ``player`` service and take it off the map; its state."""
        state = self._here(player_id)
        player = self.get_service("player")
        yield player.save(player_id=player_id, state=state)
        yield player.leave(player_id=player_id)
        self.players.pop(player_id, None)
        return state

    @defer.inlineCallbacks
    def stop(self) -> InlineCallbacks[None]:
        """Save everyone still here to the ``player`` service."""
        player = self.get_service("player")
        for player_id, state in list(self.players.items()):
            try:
                yield player.save(player_id=player_id, state=state)
            except MmoError as e:
                log.error("map: could not save player {p} at stop: {e}", p=player_id, e=e)

    # -- internals -------------------------------------------------------------------

    @defer.inlineCallbacks
    def _hand_off(
        self, player_id: str, state: dict[str, Any], to_map: str, owner: str
    ) -> InlineCallbacks[Any]:
        maps = self.get_service("map")
        key = self._key(player_id)
        if self.cache is not None and self.cache.shared:
            via = "cache"
            try:
                yield self.cache.set(key, json.dumps(state), ttl=self.handoff_ttl)
            except MmoError:
                self.players[player_id] = state  # nothing left this process
                raise
        else:
            via = "store"
            try:
                yield self.get_service("player").save(player_id=player_id, state=state)
            except MmoError:
                self.players[player_id] = state
                raise
        args = {"player_id": player_id, "map_id": to_map, "via": via}
        try:
            yield maps.call("arrive", args, instance=owner)
        except MmoError as e:
            moved = yield self._moved_anyway(player_id, via, owner)
            if not moved:
                self.players[player_id] = state
                log.warn("map: hand-off of {p} to {o} failed: {e}", p=player_id, o=owner, e=e)
                raise
        return {"map": to_map, "instance": owner, "via": via}

    @defer.inlineCallbacks
    def _moved_anyway(self, player_id: str, via: str, owner: str) -> InlineCallbacks[bool]:
        """After a failed ``arrive``: whether the destination got the player all the same."""
        if via == "cache":
            assert self.cache is not None
            try:
                back = yield self.cache.take(self._key(player_id))
            except MmoError:
                # Cannot tell; the hand-off stays in the cache and the next enter takes it.
                return True
            return back is None  # gone: the destination took it
        try:
            where = yield self.get_service("map").call(
                "where", {"player_id": player_id}, instance=owner
            )
        except MmoError:
            return False
        return bool(where["here"])

    def _place(self, player_id: str, state: dict[str, Any], map_id: str) -> dict[str, Any]:
        state = copy.deepcopy(state)
        state["map"] = map_id
        visited = state.setdefault("visited", [])
        if not visited or visited[-1] != map_id:
            visited.append(map_id)
        self.players[player_id] = state
        return state

    def _serves(self, map_id: Any) -> None:
        owner = self.maps.get(map_id) if isinstance(map_id, str) else None
        if owner is None:
            raise WrongMap(f"unknown map {map_id!r}")
        if owner != self.instance_id:
            raise WrongMap(f"map {map_id!r} is served by {owner!r}, not {self.instance_id!r}")

    def _here(self, player_id: Any) -> dict[str, Any]:
        self._check_player(player_id)
        if player_id in self._moving:
            raise NotHere(f"player {player_id!r} is changing maps")
        state = self.players.get(player_id)
        if state is None:
            raise NotHere(f"player {player_id!r} is not on {self.instance_id!r}")
        return state

    @staticmethod
    def _check_player(player_id: Any) -> None:
        if not isinstance(player_id, str) or not 1 <= len(player_id) <= 128:
            raise BadRequest("player_id must be a string of 1-128 characters")

    @staticmethod
    def _key(player_id: str) -> str:
        return f"handoff:{player_id}"
