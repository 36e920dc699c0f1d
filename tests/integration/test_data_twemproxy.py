"""The cache through Twemproxy (nutcracker) in front of two Redis servers, all started here:
every Cache operation, keys spread over both servers with a ``{tag}`` keeping keys together,
one taker of a hand-off, a server down and back, a Sentinel fail-over behind the proxy, and
the map hand-off between real worker processes given ``--cache twemproxy://...``."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer

from mmo.data import CacheError, CacheUnavailable, make_cache
from mmo.sessions import SessionService
from mmo.testing import call, handler_factory
from mmo.testing.data import (
    ThrowawayRedis,
    ThrowawayTwemproxy,
    postgres_schema,
    redis_command,
    sentinel_layout,
)

from .conftest import until, wait_instances

pytestmark = pytest.mark.timeout(120)

PLAYER = "mmo.examples.player:PlayerService"
MAP = "mmo.examples.maps:MapService"


@dataclass
class Layout:
    """Two Redis servers behind one nutcracker."""

    backends: list[ThrowawayRedis]
    proxy: ThrowawayTwemproxy

    def holder(self, key: str) -> int:
        """The index of the backend that holds ``key`` (asked directly, not through the proxy)."""
        found = [
            i
            for i, b in enumerate(self.backends)
            if redis_command("127.0.0.1", b.port, "EXISTS", key)
        ]
        assert len(found) == 1, f"{key!r} is on backends {found}"
        return found[0]

    def keys(self, index: int) -> set[str]:
        """Every key on backend ``index``."""
        return set(redis_command("127.0.0.1", self.backends[index].port, "KEYS", "*"))

    def command_calls(self, command: str) -> int:
        """How many times the backends together ran ``command`` (INFO commandstats)."""
        total = 0
        for b in self.backends:
            stats = redis_command("127.0.0.1", b.port, "INFO", "commandstats")
            for line in stats.splitlines():
                if line.startswith(f"cmdstat_{command}:"):
                    total += int(line.split("calls=", 1)[1].split(",", 1)[0])
        return total


@pytest.fixture
def layout(tmp_path: Path) -> Iterator[Layout]:
    """Two throwaway Redis servers and a throwaway nutcracker in front of them."""
    backends = [ThrowawayRedis(tmp_path / f"redis-{i}").start() for i in range(2)]
    proxy = None
    try:
        proxy = ThrowawayTwemproxy(
            tmp_path / "proxy", [("127.0.0.1", b.port) for b in backends]
        ).start()
        yield Layout(backends, proxy)
    finally:
        if proxy is not None:
            proxy.stop()
        for b in backends:
            b.stop()


@pytest.fixture
def caches(layout: Layout) -> Iterator[list[Any]]:
    """Two started caches on the proxy's URL (two clients, as two processes would be)."""
    made = [make_cache(layout.proxy.url) for _ in range(2)]
    for c in made:
        c.startService()
        assert pytest_twisted.blockon(c.wait_connected(10))
    yield made
    for c in made:
        pytest_twisted.blockon(defer.maybeDeferred(c.stopService))


@pytest_twisted.inlineCallbacks
def test_every_cache_operation_through_twemproxy(layout: Layout, caches: list[Any]) -> None:
    """get/set/add/delete/take/incr/expire/persist, hashes and sets, ttls and errors behave
    through nutcracker as on one Redis, and each value lands on a backend as Redis data."""
    cache, other = caches
    assert (yield cache.get("k")) is None
    yield cache.set("k", "v")
    assert (yield other.get("k")) == "v"
    yield cache.set("t", "v", ttl=600)
    ttl_ms = redis_command("127.0.0.1", layout.backends[layout.holder("t")].port, "PTTL", "t")
    assert 0 < ttl_ms <= 600_000  # SET ... PX went through
    assert (yield cache.persist("t")) is True
    assert (yield cache.persist("t")) is False
    assert (yield cache.expire("t", 600)) is True
    assert (yield cache.expire("missing", 600)) is False
    assert (yield cache.add("k", "other")) is False  # SET NX
    assert (yield cache.add("k2", "new", ttl=600)) is True  # SET NX PX
    assert (yield other.take("k2")) == "new"
    assert (yield cache.take("k2")) is None
    assert (yield cache.delete("k")) is True
    assert (yield cache.delete("k")) is False
    yield cache.set("n", "123")
    assert (yield cache.incr("n", 2)) == 125
    assert (yield cache.incr("fresh")) == 1
    assert (yield cache.hset("h", {"a": "1", "b": "2"})) == 2  # multi-field HSET
    assert (yield cache.hset("h", {"b": "3", "c": "4"})) == 1
    assert (yield other.hget("h", "b")) == "3"
    assert (yield cache.hget("h", "nope")) is None
    assert (yield cache.hgetall("h")) == {"a": "1", "b": "3", "c": "4"}
    assert (yield cache.hgetall("missing")) == {}
    assert (yield cache.hdel("h", "a", "nope")) == 1
    assert (yield cache.hdel("h")) == 0
    assert (yield cache.sadd("s", "x", "y")) == 2
    assert (yield cache.sadd("s", "y", "z")) == 1
    assert (yield other.smembers("s")) == {"x", "y", "z"}
    assert (yield cache.smembers("missing")) == set()
    removed = yield defer.gatherResults([c.srem("s", "x") for c in caches for _ in range(5)])
    assert sorted(removed) == [0] * 9 + [1]  # of concurrent removals, one claim
    yield cache.set("text", "x")
    for wrong in (cache.incr("text"), cache.sadd("text", "m"), cache.hgetall("s"), cache.take("h")):
        with pytest.raises(CacheError) as caught:
            yield wrong
        assert not isinstance(caught.value, CacheUnavailable)
    yield cache.set("short", "v", ttl=0.2)
    yield until(lambda: cache.get("short").addCallback(lambda v: v is None), what="expiry")
    assert layout.command_calls("getdel") == 0  # take went as EVAL, which every nutcracker knows
    assert layout.command_calls("eval") == 3


@pytest_twisted.inlineCallbacks
def test_keys_spread_over_both_servers_and_a_tag_keeps_them_together(
    layout: Layout, caches: list[Any]
) -> None:
    """Nutcracker spreads keys over both backends, the other client finds each one, and
    every key with the same {tag} (strings, hashes, sets) is on one backend."""
    cache, other = caches
    yield defer.gatherResults([cache.set(f"key-{i}", str(i)) for i in range(40)])
    counts = [len(layout.keys(i)) for i in range(2)]
    assert sum(counts) == 40 and min(counts) >= 5, counts
    got = yield defer.gatherResults([other.get(f"key-{i}") for i in range(40)])
    assert got == [str(i) for i in range(40)]
    tagged = [f"{{player-7}}:part-{i}" for i in range(10)]
    yield defer.gatherResults([cache.set(k, "x") for k in tagged])
    yield cache.hset("{player-7}:record", {"hp": "10"})
    yield cache.sadd("{player-7}:friends", "ron")
    together = {*tagged, "{player-7}:record", "{player-7}:friends"}
    assert sorted(len(together & layout.keys(i)) for i in range(2)) == [0, len(together)]


@pytest_twisted.inlineCallbacks
def test_only_one_taker_wins_through_twemproxy(layout: Layout, caches: list[Any]) -> None:
    """Of twenty concurrent takes of a key by two clients, exactly one gets the value, for
    keys on either backend."""
    keys = yield _set_all(caches[0], [f"handoff:p{i}" for i in range(8)])
    assert {layout.holder(k) for k in keys} == {0, 1}
    for key in keys:
        got = yield defer.gatherResults([c.take(key) for c in caches for _ in range(10)])
        assert got.count("state") == 1 and got.count(None) == 19, (key, got)


@defer.inlineCallbacks
def _set_all(cache: Any, keys: list[str]) -> Any:
    yield defer.gatherResults([cache.set(k, "state") for k in keys])
    return keys


@pytest_twisted.inlineCallbacks
def test_a_down_backend_makes_its_keys_unavailable_until_it_is_back(
    layout: Layout, caches: list[Any], tmp_path: Path
) -> None:
    """With one backend stopped, its keys fail with CacheUnavailable (nutcracker's
    'Connection refused', not a CacheError) and never move to the other; the other's keys
    still work; once it is back on its port, the same client works again."""
    cache = caches[0]
    keys = yield _set_all(cache, [f"k{i}" for i in range(20)])
    where = {k: layout.holder(k) for k in keys}
    down = layout.backends[1]
    down.stop()
    for key in keys:
        if where[key] == 1:
            with pytest.raises(CacheUnavailable, match="Connection refused"):
                yield cache.set(key, "moved?")
        else:
            assert (yield cache.get(key)) == "state"
    assert layout.keys(0) == {k for k in keys if where[k] == 0}  # nothing moved
    layout.backends[1] = ThrowawayRedis(tmp_path / "redis-1b", port=down.port).start()

    @defer.inlineCallbacks
    def works() -> Any:
        try:
            yield cache.set("after", "ok")
        except CacheUnavailable:
            return False
        return True

    yield until(works, what="the backend reachable again through the proxy")
    yield _set_all(cache, keys)
    assert {k: layout.holder(k) for k in keys} == where


@pytest_twisted.inlineCallbacks
def test_a_demoted_master_behind_the_proxy_refuses_writes_as_unavailable(tmp_path: Path) -> None:
    """A proxy still pointing at a server that is now a replica (an old master back after a
    fail-over the proxy was not told of): reads work, writes fail with CacheUnavailable
    (READONLY), not CacheError."""
    master = ThrowawayRedis(tmp_path / "m").start()
    replica = ThrowawayRedis(tmp_path / "r", replica_of=master.port).start()
    proxy = ThrowawayTwemproxy(tmp_path / "proxy", [("127.0.0.1", replica.port)])
    cache = make_cache(proxy.url)
    try:
        redis_command("127.0.0.1", master.port, "SET", "k", "v")
        yield until(
            lambda: redis_command("127.0.0.1", replica.port, "GET", "k") == "v",
            what="the replica caught up",
        )
        proxy.start()
        cache.startService()
        assert (yield cache.wait_connected(10))
        assert (yield cache.get("k")) == "v"
        for write in (cache.set("k", "w"), cache.take("k"), cache.hset("h", {"a": "1"})):
            with pytest.raises(CacheUnavailable, match="READONLY"):
                yield write
    finally:
        yield cache.stopService()
        proxy.stop()
        replica.stop()
        master.stop()


@pytest_twisted.inlineCallbacks
def test_a_password_is_checked_by_nutcracker(tmp_path: Path) -> None:
    """With redis_auth, twemproxy://:PASSWORD@HOST:PORT works for keys on either backend
    (nutcracker answers AUTH and authenticates to the servers); without it every operation
    is refused with a CacheError, not retried as if the cache were down."""
    backends = [ThrowawayRedis(tmp_path / f"r{i}", password="s3cret").start() for i in range(2)]
    proxy = ThrowawayTwemproxy(
        tmp_path / "proxy", [("127.0.0.1", b.port) for b in backends], password="s3cret"
    )
    caches = [make_cache(proxy.url), make_cache(proxy.url.replace(":s3cret@", ""))]
    try:
        proxy.start()
        for c in caches:
            c.startService()
            assert (yield c.wait_connected(10))
        good, anonymous = caches
        keys = yield _set_all(good, [f"k{i}" for i in range(20)])
        assert (yield defer.gatherResults([good.take(k) for k in keys])) == ["state"] * 20
        assert (yield good.hset("h", {"a": "1"})) == 1
        with pytest.raises(CacheError, match="NOAUTH") as caught:
            yield anonymous.get("h")
        assert not isinstance(caught.value, CacheUnavailable)
    finally:
        for c in caches:
            yield c.stopService()
        proxy.stop()
        for b in backends:
            b.stop()


@pytest_twisted.inlineCallbacks
def test_a_sentinel_fail_over_behind_twemproxy(tmp_path: Path) -> None:
    """Seed layout: nutcracker in front of masters watched by Sentinel. When a master dies,
    its keys are CacheUnavailable; Sentinel promotes the replica; once the proxy's config
    names the new master (what a fail-over agent does, here the test), the same client finds
    the replicated keys on the same shard name and writes again, without a restart."""
    master, replica, sentinel = sentinel_layout(tmp_path, "shard0")
    other = ThrowawayRedis(tmp_path / "m1").start()
    proxy = ThrowawayTwemproxy(
        tmp_path / "proxy",
        [("127.0.0.1", master.port), ("127.0.0.1", other.port)],
        names=["shard0", "shard1"],
    )
    cache = make_cache(proxy.url)
    try:
        proxy.start()
        cache.startService()
        assert (yield cache.wait_connected(10))
        keys = yield _set_all(cache, [f"k{i}" for i in range(20)])
        on_master = {k for k in keys if redis_command("127.0.0.1", master.port, "EXISTS", k)}
        assert on_master and on_master != set(keys)
        yield until(
            lambda: redis_command("127.0.0.1", replica.port, "DBSIZE") == len(on_master),
            what="the replica caught up",
        )
        master.stop()
        with pytest.raises(CacheUnavailable):
            yield cache.get(sorted(on_master)[0])
        promoted = ("127.0.0.1", replica.port)
        yield until(lambda: sentinel.master() == promoted, what="Sentinel promoting the replica")
        proxy.reconfigure([promoted, ("127.0.0.1", other.port)])

        @defer.inlineCallbacks
        def reads() -> Any:
            try:
                got = yield defer.gatherResults([cache.get(k) for k in keys], consumeErrors=True)
            except defer.FirstError:
                return False
            return got == ["state"] * len(keys)

        yield until(reads, what="every key readable through the reconfigured proxy")
        yield cache.set(sorted(on_master)[0], "after")
        assert redis_command("127.0.0.1", replica.port, "GET", sorted(on_master)[0]) == "after"
    finally:
        yield cache.stopService()
        proxy.stop()
        sentinel.stop()
        for server in (master, replica, other):
            server.stop()


@pytest.fixture
def database_url() -> Iterator[str]:
    """A private schema on the shared PostgreSQL (dropped after the workers are stopped)."""
    with postgres_schema() as url:
        yield url


@pytest_twisted.inlineCallbacks
def test_map_hand_off_between_workers_through_twemproxy(
    database_url: str,
    layout: Layout,
    cluster: Any,
    mmo_processes: Any,
    directory_factory: Any,
) -> None:
    """Map workers given --cache twemproxy://...: players hop between them ten times through
    cache hand-offs (taken through nutcracker as EVAL on the backends), keeping every coin."""
    cluster.yellow()
    backend = ["--database", database_url, "--cache", layout.proxy.url]
    table = ("--set", "maps=forest=map-a,cave=map-b")
    for name, handler, extra in (
        ("player-1", PLAYER, ()),
        ("map-a", MAP, table),
        ("map-b", MAP, table),
    ):
        args = ["--handler", handler, "--instance-id", name, *backend, *extra]
        for address in cluster.yellows:
            args += ["--yellow", address]
        mmo_processes.start("mmo-worker", *args, name=name)
    directory = directory_factory(cluster.yellows)
    yield wait_instances(directory, "map", {"map-a", "map-b"})
    yield wait_instances(directory, "player", {"player-1"})
    maps = directory.get_service("map")
    owner = {"forest": "map-a", "cave": "map-b"}
    other = {"forest": "cave", "cave": "forest"}

    @defer.inlineCallbacks
    def journey(player_id: str) -> Any:
        where = "forest"
        yield maps.call("enter", {"player_id": player_id, "map_id": where}, instance="map-a")
        for _ in range(10):
            yield maps.call("move", {"player_id": player_id, "coins": 1}, instance=owner[where])
            moved = yield maps.call(
                "transfer",
                {"player_id": player_id, "to_map": other[where]},
                instance=owner[where],
            )
            where = other[where]
            assert moved == {"map": where, "instance": owner[where], "via": "cache"}
        return where

    players = [f"hero-{i}" for i in range(4)]
    assert set((yield defer.gatherResults([journey(p) for p in players]))) == {"forest"}
    for player_id in players:
        seen = yield defer.gatherResults(
            [maps.call("where", {"player_id": player_id}, instance=i) for i in owner.values()]
        )
        assert [s["here"] for s in seen] == [True, False]
        state = yield maps.call("leave", {"player_id": player_id}, instance="map-a")
        assert (state["coins"], state["moves"]) == (10, 10)
    # 40 hand-offs were taken (plus the enters' look-ups), through the proxy as EVAL.
    assert layout.command_calls("eval") >= 40
    assert layout.command_calls("getdel") == 0


@pytest_twisted.inlineCallbacks
def test_session_records_through_twemproxy(caches: list[Any]) -> None:
    """Two session services, each with its own client of the proxy (as two processes):
    a session opened on one is tracked, taken offline and resumed through the other, and
    ended once."""
    one, two = (
        handler_factory(SessionService, cache=cache, instance_id=f"session-{i}")
        for i, cache in enumerate(caches, 1)
    )
    broker = {"caller": "b1", "caller_role": "broker"}
    opened = yield call(one, "open", user_id="alice", **broker)
    sid = opened["session_id"]
    yield call(two, "track", session_id=sid, joined=["room:a"], bound={"map": "map-1"}, **broker)
    yield call(one, "closed", session_id=sid, **broker)
    resumed = yield call(
        two, "resume", session_id=sid, token=opened["token"], caller="b2", caller_role="broker"
    )
    assert (resumed["channels"], resumed["bindings"]) == (["room:a"], {"map": "map-1"})
    assert (yield call(one, "get", session_id=sid))["broker"] == "b2"
    assert (yield call(two, "logout", session_id=sid, caller="b2", caller_role="broker")) is True
    assert (yield call(one, "logout", session_id=sid, caller="b2", caller_role="broker")) is False
    assert (yield call(one, "find", user_id="alice")) == []
