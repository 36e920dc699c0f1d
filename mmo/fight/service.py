"""The service tree of the fight dispatcher: a worker serving :class:`FightDispatcher`
plus the pool of fight processes it spawns.

Start order: ZeroMQ context, directory (registry view), the dispatcher's worker
(serves and registers as ``fight``), the pool (starts the spares). Stop order is
the reverse, so a graceful stop first drains the pool (no new fights; running
ones may end and still call ``release``; then the children are stopped), and
only then deregisters and closes the dispatcher's sockets.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from twisted.application.service import Service
from twisted.internet import defer, task
from twisted.logger import Logger
from typing_extensions import override

from mmo.fight.config import FightConfig
from mmo.fight.dispatcher import FightDispatcher
from mmo.fight.pool import FightPool, Spawner
from mmo.fight.spawner import ProcessSpawner
from mmo.logic.client import Directory
from mmo.logic.runtime import WorkerRuntime, WorkerService
from mmo.logic.server import HandlerServer
from mmo.net import addresses
from mmo.registry import Change, Instance, Registration, default_instance_id, make_instance
from mmo.service import OrderedMultiService
from mmo.wire import from_value
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
    """

    def __init__(
        self,
        pool: FightPool,
        directory: Directory,
        registration: Registration,
        worker_service: str,
    ) -> None:
        self.pool = pool
        self.directory = directory
        self.registration = registration
        self.worker_service = worker_service
        self._meta: dict[str, Any] = {}
        self._loop: task.LoopingCall | None = None
        self.directory.view.listen(self._changed)

    @override
    def startService(self) -> None:
        """Start the pool (its spares) and the meta updates."""
        super().startService()
        self.pool.start()
        for instance in self.directory.view.get(self.worker_service):
            self._changed(Change.UP, instance, "registered")
        self._loop = task.LoopingCall(self._update_meta)
        self._loop.clock = self.pool.clock  # type: ignore[assignment]
        self._loop.start(1.0, now=True)

    @override
    def stopService(self) -> defer.Deferred[None]:
        """Drain the pool: no new fights, running ones end (up to the drain timeout),
        then every fight process is stopped."""
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        log.info("fight: draining the pool")
        d = self.pool.drain()
        d.addCallback(lambda _: log.info("fight: pool drained, every fight process stopped"))
        return d

    def _changed(self, change: int, instance: Instance, reason: str) -> None:
        if instance.service_name != self.worker_service:
            return
        if change == Change.UP:
            meta = instance.meta or {}
            pid = from_value(meta["pid"]) if "pid" in meta else None
            self.pool.process_ready(instance.instance_id, pid if isinstance(pid, int) else None)
        else:
            self.pool.process_down(instance.instance_id, reason)

    def _update_meta(self) -> None:
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
            self.registration.update_meta(now=False, **meta)


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
        {**FightDispatcher.registry_meta(), "fight_handler": config.handler, "pid": os.getpid()},
        heartbeat=config.heartbeat,
    )
    registration = Registration(ctx, config.yellow, instance, config.heartbeat)
    worker = WorkerService(handler, server, registration)
    worker.setName("worker")
    worker.setServiceParent(top)
    pool_service = PoolService(pool, directory, registration, config.worker_service)
    pool_service.setName("pool")
    pool_service.setServiceParent(top)
    return top
