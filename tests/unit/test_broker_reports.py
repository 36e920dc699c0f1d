"""What a broker reports to the session service (closed, kicked, track): in order per
session, acknowledged, and sent again when the instance it went to was lost."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from mmo.broker.config import BrokerConfig
from mmo.broker.counters import Counters, InFlight
from mmo.broker.login import REPORT_ATTEMPTS, LoginGate
from mmo.errors import InstanceLost
from mmo.sessions import SessionService
from mmo.testing import FakeDirectory, handler_factory, result_of


def setup() -> tuple[LoginGate, FakeDirectory, Any]:
    """A broker's gate (instance ``b1``) and a session service it reaches, with one
    session of alice's open on ``b1``."""
    directory = FakeDirectory(caller_id="b1", caller_role="broker")
    directory.serve(handler_factory(SessionService, clock=directory.clock))
    gate = LoginGate(
        BrokerConfig(yellow="tcp://127.0.0.1:5555"),
        directory,  # type: ignore[arg-type]
        b"k" * 32,
        None,  # type: ignore[arg-type]
        None,  # type: ignore[arg-type]
        Counters(),
        InFlight(),
        None,  # type: ignore[arg-type]
    )
    opened = result_of(directory.call("session", "open", {"user_id": "alice"}))
    return gate, directory, SimpleNamespace(session_id=opened["session_id"])


def channels(directory: FakeDirectory, conn: Any) -> list[str]:
    """The session's channels as the session service has them."""
    record = result_of(directory.call("session", "get", {"session_id": conn.session_id}))
    return record["channels"]  # type: ignore[no-any-return]


def test_reports_keep_their_order_when_one_is_lost_and_sent_again() -> None:
    """A join lost with its session instance is sent again before the leave and the next
    join that followed it: the session service ends up with what the broker has."""
    gate, directory, conn = setup()
    directory.fail("session", "track", InstanceLost("session-1 lost"), once=True)
    gate.track(conn, joined=["room:a"])
    gate.track(conn, left=["room:a"])
    gate.track(conn, joined=["room:b"])
    assert channels(directory, conn) == ["room:b"]
    assert [c.kwargs for c in directory.calls_to("session", "track")] == [
        {"session_id": conn.session_id, "joined": ["room:a"]},
        {"session_id": conn.session_id, "joined": ["room:a"]},
        {"session_id": conn.session_id, "left": ["room:a"]},
        {"session_id": conn.session_id, "joined": ["room:b"]},
    ]
    assert gate.counters["session_reports_lost"] == 0
    assert gate._reports == {}


def test_a_report_that_never_gets_through_is_counted_and_the_next_ones_go_on() -> None:
    """Every attempt of a report failing: it is given up (counted, logged) after
    REPORT_ATTEMPTS, and the session's later reports still go."""
    gate, directory, conn = setup()
    for _ in range(REPORT_ATTEMPTS):
        directory.fail("session", "track", InstanceLost("session-1 lost"), once=True)
    gate.track(conn, joined=["room:a"])
    gate.track(conn, joined=["room:b"])
    gate.closed(conn.session_id)
    assert channels(directory, conn) == ["room:b"]
    assert gate.counters["session_reports_lost"] == 1
    record = result_of(directory.call("session", "get", {"session_id": conn.session_id}))
    assert record["online"] is False
