// The Sluice dashboard: plain JS over the admin API, served by the gateway itself.
// Every value from the API goes into the page as text (textContent), never as HTML.
"use strict";

const TOKEN_KEY = "sluice-admin-token";
const REFRESH_MS = 2000;
const PAGE_SIZE = 50;

const $ = (selector) => document.querySelector(selector);

// ---- the API ----

class Unauthorized extends Error {}

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function api(method, path) {
  const headers = { Accept: "application/json" };
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers.Authorization = "Bearer " + token;
  const response = await fetch(path, { method, headers, cache: "no-store" });
  const text = await response.text();
  let body = text;
  if ((response.headers.get("Content-Type") || "").includes("json")) {
    try {
      body = JSON.parse(text);
    } catch (_) {
      body = text;
    }
  }
  if (response.status === 401) {
    showTokenForm(token ? "The token was refused." : "");
    throw new Unauthorized("the admin API needs a token");
  }
  if (!response.ok) {
    const message = body && typeof body === "object" && body.error ? body.error : String(text).trim();
    throw new ApiError(response.status, `${method} ${path}: ${response.status} ${message}`);
  }
  return body;
}

// ---- small helpers that build DOM from text ----

function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

function row(cells) {
  const tr = document.createElement("tr");
  for (const cell of cells) {
    if (cell instanceof Node) {
      const td = document.createElement("td");
      td.appendChild(cell);
      tr.appendChild(td);
    } else if (cell && typeof cell === "object") {
      tr.appendChild(el("td", cell.text, cell.className));
    } else {
      tr.appendChild(el("td", cell));
    }
  }
  return tr;
}

function fill(tbody, rows, emptyText, columns) {
  tbody.replaceChildren(...rows);
  if (rows.length === 0) {
    const td = el("td", emptyText, "empty");
    td.colSpan = columns;
    const tr = document.createElement("tr");
    tr.className = "empty";
    tr.appendChild(td);
    tbody.appendChild(tr);
  }
}

function setText(selector, text) {
  $(selector).textContent = text === undefined || text === null ? "—" : String(text);
}

function dash(value) {
  return value === undefined || value === null || value === "" ? "—" : value;
}

function duration(seconds) {
  let s = Math.max(0, Math.floor(Number(seconds) || 0));
  const parts = [];
  for (const [unit, size] of [["d", 86400], ["h", 3600], ["m", 60]]) {
    if (s >= size || parts.length) {
      parts.push(Math.floor(s / size) + unit);
      s %= size;
    }
  }
  parts.push(s + "s");
  return parts.join(" ");
}

function when(ms) {
  if (ms === undefined || ms === null) return "—";
  return new Date(Number(ms)).toLocaleString();
}

function ago(ms) {
  if (ms === undefined || ms === null) return "—";
  return duration((Date.now() - Number(ms)) / 1000) + " ago";
}

function isError(code) {
  return /^[45]\./.test(code);
}

function showError(message) {
  const box = $("#error");
  box.textContent = message || "";
  box.hidden = !message;
}

// ---- the token ----

function showTokenForm(message) {
  const form = $("#token-form");
  form.hidden = false;
  showError(message || "");
  $("#token").focus();
}

function setupToken() {
  $("#token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const value = $("#token").value.trim();
    if (!value) return;
    sessionStorage.setItem(TOKEN_KEY, value);
    $("#token").value = "";
    $("#token-form").hidden = true;
    $("#forget-token").hidden = false;
    showError("");
    route();
  });
  $("#forget-token").hidden = !sessionStorage.getItem(TOKEN_KEY);
  $("#forget-token").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    $("#forget-token").hidden = true;
    route();
  });
}

// ---- Overview ----

let lastSample = null; // {at, requests} of the previous /overview, for the request rate

async function loadOverview(isCurrent) {
  const o = await api("GET", "/overview");
  if (!isCurrent()) return;
  setText("#ov-version", o.version);
  setText("#ov-uptime", duration(o.uptime_s));
  const mqtt = o.mqtt || {};
  setText("#ov-mqtt", `${mqtt.connected ? "connected" : "disconnected"}${mqtt.broker ? " to " + mqtt.broker : ""}`);
  $("#ov-mqtt").className = mqtt.connected ? "ok" : "bad";
  const dtls = o.dtls || {};
  setText("#ov-dtls", dtls.enabled ? `${dtls.sessions} session${dtls.sessions === 1 ? "" : "s"}` : "off");
  setText("#ov-clients", o.clients);
  setText("#ov-observers", o.observers);
  setText("#ov-sessions", o.sessions);
  setText("#ov-requests", o.requests_total);
  const now = performance.now();
  if (lastSample && now > lastSample.at && o.requests_total >= lastSample.requests) {
    const rate = (o.requests_total - lastSample.requests) / ((now - lastSample.at) / 1000);
    setText("#ov-rate", rate.toFixed(rate < 10 ? 2 : 1) + " req/s");
  } else {
    setText("#ov-rate", "measuring…");
  }
  lastSample = { at: now, requests: o.requests_total };
  const reloads = o.reloads || {};
  setText("#ov-reload", reloads.count ? `#${reloads.count}: ${reloads.result}` : "none since start");

  const codes = Object.entries(o.responses_by_code || {}).sort(([a], [b]) => a.localeCompare(b));
  const errors = codes.filter(([code]) => isError(code));
  fill($("#codes tbody"), errors.map(([code, n]) => row([code, { text: n, className: "num" }])), "no errors", 2);
  const ok = codes.filter(([code]) => !isError(code)).reduce((sum, [, n]) => sum + Number(n), 0);
  setText("#ov-ok", `${ok} answer${ok === 1 ? "" : "s"} with a success code`);
}

// ---- Clients ----

const clients = { prefix: "", cursors: [null], next: null };

async function loadClients(isCurrent) {
  const params = new URLSearchParams({ limit: String(PAGE_SIZE) });
  if (clients.prefix) params.set("prefix", clients.prefix);
  const after = clients.cursors[clients.cursors.length - 1];
  if (after !== null) params.set("after", after);
  const page = await api("GET", "/clients?" + params);
  if (!isCurrent()) return;
  clients.next = page.next || null;
  const rows = (page.clients || []).map((c) => {
    const link = el("a", c.client_id);
    link.href = "#/clients/" + encodeURIComponent(c.client_id);
    return row([
      link,
      dash(c.user),
      dash(c.address),
      dash(c.transport),
      { text: c.observers, className: "num" },
      c.session ? "open" : "—",
      { text: c.requests, className: "num" },
      { text: c.errors, className: c.errors ? "num bad" : "num" },
      ago(c.last_seen_ms),
    ]);
  });
  fill($("#clients-table tbody"), rows, clients.prefix ? `no client id starts with “${clients.prefix}”` : "no clients", 9);
  const shown = (page.clients || []).length;
  setText("#clients-summary", `${shown} shown, page ${clients.cursors.length}; ${page.total} known`);
  $("#clients-prev").disabled = clients.cursors.length <= 1;
  $("#clients-next").disabled = !clients.next;
}

function setupClients() {
  let timer = null;
  const search = () => {
    clients.prefix = $("#client-search").value.trim();
    clients.cursors = [null];
    refreshNow();
  };
  $("#client-search").addEventListener("input", () => {
    clearTimeout(timer);
    timer = setTimeout(search, 250);
  });
  $("#clients-search").addEventListener("submit", (event) => {
    event.preventDefault();
    clearTimeout(timer);
    search();
  });
  $("#clients-next").addEventListener("click", () => {
    if (!clients.next) return;
    clients.cursors.push(clients.next);
    refreshNow();
  });
  $("#clients-prev").addEventListener("click", () => {
    if (clients.cursors.length > 1) clients.cursors.pop();
    refreshNow();
  });
}

// ---- one client ----

const CLIENT_FIELDS = [
  ["user", "User", dash],
  ["address", "Address", dash],
  ["transport", "Transport", dash],
  ["identity", "Identity", dash],
  ["connected_since_ms", "Connected since", when],
  ["last_seen_ms", "Last seen", ago],
  ["observers", "Observers", dash],
  ["session", "Session", (s) => (s ? `open since ${when(s.opened_ms)}, last seen ${ago(s.last_seen_ms)}` : "—")],
  ["requests", "Requests", dash],
  ["errors", "Errors", dash],
];

let currentClient = null;

async function loadClient(id, isCurrent) {
  setText("#client-id", id);
  let c;
  try {
    c = await api("GET", "/clients/" + encodeURIComponent(id));
  } catch (e) {
    if (!isCurrent()) return;
    if (e instanceof ApiError && e.status === 404) {
      $("#client-missing").hidden = false;
      setText("#client-missing", `The gateway does not know ${id} (now).`);
      $("#client-fields").replaceChildren();
      fill($("#observers tbody"), [], "none", 3);
      fill($("#refusals tbody"), [], "none", 5);
      return;
    }
    throw e;
  }
  if (!isCurrent()) return;
  $("#client-missing").hidden = true;
  const fields = [];
  for (const [key, label, format] of CLIENT_FIELDS) {
    fields.push(el("dt", label));
    const dd = el("dd", format(c[key]));
    dd.dataset.field = key;
    fields.push(dd);
  }
  $("#client-fields").replaceChildren(...fields);
  const observers = (c.observer_list || []).map((o) =>
    row([o.filter, { text: duration(o.age_s), className: "num" }, o.confirmable ? "yes" : "no"]),
  );
  fill($("#observers tbody"), observers, "none", 3);
  const refusals = (c.refusals || [])
    .slice()
    .reverse()
    .map((r) => row([when(r.at_ms), r.method, r.path, { text: r.code, className: "bad" }, dash(r.diagnostic)]));
  fill($("#refusals tbody"), refusals, "none", 5);
}

function setupClient() {
  $("#kick").addEventListener("click", async () => {
    const id = currentClient;
    if (id === null) return;
    const button = $("#kick");
    button.disabled = true;
    setText("#kick-result", "kicking…");
    try {
      const r = await api("DELETE", "/clients/" + encodeURIComponent(id));
      const n = r.observers_ended;
      setText("#kick-result", `ended ${n} observer${n === 1 ? "" : "s"}, session closed: ${r.session_closed}`);
    } catch (e) {
      setText("#kick-result", e.message);
    } finally {
      button.disabled = false;
    }
    refreshNow();
  });
}

// ---- Rules ----

async function loadRules(isCurrent) {
  const doc = await api("GET", "/rules");
  if (isCurrent()) renderRules(doc);
}

function renderRules(doc) {
  const rows = (doc.rules || []).map((r) =>
    row([
      dash(r.slot),
      r.name,
      dash(r.version),
      dash(r.signer),
      dash(r.kind),
      { text: dash(r.calls), className: "num" },
      { text: dash(r.traps), className: "num" },
      { text: dash(r.timeouts), className: "num" },
      { text: dash(r.failures), className: r.failures ? "num bad" : "num" },
    ]),
  );
  fill($("#rules-table tbody"), rows, "no rules", 9);
  const last = doc.last_reload || {};
  if (!last.count) {
    setText("#last-reload", "No reload since the gateway started.");
  } else {
    const at = last.at_unix ? " at " + when(last.at_unix * 1000) : "";
    setText("#last-reload", `Reload #${last.count}${at}: ${last.result}${last.error ? " — " + last.error : ""}`);
  }
  const changes = (last.changes || []).map((c) => el("li", describeChange(c), c.change === "refused" ? "bad" : ""));
  $("#reload-changes").replaceChildren(...changes);
}

function ruleName(r) {
  return r ? `${r.name} ${r.version || ""}`.trim() : "?";
}

function describeChange(c) {
  switch (c.change) {
    case "added":
      return `added ${ruleName(c.rule)}`;
    case "removed":
      return `removed ${ruleName(c.rule)}`;
    case "swapped":
      return `swapped ${ruleName(c.old)} for ${ruleName(c.new)}`;
    case "refused":
      return `refused ${dash(c.file)} (slot ${dash(c.slot)}): ${dash(c.reason)}${c.kept ? "; kept " + ruleName(c.kept) : ""}`;
    default:
      return JSON.stringify(c);
  }
}

function setupRules() {
  $("#reload").addEventListener("click", async () => {
    const button = $("#reload");
    button.disabled = true;
    setText("#reload-result", "reloading…");
    try {
      const doc = await api("POST", "/rules/reload");
      renderRules(doc);
      setText("#reload-result", `reloaded: ${(doc.last_reload || {}).result}`);
    } catch (e) {
      setText("#reload-result", e.message);
    } finally {
      button.disabled = false;
    }
  });
}

// ---- routing and refresh ----

let view = null; // {name, load}
let generation = 0;
let busy = false;
let timer = null;

function parseRoute() {
  const hash = location.hash.replace(/^#/, "") || "/";
  const client = hash.match(/^\/clients\/(.+)$/);
  if (client) {
    let id;
    try {
      id = decodeURIComponent(client[1]);
    } catch (_) {
      id = client[1];
    }
    return { name: "client", load: (isCurrent) => loadClient(id, isCurrent), id, every: REFRESH_MS };
  }
  if (hash === "/clients") return { name: "clients", load: loadClients, every: REFRESH_MS };
  if (hash === "/rules") return { name: "rules", load: loadRules, every: 0 };
  return { name: "overview", load: loadOverview, every: REFRESH_MS };
}

function route() {
  view = parseRoute();
  generation += 1;
  for (const section of document.querySelectorAll(".view")) {
    section.hidden = section.id !== "view-" + view.name;
  }
  for (const link of document.querySelectorAll("nav a")) {
    const active = link.dataset.nav === view.name || (view.name === "client" && link.dataset.nav === "clients");
    link.classList.toggle("active", active);
  }
  if (view.name === "client") {
    if (currentClient !== view.id) setText("#kick-result", "");
    currentClient = view.id;
  }
  if (view.name === "overview") lastSample = null;
  busy = false;
  refreshNow();
}

async function refreshNow() {
  clearTimeout(timer);
  if (busy) return;
  const mine = generation;
  const current = view;
  busy = true;
  try {
    await current.load(() => mine === generation);
    if (mine === generation && $("#token-form").hidden) showError("");
  } catch (e) {
    if (mine === generation && !(e instanceof Unauthorized)) showError(e.message || String(e));
  } finally {
    if (mine === generation) {
      busy = false;
      if (current.every && $("#token-form").hidden) timer = setTimeout(refreshNow, current.every);
    }
  }
}

window.addEventListener("hashchange", route);
window.addEventListener("DOMContentLoaded", () => {
  setupToken();
  setupClients();
  setupClient();
  setupRules();
  route();
});
