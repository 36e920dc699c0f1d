"""The serving side's errors: a player's failed NOTIFY is answered for the broker to pass on,
and a handler's exceptions are logged once per kind per interval, not once per message."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet import task
from twisted.logger import LogLevel, globalLogPublisher

from mmo.logic import Context, ServiceHandler, client_method
from mmo.logic.server import HandlerServer
from mmo.testing import FakeZmqSocket, handler_factory
from mmo.wire import decode, encode, encode_value
from mmo.wire.gen.mmo.ttypes import ErrorCode, Header, Kind, Origin, Session

from .test_memo import serving


class Board(ServiceHandler):
    """A notice board: posting may fail on bad input or on a bug."""

    default_service = "board"

    @client_method
    def on_post(self, ctx: Context, text: str) -> None:
        if text == "bug":
            raise KeyError("a bug in the handler")

    def on_wipe(self, ctx: Context) -> None:
        pass


@pytest.fixture
def board() -> tuple[HandlerServer, FakeZmqSocket, task.Clock]:
    clock = task.Clock()
    server, wire = serving(handler_factory(Board, clock=clock))
    return server, wire, clock


def notify(server: HandlerServer, method: str, origin: int, **kwargs: Any) -> None:
    """A one-way request, as a broker forwards a player's NOTIFY (or a member sends one)."""
    header = Header(
        kind=Kind.REQUEST,
        service_name="board",
        method=method,
        one_way=True,
        session=Session(id="s-7", user_id="eve", broker="b1"),
        origin=origin,
        route=f"board.{method}",
        timeout_ms=5000,
    )
    server._request([b"broker-ident", encode(header), encode_value(kwargs)])


@pytest.fixture
def logged() -> Any:
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


def test_a_players_failed_notify_is_answered_for_the_broker(board: Any) -> None:
    """Bad arguments, a method players may not call, and a bug: each NOTIFY failure goes back
    on the link as a one-way ERROR naming the session and the route; successes send nothing."""
    server, wire, _ = board
    notify(server, "post", Origin.CLIENT, text="fine")
    notify(server, "post", Origin.CLIENT, colour="red")
    notify(server, "wipe", Origin.CLIENT)
    notify(server, "post", Origin.CLIENT, text="bug")
    answers = [decode(Header, raw) for ident, raw, _ in wire.sent]
    assert [h.error_code for h in answers] == [
        ErrorCode.BAD_REQUEST,
        ErrorCode.UNKNOWN_METHOD,
        ErrorCode.REMOTE,
    ]
    for h in answers:
        assert (h.kind, h.one_way, h.targets, h.call_id) == (Kind.ERROR, True, ["s-7"], None)
    assert [h.route for h in answers] == ["board.post", "board.wipe", "board.post"]
    assert {ident for ident, _, _ in wire.sent} == {b"broker-ident"}


def test_a_members_failed_one_way_request_is_not_answered(board: Any) -> None:
    """Only a player's NOTIFY is answered: a member's one-way failure is logged, not sent."""
    server, wire, _ = board
    notify(server, "post", Origin.MEMBER, text="bug")
    assert wire.sent == []


def test_a_flood_of_failures_logs_one_traceback_per_kind_per_interval(
    board: Any, logged: list[dict[str, Any]]
) -> None:
    """1000 failing notifies log one error with its traceback; after the interval the next one
    is logged with the count of repeats; the caller's own mistakes are not logged at all."""
    server, _, clock = board
    for _ in range(1000):
        notify(server, "post", Origin.CLIENT, text="bug")
        notify(server, "post", Origin.CLIENT, colour="red")
        notify(server, "nosuch", Origin.CLIENT)
    errors = [e for e in logged if e.get("log_level") in (LogLevel.error, LogLevel.critical)]
    assert len(errors) == 1
    assert errors[0]["log_level"] == LogLevel.error and "log_failure" in errors[0]
    assert (errors[0]["method"], errors[0]["error_type"]) == ("post", "KeyError")
    assert server.errors.suppressed == 999
    clock.advance(server.errors.interval)
    notify(server, "post", Origin.CLIENT, text="bug")
    errors = [e for e in logged if e.get("log_level") == LogLevel.error]
    assert len(errors) == 2 and errors[1]["repeats"] == 999
