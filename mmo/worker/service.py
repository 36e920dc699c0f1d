"""The service tree of a logic worker: registry, directory, handler server."""

from __future__ import annotations

import importlib
import os
from typing import Any

from twisted.application.service import MultiService, Service
from twisted.internet import defer, task
from twisted.logger import Logger
from twisted.python.failure import Failure
from typing_extensions import override

from mmo.config import ConfigError, build
from mmo.data import Cache, Database, DatabaseUnavailable, make_cache, make_database, migrate
from mmo.errors import MmoError
from mmo.logic.client import Directory
from mmo.logic.handler import ServiceHandler
from mmo.logic.memo import ReplyMemo
from mmo.logic.server import HandlerServer
from mmo.logic.sessions import Sessions
from mmo.net import advertised_host, bind_address
from mmo.registry import Registration, default_instance_id, make_instance
from mmo.service import OrderedMultiService
from mmo.types import Clock
from mmo.worker.config import WorkerConfig
from mmo.zmq import ZmqContextService

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


class WorkerService(Service):
    """Starts the handler, then serves and registers; stops in the reverse order.

    Before the handler starts, the database's migrations are applied and the
    cache is given a moment to connect. Stopping deregisters first (callers stop
    sending within a second), then drains the calls in flight, then calls the
    handler's ``stop`` (the database and cache services stop after it).
    """

    def __init__(
        self,
        handler: ServiceHandler,
        server: HandlerServer,
        registration: Registration,
        db: Database | None = None,
        cache: Cache | None = None,
    ) -> None:
        self.handler = handler
        self.server = server
        self.registration = registration
        self.db = db
        self.cache = cache
        self._started: defer.Deferred[None] | None = None

    @override
    def startService(self) -> None:
        """Prepare the data services, run the handler's ``start``, then bind, serve, register."""
        super().startService()
        clock = self.server.context.reactor
        self._started = prepare_data(self.db, self.cache, clock)
        self._started.addCallback(lambda _: self.handler.start())
        self._started.addCallback(self._serve)
        self._started.addErrback(self._failed)

    def _serve(self, _: Any) -> None:
        self.server.startService()
        self.registration.instance.endpoints = dict(self.server.endpoints)
        self.registration.startService()
        log.info(
            "worker {id} serving {service} on {endpoints}",
            id=self.handler.instance_id,
            service=self.handler.service_name,
            endpoints=self.server.endpoints,
        )

    def _failed(self, failure: Failure) -> None:
        if failure.check(MmoError, ConfigError):
            # A clear error needs no traceback.
            log.error(
                "worker failed to start: {type}: {error}; stopping",
                type=type(failure.value).__name__,
                error=failure.value,
            )
        else:
            log.failure("handler failed to start; stopping", failure)
        self.server.context.reactor.stop()

    @override
    @defer.inlineCallbacks
    def stopService(self) -> Any:
        """Deregister, drain, then stop the handler."""
        super().stopService()
        if self.registration.running:
            yield self.registration.stopService()
        if self.server.running:
            yield self.server.stopService()
        yield defer.maybeDeferred(self.handler.stop)


def make_worker_service(
    config: WorkerConfig,
    *,
    reactor: Any = None,
    handler_class: type[ServiceHandler] | None = None,
) -> MultiService:
    """Build (without starting) the service tree of a worker process."""
    handler_class = handler_class or load_handler(config.handler)
    service_name = config.service or handler_class.default_service
    if not service_name:
        raise ConfigError("service", "no service name given and the handler names none")
    instance_id = config.instance_id or default_instance_id(service_name)

    top = OrderedMultiService()
    zmq_service = ZmqContextService(reactor)
    zmq_service.setServiceParent(top)
    ctx = zmq_service.context
    directory = Directory(
        ctx,
        config.yellow,
        caller_id=instance_id,
        caller_role="worker",
        default_timeout=config.call_timeout,
    )
    directory.setServiceParent(top)

    db = make_database(config.database, reactor=ctx.reactor) if config.database else None
    cache_url = config.cache_url()
    cache = make_cache(cache_url, clock=ctx.reactor) if cache_url else None
    # Started before the worker (so ready before the handler), stopped after it.
    for data_service, name in ((db, "database"), (cache, "cache")):
        if data_service is not None:
            data_service.setName(name)
            data_service.setServiceParent(top)

    settings = handler_settings(handler_class, config.settings)
    runtime = WorkerRuntime(service_name, instance_id, ctx.reactor, directory, db, cache, settings)
    handler = handler_class(runtime)
    memo = (
        ReplyMemo(ctx.reactor, ttl=config.memo_ttl, size=config.memo_size)
        if config.memo_ttl
        else None
    )
    server = HandlerServer(
        ctx,
        handler,
        bind_host=bind_address(config.bind_host, config.advertise_host),
        advertise_host=advertised_host(config.bind_host, config.advertise_host),
        drain_timeout=config.drain_timeout,
        memo=memo,
    )
    runtime.server = server
    instance = make_instance(
        service_name,
        instance_id,
        {},
        {**handler_class.registry_meta(), "pid": os.getpid()},
        heartbeat=config.heartbeat,
    )
    registration = Registration(ctx, config.yellow, instance, config.heartbeat)
    worker = WorkerService(handler, server, registration, db, cache)
    worker.setName("worker")
    worker.setServiceParent(top)
    return top
