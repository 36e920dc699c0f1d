"""The calling side of the logic layer: a :class:`Directory` of services and their proxies.

``get_service(name, pattern)`` gives a proxy whose attribute calls are remote
calls: ``reply = yield get_service("sso", "REP").login(user="harry")``.

* ``"REP"`` (request-reply): each call goes to the live instance with the
  fewest calls outstanding from this process, has a deadline, and fires with
  the reply or fails with a distinct error (:mod:`mmo.errors`). When an
  instance is lost (its connection drops, or the registry expires it), calls in
  flight to methods it marked idempotent are sent to another instance; the
  others fail with ``InstanceLost``.
* ``"PULL"`` (push-pull): one-way; each push goes to one instance, at most once.
* ``"PUB"`` (pub-sub): ``subscribe(topic, callback)`` to the events the
  service's instances publish.

The :class:`Directory` is the one object a process holds; its parts each do one job:
the registry view (:class:`~mmo.registry.RegistryView`), the links to instances
(:mod:`mmo.logic.links`), calls and one-way requests (:mod:`mmo.logic.calls`),
pushes and subscriptions (:mod:`mmo.logic.pubsub`) and the proxies
(:mod:`mmo.logic.proxies`). The first directory started in a process is the one
:func:`get_service` uses.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any, ClassVar

from twisted.application.service import MultiService
from twisted.internet import defer
from typing_extensions import override

from mmo.logic.calls import DEFAULT_TIMEOUT, Calls
from mmo.logic.proxies import PushProxy, ServiceProxy, Subscriber
from mmo.logic.pubsub import PubSub, Subscription
from mmo.registry import RegistryView
from mmo.telemetry.metrics import Metric, counter, gauge
from mmo.wire.gen.mmo.ttypes import Header
from mmo.zmq import ZmqContext

__all__ = [
    "Directory",
    "PushProxy",
    "ServiceProxy",
    "Subscriber",
    "Subscription",
    "connect",
    "get_service",
]


class Directory(MultiService):
    """How a process finds and calls services: a registry view plus links to instances.

    Args:
        context: the process's ZeroMQ context.
        yellows: addresses of the yellows.
        caller_id: how this process names itself in calls (default: ``pid-N``).
        caller_role: the role it states in calls (``broker``, ``worker``, ``tool``...;
            handlers may allow a method to some roles only).
        default_timeout: deadline of a call when none is given, in seconds.

    Attributes:
        call: a request-reply call, ``call(service, method, kwargs, *, timeout, ...)``: a
            Deferred of the reply (:meth:`mmo.logic.calls.Calls.call`).
        forward: the same with a raw body, the outcome handed to a callback, no
            Deferred (a broker's players' requests: :meth:`mmo.logic.calls.Calls.forward`).
        send: a one-way request on the call links, ``send(service, method, body, *,
            instance, **header)``: the instance id it went to, or None
            (:meth:`mmo.logic.calls.Calls.send`).
        send_all: the same to every live instance: how many
            (:meth:`mmo.logic.calls.Calls.send_all`).
        push: a one-way call to one instance, at most once, ``push(service, method,
            kwargs)`` (:meth:`mmo.logic.pubsub.PubSub.push`).
        subscribe: a callback for the service's events under a topic prefix,
            ``subscribe(service, topic, callback)`` (:meth:`mmo.logic.pubsub.PubSub.subscribe`).
        view: the registry view (a child service).
        calls: calls and one-way requests, on :attr:`pools`.
        pools: the links to the instances of each service used.
        pubsub: pushes and subscriptions.
        owns_context: close the ZeroMQ context when stopping (a standalone directory
            owns it).
    """

    _current: ClassVar[Directory | None] = None

    def __init__(
        self,
        context: ZmqContext,
        yellows: Iterable[str],
        *,
        caller_id: str | None = None,
        caller_role: str = "tool",
        default_timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        super().__init__()
        self.context = context
        self.clock = context.reactor
        self.caller_id = caller_id or f"pid-{os.getpid()}"
        self.caller_role = caller_role
        self.default_timeout = default_timeout
        self.view = RegistryView(context, yellows)
        self.view.setServiceParent(self)
        self.calls = Calls(
            context,
            self.view,
            caller_id=self.caller_id,
            caller_role=caller_role,
            default_timeout=default_timeout,
        )
        self.pools = self.calls.pools
        self.view.listen(self.pools.changed)
        self.pubsub = PubSub(context, self.pools, caller_id=self.caller_id, caller_role=caller_role)
        # What the directory does is its parts' own methods (no extra hop per request).
        self.call = self.calls.call
        self.forward = self.calls.forward
        self.send = self.calls.send
        self.send_all = self.calls.send_all
        self.push = self.pubsub.push
        self.subscribe = self.pubsub.subscribe
        self.owns_context = False

    @property
    def on_one_way_error(self) -> Callable[[Header], None] | None:
        """Called with the header of each ERROR an instance sends back for a failed
        one-way request made for a player (brokers tell the player)."""
        return self.calls.on_one_way_error

    @on_one_way_error.setter
    def on_one_way_error(self, callback: Callable[[Header], None] | None) -> None:
        self.calls.on_one_way_error = callback

    @property
    def late_replies(self) -> int:
        """Replies that came after their call was over."""
        return self.calls.late_replies

    @classmethod
    def current(cls) -> Directory:
        """The directory of this process (the first one started)."""
        if cls._current is None:
            raise RuntimeError(
                "no mmo Directory is running in this process: run inside a worker, "
                "or start one with mmo.logic.connect(yellows)"
            )
        return cls._current

    @override
    def startService(self) -> None:
        """Start watching the registry; become the process's directory."""
        super().startService()
        if Directory._current is None:
            Directory._current = self

    @override
    def stopService(self) -> defer.Deferred[None]:
        """Fail what is outstanding, close every link, stop watching."""
        if Directory._current is self:
            Directory._current = None
        self.calls.abandon("the caller is shutting down")
        self.pools.close()
        self.pubsub.close()
        d: defer.Deferred[None] = defer.maybeDeferred(super().stopService)
        if self.owns_context:
            d.addBoth(lambda _: self.context.close())
        return d

    def links(self, service: str) -> dict[str, bool]:
        """Instance id -> whether this process's link to it is connected, for every
        instance of ``service`` that is not leaving (draining ones are left out).

        Opens links to every instance, now and later, so that a dead instance is seen
        at once (its connection drops), before the registry says so.
        """
        return self.pools.connected(service)

    def metrics(self) -> Iterator[Metric]:
        """The calls this process made, and its view of the registry (a metrics source)."""
        yield from self.calls.latencies.collect()
        stats = self.pools.stats()
        yield gauge(
            "mmo_client_calls_in_flight",
            "Calls made by this process and not answered yet, by service.",
            ("service",),
            [((name,), sum(i["outstanding"] for i in ids.values())) for name, ids in stats.items()],
        )
        view = self.view
        yield gauge(
            "mmo_registry_instances",
            "Live instances of each service, as this process's registry view has them.",
            ("service",),
            [((name,), len(instances)) for name, instances in view.instances.items()],
        )
        heard = view.last_heard
        yield gauge(
            "mmo_registry_watch_lag_seconds",
            "Seconds since this process's registry view last heard from its yellow "
            "(renewed every second: more than a few means the watch is failing over).",
            values=self.clock.seconds() - heard if heard >= 0 else -1,
        )
        yield counter(
            "mmo_client_late_replies",
            "Replies that came after their call was over (deadline passed).",
            values=self.calls.late_replies,
        )

    def readiness(self) -> tuple[bool, str]:
        """Whether the registry view is synced (a readiness check)."""
        if self.view.synced:
            return True, f"watching {self.view.watching}"
        return False, f"no snapshot yet from {', '.join(self.view.yellows)}"

    def stats(self) -> dict[str, dict[str, dict[str, Any]]]:
        """Per service and instance: calls sent, outstanding, connected, draining."""
        return self.pools.stats()

    # -- proxies -------------------------------------------------------------

    def get_service(self, name: str, pattern: str = "REP", timeout: float | None = None) -> Any:
        """A proxy to service ``name``: ``"REP"``, ``"PULL"`` or ``"PUB"`` (see module doc)."""
        kind = pattern.upper()
        if kind in ("REP", "REQ"):
            return ServiceProxy(self, name, timeout)
        if kind in ("PULL", "PUSH"):
            return PushProxy(self, name)
        if kind in ("PUB", "SUB"):
            return Subscriber(self, name)
        raise ValueError(f"unknown pattern {pattern!r}: use REP, PULL or PUB")


def get_service(name: str, pattern: str = "REP", timeout: float | None = None) -> Any:
    """A proxy to service ``name`` through this process's :class:`Directory`."""
    return Directory.current().get_service(name, pattern, timeout)


def connect(
    yellows: Iterable[str] | str,
    *,
    reactor: Any = None,
    caller_id: str | None = None,
    caller_role: str = "tool",
    default_timeout: float = DEFAULT_TIMEOUT,
) -> Directory:
    """Start a standalone :class:`Directory` (for scripts and tools); stop it when done.

    Its links use the CURVE keys ``$MMO_CURVE_KEYS`` names, if any (a cluster that runs
    CURVE, the default, answers nothing else).
    """
    if isinstance(yellows, str):
        yellows = [y.strip() for y in yellows.split(",") if y.strip()]
    directory = Directory(
        ZmqContext(reactor),
        yellows,
        caller_id=caller_id,
        caller_role=caller_role,
        default_timeout=default_timeout,
    )
    directory.owns_context = True
    directory.startService()
    return directory
