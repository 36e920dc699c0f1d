"""The wire: Thrift types between processes and their encoding (see docs/protocol.md)."""

from mmo.wire.codec import (
    WireError,
    decode,
    decode_value,
    encode,
    encode_value,
    from_value,
    to_value,
)

__all__ = [
    "WireError",
    "decode",
    "decode_value",
    "encode",
    "encode_value",
    "from_value",
    "to_value",
]
