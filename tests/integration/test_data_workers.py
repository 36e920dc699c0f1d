"""Data services through real worker processes, on PostgreSQL + Redis and on the embedded pair:
accounts and tokens, write-behind player state, map hand-off, schema refusal."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer

from mmo.data import make_database, migrate, tokens
from mmo.errors import RemoteError
from mmo.testing.data import postgres_schema, redis_prefix

from .conftest import until, wait_instances

KEY = "integration-test-key-0123456789"
SSO = "mmo.examples.sso:SSOService"
PLAYER = "mmo.examples.player:PlayerService"
MAP = "mmo.examples.maps:MapService"


@dataclass
class Backend:
    """Where the workers of a test keep their data."""

    name: str
    database: str
    cache: str | None  # None: the worker's default (memory:// beside SQLite)

    def args(self) -> list[str]:
        """The worker options selecting this backend."""
        extra = ["--cache", self.cache] if self.cache else []
        return ["--database", self.database, *extra]


@pytest.fixture(params=["postgres+redis", "sqlite+memory"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """A private schema and key prefix on the shared servers, or a SQLite file."""
    if request.param == "postgres+redis":
        with postgres_schema() as db_url, redis_prefix() as cache_url:
            yield Backend(request.param, db_url, cache_url)
    else:
        yield Backend(request.param, f"sqlite:///{tmp_path}/data/mmo.db", None)


def start_worker(
    processes: Any,
    yellows: list[str],
    name: str,
    handler: str,
    backend: Backend,
    extra: tuple[str, ...] = (),
) -> Any:
    """Start a worker of ``handler`` named ``name`` on ``backend`` (``extra``: more arguments)."""
    args = ["--handler", handler, "--instance-id", name, *backend.args(), *extra]
    for address in yellows:
        args += ["--yellow", address]
    return processes.start("mmo-worker", *args, name=name, env={"MMO_AUTH_KEY": KEY})


@pytest_twisted.inlineCallbacks
def test_accounts_and_tokens_through_a_worker(backend, cluster, mmo_processes, directory_factory):
    """register/login through sso; errors are typed; accounts outlive the worker process."""
    cluster.yellow()
    first = start_worker(mmo_processes, cluster.yellows, "sso-1", SSO, backend)
    directory = directory_factory(cluster.yellows)
    yield wait_instances(directory, "sso", {"sso-1"})
    sso = directory.get_service("sso")
    assert (yield sso.register(user="harry", password="hedwig")) == {"user_id": "harry"}
    reply = yield sso.login(user="harry", password="hedwig")
    assert tokens.verify(reply["auth_token"], KEY.encode()) == "harry"
    assert reply["expires"] > time.time() + 3000
    failures = {}
    for call in (
        sso.register(user="harry", password="again"),
        sso.login(user="harry", password="wrong"),
        sso.login(user="nobody", password="hedwig"),
        sso.register(user="no spaces", password="x"),
    ):
        try:
            yield call
        except RemoteError as e:
            failures.setdefault(e.type, []).append(e.message)
    assert sorted(failures) == ["AccountExists", "BadCredentials", "InvalidAccount"]
    assert len(set(failures["BadCredentials"])) == 1  # wrong password == unknown user
    first.stop()
    start_worker(mmo_processes, cluster.yellows, "sso-2", SSO, backend)
    yield wait_instances(directory, "sso", {"sso-2"})
    reply = yield sso.login(user="harry", password="hedwig")
    assert reply["user_id"] == "harry"


@pytest_twisted.inlineCallbacks
def test_acknowledged_saves_survive_a_graceful_stop(
    backend, cluster, mmo_processes, directory_factory
):
    """With a 60 s flush interval, SIGTERM still writes every acknowledged save."""
    cluster.yellow()
    slow_flush = ("--set", "flush-interval=60")
    first = start_worker(mmo_processes, cluster.yellows, "player-1", PLAYER, backend, slow_flush)
    directory = directory_factory(cluster.yellows)
    yield wait_instances(directory, "player", {"player-1"})
    player = directory.get_service("player")
    for version in range(1, 4):
        acks = yield defer.gatherResults(
            [
                player.save(player_id=f"p{i}", state={"level": version, "bag": ["owl"] * i})
                for i in range(20)
            ]
        )
        assert acks == [{"version": version}] * 20
    stats = yield player.stats()
    assert stats["dirty"] == 20 and stats["flushes"] == 0
    first.stop()
    assert "everything flushed" in first.log_tail()
    start_worker(mmo_processes, cluster.yellows, "player-2", PLAYER, backend)
    yield wait_instances(directory, "player", {"player-2"})
    loaded = yield defer.gatherResults([player.load(player_id=f"p{i}") for i in range(20)])
    assert [(p["state"], p["version"]) for p in loaded] == [
        ({"level": 3, "bag": ["owl"] * i}, 3) for i in range(20)
    ]


@pytest_twisted.inlineCallbacks
def test_players_move_between_map_processes_without_loss_or_duplicates(
    backend, cluster, mmo_processes, directory_factory
):
    """Players hop between two map workers ten times: every coin and map visit is kept, once."""
    cluster.yellow()
    table = ("--set", "maps=forest=map-a,cave=map-b")
    start_worker(mmo_processes, cluster.yellows, "player-1", PLAYER, backend)
    for name in ("map-a", "map-b"):
        start_worker(mmo_processes, cluster.yellows, name, MAP, backend, table)
    directory = directory_factory(cluster.yellows)
    yield wait_instances(directory, "map", {"map-a", "map-b"})
    yield wait_instances(directory, "player", {"player-1"})
    maps = directory.get_service("map")
    owner = {"forest": "map-a", "cave": "map-b"}
    other = {"forest": "cave", "cave": "forest"}
    expected_via = "cache" if backend.cache else "store"

    @defer.inlineCallbacks
    def journey(player_id: str) -> Any:
        where = "forest"
        yield maps.call("enter", {"player_id": player_id, "map_id": where}, instance=owner[where])
        for _ in range(10):
            yield maps.call("move", {"player_id": player_id, "coins": 1}, instance=owner[where])
            moved = yield maps.call(
                "transfer", {"player_id": player_id, "to_map": other[where]}, instance=owner[where]
            )
            where = other[where]
            assert moved == {"map": where, "instance": owner[where], "via": expected_via}
        return where

    players = [f"hero-{i}" for i in range(4)]
    ends = yield defer.gatherResults([journey(p) for p in players])
    assert set(ends) == {"forest"}
    for player_id in players:
        seen = yield defer.gatherResults(
            [maps.call("where", {"player_id": player_id}, instance=i) for i in ("map-a", "map-b")]
        )
        assert [s["here"] for s in seen] == [True, False]  # on exactly one instance
        state = yield maps.call("leave", {"player_id": player_id}, instance="map-a")
        assert (state["coins"], state["moves"]) == (10, 10)
        assert state["visited"] == ["forest", "cave"] * 5 + ["forest"]
    stored = yield directory.get_service("player").load(player_id="hero-0")
    assert stored["state"]["coins"] == 10 and stored["state"]["map"] == "forest"


@pytest_twisted.inlineCallbacks
def test_a_worker_refuses_a_database_newer_than_its_code(backend, cluster, mmo_processes):
    """A schema version the code lacks: the worker logs SchemaTooNew and exits with status 1,
    never serving."""
    db = make_database(backend.database)
    db.startService()
    try:
        yield migrate(db)
        yield db.run_operation(
            "INSERT INTO mmo_schema (component, version, name, checksum, applied_at) "
            "VALUES ('mmo', 99, '0099_from_the_future.sql', 'x', 0)"
        )
    finally:
        yield db.stopService()
    cluster.yellow()
    worker = start_worker(mmo_processes, cluster.yellows, "player-1", PLAYER, backend)
    yield until(lambda: not worker.alive(), what="the worker's exit", interval=0.1)
    assert worker.wait(0) == 1, "exit status 1: systemd and mmo-cluster see the failure"
    log = worker.log_tail(200)
    assert "SchemaTooNew" in log and "version 99" in log
    assert "serving player" not in log
