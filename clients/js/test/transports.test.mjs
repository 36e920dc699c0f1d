// Transports: WebSocket (a fake WebSocket class) and TCP (fake node:net / node:tls modules),
// and that a browser bundle never meets a Node module.
import assert from "node:assert/strict";
import { EventEmitter } from "node:events";
import { readdirSync, readFileSync } from "node:fs";
import { describe, test } from "node:test";
import {
  Client,
  ConnectError,
  PacketKind,
  connector,
  decodePacket,
  encodePacket,
  frame,
  tcpConnector,
  webSocketConnector,
} from "../dist/index.js";
import { FakeClock, flush, memoryLogger, resolution, watch } from "./helpers.mjs";

/** A WebSocket that opens when told. */
class FakeWebSocket {
  static instances = [];
  constructor(url) {
    this.url = url;
    this.binaryType = "blob";
    this.sent = [];
    this.closed = [];
    this.onopen = this.onmessage = this.onclose = this.onerror = null;
    FakeWebSocket.instances.push(this);
  }
  send(data) {
    this.sent.push(data);
  }
  close(code) {
    this.closed.push(code);
  }
  open() {
    this.onopen?.({});
  }
  message(data) {
    this.onmessage?.({ data });
  }
  closeEvent(code = 1006, reason = "") {
    this.onclose?.({ code, reason });
  }
}

function sink() {
  const s = { packets: [], closes: [] };
  s.onPacket = (data) => s.packets.push(decodePacket(data));
  s.onClose = (error) => s.closes.push(error);
  return s;
}

const HEARTBEAT = encodePacket({ kind: PacketKind.HEARTBEAT });

describe("WebSocket", () => {
  test("one packet per binary message, both ways", async () => {
    const clock = new FakeClock();
    const connect = webSocketConnector({ WebSocket: FakeWebSocket, clock });
    const events = sink();
    const opening = watch(connect("ws://h:1/", events));
    const ws = FakeWebSocket.instances.at(-1);
    assert.equal(ws.url, "ws://h:1/");
    assert.equal(ws.binaryType, "arraybuffer");
    ws.open();
    const transport = await resolution(opening);
    transport.send(HEARTBEAT);
    assert.deepEqual(ws.sent, [HEARTBEAT]); // no length prefix
    const response = encodePacket({ kind: PacketKind.RESPONSE, seq: 1 });
    ws.message(response.slice().buffer);
    ws.message(new Uint8Array(response));
    assert.deepEqual(events.packets, [
      { kind: PacketKind.RESPONSE, seq: 1 },
      { kind: PacketKind.RESPONSE, seq: 1 },
    ]);
    transport.close();
    assert.deepEqual(ws.closed, [1000]);
    ws.closeEvent(1000, "bye");
    assert.match(events.closes[0].message, /WebSocket closed \(code 1000: bye\)/);
    ws.closeEvent(1000);
    assert.equal(events.closes.length, 1);
    assert.deepEqual(clock.pending(), []);
  });

  test("a text message ends the connection", async () => {
    const events = sink();
    const opening = watch(webSocketConnector({ WebSocket: FakeWebSocket, clock: new FakeClock() })("ws://h:1/", events));
    const ws = FakeWebSocket.instances.at(-1);
    ws.open();
    await resolution(opening);
    ws.message("hello");
    assert.equal(ws.closed.length, 1);
    assert.equal(events.closes.length, 1);
    assert.deepEqual(events.packets, []);
  });

  test("abort() ends the connection at once, without waiting for the close handshake", async () => {
    const events = sink();
    const opening = watch(webSocketConnector({ WebSocket: FakeWebSocket, clock: new FakeClock() })("ws://h:1/", events));
    FakeWebSocket.instances.at(-1).open();
    const transport = await resolution(opening);
    transport.abort();
    assert.equal(events.closes.length, 1);
  });

  test("a WebSocket that fails or never opens is a ConnectError", async () => {
    const clock = new FakeClock();
    const connect = webSocketConnector({ WebSocket: FakeWebSocket, clock, timeout: 3000 });
    const refused = watch(connect("ws://h:1/", sink()));
    const ws = FakeWebSocket.instances.at(-1);
    ws.onerror({ message: "ECONNREFUSED" });
    ws.closeEvent(1006);
    await flush();
    assert.ok(refused.error instanceof ConnectError);
    assert.match(refused.error.message, /ECONNREFUSED/);

    const silent = watch(connect("ws://h:2/", sink()));
    await clock.advance(3000);
    assert.ok(silent.error instanceof ConnectError);
    assert.match(silent.error.message, /not open within 3 s/);
    assert.equal(FakeWebSocket.instances.at(-1).closed.length, 1);
  });

  test("without a WebSocket class the error says what to do", async () => {
    const saved = globalThis.WebSocket;
    try {
      delete globalThis.WebSocket;
      await assert.rejects(webSocketConnector()("ws://h:1/", sink()), /pass the WebSocket option/);
    } finally {
      if (saved !== undefined) globalThis.WebSocket = saved;
    }
  });

  test("a Client over a WebSocket class", async () => {
    const client = new Client({ broker: "ws://h:1/", WebSocket: FakeWebSocket, clock: new FakeClock(), logger: memoryLogger() });
    const connecting = watch(client.connect());
    await flush();
    const ws = FakeWebSocket.instances.at(-1);
    assert.equal(ws.url, "ws://h:1/");
    ws.open();
    assert.equal(await resolution(connecting), "h:1");
    const reply = watch(client.request("a.b", { x: 1 }));
    const sent = decodePacket(ws.sent[0]);
    assert.deepEqual([sent.kind, sent.seq, sent.route], [PacketKind.REQUEST, 1, "a.b"]);
    ws.message(encodePacket({ kind: PacketKind.RESPONSE, seq: 1 }));
    assert.equal(await resolution(reply), null);
  });
});

/** A socket of node:net as the TCP connector uses it. */
class FakeSocket extends EventEmitter {
  constructor(options) {
    super();
    this.options = options;
    this.written = [];
    this.ended = false;
    this.destroyed = false;
    this.noDelay = false;
  }
  write(data) {
    this.written.push(Buffer.from(data));
  }
  end() {
    this.ended = true;
    queueMicrotask(() => this.emit("close", false));
  }
  destroy() {
    if (this.destroyed) return;
    this.destroyed = true;
    queueMicrotask(() => this.emit("close", true));
  }
  setNoDelay(on) {
    this.noDelay = on;
  }
}

function fakeModule() {
  const mod = { sockets: [] };
  mod.connect = (options) => {
    const socket = new FakeSocket(options);
    mod.sockets.push(socket);
    return socket;
  };
  return mod;
}

describe("TCP (Node)", () => {
  test("each packet behind a 4-byte length; a stream in pieces is reassembled", async () => {
    const net = fakeModule();
    const events = sink();
    const opening = watch(tcpConnector({ modules: { net }, clock: new FakeClock() })("tcp://10.1.2.3:6100", events));
    await flush();
    const [socket] = net.sockets;
    assert.deepEqual(socket.options, { host: "10.1.2.3", port: 6100 });
    socket.emit("connect");
    const transport = await resolution(opening);
    assert.equal(socket.noDelay, true);
    transport.send(HEARTBEAT);
    assert.deepEqual(new Uint8Array(socket.written[0]), frame(HEARTBEAT));
    const stream = Buffer.concat([frame(HEARTBEAT), frame(encodePacket({ kind: PacketKind.RESPONSE, seq: 4 }))]);
    for (let at = 0; at < stream.length; at += 3) socket.emit("data", stream.subarray(at, at + 3));
    assert.deepEqual(events.packets, [{ kind: PacketKind.HEARTBEAT }, { kind: PacketKind.RESPONSE, seq: 4 }]);
    transport.close();
    assert.ok(socket.ended);
    await flush();
    assert.equal(events.closes.length, 1);
  });

  test("a frame over maxFrame drops the connection", async () => {
    const net = fakeModule();
    const events = sink();
    const opening = watch(tcpConnector({ modules: { net }, maxFrame: 64, clock: new FakeClock() })("tcp://h:1", events));
    await flush();
    net.sockets[0].emit("connect");
    await resolution(opening);
    net.sockets[0].emit("data", Buffer.from([0, 0, 0, 65]));
    assert.ok(net.sockets[0].destroyed);
    await flush();
    assert.match(events.closes[0].message, /over 64/);
  });

  test("tls:// checks the broker's certificate against its name, with the CA given", async () => {
    const tls = fakeModule();
    const opening = watch(tcpConnector({ modules: { tls }, ca: "PEM", clock: new FakeClock() })("tls://broker.example:6101", sink()));
    await flush();
    const [socket] = tls.sockets;
    assert.deepEqual(socket.options, {
      host: "broker.example",
      port: 6101,
      servername: "broker.example",
      ca: "PEM",
      minVersion: "TLSv1.2",
    });
    socket.emit("connect"); // TCP alone proves nothing
    await flush();
    assert.equal(opening.state, "pending");
    socket.emit("secureConnect");
    await resolution(opening);
    const ip = watch(tcpConnector({ modules: { tls }, clock: new FakeClock() })("tls://127.0.0.1:6101", sink()));
    await flush();
    assert.equal(tls.sockets[1].options.servername, undefined); // no SNI for an IP address
    tls.sockets[1].emit("secureConnect");
    await resolution(ip);
  });

  test("a refused or slow connection is a ConnectError", async () => {
    const net = fakeModule();
    const clock = new FakeClock();
    const connect = tcpConnector({ modules: { net }, clock, timeout: 2000 });
    const refused = watch(connect("tcp://h:1", sink()));
    await flush();
    net.sockets[0].emit("error", new Error("connect ECONNREFUSED"));
    await flush();
    assert.ok(refused.error instanceof ConnectError);
    assert.match(refused.error.message, /ECONNREFUSED/);
    const slow = watch(connect("tcp://h:2", sink()));
    await flush();
    await clock.advance(2000);
    assert.match(slow.error.message, /not connected within 2 s/);
    assert.ok(net.sockets[1].destroyed);
  });

  test("the real node:net is loaded on first use", async () => {
    // Port 0 is never listening: the connection is refused without any traffic.
    await assert.rejects(tcpConnector({ timeout: 2000 })("tcp://127.0.0.1:0", sink()), ConnectError);
  });

  test("connector() sends each scheme to its transport", async () => {
    const connect = connector({ WebSocket: FakeWebSocket, modules: { net: fakeModule() }, clock: new FakeClock() });
    await assert.rejects(connect("http://h:1", sink()), /unknown scheme/);
    const ws = watch(connect("wss://h:1/", sink()));
    FakeWebSocket.instances.at(-1).open();
    await resolution(ws);
    assert.equal(FakeWebSocket.instances.at(-1).url, "wss://h:1/");
  });
});

test("the built package imports no Node module but through the hidden dynamic import", () => {
  const dist = new URL("../dist/", import.meta.url);
  for (const name of readdirSync(dist).filter((n) => n.endsWith(".js"))) {
    const text = readFileSync(new URL(name, dist), "utf-8");
    assert.doesNotMatch(text, /from\s+["'](node:)?(net|tls|fs|events|buffer|crypto)["']/, name);
    assert.doesNotMatch(text, /require\(/, name);
    assert.doesNotMatch(text, /\bBuffer\.(from|alloc|concat|isBuffer)/, name);
    assert.doesNotMatch(text, /\bprocess\./, name);
  }
  const transports = readFileSync(new URL("transports.js", dist), "utf-8");
  assert.match(transports, /import\(\/\* webpackIgnore: true \*\/ \/\* @vite-ignore \*\/ specifier\)/);
});
