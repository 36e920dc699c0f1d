"""Proxies to a service: attribute calls that are remote calls, pushes or subscriptions.

``get_service(name, pattern)`` (:mod:`mmo.logic.client`) hands these out:
:class:`ServiceProxy` for ``"REP"``, :class:`PushProxy` for ``"PULL"`` and
:class:`Subscriber` for ``"PUB"``. They need only the :class:`Caller` they were
made by (a :class:`~mmo.logic.client.Directory`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from twisted.internet import defer

from mmo.errors import MmoError
from mmo.logic.pubsub import Subscription
from mmo.wire.gen.mmo.ttypes import Session

__all__ = ["Caller", "PushProxy", "ServiceProxy", "Subscriber"]


class Caller(Protocol):
    """What a proxy needs of the directory that made it."""

    def call(
        self,
        service: str,
        method: str,
        kwargs: dict[str, Any] | None = None,
        *,
        timeout: float | None = None,
        session: Session | None = None,
        instance: str | None = None,
    ) -> defer.Deferred[Any]:
        """Call ``service.method(**kwargs)``."""
        ...

    def push(self, service: str, method: str, kwargs: dict[str, Any] | None = None) -> None:
        """Send a one-way call to one instance of ``service``."""
        ...

    def subscribe(
        self, service: str, topic: str, callback: Callable[[str, Any], Any]
    ) -> Subscription:
        """Call ``callback(topic, payload)`` for each event of ``service`` under ``topic``."""
        ...


class ServiceProxy:
    """Request-reply proxy: ``proxy.<method>(**kwargs)`` returns a Deferred of the reply."""

    def __init__(self, directory: Caller, name: str, timeout: float | None = None) -> None:
        self._directory = directory
        self._name = name
        self._timeout = timeout

    def call(
        self,
        method: str,
        kwargs: dict[str, Any] | None = None,
        *,
        timeout: float | None = None,
        session: Session | None = None,
        instance: str | None = None,
    ) -> defer.Deferred[Any]:
        """Call ``method`` with ``kwargs``, with a deadline of ``timeout`` seconds
        (on ``instance`` only, if given)."""
        return self._directory.call(
            self._name,
            method,
            kwargs,
            timeout=self._timeout if timeout is None else timeout,
            session=session,
            instance=instance,
        )

    def __getattr__(self, method: str) -> Callable[..., defer.Deferred[Any]]:
        if method.startswith("_"):
            raise AttributeError(method)
        return lambda **kwargs: self.call(method, kwargs)

    def __repr__(self) -> str:
        return f"<ServiceProxy {self._name} REP>"


class PushProxy:
    """Push-pull proxy: ``proxy.<method>(**kwargs)`` sends a one-way call."""

    def __init__(self, directory: Caller, name: str) -> None:
        self._directory = directory
        self._name = name

    def __getattr__(self, method: str) -> Callable[..., defer.Deferred[None]]:
        if method.startswith("_"):
            raise AttributeError(method)

        def push(**kwargs: Any) -> defer.Deferred[None]:
            try:
                self._directory.push(self._name, method, kwargs)
            except MmoError:
                return defer.fail()
            return defer.succeed(None)

        return push

    def __repr__(self) -> str:
        return f"<PushProxy {self._name} PULL>"


class Subscriber:
    """Pub-sub proxy: ``subscribe(topic, callback)`` to the service's events."""

    def __init__(self, directory: Caller, name: str) -> None:
        self._directory = directory
        self._name = name

    def subscribe(self, topic: str, callback: Callable[[str, Any], Any]) -> Subscription:
        """Call ``callback(topic, payload)`` for events whose topic starts with ``topic``."""
        return self._directory.subscribe(self._name, topic, callback)
