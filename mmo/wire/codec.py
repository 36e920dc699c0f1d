"""Encoding of Thrift structs and of the generic dynamic ``Value``.

Python values map onto ``Value`` as JSON-like data does: ``None``, ``bool``,
``int`` (64-bit), ``float``, ``str``, ``bytes``, lists (tuples too) and dicts
with ``str`` keys. Anything else is a :class:`WireError`, as is any malformed
input when decoding: the caller turns it into a clear error, never a crash.
"""

from __future__ import annotations

from typing import Any, TypeVar

from thrift.protocol.fastbinary import decode_binary, encode_binary
from thrift.transport.TTransport import TMemoryBuffer

from mmo.wire.gen.mmo.ttypes import Value

T = TypeVar("T")

#: Limits applied while decoding, so a hostile length prefix cannot make us allocate.
MAX_STRING = 16 * 1024 * 1024
MAX_CONTAINER = 1024 * 1024
#: Deepest Value nesting accepted (Thrift itself refuses 64 nested structs, and a
#: Value may sit inside a Header or an Instance).
MAX_DEPTH = 48

_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1


class _Reader:
    """What fastbinary reads of a protocol: its transport and its limits."""

    __slots__ = ("container_length_limit", "string_length_limit", "trans")

    def __init__(self, trans: TMemoryBuffer) -> None:
        self.trans = trans
        self.string_length_limit = MAX_STRING
        self.container_length_limit = MAX_CONTAINER


class WireError(ValueError):
    """A value cannot be encoded, or bytes cannot be decoded."""


def encode(struct: Any) -> bytes:
    """Serialize a generated Thrift struct with the binary protocol (in C)."""
    try:
        return encode_binary(struct, [struct.__class__, struct.thrift_spec])
    except Exception as e:
        raise WireError(f"cannot encode {type(struct).__name__}: {e}") from e


def decode(cls: type[T], data: bytes) -> T:
    """Deserialize ``data`` into a new ``cls``; raise :class:`WireError` if malformed."""
    obj = cls()
    try:
        decode_binary(obj, _Reader(TMemoryBuffer(data)), [cls, cls.thrift_spec])  # type: ignore[attr-defined]
    except Exception as e:
        raise WireError(f"malformed {cls.__name__}: {e}") from e
    return obj


def to_value(obj: Any, _depth: int = 0) -> Value:
    """Convert a Python value into a Thrift ``Value``."""
    if _depth >= MAX_DEPTH:
        raise WireError("value nested too deeply")
    if obj is None:
        return Value(null_value=True)
    if obj is True or obj is False:
        return Value(bool_value=obj)
    if isinstance(obj, int):
        if not _INT64_MIN <= obj <= _INT64_MAX:
            raise WireError(f"integer {obj} does not fit in 64 bits")
        return Value(int_value=obj)
    if isinstance(obj, float):
        return Value(double_value=obj)
    if isinstance(obj, str):
        return Value(string_value=obj)
    if isinstance(obj, bytes | bytearray | memoryview):
        return Value(bytes_value=bytes(obj))
    if isinstance(obj, list | tuple):
        return Value(list_value=[to_value(item, _depth + 1) for item in obj])
    if isinstance(obj, dict):
        out = {}
        for key, item in obj.items():
            if not isinstance(key, str):
                raise WireError(f"map keys must be strings, not {type(key).__name__}")
            out[key] = to_value(item, _depth + 1)
        return Value(map_value=out)
    raise WireError(f"cannot encode a {type(obj).__name__}")


def from_value(value: Value, _depth: int = 0) -> Any:
    """Convert a Thrift ``Value`` back into a Python value."""
    if _depth >= MAX_DEPTH:
        raise WireError("value nested too deeply")
    if value.string_value is not None:
        return value.string_value
    if value.int_value is not None:
        return value.int_value
    if value.map_value is not None:
        return {k: from_value(v, _depth + 1) for k, v in value.map_value.items()}
    if value.list_value is not None:
        return [from_value(v, _depth + 1) for v in value.list_value]
    if value.bool_value is not None:
        return value.bool_value
    if value.double_value is not None:
        return value.double_value
    if value.bytes_value is not None:
        return value.bytes_value
    if value.null_value is not None:
        return None
    raise WireError("empty Value: no field is set")


def encode_value(obj: Any) -> bytes:
    """Encode a Python value as a binary-protocol ``Value``."""
    return encode(to_value(obj))


def decode_value(data: bytes) -> Any:
    """Decode a binary-protocol ``Value`` into a Python value."""
    return from_value(decode(Value, data))
