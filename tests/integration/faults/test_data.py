"""Fault injection: PostgreSQL or Redis stopped and started again, under load."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest_twisted  # type: ignore[import-untyped]

from mmo.testing.data import ThrowawayPostgres, ThrowawayRedis

from ..conftest import wait_instances
from .load import (
    MAP,
    MAP_ID,
    PLAYER,
    DataWorkload,
    FaultCluster,
    assert_data_bounds,
    restart_under_load,
    save_and_leave,
    visit_map,
)


@pytest_twisted.inlineCallbacks
def test_postgres_restart(
    postgres: ThrowawayPostgres, edge: FaultCluster, directory_factory: Any
) -> Any:
    """PostgreSQL restarted under load: player calls fail clearly meanwhile, all work again
    once it is back, in the same worker, no acknowledged save is lost, and echo and chat are
    untouched."""
    player = edge.start_worker(
        "player-1",
        PLAYER,
        ("--database", f"{postgres.url}?max_size=4&timeout=2", "--set", "flush-interval=0.5"),
    )
    yield wait_instances(directory_factory([edge.yellow]), "player", {"player-1"})
    workload = DataWorkload(
        cycle=save_and_leave,
        write="player.save",
        reaches="player.leave",  # written now (a save may be acknowledged in memory)
        counter=lambda loaded: int(loaded["version"]),  # each save adds 1
        server=f"127.0.0.1:{postgres.port}",
        clear_errors=frozenset({"DatabaseUnavailable", "DatabaseTimeout"}),
    )
    figures, traffic = yield restart_under_load(edge, postgres, workload, "PostgreSQL restart")
    assert_data_bounds(figures, traffic, [player])
    # Saves were acknowledged while PostgreSQL was away (held in memory, written behind):
    # the read-back above found every one of them in the database.
    assert figures.data is not None and figures.data.acked_in_outage > 0


@pytest_twisted.inlineCallbacks
def test_redis_restart(
    redis: ThrowawayRedis, edge: FaultCluster, directory_factory: Any, tmp_path: Path
) -> Any:
    """Redis restarted under load: map entries fail clearly with CacheUnavailable meanwhile,
    all work again once it is back, in the same worker, no acknowledged move is lost, and
    echo and chat are untouched."""
    player = edge.start_worker(
        "player-1", PLAYER, ("--database", f"sqlite:///{tmp_path / 'players.db'}")
    )
    maps = edge.start_worker(
        "map-1", MAP, ("--cache", f"{redis.url}?timeout=0.5", "--set", f"maps={MAP_ID}=map-1")
    )
    directory = directory_factory([edge.yellow])
    yield wait_instances(directory, "player", {"player-1"})
    yield wait_instances(directory, "map", {"map-1"})
    workload = DataWorkload(
        cycle=visit_map,
        write="map.move",
        reaches="map.enter",  # takes the hand-off from the cache
        counter=lambda loaded: int(loaded["state"].get("coins", 0)),  # each move adds 1
        server=f"127.0.0.1:{redis.port}",
        clear_errors=frozenset({"CacheUnavailable"}),
        home=("map.leave",),
    )
    figures, traffic = yield restart_under_load(edge, redis, workload, "Redis restart")
    assert_data_bounds(figures, traffic, [player, maps])
