// Webhooks: each subscription with its filters and health, its recent deliveries (each attempt's status code,
// error and latency; redeliver one), secret rotation (the new secret is shown once) and pause / resume. Every
// button is the API call it names.

import { call, get, post } from "./api.js";
import { confirmAction, el, errorText, messageBox, table, ticketLink, time } from "./ui.js";

function filters(s) {
  const parts = [];
  parts.push(`events: ${s.events.join(", ") || "all"}`);
  if (s.task_types && s.task_types.length) parts.push(`task types: ${s.task_types.join(", ")}`);
  if (s.capabilities) parts.push(`capabilities: ${s.capabilities.join(", ")}`);
  if (s.min_priority) parts.push(`priority ≥ ${s.min_priority}`);
  if (s.plan_id) parts.push(`plan: ${s.plan_id}`);
  return parts.join(" · ");
}

function health(s) {
  if (s.disabled_reason) return el("span", { class: "breached" }, `disabled: ${s.disabled_reason}`);
  if (s.paused) return "paused";
  if (s.consecutive_failures) return el("span", { class: "soon" }, `${s.consecutive_failures} failure${s.consecutive_failures === 1 ? "" : "s"} in a row since ${time(s.failing_since)}`);
  return "healthy";
}

function subscription(s, reload) {
  const box = messageBox();
  const secret = el("div");
  const deliveries = el("div");
  const path = `/api/v1/webhooks/${encodeURIComponent(s.id)}`;
  async function act(question, label, action) {
    if (!(await confirmAction(question, label))) return;
    try {
      box.show(await action(), false);
    } catch (e) {
      box.show(errorText(e), true);
    }
  }
  // Each attempt of one delivery, from its ticket's history (the deliverer records every attempt there, with
  // its HTTP status, error and latency).
  async function showAttempts(d, holder) {
    try {
      const page = await get(`/api/v1/tickets/${encodeURIComponent(d.ticket_id)}/history?limit=1000`);
      const attempts = page.events.filter((e) => e.kind.startsWith("webhook.") && e.details && e.details.delivery_id === d.id
        && e.details.attempt !== undefined);
      holder.replaceChildren(attempts.length ? table(
        ["Attempt", "When", "HTTP status", "Error", "Latency"],
        attempts.map((e) => el("tr", {},
          el("td", { class: "num" }, e.details.attempt), el("td", {}, time(e.at)),
          el("td", {}, e.details.http_status ?? "—"), el("td", {}, e.details.error || "—"),
          el("td", { class: "num" }, e.details.latency_ms == null ? "—" : `${e.details.latency_ms} ms`))),
        { class: "attempts" },
      ) : el("p", {}, "No attempt yet."));
    } catch (e) {
      holder.replaceChildren(el("p", { class: "message error" }, errorText(e)));
    }
  }
  async function showDeliveries() {
    try {
      const page = await get(`${path}/deliveries?limit=20`);
      deliveries.replaceChildren(table(
        ["Delivery", "Event", "Ticket", "Status", "Attempts", "Last HTTP status", "Last error", "Next attempt", ""],
        page.deliveries.flatMap((d) => {
          const attempts = el("td", { colspan: 9 });
          return [el("tr", {},
            el("td", {}, el("code", {}, d.id)), el("td", {}, d.event_type), el("td", {}, ticketLink(d.ticket_id)),
            el("td", {}, d.status), el("td", { class: "num" }, d.attempts), el("td", {}, d.last_status ?? "—"),
            el("td", {}, d.last_error || "—"), el("td", {}, time(d.next_attempt_at)),
            el("td", {},
              el("button", { type: "button", onclick: () => showAttempts(d, attempts) }, "Attempts"), " ",
              el("button", { type: "button", onclick: () => act(`Deliver ${d.id} again?`, "Redeliver", async () => {
                await post(`${path}/deliveries/${encodeURIComponent(d.id)}/redeliver`);
                showDeliveries();
                return "Queued for delivery.";
              }) }, "Redeliver"))),
          el("tr", { class: "attempts-row" }, attempts)];
        }),
      ), el("p", {}, `${page.total} ${page.total === 1 ? "delivery" : "deliveries"} in all.`));
    } catch (e) {
      deliveries.replaceChildren(el("p", { class: "message error" }, errorText(e)));
    }
  }
  return el("section", { class: "subscription" },
    el("h2", {}, s.url),
    el("p", {}, el("code", {}, s.id), " · ", filters(s)),
    el("p", {}, "Health: ", health(s)),
    el("div", { class: "buttons" },
      el("button", { type: "button", onclick: showDeliveries }, "Recent deliveries"),
      el("button", { type: "button", onclick: () => act(s.paused || s.disabled_reason ? `Resume ${s.url}?` : `Pause ${s.url}?`,
        s.paused || s.disabled_reason ? "Resume" : "Pause", async () => {
          const r = await call("PATCH", path, { paused: !(s.paused || s.disabled_reason) });
          reload();
          return r.paused ? "Paused." : "Resumed.";
        }) }, s.paused || s.disabled_reason ? "Resume" : "Pause"),
      el("button", { type: "button", onclick: () => act(`Rotate the signing secret of ${s.url}? The old one keeps signing for a while.`, "Rotate", async () => {
        const r = await post(`${path}/rotate-secret`);
        secret.replaceChildren(el("label", {}, "New secret, shown once: ", el("input", { readonly: true, value: r.secret, size: 50 })));
        return "Secret rotated.";
      }) }, "Rotate secret")),
    box, secret, deliveries);
}

export function render(view) {
  const holder = el("div");
  view.append(el("h1", {}, "Webhooks"), holder);
  async function load() {
    try {
      const subs = await get("/api/v1/webhooks");
      holder.replaceChildren(...(subs.length ? subs.map((s) => subscription(s, load)) : [el("p", {}, "No subscriptions.")]));
    } catch (e) {
      holder.replaceChildren(el("p", { class: "message error", role: "alert" }, errorText(e)));
    }
  }
  load();
}
