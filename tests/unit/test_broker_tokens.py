"""The broker checks resume tokens itself and refreshes them (a real Broker on fakes)."""

from __future__ import annotations

from mmo.data.tokens import issue
from mmo.sessions.service import RESUME_PURPOSE
from mmo.testing import FakeDirectory
from mmo.wire import decode_value, encode_value
from mmo.wire.gen.mmo.ttypes import ClientError, Packet, PacketKind

from .test_broker_fuzz import connect, frame, make_broker, parse_output, scripted_directory


def asked(directory: FakeDirectory) -> list[tuple[str, str]]:
    """``(service, method)`` of every call the broker made, in order."""
    return [(c.service, c.method) for c in directory.calls]


def resume(token: str, session_id: str = "s1") -> bytes:
    """A ``session.resume`` request for ``session_id`` with ``token``."""
    body = {"session_id": session_id, "token": token}
    return frame(
        Packet(kind=PacketKind.REQUEST, seq=1, route="session.resume", body=encode_value(body))
    )


def test_forged_expired_or_foreign_tokens_are_refused_without_asking() -> None:
    """A bad resume token is refused by the broker itself; only a good one reaches the
    session service."""
    directory = scripted_directory()
    broker, _ = make_broker(directory)
    key = broker.gate.key
    bad = [
        "not-a-token",
        issue("s1", b"someone-else's-key-16+", ttl=60, purpose=RESUME_PURPOSE),
        issue("s1", key, ttl=-1, purpose=RESUME_PURPOSE),
        issue("s1", key, ttl=60, purpose="auth"),
        issue("s2", key, ttl=60, purpose=RESUME_PURPOSE),
    ]
    for token in bad:
        protocol, transport = connect(broker)
        protocol.dataReceived(resume(token))
        (answer,) = parse_output(transport.value())
        assert (answer.kind, answer.code) == (PacketKind.ERROR, ClientError.RESUME_FAILED)
        assert not transport.disconnecting
    assert asked(directory) == []
    assert broker.stats()["resume_bad_tokens"] == len(bad)
    protocol, transport = connect(broker)
    protocol.dataReceived(resume(issue("s1", key, ttl=60, purpose=RESUME_PURPOSE)))
    assert asked(directory) == [("session", "resume")]


def test_a_session_refreshes_its_token() -> None:
    """session.refresh answers with the session service's new token, which the broker keeps."""
    directory = scripted_directory()
    directory.reply("session", "refresh", {"token": "fresh", "token_ttl": 60.0})
    broker, _ = make_broker(directory)
    protocol, transport = connect(broker)
    protocol.dataReceived(frame(Packet(kind=PacketKind.REQUEST, seq=1, route="sso.login")))
    protocol.dataReceived(frame(Packet(kind=PacketKind.REQUEST, seq=2, route="session.refresh")))
    login, refreshed = parse_output(transport.value())
    assert decode_value(login.body)["token"] == "t1"
    assert refreshed.seq == 2
    assert decode_value(refreshed.body) == {"token": "fresh", "token_ttl": 60.0}
    assert broker.table.sessions["s1"].token == "fresh"
