"""The reply memo: a resent client request is answered once, from the first run.

A game client that loses a reply (its connection dropped, its broker died) resends
the request with the same sequence number on the resumed session. For a method not
marked ``@idempotent``, running it twice would double its side effect (two purchases,
two moves). Brokers therefore send each client request with the session and the
packet's seq (``Header.client_seq``), route a session's non-idempotent requests to a
service by rendezvous hashing of the session id (so a resend reaches the same
instance from any broker), and the worker keeps, per ``(session id, seq)``, the
outcome of the first run:

* a resend that arrives while the first run is still going waits for it and gets the
  same reply;
* a resend that arrives later gets the recorded reply (or error) at once;
* a request whose seq was used before for a *different* method or body is a new
  request, not a resend: it runs, and replaces the entry (a client that restarts
  its seqs is not answered with stale replies).

Entries are kept ``ttl`` seconds after the run ends (default 60: the session service's
30 s grace plus a request deadline, with room) and at most ``size`` of them (the
oldest go first; counted as ``evicted``). The memo lives in the worker's memory: it
covers lost replies, broker deaths and reconnections, not the death of the worker
that ran the request (docs/reliability.md).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from mmo.types import Clock

__all__ = ["MEMO_TTL", "Entry", "ReplyMemo"]

#: Seconds a worker keeps the outcome of a non-idempotent client request by default (a
#: resend within them is answered, not run again): a worker's and a broker's hosted
#: handlers'.
MEMO_TTL = 60.0

#: What identifies one client request: (session id, client seq).
Key = tuple[str, int]


class Entry:
    """One request's outcome: pending (``outcome`` is None) or recorded.

    Attributes:
        fingerprint: what the request was (method and body), to tell a resend from
            a new request that reuses the seq.
        outcome: once run, ``(header fields, body)`` of its answer, without call id.
        waiters: resends that arrived while it ran: ``(ident, call_id)`` to answer.
        ended: clock time the run ended (entries expire ``ttl`` after it).
    """

    __slots__ = ("ended", "fingerprint", "outcome", "waiters")

    def __init__(self, fingerprint: int) -> None:
        self.fingerprint = fingerprint
        self.outcome: tuple[dict[str, Any], bytes] | None = None
        self.waiters: list[tuple[bytes, int]] = []
        self.ended = 0.0


class ReplyMemo:
    """Outcomes of a worker's non-idempotent client requests, by (session, seq).

    Args:
        clock: measures the entries' age.
        ttl: seconds an outcome is kept after its run ends.
        size: the most entries kept (the oldest are dropped first).
    """

    def __init__(self, clock: Clock, *, ttl: float = 60.0, size: int = 100_000) -> None:
        if ttl <= 0 or size < 1:
            raise ValueError("the reply memo needs ttl > 0 and size >= 1")
        self.clock = clock
        self.ttl = ttl
        self.size = size
        self._entries: OrderedDict[Key, Entry] = OrderedDict()
        self.replayed = 0
        self.joined = 0
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._entries)

    @staticmethod
    def fingerprint(method: str, body: bytes) -> int:
        """What tells a resend (the same) from a new request reusing its seq."""
        return hash((method, body))

    def find(self, key: Key, fingerprint: int) -> Entry | None:
        """The entry of a request this is a resend of, or None (it is a new request)."""
        self._prune()
        entry = self._entries.get(key)
        if entry is not None and entry.fingerprint == fingerprint:
            return entry
        return None

    def start(self, key: Key, fingerprint: int) -> Entry:
        """A new, pending entry for a request about to run (replacing one that reused
        its seq); the caller records the outcome with :meth:`end`."""
        entry = Entry(fingerprint)
        self._entries[key] = entry
        self._entries.move_to_end(key)
        return entry

    def end(self, key: Key, entry: Entry, header: dict[str, Any], body: bytes) -> None:
        """Record ``entry``'s outcome (the answer's header fields and body)."""
        entry.outcome = (header, body)
        entry.ended = self.clock.seconds()
        if self._entries.get(key) is entry:
            # Ordered by end time from here on, so expiry looks only at the front.
            self._entries.move_to_end(key)

    def _prune(self) -> None:
        entries = self._entries
        horizon = self.clock.seconds() - self.ttl
        while entries:
            key, entry = next(iter(entries.items()))
            if len(entries) >= self.size:
                self.evicted += 1
            elif entry.outcome is None or entry.ended > horizon:
                return
            del entries[key]
