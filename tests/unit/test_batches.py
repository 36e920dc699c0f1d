"""Batches on the internal links (docs/protocol.md 2.3): a caller sends what one turn of
the reactor made for one instance as one message, a worker serves each request in order
and answers a batching caller in one message at the end of its turn; a single request
(an older caller) is answered alone, at once."""

from __future__ import annotations

from typing import Any

import zmq
from twisted.internet import task

from mmo.logic import Context, ServiceHandler
from mmo.logic.links import BATCH_META, Link
from mmo.registry import make_instance
from mmo.testing import FakeZmqContext, handler_factory
from mmo.wire import decode, decode_value, encode, encode_value
from mmo.wire.gen.mmo.ttypes import Header, Kind

from .test_memo import serving


class Counter(ServiceHandler):
    """Counts: each call answers the count so far, so order shows."""

    default_service = "counter"

    def __init__(self, runtime: Any) -> None:
        super().__init__(runtime)
        self.n = 0

    def on_next(self, ctx: Context) -> int:
        self.n += 1
        return self.n


def request(call_id: int) -> list[bytes]:
    header = Header(kind=Kind.REQUEST, call_id=call_id, method="next", timeout_ms=5000)
    return [encode(header), encode_value({})]


def replies(frames: list[bytes]) -> list[tuple[int, Any]]:
    return [
        (decode(Header, frames[i]).call_id, decode_value(frames[i + 1]))
        for i in range(0, len(frames), 2)
    ]


def test_a_batch_is_served_in_order_and_answered_as_one_message_at_the_end_of_the_turn() -> None:
    clock = task.Clock()
    server, router = serving(handler_factory(Counter, clock=clock))
    server._request([b"caller", *request(1), *request(2), *request(3)])
    assert router.sent == []  # held to the end of the turn, not sent one by one
    clock.advance(0)
    (message,) = router.sent
    assert message[0] == b"caller"
    assert replies(message[1:]) == [(1, 1), (2, 2), (3, 3)]


def test_a_single_request_from_a_caller_that_never_batched_is_answered_at_once() -> None:
    clock = task.Clock()
    server, router = serving(handler_factory(Counter, clock=clock))
    server._request([b"old", *request(7)])
    (message,) = router.sent
    assert message[0] == b"old" and replies(message[1:]) == [(7, 1)]


def test_a_malformed_message_is_refused_whole() -> None:
    clock = task.Clock()
    server, router = serving(handler_factory(Counter, clock=clock))
    server._request([b"caller", *request(1), b"half a pair"])
    clock.advance(0)
    assert router.sent == [] and server.bad_messages == 1


def link_to(meta: dict[str, Any]) -> tuple[Link[Any], Any, task.Clock]:
    clock = task.Clock()
    ctx = FakeZmqContext(clock)
    instance = make_instance(
        "counter", "counter-1", {"rep": "tcp://127.0.0.1:1"}, meta, heartbeat=1.0
    )
    link: Link[Any] = Link(ctx, instance, lambda *_: None, lambda *_: None)  # type: ignore[arg-type]
    (dealer,) = ctx.of_type(zmq.DEALER)
    return link, dealer, clock


def test_a_link_batches_one_turn_for_an_instance_that_takes_batches() -> None:
    link, dealer, clock = link_to({BATCH_META: True})
    for call_id in (1, 2, 3):
        link.send(request(call_id))
    assert dealer.sent == []
    clock.advance(0)
    assert dealer.sent == [[*request(1), *request(2), *request(3)]] and link.sent == 1


def test_a_link_sends_at_once_to_an_instance_that_does_not() -> None:
    link, dealer, _ = link_to({})
    link.send(request(1))
    link.send(request(2))
    assert dealer.sent == [request(1), request(2)]


def test_what_a_link_batched_is_handed_over_before_an_answer_sent_at_once() -> None:
    """A worker that sent something on a batching link (a log record, a push) and then
    answers an unbatched caller: the batch leaves first, as it would without batches."""
    link, dealer, clock = link_to({BATCH_META: True})
    server, router = serving(handler_factory(Counter, clock=clock))
    link.send(request(99))
    assert dealer.sent == []
    server._request([b"old", *request(1)])  # answered at once: the batch goes before it
    assert dealer.sent == [request(99)] and len(router.sent) == 1
    clock.advance(0)
    assert dealer.sent == [request(99)]  # once
