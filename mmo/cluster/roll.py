"""A rolling reload: the supervised instances of one service replaced, a batch at a time,
by processes running the code now on disk, without a failed call.

For each batch: start the new processes (same arguments, a new name: ``echo-1`` becomes
``echo-1.r1``, then ``echo-1.r2``...), wait until each is listed in the registry and
ready, drain the old ones (``ops_drain``: callers stop picking them and resend what they
answer ``Unavailable``), give callers a moment to see it, then stop the old ones
(SIGTERM: they deregister and finish their calls in flight) and supervise the new ones
in their place. A new process that exits or is not ready in time stops the roll: it is
stopped, and the old ones, not drained yet, keep serving.

Instances another supervisor runs (systemd) are restarted in place instead, one at a time
after a drain (:class:`RestartRoll`, ``mmo reload SERVICE --restart CMD``).

A fight pool (a supervised ``mmo-fight`` of the service named) is reloaded its own way,
finish-then-reap: its dispatcher drains every fight process (each finishes its fights,
then stops) and starts fresh ones (``FightDispatcher.on_recycle``).

:class:`Roll` holds the sequence; what it acts on is behind two small interfaces
(:class:`Supervisor`, :class:`Registry`), which the cluster implements
(:mod:`mmo.cluster.control`) and a unit test fakes.
"""

from __future__ import annotations

import re
from typing import Any, Protocol

from twisted.internet import defer, task
from twisted.logger import Logger

from mmo.errors import MmoError, RemoteError
from mmo.types import Clock, InlineCallbacks

__all__ = ["Registry", "RestartRoll", "Restarter", "Roll", "RollError", "Supervisor", "next_name"]

log = Logger()

_GENERATION = re.compile(r"^(?P<base>.+)\.r(?P<n>\d+)$")


def next_name(name: str) -> str:
    """The name of the process that replaces ``name``: ``echo-1`` -> ``echo-1.r1``,
    ``echo-1.r1`` -> ``echo-1.r2``."""
    match = _GENERATION.match(name)
    if match is None:
        return f"{name}.r1"
    return f"{match['base']}.r{int(match['n']) + 1}"


class RollError(MmoError):
    """A rolling reload stopped: the message says which child and why (its callers get
    it as an error of type ``RollError``; the server logs no traceback for it)."""

    code = RemoteError.code


class Supervisor(Protocol):
    """What a roll needs of the process supervisor."""

    def candidates(self, service: str) -> list[Any]:
        """The supervised children serving ``service`` (in their start order)."""

    def pools(self, service: str) -> list[Any]:
        """The supervised fight dispatchers of service ``service``: their pools' fight
        processes are what a reload of ``service`` replaces."""

    def instance_of(self, child: Any) -> str:
        """The instance id ``child`` registers as."""

    def spawn(self, old: Any) -> Any:
        """Start (not yet supervise) a new child like ``old``, named after it."""

    def exited(self, child: Any) -> bool:
        """Whether ``child``'s process has exited."""

    def output_tail(self, child: Any) -> str:
        """The last lines ``child`` printed."""

    def discard(self, child: Any) -> defer.Deferred[Any]:
        """Stop a new child that will not be kept."""

    def replace(self, old: Any, new: Any) -> defer.Deferred[Any]:
        """Stop ``old`` (gently) and supervise ``new`` in its place."""


class Registry(Protocol):
    """What a roll needs of the cluster's registry."""

    def ready(self, service: str, instance_id: str) -> defer.Deferred[bool]:
        """Whether ``instance_id`` is listed under ``service`` and ready to serve."""

    def drain(self, service: str, instance_id: str, draining: bool = True) -> defer.Deferred[Any]:
        """Drain ``instance_id`` (``ops_drain(draining)``: false takes it back)."""

    def recycle(self, service: str, instance_id: str) -> defer.Deferred[dict[str, Any]]:
        """Recycle the pool of dispatcher ``instance_id`` (its ``recycle()``)."""

    def instances(self, service: str) -> list[str]:
        """The instance ids listed under ``service``, sorted."""

    def pid(self, service: str, instance_id: str) -> int | None:
        """The process id ``instance_id`` registered (its meta ``pid``), if listed."""


class Restarter(Protocol):
    """Restarts one instance in place (the supervisor that runs it: systemd...)."""

    def restart(self, instance_id: str) -> defer.Deferred[Any]:
        """Restart ``instance_id``'s process; fire once the command is done.

        Raises (through the Deferred):
            RollError: the restart failed (its output says why).
        """


class _Steps:
    """What both kinds of reload share: the registry, the clock and their timings.

    Args:
        registry: the registry and the instances' drain.
        clock: the reactor's clock.
        ready_timeout: seconds a new (or restarted) process has to be listed and ready.
        settle: seconds between draining an instance and stopping it (for callers to
            see the drain in the registry).
        poll: seconds between checks of a new process.
    """

    def __init__(
        self,
        registry: Registry,
        clock: Clock,
        *,
        ready_timeout: float = 30.0,
        settle: float = 1.5,
        poll: float = 0.2,
    ) -> None:
        self.registry = registry
        self.clock = clock
        self.ready_timeout = ready_timeout
        self.settle = settle
        self.poll = poll

    def _pause(self, seconds: float) -> defer.Deferred[None]:
        return task.deferLater(self.clock, seconds, lambda: None)  # type: ignore[arg-type]


class RestartRoll(_Steps):
    """A rolling reload of instances another supervisor runs (``mmo reload SERVICE
    --restart CMD``: systemd units, say): one at a time, drain the instance, give callers
    a moment to see it, restart it in place (same instance id, the code on disk now), and
    wait until it is listed again with a new process and ready; then the next. A restart
    that fails, or a process not ready in time, stops the roll there (the instance is
    taken back: if it still runs, it serves again).

    Unlike :class:`Roll` the capacity is one instance short while it restarts, and a
    service needs two instances at least: the others serve while one restarts.

    Args:
        registry: the registry and the instances' drain.
        restarter: restarts an instance.
        clock: the reactor's clock.
        timings: ``ready_timeout``, ``settle``, ``poll`` (see :class:`_Steps`).
    """

    def __init__(
        self, registry: Registry, restarter: Restarter, clock: Clock, **timings: float
    ) -> None:
        super().__init__(registry, clock, **timings)
        self.restarter = restarter

    @defer.inlineCallbacks
    def run(self, service: str) -> InlineCallbacks[dict[str, Any]]:
        """Restart every instance of ``service``; fire with ``{"service", "restarted"}``.

        Raises (through the Deferred):
            RollError: fewer than two instances, or one whose restart failed or that was
                not ready in time (named, with what was restarted before it).
        """
        instances = self.registry.instances(service)
        if len(instances) < 2:
            raise RollError(
                f"{service!r} has {len(instances)} instance(s): restarting in place needs two "
                "at least (the others serve while one restarts)"
            )
        restarted: list[str] = []
        for instance_id in instances:
            before = self.registry.pid(service, instance_id)
            try:
                yield self.registry.drain(service, instance_id)
                yield self._pause(self.settle)
                yield self.restarter.restart(instance_id)
                yield self._ready_again(service, instance_id, before)
            except Exception as e:
                done = f" (restarted before: {restarted})" if restarted else ""
                log.error("reload of {service} stopped: {e}{done}", service=service, e=e, done=done)
                try:  # if it still runs, it serves again
                    yield self.registry.drain(service, instance_id, draining=False)
                except Exception as undrain:
                    log.warn("could not take {id} back: {e}", id=instance_id, e=undrain)
                raise RollError(f"{e}{done}") from e
            restarted.append(instance_id)
            log.info("reload of {service}: {id} restarted", service=service, id=instance_id)
        return {"service": service, "restarted": restarted}

    @defer.inlineCallbacks
    def _ready_again(self, service: str, instance_id: str, before: int | None) -> Any:
        deadline = self.clock.seconds() + self.ready_timeout
        while True:
            pid = self.registry.pid(service, instance_id)
            if pid is not None and pid != before:
                ready = yield self.registry.ready(service, instance_id)
                if ready:
                    return
            if self.clock.seconds() >= deadline:
                raise RollError(
                    f"{instance_id} was not listed again, ready, with a new process within "
                    f"{self.ready_timeout:g} s of its restart"
                )
            yield self._pause(self.poll)


class Roll(_Steps):
    """Replaces the instances of a service, ``batch`` at a time (see the module).

    Args:
        supervisor: the children.
        registry: the registry and the instances' drain.
        clock: the reactor's clock.
        timings: ``ready_timeout``, ``settle``, ``poll`` (see :class:`_Steps`).
    """

    def __init__(
        self, supervisor: Supervisor, registry: Registry, clock: Clock, **timings: float
    ) -> None:
        super().__init__(registry, clock, **timings)
        self.supervisor = supervisor
        #: The service being rolled now, if any (one roll at a time).
        self.rolling: str | None = None

    @defer.inlineCallbacks
    def run(self, service: str, batch: int = 1) -> InlineCallbacks[dict[str, Any]]:
        """Roll ``service``; fire with ``{"service", "replaced": [[old, new], ...]}``.

        Raises (through the Deferred):
            RollError: nothing to roll, a roll under way, or a new process that exited or
                was not ready in time (the roll stops there; what was replaced stays so).
        """
        if batch < 1:
            raise RollError(f"batch must be at least 1, not {batch}")
        if self.rolling is not None:
            raise RollError(f"a reload of {self.rolling!r} is under way")
        olds = self.supervisor.candidates(service)
        pools = [] if olds else self.supervisor.pools(service)
        if not olds and not pools:
            raise RollError(f"no supervised mmo-worker or mmo-fight serves {service!r}")
        if pools:
            return (yield self._recycle(service, pools))
        self.rolling = service
        replaced: list[list[str]] = []
        try:
            for start in range(0, len(olds), batch):
                group = olds[start : start + batch]
                yield self._batch(service, group, replaced)
        except RollError as e:
            log.error("cluster: reload of {service} stopped: {e}", service=service, e=e)
            raise
        finally:
            self.rolling = None
        log.info(
            "cluster: reload of {service} done: {replaced}", service=service, replaced=replaced
        )
        return {"service": service, "replaced": replaced}

    @defer.inlineCallbacks
    def _recycle(self, service: str, pools: list[Any]) -> InlineCallbacks[dict[str, Any]]:
        """A fight pool's reload: each dispatcher drains its fight processes, which finish
        their fights and stop, and starts fresh ones (finish-then-reap); the dispatchers
        themselves stay. Fires with ``{"service", "recycled": [process ids], "fights"}``
        (what the old processes still hold) without waiting for those fights to end."""
        recycled: list[str] = []
        fights = 0
        for pool in pools:
            instance_id = self.supervisor.instance_of(pool)
            try:
                answer = yield self.registry.recycle(service, instance_id)
            except Exception as e:
                raise RollError(f"{instance_id} could not recycle its pool: {e}") from e
            recycled += answer["recycled"]
            fights += answer["fights"]
        log.info(
            "cluster: reload of {service}: fight processes {ids} finish their {n} fights "
            "and stop; fresh ones take new fights",
            service=service,
            ids=recycled,
            n=fights,
        )
        return {"service": service, "recycled": recycled, "fights": fights}

    @defer.inlineCallbacks
    def _batch(self, service: str, olds: list[Any], replaced: list[list[str]]) -> Any:
        sup = self.supervisor
        news = [sup.spawn(old) for old in olds]
        waits = [self.wait_ready(service, new) for new in news]
        results = yield defer.DeferredList(waits, consumeErrors=True)
        errors = [str(outcome.value) for ok, outcome in results if not ok]
        if errors:
            yield defer.DeferredList([sup.discard(new) for new in news], consumeErrors=True)
            done = f" (replaced before: {replaced})" if replaced else ""
            raise RollError("; ".join(errors) + done)
        pairs = list(zip(olds, news, strict=True))
        ids = [[sup.instance_of(old), sup.instance_of(new)] for old, new in pairs]
        for old, _ in pairs:
            try:
                yield self.registry.drain(service, sup.instance_of(old))
            except Exception as e:  # it is stopped anyway: SIGTERM deregisters and drains
                log.warn(
                    "cluster: could not drain {old} before stopping it: {e}",
                    old=sup.instance_of(old),
                    e=e,
                )
        yield self._pause(self.settle)
        yield defer.gatherResults([sup.replace(old, new) for old, new in pairs], consumeErrors=True)
        replaced.extend(ids)

    @defer.inlineCallbacks
    def wait_ready(self, service: str, new: Any) -> InlineCallbacks[None]:
        """Fire once the new child ``new`` is listed under ``service`` and ready.

        Raises (through the Deferred):
            RollError: it exited, or was not ready within ``ready_timeout``.
        """
        sup = self.supervisor
        instance_id = sup.instance_of(new)
        deadline = self.clock.seconds() + self.ready_timeout
        while True:
            if sup.exited(new):
                raise RollError(
                    f"{instance_id} exited before it was ready; its output ends with:\n"
                    f"{sup.output_tail(new)}"
                )
            ready = yield self.registry.ready(service, instance_id)
            if ready:
                return
            if self.clock.seconds() >= deadline:
                raise RollError(
                    f"{instance_id} was not ready within {self.ready_timeout:g} s; its output "
                    f"ends with:\n{sup.output_tail(new)}"
                )
            yield self._pause(self.poll)
