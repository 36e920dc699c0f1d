"""The service tree of a log collector process: ZeroMQ, directory, the collector.

It is a worker's tree (:func:`mmo.logic.runtime.make_worker_tree`) serving
:class:`LogCollector` as ``logs``, without a database or cache.
"""

from __future__ import annotations

from typing import Any

from mmo.logic.runtime import make_worker_tree
from mmo.logs.collector import LogCollector
from mmo.logs.config import LogsConfig
from mmo.registry import default_instance_id
from mmo.service import OrderedMultiService

__all__ = ["make_logs_service"]


def make_logs_service(
    config: LogsConfig,
    *,
    reactor: Any = None,
    handler_class: type[LogCollector] = LogCollector,
) -> OrderedMultiService:
    """Build (without starting) the service tree of a log collector process."""
    service_name = handler_class.default_service or "logs"
    top = make_worker_tree(
        handler_class,
        service=service_name,
        instance_id=config.instance_id or default_instance_id(service_name),
        yellow=config.yellow,
        role="logs",
        reactor=reactor,
        settings=config.settings(),
        bind_host=config.bind_host,
        advertise_host=config.advertise_host,
        heartbeat=config.heartbeat,
        drain_timeout=config.drain_timeout,
    )
    collector = top.getServiceNamed("worker").handler
    top.telemetry.add_metrics(collector.metrics)
    return top
