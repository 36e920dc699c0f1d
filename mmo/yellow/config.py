"""Configuration of a yellow (registry) process."""

from __future__ import annotations

from dataclasses import dataclass

from mmo.config import ConfigError, check_zmq_address


@dataclass(frozen=True)
class YellowConfig:
    """Settings of ``twistd mmo-yellow`` (TOML section ``[yellow]``).

    Attributes:
        listen: ZeroMQ address the registry binds (ROUTER).
        expire_interval: seconds between sweeps for expired instances.
        watch_lease: seconds a watcher stays subscribed without renewing.
    """

    listen: str = "tcp://127.0.0.1:5555"
    expire_interval: float = 0.2
    watch_lease: float = 5.0

    def validate(self) -> None:
        """Check values against each other."""
        check_zmq_address("listen", self.listen)
        if not 0.01 <= self.expire_interval <= 5:
            raise ConfigError("expire-interval", "must be between 0.01 and 5 seconds")
        if self.watch_lease <= 0:
            raise ConfigError("watch-lease", "must be positive")
