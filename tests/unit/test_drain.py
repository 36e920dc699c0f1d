"""Draining and undraining for operators, on fakes: the built-in ``ops_drain`` of every
handler and what its server then takes, the registry meta and readiness it sets, callers'
links that stop picking a drained instance (and pick it again), a broker's ``drain``, the
brokerlist, and the fight pool's ``drain_process``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import zmq
from twisted.internet import defer

from mmo.broker.config import BrokerConfig
from mmo.broker.service import make_broker_service
from mmo.brokerlist.service import BrokerlistResource, LiveBrokers
from mmo.cli import CommandError, build_parser
from mmo.errors import BadRequest, Forbidden, Unavailable, UnknownMethod
from mmo.examples.echo import EchoService
from mmo.fight.dispatcher import FightDispatcher
from mmo.fight.errors import BadFight
from mmo.fight.pool import READY, STOPPING
from mmo.logic import OPERATOR_ROLES, Context, ServiceHandler, client_method
from mmo.logic.client import Directory
from mmo.logic.runtime import make_worker_tree
from mmo.logic.server import HandlerServer
from mmo.registry import make_instance
from mmo.testing import FakeDirectory, FakeZmqContext, FakeZmqSocket, as_player, handler_factory
from mmo.testing import call as dispatch
from mmo.testing.fakes import result_of
from mmo.testing.handlers import ClientEcho
from mmo.wire import decode, decode_value, encode, encode_value, from_value
from mmo.wire.gen.mmo.ttypes import (
    Change,
    ClientError,
    ErrorCode,
    Header,
    Instance,
    Kind,
    Packet,
    PacketKind,
    RegistryOp,
    Session,
)

from .test_broker_fuzz import frame, parse_output
from .test_broker_service import client, make_tree
from .test_brokerlist import broker_meta, http
from .test_directory import YELLOW, Yellow, error, ignore, link_to, live, rep, reply, requests
from .test_fight_pool import make_pool, ready_all
from .test_memo import answers, serving


class Counter(ServiceHandler):
    """Counts calls; ``hold`` is a method players may call, ``wait`` answers when told."""

    default_service = "counter"

    def __init__(self, runtime: Any) -> None:
        super().__init__(runtime)
        self.waiting: defer.Deferred[None] = defer.Deferred()

    def on_add(self, ctx: Context) -> int:
        return 1

    def on_wait(self, ctx: Context) -> defer.Deferred[None]:
        return self.waiting

    @client_method
    def on_hold(self, ctx: Context) -> str:
        return "held"


# -- the built-in method -------------------------------------------------------------------


def test_ops_drain_is_for_operators_and_listed_nowhere() -> None:
    """Every handler has ops_drain: admin and tool may call it, other members get
    Forbidden, players a method that does not exist, and it is in no list of methods (so
    opening every method to players leaves it closed)."""
    assert OPERATOR_ROLES == ("admin", "tool")
    assert Counter.ops_names() == {"ops_drain"}
    assert set(Counter.method_names()) == {"add", "hold", "wait"}
    meta = Counter.registry_meta()
    assert "ops_drain" not in meta["methods"] + meta["client"] + meta["login"]
    assert "ops_drain" not in ClientEcho.registry_meta()["client"]
    counter = handler_factory(Counter)
    for role in ("worker", "broker", None):
        with pytest.raises(Forbidden):
            dispatch(counter, "ops_drain", caller_role=role)
    with pytest.raises(UnknownMethod):
        dispatch(counter, "ops_drain", **as_player(Session(id="s-1", user_id="eve", broker="b1")))
    with pytest.raises(BadRequest):
        dispatch(counter, "ops_drain", draining="yes", caller_role="admin")
    assert not counter.draining


# -- the server ----------------------------------------------------------------------------

_ids = iter(range(1, 100_000))


def ask(
    server: HandlerServer, method: str, role: str = "worker", **fields: Any
) -> tuple[int, dict[str, Any]]:
    """Deliver a request (``fields``: the body's ``body``, more header fields)."""
    body = fields.pop("body", {})
    call_id = next(_ids)
    header = Header(
        kind=Kind.REQUEST,
        call_id=call_id,
        service_name="counter",
        method=method,
        timeout_ms=5000,
        caller="tester",
        caller_role=role,
        **fields,
    )
    server._request([b"ident", encode(header), encode_value(body)])
    return call_id, body


@pytest.fixture
def drained() -> tuple[HandlerServer, FakeZmqSocket, list[bool]]:
    """A started server of a Counter (its runtime's ``server``, as in a worker), and what
    its drain listeners were told."""
    handler = handler_factory(Counter, instance_id="counter-1")
    server, router = serving(handler)
    handler.runtime.server = server  # type: ignore[attr-defined]
    told: list[bool] = []
    server.drain_listeners.append(told.append)
    return server, router, told


def test_a_drained_server_refuses_what_callers_may_send_elsewhere_and_serves_the_rest(
    drained: Any,
) -> None:
    """After ops_drain a call by load gets Unavailable (it ran nothing); the operator's
    calls, a call bound to this instance and one-way requests are served; undrained, every
    call is served again. The listeners are told each time."""
    server, router, told = drained
    first, _ = ask(server, "ops_drain", "admin", body={"draining": True})
    assert answers(router) == [(first, {"instance": "counter-1", "draining": True})]
    assert server.draining and server.handler.draining and told == [True]

    refused, _ = ask(server, "add")
    ((call_id, kind),) = answers(router)
    assert (call_id, kind) == (refused, "Unavailable")
    bound, _ = ask(server, "add", instance_id="counter-1")
    elsewhere, _ = ask(server, "add", instance_id="counter-2")
    assert answers(router) == [(bound, 1), (elsewhere, "Unavailable")]
    header = Header(kind=Kind.REQUEST, method="add", one_way=True, timeout_ms=5000)
    served = server.served
    server._request([b"ident", encode(header), encode_value({})])
    assert server.served == served + 1 and router.sent == []
    ok, ready = server.readiness()
    assert ok and "drained" in ready

    again, _ = ask(server, "ops_drain", "tool", body={"draining": False})
    by_load, _ = ask(server, "add")
    assert answers(router) == [
        (again, {"instance": "counter-1", "draining": False}),
        (by_load, 1),
    ]
    assert told == [True, False] and not server.draining


def test_a_stopping_server_refuses_the_operators_calls_too(drained: Any) -> None:
    """Stopping (SIGTERM) is not a drain: nothing new runs, ops_drain included."""
    server, router, _ = drained
    server.drain(True)
    ask(server, "wait", instance_id="counter-1")  # held: the stop waits for it
    stopped = server.stopService()
    call_id, _ = ask(server, "ops_drain", "admin", body={"draining": False})
    server.handler.waiting.callback(None)
    assert stopped.called
    (header, _) = [decode(Header, raw) for _, raw, _ in router.sent]
    assert (header.call_id, header.error_code) == (call_id, ErrorCode.UNAVAILABLE)
    assert "stopping" in (header.error_message or "")


def test_ops_drain_needs_a_server() -> None:
    """A handler no server serves (a test's runtime) cannot be drained."""
    with pytest.raises(Unavailable):
        dispatch(handler_factory(Counter), "ops_drain", caller_role="tool")


def test_a_workers_drain_is_in_its_registry_entry_and_its_readiness(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """In a worker's tree, a drain sets meta ``draining`` and makes /readyz not ready
    (check ``draining``); undrained, both are back."""
    monkeypatch.setenv("MMO_INSECURE", "1")
    tree = make_worker_tree(
        EchoService, service="echo", instance_id="echo-1", yellow=("tcp://127.0.0.1:5555",)
    )
    try:
        worker = tree.getServiceNamed("worker")
        worker.server.drain(True)
        meta = worker.registration.instance.meta
        assert from_value(meta["drained"]) is True
        ready, checks = tree.telemetry.readiness()
        assert not ready and checks["draining"]["ok"] is False
        worker.server.drain(False)
        assert from_value(meta["drained"]) is False
        assert "draining" not in tree.telemetry.readiness()[1]
    finally:
        tree.services[0].context.close()


# -- callers' links ------------------------------------------------------------------------


def inst(iid: str, *, draining: bool | None = None, service: str = "echo") -> Instance:
    """An instance with rep, pull and pub endpoints; ``draining`` in its meta if given."""
    endpoints = {kind: f"tcp://{iid}.test:{port}" for kind, port in {"rep": 1, "pull": 2}.items()}
    meta: dict[str, Any] = {"idempotent": []}
    if draining is not None:
        meta["drained"] = draining
    return make_instance(service, iid, endpoints, meta)


@pytest.fixture
def ctx() -> FakeZmqContext:
    return FakeZmqContext()


@pytest.fixture
def yellow(ctx: FakeZmqContext) -> Yellow:
    return Yellow(ctx)


@pytest.fixture
def directory(ctx: FakeZmqContext) -> Iterator[Directory]:
    made = Directory(ctx, [YELLOW], caller_id="admin-1", caller_role="admin")  # type: ignore[arg-type]
    made.startService()
    yield made
    if made.running:
        made.stopService()


def test_a_drained_instance_gets_no_calls_by_load_but_those_that_name_it(
    directory: Directory, ctx: FakeZmqContext, yellow: Yellow
) -> None:
    """An UP whose meta says draining: calls by load go to the others and links() leaves
    it out, but its link stays open when idle, a call naming it reaches it (the header
    names the instance), and so do one-way requests (send_all included); an UP without
    draining takes it back."""
    a, b = live(directory, ctx, yellow, inst("echo-a"), inst("echo-b"))
    yellow.change(Change.UP, inst("echo-a", draining=True), "changed")
    for _ in range(4):
        ignore(directory.call("echo", "work"))
    assert (len(a.sent), len(b.sent)) == (0, 4)
    assert directory.links("echo") == {"echo-b": True}
    assert directory.stats()["echo"]["echo-a"]["drained"] is True

    named = directory.call("echo", "ops_drain", {"draining": False}, instance="echo-a")
    (request,) = requests(a)
    assert (request.method, request.instance_id) == ("ops_drain", "echo-a")
    reply(a, request, {"instance": "echo-a", "draining": False})
    assert result_of(named) == {"instance": "echo-a", "draining": False}
    assert not a.closed, "a drained instance's idle link stays open"
    assert directory.send("echo", "note", b"", instance="echo-a") == "echo-a"
    assert directory.send_all("echo", "note", b"") == 2

    yellow.change(Change.UP, inst("echo-a", draining=False), "changed")
    assert directory.links("echo") == {"echo-a": True, "echo-b": True}
    for _ in range(4):
        ignore(directory.call("echo", "work"))
    assert [h.method for h in requests(a)].count("work") == 4  # b holds 4 unanswered


def test_a_call_refused_by_a_drained_instance_moves_and_its_link_stays(
    directory: Directory, ctx: FakeZmqContext, yellow: Yellow
) -> None:
    """A call sent before the caller saw the drain is answered Unavailable and sent to
    another instance; the link to the drained one is kept (not closed as a leaving one's
    is), and a goodbye then closes it."""
    a, b = live(directory, ctx, yellow, inst("echo-a"), inst("echo-b"))
    d = directory.call("echo", "work", instance=None)
    target, other = (a, b) if a.sent else (b, a)
    iid = "echo-a" if target is a else "echo-b"
    yellow.change(Change.UP, inst(iid, draining=True), "changed")
    error(target, requests(target)[0], ErrorCode.UNAVAILABLE, "Unavailable", f"{iid} is draining")
    (moved,) = requests(other)
    reply(other, moved, "done")
    assert result_of(d) == "done"
    assert not target.closed
    yellow.change(Change.DOWN, inst(iid, draining=True), "deregistered")
    assert target.closed


def test_pushes_skip_a_drained_instance(
    directory: Directory, ctx: FakeZmqContext, yellow: Yellow
) -> None:
    """The one PUSH socket of a service is disconnected from a drained instance's pull
    endpoint, and connected again when it is taken back."""
    live(directory, ctx, yellow, inst("echo-a"), inst("echo-b"))
    directory.push("echo", "note", {})
    (push,) = ctx.of_type(zmq.PUSH)
    yellow.change(Change.UP, inst("echo-a", draining=True), "changed")
    assert push.connected == ["tcp://echo-b.test:2"]
    yellow.change(Change.UP, inst("echo-a"), "changed")
    assert sorted(push.connected) == ["tcp://echo-a.test:2", "tcp://echo-b.test:2"]


def test_a_bound_call_names_its_instance_and_one_by_load_does_not(
    directory: Directory, ctx: FakeZmqContext, yellow: Yellow
) -> None:
    (a,) = live(directory, ctx, yellow, inst("echo-a"))
    ignore(directory.call("echo", "work"))
    ignore(directory.call("echo", "work", instance="echo-a"))
    assert [h.instance_id for h in requests(a)] == [None, "echo-a"]
    assert link_to(ctx, rep("echo-a")) is a


# -- brokers -------------------------------------------------------------------------------


def drain_broker(tree: Any, draining: bool, role: str = "admin") -> None:
    """Deliver a ``drain`` on the broker's internal endpoint, as an operator sends it."""
    header = Header(kind=Kind.REQUEST, method="drain", one_way=True, caller="x", caller_role=role)
    tree.internal().deliver([b"ident", encode(header), encode_value({"draining": draining})])


def test_a_drained_broker_admits_no_one_new_and_keeps_its_players() -> None:
    """drain from an operator: the registry entry says draining at once, a new connection
    is refused (UNAVAILABLE), a logged-in player stays and is still pushed to, and the
    broker is not ready; undrained, it admits again. From another role it is refused."""
    tree = make_tree()
    tree.service.startService()
    try:
        proto, transport = client(tree)
        drain_broker(tree, True, role="worker")
        assert not tree.broker.draining and tree.broker.counters["forbidden_internal"] == 1

        drain_broker(tree, True)
        assert tree.broker.draining
        register = tree.told()[-1]
        assert register.op == RegistryOp.REGISTER and register.instance is not None
        assert from_value((register.instance.meta or {})["drained"]) is True
        assert tree.broker.readiness()[0] is False
        _, fresh = client(tree)
        (refusal,) = parse_output(fresh.value())
        assert (refusal.kind, refusal.code) == (PacketKind.ERROR, ClientError.UNAVAILABLE)
        assert tree.broker.counters["refused_draining"] == 1

        transport.clear()
        proto.dataReceived(frame(Packet(kind=PacketKind.REQUEST, seq=2, route="echo.echo")))
        assert len(tree.held) == 1, "its players' requests still go on"
        sid = next(iter(tree.broker.table.sessions))
        push = Header(kind=Kind.REQUEST, method="push", one_way=True, targets=[sid], route="x.y")
        tree.internal().deliver([b"ident", encode(push), encode_value("hi")])
        assert [p.route for p in parse_output(transport.value())] == ["x.y"]

        drain_broker(tree, False)
        assert not tree.broker.draining and tree.broker.readiness()[0] is True
        assert from_value((tree.told()[-1].instance.meta or {})["drained"]) is False
        _, admitted = client(tree)
        assert all(p.kind != PacketKind.ERROR for p in parse_output(admitted.value()))
    finally:
        if tree.held:
            tree.held[0].callback(b"")
        tree.service.stopService()


def test_a_bad_drain_body_is_counted_not_obeyed() -> None:
    tree = make_tree()
    tree.service.startService()
    try:
        header = Header(kind=Kind.REQUEST, method="drain", one_way=True, caller_role="tool")
        tree.internal().deliver([b"ident", encode(header), encode_value({"draining": "yes"})])
        assert not tree.broker.draining and tree.broker.counters["bad_internal"] == 1
    finally:
        tree.service.stopService()


def test_a_brokers_drain_makes_its_tree_not_ready(monkeypatch: pytest.MonkeyPatch) -> None:
    """A broker's tree: drained, /readyz is not ready (``draining``, ``admitting``)."""
    monkeypatch.setenv("MMO_INSECURE", "1")
    monkeypatch.setenv("MMO_DEMO", "1")
    config = BrokerConfig(yellow=("tcp://127.0.0.1:5555",), listen="tcp:0:interface=127.0.0.1")
    tree = make_broker_service(config)
    try:
        broker = tree.getServiceNamed("broker").broker
        broker.drain(True)
        ready, checks = tree.telemetry.readiness()
        assert not ready and not checks["draining"]["ok"] and not checks["admitting"]["ok"]
        broker.drain(False)
        assert "draining" not in tree.telemetry.readiness()[1]
    finally:
        tree.services[0].context.close()


def test_the_brokerlist_does_not_list_a_drained_broker() -> None:
    directory = FakeDirectory()
    brokers = LiveBrokers(directory)  # type: ignore[arg-type]
    brokers.startService()
    resource = BrokerlistResource(brokers)
    directory.register("broker", "broker-a", meta={**broker_meta(7001), "drained": True})
    directory.register("broker", "broker-b", meta={**broker_meta(7002), "drained": False})
    assert http(resource).json()["brokerList"] == {"127.0.0.1:7002": 0.25}
    status = http(resource, b"/status").json()["brokers"]
    assert status["broker-a"]["listed"] is False and status["broker-a"]["meta"]["drained"]
    directory.register("broker", "broker-a", meta={**broker_meta(7001), "drained": False})
    assert set(http(resource).json()["brokerList"]) == {"127.0.0.1:7001", "127.0.0.1:7002"}


# -- fight processes -----------------------------------------------------------------------


def test_a_drained_fight_process_takes_no_fight_and_stops_once_its_fights_end() -> None:
    """drain_process: new fights go to other processes (one is started in its place), its
    fight goes on to its release, then it is stopped."""
    pool, _, spawner, _ = make_pool(cap=4, min_spare=1)
    ready_all(pool)
    fight = result_of(pool.allocate(["a", "b"], timeout=1))
    assert fight.instance_id == "fight-1"
    answer = pool.drain_process("fight-1")
    assert answer == {"instance": "fight-1", "draining": True, "state": READY, "fights": 1}
    ready_all(pool)
    assert set(pool.processes) == {"fight-1", "fight-2"}, "a spare in its place"
    assert result_of(pool.allocate(["c"], timeout=1)).instance_id == "fight-2"
    assert pool.status()["processes"][0]["drained"] is True
    assert pool.status()["processes"][0]["room"] == 0
    pool.release(fight.fight_id)
    assert spawner.children["fight-1"].terminated
    assert "fight-1" not in pool.processes


def test_an_idle_drained_fight_process_stops_at_once_and_undrain_brings_one_back() -> None:
    pool, _, spawner, _ = make_pool(cap=4, min_spare=2)
    ready_all(pool)
    busy = result_of(pool.allocate(["a"], timeout=1)).instance_id
    idle = next(iid for iid in pool.processes if iid != busy)
    pool.drain_process(idle)
    assert spawner.children[idle].terminated
    with pytest.raises(BadFight):
        pool.drain_process(idle, False)  # gone
    pool.drain_process(busy)
    assert pool.drain_process(busy, False)["draining"] is False
    assert result_of(pool.allocate(["b"], timeout=1)).instance_id == busy
    with pytest.raises(BadFight):
        pool.drain_process("nope")


def test_a_stopping_fight_process_cannot_be_taken_back() -> None:
    pool, _, spawner, _ = make_pool(cap=4, min_spare=1)
    spawner.auto_exit = False
    ready_all(pool)
    pool.drain_process("fight-1")
    assert pool.processes["fight-1"].state == STOPPING
    with pytest.raises(BadFight, match="stopping"):
        pool.drain_process("fight-1", False)


def test_the_dispatchers_drain_process_is_for_operators() -> None:
    pool, clock, _, _ = make_pool(cap=4, min_spare=1)
    ready_all(pool)
    dispatcher = handler_factory(FightDispatcher, clock=clock, pool=pool)
    with pytest.raises(Forbidden):
        dispatch(dispatcher, "drain_process", instance="fight-1", caller_role="fight")
    answer = dispatch(dispatcher, "drain_process", instance="fight-1", caller_role="admin")
    assert answer["draining"] is True
    with pytest.raises(BadFight):
        dispatch(dispatcher, "drain_process", instance="nope", caller_role="tool")


def test_mmo_drain_parses() -> None:
    """``mmo drain INSTANCE [--undrain] [--pool DISPATCHER]``."""
    args = build_parser().parse_args(["drain", "echo-1", "--undrain", "--yellow", "tcp://y:1"])
    assert (args.instance, args.undrain, args.service, args.pool) == ("echo-1", True, None, None)
    args = build_parser().parse_args(["drain", "fight-3", "--pool", "fight-a"])
    assert (args.instance, args.undrain, args.pool) == ("fight-3", False, "fight-a")


@pytest.fixture
def tool(monkeypatch: pytest.MonkeyPatch) -> FakeDirectory:
    """The directory ``mmo drain`` connects (a fake one)."""
    directory = FakeDirectory()
    directory.stopService = lambda: defer.succeed(None)  # type: ignore[attr-defined]
    monkeypatch.setattr("mmo.logic.connect", lambda *args, **kwargs: directory)
    return directory


def test_mmo_drain_tells_a_broker_and_waits_for_its_entry_to_say_so(
    tool: FakeDirectory, capsys: pytest.CaptureFixture[str]
) -> None:
    tool.register("broker", "broker-a", meta=broker_meta(7001))
    args = build_parser().parse_args(["drain", "broker-a", "--json"])
    done = args.run(tool.clock, args)
    (sent,) = tool.sent
    assert (sent.service, sent.method, sent.instance) == ("broker", "drain", "broker-a")
    assert decode_value(sent.body) == {"draining": True}
    assert not done.called, "it waits for the registry entry"
    tool.register("broker", "broker-a", meta={**broker_meta(7001), "drained": True})
    result_of(done)
    assert json.loads(capsys.readouterr().out) == {"instance": "broker-a", "draining": True}


def test_mmo_drain_calls_ops_drain_on_the_instance_it_names(
    tool: FakeDirectory, capsys: pytest.CaptureFixture[str]
) -> None:
    tool.register("echo", "echo-1")
    tool.reply("echo", "ops_drain", lambda call: {"instance": call.instance, "draining": False})
    args = build_parser().parse_args(["drain", "echo-1", "--undrain"])
    result_of(args.run(tool.clock, args))
    (call,) = tool.calls
    assert (call.method, call.instance, call.kwargs) == ("ops_drain", "echo-1", {"draining": False})
    assert capsys.readouterr().out == "echo-1 (echo): taking work again\n"
    args = build_parser().parse_args(["drain", "nope"])
    with pytest.raises(CommandError, match="no instance 'nope'"):
        result_of(args.run(tool.clock, args))
