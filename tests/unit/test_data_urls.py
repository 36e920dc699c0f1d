"""Data URLs choose and configure implementations; workers take --database and --cache."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet import task
from twisted.python import usage

from mmo.config import ConfigError, build
from mmo.data import (
    MemoryCache,
    PostgresDatabase,
    RedisCache,
    SQLiteDatabase,
    make_cache,
    make_database,
    parse_cache_url,
    parse_database_url,
)
from mmo.worker.config import WorkerConfig
from mmo.worker.tap import Options

YELLOW = "tcp://127.0.0.1:5555"


@pytest.mark.parametrize(
    ("url", "target"),
    [
        ("sqlite:///data/mmo.db", "data/mmo.db"),
        ("sqlite:////var/lib/mmo/mmo.db", "/var/lib/mmo/mmo.db"),
        ("sqlite://:memory:", ":memory:"),
    ],
)
def test_sqlite_urls(url: str, target: str) -> None:
    """Three slashes: a relative path; four: an absolute one; :memory: a private database."""
    spec = parse_database_url(url)
    assert (spec.kind, spec.target) == ("sqlite", target)
    db = make_database(url)
    assert isinstance(db, SQLiteDatabase) and db.path == target


def test_postgres_url_keeps_libpq_parameters_and_takes_mmo_ones() -> None:
    """min_size, max_size, timeout, connect_timeout are mmo's; the rest goes to libpq."""
    url = (
        "postgresql://mmo@127.0.0.1:5432/game?min_size=2&max_size=8&timeout=3"
        "&options=-csearch_path%3Dx&application_name=w"
    )
    spec = parse_database_url(url)
    assert spec.options == {"min_size": 2, "max_size": 8, "timeout": 3.0}
    assert spec.target == (
        "postgresql://mmo@127.0.0.1:5432/game?options=-csearch_path%3Dx&application_name=w"
    )
    db = make_database(url)
    assert isinstance(db, PostgresDatabase)
    assert (db.min_size, db.max_size, db.timeout) == (2, 8, 3.0)
    assert db.url == "postgresql://127.0.0.1:5432/game"
    assert isinstance(make_database("postgres://127.0.0.1/x"), PostgresDatabase)


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("mysql://127.0.0.1/x", "unknown database scheme"),
        ("data.db", "not a database URL"),
        ("sqlite://", "no file"),
        ("sqlite:///", "no file"),
        ("sqlite:///x.db?pool=3", "unknown parameter 'pool'"),
        ("sqlite:///x.db?timeout=soon", "timeout must be a number"),
        ("postgresql://h/x?max_size=0", "max_size must be positive"),
        ("postgresql://h/x?min_size=5&max_size=2", "min_size must not exceed"),
        ("postgresql://h:port/x", "bad port"),
    ],
)
def test_bad_database_urls_are_config_errors(url: str, match: str) -> None:
    """Each bad database URL names the key and what is wrong."""
    with pytest.raises(ConfigError, match=match) as caught:
        parse_database_url(url)
    assert caught.value.key == "database"


def test_cache_urls() -> None:
    """memory://, redis://, redis-shards:// and sentinel:// each build their cache."""
    assert isinstance(make_cache("memory://", clock=task.Clock()), MemoryCache)
    single = make_cache("redis://:s3cret@127.0.0.1:6380/2?prefix=g1:&timeout=0.5")
    assert isinstance(single, RedisCache)
    assert (single.servers, single.db, single.password) == ([("127.0.0.1", 6380)], 2, "s3cret")
    assert (single.prefix, single.timeout) == ("g1:", 0.5)
    assert "s3cret" not in repr(single)
    shards = make_cache("redis-shards://127.0.0.1:7001,127.0.0.1:7002/0?poolsize=2")
    assert isinstance(shards, RedisCache)
    assert shards.servers == [("127.0.0.1", 7001), ("127.0.0.1", 7002)]
    assert shards.poolsize == 2
    sentinel = make_cache("sentinel://127.0.0.1:26379,127.0.0.1:26380/mymaster?db=3")
    assert isinstance(sentinel, RedisCache)
    assert sentinel.sentinels == [("127.0.0.1", 26379), ("127.0.0.1", 26380)]
    assert (sentinel.master, sentinel.db) == ("mymaster", 3)
    spec = parse_cache_url("redis://127.0.0.1:6379")
    assert (spec.kind, spec.db) == ("redis", 0)


def test_twemproxy_url() -> None:
    """twemproxy:// is one proxy address on database 0, with a password for redis_auth."""
    proxy = make_cache("twemproxy://:s3cret@127.0.0.1:22121?prefix=g1:&poolsize=2&timeout=1")
    assert isinstance(proxy, RedisCache)
    assert (proxy.servers, proxy.db, proxy.password) == ([("127.0.0.1", 22121)], 0, "s3cret")
    assert (proxy.twemproxy, proxy.prefix, proxy.poolsize, proxy.timeout) == (True, "g1:", 2, 1.0)
    assert repr(proxy) == "<RedisCache twemproxy://127.0.0.1:22121>"
    assert parse_cache_url("twemproxy://127.0.0.1:22121/0").kind == "twemproxy"
    assert make_cache("redis://127.0.0.1:6379").twemproxy is False


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("memcached://127.0.0.1:11211", "unknown cache scheme"),
        ("redis://127.0.0.1", "expected HOST:PORT"),
        ("redis://127.0.0.1:6379,127.0.0.1:6380/0", "redis-shards"),
        ("redis://127.0.0.1:6379/zero", "must be a number"),
        ("redis://127.0.0.1:99999/0", "expected HOST:PORT"),
        ("sentinel://127.0.0.1:26379", "no master name"),
        ("memory://somewhere", "takes no address"),
        ("memory://?size=3", "unknown parameter"),
        ("twemproxy://127.0.0.1:22121/1", "database 0 only"),
        ("twemproxy://127.0.0.1:22121,127.0.0.1:22122", "one proxy address"),
        ("twemproxy://127.0.0.1:22121?db=0", "unknown parameter 'db'"),
        ("twemproxy://127.0.0.1", "expected HOST:PORT"),
    ],
)
def test_bad_cache_urls_are_config_errors(url: str, match: str) -> None:
    """Each bad cache URL names the key and what is wrong."""
    with pytest.raises(ConfigError, match=match) as caught:
        parse_cache_url(url)
    assert caught.value.key == "cache"


def test_worker_config_takes_database_and_cache() -> None:
    """[worker] database and cache are checked URLs; no cache: memory beside SQLite, else none."""
    base: dict[str, Any] = {"yellow": [YELLOW], "handler": "m:C"}
    assert build(WorkerConfig, base).cache_url() is None
    sqlite = build(WorkerConfig, {**base, "database": "sqlite:///data/mmo.db"})
    assert sqlite.cache_url() == "memory://"
    pg = build(WorkerConfig, {**base, "database": "postgresql://127.0.0.1/x"})
    assert pg.cache_url() is None
    both = build(WorkerConfig, {**base, "database": "sqlite://:memory:", "cache": "redis://h:1"})
    assert both.cache_url() == "redis://h:1"
    with pytest.raises(ConfigError, match="database"):
        build(WorkerConfig, {**base, "database": "nope"})
    with pytest.raises(ConfigError, match="cache"):
        build(WorkerConfig, {**base, "cache": "nope://"})


def test_worker_options_database_and_cache(tmp_path: Any) -> None:
    """--database and --cache override the file; a bad URL is a UsageError naming the key."""
    config = tmp_path / "w.toml"
    config.write_text(
        '[worker]\nyellow = ["tcp://127.0.0.1:5555"]\n'
        'handler = "mmo.examples.echo:EchoService"\ndatabase = "sqlite:///a.db"\n'
    )
    options = Options()
    options.parseOptions(["--config", str(config), "--cache", "redis://127.0.0.1:6379/1"])
    assert options.config.database == "sqlite:///a.db"
    assert options.config.cache == "redis://127.0.0.1:6379/1"
    with pytest.raises(usage.UsageError, match="database: unknown database scheme"):
        Options().parseOptions(["--config", str(config), "--database", "oracle://x"])
