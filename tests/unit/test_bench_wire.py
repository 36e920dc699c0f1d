"""The load generator's hand-written codec writes and reads exactly what mmo.wire does."""

from __future__ import annotations

from argparse import Namespace

import pytest

from mmo.bench.stats import percentile
from mmo.bench.wire import encode_fast, frame_packet, parse_packet, value_ts
from mmo.cli.bench import plan
from mmo.wire import encode, encode_value
from mmo.wire.gen.mmo.ttypes import Packet, PacketKind


@pytest.mark.parametrize(
    "value",
    [
        {"seq": 12345, "data": "x" * 64},
        {"content": "m" * 32, "ts": 1234.5},
        {"a": True, "b": False, "c": -(2**63), "d": {"e": "é"}, "f": 2**63 - 1},
        {},
        "text",
        7,
        2.5,
        None,
        [1, "two"],
        b"bytes",
        {"nested": [1, {"k": None}]},
    ],
)
def test_values_encode_as_the_codec_does(value):
    """encode_fast gives the codec's bytes (falling back to it for what it does not handle)."""
    assert encode_fast(value) == encode_value(value)


@pytest.mark.parametrize(
    "fields",
    [
        {"kind": PacketKind.REQUEST, "seq": 5, "route": "chat.echo", "body": b"\x01\x02"},
        {"kind": PacketKind.NOTIFY, "route": "chat.send", "body": encode_value({"x": 1})},
        {"kind": PacketKind.HEARTBEAT},
    ],
)
def test_frames_are_length_prefixed_packets(fields):
    """frame_packet writes a 4-byte length, then the Packet the codec would write."""
    framed = frame_packet(
        fields["kind"], fields.get("seq"), fields.get("route"), fields.get("body")
    )
    data = encode(Packet(**fields))
    assert framed == len(data).to_bytes(4, "big") + data


def test_packets_parse_as_the_codec_wrote_them():
    """parse_packet reads every Packet field the broker sends."""
    error = parse_packet(encode(Packet(kind=PacketKind.ERROR, seq=3, code=4, message="no é")))
    assert (error.kind, error.seq, error.code, error.message) == (PacketKind.ERROR, 3, 4, "no é")
    body = encode_value({"room": "r", "from": "b1", "content": "m", "ts": 12.5})
    push = parse_packet(encode(Packet(kind=PacketKind.PUSH, route="chat.message", body=body)))
    assert (push.kind, push.route, push.body, push.seq) == (
        PacketKind.PUSH,
        "chat.message",
        body,
        None,
    )
    assert value_ts(body) == (12.5, None)


def test_a_body_without_a_double_ts_is_decoded_instead():
    """value_ts hands back the decoded body when it holds no double ts."""
    assert value_ts(encode_value({"ts": 3})) == (None, {"ts": 3})


@pytest.mark.parametrize(
    "data", [b"", b"\x08\x00\x01", b"\x0b\x00\x03\x00\x00\x00\x09ab\x00", b"\x00"]
)
def test_malformed_packets_are_refused(data):
    """Truncated bytes or a Packet without a kind raise ValueError."""
    with pytest.raises(ValueError):
        parse_packet(data)


def test_percentiles_are_nearest_rank():
    """sorted[ceil(q * n) - 1]."""
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.5) == 50.0
    assert percentile(values, 0.99) == 99.0
    assert percentile([1.0, 2.0], 0.9) == 2.0


def test_all_runs_the_floor_first_and_w1_brings_the_floor():
    """`all` is floor, w1, w2, w3; `w1` runs the floor first unless --no-floor."""
    assert plan(Namespace(workload="all", no_floor=False)) == ["floor", "w1", "w2", "w3"]
    assert plan(Namespace(workload="w1", no_floor=False)) == ["floor", "w1"]
    assert plan(Namespace(workload="w1", no_floor=True)) == ["w1"]
    assert plan(Namespace(workload="w3", no_floor=False)) == ["w3"]
