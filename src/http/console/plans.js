// Plans: open one by id (or from a ticket's link) to see its counts by status, progress, tickets at SLA risk,
// and its dependency graph in layers, coloured by status; live.

import { follow, get, query } from "./api.js";
import { badge, el, errorText, planLink, svg, table, ticketLink } from "./ui.js";

const COLOURS = {
  PENDING: "#9aa5b1", RUNNING: "#2f80ed", COMPLETED: "#27ae60", FAILED: "#eb5757",
  COMPENSATING: "#f2994a", COMPENSATED: "#9b51e0", CANCELLED: "#4f4f4f",
};

// Layer of each ticket = longest chain of dependencies inside the plan before it (cycles cut).
function layers(tickets) {
  const byId = new Map(tickets.map((t) => [t.ticket_id, t]));
  const depth = new Map();
  const visiting = new Set();
  const of = (id) => {
    if (depth.has(id)) return depth.get(id);
    if (visiting.has(id)) return 0;
    visiting.add(id);
    const deps = (byId.get(id).dependencies || []).filter((d) => byId.has(d));
    const d = deps.length ? 1 + Math.max(...deps.map(of)) : 0;
    visiting.delete(id);
    depth.set(id, d);
    return d;
  };
  tickets.forEach((t) => of(t.ticket_id));
  return depth;
}

function graph(tickets) {
  const depth = layers(tickets);
  const columns = [];
  for (const t of tickets) (columns[depth.get(t.ticket_id)] ||= []).push(t);
  const W = 170, H = 44, GX = 60, GY = 14;
  const pos = new Map();
  columns.forEach((col, x) => col.forEach((t, y) => pos.set(t.ticket_id, { x: x * (W + GX) + 10, y: y * (H + GY) + 10 })));
  const width = columns.length * (W + GX) + 20;
  const height = Math.max(...columns.map((c) => c.length)) * (H + GY) + 20;
  const edges = [];
  for (const t of tickets) {
    for (const d of t.dependencies || []) {
      const a = pos.get(d), b = pos.get(t.ticket_id);
      if (a && b) edges.push(svg("line", { x1: a.x + W, y1: a.y + H / 2, x2: b.x, y2: b.y + H / 2, class: "edge" }));
    }
  }
  const nodes = tickets.map((t) => {
    const p = pos.get(t.ticket_id);
    const label = t.ticket_id.length > 22 ? `${t.ticket_id.slice(0, 21)}…` : t.ticket_id;
    return svg("a", { href: `#/tickets/${encodeURIComponent(t.ticket_id)}` },
      svg("title", {}, `${t.ticket_id}: ${t.status}`),
      svg("rect", { x: p.x, y: p.y, width: W, height: H, rx: 6, fill: COLOURS[t.status] || "#ccc" }),
      svg("text", { x: p.x + 8, y: p.y + 18, class: "node-id" }, label),
      svg("text", { x: p.x + 8, y: p.y + 35, class: "node-status" }, t.status));
  });
  return svg("svg", { width, height, viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": "Dependency graph", class: "graph" },
    ...edges, ...nodes);
}

function summary(planId, tickets) {
  const counts = {};
  for (const t of tickets) counts[t.status] = (counts[t.status] || 0) + 1;
  const done = (counts.COMPLETED || 0) + (counts.CANCELLED || 0) + (counts.COMPENSATED || 0);
  const now = Date.now();
  const risky = tickets
    .filter((t) => !["COMPLETED", "CANCELLED", "COMPENSATED"].includes(t.status))
    .filter((t) => t.sla_state.breached_at || (t.sla_state.warnings_fired || []).length || t.sla.deadline - now < 5 * 60000);
  return el("div", { class: "plan-summary" },
    el("p", {}, Object.entries(counts).map(([s, n]) => el("span", { class: "count" }, badge(s), ` ${n}`))),
    el("p", {}, el("progress", { max: tickets.length, value: done }), ` ${done} of ${tickets.length} finished`),
    el("h2", {}, `At SLA risk (${risky.length})`),
    risky.length ? el("ul", {}, risky.map((t) => el("li", {}, ticketLink(t.ticket_id), " ", badge(t.status),
      t.sla_state.breached_at ? " breached" : ` ${(t.sla_state.warnings_fired || []).length} warnings`))) : el("p", {}, "none"),
  );
}

function open(view, planId) {
  const live = el("span", { class: "live", role: "status" });
  const message = el("p", { class: "message error", role: "alert" });
  const holder = el("div");
  view.append(el("h1", {}, "Plan ", el("code", {}, planId), " ", live), message, holder);
  let pending = null;
  async function load() {
    try {
      const page = await get(`/api/v1/tickets${query({ plan_id: planId, limit: 1000 })}`);
      message.textContent = page.total > page.tickets.length ? `Showing ${page.tickets.length} of ${page.total} tickets.` : "";
      holder.replaceChildren(summary(planId, page.tickets), el("h2", {}, "Dependencies"),
        page.tickets.length ? graph(page.tickets) : el("p", {}, "No tickets in this plan."));
    } catch (e) {
      message.textContent = errorText(e);
    }
  }
  load();
  const stream = follow({ plan_id: planId }, () => {
    if (!pending) pending = setTimeout(() => ((pending = null), load()), 300);
  }, (s) => (live.textContent = s === "live" ? "● live" : typeof s === "string" ? s : errorText(s)));
  return () => stream.close();
}

// Without a plan id: the plans of the newest tickets, and a box to open any plan.
function index(view) {
  const form = el("form", { class: "filters" }, el("label", {}, "Plan id", el("input", { name: "plan", autocomplete: "off" })),
    el("button", { type: "submit" }, "Open"));
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    const id = new FormData(form).get("plan").trim();
    if (id) location.hash = `#/plans/${encodeURIComponent(id)}`;
  });
  const holder = el("div");
  view.append(el("h1", {}, "Plans"), form, el("h2", {}, "Recently active"), holder);
  get("/api/v1/tickets?limit=500&cursor=").then((page) => {
    const plans = new Map();
    for (const t of page.tickets) plans.set(t.plan_id, (plans.get(t.plan_id) || 0) + 1);
    holder.replaceChildren(table(["Plan", "Among the newest 500 tickets"],
      [...plans].map(([id, n]) => el("tr", {}, el("td", {}, planLink(id)), el("td", { class: "num" }, n)))));
  }, (e) => holder.replaceChildren(el("p", { class: "message error" }, errorText(e))));
}

export function render(view, [planId]) {
  return planId ? open(view, planId) : index(view);
}
