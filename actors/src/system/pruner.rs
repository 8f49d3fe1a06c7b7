//! Retention: the [`Pruner`] deletes what is old and finished — tickets, audit outbox rows every consumer has
//! taken, webhook deliveries — so that the store's tables and indexes stop growing for ever (issue #20).
//!
//! A round, every [`RetentionPolicy::every`], goes through each kind that has a retention period and deletes in
//! batches of [`RetentionPolicy::batch`] rows, each batch its own short transaction, with
//! [`RetentionPolicy::pause`] between batches so the service's own writes keep their latency. What a batch may
//! delete is the store's rule ([`Retention`]): never an unfinished ticket, one an unfinished ticket depends on,
//! a row a consumer has not taken, or a pending delivery. "Old" is measured with the [`Clock`], so tests drive
//! it. Deleted rows are counted in `tickets_pruned_total{kind}` and each round that deleted anything is logged.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;

use crate::domain::model::Millis;
use crate::ports::clock::Clock;
use crate::ports::store::{detached, Outbox, OutboxPosition, PruneKind, Retention, StoreError};
use crate::system::metrics::ActorMetrics;

/// How long each kind is kept, and how the pruner paces itself.
#[derive(Debug, Clone)]
pub struct RetentionPolicy {
    /// Finished tickets (COMPLETED, CANCELLED, COMPENSATED), from their last change; `None`: kept for ever.
    pub tickets: Option<Duration>,
    /// Audit outbox rows, from when they were recorded, once every consumer of `taken_by` has taken them;
    /// `None`: kept for ever.
    pub events: Option<Duration>,
    /// Finished webhook deliveries (delivered or failed), from their creation; `None`: kept for ever.
    pub deliveries: Option<Duration>,
    /// The outbox consumers that run in this service: a row is deleted only once each of them has taken it.
    pub taken_by: Vec<Outbox>,
    /// Most rows per batch (one transaction).
    pub batch: i64,
    /// Pause between two batches.
    pub pause: Duration,
    /// Pause between two rounds.
    pub every: Duration,
    /// Pause before the first round (the service starts serving first).
    pub first_after: Duration,
}

impl Default for RetentionPolicy {
    fn default() -> Self {
        const DAY: u64 = 86_400;
        RetentionPolicy {
            tickets: Some(Duration::from_secs(30 * DAY)),
            events: Some(Duration::from_secs(30 * DAY)),
            deliveries: Some(Duration::from_secs(7 * DAY)),
            taken_by: Outbox::ALL.to_vec(),
            batch: 1000,
            pause: Duration::from_millis(100),
            every: Duration::from_secs(3600),
            first_after: Duration::from_secs(60),
        }
    }
}

impl RetentionPolicy {
    /// Whether anything is ever deleted.
    pub fn enabled(&self) -> bool {
        self.tickets.is_some() || self.events.is_some() || self.deliveries.is_some()
    }

    fn period(&self, kind: PruneKind) -> Option<Duration> {
        match kind {
            PruneKind::Tickets => self.tickets,
            PruneKind::Events => self.events,
            PruneKind::Deliveries => self.deliveries,
        }
    }
}

/// What one round deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pruned {
    pub tickets: u64,
    pub events: u64,
    pub deliveries: u64,
}

impl Pruned {
    fn add(&mut self, kind: PruneKind, n: u64) {
        match kind {
            PruneKind::Tickets => self.tickets += n,
            PruneKind::Events => self.events += n,
            PruneKind::Deliveries => self.deliveries += n,
        }
    }

    pub fn total(&self) -> u64 {
        self.tickets + self.events + self.deliveries
    }
}

/// A round's failure: what it deleted before the store failed, and the failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("retention stopped after deleting {pruned:?}: {error}")]
pub struct PruneFailed {
    pub pruned: Pruned,
    pub error: StoreError,
}

/// Run one round now (tests, operators' tools); answers what it deleted. Rounds never overlap: one asked for
/// while another runs waits for it.
#[derive(Message)]
#[rtype(result = "Result<Pruned, PruneFailed>")]
pub struct PruneNow;

/// The periodic round.
#[derive(Message)]
#[rtype(result = "()")]
struct Tick;

/// See the module docs.
pub struct Pruner {
    store: Arc<dyn Retention>,
    clock: Arc<dyn Clock>,
    policy: Arc<RetentionPolicy>,
    metrics: ActorMetrics,
}

impl Pruner {
    pub fn new(
        store: Arc<dyn Retention>,
        clock: Arc<dyn Clock>,
        policy: RetentionPolicy,
        metrics: ActorMetrics,
    ) -> Self {
        Pruner { store, clock, policy: Arc::new(policy), metrics }
    }

    /// One round over every kind that has a retention period.
    async fn round(
        store: Arc<dyn Retention>,
        clock: Arc<dyn Clock>,
        policy: Arc<RetentionPolicy>,
        metrics: ActorMetrics,
    ) -> Result<Pruned, PruneFailed> {
        let mut pruned = Pruned::default();
        for kind in PruneKind::ALL {
            let Some(period) = policy.period(kind) else { continue };
            let before: Millis = clock.now_ms().saturating_sub(i64::try_from(period.as_millis()).unwrap_or(i64::MAX));
            let counter = metrics.pruned.with_label_values(&[kind.name()]);
            let mut after = OutboxPosition::default();
            let mut first = true;
            loop {
                if !first && !policy.pause.is_zero() {
                    tokio::time::sleep(policy.pause).await;
                }
                first = false;
                let batch = match kind {
                    PruneKind::Tickets => {
                        store.prune_tickets(before, policy.batch).await.map(|n| (n, n >= policy.batch as u64))
                    }
                    PruneKind::Deliveries => {
                        store.prune_deliveries(before, policy.batch).await.map(|n| (n, n >= policy.batch as u64))
                    }
                    PruneKind::Events => {
                        store.prune_events(before, &policy.taken_by, after, policy.batch).await.map(|b| {
                            after = b.window_end.unwrap_or(after);
                            (b.deleted, b.more)
                        })
                    }
                };
                let (n, more) = batch.map_err(|error| PruneFailed { pruned, error })?;
                counter.inc_by(n);
                pruned.add(kind, n);
                if !more {
                    break;
                }
            }
        }
        Ok(pruned)
    }

    fn run(&self) -> impl std::future::Future<Output = Result<Pruned, PruneFailed>> + Send + 'static {
        let round = Self::round(
            Arc::clone(&self.store),
            Arc::clone(&self.clock),
            Arc::clone(&self.policy),
            self.metrics.clone(),
        );
        detached(async move {
            let started = Instant::now();
            let outcome = round.await;
            let ms = started.elapsed().as_millis() as u64;
            match &outcome {
                Ok(p) if p.total() > 0 => tracing::info!(
                    tickets = p.tickets,
                    events = p.events,
                    deliveries = p.deliveries,
                    elapsed_ms = ms,
                    "retention: pruned"
                ),
                Ok(_) => tracing::debug!(elapsed_ms = ms, "retention: nothing to prune"),
                Err(e) => tracing::warn!(
                    error = %e.error,
                    tickets = e.pruned.tickets,
                    events = e.pruned.events,
                    deliveries = e.pruned.deliveries,
                    "retention round failed; next round as scheduled"
                ),
            }
            outcome
        })
    }
}

impl Actor for Pruner {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let p = &self.policy;
        tracing::info!(
            tickets_days = p.tickets.map(|d| d.as_secs_f64() / 86_400.0),
            events_days = p.events.map(|d| d.as_secs_f64() / 86_400.0),
            deliveries_days = p.deliveries.map(|d| d.as_secs_f64() / 86_400.0),
            taken_by = ?p.taken_by.iter().map(|o| o.name()).collect::<Vec<_>>(),
            "retention on (0 days = kept for ever)"
        );
        ctx.notify_later(Tick, self.policy.first_after);
    }
}

impl Handler<Tick> for Pruner {
    type Result = ();

    fn handle(&mut self, _: Tick, ctx: &mut Context<Self>) {
        ctx.wait(self.run().into_actor(self).map(|_, act, ctx| {
            ctx.notify_later(Tick, act.policy.every);
        }));
    }
}

impl Handler<PruneNow> for Pruner {
    type Result = AtomicResponse<Self, Result<Pruned, PruneFailed>>;

    fn handle(&mut self, _: PruneNow, _: &mut Context<Self>) -> Self::Result {
        AtomicResponse::new(Box::pin(self.run().into_actor(self)))
    }
}
