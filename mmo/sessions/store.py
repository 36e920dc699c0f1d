"""``SessionStore``: the session records in the cache, where every session instance sees them.

Each operation is one or a few one-key cache operations (:class:`mmo.data.Cache`), so
several session-service processes share the records without a lock, and a process killed
between two operations leaves nothing another cannot finish. The layout (``P`` is the
prefix, ``{sid}`` a hash tag: one session's keys live on one shard):

==============================  =======  ===================================================
key                             kind     holds
==============================  =======  ===================================================
``P{sid}``                      hash     ``user``, ``broker``, ``token``, ``created``,
                                         ``online`` (``1``/``0``), ``deadline`` (offline)
``P{sid}:props``                hash     property -> JSON value
``P{sid}:channels``             set      the channels the session is in
``P{sid}:bindings``             hash     route prefix -> instance id
``Puser:{user}``                hash     session id -> ``created:n`` (the user's sessions)
``Pbroker:{broker}``            set      the sessions online at that broker
``Pbrokers``                    set      the brokers that held sessions (for the sweep)
``Poffline``                    hash     session id -> the time its grace ends
==============================  =======  ===================================================

The two moves that several processes may attempt at once are claims: a session goes
offline in the process whose ``srem`` took it out of its broker's set, and ends in the
process whose ``hdel`` took it out of the user's sessions; the others do nothing, so each
``offline`` and ``leave`` event is published once. Times are the clock's seconds (the
reactor's: wall-clock time, the same in every process of a machine, and across machines
as far as their clocks agree).
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import defer

from mmo.data.base import Cache

__all__ = ["SessionStore", "StoredSession"]


@dataclass(slots=True)
class StoredSession:
    """One session as read from the store.

    Attributes:
        session_id: the session's id.
        user_id: the user it belongs to.
        broker: the instance id of the broker that holds (or last held) it.
        token: its latest resume token.
        online: whether a connection holds it.
        created: when it was opened.
        deadline: while offline, when its grace ends.
        props, channels, bindings: what a resume restores (read only when asked).
    """

    session_id: str
    user_id: str
    broker: str
    token: str
    online: bool
    created: float
    deadline: float | None = None
    props: dict[str, Any] = field(default_factory=dict)
    channels: set[str] = field(default_factory=set)
    bindings: dict[str, str] = field(default_factory=dict)


class SessionStore:
    """The session records in ``cache`` under ``prefix`` (see the module).

    Args:
        cache: where the records live (shared by every session instance: Redis; or the
            in-process cache of a single instance).
        prefix: the keys' prefix.
    """

    def __init__(self, cache: Cache, prefix: str = "session:") -> None:
        self.cache = cache
        self.prefix = prefix
        # Orders this process's logins of one user within one clock tick.
        self._order = itertools.count()

    # -- keys ------------------------------------------------------------------------

    def _record(self, sid: str, part: str = "") -> str:
        return f"{self.prefix}{{{sid}}}{part}"

    def _user(self, user: str) -> str:
        return f"{self.prefix}user:{{{user}}}"

    def _broker(self, broker: str) -> str:
        return f"{self.prefix}broker:{{{broker}}}"

    @property
    def _brokers(self) -> str:
        return f"{self.prefix}brokers"

    @property
    def _offline(self) -> str:
        return f"{self.prefix}offline"

    # -- reads -----------------------------------------------------------------------

    @defer.inlineCallbacks
    def get(self, sid: str, *, whole: bool = False) -> Any:
        """The session ``sid`` (with its props, channels and bindings if ``whole``), or
        None if there is none."""
        fields = yield self.cache.hgetall(self._record(sid))
        if "user" not in fields:
            return None
        deadline = fields.get("deadline")
        session = StoredSession(
            sid,
            fields["user"],
            fields.get("broker", ""),
            fields.get("token", ""),
            fields.get("online") == "1",
            float(fields.get("created", 0)),
            float(deadline) if deadline and fields.get("online") != "1" else None,
        )
        if whole:
            props = yield self.cache.hgetall(self._record(sid, ":props"))
            session.channels = yield self.cache.smembers(self._record(sid, ":channels"))
            session.bindings = yield self.cache.hgetall(self._record(sid, ":bindings"))
            session.props = {k: json.loads(v) for k, v in props.items()}
        return session

    @defer.inlineCallbacks
    def of_user(self, user: str) -> Any:
        """The ids of ``user``'s sessions, oldest first."""
        held = yield self.cache.hgetall(self._user(user))
        return sorted(held, key=lambda sid: tuple(map(float, held[sid].split(":"))))

    def online_at(self, broker: str) -> defer.Deferred[set[str]]:
        """The ids of the sessions online at ``broker``."""
        return self.cache.smembers(self._broker(broker))

    def brokers(self) -> defer.Deferred[set[str]]:
        """The brokers that held sessions (some may hold none any more)."""
        return self.cache.smembers(self._brokers)

    @defer.inlineCallbacks
    def session_ids(self) -> Any:
        """The ids of every session: online at a broker, or offline within its grace."""
        ids = set((yield self.cache.hgetall(self._offline)))
        for broker in (yield self.brokers()):
            ids |= yield self.online_at(broker)
        return ids

    @defer.inlineCallbacks
    def channel_members(self, prefix: str = "", batch: int = 500) -> Any:
        """Channel -> how many sessions are in it (online and offline ones: a resume
        restores their channels), for the channels whose name starts with ``prefix``.

        Reads every session's channels, ``batch`` sessions at a time.
        """
        members: dict[str, int] = {}
        ids = sorted((yield self.session_ids()))
        for start in range(0, len(ids), batch):
            held = yield defer.gatherResults(
                [
                    self.cache.smembers(self._record(sid, ":channels"))
                    for sid in ids[start : start + batch]
                ],
                consumeErrors=True,
            )
            for channels in held:
                for channel in channels:
                    if channel.startswith(prefix):
                        members[channel] = members.get(channel, 0) + 1
        return members

    @defer.inlineCallbacks
    def overdue(self, now: float) -> Any:
        """The ids of offline sessions whose grace ended before ``now``."""
        offline = yield self.cache.hgetall(self._offline)
        return [sid for sid, deadline in offline.items() if float(deadline) <= now]

    # -- writes ----------------------------------------------------------------------

    @defer.inlineCallbacks
    def create(
        self, sid: str, user: str, broker: str, token: str, now: float, props: dict[str, Any]
    ) -> Any:
        """Store a new session, online at ``broker``."""
        record = {"user": user, "broker": broker, "token": token, "created": repr(now)}
        yield self.cache.hset(self._record(sid), {**record, "online": "1"})
        if props:
            yield self.set_props(sid, props)
        yield self.cache.hset(self._user(user), {sid: f"{now!r}:{next(self._order)}"})
        yield self._hold(sid, broker)

    @defer.inlineCallbacks
    def _hold(self, sid: str, broker: str) -> Any:
        yield self.cache.sadd(self._brokers, broker)
        yield self.cache.sadd(self._broker(broker), sid)

    def set_token(self, sid: str, token: str) -> defer.Deferred[int]:
        """Replace the session's token."""
        return self.cache.hset(self._record(sid), {"token": token})

    def claim_token(self, sid: str) -> defer.Deferred[int]:
        """Remove the session's token: 1 for the one process of several that removed it."""
        return self.cache.hdel(self._record(sid), "token")

    @defer.inlineCallbacks
    def bring_online(self, sid: str, old_broker: str, broker: str, token: str) -> Any:
        """The session is held by ``broker`` now, with a new token."""
        fields = {"broker": broker, "online": "1", "token": token}
        yield self.cache.hset(self._record(sid), fields)
        yield self.cache.hdel(self._record(sid), "deadline")
        if old_broker != broker:
            yield self.cache.srem(self._broker(old_broker), sid)
        yield self._hold(sid, broker)
        yield self.cache.hdel(self._offline, sid)

    @defer.inlineCallbacks
    def take_offline(self, sid: str, broker: str, deadline: float) -> Any:
        """If ``broker`` still holds the session online, mark it offline until
        ``deadline``: True in the one process that did (the claim)."""
        claimed = yield self.cache.srem(self._broker(broker), sid)
        if not claimed:
            return False
        yield self.cache.hset(self._record(sid), {"online": "0", "deadline": repr(deadline)})
        yield self.cache.hset(self._offline, {sid: repr(deadline)})
        moved = yield self.cache.hget(self._record(sid), "broker")
        if moved is not None and moved != broker:
            # Resumed on another broker meanwhile: online there (its writes may have
            # landed before ours).
            yield self.cache.hset(self._record(sid), {"online": "1"})
            yield self.cache.hdel(self._offline, sid)
            return False
        return True

    def unmark_overdue(self, sid: str) -> defer.Deferred[int]:
        """Remove the session from the offline sessions (once ended or found online)."""
        return self.cache.hdel(self._offline, sid)

    @defer.inlineCallbacks
    def remove(self, sid: str, user: str, broker: str) -> Any:
        """Delete the session: True in the one process of several that did (the claim)."""
        claimed = yield self.cache.hdel(self._user(user), sid)
        yield self.cache.srem(self._broker(broker), sid)
        yield self.cache.hdel(self._offline, sid)
        for part in ("", ":props", ":channels", ":bindings"):
            yield self.cache.delete(self._record(sid, part))
        return bool(claimed)

    def forget_broker(self, broker: str) -> defer.Deferred[int]:
        """Stop sweeping ``broker`` (it holds no session)."""
        return self.cache.srem(self._brokers, broker)

    @defer.inlineCallbacks
    def set_props(self, sid: str, props: dict[str, Any]) -> Any:
        """Merge properties (a None value deletes one)."""
        gone = [k for k, v in props.items() if v is None]
        kept = {k: json.dumps(v) for k, v in props.items() if v is not None}
        if kept:
            yield self.cache.hset(self._record(sid, ":props"), kept)
        yield self.cache.hdel(self._record(sid, ":props"), *gone)

    @defer.inlineCallbacks
    def track(
        self,
        sid: str,
        joined: list[str],
        left: list[str],
        props: dict[str, Any],
        bound: dict[str, str],
        unbound: list[str],
    ) -> Any:
        """Apply a broker's report of what a resume restores."""
        channels = self._record(sid, ":channels")
        if joined:
            yield self.cache.sadd(channels, *joined)
        yield self.cache.srem(channels, *left)
        if props:
            yield self.set_props(sid, props)
        if bound:
            yield self.cache.hset(self._record(sid, ":bindings"), bound)
        yield self.cache.hdel(self._record(sid, ":bindings"), *unbound)
