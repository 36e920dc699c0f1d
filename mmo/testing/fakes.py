"""Fakes for unit-testing handlers without sockets or a running reactor."""

from __future__ import annotations

from typing import Any, TypeVar

from twisted.internet import task

from mmo.logic.handler import Context, ServiceHandler, Session
from mmo.types import Clock

H = TypeVar("H", bound=ServiceHandler)


class FakeSessions:
    """Records what a handler does to sessions: ``calls`` holds ``(method, args)`` in order."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    def __getattr__(self, method: str) -> Any:
        if method.startswith("_"):
            raise AttributeError(method)

        def record(*args: Any, **kwargs: Any) -> int:
            self.calls.append((method, (*args, *sorted(kwargs.items()))))
            return 1

        return record

    def of(self, method: str) -> list[tuple[Any, ...]]:
        """The arguments of each call to ``method``."""
        return [args for name, args in self.calls if name == method]


class FakeRuntime:
    """A ``Runtime`` that records what the handler publishes and serves fake services.

    Attributes:
        services: proxies returned by ``get_service(name)``, by service name.
        published: ``(topic, payload)`` pairs the handler published, in order.
    """

    def __init__(
        self,
        service_name: str = "test",
        instance_id: str = "test-1",
        clock: Clock | None = None,
        services: dict[str, Any] | None = None,
    ) -> None:
        self.service_name = service_name
        self.instance_id = instance_id
        self.clock: Clock = clock if clock is not None else task.Clock()
        self.services = dict(services or {})
        self.published: list[tuple[str, Any]] = []
        self.sessions = FakeSessions()

    def get_service(self, name: str, pattern: str = "REP", timeout: float | None = None) -> Any:
        """The fake registered for ``name`` (KeyError names what is missing)."""
        try:
            return self.services[name]
        except KeyError:
            raise KeyError(f"no fake for service {name!r}: pass services={{...}}") from None

    def publish(self, topic: str, payload: Any) -> None:
        """Record a publish."""
        self.published.append((topic, payload))


def handler_factory(
    handler_class: type[H],
    *,
    service_name: str | None = None,
    instance_id: str = "test-1",
    clock: Clock | None = None,
    services: dict[str, Any] | None = None,
    **attributes: Any,
) -> H:
    """Build ``handler_class`` on a :class:`FakeRuntime`; extra keywords become attributes.

    Example::

        sso = handler_factory(SSO, db=FakeDB())
        result = sso.on_login(fake_context(sso, "login"), user="harry", passwd="x")
    """
    runtime = FakeRuntime(
        service_name or handler_class.default_service or "test", instance_id, clock, services
    )
    handler = handler_class(runtime)
    for name, value in attributes.items():
        setattr(handler, name, value)
    return handler


def fake_context(
    handler: ServiceHandler,
    method: str,
    *,
    caller: str | None = "test",
    session: Session | None = None,
    timeout: float = 5.0,
) -> Context:
    """A :class:`Context` for calling ``handler``'s ``method`` directly."""
    clock = handler.clock
    return Context(
        service=handler.service_name,
        method=method,
        caller=caller,
        session=session,
        deadline=clock.seconds() + timeout,
        clock=clock,
    )
