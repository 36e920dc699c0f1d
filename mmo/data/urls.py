"""URLs choose the implementation: :func:`make_database` and :func:`make_cache`.

Databases:
    ``sqlite:///relative/path.db``, ``sqlite:////absolute/path.db``, ``sqlite://:memory:``
    (query: ``timeout``, ``busy_timeout``);
    ``postgresql://user@host:port/dbname?...`` (query: ``min_size``, ``max_size``,
    ``timeout``, ``connect_timeout``; any other parameter goes to libpq, e.g.
    ``options=-csearch_path%3Dmyschema``).

Caches:
    ``memory://``; ``redis://[:password@]host:port[/db]``;
    ``redis-shards://h1:p1,h2:p2[/db]``; ``sentinel://h1:p1[,h2:p2]/mastername``;
    ``twemproxy://[:password@]host:port`` (a Twemproxy/nutcracker front: database 0)
    (query, for all: ``prefix``, ``timeout``; Redis ones also ``poolsize``, ``db``
    for Sentinel).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from mmo.config import ConfigError

if TYPE_CHECKING:
    from mmo.data.memory import MemoryCache
    from mmo.data.postgres import PostgresDatabase
    from mmo.data.rediscache import RedisCache
    from mmo.data.sqlite import SQLiteDatabase

__all__ = [
    "CacheSpec",
    "DatabaseSpec",
    "make_cache",
    "make_database",
    "parse_cache_url",
    "parse_database_url",
]

DATABASE_HELP = "use sqlite:///PATH.db, sqlite://:memory: or postgresql://USER@HOST:PORT/DB"
CACHE_HELP = (
    "use memory://, redis://HOST:PORT/DB, redis-shards://H1:P1,H2:P2/DB, "
    "sentinel://H1:P1,H2:P2/MASTER or twemproxy://HOST:PORT"
)


@dataclass(frozen=True)
class DatabaseSpec:
    """A parsed database URL.

    Attributes:
        kind: ``"sqlite"`` or ``"postgresql"``.
        target: the SQLite path (or ``:memory:``), or the libpq URI without mmo's parameters.
        options: mmo's parameters (``timeout``, ``min_size``...), typed.
    """

    kind: str
    target: str
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class CacheSpec:
    """A parsed cache URL.

    Attributes:
        kind: ``"memory"``, ``"redis"``, ``"redis-shards"``, ``"sentinel"`` or
            ``"twemproxy"``.
        servers: ``(host, port)`` of the servers (or of the Sentinels, or the proxy).
        master: the Sentinel master's name.
        db: the Redis database number.
        password: the Redis password, if the URL has one.
        options: ``prefix``, ``timeout``, ``poolsize``.
    """

    kind: str
    servers: tuple[tuple[str, int], ...] = ()
    master: str | None = None
    db: int = 0
    password: str | None = None
    options: dict[str, Any] = field(default_factory=dict)


def _number(key: str, name: str, raw: str, kind: type) -> Any:
    try:
        value = kind(raw)
    except ValueError:
        raise ConfigError(key, f"{name} must be a number, got {raw!r}") from None
    if value <= 0 and name != "min_size":
        raise ConfigError(key, f"{name} must be positive, got {raw!r}")
    if value < 0:
        raise ConfigError(key, f"{name} must not be negative, got {raw!r}")
    return value


def _take_options(
    key: str, query: str, known: dict[str, type], passthrough: bool
) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    options: dict[str, Any] = {}
    rest: list[tuple[str, str]] = []
    for name, raw in parse_qsl(query, keep_blank_values=True):
        if name in known:
            kind = known[name]
            options[name] = raw if kind is str else _number(key, name, raw, kind)
        elif passthrough:
            rest.append((name, raw))
        else:
            allowed = ", ".join(sorted(known))
            raise ConfigError(key, f"unknown parameter {name!r} (known: {allowed})")
    return options, rest


def parse_database_url(url: str, key: str = "database") -> DatabaseSpec:
    """Check a database URL and split it into its parts.

    Raises:
        ConfigError: the scheme is unknown or a parameter is malformed (``key`` names it).
    """
    if not isinstance(url, str) or "://" not in url:
        raise ConfigError(key, f"not a database URL: {url!r}; {DATABASE_HELP}")
    scheme, _, rest = url.partition("://")
    if scheme == "sqlite":
        path, _, query = rest.partition("?")
        options, _ = _take_options(
            key, query, {"timeout": float, "busy_timeout": float}, passthrough=False
        )
        if path == ":memory:":
            return DatabaseSpec("sqlite", ":memory:", options)
        if not path.startswith("/") or path == "/":
            raise ConfigError(key, f"no file in {url!r}; {DATABASE_HELP}")
        return DatabaseSpec("sqlite", unquote(path[1:]), options)
    if scheme in ("postgresql", "postgres"):
        parts = urlsplit(url)
        known = {"min_size": int, "max_size": int, "timeout": float, "connect_timeout": float}
        options, rest_query = _take_options(key, parts.query, known, passthrough=True)
        if options.get("min_size", 1) > options.get("max_size", 10):
            raise ConfigError(key, "min_size must not exceed max_size")
        try:
            _ = parts.port
        except ValueError as e:
            raise ConfigError(key, f"bad port in {url!r}: {e}") from None
        target = urlunsplit(("postgresql", parts.netloc, parts.path, urlencode(rest_query), ""))
        return DatabaseSpec("postgresql", target, options)
    raise ConfigError(key, f"unknown database scheme {scheme!r}; {DATABASE_HELP}")


def _addresses(key: str, hosts: str) -> tuple[tuple[str, int], ...]:
    found = []
    for item in hosts.split(","):
        host, sep, port = item.strip().rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(key, f"expected HOST:PORT, got {item.strip()!r}")
        found.append((host, int(port)))
    return tuple(found)


def parse_cache_url(url: str, key: str = "cache") -> CacheSpec:
    """Check a cache URL and split it into its parts.

    Raises:
        ConfigError: the scheme is unknown or a part is malformed (``key`` names it).
    """
    if not isinstance(url, str) or "://" not in url:
        raise ConfigError(key, f"not a cache URL: {url!r}; {CACHE_HELP}")
    scheme, _, rest = url.partition("://")
    rest, _, query = rest.partition("?")
    known: dict[str, type] = {"prefix": str, "timeout": float}
    if scheme == "memory":
        options, _ = _take_options(key, query, known, passthrough=False)
        if rest.strip("/"):
            raise ConfigError(key, f"memory:// takes no address, got {url!r}")
        return CacheSpec("memory", options=options)
    if scheme not in ("redis", "redis-shards", "sentinel", "twemproxy"):
        raise ConfigError(key, f"unknown cache scheme {scheme!r}; {CACHE_HELP}")
    known["poolsize"] = int
    if scheme == "sentinel":
        known["db"] = int
    options, _ = _take_options(key, query, known, passthrough=False)
    hosts, _, path = rest.partition("/")
    password = None
    if "@" in hosts:
        credentials, _, hosts = hosts.rpartition("@")
        password = unquote(credentials.partition(":")[2]) or None
    servers = _addresses(key, hosts)
    path = path.strip("/")
    if scheme == "sentinel":
        if not path:
            raise ConfigError(key, f"no master name in {url!r}: sentinel://HOST:PORT/MASTER")
        db = options.pop("db", 0)
        return CacheSpec("sentinel", servers, path, db, password, options)
    if scheme == "redis" and len(servers) != 1:
        raise ConfigError(key, "redis:// takes one server; use redis-shards:// for several")
    if scheme == "twemproxy":
        if len(servers) != 1:
            raise ConfigError(key, "twemproxy:// takes one proxy address (it shards itself)")
        if path not in ("", "0"):
            raise ConfigError(
                key, f"Twemproxy serves database 0 only (it refuses SELECT), got /{path}"
            )
    if path and not path.isdigit():
        raise ConfigError(key, f"the Redis database must be a number, got {path!r}")
    return CacheSpec(scheme, servers, None, int(path or 0), password, options)


def make_database(url: str, *, reactor: Any = None) -> SQLiteDatabase | PostgresDatabase:
    """The (not yet started) database service for ``url``.

    Raises:
        ConfigError: a bad URL.
    """
    spec = parse_database_url(url)
    if spec.kind == "sqlite":
        from mmo.data.sqlite import SQLiteDatabase

        return SQLiteDatabase(spec.target, reactor=reactor, **spec.options)
    from mmo.data.postgres import PostgresDatabase

    return PostgresDatabase(spec.target, reactor=reactor, **spec.options)


def make_cache(url: str, *, clock: Any = None) -> MemoryCache | RedisCache:
    """The (not yet started) cache service for ``url``.

    Raises:
        ConfigError: a bad URL.
    """
    spec = parse_cache_url(url)
    if spec.kind == "memory":
        from mmo.data.memory import MemoryCache

        return MemoryCache(clock, prefix=spec.options.get("prefix", ""))
    from mmo.data.rediscache import RedisCache

    common = dict(spec.options)
    if spec.kind == "sentinel":
        return RedisCache(
            sentinels=list(spec.servers),
            master=spec.master,
            db=spec.db,
            password=spec.password,
            **common,
        )
    return RedisCache(
        list(spec.servers),
        db=spec.db,
        password=spec.password,
        twemproxy=spec.kind == "twemproxy",
        **common,
    )
