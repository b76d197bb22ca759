// The topology picture: one band per network with its containers (name,
// state, address, published ports), VIPs above with dashed lines to the
// containers that serve them, and policy rules as arrows between the
// containers they allow to connect. Containers are links: Enter or a click
// opens them.
import { stateOf } from "/ui/state.js";

const NS = "http://www.w3.org/2000/svg";
const BOX_W = 160, BOX_H = 64, GAP = 18, PAD = 16, VIP_H = 54, COLS = 7;

function s(tag, attrs = {}, ...children) {
  const el = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) if (v !== undefined && v !== null) el.setAttribute(k, String(v));
  for (const c of children) el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return el;
}

const clip = (t, n = 24) => (t.length > n ? `${t.slice(0, n - 1)}…` : t);
const serviceNames = (c) => (c.services || []).map((x) => String(x).split(":")[0]);

function matches(selector, c) {
  if (selector === "*") return true;
  if (selector.startsWith("service:")) return serviceNames(c).includes(selector.slice(8));
  if (selector.includes("=")) {
    return selector.split(",").every((pair) => {
      const [k, v] = pair.split("=");
      return (c.labels || {})[k.trim()] === (v || "").trim();
    });
  }
  return c.name === selector;
}

export function drawTopology(topo, open) {
  const byName = Object.fromEntries(topo.containers.map((c) => [c.name, c]));
  const rows = topo.networks.map((n) => ({
    net: n,
    members: n.endpoints.map((e) => ({ ep: e, c: byName[e.container_name] || { name: e.container_name } })),
  }));
  const loose = topo.containers.filter((c) => !Object.keys(c.endpoints || {}).length);
  if (loose.length) {
    rows.push({ net: { name: "(no network)", subnets: [], endpoints: [] }, members: loose.map((c) => ({ ep: {}, c })) });
  }
  const cols = Math.max(3, Math.min(COLS, ...rows.map((r) => r.members.length)));
  const width = PAD * 2 + cols * (BOX_W + GAP);
  const top = topo.vips.length ? VIP_H * Math.ceil(topo.vips.length / cols) + PAD : PAD;
  const heights = rows.map((r) => 40 + Math.max(1, Math.ceil(r.members.length / cols)) * (BOX_H + GAP));
  const height = top + heights.reduce((a, b) => a + b + GAP, 0) + PAD;
  const svg = s("svg", {
    class: "topology", viewBox: `0 0 ${width} ${Math.max(height, 120)}`, role: "group",
    width, height: Math.max(height, 120),
    "aria-label": `Topology: ${topo.networks.length} networks, ${topo.containers.length} containers`,
  });
  svg.append(s("defs", {}, s("marker", {
    id: "arrow", viewBox: "0 0 10 10", refX: "9", refY: "5", markerWidth: "7", markerHeight: "7", orient: "auto",
  }, s("path", { d: "M0,0 L10,5 L0,10 z", fill: "#2456c9" }))));
  const boxes = []; // {c, x, y, net}
  const lines = s("g", {});
  svg.append(lines);
  let y = top;
  rows.forEach((row, i) => {
    const n = row.net;
    const subnets = n.subnets.map((x) => x.subnet).join(", ");
    const band = s("g", { "data-network": n.name },
      s("title", {}, `network ${n.name}`),
      s("rect", { class: "net", x: 4, y, width: width - 8, height: heights[i], rx: 8 }),
      s("text", { class: "net-label", x: PAD, y: y + 18 },
        clip(`${n.name}  ${subnets}  ${n.bridge || ""}${n.internal ? "  internal" : ""}${n.default_deny ? "  default-deny" : ""}`, 90)));
    svg.append(band);
    row.members.forEach((m, j) => {
      const x = PAD + (j % cols) * (BOX_W + GAP), by = y + 30 + Math.floor(j / cols) * (BOX_H + GAP);
      const c = m.c;
      const state = stateOf(c);
      const addr = [m.ep.ipv4, m.ep.ipv6].filter(Boolean).join(" ");
      const ports = (c.ports || []).join(" ");
      const g = s("g", {
        class: `ctr ${state}`, tabindex: "0", role: "link", "data-container": c.name, "data-state": state,
        "aria-label": `container ${c.name} on ${n.name}, ${state}, ${addr}${ports ? `, ports ${ports}` : ""}`,
      },
      s("title", {}, `${c.name} (${state})`),
      s("rect", { x, y: by, width: BOX_W, height: BOX_H, rx: 6 }),
      s("text", { x: x + 8, y: by + 16 }, clip(`${c.name} · ${state}`)),
      s("text", { x: x + 8, y: by + 32 }, clip(addr || "no address")),
      s("text", { x: x + 8, y: by + 48 }, clip(ports ? `ports ${ports}` : serviceNames(c).join(" "))));
      g.addEventListener("click", () => open(c.name));
      g.addEventListener("keydown", (ev) => { if (ev.key === "Enter" || ev.key === " ") { ev.preventDefault(); open(c.name); } });
      svg.append(g);
      boxes.push({ c, x, y: by, net: n.name });
    });
    y += heights[i] + GAP;
  });
  topo.vips.forEach((v, k) => {
    const x = PAD + (k % cols) * (BOX_W + GAP), y = PAD / 2 + Math.floor(k / cols) * VIP_H;
    svg.append(s("g", { class: "vip", "data-vip": v.service },
      s("title", {}, `VIP of ${v.service}`),
      s("rect", { x, y, width: BOX_W, height: VIP_H - 12, rx: 6 }),
      s("text", { x: x + 8, y: y + 16 }, clip(`VIP ${v.service}`)),
      s("text", { x: x + 8, y: y + 32 }, clip(`${v.address}${v.port ? `:${v.port}` : ""}`))));
    for (const b of boxes.filter((b) => serviceNames(b.c).includes(v.service))) {
      lines.append(s("path", { class: "vip-edge", d: `M${x + BOX_W / 2},${y + VIP_H - 12} L${b.x + BOX_W / 2},${b.y}` }));
    }
  });
  for (const r of topo.rules) {
    const here = boxes.filter((b) => b.net === r.network);
    for (const a of here.filter((b) => matches(r.from, b.c))) {
      for (const d of here.filter((b) => matches(r.to, b.c))) {
        if (a === d) continue;
        const x1 = a.x + BOX_W / 2, x2 = d.x + BOX_W / 2, yb = a.y + BOX_H;
        const bend = yb + 14 + Math.abs(x2 - x1) / 12;
        lines.append(s("path", { class: "edge", "data-rule": r.id, d: `M${x1},${yb} Q${(x1 + x2) / 2},${bend} ${x2},${yb}` },
          s("title", {}, `${r.from} → ${r.to} ${r.ports.join(",")}`)));
      }
    }
  }
  // Lines go under the boxes: move them to just after <defs>.
  svg.insertBefore(lines, svg.children[1]);
  return svg;
}
