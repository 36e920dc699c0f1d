"""Configuration of the log collector process."""

from __future__ import annotations

from dataclasses import dataclass

from mmo.config import ConfigError, check_zmq_address
from mmo.logs.collector import CollectorSettings
from mmo.net import advertised_host


@dataclass(frozen=True)
class LogsConfig:
    """Settings of ``twistd mmo-logs`` (TOML section ``[logs]``).

    Attributes:
        yellow: addresses of the yellows (registered with all, watched on one).
        instance_id: this instance's id in the registry (default: ``$MMO_NAME``, which
            ``mmo-cluster`` sets to the child's name, else ``logs-host-pid``).
        bind_host: interface the collector's sockets bind (see ``mmo-worker``).
        advertise_host: the host (IP, host name, or interface) the registry lists.
        heartbeat: seconds between registry heartbeats (gone after 3 missed).
        drain_timeout: seconds a graceful stop waits for calls in flight.
        dir: the directory of ``mmo.log`` and its rotated files.
        ring: events kept in memory for queries (``mmo logs``, ``mmo trace``).
        rotate_bytes: ``mmo.log`` is rotated once it is this long.
        keep: rotated files kept (``mmo.log.1`` ... ``mmo.log.N``; older ones are deleted).
    """

    yellow: tuple[str, ...]
    instance_id: str | None = None
    bind_host: str | None = None
    advertise_host: str | None = None
    heartbeat: float = 1.0
    drain_timeout: float = 10.0
    dir: str = "var/logs"
    ring: int = 100_000
    rotate_bytes: int = 10 * 1024 * 1024
    keep: int = 10

    def validate(self) -> None:
        """Check values against each other."""
        if not self.yellow:
            raise ConfigError("yellow", "at least one yellow address is required")
        for address in self.yellow:
            check_zmq_address("yellow", address)
        if not 0.05 <= self.heartbeat <= 20:
            raise ConfigError("heartbeat", "must be between 0.05 and 20 seconds")
        if self.drain_timeout < 0:
            raise ConfigError("drain-timeout", "must be positive")
        advertised_host(self.bind_host, self.advertise_host)
        self.settings().validate()

    def settings(self) -> CollectorSettings:
        """The collector's own settings."""
        return CollectorSettings(
            dir=self.dir, ring=self.ring, rotate_bytes=self.rotate_bytes, keep=self.keep
        )
