"""The dispatcher's bookkeeping: fight processes, their fights, reservations, waiters.

Everything here runs on one clock in one Twisted process and decides
synchronously: an allocation either reserves seats on a ready process at once
(so no two concurrent allocations can both see the same free seat) or queues a
waiter that is served, in order, when a process becomes ready or seats are
released. Processes are started and stopped through a :class:`Spawner`; the
pool learns that one is ready from the registry (:meth:`FightPool.process_ready`)
and that one died from its exit (``on_exit``) or, as a backup, from the
registry dropping it (:meth:`FightPool.process_down`). Processes a previous (or
another, dead) dispatcher started are taken over with :meth:`FightPool.adopt`, with
the fights they report, under the same maximum. Nothing here touches a socket, so
unit tests drive it with ``task.Clock`` and a fake spawner.

Terms: a process's *load* is the players of the fights it holds (reserved or
running); it has *room* while load < cap; a *spare* is a ready or starting
process with room, not drained.

An operator may drain one process (:meth:`FightPool.drain_process`): it takes no new
fight, its fights go on to their end, and once it holds none it is stopped (at once,
not after ``idle_timeout``); others are started in its place as the spare count
needs. Taken back before that, it takes fights again.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

from twisted.internet import defer, task
from twisted.logger import Logger

from mmo.fight.config import FightConfig
from mmo.fight.errors import BadFight, NotInFight, PoolDraining, PoolFull, UnknownFight
from mmo.telemetry.metrics import Metric, counter, gauge
from mmo.types import Clock, DelayedCall
from mmo.wire.gen.mmo.ttypes import Session

__all__ = [
    "READY",
    "STARTING",
    "STOPPING",
    "AdoptedHandle",
    "ChildHandle",
    "Fight",
    "FightPool",
    "FightProcess",
    "PoolListener",
    "Spawner",
]

log = Logger()

#: Spawned, not registered yet: counts as room to come, takes no fight yet.
STARTING = "starting"
#: Registered: takes fights while it has room.
READY = "ready"
#: Being stopped (idle, draining, or lost): takes no fight.
STOPPING = "stopping"

#: ``on_exit(instance_id, description)``: a spawned child has exited.
ExitCallback = Callable[[str, str], None]

_BACKOFF_MAX = 30.0


class ChildHandle(Protocol):
    """A spawned fight process, as the pool sees it."""

    @property
    def pid(self) -> int | None:
        """The process id, while it runs."""
        ...

    def terminate(self) -> defer.Deferred[None]:
        """Stop it gently (SIGTERM, SIGKILL after a while); fire once it has exited."""
        ...

    def kill(self) -> None:
        """Kill it at once (SIGKILL); its exit is reported through ``on_exit``."""
        ...


class AdoptedHandle(ChildHandle, Protocol):
    """A fight process another dispatcher started, as the pool sees it once adopted."""

    def exited(self) -> None:
        """The pool has seen it leave (the registry dropped it): fire ``terminate``'s Deferred."""
        ...


class Spawner(Protocol):
    """Starts fight processes."""

    def spawn(self, instance_id: str, on_exit: ExitCallback) -> ChildHandle:
        """Start a fight process registering as ``instance_id``; call ``on_exit`` when it ends."""
        ...


class PoolListener(Protocol):
    """What the pool tells the dispatcher about fights it ends on its own."""

    def fight_lost(self, fight: Fight, reason: str) -> None:
        """``fight`` died with its process (or was cut off by a shutdown)."""
        ...

    def fight_expired(self, fight: Fight) -> None:
        """``fight``'s players did not all arrive in time; its seats are free again."""
        ...


def _observe(d: defer.Deferred[Any]) -> defer.Deferred[None]:
    """A new Deferred firing (with None) when ``d`` fires, leaving ``d``'s result alone."""
    observer: defer.Deferred[None] = defer.Deferred()

    def fire(result: Any) -> Any:
        observer.callback(None)
        return result

    d.addBoth(fire)
    return observer


class _NoListener:
    def fight_lost(self, fight: Fight, reason: str) -> None:
        pass

    def fight_expired(self, fight: Fight) -> None:
        pass


@dataclass(eq=False)
class Fight:
    """One allocated fight.

    Attributes:
        fight_id: its id.
        instance_id: the fight process holding it.
        players: the players (user ids) it has seats for.
        created_at: clock time of the allocation.
        arrived: players the fight process has reported as arrived.
        sessions: the client sessions of players, as far as known (to tell them if it is lost).
    """

    fight_id: str
    instance_id: str
    players: tuple[str, ...]
    created_at: float
    arrived: set[str] = field(default_factory=set)
    sessions: dict[str, Session] = field(default_factory=dict)
    expiry: DelayedCall | None = field(default=None, repr=False)

    @property
    def claimed(self) -> bool:
        """Whether every player has arrived."""
        return self.arrived.issuperset(self.players)

    def to_dict(self) -> dict[str, Any]:
        """The fight as ``allocate`` answers it."""
        return {
            "fight_id": self.fight_id,
            "instance": self.instance_id,
            "players": list(self.players),
        }


@dataclass(eq=False)
class FightProcess:
    """One fight process of the pool.

    Attributes:
        instance_id: its registry instance id.
        number: its sequence number (``<prefix>-<number>``).
        handle: the running child.
        started_at: clock time it was spawned.
        state: ``starting``, ``ready`` or ``stopping``.
        fights: the fights it holds, by id.
        load: players of those fights.
        peak: the highest load it ever had.
        ready_at: clock time it registered.
        idle_since: clock time its last fight ended (None while it holds fights).
        drained: an operator drained it: it takes no new fight, and is stopped once
            it holds none.
    """

    instance_id: str
    number: int
    handle: ChildHandle
    started_at: float
    state: str = STARTING
    fights: dict[str, Fight] = field(default_factory=dict)
    load: int = 0
    peak: int = 0
    ready_at: float | None = None
    idle_since: float | None = None
    deregistered: bool = False
    adopted: bool = False
    drained: bool = False
    start_timer: DelayedCall | None = field(default=None, repr=False)
    stopped: defer.Deferred[None] | None = field(default=None, repr=False)


@dataclass(eq=False)
class _Waiter:
    players: tuple[str, ...]
    fight_id: str | None
    sessions: dict[str, Session]
    d: defer.Deferred[Fight]
    timeout: float
    timer: DelayedCall | None = None


class FightPool:
    """Fight processes and the fights on them, under a cap per process.

    Args:
        config: cap, spares, maximum, timeouts and the process name prefix.
        clock: the reactor (or a ``task.Clock``).
        spawner: starts the fight processes.
        listener: told of fights lost or expired (the dispatcher tells their players).
    """

    def __init__(
        self,
        config: FightConfig,
        clock: Clock,
        spawner: Spawner,
        listener: PoolListener | None = None,
    ) -> None:
        self.config = config
        self.cap = config.cap
        self.clock = clock
        self.spawner = spawner
        self.listener: PoolListener = listener or _NoListener()
        self.processes: dict[str, FightProcess] = {}
        self.fights: dict[str, Fight] = {}
        self.running = False
        self.draining = False
        self.counts = dict.fromkeys(
            (
                "spawned",
                "adopted",
                "failed",
                "crashed",
                "reaped",
                "allocated",
                "released",
                "expired",
                "lost",
                "recycled",
            ),
            0,
        )
        self._waiters: list[_Waiter] = []
        self._number = 0
        self._failures = 0
        self._spawn_after = 0.0
        self._retry: DelayedCall | None = None
        self._next_turn: DelayedCall | None = None
        self._loop: task.LoopingCall | None = None
        self._drained: defer.Deferred[None] | None = None
        self._stopped: defer.Deferred[None] | None = None
        self._drain_limit: DelayedCall | None = None
        #: Called with the instance id of each process that ended: its registry record,
        #: if it still has one (it was killed), must not outlive it.
        self.on_gone: Callable[[str], None] = lambda _instance_id: None
        #: Whether the cluster routes to the processes as this pool knows them: the
        #: dispatcher's registry view is fresh. While it is not (a cut network, healed
        #: or not), a process may have been dropped by the registry unknown to the pool:
        #: allocations wait (within their deadlines) instead of naming it.
        self.routable: Callable[[], bool] = lambda: True
        #: While True no process is started: the processes already running (a previous
        #: dispatcher's) are being asked for first, so that they count against the maximum.
        self.adopting = False

    # -- lifecycle -----------------------------------------------------------

    def start(self, *, adopting: bool = False) -> None:
        """Start the spares and the idle check.

        Args:
            adopting: take allocations (they wait) but start no process until
                :meth:`adopted_all`: the running processes are being adopted first.
        """
        self.running = True
        self.adopting = adopting
        self._loop = task.LoopingCall(self.tick)
        self._loop.clock = self.clock  # type: ignore[assignment]
        self._loop.start(min(1.0, max(0.05, self.config.idle_timeout / 4)), now=False)
        self.maintain()

    def adopted_all(self) -> None:
        """The processes found at start are adopted (or refused): start what is missing."""
        if self.adopting:
            self.adopting = False
            self._serve_waiters()
            self.maintain()

    def drain(self) -> defer.Deferred[None]:
        """Stop for good: refuse new fights, let running ones end (up to the drain
        timeout; the rest are reported lost), then stop every process.

        Fires once every fight process has exited.
        """
        if self._stopped is not None:
            return _observe(self._stopped)
        self.draining = True
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            self._cancel(waiter.timer)
            waiter.d.errback(PoolDraining("the fight dispatcher is shutting down"))
        self._cancel(self._retry)
        self._cancel(self._next_turn)
        self._drained = defer.Deferred()
        if self.fights:
            log.info(
                "fight: draining; waiting up to {limit:g}s for {n} fights to end",
                limit=self.config.drain_timeout,
                n=len(self.fights),
            )
            self._drain_limit = self.clock.callLater(self.config.drain_timeout, self._cut_off)
        self._stopped = self._drained.addCallback(self._stop_all)
        self._check_drained()
        return _observe(self._stopped)

    def _cut_off(self) -> None:
        self._drain_limit = None
        for fight in list(self.fights.values()):
            self._remove_fight(fight)
            self.counts["lost"] += 1
            self.listener.fight_lost(fight, "the fight dispatcher shut down before it ended")
        self._check_drained()

    def _check_drained(self) -> None:
        drained = self._drained
        if self.draining and not self.fights and drained is not None and not drained.called:
            self._cancel(self._drain_limit)
            drained.callback(None)

    def _stop_all(self, _: Any) -> defer.Deferred[None]:
        self.running = False
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        procs = list(self.processes.values())
        stops = [self._stop(proc, "the dispatcher is stopping") for proc in procs]
        return defer.DeferredList(stops, consumeErrors=True).addCallback(lambda _: None)

    # -- allocation ----------------------------------------------------------

    def allocate(
        self,
        players: Iterable[str],
        fight_id: str | None = None,
        *,
        timeout: float,
        sessions: Mapping[str, Session] | None = None,
    ) -> defer.Deferred[Fight]:
        """Reserve seats for ``players`` on the least-loaded ready process with room.

        When none has room the call waits (a process is started if the maximum
        allows) for at most ``timeout`` seconds, then fails with ``PoolFull``.
        Giving ``fight_id`` makes the call idempotent: the same id with the same
        players answers the fight already allocated.

        Raises (as a failed Deferred):
            BadFight: no players, too many for the cap, or repeated ones.
            PoolDraining: the dispatcher is shutting down.
            PoolFull: no room before the deadline.
        """
        try:
            group = self._check_players(players)
            if fight_id is not None and not (isinstance(fight_id, str) and fight_id):
                raise BadFight("fight_id must be a non-empty string")
        except BadFight:
            return defer.fail()
        if fight_id is not None:
            known = self.fights.get(fight_id)
            if known is not None:
                if known.players != group:
                    return defer.fail(BadFight(f"fight {fight_id!r} exists with other players"))
                return defer.succeed(known)
            if any(w.fight_id == fight_id for w in self._waiters):
                return defer.fail(BadFight(f"fight {fight_id!r} is being allocated"))
        if self.draining or not self.running:
            return defer.fail(PoolDraining("the fight dispatcher is not taking fights"))
        known_sessions = dict(sessions or {})
        proc = self._pick(len(group))
        if proc is not None:
            fight = self._reserve(proc, group, fight_id, known_sessions)
            self.maintain()  # that may have taken the last spare
            return defer.succeed(fight)
        if timeout <= 0:
            return defer.fail(self._full(len(group), 0.0))
        waiter = _Waiter(group, fight_id, known_sessions, defer.Deferred(), timeout)
        waiter.timer = self.clock.callLater(timeout, self._gave_up, waiter)
        self._waiters.append(waiter)
        self.maintain()
        return waiter.d

    def _check_players(self, players: Iterable[str]) -> tuple[str, ...]:
        if not isinstance(players, list | tuple):
            raise BadFight("players must be a list of player ids")
        group = tuple(players)
        if not group:
            raise BadFight("a fight needs at least one player")
        if not all(isinstance(p, str) and p for p in group):
            raise BadFight("players must be non-empty strings")
        if len(set(group)) != len(group):
            raise BadFight("a player appears twice")
        if len(group) > self.cap:
            raise BadFight(f"{len(group)} players do not fit one process (cap {self.cap})")
        return group

    def _full(self, seats: int, waited: float) -> PoolFull:
        alive = len(self.processes)
        return PoolFull(
            f"no fight process had room for {seats} players within {waited:g}s "
            f"(cap {self.cap}; {alive} of at most {self.config.max_processes} processes)"
        )

    def _gave_up(self, waiter: _Waiter) -> None:
        waiter.timer = None
        if waiter in self._waiters:
            self._waiters.remove(waiter)
            waiter.d.errback(self._full(len(waiter.players), waiter.timeout))
            # It may have been the reason for a spawn: spares are recounted on the next tick.

    def _pick(self, seats: int) -> FightProcess | None:
        if not self.routable():
            return None
        best: FightProcess | None = None
        for proc in self.processes.values():
            if proc.state != READY or proc.drained or self.cap - proc.load < seats:
                continue
            if best is None or (proc.load, proc.number) < (best.load, best.number):
                best = proc
        return best

    def _reserve(
        self,
        proc: FightProcess,
        players: tuple[str, ...],
        fight_id: str | None,
        sessions: dict[str, Session],
    ) -> Fight:
        fight_id = fight_id or uuid.uuid4().hex[:16]
        now = self.clock.seconds()
        fight = Fight(fight_id, proc.instance_id, players, now, sessions=sessions)
        proc.load += len(players)
        # The one invariant everything else serves.
        assert proc.load <= self.cap, f"{proc.instance_id} over the cap"
        proc.peak = max(proc.peak, proc.load)
        proc.idle_since = None
        proc.fights[fight_id] = fight
        self.fights[fight_id] = fight
        fight.expiry = self.clock.callLater(self.config.reservation_timeout, self._expire, fight_id)
        self.counts["allocated"] += 1
        return fight

    def _serve_waiters(self) -> None:
        served: list[tuple[_Waiter, Fight]] = []
        for waiter in list(self._waiters):
            proc = self._pick(len(waiter.players))
            if proc is None:
                continue
            self._waiters.remove(waiter)
            self._cancel(waiter.timer)
            served.append(
                (waiter, self._reserve(proc, waiter.players, waiter.fight_id, waiter.sessions))
            )
        # Callers run after the bookkeeping is complete.
        for waiter, fight in served:
            waiter.d.callback(fight)

    # -- what fight processes report ----------------------------------------

    def arrived(
        self,
        fight_id: str,
        player: str,
        session: Session | None = None,
        instance: str | None = None,
    ) -> Fight:
        """Record that ``player`` reached ``fight_id`` (on ``instance``, if said).

        Once every player has arrived, the reservation no longer expires.

        Raises:
            UnknownFight: no such fight (released, expired, lost, or never allocated).
            NotInFight: the player has no seat in it, or it is held by another process.
        """
        fight = self.fights.get(fight_id) if isinstance(fight_id, str) else None
        if fight is None:
            raise UnknownFight(f"no fight {fight_id!r}")
        if instance is not None and instance != fight.instance_id:
            raise NotInFight(f"fight {fight_id!r} is on {fight.instance_id}, not {instance}")
        if player not in fight.players:
            raise NotInFight(f"{player!r} is not a player of fight {fight_id!r}")
        fight.arrived.add(player)
        if session is not None:
            fight.sessions[player] = session
        if fight.claimed:
            self._cancel(fight.expiry)
            fight.expiry = None
        return fight

    def release(self, fight_id: str) -> Fight | None:
        """Free the seats of a fight that ended; the fight, or None if it was not known."""
        fight = self.fights.get(fight_id) if isinstance(fight_id, str) else None
        if fight is None:
            return None
        self._remove_fight(fight)
        self.counts["released"] += 1
        self._after_seats_freed()
        return fight

    def _expire(self, fight_id: str) -> None:
        fight = self.fights.get(fight_id)
        if fight is None or fight.claimed:
            return
        fight.expiry = None
        log.info(
            "fight: reservation {id} on {instance} expired ({arrived} of {n} players arrived)",
            id=fight_id,
            instance=fight.instance_id,
            arrived=len(fight.arrived),
            n=len(fight.players),
        )
        self._remove_fight(fight)
        self.counts["expired"] += 1
        self.listener.fight_expired(fight)
        self._after_seats_freed()

    def _remove_fight(self, fight: Fight) -> None:
        self.fights.pop(fight.fight_id, None)
        self._cancel(fight.expiry)
        fight.expiry = None
        proc = self.processes.get(fight.instance_id)
        if proc is not None and proc.fights.pop(fight.fight_id, None) is not None:
            proc.load -= len(fight.players)
            if not proc.fights:
                proc.idle_since = self.clock.seconds()

    def _after_seats_freed(self) -> None:
        self._serve_waiters()
        self._reap_drained()
        self._check_drained()

    # -- what operators ask ------------------------------------------------------

    def drain_process(self, instance_id: str, draining: bool = True) -> dict[str, Any]:
        """Drain ``instance_id`` (``draining``): no new fight goes to it, its fights go on,
        and it is stopped once it holds none (at once if it holds none now); or take it
        back (``draining`` false): it takes fights again, if it still runs.

        Returns:
            ``{"instance", "draining", "state", "fights"}``.

        Raises:
            BadFight: no such process in this pool, or taken back while it is stopping.
        """
        proc = self.processes.get(instance_id) if isinstance(instance_id, str) else None
        if proc is None:
            raise BadFight(f"no fight process {instance_id!r} in this pool")
        if not isinstance(draining, bool):
            raise BadFight("draining must be true or false")
        if not draining and proc.state == STOPPING:
            raise BadFight(f"{instance_id} is stopping: it cannot take fights again")
        if draining != proc.drained:
            log.info(
                "fight: {id} {what} ({n} fights held)",
                id=instance_id,
                what="drained: it takes no new fight" if draining else "takes fights again",
                n=len(proc.fights),
            )
        proc.drained = draining
        if draining:
            self._reap_drained()
            self.maintain()  # it no longer counts as a spare
        else:
            self._serve_waiters()
        return {
            "instance": instance_id,
            "draining": proc.drained,
            "state": proc.state,
            "fights": len(proc.fights),
        }

    def recycle(self) -> list[str]:
        """Drain every process running now (finish-then-reap: each takes no new fight
        and is stopped once its fights are over) and start fresh ones, which load the
        fight handler's code as it is on disk now, as the spare count and waiting
        allocations need; the ids of the processes drained.

        A process still starting is drained too (it may have loaded the old code).
        """
        recycled = [
            proc.instance_id
            for proc in self.processes.values()
            if proc.state != STOPPING and not proc.drained
        ]
        log.info("fight: recycling the pool: {ids} drained", ids=recycled)
        for instance_id in recycled:
            self.processes[instance_id].drained = True
        self.counts["recycled"] += len(recycled)
        self._reap_drained()
        self.maintain()
        return recycled

    def _reap_drained(self) -> None:
        """Stop the drained processes that hold no fight."""
        for proc in list(self.processes.values()):
            if proc.drained and proc.state == READY and not proc.fights:
                self.counts["reaped"] += 1
                self._stop(proc, "drained, and its fights are over")

    # -- what the registry and the children report ----------------------------

    def process_ready(self, instance_id: str, pid: int | None = None) -> None:
        """``instance_id`` registered (``pid`` from its record): it takes fights from now."""
        proc = self.processes.get(instance_id)
        if proc is not None and proc.deregistered and proc.stopped is None:
            # Registered again: the goodbye was not its own (an old process of the same
            # name said it), so it takes fights again.
            log.info("fight: {id} registered again", id=instance_id)
            proc.deregistered = False
            proc.state = READY
            self._serve_waiters()
            return
        if proc is None or proc.state != STARTING:
            return
        if pid is not None and proc.handle.pid is not None and pid != proc.handle.pid:
            log.warn(
                "fight: {id} registered with pid {pid}, but ours is {ours}; ignored",
                id=instance_id,
                pid=pid,
                ours=proc.handle.pid,
            )
            return
        now = self.clock.seconds()
        proc.state = READY
        proc.ready_at = proc.idle_since = now
        self._cancel(proc.start_timer)
        self._failures = 0
        log.info("fight: {id} ready in {s:.2f}s", id=instance_id, s=now - proc.started_at)
        self._serve_waiters()
        self.maintain()

    def process_down(self, instance_id: str, reason: str) -> None:
        """The registry dropped ``instance_id``: a hung or vanished process is killed and
        its fights reported lost at once; one that deregistered takes no new fights."""
        proc = self.processes.get(instance_id)
        if proc is not None and proc.adopted:
            # No child of ours: leaving the registry is all there is to see of its end.
            if reason != "deregistered" and proc.state == READY:
                self.counts["crashed"] += 1
                proc.handle.kill()
            self._exited(instance_id, f"left the registry ({reason})")
            return
        if proc is None or proc.state != READY:
            return
        proc.state = STOPPING
        if reason == "deregistered":
            # It is stopping by itself: its exit reports what it still held.
            log.warn("fight: {id} deregistered on its own", id=instance_id)
            proc.deregistered = True
        else:
            log.warn(
                "fight: {id} dropped by the registry ({why}); killing it",
                id=instance_id,
                why=reason,
            )
            self.counts["crashed"] += 1
            self._lose_fights(proc, f"fight process {instance_id} stopped answering ({reason})")
            proc.handle.kill()
        self._check_drained()
        self.maintain()

    def _exited(self, instance_id: str, description: str) -> None:
        proc = self.processes.pop(instance_id, None)
        if proc is None:
            return
        self._cancel(proc.start_timer)
        self.on_gone(instance_id)
        if proc.adopted:
            cast(AdoptedHandle, proc.handle).exited()
        if proc.state == STARTING:
            self._failures += 1
            self.counts["failed"] += 1
            delay = min(_BACKOFF_MAX, 0.5 * 2 ** (self._failures - 1))
            self._spawn_after = self.clock.seconds() + delay
            log.warn(
                "fight: {id} {how} before it was ready; next start in {delay:.1f}s",
                id=instance_id,
                how=description,
                delay=delay,
            )
        elif proc.state == READY:
            self.counts["crashed"] += 1
            log.warn(
                "fight: {id} {how} holding {n} fights",
                id=instance_id,
                how=description,
                n=len(proc.fights),
            )
        else:
            log.info("fight: {id} stopped ({how})", id=instance_id, how=description)
        self._lose_fights(proc, f"fight process {instance_id} {description}")
        self._check_drained()
        self.maintain()

    def _lose_fights(self, proc: FightProcess, reason: str) -> None:
        for fight in list(proc.fights.values()):
            self._remove_fight(fight)
            self.counts["lost"] += 1
            self.listener.fight_lost(fight, reason)

    # -- adoption ----------------------------------------------------------------

    @property
    def room_to_adopt(self) -> int:
        """How many more processes may be adopted now without passing the maximum."""
        if self.draining or not self.running:
            return 0
        return max(0, self.config.max_processes - len(self.processes))

    def adopt(
        self, instance_id: str, handle: AdoptedHandle, fights: Iterable[Mapping[str, Any]]
    ) -> bool:
        """Take over ``instance_id``, a running fight process this pool did not start
        (its dispatcher died, or this dispatcher was restarted), with the ``fights`` it
        reports: ``{"fight_id", "players", "arrived", "sessions"}``.

        It is ready at once; its load is the players of those fights (past the cap if
        its previous dispatcher had a larger one: it then takes nothing until below).
        A fight whose players have not all arrived gets a fresh reservation timeout.
        Its end is learnt from the registry (:meth:`process_down`): it is no child.

        Returns:
            Whether it was adopted: False past the maximum, while draining, or when
            one of its fights is already known on another process.
        """
        known = self.processes.get(instance_id)
        if known is not None:
            return known.handle is handle
        if self.room_to_adopt <= 0:
            return False
        books = [self._adopted_fight(instance_id, f) for f in fights]
        if any(f.fight_id in self.fights for f in books):
            return False
        now = self.clock.seconds()
        number = self._number_of(instance_id)
        proc = FightProcess(instance_id, number, handle, now, state=READY, adopted=True)
        proc.ready_at = now
        for fight in books:
            proc.fights[fight.fight_id] = fight
            proc.load += len(fight.players)
            self.fights[fight.fight_id] = fight
            if not fight.claimed:
                fight.expiry = self.clock.callLater(
                    self.config.reservation_timeout, self._expire, fight.fight_id
                )
        proc.peak = proc.load
        proc.idle_since = None if proc.fights else now
        self.processes[instance_id] = proc
        self.counts["adopted"] += 1
        log.info(
            "fight: adopted {id} (pid {pid}) with {n} fights, load {load}/{cap}",
            id=instance_id,
            pid=handle.pid,
            n=len(proc.fights),
            load=proc.load,
            cap=self.cap,
        )
        self._serve_waiters()
        self.maintain()
        return True

    def _adopted_fight(self, instance_id: str, report: Mapping[str, Any]) -> Fight:
        players = tuple(str(p) for p in report.get("players") or ())
        sessions = {
            str(player): s if isinstance(s, Session) else Session(**dict(s))
            for player, s in (report.get("sessions") or {}).items()
        }
        return Fight(
            str(report["fight_id"]),
            instance_id,
            players,
            self.clock.seconds(),
            arrived={str(p) for p in report.get("arrived") or ()},
            sessions=sessions,
        )

    def _number_of(self, instance_id: str) -> int:
        """The sequence number of ``<our prefix>-<n>`` (so new ones never reuse it), else 0."""
        prefix = f"{self.config.process_prefix or 'fight'}-"
        tail = instance_id[len(prefix) :] if instance_id.startswith(prefix) else ""
        if tail.isdigit():
            self._number = max(self._number, int(tail))
            return int(tail)
        return 0

    # -- keeping the pool the right size ---------------------------------------

    def maintain(self) -> None:
        """Start the processes that waiting allocations and the spare count need: one
        per reactor turn (the next turn starts the next), so that starting many never
        holds the loop (its registry heartbeats, calls, answers) for long."""
        if self.draining or not self.running or self.adopting:
            return
        if self._next_turn is not None and self._next_turn.active():
            return  # a process started this turn; the next turn looks again
        now = self.clock.seconds()
        if now < self._spawn_after:
            self._retry_later()
            return
        # Seats to come: ready processes' free room, starting processes' whole cap,
        # handed to the waiters in the order they would be served.
        taking = [p for p in self.processes.values() if not p.drained]
        rooms = [self.cap - p.load for p in taking if p.state == READY]
        rooms += [self.cap for p in taking if p.state == STARTING]
        new = 0
        for waiter in self._waiters:
            seats = len(waiter.players)
            best = max(range(len(rooms)), key=rooms.__getitem__, default=None)
            if best is not None and rooms[best] >= seats:
                rooms[best] -= seats
            else:
                rooms.append(self.cap - seats)
                new += 1
        spares = sum(1 for room in rooms if room > 0)
        new += max(0, self.config.min_spare - spares)
        starting = sum(1 for p in taking if p.state == STARTING)
        wanted = min(
            new,
            self.config.max_processes - len(self.processes),
            # The next ones start as these register (process_ready calls back here).
            self.config.max_starting - starting,
        )
        if wanted <= 0:
            return
        if self._spawn():
            self._next_turn = self.clock.callLater(0, self.maintain)
        else:
            self._retry_later()

    def _retry_later(self) -> None:
        if self._retry is None or not self._retry.active():
            delay = max(0.0, self._spawn_after - self.clock.seconds())
            self._retry = self.clock.callLater(delay, self.maintain)

    def _spawn(self) -> bool:
        self._number += 1
        instance_id = f"{self.config.process_prefix or 'fight'}-{self._number}"
        while instance_id in self.processes:  # an adopted one of that name
            self._number += 1
            instance_id = f"{self.config.process_prefix or 'fight'}-{self._number}"
        try:
            handle = self.spawner.spawn(instance_id, self._exited)
        except Exception:
            log.failure("fight: cannot start {id}", id=instance_id)
            self._failures += 1
            self.counts["failed"] += 1
            self._spawn_after = self.clock.seconds() + min(
                _BACKOFF_MAX, 0.5 * 2 ** (self._failures - 1)
            )
            return False
        now = self.clock.seconds()
        proc = FightProcess(instance_id, self._number, handle, now)
        proc.start_timer = self.clock.callLater(
            self.config.start_timeout, self._start_timed_out, instance_id
        )
        self.processes[instance_id] = proc
        self.counts["spawned"] += 1
        log.info("fight: starting {id} (pid {pid})", id=instance_id, pid=handle.pid)
        return True

    def _start_timed_out(self, instance_id: str) -> None:
        proc = self.processes.get(instance_id)
        if proc is not None and proc.state == STARTING:
            proc.start_timer = None
            log.warn(
                "fight: {id} did not register within {s:g}s; killing it",
                id=instance_id,
                s=self.config.start_timeout,
            )
            proc.handle.kill()

    def tick(self) -> None:
        """Stop processes idle for ``idle_timeout`` beyond the spare count; top the pool up."""
        if self.draining or not self.running:
            return
        self._serve_waiters()  # those that waited for the registry (see routable)
        if not self._waiters:
            now = self.clock.seconds()
            spares = sum(
                1
                for p in self.processes.values()
                if p.state in (READY, STARTING) and p.load < self.cap and not p.drained
            )
            idle = sorted(
                (
                    p
                    for p in self.processes.values()
                    if p.state == READY
                    and not p.drained
                    and not p.fights
                    and p.idle_since is not None
                    and now - p.idle_since >= self.config.idle_timeout
                ),
                key=lambda p: (p.idle_since, -p.number),
            )
            for proc in idle:
                if spares - 1 < self.config.min_spare:
                    break
                spares -= 1
                self.counts["reaped"] += 1
                self._stop(proc, f"idle for {now - (proc.idle_since or now):.1f}s")
        self._reap_drained()
        self.maintain()

    def _stop(self, proc: FightProcess, why: str) -> defer.Deferred[None]:
        if proc.stopped is None:
            log.info("fight: stopping {id} ({why})", id=proc.instance_id, why=why)
            proc.state = STOPPING
            proc.stopped = proc.handle.terminate()
        return _observe(proc.stopped)

    # -- views -----------------------------------------------------------------

    @property
    def waiting(self) -> int:
        """Allocations waiting for room."""
        return len(self._waiters)

    def metrics(self) -> Iterator[Metric]:
        """The pool's processes, fights and reservations (a metrics source)."""
        states = Counter(p.state for p in self.processes.values())
        yield gauge(
            "mmo_fight_processes",
            "Fight processes of this pool, by state (starting, ready, stopping).",
            ("state",),
            [((state,), states.get(state, 0)) for state in (STARTING, READY, STOPPING)],
        )
        claimed = sum(1 for f in self.fights.values() if f.claimed)
        yield gauge(
            "mmo_fight_fights",
            "Fights handed out, by state (reserved: a player has not arrived yet; claimed).",
            ("state",),
            [(("reserved",), len(self.fights) - claimed), (("claimed",), claimed)],
        )
        yield gauge(
            "mmo_fight_players",
            "Players of the pool's fights.",
            (),
            sum(p.load for p in self.processes.values()),
        )
        yield gauge("mmo_fight_waiting", "Allocations waiting for room.", (), len(self._waiters))
        yield counter(
            "mmo_fight_pool_events",
            "What the pool did, by event (spawned, adopted, failed, crashed, reaped, "
            "allocated, released, expired, lost).",
            ("event",),
            [((event,), n) for event, n in self.counts.items()],
        )

    def status(self) -> dict[str, Any]:
        """The pool as ``mmo fights`` shows it."""
        now = self.clock.seconds()
        procs = sorted(self.processes.values(), key=lambda p: p.number)
        return {
            "cap": self.cap,
            "min_spare": self.config.min_spare,
            "max_processes": self.config.max_processes,
            "draining": self.draining,
            "fights": len(self.fights),
            # Handed out, and some player has not arrived yet (expires unclaimed).
            "reserved": sum(1 for fight in self.fights.values() if not fight.claimed),
            "players": sum(p.load for p in procs),
            "waiting": len(self._waiters),
            "counts": dict(self.counts),
            "processes": [
                {
                    "instance": p.instance_id,
                    "pid": p.handle.pid,
                    "state": p.state,
                    "adopted": p.adopted,
                    "drained": p.drained,
                    "load": p.load,
                    "room": max(0, self.cap - p.load)
                    if p.state != STOPPING and not p.drained
                    else 0,
                    "fights": len(p.fights),
                    "peak": p.peak,
                    "age": round(now - p.started_at, 3),
                    "idle": None if p.idle_since is None else round(now - p.idle_since, 3),
                }
                for p in procs
            ],
        }

    @staticmethod
    def _cancel(call: DelayedCall | None) -> None:
        if call is not None and call.active():
            call.cancel()
