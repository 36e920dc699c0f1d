"""The wire codec: dynamic ``Value`` round trips, rejection of bad input, struct encoding."""

from __future__ import annotations

import contextlib
import datetime
import decimal
import math
import struct
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mmo.wire import WireError, decode, decode_value, encode, encode_value, from_value, to_value
from mmo.wire.codec import MAX_CONTAINER, MAX_DEPTH, MAX_STRING
from mmo.wire.gen.mmo.ttypes import (
    Change,
    ErrorCode,
    Header,
    Instance,
    Kind,
    RegistryMessage,
    RegistryOp,
    Session,
    Value,
)

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1

# Thrift binary protocol type ids and the field ids of ``Value`` used to forge bytes.
T_STRING, T_STRUCT, T_MAP, T_LIST = 11, 12, 13, 15
F_STRING, F_LIST, F_MAP = 5, 7, 8

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=INT64_MIN, max_value=INT64_MAX)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.binary(max_size=20)
)
values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


def same(a: Any, b: Any) -> bool:
    """Equality that also tells bool from int, 0.0 from -0.0 and NaN from everything but NaN."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        if math.isnan(a):
            return math.isnan(b)
        return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return bool(a == b)


def nested_lists(depth: int) -> Any:
    """A value made of ``depth`` lists, one inside the other, around an int."""
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


# -- round trips ---------------------------------------------------------------


@settings(deadline=None)
@given(values)
def test_value_round_trip(value: Any) -> None:
    """Any supported value comes back from encode/decode with the same types and contents."""
    assert same(decode_value(encode_value(value)), value)


@pytest.mark.parametrize(
    "value",
    [None, True, False, 0, 1, INT64_MIN, INT64_MAX, 0.0, -0.0, math.inf, -math.inf, "", b""],
)
def test_scalar_edges_round_trip(value: Any) -> None:
    """Extreme and empty scalars (int64 bounds, infinities, -0.0, empty str/bytes) survive."""
    assert same(decode_value(encode_value(value)), value)


def test_nan_round_trips_as_nan() -> None:
    """NaN, alone and nested, decodes as a float NaN (it cannot compare equal to itself)."""
    out = decode_value(encode_value({"x": [math.nan]}))
    assert isinstance(out["x"][0], float)
    assert math.isnan(out["x"][0])


def test_bool_is_not_confused_with_int() -> None:
    """``True`` decodes as a bool and ``1`` as an int, not one as the other."""
    assert decode_value(encode_value([True, 1, False, 0])) == [True, 1, False, 0]
    assert [type(v) for v in decode_value(encode_value([True, 1, False, 0]))] == [
        bool,
        int,
        bool,
        int,
    ]


def test_tuples_and_byte_likes_decode_as_list_and_bytes() -> None:
    """Tuples come back as lists; bytearray and memoryview come back as bytes."""
    out = decode_value(
        encode_value({"t": (1, "a"), "ba": bytearray(b"xy"), "mv": memoryview(b"z")})
    )
    assert same(out, {"t": [1, "a"], "ba": b"xy", "mv": b"z"})


def test_unicode_text_round_trips() -> None:
    """Non-ASCII text (accents, CJK, emoji) survives encoding as UTF-8."""
    text = "héllo 世界 🎮"
    assert decode_value(encode_value({text: text})) == {text: text}


# -- values the codec refuses ----------------------------------------------------


@given(st.integers(min_value=INT64_MAX + 1) | st.integers(max_value=INT64_MIN - 1))
def test_int_outside_int64_is_refused(number: int) -> None:
    """An integer that does not fit in 64 bits is a WireError, not a silent wrap-around."""
    with pytest.raises(WireError, match="64 bits"):
        encode_value(number)


@pytest.mark.parametrize("key", [1, b"k", None, (1, 2), 1.5, True])
def test_non_str_dict_key_is_refused(key: Any) -> None:
    """A map key that is not a str is a WireError, also when nested inside a list."""
    with pytest.raises(WireError, match="keys must be strings"):
        encode_value({key: 1})
    with pytest.raises(WireError, match="keys must be strings"):
        encode_value([{"ok": {key: 1}}])


@pytest.mark.parametrize(
    "value",
    [object(), {1, 2}, frozenset(), 1j, decimal.Decimal("1.5"), datetime.date(2024, 1, 1), len],
)
def test_unsupported_type_is_refused(value: Any) -> None:
    """A value of a type the wire cannot carry is a WireError naming the type."""
    with pytest.raises(WireError, match=type(value).__name__):
        encode_value(value)
    with pytest.raises(WireError):
        encode_value({"nested": [value]})


def test_too_deep_value_is_refused() -> None:
    """A value nested far deeper than the limit is a WireError, not a RecursionError."""
    with pytest.raises(WireError, match="nested too deeply"):
        to_value(nested_lists(500))


@pytest.mark.parametrize("value", ["\ud800", {"\udc80": 1}, ["ok", "bad \udfff"]])
def test_unencodable_text_is_refused(value: Any) -> None:
    """Text with a lone surrogate (not UTF-8 encodable), as value or key, is a WireError."""
    with pytest.raises(WireError):
        encode_value(value)


@pytest.mark.parametrize("wrap", [lambda v: [v], lambda v: {"k": v}])
def test_every_depth_accepted_is_decodable(wrap: Any) -> None:
    """Each nesting depth encode accepts also decodes; one level more is a WireError."""
    value: Any = 1
    for depth in range(MAX_DEPTH + 2):
        try:
            data = encode_value(value)
        except WireError:
            break
        assert same(decode_value(data), value), f"depth {depth}"
        deepest, value = value, wrap(value)
    else:
        pytest.fail("no depth limit on encoding")
    assert depth >= 32  # deep enough for real game data
    # The deepest value also travels inside the structs that carry Values.
    message = RegistryMessage(
        op=RegistryOp.SNAPSHOT,
        instances=[Instance(service_name="s", instance_id="i", meta={"deep": to_value(deepest)})],
    )
    assert decode(RegistryMessage, encode(message)) == message


def test_empty_value_is_refused() -> None:
    """A ``Value`` with no field set (a malformed peer message) is a WireError."""
    with pytest.raises(WireError, match="no field"):
        from_value(Value())
    with pytest.raises(WireError):
        decode_value(encode(Value(list_value=[Value()])))


# -- hostile bytes ---------------------------------------------------------------


@settings(deadline=None, max_examples=300)
@given(st.binary(max_size=200))
def test_random_bytes_raise_only_wire_error(data: bytes) -> None:
    """Decoding arbitrary bytes as a Value either succeeds or raises WireError, nothing else."""
    with contextlib.suppress(WireError):
        decode_value(data)


@settings(deadline=None)
@given(st.binary(max_size=200), st.sampled_from([Header, RegistryMessage, Instance, Session]))
def test_random_bytes_as_struct_raise_only_wire_error(data: bytes, cls: type) -> None:
    """Decoding arbitrary bytes as any wire struct either succeeds or raises WireError."""
    with contextlib.suppress(WireError):
        decode(cls, data)


@settings(deadline=None)
@given(values, st.data())
def test_truncated_encoding_is_wire_error(value: Any, data: st.DataObject) -> None:
    """Every proper prefix of a valid encoding is rejected with WireError."""
    encoded = encode_value(value)
    cut = data.draw(st.integers(min_value=0, max_value=len(encoded) - 1))
    with pytest.raises(WireError):
        decode_value(encoded[:cut])


def _fails_fast(data: bytes) -> str:
    start = time.monotonic()
    with pytest.raises(WireError) as info:
        decode_value(data)
    assert time.monotonic() - start < 0.5
    return str(info.value)


@pytest.mark.parametrize("length", [MAX_STRING + 1, 2**31 - 1])
def test_huge_string_length_prefix_fails_fast(length: int) -> None:
    """A string claiming a length over the limit is refused at once, without allocating it."""
    message = _fails_fast(struct.pack(">bhi", T_STRING, F_STRING, length) + b"x")
    assert "limit" in message


@pytest.mark.parametrize("length", [MAX_CONTAINER + 1, 2**31 - 1])
def test_huge_container_length_prefix_fails_fast(length: int) -> None:
    """A list or map claiming more items than the limit is refused at once."""
    assert "limit" in _fails_fast(struct.pack(">bhbi", T_LIST, F_LIST, T_STRUCT, length))
    # Thrift's C decoder reports an oversized map with a vaguer message; it is refused all the same.
    _fails_fast(struct.pack(">bhbbi", T_MAP, F_MAP, T_STRING, T_STRUCT, length))


def test_length_prefix_beyond_data_fails_fast() -> None:
    """A length within the limits but longer than the bytes present is a WireError, quickly."""
    _fails_fast(struct.pack(">bhbi", T_LIST, F_LIST, T_STRUCT, MAX_CONTAINER))
    _fails_fast(struct.pack(">bhi", T_STRING, F_STRING, MAX_STRING) + b"abc")


def test_negative_length_prefix_is_wire_error() -> None:
    """A negative length prefix is a WireError."""
    _fails_fast(struct.pack(">bhi", T_STRING, F_STRING, -5))


def test_deeply_nested_bytes_are_wire_error() -> None:
    """Bytes nesting lists 100 000 deep are refused with WireError instead of blowing the stack."""
    depth = 100_000
    data = struct.pack(">bhbi", T_LIST, F_LIST, T_STRUCT, 1) * depth + b"\x00" * (depth + 1)
    _fails_fast(data)


# -- structs ---------------------------------------------------------------------


def test_header_round_trip() -> None:
    """A fully populated Header (with a session and its props) decodes equal to the original."""
    header = Header(
        kind=Kind.REQUEST,
        call_id=2**40,
        service_name="chat",
        method="send",
        timeout_ms=1500,
        caller="broker-1",
        session=Session(id="s-1", user_id="u-7", broker="b-2", props={"room": to_value("lobby")}),
        topic="chat.lobby",
    )
    out = decode(Header, encode(header))
    assert out == header
    assert from_value(out.session.props["room"]) == "lobby"


def test_error_header_round_trip() -> None:
    """An ERROR header keeps its code, type and message."""
    header = Header(
        kind=Kind.ERROR,
        call_id=9,
        error_code=ErrorCode.UNKNOWN_METHOD,
        error_type="UnknownMethod",
        error_message="no such method 'x'",
    )
    out = decode(Header, encode(header))
    assert (out.kind, out.error_code, out.error_type, out.error_message) == (
        Kind.ERROR,
        ErrorCode.UNKNOWN_METHOD,
        "UnknownMethod",
        "no such method 'x'",
    )
    assert out.session is None and out.method is None


def test_registry_message_round_trip() -> None:
    """A SNAPSHOT and an UPDATE, with instances, endpoints and meta, decode equal."""
    instance = Instance(
        service_name="echo",
        instance_id="echo-1",
        endpoints={"rep": "tcp://127.0.0.1:5501", "pub": "tcp://127.0.0.1:5502"},
        meta={"methods": to_value(["echo", "sleep"]), "load": to_value(0.5)},
        ttl_ms=3000,
    )
    snapshot = RegistryMessage(
        op=RegistryOp.SNAPSHOT,
        request_id=7,
        instances=[instance, Instance(service_name="sso", instance_id="sso-1")],
        seq=41,
        yellow_id="y-1",
    )
    update = RegistryMessage(
        op=RegistryOp.UPDATE,
        seq=42,
        yellow_id="y-1",
        change=Change.DOWN,
        instance=instance,
        reason="expired",
    )
    assert decode(RegistryMessage, encode(snapshot)) == snapshot
    assert decode(RegistryMessage, encode(update)) == update
