"""The interfaces of the data layer: :class:`Database`, :class:`Cursor` and :class:`Cache`.

Every implementation is also a Twisted ``Service``: ``startService`` opens it,
``stopService`` closes it (and returns a Deferred that fires once it is closed).
Every operation returns a Deferred and has a deadline; none waits forever.

SQL uses psycopg's ``%s`` placeholders everywhere (``%%`` for a literal ``%``
when parameters are given); the SQLite implementation translates them.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, TypeAlias

from twisted.internet import defer

__all__ = ["Cache", "Cursor", "Database", "Params", "Row"]

#: One row of a result: a tuple of column values.
Row: TypeAlias = tuple[Any, ...]
#: The parameters of a statement, matching its ``%s`` placeholders in order.
Params: TypeAlias = Sequence[Any] | None


class Cursor(Protocol):
    """What ``run_interaction``'s function gets: an asynchronous cursor in one transaction.

    Example::

        @defer.inlineCallbacks
        def transfer(cursor, src, dst, amount):
            yield cursor.execute("UPDATE wallets SET coins = coins - %s WHERE id = %s",
                                 (amount, src))
            yield cursor.execute("SELECT coins FROM wallets WHERE id = %s", (src,))
            if cursor.fetchone()[0] < 0:
                raise ValueError("not enough coins")  # rolls the transaction back
            ...
    """

    def execute(self, sql: str, params: Params = None) -> defer.Deferred[Any]:
        """Run one statement; fires (with the cursor) once it has run."""
        ...

    def fetchall(self) -> list[Row]:
        """The rows of the last statement (empty for one that returns none)."""
        ...

    def fetchone(self) -> Row | None:
        """The next row of the last statement, or None."""
        ...

    @property
    def rowcount(self) -> int:
        """Rows the last statement changed or returned (-1 when not known)."""
        ...


class Database(Protocol):
    """A SQL database: PostgreSQL (:class:`~mmo.data.postgres.PostgresDatabase`) or SQLite
    (:class:`~mmo.data.sqlite.SQLiteDatabase`).

    Attributes:
        dialect: ``"postgresql"`` or ``"sqlite"`` (for the rare statement that differs).
        timeout: the default deadline of an operation, in seconds.
    """

    dialect: str
    timeout: float

    def run_query(
        self, sql: str, params: Params = None, *, timeout: float | None = None
    ) -> defer.Deferred[list[Row]]:
        """Run one statement in its own transaction; fire with its rows.

        Raises (through the Deferred):
            DatabaseError: the statement failed (``IntegrityError`` for a constraint).
            DatabaseUnavailable: the database cannot be reached (``DatabaseTimeout``
                when the deadline passed).
        """
        ...

    def run_operation(
        self, sql: str, params: Params = None, *, timeout: float | None = None
    ) -> defer.Deferred[None]:
        """Like :meth:`run_query` for a statement whose rows are not wanted."""
        ...

    def run_interaction(
        self, fn: Callable[..., Any], *args: Any, timeout: float | None = None, **kwargs: Any
    ) -> defer.Deferred[Any]:
        """Run ``fn(cursor, *args, **kwargs)`` in one transaction; fire with its result.

        ``fn`` may return a Deferred (``inlineCallbacks`` is the usual way). The
        transaction commits when it succeeds and rolls back when it raises. Do not
        call other services from ``fn``: the transaction holds a connection meanwhile.
        """
        ...


class Cache(Protocol):
    """A key-value cache with TTLs: Redis (:class:`~mmo.data.redis.RedisCache`) or in-process
    (:class:`~mmo.data.memory.MemoryCache`).

    Keys and values are strings (JSON is the usual value). TTLs are in seconds. Besides
    plain values a key may hold a hash (field -> string: ``hset``...) or a set of strings
    (``sadd``...): each operation changes one key atomically, so processes sharing the
    cache can update one record's fields, or a set's members, without losing each other's
    changes, and the one whose ``hdel``/``srem`` removed a member knows it was the one.
    An operation on a key of the other kind fails with ``CacheError``.

    Attributes:
        shared: whether other processes see the same entries (False for the in-process
            cache: a hand-off between processes cannot go through it).
        timeout: the deadline of an operation, in seconds.
    """

    shared: bool
    timeout: float

    def get(self, key: str) -> defer.Deferred[str | None]:
        """The value of ``key``, or None."""
        ...

    def set(self, key: str, value: str, ttl: float | None = None) -> defer.Deferred[None]:
        """Store ``value`` under ``key``, expiring after ``ttl`` seconds (never when None)."""
        ...

    def add(self, key: str, value: str, ttl: float | None = None) -> defer.Deferred[bool]:
        """Store ``value`` only if ``key`` is absent; whether it was stored."""
        ...

    def delete(self, key: str) -> defer.Deferred[bool]:
        """Remove ``key``; whether it existed."""
        ...

    def take(self, key: str) -> defer.Deferred[str | None]:
        """Atomically get and remove ``key`` (None if absent): exactly one taker wins."""
        ...

    def incr(self, key: str, amount: int = 1) -> defer.Deferred[int]:
        """Add ``amount`` to the integer under ``key`` (0 if absent); the new value."""
        ...

    def expire(self, key: str, ttl: float) -> defer.Deferred[bool]:
        """Make ``key`` expire after ``ttl`` seconds; whether the key exists."""
        ...

    def persist(self, key: str) -> defer.Deferred[bool]:
        """Make ``key`` never expire; whether it had a ttl."""
        ...

    def hset(self, key: str, fields: Mapping[str, str]) -> defer.Deferred[int]:
        """Set fields of the hash under ``key``; how many of them are new."""
        ...

    def hget(self, key: str, field: str) -> defer.Deferred[str | None]:
        """One field of the hash under ``key``, or None."""
        ...

    def hgetall(self, key: str) -> defer.Deferred[dict[str, str]]:
        """Every field of the hash under ``key`` (empty if absent)."""
        ...

    def hdel(self, key: str, *fields: str) -> defer.Deferred[int]:
        """Remove fields of the hash under ``key``; how many there were."""
        ...

    def sadd(self, key: str, *members: str) -> defer.Deferred[int]:
        """Add members to the set under ``key``; how many were not in it."""
        ...

    def srem(self, key: str, *members: str) -> defer.Deferred[int]:
        """Remove members from the set under ``key``; how many were in it."""
        ...

    def smembers(self, key: str) -> defer.Deferred[builtins.set[str]]:
        """The members of the set under ``key`` (empty if absent)."""
        ...
