"""The registry's state: live instances, their expiry, and the ordered change feed.

Pure logic with an injected clock, so it is tested without sockets or a reactor.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from mmo.types import Clock
from mmo.wire.gen.mmo.ttypes import Change, Instance, RegistryMessage, RegistryOp

#: Bounds on the TTL an instance may ask for, in milliseconds.
MIN_TTL_MS = 300
MAX_TTL_MS = 60_000
DEFAULT_TTL_MS = 3_000


@dataclass
class _Entry:
    instance: Instance
    expires: float


class Registry:
    """Live instances by service, with a sequence-numbered change feed.

    Every change (an instance up or changed, an instance down) increments
    :attr:`seq` by one and is handed to ``on_update`` as an ``UPDATE`` message,
    so a watcher that holds a snapshot at seq N converges by applying N+1, N+2...

    Args:
        clock: the time source (a reactor or ``task.Clock``).
        yellow_id: this registry's identity; changes when the process restarts.
        on_update: called with each ``UPDATE`` message, in order.
    """

    def __init__(
        self,
        clock: Clock,
        yellow_id: str,
        on_update: Callable[[RegistryMessage], None],
    ) -> None:
        self.clock = clock
        self.yellow_id = yellow_id
        self.on_update = on_update
        self.seq = 0
        self._entries: dict[tuple[str, str], _Entry] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def register(self, instance: Instance) -> None:
        """Add or refresh ``instance``; a new or changed record is announced."""
        ttl_ms = instance.ttl_ms or DEFAULT_TTL_MS
        ttl_ms = min(max(ttl_ms, MIN_TTL_MS), MAX_TTL_MS)
        key = (instance.service_name, instance.instance_id)
        entry = self._entries.get(key)
        expires = self.clock.seconds() + ttl_ms / 1000.0
        if entry is not None and entry.instance == instance:
            entry.expires = expires
            return
        self._entries[key] = _Entry(instance, expires)
        self._announce(Change.UP, instance, "registered" if entry is None else "changed")

    def deregister(self, service: str, instance_id: str) -> bool:
        """Remove an instance that said goodbye; return whether it was known."""
        entry = self._entries.pop((service, instance_id), None)
        if entry is None:
            return False
        self._announce(Change.DOWN, entry.instance, "deregistered")
        return True

    def expire(self) -> int:
        """Drop every instance whose TTL passed; return how many."""
        now = self.clock.seconds()
        dead = [key for key, entry in self._entries.items() if entry.expires <= now]
        for key in dead:
            entry = self._entries.pop(key)
            self._announce(Change.DOWN, entry.instance, "expired")
        return len(dead)

    def query(self, service: str | None = None) -> list[Instance]:
        """Live instances of ``service`` (of every service if ``None``)."""
        return [
            entry.instance
            for (name, _), entry in self._entries.items()
            if service is None or name == service
        ]

    def _announce(self, change: int, instance: Instance, reason: str) -> None:
        self.seq += 1
        self.on_update(
            RegistryMessage(
                op=RegistryOp.UPDATE,
                seq=self.seq,
                yellow_id=self.yellow_id,
                change=change,
                instance=instance,
                reason=reason,
            )
        )
