"""The service tree of the fight dispatcher: a worker serving :class:`FightDispatcher`
plus the pool of fight processes it spawns.

Start order: ZeroMQ context, directory (registry view), the dispatcher's worker
(serves and registers as ``fight``), the pool (starts the spares). Stop order is
the reverse, so a graceful stop first drains the pool (no new fights; running
ones may end and still call ``release``; then the children are stopped), and
only then deregisters and closes the dispatcher's sockets.

At start the pool starts no process until the fight processes already registered
have been asked to be adopted (``adopt``: those of a previous run of this
dispatcher, or of a dispatcher of the same service that is gone); later, when a
dispatcher of the service leaves the registry, its processes are asked again.
The books of an adopted process are what it answers: the fights its players
arrived in.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from twisted.application.service import Service
from twisted.internet import defer, task
from twisted.logger import Logger
from typing_extensions import override

from mmo.errors import MmoError
from mmo.fight.config import FightConfig
from mmo.fight.dispatcher import FightDispatcher
from mmo.fight.pool import FightPool, Spawner
from mmo.fight.spawner import AdoptedProcess, ProcessSpawner, runs_instance
from mmo.logic.client import Directory
from mmo.logic.links import BATCH_META
from mmo.logic.runtime import WorkerRuntime, WorkerService, worker_telemetry
from mmo.logic.server import HandlerServer
from mmo.net import addresses
from mmo.registry import (
    Change,
    Instance,
    Registration,
    default_instance_id,
    make_instance,
    pid_of,
)
from mmo.service import OrderedMultiService
from mmo.zmq import ZmqContextService

__all__ = ["PoolService", "make_fight_service"]

log = Logger()


class PoolService(Service):
    """Runs a :class:`FightPool`: feeds it the registry's news of its processes,
    publishes its size in the dispatcher's registry record, drains it when stopped.

    Args:
        pool: the pool.
        directory: the dispatcher's directory (its registry view tells who is ready).
        registration: the dispatcher's registration (its meta shows the pool's size).
        worker_service: the service name the fight processes register under.
        service: the dispatcher's service name (its other instances' processes may be
            adopted when they leave).
        instance_id: the dispatcher's instance id.
        adopt_wait: seconds the start waits for the registry view before it adopts.
    """

    #: After a dispatcher of the service leaves, its processes are asked this many seconds
    #: later (each may see it leave a moment after this one does, and refuse until then).
    readopt_after = (0.5, 1.5, 3.5, 7.5)

    def __init__(
        self,
        pool: FightPool,
        directory: Directory,
        registration: Registration,
        worker_service: str,
        *,
        service: str = "fight",
        instance_id: str = "",
        adopt_wait: float = 5.0,
    ) -> None:
        self.pool = pool
        self.directory = directory
        self.registration = registration
        self.worker_service = worker_service
        self.service = service
        self.instance_id = instance_id
        self.adopt_wait = adopt_wait
        self._meta: dict[str, Any] = {}
        self._loop: task.LoopingCall | None = None
        self._asking: set[str] = set()
        #: Processes that refused (another live dispatcher's): not asked again on their
        #: every registry change, only when a dispatcher leaves.
        self._refused: set[str] = set()
        self.directory.view.listen(self._changed)
        pool.on_gone = lambda iid: registration.forget(worker_service, iid)
        view = directory.view
        pool.routable = lambda: view.fresh

    @override
    def startService(self) -> None:
        """Start the pool (no process yet), adopt the fight processes already running,
        then let the pool start what is missing; and the meta updates."""
        super().startService()
        self.pool.start(adopting=True)
        view = self.directory.view
        d = view.wait_for(lambda: view.synced and view.warm, self.adopt_wait)
        d.addErrback(lambda _: log.warn("fight: registry view not ready; adopting what it has"))
        d.addCallback(lambda _: self._sweep())
        d.addBoth(lambda _: self._adopted_all())
        self._loop = task.LoopingCall(self._update_meta)
        self._loop.clock = self.pool.clock  # type: ignore[assignment]
        self._loop.start(1.0, now=True)

    def _adopted_all(self) -> None:
        self.pool.adopted_all()
        # The processes it started may be registered already (a fake registry is quick).
        for instance in self.directory.view.get(self.worker_service):
            if instance.instance_id in self.pool.processes:
                self._changed(Change.UP, instance, "registered")

    def _sweep(self) -> defer.Deferred[Any]:
        """Ask every fight process the view lists and the pool lacks to be adopted."""
        asks = [
            self._ask(instance, sweeping=True)
            for instance in self.directory.view.get(self.worker_service)
            if instance.instance_id not in self.pool.processes
        ]
        return defer.DeferredList(asks, consumeErrors=True)

    def _ask(self, instance: Instance, *, sweeping: bool = False) -> defer.Deferred[None]:
        iid = instance.instance_id
        pid = pid_of(instance)
        if (
            iid in self._asking
            or iid in self.pool.processes
            or (iid in self._refused and not sweeping)
            or pid is None
            or not runs_instance(pid, iid)  # not on this machine: no signal could stop it
            or self.pool.room_to_adopt - len(self._asking) <= 0
        ):
            return defer.succeed(None)
        self._asking.add(iid)
        proxy = self.directory.get_service(self.worker_service)
        d = proxy.call("adopt", {}, instance=iid, timeout=3.0)

        def answered(reply: dict[str, Any]) -> None:
            handle = AdoptedProcess(
                iid, int(reply["pid"]), self.pool.config.stop_timeout, self.pool.clock
            )
            if not self.pool.adopt(iid, handle, reply.get("fights") or []):
                log.warn("fight: {id} agreed to be adopted but the pool is full", id=iid)

        def refused(failure: Any) -> None:
            if failure.check(MmoError):
                self._refused.add(iid)
                log.debug("fight: {id} not adopted: {e}", id=iid, e=failure.value)
            else:
                log.failure("fight: adopting {id}", failure, id=iid)

        d.addCallbacks(answered, refused)
        d.addBoth(lambda _: self._asking.discard(iid))
        return d

    @override
    def stopService(self) -> defer.Deferred[None]:
        """Drain the pool: no new fights, running ones end (up to the drain timeout),
        then every fight process is stopped."""
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        log.info("fight: draining the pool")
        d = self.pool.drain()
        self._update_meta(now=True)
        d.addCallback(lambda _: log.info("fight: pool drained, every fight process stopped"))
        return d

    def _changed(self, change: int, instance: Instance, reason: str) -> None:
        if (
            instance.service_name == self.service
            and change != Change.UP
            and instance.instance_id != self.instance_id
            and self.running
        ):
            # Another dispatcher left: its processes are orphans now (or soon).
            for delay in self.readopt_after:
                self.pool.clock.callLater(delay, self._readopt)
            return
        if instance.service_name != self.worker_service:
            return
        if change == Change.UP:
            if instance.instance_id in self.pool.processes:
                self.pool.process_ready(instance.instance_id, pid_of(instance))
            elif self.running and not self.pool.adopting:
                self._ask(instance)  # an orphan registering again (or another's: refused)
        else:
            self._refused.discard(instance.instance_id)
            self.pool.process_down(instance.instance_id, reason)

    def _readopt(self) -> None:
        if self.running and not self.pool.adopting:
            self._sweep()

    def _update_meta(self, now: bool = False) -> None:
        status = self.pool.status()
        meta = {
            "processes": len(status["processes"]),
            "fights": status["fights"],
            "players": status["players"],
            "cap": status["cap"],
            "draining": status["draining"],
        }
        if meta != self._meta:
            self._meta = meta
            self.registration.update_meta(now=now, **meta)


def make_fight_service(
    config: FightConfig,
    *,
    reactor: Any = None,
    spawner: Spawner | None = None,
) -> OrderedMultiService:
    """Build (without starting) the service tree of a fight dispatcher.

    Args:
        config: the dispatcher's settings.
        reactor: the reactor (global one if None).
        spawner: starts fight processes (default: real ``twistd mmo-worker`` children).
    """
    instance_id = config.instance_id or default_instance_id(config.service)
    if config.process_prefix is None:
        config = dataclasses.replace(config, process_prefix=instance_id)
    top = OrderedMultiService()
    zmq_service = ZmqContextService(reactor)
    zmq_service.setServiceParent(top)
    ctx = zmq_service.context
    directory = Directory(
        ctx,
        config.yellow,
        caller_id=instance_id,
        caller_role="fight",
        default_timeout=config.call_timeout,
    )
    directory.setServiceParent(top)

    runtime = WorkerRuntime(config.service, instance_id, ctx.reactor, directory)
    handler = FightDispatcher(runtime, worker_service=config.worker_service)
    pool = FightPool(
        config,
        ctx.reactor,
        spawner or ProcessSpawner(config, instance_id, ctx.reactor),
        handler,
    )
    handler.pool = pool
    bind_host, advertise_host = addresses(config.bind_host, config.advertise_host)
    server = HandlerServer(
        ctx,
        handler,
        bind_host=bind_host,
        advertise_host=advertise_host,
    )
    runtime.server = server
    instance = make_instance(
        config.service,
        instance_id,
        {},
        {
            **FightDispatcher.registry_meta(),
            "fight_handler": config.handler,
            "pid": os.getpid(),
            BATCH_META: True,
        },
        heartbeat=config.heartbeat,
    )
    registration = Registration(ctx, config.yellow, instance, config.heartbeat)
    worker = WorkerService(handler, server, registration)
    worker.setName("worker")
    worker.setServiceParent(top)
    pool_service = PoolService(
        pool,
        directory,
        registration,
        config.worker_service,
        service=config.service,
        instance_id=instance_id,
    )
    pool_service.setName("pool")
    pool_service.setServiceParent(top)
    telemetry = worker_telemetry("fight", worker, directory, advertise_host)
    telemetry.add_metrics(pool.metrics)
    telemetry.add_check(
        "pool", lambda: (not pool.draining, "draining" if pool.draining else "open")
    )
    top.telemetry = telemetry
    return top
