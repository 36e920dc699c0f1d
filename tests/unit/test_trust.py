"""Who may call what, without a reactor: client and login methods, callers(), the registry
declaration, settings, the route table and patterns a broker keeps, broadcast buckets."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from twisted.internet.task import Clock

from mmo.broker.limits import Buckets
from mmo.broker.routes import RoutePatterns, RouteTable
from mmo.config import ConfigError
from mmo.errors import BadRequest, Forbidden, UnknownMethod
from mmo.logic import Context, ServiceHandler, callers, client_method, login_method
from mmo.logic.handler import Origin
from mmo.registry import Change, make_instance
from mmo.testing import FakeRegistryView, call, handler_factory
from mmo.testing.handlers import ClientEcho
from mmo.wire.gen.mmo.ttypes import Session


class Game(ServiceHandler):
    """One method of each kind."""

    default_service = "game"

    @client_method
    def on_move(self, ctx: Context, dx: int = 0) -> dict[str, Any]:
        return {"who": ctx.session.user_id if ctx.session else None, "dx": dx}

    @login_method
    def on_enter(self, ctx: Context, name: str) -> str:
        return f"{name} from {ctx.peer}"

    @callers("broker")
    def on_open(self, ctx: Context) -> str:
        return f"opened for {ctx.caller}"

    def on_grant(self, ctx: Context, user: str, gold: int) -> int:
        return gold

    def on_unknown(self, ctx: Context, kwargs: dict[str, Any]) -> Any:
        return f"dynamic {ctx.method}"


ALICE = Session(id="s1", user_id="alice", broker="b1")
#: How a broker forwards a logged-in player's packet, and a packet before login.
PLAYER: dict[str, Any] = {
    "session": ALICE,
    "origin": Origin.CLIENT,
    "peer": "10.0.0.9",
    "caller": "b1",
    "caller_role": "broker",
}
BEFORE_LOGIN: dict[str, Any] = {
    "origin": Origin.LOGIN,
    "peer": "10.0.0.9",
    "caller": "b1",
    "caller_role": "broker",
}


@pytest.fixture
def game() -> Game:
    """A Game handler on a fake runtime."""
    return handler_factory(Game)


def test_a_player_reaches_only_client_methods(game: Game) -> None:
    """A logged-in player's packet reaches the client method; every other method, the
    fallback and a missing one all raise the same UnknownMethod (no oracle)."""
    assert call(game, "move", dx=1, **PLAYER) == {"who": "alice", "dx": 1}
    messages = set()
    for method in ("enter", "open", "grant", "nosuch"):
        with pytest.raises(UnknownMethod) as caught:
            call(game, method, name="x", user="bob", gold=1, **PLAYER)
        messages.add(str(caught.value).replace(method, "M"))
    assert messages == {"service 'game' has no method 'M'"}


def test_before_login_a_player_reaches_only_login_methods(game: Game) -> None:
    """A packet sent before login reaches login methods only, with the player's address."""
    assert call(game, "enter", name="al", **BEFORE_LOGIN) == "al from 10.0.0.9"
    for method in ("move", "open", "grant"):
        with pytest.raises(UnknownMethod):
            call(game, method, **BEFORE_LOGIN)


def test_members_reach_every_method_and_the_fallback(game: Game) -> None:
    """Cluster members call any method (roles permitting) and on_unknown."""
    assert call(game, "grant", user="bob", gold=5) == 5
    assert call(game, "move") == {"who": None, "dx": 0}
    assert call(game, "whatever") == "dynamic whatever"


def test_callers_limits_a_method_to_roles(game: Game) -> None:
    """@callers("broker"): a broker may, a worker or a tool gets Forbidden naming the rule."""
    assert call(game, "open", caller="b1", caller_role="broker") == "opened for b1"
    for role in ("worker", "tool"):
        with pytest.raises(Forbidden, match="for broker only, not " + role):
            call(game, "open", caller_role=role)


def test_the_registry_declares_what_players_may_call() -> None:
    """registry_meta lists every method, the idempotent ones, client and login methods."""
    meta = Game.registry_meta()
    assert meta["methods"] == ["enter", "grant", "move", "open"]
    assert (meta["client"], meta["login"]) == (["move"], ["enter"])
    assert meta["handler"].endswith(":Game")


def test_nothing_is_open_to_players_unless_declared() -> None:
    """A handler that declares nothing offers players nothing; the test echo opens all."""

    class Quiet(ServiceHandler):
        def on_ping(self, ctx: Context) -> str:
            return "pong"

    assert Quiet.registry_meta()["client"] == []
    assert ClientEcho.registry_meta()["client"] == sorted(ClientEcho.method_names())


def test_client_methods_opens_inherited_methods_without_touching_the_base() -> None:
    """client_methods opens a base class's method in a subclass only."""

    class Opened(Game):
        client_methods = frozenset({"grant"})

    assert Opened.registry_meta()["client"] == ["grant", "move"]
    assert Game.registry_meta()["client"] == ["move"]


def test_declarations_that_contradict_or_name_nothing_are_refused() -> None:
    """A method for players limited to roles, or opening a method that does not exist,
    fails when the class is made."""
    with pytest.raises(TypeError, match="cannot also be limited"):

        class Both(ServiceHandler):
            @client_method
            @callers("broker")
            def on_x(self, ctx: Context) -> None: ...

    with pytest.raises(TypeError, match="does not have"):

        class Missing(ServiceHandler):
            client_methods = frozenset({"nope"})

    with pytest.raises(TypeError):
        callers()


@dataclass(frozen=True)
class Tuning:
    speed: float = 1.0
    name: str = "x"

    def validate(self) -> None:
        if self.speed <= 0:
            raise ConfigError("speed", "must be positive")


class Tuned(ServiceHandler):
    Settings = Tuning


def test_settings_are_typed_and_checked() -> None:
    """Settings come as strings (--set) or TOML values, are coerced, checked and defaulted."""
    assert handler_factory(Tuned).settings == Tuning()
    assert handler_factory(Tuned, settings={"speed": "2.5"}).settings.speed == 2.5
    for bad in ({"speed": "0"}, {"speed": "fast"}, {"colour": "red"}):
        with pytest.raises(ConfigError):
            handler_factory(Tuned, settings=bad)


def test_a_handler_without_settings_refuses_any() -> None:
    """A handler that declares no Settings takes none."""
    with pytest.raises(ConfigError, match="unknown setting"):
        handler_factory(Game, settings={"anything": 1})


# -- the broker's route table --------------------------------------------------------


def instance(service: str, iid: str, client: list[str]) -> Any:
    return make_instance(service, iid, {}, {"client": client})


def test_route_table_follows_the_registry() -> None:
    """A route is callable while a live instance of its service declares the method."""
    view = FakeRegistryView(Clock(), ["tcp://127.0.0.1:1"])
    table = RouteTable(view, {"fight": "fight-worker"})
    view.apply(Change.UP, instance("chat", "chat-1", ["join", "send"]), "registered")
    view.apply(Change.UP, instance("fight-worker", "f-1", ["attack"]), "registered")
    view.apply(Change.UP, instance("session", "session-1", []), "registered")
    assert table.target("chat.join") == ("chat", "chat", "join")
    assert table.target("fight.attack") == ("fight", "fight-worker", "attack")
    for route in ("chat.members", "session.open", "nosuch.x", "chat", ".join", "chat.", ""):
        assert table.target(route) is None, route
    # Its last instance gone, a service's routes stay: a request is then UNAVAILABLE.
    view.apply(Change.DOWN, instance("chat", "chat-1", []), "deregistered")
    assert table.target("chat.join") == ("chat", "chat", "join")
    view.apply(Change.UP, instance("chat", "chat-2", ["join"]), "registered")
    assert table.target("chat.send") is None


def test_route_table_takes_the_union_of_instances() -> None:
    """During a rolling upgrade a method one instance declares is a route (the worker
    that does not declare it refuses it itself); it goes with the last live instance
    declaring it."""
    view = FakeRegistryView(Clock(), ["tcp://127.0.0.1:1"])
    table = RouteTable(view)
    view.apply(Change.UP, instance("chat", "old", ["join"]), "registered")
    view.apply(Change.UP, instance("chat", "new", ["join", "react"]), "registered")
    assert table.target("chat.react") is not None
    view.apply(Change.DOWN, instance("chat", "new", []), "deregistered")
    assert table.target("chat.react") is None and table.target("chat.join") is not None


def test_route_patterns_narrow_a_listener() -> None:
    """Shell patterns select routes; * accepts all."""
    assert RoutePatterns(["*"]).accepts("anything.at_all")
    web = RoutePatterns(["chat.*", "fight.join"])
    assert web.accepts("chat.send") and web.accepts("fight.join")
    assert not web.accepts("fight.attack") and not web.accepts("chatty.send")


def test_buckets_hold_a_rate_with_a_burst() -> None:
    """A bucket gives its burst at once, then its rate; one big take may go into debt."""
    buckets = Buckets(rate=2.0, burst=4.0)
    assert [buckets.take("a", 1, 0.0) for _ in range(5)] == [True] * 4 + [False]
    assert buckets.take("b", 1, 0.0), "each key has its own bucket"
    assert buckets.take("a", 1, 0.5) and not buckets.take("a", 1, 0.5)
    assert buckets.take("c", 100, 0.0) and not buckets.take("c", 1, 10.0)
    assert buckets.take("c", 1, 50.0)
    buckets.prune(1000.0)
    assert len(buckets) == 0


def test_bad_request_is_not_confused_with_refusal(game: Game) -> None:
    """Arguments that do not fit a client method are BadRequest, as for anyone."""
    with pytest.raises(BadRequest):
        call(game, "move", dx=1, dy=2, **PLAYER)
