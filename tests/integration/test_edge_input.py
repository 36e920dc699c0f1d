"""Bad input at the broker: each gets its documented treatment; everyone else goes on."""

from __future__ import annotations

import struct

import pytest

from mmo.testing.rawclient import RawClient
from mmo.wire.gen.mmo.ttypes import ClientError, PacketKind

from .edge import EdgeCluster


@pytest.fixture(scope="module")
def edge(tmp_path_factory):
    """One edge cluster for the module (a short login timeout, a small burst)."""
    cluster = EdgeCluster(
        tmp_path_factory.mktemp("edge-input"),
        brokers=1,
        broker_args=("--login-timeout", "1", "--burst", "20", "--rate", "50"),
    )
    try:
        cluster.wait_ready()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def bystander(edge):
    """A logged-in client on the same broker that must keep being served."""
    client = RawClient(edge.ports[0])
    client.login("bob", "pw-bob")
    yield client
    reply = client.request("echo.echo", {"still": "here"})
    assert reply.kind == PacketKind.RESPONSE and reply.value == {"still": "here"}
    client.close()


def test_malformed_frame_closes_with_bad_packet(edge, bystander):
    """A frame that is no Packet gets ERROR BAD_PACKET and the connection is closed."""
    client = RawClient(edge.ports[0])
    client.send_bytes(struct.pack(">I", 5) + b"\xff\x00\x13\x99\x01")
    packet = client.recv()
    assert packet.kind == PacketKind.ERROR and packet.code == ClientError.BAD_PACKET
    assert client.closed()


def test_oversize_frame_is_refused_before_buffering(edge, bystander):
    """A length prefix over the limit gets ERROR TOO_LARGE at once (no body sent) and a close."""
    client = RawClient(edge.ports[0])
    client.send_bytes(struct.pack(">I", 10_000_000))
    packet = client.recv()
    assert packet.kind == PacketKind.ERROR and packet.code == ClientError.TOO_LARGE
    assert client.closed()


def test_request_before_login_closes(edge, bystander):
    """Any request but login/resume first gets ERROR NOT_LOGGED_IN and a close."""
    client = RawClient(edge.ports[0])
    seq = client.send(PacketKind.REQUEST, "echo.echo", {"x": 1})
    packet = client.recv()
    assert packet.kind == PacketKind.ERROR and packet.code == ClientError.NOT_LOGGED_IN
    assert packet.seq == seq
    assert client.closed()


def test_silent_connection_times_out(edge, bystander):
    """A connection that never logs in is closed with LOGIN_TIMEOUT (slowloris included)."""
    client = RawClient(edge.ports[0], timeout=5)
    client.send_bytes(struct.pack(">I", 40) + b"\x08")  # a frame that never completes
    packet = client.recv()
    assert packet.kind == PacketKind.ERROR and packet.code == ClientError.LOGIN_TIMEOUT
    assert client.closed()


def test_wrong_password_keeps_the_connection(edge, bystander):
    """A refused login is ERROR LOGIN_FAILED with the reason; a second try may succeed."""
    client = RawClient(edge.ports[0])
    packet = client.request("sso.login", {"user": "carol", "password": "nope"})
    assert packet.kind == PacketKind.ERROR and packet.code == ClientError.LOGIN_FAILED
    assert "BadCredentials" in packet.message
    assert client.login("carol", "pw-carol")["user_id"] == "carol"


def test_unknown_route_keeps_the_connection(edge, bystander):
    """An unknown route or method is ERROR UNKNOWN_ROUTE; the connection stays open."""
    client = RawClient(edge.ports[0])
    client.login("dave", "pw-dave")
    for route in ("nosuch.thing", "echo.nosuch", "noroute"):
        packet = client.request(route, {})
        assert packet.kind == PacketKind.ERROR and packet.code == ClientError.UNKNOWN_ROUTE
    assert client.request("echo.echo", {"a": 1}).value == {"a": 1}


def test_service_errors_are_reported(edge, bystander):
    """A handler's exception reaches the client as SERVICE_ERROR "Type: message"."""
    client = RawClient(edge.ports[0])
    client.login("erin", "pw-erin")
    packet = client.request("echo.fail", {"message": "boom"})
    assert packet.kind == PacketKind.ERROR and packet.code == ClientError.SERVICE_ERROR
    assert packet.message == "EchoFailure: boom"
    packet = client.request("echo.whoami", {"unexpected": 1})
    assert packet.code == ClientError.BAD_REQUEST


def test_flood_is_rate_limited_then_closed(edge, bystander):
    """Packets over the rate get RATE_LIMITED; a flood far over it is disconnected."""
    client = RawClient(edge.ports[0])
    client.login("frank", "pw-frank")
    # One write: the broker may close the connection before a packet-by-packet flood ends.
    client.send_bytes(
        b"".join(client.frame(PacketKind.NOTIFY, "echo.note", {"n": 1}) for _ in range(400))
    )
    kinds = []
    try:
        while True:
            packet = client.recv()
            kinds.append((packet.kind, packet.code))
    except (ConnectionError, OSError):
        pass
    assert (PacketKind.ERROR, ClientError.RATE_LIMITED) in kinds
    assert client.closed()
