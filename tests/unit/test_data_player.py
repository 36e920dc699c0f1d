"""PlayerService: load and save with write-behind on a fake database and a fake clock."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet import defer, task

from mmo.config import ConfigError
from mmo.data import DatabaseUnavailable, migrate
from mmo.errors import BadRequest
from mmo.examples.player import PlayerService, StaleState
from mmo.testing import FakeDatabase, call, handler_factory, result_of


@pytest.fixture
def db() -> FakeDatabase:
    """A migrated fake database."""
    database = FakeDatabase()
    result_of(migrate(database))
    return database


@pytest.fixture
def clock() -> task.Clock:
    """A fake clock."""
    return task.Clock()


@pytest.fixture
def player(db: FakeDatabase, clock: task.Clock) -> PlayerService:
    """A started player service."""
    service = handler_factory(PlayerService, db=db, clock=clock)
    service.start()
    return service


def stored(db: FakeDatabase, player_id: str) -> Any:
    """The (state, version) row of a player in the database, or None."""
    rows = result_of(
        db.run_query("SELECT state, version FROM players WHERE player_id = %s", (player_id,))
    )
    return rows[0] if rows else None


def test_a_new_player_loads_empty_at_version_zero(player: PlayerService) -> None:
    """A player never saved loads as {} at version 0."""
    assert result_of(call(player, "load", player_id="p1")) == {
        "player_id": "p1",
        "state": {},
        "version": 0,
    }


def test_save_is_acknowledged_in_memory_and_flushed_on_the_interval(
    player: PlayerService, db: FakeDatabase, clock: task.Clock
) -> None:
    """A save answers at once; the row appears after flush_interval, in one batch."""
    assert result_of(call(player, "save", player_id="p1", state={"hp": 10})) == {"version": 1}
    assert result_of(call(player, "save", player_id="p1", state={"hp": 9})) == {"version": 2}
    result_of(call(player, "save", player_id="p2", state={"hp": 5}))
    assert stored(db, "p1") is None
    assert result_of(call(player, "load", player_id="p1"))["state"] == {"hp": 9}
    clock.advance(player.flush_interval)
    assert stored(db, "p1") == ('{"hp":9}', 2)
    assert stored(db, "p2") == ('{"hp":5}', 1)
    assert result_of(call(player, "stats"))["dirty"] == 0
    assert player.counters["flushes"] == 1 and player.counters["rows_written"] == 2


def test_leave_writes_now_and_forgets(player: PlayerService, db: FakeDatabase) -> None:
    """leave writes the player at once and drops it from memory; a later load reads the row."""
    result_of(call(player, "save", player_id="p1", state={"gold": 3}))
    assert result_of(call(player, "leave", player_id="p1")) == {"version": 1}
    assert stored(db, "p1") == ('{"gold":3}', 1)
    assert "p1" not in player.players
    assert result_of(call(player, "load", player_id="p1")) == {
        "player_id": "p1",
        "state": {"gold": 3},
        "version": 1,
    }


def test_stop_flushes_everything_acknowledged(db: FakeDatabase, clock: task.Clock) -> None:
    """A graceful stop writes every acknowledged save, even before the interval."""
    service = handler_factory(PlayerService, db=db, clock=clock)
    service.start()
    for i in range(5):
        result_of(call(service, "save", player_id=f"p{i}", state={"i": i}))
    result_of(service.stop())
    assert [stored(db, f"p{i}") for i in range(5)] == [(f'{{"i":{i}}}', 1) for i in range(5)]


def test_a_failed_flush_keeps_the_state_and_retries(
    player: PlayerService, db: FakeDatabase, clock: task.Clock
) -> None:
    """While the database is down, saves of loaded players succeed; the flush after it writes."""
    result_of(call(player, "load", player_id="p1"))
    db.down = DatabaseUnavailable("connection refused")
    result_of(call(player, "save", player_id="p1", state={"v": 1}))
    with pytest.raises(DatabaseUnavailable):  # a player not in memory needs the database
        result_of(call(player, "load", player_id="p2"))
    clock.advance(player.flush_interval)
    assert player.counters["flush_failures"] == 1
    with pytest.raises(DatabaseUnavailable):
        result_of(call(player, "leave", player_id="p1"))
    assert result_of(call(player, "load", player_id="p1"))["state"] == {"v": 1}
    db.down = None
    clock.advance(player.flush_interval)
    assert stored(db, "p1") == ('{"v":1}', 1)


def test_stop_retries_while_the_database_is_down(db: FakeDatabase, clock: task.Clock) -> None:
    """stop keeps retrying the last flush; the database coming back in time saves everything."""
    service = handler_factory(PlayerService, db=db, clock=clock)
    service.start()
    result_of(call(service, "save", player_id="p1", state={"v": 1}))
    db.down = DatabaseUnavailable("down")
    stopping = service.stop()
    clock.advance(1.0)
    assert not stopping.called
    db.down = None
    clock.advance(1.0)
    assert stopping.called
    assert stored(db, "p1") == ('{"v":1}', 1)


def test_versions_guard_against_stale_saves(player: PlayerService, db: FakeDatabase) -> None:
    """save(version=N) fails with StaleState unless N is current; old rows never win."""
    result_of(call(player, "save", player_id="p1", state={"v": 1}))
    with pytest.raises(StaleState, match="version 1, not 0"):
        result_of(call(player, "save", player_id="p1", state={"v": 2}, version=0))
    assert result_of(call(player, "save", player_id="p1", state={"v": 2}, version=1)) == {
        "version": 2
    }
    result_of(call(player, "flush"))
    # A write of an older version (another instance behind) does not replace the row.
    result_of(
        db.run_operation(
            "INSERT INTO players VALUES (%s, %s, %s, %s) ON CONFLICT (player_id) DO UPDATE "
            "SET state = excluded.state, version = excluded.version "
            "WHERE players.version < excluded.version",
            ("p1", '{"v":0}', 1, 0),
        )
    )
    assert stored(db, "p1") == ('{"v":2}', 2)


def test_a_loaded_player_continues_its_versions(db: FakeDatabase, clock: task.Clock) -> None:
    """A new process loads the row's version and counts on from it."""
    first = handler_factory(PlayerService, db=db, clock=clock)
    result_of(call(first, "save", player_id="p1", state={"v": 1}))
    result_of(call(first, "save", player_id="p1", state={"v": 2}))
    result_of(first.stop())
    second = handler_factory(PlayerService, db=db, clock=clock)
    assert result_of(call(second, "load", player_id="p1"))["version"] == 2
    assert result_of(call(second, "save", player_id="p1", state={"v": 3})) == {"version": 3}


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"player_id": "", "state": {}}, "player_id"),
        ({"player_id": 7, "state": {}}, "player_id"),
        ({"player_id": "p", "state": [1]}, "is a map"),
        ({"player_id": "p", "state": {"b": b"\x00"}}, "JSON-like"),
        ({"player_id": "p", "state": {"f": float("nan")}}, "JSON-like"),
    ],
)
def test_bad_saves_are_bad_requests(
    player: PlayerService, kwargs: dict[str, Any], match: str
) -> None:
    """A bad player id or a state that is not a JSON-like map is a BadRequest."""
    with pytest.raises(BadRequest, match=match):
        result_of(call(player, "save", **kwargs))


def test_flush_interval_from_the_setting(db: FakeDatabase) -> None:
    """The setting flush-interval sets the interval; a bad value is a ConfigError."""
    assert handler_factory(PlayerService, db=db).flush_interval == 1.0
    player = handler_factory(PlayerService, db=db, settings={"flush-interval": "0.25"})
    assert player.flush_interval == 0.25
    for bad in ("soon", "0", "7200"):
        with pytest.raises(ConfigError, match="flush"):
            handler_factory(PlayerService, db=db, settings={"flush-interval": bad})


def test_no_database_is_a_config_error() -> None:
    """The player service refuses to start without a database."""
    with pytest.raises(ConfigError, match="needs a database"):
        handler_factory(PlayerService).start()


def test_concurrent_loads_read_the_row_once(db: FakeDatabase, clock: task.Clock) -> None:
    """Two loads of a player not in memory share one query."""
    service = handler_factory(PlayerService, db=db, clock=clock)
    gate: defer.Deferred[list[Any]] = defer.Deferred()
    queries = []

    def slow_query(sql: str, params: Any = None, *, timeout: Any = None) -> Any:
        queries.append(sql)
        return gate

    service.db = type("Slow", (), {"run_query": staticmethod(slow_query)})()  # type: ignore[assignment]
    first = call(service, "load", player_id="p1")
    second = call(service, "load", player_id="p1")
    gate.callback([('{"a":1}', 4)])
    assert (
        result_of(first)
        == result_of(second)
        == {"player_id": "p1", "state": {"a": 1}, "version": 4}
    )
    assert len(queries) == 1
