"""Hostile bytes at the broker, without sockets: a real Broker on fakes, fed by StringTransport.

Every property ends the same way: whatever a client sends, ``dataReceived`` never raises,
every byte the broker writes back is a well-formed frame, and the connection ends (at the
latest at the login or idle timeout, driven by a ``task.Clock``) with an ``ERROR`` or a
``KICK`` and a closed transport, leaving nothing behind in the broker.
"""

from __future__ import annotations

import itertools
import struct
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import task
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from mmo.broker.config import BrokerConfig
from mmo.broker.connection import TCPClientProtocol, WebSocketClientProtocol
from mmo.broker.core import Broker
from mmo.broker.table import peer_host
from mmo.errors import RemoteError
from mmo.testing import FakeDirectory, FakeRegistration, FakeZmqContext
from mmo.types import Clock
from mmo.wire import decode, encode, encode_value
from mmo.wire.gen.mmo.ttypes import ClientError, Packet, PacketKind

I32 = st.integers(min_value=-(2**31), max_value=2**31 - 1)
LIVE_SERVICES = {"sso", "session", "echo"}
#: What the live services declare for players (the session service: nothing).
CLIENT_METHODS = {"echo": ["echo"]}
#: Routes worth trying: the login, resume, a served one, an unknown one, malformed ones.
ROUTES = ["sso.login", "session.resume", "echo.echo", "nosuch.thing", "noroute", ".", "", "a."]
CODES = set(ClientError._VALUES_TO_NAMES)
#: A frame the broker answers with before closing, or as the close.
ENDINGS = (PacketKind.ERROR, PacketKind.KICK)


def scripted_directory(clock: Clock | None = None) -> FakeDirectory:
    """A directory whose services answer at once: logins succeed, sessions open (numbered
    ``s1``, ``s2``...), resumes fail, and every other call echoes its body (None for a
    call that forwards none). Nothing is registered yet: see :func:`list_services`."""
    directory = FakeDirectory(clock)
    opened = itertools.count(1)
    for service in LIVE_SERVICES:
        directory.reply(service, None, lambda c: c.raw_body)
    directory.reply("sso", "login", {"user_id": "u1"})
    directory.reply("session", "open", lambda c: {"session_id": f"s{next(opened)}", "token": "t1"})
    directory.fail("session", "resume", RemoteError("unknown session", "ResumeFailed"))
    return directory


def list_services(directory: FakeDirectory) -> None:
    """Register one instance of each live service, declaring the client routes of
    :data:`CLIENT_METHODS` (after the broker is built: a view does not replay the past)."""
    for service in sorted(LIVE_SERVICES):
        directory.register(
            service, f"{service}-1", meta={"client": CLIENT_METHODS.get(service, [])}
        )


def make_broker(
    directory: FakeDirectory | None = None, **settings_: Any
) -> tuple[Broker, task.Clock]:
    """A real Broker on fakes (``directory``: a :func:`scripted_directory` by default, its
    services listed once the broker listens), accepting clients, with its clock (the
    directory's)."""
    directory = directory if directory is not None else scripted_directory()
    clock = directory.clock
    assert isinstance(clock, task.Clock)
    config = BrokerConfig(yellow=("tcp://127.0.0.1:1",), **settings_)
    broker = Broker(
        config,
        FakeZmqContext(clock),  # type: ignore[arg-type]
        directory,  # type: ignore[arg-type]
        "broker-test",
        FakeRegistration(),  # type: ignore[arg-type]
        b"test-key-of-sixteen-or-more",
    )
    list_services(directory)
    broker.accepting = True  # what startService does, minus the ZeroMQ socket
    return broker, clock


def connect(
    broker: Broker, host: str = "10.0.0.1", port: int = 40000
) -> tuple[TCPClientProtocol, StringTransport]:
    """A TCP client connection from ``host:port`` on a StringTransport."""
    protocol = TCPClientProtocol(broker)
    transport = StringTransport(peerAddress=IPv4Address("TCP", host, port))
    protocol.makeConnection(transport)
    return protocol, transport


def frame(packet: Packet) -> bytes:
    """A packet as the TCP wire carries it."""
    data = encode(packet)
    return struct.pack(">I", len(data)) + data


def parse_output(data: bytes) -> list[Packet]:
    """Split what the broker wrote into packets; every one must be whole and well-formed."""
    packets = []
    offset = 0
    while offset < len(data):
        assert len(data) - offset >= 4, "a truncated length prefix from the broker"
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        body = data[offset + 4 : offset + 4 + length]
        assert len(body) == length, "a truncated frame from the broker"
        packet = decode(Packet, body)
        assert packet.kind in PacketKind._VALUES_TO_NAMES
        if packet.kind == PacketKind.ERROR:
            assert packet.code in CODES
        packets.append(packet)
        offset += 4 + length
    return packets


def feed(protocol: TCPClientProtocol, transport: StringTransport, chunks: list[bytes]) -> None:
    """Deliver chunks as a TCP transport would: nothing more once it is closing."""
    for chunk in chunks:
        if transport.disconnecting:
            break  # a real transport stops reading on loseConnection/abortConnection
        protocol.dataReceived(chunk)


def finish(broker: Broker, clock: task.Clock, transport: Any, lost: Any) -> None:
    """Run the clock past every timeout, then drop the connection; the broker must be clean."""
    clock.advance(broker.config.idle_timeout + 1)
    broker._sweep()  # the broker's LoopingCall body: login and idle timeouts
    assert transport.disconnecting, "the connection outlived the login/idle timeout"
    lost()
    stats = broker.stats()
    assert (stats["connections"], stats["sessions"], stats["addresses"]) == (0, 0, 0), stats
    assert not broker.table.channels


def assert_ends_with_error(packets: list[Packet]) -> None:
    """The broker's last word is an ERROR or a KICK (the close's reason)."""
    assert packets, "closed without saying why"
    assert packets[-1].kind in ENDINGS, packets[-1]


def lose(protocol: TCPClientProtocol) -> Any:
    """A callable losing ``protocol``'s connection."""
    return lambda: protocol.connectionLost(Failure(ConnectionError("gone")))


# -- strategies -------------------------------------------------------------------------

values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=6,
)
bodies = st.none() | st.binary(max_size=40) | values.map(encode_value)
packets = st.builds(
    Packet,
    kind=st.sampled_from(sorted(PacketKind._VALUES_TO_NAMES)) | I32,
    seq=st.none() | I32,
    route=st.none() | st.sampled_from(ROUTES) | st.text(max_size=12),
    body=bodies,
    code=st.none() | I32,
    message=st.none() | st.text(max_size=10),
)
#: A Thrift field of any type id (right or wrong for its field), with arbitrary payload.
wrong_fields = st.builds(
    lambda type_id, field_id, payload: struct.pack(">bh", type_id, field_id) + payload,
    st.sampled_from([2, 3, 4, 6, 8, 10, 11, 12, 13, 14, 15, 16, 127, -1]),
    st.integers(-(2**15), 2**15 - 1) | st.integers(1, 7),
    st.binary(max_size=12),
)
#: Frames: well-formed packets, random bytes, packets with fields of the wrong type.
frames = st.one_of(
    packets.map(frame),
    st.binary(max_size=60).map(lambda b: struct.pack(">I", len(b)) + b),
    st.lists(wrong_fields, max_size=4).map(lambda fs: b"".join(fs) + b"\x00"),
)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    """Cut ``data`` at the given offsets (reduced modulo its length)."""
    if not data:
        return [data]
    points = sorted({c % len(data) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


# -- properties -----------------------------------------------------------------------------


@settings(deadline=None, max_examples=300)
@given(st.lists(st.binary(max_size=80), max_size=20))
def test_random_bytes_end_in_an_error_and_a_close(chunks: list[bytes]) -> None:
    """Random bytes in random chunks never raise; they end in ERROR/KICK and a clean close."""
    broker, clock = make_broker()
    protocol, transport = connect(broker)
    feed(protocol, transport, chunks)
    finish(broker, clock, transport, lose(protocol))
    assert_ends_with_error(parse_output(transport.value()))


@settings(deadline=None, max_examples=300)
@given(st.lists(frames, max_size=12), st.lists(st.integers(0, 10_000), max_size=8))
def test_frames_of_any_shape_end_in_an_error_and_a_close(
    stream: list[bytes], cuts: list[int]
) -> None:
    """Packets of any kind, route, seq and body, and fields of wrong types: same ending."""
    broker, clock = make_broker()
    protocol, transport = connect(broker)
    feed(protocol, transport, split(b"".join(stream), cuts))
    finish(broker, clock, transport, lose(protocol))
    assert_ends_with_error(parse_output(transport.value()))


@settings(deadline=None, max_examples=150)
@given(st.lists(frames, min_size=1, max_size=8), st.lists(st.integers(0, 10_000), max_size=8))
def test_chunking_does_not_change_the_answers(stream: list[bytes], cuts: list[int]) -> None:
    """The same bytes split differently get exactly the same bytes back."""
    data = b"".join(stream)
    answers = []
    for chunks in ([data], split(data, cuts), [data[i : i + 1] for i in range(len(data))]):
        broker, _ = make_broker()
        protocol, transport = connect(broker)
        feed(protocol, transport, chunks)
        answers.append(transport.value())
    assert answers[0] == answers[1] == answers[2]


@settings(deadline=None, max_examples=200)
@given(st.integers(4097, 2**32 - 1), st.binary(max_size=200))
def test_huge_length_prefix_is_refused_at_once(length: int, rest: bytes) -> None:
    """A prefix over max-frame gets ERROR TOO_LARGE and a close before any body is read."""
    broker, clock = make_broker()
    protocol, transport = connect(broker)
    feed(protocol, transport, [struct.pack(">I", length) + rest])
    assert transport.disconnecting
    answer = parse_output(transport.value())
    assert [(p.kind, p.code) for p in answer] == [(PacketKind.ERROR, ClientError.TOO_LARGE)]
    assert broker.counters["too_large"] == 1
    finish(broker, clock, transport, lose(protocol))


@settings(deadline=None, max_examples=200)
@given(st.data())
def test_truncated_frame_waits_for_the_login_timeout(data: st.DataObject) -> None:
    """A frame cut short (slowloris) gets nothing back until LOGIN_TIMEOUT closes it."""
    login = frame(Packet(kind=PacketKind.REQUEST, seq=1, route="sso.login", body=b"\x00"))
    cut = data.draw(st.integers(1, len(login) - 1))
    broker, clock = make_broker(login_timeout=2.0)
    protocol, transport = connect(broker)
    feed(protocol, transport, [login[i : i + 1] for i in range(cut)])
    clock.advance(1.9)
    broker._sweep()
    assert transport.value() == b"" and not transport.disconnecting
    clock.advance(0.2)
    broker._sweep()
    answer = parse_output(transport.value())
    assert [(p.kind, p.code) for p in answer] == [(PacketKind.ERROR, ClientError.LOGIN_TIMEOUT)]
    assert transport.disconnecting
    finish(broker, clock, transport, lose(protocol))


@settings(deadline=None, max_examples=200)
@given(st.lists(frames, max_size=10))
def test_after_login_anything_goes_and_idle_ends_it(stream: list[bytes]) -> None:
    """Logged in, hostile frames still never raise; KICK IDLE or an ERROR ends the connection."""
    broker, clock = make_broker()
    protocol, transport = connect(broker)
    login = Packet(kind=PacketKind.REQUEST, seq=1, route="sso.login", body=encode_value({}))
    feed(protocol, transport, [frame(login), *stream])
    first = parse_output(transport.value())[0]
    assert (first.kind, first.seq) == (PacketKind.RESPONSE, 1)
    finish(broker, clock, transport, lose(protocol))
    assert_ends_with_error(parse_output(transport.value()))


class FakeWebSocket:
    """The slice of ``twisted.web.websocket``'s transport the broker uses."""

    def __init__(self) -> None:
        self.messages: list[bytes] = []
        self.disconnecting = False

    def sendBytesMessage(self, data: bytes) -> None:
        """Record one binary message."""
        self.messages.append(data)

    def loseConnection(self) -> None:
        """Close."""
        self.disconnecting = True

    def attachProducer(self, producer: Any) -> None:
        """Accept the back-pressure producer."""


@settings(deadline=None, max_examples=300)
@given(st.lists(st.binary(max_size=80) | packets.map(encode) | st.text(max_size=10), max_size=10))
def test_websocket_messages_of_any_shape_end_in_an_error_and_a_close(
    messages: list[bytes | str],
) -> None:
    """Binary and text WebSocket messages of any content: never raise, end in ERROR and close."""
    broker, clock = make_broker()
    protocol = WebSocketClientProtocol(broker, "10.0.0.2:40000")
    ws = FakeWebSocket()
    protocol.negotiationStarted(ws)
    protocol.negotiationFinished()
    clock.advance(0)
    for message in messages:
        if ws.disconnecting:
            break
        if isinstance(message, str):
            protocol.textMessageReceived(message)
        else:
            protocol.bytesMessageReceived(message)
    finish(broker, clock, ws, lambda: protocol.connectionLost(Failure(ConnectionError("gone"))))
    answer = [decode(Packet, m) for m in ws.messages]
    assert_ends_with_error(answer)


# -- the per-address cap ----------------------------------------------------------------


def test_connections_over_the_per_address_cap_are_refused_and_counted() -> None:
    """Past max-per-address, one IP's new connections get ERROR UNAVAILABLE; others are served."""
    broker, _ = make_broker(max_per_address=3)
    admitted = [connect(broker, "10.0.0.7", 40000 + i) for i in range(3)]
    refused = [connect(broker, "10.0.0.7", 41000 + i) for i in range(2)]
    other = connect(broker, "10.0.0.8", 40000)
    for _, transport in [*admitted, other]:
        assert transport.value() == b"" and not transport.disconnecting
    for protocol, transport in refused:
        answer = parse_output(transport.value())
        assert [(p.kind, p.code) for p in answer] == [(PacketKind.ERROR, ClientError.UNAVAILABLE)]
        assert "too many connections" in (answer[0].message or "")
        assert transport.disconnecting
        lose(protocol)()
    assert broker.counters["refused_per_address"] == 2
    assert broker.stats()["connections"] == 4
    # A slot freed is a slot reusable.
    lose(admitted[0][0])()
    _, again = connect(broker, "10.0.0.7", 42000)
    assert again.value() == b"" and not again.disconnecting
    assert broker.stats()["addresses"] == 2


def test_per_address_cap_zero_means_no_cap() -> None:
    """max-per-address = 0 admits any number of connections from one address."""
    broker, _ = make_broker(max_per_address=0, capacity=500)
    for i in range(300):
        _, transport = connect(broker, "10.0.0.7", 40000 + i)
        assert not transport.disconnecting
    assert broker.counters["refused_per_address"] == 0


def test_peer_host_splits_ipv4_and_ipv6() -> None:
    """The cap counts hosts: the port is cut off, IPv6 colons are kept."""
    assert peer_host("10.1.2.3:5555") == "10.1.2.3"
    assert peer_host("::1:5555") == "::1"
    assert peer_host("weird") == "weird"
