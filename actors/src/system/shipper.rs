//! The audit trail: every committed change becomes an [`AuditEvent`] written into the store's outbox **in the
//! same transaction** as the change (a [`Write::Audit`](crate::ports::store::Write::Audit) in the change's unit), and
//! an [`OutboxShipper`] ships outbox rows to an [`OutboxSink`] in batches. There is one actor per outbox consumer
//! ([`Outbox`]): the audit trail (MongoDB) and the ticket event stream (Kafka), each with its own cursor, its
//! own sink and its own health.
//!
//! Why an outbox rather than writing to the sink directly: the change and its audit record commit together or
//! not at all, so a crash or a sink outage never loses a record nor records a change that did not happen.
//! Shipping is at least once: a batch shipped before its cursor moved (crash in between) is shipped again, so
//! the sink, or whoever reads it, de-duplicates by `event_id`.

use crate::system::ownership::Leader;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::prelude::*;
use prometheus::{IntCounter, IntGauge, Registry};

use crate::ports::store::{AuditOutbox, Outbox, StoreError};

use crate::domain::history::AuditEvent;
use crate::ports::outbox_sink::{OutboxSink, SinkError};

/// What `/ready` and the metrics know of the shipping: degraded while the sink fails.
#[derive(Clone)]
pub struct ShipperHealth {
    inner: Arc<HealthInner>,
}

struct HealthInner {
    degraded: AtomicBool,
    last_error: Mutex<Option<String>>,
    backlog: IntGauge,
    shipped: IntCounter,
    last_backlog: AtomicI64,
}

impl ShipperHealth {
    /// Health of the audit trail's shipping, with `audit_outbox_backlog` and `audit_events_shipped_total`
    /// registered in `registry`.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        Self::register_as(
            registry,
            ("audit_outbox_backlog", "Audit records waiting in the outbox to be shipped"),
            ("audit_events_shipped_total", "Audit records shipped to the audit sink"),
        )
    }

    /// Health whose backlog gauge and shipped counter have the given (name, help), registered in `registry`:
    /// each outbox consumer has its own series.
    pub fn register_as(registry: &Registry, backlog: (&str, &str), shipped: (&str, &str)) -> prometheus::Result<Self> {
        let health =
            ShipperHealth::with_metrics(IntGauge::new(backlog.0, backlog.1)?, IntCounter::new(shipped.0, shipped.1)?);
        registry.register(Box::new(health.inner.backlog.clone()))?;
        registry.register(Box::new(health.inner.shipped.clone()))?;
        Ok(health)
    }

    /// Health whose metrics nobody scrapes (tests).
    pub fn unregistered() -> Self {
        ShipperHealth::with_metrics(
            IntGauge::new("audit_outbox_backlog", "unregistered").expect("valid metric"),
            IntCounter::new("audit_events_shipped_total", "unregistered").expect("valid metric"),
        )
    }

    fn with_metrics(backlog: IntGauge, shipped: IntCounter) -> Self {
        ShipperHealth {
            inner: Arc::new(HealthInner {
                degraded: AtomicBool::new(false),
                last_error: Mutex::new(None),
                backlog,
                shipped,
                last_backlog: AtomicI64::new(0),
            }),
        }
    }

    /// `Err(last error)` while the sink is failing.
    pub fn status(&self) -> Result<(), String> {
        if self.inner.degraded.load(Ordering::Relaxed) {
            Err(self.inner.last_error.lock().expect("not poisoned").clone().unwrap_or_default())
        } else {
            Ok(())
        }
    }

    /// Records waiting to be shipped, as last counted.
    pub fn backlog(&self) -> i64 {
        self.inner.last_backlog.load(Ordering::Relaxed)
    }

    /// Records shipped since start.
    pub fn shipped(&self) -> u64 {
        self.inner.shipped.get()
    }

    fn failed(&self, error: String) {
        self.inner.degraded.store(true, Ordering::Relaxed);
        *self.inner.last_error.lock().expect("not poisoned") = Some(error);
    }

    fn recovered(&self) {
        self.inner.degraded.store(false, Ordering::Relaxed);
    }

    fn set_backlog(&self, n: i64) {
        self.inner.last_backlog.store(n, Ordering::Relaxed);
        self.inner.backlog.set(n);
    }
}

/// Tuning of the [`OutboxShipper`].
#[derive(Debug, Clone)]
pub struct ShipperConfig {
    /// Most records per shipped batch.
    pub batch: i64,
    /// Pause between polls when the outbox is empty.
    pub idle: Duration,
    /// First pause after a failure (doubles up to `max_backoff`).
    pub backoff: Duration,
    pub max_backoff: Duration,
    /// How long records may wait while none can be taken before the shipping shows degraded: the store hands
    /// out only rows no running transaction can precede (see [`Outbox`]), so a transaction left open on the
    /// database (a session idle in a transaction) holds every later record back until it ends.
    pub held_warning: Duration,
    /// Cluster mode: only the replica that owns shard 0 ships (two shippers on one cursor would ship every
    /// record twice); the others wait, and take over within a lease when it goes.
    pub leader: Leader,
}

impl Default for ShipperConfig {
    fn default() -> Self {
        ShipperConfig {
            batch: 1000,
            idle: Duration::from_millis(200),
            backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
            held_warning: Duration::from_secs(60),
            leader: Leader::default(),
        }
    }
}

/// Ships the rows after one [`Outbox`] consumer's cursor to its sink, in cursor order, then moves the cursor. One
/// round at a time; a full batch is followed at once by the next round, an empty one by a pause, a failure by an
/// exponential back-off.
pub struct OutboxShipper {
    store: Arc<dyn AuditOutbox>,
    sink: Arc<dyn OutboxSink>,
    outbox: Outbox,
    health: ShipperHealth,
    config: ShipperConfig,
    backoff: Duration,
    counted_at: Option<Instant>,
    /// Since when rounds find nothing to take while the last count says records wait.
    held_since: Option<Instant>,
    /// How often the backlog is counted: every second, or less often when counting takes long. The count walks
    /// the outbox's index of waiting rows, so a backlog of 100 000 costs ≈ 0.1 s of the database each time;
    /// spacing the counts at [`COUNT_COST_FACTOR`] times their cost keeps that under 5 % of one core.
    count_every: Duration,
}

/// See [`OutboxShipper::count_every`].
const COUNT_COST_FACTOR: u32 = 20;
const COUNT_EVERY_MIN: Duration = Duration::from_secs(1);
const COUNT_EVERY_MAX: Duration = Duration::from_secs(30);

#[derive(Message)]
#[rtype(result = "()")]
struct Ship;

/// Outcome of one round: how many records were taken from the outbox, or what failed.
enum Round {
    Shipped { taken: usize },
    StoreFailed(StoreError),
    SinkFailed(SinkError),
}

impl OutboxShipper {
    /// The shipper of `outbox`'s rows to `sink`.
    pub fn new(
        store: Arc<dyn AuditOutbox>,
        sink: Arc<dyn OutboxSink>,
        outbox: Outbox,
        health: ShipperHealth,
        config: ShipperConfig,
    ) -> Self {
        let backoff = config.backoff;
        OutboxShipper {
            store,
            sink,
            outbox,
            health,
            config,
            backoff,
            counted_at: None,
            held_since: None,
            count_every: COUNT_EVERY_MIN,
        }
    }

    /// One batch: read, ship, count what the sink used, move the cursor. The count comes before the cursor so
    /// that whoever sees a record taken also sees it counted (the counter is of records the sink accepted; a
    /// batch shipped again after a failed cursor move counts again, as it was delivered again).
    async fn round(
        store: Arc<dyn AuditOutbox>,
        sink: Arc<dyn OutboxSink>,
        health: ShipperHealth,
        outbox: Outbox,
        batch: i64,
    ) -> Round {
        let pending = match store.audit_pending(outbox, batch).await {
            Ok(p) => p,
            Err(e) => return Round::StoreFailed(e),
        };
        if pending.is_empty() {
            return Round::Shipped { taken: 0 };
        }
        let last = pending.last().map(|(position, _)| *position).unwrap_or_default();
        let events: Vec<AuditEvent> = pending.into_iter().map(|(_, e)| e).collect();
        let used = match sink.ship(&events).await {
            Ok(used) => used,
            Err(e) => return Round::SinkFailed(e),
        };
        health.inner.shipped.inc_by(used as u64);
        match store.audit_advance(outbox, last).await {
            Ok(()) => Round::Shipped { taken: events.len() },
            // Shipped but the cursor did not move: the next round ships them again (at least once; see the
            // module docs).
            Err(e) => Round::StoreFailed(e),
        }
    }
}

impl Actor for OutboxShipper {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        tracing::info!(sink = self.sink.name(), outbox = self.outbox.name(), "outbox shipping started");
        ctx.notify(Ship);
    }
}

impl Handler<Ship> for OutboxShipper {
    type Result = ();

    fn handle(&mut self, _: Ship, ctx: &mut Context<Self>) {
        if !self.config.leader.is_leader() {
            ctx.notify_later(Ship, self.config.idle.max(Duration::from_millis(500)));
            return;
        }
        let outbox = self.outbox;
        let (store, sink, health) = (Arc::clone(&self.store), Arc::clone(&self.sink), self.health.clone());
        let round = Self::round(store, sink, health, outbox, self.config.batch);
        let count_now = self.counted_at.is_none_or(|t| t.elapsed() >= self.count_every);
        let store = Arc::clone(&self.store);
        let fut = crate::ports::store::detached(async move {
            let outcome = round.await;
            let backlog = if count_now {
                let started = Instant::now();
                store.audit_backlog(outbox).await.ok().map(|n| (n, started.elapsed()))
            } else {
                None
            };
            (outcome, backlog)
        });
        ctx.wait(fut.into_actor(self).map(move |(outcome, backlog), act, ctx| {
            if let Some((n, took)) = backlog {
                act.health.set_backlog(n);
                act.counted_at = Some(Instant::now());
                act.count_every = (took * COUNT_COST_FACTOR).clamp(COUNT_EVERY_MIN, COUNT_EVERY_MAX);
            }
            let pause = match outcome {
                Round::Shipped { taken } => {
                    act.held_since = match act.held_since {
                        _ if taken > 0 || act.health.backlog() == 0 => None,
                        None => Some(Instant::now()),
                        since => since,
                    };
                    match act.held_since {
                        Some(since) if since.elapsed() >= act.config.held_warning => {
                            let why = format!(
                                "{} records wait behind a database transaction open for over {} s \
                                 (a session idle in a transaction?)",
                                act.health.backlog(),
                                act.config.held_warning.as_secs_f64()
                            );
                            if act.health.status().is_ok() {
                                tracing::warn!(outbox = outbox.name(), reason = %why, "outbox shipping held back");
                            }
                            act.health.failed(why);
                        }
                        _ => {
                            if act.health.status().is_err() {
                                tracing::info!(sink = act.sink.name(), outbox = outbox.name(), "shipping resumed");
                            }
                            act.health.recovered();
                        }
                    }
                    act.backoff = act.config.backoff;
                    if taken as i64 >= act.config.batch {
                        Duration::ZERO
                    } else {
                        act.config.idle
                    }
                }
                Round::StoreFailed(e) => {
                    tracing::warn!(error = %e, outbox = outbox.name(), "outbox unreadable; retrying");
                    let pause = act.backoff;
                    act.backoff = (act.backoff * 2).min(act.config.max_backoff);
                    pause
                }
                Round::SinkFailed(e) => {
                    if act.health.status().is_ok() {
                        tracing::warn!(sink = act.sink.name(), outbox = outbox.name(), error = %e, "sink failing; records wait in the outbox");
                    } else {
                        tracing::debug!(sink = act.sink.name(), outbox = outbox.name(), error = %e, "sink still failing");
                    }
                    // `/ready` is unauthenticated: the sink's own text (hosts, driver messages) stays in the log.
                    act.health.failed(format!("the {} sink is failing (details in the service log)", act.sink.name()));
                    let pause = act.backoff;
                    act.backoff = (act.backoff * 2).min(act.config.max_backoff);
                    pause
                }
            };
            if pause.is_zero() {
                ctx.notify(Ship);
            } else {
                ctx.notify_later(Ship, pause);
            }
        }));
    }
}
