// System: GET /api/v1/system every 5 s — readiness, Kafka, outbox, actors, version, shard owners.

import { get } from "./api.js";
import { el, errorText, field, table } from "./ui.js";

function ranges(shards) {
  const out = [];
  for (const s of shards) {
    const last = out[out.length - 1];
    if (last && last[1] === s - 1) last[1] = s;
    else out.push([s, s]);
  }
  return out.map(([a, b]) => (a === b ? `${a}` : `${a}–${b}`)).join(", ");
}

export function render(view) {
  const holder = el("div");
  view.append(el("h1", {}, "System"), holder);
  async function load() {
    try {
      const s = await get("/api/v1/system");
      const checks = Object.entries(s.readiness.checks || {});
      const lag = Object.entries(s.kafka.consumer_lag);
      holder.replaceChildren(
        el("dl", { class: "fields" },
          field("Version", s.version),
          field("Replica", `${s.member}${s.clustered ? " (cluster mode)" : ""}`),
          field("Ready", s.ready ? "yes" : "no"),
          field("Live actors", s.live_actors),
          field("SLA timers armed", s.sla_timers_armed),
          field("Kafka consumer", s.kafka.consuming ? "consuming" : "not configured"),
          field("Consumer lag", lag.length ? lag.map(([p, n]) => `partition ${p}: ${n}`).join(", ") : "—"),
          field("Dead-lettered since start", s.kafka.dlq_messages),
          field("Audit outbox backlog", s.audit_backlog),
          field("Event outbox backlog", s.events_backlog)),
        el("h2", {}, "Readiness"),
        table(["Component", "Status", "Detail"], checks.map(([name, c]) =>
          el("tr", {}, el("td", {}, name), el("td", {}, c.status), el("td", {}, c.error || c.detail || c.backend || "")))),
        el("h2", {}, "Replicas and shards"),
        table(["Replica", "Address", "Shards"], s.replicas.map((r) =>
          el("tr", {}, el("td", {}, r.member, r.local ? " (this one)" : ""), el("td", {}, r.address || "—"),
            el("td", {}, `${r.shards.length}: ${ranges(r.shards)}`)))),
        s.unowned_shards.length ? el("p", { class: "message error" }, `Unowned shards: ${ranges(s.unowned_shards)}`) : "",
      );
    } catch (e) {
      holder.replaceChildren(el("p", { class: "message error", role: "alert" }, errorText(e)));
    }
  }
  load();
  const timer = setInterval(load, 5000);
  return () => clearInterval(timer);
}
