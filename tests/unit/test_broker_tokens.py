"""The broker checks resume tokens itself and refreshes them (a real Broker on fakes)."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer

from mmo.data.tokens import issue
from mmo.sessions.service import RESUME_PURPOSE
from mmo.wire import decode_value, encode_value
from mmo.wire.gen.mmo.ttypes import ClientError, Packet, PacketKind

from .test_broker_fuzz import FakeDirectory, connect, frame, make_broker, parse_output


class RecordingDirectory(FakeDirectory):
    """The fuzz tests' directory, recording calls and answering ``session.refresh``."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, str]] = []

    def call(self, service: str, method: str, args: Any = None, **kwargs: Any) -> Any:
        self.calls.append((service, method))
        if (service, method) == ("session", "refresh"):
            return defer.succeed({"token": "fresh", "token_ttl": 60.0})
        return super().call(service, method, args, **kwargs)


def resume(token: str, session_id: str = "s1") -> bytes:
    body = {"session_id": session_id, "token": token}
    return frame(
        Packet(kind=PacketKind.REQUEST, seq=1, route="session.resume", body=encode_value(body))
    )


def test_forged_expired_or_foreign_tokens_are_refused_without_asking() -> None:
    directory = RecordingDirectory()
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
    assert directory.calls == []
    assert broker.stats()["resume_bad_tokens"] == len(bad)
    protocol, transport = connect(broker)
    protocol.dataReceived(resume(issue("s1", key, ttl=60, purpose=RESUME_PURPOSE)))
    assert directory.calls == [("session", "resume")]


def test_a_session_refreshes_its_token() -> None:
    broker, _ = make_broker(RecordingDirectory())
    protocol, transport = connect(broker)
    protocol.dataReceived(frame(Packet(kind=PacketKind.REQUEST, seq=1, route="sso.login")))
    protocol.dataReceived(frame(Packet(kind=PacketKind.REQUEST, seq=2, route="session.refresh")))
    login, refreshed = parse_output(transport.value())
    assert decode_value(login.body)["token"] == "t1"
    assert refreshed.seq == 2
    assert decode_value(refreshed.body) == {"token": "fresh", "token_ttl": 60.0}
    assert broker.table.sessions["s1"].token == "fresh"
