"""A blocking, byte-level client of the broker's TCP wire, for tests that misbehave on purpose."""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass
from typing import Any

from mmo.wire import decode, decode_value, encode, encode_value
from mmo.wire.gen.mmo.ttypes import Packet, PacketKind


@dataclass
class Received:
    """A packet as received, its body decoded."""

    kind: int
    seq: int | None
    route: str | None
    code: int | None
    message: str | None
    value: Any


class RawClient:
    """One TCP connection speaking (or abusing) the client wire by hand.

    Args:
        port: the broker's client port on 127.0.0.1.
        timeout: seconds any receive waits.
        source: the local address to connect from (``"127.0.0.2"``: all of 127/8 reaches
            the broker on Linux, so each attacker of a test can have its own address).
        rcvbuf: a receive buffer size to set before connecting (a slow reader's).
    """

    def __init__(
        self,
        port: int,
        timeout: float = 5.0,
        *,
        source: str | None = None,
        rcvbuf: int | None = None,
    ) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        if source is not None:
            sock.bind((source, 0))
        sock.settimeout(timeout)
        try:
            sock.connect(("127.0.0.1", port))
        except OSError:
            sock.close()
            raise
        self.sock = sock
        self.seq = 0

    def send_bytes(self, data: bytes) -> None:
        """Write bytes as they are."""
        self.sock.sendall(data)

    def frame(self, kind: int, route: str | None = None, body: Any = None, **fields: Any) -> bytes:
        """A packet framed for the wire, not sent (REQUESTs take the next seq, as in
        :meth:`send`): to write several in one go with :meth:`send_bytes`, so the broker
        reads them together."""
        return self._framed(kind, route, body, **fields)[1]

    def send(self, kind: int, route: str | None = None, body: Any = None, **fields: Any) -> int:
        """Frame and send a packet; return its seq (REQUESTs get the next one)."""
        seq, data = self._framed(kind, route, body, **fields)
        self.sock.sendall(data)
        return seq

    def _framed(self, kind: int, route: str | None, body: Any, **fields: Any) -> tuple[int, bytes]:
        seq = fields.pop("seq", None)
        if seq is None and kind == PacketKind.REQUEST:
            self.seq += 1
            seq = self.seq
        data = encode(
            Packet(
                kind=kind,
                seq=seq,
                route=route,
                body=None if body is None else encode_value(body),
                **fields,
            )
        )
        return seq or 0, struct.pack(">I", len(data)) + data

    def _read(self, n: int) -> bytes:
        out = b""
        while len(out) < n:
            chunk = self.sock.recv(n - len(out))
            if not chunk:
                raise ConnectionError("closed by the broker")
            out += chunk
        return out

    def recv(self) -> Received:
        """The next packet, its body decoded."""
        (length,) = struct.unpack(">I", self._read(4))
        packet = decode(Packet, self._read(length))
        value = decode_value(packet.body) if packet.body else None
        return Received(packet.kind, packet.seq, packet.route, packet.code, packet.message, value)

    def recv_until(self, kind: int, limit: int = 10_000) -> Received:
        """Skip packets until one of ``kind`` arrives."""
        for _ in range(limit):
            packet = self.recv()
            if packet.kind == kind:
                return packet
        raise AssertionError(f"no packet of kind {kind} in {limit}")

    def request(self, route: str, body: Any = None) -> Received:
        """Send a REQUEST and return its RESPONSE or ERROR (pushes in between are skipped)."""
        seq = self.send(PacketKind.REQUEST, route, body if body is not None else {})
        while True:
            packet = self.recv()
            if packet.seq == seq and packet.kind in (PacketKind.RESPONSE, PacketKind.ERROR):
                return packet

    def login(self, user: str, password: str, route: str = "sso.login") -> dict[str, Any]:
        """Log in; return the reply (raise if refused)."""
        packet = self.request(route, {"user": user, "password": password})
        if packet.kind != PacketKind.RESPONSE:
            raise AssertionError(f"login refused: {packet.code} {packet.message}")
        return packet.value

    def closed(self) -> bool:
        """Whether the broker closed the connection (reads what is left first)."""
        try:
            while True:
                if not self.sock.recv(65536):
                    return True
        except TimeoutError:
            return False
        except OSError:
            return True

    def close(self) -> None:
        """Close the socket."""
        self.sock.close()
