"""Servers restarted under load: PostgreSQL under a player worker, Redis under a cache client.
Each test runs its own throwaway server on a free port and restarts that one only."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg2  # type: ignore[import-untyped]
import pytest
import pytest_twisted
from twisted.internet import defer

from mmo.data import CacheUnavailable, make_cache
from mmo.data.testing import ThrowawayPostgres, ThrowawayRedis
from mmo.errors import MmoError, RemoteError

from .conftest import sleep, wait_instances


@pytest.fixture
def postgres() -> Iterator[ThrowawayPostgres]:
    """A PostgreSQL server of this test's own."""
    server = ThrowawayPostgres().init().start()
    yield server
    server.cleanup()


class PlayerLoad:
    """Loops that save a player's counter and make the worker write it (``leave``).

    Records, per player, the last counter whose save was acknowledged, and every
    error by type, with the time each failed call took.
    """

    def __init__(self, player: Any, players: int = 8) -> None:
        self.player = player
        self.acked: dict[str, int] = {}
        self.ok = 0
        self.errors: Counter[str] = Counter()
        self.messages: list[str] = []
        self.slowest_error = 0.0
        self.running = True
        self.loops = [self._loop(f"p{i}") for i in range(players)]

    @defer.inlineCallbacks
    def _loop(self, player_id: str) -> Any:
        n = 0
        while self.running:
            n += 1
            started = time.monotonic()
            try:
                yield self.player.save(player_id=player_id, state={"n": n})
                self.acked[player_id] = n
                yield self.player.leave(player_id=player_id)
                self.ok += 1
            except RemoteError as e:
                self.errors[e.type] += 1
                self.messages.append(e.message)
                self.slowest_error = max(self.slowest_error, time.monotonic() - started)
                yield sleep(0.05)

    def stop(self) -> defer.Deferred[Any]:
        self.running = False
        return defer.gatherResults(self.loops)


@pytest_twisted.inlineCallbacks
def test_postgres_restart_under_load(postgres, cluster, mmo_processes, directory_factory):
    """PostgreSQL stops and comes back: calls fail clearly meanwhile, then the same worker
    process recovers by itself and no acknowledged save is lost."""
    cluster.yellow()
    database = f"{postgres.url}?max_size=4&timeout=2"
    args = ["--handler", "mmo.examples.player:PlayerService", "--instance-id", "player-1"]
    worker = mmo_processes.start(
        "mmo-worker",
        *args,
        "--database",
        database,
        "--yellow",
        cluster.yellows[0],
        name="player-1",
        env={"MMO_PLAYER_FLUSH_INTERVAL": "0.2"},
    )
    directory = directory_factory(cluster.yellows)
    yield wait_instances(directory, "player", {"player-1"})
    load = PlayerLoad(directory.get_service("player", timeout=5))
    yield sleep(1.0)
    before = load.ok
    postgres.stop()
    yield sleep(1.5)
    during = load.ok
    postgres.start()
    restarted = time.monotonic()
    while load.ok == during and time.monotonic() - restarted < 10:
        yield sleep(0.1)
    recovered_in = time.monotonic() - restarted
    yield sleep(1.0)
    yield load.stop()
    yield directory.get_service("player").flush()

    assert before > 20 and load.ok > during
    assert recovered_in < 5, f"no success {recovered_in:.1f}s after the restart"
    assert load.errors and set(load.errors) <= {"DatabaseUnavailable", "DatabaseTimeout"}
    assert all(f"127.0.0.1:{postgres.port}" in m for m in load.messages), load.messages[:3]
    assert load.slowest_error < 5  # within the call's deadline: nothing hung
    assert worker.alive()  # the same process throughout
    conn = psycopg2.connect(postgres.url, connect_timeout=5)
    try:
        with conn.cursor() as cursor:
            cursor.execute("SELECT player_id, state FROM players")
            stored = {pid: state for pid, state in cursor.fetchall()}
    finally:
        conn.close()
    for player_id, n in load.acked.items():
        assert stored[player_id] == f'{{"n":{n}}}', player_id


@pytest_twisted.inlineCallbacks
def test_redis_restart_under_load(tmp_path: Path) -> None:
    """Redis stops and comes back: operations fail with CacheUnavailable within their
    deadline meanwhile, then the same cache service reconnects by itself."""
    server = ThrowawayRedis(tmp_path).start()
    cache = make_cache(f"{server.url}?timeout=0.5")
    cache.startService()
    ok, errors, slowest = [0], Counter[str](), [0.0]
    running = [True]

    @defer.inlineCallbacks
    def loop(i: int) -> Any:
        n = 0
        while running[0]:
            n += 1
            started = time.monotonic()
            try:
                yield cache.set(f"k{i}", str(n), ttl=30)
                assert (yield cache.get(f"k{i}")) == str(n)
                ok[0] += 1
            except MmoError as e:
                errors[type(e).__name__] += 1
                slowest[0] = max(slowest[0], time.monotonic() - started)
                yield sleep(0.02)

    try:
        assert (yield cache.wait_connected(5))
        loops = [loop(i) for i in range(8)]
        yield sleep(0.5)
        before = ok[0]
        server.stop()
        yield sleep(1.0)
        during = ok[0]
        server.start()
        restarted = time.monotonic()
        while ok[0] == during and time.monotonic() - restarted < 10:
            yield sleep(0.05)
        recovered_in = time.monotonic() - restarted
        yield sleep(0.5)
        running[0] = False
        yield defer.gatherResults(loops)
    finally:
        yield cache.stopService()
        server.stop()
    assert before > 50 and ok[0] > during
    assert recovered_in < 4, f"no success {recovered_in:.1f}s after the restart"
    assert errors and set(errors) == {CacheUnavailable.__name__}
    assert slowest[0] < 0.5 + 0.3  # each failure within its 0.5 s deadline
