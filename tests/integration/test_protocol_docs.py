"""The examples of docs/protocol.md (section 5, the client wire), played against real brokers.

protocol.md marks each example with an HTML comment, ``<!-- example: NAME -->``, just before
a fenced block: a transcript of packets (the notation is in its section 5.7) or an annotated
hex dump (its section 5.10). These tests read the blocks out of the markdown, send what
they show to an :class:`~tests.integration.edge.EdgeCluster` and check every packet the
brokers answer against them, so that the document and the broker cannot drift apart.
"""

from __future__ import annotations

import json
import re
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, BytesMessage, Request

from mmo.wire import decode, decode_value, encode, encode_value
from mmo.wire.gen.mmo.ttypes import ClientError, Packet, PacketKind

from .edge import ACCOUNTS, EdgeCluster

pytestmark = pytest.mark.timeout(120)

DOC = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"
#: Accounts the examples log in with besides harry, whom the ``register`` example creates.
EXAMPLE_ACCOUNTS = "ron:weasley,hermione:granger"
#: Seconds any read from a broker waits.
READ_TIMEOUT = 5.0

_EXAMPLE = re.compile(
    r"<!-- example: ([\w-]+) -->\s*?\n(?P<indent>[ \t]*)```[^\n]*\n(?P<body>.*?)\n[ \t]*```",
    re.DOTALL,
)
_LINE = re.compile(r"(?:(?P<actor>\w+)\s+)?(?P<arrow>->|<-)\s*(?P<rest>.*)")
_FIELD = re.compile(r"\s*(\w+)=")
_RAW = re.compile(r"0x(?P<hex>[0-9a-fA-F]*)|(?P<name>[A-Z][A-Z_]*)\b")
# A JSON string (left as it is) or a placeholder outside one.
_PLACEHOLDER = re.compile(r'"(?:[^"\\]|\\.)*"|<([A-Za-z_]\w*)>')
_HEX = re.compile(r"[0-9a-f]{2}")
_MARK = "\x00"
_FIELDS = ("seq", "route", "body", "code", "message")


def read_examples(text: str) -> dict[str, str]:
    """The marked example blocks of a markdown text, by name.

    Args:
        text: the markdown.

    Returns:
        Each example's block content, dedented by its fence's indentation.
    """
    found: dict[str, str] = {}
    for match in _EXAMPLE.finditer(text):
        name, indent = match.group(1), len(match.group("indent"))
        assert name not in found, f"example {name!r} is marked twice"
        found[name] = "\n".join(line[indent:] for line in match.group("body").splitlines())
    return found


EXAMPLES = read_examples(DOC.read_text(encoding="utf-8"))


def example(name: str) -> str:
    """The block of the example ``name`` (failing clearly if protocol.md lost it)."""
    assert name in EXAMPLES, f"docs/protocol.md has no <!-- example: {name} --> block"
    return EXAMPLES[name]


# -- hex dumps (5.10) -------------------------------------------------------------------


def hex_dump(name: str) -> bytes:
    """The bytes of the hex dump ``name``: on each line, the leading two-digit hex tokens."""
    data = bytearray()
    for line in example(name).splitlines():
        for token in line.split():
            if not _HEX.fullmatch(token):
                break
            data.append(int(token, 16))
    return bytes(data)


def framed_packet(name: str) -> tuple[bytes, Packet]:
    """The frame of the hex dump ``name`` and the packet in it, checked to be well formed.

    Returns:
        The whole frame (length prefix included) and its decoded packet.
    """
    data = hex_dump(name)
    (length,) = struct.unpack(">I", data[:4])
    assert length == len(data) - 4, f"{name}: the prefix says {length}, {len(data) - 4} follow"
    packet = decode(Packet, data[4:])
    assert encode(packet) == data[4:], f"{name}: the dump is not the packet's encoding"
    return data, packet


# -- transcripts (5.7) ------------------------------------------------------------------


@dataclass(frozen=True)
class Placeholder:
    """``<name>`` in a transcript: any value, the same wherever the name comes again."""

    name: str


@dataclass(frozen=True)
class Step:
    """One line of a transcript.

    Attributes:
        actor: the client it concerns ("" when the transcript names none).
        sends: True for ``->``, False for ``<-``.
        kind: a PacketKind, or None for ``(connect)`` / ``(closed)``.
        fields: the packet's fields as written (absent ones are not there).
        line: the line as written, for messages.
    """

    actor: str
    sends: bool
    kind: int | None
    fields: dict[str, Any] = field(default_factory=dict)
    line: str = ""


def _thaw(value: Any) -> Any:
    """Turn the marked strings of a parsed JSON value back into placeholders."""
    if isinstance(value, str) and value.startswith(_MARK):
        return Placeholder(value[1:])
    if isinstance(value, dict):
        return {k: _thaw(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_thaw(v) for v in value]
    return value


def _parse_fields(text: str) -> dict[str, Any]:
    """The ``name=value`` fields of a packet line (JSON, ``0x...`` bytes, NAMEs, ``<x>``)."""
    text = _PLACEHOLDER.sub(lambda m: json.dumps(_MARK + m[1]) if m[1] else m[0], text)
    decoder = json.JSONDecoder()
    fields: dict[str, Any] = {}
    pos = 0
    while match := _FIELD.match(text, pos):
        name, pos = match.group(1), match.end()
        raw = _RAW.match(text, pos)
        if raw is not None:
            digits = raw.group("hex")
            fields[name] = raw.group("name") if digits is None else bytes.fromhex(digits)
            pos = raw.end()
        else:
            value, pos = decoder.raw_decode(text, pos)
            fields[name] = _thaw(value)
    assert not text[pos:].strip(), f"cannot read {text[pos:]!r}"
    return fields


def transcript(name: str) -> list[Step]:
    """The steps of the transcript ``name`` (indented lines continue the line before)."""
    lines: list[str] = []
    for line in example(name).splitlines():
        if line[:1].isspace() and lines:
            lines[-1] += " " + line.strip()
        elif line.strip() and not line.startswith("#"):
            lines.append(line.strip())
    steps = []
    for line in lines:
        match = _LINE.fullmatch(line)
        assert match is not None, f"{name}: cannot read {line!r}"
        actor, sends, rest = match["actor"] or "", match["arrow"] == "->", match["rest"]
        if rest in ("(connect)", "(closed)"):
            assert sends == (rest == "(connect)"), f"{name}: {line!r} points the wrong way"
            steps.append(Step(actor, sends, None, line=line))
            continue
        kind_name, _, fields = rest.partition(" ")
        assert kind_name in PacketKind._NAMES_TO_VALUES, f"{name}: no packet kind in {line!r}"
        kind = PacketKind._NAMES_TO_VALUES[kind_name]
        steps.append(Step(actor, sends, kind, _parse_fields(fields), line))
    return steps


def _same(expected: Any, actual: Any) -> bool:
    """Equal, and of the same type (so 10 is not 10.0, nor 1 True)."""
    return type(expected) is type(actual) and expected == actual


def match_value(pattern: Any, value: Any, bound: dict[str, Any]) -> bool:
    """Whether ``value`` fits ``pattern``; placeholders met the first time are bound.

    Args:
        pattern: a transcript value: JSON data, with placeholders and ``"prefix..."``
            strings.
        value: what the broker sent.
        bound: the placeholders' values so far (added to).
    """
    if isinstance(pattern, Placeholder):
        if pattern.name in bound:
            return _same(bound[pattern.name], value)
        bound[pattern.name] = value
        return True
    if isinstance(pattern, str) and pattern.endswith("..."):
        return isinstance(value, str) and value.startswith(pattern[:-3])
    if isinstance(pattern, dict):
        return (
            isinstance(value, dict)
            and pattern.keys() == value.keys()
            and all(match_value(pattern[k], value[k], bound) for k in pattern)
        )
    if isinstance(pattern, list):
        return (
            isinstance(value, list)
            and len(pattern) == len(value)
            and all(match_value(p, v, bound) for p, v in zip(pattern, value, strict=True))
        )
    return _same(pattern, value)


_ABSENT = object()


def match_packet(step: Step, packet: Packet, bound: dict[str, Any]) -> dict[str, Any] | None:
    """The placeholders bound once ``packet`` fits ``step``, or None if it does not fit.

    Every field the step writes must be there and fit; every other field must be absent.
    """
    trial = dict(bound)
    if packet.kind != step.kind:
        return None
    for name in _FIELDS:
        want = step.fields.get(name, _ABSENT)
        got = getattr(packet, name)
        if got is None:
            got = _ABSENT
        elif name == "body":
            got = decode_value(got)
        if want is _ABSENT or got is _ABSENT:
            if want is not got:
                return None
            continue
        if name == "code":
            want = ClientError._NAMES_TO_VALUES[want]
        if not match_value(want, got, trial):
            return None
    return trial


def _fill(value: Any, bound: dict[str, Any]) -> Any:
    """A transcript value to send, its placeholders replaced by what they were bound to."""
    if isinstance(value, Placeholder):
        assert value.name in bound, f"<{value.name}> is sent before it was received"
        return bound[value.name]
    if isinstance(value, dict):
        return {k: _fill(v, bound) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, bound) for v in value]
    return value


def packet_of(step: Step, bound: dict[str, Any]) -> Packet:
    """The packet a ``->`` step sends."""
    fields = {k: _fill(v, bound) for k, v in step.fields.items()}
    if "body" in fields and not isinstance(fields["body"], bytes):
        fields["body"] = encode_value(fields["body"])
    if "code" in fields:
        fields["code"] = ClientError._NAMES_TO_VALUES[fields["code"]]
    return Packet(kind=step.kind, **fields)


def describe(packet: Packet) -> str:
    """A packet as a transcript line would show it, for failure messages."""
    parts = [PacketKind._VALUES_TO_NAMES.get(packet.kind, str(packet.kind))]
    for name in _FIELDS:
        value = getattr(packet, name)
        if value is None:
            continue
        if name == "body":
            value = decode_value(value)
        if name == "code":
            value = ClientError._VALUES_TO_NAMES.get(value, value)
        parts.append(f"{name}={value!r}")
    return " ".join(parts)


def read_frame(sock: socket.socket) -> bytes:
    """One whole frame (length prefix included) from a broker's TCP port."""
    head = _read_exactly(sock, 4)
    return head + _read_exactly(sock, struct.unpack(">I", head)[0])


def _read_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("closed by the broker")
        data += chunk
    return data


def frame(packet: Packet) -> bytes:
    """A packet as it goes over TCP."""
    data = encode(packet)
    return struct.pack(">I", len(data)) + data


class Player:
    """Plays transcripts against brokers: one TCP connection per actor, placeholders kept
    across the transcripts it plays (so that one may resume what another logged in).

    Args:
        ports: the brokers' TCP ports; each new connection goes to the next one.
    """

    def __init__(self, ports: list[int]) -> None:
        self.ports = ports
        self.connections: dict[str, socket.socket] = {}
        self.bound: dict[str, Any] = {}
        self._next = 0

    def connect(self, actor: str) -> socket.socket:
        """Open a new connection for ``actor`` (closing its last one)."""
        old = self.connections.pop(actor, None)
        if old is not None:
            old.close()
        port = self.ports[self._next % len(self.ports)]
        self._next += 1
        sock = socket.create_connection(("127.0.0.1", port), timeout=READ_TIMEOUT)
        self.connections[actor] = sock
        return sock

    def connection(self, actor: str) -> socket.socket:
        """``actor``'s connection (opened on first use)."""
        return self.connections.get(actor) or self.connect(actor)

    def close(self) -> None:
        """Close every connection."""
        for sock in self.connections.values():
            sock.close()
        self.connections.clear()

    def play(self, name: str) -> None:
        """Play the transcript ``name``: send its ``->`` packets, check its ``<-`` ones.

        Then every connection the transcript used and did not see closed must still be
        open with nothing more to read: a HEARTBEAT sent on it is the next thing answered.
        """
        steps = transcript(name)
        i = 0
        while i < len(steps):
            sends = steps[i].sends
            j = i
            while j < len(steps) and steps[j].sends == sends:
                j += 1
            if sends:
                self._send(steps[i:j])
            else:
                self._expect(name, steps[i:j])
            i = j
        heartbeat = frame(Packet(kind=PacketKind.HEARTBEAT))
        for actor in dict.fromkeys(step.actor for step in steps):
            sock = self.connections.get(actor)
            if sock is None:
                continue
            try:
                sock.sendall(heartbeat)
                answer = decode(Packet, read_frame(sock)[4:])
            except OSError as e:
                raise AssertionError(f"{name}: {actor or 'the'} connection is gone: {e}") from None
            assert answer.kind == PacketKind.HEARTBEAT, f"{name}: then came {describe(answer)}"

    def _send(self, steps: list[Step]) -> None:
        # One write per actor, so that packets shown together arrive together (a second
        # request while the login is pending).
        batches: dict[str, bytes] = {}
        for step in steps:
            if step.kind is None:
                self._flush(batches)
                self.connect(step.actor)
            else:
                batches[step.actor] = batches.get(step.actor, b"") + frame(
                    packet_of(step, self.bound)
                )
        self._flush(batches)

    def _flush(self, batches: dict[str, bytes]) -> None:
        for actor, data in batches.items():
            self.connection(actor).sendall(data)
        batches.clear()

    def _expect(self, name: str, steps: list[Step]) -> None:
        # Packets of one group may come in any order: take as many as are shown, then
        # pair each shown packet with one received.
        actors = dict.fromkeys(step.actor for step in steps)
        for actor in actors:
            shown = [s for s in steps if s.actor == actor and s.kind is not None]
            sock = self.connection(actor)
            received = []
            for step in shown:
                try:
                    received.append(decode(Packet, read_frame(sock)[4:]))
                except (TimeoutError, ConnectionError) as e:
                    got = "\n  ".join(describe(p) for p in received) or "nothing"
                    raise AssertionError(
                        f"{name}: no packet for {step.line!r} ({e}); received:\n  {got}"
                    ) from None
            for step in shown:
                for k, packet in enumerate(received):
                    bound = match_packet(step, packet, self.bound)
                    if bound is not None:
                        self.bound = bound
                        del received[k]
                        break
                else:
                    got = "\n  ".join(describe(p) for p in received)
                    raise AssertionError(f"{name}: no packet fits {step.line!r}; got:\n  {got}")
            if any(s.actor == actor and s.kind is None for s in steps):
                self._expect_closed(name, actor)

    def _expect_closed(self, name: str, actor: str) -> None:
        sock = self.connections.pop(actor)
        try:
            data = sock.recv(65536)
        except TimeoutError:
            message = f"{name}: the broker did not close {actor or 'the'} connection"
            raise AssertionError(message) from None
        finally:
            sock.close()
        assert data == b"", f"{name}: {actor or 'the client'} got more before the close: {data!r}"


# -- fixtures ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EdgeCluster]:
    """One edge cluster (two brokers) with the accounts the examples log in with."""
    started = EdgeCluster(
        tmp_path_factory.mktemp("protocol-docs"),
        brokers=2,
        accounts=f"{ACCOUNTS},{EXAMPLE_ACCOUNTS}",
    )
    try:
        started.wait_ready()
        yield started
    finally:
        started.stop()


@pytest.fixture(scope="module")
def registered(cluster: EdgeCluster) -> dict[str, Any]:
    """The ``register`` example, played once per cluster: it makes harry's account, which
    the other examples log in with. Returns what its placeholders were bound to."""
    player = Player(cluster.ports)
    try:
        player.play("register")
    finally:
        player.close()
    return player.bound


@pytest.fixture
def edge(cluster: EdgeCluster, registered: dict[str, Any]) -> EdgeCluster:
    """The cluster, once harry is registered."""
    return cluster


@pytest.fixture
def player(edge: EdgeCluster) -> Iterator[Player]:
    """A transcript player on the cluster's brokers; its connections are closed after."""
    p = Player(edge.ports)
    yield p
    p.close()


# -- the tests --------------------------------------------------------------------------

SESSION_FLOW = [
    "login",
    "unknown-route",
    "notify-error",
    "heartbeat",
    "resume",
    "refresh",
    "logout",
    "resume-refused",
]
REFUSED_LOGINS = ["login-wrong-password", "login-bad-body", "before-login", "login-pending"]
CHAT = ["chat-join", "chat-send", "chat-members", "chat-one-room", "chat-leave"]
DUMPS = ["tcp-login-request", "tcp-login-response", "tcp-login-refused", "tcp-heartbeat"]


def test_every_marked_example_is_played() -> None:
    """Each example block of protocol.md is one these tests play, and each they play is there."""
    played = {"register", *SESSION_FLOW, *REFUSED_LOGINS, *CHAT, *DUMPS}
    assert set(EXAMPLES) == played


def test_register_example(registered: dict[str, Any]) -> None:
    """sso.register answers {"user_id"}, refuses a taken or invalid name; the account logs in.

    The ``registered`` fixture plays the transcript (every example logging harry in
    needs it first); what is left is to see that it ended logged in.
    """
    assert registered["login_reply"]["user_id"] == "harry"


def test_session_flow_examples(player: Player) -> None:
    """Login reply keys, refused routes, a failed NOTIFY, heartbeat, resume, refresh, logout.

    The resume goes to the other broker than the login (each new connection of the
    player goes to the next broker), as a client's would after its broker died.
    """
    for name in SESSION_FLOW:
        player.play(name)


@pytest.mark.parametrize("name", REFUSED_LOGINS)
def test_refused_login_examples(player: Player, name: str) -> None:
    """Each documented refusal before login: its code, seq, message, and the close or not."""
    player.play(name)


def test_chat_examples(player: Player) -> None:
    """The chat routes as 5.11.2 shows them: join, send, members, one room, leave."""
    for name in CHAT:
        player.play(name)


def test_tcp_worked_example(edge: EdgeCluster) -> None:
    """The bytes of 5.10 are what a broker reads and writes: the login, a refusal, a heartbeat."""
    request, sent = framed_packet("tcp-login-request")
    login = transcript("login")
    assert match_packet(login[0], sent, {}) is not None, "5.10 sends another login than 5.7.1"

    _, documented = framed_packet("tcp-login-response")
    with socket.create_connection(("127.0.0.1", edge.ports[0]), timeout=READ_TIMEOUT) as sock:
        sock.sendall(request)
        answer = decode(Packet, read_frame(sock)[4:])
    for packet in (documented, answer):
        assert match_packet(login[1], packet, {}) is not None, describe(packet)
    documented_body, body = decode_value(documented.body), decode_value(answer.body)
    assert {k: type(v) for k, v in documented_body.items()} == {k: type(v) for k, v in body.items()}

    refused_frame, _ = framed_packet("tcp-login-refused")
    wrong = request.replace(b"hunter2", b"hunter3")
    assert len(wrong) == len(request)
    heartbeat, _ = framed_packet("tcp-heartbeat")
    with socket.create_connection(("127.0.0.1", edge.ports[1]), timeout=READ_TIMEOUT) as sock:
        sock.sendall(wrong)
        got = read_frame(sock)
        assert got == refused_frame, f"the refusal is {got.hex(' ')}"
        sock.sendall(heartbeat)
        got = read_frame(sock)
        assert got == heartbeat, f"the heartbeat is answered with {got.hex(' ')}"


def test_websocket_carries_the_same_bytes(edge: EdgeCluster) -> None:
    """Over WebSocket the frames of 5.10 travel as binary messages without their prefix."""
    request, _ = framed_packet("tcp-login-request")
    heartbeat, _ = framed_packet("tcp-heartbeat")
    with socket.create_connection(("127.0.0.1", edge.ws_ports[0]), timeout=READ_TIMEOUT) as sock:
        ws = WSConnection(ConnectionType.CLIENT)
        sock.sendall(ws.send(Request(host="127.0.0.1", target="/")))
        messages = _ws_events(sock, ws)
        assert isinstance(next(messages), AcceptConnection)
        sock.sendall(ws.send(BytesMessage(data=heartbeat[4:])))
        assert next(messages) == heartbeat[4:]
        sock.sendall(ws.send(BytesMessage(data=request[4:])))
        answer = decode(Packet, next(messages))
    assert match_packet(transcript("login")[1], answer, {}) is not None, describe(answer)


def _ws_events(sock: socket.socket, ws: WSConnection) -> Iterator[Any]:
    """The handshake's acceptance, then each whole binary message, as they arrive."""
    message = b""
    while True:
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("closed by the broker")
        ws.receive_data(data)
        for event in ws.events():
            if isinstance(event, BytesMessage):
                message += event.data
                if event.message_finished:
                    yield message
                    message = b""
            elif isinstance(event, AcceptConnection):
                yield event
