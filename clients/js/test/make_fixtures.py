"""Golden bytes for the JS SDK's tests, made by the Python implementation.

Run from the repository root (or with ``npm run fixtures`` in clients/js/):

    .venv/bin/python clients/js/test/make_fixtures.py

It writes clients/js/test/fixtures/*.json: values encoded by ``mmo.wire``, packets, the
frames ``mmo.client.protocol.ClientProtocol`` writes, structs of ``mmo.thrift``, the
``tcp-*`` examples of docs/protocol.md, and malformed inputs with the Python reader's
verdict. The JS tests check that the JS codec writes the same bytes and reads the same
values. Commit the JSON with this script.
"""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
sys.path.insert(0, str(ROOT))

from twisted.internet import task  # noqa: E402
from twisted.internet.testing import StringTransport  # noqa: E402

from mmo.client.protocol import ClientProtocol  # noqa: E402
from mmo.wire import WireError, decode, encode, encode_value, from_value  # noqa: E402
from mmo.wire.gen.mmo.ttypes import (  # noqa: E402
    ClientError,
    Header,
    Instance,
    Packet,
    PacketKind,
    Session,
    Value,
)

FIXTURES = HERE / "fixtures"


def tagged(v: Any) -> Any:
    """A Python value as typed JSON, so that JS can rebuild it exactly."""
    if v is None:
        return {"null": None}
    if v is True or v is False:
        return {"bool": v}
    if isinstance(v, int):
        return {"int": str(v)}
    if isinstance(v, float):
        if math.isnan(v):
            return {"double": "NaN"}
        if math.isinf(v):
            return {"double": "Infinity" if v > 0 else "-Infinity"}
        if v == 0 and math.copysign(1, v) < 0:
            return {"double": "-0"}
        return {"double": v}
    if isinstance(v, str):
        return {"str": v}
    if isinstance(v, bytes):
        return {"bytes": v.hex()}
    if isinstance(v, list):
        return {"list": [tagged(x) for x in v]}
    if isinstance(v, dict):
        return {"map": [[k, tagged(x)] for k, x in v.items()]}
    raise TypeError(type(v))


VALUES: list[tuple[str, Any]] = [
    ("null", None),
    ("true", True),
    ("false", False),
    ("zero", 0),
    ("one", 1),
    ("minus one", -1),
    ("i32 max + 1", 2**31),
    ("max safe integer", 2**53 - 1),
    ("past safe integers", 2**53 + 1),
    ("i64 min", -(2**63)),
    ("i64 max", 2**63 - 1),
    ("double", 1.5),
    ("integral double", 10.0),
    ("negative zero", -0.0),
    ("nan", float("nan")),
    ("infinity", float("inf")),
    ("minus infinity", float("-inf")),
    ("large double", 1e300),
    ("tiny double", 5e-324),
    ("empty string", ""),
    ("ascii", "hello"),
    ("unicode", "héllo ✓ 😀 日本"),
    ("empty bytes", b""),
    ("bytes", b"\x00\x01\xfe\xff"),
    ("empty list", []),
    ("mixed list", [1, "a", None, 2.5, True, b"\x07"]),
    ("empty map", {}),
    ("login body", {"user": "harry", "password": "hunter2"}),
    (
        "login reply",
        {
            "user_id": "harry",
            "name": "harry",
            "auth_token": "v1.WyJo.YzJs",
            "expires": 1767225600,
            "session_id": "Xq3vB9kLm2Tz8aWd",
            "token": "v1.WyJY.dG9r",
            "token_ttl": 86400.0,
            "heartbeat": 10.0,
        },
    ),
    ("nested", {"a": 1, "b": [True, {"c": b"x", "d": [[], {}]}], "e": None}),
    ("integer-like keys", {"10": 1, "2": 2, "b": 3}),
    ("chat message", {"room": "hall", "from": "harry", "content": "hello", "ts": 1767225600.5}),
]


def values() -> list[dict[str, Any]]:
    return [{"name": name, "value": tagged(v), "hex": encode_value(v).hex()} for name, v in VALUES]


def packet_json(p: Packet) -> dict[str, Any]:
    out: dict[str, Any] = {"kind": p.kind}
    for field in ("seq", "route", "code", "message", "trace"):
        value = getattr(p, field)
        if value is not None:
            out[field] = value
    if p.body is not None:
        out["body"] = p.body.hex()
    return out


PACKETS: list[tuple[str, Packet]] = [
    (
        "request",
        Packet(
            kind=PacketKind.REQUEST,
            seq=1,
            route="sso.login",
            body=encode_value({"user": "harry", "password": "hunter2"}),
        ),
    ),
    (
        "request with trace",
        Packet(
            kind=PacketKind.REQUEST,
            seq=2**31 - 1,
            route="chat.join",
            body=encode_value({"room": "hall"}),
            trace="my-trace_01",
        ),
    ),
    (
        "notify",
        Packet(kind=PacketKind.NOTIFY, route="chat.send", body=encode_value({"content": "hi"})),
    ),
    ("response", Packet(kind=PacketKind.RESPONSE, seq=7, body=encode_value(["harry", "hermione"]))),
    ("response without body", Packet(kind=PacketKind.RESPONSE, seq=8)),
    (
        "push",
        Packet(
            kind=PacketKind.PUSH,
            route="chat.message",
            body=encode_value({"room": "hall", "from": "harry", "content": "hello"}),
        ),
    ),
    (
        "error with seq",
        Packet(
            kind=PacketKind.ERROR,
            seq=2,
            code=ClientError.SERVICE_ERROR,
            message="AccountExists: user 'harry' already exists",
        ),
    ),
    (
        "error without seq",
        Packet(
            kind=PacketKind.ERROR,
            code=ClientError.BAD_REQUEST,
            message="chat.send: join a room first",
        ),
    ),
    ("heartbeat", Packet(kind=PacketKind.HEARTBEAT)),
    ("kick", Packet(kind=PacketKind.KICK, code=ClientError.KICKED, message="banned")),
    ("unicode message", Packet(kind=PacketKind.ERROR, seq=3, code=99, message="ünïcode ✓")),
]


def packets() -> list[dict[str, Any]]:
    return [{"name": name, "packet": packet_json(p), "hex": encode(p).hex()} for name, p in PACKETS]


def client_frames() -> list[dict[str, Any]]:
    """What the Python client itself writes on a TCP connection, action by action."""
    protocol = ClientProtocol(task.Clock())
    transport = StringTransport()
    protocol.makeConnection(transport)
    out: list[dict[str, Any]] = []

    def record(name: str, action: dict[str, Any]) -> None:
        out.append({"name": name, "action": action, "hex": transport.value().hex()})
        transport.clear()

    protocol.request("sso.login", {"user": "harry", "password": "hunter2"})
    record(
        "login request",
        {
            "op": "request",
            "route": "sso.login",
            "body": tagged({"user": "harry", "password": "hunter2"}),
            "seq": 1,
        },
    )
    protocol.request("chat.join", {"room": "hall"}, trace="abc-123")
    record(
        "request with a trace",
        {
            "op": "request",
            "route": "chat.join",
            "body": tagged({"room": "hall"}),
            "seq": 2,
            "trace": "abc-123",
        },
    )
    protocol.request("chat.leave")
    record("request without a body", {"op": "request", "route": "chat.leave", "seq": 3})
    protocol.request("blob.put", b"\x01\x02\x03", raw=True)
    record("raw request", {"op": "request", "route": "blob.put", "raw": "010203", "seq": 4})
    protocol.notify("chat.send", {"content": "hello", "ts": 1767225600.5})
    record(
        "notify",
        {
            "op": "notify",
            "route": "chat.send",
            "body": tagged({"content": "hello", "ts": 1767225600.5}),
        },
    )
    protocol.notify("chat.send")
    record("notify without a body", {"op": "notify", "route": "chat.send"})
    protocol.send_heartbeat()
    record("heartbeat", {"op": "heartbeat"})
    return out


SESSION = Session(
    id="s1",
    user_id="u1",
    broker="broker-1",
    props={"level": Value(int_value=3), "name": Value(string_value="x")},
)


def structs() -> list[dict[str, Any]]:
    header = Header(
        kind=1,
        call_id=2**40 + 5,
        service_name="chat",
        method="join",
        timeout_ms=5000,
        caller="broker-1",
        session=SESSION,
        one_way=True,
        targets=["s1", "s2"],
        client_seq=7,
        caller_role="broker",
        origin=2,
        peer="127.0.0.1",
        trace_id="t-1",
        traced=False,
    )
    instance = Instance(
        service_name="chat",
        instance_id="chat-1",
        endpoints={"rep": "tcp://127.0.0.1:5501", "pull": "tcp://127.0.0.1:5502"},
        meta={
            "load": Value(double_value=0.25),
            "methods": Value(list_value=[Value(string_value="join")]),
        },
        ttl_ms=4000,
    )
    session_js = {
        "id": "s1",
        "user_id": "u1",
        "broker": "broker-1",
        "props": {"level": 3, "name": "x"},
    }
    return [
        {"name": "Session", "js": session_js, "hex": encode(SESSION).hex()},
        {
            "name": "Header",
            "js": {
                "kind": 1,
                "call_id": 2**40 + 5,
                "service_name": "chat",
                "method": "join",
                "timeout_ms": 5000,
                "caller": "broker-1",
                "session": session_js,
                "one_way": True,
                "targets": ["s1", "s2"],
                "client_seq": 7,
                "caller_role": "broker",
                "origin": 2,
                "peer": "127.0.0.1",
                "trace_id": "t-1",
                "traced": False,
            },
            "hex": encode(header).hex(),
        },
        {
            "name": "Instance",
            "js": {
                "service_name": "chat",
                "instance_id": "chat-1",
                "endpoints": {"rep": "tcp://127.0.0.1:5501", "pull": "tcp://127.0.0.1:5502"},
                "meta": {"load": 0.25, "methods": ["join"]},
                "ttl_ms": 4000,
            },
            "hex": encode(instance).hex(),
        },
    ]


def enums() -> dict[str, Any]:
    return {
        "PacketKind": dict(PacketKind._NAMES_TO_VALUES),
        "ClientError": dict(ClientError._NAMES_TO_VALUES),
    }


EXAMPLE = re.compile(r"<!-- example: (tcp-[a-z-]+) -->\s*```text\n(.*?)```", re.S)
HEX_LINE = re.compile(r"^((?:[0-9a-f]{2} )*[0-9a-f]{2})(?:\s{2,}|\s*$)")


def doc_examples() -> list[dict[str, Any]]:
    """The hex dumps of docs/protocol.md 5.10, checked against the Python codec."""
    text = (ROOT / "docs" / "protocol.md").read_text(encoding="utf-8")
    out = []
    for name, block in EXAMPLE.findall(text):
        data = bytes.fromhex(
            "".join(
                m.group(1).replace(" ", "")
                for line in block.splitlines()
                if (m := HEX_LINE.match(line))
            )
        )
        length = int.from_bytes(data[:4], "big")
        assert length == len(data) - 4, (name, length, len(data))
        packet = decode(Packet, data[4:])
        assert encode(packet) == data[4:], name
        entry: dict[str, Any] = {"name": name, "hex": data.hex(), "packet": packet_json(packet)}
        if packet.body:
            entry["body"] = tagged(from_value(decode(Value, packet.body)))
        out.append(entry)
    return out


def verdict(kind: str, data: bytes) -> dict[str, Any]:
    try:
        if kind == "Value":
            return {"ok": True, "value": tagged(from_value(decode(Value, data)))}
        return {"ok": True, "packet": packet_json(decode(Packet, data))}
    except WireError as e:
        return {"ok": False, "error": str(e)}


MALFORMED: list[tuple[str, str, str]] = [
    ("empty input", "Value", ""),
    ("no field set", "Value", "00"),
    ("truncated string", "Value", "0b00050000000568 69"),
    ("negative string length", "Value", "0b0005ffffffff00"),
    ("string over 16 MiB", "Value", "0b00050100000100"),
    ("list over 1048576 elements", "Value", "0f00070c0010000100"),
    ("list of the wrong element type", "Value", "0f000708000000010000000100"),
    ("empty list of another element type", "Value", "0f0007080000000000"),
    ("empty map of other types", "Value", "0d000808080000000000"),
    ("map of the wrong types", "Value", "0d000808080000000100000001000000020000"),
    ("bool byte 2 reads false", "Value", "0200020200"),
    ("bool byte 1 reads true", "Value", "0200020100"),
    ("null set to false is null", "Value", "0200010000"),
    ("unknown field skipped", "Value", "080009000000010b0005000000026869 00"),
    ("unknown struct field skipped", "Value", "0c0063 0800010000000100 0b000500000001 41 00"),
    ("field of the wrong type skipped", "Value", "08000500000001 0200020100"),
    ("only a field of the wrong type", "Value", "0800050000000100"),
    ("string wins over int", "Value", "0a00030000000000000005 0b0005000000017a 00"),
    ("int wins over bool", "Value", "020002 01 0a00030000000000000009 00"),
    ("bytes after the stop ignored", "Value", "0200020100 ffffff"),
    ("unknown type id", "Value", "090063000000 00"),
    ("invalid utf-8 replaced", "Value", "0b000500000002c328 00"),
    ("packet: empty", "Packet", ""),
    ("packet: no kind", "Packet", "080002000000 0100"),
    ("packet: kind of the wrong type", "Packet", "0b00010000000141 00"),
    ("packet: duplicate kind, last wins", "Packet", "08000100000006 08000100000005 00"),
    ("packet: unknown field", "Packet", "08000100000006 0b0063000000024142 00"),
    ("packet: truncated", "Packet", "080001000000"),
]


def malformed() -> list[dict[str, Any]]:
    out = []
    for name, kind, text in MALFORMED:
        data = bytes.fromhex(text.replace(" ", ""))
        out.append({"name": name, "type": kind, "hex": data.hex(), **verdict(kind, data)})
    return out


def main() -> None:
    FIXTURES.mkdir(exist_ok=True)
    files = {
        "values.json": values(),
        "packets.json": packets(),
        "client_frames.json": client_frames(),
        "structs.json": structs(),
        "enums.json": enums(),
        "doc_examples.json": doc_examples(),
        "malformed.json": malformed(),
    }
    for name, content in files.items():
        path = FIXTURES / name
        path.write_text(json.dumps(content, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        print(f"wrote {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
