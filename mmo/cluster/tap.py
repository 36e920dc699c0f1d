"""``twistd mmo-cluster``: run a whole cluster described by one config file."""

from __future__ import annotations

from typing import Any, ClassVar

from twisted.application.service import MultiService
from twisted.python import usage
from typing_extensions import override

from mmo.cluster.config import ClusterConfig
from mmo.tap import RoleOptions, build_role


class Options(RoleOptions):
    """Options of ``twistd mmo-cluster``."""

    section = "cluster"
    config_class = ClusterConfig
    optParameters: ClassVar[list[list[Any]]] = [
        *RoleOptions.optParameters,
        ["stop-timeout", None, None, "Seconds a child has to exit after SIGTERM."],
    ]

    @override
    def postOptions(self) -> None:
        """A cluster needs its config file."""
        if not self["config"]:
            raise usage.UsageError("--config FILE is required (see etc/cluster.toml)")
        super().postOptions()


def makeService(options: Options) -> MultiService:
    """Build the cluster service tree from parsed options."""
    from mmo.cluster.service import make_cluster_service

    return build_role("mmo-cluster", lambda: make_cluster_service(options.config))
