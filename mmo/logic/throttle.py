"""Abuse limits for handlers: count events per key in fixed windows, refuse at the limit.

A :class:`Throttle` counts, say, failed logins per address: each key has a count
per window of ``window`` seconds (windows are aligned on the clock, so every
instance of a service sharing the cache agrees on them); once a key has
``limit`` events in the current window it is *blocked* until the window ends,
and then starts afresh. Counts live in the handler's cache (Redis, so that all
instances share them; the in-process cache on one machine), or, without one, in
a private in-process cache.

Example (what :class:`mmo.examples.sso.SSOService` does)::

    self.failures = Throttle(self.cache, self.clock, "login-address", limit=30, window=300)
    wait = yield self.failures.blocked(ctx.peer)
    if wait:
        raise LoginThrottled(f"too many failed logins; try again in {wait:.0f} s")
    ...
    yield self.failures.record(ctx.peer)  # one more failure
"""

from __future__ import annotations

import math

from twisted.internet import defer

from mmo.data import Cache
from mmo.data.memory import MemoryCache
from mmo.types import Clock, InlineCallbacks

__all__ = ["Throttle"]


class Throttle:
    """At most ``limit`` events per key per window of ``window`` seconds.

    Args:
        cache: where counts live (None: a private in-process cache).
        clock: the clock windows are measured on (the reactor's wall clock).
        name: names the counts in the cache (``throttle:<name>:<key>:<window>``).
        limit: events per window a key may have before it is blocked.
        window: the window's length in seconds.
    """

    def __init__(
        self, cache: Cache | None, clock: Clock, name: str, *, limit: int, window: float
    ) -> None:
        if cache is None:
            private = MemoryCache(clock)
            private.startService()
            cache = private
        self.cache = cache
        self.clock = clock
        self.name = name
        self.limit = limit
        self.window = window

    def _slot(self, key: str) -> tuple[str, float]:
        """The cache key of ``key``'s current window, and the seconds left in it."""
        now = self.clock.seconds()
        index = math.floor(now / self.window)
        left = (index + 1) * self.window - now
        return f"throttle:{self.name}:{key}:{index}", left

    @defer.inlineCallbacks
    def blocked(self, key: str) -> InlineCallbacks[float]:
        """Seconds until ``key`` may act again (0.0: it may now)."""
        slot, left = self._slot(key)
        raw = yield self.cache.get(slot)
        try:
            count = int(raw) if raw is not None else 0
        except ValueError:
            count = 0
        return left if count >= self.limit else 0.0

    @defer.inlineCallbacks
    def record(self, key: str) -> InlineCallbacks[int]:
        """Count one event of ``key``; its count in the current window."""
        slot, left = self._slot(key)
        count = yield self.cache.incr(slot)
        if count == 1:
            # Kept a little past the window's end, then gone by itself.
            yield self.cache.expire(slot, left + 1.0)
        return int(count)

    def __repr__(self) -> str:
        return f"<Throttle {self.name}: {self.limit} per {self.window:g}s>"
