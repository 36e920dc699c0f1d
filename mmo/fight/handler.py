"""The base class of a fight process's handler: :class:`FightHandler`.

A fight process is a plain ``mmo-worker`` the dispatcher spawns with a
``FightHandler`` subclass. Its players' ``fight.*`` routes are bound to it at
their brokers, so their requests reach it with ``ctx.session`` set. It tells
the dispatcher when a player arrives (:meth:`FightHandler.arrive`, which also
hands the dispatcher the player's session, so that a crash of this process can
be reported to them) and when a fight ends (:meth:`FightHandler.release_fight`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from twisted.internet import defer
from twisted.logger import Logger

from mmo.errors import Forbidden
from mmo.logic.handler import Context, Runtime, ServiceHandler, Session, callers, client_method

__all__ = ["FightHandler", "FightSettings", "require_session"]

log = Logger()

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
    """

    dispatcher: str = "fight"
    dispatcher_id: str = ""
    cap: int = 0


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
    route; ``expired`` is the dispatcher's alone.

    Attributes:
        dispatcher_service: the dispatcher's service name (setting ``dispatcher``).
        dispatcher_id: the dispatcher that spawned this process (setting ``dispatcher-id``);
            calls go to it alone, since the fights it allocated are in its books.
        cap: players this process may hold (setting ``cap``), for information.
    """

    default_service = "fight-worker"
    Settings: ClassVar[type] = FightSettings
    settings: FightSettings

    def __init__(self, runtime: Runtime) -> None:
        super().__init__(runtime)
        self.dispatcher_service = self.settings.dispatcher
        self.dispatcher_id: str | None = self.settings.dispatcher_id or None
        self.cap = self.settings.cap or None

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
        return self.call_dispatcher(
            "arrived",
            {"fight_id": fight_id, "player": session.user_id, "instance": self.instance_id},
            session=session,
            timeout=timeout,
        )

    def release_fight(self, fight_id: str, result: Any = None) -> defer.Deferred[Any]:
        """Tell the dispatcher ``fight_id`` has ended (with its ``result``): its seats are free.

        Failures are logged, not raised: the fight is over either way.
        """
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
        self.fight_cancelled(fight_id, "not every player arrived in time")

    def fight_cancelled(self, fight_id: str, reason: str) -> None:
        """Forget ``fight_id`` (override: the dispatcher has told its players already)."""
