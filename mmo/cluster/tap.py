"""``twistd mmo-cluster``: run a whole cluster described by one config file."""

from __future__ import annotations

from typing import Any, ClassVar

from twisted.application.service import IService, IServiceMaker
from twisted.plugin import getPlugins
from twisted.python import usage
from typing_extensions import override

from mmo.cluster.config import ClusterConfig
from mmo.config import ConfigError
from mmo.tap import RoleOptions, inherit_ops


def role_options(role: str) -> type[usage.Options]:
    """The options class of the twistd plugin named ``role`` (as twistd finds it)."""
    for maker in getPlugins(IServiceMaker):
        if maker.tapname == role:
            options: type[usage.Options] = maker.options
            return options
    raise ConfigError("role", f"no twistd plugin is called {role!r}")


def check_arguments(role: str, args: tuple[str, ...]) -> None:
    """Parse ``args`` with the options of ``role``, as the child will, without building
    its service tree (the child checks its environment itself, once the cluster has
    made what it provides, such as fresh CURVE keys).

    Raises:
        usage.UsageError: an argument the role does not take, or a bad value.
        ConfigError: no such role.
    """
    cls = role_options(role)
    options = cls(build=False) if issubclass(cls, RoleOptions) else cls()
    options.parseOptions(list(args))


class Options(RoleOptions):
    """Options of ``twistd mmo-cluster``."""

    section = "cluster"
    config_class = ClusterConfig
    optParameters: ClassVar[list[list[Any]]] = [
        *RoleOptions.optParameters,
        ["stop-timeout", None, None, "Seconds a child has to exit after SIGTERM."],
        [
            "yellow",
            None,
            None,
            "Yellow address(es) the control endpoint (service cluster: reload) registers in.",
        ],
    ]

    @override
    def postOptions(self) -> None:
        """A cluster needs its config file."""
        if not self["config"]:
            raise usage.UsageError("--config FILE is required (see etc/cluster.toml)")
        super().postOptions()

    @override
    def check(self) -> None:
        """Every child's arguments parse with its role's options: a typo fails here,
        before anything starts, not as a child that keeps dying."""
        for spec in self.config.specs():
            try:
                check_arguments(spec.role, spec.args)
            except usage.UsageError as e:
                raise ConfigError(f"process {spec.name} ({spec.role})", str(e)) from e

    @override
    def build(self) -> IService:
        """The cluster's service tree: one supervised child per process."""
        from mmo.cluster.service import make_cluster_service

        return make_cluster_service(
            self.config, child_args=lambda args: inherit_ops(self.ops, args)
        )


def makeService(options: Options) -> IService:
    """The service tree built while the options were checked."""
    return options.service
