"""``ChatService``: chat rooms, after Pomelo's chatofpomelo.

A session is in at most one room. Room ``r`` is the broker channel ``room:r``:
a message is broadcast once to each broker, which fans it out to the members it
holds. Clients receive pushes on the routes ``chat.joined`` and ``chat.left``
(``{"room", "user"}``) and ``chat.message`` (``{"room", "from", "content", "ts"}``).

The rooms live in memory, so one chat instance holds them all (or brokers bind
a session's ``chat`` prefix to one instance). The service follows the session
service's events: a session that ends leaves its room, and one resumed on
another broker is reached there.

Client routes (what players may call): ``chat.join``, ``chat.send``,
``chat.members`` (a player may list only the room they are in; logic may list
any), ``chat.leave`` and ``chat.echo``. Each message names its author as the
broadcast's sender, so brokers hold every player to their broadcast budget.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger
from typing_extensions import override

from mmo.errors import BadRequest
from mmo.logic import Context, ServiceHandler, client_method, idempotent
from mmo.wire.gen.mmo.ttypes import Session

__all__ = ["MAX_CONTENT", "MAX_ROOM", "ChatService"]

log = Logger()

#: Longest message content, in characters.
MAX_CONTENT = 1000
#: Longest room name, in characters.
MAX_ROOM = 64


def channel_of(room: str) -> str:
    """The broker channel of ``room``."""
    return f"room:{room}"


class ChatService(ServiceHandler):
    """The ``chat`` service: join a room, send to it, list its members, leave it.

    Attributes:
        rooms: room -> {session id: {"user": user id, "session": Session}}; a room
            with no members is deleted.
        where: session id -> the room it is in.
    """

    default_service = "chat"

    def __init__(self, runtime: Any) -> None:
        super().__init__(runtime)
        self.rooms: dict[str, dict[str, dict[str, Any]]] = {}
        self.where: dict[str, str] = {}
        self._subscriptions: list[Any] = []

    # -- lifecycle -------------------------------------------------------------

    @override
    def start(self) -> None:
        """Follow the session service's ``leave`` and ``online`` events."""
        directory = getattr(self.runtime, "directory", None)
        if directory is None:
            return
        events = directory.get_service("session", "PUB")
        self._subscriptions = [
            events.subscribe("leave", self.session_left),
            events.subscribe("online", self.session_online),
        ]

    @override
    def stop(self) -> None:
        """Stop following session events."""
        for subscription in self._subscriptions:
            subscription.unsubscribe()
        self._subscriptions = []

    def session_left(self, topic: str, event: Any) -> None:
        """A session ended (session ``leave`` event): it leaves its room, which is told."""
        session_id = event.get("session_id") if isinstance(event, dict) else None
        if isinstance(session_id, str) and session_id in self.where:
            # The session is gone from its broker: only the members need telling.
            self._leave(session_id, tell_broker=False)

    def session_online(self, topic: str, event: Any) -> None:
        """A session was resumed (session ``online`` event): reach it on its new broker.

        Offline sessions keep their place (they may come back), so ``offline``
        events are not followed.
        """
        if not isinstance(event, dict):
            return
        session_id, broker = event.get("session_id"), event.get("broker")
        if not (isinstance(session_id, str) and isinstance(broker, str)):
            return
        room = self.where.get(session_id)
        if room is not None:
            member = self.rooms[room][session_id]
            old: Session = member["session"]
            member["session"] = Session(id=old.id, user_id=old.user_id, broker=broker)

    # -- service methods ---------------------------------------------------------

    @client_method
    def on_join(self, ctx: Context, room: str) -> dict[str, Any]:
        """Join ``room`` (leaving the room the session was in); announce ``chat.joined``.

        Returns:
            ``{"room", "members"}``: the members' user ids, sorted.

        Raises:
            BadRequest: no session, or the room name is not 1-64 characters.
        """
        session = self._session(ctx)
        if not isinstance(room, str) or not 1 <= len(room) <= MAX_ROOM:
            raise BadRequest(f"chat.join: a room name is 1-{MAX_ROOM} characters")
        current = self.where.get(session.id)
        if current == room:
            self._refresh(session)
            return {"room": room, "members": self._members(room)}
        if current is not None:
            self._leave(session.id)
        user: str = session.user_id
        self.rooms.setdefault(room, {})[session.id] = {"user": user, "session": session}
        self.where[session.id] = room
        self.sessions.join(session, channel_of(room))
        self.sessions.broadcast(channel_of(room), "chat.joined", {"room": room, "user": user})
        return {"room": room, "members": self._members(room)}

    @client_method
    def on_send(self, ctx: Context, content: str, ts: float | None = None) -> None:
        """Send ``content`` to the session's room (push ``chat.message``); usually a NOTIFY.

        Args:
            content: the text, at most 1000 characters.
            ts: a timestamp passed through unchanged (benchmarks measure latency
                with it); the service's clock time when not given.

        Raises:
            BadRequest: no session, not in a room, content too long or not text.
        """
        session = self._session(ctx)
        room = self.where.get(session.id)
        if room is None:
            raise BadRequest("chat.send: join a room first")
        if not isinstance(content, str) or len(content) > MAX_CONTENT:
            raise BadRequest(f"chat.send: content is text of at most {MAX_CONTENT} characters")
        if ts is not None and (isinstance(ts, bool) or not isinstance(ts, int | float)):
            raise BadRequest("chat.send: ts is a number")
        self._refresh(session)
        self.sessions.broadcast(
            channel_of(room),
            "chat.message",
            {
                "room": room,
                "from": session.user_id,
                "content": content,
                "ts": self.clock.seconds() if ts is None else ts,
            },
            sender=session,
        )

    @client_method
    def on_members(self, ctx: Context, room: str | None = None) -> list[str]:
        """The user ids in ``room`` (default: the caller's room), sorted.

        Raises:
            BadRequest: no room given and the caller is in none, or a player asked
                about a room they are not in.
        """
        own = self.where.get(ctx.session.id) if ctx.session is not None else None
        if room is None:
            room = own
            if room is None:
                raise BadRequest("chat.members: name a room, or join one")
        if not isinstance(room, str):
            raise BadRequest("chat.members: room is a string")
        if ctx.from_client and room != own:
            raise BadRequest("chat.members: a player may list only the room they are in")
        return self._members(room)

    @client_method
    def on_leave(self, ctx: Context) -> dict[str, str | None]:
        """Leave the session's room (announce ``chat.left``).

        Returns:
            ``{"room": the room left}``, or ``{"room": None}`` if it was in none.
        """
        session = self._session(ctx)
        room = self.where.get(session.id)
        if room is not None:
            self._refresh(session)
            self._leave(session.id)
        return {"room": room}

    @client_method
    @idempotent
    def on_echo(self, ctx: Context, **kwargs: Any) -> dict[str, Any]:
        """Return the keyword arguments (a round trip through the broker, for benchmarks)."""
        return kwargs

    # -- internals -------------------------------------------------------------

    def _session(self, ctx: Context) -> Session:
        session = ctx.session
        if session is None or not session.user_id:
            raise BadRequest(f"chat.{ctx.method}: only a logged-in client session may call it")
        # Kept lean: the props travelling with the request are not needed here.
        return Session(id=session.id, user_id=session.user_id, broker=session.broker)

    def _refresh(self, session: Session) -> None:
        # The session's latest request says where it is now.
        room = self.where.get(session.id)
        if room is not None:
            self.rooms[room][session.id]["session"] = session

    def _members(self, room: str) -> list[str]:
        return sorted({m["user"] for m in self.rooms.get(room, {}).values()})

    def _leave(self, session_id: str, *, tell_broker: bool = True) -> None:
        room = self.where.pop(session_id)
        members = self.rooms[room]
        member = members.pop(session_id)
        if tell_broker:
            self.sessions.leave(member["session"], channel_of(room))
        if members:
            self.sessions.broadcast(
                channel_of(room), "chat.left", {"room": room, "user": member["user"]}
            )
        else:
            # Nobody is left to tell.
            del self.rooms[room]
