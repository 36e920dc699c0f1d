"""Service handlers: subclasses of :class:`ServiceHandler` with ``on_<name>`` methods.

A method is called as ``on_<name>(ctx, **kwargs)`` and returns a value or a
Deferred (``inlineCallbacks`` is welcome). The table of methods is built once
per class from its ``on_*`` attributes; a call to any other name goes to
:meth:`ServiceHandler.on_unknown`, which by default raises ``UnknownMethod``.
Handlers depend on a :class:`Runtime` (the process around them), so a test
builds one with fakes: see :func:`mmo.testing.handler_factory`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, TypeVar

from mmo.errors import BadRequest, UnknownMethod
from mmo.types import Clock
from mmo.wire.gen.mmo.ttypes import Session

if TYPE_CHECKING:
    from mmo.data import Cache, Database

F = TypeVar("F", bound=Callable[..., Any])

__all__ = ["Context", "Runtime", "ServiceHandler", "Session", "idempotent"]


def idempotent(method: F) -> F:
    """Mark an ``on_<name>`` method safe to run twice.

    A call to it is retried on another instance when the instance handling it
    dies; a call to any other method then fails with ``InstanceLost``.
    """
    method.mmo_idempotent = True  # type: ignore[attr-defined]
    return method


@dataclass(slots=True)
class Context:
    """What a handler method knows about the call it serves.

    Attributes:
        service: the service name called.
        method: the method name called.
        caller: who called (an instance id or process name), if known.
        session: the client session the call is made for, if any (set by brokers).
        deadline: clock time after which the caller no longer waits.
        clock: the clock ``deadline`` is measured on.
    """

    service: str
    method: str
    caller: str | None
    session: Session | None
    deadline: float
    clock: Clock = field(repr=False)

    def remaining(self) -> float:
        """Seconds left before the deadline (negative once passed)."""
        return self.deadline - self.clock.seconds()


class Runtime(Protocol):
    """What a handler may use of the process it runs in.

    ``db`` and ``cache`` are optional: a runtime without them (or with None) has
    no database or cache; handlers read them through ``ServiceHandler.db``/``.cache``.
    """

    service_name: str
    instance_id: str
    clock: Clock
    db: Database | None
    cache: Cache | None

    def get_service(self, name: str, pattern: str = "REP", timeout: float | None = None) -> Any:
        """A proxy to another service (see :mod:`mmo.logic.client`)."""
        ...

    def publish(self, topic: str, payload: Any) -> None:
        """Publish ``payload`` on ``topic`` to this service's subscribers."""
        ...

    @property
    def sessions(self) -> Any:
        """Pushes, channels and bindings of sessions (:class:`mmo.logic.sessions.Sessions`)."""
        ...


@dataclass(frozen=True, slots=True)
class _Method:
    """One ``on_<name>``, with what its keyword arguments may be (checked per call)."""

    function: Callable[..., Any]
    idempotent: bool
    #: Names it accepts (None: it takes ``**kwargs``), and those it requires.
    accepts: frozenset[str] | None
    requires: frozenset[str]
    #: Its own first parameters (self, ctx), which a call may not name.
    taken: frozenset[str]

    @classmethod
    def of(cls, function: Callable[..., Any]) -> _Method:
        """Read ``function``'s signature once (inspect is too slow for every call)."""
        params = list(inspect.signature(function).parameters.values())
        taken, rest = params[:2], params[2:]
        named = [p for p in rest if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        open_ended = any(p.kind == p.VAR_KEYWORD for p in rest)
        return cls(
            function,
            bool(getattr(function, "mmo_idempotent", False)),
            None if open_ended else frozenset(p.name for p in named),
            frozenset(p.name for p in named if p.default is p.empty),
            frozenset(p.name for p in taken),
        )

    def check(self, kwargs: dict[str, Any]) -> str | None:
        """Why ``kwargs`` do not fit, or None."""
        keys = kwargs.keys()
        clash = keys & self.taken
        if clash:
            return f"multiple values for argument {min(clash)!r}"
        if self.accepts is not None:
            extra = keys - self.accepts
            if extra:
                return f"got an unexpected keyword argument {min(extra)!r}"
        missing = self.requires - keys
        if missing:
            return f"missing a required argument: {min(missing)!r}"
        return None


class ServiceHandler:
    """Base class of a logic service: define ``on_<name>(self, ctx, **kwargs)`` methods.

    Attributes:
        runtime: the process around the handler (service name, instance id, clock...).
    """

    #: The service name when the worker's config gives none.
    default_service: ClassVar[str | None] = None
    #: Methods whose body is a Thrift struct rather than a map of keyword arguments:
    #: ``{"move": MoveStruct}`` calls ``on_move(ctx, body=<MoveStruct>)``. A method
    #: may return a Thrift struct; it is sent as is.
    body_types: ClassVar[dict[str, type]] = {}

    _methods: ClassVar[dict[str, _Method]] = {}

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        methods: dict[str, _Method] = {}
        for attr in dir(cls):
            if not attr.startswith("on_") or attr == "on_unknown":
                continue
            function = getattr(cls, attr)
            if not callable(function):
                continue
            methods[attr[3:]] = _Method.of(function)
        cls._methods = methods

    # -- what handlers use ---------------------------------------------------

    @property
    def service_name(self) -> str:
        """The name this handler serves under."""
        return self.runtime.service_name

    @property
    def instance_id(self) -> str:
        """This process's instance id in the registry."""
        return self.runtime.instance_id

    @property
    def clock(self) -> Clock:
        """The reactor (or a ``task.Clock`` in tests)."""
        return self.runtime.clock

    def get_service(self, name: str, pattern: str = "REP", timeout: float | None = None) -> Any:
        """A proxy to another service: ``reply = yield self.get_service("sso").login(...)``."""
        return self.runtime.get_service(name, pattern, timeout)

    def publish(self, topic: str, payload: Any) -> None:
        """Publish an event to the subscribers of this service."""
        self.runtime.publish(topic, payload)

    @property
    def db(self) -> Database | None:
        """The process's database (worker ``--database``; see :mod:`mmo.data`), or None.

        Assigning replaces it for this handler only (a test's fake, or None to stop using it).
        """
        overrides = self.__dict__.get("_data_overrides", {})
        if "db" in overrides:
            return overrides["db"]
        return getattr(self.runtime, "db", None)

    @db.setter
    def db(self, value: Database | None) -> None:
        self.__dict__.setdefault("_data_overrides", {})["db"] = value

    @property
    def cache(self) -> Cache | None:
        """The process's cache (worker ``--cache``; see :mod:`mmo.data`), or None.

        Assigning replaces it for this handler only.
        """
        overrides = self.__dict__.get("_data_overrides", {})
        if "cache" in overrides:
            return overrides["cache"]
        return getattr(self.runtime, "cache", None)

    @cache.setter
    def cache(self, value: Cache | None) -> None:
        self.__dict__.setdefault("_data_overrides", {})["cache"] = value

    @property
    def sessions(self) -> Any:
        """Reach clients: ``self.sessions.push(ctx.session, "chat.message", {...})``,
        ``broadcast``, ``join``, ``leave``, ``kick``, ``bind`` (see :mod:`mmo.logic.sessions`)."""
        return self.runtime.sessions

    # -- lifecycle hooks -------------------------------------------------------

    def start(self) -> Any:
        """Called once before the first request; may return a Deferred."""
        return None

    def stop(self) -> Any:
        """Called once after the last request has been answered; may return a Deferred."""
        return None

    # -- dispatch --------------------------------------------------------------

    @classmethod
    def method_names(cls) -> dict[str, bool]:
        """Every method this handler serves, mapped to whether it is idempotent."""
        return {name: m.idempotent for name, m in cls._methods.items()}

    def on_unknown(self, ctx: Context, kwargs: dict[str, Any]) -> Any:
        """Called for a method with no ``on_<name>`` (``ctx.method`` names it) with the
        call's keyword arguments as a dict; raises UnknownMethod by default."""
        raise UnknownMethod(f"service {ctx.service!r} has no method {ctx.method!r}")

    def dispatch(self, ctx: Context, kwargs: dict[str, Any]) -> Any:
        """Call the method ``ctx.method`` with ``kwargs``; return its result or Deferred.

        Raises:
            UnknownMethod: no such method (and ``on_unknown`` not overridden).
            BadRequest: the arguments do not fit the method's signature.
        """
        method = self._methods.get(ctx.method)
        if method is None:
            return self.on_unknown(ctx, kwargs)
        wrong = method.check(kwargs)
        if wrong is not None:
            raise BadRequest(f"{ctx.service}.{ctx.method}: {wrong}")
        return method.function(self, ctx, **kwargs)
