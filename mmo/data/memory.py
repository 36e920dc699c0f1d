"""``MemoryCache``: the in-process cache of one machine, with TTLs on an injectable clock."""

from __future__ import annotations

import builtins
from collections.abc import Mapping
from typing import Any, TypeAlias

from twisted.application.service import Service
from twisted.internet import defer

from mmo.data.errors import CacheError, CacheUnavailable
from mmo.types import Clock

__all__ = ["MemoryCache"]

_KIND_NAMES: dict[type, str] = {str: "string", dict: "hash", set: "set"}


#: What a key holds: a string, a hash (field -> string) or a set of strings.
Value: TypeAlias = str | dict[str, str] | set[str]


def _check_ttl(ttl: float | None) -> None:
    if ttl is not None and not ttl > 0:
        raise CacheError(f"a ttl must be a positive number of seconds, got {ttl!r}")


class MemoryCache(Service):
    """A dict with expiry times behind the :class:`mmo.data.Cache` interface.

    Every operation completes at once (the Deferreds it returns have fired), so
    it also serves as the cache of unit tests. It is private to its process
    (``shared`` is False): other processes do not see its entries.

    Args:
        clock: what time is measured on (default: the reactor; ``task.Clock`` in tests).
        prefix: prepended to every key (as for Redis; for symmetry only).
    """

    shared = False
    timeout = 0.0

    def __init__(self, clock: Clock | None = None, prefix: str = "") -> None:
        if clock is None:
            from twisted.internet import reactor

            clock = reactor
        assert clock is not None
        self.clock: Clock = clock
        self.prefix = prefix
        self._data: dict[str, tuple[Value, float | None]] = {}
        self._swept_at_size = 64

    @classmethod
    def started(cls, clock: Clock | None = None) -> MemoryCache:
        """A running one: what a service that keeps its state in the cache uses when its
        worker was given none (the embedded default, for one instance)."""
        cache = cls(clock)
        cache.startService()
        return cache

    def __repr__(self) -> str:
        return f"<MemoryCache {len(self._data)} keys>"

    def __len__(self) -> int:
        """How many keys are held (expired ones included until swept)."""
        return len(self._data)

    def live_keys(self) -> list[str]:
        """The keys held and not expired, without the prefix, sorted (to look inside)."""
        now = self.clock.seconds()
        n = len(self.prefix)
        return sorted(k[n:] for k, (_, exp) in self._data.items() if exp is None or exp > now)

    # -- the Cache interface -------------------------------------------------------

    def get(self, key: str) -> defer.Deferred[str | None]:
        """The value of ``key``, or None."""
        return self._do(self._get, key)

    def set(self, key: str, value: str, ttl: float | None = None) -> defer.Deferred[None]:
        """Store ``value`` (a string) under ``key``; a set without ttl clears the old one."""
        return self._do(self._set, key, value, ttl)

    def add(self, key: str, value: str, ttl: float | None = None) -> defer.Deferred[bool]:
        """Store ``value`` only if ``key`` is absent; whether it was stored."""
        return self._do(self._add, key, value, ttl)

    def delete(self, key: str) -> defer.Deferred[bool]:
        """Remove ``key``; whether it existed."""
        return self._do(self._delete, key)

    def take(self, key: str) -> defer.Deferred[str | None]:
        """Get and remove ``key`` in one step."""
        return self._do(self._pop, key)

    def incr(self, key: str, amount: int = 1) -> defer.Deferred[int]:
        """Add ``amount`` to the integer under ``key`` (keeping its ttl); the new value."""
        return self._do(self._incr, key, amount)

    def expire(self, key: str, ttl: float) -> defer.Deferred[bool]:
        """Make ``key`` expire after ``ttl`` seconds; whether it exists."""
        return self._do(self._expire, key, ttl)

    def persist(self, key: str) -> defer.Deferred[bool]:
        """Make ``key`` never expire; whether it had a ttl."""
        return self._do(self._persist, key)

    def hset(self, key: str, fields: Mapping[str, str]) -> defer.Deferred[int]:
        """Set fields of the hash under ``key``; how many of them are new."""
        return self._do(self._hset, key, fields)

    def hget(self, key: str, field: str) -> defer.Deferred[str | None]:
        """One field of the hash under ``key``, or None."""
        return self._do(lambda k, f: self._held(k, dict).get(f), key, field)

    def hgetall(self, key: str) -> defer.Deferred[dict[str, str]]:
        """Every field of the hash under ``key`` (empty if absent)."""
        return self._do(lambda k: dict(self._held(k, dict)), key)

    def hdel(self, key: str, *fields: str) -> defer.Deferred[int]:
        """Remove fields of the hash under ``key``; how many there were."""
        return self._do(self._remove, key, dict, fields)

    def sadd(self, key: str, *members: str) -> defer.Deferred[int]:
        """Add members to the set under ``key``; how many were not in it."""
        return self._do(self._sadd, key, members)

    def srem(self, key: str, *members: str) -> defer.Deferred[int]:
        """Remove members from the set under ``key``; how many were in it."""
        return self._do(self._remove, key, set, members)

    def smembers(self, key: str) -> defer.Deferred[builtins.set[str]]:
        """The members of the set under ``key`` (empty if absent)."""
        return self._do(lambda k: set(self._held(k, set)), key)

    # -- internals -------------------------------------------------------------------

    def _do(self, fn: Any, *args: Any) -> defer.Deferred[Any]:
        if not self.running:
            return defer.fail(CacheUnavailable("the memory cache is not running"))
        try:
            return defer.succeed(fn(*args))
        except CacheError as e:
            return defer.fail(e)

    def _live(self, key: str) -> tuple[Value, float | None] | None:
        entry = self._data.get(self.prefix + key)
        if entry is None:
            return None
        expires = entry[1]
        if expires is not None and expires <= self.clock.seconds():
            del self._data[self.prefix + key]
            return None
        return entry

    def _held(self, key: str, kind: type) -> Any:
        """What ``key`` holds if it is a ``kind`` (an empty one if absent)."""
        entry = self._live(key)
        if entry is None:
            return kind()
        if not isinstance(entry[0], kind):
            raise CacheError(f"{key!r} does not hold a {_KIND_NAMES[kind]}")
        return entry[0]

    def _get(self, key: str) -> str | None:
        entry = self._live(key)
        return None if entry is None else self._held(key, str)

    def _set(self, key: str, value: str, ttl: float | None) -> None:
        if not isinstance(value, str):
            raise CacheError(f"cache values are strings, got {type(value).__name__}")
        _check_ttl(ttl)
        expires = None if ttl is None else self.clock.seconds() + ttl
        self._data[self.prefix + key] = (value, expires)
        if len(self._data) >= 2 * self._swept_at_size:
            self._sweep()

    def _add(self, key: str, value: str, ttl: float | None) -> bool:
        if self._live(key) is not None:
            return False
        self._set(key, value, ttl)
        return True

    def _pop(self, key: str) -> str | None:
        value = self._get(key)
        if value is not None:
            del self._data[self.prefix + key]
        return value

    def _delete(self, key: str) -> bool:
        if self._live(key) is None:
            return False
        del self._data[self.prefix + key]
        return True

    def _store(self, key: str, kind: type, change: Any) -> int:
        """Apply ``change`` to what ``key`` holds (a ``kind``, made if absent, keeping its
        ttl; dropped once empty); its result."""
        entry = self._live(key)
        held = self._held(key, kind)
        result = change(held)
        if held:
            self._data[self.prefix + key] = (held, None if entry is None else entry[1])
        else:
            self._data.pop(self.prefix + key, None)
        return int(result)

    def _hset(self, key: str, fields: Mapping[str, str]) -> int:
        if not fields or not all(isinstance(v, str) for v in fields.values()):
            raise CacheError("hset needs at least one field, every value a string")

        def change(held: dict[str, str]) -> int:
            new = len(fields.keys() - held.keys())
            held.update(fields)
            return new

        return self._store(key, dict, change)

    def _sadd(self, key: str, members: tuple[str, ...]) -> int:
        if not members or not all(isinstance(m, str) for m in members):
            raise CacheError("sadd needs at least one member, each a string")

        def change(held: set[str]) -> int:
            new = len(set(members) - held)
            held.update(members)
            return new

        return self._store(key, set, change)

    def _remove(self, key: str, kind: type, names: tuple[str, ...]) -> int:
        def change(held: Any) -> int:
            present = held.keys() & set(names) if kind is dict else held & set(names)
            if kind is dict:
                for name in present:
                    del held[name]
            else:
                held -= present
            return len(present)

        return self._store(key, kind, change)

    def _incr(self, key: str, amount: int) -> int:
        if isinstance(amount, bool) or not isinstance(amount, int):
            raise CacheError(f"incr needs an integer amount, got {amount!r}")
        entry = self._live(key)
        value, expires = entry if entry is not None else ("0", None)
        if not isinstance(value, str):
            raise CacheError(f"{key!r} does not hold a string")
        try:
            number = int(value) + amount
        except ValueError:
            raise CacheError(f"the value of {key!r} is not an integer") from None
        self._data[self.prefix + key] = (str(number), expires)
        return number

    def _expire(self, key: str, ttl: float) -> bool:
        _check_ttl(ttl)
        entry = self._live(key)
        if entry is None:
            return False
        self._data[self.prefix + key] = (entry[0], self.clock.seconds() + ttl)
        return True

    def _persist(self, key: str) -> bool:
        entry = self._live(key)
        if entry is None or entry[1] is None:
            return False
        self._data[self.prefix + key] = (entry[0], None)
        return True

    def _sweep(self) -> None:
        """Drop expired entries (amortised: when the dict has doubled since the last sweep)."""
        now = self.clock.seconds()
        self._data = {k: (v, exp) for k, (v, exp) in self._data.items() if exp is None or exp > now}
        self._swept_at_size = max(64, len(self._data))
