"""``ChatService``: chat rooms, after Pomelo's chatofpomelo, shared by any number of instances.

A session is in at most one room. Room ``r`` is the broker channel ``room:r``:
a message is broadcast once to each broker, which fans it out to the members it
holds. Clients receive pushes on the routes ``chat.joined`` and ``chat.left``
(``{"room", "user"}``) and ``chat.message`` (``{"room", "from", "content", "ts"}``).

**Rooms live in the cache** (the worker's ``--cache``; without one, an in-process
:class:`~mmo.data.memory.MemoryCache`: the embedded default, for one instance), so
every instance sees every room and any of them may serve any member. With
``chat`` the service name:

- ``chat:room:<r>`` (hash): session id -> user id, the room's members;
- ``chat:session:<sid>`` (hash): ``room`` (absent when in none), ``user``,
  ``broker`` (where the session is reached) and ``instance`` (the chat instance
  its ``chat`` prefix is bound to);
- ``chat:bound:<instance>`` (set): the sessions bound to that instance;
  ``chat:instances`` (set): the instances that ever bound one.

Each cache operation is atomic on its key. Where several instances could act on
one thing, the one whose ``hdel``/``srem`` removed the member acts (a claim): the
session service's events reach every instance, and so

- ``leave`` (a session ended): the instance whose ``hdel`` takes it out of its
  room broadcasts ``chat.left``, once;
- ``online`` (a session resumed, maybe on another broker): the instance the
  session is bound to records the broker and binds it again there; if that
  instance is gone, the one whose ``srem`` takes the session out of its set takes
  it over. ``offline`` is not followed: an offline session keeps its place.

**Per-sender order.** A sender's messages could overtake each other in two places:
two instances each handling one of them (load-balanced), or one instance starting
the next before the cache answered for the one before. So: the instance that
serves a session's ``chat.join`` binds the session's ``chat`` prefix to itself at
its broker (``sessions.bind``; brokers record bindings with the session service,
so a resume on another broker keeps it), and then every ``chat.*`` REQUEST and
NOTIFY of that session goes to that one instance, down one ordered link; and an
instance handles one session's requests one at a time, in the order they arrived.
Its broadcasts travel on ordered links to every broker, so each member receives
one sender's messages in the order they were sent. (A message sent before the
join's binding reached the broker, or caught by the move below, is the exception:
docs/reliability.md.)

**A binding to a dead instance moves.** When the registry drops a chat instance
(DOWN: expired after kill -9 or a hang, or a graceful stop), each other instance
claims that instance's sessions one by one (``srem`` from its set) and binds each
one it won to itself; an instance that starts does the same for instances the
registry no longer lists; and a request reaching an instance while its session's
owner is gone moves the session there. Before the registry drops a killed instance
(3 missed 1 s heartbeats), brokers already send its sessions' messages to a connected
instance (its connection dropped at once), which serves them: the rooms are in the
cache. docs/reliability.md has the figures and what is not guaranteed.

Client routes (what players may call): ``chat.join``, ``chat.send``,
``chat.members`` (a player may list only the room they are in; logic may list
any), ``chat.leave`` and ``chat.echo``. Each message names its author as the
broadcast's sender, so brokers hold every player to their broadcast budget.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any, ClassVar

from twisted.internet import defer
from twisted.logger import Logger
from typing_extensions import override

from mmo.data.base import Cache
from mmo.data.memory import MemoryCache
from mmo.errors import BadRequest
from mmo.logic import Context, ServiceHandler, client_method, idempotent
from mmo.logic.sessions import resumed_to
from mmo.registry import Change, Instance
from mmo.types import InlineCallbacks
from mmo.wire.gen.mmo.ttypes import Session

__all__ = ["MAX_CONTENT", "MAX_ROOM", "ChatService"]

log = Logger()

#: Longest message content, in characters.
MAX_CONTENT = 1000
#: Longest room name, in characters.
MAX_ROOM = 64
#: How long a starting instance waits for a complete registry view before sweeping
#: the sessions of instances it no longer lists (seconds).
SWEEP_WAIT = 30.0


def channel_of(room: str) -> str:
    """The broker channel of ``room``."""
    return f"room:{room}"


class ChatService(ServiceHandler):
    """The ``chat`` service: join a room, send to it, list its members, leave it.

    Attributes:
        store: the cache the rooms live in: the worker's, else an in-process one.
    """

    default_service = "chat"
    #: The route prefix bound to one instance per session (the brokers route it here).
    route_prefix: ClassVar[str] = "chat"

    def __init__(self, runtime: Any) -> None:
        super().__init__(runtime)
        # Without a cache of the worker's, the embedded default: the rooms of this one
        # process.
        self.store: Cache = (
            self.cache if self.cache is not None else MemoryCache.started(self.clock)
        )
        self._turns: dict[str, defer.DeferredLock] = {}
        self._subscriptions: list[Any] = []
        self._following = False
        self._listening = False
        self._warned = False

    # -- lifecycle -------------------------------------------------------------

    @override
    def start(self) -> None:
        """Follow the session service's ``leave`` and ``online`` events and the registry's
        chat instances; take over the sessions of instances it no longer lists."""
        directory = getattr(self.runtime, "directory", None)
        if directory is None:
            return
        events = directory.get_service("session", "PUB")
        self._subscriptions = [
            events.subscribe("leave", self.session_left),
            events.subscribe("online", self.session_online),
        ]
        if not self._listening:  # a view cannot be unlistened: stop() mutes it instead
            directory.view.listen(self.instance_changed)
            self._listening = True
        self._following = True
        view = directory.view
        swept = view.wait_for(lambda: view.warm, SWEEP_WAIT)
        swept.addCallback(lambda _: self._sweep_all())
        swept.addErrback(self._failed, "sweeping the sessions of gone instances")

    @override
    def stop(self) -> None:
        """Stop following session events and the registry."""
        for subscription in self._subscriptions:
            subscription.unsubscribe()
        self._subscriptions = []
        self._following = False

    def session_left(self, topic: str, event: Any) -> None:
        """A session ended (session ``leave`` event): it leaves its room, which is told
        by the one instance whose ``hdel`` removed it."""
        session_id = event.get("session_id") if isinstance(event, dict) else None
        if isinstance(session_id, str):
            d = self._in_turn(session_id, self._ended, session_id)
            d.addErrback(self._failed, f"session {session_id} ended")

    def session_online(self, topic: str, event: Any) -> None:
        """A session was resumed (session ``online`` event): its instance reaches it on its
        broker and binds it again there (or, that instance gone, one instance takes it)."""
        moved = resumed_to(event)
        if moved is not None:
            d = self._in_turn(moved[0], self._resumed, *moved)
            d.addErrback(self._failed, f"session {moved[0]} resumed")

    def instance_changed(self, change: int, instance: Instance, reason: str) -> None:
        """Registry listener: take over (one claim per session) the sessions of a chat
        instance that went DOWN."""
        if not self._following or instance.service_name != self.service_name:
            return
        gone = instance.instance_id
        if gone == self.instance_id:
            return
        if change == Change.DOWN:
            log.info(
                "chat: {gone} is gone ({reason}); taking over its sessions",
                gone=gone,
                reason=reason,
            )
            self._sweep(gone).addErrback(self._failed, f"taking over {gone}'s sessions")
        elif not self.store.shared and not self._warned:
            self._warned = True
            log.warn(
                "chat: {other} serves {service} too, but this instance's cache is not shared "
                "(give every instance the same --cache redis://...): each sees its own rooms",
                other=gone,
                service=self.service_name,
            )

    # -- service methods ---------------------------------------------------------

    @client_method
    def on_join(self, ctx: Context, room: str) -> defer.Deferred[dict[str, Any]]:
        """Join ``room`` (leaving the room the session was in); announce ``chat.joined``.

        The session's ``chat`` prefix is bound to this instance from now on.

        Returns:
            ``{"room", "members"}``: the members' user ids, sorted.

        Raises:
            BadRequest: no session, or the room name is not 1-64 characters.
        """
        session = self._session(ctx)
        if not isinstance(room, str) or not 1 <= len(room) <= MAX_ROOM:
            raise BadRequest(f"chat.join: a room name is 1-{MAX_ROOM} characters")
        return self._in_turn(session.id, self._join, session, room)

    @client_method
    def on_send(self, ctx: Context, content: str, ts: float | None = None) -> defer.Deferred[None]:
        """Send ``content`` to the session's room (push ``chat.message``); usually a NOTIFY.

        Args:
            content: the text, at most 1000 characters.
            ts: a timestamp passed through unchanged (benchmarks measure latency
                with it); the service's clock time when not given.

        Raises:
            BadRequest: no session, not in a room, content too long or not text.
        """
        session = self._session(ctx)
        if not isinstance(content, str) or len(content) > MAX_CONTENT:
            raise BadRequest(f"chat.send: content is text of at most {MAX_CONTENT} characters")
        if ts is not None and (isinstance(ts, bool) or not isinstance(ts, int | float)):
            raise BadRequest("chat.send: ts is a number")
        stamp = self.clock.seconds() if ts is None else ts
        return self._in_turn(session.id, self._send, session, content, stamp)

    @client_method
    @defer.inlineCallbacks
    def on_members(self, ctx: Context, room: str | None = None) -> InlineCallbacks[list[str]]:
        """The user ids in ``room`` (default: the caller's room), sorted.

        Raises:
            BadRequest: no room given and the caller is in none, or a player asked
                about a room they are not in.
        """
        own = None
        if ctx.session is not None:
            own = yield self.store.hget(self._key("session", ctx.session.id), "room")
        if room is None:
            room = own
            if room is None:
                raise BadRequest("chat.members: name a room, or join one")
        if not isinstance(room, str):
            raise BadRequest("chat.members: room is a string")
        if ctx.from_client and room != own:
            raise BadRequest("chat.members: a player may list only the room they are in")
        members = yield self._members(room)
        return members

    @client_method
    def on_leave(self, ctx: Context) -> defer.Deferred[dict[str, str | None]]:
        """Leave the session's room (announce ``chat.left``).

        Returns:
            ``{"room": the room left}``, or ``{"room": None}`` if it was in none.
        """
        session = self._session(ctx)
        return self._in_turn(session.id, self._leave, session)

    @client_method
    @idempotent
    def on_echo(self, ctx: Context, **kwargs: Any) -> dict[str, Any]:
        """Return the keyword arguments (a round trip through the broker, for benchmarks)."""
        return kwargs

    # -- what the methods do, one session at a time -------------------------------

    @defer.inlineCallbacks
    def _join(self, session: Session, room: str) -> InlineCallbacks[dict[str, Any]]:
        record = yield self._record(session.id)
        current = record.get("room")
        if current != room:
            if current is not None:
                yield self._out_of(current, session.id, session.user_id, session)
            user: str = session.user_id
            yield self.store.hset(self._key("room", room), {session.id: user})
            yield self.store.hset(
                self._key("session", session.id),
                {"room": room, "user": user, "broker": session.broker or ""},
            )
            record = {**record, "broker": session.broker or ""}
        # The join is where a session's chat.* is bound: here, from now on.
        yield self._refresh(session, record, take=True)
        if current != room:
            self.sessions.join(session, channel_of(room))
            self.sessions.broadcast(
                channel_of(room), "chat.joined", {"room": room, "user": session.user_id}
            )
        members = yield self._members(room)
        return {"room": room, "members": members}

    @defer.inlineCallbacks
    def _send(self, session: Session, content: str, ts: float) -> InlineCallbacks[None]:
        record = yield self._record(session.id)
        room = record.get("room")
        if room is None:
            raise BadRequest("chat.send: join a room first")
        yield self._refresh(session, record)
        self.sessions.broadcast(
            channel_of(room),
            "chat.message",
            {"room": room, "from": session.user_id, "content": content, "ts": ts},
            sender=session,
        )

    @defer.inlineCallbacks
    def _leave(self, session: Session) -> InlineCallbacks[dict[str, str | None]]:
        record = yield self._record(session.id)
        room = record.get("room")
        if room is not None:
            yield self._refresh(session, record)
            yield self._out_of(room, session.id, session.user_id, session)
            yield self.store.hdel(self._key("session", session.id), "room")
        return {"room": room}

    @defer.inlineCallbacks
    def _ended(self, session_id: str) -> InlineCallbacks[None]:
        record = yield self._record(session_id)
        if not record:
            return
        room, owner = record.get("room"), record.get("instance")
        if room is not None:
            # The session is gone from its broker: only the members need telling.
            yield self._out_of(room, session_id, record.get("user", ""), None)
        if owner:
            yield self.store.srem(self._key("bound", owner), session_id)
        yield self.store.delete(self._key("session", session_id))

    @defer.inlineCallbacks
    def _resumed(self, session_id: str, broker: str) -> InlineCallbacks[None]:
        record = yield self._record(session_id)
        user, owner = record.get("user"), record.get("instance")
        if not user or not owner:
            return
        session = Session(id=session_id, user_id=user, broker=broker)
        if owner == self.instance_id:
            yield self.store.hset(self._key("session", session_id), {"broker": broker})
            # The broker restored the bindings the session service held: bind it again
            # in case one named an instance that is gone.
            self.sessions.bind(session, self.route_prefix)
        elif not self._live(owner):
            yield self._take(session, owner)

    @defer.inlineCallbacks
    def _sweep(self, gone: str) -> InlineCallbacks[None]:
        """Take over ``gone``'s sessions: each goes to the instance whose srem won it."""
        bound = self._key("bound", gone)
        session_ids = yield self.store.smembers(bound)
        # Survivors sweeping at once each start somewhere else, so they share the work.
        for session_id in random.sample(sorted(session_ids), len(session_ids)):
            yield self._in_turn(session_id, self._claim, session_id, gone)
        left = yield self.store.smembers(bound)
        if not left:
            yield self.store.srem(self._key("instances"), gone)

    @defer.inlineCallbacks
    def _claim(self, session_id: str, gone: str) -> InlineCallbacks[None]:
        won = yield self.store.srem(self._key("bound", gone), session_id)
        if not won:
            return  # another instance took it, or the session ended
        record = yield self._record(session_id)
        if record.get("user"):
            session = Session(
                id=session_id, user_id=record["user"], broker=record.get("broker") or None
            )
            yield self._adopt(session)

    @defer.inlineCallbacks
    def _sweep_all(self) -> InlineCallbacks[None]:
        """At start: take over the sessions of instances the registry no longer lists."""
        known = yield self.store.smembers(self._key("instances"))
        for instance_id in sorted(known):
            if instance_id != self.instance_id and not self._live(instance_id):
                yield self._sweep(instance_id)

    # -- internals -------------------------------------------------------------

    def _key(self, kind: str, name: str | None = None) -> str:
        return (
            f"{self.service_name}:{kind}" if name is None else f"{self.service_name}:{kind}:{name}"
        )

    def _in_turn(
        self, session_id: str, work: Callable[..., defer.Deferred[Any]], *args: Any
    ) -> defer.Deferred[Any]:
        """Run ``work(*args)`` once the session's earlier work here has ended: one session's
        requests and events are handled one at a time, in the order they came."""
        lock = self._turns.get(session_id)
        if lock is None:
            lock = self._turns[session_id] = defer.DeferredLock()

        def done(result: Any) -> Any:
            if not lock.locked and not lock.waiting and self._turns.get(session_id) is lock:
                del self._turns[session_id]
            return result

        return lock.run(work, *args).addBoth(done)

    def _session(self, ctx: Context) -> Session:
        session = ctx.session
        if session is None or not session.user_id:
            raise BadRequest(f"chat.{ctx.method}: only a logged-in client session may call it")
        # Kept lean: the props travelling with the request are not needed here.
        return Session(id=session.id, user_id=session.user_id, broker=session.broker)

    def _record(self, session_id: str) -> defer.Deferred[dict[str, str]]:
        return self.store.hgetall(self._key("session", session_id))

    def _live(self, instance_id: str) -> bool:
        """Whether the registry lists ``instance_id`` (assumed while the view is not
        complete yet: a session is never taken from an instance merely not seen yet)."""
        if instance_id == self.instance_id:
            return True
        directory = getattr(self.runtime, "directory", None)
        if directory is None:
            return False  # no registry: this is the only instance
        view = directory.view
        if not view.warm:
            return True
        return any(i.instance_id == instance_id for i in view.get(self.service_name))

    @defer.inlineCallbacks
    def _refresh(
        self, session: Session, record: dict[str, str], take: bool = False
    ) -> InlineCallbacks[None]:
        """What the session's request says: where it is now, and (``take``, or when its
        instance is gone) that this instance serves it."""
        owner = record.get("instance")
        if owner == self.instance_id:
            if record.get("broker") != (session.broker or ""):
                yield self.store.hset(
                    self._key("session", session.id), {"broker": session.broker or ""}
                )
        elif take or owner is None:
            if owner is not None:
                yield self.store.srem(self._key("bound", owner), session.id)
            yield self._adopt(session)
        elif not self._live(owner):
            yield self._take(session, owner)

    @defer.inlineCallbacks
    def _take(self, session: Session, gone: str) -> InlineCallbacks[None]:
        """Take the session from instance ``gone``, if this instance wins the claim."""
        won = yield self.store.srem(self._key("bound", gone), session.id)
        if won:
            yield self._adopt(session)

    @defer.inlineCallbacks
    def _adopt(self, session: Session) -> InlineCallbacks[None]:
        """Serve ``session`` here: recorded, and its chat prefix bound to this instance."""
        yield self.store.sadd(self._key("bound", self.instance_id), session.id)
        yield self.store.sadd(self._key("instances"), self.instance_id)
        yield self.store.hset(
            self._key("session", session.id),
            {"instance": self.instance_id, "broker": session.broker or ""},
        )
        self.sessions.bind(session, self.route_prefix)

    @defer.inlineCallbacks
    def _members(self, room: str) -> InlineCallbacks[list[str]]:
        members = yield self.store.hgetall(self._key("room", room))
        return sorted(set(members.values()))

    @defer.inlineCallbacks
    def _out_of(
        self, room: str, session_id: str, user: str, session: Session | None
    ) -> InlineCallbacks[None]:
        """Take the session out of ``room`` (off its channel, if ``session`` says where);
        the instance whose hdel removed it tells the members left."""
        removed = yield self.store.hdel(self._key("room", room), session_id)
        if session is not None:
            self.sessions.leave(session, channel_of(room))
        if removed:
            members = yield self.store.hgetall(self._key("room", room))
            if members:  # else nobody is left to tell (and the room is gone)
                self.sessions.broadcast(channel_of(room), "chat.left", {"room": room, "user": user})

    def _failed(self, failure: Any, what: str) -> None:
        log.failure("chat: {what} failed", failure, what=what)
