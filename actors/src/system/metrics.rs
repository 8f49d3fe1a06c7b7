//! Health figures of the actor system, registered in the service's Prometheus registry.

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

/// Counters and gauges the actors update as they work.
#[derive(Clone)]
pub struct ActorMetrics {
    /// Ticket actors alive now (`ticket_actors_live`).
    pub live: IntGauge,
    /// Ticket actors stopped after being idle (`ticket_actors_passivated_total`).
    pub passivated: IntCounter,
    /// Ticket actors that died while handling a message and were restarted (`actor_restarts_total`).
    pub restarts: IntCounter,
    /// Tickets inserted by a committed transaction (`tickets_persisted_total`).
    pub persisted: IntCounter,
    /// Write units per group-commit transaction (`persistence_batch_size`).
    pub batch_size: Histogram,
    /// Seconds one group commit took (`persistence_commit_duration_seconds`).
    pub commit_seconds: Histogram,
    /// SLA rules fired (`ticket_sla_events_total{kind,priority,task_type}`).
    pub sla_events: IntCounterVec,
    /// Fire time − due time of SLA rules, seconds (`ticket_sla_lateness_seconds`).
    pub sla_lateness: Histogram,
    /// Tickets whose next SLA instant is in a shard's wake-up index (`sla_timers_armed`).
    pub sla_armed: IntGauge,
    /// Webhook delivery metrics (`webhooks_*`).
    pub webhooks: crate::system::webhooks::WebhookMetrics,
    /// Rows deleted by retention, by kind (`tickets_pruned_total{kind}`: tickets, events, deliveries).
    pub pruned: IntCounterVec,
    /// Requests forwarded to the replica that owns their ticket's shard (`cluster_forwarded_requests_total`).
    pub forwarded: IntCounter,
    /// Virtual shards this replica serves (`cluster_shards_owned`).
    pub shards_owned: IntGauge,
}

impl ActorMetrics {
    /// Create the metrics and register them in `registry`.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let m = Self::unregistered();
        registry.register(Box::new(m.live.clone()))?;
        registry.register(Box::new(m.passivated.clone()))?;
        registry.register(Box::new(m.restarts.clone()))?;
        registry.register(Box::new(m.persisted.clone()))?;
        registry.register(Box::new(m.batch_size.clone()))?;
        registry.register(Box::new(m.commit_seconds.clone()))?;
        registry.register(Box::new(m.sla_events.clone()))?;
        registry.register(Box::new(m.sla_lateness.clone()))?;
        registry.register(Box::new(m.sla_armed.clone()))?;
        registry.register(Box::new(m.pruned.clone()))?;
        registry.register(Box::new(m.forwarded.clone()))?;
        registry.register(Box::new(m.shards_owned.clone()))?;
        m.webhooks.register_into(registry)?;
        Ok(m)
    }

    /// Metrics that nobody scrapes (tests).
    pub fn unregistered() -> Self {
        let batch_buckets = vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0];
        ActorMetrics {
            live: IntGauge::new("ticket_actors_live", "Ticket actors alive now").expect("valid metric"),
            passivated: IntCounter::new("ticket_actors_passivated_total", "Ticket actors stopped after idling")
                .expect("valid metric"),
            restarts: IntCounter::new("actor_restarts_total", "Ticket actors restarted after a failure")
                .expect("valid metric"),
            persisted: IntCounter::new("tickets_persisted_total", "Tickets durably created").expect("valid metric"),
            batch_size: Histogram::with_opts(
                HistogramOpts::new("persistence_batch_size", "Write units per group commit").buckets(batch_buckets),
            )
            .expect("valid metric"),
            commit_seconds: Histogram::with_opts(HistogramOpts::new(
                "persistence_commit_duration_seconds",
                "Duration of one group-commit transaction",
            ))
            .expect("valid metric"),
            sla_events: IntCounterVec::new(
                Opts::new("ticket_sla_events_total", "SLA rules fired"),
                &["kind", "priority", "task_type"],
            )
            .expect("valid metric"),
            sla_lateness: Histogram::with_opts(
                HistogramOpts::new("ticket_sla_lateness_seconds", "Fire time minus due time of SLA rules")
                    .buckets(vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0]),
            )
            .expect("valid metric"),
            sla_armed: IntGauge::new("sla_timers_armed", "Tickets in the wake-up indexes").expect("valid metric"),
            webhooks: crate::system::webhooks::WebhookMetrics::unregistered(),
            pruned: {
                let pruned = IntCounterVec::new(
                    Opts::new(
                        "tickets_pruned_total",
                        "Rows deleted by retention, by kind (tickets, events, deliveries)",
                    ),
                    &["kind"],
                )
                .expect("valid metric");
                // Every kind exported from the start, at 0.
                for kind in crate::ports::store::PruneKind::ALL {
                    pruned.with_label_values(&[kind.name()]);
                }
                pruned
            },
            forwarded: IntCounter::new(
                "cluster_forwarded_requests_total",
                "Requests forwarded to the replica that owns their ticket's shard",
            )
            .expect("valid metric"),
            shards_owned: IntGauge::new("cluster_shards_owned", "Virtual shards this replica serves")
                .expect("valid metric"),
        }
    }
}
