// islb console: nodes by DC and service, sessions, drains, and the live event stream,
// from the /v1 API (no library, no build step).
"use strict";
const $ = (id) => document.getElementById(id);
let token = sessionStorage.getItem("islb-token") || "";
const PER_GROUP = 200;
const expanded = new Set();
let nodes = [];
let byId = new Map();

function headers() {
  return token ? { Authorization: "Bearer " + token } : {};
}

async function askToken() {
  const dialog = $("token-dialog");
  dialog.showModal();
  await new Promise((done) => dialog.addEventListener("close", done, { once: true }));
  token = $("token").value.trim();
  sessionStorage.setItem("islb-token", token);
}

async function api(path, method = "GET") {
  for (let attempt = 0; attempt < 3; attempt++) {
    const res = await fetch(path, { method, headers: headers() });
    if (res.status === 401) { await askToken(); continue; }
    const body = await res.json().catch(() => ({}));
    if (!res.ok) throw new Error(body.detail || res.statusText);
    return body;
  }
  throw new Error("the admin token was refused");
}

async function loadNodes() {
  const all = [];
  let after = "";
  for (;;) {
    const page = await api("/v1/nodes?limit=5000" + (after ? "&after=" + encodeURIComponent(after) : ""));
    all.push(...page.nodes);
    if (!page.next) break;
    after = page.next;
  }
  nodes = all;
  byId = new Map(all.map((n) => [n.id, n]));
  render();
}

// Draws the listing again shortly, at most once a second (placements update counts in
// place; a full reload would fetch every node).
let redraw = null;
function redrawSoon() {
  if (redraw) return;
  redraw = setTimeout(() => { redraw = null; render(); }, 1000);
}

function num(v) {
  if (v && typeof v === "object" && "$value" in v) v = v.$value;
  const n = Number(v);
  return Number.isFinite(n) ? n : undefined;
}

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k.startsWith("on")) e.addEventListener(k.slice(2), v); else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c);
  return e;
}

function bar(value, max, label) {
  const pct = max > 0 ? Math.min(100, Math.round((100 * value) / max)) : 0;
  const b = el("div", { class: "bar", role: "meter", "aria-valuemin": "0", "aria-valuemax": String(max), "aria-valuenow": String(value), "aria-label": label });
  b.append(el("span", { style: "width:" + pct + "%" }));
  return b;
}

async function act(path, what) {
  try {
    await api(path, "POST");
    note(what);
    await loadNodes();
  } catch (e) {
    note(what + " failed: " + e.message);
  }
}

function render() {
  const filter = $("filter").value.trim().toLowerCase();
  const shown = nodes.filter((n) => !filter || (n.id + " " + n.node.Service).toLowerCase().includes(filter));
  $("count").textContent = "(" + shown.length + " of " + nodes.length + ")";
  const groups = new Map();
  for (const n of shown) {
    const key = n.node.DC + " · " + n.node.Service;
    if (!groups.has(key)) groups.set(key, []);
    groups.get(key).push(n);
  }
  const out = $("groups");
  out.replaceChildren();
  for (const [key, list] of [...groups].sort()) {
    const sessions = list.reduce((s, n) => s + n.sessions, 0);
    const draining = list.filter((n) => n.draining).length;
    out.append(el("h3", {}, key + " — " + list.length + " nodes, " + sessions + " sessions" + (draining ? ", " + draining + " draining" : "")));
    const table = el("table", {}, el("thead", {}, el("tr", {}, el("th", { scope: "col" }, "node"), el("th", { scope: "col" }, "load"), el("th", { scope: "col" }, "sessions"), el("th", { scope: "col" }, "state"), el("th", { scope: "col" }, "action"))));
    const body = el("tbody");
    const most = Math.max(1, ...list.map((n) => n.sessions));
    const limit = expanded.has(key) ? list.length : PER_GROUP;
    for (const n of list.slice(0, limit)) {
      const info = n.node.ExtraInfo || {};
      const load = num(info.load);
      const capacity = num(info.capacity);
      const button = n.draining
        ? el("button", { type: "button", onclick: () => act("/v1/undrain?node=" + encodeURIComponent(n.id), "undrain " + n.id) }, "Undrain")
        : el("button", { type: "button", onclick: () => act("/v1/drain?node=" + encodeURIComponent(n.id), "drain " + n.id) }, "Drain");
      button.setAttribute("aria-label", button.textContent + " " + n.id);
      body.append(el("tr", { "data-node": n.id },
        el("td", {}, n.id),
        el("td", {}, load === undefined ? "—" : bar(Math.round(load * 100), 100, "load of " + n.id)),
        el("td", {}, String(n.sessions) + (capacity ? " / " + capacity : ""), bar(n.sessions, capacity || most, "sessions of " + n.id)),
        el("td", { class: n.draining ? "draining" : "" }, n.draining ? "draining" : "up"),
        el("td", {}, button)));
    }
    table.append(body);
    out.append(el("div", { class: "scroll" }, table));
    if (list.length > limit) {
      out.append(el("button", { type: "button", onclick: () => { expanded.add(key); render(); } }, "Show all " + list.length));
    }
  }
}

// The feed keeps the latest 200 lines; lines that come faster than the screen redraws
// (a busy cluster places rooms by the thousand) are added once a frame.
const FEED_LINES = 200;
let unshown = [];
let drawing = false;
function note(text) {
  unshown.push(new Date().toLocaleTimeString() + " " + text);
  if (unshown.length > 2 * FEED_LINES) unshown = unshown.slice(-FEED_LINES);
  if (drawing) return;
  drawing = true;
  requestAnimationFrame(() => {
    drawing = false;
    const list = $("events");
    const lines = unshown.slice(-FEED_LINES);
    unshown = [];
    list.prepend(...lines.reverse().map((t) => el("li", {}, t)));
    while (list.children.length > FEED_LINES) list.lastChild.remove();
  });
}

// Reloads the listing shortly, at most once per 300 ms however many events ask for it.
let reload = null;
function soon() {
  if (reload) return;
  reload = setTimeout(() => {
    reload = null;
    loadNodes().catch((e) => note("listing failed: " + e.message));
  }, 300);
}

// Server-Sent Events read with fetch, so the admin token can go in a header.
async function follow() {
  for (;;) {
    try {
      const res = await fetch("/v1/events", { headers: headers() });
      if (res.status === 401) { await askToken(); continue; }
      $("state").textContent = "live";
      const reader = res.body.getReader();
      const text = new TextDecoder();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += text.decode(value, { stream: true });
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          const kind = (block.match(/^event: (.*)$/m) || [])[1];
          const data = (block.match(/^data: (.*)$/m) || [])[1];
          if (!kind || !data) continue;
          const e = JSON.parse(data);
          if (kind === "node") {
            if (e.action !== "update") note(e.action + " " + e.node.DC + "." + e.node.NID + " (" + e.node.Service + ")");
            if (e.action !== "update") soon();
          } else if (kind === "session") {
            if (e.reason === "placed") {
              note("session " + e.sid + " placed on " + e.to);
              const n = byId.get(e.to_key);
              if (n) { n.sessions += 1; redrawSoon(); }
            } else {
              note("session " + e.sid + " " + (e.to ? "moved to " + e.to : "released") + " (" + e.reason + ")");
              soon();
            }
          } else if (kind === "drains") {
            for (const d of e) {
              const n = nodes.find((n) => n.id === d.node);
              if (n && (n.sessions !== d.sessions || !n.draining)) soon();
            }
          }
        }
      }
    } catch (e) {
      $("state").textContent = "reconnecting… (" + e.message + ")";
    }
    await new Promise((r) => setTimeout(r, 1000));
  }
}

$("find").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const sid = $("sid").value.trim();
  try {
    const s = await api("/v1/sessions/" + encodeURIComponent(sid));
    const found = $("found");
    found.replaceChildren("Room " + s.sid + " is on " + s.node + ": " + s.why + " ",
      el("button", { type: "button", onclick: () => act("/v1/release?sid=" + encodeURIComponent(sid), "release " + sid) }, "Release"));
  } catch (e) {
    $("found").textContent = "Room " + sid + ": " + e.message;
  }
});
$("filter").addEventListener("input", render);

// Placed services (SFUs) come up without an event (ion's signal must not see them), so
// the node counts are checked every second; the list is read again when they change.
async function watchCounts() {
  try {
    const s = await api("/v1/status");
    $("state").textContent = s.ready ? "ready" : "not ready: " + s.not_ready_because.join("; ");
    if (s.nodes !== nodes.length) soon();
  } catch (e) {
    $("state").textContent = "error: " + e.message;
  }
}

(async () => {
  try {
    const s = await api("/v1/status");
    $("who").textContent = s.nid + " · " + s.dc + " · v" + s.version;
    $("state").textContent = s.ready ? "ready" : "not ready: " + s.not_ready_because.join("; ");
    await loadNodes();
  } catch (e) {
    $("state").textContent = "error: " + e.message;
  }
  follow();
  setInterval(watchCounts, 1000);
})();
