"""The service tree of ``twistd mmo-cluster``: one supervised child per process."""

from __future__ import annotations

from typing import Any

from twisted.application.service import MultiService, Service
from twisted.internet import defer
from typing_extensions import override

from mmo.cluster.config import ClusterConfig
from mmo.cluster.supervisor import ChildProcess, twistd_argv


class TieredService(MultiService):
    """Starts its tiers in order and stops them in reverse, each tier after the next
    has exited: workers drain and deregister while the yellow is still there."""

    def __init__(self) -> None:
        super().__init__()
        self.tiers: list[MultiService] = []

    def add_tier(self) -> MultiService:
        """A new tier, started after and stopped before the ones before it."""
        tier = MultiService()
        tier.setServiceParent(self)
        self.tiers.append(tier)
        return tier

    @override
    @defer.inlineCallbacks
    def stopService(self) -> Any:
        """Stop tier by tier, last first."""
        Service.stopService(self)
        for tier in reversed(self.tiers):
            yield tier.stopService()


def make_cluster_service(
    config: ClusterConfig, *, reactor: Any = None, sink: Any = None
) -> TieredService:
    """Build (without starting) one :class:`ChildProcess` per configured process;
    each ``[[cluster.process]]`` table is a tier, stopped in reverse order.

    Args:
        config: the processes to run.
        reactor: the reactor (global one if None).
        sink: called as ``sink(name, line)`` for each line a child prints
            (default: logged with the child's name).
    """
    top = TieredService()
    for spec in config.specs():
        tier = top.add_tier()
        for name, _ in spec.expand():
            child = ChildProcess(
                name,
                twistd_argv(spec.role, spec.args),
                restart=spec.restart,
                stop_timeout=config.stop_timeout,
                backoff_max=config.backoff_max,
                reactor=reactor,
                sink=sink,
            )
            child.setName(name)
            child.setServiceParent(tier)
    return top
