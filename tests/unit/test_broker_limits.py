"""The broker's trust boundary and limits on fakes: declared routes only, the same refusal
for every undeclared route, players' NOTIFY errors returned, NOTIFYs kept off dead links,
channel limits, broadcast budgets."""

from __future__ import annotations

from typing import Any

from mmo.wire import encode, encode_value
from mmo.wire.gen.mmo.ttypes import (
    ClientError,
    ErrorCode,
    Header,
    Kind,
    Origin,
    Packet,
    PacketKind,
    Session,
)

from .test_broker_fuzz import CLIENT_METHODS, connect, frame, make_broker, parse_output


def logged_in(broker: Any, host: str = "10.0.0.1", port: int = 40000) -> tuple[Any, Any]:
    """A connection that has logged in (the fake directory accepts any login)."""
    protocol, transport = connect(broker, host, port)
    login = Packet(kind=PacketKind.REQUEST, seq=1, route="sso.login", body=encode_value({}))
    protocol.dataReceived(frame(login))
    transport.clear()
    return protocol, transport


def send(protocol: Any, kind: int, route: str, seq: int | None = None) -> None:
    protocol.dataReceived(frame(Packet(kind=kind, seq=seq, route=route, body=encode_value({}))))


def internal(broker: Any, method: str, body: bytes = b"", **fields: Any) -> None:
    """A one-way message from logic to the broker's internal endpoint."""
    header = Header(kind=Kind.REQUEST, method=method, one_way=True, **fields)
    broker.internal.received([b"ident", encode(header), body])


def test_every_undeclared_route_gets_the_same_refusal() -> None:
    """A missing service, a service's internal method, a method nobody has, a malformed
    route and a route the listener does not accept: one answer, naming the route."""
    broker, _ = make_broker(listen_routes=("echo.*", "sso.*"))
    protocol, transport = logged_in(broker)
    routes = ["session.open", "session.track", "echo.nosuch", "nosuch.x", "noroute", "sso.login"]
    for n, route in enumerate(routes, 10):
        send(protocol, PacketKind.REQUEST, route, seq=n)
    answers = parse_output(transport.value())
    assert [(p.kind, p.seq, p.code) for p in answers] == [
        (PacketKind.ERROR, n, ClientError.UNKNOWN_ROUTE) for n in range(10, 10 + len(routes))
    ]
    assert [p.message for p in answers] == [f"no such route {r!r}" for r in routes]
    assert not transport.disconnecting
    assert broker.directory.sent == [], "nothing undeclared reached a worker"


def test_a_listener_narrowed_by_config_refuses_declared_routes_it_does_not_list() -> None:
    """With listen-routes = ["chat.*"], the declared echo.echo is refused as unknown."""
    broker, _ = make_broker(listen_routes=("chat.*",))
    protocol, transport = logged_in(broker)
    send(protocol, PacketKind.REQUEST, "echo.echo", seq=5)
    (answer,) = parse_output(transport.value())
    assert (answer.code, answer.message) == (ClientError.UNKNOWN_ROUTE, "no such route 'echo.echo'")


def test_a_failed_notify_comes_back_to_the_player_as_an_error() -> None:
    """A worker's ERROR for a player's one-way packet reaches that player (no seq), naming
    the route; an unknown method reads like any refused route."""
    broker, _ = make_broker()
    protocol, transport = logged_in(broker)
    sid = protocol.connection.session_id
    for code, error_type, message in [
        (ErrorCode.BAD_REQUEST, "BadRequest", "chat.send: content too long"),
        (ErrorCode.UNKNOWN_METHOD, "UnknownMethod", "service 'chat' has no method 'x'"),
        (ErrorCode.REMOTE, "KeyError", "'room'"),
    ]:
        broker.directory.on_one_way_error(
            Header(
                kind=Kind.ERROR,
                one_way=True,
                targets=[sid, "gone"],
                route="chat.send",
                error_code=code,
                error_type=error_type,
                error_message=message,
            )
        )
    answers = parse_output(transport.value())
    assert [(p.kind, p.seq, p.code) for p in answers] == [
        (PacketKind.ERROR, None, ClientError.BAD_REQUEST),
        (PacketKind.ERROR, None, ClientError.UNKNOWN_ROUTE),
        (PacketKind.ERROR, None, ClientError.SERVICE_ERROR),
    ]
    assert [p.message for p in answers] == [
        "chat.send: content too long",
        "chat.send: no such route 'chat.send'",
        "chat.send: KeyError: 'room'",
    ]


def test_a_notify_is_not_sent_into_a_dropped_connection() -> None:
    """The instance a player's notifies stick to, or the one their prefix is bound to, has
    lost its connection (killed: the registry says so seconds later): the notify goes to a
    connected instance instead of being lost; a binding stays (a request finds out whether
    its instance is gone, and the instance that took the notify may bind it anew)."""
    broker, _ = make_broker()
    directory = broker.directory
    directory.register("echo", "echo-2", meta={"client": CLIENT_METHODS["echo"]})
    protocol, _ = logged_in(broker)
    send(protocol, PacketKind.NOTIFY, "echo.echo")
    first = directory.sent[-1].instance
    other = ({"echo-1", "echo-2"} - {first}).pop()
    send(protocol, PacketKind.NOTIFY, "echo.echo")
    assert directory.sent[-1].instance == first  # sticky while its link is up
    directory.link("echo", first).up = False
    send(protocol, PacketKind.NOTIFY, "echo.echo")
    assert directory.sent[-1].instance == other
    protocol.connection.bindings["echo"] = first
    send(protocol, PacketKind.NOTIFY, "echo.echo")
    assert directory.sent[-1].instance == other
    assert protocol.connection.bindings["echo"] == first
    directory.link("echo", first).up = True
    send(protocol, PacketKind.NOTIFY, "echo.echo")
    assert directory.sent[-1].instance == first  # bound, and connected again


def test_forwarded_packets_are_marked_as_the_players() -> None:
    """A notify leaves the broker marked CLIENT with the player's address and route."""
    broker, _ = make_broker()
    sent: list[dict[str, Any]] = []
    broker.directory.send = lambda service, method, body, **header: sent.append(header) or "x"
    protocol, _ = logged_in(broker, host="10.4.4.4")
    send(protocol, PacketKind.NOTIFY, "echo.echo")
    ((header,),) = [sent]
    assert (header["origin"], header["peer"], header["route"]) == (
        Origin.CLIENT,
        "10.4.4.4",
        "echo.echo",
    )


def test_channels_per_session_and_name_length_are_limited() -> None:
    """Joins past max-channels, or of an over-long name, are refused and counted; the
    session keeps the channels it had."""
    broker, _ = make_broker(max_channels=3, max_channel_name=16)
    protocol, _ = logged_in(broker)
    sid = protocol.connection.session_id
    for n in range(5):
        internal(broker, "join", targets=[sid], channel=f"room:{n}")
    internal(broker, "join", targets=[sid], channel="x" * 17)
    assert protocol.connection.channels == {"room:0", "room:1", "room:2"}
    assert broker.counters["channels_over_limit"] == 2
    assert broker.counters["channel_name_too_long"] == 1


def in_room(broker: Any, room: str, count: int, port: int) -> list[tuple[Any, Any]]:
    """``count`` logged-in connections, put in channel ``room`` as logic would."""
    members = [logged_in(broker, port=port + n) for n in range(count)]
    for protocol, _ in members:
        internal(broker, "join", targets=[protocol.connection.session_id], channel=room)
    return members


def broadcast(broker: Any, room: str, body: bytes, sender: str | None = None) -> None:
    """A chat message broadcast to ``room``, caused by session ``sender`` if given."""
    session = Session(id=sender) if sender is not None else None
    internal(broker, "broadcast", body, channel=room, route="chat.message", session=session)


def test_broadcasts_are_held_to_the_senders_budget() -> None:
    """A sender's broadcasts past sender-burst are dropped until the rate refills them;
    another sender's are not."""
    broker, clock = make_broker(sender_rate=2.0, sender_burst=3)
    listeners = in_room(broker, "room:a", 3, 41000)
    body = encode_value({"m": 1})
    for _ in range(10):
        broadcast(broker, "room:a", body, "s-bad")
    broadcast(broker, "room:a", body, "s-ok")
    for _, transport in listeners:
        assert len(parse_output(transport.value())) == 4
        transport.clear()
    assert broker.counters["broadcasts_over_sender_budget"] == 7
    clock.advance(1.0)
    for _ in range(5):
        broadcast(broker, "room:a", body, "s-bad")
    assert all(len(parse_output(t.value())) == 2 for _, t in listeners)


def test_broadcasts_are_held_to_the_channels_byte_budget() -> None:
    """A channel's fan-out stops at channel-budget bytes per second (plus one broadcast),
    whoever sends; the next second it flows again."""
    broker, clock = make_broker(channel_budget=1000)
    members = in_room(broker, "room:big", 10, 42000)
    body = encode_value({"text": "x" * 40})
    for _ in range(20):
        broadcast(broker, "room:big", body)
    delivered = sum(len(parse_output(t.value())) for _, t in members)
    frame_size = len(parse_output(members[0][1].value())[0].body or b"") + 20
    assert 10 <= delivered <= 10 * (1000 // (10 * frame_size) + 2)
    assert broker.counters["broadcasts_over_channel_budget"] >= 15
    for _, transport in members:
        transport.clear()
    clock.advance(2.0)
    broadcast(broker, "room:big", body)
    assert sum(len(parse_output(t.value())) for _, t in members) == 10


def test_a_paused_client_gets_its_frames_in_order_and_an_overflowing_one_is_dropped() -> None:
    """While a client does not read, its frames wait and leave in order when it does; past
    the limit the queue is emptied and the client dropped; a connection lost in the middle
    of a resume gets nothing more."""
    from mmo.broker.connection import _OutboundQueue

    written: list[bytes] = []
    dropped: list[bool] = []
    queue = _OutboundQueue(written.append, 10, lambda: dropped.append(True))
    queue.send(b"a")
    queue.pauseProducing()
    queue.send(b"bb")
    queue.send(b"cc")
    assert written == [b"a"] and queue.size == 4
    queue.resumeProducing()
    assert written == [b"a", b"bb", b"cc"] and queue.size == 0 and queue.queued is None
    queue.pauseProducing()
    queue.send(b"123456")
    queue.send(b"789012")
    assert dropped == [True] and queue.size == 0 and queue.queued is None

    lost: list[bytes] = []
    cut = _OutboundQueue(lambda data: (lost.append(data), cut.stopProducing()), 100, None)
    cut.pauseProducing()
    cut.send(b"x")
    cut.send(b"y")
    cut.resumeProducing()
    assert lost == [b"x"]
