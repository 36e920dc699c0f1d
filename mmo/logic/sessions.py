"""Reaching game clients from logic: pushes, channels, kicks, route bindings.

Every operation goes to the broker that holds the session (``Session.broker``,
an instance of the ``broker`` service), one-way, on the same link as calls, so
that what one process sends to one broker arrives in the order it was sent.
A channel broadcast is sent once to each broker, which fans it out to the
members it holds: the message crosses the internal network once per broker,
never once per member.

A session of another cluster (joined through a bridge, docs/bridge.md) names its broker
``CLUSTER:ID``: what is addressed to it goes to a bridge of this cluster (service
``bridge``), which relays it; and every broadcast is also sent to one bridge (the same
while its link is up), which passes those on shared channels to the other clusters.

A player's broker may not be in this process's registry view yet (the broker started
a moment ago and the player came through it at once: the broker is live, the view is
behind). What is addressed to such a broker waits for it, in order, up to
:data:`HOLD_FOR` seconds, then is dropped and counted (``undeliverable``): a
``chat.join`` answered "ok" is not silently lost.
"""

from __future__ import annotations

from collections import defaultdict, deque
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from twisted.logger import Logger

from mmo.types import DelayedCall
from mmo.wire import encode, encode_value
from mmo.wire.gen.mmo.ttypes import Change, Instance, Session

if TYPE_CHECKING:
    from mmo.logic.client import Directory

__all__ = [
    "ALL",
    "BRIDGE_SERVICE",
    "BROKER_SERVICE",
    "HOLD_FOR",
    "HOLD_MAX",
    "RESUME_PURPOSE",
    "SESSION_SERVICE",
    "Session",
    "Sessions",
    "encode_body",
    "resumed_to",
]

log = Logger()


def resumed_to(event: Any) -> tuple[str, str] | None:
    """``(session id, broker)`` of a session service ``online`` event (a session resumed,
    maybe on another broker: pushes to it go there now), or None for a malformed one."""
    if not isinstance(event, dict):
        return None
    session_id, broker = event.get("session_id"), event.get("broker")
    if isinstance(session_id, str) and isinstance(broker, str):
        return session_id, broker
    return None


#: The service brokers register under.
BROKER_SERVICE = "broker"
#: The service the bridges to other clusters register under (:mod:`mmo.bridge`).
BRIDGE_SERVICE = "bridge"
#: The service that keeps the session records brokers resume from (:mod:`mmo.sessions`).
SESSION_SERVICE = "session"
#: The purpose resume tokens are signed for (:func:`mmo.data.tokens.verify`): the session
#: service signs them, brokers check them.
RESUME_PURPOSE = "resume"
#: The error the session service raises for a session it cannot resume (unknown, ended,
#: or not its latest token): brokers answer it RESUME_FAILED, anything else UNAVAILABLE.
RESUME_REFUSED = "ResumeFailed"
#: The channel every session is in.
ALL = "*"
#: Seconds an operation for a broker not (yet) in the registry view waits for it.
HOLD_FOR = 10.0
#: Most operations waiting for brokers at once (past it, new ones are dropped).
HOLD_MAX = 10_000


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
        #: Operations dropped: for no broker, or for one that did not appear in time.
        self.undeliverable = 0
        #: Operations waiting for their broker to appear, by broker, in order.
        self._held: dict[str, deque[tuple[float, str, bytes, dict[str, Any]]]] = {}
        self._held_count = 0
        self._expiry: DelayedCall | None = None
        directory.view.listen(self._changed)

    def _to_broker(self, broker: str | None, method: str, body: bytes, **header: Any) -> bool:
        """Send one operation to ``broker``; hold it if the broker is not in the view yet.

        Returns whether it was sent or is held (False: dropped).
        """
        if not broker:
            return self._drop(broker, method, "the session names no broker")
        if ":" in broker:
            # A session of another cluster: a bridge relays it.
            if self._to_bridge(method, body, broker=broker, **header):
                return True
            return self._drop(broker, method, "no bridge to its cluster")
        if broker not in self._held and self.directory.send(
            BROKER_SERVICE, method, body, instance=broker, **header
        ):
            return True
        if self._held_count >= HOLD_MAX:
            return self._drop(broker, method, f"{HOLD_MAX} operations wait already")
        clock = self.directory.clock
        self._held.setdefault(broker, deque()).append(
            (clock.seconds() + HOLD_FOR, method, body, header)
        )
        self._held_count += 1
        if self._expiry is None or not self._expiry.active():
            self._expiry = clock.callLater(HOLD_FOR, self._expire)
        return True

    def _to_bridge(self, method: str, body: bytes, **header: Any) -> bool:
        """Send one operation to a bridge of this cluster (if there is one): the same
        bridge each time while its link is up, so that what this process sends keeps its
        order; the next one at once when it drops (a killed bridge's link drops before
        the registry says so)."""
        bridges = self.directory.view.get(BRIDGE_SERVICE)
        if not bridges:
            return False
        first = min(i.instance_id for i in bridges)
        return self.directory.send(BRIDGE_SERVICE, method, body, prefer=first, **header) is not None

    def _drop(self, broker: str | None, method: str, why: str) -> bool:
        self.undeliverable += 1
        log.warn(
            "sessions: {method} for broker {broker} dropped: {why} ({n} dropped so far)",
            method=method,
            broker=broker,
            why=why,
            n=self.undeliverable,
        )
        return False

    def _changed(self, change: int, instance: Instance, reason: str) -> None:
        """A broker came into view: send what waits for it, in order."""
        if change != Change.UP or instance.service_name != BROKER_SERVICE:
            return
        held = self._held.pop(instance.instance_id, None)
        while held:
            _, method, body, header = held.popleft()
            self._held_count -= 1
            if not self.directory.send(
                BROKER_SERVICE, method, body, instance=instance.instance_id, **header
            ):  # it went again at once: what is left would follow a gap, so it goes too
                self._drop(instance.instance_id, method, "the broker went again")

    def _expire(self) -> None:
        """Drop what waited :data:`HOLD_FOR` seconds; come back for the rest."""
        now = self.directory.clock.seconds()
        for broker, held in list(self._held.items()):
            while held and held[0][0] <= now:
                self._held_count -= 1
                self._drop(broker, held.popleft()[1], f"not in the registry for {HOLD_FOR:g} s")
            if not held:
                del self._held[broker]
        if self._held:
            first = min(held[0][0] for held in self._held.values())
            self._expiry = self.directory.clock.callLater(max(0.0, first - now), self._expire)

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
        data = encode_body(body)
        # A bridge (if any) passes the shared channels' broadcasts to the other clusters.
        self._to_bridge("broadcast", data, **header)
        return self.directory.send_all(BROKER_SERVICE, "broadcast", data, **header)

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
