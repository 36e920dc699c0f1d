"""The dispatcher's service handler (service ``fight``): allocate, arrived, release,
matchmake, status, results; and what it tells players when a fight is lost.

Logic calls ``get_service("fight").allocate(players=[...])`` and binds the
players' ``fight.*`` routes to the answer's ``instance``, or lets
:meth:`FightDispatcher.on_matchmake` do all of it. Fight processes call
``arrived`` (with the player's session) and ``release``. No method is a client
route: players reach the dispatcher only through their fight process's
``fight.matchmake``, which relays it with their session.

A draining dispatcher answers new work (``allocate``, ``matchmake``) with
``Unavailable`` while another instance of its service is registered: callers then
send the call there and stop picking this one (as with any stopping worker), while
its own fight processes still reach it to ``release``. The dispatcher follows the
session service's ``online`` events, so a player who resumed on another broker is
told of a lost fight there.

Operators (:data:`~mmo.logic.handler.OPERATOR_ROLES`) may drain one fight process
(``drain_process``: it takes no new fight, and is stopped once its fights are over), all
of them at once for fresh ones running the code now on disk (``recycle``: a reload), or
the dispatcher itself (the built-in ``ops_drain``: it then answers new work as a
draining one does, while its fights go on).
"""

from __future__ import annotations

import contextlib
from collections import deque
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from typing_extensions import override

from mmo.errors import Unavailable
from mmo.fight.errors import BadFight, PoolDraining
from mmo.fight.handler import moved_session, require_session
from mmo.fight.pool import Fight, FightPool
from mmo.logic.handler import (
    OPERATOR_ROLES,
    Context,
    Runtime,
    ServiceHandler,
    Session,
    callers,
    idempotent,
)
from mmo.logic.sessions import SESSION_SERVICE, resumed_to
from mmo.types import DelayedCall

__all__ = ["FightDispatcher"]

log = Logger()


def wait_budget(ctx: Context) -> float:
    """How long a call may wait and still answer before the caller's deadline.

    The deadline is counted from when the call was read here, so the answer leaves
    a tenth of the time (at most half a second) early: what the call spent queued
    and what the answer spends on its way back must fit in it.
    """
    remaining = ctx.remaining()
    return max(0.0, remaining - min(0.5, remaining * 0.1))


@dataclass(eq=False)
class _Seeker:
    session: Session
    deadline: float
    d: defer.Deferred[dict[str, Any]]
    timer: DelayedCall | None = None


class FightDispatcher(ServiceHandler):
    """Serves the fight pool to logic, fight processes and (through them) players.

    Args:
        runtime: the process around the handler.
        pool: the pool it serves (set by :func:`mmo.fight.service.make_fight_service`).
        worker_service: the service name of the fight processes.

    Pushes to players (route: body): ``fight.start``: ``{"fight_id", "instance",
    "players"}`` after matchmaking; ``fight.lost``: ``{"fight_id", "instance",
    "reason"}`` when their fight process died; ``fight.cancelled``: ``{"fight_id",
    "instance", "reason", "missing"}`` when not every player arrived in time.
    Events (pub-sub): ``lost`` and ``expired`` with the same bodies plus ``players``.
    """

    default_service = "fight"
    #: The route prefix bound at the brokers to the chosen fight process.
    route_prefix = "fight"
    #: Results of ended fights kept in memory (the latest).
    max_results = 1000

    def __init__(
        self,
        runtime: Runtime,
        pool: FightPool | None = None,
        worker_service: str = "fight-worker",
    ) -> None:
        super().__init__(runtime)
        self._pool = pool
        self.worker_service = worker_service
        self.results: deque[dict[str, Any]] = deque(maxlen=self.max_results)
        self._queues: dict[int, list[_Seeker]] = {}
        self._subscriptions: list[Any] = []

    @property
    def pool(self) -> FightPool:
        """The pool served."""
        assert self._pool is not None, "the dispatcher has no pool"
        return self._pool

    @pool.setter
    def pool(self, pool: FightPool) -> None:
        self._pool = pool

    # -- lifecycle -------------------------------------------------------------

    @override
    def start(self) -> Any:
        """Follow the session service's ``online`` events (resumed sessions)."""
        directory = getattr(self.runtime, "directory", None)
        if directory is not None:
            events = directory.get_service(SESSION_SERVICE, "PUB")
            self._subscriptions = [events.subscribe("online", self.session_online)]
        return None

    @override
    def stop(self) -> Any:
        """Stop following session events."""
        for subscription in self._subscriptions:
            subscription.unsubscribe()
        self._subscriptions = []
        return None

    def session_online(self, topic: str, event: Any) -> None:
        """A session resumed (session ``online`` event): what is pushed to it goes to its
        new broker."""
        moved = resumed_to(event)
        if moved is None:
            return
        session_id, broker = moved
        for fight in self.pool.fights.values():
            for player, session in fight.sessions.items():
                fight.sessions[player] = moved_session(session, session_id, broker)
        for queue in self._queues.values():
            for seeker in queue:
                seeker.session = moved_session(seeker.session, session_id, broker)

    def others_registered(self) -> bool:
        """Whether another instance of this service is in the registry view."""
        directory = getattr(self.runtime, "directory", None)
        if directory is None:
            return False
        return any(i.instance_id != self.instance_id for i in directory.view.get(self.service_name))

    def _elsewhere(self, failure: Failure) -> Failure:
        """While draining (stopping, or drained by an operator): new work goes to another
        instance, if there is one (callers resend a call answered ``Unavailable``, which
        ran nothing, and stop picking this instance); else the refusal stands
        (``PoolDraining``)."""
        draining = self.pool.draining or self.draining
        if failure.check(PoolDraining) and draining and self.others_registered():
            return Failure(Unavailable(f"{self.instance_id} is draining; ask another dispatcher"))
        return failure

    # -- logic's side ----------------------------------------------------------

    def on_allocate(
        self, ctx: Context, players: list[str], fight_id: str | None = None
    ) -> defer.Deferred[dict[str, Any]]:
        """Seats for ``players`` on the least-loaded fight process with room:
        ``{"fight_id", "instance", "players"}``. Waits (within the call's deadline) for
        a new process when all are full; ``RemoteError`` ``PoolFull`` if none came."""
        d = self.pool.allocate(players, fight_id, timeout=wait_budget(ctx))
        return d.addCallbacks(Fight.to_dict, self._elsewhere)

    def on_release(self, ctx: Context, fight_id: str, result: Any = None) -> bool:
        """Free the seats of an ended fight (``result`` is kept, see ``results``);
        whether it was known."""
        fight = self.pool.release(fight_id)
        if fight is None:
            return False
        if result is not None:
            self.results.append(
                {
                    "fight_id": fight_id,
                    "instance": fight.instance_id,
                    "players": list(fight.players),
                    "result": result,
                    "ended_at": self.clock.seconds(),
                }
            )
        return True

    @idempotent
    def on_status(self, ctx: Context) -> dict[str, Any]:
        """The pool: processes with state, load, room, fights, peak; counters; settings."""
        return {"instance": self.instance_id, "service": self.service_name, **self.pool.status()}

    @idempotent
    def on_results(self, ctx: Context, limit: int = 100) -> list[dict[str, Any]]:
        """The results of the latest ended fights (oldest first)."""
        return list(self.results)[-max(0, int(limit)) :] if limit else []

    @callers(*OPERATOR_ROLES)
    def on_drain_process(self, ctx: Context, instance: str, draining: bool = True) -> Any:
        """Drain the fight process ``instance`` (``draining``): the pool hands it no new
        fight, its fights go on, and it is stopped once it holds none (at once if it holds
        none now); or take it back (false): it takes fights again, if it still runs.

        Returns:
            ``{"instance", "draining", "state", "fights"}``.

        Raises:
            BadFight: no such process in this dispatcher's pool, or one that is stopping
                taken back.
        """
        return self.pool.drain_process(instance, draining)

    @callers(*OPERATOR_ROLES)
    def on_recycle(self, ctx: Context) -> dict[str, Any]:
        """Reload the fight logic (``mmo reload`` of this service): every fight process
        running now is drained, finishes its fights and is stopped; fresh processes,
        running the handler's code now on disk, take the new fights.

        Returns:
            ``{"instance", "recycled": [process ids], "fights": fights they still hold}``.
        """
        recycled = self.pool.recycle()
        held = sum(len(self.pool.processes[i].fights) for i in recycled if i in self.pool.processes)
        return {"instance": self.instance_id, "recycled": recycled, "fights": held}

    # -- the fight processes' side ---------------------------------------------

    def on_arrived(
        self,
        ctx: Context,
        fight_id: str,
        player: str | None = None,
        instance: str | None = None,
    ) -> dict[str, Any]:
        """A player reached their fight (``player`` defaults to the session's user);
        the session, if any, is kept to tell them should the fight be lost."""
        if player is None:
            player = require_session(ctx).user_id
        assert player is not None
        fight = self.pool.arrived(fight_id, player, ctx.session, instance)
        return {**fight.to_dict(), "arrived": sorted(fight.arrived)}

    # -- the players' side -----------------------------------------------------

    def on_matchmake(self, ctx: Context, size: int = 2) -> defer.Deferred[dict[str, Any]]:
        """Queue the caller's player for a fight of ``size``; once ``size`` are waiting,
        allocate, bind each one's ``fight.*`` routes to the fight process, push
        ``fight.start`` to each (after the binding, on the same ordered link) and
        answer each with ``{"fight_id", "instance", "players"}``."""
        session = require_session(ctx)
        if self.pool.draining or self.draining:
            return defer.fail(self._elsewhere(Failure(PoolDraining("the dispatcher is draining"))))
        if not isinstance(size, int) or isinstance(size, bool) or not 1 <= size <= self.pool.cap:
            raise BadFight(f"size must be an integer from 1 to {self.pool.cap}")
        queue = self._queues.setdefault(size, [])
        if any(s.session.user_id == session.user_id for s in queue):
            raise BadFight(f"{session.user_id!r} is already waiting for a fight")
        seeker = _Seeker(session, self.clock.seconds() + wait_budget(ctx), defer.Deferred())
        queue.append(seeker)
        if len(queue) >= size:
            group = queue[:size]
            del queue[:size]
            self._match(group)
        else:
            seeker.timer = self.clock.callLater(
                seeker.deadline - self.clock.seconds(), self._unmatched, size, seeker
            )
        return seeker.d

    def _unmatched(self, size: int, seeker: _Seeker) -> None:
        seeker.timer = None
        queue = self._queues.get(size, [])
        if seeker in queue:
            queue.remove(seeker)
            seeker.d.errback(BadFight(f"no fight of {size} players could be formed in time"))

    def _match(self, group: list[_Seeker]) -> None:
        for seeker in group:
            if seeker.timer is not None and seeker.timer.active():
                seeker.timer.cancel()
        sessions = {s.session.user_id or "": s.session for s in group}
        timeout = min(s.deadline for s in group) - self.clock.seconds()
        d = self.pool.allocate(list(sessions), timeout=timeout, sessions=sessions)

        def matched(fight: Fight) -> None:
            reply = fight.to_dict()
            for seeker in group:
                self.sessions.bind(seeker.session, self.route_prefix, fight.instance_id)
                self.sessions.push(seeker.session, f"{self.route_prefix}.start", reply)
            for seeker in group:
                seeker.d.callback(reply)

        def failed(failure: Failure) -> None:
            for seeker in group:
                seeker.d.errback(failure.value)

        d.addCallbacks(matched, failed)

    # -- what the pool reports (PoolListener) ----------------------------------

    def fight_lost(self, fight: Fight, reason: str) -> None:
        """Unbind the players' fight routes and push ``fight.lost`` to them."""
        body = {"fight_id": fight.fight_id, "instance": fight.instance_id, "reason": reason}
        self._tell_players(fight, "lost", body)
        self._publish("lost", {**body, "players": list(fight.players)})

    def fight_expired(self, fight: Fight) -> None:
        """Tell the fight process to forget the fight, and its players that it is off."""
        missing = sorted(set(fight.players) - fight.arrived)
        body = {
            "fight_id": fight.fight_id,
            "instance": fight.instance_id,
            "reason": "not every player arrived in time",
            "missing": missing,
        }
        d = self.get_service(self.worker_service).call(
            "expired", {"fight_id": fight.fight_id}, instance=fight.instance_id, timeout=2.0
        )
        d.addErrback(
            lambda f: log.info(
                "fight: could not tell {instance} that {id} expired: {e}",
                instance=fight.instance_id,
                id=fight.fight_id,
                e=f.value,
            )
        )
        self._tell_players(fight, "cancelled", body)
        self._publish("expired", {**body, "players": list(fight.players)})

    def _tell_players(self, fight: Fight, what: str, body: dict[str, Any]) -> None:
        for player, session in fight.sessions.items():
            # A player already placed in a newer fight keeps that fight's binding.
            if any(
                player in other.players and other is not fight
                for other in self.pool.fights.values()
            ):
                continue
            self.sessions.unbind(session, self.route_prefix)
            self.sessions.push(session, f"{self.route_prefix}.{what}", body)

    def _publish(self, topic: str, payload: dict[str, Any]) -> None:
        # Not serving yet (or any more): nobody can be subscribed.
        with contextlib.suppress(RuntimeError):
            self.publish(topic, payload)
