"""Configuration of a logic worker process."""

from __future__ import annotations

from dataclasses import dataclass

from mmo.config import ConfigError, check_zmq_address


@dataclass(frozen=True)
class WorkerConfig:
    """Settings of ``twistd mmo-worker`` (TOML section ``[worker]``).

    Attributes:
        yellow: addresses of the yellows (registered with all, watched on one).
        handler: the handler class, ``module:Class``.
        service: the service name (default: the handler's ``service_name``).
        instance_id: this instance's id in the registry (default: ``$MMO_NAME``, which
            ``mmo-cluster`` sets to the child's name, else ``service-host-pid``).
        bind_host: interface the worker's sockets bind (ports are picked by the system).
        heartbeat: seconds between registry heartbeats (gone after 3 missed).
        drain_timeout: seconds a graceful stop waits for calls in flight.
        call_timeout: default deadline of calls this worker makes, in seconds.
    """

    yellow: tuple[str, ...]
    handler: str
    service: str | None = None
    instance_id: str | None = None
    bind_host: str = "127.0.0.1"
    heartbeat: float = 1.0
    drain_timeout: float = 10.0
    call_timeout: float = 5.0

    def validate(self) -> None:
        """Check values against each other."""
        if not self.yellow:
            raise ConfigError("yellow", "at least one yellow address is required")
        for address in self.yellow:
            check_zmq_address("yellow", address)
        if ":" not in self.handler:
            raise ConfigError("handler", f"expected module:Class, got {self.handler!r}")
        if not 0.05 <= self.heartbeat <= 20:
            raise ConfigError("heartbeat", "must be between 0.05 and 20 seconds")
        if self.drain_timeout < 0 or self.call_timeout <= 0:
            raise ConfigError("call-timeout", "timeouts must be positive")
