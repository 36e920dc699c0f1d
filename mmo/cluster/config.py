"""Configuration of ``twistd mmo-cluster``: which roles to run, with which arguments."""

from __future__ import annotations

from dataclasses import dataclass, field
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


#: What a scale policy follows (see :mod:`mmo.cluster.scale`).
SIGNALS = ("outstanding", "p99", "cpu")


@dataclass(frozen=True)
class ScalePolicy:
    """How a stateless service scales (a ``[cluster.scale.SERVICE]`` table).

    Attributes:
        service: the service (a worker child of the cluster serves it).
        min, max: the fewest and most instances.
        signal: ``outstanding`` (requests in flight per instance), ``p99`` (ms, what the
            service served over the last interval) or ``cpu`` (percent per instance).
        target: the signal's value to keep.
        interval: seconds between decisions.
        up_cooldown, down_cooldown: seconds after a change before the next scale up / down.
    """

    service: str
    min: int = 1
    max: int = 4
    signal: str = "outstanding"
    target: float = 1.0
    interval: float = 2.0
    up_cooldown: float = 5.0
    down_cooldown: float = 20.0

    def validate(self) -> None:
        """Check the values."""
        key = f"scale.{self.service}"
        if self.min < 1:
            raise ConfigError(f"{key}.min", "must be at least 1")
        if self.max < self.min:
            raise ConfigError(f"{key}.max", f"must be at least min ({self.min})")
        if self.signal not in SIGNALS:
            raise ConfigError(f"{key}.signal", f"{self.signal!r} is not one of {SIGNALS}")
        if self.target <= 0:
            raise ConfigError(f"{key}.target", "must be above 0")
        if self.interval <= 0:
            raise ConfigError(f"{key}.interval", "must be above 0")
        if self.up_cooldown < 0 or self.down_cooldown < 0:
            raise ConfigError(f"{key}.up_cooldown", "cooldowns must not be negative")


def worker_service(args: tuple[str, ...]) -> str | None:
    """The service an ``mmo-worker`` child with ``args`` serves: its ``--service``, else
    its ``--handler``'s default service (None when neither tells)."""
    found = None
    handler = None
    for i, arg in enumerate(args):
        nxt = args[i + 1] if i + 1 < len(args) else None
        if arg in ("--service", "-s") and nxt is not None:
            found = nxt
        elif arg.startswith("--service="):
            found = arg.partition("=")[2]
        elif arg == "--handler" and nxt is not None:
            handler = nxt
        elif arg.startswith("--handler="):
            handler = arg.partition("=")[2]
    if found or not handler:
        return found or None
    try:
        from mmo.logic.runtime import load_handler

        return str(load_handler(handler).default_service)
    except Exception:
        return None


@dataclass(frozen=True)
class ClusterConfig:
    """Settings of ``twistd mmo-cluster`` (TOML section ``[cluster]``).

    Attributes:
        process: the children, in start order (stopped in reverse).
        stop_timeout: seconds a child has to exit after SIGTERM before SIGKILL.
        backoff_max: longest wait, in seconds, before restarting a child that keeps dying.
        yellow: the yellow(s) (comma-separated) the supervisor's control endpoint (service
            ``cluster``: ``children``, ``reload``) registers in; none: no endpoint.
        scale: auto-scaling policies by service (``[cluster.scale.SERVICE]`` tables,
            :class:`ScalePolicy`); they need ``yellow``.
    """

    process: tuple[dict[str, Any], ...] = ()
    stop_timeout: float = 15.0
    backoff_max: float = 30.0
    yellow: str | None = None
    scale: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        """Check every child spec and that names are unique."""
        names = [name for spec in self.specs() for name, _ in spec.expand()]
        if not names:
            raise ConfigError("cluster.process", "no process to run")
        dupes = {n for n in names if names.count(n) > 1}
        if dupes:
            raise ConfigError("cluster.process", f"duplicate names: {sorted(dupes)}")
        policies = self.policies()
        if policies and not self.yellow:
            raise ConfigError("cluster.scale", "auto-scaling needs [cluster] yellow")
        served = {worker_service(spec.args) for spec in self.specs() if spec.role == "mmo-worker"}
        for policy in policies:
            if policy.service not in served:
                raise ConfigError(
                    f"cluster.scale.{policy.service}", "no mmo-worker child serves this service"
                )

    def policies(self) -> list[ScalePolicy]:
        """The scale policies, validated."""
        policies = []
        for service, table in self.scale.items():
            if not isinstance(table, dict):
                raise ConfigError(f"cluster.scale.{service}", "must be a table")
            if "service" in table:
                raise ConfigError(f"cluster.scale.{service}.service", "unknown setting")
            values = {**table, "service": service}
            policies.append(build(ScalePolicy, values, prefix=f"scale.{service}."))
        return policies

    def specs(self) -> list[ProcessSpec]:
        """The child specs, validated."""
        return [build(ProcessSpec, table, prefix="process.") for table in self.process]
