"""ServiceHandler dispatch: the on_<name> table, idempotent marks, errors, async methods.

Handlers run on mmo.testing's fake runtime and are called through ``mmo.testing.call``,
the dispatch path a worker uses.
"""

from __future__ import annotations

from typing import Any, TypeVar

import pytest
from twisted.internet import defer, task

from mmo.errors import BadRequest, UnknownMethod
from mmo.logic import Context, ServiceHandler, idempotent
from mmo.testing import FakeDirectory, call, fake_context, handler_factory, result_of

H = TypeVar("H", bound=ServiceHandler)


class Base(ServiceHandler):
    """A handler with plain, idempotent, defaulted and variadic methods."""

    @idempotent
    def on_add(self, ctx: Context, a: int, b: int = 10) -> int:
        return a + b

    def on_hello(self, ctx: Context, name: str) -> str:
        return f"hello {name} from {ctx.service}.{ctx.method}"

    def on_anything(self, ctx: Context, **kwargs: Any) -> dict[str, Any]:
        return kwargs

    def on_broken(self, ctx: Context) -> None:
        raise TypeError("a bug inside the handler")

    def helper(self) -> str:
        return "not a method"

    on_constant = 42  # not callable: not a method either


class Child(Base):
    """Inherits Base's methods, overrides one (dropping idempotent) and adds async ones."""

    def on_add(self, ctx: Context, a: int, b: int = 0) -> int:
        return a + b + 1000

    @idempotent
    def on_later(self, ctx: Context, seconds: float) -> defer.Deferred[str]:
        return task.deferLater(self.clock, seconds, lambda: "done")  # type: ignore[arg-type]

    @idempotent
    @defer.inlineCallbacks
    def on_flow(self, ctx: Context, x: int) -> Any:
        yield task.deferLater(self.clock, 1, lambda: None)  # type: ignore[arg-type]
        return x * 2

    @defer.inlineCallbacks
    @idempotent
    def on_flow_marked_inside(self, ctx: Context) -> Any:
        yield defer.succeed(None)
        return "ok"

    @defer.inlineCallbacks
    def on_fail_later(self, ctx: Context) -> Any:
        yield task.deferLater(self.clock, 1, lambda: None)  # type: ignore[arg-type]
        raise ValueError("failed after a while")


class Fallback(Base):
    """Overrides on_unknown to serve any method name."""

    def on_unknown(self, ctx: Context, kwargs: dict[str, Any]) -> Any:
        return ("fallback", ctx.method, kwargs)


def make(handler_class: type[H], **kwargs: Any) -> H:
    """``handler_class`` on a fake runtime as service ``game``, instance ``game-1``."""
    return handler_factory(handler_class, service_name="game", instance_id="game-1", **kwargs)


def outcome(d: defer.Deferred[Any]) -> list[Any]:
    result: list[Any] = []
    d.addBoth(result.append)
    return result


@pytest.fixture
def base() -> Base:
    """A Base handler on a fake runtime."""
    return make(Base)


@pytest.fixture
def child() -> Child:
    """A Child handler on a fake runtime."""
    return make(Child)


# -- the table ----------------------------------------------------------------------


def test_table_lists_on_methods_with_idempotent_marks() -> None:
    """method_names() lists every callable on_<name> (not on_unknown, helpers or constants)."""
    assert Base.method_names() == {
        "add": True,
        "hello": False,
        "anything": False,
        "broken": False,
    }


def test_table_includes_inherited_and_override_marks() -> None:
    """A subclass serves inherited methods; an override without @idempotent is not idempotent."""
    names = Child.method_names()
    assert set(names) == {
        "add",
        "hello",
        "anything",
        "broken",
        "later",
        "flow",
        "flow_marked_inside",
        "fail_later",
    }
    assert names["add"] is False
    assert names["hello"] is False
    assert names["later"] is True
    assert names["flow"] is True
    assert names["flow_marked_inside"] is True
    assert names["fail_later"] is False
    assert Base.method_names()["add"] is True  # the parent's table is untouched


def test_handlers_without_methods_serve_nothing() -> None:
    """A handler with no on_<name> methods has an empty table."""

    class Empty(ServiceHandler):
        pass

    assert Empty.method_names() == {}


# -- dispatch -----------------------------------------------------------------------


def test_dispatch_calls_method_with_ctx_and_kwargs(base: Base) -> None:
    """dispatch calls on_<method>(ctx, **kwargs) and returns its result."""
    assert call(base, "add", a=1, b=2) == 3
    assert call(base, "add", a=1) == 11
    assert call(base, "hello", name="harry") == "hello harry from game.hello"
    assert call(base, "anything", x=1, y=[2]) == {"x": 1, "y": [2]}


def test_dispatch_uses_subclass_override(child: Child) -> None:
    """A subclass's override is what a call reaches; inherited methods still work."""
    assert call(child, "add", a=1) == 1001
    assert call(child, "hello", name="ron") == "hello ron from game.hello"


def test_handler_sees_runtime() -> None:
    """A handler reads its name, id and clock, publishes and calls other services through
    its runtime (the call keeps its own deadline)."""
    directory = FakeDirectory()
    directory.reply("sso", "login", {"user_id": "u1"})
    base = make(Base, directory=directory)
    assert (base.service_name, base.instance_id) == ("game", "game-1")
    base.publish("news", {"n": 1})
    assert base.runtime.published == [("news", {"n": 1})]  # type: ignore[attr-defined]
    reply = base.get_service("sso", "REP", 2.0).login(user="harry")
    assert result_of(reply) == {"user_id": "u1"}
    (sent,) = directory.calls
    assert (sent.service, sent.method, sent.kwargs, sent.timeout) == (
        "sso",
        "login",
        {"user": "harry"},
        2.0,
    )


def test_unknown_method_raises_unknown_method(base: Base) -> None:
    """A call to a name with no on_<name> raises UnknownMethod naming service and method."""
    for name in ("nope", "helper", "constant", "unknown", "dispatch", ""):
        with pytest.raises(UnknownMethod, match="game") as info:
            call(base, name)
        assert repr(name) in str(info.value)


def test_overridden_on_unknown_gets_the_call() -> None:
    """A handler overriding on_unknown receives calls to unknown names with their kwargs."""
    handler = make(Fallback)
    assert call(handler, "whatever", x=1) == ("fallback", "whatever", {"x": 1})
    assert call(handler, "add", a=1) == 11  # known methods are unaffected
    # Keywords named like the fallback's own parameters still arrive as data.
    assert call(handler, "other", ctx=1, self=2) == ("fallback", "other", {"ctx": 1, "self": 2})


@pytest.mark.parametrize(
    ("method", "kwargs"),
    [
        ("add", {}),  # missing a required argument
        ("add", {"a": 1, "c": 2}),  # an unexpected keyword
        ("hello", {"name": "x", "ctx": 1}),  # clashes with the context argument
        ("hello", {"name": "x", "self": 1}),
        ("broken", {"x": 1}),
    ],
)
def test_wrong_arguments_are_bad_request(base: Base, method: str, kwargs: dict[str, Any]) -> None:
    """Keyword arguments that do not fit the method's signature raise BadRequest naming it."""
    with pytest.raises(BadRequest, match=rf"game\.{method}\b"):
        call(base, method, **kwargs)


def test_wrong_arguments_do_not_run_the_method() -> None:
    """A call with bad arguments is refused before the method body runs."""
    ran: list[int] = []

    class Counting(ServiceHandler):
        def on_count(self, ctx: Context, n: int) -> None:
            ran.append(n)

    handler = make(Counting)
    with pytest.raises(BadRequest):
        call(handler, "count", m=1)
    assert ran == []


def test_type_error_inside_method_is_not_bad_request(base: Base) -> None:
    """A TypeError raised by the handler's own code propagates as itself, not as BadRequest."""
    with pytest.raises(TypeError, match="a bug inside"):
        call(base, "broken")


def test_wrong_arguments_to_async_method_are_bad_request(child: Child) -> None:
    """Arguments are checked against the real signature of an inlineCallbacks method."""
    with pytest.raises(BadRequest, match=r"game\.flow"):
        call(child, "flow", y=1)


# -- asynchronous methods -----------------------------------------------------------


def test_deferred_method_result_arrives_later(child: Child) -> None:
    """A method returning a Deferred gives that Deferred; it fires when the work is done."""
    result = outcome(call(child, "later", seconds=2))
    assert result == []
    child.clock.advance(2)  # type: ignore[attr-defined]
    assert result == ["done"]


def test_inline_callbacks_method(child: Child) -> None:
    """An inlineCallbacks method's return value is what its Deferred fires with."""
    result = outcome(call(child, "flow", x=21))
    assert result == []
    child.clock.advance(1)  # type: ignore[attr-defined]
    assert result == [42]
    assert outcome(call(child, "flow_marked_inside")) == ["ok"]


def test_inline_callbacks_failure_is_errback(child: Child) -> None:
    """An exception raised inside an inlineCallbacks method fails its Deferred with it."""
    result = outcome(call(child, "fail_later"))
    child.clock.advance(1)  # type: ignore[attr-defined]
    (failure,) = result
    assert failure.check(ValueError)
    assert "failed after a while" in str(failure.value)


def test_context_remaining_follows_clock(child: Child) -> None:
    """Context.remaining() counts down with the clock and goes negative after the deadline."""
    ctx = fake_context(child, "later", timeout=5)
    assert ctx.remaining() == 5
    child.clock.advance(7)  # type: ignore[attr-defined]
    assert ctx.remaining() == -2
