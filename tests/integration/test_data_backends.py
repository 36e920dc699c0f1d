"""The data services in this process against the real servers: PostgreSQL + Redis, and the
embedded pair (SQLite + in-process cache), through the same test cases."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer

from mmo.data import (
    CacheError,
    CacheUnavailable,
    DatabaseError,
    DatabaseTimeout,
    DatabaseUnavailable,
    IntegrityError,
    SchemaTooNew,
    make_cache,
    make_database,
    migrate,
)
from mmo.testing import free_port
from mmo.testing.data import (
    ThrowawayRedis,
    ThrowawaySentinel,
    postgres_schema,
    redis_command,
    redis_prefix,
)

from .conftest import until

BACKENDS = ["postgres+redis", "sqlite+memory"]


@pytest.fixture(params=BACKENDS)
def urls(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """(database URL, cache URL) of a backend: a private schema and key prefix, or files."""
    if request.param == "postgres+redis":
        with postgres_schema() as db_url, redis_prefix() as cache_url:
            yield db_url, cache_url
    else:
        yield f"sqlite:///{tmp_path}/data/mmo.db", "memory://"


@pytest.fixture
def db(urls: tuple[str, str]) -> Iterator[Any]:
    """A started, migrated database service of the backend."""
    database = make_database(urls[0])
    database.startService()
    pytest_twisted.blockon(migrate(database))
    yield database
    pytest_twisted.blockon(defer.maybeDeferred(database.stopService))


@pytest.fixture
def cache(urls: tuple[str, str]) -> Iterator[Any]:
    """A started, connected cache service of the backend."""
    service = make_cache(urls[1])
    service.startService()
    if hasattr(service, "wait_connected"):
        assert pytest_twisted.blockon(service.wait_connected(5))
    yield service
    pytest_twisted.blockon(defer.maybeDeferred(service.stopService))


# -- databases ---------------------------------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_queries_operations_and_rows(db: Any) -> None:
    """run_operation writes, run_query reads rows as tuples with %s parameters."""
    for i in range(3):
        yield db.run_operation(
            "INSERT INTO players (player_id, state, version, updated_at) VALUES (%s, %s, %s, %s)",
            (f"p{i}", f'{{"n": {i}}}', i, 0),
        )
    rows = yield db.run_query(
        "SELECT player_id, version FROM players WHERE version >= %s ORDER BY player_id", (1,)
    )
    assert rows == [("p1", 1), ("p2", 2)]
    assert (yield db.run_query("SELECT 'a%%b' || %s", ("c",))) == [("a%bc",)]


@pytest_twisted.inlineCallbacks
def test_interactions_commit_or_roll_back(db: Any) -> None:
    """An interaction commits when its function succeeds and rolls back when it raises."""

    @defer.inlineCallbacks
    def add(cursor: Any, user: str, fail: bool) -> Any:
        yield cursor.execute(
            "INSERT INTO accounts (user_id, password_hash, created_at) VALUES (%s, %s, %s)",
            (user, "h", 1),
        )
        yield cursor.execute("SELECT count(*) FROM accounts")
        (count,) = cursor.fetchone()
        if fail:
            raise ValueError(f"abort at {count}")
        return count

    assert (yield db.run_interaction(add, "harry", False)) == 1
    with pytest.raises(ValueError, match="abort at 2"):
        yield db.run_interaction(add, "ron", True)
    assert (yield db.run_query("SELECT user_id FROM accounts")) == [("harry",)]


@pytest_twisted.inlineCallbacks
def test_errors_are_clear(db: Any) -> None:
    """A duplicate key is IntegrityError, bad SQL a DatabaseError, each quoting the statement."""
    insert = "INSERT INTO accounts (user_id, password_hash, created_at) VALUES (%s, %s, %s)"
    yield db.run_operation(insert, ("harry", "h", 1))
    with pytest.raises(IntegrityError, match="INSERT INTO accounts"):
        yield db.run_operation(insert, ("harry", "h", 1))
    with pytest.raises(DatabaseError, match="SELEC") as caught:
        yield db.run_query("SELEC 1")
    assert not isinstance(caught.value, DatabaseUnavailable)
    # The connection is still fine afterwards.
    assert (yield db.run_query("SELECT count(*) FROM accounts")) == [(1,)]


@pytest_twisted.inlineCallbacks
def test_a_slow_statement_times_out_and_the_database_goes_on(db: Any) -> None:
    """A statement past its deadline fails with DatabaseTimeout when the deadline passes,
    not when the statement ends; later ones work."""
    slow = (
        "SELECT pg_sleep(5)"
        if db.dialect == "postgresql"
        else "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 1000000000)"
        " SELECT count(*) FROM c"
    )
    # "took over 0.3s" is said by the deadline's timer alone, and only before the statement
    # answered: so the failure did not wait for the statement to end.
    with pytest.raises(DatabaseTimeout, match=r"took over 0\.3s"):
        yield db.run_query(slow, timeout=0.3)
    assert (yield db.run_query("SELECT 1")) == [(1,)]


@pytest_twisted.inlineCallbacks
def test_concurrent_transactions_all_count(db: Any) -> None:
    """Fifty concurrent interactions updating one row: every update is counted once."""
    yield db.run_operation(
        "INSERT INTO players (player_id, state, version, updated_at) VALUES ('c', '{}', 0, 0)"
    )

    @defer.inlineCallbacks
    def bump(cursor: Any) -> Any:
        yield cursor.execute("UPDATE players SET version = version + 1 WHERE player_id = 'c'")
        yield cursor.execute("SELECT version FROM players WHERE player_id = 'c'")
        return cursor.fetchone()[0]

    seen = yield defer.gatherResults([db.run_interaction(bump) for _ in range(50)])
    assert sorted(seen) == list(range(1, 51))
    if db.dialect == "postgresql":
        assert db.stats()["open"] <= db.max_size


@pytest_twisted.inlineCallbacks
def test_migrations_are_idempotent_and_refuse_a_newer_schema(db: Any) -> None:
    """Migrating again applies nothing; a schema from newer code is refused."""
    assert (yield migrate(db)) == []
    yield db.run_operation(
        "INSERT INTO mmo_schema (component, version, name, checksum, applied_at) "
        "VALUES ('mmo', 99, '0099_future.sql', 'x', 0)"
    )
    with pytest.raises(SchemaTooNew, match="version 99"):
        yield migrate(db)


@pytest_twisted.inlineCallbacks
def test_a_full_postgres_pool_queues_within_the_deadline() -> None:
    """With max_size=1, a second operation waits for the connection; one whose deadline
    passes first fails with DatabaseTimeout saying it got no connection."""
    with postgres_schema() as url:
        db = make_database(f"{url}&max_size=1&min_size=0")
        db.startService()
        try:
            slow = db.run_query("SELECT pg_sleep(0.5)")
            queued = db.run_query("SELECT 1", timeout=3)
            with pytest.raises(DatabaseTimeout, match="no connection"):
                yield db.run_query("SELECT 2", timeout=0.2)
            assert (yield queued) == [(1,)]
            yield slow
            assert db.stats() == {"open": 1, "idle": 1, "busy": 0, "waiting": 0}
        finally:
            yield db.stopService()


@pytest_twisted.inlineCallbacks
def test_an_unreachable_postgres_fails_fast_and_clearly() -> None:
    """Nothing listening: each operation fails with DatabaseUnavailable saying the connection
    was refused, not at its (5 s) deadline."""
    db = make_database(f"postgresql://postgres@127.0.0.1:{free_port()}/x?timeout=5")
    db.startService()
    try:
        for _ in range(3):
            with pytest.raises(DatabaseUnavailable, match=r"127\.0\.0\.1.*refused") as caught:
                yield db.run_query("SELECT 1")
            assert not isinstance(caught.value, DatabaseTimeout)
    finally:
        yield db.stopService()


@pytest_twisted.inlineCallbacks
def test_a_stopped_database_refuses_operations(db: Any) -> None:
    """After stopService, operations fail with DatabaseUnavailable instead of hanging."""
    yield db.stopService()
    with pytest.raises(DatabaseUnavailable):
        yield db.run_query("SELECT 1")
    db.startService()  # for the fixture's stop
    assert (yield db.run_query("SELECT 1")) == [(1,)]


# -- caches ------------------------------------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_cache_operations(cache: Any) -> None:
    """get/set/add/delete/take/incr/expire behave the same on Redis and in memory."""
    assert (yield cache.get("k")) is None
    yield cache.set("k", "v")
    assert (yield cache.get("k")) == "v"
    yield cache.set("n", "123")
    assert (yield cache.get("n")) == "123"  # a number-like value stays a string
    assert (yield cache.incr("n", 2)) == 125
    assert (yield cache.incr("fresh")) == 1
    assert (yield cache.add("k", "other")) is False
    assert (yield cache.add("k2", "new")) is True
    assert (yield cache.take("k2")) == "new"
    assert (yield cache.take("k2")) is None
    assert (yield cache.delete("k")) is True
    assert (yield cache.delete("k")) is False
    yield cache.set("text", "x")
    with pytest.raises(CacheError):
        yield cache.incr("text")


@pytest_twisted.inlineCallbacks
def test_cache_hashes_and_sets(cache: Any) -> None:
    """Hashes and sets behave the same on Redis and in memory: counts of what changed, an
    emptied one is gone, a key of the other kind is refused, persist clears a ttl."""
    assert (yield cache.hset("h", {"a": "1", "b": "2"})) == 2
    assert (yield cache.hset("h", {"b": "3", "c": "4"})) == 1
    assert (yield cache.hget("h", "b")) == "3"
    assert (yield cache.hget("h", "nope")) is None
    assert (yield cache.hgetall("h")) == {"a": "1", "b": "3", "c": "4"}
    assert (yield cache.hdel("h", "a", "nope")) == 1
    assert (yield cache.hdel("h")) == 0
    assert (yield cache.hdel("h", "b", "c")) == 2
    assert (yield cache.hgetall("h")) == {}
    assert (yield cache.get("h")) is None  # emptied: gone
    assert (yield cache.sadd("s", "x", "y")) == 2
    assert (yield cache.sadd("s", "y", "z")) == 1
    assert (yield cache.smembers("s")) == {"x", "y", "z"}
    # Of concurrent removals of one member, exactly one sees it removed: a claim.
    removed = yield defer.gatherResults([cache.srem("s", "x") for _ in range(10)])
    assert sorted(removed) == [0] * 9 + [1]
    assert (yield cache.smembers("missing")) == set()
    yield cache.set("text", "v")
    for wrong in (cache.sadd("text", "m"), cache.hgetall("text"), cache.get("s")):
        with pytest.raises(CacheError):
            yield wrong
    assert (yield cache.expire("s", 600)) is True
    assert (yield cache.persist("s")) is True
    assert (yield cache.persist("s")) is False  # no ttl left to clear
    assert (yield cache.persist("missing")) is False


@pytest_twisted.inlineCallbacks
def test_cache_ttls_expire(cache: Any) -> None:
    """Keys set with a ttl, or given one by expire, are gone once it passes (in seconds:
    one with a long ttl and one with none are kept)."""
    yield cache.set("short", "v", ttl=0.2)
    yield cache.set("long", "v", ttl=600)
    yield cache.set("kept", "v")
    yield cache.set("later", "v")
    assert (yield cache.expire("later", 0.2)) is True
    assert (yield cache.expire("missing", 0.2)) is False

    @defer.inlineCallbacks
    def both_gone() -> Any:
        got = yield defer.gatherResults([cache.get("short"), cache.get("later")])
        return got == [None, None]

    yield until(both_gone, what="the keys with a 0.2 s ttl gone")
    assert (yield cache.get("long")) == "v"
    assert (yield cache.get("kept")) == "v"


@pytest_twisted.inlineCallbacks
def test_only_one_taker_wins(cache: Any) -> None:
    """Of many concurrent takes of one key, exactly one gets the value."""
    yield cache.set("handoff", "state")
    got = yield defer.gatherResults([cache.take("handoff") for _ in range(20)])
    assert got.count("state") == 1 and got.count(None) == 19


@pytest_twisted.inlineCallbacks
def test_a_dead_redis_fails_at_once() -> None:
    """Nothing listening: operations fail with CacheUnavailable naming the server and saying
    it is not connected, not at their (5 s) deadline."""
    port = free_port()
    cache = make_cache(f"redis://127.0.0.1:{port}/0?timeout=5")
    cache.startService()
    try:
        with pytest.raises(CacheUnavailable, match=f"127.0.0.1:{port} is not connected"):
            yield cache.get("k")
        with pytest.raises(CacheUnavailable, match="is not connected"):
            yield cache.set("k", "v")
    finally:
        yield cache.stopService()


@pytest_twisted.inlineCallbacks
def test_sharded_redis_spreads_keys_consistently(tmp_path: Path) -> None:
    """redis-shards:// spreads keys over both servers; another client finds each key."""
    shards = [ThrowawayRedis(tmp_path / f"s{i}").start() for i in range(2)]
    url = "redis-shards://" + ",".join(f"127.0.0.1:{s.port}" for s in shards) + "/0"
    first, second = make_cache(url), make_cache(url)
    try:
        for c in (first, second):
            c.startService()
            assert (yield c.wait_connected(5))
        for i in range(40):
            yield first.set(f"key-{i}", str(i))
        counts = [redis_command("127.0.0.1", s.port, "DBSIZE") for s in shards]
        assert sum(counts) == 40 and min(counts) >= 5
        got = yield defer.gatherResults([second.get(f"key-{i}") for i in range(40)])
        assert got == [str(i) for i in range(40)]
        # A {tag} keeps related keys on one shard.
        for i in range(10):
            yield first.set(f"{{player-7}}:part-{i}", "x")
        on = [redis_command("127.0.0.1", s.port, "KEYS", "{player-7}*") for s in shards]
        assert sorted(len(keys) for keys in on) == [0, 10]
    finally:
        for c in (first, second):
            yield c.stopService()
        for s in shards:
            s.stop()


@pytest_twisted.inlineCallbacks
def test_sentinel_discovers_the_master(tmp_path: Path) -> None:
    """sentinel://HOST:PORT/NAME asks the Sentinel for the master and talks to it."""
    master = ThrowawayRedis(tmp_path / "master").start()
    sentinel = ThrowawaySentinel(tmp_path / "sentinel", master.port).start()
    cache = make_cache(sentinel.url)
    try:
        cache.startService()
        assert (yield cache.wait_connected(10))
        yield cache.set("k", "through-sentinel")
        assert redis_command("127.0.0.1", master.port, "GET", "k") == "through-sentinel"
    finally:
        yield cache.stopService()
        sentinel.stop()
        master.stop(signal.SIGTERM)
