"""What a logic service runs in: the runtime a handler sees, and the service that
prepares, serves and registers it.

A worker process (``twistd mmo-worker``) and the fight dispatcher are built from these:
:class:`WorkerRuntime` is the ``Runtime`` its handler uses, :class:`WorkerService` the
part of its service tree that migrates the database, starts the handler, then serves
(:class:`~mmo.logic.server.HandlerServer`) and registers; :func:`load_handler` and
:func:`handler_settings` read a handler class and its settings from a config.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterator
from typing import Any

from twisted.internet import defer, task
from twisted.logger import Logger
from twisted.python.failure import Failure
from typing_extensions import override

from mmo.config import ConfigError, build
from mmo.data import Cache, Database, DatabaseUnavailable, make_cache, make_database, migrate
from mmo.errors import MmoError
from mmo.logic.client import Directory
from mmo.logic.handler import ServiceHandler
from mmo.logic.links import BATCH_META
from mmo.logic.memo import ReplyMemo
from mmo.logic.server import HandlerServer
from mmo.logic.sessions import Sessions
from mmo.net import addresses
from mmo.registry import Registration, make_instance
from mmo.service import OrderedMultiService, PreparedService
from mmo.telemetry.metrics import Metric, Telemetry, counter, gauge
from mmo.types import Clock
from mmo.zmq import ZmqContextService

__all__ = [
    "CACHE_WAIT",
    "DATABASE_WAIT",
    "WorkerRuntime",
    "WorkerService",
    "handler_settings",
    "load_handler",
    "make_worker",
    "make_worker_tree",
    "prepare_data",
    "worker_telemetry",
]

log = Logger()


def load_handler(path: str) -> type[ServiceHandler]:
    """Import ``module:Class`` and check it is a ServiceHandler subclass."""
    module_name, _, class_name = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigError("handler", f"cannot import {module_name!r}: {e}") from e
    cls = getattr(module, class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, ServiceHandler)):
        raise ConfigError("handler", f"{path!r} is not a ServiceHandler subclass")
    return cls


def handler_settings(handler_class: type[ServiceHandler], values: dict[str, Any]) -> Any:
    """The handler's ``Settings`` built from ``values`` (``[worker.settings]``, ``--set``).

    Raises:
        ConfigError: an unknown setting, or a value of the wrong type or out of range.
    """
    return build(handler_class.Settings, values, prefix="[worker.settings] ")


class WorkerRuntime:
    """What the handler sees of its worker process (implements ``Runtime``)."""

    def __init__(
        self,
        service_name: str,
        instance_id: str,
        clock: Clock,
        directory: Directory,
        db: Database | None = None,
        cache: Cache | None = None,
        settings: Any = None,
    ) -> None:
        self.service_name = service_name
        self.instance_id = instance_id
        self.clock = clock
        self.directory = directory
        self.db = db
        self.cache = cache
        self.settings = settings
        self.server: HandlerServer | None = None
        self.sessions = Sessions(directory, instance_id)

    def get_service(self, name: str, pattern: str = "REP", timeout: float | None = None) -> Any:
        """A proxy to another service."""
        return self.directory.get_service(name, pattern, timeout)

    def publish(self, topic: str, payload: Any) -> None:
        """Publish an event to this service's subscribers."""
        assert self.server is not None
        self.server.publish(topic, payload)


#: How long a starting worker waits for its database to answer (to apply migrations).
DATABASE_WAIT = 30.0
#: How long a starting worker waits for its cache to connect before starting anyway.
CACHE_WAIT = 5.0


@defer.inlineCallbacks
def prepare_data(
    db: Database | None, cache: Cache | None, clock: Clock, wait: float = DATABASE_WAIT
) -> Any:
    """Apply the migrations (retrying while the database is unreachable) and let the cache
    connect: what a worker does before its handler starts.

    Raises (through the Deferred):
        SchemaTooNew, MigrationError: the database cannot be used by this code.
        DatabaseUnavailable: the database did not answer within ``wait`` seconds.
    """
    if db is not None:
        deadline = clock.seconds() + wait
        delay = 0.2
        while True:
            try:
                applied = yield migrate(db)
                break
            except DatabaseUnavailable as e:
                if clock.seconds() + delay > deadline:
                    raise
                log.warn("worker: database not ready ({e}); retrying", e=e)
                yield task.deferLater(clock, delay, lambda: None)  # type: ignore[arg-type]
                delay = min(delay * 2, 2.0)
        log.info("worker: database {db} ready; migrations applied: {n}", db=db, n=applied or "none")
    wait_connected = getattr(cache, "wait_connected", None)
    if wait_connected is not None and not (yield wait_connected(CACHE_WAIT)):
        log.warn("worker: cache {cache} not connected yet; starting anyway", cache=cache)


class WorkerService(PreparedService):
    """Prepares the data services and starts the handler, then serves and registers
    (its children, in that order); stops in the reverse order.

    Before the handler starts, the database's migrations are applied and the cache is
    given a moment to connect. Stopping deregisters first (callers stop sending within
    a second), then drains the calls in flight, then calls the handler's ``stop`` (the
    database and cache services, above it in the role's tree, stop after it). A failed
    start is logged and stops this service's children; what the process does then is
    its own choice (``twistd mmo-worker`` exits: :func:`mmo.tap.exit_if_start_fails`).
    An operator's drain of the server (the handler's ``ops_drain``) is published in the
    registry entry at once (meta ``draining``), so that callers stop picking it.

    Args:
        handler: the handler.
        server: its sockets (the child ``server``).
        registration: its registry entry (the child ``registration``).
        db: the database to migrate first, if any.
        cache: the cache to wait for first, if any.
    """

    def __init__(
        self,
        handler: ServiceHandler,
        server: HandlerServer,
        registration: Registration,
        db: Database | None = None,
        cache: Cache | None = None,
    ) -> None:
        super().__init__()
        self.handler = handler
        self.server = server
        self.registration = registration
        self.db = db
        self.cache = cache
        server.setName("server")
        server.setServiceParent(self)
        registration.setName("registration")
        registration.setServiceParent(self)
        server.drain_listeners.append(self._drained)

    def _drained(self, draining: bool) -> None:
        """An operator drained the server, or took it back: the registry entry says so."""
        self.registration.update_meta(drained=draining)

    @override
    def prepare(self) -> defer.Deferred[Any]:
        """Migrate, let the cache connect, start the handler, bind: then register."""
        d = prepare_data(self.db, self.cache, self.server.context.reactor)
        d.addCallback(lambda _: self.handler.start())
        d.addCallback(lambda _: self._bind())
        return d

    def _bind(self) -> None:
        # Bound before the registration starts, so that it holds the endpoints.
        self.registration.instance.endpoints = dict(self.server.bind())

    @override
    def ready(self) -> None:
        """Serving and registered: say so."""
        log.info(
            "worker {id} serving {service} on {endpoints}",
            id=self.handler.instance_id,
            service=self.handler.service_name,
            endpoints=self.server.endpoints,
        )

    @override
    def failed(self, failure: Failure) -> None:
        """Log why the worker could not start (a clear error needs no traceback)."""
        if failure.check(MmoError, ConfigError):
            log.error(
                "worker failed to start: {type}: {error}",
                type=type(failure.value).__name__,
                error=failure.value,
            )
        else:
            log.failure("handler failed to start", failure)

    @override
    @defer.inlineCallbacks
    def stopService(self) -> Any:
        """Deregister, drain (the children, last first), then stop the handler."""
        was_running = self.running
        yield super().stopService()
        if was_running:
            yield defer.maybeDeferred(self.handler.stop)


def worker_telemetry(
    role: str,
    worker: WorkerService,
    directory: Directory,
    advertise_host: str | None = None,
) -> Telemetry:
    """The telemetry of a tree serving ``worker``: its calls made and served, its data
    services; ready when registered-and-serving, its registry view synced, its database
    and cache reachable, and not draining (an operator's drain of its server included)."""
    telemetry = Telemetry(role, worker.handler.instance_id)

    def drained(draining: bool) -> None:
        telemetry.draining = draining

    worker.server.drain_listeners.append(drained)
    telemetry.directory = directory
    telemetry.advertise_host = advertise_host
    telemetry.registrations.append(worker.registration)
    telemetry.add_metrics(directory.metrics)
    telemetry.add_metrics(worker.server.metrics)
    telemetry.add_check("serving", worker.server.readiness)
    telemetry.add_check("registry", directory.readiness)
    for name, data in (("database", worker.db), ("cache", worker.cache)):
        reachable = getattr(data, "reachable", None)
        if reachable is not None:
            telemetry.add_check(name, reachable)
    if worker.db is not None and hasattr(worker.db, "stats"):
        telemetry.add_metrics(lambda: _database_metrics(worker.db))
    return telemetry


def _database_metrics(db: Any) -> Iterator[Metric]:
    stats = db.stats()
    yield gauge(
        "mmo_db_connections",
        "The database pool's connections, by state (idle, busy).",
        ("state",),
        [(("idle",), stats["idle"]), (("busy",), stats["busy"])],
    )
    yield gauge(
        "mmo_db_waiting",
        "Operations waiting now for a connection of the pool.",
        (),
        stats["waiting"],
    )
    yield counter(
        "mmo_db_waits",
        "Operations that had to wait for a connection (all were busy).",
        (),
        db.waits,
    )


def make_worker_tree(
    handler_class: type[ServiceHandler],
    *,
    service: str,
    instance_id: str,
    yellow: tuple[str, ...],
    role: str = "worker",
    reactor: Any = None,
    settings: Any = None,
    database: str | None = None,
    cache: str | None = None,
    bind_host: str | None = None,
    advertise_host: str | None = None,
    heartbeat: float = 1.0,
    drain_timeout: float = 10.0,
    call_timeout: float = 5.0,
    memo_ttl: float = 0.0,
    memo_size: int = 100_000,
) -> OrderedMultiService:
    """Build (without starting) the service tree of a process serving one handler:
    ZeroMQ, the directory, the data services (from their URLs, if any), the worker
    (:class:`WorkerService`, child ``worker``); the tree carries its telemetry as ``role``.
    ``twistd mmo-worker`` and ``twistd mmo-logs`` are built with it."""
    top = OrderedMultiService()
    zmq_service = ZmqContextService(reactor)
    zmq_service.setServiceParent(top)
    ctx = zmq_service.context
    directory = Directory(
        ctx, yellow, caller_id=instance_id, caller_role=role, default_timeout=call_timeout
    )
    directory.setServiceParent(top)
    db = make_database(database, reactor=ctx.reactor) if database else None
    cache_service = make_cache(cache, clock=ctx.reactor) if cache else None
    # Started before the worker (so ready before the handler), stopped after it.
    for data_service, name in ((db, "database"), (cache_service, "cache")):
        if data_service is not None:
            data_service.setName(name)
            data_service.setServiceParent(top)
    worker = make_worker(
        handler_class,
        service=service,
        instance_id=instance_id,
        yellow=yellow,
        directory=directory,
        settings=settings,
        db=db,
        cache=cache_service,
        bind_host=bind_host,
        advertise_host=advertise_host,
        heartbeat=heartbeat,
        drain_timeout=drain_timeout,
        memo_ttl=memo_ttl,
        memo_size=memo_size,
    )
    worker.setName("worker")
    worker.setServiceParent(top)
    top.telemetry = worker_telemetry(role, worker, directory, worker.server.advertise_host)
    return top


def make_worker(
    handler_class: type[ServiceHandler],
    *,
    service: str,
    instance_id: str,
    yellow: tuple[str, ...],
    directory: Directory,
    settings: Any = None,
    db: Database | None = None,
    cache: Cache | None = None,
    bind_host: str | None = None,
    advertise_host: str | None = None,
    heartbeat: float = 1.0,
    drain_timeout: float = 10.0,
    memo_ttl: float = 0.0,
    memo_size: int = 100_000,
    colocated: bool = False,
) -> WorkerService:
    """The worker of one handler in a process that has its ZeroMQ context and
    ``directory`` already: its runtime, the handler, its sockets and its registration
    (not started). ``colocated``: this process's callers reach it in process
    (``mmo-broker --serve``, :mod:`mmo.logic.links`)."""
    ctx = directory.context
    runtime = WorkerRuntime(service, instance_id, ctx.reactor, directory, db, cache, settings)
    handler = handler_class(runtime)
    memo = ReplyMemo(ctx.reactor, ttl=memo_ttl, size=memo_size) if memo_ttl else None
    bind, advertise = addresses(bind_host, advertise_host)
    server = HandlerServer(
        ctx,
        handler,
        bind_host=bind,
        advertise_host=advertise,
        drain_timeout=drain_timeout,
        memo=memo,
        colocated=colocated,
    )
    runtime.server = server
    instance = make_instance(
        service,
        instance_id,
        {},
        {**handler_class.registry_meta(), "pid": os.getpid(), BATCH_META: True},
        heartbeat=heartbeat,
    )
    registration = Registration(ctx, yellow, instance, heartbeat)
    return WorkerService(handler, server, registration, db, cache)
