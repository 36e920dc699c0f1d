"""MapService: players on maps and hand-off between instances, with fakes for the rest."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pytest
from twisted.internet import defer

from mmo.config import ConfigError
from mmo.data import CacheUnavailable
from mmo.data.memory import MemoryCache
from mmo.errors import DeadlineExceeded
from mmo.examples.maps import HandoffMissing, MapService, NotHere, WrongMap, parse_maps
from mmo.testing import FakeDirectory, call, fake_cache, handler_factory, result_of


class FakePlayers:
    """The ``player`` service, in a dict."""

    def __init__(self) -> None:
        self.states: dict[str, dict[str, Any]] = {}

    def load(self, player_id: str) -> defer.Deferred[dict[str, Any]]:
        state = self.states.get(player_id, {})
        return defer.succeed({"player_id": player_id, "state": json.loads(json.dumps(state))})

    def save(self, player_id: str, state: dict[str, Any]) -> defer.Deferred[dict[str, Any]]:
        self.states[player_id] = json.loads(json.dumps(state))
        return defer.succeed({"version": 1})

    def leave(self, player_id: str) -> defer.Deferred[dict[str, Any]]:
        return defer.succeed({"version": 1})


@dataclass
class World:
    """Two map instances, ``a`` (map-a) and ``b`` (map-b), sharing the ``player``
    service and a cache, and calling each other through ``directory``, which serves both."""

    players: FakePlayers
    directory: FakeDirectory
    cache: MemoryCache
    a: MapService
    b: MapService


def make_world(cache: MemoryCache, maps: str) -> World:
    """A :class:`World` on ``cache`` with the map table ``maps``."""
    players, directory = FakePlayers(), FakeDirectory()
    a, b = (
        handler_factory(
            MapService,
            instance_id=name,
            cache=cache,
            services={"player": players},
            directory=directory,
            settings={"maps": maps},
        )
        for name in ("map-a", "map-b")
    )
    directory.serve(a)
    directory.serve(b)
    return World(players, directory, cache, a, b)


@pytest.fixture
def world() -> World:
    """Forest on map-a; cave, lake on map-b; one cache object standing for a shared Redis."""
    cache = fake_cache()
    cache.shared = True
    return make_world(cache, "forest=map-a,cave=map-b,lake=map-b")


def test_parse_maps() -> None:
    """The table is map=instance pairs; malformed or repeated maps are ConfigErrors."""
    assert parse_maps(" a=x, b=y ,") == {"a": "x", "b": "y"}
    for bad in ("a", "a=", "=x", "a=x,a=y"):
        with pytest.raises(ConfigError, match="maps"):
            parse_maps(bad)


def test_an_instance_serving_no_map_refuses_to_start() -> None:
    """An instance that the setting maps does not name is a ConfigError."""
    with pytest.raises(ConfigError, match="map-z"):
        handler_factory(MapService, instance_id="map-z", settings={"maps": "forest=map-a"})


def test_enter_move_and_leave(world: World) -> None:
    """A new player starts fresh; moves change it; leave saves it to the player service."""
    a = world.a
    state = result_of(call(a, "enter", player_id="p1", map_id="forest"))
    assert (state["map"], state["visited"], state["coins"]) == ("forest", ["forest"], 0)
    result_of(call(a, "move", player_id="p1", dx=2, dy=-1, coins=3))
    assert result_of(call(a, "where", player_id="p1")) == {"here": True, "map": "forest"}
    left = result_of(call(a, "leave", player_id="p1"))
    assert world.players.states["p1"] == left
    assert (left["pos"], left["coins"], left["moves"]) == ([2, -1], 3, 1)
    assert result_of(call(a, "players")) == []


def test_enter_elsewhere_names_the_right_instance(world: World) -> None:
    """Entering a map served by another instance is WrongMap naming that instance."""
    with pytest.raises(WrongMap, match="'cave' is served by 'map-b'"):
        result_of(call(world.a, "enter", player_id="p1", map_id="cave"))
    with pytest.raises(WrongMap, match="unknown map"):
        result_of(call(world.a, "enter", player_id="p1", map_id="moon"))


def test_transfer_through_the_cache(world: World) -> None:
    """transfer hands the state to the other instance through the cache, exactly once."""
    a, b = world.a, world.b
    result_of(call(a, "enter", player_id="p1", map_id="forest"))
    result_of(call(a, "move", player_id="p1", coins=5))
    assert result_of(call(a, "transfer", player_id="p1", to_map="cave")) == {
        "map": "cave",
        "instance": "map-b",
        "via": "cache",
    }
    assert result_of(call(a, "players")) == [] and result_of(call(b, "players")) == ["p1"]
    state = b.players["p1"]
    assert (state["coins"], state["visited"]) == (5, ["forest", "cave"])
    assert result_of(world.cache.get("handoff:p1")) is None
    with pytest.raises(NotHere):
        result_of(call(a, "move", player_id="p1"))


def test_transfer_within_an_instance_is_local(world: World) -> None:
    """Moving between two maps of the same instance touches no cache."""
    b = world.b
    result_of(call(b, "enter", player_id="p1", map_id="cave"))
    assert result_of(call(b, "transfer", player_id="p1", to_map="lake"))["via"] == "local"
    assert b.players["p1"]["visited"] == ["cave", "lake"]


def test_transfer_through_the_store_without_a_shared_cache() -> None:
    """With a private cache the state goes through the player service instead."""
    world = make_world(MemoryCache(), "forest=map-a,cave=map-b")
    a, b = world.a, world.b
    result_of(call(a, "enter", player_id="p1", map_id="forest"))
    result_of(call(a, "move", player_id="p1", coins=2))
    assert result_of(call(a, "transfer", player_id="p1", to_map="cave"))["via"] == "store"
    assert b.players["p1"]["coins"] == 2 and a.players == {}


def test_a_failed_arrival_keeps_the_player(world: World) -> None:
    """If the destination never took the hand-off, the source takes it back: nothing lost."""
    a, b = world.a, world.b
    result_of(call(a, "enter", player_id="p1", map_id="forest"))
    result_of(call(a, "move", player_id="p1", coins=1))
    world.directory.fail("map", "arrive", DeadlineExceeded("map.arrive: no answer"), once=True)
    with pytest.raises(DeadlineExceeded):
        result_of(call(a, "transfer", player_id="p1", to_map="cave"))
    assert a.players["p1"]["coins"] == 1 and b.players == {}
    assert result_of(world.cache.get("handoff:p1")) is None
    result_of(call(a, "move", player_id="p1", coins=1))


def test_a_lost_answer_after_arrival_is_not_a_duplicate(world: World) -> None:
    """If the destination took the player but its answer was lost, the source lets go."""
    a, b = world.a, world.b
    result_of(call(a, "enter", player_id="p1", map_id="forest"))
    world.directory.fail("map", "arrive", DeadlineExceeded("late"), once=True, after_running=True)
    assert result_of(call(a, "transfer", player_id="p1", to_map="cave"))["instance"] == "map-b"
    assert a.players == {} and list(b.players) == ["p1"]


def test_a_pending_hand_off_is_taken_by_enter(world: World) -> None:
    """A hand-off left in the cache (the arrival never came) is what the next enter loads."""
    b, players = world.b, world.players
    players.states["p1"] = {"player_id": "p1", "coins": 1, "visited": ["forest"], "pos": [0, 0]}
    handed = json.dumps({**players.states["p1"], "coins": 7, "moves": 3})
    result_of(world.cache.set("handoff:p1", handed))
    assert result_of(call(b, "enter", player_id="p1", map_id="cave"))["coins"] == 7
    with pytest.raises(HandoffMissing):
        result_of(call(b, "arrive", player_id="p2", map_id="cave", via="cache"))


def test_a_cache_outage_fails_the_transfer_cleanly(world: World) -> None:
    """With the cache down, transfer fails with CacheUnavailable and the player stays."""
    a = world.a
    result_of(call(a, "enter", player_id="p1", map_id="forest"))
    world.cache.stopService()
    with pytest.raises(CacheUnavailable):
        result_of(call(a, "transfer", player_id="p1", to_map="cave"))
    assert "p1" in a.players


def test_stop_saves_everyone_still_here(world: World) -> None:
    """A graceful stop saves each player on the instance to the player service."""
    a = world.a
    result_of(call(a, "enter", player_id="p1", map_id="forest"))
    result_of(call(a, "move", player_id="p1", coins=4))
    result_of(a.stop())
    assert world.players.states["p1"]["coins"] == 4
