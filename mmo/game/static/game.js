// The demo game: log in (or register), chat in one room, and duel another player with the
// turn-based fight of mmo.examples.fight (docs/game.md). Everything goes through the JS SDK
// (./sdk, the build of clients/js): brokers are found through the brokerlist at this page's
// own origin, and the SDK resumes the session on another broker when its broker dies.
import { Client, ClientTimeoutError, ServiceTimeoutError, UnavailableError } from "./sdk/index.js";

const query = new URLSearchParams(location.search);
/** The chat room every player joins (`?room=NAME` picks another). */
const ROOM = query.get("room") || "hall";
/** How long "Find a fight" keeps asking the dispatcher before giving up (ms). */
const SEARCH_MS = 60_000;
/** A matchmake waits at the dispatcher for as long as the broker's deadline allows (5 s). */
const MATCHMAKE_TIMEOUT_MS = 8_000;

const $ = (id) => document.getElementById(id);
const client = makeClient();

let me = null; // our user id, once logged in
const members = new Set();
/** The fight on screen; `phase` is idle, searching, joining, waiting, fighting or over. */
let fight = newFight("idle");
let attacking = false;

// -- connection ------------------------------------------------------------------------------

/** Show the connection state: connecting, connected, reconnecting, resumed or closed. */
function showConnection(state) {
  const labels = {
    connecting: "connecting…",
    connected: "connected",
    reconnecting: "reconnecting…",
    resumed: "resumed",
    closed: "not connected",
  };
  $("connection").dataset.state = state;
  $("connection-text").textContent = labels[state] ?? state;
  document.body.dataset.connection = state;
  const broker = state === "closed" ? "" : (client.brokerAddress ?? "");
  $("broker").textContent = broker ? `broker ${broker}` : "";
  document.body.dataset.broker = broker;
}

client.onStateChange((state) => showConnection(state === "online" ? "connected" : state));

client.onResumed(() => {
  document.body.dataset.resumes = String(Number(document.body.dataset.resumes ?? 0) + 1);
  showConnection("resumed");
  // Pushes sent while the broker was dead are lost: read the room and the fight again.
  if (me === null) return;
  client.request("chat.members", {}).then(
    (list) => setMembers(list),
    (e) => chatLine("error", `members: ${describe(e)}`),
  );
  if (fight.id && ["waiting", "fighting"].includes(fight.phase)) {
    client.request("fight.state", { fight_id: fight.id }).then(applyFight, () => {});
  }
});

client.onClosed((reason) => {
  const wasIn = me !== null;
  leaveGame();
  if (wasIn && reason) loginError(`Session over: ${describe(reason)}`);
});

client.onError((error) => chatLine("error", describe(error)));

// -- logging in ------------------------------------------------------------------------------

async function enter(register) {
  const form = $("login-form");
  if (!form.reportValidity()) return;
  const credentials = { user: $("user").value.trim(), password: $("password").value };
  loginError("");
  setBusy(true);
  try {
    if (client.state === "closed") await client.connect();
    if (register) await client.register(credentials);
    const reply = await client.login(credentials);
    enterGame(String(reply.user_id));
  } catch (e) {
    loginError(describe(e));
  } finally {
    setBusy(false);
  }
}

function setBusy(busy) {
  $("login-button").disabled = busy;
  $("register-button").disabled = busy;
}

function loginError(text) {
  $("login-error").textContent = text;
}

async function enterGame(user) {
  me = user;
  $("whoami").textContent = user;
  document.body.dataset.user = user;
  $("login-panel").hidden = true;
  $("game").hidden = false;
  $("logout-button").hidden = false;
  $("password").value = "";
  renderFight();
  $("room").textContent = ROOM;
  try {
    const reply = await client.request("chat.join", { room: ROOM });
    setMembers(reply.members);
    $("chat-panel").dataset.room = ROOM;
  } catch (e) {
    chatLine("error", `could not join ${ROOM}: ${describe(e)}`);
  }
}

function leaveGame() {
  me = null;
  members.clear();
  renderMembers();
  fight = newFight("idle");
  renderFight();
  $("chat-log").replaceChildren();
  delete $("chat-panel").dataset.room;
  delete document.body.dataset.user;
  $("whoami").textContent = "";
  $("game").hidden = true;
  $("logout-button").hidden = true;
  $("login-panel").hidden = false;
}

// -- chat ------------------------------------------------------------------------------------

function setMembers(list) {
  members.clear();
  for (const user of list ?? []) members.add(String(user));
  renderMembers();
}

function renderMembers() {
  $("members").replaceChildren(
    ...[...members].sort().map((user) => {
      const li = document.createElement("li");
      li.dataset.user = user;
      li.textContent = user;
      return li;
    }),
  );
}

/** Add a line to the chat: `kind` is message, system or error. */
function chatLine(kind, text, from) {
  const li = document.createElement("li");
  li.className = kind;
  if (from !== undefined) {
    li.dataset.from = from;
    if (from === me) li.classList.add("own");
    const who = document.createElement("b");
    who.textContent = from;
    li.append(who, document.createTextNode(` ${text}`));
  } else {
    li.textContent = text;
  }
  const log = $("chat-log");
  log.append(li);
  while (log.children.length > 200) log.firstElementChild.remove();
  log.scrollTop = log.scrollHeight;
}

client.on("chat.message", (msg) => chatLine("message", String(msg.content), String(msg.from)));
client.on("chat.joined", (msg) => {
  members.add(String(msg.user));
  renderMembers();
  chatLine("system", `${msg.user} joined ${msg.room}`);
});
client.on("chat.left", (msg) => {
  members.delete(String(msg.user));
  renderMembers();
  chatLine("system", `${msg.user} left ${msg.room}`);
});

function sendChat() {
  const input = $("chat-input");
  const content = input.value.trim();
  if (!content) return;
  try {
    client.notify("chat.send", { content });
    input.value = "";
  } catch (e) {
    chatLine("error", describe(e));
  }
}

// -- the fight -------------------------------------------------------------------------------

function newFight(phase) {
  return { phase, id: null, players: [], hp: {}, maxHp: 1, turn: null, turns: -1, winner: null };
}

function foe() {
  return fight.players.find((p) => p !== me) ?? null;
}

/** "Find a fight": ask the dispatcher (fight.matchmake) until it pairs us with someone. */
async function findFight() {
  if (!["idle", "over"].includes(fight.phase)) return;
  fight = newFight("searching");
  fightError("");
  $("fight-log").replaceChildren();
  renderFight();
  const until = Date.now() + SEARCH_MS;
  while (fight.phase === "searching") {
    try {
      const reply = await client.request("fight.matchmake", { size: 2 }, { timeout: MATCHMAKE_TIMEOUT_MS });
      startFight(reply);
      return;
    } catch (e) {
      if (fight.phase !== "searching") return; // fight.start got there first
      const text = describe(e);
      // Nobody else came within the request's deadline: ask again (for a while).
      const again =
        /formed in time|already waiting/.test(text) ||
        e instanceof ClientTimeoutError ||
        e instanceof ServiceTimeoutError ||
        e instanceof UnavailableError;
      if (!again || Date.now() > until) {
        fight = newFight("idle");
        fightError(again ? "Nobody came to fight. Try again." : text);
        renderFight();
        return;
      }
      if (!/formed in time/.test(text)) await pause(500);
    }
  }
}

/** The dispatcher paired us (its fight.start push, or the matchmake's answer): join. */
async function startFight(info) {
  if (!info || !info.fight_id || info.fight_id === fight.id) return;
  if (["joining", "waiting", "fighting"].includes(fight.phase)) return; // busy with another
  fight = newFight("joining");
  fight.id = String(info.fight_id);
  fight.players = (info.players ?? []).map(String);
  $("fight-log").replaceChildren();
  fightError("");
  renderFight();
  try {
    applyFight(await client.request("fight.join", { fight_id: fight.id }));
  } catch (e) {
    if (fight.id === String(info.fight_id) && fight.phase === "joining") {
      fight = newFight("idle");
      fightError(`Could not join the fight: ${describe(e)}`);
      renderFight();
    }
  }
}

/**
 * A fight's state or event (the answers of fight.join, fight.attack and fight.state, the
 * pushes fight.turn and fight.end): hit points, whose turn, the hit it tells of, the winner.
 * The same event may come twice (as our attack's answer and as the push): `turns` orders them.
 */
function applyFight(body) {
  if (!body || String(body.fight_id) !== fight.id || fight.phase === "over") return;
  const turns = Number(body.turns ?? 0);
  if (turns < fight.turns) return; // an older state than the one shown
  // A join's answer that left before the other player arrived, read after the start.
  if (turns === fight.turns && fight.turn && !body.turn && body.winner == null) return;
  fight.turns = turns;
  if (Array.isArray(body.players)) fight.players = body.players.map(String);
  if (body.hp) {
    fight.hp = { ...body.hp };
    fight.maxHp = Math.max(fight.maxHp, ...Object.values(fight.hp).map(Number));
  }
  if (body.by !== undefined) logHit(body);
  fight.turn = body.turn ?? null;
  if (body.winner !== undefined && body.winner !== null) {
    fight.winner = String(body.winner);
    fight.phase = "over";
  } else {
    fight.phase = fight.turn ? "fighting" : "waiting";
  }
  renderFight();
}

function logHit(event) {
  const log = $("fight-log");
  const turn = String(event.turns);
  if (log.querySelector(`li[data-turn="${turn}"]`)) return;
  const li = document.createElement("li");
  li.dataset.turn = turn;
  li.dataset.by = String(event.by);
  li.dataset.target = String(event.target);
  li.dataset.damage = String(event.damage);
  li.textContent = `${event.by} hits ${event.target} for ${event.damage}`;
  if (event.by === me) li.className = "own";
  log.append(li);
  log.scrollTop = log.scrollHeight;
}

async function attack() {
  if (fight.phase !== "fighting" || fight.turn !== me || attacking) return;
  attacking = true;
  fightError("");
  renderFight();
  try {
    applyFight(await client.request("fight.attack", { fight_id: fight.id }));
  } catch (e) {
    fightError(describe(e));
  } finally {
    attacking = false;
    renderFight();
  }
}

function fightEnded(body, why) {
  if (String(body.fight_id) !== fight.id || fight.phase === "over") return;
  fight = newFight("idle");
  fightError(why);
  renderFight();
}

client.on("fight.start", (body) => startFight(body));
client.on("fight.joined", (body) => {
  if (String(body.fight_id) === fight.id) fightNote(`${body.player} is here`);
});
client.on("fight.turn", applyFight);
client.on("fight.end", applyFight);
client.on("fight.lost", (body) => fightEnded(body, `The fight was lost: ${body.reason}`));
client.on("fight.cancelled", (body) => fightEnded(body, `The fight was called off: ${body.reason}`));

function fightNote(text) {
  const li = document.createElement("li");
  li.className = "note";
  li.textContent = text;
  $("fight-log").append(li);
}

function fightError(text) {
  $("fight-error").textContent = text;
}

function renderFight() {
  const panel = $("fight-panel");
  panel.dataset.phase = fight.phase;
  setData(panel, "fightId", fight.id);
  setData(panel, "turn", fight.turn);
  setData(panel, "winner", fight.winner);
  const other = foe();
  const status = {
    idle: "Nobody to fight yet.",
    searching: "Looking for an opponent…",
    joining: `Joining the fight against ${other}…`,
    waiting: `Waiting for ${other} to join…`,
    fighting: fight.turn === me ? "Your turn: attack!" : `${fight.turn}'s turn…`,
    over: fight.winner === me ? "You win!" : `${fight.winner} wins.`,
  }[fight.phase];
  $("fight-status").textContent = status;
  const inFight = fight.id !== null;
  $("fighters").hidden = !inFight;
  for (const [who, key] of [
    [me, "me"],
    [other, "foe"],
  ]) {
    const hp = who !== null && fight.hp[who] !== undefined ? Number(fight.hp[who]) : fight.maxHp;
    $(`${key}-name`).textContent = who ?? "";
    $(`hp-${key}`).max = fight.maxHp;
    $(`hp-${key}`).value = hp;
    $(`hp-${key}-text`).textContent = inFight ? `${hp} hp` : "";
    $(`${key}-card`).classList.toggle("active", fight.phase === "fighting" && fight.turn === who);
  }
  const find = $("find-fight");
  find.disabled = !["idle", "over"].includes(fight.phase);
  find.textContent = fight.phase === "over" ? "Fight again" : "Find a fight";
  $("attack").disabled = fight.phase !== "fighting" || fight.turn !== me || attacking;
}

// -- helpers ---------------------------------------------------------------------------------

/**
 * The SDK client: brokers come from the brokerlist at this page's origin. `?broker=HOST:PORT`
 * (a WebSocket address of the list) picks the first one; reconnections always ask the list.
 */
function makeClient() {
  const brokerlist = `${location.origin}/`;
  const broker = query.get("broker");
  if (broker) {
    try {
      return new Client({ brokerlist, broker });
    } catch (e) {
      console.warn(`ignoring ?broker=${broker}: ${e.message}`);
    }
  }
  return new Client({ brokerlist });
}

function setData(element, key, value) {
  if (value === null || value === undefined) delete element.dataset[key];
  else element.dataset[key] = String(value);
}

/** What went wrong, for people: a service's own message rather than the wire's code. */
function describe(error) {
  if (!error) return "";
  return error.errorMessage || error.detail || error.message || String(error);
}

function pause(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

// -- wiring ----------------------------------------------------------------------------------

$("login-form").addEventListener("submit", (event) => {
  event.preventDefault();
  enter(false);
});
$("register-button").addEventListener("click", () => enter(true));
$("logout-button").addEventListener("click", () => {
  client.logout().catch((e) => loginError(describe(e)));
});
$("chat-form").addEventListener("submit", (event) => {
  event.preventDefault();
  sendChat();
});
$("find-fight").addEventListener("click", findFight);
$("attack").addEventListener("click", attack);

showConnection("closed");
renderFight();
document.body.dataset.ready = "true";
