"""Configuration of ``twistd mmo-cluster``: which roles to run, with which arguments."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mmo.config import ConfigError, build


@dataclass(frozen=True)
class ProcessSpec:
    """One supervised child (a ``[[cluster.process]]`` table).

    Attributes:
        name: the child's name in logs (unique).
        role: the twistd plugin, e.g. ``mmo-worker``.
        args: the role's arguments.
        restart: restart the child when it dies (with backoff).
        count: run this many copies, named ``name-1``, ``name-2``, ...
    """

    name: str
    role: str
    args: tuple[str, ...] = ()
    restart: bool = True
    count: int = 1

    def validate(self) -> None:
        """Check the values."""
        if not self.name or not self.name.replace("-", "").replace("_", "").isalnum():
            raise ConfigError("process.name", f"{self.name!r} must be letters, digits, - or _")
        if not self.role.startswith("mmo-"):
            raise ConfigError(f"process.{self.name}.role", f"{self.role!r} is not an mmo role")
        if not 1 <= self.count <= 64:
            raise ConfigError(f"process.{self.name}.count", "must be between 1 and 64")

    def expand(self) -> list[tuple[str, ProcessSpec]]:
        """The children this spec stands for, with their names."""
        if self.count == 1:
            return [(self.name, self)]
        return [(f"{self.name}-{i}", self) for i in range(1, self.count + 1)]


@dataclass(frozen=True)
class ClusterConfig:
    """Settings of ``twistd mmo-cluster`` (TOML section ``[cluster]``).

    Attributes:
        process: the children, in start order (stopped in reverse).
        stop_timeout: seconds a child has to exit after SIGTERM before SIGKILL.
        backoff_max: longest wait, in seconds, before restarting a child that keeps dying.
        yellow: the yellow(s) (comma-separated) the supervisor's control endpoint (service
            ``cluster``: ``children``, ``reload``) registers in; none: no endpoint.
    """

    process: tuple[dict[str, Any], ...] = ()
    stop_timeout: float = 15.0
    backoff_max: float = 30.0
    yellow: str | None = None

    def validate(self) -> None:
        """Check every child spec and that names are unique."""
        names = [name for spec in self.specs() for name, _ in spec.expand()]
        if not names:
            raise ConfigError("cluster.process", "no process to run")
        dupes = {n for n in names if names.count(n) > 1}
        if dupes:
            raise ConfigError("cluster.process", f"duplicate names: {sorted(dupes)}")

    def specs(self) -> list[ProcessSpec]:
        """The child specs, validated."""
        return [build(ProcessSpec, table, prefix="process.") for table in self.process]
