"""A broker and the session service: what it reports (closed, kicked, track: in order per
session, acknowledged, sent again when the instance it went to was lost), and what a
failed resume tells the client (only a refusal ends the session)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from mmo.broker.config import BrokerConfig
from mmo.broker.counters import Counters, InFlight
from mmo.broker.login import REPORT_ATTEMPTS, LoginGate
from mmo.data import tokens
from mmo.errors import DeadlineExceeded, InstanceLost, RemoteError
from mmo.logic.sessions import RESUME_PURPOSE, RESUME_REFUSED
from mmo.sessions import ResumeFailed, SessionService
from mmo.testing import FakeDirectory, handler_factory, result_of
from mmo.wire import encode_value
from mmo.wire.gen.mmo.ttypes import ClientError, Packet, PacketKind

from .test_broker_fuzz import connect, frame, make_broker, parse_output, scripted_directory


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


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (RemoteError("unknown or expired session", RESUME_REFUSED), ClientError.RESUME_FAILED),
        (
            RemoteError("Redis 127.0.0.1:6379 is not connected", "CacheUnavailable"),
            ClientError.UNAVAILABLE,
        ),
        (DeadlineExceeded("session.resume: no answer within 5s"), ClientError.UNAVAILABLE),
        (InstanceLost("session-1 lost with the call in flight"), ClientError.UNAVAILABLE),
    ],
)
def test_only_a_refused_resume_ends_the_session_at_the_client(error: Exception, code: int) -> None:
    """A resume the session service refuses is RESUME_FAILED (the client logs in afresh);
    one it could not answer (out of reach, its cache down) is UNAVAILABLE, so the client
    tries again with the same token."""
    directory = scripted_directory()
    directory.fail("session", "resume", error)
    broker, _ = make_broker(directory)
    protocol, transport = connect(broker)
    token = tokens.issue("s1", b"test-key-of-sixteen-or-more", ttl=60, purpose=RESUME_PURPOSE)
    body = encode_value({"session_id": "s1", "token": token})
    protocol.dataReceived(
        frame(Packet(kind=PacketKind.REQUEST, seq=1, route="session.resume", body=body))
    )
    (answer,) = parse_output(transport.value())
    assert (answer.kind, answer.code) == (PacketKind.ERROR, code)


def test_the_session_services_refusal_is_named_as_brokers_expect() -> None:
    """The error the session service raises for a session it cannot resume travels under
    the name brokers take for a refusal."""
    assert ResumeFailed.__name__ == RESUME_REFUSED
