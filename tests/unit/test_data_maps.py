"""MapService: players on maps and hand-off between instances, with fakes for the rest."""

from __future__ import annotations

import json
from typing import Any

import pytest
from twisted.internet import defer

from mmo.config import ConfigError
from mmo.data import CacheUnavailable
from mmo.data.memory import MemoryCache
from mmo.errors import DeadlineExceeded, MmoError
from mmo.examples.maps import HandoffMissing, MapService, NotHere, WrongMap, parse_maps
from mmo.testing import fake_context, handler_factory
from mmo.testing.fakes import fake_cache
from mmo.testing.fakes import result_of as value


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


class FakeMapDirectory:
    """``get_service("map")``: calls go straight to the handler of the instance named."""

    def __init__(self) -> None:
        self.instances: dict[str, MapService] = {}
        self.fail_next: MmoError | None = None
        self.fail_after_running = False

    def call(self, method: str, kwargs: dict[str, Any], *, instance: str) -> defer.Deferred[Any]:
        handler = self.instances[instance]
        error, self.fail_next = self.fail_next, None
        if error is not None and not self.fail_after_running:
            return defer.fail(error)
        d = defer.maybeDeferred(handler.dispatch, fake_context(handler, method), kwargs)
        if error is not None:  # the call ran, but the answer was lost
            return d.addCallback(lambda _: defer.fail(error))
        return d


@pytest.fixture
def world() -> Any:
    """Two map instances (forest on map-a; cave, lake on map-b) sharing players and a cache."""
    players, maps, cache = FakePlayers(), FakeMapDirectory(), fake_cache()
    cache.shared = True  # one cache object stands for a shared Redis here
    for name in ("map-a", "map-b"):
        maps.instances[name] = handler_factory(
            MapService,
            instance_id=name,
            cache=cache,
            services={"player": players, "map": maps},
            settings={"maps": "forest=map-a,cave=map-b,lake=map-b"},
        )
    return players, maps, cache


def call(handler: MapService, method: str, **kwargs: Any) -> Any:
    """Call a method through the dispatch table and wait for it."""
    return value(handler.dispatch(fake_context(handler, method), kwargs))


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


def test_enter_move_and_leave(world: Any) -> None:
    """A new player starts fresh; moves change it; leave saves it to the player service."""
    players, maps, _ = world
    a = maps.instances["map-a"]
    state = call(a, "enter", player_id="p1", map_id="forest")
    assert (state["map"], state["visited"], state["coins"]) == ("forest", ["forest"], 0)
    call(a, "move", player_id="p1", dx=2, dy=-1, coins=3)
    assert call(a, "where", player_id="p1") == {"here": True, "map": "forest"}
    left = call(a, "leave", player_id="p1")
    assert players.states["p1"] == left
    assert (left["pos"], left["coins"], left["moves"]) == ([2, -1], 3, 1)
    assert call(a, "players") == []


def test_enter_elsewhere_names_the_right_instance(world: Any) -> None:
    """Entering a map served by another instance is WrongMap naming that instance."""
    _, maps, _ = world
    with pytest.raises(WrongMap, match="'cave' is served by 'map-b'"):
        call(maps.instances["map-a"], "enter", player_id="p1", map_id="cave")
    with pytest.raises(WrongMap, match="unknown map"):
        call(maps.instances["map-a"], "enter", player_id="p1", map_id="moon")


def test_transfer_through_the_cache(world: Any) -> None:
    """transfer hands the state to the other instance through the cache, exactly once."""
    _, maps, cache = world
    a, b = maps.instances["map-a"], maps.instances["map-b"]
    call(a, "enter", player_id="p1", map_id="forest")
    call(a, "move", player_id="p1", coins=5)
    assert call(a, "transfer", player_id="p1", to_map="cave") == {
        "map": "cave",
        "instance": "map-b",
        "via": "cache",
    }
    assert call(a, "players") == [] and call(b, "players") == ["p1"]
    state = b.players["p1"]
    assert (state["coins"], state["visited"]) == (5, ["forest", "cave"])
    assert value(cache.get("handoff:p1")) is None
    with pytest.raises(NotHere):
        call(a, "move", player_id="p1")


def test_transfer_within_an_instance_is_local(world: Any) -> None:
    """Moving between two maps of the same instance touches no cache."""
    _, maps, _ = world
    b = maps.instances["map-b"]
    call(b, "enter", player_id="p1", map_id="cave")
    assert call(b, "transfer", player_id="p1", to_map="lake")["via"] == "local"
    assert b.players["p1"]["visited"] == ["cave", "lake"]


def test_transfer_through_the_store_without_a_shared_cache() -> None:
    """With a private cache the state goes through the player service instead."""
    players, maps = FakePlayers(), FakeMapDirectory()
    for name in ("map-a", "map-b"):
        maps.instances[name] = handler_factory(
            MapService,
            instance_id=name,
            cache=MemoryCache(),
            services={"player": players, "map": maps},
            settings={"maps": "forest=map-a,cave=map-b"},
        )
    a, b = maps.instances["map-a"], maps.instances["map-b"]
    call(a, "enter", player_id="p1", map_id="forest")
    call(a, "move", player_id="p1", coins=2)
    assert call(a, "transfer", player_id="p1", to_map="cave")["via"] == "store"
    assert b.players["p1"]["coins"] == 2 and a.players == {}


def test_a_failed_arrival_keeps_the_player(world: Any) -> None:
    """If the destination never took the hand-off, the source takes it back: nothing lost."""
    _, maps, cache = world
    a, b = maps.instances["map-a"], maps.instances["map-b"]
    call(a, "enter", player_id="p1", map_id="forest")
    call(a, "move", player_id="p1", coins=1)
    maps.fail_next = DeadlineExceeded("map.arrive: no answer")
    with pytest.raises(DeadlineExceeded):
        call(a, "transfer", player_id="p1", to_map="cave")
    assert a.players["p1"]["coins"] == 1 and b.players == {}
    assert value(cache.get("handoff:p1")) is None
    call(a, "move", player_id="p1", coins=1)


def test_a_lost_answer_after_arrival_is_not_a_duplicate(world: Any) -> None:
    """If the destination took the player but its answer was lost, the source lets go."""
    _, maps, _ = world
    a, b = maps.instances["map-a"], maps.instances["map-b"]
    call(a, "enter", player_id="p1", map_id="forest")
    maps.fail_next, maps.fail_after_running = DeadlineExceeded("late"), True
    assert call(a, "transfer", player_id="p1", to_map="cave")["instance"] == "map-b"
    assert a.players == {} and list(b.players) == ["p1"]


def test_a_pending_hand_off_is_taken_by_enter(world: Any) -> None:
    """A hand-off left in the cache (the arrival never came) is what the next enter loads."""
    players, maps, cache = world
    b = maps.instances["map-b"]
    players.states["p1"] = {"player_id": "p1", "coins": 1, "visited": ["forest"], "pos": [0, 0]}
    value(cache.set("handoff:p1", json.dumps({**players.states["p1"], "coins": 7, "moves": 3})))
    assert call(b, "enter", player_id="p1", map_id="cave")["coins"] == 7
    with pytest.raises(HandoffMissing):
        call(b, "arrive", player_id="p2", map_id="cave", via="cache")


def test_a_cache_outage_fails_the_transfer_cleanly(world: Any) -> None:
    """With the cache down, transfer fails with CacheUnavailable and the player stays."""
    _, maps, cache = world
    a = maps.instances["map-a"]
    call(a, "enter", player_id="p1", map_id="forest")
    cache.stopService()
    with pytest.raises(CacheUnavailable):
        call(a, "transfer", player_id="p1", to_map="cave")
    assert "p1" in a.players


def test_stop_saves_everyone_still_here(world: Any) -> None:
    """A graceful stop saves each player on the instance to the player service."""
    players, maps, _ = world
    a = maps.instances["map-a"]
    call(a, "enter", player_id="p1", map_id="forest")
    call(a, "move", player_id="p1", coins=4)
    value(a.stop())
    assert players.states["p1"]["coins"] == 4
