"""Fakes for unit-testing handlers without sockets or a running reactor.

:func:`handler_factory` builds a handler on a :class:`FakeRuntime`; :func:`call` calls
one of its methods the way a worker does (through the handler's dispatch table, with a
:class:`~mmo.logic.handler.Context`); :func:`result_of` reads an already-fired Deferred.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from twisted.internet import defer, task
from twisted.python.failure import Failure

from mmo.config import build
from mmo.data.base import Cache, Database, Params, Row
from mmo.data.errors import DataError
from mmo.data.memory import MemoryCache
from mmo.data.sqlite import configure, run_statement, run_transaction
from mmo.logic.handler import Context, Origin, ServiceHandler, Session
from mmo.types import Clock

H = TypeVar("H", bound=ServiceHandler)


def result_of(d: Any) -> Any:
    """The result of an already-fired Deferred (or a plain value); a failure is raised."""
    if not isinstance(d, defer.Deferred):
        return d
    results: list[Any] = []
    d.addBoth(results.append)
    assert results, "the Deferred has not fired"
    if isinstance(results[0], Failure):
        results[0].raiseException()
    return results[0]


def failure_of(d: defer.Deferred[Any]) -> BaseException:
    """The exception an already-fired, failed Deferred carries (an assertion error if it
    has not fired or succeeded)."""
    results: list[Any] = []
    d.addBoth(results.append)
    assert results, "the Deferred has not fired"
    assert isinstance(results[0], Failure), f"expected a failure, got {results[0]!r}"
    error = results[0].value
    assert error is not None
    return error


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


class FakeDatabase:
    """A synchronous in-memory SQLite behind the ``mmo.data.Database`` interface.

    Every operation runs at once and returns a fired Deferred, so a unit test
    needs no reactor; the SQL (``%s`` placeholders) is the same as on the real
    databases. ``migrate(FakeDatabase())`` gives it mmo's tables.

    Attributes:
        down: when set, every operation fails with it (simulate an outage).
        statements: every statement run, in order.
    """

    dialect = "sqlite"
    timeout = 10.0

    def __init__(self) -> None:
        self.connection = sqlite3.connect(":memory:", isolation_level=None)
        configure(self.connection, ":memory:", 0.0)
        self.down: DataError | None = None
        self.statements: list[str] = []

    def _step(self, sql: str, params: Params) -> defer.Deferred[tuple[list[Row], int]]:
        if self.down is not None and sql != "ROLLBACK":
            return defer.fail(self.down)
        self.statements.append(sql)
        try:
            return defer.succeed(run_statement(self.connection, sql, params))
        except DataError as e:
            return defer.fail(e)

    def run_query(
        self, sql: str, params: Params = None, *, timeout: float | None = None
    ) -> defer.Deferred[list[Row]]:
        """Run one statement; its rows."""
        return self._step(sql, params).addCallback(lambda result: result[0])

    def run_operation(
        self, sql: str, params: Params = None, *, timeout: float | None = None
    ) -> defer.Deferred[None]:
        """Run one statement."""
        return self._step(sql, params).addCallback(lambda _: None)

    def run_interaction(
        self, fn: Callable[..., Any], *args: Any, timeout: float | None = None, **kwargs: Any
    ) -> defer.Deferred[Any]:
        """Run ``fn(cursor, ...)`` in a transaction."""
        result: defer.Deferred[Any] = run_transaction(self._step, fn, args, kwargs)
        return result


def fake_cache(clock: Clock | None = None) -> MemoryCache:
    """A started :class:`~mmo.data.memory.MemoryCache` on ``clock`` (a new ``Clock`` by default)."""
    cache = MemoryCache(clock if clock is not None else task.Clock())
    cache.startService()
    return cache


class FakeRuntime:
    """A ``Runtime`` that records what the handler publishes and serves fake services.

    Attributes:
        services: proxies returned by ``get_service(name)``, by service name.
        directory: where ``get_service`` looks for a name ``services`` lacks (a
            :class:`~mmo.testing.FakeDirectory`), or None; handlers that follow the
            registry or subscribe to events find it here, as in a worker.
        published: ``(topic, payload)`` pairs the handler published, in order.
        db: the database handed to the handler (e.g. a :class:`FakeDatabase`), or None.
        cache: the cache handed to the handler (e.g. :func:`fake_cache`), or None.
        settings: the handler's settings (an instance of its ``Settings``), or None.
    """

    def __init__(
        self,
        service_name: str = "test",
        instance_id: str = "test-1",
        clock: Clock | None = None,
        services: dict[str, Any] | None = None,
        db: Database | None = None,
        cache: Cache | None = None,
        settings: Any = None,
        directory: Any = None,
    ) -> None:
        self.service_name = service_name
        self.instance_id = instance_id
        self.clock: Clock = clock if clock is not None else task.Clock()
        self.services = dict(services or {})
        self.directory = directory
        self.published: list[tuple[str, Any]] = []
        self.sessions = FakeSessions()
        self.db = db
        self.cache = cache
        self.settings = settings

    def get_service(self, name: str, pattern: str = "REP", timeout: float | None = None) -> Any:
        """The fake registered for ``name``, else the directory's proxy (KeyError names
        what is missing when there is neither)."""
        if name in self.services:
            return self.services[name]
        if self.directory is not None:
            return self.directory.get_service(name, pattern, timeout)
        raise KeyError(
            f"no fake for service {name!r}: pass services={{...}} or directory=FakeDirectory()"
        )

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
    db: Database | None = None,
    cache: Cache | None = None,
    settings: dict[str, Any] | None = None,
    directory: Any = None,
    **attributes: Any,
) -> H:
    """Build ``handler_class`` on a :class:`FakeRuntime`; extra keywords become attributes.

    ``db``, ``cache``, ``settings`` and ``directory`` go to the runtime, so the handler
    sees them from its constructor on (as in a worker); ``settings`` are checked against
    the handler's ``Settings`` as a worker checks ``[worker.settings]`` (a ``ConfigError``
    if they do not fit). ``services`` maps a service name to the object
    ``get_service(name)`` returns; any other name goes to ``directory`` (a
    :class:`~mmo.testing.FakeDirectory`).

    Example::

        db = FakeDatabase()
        migrate(db)
        sso = handler_factory(SSOService, db=db)
        reply = result_of(call(sso, "login", user="harry", password="x"))
    """
    runtime = FakeRuntime(
        service_name or handler_class.default_service or "test",
        instance_id,
        clock,
        services,
        db,
        cache,
        build(handler_class.Settings, settings or {}),
        directory,
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
    caller_role: str | None = "worker",
    origin: int = Origin.MEMBER,
    peer: str | None = None,
) -> Context:
    """A :class:`Context` for calling ``handler``'s ``method`` directly: by default a
    cluster member's call (``caller_role`` ``"worker"``); ``origin=Origin.CLIENT`` with a
    ``session`` (and a ``peer`` address) is a player's request forwarded by a broker."""
    clock = handler.clock
    return Context(
        service=handler.service_name,
        method=method,
        caller=caller,
        session=session,
        deadline=clock.seconds() + timeout,
        clock=clock,
        caller_role=caller_role,
        origin=origin,
        peer=peer,
    )


def call(
    handler: ServiceHandler,
    method: str,
    arguments: Mapping[str, Any] | None = None,
    /,
    *,
    session: Session | None = None,
    origin: int = Origin.MEMBER,
    caller: str | None = "test",
    caller_role: str | None = "worker",
    peer: str | None = None,
    timeout: float = 5.0,
    **kwargs: Any,
) -> Any:
    """Call ``handler``'s ``method`` the way a worker serves a request: through its dispatch
    table (unknown methods, arguments that do not fit, methods closed to players or to the
    caller's role are refused as in a cluster), with a :class:`Context` from
    :func:`fake_context`.

    The keyword arguments are the call's; ``arguments`` (positional) gives them as a
    mapping instead, for a method whose arguments are named like the options below.
    By default the call is a cluster member's; ``origin=Origin.CLIENT`` with a
    ``session`` is a logged-in player's request forwarded by a broker,
    ``origin=Origin.LOGIN`` (with a ``peer`` address) a packet before login
    (:func:`as_player` and :func:`before_login` give these options).

    Returns:
        What the worker would answer with: the method's value, or a Deferred of it
        (a coroutine method's too); :func:`result_of` reads one that has fired.

    Raises:
        Whatever the method, or the dispatch, raises at once (``UnknownMethod``,
        ``BadRequest``, ``Forbidden``, the handler's own errors).

    Example::

        assert call(chat, "join", room="lobby", **as_player(alice))
        with pytest.raises(UnknownMethod):  # not a client method: none to a player
            call(chat, "kick_all", **as_player(alice))
    """
    ctx = fake_context(
        handler,
        method,
        caller=caller,
        session=session,
        timeout=timeout,
        caller_role=caller_role,
        origin=origin,
        peer=peer,
    )
    return handler.dispatch(ctx, {**(arguments or {}), **kwargs})


def as_player(session: Session, *, peer: str | None = None) -> dict[str, Any]:
    """The options of :func:`call` (or :func:`fake_context`) that make a call a logged-in
    player's request, as the broker holding ``session`` forwards it (from address ``peer``):
    ``call(chat, "join", room="lobby", **as_player(alice))``."""
    return {
        "session": session,
        "origin": Origin.CLIENT,
        "peer": peer,
        "caller": session.broker or "broker-1",
        "caller_role": "broker",
    }


def before_login(peer: str = "127.0.0.1", *, broker: str = "broker-1") -> dict[str, Any]:
    """The options of :func:`call` (or :func:`fake_context`) that make a call a player's
    packet before login (the login itself, a registration) from address ``peer``, as
    ``broker`` forwards it: ``call(sso, "login", user="harry", **before_login())``."""
    return {"origin": Origin.LOGIN, "peer": peer, "caller": broker, "caller_role": "broker"}
