"""The base class of a fight process's handler: :class:`FightHandler`.

A fight process is a plain ``mmo-worker`` the dispatcher spawns with a
``FightHandler`` subclass. Its players' ``fight.*`` routes are bound to it at
their brokers, so their requests reach it with ``ctx.session`` set. It tells
the dispatcher when a player arrives (:meth:`FightHandler.arrive`, which also
hands the dispatcher the player's session, so that a crash of this process can
be reported to them) and when a fight ends (:meth:`FightHandler.release_fight`).

It keeps its own book of the fights players arrived in (:attr:`FightHandler.held`),
so that a dispatcher that did not start it (a restarted one, or another one once its
own died) can adopt it with its fights (``adopt``). It follows the session service's
``online`` events, so that a player who resumed on another broker is reached there.
An orphan (its dispatcher gone from the registry) that no dispatcher adopts within
``orphan-timeout`` stops by itself.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass, field
from typing import Any, ClassVar

from twisted.internet import defer, task
from twisted.logger import Logger
from typing_extensions import override

from mmo.errors import Forbidden
from mmo.logic.handler import Context, Runtime, ServiceHandler, Session, callers, client_method
from mmo.logic.sessions import SESSION_SERVICE, resumed_to

__all__ = ["FightHandler", "FightSettings", "require_session"]

log = Logger()

#: Seconds a dispatcher must have been gone or out of reach before this process says so.
ORPHAN_NOTICE = 2.0

#: Deadline of the calls a fight process makes to its dispatcher, in seconds.
DISPATCHER_TIMEOUT = 3.0


@dataclass(frozen=True)
class FightSettings:
    """What a fight process knows of its dispatcher: the dispatcher passes them when it
    spawns the process (``--set dispatcher=... --set dispatcher-id=... --set cap=...``).

    A fight handler with settings of its own subclasses this (a frozen dataclass too)
    and names the subclass as its ``Settings``.

    Attributes:
        dispatcher: the dispatcher's service name.
        dispatcher_id: the dispatcher that spawned this process ("" if unknown: any).
        cap: players this process may hold (0 if unknown), for information.
        orphan_timeout: seconds this process waits, once its dispatcher is gone from the
            registry, for a dispatcher to adopt it; then it stops (0: never).
    """

    dispatcher: str = "fight"
    dispatcher_id: str = ""
    cap: int = 0
    orphan_timeout: float = 60.0


@dataclass(eq=False)
class HeldFight:
    """A fight this process holds, as far as its players arrived (what it tells an adopter).

    Attributes:
        fight_id: its id.
        players: its players (all seats, arrived or not).
        arrived: the players who arrived here.
        sessions: their sessions (kept on their current broker).
    """

    fight_id: str
    players: list[str]
    arrived: set[str] = field(default_factory=set)
    sessions: dict[str, Session] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """What ``adopt`` answers for it."""
        return {
            "fight_id": self.fight_id,
            "players": list(self.players),
            "arrived": sorted(self.arrived),
            "sessions": {
                player: {"id": s.id, "user_id": s.user_id, "broker": s.broker}
                for player, s in self.sessions.items()
            },
        }


def moved_session(session: Session, session_id: str, broker: str) -> Session:
    """``session`` on ``broker`` if it is session ``session_id`` (it resumed there), else as is."""
    if session.id != session_id or session.broker == broker:
        return session
    return Session(id=session.id, user_id=session.user_id, broker=broker, props=session.props)


def require_session(ctx: Context) -> Session:
    """The client session a call is made for.

    Raises:
        Forbidden: the call carries no session (it did not come from a player).
    """
    if ctx.session is None or not ctx.session.user_id:
        raise Forbidden(f"{ctx.method} is a player's request: it needs a client session")
    return ctx.session


class FightHandler(ServiceHandler):
    """Base of the handler a fight process runs (``--handler`` of ``mmo-fight``).

    Subclasses add the game's ``on_<name>`` methods (``join``, ``attack``, ...),
    marking those players call with :func:`~mmo.logic.client_method`, call
    :meth:`arrive` when a player joins a fight and :meth:`release_fight` when the
    fight ends, and may override :meth:`fight_cancelled`. ``matchmake`` is a client
    route; ``expired`` is the dispatcher's alone. A subclass that overrides
    :meth:`start` or :meth:`stop` calls the base's too (resumed sessions, orphanhood).

    Attributes:
        dispatcher_service: the dispatcher's service name (setting ``dispatcher``).
        dispatcher_id: the dispatcher that spawned this process (setting ``dispatcher-id``);
            calls go to it alone, since the fights it allocated are in its books.
        cap: players this process may hold (setting ``cap``), for information.
    """

    default_service = "fight-worker"
    Settings: ClassVar[type] = FightSettings
    settings: FightSettings

    #: Seconds between two looks at whether this process's dispatcher is still registered.
    orphan_check_interval = 1.0

    def __init__(self, runtime: Runtime) -> None:
        super().__init__(runtime)
        self.dispatcher_service = self.settings.dispatcher
        self.dispatcher_id: str | None = self.settings.dispatcher_id or None
        self.cap = self.settings.cap or None
        #: The fights players arrived in here, by id (until released or cancelled).
        self.held: dict[str, HeldFight] = {}
        #: Clock time since which this process's dispatcher is not registered (None: it is).
        self.orphaned_since: float | None = None
        self._orphan_told = False
        #: Whether a dispatcher adopted this process (it is then no child of that one).
        self.adopted = False
        self._parent = os.getppid()
        self._subscriptions: list[Any] = []
        self._orphan_check: task.LoopingCall | None = None

    # -- lifecycle ---------------------------------------------------------------

    @override
    def start(self) -> Any:
        """Follow the session service's ``online`` events; watch for the dispatcher's loss."""
        directory = getattr(self.runtime, "directory", None)
        if directory is None:
            return None
        events = directory.get_service(SESSION_SERVICE, "PUB")
        self._subscriptions = [events.subscribe("online", self._session_online)]
        if self.settings.orphan_timeout > 0:
            self._orphan_check = task.LoopingCall(self.check_orphaned)
            self._orphan_check.clock = self.clock  # type: ignore[assignment]
            self._orphan_check.start(self.orphan_check_interval, now=False)
        return None

    @override
    def stop(self) -> Any:
        """Stop following events and watching."""
        for subscription in self._subscriptions:
            subscription.unsubscribe()
        self._subscriptions = []
        if self._orphan_check is not None and self._orphan_check.running:
            self._orphan_check.stop()
        return None

    def _session_online(self, topic: str, event: Any) -> None:
        moved = resumed_to(event)
        if moved is not None:
            session_id, broker = moved
            for fight in self.held.values():
                for player, session in fight.sessions.items():
                    fight.sessions[player] = moved_session(session, session_id, broker)
            self.session_moved(session_id, broker)

    def session_moved(self, session_id: str, broker: str) -> None:
        """Session ``session_id`` resumed on ``broker`` (override to update the sessions a
        subclass keeps, e.g. with :func:`moved_session`): pushes must go there now."""

    def dispatcher_registered(self) -> bool:
        """Whether this process's dispatcher is in the registry view (True if not known)."""
        directory = getattr(self.runtime, "directory", None)
        if directory is None or not self.dispatcher_id or not directory.view.synced:
            return True
        return any(
            i.instance_id == self.dispatcher_id for i in directory.view.get(self.dispatcher_service)
        )

    def dispatcher_gone(self) -> bool:
        """Whether this process's dispatcher is gone: the one that started it died (this
        process was handed to another parent), or it is not in the registry view."""
        if not self.adopted and self.dispatcher_id and os.getppid() != self._parent:
            return True
        return not self.dispatcher_registered()

    def dispatcher_unreachable(self) -> bool:
        """Whether this process's connection to its dispatcher is down: how a dispatcher
        that died with the registry (which then cannot say so) shows."""
        directory: Any = getattr(self.runtime, "directory", None)
        links = directory.links(self.dispatcher_service) if directory is not None else {}
        return bool(self.dispatcher_id) and links.get(self.dispatcher_id) is False

    def check_orphaned(self) -> None:
        """Stop this process (SIGTERM: the worker drains) once its dispatcher has been gone
        (or out of reach: a connection coming up or dropping for a moment is forgiven) for
        ``orphan-timeout`` seconds without another adopting it."""
        if not (self.dispatcher_gone() or self.dispatcher_unreachable()):
            self.orphaned_since = None
            return
        now = self.clock.seconds()
        if self.orphaned_since is None:
            self.orphaned_since = now
            self._orphan_told = False
        elif not self._orphan_told and now - self.orphaned_since >= ORPHAN_NOTICE:
            # Said once it lasts (a link still connecting at start is no orphan).
            self._orphan_told = True
            log.warn(
                "fight: dispatcher {id} is gone; waiting up to {s:g}s to be adopted",
                id=self.dispatcher_id,
                s=self.settings.orphan_timeout,
            )
        if now - self.orphaned_since >= self.settings.orphan_timeout:
            log.warn(
                "fight: no dispatcher adopted this process in {s:g}s; stopping ({n} fights held)",
                s=self.settings.orphan_timeout,
                n=len(self.held),
            )
            self.orphaned_since = None
            os.kill(os.getpid(), signal.SIGTERM)

    def call_dispatcher(
        self,
        method: str,
        kwargs: dict[str, Any],
        *,
        session: Session | None = None,
        timeout: float = DISPATCHER_TIMEOUT,
    ) -> defer.Deferred[Any]:
        """Call the dispatcher that spawned this process (any instance if not known)."""
        proxy = self.get_service(self.dispatcher_service)
        return proxy.call(
            method, kwargs, session=session, instance=self.dispatcher_id, timeout=timeout
        )

    def arrive(self, ctx: Context, fight_id: str) -> defer.Deferred[dict[str, Any]]:
        """Tell the dispatcher that the caller's player reached ``fight_id`` here.

        Fires with ``{"fight_id", "instance", "players", "arrived"}``; fails with
        ``RemoteError`` of type ``UnknownFight`` or ``NotInFight`` when the
        player has no seat in that fight on this process.
        """
        session = require_session(ctx)
        timeout = min(DISPATCHER_TIMEOUT, max(0.1, ctx.remaining()))
        d = self.call_dispatcher(
            "arrived",
            {"fight_id": fight_id, "player": session.user_id, "instance": self.instance_id},
            session=session,
            timeout=timeout,
        )

        def booked(info: dict[str, Any]) -> dict[str, Any]:
            held = self.held.get(fight_id)
            if held is None:
                held = self.held[fight_id] = HeldFight(fight_id, list(info["players"]))
            held.arrived.update(info.get("arrived") or ())
            held.sessions[session.user_id or ""] = session
            return info

        return d.addCallback(booked)

    def release_fight(self, fight_id: str, result: Any = None) -> defer.Deferred[Any]:
        """Tell the dispatcher ``fight_id`` has ended (with its ``result``): its seats are free.

        Failures are logged, not raised: the fight is over either way.
        """
        self.held.pop(fight_id, None)
        d = self.call_dispatcher("release", {"fight_id": fight_id, "result": result})
        d.addErrback(
            lambda f: log.warn("fight: release of {id} failed: {e}", id=fight_id, e=f.value)
        )
        return d

    @client_method
    def on_matchmake(self, ctx: Context, size: int = 2) -> defer.Deferred[Any]:
        """A player asks for a fight of ``size`` players: relayed to the dispatcher with the
        session (the dispatcher pairs players, binds their ``fight.*`` here or elsewhere,
        and pushes ``fight.start``)."""
        session = require_session(ctx)
        return self.call_dispatcher(
            "matchmake", {"size": size}, session=session, timeout=max(0.1, ctx.remaining())
        )

    @callers("fight")
    def on_expired(self, ctx: Context, fight_id: str) -> None:
        """The dispatcher dropped ``fight_id`` because not every player arrived in time."""
        if self.dispatcher_id and ctx.caller != self.dispatcher_id:
            raise Forbidden("expired is the call of the dispatcher that spawned this process")
        self.held.pop(fight_id, None)
        self.fight_cancelled(fight_id, "not every player arrived in time")

    @callers("fight")
    def on_adopt(self, ctx: Context) -> dict[str, Any]:
        """A dispatcher takes this process over (its own dispatcher, restarted, or another
        one while its own is not registered): from now on this process reports to it.

        Answers ``{"instance", "pid", "cap", "fights"}``: the fights held here (see
        :class:`HeldFight`), for the adopter's books.

        Raises:
            Forbidden: this process's dispatcher is another one, still registered.
        """
        caller = ctx.caller
        if caller != self.dispatcher_id and not self.dispatcher_gone():
            raise Forbidden(f"{self.instance_id} belongs to dispatcher {self.dispatcher_id}")
        if caller != self.dispatcher_id:
            log.info(
                "fight: adopted by dispatcher {new} (was {old}) with {n} fights",
                new=caller,
                old=self.dispatcher_id,
                n=len(self.held),
            )
        self.dispatcher_id = caller
        self.adopted = True
        self.orphaned_since = None
        return {
            "instance": self.instance_id,
            "pid": os.getpid(),
            "cap": self.cap or 0,
            "fights": [fight.to_dict() for fight in self.held.values()],
        }

    def fight_cancelled(self, fight_id: str, reason: str) -> None:
        """Forget ``fight_id`` (override: the dispatcher has told its players already)."""
