"""Reaching game clients from logic: pushes, channels, kicks, route bindings.

Every operation goes to the broker that holds the session (``Session.broker``,
an instance of the ``broker`` service), one-way, on the same link as calls, so
that what one process sends to one broker arrives in the order it was sent.
A channel broadcast is sent once to each broker, which fans it out to the
members it holds: the message crosses the internal network once per broker,
never once per member.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from twisted.logger import Logger

from mmo.wire import encode, encode_value
from mmo.wire.gen.mmo.ttypes import Session

if TYPE_CHECKING:
    from mmo.logic.client import Directory

__all__ = [
    "ALL",
    "BROKER_SERVICE",
    "RESUME_PURPOSE",
    "SESSION_SERVICE",
    "Session",
    "Sessions",
    "encode_body",
]

log = Logger()

#: The service brokers register under.
BROKER_SERVICE = "broker"
#: The service that keeps the session records brokers resume from (:mod:`mmo.sessions`).
SESSION_SERVICE = "session"
#: The purpose resume tokens are signed for (:func:`mmo.data.tokens.verify`): the session
#: service signs them, brokers check them.
RESUME_PURPOSE = "resume"
#: The channel every session is in.
ALL = "*"


def encode_body(body: Any) -> bytes:
    """A push body on the wire: a Thrift struct as is, anything else as a ``Value``."""
    if hasattr(body, "thrift_spec"):
        return encode(body)
    return encode_value(body)


class Sessions:
    """What logic does to client sessions; each method returns at once (one-way).

    Args:
        directory: the process's directory (it holds the links to brokers).
        instance_id: this process's instance id (the default target of :meth:`bind`).
    """

    def __init__(self, directory: Directory, instance_id: str) -> None:
        self.directory = directory
        self.instance_id = instance_id
        #: Operations addressed to a broker that is not live (counted, then dropped).
        self.undeliverable = 0

    def _to_broker(self, broker: str | None, method: str, body: bytes, **header: Any) -> bool:
        if broker and self.directory.send(BROKER_SERVICE, method, body, instance=broker, **header):
            return True
        self.undeliverable += 1
        log.debug(
            "sessions: broker {broker} not live; {method} dropped", broker=broker, method=method
        )
        return False

    def push(self, sessions: Session | Iterable[Session], route: str, body: Any) -> int:
        """Push ``body`` on ``route`` to one session or several; return the brokers reached."""
        if isinstance(sessions, Session):
            sessions = [sessions]
        by_broker: dict[str | None, list[str]] = defaultdict(list)
        for session in sessions:
            by_broker[session.broker].append(session.id)
        data = encode_body(body)
        return sum(
            self._to_broker(broker, "push", data, targets=ids, route=route)
            for broker, ids in by_broker.items()
        )

    def broadcast(
        self, channel: str, route: str, body: Any, *, sender: Session | None = None
    ) -> int:
        """Push to every member of ``channel``, once per broker; return the brokers reached.

        Args:
            sender: the session whose request caused the broadcast (a chat message's
                author): brokers hold each sender to a budget of broadcasts per second,
                so that one player cannot multiply traffic (docs/security.md). Each
                channel also has a budget of bytes per second at each broker.
        """
        header: dict[str, Any] = {"channel": channel, "route": route}
        if sender is not None:
            header["session"] = Session(id=sender.id)
        return self.directory.send_all(BROKER_SERVICE, "broadcast", encode_body(body), **header)

    def push_all(self, route: str, body: Any) -> int:
        """Push to every session on every broker."""
        return self.broadcast(ALL, route, body)

    def join(self, session: Session, channel: str) -> bool:
        """Add ``session`` to ``channel`` (kept by its broker, restored on resume)."""
        return self._to_broker(session.broker, "join", b"", targets=[session.id], channel=channel)

    def leave(self, session: Session, channel: str) -> bool:
        """Remove ``session`` from ``channel``."""
        return self._to_broker(session.broker, "leave", b"", targets=[session.id], channel=channel)

    def kick(self, session: Session, reason: str = "") -> bool:
        """End ``session``: the client gets a KICK with ``reason`` and is disconnected."""
        return self._to_broker(session.broker, "kick", encode_value(reason), targets=[session.id])

    def bind(self, session: Session, prefix: str, instance_id: str | None = None) -> bool:
        """Send the session's ``prefix.*`` requests to one instance (default: this one)."""
        return self._to_broker(
            session.broker,
            "bind",
            encode_value(prefix),
            targets=[session.id],
            instance_id=instance_id or self.instance_id,
        )

    def unbind(self, session: Session, prefix: str) -> bool:
        """Route the session's ``prefix.*`` requests by load again."""
        return self._to_broker(session.broker, "unbind", encode_value(prefix), targets=[session.id])

    def set_props(self, session: Session, **props: Any) -> bool:
        """Set session properties (``None`` deletes one); they travel with later requests."""
        return self._to_broker(session.broker, "set", encode_value(props), targets=[session.id])
