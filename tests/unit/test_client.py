"""The client SDK: packets, requests, pushes, heartbeats, brokerlist, reconnect and resume."""

from __future__ import annotations

import itertools
import json
import random
import struct
from typing import Any

import pytest
from twisted.internet import defer, task
from twisted.internet.error import ConnectionLost
from twisted.internet.testing import StringTransport, StringTransportWithDisconnection
from twisted.python.failure import Failure

from mmo.cli.chat import LINGER, ChatConsole, format_members, format_push, run_chat
from mmo.cli.common import CommandError
from mmo.client import (
    Client,
    ClientConnectError,
    ClientDisconnected,
    ClientProtocol,
    ClientRequestError,
    ClientTimeout,
    parse_brokerlist,
    pick_broker,
)
from mmo.client.errors import error_name
from mmo.client.protocol import MAX_SEQ, decode_body, encode_body
from mmo.client.session import split_address
from mmo.testing import failure_of
from mmo.testing import result_of as result
from mmo.wire import WireError, decode, decode_value, encode, encode_value
from mmo.wire.gen.mmo.ttypes import ClientError, Packet, PacketKind, Session, Value

# -- helpers ---------------------------------------------------------------------


def frame(packet: Packet) -> bytes:
    """A packet as the broker sends it over TCP."""
    data = encode(packet)
    return struct.pack("!I", len(data)) + data


def unframe(data: bytes) -> list[Packet]:
    """Every packet in a byte stream written by the client."""
    packets = []
    while data:
        (length,) = struct.unpack("!I", data[:4])
        assert len(data) >= 4 + length, "truncated frame"
        packets.append(decode(Packet, data[4 : 4 + length]))
        data = data[4 + length :]
    return packets


def sent(transport: StringTransport) -> list[Packet]:
    """The packets written since the last call (the transport is cleared)."""
    packets = unframe(transport.value())
    transport.clear()
    return packets


def connected(
    clock: task.Clock | None = None,
) -> tuple[ClientProtocol, StringTransportWithDisconnection, task.Clock]:
    """A protocol connected to a string transport, on a fake clock."""
    clock = clock or task.Clock()
    protocol = ClientProtocol(clock)
    transport = StringTransportWithDisconnection()
    transport.protocol = protocol
    protocol.makeConnection(transport)
    return protocol, transport, clock


def response(seq: int, body: Any = None, *, data: bytes | None = None) -> bytes:
    """A framed RESPONSE whose body is ``body`` as a Value (or ``data``)."""
    if data is None:
        data = encode_value(body)
    return frame(Packet(kind=PacketKind.RESPONSE, seq=seq, body=data))


def error(seq: int, code: int, message: str = "") -> bytes:
    """A framed ERROR."""
    return frame(Packet(kind=PacketKind.ERROR, seq=seq, code=code, message=message))


def push(route: str, body: Any) -> bytes:
    """A framed PUSH."""
    return frame(Packet(kind=PacketKind.PUSH, route=route, body=encode_value(body)))


def kick(code: int, message: str = "") -> bytes:
    """A framed KICK."""
    return frame(Packet(kind=PacketKind.KICK, code=code, message=message))


# -- framing and packets -----------------------------------------------------------


def test_request_is_framed_with_a_big_endian_length() -> None:
    """A request is a 4-byte big-endian length followed by exactly that many bytes."""
    protocol, transport, _ = connected()
    protocol.request("echo.echo", {"a": 1})
    data = transport.value()
    (length,) = struct.unpack("!I", data[:4])
    assert length == len(data) - 4
    packet = decode(Packet, data[4:])
    assert (packet.kind, packet.seq, packet.route) == (PacketKind.REQUEST, 1, "echo.echo")
    assert decode_value(packet.body) == {"a": 1}


def test_seq_numbers_start_at_one_and_increase_per_connection() -> None:
    """Each connection numbers its requests 1, 2, 3..."""
    protocol, transport, clock = connected()
    for _ in range(3):
        protocol.request("a.b")
    assert [p.seq for p in sent(transport)] == [1, 2, 3]
    other, other_transport, _ = connected(clock)
    other.request("a.b")
    assert [p.seq for p in sent(other_transport)] == [1]


def test_seq_wraps_around_and_skips_requests_in_flight() -> None:
    """After the largest i32 the seq starts again at 1, skipping those still pending."""
    protocol, transport, _ = connected()
    protocol.request("a.b")  # seq 1 stays in flight
    protocol._next_seq = MAX_SEQ
    protocol.request("a.b")
    protocol.request("a.b")
    assert [p.seq for p in sent(transport)] == [1, MAX_SEQ, 2]


def test_default_body_is_an_empty_map() -> None:
    """A request without a body sends an empty map (no keyword arguments)."""
    protocol, transport, _ = connected()
    protocol.request("session.logout")
    assert decode_value(sent(transport)[0].body) == {}


def test_response_fires_the_request_with_the_same_seq() -> None:
    """Answers are matched by seq, in whatever order they come."""
    protocol, _, _ = connected()
    first = protocol.request("a.b", {"n": 1})
    second = protocol.request("a.b", {"n": 2})
    protocol.dataReceived(response(2, "two"))
    assert not first.called
    assert result(second) == "two"
    protocol.dataReceived(response(1, {"one": [1, 2.5, None, True, b"x"]}))
    assert result(first) == {"one": [1, 2.5, None, True, b"x"]}
    assert protocol.in_flight == 0


def test_packets_split_across_reads_are_reassembled() -> None:
    """A frame arriving one byte at a time is decoded once complete."""
    protocol, _, _ = connected()
    d = protocol.request("a.b")
    for byte in response(1, "whole"):
        protocol.dataReceived(bytes([byte]))
    assert result(d) == "whole"


def test_several_packets_in_one_read_are_all_decoded() -> None:
    """Two frames in one read answer two requests."""
    protocol, _, _ = connected()
    first, second = protocol.request("a.b"), protocol.request("a.b")
    protocol.dataReceived(response(1, 1) + response(2, 2))
    assert (result(first), result(second)) == (1, 2)


def test_response_without_body_is_none() -> None:
    """A RESPONSE with no body decodes as None."""
    protocol, _, _ = connected()
    d = protocol.request("a.b")
    protocol.dataReceived(frame(Packet(kind=PacketKind.RESPONSE, seq=1)))
    assert result(d) is None


def test_struct_body_is_sent_as_is_and_reply_type_decodes_the_reply() -> None:
    """A Thrift struct body is encoded as that struct; reply_type decodes the reply into one."""
    protocol, transport, _ = connected()
    d = protocol.request("game.move", Session(id="s1", user_id="u1"), reply_type=Session)
    assert decode(Session, sent(transport)[0].body) == Session(id="s1", user_id="u1")
    protocol.dataReceived(response(1, data=encode(Session(id="s2"))))
    assert result(d) == Session(id="s2")


def test_raw_body_and_reply_are_bytes() -> None:
    """With raw=True the body is sent as given and the reply returned undecoded."""
    protocol, transport, _ = connected()
    d = protocol.request("game.blob", b"\x00\x01", raw=True)
    assert sent(transport)[0].body == b"\x00\x01"
    protocol.dataReceived(response(1, data=b"\xff"))
    assert result(d) == b"\xff"


def test_undecodable_reply_fails_the_request_with_a_wire_error() -> None:
    """A reply that is not a Value fails that request only."""
    protocol, _, _ = connected()
    d = protocol.request("a.b")
    protocol.dataReceived(response(1, data=b"\x0b\x00"))
    assert isinstance(failure_of(d), WireError)
    assert protocol.is_connected


def test_unencodable_body_fails_without_sending() -> None:
    """A body that is not a wire value fails the Deferred and sends nothing."""
    protocol, transport, _ = connected()
    d = protocol.request("a.b", {"when": object()})
    assert isinstance(failure_of(d), WireError)
    assert transport.value() == b""
    assert isinstance(failure_of(protocol.request("a.b", "text", raw=True)), WireError)
    with pytest.raises(WireError):
        encode_body("text", raw=True)


def test_body_codec_helpers() -> None:
    """encode_body and decode_body agree for values, structs and raw bytes."""
    assert decode_body(encode_body([1, "x"])) == [1, "x"]
    assert decode_body(encode_body(Value(int_value=3)), Value) == Value(int_value=3)
    assert decode_body(encode_body(b"ab", raw=True), bytes) == b"ab"
    assert decode_body(None) is None
    assert decode_body(None, bytes) == b""


def test_notify_sends_a_notify_packet_without_seq() -> None:
    """notify sends NOTIFY route body and expects no answer."""
    protocol, transport, _ = connected()
    assert protocol.notify("chat.send", {"content": "hi"}) is None
    (packet,) = sent(transport)
    assert (packet.kind, packet.seq, packet.route) == (PacketKind.NOTIFY, None, "chat.send")
    assert decode_value(packet.body) == {"content": "hi"}
    assert protocol.in_flight == 0


# -- errors and timeouts -----------------------------------------------------------


def test_error_fails_the_request_with_code_name_and_message() -> None:
    """ERROR seq code message fails that request with a ClientRequestError."""
    protocol, _, _ = connected()
    d = protocol.request("nope.x")
    protocol.dataReceived(error(1, ClientError.UNKNOWN_ROUTE, "no service nope"))
    e = failure_of(d)
    assert isinstance(e, ClientRequestError)
    assert (e.code, e.name, e.message) == (
        ClientError.UNKNOWN_ROUTE,
        "UNKNOWN_ROUTE",
        "no service nope",
    )
    assert str(e) == "UNKNOWN_ROUTE: no service nope"
    assert protocol.is_connected


def test_error_name_of_unknown_codes() -> None:
    """Codes outside the enum still get a readable name."""
    assert error_name(ClientError.REPLACED) == "REPLACED"
    assert error_name(999) == "CODE_999"
    assert error_name(None) == "NO_CODE"


def test_request_times_out_and_a_late_answer_is_ignored() -> None:
    """No answer within the timeout fails with ClientTimeout; the late answer is dropped."""
    protocol, _, clock = connected()
    d = protocol.request("slow.op", timeout=2.0)
    clock.advance(1.9)
    assert not d.called
    clock.advance(0.1)
    assert isinstance(failure_of(d), ClientTimeout)
    protocol.dataReceived(response(1, "late"))
    assert protocol.in_flight == 0
    assert protocol.is_connected


def test_every_request_has_a_default_deadline() -> None:
    """A request without a timeout (or with None) fails after 5 seconds."""
    protocol, _, clock = connected()
    ds = [protocol.request("slow.op"), protocol.request("slow.op", timeout=None)]
    clock.advance(5.0)
    for d in ds:
        assert isinstance(failure_of(d), ClientTimeout)


def test_answered_request_leaves_no_timer() -> None:
    """An answer cancels the request's deadline timer."""
    protocol, _, clock = connected()
    d = protocol.request("a.b")
    protocol.dataReceived(response(1, 1))
    result(d)
    assert clock.getDelayedCalls() == []


def test_cancelled_request_is_forgotten() -> None:
    """Cancelling a request removes it and its timer."""
    protocol, _, clock = connected()
    d = protocol.request("a.b")
    d.cancel()
    assert isinstance(failure_of(d), defer.CancelledError)
    assert protocol.in_flight == 0
    assert clock.getDelayedCalls() == []


def test_error_with_seq_zero_goes_to_on_error() -> None:
    """ERROR with seq 0 calls the on_error hooks and fails no request."""
    protocol, _, _ = connected()
    errors: list[ClientRequestError] = []
    protocol.on_error(errors.append)
    d = protocol.request("a.b")
    protocol.dataReceived(error(0, ClientError.RATE_LIMITED, "slow down"))
    assert [(e.name, e.message) for e in errors] == [("RATE_LIMITED", "slow down")]
    assert not d.called
    assert protocol.last_error is errors[0]


# -- heartbeats --------------------------------------------------------------------


def test_heartbeats_are_sent_on_schedule_once_started() -> None:
    """No heartbeat before start_heartbeat; then one every interval."""
    protocol, transport, clock = connected()
    clock.advance(30)
    assert sent(transport) == []
    protocol.start_heartbeat(4.0)
    clock.advance(3.9)
    assert sent(transport) == []
    for _ in range(3):
        protocol.dataReceived(frame(Packet(kind=PacketKind.HEARTBEAT)))
        clock.advance(4.0)
        assert [p.kind for p in sent(transport)] == [PacketKind.HEARTBEAT]


def test_heartbeat_interval_defaults_to_ten_seconds() -> None:
    """Without an interval heartbeats go every 10 seconds."""
    protocol, transport, clock = connected()
    protocol.start_heartbeat(None)
    clock.advance(9.9)
    assert sent(transport) == []
    clock.advance(0.1)
    assert [p.kind for p in sent(transport)] == [PacketKind.HEARTBEAT]


def test_silent_broker_is_dropped_after_three_intervals() -> None:
    """When nothing arrives for three heartbeat intervals the connection is aborted."""
    protocol, transport, clock = connected()
    d = protocol.request("a.b", timeout=100)
    protocol.start_heartbeat(1.0)
    clock.advance(1.0)
    clock.advance(1.0)
    assert protocol.is_connected
    clock.advance(1.0)
    assert not protocol.is_connected
    assert transport.disconnected
    assert isinstance(failure_of(d), ClientDisconnected)


def test_heartbeats_stop_when_the_connection_is_lost() -> None:
    """The heartbeat loop ends with the connection."""
    protocol, transport, clock = connected()
    protocol.start_heartbeat(1.0)
    transport.loseConnection()
    clock.advance(10)
    assert clock.getDelayedCalls() == []


# -- pushes and kicks ----------------------------------------------------------------


def test_pushes_are_dispatched_by_route_then_to_catch_alls() -> None:
    """on(route) callbacks get their route's pushes; on("*") gets every push."""
    protocol, _, _ = connected()
    messages: list[tuple[str, Any]] = []
    everything: list[tuple[str, Any]] = []
    protocol.on("chat.message", lambda route, body: messages.append((route, body)))
    protocol.on("*", lambda route, body: everything.append((route, body)))
    protocol.dataReceived(push("chat.message", {"content": "hi"}))
    protocol.dataReceived(push("chat.joined", {"user": "ron"}))
    assert messages == [("chat.message", {"content": "hi"})]
    assert everything == [("chat.message", {"content": "hi"}), ("chat.joined", {"user": "ron"})]


def test_a_failing_push_callback_does_not_stop_the_others() -> None:
    """A callback that raises is logged; later callbacks and packets still run."""
    protocol, _, _ = connected()
    seen: list[Any] = []

    def broken(route: str, body: Any) -> None:
        raise RuntimeError("bug in game code")

    protocol.on("a.b", broken)
    protocol.on("a.b", lambda route, body: seen.append(body))
    protocol.dataReceived(push("a.b", 1) + push("a.b", 2))
    assert seen == [1, 2]
    assert protocol.is_connected


def test_push_registration_can_be_removed() -> None:
    """The function on() returns unregisters the callback."""
    protocol, _, _ = connected()
    seen: list[Any] = []
    remove = protocol.on("a.b", lambda route, body: seen.append(body))
    protocol.dataReceived(push("a.b", 1))
    remove()
    remove()
    protocol.dataReceived(push("a.b", 2))
    assert seen == [1]


def test_push_body_type_decodes_a_struct_or_keeps_bytes() -> None:
    """A registration may ask for the body as a struct or as raw bytes."""
    protocol, _, _ = connected()
    structs: list[Any] = []
    raws: list[Any] = []
    protocol.on("map.pos", lambda route, body: structs.append(body), body_type=Session)
    protocol.on("map.pos", lambda route, body: raws.append(body), body_type=bytes)
    data = encode(Session(id="s9"))
    protocol.dataReceived(frame(Packet(kind=PacketKind.PUSH, route="map.pos", body=data)))
    assert structs == [Session(id="s9")]
    assert raws == [data]


def test_undecodable_push_body_skips_the_callback() -> None:
    """A push whose body is not a Value is logged and not delivered as a Value."""
    protocol, _, _ = connected()
    seen: list[Any] = []
    protocol.on("a.b", lambda route, body: seen.append(body))
    protocol.dataReceived(frame(Packet(kind=PacketKind.PUSH, route="a.b", body=b"\x0b")))
    assert seen == []
    assert protocol.is_connected


def test_kick_is_remembered_then_the_connection_closes() -> None:
    """KICK keeps its code and message, calls on_kick, closes, and fails what is pending."""
    protocol, transport, _ = connected()
    kicks: list[ClientRequestError] = []
    protocol.listeners.on_kick(kicks.append)
    d = protocol.request("a.b")
    protocol.dataReceived(kick(ClientError.IDLE, "idle for 30 s"))
    assert protocol.kicked is not None
    assert (protocol.kicked.name, protocol.kicked.message) == ("IDLE", "idle for 30 s")
    assert kicks == [protocol.kicked]
    assert not transport.connected
    e = failure_of(d)
    assert isinstance(e, ClientDisconnected)
    assert e.cause is protocol.kicked


def test_heartbeat_from_the_broker_is_absorbed() -> None:
    """A HEARTBEAT answer only counts as traffic."""
    protocol, transport, clock = connected()
    clock.advance(7)
    protocol.dataReceived(frame(Packet(kind=PacketKind.HEARTBEAT)))
    assert protocol.last_received == 7
    assert transport.value() == b""


def test_packet_kinds_a_broker_never_sends_are_ignored() -> None:
    """A REQUEST or NOTIFY from the broker is logged and ignored."""
    protocol, _, _ = connected()
    protocol.dataReceived(frame(Packet(kind=PacketKind.REQUEST, seq=1, route="x.y")))
    protocol.dataReceived(frame(Packet(kind=PacketKind.NOTIFY, route="x.y")))
    assert protocol.is_connected


def test_undecodable_packet_closes_the_connection() -> None:
    """Bytes that are not a Packet abort the connection (the stream cannot be trusted)."""
    protocol, transport, _ = connected()
    d = protocol.request("a.b")
    protocol.dataReceived(struct.pack("!I", 2) + b"\x08\x00")
    assert transport.disconnected
    assert isinstance(failure_of(d), ClientDisconnected)


def test_oversized_frame_closes_the_connection() -> None:
    """A length prefix over 16 MiB is refused before buffering."""
    protocol, transport, _ = connected()
    assert protocol.MAX_LENGTH == 16 * 1024 * 1024
    protocol.dataReceived(struct.pack("!I", 16 * 1024 * 1024 + 1))
    assert transport.disconnected


def test_pending_requests_fail_when_the_connection_drops() -> None:
    """Every request in flight fails with ClientDisconnected; timers are cancelled."""
    protocol, _, clock = connected()
    ds = [protocol.request("a.b"), protocol.request("c.d")]
    protocol.connectionLost(Failure(ConnectionLost("reset")))
    for d in ds:
        assert isinstance(failure_of(d), ClientDisconnected)
    assert clock.getDelayedCalls() == []


def test_requests_after_the_drop_fail_at_once() -> None:
    """request and notify on a lost connection fail without writing."""
    protocol, transport, _ = connected()
    transport.loseConnection()
    assert isinstance(failure_of(protocol.request("a.b")), ClientDisconnected)
    with pytest.raises(ClientDisconnected):
        protocol.notify("a.b")
    assert transport.value() == b""


def test_when_closed_fires_with_the_reason() -> None:
    """when_closed fires once the connection is lost, also when asked afterwards."""
    protocol, _, _ = connected()
    d = protocol.when_closed()
    protocol.dataReceived(error(0, ClientError.LOGIN_TIMEOUT, "no login"))
    protocol.close()
    lost = result(d)
    assert isinstance(lost, ClientDisconnected)
    assert lost.cause is not None and lost.cause.name == "LOGIN_TIMEOUT"
    assert result(protocol.when_closed()) is lost


# -- brokerlist ----------------------------------------------------------------------


def test_parse_brokerlist() -> None:
    """The brokerlist document becomes {address: load}."""
    doc = {"version": "0.1.0", "brokerList": {"127.0.0.1:6100": 0.5, "127.0.0.1:6101": 0}}
    assert parse_brokerlist(json.dumps(doc).encode()) == {
        "127.0.0.1:6100": 0.5,
        "127.0.0.1:6101": 0.0,
    }
    assert parse_brokerlist('{"brokerList": {}}') == {}


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        "[]",
        '{"version": "1"}',
        '{"brokerList": []}',
        '{"brokerList": {"127.0.0.1:1": "low"}}',
        '{"brokerList": {"127.0.0.1:1": true}}',
        '{"brokerList": {"127.0.0.1:1": NaN}}',
        '{"brokerList": {"nowhere": 0.1}}',
        '{"brokerList": {"host:99999": 0.1}}',
    ],
)
def test_parse_brokerlist_refuses_bad_documents(text: str) -> None:
    """A malformed brokerlist is a ClientConnectError, not a crash later."""
    with pytest.raises(ClientConnectError):
        parse_brokerlist(text)


def test_pick_broker_takes_the_least_loaded() -> None:
    """The broker with the lowest load wins; ties go to the lowest address."""
    brokers = {"b:2": 0.3, "a:1": 0.1, "c:3": 0.1}
    assert pick_broker(brokers) == "a:1"
    assert pick_broker(brokers, avoid=["a:1"]) == "c:3"
    assert pick_broker({"a:1": 0.9}, avoid=["a:1"]) == "a:1"


def test_pick_broker_breaks_ties_at_random_with_an_rng() -> None:
    """With an rng, equally loaded brokers are all chosen sometimes; others never."""
    rng = random.Random(7)
    picks = {pick_broker({"a:1": 0.0, "b:2": 0.0, "c:3": 0.5}, rng=rng) for _ in range(50)}
    assert picks == {"a:1", "b:2"}


def test_pick_broker_with_no_broker_fails() -> None:
    """An empty brokerlist is a ClientConnectError."""
    with pytest.raises(ClientConnectError, match="no broker"):
        pick_broker({})


def test_split_address() -> None:
    """host:port splits; IPv6 brackets are removed; nonsense is refused."""
    assert split_address("127.0.0.1:6100") == ("127.0.0.1", 6100)
    assert split_address("[::1]:6100") == ("::1", 6100)
    for bad in ("6100", ":6100", "host:", "host:0", "host:x"):
        with pytest.raises(ValueError):
            split_address(bad)


# -- Client: a fake network ------------------------------------------------------------


class FakeNetwork:
    """Brokers reachable by address; each connection a StringTransport.

    Attributes:
        up: addresses that accept connections.
        listed: what the brokerlist answers.
        attempts: every address a connection was tried to, in order, with the time.
        connections: (address, protocol, transport) of each connection made.
    """

    def __init__(self, clock: task.Clock) -> None:
        self.clock = clock
        self.up: set[str] = set()
        self.listed: dict[str, float] = {}
        self.attempts: list[tuple[float, str]] = []
        self.fetches = 0
        self.urls: list[str] = []
        self.tls: list[str] = []
        self.connections: list[tuple[str, ClientProtocol, StringTransportWithDisconnection]] = []

    def connect(self, url: str, protocol: ClientProtocol) -> defer.Deferred[ClientProtocol]:
        """The Client's connector (``urls`` records the URLs it was given)."""
        self.urls.append(url)
        address = url.partition("://")[2] or url
        self.attempts.append((self.clock.seconds(), address))
        if address not in self.up:
            return defer.fail(ClientConnectError(f"cannot connect to {address}: refused"))
        transport = StringTransportWithDisconnection()
        transport.protocol = protocol
        protocol.makeConnection(transport)
        self.connections.append((address, protocol, transport))
        return defer.succeed(protocol)

    def fetch(self, url: str) -> defer.Deferred[bytes]:
        """The Client's brokerlist fetcher."""
        self.fetches += 1
        doc = {"version": "test", "brokerList": self.listed, "tls": self.tls}
        return defer.succeed(json.dumps(doc).encode())

    @property
    def last(self) -> tuple[ClientProtocol, StringTransportWithDisconnection]:
        """The protocol and transport of the latest connection."""
        _, protocol, transport = self.connections[-1]
        return protocol, transport

    def kill(self, address: str) -> None:
        """The broker at ``address`` dies: its connections drop and it leaves the list."""
        self.up.discard(address)
        self.listed.pop(address, None)
        for where, protocol, transport in self.connections:
            if where == address and transport.connected:
                transport.connected = False
                protocol.connectionLost(Failure(ConnectionLost("broker died")))
        self.clock.advance(0)  # the client's first reconnect attempt (no pause drawn)


LOGIN_REPLY = {"session_id": "s1", "user_id": "u1", "token": "t1", "heartbeat": 4}


class Lowest(random.Random):
    """Draws the lowest value: no pause before a reconnect attempt, the first of a tie."""

    def uniform(self, a: float, b: float) -> float:
        return a

    def choice(self, seq: Any) -> Any:
        return seq[0]


class Highest(random.Random):
    """Draws the highest value: reconnect pauses at their bound."""

    def uniform(self, a: float, b: float) -> float:
        return b


def make_client(
    brokers: dict[str, float] | None = None, **kwargs: Any
) -> tuple[Client, FakeNetwork, task.Clock]:
    """A Client on a fake network whose brokers are all up and listed (reconnect pauses
    drawn by :class:`Lowest` unless an ``rng`` is given)."""
    clock = task.Clock()
    net = FakeNetwork(clock)
    net.listed = dict(brokers if brokers is not None else {"b1:1": 0.1, "b2:2": 0.5})
    net.up = set(net.listed)
    kwargs.setdefault("brokerlist", "http://list/")
    kwargs.setdefault("rng", Lowest())
    client = Client(clock, connector=net.connect, fetcher=net.fetch, **kwargs)
    return client, net, clock


def logged_in(**kwargs: Any) -> tuple[Client, FakeNetwork, task.Clock]:
    """A connected, logged-in Client (login reply: LOGIN_REPLY)."""
    client, net, clock = make_client(**kwargs)
    result(client.connect())
    d = client.login(user="harry", password="pw")
    protocol, transport = net.last
    (packet,) = sent(transport)
    protocol.dataReceived(response(packet.seq, LOGIN_REPLY))
    result(d)
    return client, net, clock


def test_client_needs_somewhere_to_connect() -> None:
    """Neither brokerlist nor broker is a ValueError, as is a bad broker address."""
    clock = task.Clock()
    with pytest.raises(ValueError):
        Client(clock)
    with pytest.raises(ValueError):
        Client(clock, broker="nowhere")


def test_connect_picks_the_least_loaded_broker_from_the_brokerlist() -> None:
    """connect() fetches the brokerlist and connects to its least-loaded broker."""
    client, net, _ = make_client({"b1:1": 0.7, "b2:2": 0.2})
    assert client.state == "closed"
    assert result(client.connect()) == "b2:2"
    assert (client.state, client.broker_address) == ("online", "b2:2")
    assert net.fetches == 1


def test_connect_to_a_fixed_broker_skips_the_brokerlist() -> None:
    """With broker= the first connection goes there without a GET."""
    client, net, _ = make_client({"b1:1": 0.1, "b2:2": 0.5}, broker="b2:2")
    assert result(client.connect()) == "b2:2"
    assert net.fetches == 0
    client2, _, _ = make_client({"b1:1": 0.1}, brokerlist=None, broker="b1:1")
    assert result(client2.connect()) == "b1:1"


def test_connect_failure_leaves_the_client_closed() -> None:
    """A refused connection fails connect() with ClientConnectError; state is closed."""
    client, net, _ = make_client({"b1:1": 0.1})
    net.up.clear()
    assert isinstance(failure_of(client.connect()), ClientConnectError)
    assert client.state == "closed"
    empty, _, _ = make_client({})
    assert isinstance(failure_of(empty.connect()), ClientConnectError)


def test_connect_twice_is_refused() -> None:
    """connect() on an online client fails instead of leaking a connection."""
    client, _, _ = make_client()
    result(client.connect())
    assert "already online" in str(failure_of(client.connect()))


def test_login_keeps_the_session_and_starts_heartbeats() -> None:
    """login sends the credentials on the login route and keeps session, user, token."""
    client, net, clock = make_client()
    result(client.connect())
    d = client.login(user="harry", password="pw")
    protocol, transport = net.last
    (packet,) = sent(transport)
    assert (packet.route, decode_value(packet.body)) == (
        "sso.login",
        {"user": "harry", "password": "pw"},
    )
    protocol.dataReceived(response(packet.seq, {**LOGIN_REPLY, "nick": "H"}))
    assert result(d)["nick"] == "H"
    assert (client.session_id, client.user_id, client.token) == ("s1", "u1", "t1")
    clock.advance(4)
    assert [p.kind for p in sent(transport)] == [PacketKind.HEARTBEAT]


def test_failed_login_keeps_the_connection_for_another_try() -> None:
    """LOGIN_FAILED fails login() with its code; the client stays online, not logged in."""
    client, net, _ = make_client(login_route="auth.enter")
    result(client.connect())
    d = client.login(user="harry", password="bad")
    protocol, transport = net.last
    (packet,) = sent(transport)
    assert packet.route == "auth.enter"
    protocol.dataReceived(error(packet.seq, ClientError.LOGIN_FAILED, "BadPassword: no"))
    e = failure_of(d)
    assert isinstance(e, ClientRequestError) and e.name == "LOGIN_FAILED"
    assert (client.state, client.session_id) == ("online", None)


def test_register_is_a_request_before_login() -> None:
    """register() calls sso.register with the credentials."""
    client, net, _ = make_client()
    result(client.connect())
    d = client.register(user="ginny", password="pw")
    protocol, transport = net.last
    (packet,) = sent(transport)
    assert (packet.route, decode_value(packet.body)) == (
        "sso.register",
        {"user": "ginny", "password": "pw"},
    )
    protocol.dataReceived(response(packet.seq, {"user_id": "u2"}))
    assert result(d) == {"user_id": "u2"}


def test_requests_notifies_and_pushes_go_through_the_client() -> None:
    """request, notify and on() work on the current connection."""
    client, net, _ = logged_in()
    protocol, transport = net.last
    pushes: list[Any] = []
    client.on("chat.message", lambda route, body: pushes.append(body))
    d = client.request("chat.join", {"room": "lobby"})
    client.notify("chat.send", {"content": "hi"})
    packets = sent(transport)
    assert [(p.kind, p.route) for p in packets] == [
        (PacketKind.REQUEST, "chat.join"),
        (PacketKind.NOTIFY, "chat.send"),
    ]
    protocol.dataReceived(response(packets[0].seq, ["harry"]))
    protocol.dataReceived(push("chat.message", {"content": "yo"}))
    assert result(d) == ["harry"]
    assert pushes == [{"content": "yo"}]


def test_client_requests_use_the_client_timeout() -> None:
    """Client.request defaults to request_timeout."""
    client, _, clock = logged_in(request_timeout=1.5)
    d = client.request("slow.op")
    clock.advance(1.5)
    assert isinstance(failure_of(d), ClientTimeout)


# -- Client: reconnect and resume ------------------------------------------------------


def test_drop_reconnects_to_another_broker_and_resumes() -> None:
    """A dropped connection re-fetches the brokerlist, connects elsewhere, resumes first."""
    client, net, clock = logged_in(brokers={"b1:1": 0.1, "b2:2": 0.5})
    assert client.broker_address == "b1:1"
    resumed: list[dict[str, Any]] = []
    client.on_resumed(resumed.append)
    net.kill("b1:1")
    assert client.state == "reconnecting"
    assert net.fetches == 2
    protocol, transport = net.last
    assert net.connections[-1][0] == "b2:2"
    (packet,) = sent(transport)
    assert (packet.kind, packet.seq, packet.route) == (PacketKind.REQUEST, 1, "session.resume")
    assert decode_value(packet.body) == {"session_id": "s1", "token": "t1"}
    reply = {"session_id": "s1", "user_id": "u1", "token": "t2", "resumed": True}
    protocol.dataReceived(response(1, reply))
    assert (client.state, client.broker_address, client.token) == ("online", "b2:2", "t2")
    assert client.session_id == "s1"
    assert resumed == [reply]
    clock.advance(4)
    assert [p.kind for p in sent(transport)] == [PacketKind.HEARTBEAT]


def test_reconnect_prefers_another_broker_than_the_lost_one() -> None:
    """A broker still listed after its connection dropped is passed over if others exist."""
    _, net, clock = logged_in(brokers={"b1:1": 0.0, "b2:2": 0.9})
    _, transport = net.last
    transport.loseConnection()
    clock.advance(0)
    assert net.connections[-1][0] == "b2:2"


def test_without_brokerlist_reconnect_goes_to_the_same_broker() -> None:
    """With only broker=, reconnecting retries that broker."""
    client, net, clock = logged_in(brokers={"b1:1": 0.0}, brokerlist=None, broker="b1:1")
    _, transport = net.last
    transport.loseConnection()
    clock.advance(0)
    assert [a for _, a in net.attempts] == ["b1:1", "b1:1"]
    assert client.state == "reconnecting"


def test_requests_made_while_reconnecting_wait_for_the_resume() -> None:
    """A request during reconnection is sent after session.resume on the new connection."""
    client, net, clock = logged_in(brokers={"b1:1": 0.1, "b2:2": 0.5})
    net.up.discard("b2:2")
    net.kill("b1:1")
    d = client.request("chat.join", {"room": "lobby"}, timeout=3.0)
    client.notify("chat.send", {"content": "queued"})
    assert not d.called
    net.up.add("b2:2")
    net.listed["b2:2"] = 0.5
    clock.advance(0.5)  # the second attempt: 0.5 to 1 s after the first
    protocol, transport = net.last
    assert [p.route for p in sent(transport)] == ["session.resume"]
    protocol.dataReceived(response(1, {"session_id": "s1", "token": "t2", "resumed": True}))
    packets = sent(transport)
    assert [(p.route, p.kind) for p in packets] == [
        ("chat.join", PacketKind.REQUEST),
        ("chat.send", PacketKind.NOTIFY),
    ]
    protocol.dataReceived(response(packets[0].seq, "joined"))
    assert result(d) == "joined"


def test_a_request_in_flight_when_the_connection_drops_is_resent_with_its_seq() -> None:
    """After the resume the client sends it again with the same seq (the service answers
    a resend once), and the caller only sees the answer; seqs go on across connections."""
    client, net, _ = logged_in(brokers={"b1:1": 0.1, "b2:2": 0.5})
    _, first = net.last
    d = client.request("shop.buy", {"item": 7})
    (sent_first,) = [p for p in sent(first) if p.route == "shop.buy"]
    net.kill("b1:1")
    protocol, transport = net.last
    protocol.dataReceived(response(1, {"session_id": "s1", "token": "t2"}))
    packets = sent(transport)
    assert [p.route for p in packets] == ["session.resume", "shop.buy"]
    assert packets[1].seq == sent_first.seq
    assert packets[1].body == sent_first.body
    protocol.dataReceived(response(packets[1].seq, "bought"))
    assert result(d) == "bought"
    client.request("a.b")
    assert sent(transport)[-1].seq == sent_first.seq + 1


def test_a_request_dropped_with_the_session_is_not_resent() -> None:
    """A refused resume ends the session: the request fails instead of waiting."""
    client, net, _ = logged_in(brokers={"b1:1": 0.1, "b2:2": 0.5})
    d = client.request("shop.buy", {"item": 7})
    net.kill("b1:1")
    protocol, _ = net.last
    protocol.dataReceived(error(1, ClientError.RESUME_FAILED, "expired"))
    assert isinstance(failure_of(d), ClientDisconnected)


def test_a_waiting_request_times_out_within_its_own_deadline() -> None:
    """The wait for a new connection counts against the request's timeout."""
    client, net, clock = logged_in(brokers={"b1:1": 0.1})
    net.kill("b1:1")
    d = client.request("a.b", timeout=1.0)
    clock.advance(1.0)
    assert isinstance(failure_of(d), ClientTimeout)
    assert client.state == "reconnecting"


def test_reconnect_backs_off_and_gives_up_after_the_resume_window() -> None:
    """The first attempt after a pause of at most backoff_initial (0.5 s; here 0), the next
    ones after at least half a bound doubling to 8 s; after resume_window the client is
    closed."""
    client, net, clock = logged_in(brokers={"b1:1": 0.1}, brokerlist=None, broker="b1:1")
    closed: list[Any] = []
    client.on_closed(closed.append)
    net.kill("b1:1")
    waiting = client.request("a.b", timeout=100)
    start = clock.seconds()
    while client.state != "closed":
        clock.advance(min(call.getTime() for call in clock.getDelayedCalls()) - clock.seconds())
    times = [round(t - start, 1) for t, _ in net.attempts[1:]]
    pauses = [round(b - a, 1) for a, b in itertools.pairwise(times)]
    assert times[0] == 0.0
    assert pauses[:6] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert max(pauses) == 4.0
    assert times[-1] <= 30.0
    assert client.state == "closed"
    assert client.session_id is None
    assert len(closed) == 1 and isinstance(closed[0], ClientDisconnected)
    assert "could not resume" in str(closed[0])
    assert isinstance(failure_of(waiting), ClientDisconnected)
    with pytest.raises(ClientDisconnected):
        client.notify("a.b")


def test_resume_failed_ends_the_session_at_once() -> None:
    """RESUME_FAILED closes the client (the session is gone) without more attempts."""
    client, net, _ = logged_in()
    closed: list[Any] = []
    client.on_closed(closed.append)
    net.kill("b1:1")
    protocol, transport = net.last
    protocol.dataReceived(error(1, ClientError.RESUME_FAILED, "expired"))
    assert client.state == "closed"
    assert closed[0].cause.name == "RESUME_FAILED"
    assert not transport.connected
    assert len(net.attempts) == 2


def test_reconnect_pauses_are_drawn_at_random_within_their_bounds() -> None:
    """With a real random source, the first pause is within [0, 0.5] s and each later one
    within [half, all] of its doubling bound: 100 clients losing one broker spread out."""
    firsts = []
    for seed in range(100):
        _, net, clock = logged_in(
            brokers={"b1:1": 0.1}, brokerlist=None, broker="b1:1", rng=random.Random(seed)
        )
        start = clock.seconds()
        net.kill("b1:1")
        while len(net.attempts) < 4:
            clock.advance(min(c.getTime() for c in clock.getDelayedCalls()) - clock.seconds())
        times = [t - start for t, _ in net.attempts[1:]]
        firsts.append(times[0])
        assert 0 <= times[0] <= 0.5
        assert 0.5 <= times[1] - times[0] <= 1.0 and 1.0 <= times[2] - times[1] <= 2.0
    assert max(firsts) - min(firsts) > 0.4
    assert len({round(t, 3) for t in firsts}) > 90


def test_other_resume_errors_are_retried() -> None:
    """An UNAVAILABLE answer to session.resume is retried after the backoff."""
    client, net, clock = logged_in()
    net.kill("b1:1")
    protocol, _ = net.last
    protocol.dataReceived(error(1, ClientError.UNAVAILABLE, "session service down"))
    assert client.state == "reconnecting"
    clock.advance(0.5)
    protocol, _ = net.last
    assert len(net.connections) == 3
    protocol.dataReceived(response(1, {"session_id": "s1", "token": "t3"}))
    assert (client.state, client.token) == ("online", "t3")


def test_a_resume_without_answer_is_retried() -> None:
    """A silent new broker costs a request timeout, then the next attempt goes on."""
    client, net, clock = logged_in(request_timeout=2.0)
    net.kill("b1:1")
    clock.advance(2.0)
    assert client.state == "reconnecting"
    clock.advance(0.5)
    assert len(net.connections) == 3


@pytest.mark.parametrize("code", [ClientError.KICKED, ClientError.REPLACED])
def test_final_kicks_end_the_session_without_reconnecting(code: int) -> None:
    """KICK KICKED or REPLACED closes the client; no reconnect is tried."""
    client, net, clock = logged_in()
    closed: list[Any] = []
    client.on_closed(closed.append)
    protocol, _ = net.last
    protocol.dataReceived(kick(code, "bye"))
    clock.advance(60)
    assert client.state == "closed"
    assert len(net.attempts) == 1
    assert closed[0].cause.code == code


@pytest.mark.parametrize("code", [ClientError.SHUTDOWN, ClientError.IDLE])
def test_other_kicks_reconnect_and_resume(code: int) -> None:
    """A broker shutting down (or an idle kick) is a drop to recover from."""
    client, net, clock = logged_in()
    protocol, _ = net.last
    protocol.dataReceived(kick(code))
    assert client.state == "reconnecting"
    clock.advance(0)
    assert net.last[0] is not protocol


def test_a_drop_before_login_does_not_reconnect() -> None:
    """Without a session there is nothing to resume: the client closes."""
    client, net, _ = make_client()
    closed: list[Any] = []
    client.on_closed(closed.append)
    result(client.connect())
    d = client.register(user="x", password="y")
    _, transport = net.last
    transport.loseConnection()
    assert client.state == "closed"
    assert isinstance(failure_of(d), ClientDisconnected)
    assert isinstance(closed[0], ClientDisconnected)
    assert len(net.attempts) == 1


def test_pushes_registered_on_the_client_survive_a_reconnect() -> None:
    """on() registrations apply to the new connection too."""
    client, net, _ = logged_in()
    seen: list[Any] = []
    client.on("a.b", lambda route, body: seen.append(body))
    net.kill("b1:1")
    protocol, _ = net.last
    protocol.dataReceived(response(1, {"session_id": "s1", "token": "t2"}))
    protocol.dataReceived(push("a.b", "after"))
    assert seen == ["after"]


def test_logout_ends_the_session_and_does_not_reconnect() -> None:
    """logout sends session.logout; the broker's close is not taken for a drop."""
    client, net, clock = logged_in()
    closed: list[Any] = []
    client.on_closed(closed.append)
    protocol, transport = net.last
    d = client.logout()
    (packet,) = sent(transport)
    assert packet.route == "session.logout"
    protocol.dataReceived(response(packet.seq, None))
    result(d)
    assert (client.state, client.session_id) == ("closed", None)
    assert not transport.connected
    clock.advance(60)
    assert len(net.attempts) == 1
    assert closed == [None]


def test_logout_tolerates_the_broker_closing_first() -> None:
    """A connection lost during logout still ends in a clean close."""
    client, net, _ = logged_in()
    _, transport = net.last
    d = client.logout()
    transport.loseConnection()
    assert result(d) is None
    assert client.state == "closed"


def test_close_during_reconnect_stops_it() -> None:
    """close() while reconnecting cancels the attempts and fails waiting requests."""
    client, net, clock = logged_in(brokers={"b1:1": 0.1})
    net.kill("b1:1")
    waiting = client.request("a.b", timeout=10)
    result(client.close())
    attempts = len(net.attempts)
    clock.advance(60)
    assert len(net.attempts) == attempts
    assert client.state == "closed"
    assert isinstance(failure_of(waiting), ClientDisconnected)


def test_close_while_the_resume_is_in_flight_drops_the_new_connection() -> None:
    """close() during session.resume closes that connection and stays closed."""
    client, net, _ = logged_in()
    net.kill("b1:1")
    _, transport = net.last
    result(client.close())
    assert not transport.connected
    assert client.state == "closed"


# -- mmo chat ------------------------------------------------------------------------


def test_chat_formats_pushes_as_one_line() -> None:
    """Messages, joins and leaves have their own line; other pushes show JSON."""
    body = {"room": "lobby", "from": "harry", "content": "hi"}
    assert format_push("chat.message", body) == "[lobby] harry: hi"
    assert format_push("chat.joined", {"room": "lobby", "user": "ron"}) == "* ron joined"
    assert format_push("chat.left", {"user_id": "ron"}) == "* ron left"
    assert format_push("game.tick", {"n": 1}) == 'game.tick {"n": 1}'


def test_chat_formats_members() -> None:
    """The join reply's members are listed, whether a list or a map holding one."""
    assert format_members("lobby", {"members": ["harry", "ron"]}) == "* in lobby: harry, ron"
    assert format_members("lobby", [{"user": "ginny"}]) == "* in lobby: ginny"
    assert format_members("lobby", []) == "* in lobby: nobody"


def chat_broker(net: FakeNetwork, handlers: dict[str, Any]) -> None:
    """Answer every request on the latest connection from ``handlers`` by route."""
    protocol, transport = net.last
    for packet in sent(transport):
        if packet.kind != PacketKind.REQUEST:
            continue
        answer = handlers[packet.route]
        if isinstance(answer, ClientRequestError):
            protocol.dataReceived(error(packet.seq, answer.code, answer.message))
        else:
            protocol.dataReceived(response(packet.seq, answer))


def test_chat_session_from_login_to_end_of_input(capsys: pytest.CaptureFixture[str]) -> None:
    """mmo chat registers (existing account is fine), logs in, joins, sends lines, logs out."""
    client, net, clock = make_client({"b1:1": 0.1})
    console = ChatConsole()
    attached: list[ChatConsole] = []
    d = run_chat(
        client, console, attached.append, user="harry", password="pw", room="lobby", register=True
    )
    exists = ClientRequestError(ClientError.SERVICE_ERROR, "AccountExists: harry")
    chat_broker(net, {"sso.register": exists})
    chat_broker(net, {"sso.login": LOGIN_REPLY})
    chat_broker(net, {"chat.join": {"members": ["harry", "ron"]}})
    assert attached == [console]
    protocol, transport = net.last
    protocol.dataReceived(push("chat.message", {"room": "lobby", "from": "ron", "content": "hi"}))
    console.dataReceived(b"hello there\r\n\n")
    (packet,) = sent(transport)
    assert (packet.kind, packet.route) == (PacketKind.NOTIFY, "chat.send")
    assert decode_value(packet.body) == {"content": "hello there"}
    console.readConnectionLost()
    # End of input: a round trip through the chat service, a moment for the last
    # broadcasts, then the logout.
    chat_broker(net, {"chat.members": ["harry", "ron"]})
    clock.advance(LINGER)
    chat_broker(net, {"session.logout": None, "chat.members": ["harry", "ron"]})
    assert result(d) is None
    assert client.state == "closed"
    assert capsys.readouterr().out.splitlines() == ["* in lobby: harry, ron", "[lobby] ron: hi"]


def test_chat_login_failure_is_a_command_error_with_the_reason() -> None:
    """A refused login ends mmo chat with the broker's message."""
    client, net, _ = make_client({"b1:1": 0.1})
    d = run_chat(client, ChatConsole(), lambda c: None, user="harry", password="no", room="r")
    refused = ClientRequestError(ClientError.LOGIN_FAILED, "BadPassword: wrong password")
    chat_broker(net, {"sso.login": refused})
    e = failure_of(d)
    assert isinstance(e, CommandError)
    assert "wrong password" in str(e)
    assert client.state == "closed"


def test_chat_ends_with_an_error_when_the_session_is_kicked() -> None:
    """A kick while chatting ends mmo chat with a CommandError naming it."""
    client, net, _ = make_client({"b1:1": 0.1})
    d = run_chat(client, ChatConsole(), lambda c: None, user="harry", password="pw", room="r")
    chat_broker(net, {"sso.login": LOGIN_REPLY})
    chat_broker(net, {"chat.join": []})
    protocol, _ = net.last
    protocol.dataReceived(kick(ClientError.KICKED, "banned"))
    e = failure_of(d)
    assert isinstance(e, CommandError)
    assert "KICKED: banned" in str(e)


def test_the_token_is_refreshed_at_half_its_lifetime_and_resumes_with_the_new_one() -> None:
    """A login reply with token_ttl makes the client ask session.refresh at ttl / 2, keep
    the new token, and go on; a resume then uses the newest token."""
    client, net, clock = make_client()
    result(client.connect())
    d = client.login(user="harry", password="pw")
    protocol, transport = net.last
    (packet,) = sent(transport)
    protocol.dataReceived(response(packet.seq, {**LOGIN_REPLY, "token_ttl": 4}))
    result(d)
    clock.advance(1.9)
    assert [p.route for p in sent(transport) if p.kind == PacketKind.REQUEST] == []
    clock.advance(0.1)
    (refresh,) = [p for p in sent(transport) if p.kind == PacketKind.REQUEST]
    assert refresh.route == "session.refresh"
    protocol.dataReceived(response(refresh.seq, {"token": "t2", "token_ttl": 4}))
    assert client.token == "t2"
    clock.advance(2)
    (again,) = [p for p in sent(transport) if p.kind == PacketKind.REQUEST]
    assert again.route == "session.refresh"
    protocol.dataReceived(response(again.seq, {"token": "t3", "token_ttl": 4}))
    net.kill("b1:1")
    protocol, transport = net.last
    (resume,) = sent(transport)
    assert decode_value(resume.body) == {"session_id": "s1", "token": "t3"}
