// The codec: Value, Packet, structs and TCP framing, against bytes made by the Python side.
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import {
  Double,
  FrameDecoder,
  PacketKind,
  PacketStruct,
  ThriftWriter,
  TType,
  WireError,
  decodePacket,
  decodeValue,
  defineStruct,
  double,
  encodePacket,
  encodeValue,
  frame,
} from "../dist/index.js";
import { fixture, fromTagged, hex, plain, unhex } from "./helpers.mjs";

const STRICT = { int64: "bigint", doubles: "wrap", maps: "map" };

function packetFrom(json) {
  const packet = { ...json };
  if (packet.kind === null) delete packet.kind;
  if (json.body !== undefined) packet.body = unhex(json.body);
  return packet;
}

describe("Value: golden bytes from mmo.wire", () => {
  for (const { name, value, hex: expected } of fixture("values")) {
    test(`${name}: encodes to Python's bytes`, () => {
      assert.equal(hex(encodeValue(fromTagged(value))), expected);
      const asObject = hex(encodeValue(fromTagged(value, { maps: "object" })));
      // A JS object puts integer-like keys first: a Map keeps the order of the keys.
      if (name === "integer-like keys") assert.notEqual(asObject, expected);
      else assert.equal(asObject, expected);
    });
    test(`${name}: decodes to the same value`, () => {
      assert.deepEqual(decodeValue(unhex(expected), STRICT), fromTagged(value));
      assert.deepEqual(decodeValue(unhex(expected)), plain(value));
    });
  }

  test("plain JavaScript encodes as Python's values do", () => {
    const same = (js, py) => assert.equal(hex(encodeValue(js)), hex(encodeValue(py)));
    same(1, 1n);
    same(-7, -7n);
    same(1.5, double(1.5));
    same(NaN, double(NaN));
    same(-0, double(-0));
    same(2 ** 60, double(2 ** 60)); // past safe integers: a double
    same(undefined, null);
    same([undefined], [null]);
    same({ a: 1, gone: undefined }, { a: 1 });
    same(new Map([["a", 1]]), { a: 1 });
    same(new Uint16Array([1]).subarray(0, 1), new Uint8Array(new Uint16Array([1]).buffer));
    same(new Uint8Array([1, 2]).buffer, new Uint8Array([1, 2]));
    same(Buffer.from("hi"), new Uint8Array([104, 105]));
    same(Object.assign(Object.create(null), { x: true }), { x: true });
  });

  test("what has no Value is a WireError", () => {
    for (const bad of [() => 1, Symbol("s"), new Date(0), new (class Thing {})(), new Map([[1, "a"]]), 2n ** 63n, -(2n ** 63n) - 1n]) {
      assert.throws(() => encodeValue(bad), WireError, String(bad?.toString?.()));
    }
    const cyclic = {};
    cyclic.self = cyclic;
    assert.throws(() => encodeValue(cyclic), /nested too deeply/);
  });

  test("decode options: bigints, wrapped doubles, Maps", () => {
    const data = encodeValue({ n: 5n, d: double(2), big: 2n ** 60n });
    assert.deepEqual(decodeValue(data), { n: 5, d: 2, big: 2n ** 60n });
    assert.deepEqual(decodeValue(data, { int64: "bigint" }), { n: 5n, d: 2, big: 2n ** 60n });
    assert.deepEqual(decodeValue(data, { int64: "number" }), { n: 5, d: 2, big: 2 ** 60 });
    assert.deepEqual(decodeValue(data, { doubles: "wrap" }).d, new Double(2));
    assert.ok(decodeValue(data, { maps: "map" }) instanceof Map);
  });

  test("a __proto__ key is an own key, not the prototype", () => {
    const value = decodeValue(encodeValue(new Map([["__proto__", { polluted: true }]])));
    assert.equal(Object.getPrototypeOf(value), Object.prototype);
    assert.deepEqual(Object.keys(value), ["__proto__"]);
    assert.equal({}.polluted, undefined);
  });

  test("Double is a number for arithmetic and JSON", () => {
    assert.equal(double(2.5) * 2, 5);
    assert.equal(JSON.stringify({ x: double(3) }), '{"x":3}');
  });
});

describe("decode limits (docs/protocol.md 1.3)", () => {
  function nested(depth) {
    let v = null;
    for (let i = 1; i < depth; i++) v = [v];
    return v;
  }
  function nestedBytes(depth) {
    // Written by hand, past the writer's own limit.
    const w = new ThriftWriter(64, 1000);
    const open = (n) => {
      w.enterStruct();
      if (n === 1) {
        w.fieldBegin(TType.BOOL, 1);
        w.bool(true);
      } else {
        w.fieldBegin(TType.LIST, 7);
        w.listBegin(TType.STRUCT, 1);
        open(n - 1);
      }
      w.stop();
      w.exitStruct();
    };
    open(depth);
    return w.finish();
  }

  test("64 nested Values pass, 65 are refused both ways", () => {
    assert.equal(hex(encodeValue(nested(64))), hex(nestedBytes(64)));
    assert.deepEqual(decodeValue(nestedBytes(64)), nested(64));
    assert.throws(() => encodeValue(nested(65)), /nested too deeply/);
    assert.throws(() => decodeValue(nestedBytes(65)), /nested too deeply/);
    assert.throws(() => decodeValue(nestedBytes(5), { limits: { maxDepth: 4 } }), WireError);
  });

  test("strings over the limit are refused before reading them", () => {
    const data = encodeValue("x".repeat(100));
    assert.equal(decodeValue(data, { limits: { maxString: 100 } }).length, 100);
    assert.throws(() => decodeValue(data, { limits: { maxString: 99 } }), /over the limit/);
    // A 2 GiB length prefix with nothing behind it: refused, nothing allocated.
    assert.throws(() => decodeValue(unhex("0b00057fffffff")), /over the limit/);
  });

  test("containers over the limit are refused before reading them", () => {
    const data = encodeValue([1, 2, 3]);
    assert.deepEqual(decodeValue(data, { limits: { maxContainer: 3 } }), [1, 2, 3]);
    assert.throws(() => decodeValue(data, { limits: { maxContainer: 2 } }), /over the limit/);
    assert.throws(() => decodeValue(unhex("0d00080b0c7fffffff")), /over the limit/);
  });

  test("truncated input is a WireError", () => {
    const data = encodeValue({ a: "hello" });
    for (let n = 0; n < data.length; n++) {
      assert.throws(() => decodeValue(data.subarray(0, n)), WireError, `cut at ${n}`);
    }
  });
});

describe("malformed input: the same verdicts as the Python reader", () => {
  for (const entry of fixture("malformed")) {
    test(entry.name, () => {
      const data = unhex(entry.hex);
      const read = () => (entry.type === "Value" ? decodeValue(data) : decodePacket(data));
      if (!entry.ok) {
        assert.throws(read, WireError);
        return;
      }
      if (entry.type === "Value") assert.deepEqual(read(), plain(entry.value));
      else assert.deepEqual(read(), packetFrom(entry.packet));
    });
  }
});

describe("Packet: golden bytes", () => {
  for (const { name, packet, hex: expected } of fixture("packets")) {
    test(name, () => {
      assert.equal(hex(encodePacket(packetFrom(packet))), expected);
      assert.deepEqual(decodePacket(unhex(expected)), packetFrom(packet));
    });
  }

  test("the examples of docs/protocol.md 5.10, frame and all", () => {
    const examples = fixture("doc_examples");
    assert.deepEqual(
      examples.map((e) => e.name),
      ["tcp-login-request", "tcp-login-response", "tcp-login-refused", "tcp-heartbeat"],
    );
    for (const { name, hex: expected, packet, body } of examples) {
      const decoder = new FrameDecoder();
      const frames = decoder.push(unhex(expected));
      assert.equal(frames.length, 1, name);
      const decoded = decodePacket(frames[0]);
      assert.deepEqual(decoded, packetFrom(packet), name);
      if (body !== undefined) {
        assert.deepEqual(decodeValue(decoded.body, STRICT), fromTagged(body), name);
        assert.equal(hex(encodeValue(fromTagged(body))), packet.body, name);
      }
      assert.equal(hex(frame(encodePacket(decoded))), expected, name);
    }
  });

  test("the login request of 5.10 from plain JavaScript", () => {
    const body = encodeValue({ user: "harry", password: "hunter2" });
    const bytes = frame(encodePacket({ kind: PacketKind.REQUEST, seq: 1, route: "sso.login", body }));
    assert.equal(hex(bytes), fixture("doc_examples")[0].hex);
  });

  test("a packet needs a kind; i32 fields must fit", () => {
    assert.throws(() => encodePacket({ seq: 1 }), /Packet.kind is required/);
    assert.throws(() => encodePacket({ kind: 1, seq: 2 ** 31 }), WireError);
    assert.throws(() => encodePacket({ kind: 1, route: 5 }), /expected string/);
  });
});

describe("structs described by a schema: mmo.thrift's, as Python encodes them", () => {
  const Value = "value";
  const Session = defineStruct("Session", [
    { id: 1, name: "id", type: "string", required: true },
    { id: 2, name: "user_id", type: "string" },
    { id: 3, name: "broker", type: "string" },
    { id: 4, name: "props", type: { map: ["string", Value] } },
  ]);
  const Header = defineStruct("Header", [
    { id: 1, name: "kind", type: "i32", required: true },
    { id: 2, name: "call_id", type: "i64" },
    { id: 3, name: "service_name", type: "string" },
    { id: 4, name: "method", type: "string" },
    { id: 5, name: "timeout_ms", type: "i32" },
    { id: 6, name: "caller", type: "string" },
    { id: 7, name: "session", type: { struct: Session } },
    { id: 8, name: "error_code", type: "i32" },
    { id: 9, name: "error_type", type: "string" },
    { id: 10, name: "error_message", type: "string" },
    { id: 11, name: "topic", type: "string" },
    { id: 12, name: "one_way", type: "bool" },
    { id: 13, name: "targets", type: { list: "string" } },
    { id: 14, name: "channel", type: "string" },
    { id: 15, name: "route", type: "string" },
    { id: 16, name: "instance_id", type: "string" },
    { id: 17, name: "client_seq", type: "i32" },
    { id: 18, name: "caller_role", type: "string" },
    { id: 19, name: "origin", type: "i32" },
    { id: 20, name: "peer", type: "string" },
    { id: 21, name: "trace_id", type: "string" },
    { id: 22, name: "traced", type: "bool" },
  ]);
  // Declared out of order: written in id order all the same.
  const Instance = defineStruct("Instance", [
    { id: 5, name: "ttl_ms", type: "i32" },
    { id: 1, name: "service_name", type: "string", required: true },
    { id: 2, name: "instance_id", type: "string", required: true },
    { id: 3, name: "endpoints", type: { map: ["string", "string"] } },
    { id: 4, name: "meta", type: { map: ["string", Value] } },
  ]);
  const codecs = { Session, Header, Instance };

  for (const { name, js, hex: expected } of fixture("structs")) {
    test(name, () => {
      assert.equal(hex(codecs[name].encode(js)), expected);
      assert.deepEqual(codecs[name].decode(unhex(expected)), js);
    });
  }

  test("a Header read as a Session skips what it does not know", () => {
    const header = fixture("structs").find((s) => s.name === "Header");
    const Narrow = defineStruct("Narrow", [{ id: 3, name: "service_name", type: "string" }]);
    assert.deepEqual(Narrow.decode(unhex(header.hex)), { service_name: "chat" });
  });

  test("sets, non-string map keys, binaries, i64 as bigint", () => {
    const All = defineStruct("All", [
      { id: 1, name: "set", type: { set: "i32" } },
      { id: 2, name: "byId", type: { map: ["i64", "binary"] } },
      { id: 3, name: "big", type: "i64" },
      { id: 4, name: "small", type: "byte" },
      { id: 5, name: "short", type: "i16" },
      { id: 6, name: "ratio", type: "double" },
    ]);
    const value = {
      set: new Set([1, 2]),
      byId: new Map([[7n, new Uint8Array([1])]]),
      big: 2n ** 62n,
      small: -3,
      short: 300,
      ratio: 0.5,
    };
    const back = All.decode(All.encode(value), { int64: "bigint" });
    assert.deepEqual(back, { ...value, set: [1, 2] });
    assert.throws(() => All.encode({ small: 300 }), WireError);
  });

  test("field ids must be distinct i16s", () => {
    assert.throws(() => defineStruct("Bad", [{ id: 1, name: "a", type: "i32" }, { id: 1, name: "b", type: "i32" }]));
    assert.throws(() => defineStruct("Bad", [{ id: 40000, name: "a", type: "i32" }]));
  });

  test("PacketStruct lists the fields of mmo.thrift's Packet", () => {
    assert.deepEqual(
      PacketStruct.fields.map((f) => [f.id, f.name]),
      [[1, "kind"], [2, "seq"], [3, "route"], [4, "body"], [5, "code"], [6, "message"], [7, "trace"]],
    );
  });
});

describe("TCP framing", () => {
  const packets = [
    encodePacket({ kind: PacketKind.HEARTBEAT }),
    encodePacket({ kind: PacketKind.PUSH, route: "a.b", body: encodeValue("x".repeat(300)) }),
    encodePacket({ kind: PacketKind.RESPONSE, seq: 9 }),
  ];
  const stream = Buffer.concat(packets.map((p) => frame(p)));

  test("a frame is a big-endian length and the packet", () => {
    assert.equal(hex(frame(unhex("0800010000000600"))), "000000080800010000000600");
  });

  test("several frames in one read are all found", () => {
    assert.deepEqual(new FrameDecoder().push(stream).map(hex), packets.map(hex));
  });

  test("frames split across reads are reassembled, at every cut", () => {
    for (const size of [1, 2, 3, 5, 7, 64]) {
      const decoder = new FrameDecoder();
      const found = [];
      for (let at = 0; at < stream.length; at += size) found.push(...decoder.push(stream.subarray(at, at + size)));
      assert.deepEqual(found.map(hex), packets.map(hex), `chunks of ${size}`);
      assert.equal(decoder.buffered, 0);
    }
  });

  test("a length over the limit is refused at once", () => {
    const decoder = new FrameDecoder(100);
    assert.throws(() => decoder.push(unhex("00000065")), /over 100/);
    assert.deepEqual(new FrameDecoder(100).push(unhex("00000000")).map(hex), [""]);
  });
});
