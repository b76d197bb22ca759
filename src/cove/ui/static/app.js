// cove's web UI: plain ES module, no build step. Every string from the agent
// goes into the page through textContent or attributes (never as HTML), so
// a hostile service name, tag or log line cannot inject markup.
import { api, blockingIndex, follow, token, setToken } from "/ui/client.js";
import { drawTopology } from "/ui/topology.js";
import { stateOf } from "/ui/state.js";

const main = document.getElementById("main");
const statusBar = document.getElementById("status");

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

const pill = (text, cls = "") => h("span", { class: `pill ${cls}` }, text);
const worst = (statuses) =>
  statuses.includes("critical") ? "critical" : statuses.includes("warning") ? "warning" : "passing";

function setStatus(text, cls = "") {
  statusBar.textContent = text;
  statusBar.className = `status ${cls}`;
}

// -- views ------------------------------------------------------------------

const views = {
  topology: { kinds: ["container", "network", "endpoint", "policy", "vip"], render: renderTopology },
  services: { kinds: ["service", "check", "node"], render: renderServices },
  containers: { kinds: ["container", "endpoint", "network"], render: renderContainers },
  networks: { kinds: ["network", "endpoint", "policy"], render: renderNetworks },
  kv: { kinds: ["kv"], render: renderKv },
};

function route() {
  const [, view = "topology", ...rest] = (location.hash || "#/topology").split("/");
  return { view: views[view] ? view : "topology", arg: decodeURIComponent(rest.join("/")) };
}

let rendering = Promise.resolve();
let pending = null;
// Draw the current view again; changes that arrive meanwhile coalesce.
function refresh() {
  if (pending) return pending;
  pending = rendering.then(async () => {
    pending = null;
    const { view, arg } = route();
    if (logStream && !(view === "containers" && arg === logStream.name)) {
      logStream.abort(); // the log shown no more: stop following it
      logStream = null;
    }
    for (const a of document.querySelectorAll("nav a")) {
      if (a.dataset.view === view) a.setAttribute("aria-current", "page");
      else a.removeAttribute("aria-current");
    }
    try {
      const node = await views[view].render(arg);
      const focused = focusKey(document.activeElement);
      main.replaceChildren(node);
      main.dataset.view = view;
      main.dataset.rendered = String(Date.now());
      // Nothing is written to the store when a process finishes stopping:
      // while anything shown is on its way, look again each second.
      if (TRANSIENT.some((t) => node.querySelector(`[data-state="${t}"]`))) setTimeout(refresh, 1000);
      // A redraw must not throw a keyboard user back to the top.
      if (focused) main.querySelector(focused)?.focus();
    } catch (err) {
      main.replaceChildren(h("p", { class: "error", role: "alert" }, describe(err)));
    }
  });
  rendering = pending;
  return pending;
}

// A selector that finds "the same" element in a redrawn view.
function focusKey(el) {
  if (!el || !main.contains(el) || el === main) return null;
  if (el.id) return `#${CSS.escape(el.id)}`;
  const tag = el.tagName.toLowerCase();
  for (const attr of ["aria-label", "href", "data-container", "data-service", "data-key"]) {
    const v = el.getAttribute(attr);
    if (v) return `${tag}[${attr}="${CSS.escape(v)}"]`;
  }
  return null;
}

function describe(err) {
  if (err && err.status === 403)
    return `Permission denied: ${err.message}. Enter an ACL token with the rights this view needs.`;
  return `Could not load this view: ${err && err.message ? err.message : err}`;
}

async function renderTopology() {
  const topo = await api("/v1/cove/topology");
  const wrap = h("section", { "aria-labelledby": "topo-h" },
    h("h2", { id: "topo-h" }, "Topology"),
    h("p", { class: "muted" },
      `${topo.networks.length} networks, ${topo.containers.length} containers, ` +
      `${topo.vips.length} VIPs, ${topo.rules.length} policy rules. ` +
      "Arrows are allowed connections on default-deny networks; select a container to open it."));
  wrap.append(drawTopology(topo, (name) => { location.hash = `#/containers/${encodeURIComponent(name)}`; }));
  if (topo.rules.length) {
    wrap.append(h("h3", {}, "Policy"), h("ul", { class: "plain", id: "rules" },
      topo.rules.map((r) => h("li", {}, `${r.network}: ${r.from} → ${r.to}`,
        r.ports.length ? ` (${r.ports.join(", ")})` : " (any port)"))));
  }
  return wrap;
}

async function renderServices(name) {
  const [services, checks] = await Promise.all([
    api("/v1/catalog/services"), api("/v1/health/state/any"),
  ]);
  const byService = {};
  for (const c of checks) {
    if (!c.ServiceName) continue;
    (byService[c.ServiceName] ||= []).push(c.Status);
  }
  const box = h("input", { id: "svc-filter", type: "search", placeholder: "name or tag",
    value: sessionStorage.getItem("svc-filter") || "" });
  const list = h("ul", { class: "plain", id: "service-list", "aria-label": "Services" });
  const fill = () => {
    const q = box.value.trim().toLowerCase();
    sessionStorage.setItem("svc-filter", box.value);
    list.replaceChildren(...Object.keys(services).sort()
      .filter((s) => !q || s.toLowerCase().includes(q) || services[s].some((t) => t.toLowerCase().includes(q)))
      .map((s) => {
        const st = byService[s] ? worst(byService[s]) : "passing";
        return h("li", { "data-service": s, "data-status": st },
          h("a", { href: `#/services/${encodeURIComponent(s)}`, "aria-current": s === name ? "true" : false }, s), " ",
          pill(byService[s] ? st : "no checks", byService[s] ? st : ""),
          services[s].map((t) => pill(t)));
      }));
  };
  box.addEventListener("input", fill);
  fill();
  const detail = h("div", { class: "card", id: "service-detail" });
  if (name) detail.append(await serviceDetail(name));
  else detail.append(h("p", { class: "muted" }, "Select a service to see its instances and checks."));
  return h("section", { "aria-labelledby": "svc-h" },
    h("h2", { id: "svc-h" }, "Services"),
    h("div", { class: "toolbar" }, h("label", { for: "svc-filter" }, "Filter services"), box),
    h("div", { class: "split" }, h("div", { class: "card" }, list), detail));
}

async function serviceDetail(name) {
  const entries = await api(`/v1/health/service/${encodeURIComponent(name)}`);
  const rows = entries.map((e) => {
    const s = e.Service;
    return h("tr", { "data-instance": s.ID },
      h("td", {}, s.ID, h("div", { class: "muted" }, e.Node.Node)),
      h("td", {}, `${s.Address || e.Node.Address}:${s.Port}`),
      h("td", {}, (s.Tags || []).map((t) => pill(t)),
        Object.entries(s.Meta || {}).map(([k, v]) => pill(`${k}=${v}`))),
      h("td", {}, h("ul", { class: "plain" }, e.Checks.map((c) =>
        h("li", { "data-check": c.CheckID, "data-status": c.Status },
          pill(c.Status, c.Status), " ", c.Name,
          c.Output ? h("div", { class: "muted" }, c.Output) : null)))));
  });
  return h("div", {},
    h("h3", {}, name),
    h("table", { "aria-label": `Instances of ${name}` },
      h("thead", {}, h("tr", {}, ["Instance", "Address", "Tags and meta", "Checks"].map((t) => h("th", { scope: "col" }, t)))),
      h("tbody", {}, rows)));
}

const TRANSIENT = ["stopping", "starting", "restarting"];

async function renderContainers(name) {
  const containers = await api("/v1/cove/containers");
  const rows = containers.map((c) => h("tr", { "data-container": c.name, "data-state": stateOf(c) },
    h("td", {}, h("a", { href: `#/containers/${encodeURIComponent(c.name)}` }, c.name)),
    h("td", {}, pill(stateOf(c), stateOf(c))),
    h("td", {}, Object.entries(c.endpoints || {}).map(([net, ep]) =>
      h("div", {}, `${net}: ${[ep.ipv4, ep.ipv6].filter(Boolean).join(", ")}`))),
    h("td", {}, (c.ports || []).join(", ")),
    h("td", {}, (c.services || []).join(", ")),
    h("td", {}, actions(c))));
  const section = h("section", { "aria-labelledby": "ctr-h" },
    h("h2", { id: "ctr-h" }, "Containers"),
    h("table", { "aria-label": "Containers" },
      h("thead", {}, h("tr", {}, ["Name", "State", "Addresses", "Published ports", "Services", "Actions"]
        .map((t) => h("th", { scope: "col" }, t)))),
      h("tbody", {}, rows)));
  if (name) section.append(await containerDetail(name));
  return section;
}

function actions(c) {
  const act = (label, method, path) => h("button", {
    type: "button", "aria-label": `${label} ${c.name}`,
    onclick: async () => {
      try { await api(path, { method }); setStatus(`${label}: ${c.name} done`); }
      catch (err) { setStatus(describe(err), "denied"); }
      refresh();
    },
  }, label);
  const base = `/v1/cove/containers/${encodeURIComponent(c.name)}`;
  return [
    stateOf(c) === "running" ? act("Stop", "POST", `${base}/stop`) : act("Start", "POST", `${base}/start`),
    " ", act("Remove", "DELETE", `${base}?force=1`),
  ];
}

let logStream = null;
async function containerDetail(name) {
  const c = await api(`/v1/cove/containers/${encodeURIComponent(name)}`);
  const log = h("pre", { id: "log", "aria-label": `Logs of ${name}`, tabindex: "0" });
  if (!logStream || logStream.name !== name) {
    if (logStream) logStream.abort();
    logStream = tailLogs(name);
  }
  logStream.attach(log);
  return h("section", { class: "card", "aria-labelledby": "inspect-h" },
    h("h3", { id: "inspect-h" }, `Container ${c.name}`),
    h("pre", { id: "inspect" }, JSON.stringify(c, null, 2)),
    h("h4", {}, "Logs (live)"), log);
}

function tailLogs(name) {
  const ctl = new AbortController();
  let text = "";
  let target = null;
  const show = () => { if (target) { target.textContent = text; target.scrollTop = target.scrollHeight; } };
  (async () => {
    try {
      const resp = await fetch(`/v1/cove/containers/${encodeURIComponent(name)}/logs?follow=1`,
        { headers: token() ? { "X-Consul-Token": token() } : {}, signal: ctl.signal });
      if (!resp.ok) {
        const body = await resp.json().catch(() => ({}));
        text = `Logs unavailable: ${body.error || resp.status}`;
        return show();
      }
      const reader = resp.body.getReader();
      const dec = new TextDecoder();
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        text = (text + dec.decode(value, { stream: true })).slice(-65536);
        show();
      }
    } catch (err) { if (err.name !== "AbortError") { text += `\n[log stream ended: ${err.message}]`; show(); } }
  })();
  return { name, abort: () => ctl.abort(), attach: (el) => { target = el; show(); } };
}

async function renderNetworks() {
  const topo = await api("/v1/cove/topology");
  return h("section", { "aria-labelledby": "net-h" },
    h("h2", { id: "net-h" }, "Networks"),
    h("table", { "aria-label": "Networks" },
      h("thead", {}, h("tr", {}, ["Name", "Driver", "Subnets", "Bridge", "Flags", "Endpoints"]
        .map((t) => h("th", { scope: "col" }, t)))),
      h("tbody", {}, topo.networks.map((n) => h("tr", { "data-network": n.name },
        h("td", {}, n.name), h("td", {}, n.driver),
        h("td", {}, n.subnets.map((s) => h("div", {}, `${s.subnet} via ${s.gateway}`))),
        h("td", {}, n.bridge),
        h("td", {}, n.internal ? pill("internal") : null, n.default_deny ? pill("default deny") : null),
        h("td", {}, n.endpoints.map((e) => h("div", {},
          h("a", { href: `#/containers/${encodeURIComponent(e.container_name)}` }, e.container_name),
          ` ${[e.ipv4, e.ipv6].filter(Boolean).join(", ")}`))))))));
}

async function renderKv(path) {
  const prefix = path.endsWith("/") || !path ? path : path.slice(0, path.lastIndexOf("/") + 1);
  const key = path && !path.endsWith("/") ? path : "";
  const keys = (await api(`/v1/kv/${encodePath(prefix)}?keys&separator=/`, { allow404: true })) || [];
  const crumbs = [h("a", { href: "#/kv/" }, "(root)")];
  let acc = "";
  for (const part of prefix.split("/").filter(Boolean)) {
    acc += `${part}/`;
    crumbs.push(" / ", h("a", { href: `#/kv/${encodePath(acc)}` }, part));
  }
  const list = h("ul", { class: "plain", id: "kv-list", "aria-label": "Keys" },
    keys.map((k) => h("li", { "data-key": k }, h("a", { href: `#/kv/${encodePath(k)}` }, k.slice(prefix.length) || k))));
  const editor = h("div", { class: "card", id: "kv-editor" });
  editor.append(await kvEditor(key, prefix));
  return h("section", { "aria-labelledby": "kv-h" },
    h("h2", { id: "kv-h" }, "Key/Value"), h("nav", { "aria-label": "Path" }, crumbs),
    h("div", { class: "split" }, h("div", { class: "card" }, list), editor));
}

const encodePath = (p) => p.split("/").map(encodeURIComponent).join("/");
const b64decode = (v) => new TextDecoder().decode(Uint8Array.from(atob(v || ""), (c) => c.charCodeAt(0)));

let kvFlash = { key: null, text: "" }; // a message that outlives the next redraw

async function kvEditor(key, prefix) {
  let entry = null;
  if (key) {
    const found = await api(`/v1/kv/${encodePath(key)}`, { allow404: true });
    entry = found && found[0];
  }
  const keyInput = h("input", { id: "kv-key", value: key || prefix, readonly: entry ? true : false, required: true });
  const value = h("textarea", { id: "kv-value" }, entry ? b64decode(entry.Value) : "");
  const msg = h("p", { id: "kv-msg", role: "status" }, kvFlash.key === key ? kvFlash.text : "");
  value.addEventListener("input", () => { value.dataset.dirty = "1"; });
  const cas = entry ? entry.ModifyIndex : 0;
  const save = async (ev) => {
    ev.preventDefault();
    const ok = await api(`/v1/kv/${encodePath(keyInput.value)}?cas=${cas}`, { method: "PUT", body: value.value })
      .catch((err) => { msg.textContent = describe(err); return null; });
    if (ok === false) msg.textContent = "Not saved: the key changed since it was loaded (check-and-set failed). Reload to see the new value.";
    else if (ok === true) {
      kvFlash = { key: keyInput.value, text: "Saved." };
      msg.textContent = "Saved.";
      delete value.dataset.dirty;
      location.hash = `#/kv/${encodePath(keyInput.value)}`;
      refresh();
    }
  };
  const del = async () => {
    const ok = await api(`/v1/kv/${encodePath(key)}?cas=${cas}`, { method: "DELETE" })
      .catch((err) => { msg.textContent = describe(err); return null; });
    if (ok === false) msg.textContent = "Not deleted: the key changed since it was loaded (check-and-set failed).";
    else if (ok === true) location.hash = `#/kv/${encodePath(prefix)}`;
  };
  return h("form", { onsubmit: save, "aria-label": entry ? `Edit ${key}` : "New key" },
    h("h3", {}, entry ? `Edit ${key}` : "Create a key"),
    h("label", { for: "kv-key" }, "Key"), h("div", {}, keyInput),
    h("label", { for: "kv-value" }, "Value"), value,
    entry ? h("p", { class: "muted" }, `ModifyIndex ${entry.ModifyIndex} (saves and deletes check it)`) : null,
    h("div", { class: "toolbar" }, h("button", { type: "submit" }, "Save"),
      entry ? h("button", { type: "button", onclick: del }, "Delete") : null),
    msg);
}

// -- live updates -----------------------------------------------------------

function onChange(ev) {
  // Never redraw over an edit in progress: say what happened instead.
  const editing = document.querySelector("#kv-value[data-dirty]");
  if (editing && ev.type === "kv") {
    if (ev.name === document.getElementById("kv-key").value) {
      document.getElementById("kv-msg").textContent =
        "This key changed on the agent while you edit it: saving will be refused (check-and-set).";
    }
    return;
  }
  // A container's process starting, dying or restarting is an event of its
  // own (die, start, restart), so the view is redrawn when it happens.
  if (ev.type === "reset" || views[route().view].kinds.includes(ev.type)) refresh();
}

const tokenInput = document.getElementById("token");
tokenInput.value = token();
document.getElementById("token-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  setToken(tokenInput.value.trim());
  restart();
});

// Without operator:read there is no event stream; the views a token may
// still see (services, KV) follow Consul blocking queries instead.
let fallback = null;
async function waitDenied() {
  fallback = new AbortController();
  const { view, arg } = route();
  let path = null;
  if (view === "services") path = "/v1/health/state/any";
  else if (view === "kv") {
    const prefix = arg.endsWith("/") || !arg ? arg : arg.slice(0, arg.lastIndexOf("/") + 1);
    path = `/v1/kv/${encodePath(prefix)}?recurse`;
  }
  try {
    if (!path) { await new Promise((r) => setTimeout(r, 5000)); return; }
    const index = await blockingIndex(path, 0, fallback.signal);
    await blockingIndex(path, index, fallback.signal);
  } catch (err) {
    if (err.name !== "AbortError") await new Promise((r) => setTimeout(r, 2000));
  } finally {
    refresh();
  }
}
window.addEventListener("hashchange", () => { if (fallback) fallback.abort(); });

let stream = null;
function restart() {
  if (stream) stream.abort();
  if (fallback) fallback.abort();
  stream = follow({
    onEvent: onChange,
    onOpen: () => { setStatus("Live: connected to the agent"); refresh(); },
    onOffline: (why) => setStatus(`Agent unreachable (${why}); retrying…`, "offline"),
    onDenied: (msg) => {
      setStatus(`The event stream needs operator:read (${msg}): services and KV follow blocking queries instead`, "denied");
      refresh();
    },
    waitDenied,
  });
}

window.addEventListener("hashchange", () => { refresh(); main.focus(); });
restart();
