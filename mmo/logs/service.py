"""The service tree of a log collector process: ZeroMQ, directory, the collector.

It is a worker's tree (:mod:`mmo.logic.runtime`) serving :class:`LogCollector` as
``logs``, without a database or cache.
"""

from __future__ import annotations

import os
from typing import Any

from mmo.logic.client import Directory
from mmo.logic.runtime import WorkerRuntime, WorkerService, worker_telemetry
from mmo.logic.server import HandlerServer
from mmo.logs.collector import LogCollector
from mmo.logs.config import LogsConfig
from mmo.net import addresses
from mmo.registry import Registration, default_instance_id, make_instance
from mmo.service import OrderedMultiService
from mmo.zmq import ZmqContextService

__all__ = ["make_logs_service"]


def make_logs_service(
    config: LogsConfig,
    *,
    reactor: Any = None,
    handler_class: type[LogCollector] = LogCollector,
) -> OrderedMultiService:
    """Build (without starting) the service tree of a log collector process."""
    service_name = handler_class.default_service or "logs"
    instance_id = config.instance_id or default_instance_id(service_name)

    top = OrderedMultiService()
    zmq_service = ZmqContextService(reactor)
    zmq_service.setServiceParent(top)
    ctx = zmq_service.context
    directory = Directory(ctx, config.yellow, caller_id=instance_id, caller_role="logs")
    directory.setServiceParent(top)

    runtime = WorkerRuntime(
        service_name, instance_id, ctx.reactor, directory, settings=config.settings()
    )
    handler = handler_class(runtime)
    bind_host, advertise_host = addresses(config.bind_host, config.advertise_host)
    server = HandlerServer(
        ctx,
        handler,
        bind_host=bind_host,
        advertise_host=advertise_host,
        drain_timeout=config.drain_timeout,
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
    worker = WorkerService(handler, server, registration)
    worker.setName("worker")
    worker.setServiceParent(top)
    telemetry = worker_telemetry("logs", worker, directory, advertise_host)
    telemetry.add_metrics(handler.metrics)
    top.telemetry = telemetry
    return top
