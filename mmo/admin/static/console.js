// The mmo admin console: renders the cluster's state pushed over Server-Sent Events, and
// sends the operators' actions (each confirmed, with the session's CSRF token).
"use strict";

const csrf = document.querySelector('meta[name="csrf-token"]').content;

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (value !== null && value !== undefined) node.setAttribute(key, value);
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function num(value, digits = 1) {
  return value === null || value === undefined ? "-" : Number(value).toFixed(digits);
}

function duration(seconds) {
  if (seconds === null || seconds === undefined) return "-";
  if (seconds < 120) return `${Math.round(seconds)} s`;
  if (seconds < 7200) return `${Math.round(seconds / 60)} min`;
  return `${(seconds / 3600).toFixed(1)} h`;
}

function toast(text, bad = false) {
  const box = document.getElementById("toast");
  box.textContent = text;
  box.className = "show" + (bad ? " bad" : "");
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { box.className = ""; }, 5000);
}

async function api(path, body) {
  const options = body === undefined ? {} : {
    method: "POST",
    headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
    body: JSON.stringify(body),
  };
  const response = await fetch(path, options);
  const data = await response.json();
  if (!response.ok) throw new Error(data.error || response.statusText);
  return data;
}

async function act(question, path, body) {
  if (!window.confirm(question)) return null;
  try {
    const result = await api(path, body);
    toast(`done: ${question.replace(/\?$/, "")}`);
    loadAudit();
    return result;
  } catch (error) {
    toast(`failed: ${error.message}`, true);
    return null;
  }
}

// -- the cluster ---------------------------------------------------------------------

function healthCell(row) {
  const cls = row.health === "ready" ? "ready" : "bad";
  const text = row.detail ? `${row.health}: ${row.detail}` : row.health;
  return el("td", { class: `health ${cls}` }, text);
}

function stateCell(row) {
  if (row.gone) return el("td", { class: "state bad" }, "gone");
  if (row.draining) return el("td", { class: "state draining" }, "draining");
  return el("td", { class: "state" }, "serving");
}

function drainButton(row) {
  if (row.gone || !row.instance || ["yellow", "brokerlist", "cluster", "admin"].includes(row.role)) return "";
  const draining = !!row.draining;
  const label = draining ? "Undrain" : "Drain";
  return el("button", {
    type: "button", class: "drain", "data-instance": row.instance,
    onclick: () => act(`${label} ${row.service} ${row.instance}?`, "/api/drain",
      { service: row.service, instance: row.instance, draining: !draining }),
  }, label);
}

// A rolling reload of the row's service: offered when a cluster supervisor is registered
// (it is the one that reloads), on workers and fight dispatchers.
function reloadButton(row, supervised) {
  if (!supervised || row.gone || !["worker", "fight"].includes(row.role)) return "";
  return el("button", {
    type: "button", class: "reload", "data-service": row.service,
    onclick: () => act(`Reload ${row.service}: replace its instances by ones running the code on disk now?`,
      "/api/reload", { service: row.service }),
  }, "Reload");
}

function renderProcesses(state) {
  const body = document.querySelector("#processes tbody");
  const supervised = state.processes.some((row) => row.service === "cluster" && !row.gone);
  body.replaceChildren(...state.processes.map((row) => el("tr",
    { class: row.gone ? "gone" : "", "data-instance": row.instance, "data-role": row.role },
    el("td", {}, row.role), el("td", {}, row.service), el("td", { class: "instance" }, row.instance),
    healthCell(row), stateCell(row), el("td", { class: "num" }, num(row.load, 3)),
    el("td", { class: "num" }, num(row.requests_per_s)), el("td", { class: "num" }, num(row.errors_per_s)),
    el("td", { class: "num" }, num(row.p99_ms, 2)), el("td", { class: "num" }, num(row.cpu_percent)),
    el("td", { class: "num" }, num(row.rss_mib)), el("td", { class: "num" }, row.sessions ?? "-"),
    el("td", { class: "num" }, row.connections ?? "-"), el("td", {}, row.version || "-"),
    el("td", {}, duration(row.uptime_s)),
    el("td", { class: "endpoints" },
      Object.entries(row.endpoints || {}).map(([k, v]) => `${k} ${v}`).join(", ")),
    el("td", { class: "actions" }, drainButton(row), " ", reloadButton(row, supervised)))));
  const c = state.cluster;
  document.getElementById("summary").textContent =
    `${c.processes} processes, ${c.ready} ready, ${c.not_ready} not ready, ` +
    `${c.unreachable} unreachable; ${c.sessions} sessions; ${num(c.requests_per_s)} req/s`;
}

// -- traffic charts (SVG, drawn here: no chart library) --------------------------------

function points(series, index, width, height, top) {
  const times = series.map((p) => p[0]);
  const t0 = Math.min(...times), t1 = Math.max(...times, t0 + 1);
  return series.filter((p) => p[index] !== null).map((p) =>
    `${((p[0] - t0) / (t1 - t0) * width).toFixed(1)},${(height - p[index] / top * height).toFixed(1)}`
  ).join(" ");
}

function renderCharts(state) {
  const box = document.getElementById("charts");
  const charts = Object.entries(state.series).filter(([, s]) => s.some((p) => p[1]));
  box.replaceChildren(...charts.map(([service, series]) => {
    const last = series[series.length - 1];
    const top = Math.max(1, ...series.map((p) => p[1] || 0));
    const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
    svg.setAttribute("viewBox", "0 0 300 90");
    svg.setAttribute("preserveAspectRatio", "none");
    for (const [index, cls] of [[1, "rate"], [2, "errors"]]) {
      const line = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
      line.setAttribute("class", cls);
      line.setAttribute("points", points(series, index, 300, 88, top));
      svg.append(line);
    }
    return el("div", { class: "chart", id: `chart-${service}`, "data-points": series.length },
      el("h3", {}, service),
      el("div", { class: "figures" },
        `${num(last[1])} req/s, ${num(last[2])} err/s, p50 ${num(last[3], 2)} ms, ` +
        `p99 ${num(last[4], 2)} ms (peak ${num(top)} req/s)`),
      svg);
  }));
}

// -- players and rooms --------------------------------------------------------------------

async function findPlayer(event) {
  event.preventDefault();
  const user = document.getElementById("player-user").value.trim();
  const box = document.getElementById("player-result");
  try {
    const found = await api(`/api/player?user=${encodeURIComponent(user)}`);
    if (!found.sessions.length) {
      box.replaceChildren(el("p", { class: "none" }, `${user} has no session`));
      return;
    }
    box.replaceChildren(...found.sessions.map((s) => {
      const input = el("input", { placeholder: "message to this player", class: "push-text" });
      return el("div", { class: "session", "data-session": s.session_id },
        el("div", {}, el("b", {}, s.user_id), ` session ${s.session_id} on ${s.broker} `,
          s.online ? "(online)" : "(offline)",
          s.since ? `, since ${new Date(s.since * 1000).toISOString()}` : ""),
        el("div", {}, `channels: ${s.channels.join(", ") || "none"}; bindings: ` +
          `${JSON.stringify(s.bindings)}; props: ${JSON.stringify(s.props)}`),
        el("button", { type: "button", class: "kick", onclick: () =>
          act(`Kick ${s.user_id} (${s.session_id})?`, "/api/kick", { session_id: s.session_id }) },
          "Kick"), " ",
        el("form", { class: "push-player", onsubmit: (e) => { e.preventDefault();
          act(`Send "${input.value}" to ${s.user_id}?`, "/api/push",
            { to: "session", session_id: s.session_id, text: input.value }); } },
          input, el("button", { type: "submit" }, "Send")));
    }));
  } catch (error) {
    box.replaceChildren(el("p", { class: "bad" }, error.message));
  }
}

async function loadRooms() {
  const body = document.querySelector("#rooms tbody");
  try {
    const rooms = await api("/api/channels");
    body.replaceChildren(...Object.entries(rooms).map(([channel, members]) => {
      const input = el("input", { placeholder: "message to the room", class: "push-text" });
      return el("tr", { "data-channel": channel }, el("td", {}, channel),
        el("td", { class: "num" }, members),
        el("td", {}, el("form", { class: "push-room", onsubmit: (e) => { e.preventDefault();
          act(`Send "${input.value}" to ${channel}?`, "/api/push",
            { to: "room", room: channel, text: input.value }); } },
          input, el("button", { type: "submit" }, "Send"))));
    }));
  } catch (error) {
    body.replaceChildren(el("tr", {}, el("td", { class: "bad" }, error.message)));
  }
}

function pushAll(event) {
  event.preventDefault();
  const text = document.getElementById("push-all-text").value;
  act(`Send "${text}" to every player?`, "/api/push", { to: "all", text });
}

// -- fights ------------------------------------------------------------------------------

async function loadFights() {
  const box = document.getElementById("fight-pools");
  try {
    const pools = await api("/api/fights");
    box.replaceChildren(...Object.values(pools).map((pool) => el("div", { class: "pool" },
      el("h3", {}, `${pool.service} (${pool.instance}): ${pool.fights} fights ` +
        `(${pool.reserved ?? 0} reserved, waiting for players), ` +
        `${pool.players} players, ${pool.waiting} waiting, cap ${pool.cap}` +
        (pool.draining ? ", draining" : "")),
      el("table", { class: "fight-processes" }, el("thead", {}, el("tr", {},
        ...["process", "pid", "state", "fights", "load", "room", "peak", "age", ""].map((h) => el("th", {}, h)))),
        el("tbody", {}, ...pool.processes.map((p) => el("tr", { "data-process": p.instance },
          el("td", {}, p.instance), el("td", {}, p.pid ?? "-"),
          el("td", { class: p.state === "stopping" ? "draining" : "" }, p.state),
          el("td", { class: "num" }, p.fights), el("td", { class: "num" }, p.load),
          el("td", { class: "num" }, p.room), el("td", { class: "num" }, p.peak),
          el("td", {}, duration(p.age)),
          el("td", {}, p.state === "stopping" ? "" : el("button", { type: "button", class: "drain-fight",
            onclick: async () => { await act(`Drain fight process ${p.instance}?`, "/api/drain-fight",
              { service: pool.service, pool: pool.instance, process: p.instance, draining: true });
              loadFights(); } }, "Drain")))))))));
    if (!box.children.length) box.replaceChildren(el("p", {}, "no fight pool"));
  } catch (error) {
    box.replaceChildren(el("p", { class: "bad" }, error.message));
  }
}

// -- logs and audit ----------------------------------------------------------------------

async function loadLogs(event) {
  if (event) event.preventDefault();
  const query = new URLSearchParams({ limit: "100" });
  for (const key of ["role", "instance", "level", "trace"]) {
    const value = document.getElementById(`log-${key}`).value.trim();
    if (value) query.set(key, value);
  }
  try {
    const answer = await api(`/api/logs?${query}`);
    document.getElementById("log-note").textContent = answer.collector
      ? `${answer.events.length} events` : "no log collector runs (twistd mmo-logs)";
    document.querySelector("#log-lines tbody").replaceChildren(...answer.events.slice().reverse().map((e) =>
      el("tr", { class: `level-${e.level}` }, el("td", {},
        `${e.time} ${e.level} ${e.role}/${e.instance} ${e.namespace}: ${e.message}` +
        (e.trace_id ? ` [trace=${e.trace_id}]` : "")))));
  } catch (error) {
    document.getElementById("log-note").textContent = error.message;
  }
}

async function loadAudit() {
  try {
    const entries = await api("/api/audit");
    document.querySelector("#audit-lines tbody").replaceChildren(...entries.slice().reverse().map((a) =>
      el("tr", {}, el("td", {}, new Date(a.time * 1000).toISOString()), el("td", {}, a.admin),
        el("td", {}, a.action), el("td", {}, JSON.stringify(a.what)))));
  } catch (error) { /* the next action shows it */ }
}

// -- the live feed -------------------------------------------------------------------------

function render(state) {
  window.mmoState = state;  // what the page shows, for tests and the curious
  renderProcesses(state);
  renderCharts(state);
}

function connect() {
  const live = document.getElementById("live");
  const feed = new EventSource("/events");
  feed.addEventListener("state", (event) => { live.className = "dot on"; render(JSON.parse(event.data)); });
  feed.onerror = () => { live.className = "dot"; };
}

document.getElementById("find-player").addEventListener("submit", findPlayer);
document.getElementById("refresh-rooms").addEventListener("click", loadRooms);
document.getElementById("push-all").addEventListener("submit", pushAll);
document.getElementById("refresh-fights").addEventListener("click", loadFights);
document.getElementById("log-filter").addEventListener("submit", loadLogs);
connect();
loadRooms();
loadFights();
loadLogs();
loadAudit();
setInterval(loadLogs, 5000);
