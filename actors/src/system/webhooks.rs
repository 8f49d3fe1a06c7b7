//! Webhooks for worker pools: subscriptions and their filters, the durable delivery outbox, and the
//! [`WebhookActor`] that delivers it.
//!
//! - A ticket actor that commits a change adds one [`Write::Delivery`](crate::ports::store::Write::Delivery) per
//!   matching subscription to the change's own unit: the delivery is as durable as the change (a crash
//!   after the commit still delivers it; a change that did not commit delivers nothing). The payload's ticket
//!   is the committed ticket, frozen in the row.
//! - The [`WebhookActor`] claims due deliveries (a lease, so two replicas rarely send the same one), sends
//!   them through the [`WebhookTransport`] port (HTTP, signing and address checks live in the service crate),
//!   and records each attempt. Every subscription has its own concurrency limit, queue, circuit breaker and
//!   claim budget (twice what it finished since the last claim, so a fast endpoint's supply stays ahead of it
//!   and a hanging one's shrinks to a minimum), and broken subscriptions are left out of claims, so one dead
//!   or slow endpoint never delays the others.
//! - Retries follow a schedule (Svix-like by default) with ±10 % jitter; the delivery id (`webhook-id`) stays
//!   the same across retries so receivers de-duplicate. 410 Gone disables the subscription; so do N
//!   consecutive failures spread over at least a window.
//! - 429 Too Many Requests is back-pressure, not breakage: the delivery's next attempt waits at least the
//!   receiver's `Retry-After` (bounded by [`WebhookConfig::retry_after_max`], 1 h, and by the schedule's
//!   longest step; never sooner than the schedule), the endpoint's other deliveries wait as long, and it neither counts towards the circuit
//!   breaker nor towards disabling the subscription. The attempt still counts against the schedule, so a
//!   receiver that keeps refusing cannot hold a delivery forever.

use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use actix::prelude::*;
use prometheus::{Histogram, HistogramOpts, IntCounterVec, IntGauge, Opts, Registry};

use crate::domain::delivery_attempt::{on_attempt, AttemptRules};
use crate::ports::clock::Clock;
use crate::ports::store::{StoreError, WebhookStore};

// The data it delivers and the port it sends through, where the service has always found them.
pub use crate::domain::subscription::{
    deliveries_for, AttemptRecord, ClaimBudget, Delivery, DeliveryStatus, Subscription, EVENT_TYPES,
};
pub use crate::ports::webhook_transport::{SendOutcome, WebhookTransport};

/// The subscriptions every ticket actor matches its events against (a snapshot, replaced on change).
#[derive(Clone)]
pub struct WebhookRegistry {
    subscriptions: Arc<RwLock<Arc<Vec<Subscription>>>>,
    /// Bumped when a subscription was changed through this replica (cluster mode tells the others).
    changed_here: Arc<tokio::sync::watch::Sender<u64>>,
}

impl Default for WebhookRegistry {
    fn default() -> Self {
        WebhookRegistry { subscriptions: Arc::default(), changed_here: Arc::new(tokio::sync::watch::channel(0).0) }
    }
}

impl WebhookRegistry {
    pub fn snapshot(&self) -> Arc<Vec<Subscription>> {
        Arc::clone(&self.subscriptions.read().expect("not poisoned"))
    }

    pub fn replace(&self, subscriptions: Vec<Subscription>) {
        *self.subscriptions.write().expect("not poisoned") = Arc::new(subscriptions);
    }

    /// Reload from the store (after a change here, and periodically for changes made by other replicas).
    pub async fn reload(&self, store: &dyn WebhookStore) -> Result<(), StoreError> {
        self.replace(store.webhook_subscriptions().await?);
        Ok(())
    }

    /// A subscription was changed through this replica (and committed): the other replicas must reload.
    pub fn changed_here(&self) {
        self.changed_here.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Told of every [`changed_here`](Self::changed_here).
    pub fn changes_here(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed_here.subscribe()
    }

    pub fn get(&self, id: &str) -> Option<Subscription> {
        self.snapshot().iter().find(|s| s.id == id).cloned()
    }
}

/// Tuning of delivery.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// Pause before attempt n+1 after attempt n failed (the first attempt is immediate). Its length is the
    /// number of retries.
    pub schedule: Vec<Duration>,
    /// Attempts in flight per subscription.
    pub per_endpoint: usize,
    /// Deliveries held (queued + in flight) at once in all.
    pub max_held: usize,
    /// Deliveries an endpoint may hold before it has shown its pace (its claim budget then follows what it
    /// finishes: at least twice `per_endpoint`, at most `max_held`).
    pub initial_budget: usize,
    /// Failures in a row that open a subscription's circuit breaker, and for how long it stays open.
    pub breaker_failures: u32,
    pub breaker_open: Duration,
    /// A subscription failing this many times in a row, for at least `disable_window`, is disabled.
    pub disable_after: i32,
    pub disable_window: Duration,
    /// Lease on a claimed delivery: another replica may claim it again after this.
    pub lease: Duration,
    pub poll_every: Duration,
    /// The longest wait a receiver's `Retry-After` can impose on one attempt (a longer one is cut to this, or
    /// to the schedule's longest step if that is shorter).
    pub retry_after_max: Duration,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        let m = |minutes: u64| Duration::from_secs(minutes * 60);
        WebhookConfig {
            schedule: vec![Duration::from_secs(5), m(5), m(30), m(120), m(300), m(600), m(600)],
            per_endpoint: 16,
            max_held: 8192,
            initial_budget: 1024,
            breaker_failures: 5,
            breaker_open: Duration::from_secs(30),
            disable_after: 50,
            disable_window: Duration::from_secs(24 * 3600),
            lease: Duration::from_secs(60),
            poll_every: Duration::from_millis(100),
            retry_after_max: Duration::from_secs(3600),
        }
    }
}

/// Delivery metrics (`webhooks_*`, `webhook_*`).
#[derive(Clone)]
pub struct WebhookMetrics {
    pub enqueued: IntCounterVec,
    pub sent: IntCounterVec,
    pub failed: IntCounterVec,
    pub duration: Histogram,
    pub queue: IntGauge,
}

impl WebhookMetrics {
    /// Register these metrics in `registry`.
    pub fn register_into(&self, registry: &Registry) -> prometheus::Result<()> {
        registry.register(Box::new(self.enqueued.clone()))?;
        registry.register(Box::new(self.sent.clone()))?;
        registry.register(Box::new(self.failed.clone()))?;
        registry.register(Box::new(self.duration.clone()))?;
        registry.register(Box::new(self.queue.clone()))?;
        Ok(())
    }

    pub fn unregistered() -> Self {
        let labels = ["event_type", "subscription"];
        WebhookMetrics {
            enqueued: IntCounterVec::new(Opts::new("webhooks_enqueued_total", "Webhook deliveries enqueued"), &labels)
                .expect("valid metric"),
            sent: IntCounterVec::new(
                Opts::new(
                    "webhooks_sent_total",
                    "Webhook attempts answered 2xx (at 0 for a label set whose attempts all failed)",
                ),
                &labels,
            )
            .expect("valid metric"),
            failed: IntCounterVec::new(
                Opts::new(
                    "webhooks_failed_total",
                    "Webhook attempts that failed, by outcome (http_error, transport_error, gone, throttled)",
                ),
                &["event_type", "subscription", "outcome"],
            )
            .expect("valid metric"),
            duration: Histogram::with_opts(HistogramOpts::new(
                "webhook_duration_seconds",
                "Duration of one webhook attempt",
            ))
            .expect("valid metric"),
            queue: IntGauge::new("webhook_queue_size", "Webhook deliveries held by this process (queued or in flight)")
                .expect("valid metric"),
        }
    }
}

/// Per-subscription state of the deliverer.
struct Endpoint {
    queue: VecDeque<Delivery>,
    in_flight: usize,
    /// Failures in a row (breaker), and until when the breaker is open.
    failures: u32,
    open_until: Option<Instant>,
    /// Until when the receiver asked us to wait (429 with `Retry-After`).
    throttled_until: Option<Instant>,
    /// How many deliveries it may hold after the next claim, and attempts finished since the last one.
    target: usize,
    finished: usize,
}

impl Endpoint {
    fn new(target: usize) -> Self {
        Endpoint {
            queue: VecDeque::new(),
            in_flight: 0,
            failures: 0,
            open_until: None,
            throttled_until: None,
            target,
            finished: 0,
        }
    }

    fn held(&self) -> usize {
        self.queue.len() + self.in_flight
    }

    /// Nothing is sent to it now: its breaker is open, or it asked us to wait.
    fn broken(&self, now: Instant) -> bool {
        self.open_until.is_some_and(|t| t > now) || self.throttled_until.is_some_and(|t| t > now)
    }
}

/// See the module docs.
pub struct WebhookActor {
    store: Arc<dyn WebhookStore>,
    transport: Rc<dyn WebhookTransport>,
    registry: WebhookRegistry,
    clock: Arc<dyn Clock>,
    config: WebhookConfig,
    metrics: WebhookMetrics,
    endpoints: HashMap<String, Endpoint>,
    held: usize,
    claiming: bool,
    /// Where the next claim starts handing out room, so that subscriptions share it in turn when it is short.
    rotation: usize,
    records: Vec<AttemptRecord>,
    flushing: bool,
}

/// The key of a delivery's endpoint: its subscription, or its URL for legacy targets.
fn endpoint_key(d: &Delivery) -> String {
    d.subscription_id.clone().unwrap_or_else(|| format!("url:{}", d.url))
}

impl WebhookActor {
    pub fn new(
        store: Arc<dyn WebhookStore>,
        transport: Rc<dyn WebhookTransport>,
        registry: WebhookRegistry,
        clock: Arc<dyn Clock>,
        config: WebhookConfig,
        metrics: WebhookMetrics,
    ) -> Self {
        WebhookActor {
            store,
            transport,
            registry,
            clock,
            config,
            metrics,
            endpoints: HashMap::new(),
            held: 0,
            claiming: false,
            rotation: 0,
            records: Vec::new(),
            flushing: false,
        }
    }

    fn endpoint(&mut self, key: &str) -> &mut Endpoint {
        let initial = self.config.initial_budget;
        self.endpoints.entry(key.to_owned()).or_insert_with(|| Endpoint::new(initial))
    }

    /// What the next claim asks for, per subscription: up to its target less what it holds, while the room
    /// under `max_held` lasts. Paused, disabled and open-breaker subscriptions ask for nothing. Targets follow
    /// each endpoint's pace: twice what it finished since the last claim, halving at most per claim.
    fn budgets(&mut self) -> Vec<ClaimBudget> {
        let now = Instant::now();
        let (min, max, initial) = (2 * self.config.per_endpoint, self.config.max_held, self.config.initial_budget);
        for ep in self.endpoints.values_mut() {
            ep.target = (2 * ep.finished).max(ep.target / 2).clamp(min, max.max(min));
            ep.finished = 0;
        }
        let mut room = self.config.max_held.saturating_sub(self.held);
        let mut budgets = Vec::new();
        let mut ask = |subscription_id: Option<String>, target: usize, held: usize| {
            let limit = target.saturating_sub(held).min(room);
            if limit > 0 {
                room -= limit;
                budgets.push(ClaimBudget { subscription_id, limit: limit as i64 });
            }
        };
        let subscriptions = self.registry.snapshot();
        let active: Vec<&Subscription> = subscriptions.iter().filter(|s| s.active()).collect();
        self.rotation = self.rotation.wrapping_add(1);
        for i in 0..active.len() {
            let s = active[(self.rotation + i) % active.len()];
            match self.endpoints.get(&s.id) {
                Some(ep) if ep.broken(now) => {}
                Some(ep) => ask(Some(s.id.clone()), ep.target, ep.held()),
                None => ask(Some(s.id.clone()), initial, 0),
            }
        }
        // Legacy `metadata.webhook_url` targets share one budget (they cannot be told apart in a claim).
        let legacy: usize = self.endpoints.iter().filter(|(k, _)| k.starts_with("url:")).map(|(_, e)| e.held()).sum();
        ask(None, initial, legacy);
        budgets
    }

    fn claim(&mut self, ctx: &mut Context<Self>) {
        if self.claiming || self.held >= self.config.max_held {
            return;
        }
        let budgets = self.budgets();
        if budgets.is_empty() {
            return;
        }
        self.claiming = true;
        let now = self.clock.now_ms();
        let lease = now + self.config.lease.as_millis() as i64;
        let store = Arc::clone(&self.store);
        let fut = crate::ports::store::detached(async move { store.webhook_claim(now, lease, &budgets).await });
        ctx.spawn(fut.into_actor(self).map(|claimed, act, ctx| {
            act.claiming = false;
            match claimed {
                Ok(deliveries) => {
                    for d in deliveries {
                        act.held += 1;
                        act.endpoint(&endpoint_key(&d)).queue.push_back(d);
                    }
                    act.metrics.queue.set(act.held as i64);
                    act.pump(ctx);
                }
                Err(e) => tracing::warn!(error = %e, "could not claim webhook deliveries"),
            }
        }));
    }

    /// Start every attempt an endpoint has room for.
    fn pump(&mut self, ctx: &mut Context<Self>) {
        let now = Instant::now();
        let limit = self.config.per_endpoint;
        let mut starts = Vec::new();
        for (key, ep) in self.endpoints.iter_mut() {
            if ep.broken(now) {
                continue;
            }
            let subscription = if key.starts_with("url:") { None } else { self.registry.get(key) };
            if subscription.as_ref().is_some_and(|s| !s.active()) {
                // Paused or disabled: let the leases lapse; the deliveries wait in the store.
                self.held -= ep.queue.len();
                ep.queue.clear();
                continue;
            }
            while ep.in_flight < limit {
                let Some(d) = ep.queue.pop_front() else { break };
                ep.in_flight += 1;
                starts.push((key.clone(), d, subscription.clone()));
            }
        }
        for (key, d, subscription) in starts {
            let transport = Rc::clone(&self.transport);
            let started = Instant::now();
            let fut = async move {
                let mut outcome = transport.send(&d, subscription.as_ref()).await;
                outcome.latency = Some(started.elapsed());
                (d, outcome)
            };
            ctx.spawn(fut.into_actor(self).map(move |(d, outcome), act, ctx| {
                act.metrics.duration.observe(outcome.latency.unwrap_or_default().as_secs_f64());
                act.finished(&key, d, outcome);
                act.pump(ctx);
            }));
        }
        self.endpoints.retain(|_, e| {
            e.in_flight > 0
                || !e.queue.is_empty()
                || e.open_until.is_some()
                || e.throttled_until.is_some_and(|t| t > now)
        });
        self.metrics.queue.set(self.held as i64);
    }

    fn rules(&self) -> AttemptRules<'_> {
        AttemptRules {
            schedule: &self.config.schedule,
            retry_after_max: self.config.retry_after_max,
            disable_after: self.config.disable_after,
            disable_window: self.config.disable_window,
        }
    }

    /// An attempt of `d` (of endpoint `key`) gave `outcome`: record it (the rules are [`on_attempt`]'s), and keep
    /// the endpoint's breaker, its wait and the metrics.
    fn finished(&mut self, key: &str, d: Delivery, outcome: SendOutcome) {
        self.held -= 1;
        let now = self.clock.now_ms();
        let subscription = d.subscription_id.as_deref().and_then(|id| self.registry.get(id));
        let record = on_attempt(&d, subscription.as_ref(), &outcome, now, &self.rules(), rand_u64());
        let hold = self.rules().hold(&outcome);
        let sub_label = d.subscription_id.clone().unwrap_or_else(|| "metadata.webhook_url".into());
        let initial = self.config.initial_budget;
        let ep = self.endpoints.entry(key.to_owned()).or_insert_with(|| Endpoint::new(initial));
        ep.in_flight -= 1;
        ep.finished += 1;
        if outcome.ok() {
            ep.failures = 0;
            ep.open_until = None;
            self.metrics.sent.with_label_values(&[&d.event_type, &sub_label]).inc();
        } else {
            if outcome.throttled() {
                // Back-pressure from a working receiver: no breaker failure, but the endpoint waits as asked.
                if let Some(hold) = hold {
                    let until = Instant::now() + hold;
                    ep.throttled_until = Some(ep.throttled_until.map_or(until, |t| t.max(until)));
                    if hold >= self.config.lease {
                        // Queued deliveries would outlive their lease while waiting: let them go back to the store
                        // (claims skip the endpoint meanwhile) rather than risk another replica sending them too.
                        self.held -= ep.queue.len();
                        ep.queue.clear();
                    }
                }
                tracing::info!(
                    endpoint = key,
                    retry_after_ms = hold.map(|h| h.as_millis() as u64),
                    "webhook endpoint answered 429: slowing down"
                );
            } else {
                ep.failures += 1;
                if ep.failures >= self.config.breaker_failures {
                    ep.open_until = Some(Instant::now() + self.config.breaker_open);
                    tracing::warn!(endpoint = key, failures = ep.failures, "webhook circuit breaker open");
                }
            }
            let outcome_label = if outcome.status == Some(410) {
                "gone"
            } else if outcome.throttled() {
                "throttled"
            } else if outcome.status.is_some() {
                "http_error"
            } else {
                "transport_error"
            };
            self.metrics.failed.with_label_values(&[&d.event_type, &sub_label, outcome_label]).inc();
            // The successes' series exists (at 0) beside the failures': a ratio over both stays defined when
            // every attempt fails (the failure-ratio alert).
            self.metrics.sent.with_label_values(&[&d.event_type, &sub_label]);
        }
        if let Some((id, failures, since, reason)) = &record.health {
            if reason.is_some() && subscription.as_ref().is_some_and(|s| s.disabled_reason.is_none()) {
                tracing::warn!(subscription = %id, reason = reason.as_deref().unwrap_or(""), "webhook subscription disabled");
            }
            // Keep the registry's view current until the next reload.
            if let Some(mut s) = subscription {
                s.consecutive_failures = *failures;
                s.failing_since = *since;
                s.disabled_reason = reason.clone();
                let mut all: Vec<Subscription> = self.registry.snapshot().iter().cloned().collect();
                if let Some(slot) = all.iter_mut().find(|x| x.id == *id) {
                    *slot = s;
                }
                self.registry.replace(all);
            }
        }
        self.records.push(record);
    }

    fn flush(&mut self, ctx: &mut Context<Self>) {
        if self.flushing || self.records.is_empty() {
            return;
        }
        self.flushing = true;
        let records = std::mem::take(&mut self.records);
        let store = Arc::clone(&self.store);
        let fut = crate::ports::store::detached(async move {
            let result = store.webhook_record(&records).await;
            (records, result)
        });
        ctx.spawn(fut.into_actor(self).map(|(records, result), act, _| {
            act.flushing = false;
            if let Err(e) = result {
                // Not recorded: keep them for the next flush (the deliveries stay leased meanwhile).
                tracing::warn!(error = %e, records = records.len(), "could not record webhook attempts; retrying");
                act.records.splice(0..0, records);
            }
        }));
    }
}

/// A cheap random number for jitter (no need for a cryptographic source).
fn rand_u64() -> u64 {
    let u = uuid::Uuid::new_v4();
    u.as_u64_pair().0
}

impl Actor for WebhookActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.run_interval(self.config.poll_every, |act, ctx| {
            act.claim(ctx);
            act.pump(ctx);
            act.flush(ctx);
        });
        // Subscriptions changed by other replicas (and health written by them) arrive with a reload.
        ctx.run_interval(Duration::from_secs(5), |act, ctx| {
            let (registry, store) = (act.registry.clone(), Arc::clone(&act.store));
            ctx.spawn(
                crate::ports::store::detached(async move {
                    if let Err(e) = registry.reload(&*store).await {
                        tracing::warn!(error = %e, "could not reload webhook subscriptions");
                    }
                })
                .into_actor(act),
            );
        });
    }
}
