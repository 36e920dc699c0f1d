"""The service tree of ``twistd mmo-cluster``: fresh keys, then one supervised child per process."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

from twisted.application.service import MultiService, Service
from twisted.logger import Logger
from typing_extensions import override

from mmo.cluster.config import ClusterConfig
from mmo.process import ChildProcess, twistd_argv
from mmo.service import OrderedMultiService
from mmo.telemetry.metrics import Metric, Telemetry, counter, gauge
from mmo.zmq.curve import ENV_KEYS, provide_curve_keys

log = Logger()


class FreshKeys(Service):
    """Makes the cluster's CURVE keys when none are given, for the life of the cluster.

    With ``$MMO_CURVE_KEYS`` unset (and insecure links not chosen with
    ``MMO_INSECURE=1``), it writes a new keys directory (mode 0700, in the system's
    temporary directory) when started, sets ``$MMO_CURVE_KEYS`` in this process's
    environment (so the children it spawns, and this process's own links, use it)
    and removes both when stopped. No key ever ships with mmo.

    Attributes:
        directory: the keys directory it made, while running (None otherwise).
    """

    def __init__(self) -> None:
        self.directory: str | None = None

    @override
    def startService(self) -> None:
        """Make the keys, unless some are given or insecure links were chosen."""
        super().startService()
        scratch = tempfile.mkdtemp(prefix="mmo-curve-")
        self.directory = provide_curve_keys(scratch)
        if self.directory is None:
            os.rmdir(scratch)
            return
        log.info(
            "cluster: fresh CURVE keys for this run in {directory} (tools that talk to the "
            "cluster need {env}={directory}); removed when the cluster stops",
            directory=self.directory,
            env=ENV_KEYS,
        )

    @override
    def stopService(self) -> None:
        """Remove the keys this service made."""
        super().stopService()
        if self.directory is not None:
            if os.environ.get(ENV_KEYS) == self.directory:
                del os.environ[ENV_KEYS]
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None


class BuiltOnStart(MultiService):
    """A service whose tree is built when it starts (``build()``), not before: the
    cluster's control endpoint needs the keys :class:`FreshKeys` makes at start."""

    def __init__(self, build: Callable[[], Service]) -> None:
        super().__init__()
        self._build = build

    @override
    def startService(self) -> None:
        """Build the tree (once), then start it."""
        if not list(self):
            self._build().setServiceParent(self)
        super().startService()


def make_cluster_service(
    config: ClusterConfig,
    *,
    reactor: Any = None,
    sink: Any = None,
    child_args: Callable[[tuple[str, ...]], tuple[str, ...]] | None = None,
) -> OrderedMultiService:
    """Build (without starting) one :class:`ChildProcess` per configured process;
    each ``[[cluster.process]]`` table is a tier, stopped in reverse order, after
    :class:`FreshKeys` (started first, stopped last).

    Args:
        config: the processes to run.
        reactor: the reactor (global one if None).
        sink: called as ``sink(name, line)`` for each line a child prints
            (default: logged with the child's name).
        child_args: what each child's arguments become (``mmo-cluster`` adds its
            operators' settings: :func:`mmo.tap.inherit_ops`).
    """
    top = OrderedMultiService()
    keys = FreshKeys()
    keys.setName("keys")
    keys.setServiceParent(top)
    # Each [[cluster.process]] table is a tier: started in order, stopped in reverse,
    # so that workers drain and deregister while the yellow is still there.
    children: list[ChildProcess] = []
    specs: dict[ChildProcess, tuple[str, tuple[str, ...]]] = {}
    for spec in config.specs():
        tier = MultiService()
        tier.setServiceParent(top)
        args = child_args(spec.args) if child_args is not None else spec.args
        for name, _ in spec.expand():
            child = ChildProcess(
                name,
                twistd_argv(spec.role, args),
                restart=spec.restart,
                stop_timeout=config.stop_timeout,
                backoff_max=config.backoff_max,
                reactor=reactor,
                sink=sink,
            )
            child.setName(name)
            child.setServiceParent(tier)
            children.append(child)
            specs[child] = (spec.role, tuple(args))
    scalers: list[Any] = []
    telemetry = Telemetry("cluster", f"cluster-{os.getpid()}")
    if config.yellow:
        from mmo.cluster.control import make_control_tree

        # Last: started once every tier runs, stopped first (no reload while stopping);
        # built when it starts, with the CURVE keys FreshKeys made by then.
        yellow = tuple(y.strip() for y in config.yellow.split(",") if y.strip())
        policies = tuple(config.policies())

        def build_control() -> Service:
            tree = make_control_tree(
                yellow,
                children,
                specs,
                reactor=reactor,
                sink=sink,
                policies=policies,
                scalers=scalers,
            )
            # Its registry entry says where the cluster's operator listener is.
            telemetry.publish_to(tree.getServiceNamed("worker").registration)
            return tree

        control = BuiltOnStart(build_control)
        control.setName("control")
        control.setServiceParent(top)
    telemetry.add_metrics(lambda: _children_metrics(children))
    telemetry.add_metrics(lambda: _scale_metrics(scalers))
    telemetry.add_check("children", lambda: _children_running(children))
    top.telemetry = telemetry
    return top


def _children_metrics(children: list[ChildProcess]) -> Iterator[Metric]:
    yield gauge(
        "mmo_cluster_child_up",
        "Whether each supervised child process runs now (1) or not (0).",
        ("child",),
        [((str(c.name),), 1 if c.pid is not None else 0) for c in children],
    )
    yield counter(
        "mmo_cluster_child_restarts",
        "Times each supervised child was started again after it died.",
        ("child",),
        [((str(c.name),), c.restarts) for c in children],
    )


def _scale_metrics(scalers: list[Any]) -> Iterator[Metric]:
    if not scalers:
        return
    yield counter(
        "mmo_cluster_scale_decisions",
        "Auto-scaling changes made, by service and direction (up, down).",
        ("service", "direction"),
        [
            ((s.policy.service, direction), n)
            for s in scalers
            for direction, n in sorted(s.decisions.items())
        ],
    )
    yield gauge(
        "mmo_cluster_scale_instances",
        "Instances of each auto-scaled service the cluster runs now.",
        ("service",),
        [((s.policy.service,), s.instances()) for s in scalers],
    )


def _children_running(children: list[ChildProcess]) -> tuple[bool, str]:
    down = [str(c.name) for c in children if c.pid is None]
    if down:
        return False, f"not running: {', '.join(down)}"
    return True, f"{len(children)} children running"
