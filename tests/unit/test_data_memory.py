"""MemoryCache: the Cache interface in-process, with TTLs on an injected clock."""

from __future__ import annotations

import pytest
from twisted.internet import task

from mmo.data import CacheError, CacheUnavailable, MemoryCache
from mmo.testing import result_of as value


@pytest.fixture
def clock() -> task.Clock:
    """A fake clock."""
    return task.Clock()


@pytest.fixture
def cache(clock: task.Clock) -> MemoryCache:
    """A started MemoryCache on the fake clock."""
    c = MemoryCache(clock)
    c.startService()
    return c


def test_set_get_delete(cache: MemoryCache) -> None:
    """A value set is got back until deleted; delete says whether it existed."""
    assert value(cache.get("k")) is None
    value(cache.set("k", "v"))
    assert value(cache.get("k")) == "v"
    assert value(cache.delete("k")) is True
    assert value(cache.delete("k")) is False
    assert value(cache.get("k")) is None


def test_ttl_expires_on_the_clock(cache: MemoryCache, clock: task.Clock) -> None:
    """A key with a ttl is there until the clock passes it, then gone."""
    value(cache.set("k", "v", ttl=2.0))
    clock.advance(1.9)
    assert value(cache.get("k")) == "v"
    clock.advance(0.1)
    assert value(cache.get("k")) is None


def test_set_without_ttl_clears_the_old_ttl(cache: MemoryCache, clock: task.Clock) -> None:
    """As in Redis, SET without a ttl makes the key persistent again."""
    value(cache.set("k", "v", ttl=1.0))
    value(cache.set("k", "w"))
    clock.advance(10)
    assert value(cache.get("k")) == "w"


def test_expire_sets_a_ttl_on_an_existing_key(cache: MemoryCache, clock: task.Clock) -> None:
    """expire gives a key a ttl and says whether the key exists."""
    value(cache.set("k", "v"))
    assert value(cache.expire("k", 1.0)) is True
    assert value(cache.expire("missing", 1.0)) is False
    clock.advance(1.0)
    assert value(cache.get("k")) is None


def test_add_stores_only_when_absent(cache: MemoryCache, clock: task.Clock) -> None:
    """add is SET NX: the first wins; after expiry the key can be added again."""
    assert value(cache.add("lock", "a", ttl=1.0)) is True
    assert value(cache.add("lock", "b", ttl=1.0)) is False
    assert value(cache.get("lock")) == "a"
    clock.advance(1.0)
    assert value(cache.add("lock", "c")) is True


def test_take_gets_and_removes_once(cache: MemoryCache) -> None:
    """take returns the value once; a second take finds nothing."""
    value(cache.set("handoff", "state"))
    assert value(cache.take("handoff")) == "state"
    assert value(cache.take("handoff")) is None


def test_incr_counts_from_zero_and_keeps_the_ttl(cache: MemoryCache, clock: task.Clock) -> None:
    """incr starts a missing key at 0, adds the amount, and keeps the key's ttl."""
    assert value(cache.incr("n")) == 1
    assert value(cache.incr("n", 5)) == 6
    assert value(cache.incr("n", -2)) == 4
    value(cache.expire("n", 1.0))
    assert value(cache.incr("n")) == 5
    clock.advance(1.0)
    assert value(cache.get("n")) is None


def test_incr_of_text_and_bad_values_are_cache_errors(cache: MemoryCache) -> None:
    """incr of a non-integer, a non-integer amount, a non-string value or ttl<=0 fail clearly."""
    value(cache.set("t", "text"))
    with pytest.raises(CacheError, match="not an integer"):
        value(cache.incr("t"))
    with pytest.raises(CacheError, match="integer amount"):
        value(cache.incr("n", 1.5))  # type: ignore[arg-type]
    with pytest.raises(CacheError, match="strings"):
        value(cache.set("k", 42))  # type: ignore[arg-type]
    with pytest.raises(CacheError, match="ttl"):
        value(cache.set("k", "v", ttl=0))


def test_expired_entries_are_swept_as_the_cache_grows(
    cache: MemoryCache, clock: task.Clock
) -> None:
    """Keys that expire and are never read again do not pile up forever."""
    for i in range(200):
        value(cache.set(f"old-{i}", "x", ttl=1.0))
    clock.advance(2.0)
    for i in range(200):
        value(cache.set(f"new-{i}", "x"))
    assert len(cache) < 300


def test_a_stopped_cache_is_unavailable(cache: MemoryCache) -> None:
    """Operations on a stopped cache fail with CacheUnavailable."""
    cache.stopService()
    with pytest.raises(CacheUnavailable):
        value(cache.get("k"))


def test_memory_cache_is_not_shared_and_prefixes_keys(clock: task.Clock) -> None:
    """shared is False (no cross-process hand-off); a prefix separates namespaces."""
    c = MemoryCache(clock, prefix="game1:")
    c.startService()
    value(c.set("k", "v"))
    assert c.shared is False
    assert list(c._data) == ["game1:k"]


def test_hashes_and_sets_keep_their_ttl_and_expire(cache: MemoryCache, clock: task.Clock) -> None:
    """A hash or set changed after expire keeps its ttl and is gone (empty) once it passes."""
    value(cache.hset("h", {"a": "1"}))
    value(cache.sadd("s", "m"))
    assert value(cache.expire("h", 5.0)) and value(cache.expire("s", 5.0))
    value(cache.hset("h", {"b": "2"}))
    value(cache.sadd("s", "n"))
    clock.advance(4.9)
    assert value(cache.hgetall("h")) == {"a": "1", "b": "2"}
    assert value(cache.smembers("s")) == {"m", "n"}
    clock.advance(0.2)
    assert value(cache.hgetall("h")) == {}
    assert value(cache.smembers("s")) == set()
    with pytest.raises(CacheError):
        value(cache.hset("h", {}))
