"""The service tree of a worker process: ZeroMQ, directory, data services, the worker.

Its parts (the runtime a handler sees, the service that prepares, serves and registers
it, the tree itself) live in the logic layer (:mod:`mmo.logic.runtime`), shared with the
fight dispatcher and the log collector.
"""

from __future__ import annotations

from typing import Any

from mmo.config import ConfigError
from mmo.logic.handler import ServiceHandler
from mmo.logic.runtime import handler_settings, load_handler, make_worker_tree
from mmo.registry import default_instance_id
from mmo.service import OrderedMultiService
from mmo.worker.config import WorkerConfig

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
    return make_worker_tree(
        handler_class,
        service=service_name,
        instance_id=config.instance_id or default_instance_id(service_name),
        yellow=config.yellow,
        reactor=reactor,
        settings=handler_settings(handler_class, config.settings),
        database=config.database,
        cache=config.cache_url(),
        bind_host=config.bind_host,
        advertise_host=config.advertise_host,
        heartbeat=config.heartbeat,
        drain_timeout=config.drain_timeout,
        call_timeout=config.call_timeout,
        memo_ttl=config.memo_ttl,
        memo_size=config.memo_size,
    )
