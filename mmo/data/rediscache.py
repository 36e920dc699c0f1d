"""``RedisCache``: Redis through txredisapi — one server, several shards, a Sentinel master,
or a Twemproxy (``nutcracker``) front of pre-sharded servers.

Each server gets a lazily connected txredisapi pool that reconnects by itself
(backing off from 0.2 s to 2 s). An operation on a server with no live
connection fails at once with ``CacheUnavailable``; one whose answer does not
come within the deadline fails with ``CacheUnavailable`` too (and its
connection is reset). Keys are spread over shards by consistent hashing
(CRC32 of ``host:port`` points on a ring; a ``{tag}`` in a key hashes only the tag),
the same in every process given the same servers.

Through Twemproxy (``twemproxy=True``) the proxy does the sharding, so this
client sends every key to the one proxy address and keeps to commands it
proxies: no SELECT (database 0 only), AUTH only when the proxy has a
``redis_auth``, ``take`` as a one-key EVAL (GETDEL is unknown to nutcracker
0.4 and older), and an error the proxy makes up for a backend it cannot reach
(``ERR Connection refused``) is ``CacheUnavailable``, not ``CacheError``.
"""

from __future__ import annotations

import bisect
import builtins
import errno
import os
import zlib
from collections.abc import Mapping
from typing import Any

import txredisapi
from twisted.application.service import Service
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from typing_extensions import override

from mmo.data.errors import CacheError, CacheUnavailable

__all__ = ["RedisCache"]

log = Logger()

Address = tuple[str, int]

#: ``take`` through Twemproxy: GET and DEL of KEYS[1] in one step (a missing key: nil).
_TAKE_SCRIPT = (
    "local v = redis.call('GET', KEYS[1]) if v then redis.call('DEL', KEYS[1]) end return v"
)

#: What nutcracker answers, as ``ERR <strerror>``, for a backend it cannot reach or that did
#: not answer within its ``timeout`` (Redis itself never answers with a bare errno text).
_PROXY_ERRORS = frozenset(os.strerror(n) for n in errno.errorcode)

#: Redis errors that say "not now" rather than "never": a replica left behind by a fail-over
#: (READONLY), a server loading its data (LOADING), a replica without its master (MASTERDOWN).
_TRANSIENT_ERRORS = ("READONLY", "LOADING", "MASTERDOWN")


def _ms(ttl: float) -> int:
    if not ttl > 0:
        raise CacheError(f"a ttl must be a positive number of seconds, got {ttl!r}")
    return max(1, round(ttl * 1000))


@defer.inlineCallbacks
def _handshake(protocol: Any, ready: Any) -> Any:
    """AUTH and SELECT, then ``ready()`` (the base connectionMade without them).

    txredisapi stops reconnecting for good when either fails, even because the
    connection dropped (a server restarting); here a failure only drops this
    connection, and the pool retries with its backoff.
    """
    password, dbid = protocol.password, protocol.dbid
    try:
        if password is not None:
            reply = yield protocol.auth(password, protocol.username)
            if isinstance(reply, Exception):
                raise reply
        if dbid is not None and dbid != 0:
            reply = yield protocol.select(dbid)
            if isinstance(reply, Exception):
                raise reply
    except Exception as e:
        log.warn("redis: connection setup failed, retrying: {e}", e=e)
        protocol.transport.loseConnection()
        return None
    protocol.password, protocol.dbid = None, None
    result = yield ready()
    return result


class _Protocol(txredisapi.RedisProtocol):
    """txredisapi's protocol with a handshake that survives a server restart."""

    def connectionMade(self) -> Any:
        return _handshake(self, lambda: txredisapi.RedisProtocol.connectionMade(self))


class _SentinelProtocol(txredisapi.SentinelRedisProtocol):
    """The same for a Sentinel-discovered master (which checks its role first)."""

    def connectionMade(self) -> Any:
        def check_role(role: Any) -> Any:
            if self.factory.is_master and role[0] != "master":
                self.transport.loseConnection()
                return None
            return _handshake(self, lambda: txredisapi.RedisProtocol.connectionMade(self))

        return self.role().addCallback(check_role)


class _SentinelFactory(txredisapi.SentinelConnectionFactory):
    protocol = _SentinelProtocol


class _Node:
    """One Redis server (or the Sentinel-discovered master) and its connection pool."""

    def __init__(self, name: str, handler: Any) -> None:
        self.name = name
        self.handler = handler
        factory = handler._factory
        if not isinstance(factory, _SentinelFactory):
            # Set before the first connection is made (that takes a reactor turn).
            factory.protocol = _Protocol
        # txredisapi's defaults wait up to 10 s between attempts; a cache should come back fast.
        factory.initialDelay = 0.2
        factory.maxDelay = 2.0
        factory.factor = 2.0

    def connected(self) -> bool:
        return bool(self.handler._factory.size)

    def disconnect(self) -> defer.Deferred[Any]:
        return defer.maybeDeferred(self.handler.disconnect)


class _Ring:
    """Consistent hashing of keys over nodes: 160 points per node, by CRC32 of its name."""

    def __init__(self, nodes: list[_Node], points: int = 160) -> None:
        ring = sorted(
            (zlib.crc32(f"{node.name}#{i}".encode()), n)
            for n, node in enumerate(nodes)
            for i in range(points)
        )
        self._hashes = [h for h, _ in ring]
        self._nodes = [nodes[n] for _, n in ring]

    def __call__(self, key: str) -> _Node:
        i = bisect.bisect(self._hashes, zlib.crc32(key.encode()))
        return self._nodes[i % len(self._nodes)]


class RedisCache(Service):
    """Redis behind the :class:`mmo.data.Cache` interface.

    Args:
        servers: ``(host, port)`` of each server; several are shards. Ignored with
            ``sentinels``. With ``twemproxy``, the one proxy.
        sentinels: ``(host, port)`` of Sentinels to ask for the master of ``master``.
        master: the Sentinel service name.
        db: the Redis database number.
        password: the Redis password, if any.
        prefix: prepended to every key (several games or tests may share a server).
        timeout: deadline of an operation, in seconds.
        poolsize: connections per server.
        twemproxy: ``servers`` is one Twemproxy (nutcracker) front: send only what it
            proxies (``db`` must be 0).
    """

    shared = True

    def __init__(
        self,
        servers: list[Address] | None = None,
        *,
        sentinels: list[Address] | None = None,
        master: str | None = None,
        db: int = 0,
        password: str | None = None,
        prefix: str = "",
        timeout: float = 2.0,
        poolsize: int = 4,
        twemproxy: bool = False,
    ) -> None:
        if twemproxy and (sentinels or len(servers or []) != 1 or db != 0):
            raise ValueError("a Twemproxy front is one address, with database 0 and no Sentinel")
        if sentinels and not master:
            raise ValueError("a Sentinel setup needs the master's name")
        if not sentinels and not servers:
            raise ValueError("at least one Redis server is needed")
        self.servers = list(servers or [])
        self.sentinels = list(sentinels or [])
        self.master = master
        self.db = db
        self.password = password
        self.prefix = prefix
        self.timeout = timeout
        self.poolsize = poolsize
        self.twemproxy = twemproxy
        self._nodes: list[_Node] = []
        self._ring: _Ring | None = None
        self._sentinel: Any = None

    def __repr__(self) -> str:
        return f"<RedisCache {self.describe()}>"

    def describe(self) -> str:
        """Where the data is, for messages (never the password)."""
        if self.sentinels:
            hosts = ",".join(f"{h}:{p}" for h, p in self.sentinels)
            return f"sentinel://{hosts}/{self.master}"
        if self.twemproxy:
            host, port = self.servers[0]
            return f"twemproxy://{host}:{port}"
        return ",".join(f"{h}:{p}" for h, p in self.servers) + f"/{self.db}"

    # -- lifecycle -------------------------------------------------------------

    @override
    def startService(self) -> None:
        """Start connecting (in the background; operations fail until connected)."""
        super().startService()
        options = {
            "password": self.password,
            "replyTimeout": self.timeout,
            "convertNumbers": False,
        }
        if self.sentinels:
            self._sentinel = txredisapi.Sentinel(
                self.sentinels, connectTimeout=self.timeout, replyTimeout=self.timeout
            )
            self._sentinel.discovery_timeout = self.timeout
            handler = self._sentinel.master_for(
                self.master,
                factory_class=_SentinelFactory,
                dbid=self.db,
                poolsize=self.poolsize,
                **options,
            )
            self._nodes = [_Node(self.describe(), handler)]
        else:
            self._nodes = [
                _Node(
                    self.describe() if self.twemproxy else f"{host}:{port}",
                    txredisapi.lazyConnectionPool(
                        host,
                        port,
                        dbid=self.db,
                        poolsize=self.poolsize,
                        connectTimeout=self.timeout,
                        **options,
                    ),
                )
                for host, port in self.servers
            ]
        self._ring = _Ring(self._nodes) if len(self._nodes) > 1 else None

    @override
    @defer.inlineCallbacks
    def stopService(self) -> Any:
        """Close every connection."""
        super().stopService()
        nodes, self._nodes = self._nodes, []
        for node in nodes:
            try:
                yield node.disconnect()
            except Exception as e:
                log.debug("redis: disconnect {node}: {e}", node=node.name, e=e)
        if self._sentinel is not None:
            try:
                yield self._sentinel.disconnect()
            except Exception as e:
                log.debug("redis: disconnect sentinels: {e}", e=e)
            self._sentinel = None

    def reachable(self) -> tuple[bool, str]:
        """Whether every server has a connection (a readiness check)."""
        down = [n.name for n in self._nodes if not n.connected()]
        if self._nodes and not down:
            return True, f"{len(self._nodes)} Redis servers connected"
        return False, f"not connected: {', '.join(down) or 'no server yet'}"

    def wait_connected(self, timeout: float) -> defer.Deferred[bool]:
        """Fire with True once every server has a connection, or False after ``timeout``."""
        from twisted.internet import reactor, task

        deadline = reactor.seconds() + timeout

        @defer.inlineCallbacks
        def poll() -> Any:
            while not (self._nodes and all(n.connected() for n in self._nodes)):
                if reactor.seconds() >= deadline:
                    return False
                yield task.deferLater(reactor, 0.05, lambda: None)
            return True

        return poll()

    # -- the Cache interface -----------------------------------------------------

    def get(self, key: str) -> defer.Deferred[str | None]:
        """The value of ``key``, or None."""
        return self._command(key, "GET")

    def set(self, key: str, value: str, ttl: float | None = None) -> defer.Deferred[None]:
        """Store ``value`` under ``key`` (``SET``, with ``PX`` for a ttl)."""
        if not isinstance(value, str):
            return defer.fail(CacheError(f"cache values are strings, got {type(value).__name__}"))
        try:
            extra = () if ttl is None else ("PX", _ms(ttl))
        except CacheError as e:
            return defer.fail(e)
        return self._command(key, "SET", value, *extra).addCallback(lambda _: None)

    def add(self, key: str, value: str, ttl: float | None = None) -> defer.Deferred[bool]:
        """``SET NX``: store only if absent; whether it was stored."""
        if not isinstance(value, str):
            return defer.fail(CacheError(f"cache values are strings, got {type(value).__name__}"))
        try:
            extra = () if ttl is None else ("PX", _ms(ttl))
        except CacheError as e:
            return defer.fail(e)
        d = self._command(key, "SET", value, "NX", *extra)
        return d.addCallback(lambda reply: reply is not None)

    def delete(self, key: str) -> defer.Deferred[bool]:
        """``DEL``; whether the key existed."""
        return self._command(key, "DEL").addCallback(lambda n: int(n) > 0)

    def take(self, key: str) -> defer.Deferred[str | None]:
        """``GETDEL`` (Redis >= 6.2): get and remove in one step.

        Through Twemproxy, a Lua script doing GET then DEL on the one key instead
        (as atomic: Redis runs a script alone), which nutcracker proxies to the key's
        server whatever its version (GETDEL only from 0.5.0).
        """
        if self.twemproxy:
            return self._command(key, "EVAL", lead=(_TAKE_SCRIPT, 1))
        return self._command(key, "GETDEL")

    def incr(self, key: str, amount: int = 1) -> defer.Deferred[int]:
        """``INCRBY``; the new value."""
        if isinstance(amount, bool) or not isinstance(amount, int):
            return defer.fail(CacheError(f"incr needs an integer amount, got {amount!r}"))
        return self._command(key, "INCRBY", amount).addCallback(int)

    def expire(self, key: str, ttl: float) -> defer.Deferred[bool]:
        """``PEXPIRE``; whether the key exists."""
        try:
            ms = _ms(ttl)
        except CacheError as e:
            return defer.fail(e)
        return self._command(key, "PEXPIRE", ms).addCallback(lambda n: int(n) == 1)

    def persist(self, key: str) -> defer.Deferred[bool]:
        """``PERSIST``; whether the key had a ttl."""
        return self._command(key, "PERSIST").addCallback(lambda n: int(n) == 1)

    def hset(self, key: str, fields: Mapping[str, str]) -> defer.Deferred[int]:
        """``HSET``; how many fields are new."""
        if not fields or not all(isinstance(v, str) for v in fields.values()):
            return defer.fail(CacheError("hset needs at least one field, every value a string"))
        pairs = [x for item in fields.items() for x in item]
        return self._command(key, "HSET", *pairs).addCallback(int)

    def hget(self, key: str, field: str) -> defer.Deferred[str | None]:
        """``HGET``."""
        return self._command(key, "HGET", field)

    def hgetall(self, key: str) -> defer.Deferred[dict[str, str]]:
        """``HGETALL``, as a dict."""
        return self._command(key, "HGETALL").addCallback(
            lambda r: dict(zip(r[::2], r[1::2], strict=True))
        )

    def hdel(self, key: str, *fields: str) -> defer.Deferred[int]:
        """``HDEL``; how many fields there were."""
        if not fields:
            return defer.succeed(0)
        return self._command(key, "HDEL", *fields).addCallback(int)

    def sadd(self, key: str, *members: str) -> defer.Deferred[int]:
        """``SADD``; how many members are new."""
        if not members or not all(isinstance(m, str) for m in members):
            return defer.fail(CacheError("sadd needs at least one member, each a string"))
        return self._command(key, "SADD", *members).addCallback(int)

    def srem(self, key: str, *members: str) -> defer.Deferred[int]:
        """``SREM``; how many members there were."""
        if not members:
            return defer.succeed(0)
        return self._command(key, "SREM", *members).addCallback(int)

    def smembers(self, key: str) -> defer.Deferred[builtins.set[str]]:
        """``SMEMBERS``."""
        return self._command(key, "SMEMBERS").addCallback(builtins.set)

    # -- internals ---------------------------------------------------------------

    def _node(self, key: str) -> _Node:
        if self._ring is None:
            return self._nodes[0]
        tag_start = key.find("{")
        tag_end = key.find("}", tag_start + 1)
        hashed = key[tag_start + 1 : tag_end] if 0 <= tag_start < tag_end - 1 else key
        return self._ring(hashed)

    def _command(
        self, key: str, command: str, *args: Any, lead: tuple[Any, ...] = ()
    ) -> defer.Deferred[Any]:
        """Send ``command *lead key *args`` to the key's server, with the deadline."""
        if not isinstance(key, str) or not key:
            return defer.fail(CacheError(f"cache keys are non-empty strings, got {key!r}"))
        if not self.running or not self._nodes:
            return defer.fail(CacheUnavailable(f"the cache {self.describe()} is not running"))
        node = self._node(key)
        if not node.connected():
            return defer.fail(CacheUnavailable(f"Redis {node.name} is not connected (retrying)"))
        from twisted.internet import reactor

        result: defer.Deferred[Any] = defer.Deferred()
        try:
            sent = node.handler.execute_command(command, *lead, self.prefix + key, *args)
        except Exception as e:
            return defer.fail(self._translate(Failure(e), node, command, self.twemproxy))

        def expire() -> None:
            if not result.called:
                late = f"Redis {node.name} did not answer {command} within {self.timeout}s"
                result.errback(CacheUnavailable(late))

        timer = reactor.callLater(self.timeout, expire)

        def finish(outcome: Any) -> None:
            if timer.active():
                timer.cancel()
            if result.called:
                return
            if isinstance(outcome, Failure):
                result.errback(self._translate(outcome, node, command, self.twemproxy))
            else:
                result.callback(outcome)

        sent.addBoth(finish)
        return result

    @staticmethod
    def _translate(failure: Failure, node: _Node, command: str, proxy: bool = False) -> Failure:
        e = failure.value
        if isinstance(e, CacheError):
            return failure
        if isinstance(e, txredisapi.ResponseError):
            text = str(e)
            if text.startswith(_TRANSIENT_ERRORS) or (
                proxy and text.removeprefix("ERR ") in _PROXY_ERRORS
            ):
                return Failure(CacheUnavailable(f"Redis {node.name}: {command}: {text}"))
            return Failure(CacheError(f"Redis {node.name}: {command}: {e}"))
        if isinstance(e, txredisapi.ConnectionError | ConnectionError):
            return Failure(CacheUnavailable(f"Redis {node.name}: {command}: {e}"))
        return Failure(CacheUnavailable(f"Redis {node.name}: {command}: {type(e).__name__}: {e}"))
