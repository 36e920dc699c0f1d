// The SDK against a real cluster (run by tests/integration/test_js_client.py, which starts
// the cluster, reads these lines and kills a broker when asked). Node speaks TCP to the
// brokers (Node 20 has no WebSocket; the browser game's test covers WebSockets).
//
//   node test/live/cluster.mjs BROKERLIST_URL
//
// Prints one JSON line per check ({"check": name, "ok": bool, "detail": ...}), and
// {"await": "kill", "broker": "host:port"} when it wants that broker killed: it then
// waits for a line "killed" on stdin. Exits 0 when every check held.
import { createInterface } from "node:readline";

import {
  Client,
  ClientTimeoutError,
  ServiceError,
  UnknownRouteError,
} from "../../dist/index.js";

const brokerlist = process.argv[2];
const lines = createInterface({ input: process.stdin });
const told = [];
let waiting = null;
lines.on("line", (line) => (waiting ? (waiting(line), (waiting = null)) : told.push(line)));
const next = () => (told.length ? Promise.resolve(told.shift()) : new Promise((r) => (waiting = r)));

let failed = 0;
function check(name, ok, detail = "") {
  if (!ok) failed += 1;
  console.log(JSON.stringify({ check: name, ok: Boolean(ok), detail: String(detail) }));
}

function within(ms, what, promise) {
  return Promise.race([
    promise,
    new Promise((_, reject) => setTimeout(() => reject(new Error(`${what}: not within ${ms} ms`)), ms)),
  ]);
}

function pushes(client, route) {
  const got = [];
  client.on(route, (body) => got.push(body));
  return got;
}

async function until(what, predicate, ms = 10000) {
  const deadline = Date.now() + ms;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`${what}: not within ${ms} ms`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

async function player(user, password = `pw-${user}`) {
  const client = new Client({ brokerlist, transport: "tcp", requestTimeout: 5000 });
  await client.connect();
  await client.login({ user, password });
  return client;
}

const clients = [];
try {
  // Brokerlist, register, login.
  const fresh = new Client({ brokerlist, transport: "tcp" });
  clients.push(fresh);
  const address = await fresh.connect();
  check("connect through the brokerlist", /^127\.0\.0\.1:\d+$/.test(address), address);
  const name = `js${process.pid}`;
  await fresh.register({ user: name, password: "pw-js-1" });
  const reply = await fresh.login({ user: name, password: "pw-js-1" });
  check("register then log in", typeof reply.session_id === "string" && fresh.userId === name, JSON.stringify(reply));

  // Requests, errors by code, deadlines.
  const echoed = await fresh.request("echo.echo", { n: 7, items: ["a", "b"], big: 2 ** 40 });
  check("a request and its reply", echoed.n === 7 && echoed.items.join() === "a,b", JSON.stringify(echoed));
  try {
    await fresh.request("nosuch.thing", {});
    check("an unknown route is refused", false, "answered");
  } catch (e) {
    check("an unknown route is refused", e instanceof UnknownRouteError, e);
  }
  try {
    await fresh.request("echo.fail", { message: "boom" });
    check("a service's error keeps its type", false, "answered");
  } catch (e) {
    check("a service's error keeps its type", e instanceof ServiceError && e.errorType === "EchoFailure", e);
  }
  const started = Date.now();
  try {
    await fresh.request("echo.sleep", { seconds: 3 }, { timeout: 300 });
    check("a request past its deadline", false, "answered");
  } catch (e) {
    check("a request past its deadline", e instanceof ClientTimeoutError && Date.now() - started < 2000, e);
  }
  const before = fresh.token;
  await fresh.refreshToken();
  check("the token is refreshed", fresh.token && fresh.token !== before);

  // Pushes: a chat room of two.
  const alice = await player("alice");
  const bob = await player("bob");
  clients.push(alice, bob);
  const heard = pushes(alice, "chat.message");
  await alice.request("chat.join", { room: "js" });
  await bob.request("chat.join", { room: "js" });
  bob.notify("chat.send", { content: "hello from node" });
  await until("alice hears bob", () => heard.some((m) => m.content === "hello from node"));
  check("a notify, broadcast back as a push", true);

  // Resume: the broker alice is on dies; she resumes on the other, still in the room.
  const resumed = new Promise((r) => alice.onResumed(r));
  console.log(JSON.stringify({ await: "kill", broker: alice.brokerAddress }));
  const answer = await within(30000, "the kill", next());
  check("the harness killed the broker", answer === "killed", answer);
  const first = alice.brokerAddress;
  await within(20000, "the resume", resumed);
  check("resumed on another broker", alice.brokerAddress !== first, `${first} -> ${alice.brokerAddress}`);
  const again = await alice.request("echo.echo", { after: "resume" });
  check("requests after the resume", again.after === "resume");
  const also = pushes(alice, "chat.message");
  await until("bob's next message", () => {
    bob.notify("chat.send", { content: "still there?" });
    return also.some((m) => m.content === "still there?");
  }, 15000);
  check("still in the room after the resume", true);

  // Kick: a second login of bob's account replaces his session.
  const kicked = new Promise((r) => bob.onKick(r));
  const closed = new Promise((r) => bob.onClosed(r));
  const bob2 = await player("bob");
  clients.push(bob2);
  const kick = await within(10000, "the kick", kicked);
  await within(10000, "the close", closed);
  check(
    "a second login of the account ends the first session (a kick, no resume)",
    ["KICKED", "REPLACED"].includes(kick.codeName) && bob.state === "closed",
    `${kick.codeName}: ${kick.detail} (${bob.state})`,
  );

  await alice.logout();
  check("logout", alice.state === "closed", alice.state);
} catch (e) {
  check("the run", false, e && e.stack ? e.stack : e);
} finally {
  await Promise.allSettled(clients.map((c) => c.close()));
  lines.close();
}
console.log(JSON.stringify({ done: true, failed }));
process.exit(failed ? 1 : 0);
