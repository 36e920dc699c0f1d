"""The cluster supervisor's control endpoint: service ``cluster``, instance ``cluster-<pid>``,
registered in the yellow ``[cluster] yellow`` names; operators (roles admin and tool)
call ``children()`` and ``reload(service, batch=1)`` (a rolling reload:
:mod:`mmo.cluster.roll`)."""

from __future__ import annotations

import collections
import os
from collections.abc import Callable
from typing import Any

from twisted.application.service import MultiService
from twisted.internet import defer
from twisted.logger import Logger

from mmo.cluster.config import ScalePolicy
from mmo.cluster.roll import Roll, next_name
from mmo.cluster.scale import LocalProcesses, Scaler, ScaleService, StatusSignal
from mmo.logic import OPERATOR_ROLES, Context, Directory, ServiceHandler, callers, idempotent
from mmo.logic.runtime import load_handler, make_worker_tree
from mmo.process import ChildProcess, twistd_argv
from mmo.registry import pid_of
from mmo.service import OrderedMultiService
from mmo.types import InlineCallbacks

__all__ = ["ClusterControl", "ClusterRegistry", "ClusterSupervisor", "make_control_tree"]

log = Logger()

#: Lines of a new child's output kept for the error of a failed reload.
TAIL = 30
WORKER_ROLE = "mmo-worker"
FIGHT_ROLE = "mmo-fight"


def _option(args: tuple[str, ...], *names: str) -> str | None:
    """The value of the last ``--name VALUE`` / ``--name=VALUE`` in ``args``."""
    found = None
    for i, arg in enumerate(args):
        for name in names:
            if arg == name and i + 1 < len(args):
                found = args[i + 1]
            elif arg.startswith(f"{name}="):
                found = arg.partition("=")[2]
    return found


def _replace_option(args: tuple[str, ...], name: str, value: str) -> tuple[str, ...]:
    out = list(args)
    for i, arg in enumerate(out):
        if arg == name and i + 1 < len(out):
            out[i + 1] = value
        elif arg.startswith(f"{name}="):
            out[i] = f"{name}={value}"
    return tuple(out)


class ClusterSupervisor:
    """The supervisor's children as a roll sees them (implements ``roll.Supervisor``).

    Args:
        children: the supervised children (kept up to date: a replaced child's entry
            becomes its successor, so the cluster's telemetry follows).
        specs: each child's role and arguments, by child.
        sink: what the cluster does with a child's output lines (None: logged).
    """

    def __init__(
        self,
        children: list[ChildProcess],
        specs: dict[ChildProcess, tuple[str, tuple[str, ...]]],
        sink: Callable[[str, str], None] | None = None,
    ) -> None:
        self.children = children
        self.specs = specs
        self.sink = sink
        self.tails: dict[ChildProcess, collections.deque[str]] = {}

    def service_of(self, child: ChildProcess) -> str | None:
        """The service a worker child registers under (``--service``, else its handler's
        default), or None for another role or an unknown handler."""
        role, args = self.specs[child]
        if role != WORKER_ROLE:
            return None
        service = _option(args, "--service", "-s")
        if service:
            return service
        handler = _option(args, "--handler")
        if not handler:
            return None
        try:
            return load_handler(handler).default_service
        except Exception as e:
            log.warn("cluster: cannot tell the service of {name}: {e}", name=child.name, e=e)
            return None

    def candidates(self, service: str) -> list[ChildProcess]:
        """The supervised workers of ``service``."""
        return [c for c in self.children if self.service_of(c) == service]

    def pools(self, service: str) -> list[ChildProcess]:
        """The supervised fight dispatchers of service ``service`` (``--service``, else
        ``fight``)."""
        return [
            c
            for c in self.children
            if self.specs[c][0] == FIGHT_ROLE
            and (_option(self.specs[c][1], "--service") or "fight") == service
        ]

    def instance_of(self, child: ChildProcess) -> str:
        """``--instance-id``, else the child's name (``$MMO_NAME``)."""
        _, args = self.specs[child]
        return _option(args, "--instance-id") or str(child.name)

    def spawn(self, old: ChildProcess, name: str | None = None) -> ChildProcess:
        """Start a child like ``old`` under ``name`` (by default the next name of
        ``old``'s), not supervised yet."""
        role, args = self.specs[old]
        own_id = _option(args, "--instance-id")
        if own_id:
            args = _replace_option(
                args, "--instance-id", name if name is not None else next_name(own_id)
            )
        if name is None:
            name = next_name(str(old.name))
        tail: collections.deque[str] = collections.deque(maxlen=TAIL)

        def sink(child_name: str, line: str) -> None:
            tail.append(line)
            if self.sink is not None:
                self.sink(child_name, line)
            else:
                log.info("[{name}] {line}", name=child_name, line=line)

        env = {k: v for k, v in old.env.items() if k != "MMO_NAME"}
        new = ChildProcess(
            name,
            twistd_argv(role, args),
            restart=False,  # until it replaces the old one: a failing start ends the roll
            stop_timeout=old.stop_timeout,
            backoff_max=old.backoff_max,
            env=env,
            reactor=old.reactor,
            sink=sink,
        )
        new.setName(name)
        self.specs[new] = (role, args)
        self.tails[new] = tail
        new.startService()
        return new

    def exited(self, child: ChildProcess) -> bool:
        """Whether the child's process is gone."""
        return child.pid is None

    def output_tail(self, child: ChildProcess) -> str:
        """The last lines the child printed."""
        return "\n".join(self.tails.get(child, ()))

    def discard(self, child: ChildProcess) -> defer.Deferred[Any]:
        """Stop a new child that is not kept."""
        self.specs.pop(child, None)
        self.tails.pop(child, None)
        return defer.maybeDeferred(child.stopService)

    def replace(self, old: ChildProcess, new: ChildProcess) -> defer.Deferred[Any]:
        """Put ``new`` in ``old``'s place in its tier (supervised from now on), then stop
        ``old`` (SIGTERM: it deregisters and drains)."""
        tier = old.parent
        assert isinstance(tier, MultiService)
        index = tier.services.index(old)
        # Inserted by hand: addService would start it again.
        new.parent = tier
        tier.services.insert(index, new)
        tier.namedServices[str(new.name)] = new
        new.restart = old.restart
        self.tails.pop(new, None)
        self.children[self.children.index(old)] = new
        self.specs.pop(old, None)
        stopped = tier.removeService(old)
        old.parent = None
        return defer.maybeDeferred(lambda: stopped)

    def adopt(self, new: ChildProcess, like: ChildProcess) -> None:
        """Supervise ``new`` (started by :meth:`spawn`) in ``like``'s tier, after it."""
        tier = like.parent
        assert isinstance(tier, MultiService)
        # Inserted by hand: addService would start it again.
        new.parent = tier
        tier.services.append(new)
        tier.namedServices[str(new.name)] = new
        new.restart = like.restart
        self.tails.pop(new, None)
        self.children.append(new)

    def retire(self, child: ChildProcess) -> defer.Deferred[Any]:
        """Stop supervising ``child`` and stop it (SIGTERM: it deregisters and drains)."""
        tier = child.parent
        assert isinstance(tier, MultiService)
        if child in self.children:
            self.children.remove(child)
        self.specs.pop(child, None)
        stopped = tier.removeService(child)
        child.parent = None
        return defer.maybeDeferred(lambda: stopped)


class ClusterRegistry:
    """The registry and the instances' drain, through the control endpoint's directory
    (implements ``roll.Registry``)."""

    def __init__(self, directory: Any, reactor: Any, timeout: float = 5.0) -> None:
        self.directory = directory
        self.reactor = reactor
        self.timeout = timeout
        self._agent: Any = None

    @defer.inlineCallbacks
    def ready(self, service: str, instance_id: str) -> InlineCallbacks[bool]:
        """Listed (live, not drained) and, with an operator listener, /readyz 200."""
        from mmo.logic.links import drained
        from mmo.wire import from_value

        found = [i for i in self.directory.view.get(service) if i.instance_id == instance_id]
        if not found or drained(found[0]):
            return False
        address = (found[0].meta or {}).get("metrics")
        if address is None:
            return True
        try:
            address = from_value(address)
        except Exception:
            return True
        if not isinstance(address, str) or not address:
            return True
        try:
            code = yield self._status(f"http://{address}/readyz")
        except Exception:
            return False
        return bool(code == 200)

    @defer.inlineCallbacks
    def _status(self, url: str) -> InlineCallbacks[int]:
        from twisted.web.client import readBody

        from mmo.ops.status import quiet_agent

        if self._agent is None:
            self._agent = quiet_agent(self.reactor, self.timeout)
        response = yield self._agent.request(b"GET", url.encode()).addTimeout(
            self.timeout, self.reactor
        )
        yield readBody(response)
        return int(response.code)

    def drain(self, service: str, instance_id: str, draining: bool = True) -> defer.Deferred[Any]:
        """``ops_drain(draining)`` on the instance."""
        d: defer.Deferred[Any] = self.directory.call(
            service,
            "ops_drain",
            {"draining": draining},
            instance=instance_id,
            timeout=self.timeout,
        )
        return d

    def instances(self, service: str) -> list[str]:
        """The instance ids the registry lists under ``service``, sorted."""
        return sorted(i.instance_id for i in self.directory.view.get(service))

    def pid(self, service: str, instance_id: str) -> int | None:
        """The ``pid`` in ``instance_id``'s record, if listed."""
        for instance in self.directory.view.get(service):
            if instance.instance_id == instance_id:
                return pid_of(instance)
        return None

    def recycle(self, service: str, instance_id: str) -> defer.Deferred[dict[str, Any]]:
        """``recycle()`` on the fight dispatcher."""
        d: defer.Deferred[dict[str, Any]] = self.directory.call(
            service, "recycle", {}, instance=instance_id, timeout=self.timeout
        )
        return d


class ClusterControl(ServiceHandler):
    """The ``cluster`` service: the supervisor's children, and their rolling reload."""

    default_service = "cluster"
    supervisor: ClusterSupervisor | None = None
    roll: Roll | None = None

    @callers(*OPERATOR_ROLES)
    @idempotent
    def on_children(self, ctx: Context) -> list[dict[str, Any]]:
        """Each supervised child: name, role, pid, running, restarts."""
        assert self.supervisor is not None
        return [
            {
                "name": str(c.name),
                "role": self.supervisor.specs.get(c, ("", ()))[0],
                "pid": c.pid,
                "running": c.pid is not None,
                "restarts": c.restarts,
            }
            for c in self.supervisor.children
        ]

    @callers(*OPERATOR_ROLES)
    def on_reload(self, ctx: Context, service: str, batch: int = 1) -> defer.Deferred[Any]:
        """Replace the supervised instances of ``service`` by processes running the code
        on disk now, ``batch`` at a time: ``{"service", "replaced": [[old, new], ...]}``."""
        assert self.roll is not None
        return self.roll.run(str(service), int(batch))


def _rolling(roll: Roll, service: str) -> Callable[[], bool]:
    """Whether ``roll`` rolls ``service`` now."""
    return lambda: roll.rolling == service


def make_control_tree(
    yellow: tuple[str, ...],
    children: list[ChildProcess],
    specs: dict[ChildProcess, tuple[str, tuple[str, ...]]],
    *,
    reactor: Any = None,
    sink: Callable[[str, str], None] | None = None,
    policies: tuple[ScalePolicy, ...] = (),
    scalers: list[Scaler] | None = None,
) -> OrderedMultiService:
    """The served tree of the control endpoint (not started), with a :class:`Scaler` per
    policy (started last; each is also put in ``scalers``, for the cluster's telemetry)."""
    tree = make_worker_tree(
        ClusterControl,
        service="cluster",
        instance_id=f"cluster-{os.getpid()}",
        yellow=yellow,
        role="tool",  # the role it states when it drains the instances it replaces
        reactor=reactor,
    )
    handler = tree.getServiceNamed("worker").handler
    assert isinstance(handler, ClusterControl)
    supervisor = ClusterSupervisor(children, specs, sink)
    handler.supervisor = supervisor
    directory = next(s for s in tree if isinstance(s, Directory))
    roll = Roll(supervisor, ClusterRegistry(directory, handler.clock), handler.clock)
    handler.roll = roll
    if policies:
        backend = LocalProcesses(roll)
        read = StatusSignal(handler.clock, directory)
        for policy in policies:
            scaler = Scaler(
                policy,
                backend,
                read,
                handler.clock,
                busy=_rolling(roll, policy.service),
            )
            if scalers is not None:
                scalers.append(scaler)
            ScaleService(scaler).setServiceParent(tree)
    tree.setName("control")
    return tree
