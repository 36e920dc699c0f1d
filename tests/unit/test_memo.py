"""The reply memo: a resent client request runs once (mmo.logic.memo, the worker's use of it,
and the rendezvous routing that brings a resend back to the same instance)."""

from __future__ import annotations

from typing import Any

import pytest
import zmq
from twisted.internet import defer, task

from mmo.logic import Context, ServiceHandler, idempotent
from mmo.logic.links import Pool
from mmo.logic.memo import ReplyMemo
from mmo.logic.server import HandlerServer
from mmo.testing import FakeZmqContext, FakeZmqSocket, handler_factory
from mmo.wire import decode, decode_value, encode, encode_value
from mmo.wire.gen.mmo.ttypes import Header, Kind, Session


class Shop(ServiceHandler):
    """Counts what it sells; ``slow_buy`` answers when the test says so."""

    default_service = "shop"

    def __init__(self, runtime: Any) -> None:
        super().__init__(runtime)
        self.sold = 0
        self.waiting: list[defer.Deferred[int]] = []

    def on_buy(self, ctx: Context, item: int) -> int:
        self.sold += 1
        return self.sold

    def on_slow_buy(self, ctx: Context, item: int) -> defer.Deferred[int]:
        self.sold += 1
        d: defer.Deferred[int] = defer.Deferred()
        self.waiting.append(d)
        return d

    def on_refuse(self, ctx: Context) -> None:
        self.sold += 1
        raise ValueError("sold out")

    @idempotent
    def on_count(self, ctx: Context) -> int:
        return self.sold


def serving(handler: ServiceHandler, **options: Any) -> tuple[HandlerServer, FakeZmqSocket]:
    """A started HandlerServer for ``handler`` on a fake ZeroMQ context (on the handler's
    clock), and its ROUTER socket: what it sends to brokers and callers."""
    ctx = FakeZmqContext(handler.clock)
    server = HandlerServer(ctx, handler, **options)  # type: ignore[arg-type]
    server.startService()
    (router,) = ctx.of_type(zmq.ROUTER)
    return server, router


def answers(router: FakeZmqSocket) -> list[tuple[int, Any]]:
    """``(call_id, reply or error type)`` of everything sent on ``router``, then forget it."""
    out = []
    for _, raw, body in router.sent:
        header = decode(Header, raw)
        value = decode_value(body) if header.kind == Kind.REPLY else header.error_type
        out.append((header.call_id, value))
    router.sent.clear()
    return out


@pytest.fixture
def shop() -> tuple[HandlerServer, Shop, FakeZmqSocket, task.Clock]:
    clock = task.Clock()
    handler = handler_factory(Shop, clock=clock)
    server, router = serving(handler, memo=ReplyMemo(clock, ttl=60, size=100))
    return server, handler, router, clock


_call_ids = iter(range(1, 10_000))


def request(
    server: HandlerServer,
    method: str,
    seq: int | None,
    session: str | None = "s1",
    **kwargs: Any,
) -> int:
    """Deliver a request as a broker sends it; return its call id."""
    call_id = next(_call_ids)
    header = Header(
        kind=Kind.REQUEST,
        call_id=call_id,
        service_name="shop",
        method=method,
        timeout_ms=5000,
        session=Session(id=session) if session else None,
        client_seq=seq,
    )
    server._request([b"ident", encode(header), encode_value(kwargs)])
    return call_id


def test_a_resend_gets_the_first_reply_and_runs_nothing(shop: Any) -> None:
    server, handler, router, _ = shop
    first = request(server, "buy", 7, item=1)
    again = request(server, "buy", 7, item=1)
    assert answers(router) == [(first, 1), (again, 1)]
    assert handler.sold == 1
    assert server.memo.replayed == 1


def test_a_resend_while_the_first_still_runs_waits_for_it(shop: Any) -> None:
    server, handler, router, _ = shop
    first = request(server, "slow_buy", 3, item=1)
    again = request(server, "slow_buy", 3, item=1)
    assert answers(router) == []
    handler.waiting[0].callback(41)
    assert answers(router) == [(first, 41), (again, 41)]
    assert handler.sold == 1
    assert server.memo.joined == 1


def test_an_error_is_recorded_like_a_reply(shop: Any) -> None:
    server, handler, router, _ = shop
    request(server, "refuse", 2)
    request(server, "refuse", 2)
    assert [value for _, value in answers(router)] == ["ValueError", "ValueError"]
    assert handler.sold == 1


def test_new_requests_run(shop: Any) -> None:
    """Another seq, another session, the same seq for another body or method, no seq,
    an idempotent method: none of these is a resend."""
    server, handler, router, _ = shop
    request(server, "buy", 1, item=1)
    request(server, "buy", 2, item=1)
    request(server, "buy", 1, session="s2", item=1)
    request(server, "buy", 1, item=2)
    request(server, "slow_buy", 1, item=2)
    request(server, "buy", None, item=2)
    request(server, "buy", None, item=2)
    request(server, "buy", 9, session=None, item=2)
    request(server, "buy", 9, session=None, item=2)
    assert handler.sold == 9
    request(server, "count", 5)
    handler.sold = 100
    request(server, "count", 5)
    assert [value for _, value in answers(router)][-2:] == [9, 100]
    assert server.memo.replayed == 0


def test_a_stopping_worker_still_answers_resends_of_what_it_ran(shop: Any) -> None:
    server, handler, router, _ = shop
    request(server, "buy", 4, item=1)
    server.accepting = False
    request(server, "buy", 4, item=1)
    request(server, "buy", 5, item=1)
    assert [value for _, value in answers(router)] == [1, 1, "Unavailable"]
    assert handler.sold == 1


def test_outcomes_expire_after_the_ttl_and_the_size_bounds_them() -> None:
    clock = task.Clock()
    memo = ReplyMemo(clock, ttl=10, size=3)
    for seq in (1, 2):
        entry = memo.start(("s", seq), ReplyMemo.fingerprint("m", b""))
        memo.end(("s", seq), entry, {"kind": Kind.REPLY}, b"")
    clock.advance(9)
    assert memo.find(("s", 1), ReplyMemo.fingerprint("m", b"")) is not None
    clock.advance(2)
    assert memo.find(("s", 1), ReplyMemo.fingerprint("m", b"")) is None
    assert len(memo) == 0
    for seq in range(10):
        memo.find(("s", seq), ReplyMemo.fingerprint("m", b""))
        memo.start(("s", seq), ReplyMemo.fingerprint("m", b""))
    assert len(memo) == 3
    assert memo.evicted == 7


class Link:
    """Stands in for a _Conn in a pool."""

    def __init__(self, instance_id: str, idempotent: frozenset[str] = frozenset()) -> None:
        self.instance_id = instance_id
        self.draining = False
        self.up = True
        self.outstanding: dict[int, Any] = {}
        self.idempotent = idempotent


def pool_of(*ids: str) -> Pool[Any]:
    pool: Pool[Any] = Pool("shop")
    for iid in ids:
        pool.conns[iid] = Link(iid, frozenset({"count"}))  # type: ignore[assignment]
    return pool


def test_rendezvous_picks_the_same_instance_in_every_process() -> None:
    """Two callers that know the same instances (in any order) pick the same one per
    session; sessions spread over all; losing one instance moves only its sessions."""
    one, other = pool_of("a", "b", "c"), pool_of("c", "a", "b")
    sessions = [f"session-{i}" for i in range(300)]
    picks = {s: one.pick(affinity=s).instance_id for s in sessions}  # type: ignore[union-attr]
    assert picks == {s: other.pick(affinity=s).instance_id for s in sessions}  # type: ignore[union-attr]
    assert {iid: list(picks.values()).count(iid) > 60 for iid in "abc"} == dict.fromkeys(
        "abc", True
    )
    for s in sessions:
        moved = one.pick(exclude={"b"}, affinity=s)
        assert moved is not None
        if picks[s] != "b":
            assert moved.instance_id == picks[s]
    assert one.idempotent("count") and not one.idempotent("buy")


def test_a_preferred_instance_is_taken_while_its_link_is_up() -> None:
    """``prefer`` wins while its link is connected; dropped, gone or draining, the pick
    goes on as without it (to a connected instance)."""
    pool = pool_of("a", "b")
    pool.conns["b"].outstanding = {1: None, 2: None}  # the busier one
    assert pool.pick(prefer="b").instance_id == "b"  # type: ignore[union-attr]
    pool.conns["b"].up = False
    assert pool.pick(prefer="b").instance_id == "a"  # type: ignore[union-attr]
    assert pool.pick(prefer="gone").instance_id == "a"  # type: ignore[union-attr]
    pool.conns["b"].up, pool.conns["b"].draining = True, True
    assert pool.pick(prefer="b").instance_id == "a"  # type: ignore[union-attr]
