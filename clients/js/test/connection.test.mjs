// BrokerConnection: one connection's packets, requests, deadlines, heartbeats, pushes, kicks.
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import {
  ANY_ROUTE,
  BrokerConnection,
  BrokerError,
  ClientError,
  ClientTimeoutError,
  DisconnectedError,
  IdleError,
  MAX_SEQ,
  PacketKind,
  RateLimitedError,
  UnknownRouteError,
  WireError,
  decodeBody,
  decodeValue,
  defineStruct,
  encodeBody,
  encodeValue,
  frame,
} from "../dist/index.js";
import {
  FakeClock,
  FakeTransport,
  fixture,
  flush,
  fromTagged,
  hex,
  memoryLogger,
  outcome,
  rejection,
  resolution,
  unhex,
  watch,
} from "./helpers.mjs";

function connected(opts = {}) {
  const clock = opts.clock ?? new FakeClock();
  const logger = memoryLogger();
  const conn = new BrokerConnection({ clock, logger, ...opts });
  const transport = new FakeTransport(conn.sink, "b:1");
  conn.attach(transport);
  return { conn, transport, clock, logger };
}

const Pos = defineStruct("Pos", [
  { id: 1, name: "x", type: "i32" },
  { id: 2, name: "y", type: "i32" },
]);

describe("requests and notifies", () => {
  test("the packets are the bytes the Python client writes", async () => {
    const { conn, transport } = connected();
    for (const { name, action, hex: expected } of fixture("client_frames")) {
      if (action.op === "request") {
        const opts = { seq: action.seq };
        if (action.trace) opts.trace = action.trace;
        let body = action.body === undefined ? undefined : fromTagged(action.body);
        if (action.raw !== undefined) {
          body = unhex(action.raw);
          opts.raw = true;
        }
        conn.request(action.route, body, opts).catch(() => {});
      } else if (action.op === "notify") {
        conn.notify(action.route, action.body === undefined ? undefined : fromTagged(action.body));
      } else {
        conn.sendHeartbeat();
      }
      const written = transport.raw.splice(0);
      assert.equal(written.length, 1, name);
      assert.equal(hex(frame(written[0])), expected, name);
    }
  });

  test("seq numbers start at 1 and increase per connection", () => {
    const { conn, transport, clock } = connected();
    for (let i = 0; i < 3; i++) conn.request("a.b").catch(() => {});
    assert.deepEqual(transport.sent().map((p) => p.seq), [1, 2, 3]);
    const other = connected({ clock });
    other.conn.request("a.b").catch(() => {});
    assert.deepEqual(other.transport.sent().map((p) => p.seq), [1]);
  });

  test("the seq wraps after the largest i32, skipping requests in flight", () => {
    const { conn, transport } = connected();
    conn.request("a.b").catch(() => {}); // seq 1 stays in flight
    conn.nextSeq = MAX_SEQ;
    conn.request("a.b").catch(() => {});
    conn.request("a.b").catch(() => {});
    assert.deepEqual(transport.sent().map((p) => p.seq), [1, MAX_SEQ, 2]);
  });

  test("a request without a body sends an empty map", () => {
    const { conn, transport } = connected();
    conn.request("session.logout").catch(() => {});
    conn.request("session.logout", null).catch(() => {});
    for (const packet of transport.sent()) assert.deepEqual(decodeValue(packet.body), {});
  });

  test("answers are matched by seq, in whatever order they come", async () => {
    const { conn, transport } = connected();
    const first = watch(conn.request("a.b", { n: 1 }));
    const second = watch(conn.request("a.b", { n: 2 }));
    transport.respond(2, "two");
    assert.deepEqual(await outcome(first), ["pending"]);
    assert.equal(await resolution(second), "two");
    transport.respond(1, { one: [1, 2.5, null, true, new Uint8Array([120])] });
    assert.deepEqual(await resolution(first), { one: [1, 2.5, null, true, new Uint8Array([120])] });
    assert.equal(conn.inFlight, 0);
  });

  test("a response without a body is null", async () => {
    const { conn, transport } = connected();
    const reply = watch(conn.request("a.b"));
    transport.receive({ kind: PacketKind.RESPONSE, seq: 1 });
    assert.equal(await resolution(reply), null);
  });

  test("a struct body with encode/decode; raw bodies and replies are bytes", async () => {
    const { conn, transport } = connected();
    const moved = watch(conn.request("game.move", { x: 1, y: -2 }, { encode: Pos.encode, decode: Pos.decode }));
    assert.deepEqual(Pos.decode(transport.sent()[0].body), { x: 1, y: -2 });
    transport.receive({ kind: PacketKind.RESPONSE, seq: 1, body: Pos.encode({ x: 5 }) });
    assert.deepEqual(await resolution(moved), { x: 5 });
    const blob = watch(conn.request("game.blob", new Uint8Array([0, 1]), { raw: true }));
    assert.deepEqual(transport.sent()[0].body, new Uint8Array([0, 1]));
    transport.receive({ kind: PacketKind.RESPONSE, seq: 2, body: new Uint8Array([255]) });
    assert.deepEqual(await resolution(blob), new Uint8Array([255]));
  });

  test("a reply that does not decode fails that request only, with a WireError", async () => {
    const { conn, transport } = connected();
    const reply = watch(conn.request("a.b"));
    transport.receive({ kind: PacketKind.RESPONSE, seq: 1, body: new Uint8Array([0x0b, 0]) });
    assert.ok((await rejection(reply)) instanceof WireError);
    assert.ok(conn.isConnected);
  });

  test("a body that does not encode fails without sending", async () => {
    const { conn, transport } = connected();
    assert.ok((await rejection(conn.request("a.b", { when: new Date() }))) instanceof WireError);
    assert.ok((await rejection(conn.request("a.b", "text", { raw: true }))) instanceof WireError);
    assert.deepEqual(transport.sent(), []);
    assert.throws(() => conn.notify("a.b", { f: () => 1 }), WireError);
  });

  test("body helpers agree", () => {
    assert.deepEqual(decodeBody(encodeBody([1, "x"])), [1, "x"]);
    assert.deepEqual(decodeBody(encodeBody(new Uint8Array([1]), { raw: true }), { raw: true }), new Uint8Array([1]));
    assert.equal(decodeBody(undefined), null);
    assert.deepEqual(decodeBody(undefined, { raw: true }), new Uint8Array(0));
    assert.deepEqual(decodeBody(encodeBody(undefined)), {});
  });

  test("notify sends NOTIFY route body, without seq, and expects nothing", () => {
    const { conn, transport } = connected();
    assert.equal(conn.notify("chat.send", { content: "hi" }, { trace: "t1" }), undefined);
    const [packet] = transport.sent();
    assert.deepEqual(
      [packet.kind, packet.seq, packet.route, packet.trace],
      [PacketKind.NOTIFY, undefined, "chat.send", "t1"],
    );
    assert.deepEqual(decodeValue(packet.body), { content: "hi" });
    assert.equal(conn.inFlight, 0);
  });
});

describe("errors and deadlines", () => {
  test("ERROR seq code message rejects that request with the code's class", async () => {
    const { conn, transport } = connected();
    const reply = watch(conn.request("nope.x"));
    transport.error(1, ClientError.UNKNOWN_ROUTE, "no such route 'nope.x'");
    const error = await rejection(reply);
    assert.ok(error instanceof UnknownRouteError && error instanceof BrokerError);
    assert.deepEqual([error.code, error.codeName, error.detail], [4, "UNKNOWN_ROUTE", "no such route 'nope.x'"]);
    assert.ok(conn.isConnected);
  });

  test("no answer within the timeout is a ClientTimeoutError; the late answer is dropped", async () => {
    const { conn, transport, clock, logger } = connected();
    const reply = watch(conn.request("slow.op", undefined, { timeout: 2000 }));
    await clock.advance(1999);
    assert.deepEqual(await outcome(reply), ["pending"]);
    await clock.advance(1);
    const error = await rejection(reply);
    assert.ok(error instanceof ClientTimeoutError);
    assert.match(error.message, /slow.op: no answer within 2 s \(seq 1\)/);
    transport.respond(1, "late");
    assert.equal(conn.inFlight, 0);
    assert.ok(conn.isConnected);
    assert.ok(logger.lines.some((l) => l.includes("answer to no pending request (seq 1)")));
  });

  test("every request has a deadline: 5 s by default", async () => {
    const { conn, clock } = connected();
    const replies = [watch(conn.request("slow.op")), watch(conn.request("slow.op", {}, { timeout: undefined }))];
    await clock.advance(5000);
    for (const reply of replies) assert.ok((await rejection(reply)) instanceof ClientTimeoutError);
  });

  test("an answer cancels the deadline's timer", async () => {
    const { conn, transport, clock } = connected();
    const reply = watch(conn.request("a.b"));
    transport.respond(1, 1);
    await resolution(reply);
    assert.deepEqual(clock.pending(), []);
  });

  test("an aborted request is forgotten, with its timer", async () => {
    const { conn, clock } = connected();
    const controller = new AbortController();
    const reply = watch(conn.request("a.b", {}, { signal: controller.signal }));
    controller.abort(new Error("not needed"));
    assert.equal((await rejection(reply)).message, "not needed");
    assert.equal(conn.inFlight, 0);
    assert.deepEqual(clock.pending(), []);
    const late = watch(conn.request("a.b", {}, { signal: controller.signal }));
    assert.equal((await rejection(late)).message, "not needed");
  });

  test("an ERROR without seq goes to onError and fails no request", async () => {
    const { conn, transport } = connected();
    const errors = [];
    conn.onError((e) => errors.push(e));
    const reply = watch(conn.request("a.b"));
    transport.error(0, ClientError.RATE_LIMITED, "slow down");
    assert.equal(errors.length, 1);
    assert.ok(errors[0] instanceof RateLimitedError);
    assert.equal(errors[0].detail, "slow down");
    assert.deepEqual(await outcome(reply), ["pending"]);
    assert.equal(conn.lastError, errors[0]);
  });
});

describe("heartbeats", () => {
  test("none before startHeartbeat, then one every interval", async () => {
    const { conn, transport, clock } = connected();
    await clock.advance(30_000);
    assert.deepEqual(transport.sent(), []);
    conn.startHeartbeat(4000);
    await clock.advance(3999);
    assert.deepEqual(transport.sent(), []);
    for (let i = 0; i < 3; i++) {
      transport.receive({ kind: PacketKind.HEARTBEAT });
      await clock.advance(i === 0 ? 1 : 4000);
      assert.deepEqual(transport.sent().map((p) => p.kind), [PacketKind.HEARTBEAT]);
    }
  });

  test("the interval defaults to ten seconds", async () => {
    const { conn, transport, clock } = connected();
    conn.startHeartbeat(undefined);
    await clock.advance(9999);
    assert.deepEqual(transport.sent(), []);
    await clock.advance(1);
    assert.deepEqual(transport.sent().map((p) => p.kind), [PacketKind.HEARTBEAT]);
    assert.equal(conn.heartbeatInterval, 10_000);
  });

  test("a broker silent for three intervals is dropped", async () => {
    const { conn, transport, clock } = connected();
    const reply = watch(conn.request("a.b", {}, { timeout: 100_000 }));
    conn.startHeartbeat(1000);
    await clock.advance(2000);
    assert.ok(conn.isConnected);
    await clock.advance(1000);
    assert.ok(!conn.isConnected);
    assert.ok(!transport.connected);
    assert.ok((await rejection(reply)) instanceof DisconnectedError);
  });

  test("a broker that answers heartbeats is kept", async () => {
    const { conn, transport, clock } = connected();
    conn.startHeartbeat(1000);
    for (let i = 0; i < 10; i++) {
      await clock.advance(1000);
      transport.receive({ kind: PacketKind.HEARTBEAT });
    }
    assert.ok(conn.isConnected);
    assert.equal(transport.sent().length, 10);
  });

  test("heartbeats stop with the connection", async () => {
    const { conn, transport, clock } = connected();
    conn.startHeartbeat(1000);
    transport.drop();
    await clock.advance(10_000);
    assert.deepEqual(clock.pending(), []);
  });

  test("a HEARTBEAT from the broker only counts as traffic", async () => {
    const { conn, transport, clock } = connected();
    await clock.advance(7000);
    transport.receive({ kind: PacketKind.HEARTBEAT });
    assert.equal(conn.lastReceived, 7000);
    assert.deepEqual(transport.sent(), []);
  });
});

describe("pushes and kicks", () => {
  test("pushes go to their route's handlers, then to the catch-all ones", () => {
    const { conn, transport } = connected();
    const messages = [];
    const everything = [];
    conn.on("chat.message", (body, route) => messages.push([route, body]));
    conn.on(ANY_ROUTE, (body, route) => everything.push([route, body]));
    transport.push("chat.message", { content: "hi" });
    transport.push("chat.joined", { user: "ron" });
    assert.deepEqual(messages, [["chat.message", { content: "hi" }]]);
    assert.deepEqual(everything, [
      ["chat.message", { content: "hi" }],
      ["chat.joined", { user: "ron" }],
    ]);
  });

  test("a handler that throws is logged and stops neither the others nor the connection", () => {
    const { conn, transport, logger } = connected();
    const seen = [];
    conn.on("a.b", () => {
      throw new Error("bug in game code");
    });
    conn.on("a.b", (body) => seen.push(body));
    transport.push("a.b", 1);
    transport.push("a.b", 2);
    assert.deepEqual(seen, [1, 2]);
    assert.ok(conn.isConnected);
    assert.ok(logger.lines.some((l) => l.startsWith("error: push handler for a.b failed")));
  });

  test("a registration can be removed", () => {
    const { conn, transport } = connected();
    const seen = [];
    const remove = conn.on("a.b", (body) => seen.push(body));
    transport.push("a.b", 1);
    remove();
    remove();
    transport.push("a.b", 2);
    assert.deepEqual(seen, [1]);
  });

  test("a registration may take the body as a struct or as bytes", () => {
    const { conn, transport } = connected();
    const structs = [];
    const raws = [];
    conn.on("map.pos", (body) => structs.push(body), { decode: Pos.decode });
    conn.on("map.pos", (body) => raws.push(body), { raw: true });
    const data = Pos.encode({ x: 3, y: 4 });
    transport.receive({ kind: PacketKind.PUSH, route: "map.pos", body: data });
    assert.deepEqual(structs, [{ x: 3, y: 4 }]);
    assert.deepEqual(raws, [data]);
  });

  test("a push whose body does not decode skips the handler", () => {
    const { conn, transport, logger } = connected();
    const seen = [];
    conn.on("a.b", (body) => seen.push(body));
    transport.receive({ kind: PacketKind.PUSH, route: "a.b", body: new Uint8Array([0x0b]) });
    assert.deepEqual(seen, []);
    assert.ok(conn.isConnected);
    assert.ok(logger.lines.some((l) => l.includes("undecodable body")));
  });

  test("a push body may use bigints, doubles and Maps as the connection says", () => {
    const { conn, transport } = connected({ valueOptions: { int64: "bigint" } });
    const seen = [];
    conn.on("a.b", (body) => seen.push(body));
    conn.on("a.b", (body) => seen.push(body), { valueOptions: { maps: "map" } });
    transport.push("a.b", { n: 1 });
    assert.deepEqual(seen, [{ n: 1n }, new Map([["n", 1]])]);
  });

  test("KICK is remembered and told, the connection closes, what is pending fails", async () => {
    const { conn, transport } = connected();
    const kicks = [];
    conn.listeners.onKick((k) => kicks.push(k));
    const reply = watch(conn.request("a.b"));
    transport.kick(ClientError.IDLE, "idle for 30 s");
    assert.ok(conn.kicked instanceof IdleError);
    assert.equal(conn.kicked.detail, "idle for 30 s");
    assert.deepEqual(kicks, [conn.kicked]);
    assert.ok(!transport.connected);
    const error = await rejection(reply);
    assert.ok(error instanceof DisconnectedError);
    assert.equal(error.cause, conn.kicked);
  });

  test("packet kinds a broker never sends are ignored", () => {
    const { conn, transport, logger } = connected();
    transport.receive({ kind: PacketKind.REQUEST, seq: 1, route: "x.y" });
    transport.receive({ kind: PacketKind.NOTIFY, route: "x.y" });
    transport.receive({ kind: 42 });
    assert.ok(conn.isConnected);
    assert.equal(logger.lines.filter((l) => l.includes("ignored a packet")).length, 3);
  });

  test("bytes that are not a Packet abort the connection", async () => {
    const { conn, transport } = connected();
    const reply = watch(conn.request("a.b"));
    transport.sink.onPacket(new Uint8Array([0x08, 0x00]));
    assert.ok(!transport.connected);
    assert.ok((await rejection(reply)) instanceof DisconnectedError);
  });
});

describe("the end of a connection", () => {
  test("every request in flight fails with DisconnectedError; timers are cancelled", async () => {
    const { conn, transport, clock } = connected();
    const replies = [watch(conn.request("a.b")), watch(conn.request("c.d"))];
    transport.drop("reset");
    for (const reply of replies) {
      const error = await rejection(reply);
      assert.ok(error instanceof DisconnectedError);
      assert.match(error.message, /connection lost: reset/);
    }
    assert.deepEqual(clock.pending(), []);
  });

  test("whoever watches the connection hears of the loss before the requests fail", async () => {
    const { conn, transport } = connected();
    const order = [];
    conn.request("a.b").catch(() => order.push("request"));
    conn.onClosed(() => order.push("closed"));
    transport.drop();
    await flush();
    assert.deepEqual(order, ["closed", "request"]);
  });

  test("requests and notifies after the drop fail at once, without writing", async () => {
    const { conn, transport } = connected();
    transport.drop();
    assert.ok((await rejection(conn.request("a.b"))) instanceof DisconnectedError);
    assert.throws(() => conn.notify("a.b"), DisconnectedError);
    assert.deepEqual(transport.raw, []);
  });

  test("whenClosed resolves with the reason, also when asked afterwards", async () => {
    const { conn, transport } = connected();
    const closed = conn.whenClosed();
    transport.error(0, ClientError.LOGIN_TIMEOUT, "no login");
    await conn.close();
    const lost = await closed;
    assert.ok(lost instanceof DisconnectedError);
    assert.equal(lost.cause.codeName, "LOGIN_TIMEOUT");
    assert.equal(await conn.whenClosed(), lost);
  });

  test("a close that lingers is aborted after the grace period", async () => {
    const clock = new FakeClock();
    const conn = new BrokerConnection({ clock, logger: memoryLogger(), closeGrace: 500 });
    const calls = [];
    conn.attach({
      send() {},
      close: () => calls.push("close"),
      abort: () => {
        calls.push("abort");
        conn.sink.onClose(new Error("aborted"));
      },
    });
    const closed = conn.close();
    assert.ok(!conn.isConnected);
    await clock.advance(499);
    assert.deepEqual(calls, ["close"]);
    await clock.advance(1);
    assert.deepEqual(calls, ["close", "abort"]);
    assert.ok((await closed) instanceof DisconnectedError);
  });

  test("BrokerConnection.open connects through a connector", async () => {
    let transport;
    const conn = await BrokerConnection.open(
      async (url, sink) => (transport = new FakeTransport(sink, url)),
      "ws://h:1/",
      { clock: new FakeClock(), logger: memoryLogger() },
    );
    assert.ok(conn.isConnected);
    assert.equal(transport.address, "ws://h:1/");
    const reply = watch(conn.request("a.b", encodeValue(1), { raw: true }));
    transport.respond(1, 5);
    assert.deepEqual(await resolution(reply), encodeValue(5));
  });
});
