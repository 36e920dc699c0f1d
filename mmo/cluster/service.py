"""The service tree of ``twistd mmo-cluster``: one supervised child per process."""

from __future__ import annotations

from typing import Any

from twisted.application.service import MultiService

from mmo.cluster.config import ClusterConfig
from mmo.cluster.supervisor import ChildProcess, twistd_argv
from mmo.service import OrderedMultiService


def make_cluster_service(
    config: ClusterConfig, *, reactor: Any = None, sink: Any = None
) -> OrderedMultiService:
    """Build (without starting) one :class:`ChildProcess` per configured process;
    each ``[[cluster.process]]`` table is a tier, stopped in reverse order.

    Args:
        config: the processes to run.
        reactor: the reactor (global one if None).
        sink: called as ``sink(name, line)`` for each line a child prints
            (default: logged with the child's name).
    """
    # Each [[cluster.process]] table is a tier: started in order, stopped in reverse,
    # so that workers drain and deregister while the yellow is still there.
    top = OrderedMultiService()
    for spec in config.specs():
        tier = MultiService()
        tier.setServiceParent(top)
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
