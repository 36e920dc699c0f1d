// The brokerlist: parse, pick the least loaded, addresses and URLs, and the HTTP GET.
import assert from "node:assert/strict";
import { afterEach, test } from "node:test";
import {
  ConnectError,
  brokerUrl,
  fetchBrokerList,
  httpFetcher,
  joinAddress,
  parseBrokerList,
  pickBroker,
  rankBrokers,
  splitAddress,
  splitUrl,
} from "../dist/index.js";
import { seeded } from "./helpers.mjs";

test("the brokerlist document becomes its lists", () => {
  const doc = {
    version: "0.1.0",
    brokerList: { "127.0.0.1:6100": 0.5, "127.0.0.1:6101": 0 },
    websocketList: { "127.0.0.1:6201": 0.25 },
    tls: ["127.0.0.1:6201"],
  };
  const list = parseBrokerList(JSON.stringify(doc));
  assert.deepEqual(list.brokers, { "127.0.0.1:6100": 0.5, "127.0.0.1:6101": 0 });
  assert.deepEqual(list.websockets, { "127.0.0.1:6201": 0.25 });
  assert.deepEqual([...list.tls], ["127.0.0.1:6201"]);
  assert.equal(list.version, "0.1.0");
  assert.deepEqual(parseBrokerList({ brokerList: {} }).brokers, {});
  assert.deepEqual(parseBrokerList('{"brokerList": {}}').websockets, {});
});

test("a malformed brokerlist is a ConnectError", () => {
  for (const text of [
    "not json",
    "[]",
    "null",
    '{"version": "1"}',
    '{"brokerList": []}',
    '{"brokerList": {"127.0.0.1:1": "low"}}',
    '{"brokerList": {"127.0.0.1:1": true}}',
    '{"brokerList": {"127.0.0.1:1": NaN}}',
    '{"brokerList": {"nowhere": 0.1}}',
    '{"brokerList": {"host:99999": 0.1}}',
    '{"brokerList": {}, "websocketList": [1]}',
    '{"brokerList": {}, "tls": "a:1"}',
    '{"brokerList": {}, "tls": [1]}',
  ]) {
    assert.throws(() => parseBrokerList(text), ConnectError, text);
  }
});

test("the least-loaded broker wins; ties go to the lowest address", () => {
  const brokers = { "b:2": 0.3, "a:1": 0.1, "c:3": 0.1 };
  assert.equal(pickBroker(brokers), "a:1");
  assert.equal(pickBroker(brokers, { avoid: ["a:1"] }), "c:3");
  assert.equal(pickBroker({ "a:1": 0.9 }, { avoid: ["a:1"] }), "a:1");
});

test("with a random source, equally loaded brokers are all chosen sometimes, others never", () => {
  const random = seeded(7);
  const picks = new Set();
  for (let i = 0; i < 50; i++) picks.add(pickBroker({ "a:1": 0, "b:2": 0, "c:3": 0.5 }, { random }));
  assert.deepEqual([...picks].sort(), ["a:1", "b:2"]);
  assert.equal(pickBroker({ "a:1": 0, "b:2": 0 }, { random: () => 0.999999 }), "b:2");
});

test("no broker listed is a ConnectError", () => {
  assert.throws(() => pickBroker({}), /no broker/);
  assert.throws(() => rankBrokers({}), ConnectError);
});

test("rankBrokers: the pick first, then by load, the avoided last", () => {
  const brokers = { "d:4": 0.9, "b:2": 0.3, "a:1": 0.1, "c:3": 0.1 };
  assert.deepEqual(rankBrokers(brokers), ["a:1", "c:3", "b:2", "d:4"]);
  assert.deepEqual(rankBrokers(brokers, { avoid: ["a:1"] }), ["c:3", "b:2", "d:4", "a:1"]);
  assert.deepEqual(rankBrokers(brokers, { random: () => 0.9 }), ["c:3", "a:1", "b:2", "d:4"]);
});

test("addresses: host:port, IPv6 in brackets", () => {
  assert.deepEqual(splitAddress("127.0.0.1:6100"), { host: "127.0.0.1", port: 6100 });
  assert.deepEqual(splitAddress("[::1]:6100"), { host: "::1", port: 6100 });
  for (const bad of ["6100", ":6100", "host:", "host:0", "host:x", "host:65536", "host:-1"]) {
    assert.throws(() => splitAddress(bad), Error, bad);
  }
  assert.equal(joinAddress("::1", 6100), "[::1]:6100");
  assert.equal(joinAddress("a.example", 1), "a.example:1");
});

test("broker URLs: scheme by transport and TLS", () => {
  assert.equal(brokerUrl("h:1", "tcp", false), "tcp://h:1");
  assert.equal(brokerUrl("h:1", "tcp", true), "tls://h:1");
  assert.equal(brokerUrl("h:1", "websocket", false), "ws://h:1/");
  assert.equal(brokerUrl("[::1]:1", "websocket", true), "wss://[::1]:1/");
  assert.deepEqual(splitUrl("wss://h:443/"), { scheme: "wss", host: "h", port: 443 });
  assert.deepEqual(splitUrl("h:1"), { scheme: "tcp", host: "h", port: 1 });
  assert.throws(() => splitUrl("http://h:1"), /unknown broker scheme/);
  assert.throws(() => splitUrl("ws://h/"), /expected host:port/);
});

const realFetch = globalThis.fetch;
afterEach(() => {
  globalThis.fetch = realFetch;
});

test("fetchBrokerList GETs with fetch and parses", async () => {
  const calls = [];
  globalThis.fetch = async (url, init) => {
    calls.push([url, init.headers.Accept, init.cache]);
    return { status: 200, text: async () => '{"brokerList": {"h:1": 0.5}}' };
  };
  const list = await fetchBrokerList("http://list/");
  assert.deepEqual(list.brokers, { "h:1": 0.5 });
  assert.deepEqual(calls, [["http://list/", "application/json", "no-store"]]);
});

test("an HTTP error or a failed GET is a ConnectError", async () => {
  globalThis.fetch = async () => ({ status: 503, text: async () => '{"error": "starting"}' });
  await assert.rejects(httpFetcher()("http://list/"), (e) => e instanceof ConnectError && /HTTP 503/.test(e.message));
  globalThis.fetch = async () => {
    throw new TypeError("fetch failed");
  };
  await assert.rejects(httpFetcher()("http://list/"), (e) => e instanceof ConnectError && /fetch failed/.test(e.message));
  await assert.rejects(
    fetchBrokerList("http://list/", { fetcher: async () => "[]" }),
    (e) => e instanceof ConnectError && /brokerList/.test(e.message),
  );
});

test("a GET that takes too long is aborted", async () => {
  globalThis.fetch = (url, init) =>
    new Promise((_resolve, reject) => init.signal.addEventListener("abort", () => reject(new Error("aborted"))));
  await assert.rejects(httpFetcher(20)("http://list/"), /no answer within 0.02 s/);
});
