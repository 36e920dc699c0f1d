"""Configuration of the fight dispatcher (``twistd mmo-fight``)."""

from __future__ import annotations

from dataclasses import dataclass

from mmo.config import ConfigError, check_zmq_address
from mmo.net import advertised_host


@dataclass(frozen=True)
class FightConfig:
    """Settings of ``twistd mmo-fight`` (TOML section ``[fight]``; see docs/fight.md).

    Attributes:
        yellow: addresses of the yellows (the dispatcher and its fight processes use all).
        handler: the fight processes' handler class, ``module:Class`` (a ``FightHandler``).
        cap: players one fight process holds at most.
        min_spare: ready fight processes with room kept at all times.
        max_processes: fight processes alive at once, at most (stopping and adopted
            ones included).
        max_starting: fight processes starting (spawned, not registered yet) at once, at
            most: each start costs a CPU for a moment, and a burst of them would starve
            the dispatcher's loop, its callers and the processes already serving.
        orphan_timeout: seconds a fight process whose dispatcher is gone waits for
            another (or a restarted) dispatcher to adopt it before it stops by itself.
        idle_timeout: seconds a fight process without fights lives above the spare count.
        reservation_timeout: seconds the players of an allocated fight have to arrive.
        service: the service name the dispatcher registers under.
        worker_service: the service name its fight processes register under.
        instance_id: the dispatcher's instance id (default: ``$MMO_NAME``, else
            ``service-host-pid``).
        process_prefix: fight processes are named ``<prefix>-1``, ``<prefix>-2``, ...
            (default: the dispatcher's instance id, so that two dispatchers never share
            a name).
        start_timeout: seconds a new fight process has to register before it is killed.
        stop_timeout: seconds a stopped fight process has between SIGTERM and SIGKILL.
        drain_timeout: seconds a graceful stop lets running fights go on.
        worker_args: extra arguments for each fight process's ``twistd mmo-worker``.
        bind_host: interface the dispatcher's and its fight processes' sockets bind.
        advertise_host: the host (or interface) the registry lists for them (default:
            ``bind_host``).
        heartbeat: seconds between registry heartbeats.
        call_timeout: default deadline of calls the dispatcher makes, in seconds.
    """

    yellow: tuple[str, ...]
    handler: str
    cap: int
    min_spare: int = 1
    max_processes: int = 16
    max_starting: int = 2
    orphan_timeout: float = 60.0
    idle_timeout: float = 60.0
    reservation_timeout: float = 15.0
    service: str = "fight"
    worker_service: str = "fight-worker"
    instance_id: str | None = None
    process_prefix: str | None = None
    start_timeout: float = 30.0
    stop_timeout: float = 10.0
    drain_timeout: float = 60.0
    worker_args: tuple[str, ...] = ()
    bind_host: str | None = None
    advertise_host: str | None = None
    heartbeat: float = 1.0
    call_timeout: float = 5.0

    def validate(self) -> None:
        """Check values against each other."""
        if not self.yellow:
            raise ConfigError("yellow", "at least one yellow address is required")
        for address in self.yellow:
            check_zmq_address("yellow", address)
        if ":" not in self.handler:
            raise ConfigError("handler", f"expected module:Class, got {self.handler!r}")
        if self.cap < 1:
            raise ConfigError("cap", "must be at least 1")
        advertised_host(self.bind_host, self.advertise_host)
        if self.max_processes < 1:
            raise ConfigError("max-processes", "must be at least 1")
        if self.max_starting < 1:
            raise ConfigError("max-starting", "must be at least 1")
        if not 0 <= self.min_spare <= self.max_processes:
            raise ConfigError("min-spare", "must be between 0 and max-processes")
        for key in (
            "idle_timeout",
            "reservation_timeout",
            "start_timeout",
            "stop_timeout",
            "call_timeout",
            "orphan_timeout",
        ):
            if getattr(self, key) <= 0:
                raise ConfigError(key.replace("_", "-"), "must be positive")
        if self.drain_timeout < 0:
            raise ConfigError("drain-timeout", "must not be negative")
        if not 0.05 <= self.heartbeat <= 20:
            raise ConfigError("heartbeat", "must be between 0.05 and 20 seconds")
        if self.service == self.worker_service:
            raise ConfigError("worker-service", "must differ from the dispatcher's service")
        prefix = self.process_prefix
        if prefix is not None and not prefix.replace("-", "").replace("_", "").isalnum():
            raise ConfigError("process-prefix", "must be letters, digits, - or _")
