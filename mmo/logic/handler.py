"""Service handlers: subclasses of :class:`ServiceHandler` with ``on_<name>`` methods.

A method is called as ``on_<name>(ctx, **kwargs)`` and returns a value or a
Deferred (``inlineCallbacks`` is welcome). The table of methods is built once
per class from its ``on_*`` attributes; a call to any other name goes to
:meth:`ServiceHandler.on_unknown`, which by default raises ``UnknownMethod``.
Handlers depend on a :class:`Runtime` (the process around them), so a test
builds one with fakes: see :func:`mmo.testing.handler_factory`.

Who may call what (docs/security.md):

* a **player** reaches only the methods a handler declares for players:
  :func:`client_method` (after login) and :func:`login_method` (as the packet that
  logs in, or another packet before login, such as a registration). Everything
  else is, to a player, a method that does not exist (``UnknownMethod``, the
  same answer as a missing one). The declaration travels in the registry, so
  brokers refuse the rest before any worker sees it; the worker checks again.
* a **cluster member** (another worker, a broker, a tool holding the cluster's
  keys) may call any method, unless :func:`callers` names the roles that may.

Every handler also has built-in methods for operators, named ``ops_<name>`` (the prefix
is reserved): ``ops_drain(draining=True)`` takes the instance out of its callers' picks
and back (:meth:`ServiceHandler.on_ops_drain`). They are for :data:`OPERATOR_ROLES`
only, never for players, and are left out of :meth:`ServiceHandler.method_names` and of
the registry's lists of methods.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, TypeVar

from twisted.internet import defer

from mmo.errors import BadRequest, Forbidden, Unavailable, UnknownMethod
from mmo.types import Clock
from mmo.wire.gen.mmo.ttypes import Origin, Session

if TYPE_CHECKING:
    from mmo.data import Cache, Database

F = TypeVar("F", bound=Callable[..., Any])

__all__ = [
    "OPERATOR_ROLES",
    "OPS_PREFIX",
    "Context",
    "NoSettings",
    "Origin",
    "Runtime",
    "ServiceHandler",
    "Session",
    "callers",
    "client_method",
    "idempotent",
    "login_method",
]


#: The roles that may call operators' methods (``ops_drain``, the session service's
#: ``channels``, the fight dispatcher's ``drain_process``, a broker's ``drain``): the
#: admin console's directory and the ``mmo`` tool.
OPERATOR_ROLES = ("admin", "tool")
#: The prefix of the built-in operators' methods every handler has (``ops_drain``).
OPS_PREFIX = "ops_"


def idempotent(method: F) -> F:
    """Mark an ``on_<name>`` method safe to run twice.

    A call to it is retried on another instance when the instance handling it
    dies; a call to any other method then fails with ``InstanceLost``.
    """
    method.mmo_idempotent = True  # type: ignore[attr-defined]
    return method


def client_method(method: F) -> F:
    """Let logged-in players call this ``on_<name>`` method (route ``service.name``).

    Methods are not client-callable unless declared: a player's request to any
    other method is refused as if the method did not exist. ``ctx.session`` then
    holds the player's session (set by the broker, never from the body).
    """
    method.mmo_client = True  # type: ignore[attr-defined]
    return method


def login_method(method: F) -> F:
    """Let a player call this method before logging in, and only then: the broker's
    login route (``sso.login``) and its anonymous routes (``sso.register``) must be
    login methods; after login they are refused like any undeclared method.
    ``ctx.peer`` holds the player's address (for per-address limits)."""
    method.mmo_login = True  # type: ignore[attr-defined]
    return method


def callers(*roles: str) -> Callable[[F], F]:
    """Only cluster members of these roles may call this method (e.g. ``"broker"``);
    others get ``Forbidden``, players a method that does not exist.

    The role is the one the calling process states in each call (``ctx.caller_role``):
    members are authenticated by the cluster's CURVE keys and trusted to state it.
    """
    if not roles or not all(isinstance(role, str) and role for role in roles):
        raise TypeError("callers() takes one or more role names")

    def mark(method: F) -> F:
        method.mmo_roles = frozenset(roles)  # type: ignore[attr-defined]
        return method

    return mark


@dataclass(frozen=True)
class NoSettings:
    """The settings of a handler that declares none."""


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
        caller_role: the calling process's role (``broker``, ``worker``, ``fight``,
            ``tool``...), as it states it.
        origin: on whose behalf the call is made: ``Origin.MEMBER`` (the caller's own),
            ``Origin.CLIENT`` (a logged-in player's packet, forwarded by a broker) or
            ``Origin.LOGIN`` (a player's packet before login).
        peer: the player's address (host) when the call carries a player's packet.
    """

    service: str
    method: str
    caller: str | None
    session: Session | None
    deadline: float
    clock: Clock = field(repr=False)
    caller_role: str | None = None
    origin: int = Origin.MEMBER
    peer: str | None = None

    def remaining(self) -> float:
        """Seconds left before the deadline (negative once passed)."""
        return self.deadline - self.clock.seconds()

    @property
    def from_client(self) -> bool:
        """Whether the call carries a player's packet (its body is the player's)."""
        return self.origin != Origin.MEMBER


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
    #: The handler's settings (an instance of its ``Settings``), or None for the defaults.
    settings: Any

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
    #: Whether players may call it after login / before login.
    client: bool = False
    login: bool = False
    #: The roles that may call it (None: any cluster member).
    roles: frozenset[str] | None = None

    @classmethod
    def of(cls, function: Callable[..., Any], client: bool, login: bool) -> _Method:
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
            client or bool(getattr(function, "mmo_client", False)),
            login or bool(getattr(function, "mmo_login", False)),
            getattr(function, "mmo_roles", None),
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
        settings: the handler's settings, an instance of its ``Settings`` class.
    """

    #: The service name when the worker's config gives none.
    default_service: ClassVar[str | None] = None
    #: The handler's settings: a frozen dataclass whose fields the worker fills from
    #: its config's ``[worker.settings]`` table and ``--set NAME=VALUE`` options,
    #: checked before anything starts (an unknown name or a bad value is a usage error).
    Settings: ClassVar[type] = NoSettings
    #: More methods players may call, by name (besides those marked :func:`client_method`):
    #: for opening an inherited method in a subclass.
    client_methods: ClassVar[Iterable[str]] = ()
    #: More methods players may call before login (besides :func:`login_method` ones).
    login_methods: ClassVar[Iterable[str]] = ()
    #: Methods whose body is a Thrift struct rather than a map of keyword arguments:
    #: ``{"move": MoveStruct}`` calls ``on_move(ctx, body=<MoveStruct>)``. A method
    #: may return a Thrift struct; it is sent as is.
    body_types: ClassVar[dict[str, type]] = {}

    _methods: ClassVar[dict[str, _Method]] = {}

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        settings = getattr(runtime, "settings", None)
        self.settings: Any = settings if settings is not None else self.Settings()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        client, login = frozenset(cls.client_methods), frozenset(cls.login_methods)
        methods: dict[str, _Method] = {}
        for attr in dir(cls):
            if not attr.startswith("on_") or attr == "on_unknown":
                continue
            function = getattr(cls, attr)
            if not callable(function):
                continue
            name = attr[3:]
            method = methods[name] = _Method.of(function, name in client, name in login)
            if method.roles is not None and (method.client or method.login):
                raise TypeError(
                    f"{cls.__qualname__}.{attr}: a method for players cannot also be "
                    "limited to callers of some roles"
                )
        undeclared = (client | login) - methods.keys()
        if undeclared:
            raise TypeError(
                f"{cls.__qualname__} opens methods it does not have: {sorted(undeclared)}"
            )
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

    # -- operators' methods ----------------------------------------------------

    @property
    def draining(self) -> bool:
        """Whether an operator drained this instance (:meth:`on_ops_drain`): it takes no new
        calls callers could send elsewhere."""
        server = getattr(self.runtime, "server", None)
        return bool(getattr(server, "draining", False))

    @callers(*OPERATOR_ROLES)
    def on_ops_drain(self, ctx: Context, draining: bool = True) -> dict[str, Any]:
        """Drain this instance (``draining`` true), or take it back (false).

        A drained instance stays registered, with meta ``drained: true``: callers stop
        picking it as soon as they see it, and its server answers ``Unavailable`` to calls
        they would send elsewhere (they do), while it still serves what it holds (calls
        bound to it, one-way requests, pushes) and operators' ``ops_*`` calls; its
        readiness (``/readyz``) is false. Taken back, it is picked again.

        Returns:
            ``{"instance": <instance id>, "draining": <bool>}``.

        Raises:
            BadRequest: ``draining`` is not a boolean.
            Unavailable: the handler is not served by a server (a test's runtime).
        """
        if not isinstance(draining, bool):
            raise BadRequest(f"{ctx.service}.{ctx.method}: draining must be true or false")
        server = getattr(self.runtime, "server", None)
        if server is None:
            raise Unavailable(f"{self.instance_id} is not served by a server")
        server.drain(draining)
        return {"instance": self.instance_id, "draining": draining}

    # -- dispatch --------------------------------------------------------------

    @classmethod
    def method_names(cls) -> dict[str, bool]:
        """Every method this handler serves, mapped to whether it is idempotent (not the
        built-in operators' methods: :meth:`ops_names`)."""
        return {
            name: m.idempotent
            for name, m in cls._methods.items()
            if not name.startswith(OPS_PREFIX)
        }

    @classmethod
    def ops_names(cls) -> frozenset[str]:
        """The operators' methods it serves (``ops_drain``...)."""
        return frozenset(name for name in cls._methods if name.startswith(OPS_PREFIX))

    @classmethod
    def registry_meta(cls) -> dict[str, Any]:
        """What the registry tells callers of this handler's methods: all of them,
        the idempotent ones, those players may call after login (``client``) and
        before it (``login``), and the handler class (the operators' methods are left out)."""
        methods = {n: m for n, m in cls._methods.items() if not n.startswith(OPS_PREFIX)}
        return {
            "methods": sorted(methods),
            "idempotent": sorted(n for n, m in methods.items() if m.idempotent),
            "client": sorted(n for n, m in methods.items() if m.client),
            "login": sorted(n for n, m in methods.items() if m.login),
            "handler": f"{cls.__module__}:{cls.__qualname__}",
        }

    def on_unknown(self, ctx: Context, kwargs: dict[str, Any]) -> Any:
        """Called for a method with no ``on_<name>`` (``ctx.method`` names it) with the
        call's keyword arguments as a dict; raises UnknownMethod by default."""
        raise UnknownMethod(f"service {ctx.service!r} has no method {ctx.method!r}")

    def dispatch(self, ctx: Context, kwargs: dict[str, Any]) -> Any:
        """Call the method ``ctx.method`` with ``kwargs``; return its result or Deferred
        (an ``async def`` method's coroutine runs as one).

        Raises:
            UnknownMethod: no such method (and ``on_unknown`` not overridden), or a
                player called a method not declared for players (the same error).
            Forbidden: the caller's role is not one the method allows.
            BadRequest: the arguments do not fit the method's signature.
        """
        method = self._methods.get(ctx.method)
        origin = ctx.origin
        if origin != Origin.MEMBER:
            # A player: what is not declared for players does not exist.
            if method is None or not (method.login if origin == Origin.LOGIN else method.client):
                raise UnknownMethod(f"service {ctx.service!r} has no method {ctx.method!r}")
        elif method is None:
            return _started(self.on_unknown(ctx, kwargs))
        elif method.roles is not None and ctx.caller_role not in method.roles:
            raise Forbidden(
                f"{ctx.service}.{ctx.method} is for {', '.join(sorted(method.roles))} only, "
                f"not {ctx.caller_role or 'an unnamed role'} ({ctx.caller})"
            )
        wrong = method.check(kwargs)
        if wrong is not None:
            raise BadRequest(f"{ctx.service}.{ctx.method}: {wrong}")
        return _started(method.function(self, ctx, **kwargs))


def _started(result: Any) -> Any:
    """A method's result, with a coroutine (``async def``) started as a Deferred."""
    return defer.ensureDeferred(result) if inspect.iscoroutine(result) else result
