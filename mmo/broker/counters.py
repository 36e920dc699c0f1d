"""What a broker keeps count of: events by name, and the requests it has in flight.

Both are shared by the broker's parts (:mod:`mmo.broker.core` composes them) and
reported together by :meth:`mmo.broker.core.Broker.stats`. A graceful stop waits for
the requests in flight (:meth:`InFlight.drained`).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

__all__ = ["Counters", "InFlight"]


class Counters(Counter[str]):
    """Events counted by name (``counters["logins"]``); a name never counted reads 0."""

    log = Logger()

    def count(self, what: str, n: int = 1) -> None:
        """Count ``n`` events ``what``."""
        self[what] += n

    def count_and_log(self, what: str, message: str, **fields: Any) -> None:
        """Count an event a player can repeat at will; log the first and every 1000th."""
        self[what] += 1
        n = self[what]
        if n == 1 or n % 1000 == 0:
            self.log.warn(message + " ({n} so far)", n=n, **fields)


class InFlight:
    """The requests a broker has started and not yet answered.

    Attributes:
        count: how many are in flight.
    """

    def __init__(self) -> None:
        self.count = 0
        self._drained: defer.Deferred[None] | None = None

    def track(self, d: defer.Deferred[Any]) -> None:
        """Count ``d`` in flight until it fires (add its handlers first)."""
        self.begin()
        d.addBoth(self._done)

    def begin(self) -> None:
        """One more in flight, until :meth:`end`."""
        self.count += 1

    def end(self) -> None:
        """One fewer in flight."""
        self.count -= 1
        if self.count == 0 and self._drained is not None and not self._drained.called:
            self._drained.callback(None)

    def _done(self, result: Any) -> Any:
        self.end()
        return result

    def drained(self, timeout: float, clock: Any) -> defer.Deferred[None]:
        """Fire once nothing is in flight, or after ``timeout`` seconds on ``clock`` (never
        fails)."""
        if not self.count:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._drained = d
        d.addTimeout(timeout, clock)
        d.addErrback(lambda _: None)
        return d
