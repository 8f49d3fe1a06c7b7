// The tickets table: filters, keyset pages of GET /api/v1/tickets (cursor), and live rows from the event stream.

import { follow, get, query } from "./api.js";
import { badge, countdown, el, errorText, planLink, table, ticketLink, time } from "./ui.js";

const STATUSES = ["PENDING", "RUNNING", "COMPLETED", "FAILED", "COMPENSATING", "COMPENSATED", "CANCELLED"];
const PRIORITIES = ["LOW", "NORMAL", "HIGH", "CRITICAL"];
const TASK_TYPES = ["BUILD", "DEPLOY", "TEST", "VALIDATE", "EXECUTE", "COMPENSATE", "QUERY", "TRANSFORM"];
const PAGE = 100;

// Kept while the tab is open, so coming back from a ticket shows the same filters.
const filters = { plan_id: "", intent_id: "", status: "", priority: "", task_type: "", id_prefix: "" };

function input(name, label) {
  return el("label", {}, label, el("input", { name, value: filters[name], autocomplete: "off" }));
}

function select(name, label, options) {
  const s = el("select", { name }, el("option", { value: "" }, "any"), options.map((o) => el("option", { value: o }, o)));
  s.value = filters[name];
  return el("label", {}, label, s);
}

export function row(t) {
  const s = t.sla_state || {};
  return el(
    "tr",
    { dataset: { ticketId: t.ticket_id } },
    el("td", {}, ticketLink(t.ticket_id)),
    el("td", {}, planLink(t.plan_id)),
    el("td", {}, badge(t.status)),
    el("td", {}, t.priority),
    el("td", {}, t.task_type),
    el("td", {}, countdown(t.sla.deadline, t.status)),
    el("td", { class: "num" }, (s.warnings_fired || []).length),
    el("td", {}, s.breached_at ? el("span", { class: "breached" }, "breached") : "no"),
    el("td", { class: "num" }, `${t.retry_count} / ${t.sla.max_retries}`),
    el("td", {}, time(t.updated_at)),
  );
}

export const HEADERS = ["Ticket", "Plan", "Status", "Priority", "Type", "Deadline in", "Warnings", "Breached",
  "Retries", "Updated"];

function matches(t) {
  return (
    (!filters.plan_id || t.plan_id === filters.plan_id) &&
    (!filters.intent_id || t.intent_id === filters.intent_id) &&
    (!filters.status || t.status === filters.status) &&
    (!filters.priority || t.priority === filters.priority) &&
    (!filters.task_type || t.task_type === filters.task_type) &&
    (!filters.id_prefix || t.ticket_id.startsWith(filters.id_prefix))
  );
}

export function render(view) {
  const form = el(
    "form",
    { class: "filters", "aria-label": "Filters" },
    input("plan_id", "Plan"),
    input("intent_id", "Intent"),
    select("status", "Status", STATUSES),
    select("priority", "Priority", PRIORITIES),
    select("task_type", "Task type", TASK_TYPES),
    input("id_prefix", "Id starts with"),
    el("button", { type: "submit" }, "Apply"),
  );
  const live = el("span", { class: "live", role: "status" }, "connecting…");
  const message = el("p", { class: "message error", role: "alert" });
  const body = el("tbody");
  const tbl = table(HEADERS, [], { class: "tickets", id: "tickets-table" });
  tbl.replaceChild(body, tbl.querySelector("tbody"));
  const prev = el("button", { type: "button", disabled: true }, "← Newer");
  const next = el("button", { type: "button", disabled: true }, "Older →");
  const pageInfo = el("span", { class: "page-info" });
  view.append(
    el("h1", {}, "Tickets ", live),
    form,
    message,
    tbl,
    el("div", { class: "pager" }, prev, pageInfo, next),
  );

  // Keyset paging: the cursors of the pages before this one (the first page's is "").
  let cursors = [""];
  let nextCursor = null;
  let stream = null;

  async function load() {
    message.textContent = "";
    const cursor = cursors[cursors.length - 1];
    try {
      // `cursor=` even when empty: that asks for keyset paging from the first page (no count of all tickets).
      const page = await get(`/api/v1/tickets${query({ ...filters, limit: PAGE })}&cursor=${encodeURIComponent(cursor)}`);
      body.replaceChildren(...page.tickets.map(row));
      nextCursor = page.next_cursor;
      next.disabled = !nextCursor;
      prev.disabled = cursors.length === 1;
      pageInfo.textContent = `page ${cursors.length} · ${page.tickets.length} tickets`;
    } catch (e) {
      message.textContent = errorText(e);
    }
  }

  function restream() {
    if (stream) stream.close();
    // The server filters by plan; the rest is checked here. Only changes after now (no snapshot).
    stream = follow({ plan_id: filters.plan_id }, onEvent, (state) => {
      live.textContent = state === "live" ? "● live" : typeof state === "string" ? state : errorText(state);
      live.className = `live ${state === "live" ? "on" : "off"}`;
    });
  }

  function onEvent(e) {
    const t = e.ticket;
    const existing = body.querySelector(`tr[data-ticket-id="${CSS.escape(t.ticket_id)}"]`);
    if (existing) {
      if (matches(t)) existing.replaceWith(row(t));
      else existing.remove();
    } else if (e.event_type === "ticket.created" && cursors.length === 1 && matches(t)) {
      // A new ticket is the newest: it belongs at the top of the first page.
      body.prepend(row(t));
      while (body.rows.length > PAGE) body.lastElementChild.remove();
    } else if (cursors.length === 1 && matches(t) && body.rows.length < PAGE) {
      // It now matches the filters (say, a status filter): take the page again in list order.
      load();
    }
  }

  form.addEventListener("submit", (e) => {
    e.preventDefault();
    for (const [k, v] of new FormData(form)) filters[k] = String(v).trim();
    cursors = [""];
    load();
    restream();
  });
  next.addEventListener("click", () => {
    cursors.push(nextCursor);
    load();
  });
  prev.addEventListener("click", () => {
    cursors.pop();
    load();
  });

  load();
  restream();
  return () => stream && stream.close();
}
