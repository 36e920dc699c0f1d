"""The service tree of a worker process: ZeroMQ, directory, data services, the worker.

Its parts (the runtime a handler sees, the service that prepares, serves and registers
it) live in the logic layer (:mod:`mmo.logic.runtime`), shared with the fight dispatcher.
"""

from __future__ import annotations

import os
from typing import Any

from mmo.config import ConfigError
from mmo.data import make_cache, make_database
from mmo.logic.client import Directory
from mmo.logic.handler import ServiceHandler
from mmo.logic.memo import ReplyMemo
from mmo.logic.runtime import (
    WorkerRuntime,
    WorkerService,
    handler_settings,
    load_handler,
    worker_telemetry,
)
from mmo.logic.server import HandlerServer
from mmo.net import addresses
from mmo.registry import Registration, default_instance_id, make_instance
from mmo.service import OrderedMultiService
from mmo.worker.config import WorkerConfig
from mmo.zmq import ZmqContextService

__all__ = ["handler_settings", "load_handler", "make_worker_service"]


def make_worker_service(
    config: WorkerConfig,
    *,
    reactor: Any = None,
    handler_class: type[ServiceHandler] | None = None,
) -> OrderedMultiService:
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
    bind_host, advertise_host = addresses(config.bind_host, config.advertise_host)
    server = HandlerServer(
        ctx,
        handler,
        bind_host=bind_host,
        advertise_host=advertise_host,
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
    top.telemetry = worker_telemetry("worker", worker, directory, advertise_host)
    return top
