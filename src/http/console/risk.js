// At risk: unfinished tickets closest to their next SLA instant (a warning point, the deadline, an attempt's
// timeout), across all plans, soonest first (GET /api/v1/tickets?order=next_due), refreshed as events arrive.

import { follow, get } from "./api.js";
import { badge, countdown, el, errorText, planLink, table, ticketLink, time } from "./ui.js";

export function render(view) {
  const live = el("span", { class: "live", role: "status" }, "connecting…");
  const message = el("p", { class: "message error", role: "alert" });
  const holder = el("div");
  view.append(el("h1", {}, "At risk ", live), message, holder);
  let pending = null;

  async function load() {
    try {
      const page = await get("/api/v1/tickets?order=next_due&limit=100");
      message.textContent = "";
      holder.replaceChildren(
        table(
          ["Ticket", "Plan", "Status", "Next SLA instant", "In", "Deadline in", "Warnings", "Breached", "Retries"],
          page.tickets.map((t) =>
            el("tr", { dataset: { ticketId: t.ticket_id } },
              el("td", {}, ticketLink(t.ticket_id)),
              el("td", {}, planLink(t.plan_id)),
              el("td", {}, badge(t.status)),
              el("td", {}, time(t.sla_state.next_due_at)),
              el("td", {}, countdown(t.sla_state.next_due_at, t.status)),
              el("td", {}, countdown(t.sla.deadline, t.status)),
              el("td", { class: "num" }, (t.sla_state.warnings_fired || []).length),
              el("td", {}, t.sla_state.breached_at ? el("span", { class: "breached" }, "breached") : "no"),
              el("td", { class: "num" }, `${t.retry_count} / ${t.sla.max_retries}`))),
          { id: "risk-table" },
        ),
      );
    } catch (e) {
      message.textContent = errorText(e);
    }
  }
  // Any change may reorder the list: take it again, at most twice a second.
  const refresh = () => {
    if (!pending) pending = setTimeout(() => ((pending = null), load()), 500);
  };
  load();
  const stream = follow({}, refresh, (state) => {
    live.textContent = state === "live" ? "● live" : typeof state === "string" ? state : errorText(state);
  });
  return () => stream.close();
}
