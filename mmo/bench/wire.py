"""A lean codec of the client wire for the load generator.

The generator must stay cheap next to the servers it measures (they share the
machine), so it encodes and parses ``Packet`` frames and ``Value`` bodies by
hand with :mod:`struct` instead of building Thrift objects. The bytes are the
Thrift binary protocol exactly as :mod:`mmo.wire.codec` writes them (the unit
tests check both ways); anything this module does not expect is handed to the
real codec.
"""

from __future__ import annotations

import struct
from typing import Any, NamedTuple

from mmo.wire import decode_value, encode_value
from mmo.wire.gen.mmo.ttypes import PacketKind

__all__ = [
    "Frame",
    "encode_fast",
    "frame_packet",
    "parse_packet",
    "value_ts",
]

_I32 = struct.Struct(">i")
_I16 = struct.Struct(">h")
_I64 = struct.Struct(">q")
_DOUBLE = struct.Struct(">d")
_LEN = struct.Struct(">I")

# Thrift binary protocol type ids.
_T_BOOL, _T_DOUBLE, _T_I32, _T_I64, _T_STRING = 2, 4, 8, 10, 11

_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1


class Frame(NamedTuple):
    """The fields of a parsed ``Packet`` (``None`` where unset)."""

    kind: int
    seq: int | None
    route: str | None
    body: bytes | None
    code: int | None
    message: str | None


def _value(obj: Any, out: list[bytes]) -> None:
    # One Value struct: field header (type, id), the field, then STOP.
    if isinstance(obj, str):
        data = obj.encode()
        out.append(b"\x0b\x00\x05" + _LEN.pack(len(data)) + data + b"\x00")
    elif obj is True or obj is False:
        out.append(b"\x02\x00\x02\x01\x00" if obj else b"\x02\x00\x02\x00\x00")
    elif isinstance(obj, int) and _INT64_MIN <= obj <= _INT64_MAX:
        out.append(b"\x0a\x00\x03" + _I64.pack(obj) + b"\x00")
    elif isinstance(obj, float):
        out.append(b"\x04\x00\x04" + _DOUBLE.pack(obj) + b"\x00")
    elif isinstance(obj, dict):
        out.append(b"\x0d\x00\x08\x0b\x0c" + _LEN.pack(len(obj)))
        for key, item in obj.items():
            if not isinstance(key, str):
                raise TypeError("map keys must be strings")
            data = key.encode()
            out.append(_LEN.pack(len(data)) + data)
            _value(item, out)
        out.append(b"\x00")
    else:
        raise TypeError(type(obj).__name__)


def encode_fast(obj: Any) -> bytes:
    """Encode a Python value as a binary ``Value``, as :func:`mmo.wire.encode_value` does.

    Strings, booleans, 64-bit integers, floats and string-keyed maps of them
    take the fast path; anything else goes through the real codec.
    """
    out: list[bytes] = []
    try:
        _value(obj, out)
    except TypeError:
        return encode_value(obj)
    return b"".join(out)


def frame_packet(
    kind: int, seq: int | None = None, route: str | None = None, body: bytes | None = None
) -> bytes:
    """One length-prefixed ``Packet`` frame, ready to write to a broker."""
    parts = [b"\x08\x00\x01" + _I32.pack(kind)]
    if seq is not None:
        parts.append(b"\x08\x00\x02" + _I32.pack(seq))
    if route is not None:
        data = route.encode()
        parts.append(b"\x0b\x00\x03" + _LEN.pack(len(data)) + data)
    if body is not None:
        parts.append(b"\x0b\x00\x04" + _LEN.pack(len(body)) + body)
    parts.append(b"\x00")
    payload = b"".join(parts)
    return _LEN.pack(len(payload)) + payload


def parse_packet(data: bytes) -> Frame:
    """Parse one ``Packet`` (without its length prefix).

    Raises:
        ValueError: the bytes are not a ``Packet`` this client understands.
    """
    kind = seq = code = None
    route = message = None
    body: bytes | None = None
    pos = 0
    end = len(data)
    unpack_i32 = _I32.unpack_from
    try:
        while True:
            ftype = data[pos]
            if ftype == 0:
                break
            (fid,) = _I16.unpack_from(data, pos + 1)
            pos += 3
            if ftype == _T_I32:
                (number,) = unpack_i32(data, pos)
                pos += 4
                if fid == 1:
                    kind = number
                elif fid == 2:
                    seq = number
                elif fid == 5:
                    code = number
            elif ftype == _T_STRING:
                (length,) = unpack_i32(data, pos)
                pos += 4
                if length < 0 or pos + length > end:
                    raise ValueError("string past the end")
                chunk = data[pos : pos + length]
                pos += length
                if fid == 3:
                    route = chunk.decode()
                elif fid == 4:
                    body = chunk
                elif fid == 6:
                    message = chunk.decode(errors="replace")
            else:
                raise ValueError(f"unexpected field type {ftype} in a Packet")
    except (IndexError, struct.error, UnicodeDecodeError) as e:
        raise ValueError(f"malformed Packet: {e}") from e
    if kind is None:
        raise ValueError("Packet without a kind")
    return Frame(kind, seq, route, body, code, message)


#: The key ``"ts"`` of a map followed by a double Value's field header.
_TS_DOUBLE = b"\x00\x00\x00\x02ts\x04\x00\x04"


def value_ts(body: bytes) -> tuple[float | None, Any]:
    """The ``ts`` field of a map ``Value`` body, found without decoding the rest.

    Returns:
        ``(ts, None)`` when the body holds ``"ts"`` as a double, else
        ``(None, the decoded body)`` so that the caller can look further.
    """
    at = body.rfind(_TS_DOUBLE)
    if at >= 0 and at + 18 <= len(body):
        return _DOUBLE.unpack_from(body, at + 9)[0], None
    return None, decode_value(body)


#: Packet kinds, re-exported for the generator's hot paths.
REQUEST = PacketKind.REQUEST
NOTIFY = PacketKind.NOTIFY
RESPONSE = PacketKind.RESPONSE
PUSH = PacketKind.PUSH
ERROR = PacketKind.ERROR
HEARTBEAT = PacketKind.HEARTBEAT
KICK = PacketKind.KICK
