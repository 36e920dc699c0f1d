// Client: brokerlist, login, traffic, and the session across reconnections (resume with
// jittered backoff, kicks, refresh, logout), on a fake network with a fake clock.
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import {
  Client,
  ClientError,
  ClientTimeoutError,
  ConnectError,
  DisconnectedError,
  KickedError,
  LoginFailedError,
  MmoError,
  PacketKind,
  ResumeFailedError,
  ServiceError,
  decodeValue,
} from "../dist/index.js";
import { FakeClock, FakeNetwork, flush, memoryLogger, outcome, rejection, resolution, seeded, watch } from "./helpers.mjs";

const LOGIN_REPLY = { session_id: "s1", user_id: "u1", token: "t1", heartbeat: 4 };
/** Draws the lowest value: no pause before a reconnect attempt, the first of a tie. */
const lowest = () => 0;

function makeClient(brokers = { "b1:1": 0.1, "b2:2": 0.5 }, opts = {}) {
  const clock = new FakeClock();
  const net = new FakeNetwork(clock);
  net.listed = { ...brokers };
  net.up = new Set(Object.keys(brokers));
  const logger = memoryLogger();
  const client = new Client({
    brokerlist: "http://list/",
    transport: "tcp",
    random: lowest,
    connector: net.connector,
    fetcher: net.fetcher,
    clock,
    logger,
    ...opts,
  });
  return { client, net, clock, logger };
}

async function loggedIn(brokers, opts) {
  const ctx = makeClient(brokers, opts);
  await ctx.client.connect();
  const login = watch(ctx.client.login({ user: "harry", password: "pw" }));
  const [packet] = ctx.net.last.sent();
  ctx.net.last.respond(packet.seq, LOGIN_REPLY);
  await resolution(login);
  return ctx;
}

describe("connecting and logging in", () => {
  test("a client needs somewhere to connect, and a transport it knows", () => {
    assert.throws(() => new Client({}), TypeError);
    assert.throws(() => new Client({ broker: "nowhere" }), TypeError);
    assert.throws(() => new Client({ broker: "h:1", transport: "udp" }), TypeError);
  });

  test("connect() fetches the brokerlist and connects to its least-loaded broker", async () => {
    const { client, net } = makeClient({ "b1:1": 0.7, "b2:2": 0.2 });
    assert.equal(client.state, "closed");
    assert.equal(await client.connect(), "b2:2");
    assert.deepEqual([client.state, client.brokerAddress], ["online", "b2:2"]);
    assert.equal(net.fetches, 1);
    assert.deepEqual(net.urls, ["tcp://b2:2"]);
  });

  test("a fixed broker skips the brokerlist", async () => {
    const { client, net } = makeClient({ "b1:1": 0.1, "b2:2": 0.5 }, { broker: "b2:2" });
    assert.equal(await client.connect(), "b2:2");
    assert.equal(net.fetches, 0);
    const other = makeClient({ "b1:1": 0.1 }, { brokerlist: undefined, broker: "b1:1" });
    assert.equal(await other.client.connect(), "b1:1");
  });

  test("a refused connection fails connect() with ConnectError; the client is closed", async () => {
    const { client, net } = makeClient({ "b1:1": 0.1 });
    net.up.clear();
    const closed = [];
    client.onClosed((r) => closed.push(r));
    await assert.rejects(client.connect(), ConnectError);
    assert.equal(client.state, "closed");
    const empty = makeClient({});
    await assert.rejects(empty.client.connect(), /no broker available/);
    assert.equal(empty.client.state, "closed");
  });

  test("connect() tries the next broker when the least loaded cannot be reached", async () => {
    const { client, net } = makeClient({ "b1:1": 0.1, "b2:2": 0.5, "b3:3": 0.9 });
    net.up.delete("b1:1");
    assert.equal(await client.connect(), "b2:2");
    assert.deepEqual(net.attempts.map(([, a]) => a), ["b1:1", "b2:2"]);
  });

  test("connect() on a client that is not closed is refused", async () => {
    const { client } = makeClient();
    await client.connect();
    await assert.rejects(client.connect(), (e) => e instanceof MmoError && /already online/.test(e.message));
  });

  test("login sends the credentials on the login route and keeps session, user, token", async () => {
    const { client, net, clock } = makeClient();
    await client.connect();
    const login = watch(client.login({ user: "harry", password: "pw" }));
    const transport = net.last;
    const [packet] = transport.sent();
    assert.equal(packet.route, "sso.login");
    assert.deepEqual(decodeValue(packet.body), { user: "harry", password: "pw" });
    transport.respond(packet.seq, { ...LOGIN_REPLY, nick: "H" });
    assert.equal((await resolution(login)).nick, "H");
    assert.deepEqual([client.sessionId, client.userId, client.token], ["s1", "u1", "t1"]);
    assert.equal(client.loginReply.nick, "H");
    await clock.advance(4000);
    assert.deepEqual(transport.sent().map((p) => p.kind), [PacketKind.HEARTBEAT]);
  });

  test("a refused login rejects with LoginFailedError; the client stays online to try again", async () => {
    const { client, net } = makeClient(undefined, { loginRoute: "auth.enter" });
    await client.connect();
    const login = watch(client.login({ user: "harry", password: "bad" }));
    const [packet] = net.last.sent();
    assert.equal(packet.route, "auth.enter");
    net.last.error(packet.seq, ClientError.LOGIN_FAILED, "BadPassword: no");
    const error = await rejection(login);
    assert.ok(error instanceof LoginFailedError);
    assert.equal(error.errorType, "BadPassword");
    assert.deepEqual([client.state, client.sessionId], ["online", undefined]);
  });

  test("a login reply without session_id is an error", async () => {
    const { client, net } = makeClient();
    await client.connect();
    const login = watch(client.login({ user: "x" }));
    net.last.respond(net.last.sent()[0].seq, { user_id: "x" });
    assert.match((await rejection(login)).message, /no session_id/);
  });

  test("login works whatever valueOptions the client has", async () => {
    const { client, net } = makeClient(undefined, { valueOptions: { maps: "map", int64: "bigint" } });
    await client.connect();
    const login = watch(client.login({ user: "x" }));
    net.last.respond(net.last.sent()[0].seq, LOGIN_REPLY);
    assert.equal((await resolution(login)).session_id, "s1");
    const reply = watch(client.request("a.b"));
    net.last.respond(net.last.sent()[0].seq, { n: 1 });
    assert.deepEqual(await resolution(reply), new Map([["n", 1n]]));
  });

  test("register() calls sso.register before login", async () => {
    const { client, net } = makeClient();
    await client.connect();
    const registered = watch(client.register({ user: "ginny", password: "pw" }));
    const [packet] = net.last.sent();
    assert.equal(packet.route, "sso.register");
    assert.deepEqual(decodeValue(packet.body), { user: "ginny", password: "pw" });
    net.last.respond(packet.seq, { user_id: "u2" });
    assert.deepEqual(await resolution(registered), { user_id: "u2" });
  });

  test("resume() takes up a session kept from an earlier connection", async () => {
    const { client, net, clock } = makeClient();
    await client.connect();
    const resumed = watch(client.resume("s9", "t9"));
    const [packet] = net.last.sent();
    assert.equal(packet.route, "session.resume");
    assert.deepEqual(decodeValue(packet.body), { session_id: "s9", token: "t9" });
    net.last.respond(packet.seq, { session_id: "s9", user_id: "u9", token: "t10", resumed: true, heartbeat: 2 });
    assert.equal((await resolution(resumed)).resumed, true);
    assert.deepEqual([client.sessionId, client.userId, client.token], ["s9", "u9", "t10"]);
    await clock.advance(2000);
    assert.deepEqual(net.last.sent().map((p) => p.kind), [PacketKind.HEARTBEAT]);
  });

  test("the brokerlist's tls list and the transport choose the URL", async () => {
    const tcp = makeClient({ "b1:1": 0.1 });
    tcp.net.tls = ["b1:1"];
    await tcp.client.connect();
    assert.deepEqual(tcp.net.urls, ["tls://b1:1"]);

    const ws = makeClient({}, { transport: "websocket" });
    ws.net.websockets = { "w1:1": 0.3, "w2:2": 0.1 };
    ws.net.up = new Set(["w2:2"]);
    ws.net.tls = ["w2:2"];
    await ws.client.connect();
    assert.deepEqual(ws.net.urls, ["wss://w2:2/"]);

    const never = makeClient({ "b1:1": 0.1 }, { tls: false });
    never.net.tls = ["b1:1"];
    await never.client.connect();
    assert.deepEqual(never.net.urls, ["tcp://b1:1"]);

    const url = makeClient({}, { brokerlist: undefined, broker: "wss://h:443/" });
    url.net.up.add("h:443");
    assert.equal(url.client.broker, "h:443");
    await url.client.connect();
    assert.deepEqual(url.net.urls, ["wss://h:443/"]);
  });

  test("the transport defaults to WebSocket where there is one, else TCP", () => {
    assert.equal(new Client({ broker: "h:1", WebSocket: class {} }).transport, "websocket");
    const expected = typeof globalThis.WebSocket === "function" ? "websocket" : "tcp";
    assert.equal(new Client({ broker: "h:1" }).transport, expected);
    assert.equal(new Client({ broker: "tls://h:1" }).transport, "tcp");
    assert.equal(new Client({ broker: "ws://h:1/", brokerlist: "http://l/" }).transport, "websocket");
    assert.equal(new Client({ broker: "ws://h:1/", transport: "tcp" }).transport, "tcp");
  });
});

describe("traffic", () => {
  test("request, notify and on() go through the current connection", async () => {
    const { client, net } = await loggedIn();
    const transport = net.last;
    const pushes = [];
    client.on("chat.message", (body) => pushes.push(body));
    const joined = watch(client.request("chat.join", { room: "lobby" }));
    client.notify("chat.send", { content: "hi" });
    const packets = transport.sent();
    assert.deepEqual(
      packets.map((p) => [p.kind, p.route]),
      [
        [PacketKind.REQUEST, "chat.join"],
        [PacketKind.NOTIFY, "chat.send"],
      ],
    );
    transport.respond(packets[0].seq, ["harry"]);
    transport.push("chat.message", { content: "yo" });
    assert.deepEqual(await resolution(joined), ["harry"]);
    assert.deepEqual(pushes, [{ content: "yo" }]);
  });

  test("requests are numbered per session: 1 was the login", async () => {
    const { client, net } = await loggedIn();
    client.request("a.b").catch(() => {});
    client.request("a.b", {}, { trace: "t-1" }).catch(() => {});
    const packets = net.last.sent();
    assert.deepEqual(packets.map((p) => p.seq), [2, 3]);
    assert.equal(packets[1].trace, "t-1");
  });

  test("requests default to requestTimeout", async () => {
    const { client, clock } = await loggedIn(undefined, { requestTimeout: 1500 });
    const reply = watch(client.request("slow.op"));
    await clock.advance(1499);
    assert.deepEqual(await outcome(reply), ["pending"]);
    await clock.advance(1);
    assert.ok((await rejection(reply)) instanceof ClientTimeoutError);
  });

  test("errors without seq and kicks reach the client's handlers", async () => {
    const { client, net } = await loggedIn();
    const errors = [];
    const kicks = [];
    client.onError((e) => errors.push(e));
    client.onKick((k) => kicks.push(k));
    net.last.error(0, ClientError.BAD_REQUEST, "chat.send: join a room first");
    net.last.kick(ClientError.KICKED, "banned");
    assert.deepEqual(errors.map((e) => e.message), ["BAD_REQUEST: chat.send: join a room first"]);
    assert.ok(kicks[0] instanceof KickedError);
  });

  test("a bad body fails at once, online or not", async () => {
    const { client } = await loggedIn();
    await assert.rejects(client.request("a.b", { f: () => 1 }), /cannot encode/);
    assert.throws(() => client.notify("a.b", Symbol("x")), /cannot encode/);
  });
});

describe("reconnecting and resuming", () => {
  test("a drop re-fetches the brokerlist, connects elsewhere and resumes first", async () => {
    const { client, net, clock } = await loggedIn({ "b1:1": 0.1, "b2:2": 0.5 });
    assert.equal(client.brokerAddress, "b1:1");
    const resumed = [];
    client.onResumed((r) => resumed.push(r));
    await net.kill("b1:1");
    assert.equal(client.state, "reconnecting");
    assert.equal(net.fetches, 2);
    const transport = net.last;
    assert.equal(transport.address, "b2:2");
    const [packet] = transport.sent();
    // The resume's seq goes on from the session's (docs/protocol.md 5.7.5): the login was 1.
    assert.deepEqual([packet.kind, packet.seq, packet.route], [PacketKind.REQUEST, 2, "session.resume"]);
    assert.deepEqual(decodeValue(packet.body), { session_id: "s1", token: "t1" });
    const reply = { session_id: "s1", user_id: "u1", token: "t2", resumed: true };
    transport.respond(packet.seq, reply);
    await clock.advance(0);
    assert.deepEqual([client.state, client.brokerAddress, client.token, client.sessionId], ["online", "b2:2", "t2", "s1"]);
    assert.deepEqual(resumed, [reply]);
    await clock.advance(4000);
    assert.deepEqual(transport.sent().map((p) => p.kind), [PacketKind.HEARTBEAT]);
  });

  test("a broker still listed after its connection dropped is passed over if others exist", async () => {
    const { net, clock } = await loggedIn({ "b1:1": 0, "b2:2": 0.9 });
    net.last.drop();
    await clock.advance(0);
    assert.equal(net.last.address, "b2:2");
  });

  test("without a brokerlist, reconnecting retries the same broker", async () => {
    const { client, net, clock } = await loggedIn({ "b1:1": 0 }, { brokerlist: undefined, broker: "b1:1" });
    net.last.drop();
    await clock.advance(0);
    assert.deepEqual(net.attempts.map(([, a]) => a), ["b1:1", "b1:1"]);
    assert.equal(client.state, "reconnecting");
  });

  test("requests and notifies made while reconnecting wait for the resume, in order", async () => {
    const { client, net, clock } = await loggedIn({ "b1:1": 0.1, "b2:2": 0.5 });
    net.up.delete("b2:2");
    await net.kill("b1:1");
    const joined = watch(client.request("chat.join", { room: "lobby" }, { timeout: 3000 }));
    client.notify("chat.send", { content: "queued" });
    assert.deepEqual(await outcome(joined), ["pending"]);
    net.up.add("b2:2");
    net.listed["b2:2"] = 0.5;
    await clock.advance(500); // the second attempt: 0.5 to 1 s after the first
    const transport = net.last;
    const [resume] = transport.sent();
    assert.equal(resume.route, "session.resume");
    transport.respond(resume.seq, { session_id: "s1", token: "t2", resumed: true });
    await clock.advance(0);
    const packets = transport.sent();
    assert.deepEqual(
      packets.map((p) => [p.route, p.kind]),
      [
        ["chat.join", PacketKind.REQUEST],
        ["chat.send", PacketKind.NOTIFY],
      ],
    );
    transport.respond(packets[0].seq, "joined");
    assert.equal(await resolution(joined), "joined");
  });

  test("a request in flight when the connection drops is resent with its seq; seqs go on", async () => {
    const { client, net, clock } = await loggedIn({ "b1:1": 0.1, "b2:2": 0.5 });
    const bought = watch(client.request("shop.buy", { item: 7 }));
    const [first] = net.last.sent().filter((p) => p.route === "shop.buy");
    await net.kill("b1:1");
    const transport = net.last;
    const [resume] = transport.sent();
    transport.respond(resume.seq, { session_id: "s1", token: "t2" });
    await clock.advance(0);
    const [again] = transport.sent();
    assert.equal(again.route, "shop.buy");
    assert.equal(again.seq, first.seq);
    assert.deepEqual(again.body, first.body);
    transport.respond(again.seq, "bought");
    assert.equal(await resolution(bought), "bought");
    client.request("a.b").catch(() => {});
    assert.equal(transport.sent().at(-1).seq, resume.seq + 1);
  });

  test("a refused resume ends the session: requests fail instead of waiting", async () => {
    const { client, net } = await loggedIn({ "b1:1": 0.1, "b2:2": 0.5 });
    const bought = watch(client.request("shop.buy", { item: 7 }));
    await net.kill("b1:1");
    const [resume] = net.last.sent();
    net.last.error(resume.seq, ClientError.RESUME_FAILED, "expired");
    const error = await rejection(bought);
    assert.ok(error instanceof DisconnectedError);
  });

  test("the wait for a new connection counts against the request's timeout", async () => {
    const { client, net, clock } = await loggedIn({ "b1:1": 0.1 });
    await net.kill("b1:1");
    const reply = watch(client.request("a.b", {}, { timeout: 1000 }));
    await clock.advance(1000);
    const error = await rejection(reply);
    assert.ok(error instanceof ClientTimeoutError);
    assert.equal(client.state, "reconnecting");
  });

  test("an aborted request stops waiting for the new connection", async () => {
    const { client, net, clock } = await loggedIn({ "b1:1": 0.1, "b2:2": 0.5 });
    net.up.delete("b2:2");
    await net.kill("b1:1");
    const controller = new AbortController();
    const reply = watch(client.request("a.b", {}, { signal: controller.signal, timeout: 10_000 }));
    controller.abort(new Error("left the screen"));
    assert.equal((await rejection(reply)).message, "left the screen");
    net.up.add("b2:2");
    net.listed["b2:2"] = 0.5;
    await clock.advance(500);
    const [resume] = net.last.sent();
    net.last.respond(resume.seq, { session_id: "s1", token: "t2" });
    await clock.advance(0);
    assert.deepEqual(net.last.sent(), []);
  });

  test("reconnecting backs off (0, 0.5, 1, 2, 4, 4 s...) and gives up after resumeWindow", async () => {
    const { client, net, clock } = await loggedIn({ "b1:1": 0.1 }, { brokerlist: undefined, broker: "b1:1" });
    const closed = [];
    client.onClosed((r) => closed.push(r));
    await net.kill("b1:1");
    const waiting = watch(client.request("a.b", {}, { timeout: 100_000 }));
    const start = net.attempts[1][0];
    for (let i = 0; client.state !== "closed" && i < 100; i++) await clock.next();
    const times = net.attempts.slice(1).map(([t]) => t - start);
    const pauses = times.slice(1).map((t, i) => t - times[i]);
    assert.equal(times[0], 0);
    assert.deepEqual(pauses.slice(0, 6), [500, 1000, 2000, 4000, 4000, 4000]);
    assert.equal(Math.max(...pauses), 4000);
    assert.ok(times.at(-1) <= 30_000);
    assert.equal(client.state, "closed");
    assert.equal(client.sessionId, undefined);
    assert.equal(closed.length, 1);
    assert.ok(closed[0] instanceof DisconnectedError);
    assert.match(closed[0].message, /could not resume within 30 s/);
    assert.ok((await rejection(waiting)) instanceof DisconnectedError);
    assert.throws(() => client.notify("a.b"), DisconnectedError);
  });

  test("with the highest draws, pauses reach their bounds: 0.5, 1, 2, 4, 8, 8 s", async () => {
    const { client, net, clock } = await loggedIn(
      { "b1:1": 0.1 },
      { brokerlist: undefined, broker: "b1:1", random: () => 1 },
    );
    await net.kill("b1:1");
    for (let i = 0; client.state !== "closed" && i < 100; i++) await clock.next();
    const times = net.attempts.slice(1).map(([t]) => t);
    const pauses = times.slice(1).map((t, i) => t - times[i]);
    assert.equal(times[0] - net.attempts[0][0], 500);
    assert.deepEqual(pauses.slice(0, 5), [1000, 2000, 4000, 8000, 8000]);
  });

  test("reconnect pauses are drawn at random within their bounds: clients spread out", async () => {
    const firsts = [];
    for (let seed = 0; seed < 100; seed++) {
      const { net, clock } = await loggedIn(
        { "b1:1": 0.1 },
        { brokerlist: undefined, broker: "b1:1", random: seeded(seed) },
      );
      const start = clock.now();
      net.up.delete("b1:1");
      net.last.drop();
      while (net.attempts.length < 4) await clock.next();
      const times = net.attempts.slice(1).map(([t]) => t - start);
      firsts.push(times[0]);
      assert.ok(times[0] >= 0 && times[0] <= 500);
      assert.ok(times[1] - times[0] >= 500 && times[1] - times[0] <= 1000);
      assert.ok(times[2] - times[1] >= 1000 && times[2] - times[1] <= 2000);
    }
    assert.ok(Math.max(...firsts) - Math.min(...firsts) > 400);
    assert.ok(new Set(firsts.map((t) => Math.round(t * 1000))).size > 90);
  });

  test("RESUME_FAILED closes the client at once (the session is gone)", async () => {
    const { client, net } = await loggedIn();
    const closed = [];
    client.onClosed((r) => closed.push(r));
    await net.kill("b1:1");
    const transport = net.last;
    const [resume] = transport.sent();
    transport.error(resume.seq, ClientError.RESUME_FAILED, "expired");
    await flush();
    assert.equal(client.state, "closed");
    assert.ok(closed[0].cause instanceof ResumeFailedError);
    assert.ok(!transport.connected);
    assert.equal(net.attempts.length, 2);
  });

  test("an UNAVAILABLE answer to the resume is retried after the backoff", async () => {
    const { client, net, clock } = await loggedIn();
    await net.kill("b1:1");
    const [resume] = net.last.sent();
    net.last.error(resume.seq, ClientError.UNAVAILABLE, "session service down");
    await clock.advance(0);
    assert.equal(client.state, "reconnecting");
    await clock.advance(500);
    assert.equal(net.connections.length, 3);
    const [again] = net.last.sent();
    net.last.respond(again.seq, { session_id: "s1", token: "t3" });
    await clock.advance(0);
    assert.deepEqual([client.state, client.token], ["online", "t3"]);
  });

  test("a resume without answer costs a request timeout, then the next attempt goes on", async () => {
    const { client, net, clock } = await loggedIn(undefined, { requestTimeout: 2000 });
    await net.kill("b1:1");
    await clock.advance(2000);
    assert.equal(client.state, "reconnecting");
    await clock.advance(500);
    assert.equal(net.connections.length, 3);
  });

  for (const code of [ClientError.KICKED, ClientError.REPLACED]) {
    test(`KICK ${code === ClientError.KICKED ? "KICKED" : "REPLACED"} ends the session without reconnecting`, async () => {
      const { client, net, clock } = await loggedIn();
      const closed = [];
      client.onClosed((r) => closed.push(r));
      net.last.kick(code, "bye");
      await clock.advance(60_000);
      assert.equal(client.state, "closed");
      assert.equal(net.attempts.length, 1);
      assert.equal(closed[0].cause.code, code);
      assert.equal(client.sessionId, undefined);
    });
  }

  for (const code of [ClientError.SHUTDOWN, ClientError.IDLE]) {
    test(`KICK ${code === ClientError.SHUTDOWN ? "SHUTDOWN" : "IDLE"} is a drop to recover from`, async () => {
      const { client, net, clock } = await loggedIn();
      const first = net.last;
      first.kick(code);
      assert.equal(client.state, "reconnecting");
      await clock.advance(0);
      assert.notEqual(net.last, first);
      assert.equal(net.last.sent()[0].route, "session.resume");
    });
  }

  test("a request made while a kicked connection closes waits for the resume", async () => {
    const { client, net, clock } = await loggedIn();
    const first = net.last;
    first.close = () => {}; // the close takes its time
    first.kick(ClientError.SHUTDOWN, "the broker is stopping; resume elsewhere");
    assert.equal(client.state, "online");
    const reply = watch(client.request("a.b"));
    client.notify("c.d");
    assert.deepEqual(first.sent(), []);
    first.drop();
    await clock.advance(0);
    const transport = net.last;
    const [resume] = transport.sent();
    transport.respond(resume.seq, { session_id: "s1", token: "t2" });
    await clock.advance(0);
    const packets = transport.sent();
    assert.deepEqual(packets.map((p) => p.route), ["a.b", "c.d"]);
    transport.respond(packets[0].seq, 1);
    assert.equal(await resolution(reply), 1);
  });

  test("a broker that stays silent for three heartbeats is left for another", async () => {
    const { client, net, clock } = await loggedIn({ "b1:1": 0.1, "b2:2": 0.5 });
    const first = net.last;
    await clock.advance(8000);
    assert.equal(first.sent().length, 2); // heartbeats at 4 and 8 s, unanswered
    assert.equal(client.state, "online");
    await clock.advance(4000);
    assert.ok(!first.connected);
    assert.equal(client.state, "reconnecting");
    assert.equal(net.last.address, "b2:2");
    assert.equal(net.last.sent()[0].route, "session.resume");
  });

  test("with a brokerlist and a fixed broker, reconnects consult the brokerlist", async () => {
    const { net } = await loggedIn({ "b1:1": 0.1, "b2:2": 0.5 }, { broker: "b2:2" });
    assert.equal(net.fetches, 0);
    await net.kill("b2:2");
    assert.equal(net.fetches, 1);
    assert.equal(net.last.address, "b1:1");
  });

  test("a drop before login does not reconnect: there is nothing to resume", async () => {
    const { client, net } = makeClient();
    const closed = [];
    client.onClosed((r) => closed.push(r));
    await client.connect();
    const registered = watch(client.register({ user: "x", password: "y" }));
    net.last.drop();
    assert.equal(client.state, "closed");
    assert.ok((await rejection(registered)) instanceof DisconnectedError);
    assert.ok(closed[0] instanceof DisconnectedError);
    assert.equal(net.attempts.length, 1);
  });

  test("push handlers registered on the client survive a reconnect", async () => {
    const { client, net, clock } = await loggedIn();
    const seen = [];
    client.on("a.b", (body) => seen.push(body));
    await net.kill("b1:1");
    const [resume] = net.last.sent();
    net.last.respond(resume.seq, { session_id: "s1", token: "t2" });
    await clock.advance(0);
    net.last.push("a.b", "after");
    assert.deepEqual(seen, ["after"]);
  });

  test("the state goes connecting, online, reconnecting, online, closed", async () => {
    const { client, net, clock } = makeClient();
    const states = [];
    client.onStateChange((s) => states.push(s));
    await client.connect();
    const login = watch(client.login({}));
    net.last.respond(1, LOGIN_REPLY);
    await resolution(login);
    await net.kill("b1:1");
    net.last.respond(net.last.sent()[0].seq, { session_id: "s1", token: "t2" });
    await clock.advance(0);
    await client.close();
    assert.deepEqual(states, ["connecting", "online", "reconnecting", "online", "closed"]);
  });
});

describe("refresh, logout, close", () => {
  test("the token is refreshed at half its lifetime, and a resume uses the newest", async () => {
    const { client, net, clock } = makeClient();
    await client.connect();
    const login = watch(client.login({ user: "harry", password: "pw" }));
    const transport = net.last;
    transport.respond(transport.sent()[0].seq, { ...LOGIN_REPLY, token_ttl: 4 });
    await resolution(login);
    await clock.advance(1900);
    assert.deepEqual(transport.sent().filter((p) => p.kind === PacketKind.REQUEST), []);
    await clock.advance(100);
    const [refresh] = transport.sent().filter((p) => p.kind === PacketKind.REQUEST);
    assert.equal(refresh.route, "session.refresh");
    assert.deepEqual(decodeValue(refresh.body), {});
    transport.respond(refresh.seq, { token: "t2", token_ttl: 4 });
    await clock.advance(0);
    assert.equal(client.token, "t2");
    await clock.advance(2000);
    const [again] = transport.sent().filter((p) => p.kind === PacketKind.REQUEST);
    assert.equal(again.route, "session.refresh");
    transport.respond(again.seq, { token: "t3", token_ttl: 4 });
    await clock.advance(0);
    await net.kill("b1:1");
    const [resume] = net.last.sent();
    assert.deepEqual(decodeValue(resume.body), { session_id: "s1", token: "t3" });
  });

  test("a refused refresh is tried again at a quarter of the lifetime", async () => {
    const { client, net, clock } = makeClient();
    await client.connect();
    const login = watch(client.login({}));
    net.last.respond(net.last.sent()[0].seq, { ...LOGIN_REPLY, token_ttl: 8 });
    await resolution(login);
    await clock.advance(4000);
    const [refresh] = net.last.sent().filter((p) => p.kind === PacketKind.REQUEST);
    net.last.error(refresh.seq, ClientError.SERVICE_ERROR, "ResumeFailed: not its latest token");
    await clock.advance(1999);
    assert.deepEqual(net.last.sent().filter((p) => p.kind === PacketKind.REQUEST), []);
    await clock.advance(1);
    assert.equal(net.last.sent().filter((p) => p.kind === PacketKind.REQUEST)[0].route, "session.refresh");
    assert.equal(client.token, "t1");
  });

  test("refreshToken() asks now and keeps the new token", async () => {
    const { client, net } = await loggedIn(undefined, { autoRefresh: false });
    const refreshed = watch(client.refreshToken());
    const [packet] = net.last.sent();
    net.last.respond(packet.seq, { token: "t5", token_ttl: 100 });
    assert.equal((await resolution(refreshed)).token, "t5");
    assert.equal(client.token, "t5");
    const refused = watch(client.refreshToken());
    net.last.error(net.last.sent()[0].seq, ClientError.SERVICE_ERROR, "ResumeFailed: gone");
    const error = await rejection(refused);
    assert.ok(error instanceof ServiceError);
    assert.equal(error.errorType, "ResumeFailed");
  });

  test("logout sends session.logout; the broker's close is not taken for a drop", async () => {
    const { client, net, clock } = await loggedIn();
    const closed = [];
    client.onClosed((r) => closed.push(r));
    const transport = net.last;
    const done = watch(client.logout());
    const [packet] = transport.sent();
    assert.equal(packet.route, "session.logout");
    assert.equal(packet.seq, 2);
    transport.respond(packet.seq, { logged_out: true });
    transport.drop("the broker closes after a logout");
    await resolution(done);
    assert.deepEqual([client.state, client.sessionId], ["closed", undefined]);
    assert.ok(!transport.connected);
    await clock.advance(60_000);
    assert.equal(net.attempts.length, 1);
    assert.deepEqual(closed, [null]);
  });

  test("a connection lost during logout still ends in a clean close", async () => {
    const { client, net } = await loggedIn();
    const done = watch(client.logout());
    net.last.drop();
    assert.equal(await resolution(done), undefined);
    assert.equal(client.state, "closed");
  });

  test("close() while reconnecting stops the attempts and fails waiting requests", async () => {
    const { client, net, clock } = await loggedIn({ "b1:1": 0.1 });
    await net.kill("b1:1");
    const waiting = watch(client.request("a.b", {}, { timeout: 10_000 }));
    await client.close();
    const attempts = net.attempts.length;
    await clock.advance(60_000);
    assert.equal(net.attempts.length, attempts);
    assert.equal(client.state, "closed");
    assert.ok((await rejection(waiting)) instanceof DisconnectedError);
    assert.deepEqual(clock.pending(), []);
  });

  test("close() while the resume is in flight closes that connection and stays closed", async () => {
    const { client, net, clock } = await loggedIn();
    await net.kill("b1:1");
    const transport = net.last;
    await client.close();
    assert.ok(!transport.connected);
    await clock.advance(60_000);
    assert.equal(client.state, "closed");
    assert.equal(net.connections.length, 2);
  });

  test("after close() the client connects again; the session is kept for resume()", async () => {
    const { client, net } = await loggedIn();
    await client.close();
    assert.deepEqual([client.sessionId, client.token], ["s1", "t1"]);
    assert.equal(await client.connect(), "b1:1");
    client.resume(client.sessionId, client.token).catch(() => {});
    assert.equal(net.last.sent()[0].route, "session.resume");
  });
});
