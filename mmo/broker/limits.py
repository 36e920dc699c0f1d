"""Budgets that keep one player from multiplying traffic: token buckets by key."""

from __future__ import annotations

__all__ = ["Buckets"]


class Buckets:
    """One token bucket per key (a channel, a sender), made on first use.

    A bucket holds up to ``burst`` tokens and refills at ``rate`` per second. A
    take succeeds while the bucket is not empty and may leave it in debt (one big
    broadcast to a large room still goes out once), so over any span the amount
    taken is at most ``burst + rate * span`` plus one take.

    Args:
        rate: tokens added per second.
        burst: tokens a bucket holds at most.
    """

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        # key -> (level, when it was last brought up to date)
        self._levels: dict[str, tuple[float, float]] = {}

    def take(self, key: str, amount: float, now: float) -> bool:
        """Take ``amount`` from ``key``'s bucket; False (nothing taken) if it is empty."""
        level, at = self._levels.get(key, (self.burst, now))
        level = min(self.burst, level + (now - at) * self.rate)
        if level <= 0:
            self._levels[key] = (level, now)
            return False
        self._levels[key] = (level - amount, now)
        return True

    def prune(self, now: float) -> None:
        """Forget the buckets that have refilled (they would start full anyway)."""
        full = [
            key
            for key, (level, at) in self._levels.items()
            if level + (now - at) * self.rate >= self.burst
        ]
        for key in full:
            del self._levels[key]

    def __len__(self) -> int:
        return len(self._levels)
