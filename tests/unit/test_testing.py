"""mmo.testing's fakes behave as the real pieces do where a test relies on it: the call
helper dispatches as a worker, FakeDirectory answers, fails and times out as a Directory,
FakeZmqContext's sockets record and deliver, and every exported name resolves."""

from __future__ import annotations

from typing import Any

import pytest
import zmq
from twisted.internet import defer

import mmo.testing
from mmo.errors import (
    BadRequest,
    DeadlineExceeded,
    Forbidden,
    NoLiveInstance,
    RemoteError,
    UnknownMethod,
)
from mmo.logic import Context, ServiceHandler, callers, client_method
from mmo.registry import Change
from mmo.testing import (
    FakeDirectory,
    FakeZmqContext,
    as_player,
    before_login,
    call,
    failure_of,
    free_port,
    handler_factory,
    result_of,
)
from mmo.wire import decode_value, encode_value
from mmo.wire.gen.mmo.ttypes import Session
from mmo.zmq import EVENT_CONNECTED, EVENT_DISCONNECTED

ALICE = Session(id="s1", user_id="alice", broker="broker-7")


class Shop(ServiceHandler):
    """A small service: a client method, a broker-only one, an async one, a failing one."""

    default_service = "shop"

    def __init__(self, runtime: Any) -> None:
        super().__init__(runtime)
        self.sold: list[str] = []

    @client_method
    def on_buy(self, ctx: Context, item: str) -> dict[str, Any]:
        self.sold.append(item)
        user = ctx.session.user_id if ctx.session is not None else None
        return {"user": user, "item": item, "caller": ctx.caller}

    @callers("broker")
    def on_restock(self, ctx: Context, timeout: int) -> int:
        return timeout

    async def on_price(self, ctx: Context, item: str) -> int:
        return len(item)

    def on_break(self, ctx: Context) -> None:
        raise KeyError("no such shelf")


# -- call ----------------------------------------------------------------------------


def test_call_dispatches_as_a_worker_does() -> None:
    """call reaches a client method as a player's request through the dispatch table, refuses
    what a player may not call, checks the caller's role and the arguments."""
    shop = handler_factory(Shop)
    assert call(shop, "buy", item="owl", **as_player(ALICE)) == {
        "user": "alice",
        "item": "owl",
        "caller": "broker-7",
    }
    with pytest.raises(UnknownMethod):
        call(shop, "break", **as_player(ALICE))
    with pytest.raises(UnknownMethod):
        call(shop, "buy", item="owl", **before_login())
    with pytest.raises(Forbidden):
        call(shop, "restock", timeout=3)
    with pytest.raises(BadRequest):
        call(shop, "buy", colour="red", **as_player(ALICE))


def test_call_takes_arguments_named_like_its_options_as_a_mapping() -> None:
    """An argument named like one of call's options (timeout) is given in the mapping."""
    shop = handler_factory(Shop)
    assert call(shop, "restock", {"timeout": 9}, caller="b1", caller_role="broker") == 9


def test_call_wraps_coroutine_methods_in_a_deferred() -> None:
    """An async method's result comes back as a Deferred, as the worker answers it."""
    d = call(handler_factory(Shop), "price", item="sword")
    assert isinstance(d, defer.Deferred) and result_of(d) == 5


def test_result_of_raises_a_failure_and_refuses_an_unfired_deferred() -> None:
    """result_of raises what a failed Deferred holds, and says so when it has not fired."""
    with pytest.raises(KeyError):
        result_of(defer.fail(KeyError("x")))
    with pytest.raises(AssertionError, match="not fired"):
        result_of(defer.Deferred())


def test_failure_of_returns_the_exception_and_refuses_a_success() -> None:
    """failure_of hands back what a failed Deferred holds; a success is an assertion."""
    error = KeyError("x")
    assert failure_of(defer.fail(error)) is error
    with pytest.raises(AssertionError, match="expected a failure"):
        failure_of(defer.succeed(1))


# -- FakeDirectory -------------------------------------------------------------------


def test_unknown_services_fail_as_no_live_instance() -> None:
    """A call or push to a service nobody scripted, serves or registered fails with
    NoLiveInstance, as in a cluster without it."""
    directory = FakeDirectory()
    with pytest.raises(NoLiveInstance, match="inventory"):
        result_of(directory.call("inventory", "count"))
    with pytest.raises(NoLiveInstance):
        directory.push("inventory", "give", {"item": "owl"})
    assert directory.send("inventory", "x", b"") is None


def test_scripted_replies_and_failures_in_order() -> None:
    """A one-time script answers the next call only; a method's script comes before its
    service's; a callable script sees the call."""
    directory = FakeDirectory()
    directory.reply("sso", None, lambda c: {"asked": c.method})
    directory.reply("sso", "login", {"user_id": "u1"})
    directory.fail("sso", "login", RemoteError("locked", "Locked"), once=True)
    proxy = directory.get_service("sso")
    with pytest.raises(RemoteError, match="locked"):
        result_of(proxy.login(user="harry"))
    assert result_of(proxy.login(user="harry")) == {"user_id": "u1"}
    assert result_of(proxy.logout()) == {"asked": "logout"}
    assert [c.method for c in directory.calls_to("sso")] == ["login", "login", "logout"]
    assert directory.calls[0].kwargs == {"user": "harry"}


def test_a_call_nobody_answers_fails_at_its_deadline() -> None:
    """A registered instance that never answers, or a script's Deferred that never fires,
    fails the call with DeadlineExceeded once its timeout has passed on the clock."""
    directory = FakeDirectory()
    directory.register("slow", "slow-1")
    d = directory.get_service("slow", timeout=2.0).anything()
    directory.clock.advance(1.9)  # type: ignore[attr-defined]
    assert not d.called
    directory.clock.advance(0.1)  # type: ignore[attr-defined]
    with pytest.raises(DeadlineExceeded, match="2s"):
        result_of(d)


def test_arguments_that_cannot_travel_are_a_bad_request() -> None:
    """A call whose arguments cannot be encoded fails with BadRequest, as on a Directory."""
    directory = FakeDirectory()
    directory.reply("sso", "login", None)
    with pytest.raises(BadRequest):
        result_of(directory.call("sso", "login", {"when": object()}))


def test_a_served_handler_answers_with_errors_as_a_caller_sees_them() -> None:
    """serve registers the handler's instance and runs calls through its dispatch table;
    its own exceptions come back as RemoteError naming their type, mmo's as themselves."""
    directory = FakeDirectory()
    link = directory.serve(handler_factory(Shop, instance_id="shop-1"))
    assert link.instance.meta is not None and "client" in link.instance.meta
    assert [i.instance_id for i in directory.view.get("shop")] == ["shop-1"]
    reply = directory.call("shop", "buy", {"item": "owl"}, session=ALICE, origin=1)
    assert result_of(reply)["user"] == "alice"
    with pytest.raises(RemoteError) as caught:
        result_of(directory.call("shop", "break"))
    assert caught.value.type == "KeyError"
    with pytest.raises(UnknownMethod):
        result_of(directory.call("shop", "nosuch"))


def test_a_forwarded_call_gets_bytes_back() -> None:
    """A call with raw_body (a broker's) is decoded for the handler and its answer encoded."""
    directory = FakeDirectory()
    directory.serve(handler_factory(Shop))
    raw = directory.call("shop", "price", raw_body=encode_value({"item": "owl"}))
    assert decode_value(result_of(raw)) == 3
    assert directory.calls[0].kwargs == {"item": "owl"}


def test_after_running_the_call_ran_but_the_answer_was_lost() -> None:
    """fail(after_running=True): the handler runs the call, then the caller gets the error."""
    directory = FakeDirectory()
    shop = handler_factory(Shop)
    directory.serve(shop)
    directory.fail("shop", "buy", DeadlineExceeded("lost"), once=True, after_running=True)
    with pytest.raises(DeadlineExceeded):
        result_of(directory.call("shop", "buy", {"item": "owl"}))
    assert shop.sold == ["owl"]
    assert result_of(directory.call("shop", "buy", {"item": "rat"}))["item"] == "rat"


def test_registry_changes_reach_listeners_and_links() -> None:
    """register and deregister tell view listeners; links follow them, a link can be taken
    down, and a draining instance is left out."""
    directory = FakeDirectory(synced=False)
    seen: list[tuple[int, str, str]] = []
    directory.view.listen(lambda change, i, reason: seen.append((change, i.instance_id, reason)))
    assert not directory.view.synced and not directory.view.warm
    directory.register("broker", "b1")
    directory.register("broker", "b2").up = False
    directory.register("broker", "b3").draining = True
    assert directory.view.warm
    assert directory.links("broker") == {"b1": True, "b2": False}
    directory.deregister("broker", "b1", "expired")
    assert seen[-1] == (Change.DOWN, "b1", "expired")
    assert [i.instance_id for i in directory.view.get("broker")] == ["b2", "b3"]


def test_wait_for_fires_after_the_change_that_makes_it_true() -> None:
    """view.wait_for fires once a registration makes the predicate hold, or times out."""
    directory = FakeDirectory()
    d = directory.view.wait_for(lambda: bool(directory.view.get("chat")), timeout=3)
    assert not d.called
    directory.register("chat", "chat-1")
    assert d.called
    never = directory.view.wait_for(lambda: False, timeout=3)
    directory.clock.advance(3)  # type: ignore[attr-defined]
    with pytest.raises(defer.TimeoutError):
        result_of(never)


def test_pushes_and_events() -> None:
    """A push is recorded (and run by a served handler); publish reaches subscriptions
    whose topic is a prefix, until they unsubscribe."""
    directory = FakeDirectory()
    directory.register("mail", "mail-1")
    directory.get_service("mail", "PULL").send(to="harry")
    assert [(p.service, p.method, p.kwargs) for p in directory.pushed] == [
        ("mail", "send", {"to": "harry"})
    ]
    shop = handler_factory(Shop)
    directory.serve(shop)
    directory.push("shop", "buy", {"item": "owl"})
    assert shop.sold == ["owl"]
    got: list[tuple[str, Any]] = []
    events = directory.get_service("session", "PUB")
    subscription = events.subscribe("le", lambda topic, event: got.append((topic, event)))
    assert directory.publish("session", "leave", {"id": 1}) == 1
    assert directory.publish("session", "enter", {}) == 0
    subscription.unsubscribe()
    assert directory.publish("session", "leave", {}) == 0
    assert got == [("leave", {"id": 1})]


def test_send_goes_to_a_live_instance() -> None:
    """send picks the named instance, or any live one; send_all reaches each."""
    directory = FakeDirectory()
    directory.register("broker", "b1")
    directory.register("broker", "b2")
    assert directory.send("broker", "push", b"x", instance="b2", targets=["s1"]) == "b2"
    assert directory.send("broker", "push", b"x", instance="b9") is None
    assert directory.send_all("broker", "broadcast", b"y") == 2
    assert [(s.instance, s.method) for s in directory.sent] == [
        ("b2", "push"),
        ("b1", "broadcast"),
        ("b2", "broadcast"),
    ]
    assert directory.sent[0].header == {"targets": ["s1"]}


def test_a_handler_reaches_the_directory_through_its_runtime() -> None:
    """handler_factory(directory=...) gives the handler get_service through the directory;
    services= fakes come first."""
    directory = FakeDirectory()
    directory.reply("sso", "whoami", "harry")
    game = handler_factory(Shop, directory=directory, services={"map": "a fake map"})
    assert result_of(game.get_service("sso").whoami()) == "harry"
    assert game.get_service("map") == "a fake map"
    assert game.runtime.directory is directory  # type: ignore[attr-defined]


# -- FakeZmqContext ------------------------------------------------------------------


def test_fake_sockets_record_sends_and_deliver_messages() -> None:
    """A fake socket binds (a * port made concrete), records sends, hands delivered
    messages to its callback, refuses on request, and is dead once closed."""
    ctx = FakeZmqContext()
    got: list[list[bytes]] = []
    sock = ctx.socket(zmq.ROUTER, got.append, options={zmq.SNDHWM: 5})
    address = sock.bind("tcp://127.0.0.1:*")
    assert address.startswith("tcp://127.0.0.1:") and not address.endswith("*")
    assert sock.socket.get(zmq.LAST_ENDPOINT) == address.encode()
    sock.send([b"peer", b"hello"])
    sock.deliver([b"peer", b"hi"])
    assert sock.sent == [[b"peer", b"hello"]] and got == [[b"peer", b"hi"]]
    sock.refuse = zmq.Again()
    with pytest.raises(zmq.Again):
        sock.send([b"peer", b"more"])
    ctx.close()
    assert sock.closed
    with pytest.raises(zmq.ZMQError):
        sock.send([b"x"])
    with pytest.raises(zmq.ZMQError):
        ctx.socket(zmq.DEALER)


def test_fake_sockets_play_monitor_events() -> None:
    """link_up and link_down reach the monitor callback with the connected address."""
    ctx = FakeZmqContext()
    sock = ctx.socket(zmq.DEALER)
    events: list[tuple[int, str]] = []
    sock.monitor(lambda event, address: events.append((event, address)))
    sock.connect("tcp://10.0.0.1:5000")
    sock.link_up()
    sock.link_down()
    assert events == [
        (EVENT_CONNECTED, "tcp://10.0.0.1:5000"),
        (EVENT_DISCONNECTED, "tcp://10.0.0.1:5000"),
    ]
    assert ctx.of_type(zmq.DEALER) == [sock] and ctx.last is sock


# -- the package ---------------------------------------------------------------------


def test_every_exported_name_resolves() -> None:
    """Each name in mmo.testing.__all__ is importable from the package (imported lazily)."""
    for name in mmo.testing.__all__:
        assert getattr(mmo.testing, name) is not None, name
    with pytest.raises(AttributeError):
        mmo.testing.nothing_of_that_name  # noqa: B018


def test_free_port_never_hands_out_a_port_twice() -> None:
    """Ports asked for one after another differ, though none is bound yet."""
    ports = [free_port() for _ in range(300)]
    assert len(set(ports)) == len(ports)


def test_free_ports_of_xdist_workers_do_not_overlap(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under pytest-xdist each worker picks from its own share of the range."""
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "3")
    shares = []
    for worker in ("gw0", "gw1", "gw2"):
        monkeypatch.setenv("PYTEST_XDIST_WORKER", worker)
        shares.append({free_port() for _ in range(50)})
    low = [min(s) for s in shares]
    high = [max(s) for s in shares]
    assert high[0] < low[1] and high[1] < low[2]
