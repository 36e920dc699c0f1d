// Test helpers: a fake clock, a fake network of brokers, fixtures and typed values.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import {
  ConnectError,
  Double,
  PacketKind,
  decodePacket,
  encodePacket,
  encodeValue,
} from "../dist/index.js";

export const hex = (bytes) => Buffer.from(bytes).toString("hex");
export const unhex = (text) => new Uint8Array(Buffer.from(text, "hex"));

export function fixture(name) {
  return JSON.parse(readFileSync(new URL(`./fixtures/${name}.json`, import.meta.url), "utf-8"));
}

/** A value of make_fixtures.py's typed JSON, as JavaScript (ints as bigints, doubles wrapped). */
export function fromTagged(t, { maps = "map" } = {}) {
  const [[kind, v]] = Object.entries(t);
  switch (kind) {
    case "null":
      return null;
    case "bool":
      return v;
    case "int":
      return BigInt(v);
    case "double":
      return new Double(typeof v === "string" ? (v === "-0" ? -0 : Number(v)) : v);
    case "str":
      return v;
    case "bytes":
      return unhex(v);
    case "list":
      return v.map((x) => fromTagged(x, { maps }));
    case "map": {
      if (maps === "map") return new Map(v.map(([k, x]) => [k, fromTagged(x, { maps })]));
      const obj = {};
      for (const [k, x] of v) obj[k] = fromTagged(x, { maps });
      return obj;
    }
  }
  throw new Error(`unknown tag ${kind}`);
}

/** A value of the typed JSON as plain JavaScript (numbers, objects): what decodeValue gives by default. */
export function plain(t) {
  const [[kind, v]] = Object.entries(t);
  switch (kind) {
    case "int": {
      const big = BigInt(v);
      return big >= BigInt(Number.MIN_SAFE_INTEGER) && big <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(big) : big;
    }
    case "double":
      return typeof v === "string" ? (v === "-0" ? -0 : Number(v)) : v;
    case "list":
      return v.map(plain);
    case "map": {
      const obj = {};
      for (const [k, x] of v) obj[k] = plain(x);
      return obj;
    }
    default:
      return fromTagged(t);
  }
}

/** Let every pending promise callback run. */
export const flush = () => new Promise((resolve) => setImmediate(resolve));

/** A clock whose time moves only when told (milliseconds). */
export class FakeClock {
  constructor() {
    this.t = 0;
    this.timers = new Map();
    this.nextId = 1;
  }
  now() {
    return this.t;
  }
  setTimeout(fn, ms) {
    const id = this.nextId++;
    this.timers.set(id, { at: this.t + Math.max(0, ms), fn, id });
    return id;
  }
  clearTimeout(id) {
    this.timers.delete(id);
  }
  /** The timers still to run, soonest first. */
  pending() {
    return [...this.timers.values()].sort((a, b) => a.at - b.at || a.id - b.id);
  }
  /** Move time forward by `ms`, running what falls due in order (and the promises they settle). */
  async advance(ms) {
    const target = this.t + ms;
    await flush();
    for (;;) {
      const [due] = this.pending().filter((timer) => timer.at <= target);
      if (due === undefined) break;
      this.timers.delete(due.id);
      this.t = Math.max(this.t, due.at);
      due.fn();
      await flush();
    }
    this.t = target;
    await flush();
  }
  /** Jump to the next timer and run it (and what falls due with it). */
  async next() {
    const [soonest] = this.pending();
    if (soonest === undefined) throw new Error("no timer pending");
    await this.advance(soonest.at - this.t);
  }
}

/** One connection of the fake network. */
export class FakeTransport {
  constructor(sink, address, url) {
    this.sink = sink;
    this.address = address;
    this.url = url;
    this.connected = true;
    this.packets = [];
    this.raw = [];
  }
  send(data) {
    if (!this.connected) throw new Error("send on a closed transport");
    this.raw.push(data);
    this.packets.push(decodePacket(data));
  }
  close() {
    this.drop("closed by the client");
  }
  abort() {
    this.drop("aborted");
  }
  /** The connection ends (the broker closed it, or died). */
  drop(why = "broker closed") {
    if (!this.connected) return;
    this.connected = false;
    this.sink.onClose(new Error(why));
  }
  /** The packets sent since the last call. */
  sent() {
    const packets = this.packets;
    this.packets = [];
    return packets;
  }
  receive(packet) {
    this.sink.onPacket(encodePacket(packet));
  }
  respond(seq, body) {
    this.receive({ kind: PacketKind.RESPONSE, seq, body: encodeValue(body) });
  }
  error(seq, code, message = "") {
    const packet = { kind: PacketKind.ERROR, code, message };
    if (seq) packet.seq = seq;
    this.receive(packet);
  }
  push(route, body) {
    this.receive({ kind: PacketKind.PUSH, route, body: encodeValue(body) });
  }
  kick(code, message = "") {
    this.receive({ kind: PacketKind.KICK, code, message });
  }
}

/** Brokers reachable by address; each connection a FakeTransport. */
export class FakeNetwork {
  constructor(clock) {
    this.clock = clock;
    this.up = new Set();
    this.listed = {};
    this.websockets = {};
    this.tls = [];
    this.attempts = [];
    this.urls = [];
    this.fetches = 0;
    this.connections = [];
    this.connector = (url, sink) => {
      this.urls.push(url);
      const address = (url.includes("://") ? url.slice(url.indexOf("://") + 3) : url).replace(/\/$/, "");
      this.attempts.push([this.clock.now(), address]);
      if (!this.up.has(address)) return Promise.reject(new ConnectError(`cannot connect to ${address}: refused`));
      const transport = new FakeTransport(sink, address, url);
      this.connections.push(transport);
      return Promise.resolve(transport);
    };
    this.fetcher = async () => {
      this.fetches++;
      return JSON.stringify({ version: "test", brokerList: this.listed, websocketList: this.websockets, tls: this.tls });
    };
  }
  get last() {
    return this.connections.at(-1);
  }
  /** The broker at `address` dies: its connections drop and it leaves the list. */
  async kill(address) {
    this.up.delete(address);
    delete this.listed[address];
    for (const transport of this.connections) {
      if (transport.address === address) transport.drop("broker died");
    }
    await this.clock.advance(0); // the first reconnect attempt (no pause drawn)
  }
}

/** Random numbers from a seed (mulberry32). */
export function seeded(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** A logger that keeps what it is told. */
export function memoryLogger() {
  const lines = [];
  const log = (level) => (message) => lines.push(`${level}: ${message}`);
  return { lines, debug: log("debug"), info: log("info"), warn: log("warn"), error: log("error") };
}

/** Follow a promise from now on (so that a rejection is never unhandled). */
export function watch(promise) {
  if (promise.state !== undefined) return promise;
  const watcher = { state: "pending" };
  promise.then(
    (value) => Object.assign(watcher, { state: "ok", value }),
    (error) => Object.assign(watcher, { state: "error", error }),
  );
  return watcher;
}

/** The outcome now: ["ok", value], ["error", error] or ["pending"]. */
export async function outcome(promise) {
  const watcher = watch(promise);
  await flush();
  if (watcher.state === "ok") return ["ok", watcher.value];
  if (watcher.state === "error") return ["error", watcher.error];
  return ["pending"];
}

export async function rejection(promise) {
  const [state, value] = await outcome(promise);
  assert.equal(state, "error", `expected a rejection, got ${state}`);
  return value;
}

export async function resolution(promise) {
  const [state, value] = await outcome(promise);
  if (state === "error") throw value;
  assert.equal(state, "ok", "still pending");
  return value;
}
