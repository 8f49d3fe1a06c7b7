// One ticket: every field, dependencies and dependents, the history, the SLA timeline, and the actions a
// service caller may ask for (the API decides; its refusal is shown as it gave it).

import { call, follow, get, post } from "./api.js";
import {
  badge, confirmAction, countdown, el, errorText, field, finished, messageBox, planLink, table, ticketLink, time,
} from "./ui.js";

// The server's SLA policy when the caller may read it (GET /api/v1/system), else the service's defaults.
const DEFAULT_POLICY = { warning_fractions: [0.5, 0.75, 0.9], attempt_timeout_factor: 1.5 };

function json(value) {
  return el("pre", { class: "json" }, JSON.stringify(value, null, 2));
}

function fields(t) {
  return el(
    "dl",
    { class: "fields" },
    field("Status", badge(t.status)),
    field("Plan", planLink(t.plan_id)),
    field("Intent", t.intent_id),
    field("Decision", t.decision_id),
    field("Task", `${t.task_id} (${t.task_type})`),
    field("Description", t.description),
    field("Priority", t.priority),
    field("Risk band", t.risk_band),
    field("Security level", t.security_level),
    field("Deadline", [time(t.sla.deadline), " (", countdown(t.sla.deadline, t.status), ")"]),
    field("Attempt timeout", `${t.sla.timeout_ms} ms`),
    field("Retries", `${t.retry_count} of ${t.sla.max_retries}`),
    field("Created", time(t.created_at)),
    field("Started", time(t.started_at)),
    field("Completed", time(t.completed_at)),
    field("Duration", t.actual_duration_ms != null ? `${t.actual_duration_ms} ms` : null),
    field("Error", t.error_message),
    field("Compensation", t.compensation_ticket_id ? ticketLink(t.compensation_ticket_id) : null),
    field("Correlation", t.correlation_id),
    field("Trace", t.trace_id),
    field("Capabilities", (t.required_capabilities || []).join(", ")),
    field("QoS", t.qos ? `${t.qos.delivery_mode} / ${t.qos.consistency} / ${t.qos.durability}` : null),
    field("Version", t.version),
    field("Updated", time(t.updated_at)),
    field("SLA state", json(t.sla_state)),
    field("Parameters", json(t.parameters)),
    field("Metadata", json(t.metadata)),
  );
}

function traceId(traceparent) {
  return traceparent ? traceparent.split("-")[1] : "";
}

function history(events) {
  return el(
    "ol",
    { class: "timeline", id: "history" },
    events.map((e) =>
      el(
        "li",
        {},
        el("time", {}, time(e.at)),
        " ",
        el("strong", {}, e.kind),
        e.from_status || e.to_status ? [" ", e.from_status || "∅", " → ", e.to_status || "∅"] : "",
        el("span", { class: "actor" }, ` by ${e.actor}`),
        e.traceparent ? el("span", { class: "trace" }, ` trace ${traceId(e.traceparent)}`) : "",
        e.details != null ? json(e.details) : "",
      ),
    ),
  );
}

// Created, the warning points, the deadline, and each attempt with the instant it times out.
function slaTimeline(t, events, policy) {
  const span = t.sla.deadline - t.created_at;
  const fired = new Set(t.sla_state.warnings_fired || []);
  const points = [{ at: t.created_at, what: "created" }];
  for (const f of policy.warning_fractions) {
    const pm = Math.round(f * 1000);
    points.push({ at: t.created_at + Math.round(span * f), what: `warning ${pm / 10}%${fired.has(pm) ? " (fired)" : ""}` });
  }
  points.push({ at: t.sla.deadline, what: t.sla_state.breached_at ? "deadline (breached)" : "deadline" });
  const limit = Math.round(t.sla.timeout_ms * policy.attempt_timeout_factor);
  // An attempt ends at the first later change of status; only one still running (or that ran past its limit)
  // has a timeout to show.
  const history = events.slice().sort((a, b) => a.at - b.at);
  let n = 0;
  history.forEach((e, i) => {
    if (e.to_status !== "RUNNING") return;
    n += 1;
    points.push({ at: e.at, what: `attempt ${n} started` });
    const end = history.slice(i + 1).find((x) => x.to_status && x.to_status !== "RUNNING");
    if (end && end.at < e.at + limit) {
      points.push({ at: end.at, what: `attempt ${n} ended: ${end.to_status}` });
    } else {
      points.push({ at: e.at + limit, what: `attempt ${n} ${end ? "timed out" : "times out"} (${limit} ms)` });
    }
  });
  points.sort((a, b) => a.at - b.at);
  const now = Date.now();
  return table(
    ["When", "What", ""],
    points.map((p) => el("tr", { class: p.at <= now ? "past" : "" }, el("td", {}, time(p.at)), el("td", {}, p.what),
      el("td", {}, p.at <= now ? "past" : countdown(p.at, t.status)))),
    { class: "sla" },
  );
}

function related(tickets, missing) {
  if (!tickets.length && !missing.length) return el("p", {}, "none");
  return el(
    "ul",
    { class: "related" },
    tickets.map((d) => el("li", {}, ticketLink(d.ticket_id), " ", badge(d.status))),
    missing.map((id) => el("li", {}, id, " (not stored)")),
  );
}

function actions(t, reload) {
  const box = messageBox();
  const output = el("div", { class: "minted" });
  const reason = el("input", { id: "compensation-reason", value: "operator request", autocomplete: "off" });
  const ifMatch = { "if-match": `"${t.version}"` };
  async function run(question, label, action) {
    if (!(await confirmAction(question, label))) return;
    try {
      box.show(await action(), false);
      reload();
    } catch (e) {
      box.show(errorText(e), true);
    }
  }
  const button = (label, question, action, hint) =>
    el("button", { type: "button", title: hint, onclick: () => run(question, label, action) }, label);
  return el(
    "section",
    { class: "actions", "aria-label": "Actions" },
    el("h2", {}, "Actions"),
    button("Retry", `Retry ${t.ticket_id}? A FAILED ticket goes back to PENDING.`, async () => {
      const r = await call("POST", `/api/v1/tickets/${encodeURIComponent(t.ticket_id)}/retry`, undefined, ifMatch);
      return `Retried: now ${r.status}.`;
    }, "FAILED → PENDING"),
    button("Cancel", `Cancel ${t.ticket_id}?`, async () => {
      const r = await call("PATCH", `/api/v1/tickets/${encodeURIComponent(t.ticket_id)}/status`, { status: "CANCELLED" }, ifMatch);
      return `Now ${r.status}.`;
    }, "→ CANCELLED"),
    el("label", { for: "compensation-reason" }, "Compensation reason"),
    reason,
    button("Compensate", `Compensate ${t.ticket_id}? A COMPENSATE ticket is created and this one moves to COMPENSATING.`, async () => {
      const r = await post("/api/v1/tickets/compensation", { original_ticket_id: t.ticket_id, reason: reason.value });
      return `Compensation ticket ${r.ticket_id} (${r.status}).`;
    }, "RUNNING or FAILED → COMPENSATING"),
    button("Mint worker token", `Mint a worker token for ${t.ticket_id}? It is shown once.`, async () => {
      const r = await get(`/api/v1/tickets/${encodeURIComponent(t.ticket_id)}/token`);
      output.replaceChildren(el("label", { for: "minted-token" }, `Token (expires ${time(r.expires_at * 1000)}), shown once:`),
        el("textarea", { id: "minted-token", readonly: true, rows: 3 }, r.access_token));
      return "Token minted.";
    }, "PENDING or RUNNING"),
    box,
    output,
  );
}

export function render(view, [id], { me }) {
  const header = el("h1", {}, "Ticket ", el("code", {}, id));
  const main = el("div", { class: "ticket" });
  const message = el("p", { class: "message error", role: "alert" });
  view.append(header, message, main);
  const path = `/api/v1/tickets/${encodeURIComponent(id)}`;
  const service = me.kind !== "ticket";
  let policy = DEFAULT_POLICY;
  let stream = null;
  let loading = null;

  async function load() {
    try {
      const [t, h, deps] = await Promise.all([get(path), get(`${path}/history?limit=1000`), get(`${path}/dependencies`)]);
      // Dependents need the service's view of other tickets; a ticket token reads only its own.
      const dependents = service ? await get(`${path}/dependents`) : null;
      const found = new Set(deps.map((d) => d.ticket_id));
      message.textContent = "";
      main.replaceChildren(
        el("div", { class: "columns" },
          el("section", {}, el("h2", {}, "Fields"), fields(t)),
          el("div", {},
            service ? actions(t, reload) : el("p", { class: "note" }, "Signed in with a ticket token: read only."),
            el("section", {}, el("h2", {}, "Dependencies"), related(deps, t.dependencies.filter((d) => !found.has(d)))),
            dependents ? el("section", {}, el("h2", {}, "Dependents"), related(dependents, [])) : "",
            el("section", {}, el("h2", {}, "SLA timeline"), slaTimeline(t, h.events, policy)))),
        el("section", {}, el("h2", {}, `History (${h.total})`), history(h.events)),
      );
    } catch (e) {
      message.textContent = errorText(e);
    }
  }
  // Several events in a burst: one reload.
  function reload() {
    if (loading) return;
    loading = setTimeout(() => {
      loading = null;
      load();
    }, 100);
  }

  // Left before the loads above finished: the stream must not open after the page's cleanup ran (nothing would
  // close it, and it would hold one of the caller's watcher slots until the tab closes).
  let left = false;
  (async () => {
    if (service) policy = (await get("/api/v1/system").catch(() => null))?.sla_policy || DEFAULT_POLICY;
    await load();
    if (!left) stream = follow({ ticket_id: id }, reload);
  })();
  return () => {
    left = true;
    if (stream) stream.close();
  };
}
