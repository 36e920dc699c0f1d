"""What every role adds to its tree for its operators: the operator listener (metrics,
health, readiness), JSON logs, log shipping to the collector, span export.

Every role's options take the same settings (:class:`OpsConfig`, from its TOML section or
the command line) and :func:`attach` adds what they ask for to the role's tree, from the
:class:`~mmo.telemetry.metrics.Telemetry` the role's tree carries (``tree.telemetry``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from twisted.application.service import IService, MultiService

from mmo.config import ConfigError
from mmo.telemetry.logs import LEVELS, PROCESS
from mmo.telemetry.metrics import Telemetry
from mmo.telemetry.site import OpsListener, parse_listen
from mmo.zmq import ZmqContextService

__all__ = ["OPS_KEYS", "OpsConfig", "attach", "register_member", "telemetry_of"]

#: The settings every role takes for its operators, as TOML keys.
OPS_KEYS = ("metrics", "log-format", "log-level", "log-queue", "otel-endpoint")


@dataclass(frozen=True)
class OpsConfig:
    """What a role tells its operators, and how.

    Attributes:
        metrics: where the operator listener (``/metrics``, ``/healthz``, ``/readyz``)
            listens: ``PORT`` (on 127.0.0.1), ``HOST:PORT``; port 0 picks a free one (the
            registry entry says which). None: no listener.
        log_format: ``text`` (twistd's own) or ``json`` (one object per line).
        log_level: the least severe events the process logs (and ships): ``debug``
            (everything, the default), ``info``, ``warn`` or ``error``; a reload
            (SIGHUP) changes it live.
        log_queue: log events held for the log collector at most, while it is slow or
            away (the oldest are dropped first, and counted); 0: do not ship logs.
        otel_endpoint: an OTLP/HTTP endpoint (``http://host:4318/v1/traces``) traced
            requests' spans are exported to (needs ``mmo[otel]``).
    """

    metrics: str | None = None
    log_format: str = "text"
    log_level: str = "debug"
    log_queue: int = 10_000
    otel_endpoint: str | None = None

    def validate(self) -> None:
        """Check the values."""
        if self.metrics is not None:
            try:
                parse_listen(self.metrics)
            except ValueError as e:
                raise ConfigError("metrics", str(e)) from None
        if self.log_format not in ("text", "json"):
            raise ConfigError("log-format", f"expected text or json, got {self.log_format!r}")
        if self.log_level not in LEVELS:
            raise ConfigError(
                "log-level", f"expected one of {', '.join(LEVELS)}, got {self.log_level!r}"
            )
        if not 0 <= self.log_queue <= 10_000_000:
            raise ConfigError("log-queue", "must be between 0 and 10000000")
        if self.otel_endpoint is not None and not self.otel_endpoint.startswith(
            ("http://", "https://")
        ):
            raise ConfigError("otel-endpoint", "expected an http:// or https:// URL")


def telemetry_of(tree: IService) -> Telemetry:
    """The telemetry a role's tree carries."""
    telemetry = getattr(tree, "telemetry", None)
    if not isinstance(telemetry, Telemetry):
        raise TypeError(f"{tree!r} carries no telemetry")
    return telemetry


def register_member(
    tree: MultiService,
    context: Any,
    yellows: tuple[str, ...],
    role: str,
    instance_id: str,
    directory: Any,
) -> Telemetry:
    """Register a member that serves no calls (the brokerlist, the admin console) under
    service ``role``, so that operators' tools and Prometheus find it, and give ``tree``
    its telemetry: its directory's metrics, ready while its registry view is synced."""
    from mmo.registry import Registration, make_instance

    instance = make_instance(role, instance_id, {}, {"pid": os.getpid()})
    registration = Registration(context, yellows, instance)
    registration.setName("registration")
    registration.setServiceParent(tree)
    telemetry = Telemetry(role, instance_id)
    telemetry.directory = directory
    telemetry.registrations.append(registration)
    telemetry.add_metrics(directory.metrics)
    telemetry.add_check("registry", directory.readiness)
    tree.telemetry = telemetry  # type: ignore[attr-defined]
    return telemetry


def attach(tree: MultiService, ops: OpsConfig, *, reactor: Any = None) -> None:
    """Add what ``ops`` asks for to a role's ``tree`` (before it starts): the operator
    listener first (so that the registration publishes its address), log shipping and
    span export."""
    telemetry = telemetry_of(tree)
    PROCESS.role = PROCESS.role or telemetry.role
    PROCESS.instance = PROCESS.instance or telemetry.instance
    if ops.metrics is not None:
        host, port = parse_listen(ops.metrics)
        listener = OpsListener(
            telemetry, host, port, advertise_host=telemetry.advertise_host, reactor=reactor
        )
        listener.setName("ops")
        _insert(tree, listener)
    if ops.log_queue and telemetry.directory is not None:
        from mmo.ops.shipper import LogShipper

        shipper = LogShipper(telemetry.directory, ops.log_queue)
        shipper.setName("logs")
        # Right after the directory it ships through: it starts before the role's work and
        # stops after it, so what a draining role logs is shipped too.
        _insert(tree, shipper, after=telemetry.directory)
        telemetry.add_metrics(shipper.metrics)
    if ops.otel_endpoint is not None:
        from mmo.telemetry.otel import export_spans

        export_spans(ops.otel_endpoint, service=telemetry.role, instance=telemetry.instance)


def _insert(tree: MultiService, service: IService, after: Any = None) -> None:
    """Make ``service`` a child of ``tree`` that starts right after ``after`` (a child of
    ``tree``), or first (but after the ZeroMQ context, which stays first: it closes last);
    the tree stops its children in reverse."""
    service.setServiceParent(tree)
    children: list[IService] = tree.services
    children.remove(service)
    if after is not None and after in children:
        at = children.index(after) + 1
    else:
        at = 1 if children and isinstance(children[0], ZmqContextService) else 0
    children.insert(at, service)
