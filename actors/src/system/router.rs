//! The front ends' handle on the actor system: routes each request to its ticket's shard.
//!
//! `routing::slot_of(ticket_id, shards)` picks the shard (stable across restarts and builds). Client requests (HTTP,
//! gRPC) are admitted per shard by a counter of client requests in flight: past `mailbox_capacity` the router
//! answers [`TicketError::Overloaded`] at once (HTTP 503, gRPC RESOURCE_EXHAUSTED) instead of queueing, so
//! under overload the excess is refused in microseconds, memory stays bounded and admitted requests keep a
//! sane latency. Work that bounds its own concurrency — the Kafka consumer (`KAFKA_MAX_IN_FLIGHT`), the
//! system's readiness checks — is never refused: refusing it would only make it retry, and a client flood
//! must not starve ingestion.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use tracing::Instrument as _;

use crate::domain::compensation::CompensationRequest;
use crate::domain::enums::RequestedStatus;
use crate::domain::events::{EventBus, TicketEvent};
use crate::domain::history::{AuditEvent, HistoryPage};
use crate::domain::model::Millis;
use crate::domain::model::Ticket;
use crate::domain::sla::SlaPolicy;
use crate::domain::status::Command;
use crate::domain::validation::{plan_id_list, validate_ticket_id, NewTicket, ValidationError, MAX_ID_LEN};
use crate::ports::clock::Clock;
use crate::ports::forward::{Forwarded, Forwarder};
use crate::ports::store::{
    ListQuery, PlanTicketPage, StoreError, TicketPage, TicketStore, UnitError, Write, WriteUnit,
};
use crate::ports::trace::TraceHook;
use crate::system::commit_turn::CommitTurn;
use crate::system::env::Env;
use crate::system::error::TicketError;
use crate::system::forwarding::{decode_answer, encode_answer, Call, CreateCall, Reply, TicketCall};
use crate::system::metrics::ActorMetrics;
use crate::system::ownership::{local_shard, vshard_of, Moved, Owner, ShardTable};
use crate::system::persistence::{persist, PersistenceActor};
use crate::system::routing::slot_of;
use crate::system::shard::{Arm, Envelope, Release, Route, Shard, ShardTiming, Sweep, Tick};
use crate::system::ticket_actor::{Compensated, Created};
use crate::system::webhooks::WebhookRegistry;

/// At most this many finished tickets' dependents are looked up in one store call.
const DEPENDENTS_BATCH: usize = 256;

/// Tuning of the actor system.
#[derive(Debug, Clone)]
pub struct SystemConfig {
    /// Number of shard supervisors.
    pub shards: usize,
    /// Arbiter threads the shards are spread over (usually one per core).
    pub arbiters: usize,
    /// Client requests in flight per shard before answering "overloaded" (`ACTOR_MAILBOX_CAPACITY`).
    pub mailbox_capacity: usize,
    /// A ticket actor idle this long is stopped (its ticket stays in the store).
    pub passivate_after: Duration,
    /// How often shards look for idle actors.
    pub sweep_every: Duration,
    /// Persistence actors (0: one per arbiter). A ticket always uses the same one.
    pub persist_actors: usize,
    /// Group-commit transactions running at once, per persistence actor. One by default: while it commits,
    /// the queue fills and the next batch is bigger (on 2 cores 1 beat 4 — `ticket-bench crud`, BENCHMARKS.md).
    pub persist_in_flight: usize,
    /// Most write units in one group-commit transaction. Only a backlog beyond what clients can have in flight
    /// (`shards × mailbox_capacity` = 1 024 by default) fills it — bulk ingestion: there 2 048 beat 1 024 (two
    /// persistence actors, each saturated; `ticket-bench ingest`, BENCHMARKS.md).
    pub persist_max_batch: usize,
    /// With several persistence actors, their commits of fewer units than this take turns (`commit_turn`); 0:
    /// every writer commits on its own.
    pub persist_turn_below: usize,
    /// Events a subscriber (a watcher) may fall behind before it is dropped.
    pub event_buffer: usize,
    /// The SLA rules' settings.
    pub sla: SlaPolicy,
    /// The SLA timers' resolution: a shard is ticked when its earliest instant is due, at most this often.
    pub tick_every: Duration,
    /// SLA instants further away than this stay in the store until the loader brings them in.
    pub sla_horizon: Duration,
    /// How audit records and webhook deliveries learn the `traceparent` of the work that made them.
    pub traceparent: TraceHook,
    /// Whether ticket actors open a span per request (`ticket.handle`); on while spans are exported.
    pub spans: bool,
    /// Cluster mode: the shard table the lease manager keeps, and how to reach the other replicas. None: this
    /// process owns every ticket.
    pub cluster: Option<ClusterPorts>,
    /// Cluster mode: how long a request waits for its shard to have an owner (a hand-off, a failover) before
    /// it is answered [`TicketError::NotOwner`].
    pub handoff_wait: Duration,
}

/// What the actor system needs to share tickets with other replicas.
#[derive(Clone)]
pub struct ClusterPorts {
    pub table: Arc<ShardTable>,
    pub forwarder: Arc<dyn Forwarder>,
}

impl std::fmt::Debug for ClusterPorts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterPorts").field("member", &self.table.member()).finish_non_exhaustive()
    }
}

/// The CPUs this process may use (its affinity and cgroup quota, as the standard library reads them; 2 if unknown):
/// the default number of arbiters, and of the service's REST workers and gRPC threads.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get)
}

impl Default for SystemConfig {
    fn default() -> Self {
        SystemConfig {
            shards: 16,
            arbiters: cores(),
            // 16 shards × 64 = 1 024 client requests in flight: well under a second of work at this service's
            // saturated create rate on two cores (1 300-2 600/s measured), so an admitted request waits at most
            // about that long inside the service and anything beyond is answered 503 at once. 10 000 per shard
            // let 160 000 requests queue: at 10× load nothing was refused (p99 10 s, RSS 511 MiB); 256 refused
            // 3.6 % (p99 11 s, 454 MiB); 64 refused 59 % (p99 7 s, 322 MiB). See `ticket-bench faults`.
            mailbox_capacity: 64,
            passivate_after: Duration::from_secs(300),
            sweep_every: Duration::from_secs(10),
            persist_actors: 0,
            persist_in_flight: 1,
            persist_max_batch: 2048,
            persist_turn_below: crate::system::commit_turn::SHARED_BELOW,
            event_buffer: 4096,
            sla: SlaPolicy::default(),
            tick_every: Duration::from_millis(20),
            sla_horizon: Duration::from_secs(600),
            traceparent: crate::ports::trace::no_trace,
            spans: false,
            cluster: None,
            handoff_wait: Duration::from_secs(10),
        }
    }
}

/// Most bytes of tickets (as JSON) one list page carries; see [`Router::list`].
pub const MAX_PAGE_BYTES: usize = 8 * 1024 * 1024;

/// A status change as asked for by a client or worker.
#[derive(Debug, Clone)]
pub struct StatusUpdate {
    pub status: RequestedStatus,
    pub error_message: Option<String>,
    pub actual_duration_ms: Option<i64>,
    /// If-Match: refuse unless the ticket is at this version.
    pub expected_version: Option<i64>,
    /// PENDING asked of a FAILED ticket is a manual retry (a service caller's request: the self-healing
    /// engine reallocates a failed ticket that way).
    pub retry_if_failed: bool,
    /// The caller's notes on the change (e.g. the reallocation's ids), kept in the details of the history
    /// record the change makes. A JSON object, bounded like a ticket's metadata.
    pub metadata: Option<serde_json::Map<String, serde_json::Value>>,
}

impl StatusUpdate {
    /// What every front end (REST, unary gRPC, the worker stream) refuses alike, before any ticket is asked.
    pub fn validate(&self) -> Result<(), ValidationError> {
        if self.actual_duration_ms.is_some_and(|d| d < 0) {
            return Err(ValidationError::new("actual_duration_ms", "must be ≥ 0"));
        }
        if let Some(m) = &self.error_message {
            crate::domain::validation::text(m, "error_message", crate::domain::validation::MAX_ERROR_MESSAGE_LEN)?;
        }
        if let Some(m) = &self.metadata {
            crate::domain::validation::json_object(m, "metadata", crate::domain::validation::MAX_METADATA_BYTES)?;
        }
        Ok(())
    }
}

/// A progress report's note is free text, bounded like an error message.
pub fn validate_progress_message(message: &str) -> Result<(), ValidationError> {
    crate::domain::validation::text(message, "message", crate::domain::validation::MAX_ERROR_MESSAGE_LEN)
}

struct ShardRef {
    addr: Addr<Shard>,
    /// Every request in flight (`actor_mailbox_depth`).
    depth: AtomicUsize,
    /// Client requests in flight (admission).
    clients: AtomicUsize,
}

/// Whether a request may be refused as overloaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Admission {
    /// A client's request: bounded by `mailbox_capacity`.
    Bounded,
    /// Work whose sender bounds its own concurrency (Kafka ingestion, readiness checks).
    Paced,
}

/// Decrements a shard's in-flight counter however the request ends.
struct Slot<'a>(&'a AtomicUsize);
impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// See the module docs. Cheap to clone.
#[derive(Clone)]
pub struct Router {
    shards: Arc<[ShardRef]>,
    store: Arc<dyn TicketStore>,
    clock: Arc<dyn Clock>,
    events: EventBus,
    /// What watchers see: `events` itself on one process; in cluster mode every replica's commits, relayed
    /// (`src/cluster/events.rs`).
    watched: EventBus,
    capacity: usize,
    horizon_ms: i64,
    sla_loaded: Arc<AtomicBool>,
    env: Arc<Env>,
    handoff_wait: Duration,
}

/// NotFound for an id that cannot name a ticket. The id is echoed in the answer, so it is cut to
/// [`MAX_ID_LEN`] characters: a megabyte of path must not come back as a megabyte of error message.
fn not_found(id: &str) -> TicketError {
    match id.char_indices().nth(MAX_ID_LEN) {
        Some((end, _)) => TicketError::NotFound(format!("{}…", &id[..end])),
        None => TicketError::NotFound(id.to_owned()),
    }
}

impl Router {
    /// Start the persistence actor, the arbiters and the shards. Must run inside an actix `System`.
    pub fn start(
        config: &SystemConfig,
        store: Arc<dyn TicketStore>,
        clock: Arc<dyn Clock>,
        metrics: ActorMetrics,
    ) -> Router {
        let arbiters: Vec<ArbiterHandle> = (0..config.arbiters.max(1)).map(|_| Arbiter::new().handle()).collect();
        // One persistence actor per arbiter (encoding and database I/O then use every core), or as configured.
        let writers = if config.persist_actors == 0 { arbiters.len() } else { config.persist_actors };
        let (ownership, forwarder): (Arc<ShardTable>, Arc<dyn Forwarder>) = match &config.cluster {
            Some(c) => (Arc::clone(&c.table), Arc::clone(&c.forwarder)),
            None => (ShardTable::single(), Arc::new(crate::ports::forward::Alone)),
        };
        // Several writers take turns for their small commits (`commit_turn`).
        let turn = (writers > 1 && config.persist_turn_below > 0)
            .then(|| Arc::new(CommitTurn::new(config.persist_turn_below)));
        let persistence = (0..writers)
            .map(|i| {
                let (store, metrics, ownership) = (Arc::clone(&store), metrics.clone(), Arc::clone(&ownership));
                let (in_flight, batch, turn) = (config.persist_in_flight, config.persist_max_batch, turn.clone());
                PersistenceActor::start_in_arbiter(&arbiters[i % arbiters.len()], move |_| {
                    let writer = PersistenceActor::new(store, metrics, ownership, in_flight, batch);
                    match turn {
                        Some(turn) => writer.sharing(turn, i),
                        None => writer,
                    }
                })
            })
            .collect();
        let events = EventBus::new(config.event_buffer);
        let (readiness, mut finished) = tokio::sync::mpsc::unbounded_channel::<(String, tracing::Span)>();
        let env = Arc::new(Env {
            store: Arc::clone(&store),
            persistence,
            clock: Arc::clone(&clock),
            metrics,
            events: events.clone(),
            sla: config.sla.clone(),
            webhooks: WebhookRegistry::default(),
            readiness,
            traceparent: config.traceparent,
            spans: config.spans,
            ownership,
            forwarder,
            snapshots: Default::default(),
            loader: crate::system::loader::Loader::start(Arc::clone(&store)),
        });
        let millis = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        let timing = ShardTiming {
            idle_ms: millis(config.passivate_after),
            sweep_every: config.sweep_every,
            tick_every: config.tick_every,
            horizon_ms: millis(config.sla_horizon),
            shards: config.shards.max(1),
        };
        let shards = (0..config.shards.max(1))
            .map(|i| {
                let env = Arc::clone(&env);
                let timing = timing.clone();
                let addr = Shard::start_in_arbiter(&arbiters[i % arbiters.len()], move |_| Shard::new(env, timing));
                ShardRef { addr, depth: AtomicUsize::new(0), clients: AtomicUsize::new(0) }
            })
            .collect();
        let watched = match &config.cluster {
            Some(_) => EventBus::new(config.event_buffer),
            None => events.clone(),
        };
        let router = Router {
            shards,
            store,
            clock,
            events,
            watched,
            capacity: config.mailbox_capacity.max(1),
            horizon_ms: timing.horizon_ms,
            sla_loaded: Arc::new(AtomicBool::new(false)),
            env: Arc::clone(&env),
            handoff_wait: config.handoff_wait,
        };
        // Dependents of finished tickets: each checks whether it became ready (or blocked). The finished ids that
        // queued up meanwhile are looked up together, so the lookups keep up with any rate of finishing. On the
        // first arbiter, beside shards and a writer: a finished ticket there wakes no other thread (on one CPU,
        // every ticket is there).
        let checker = router.clone();
        arbiters[0].spawn(async move {
            let mut batch = Vec::new();
            while finished.recv_many(&mut batch, DEPENDENTS_BATCH).await > 0 {
                let (ids, spans): (Vec<String>, HashMap<String, tracing::Span>) =
                    batch.drain(..).map(|(id, span)| (id.clone(), (id, span))).unzip();
                let tickets = ids.len();
                let store = Arc::clone(&checker.store);
                let dependents = crate::ports::store::detached(async move { store.dependents(&ids).await }).await;
                let pairs = match dependents {
                    Ok(pairs) => pairs,
                    Err(e) => {
                        tracing::warn!(tickets, error = %e, "could not find dependent tickets");
                        continue;
                    }
                };
                let mut checked = HashSet::new();
                for (done, d) in pairs {
                    if !checked.insert(d.clone()) {
                        continue;
                    }
                    // In the trace of the change that finished the dependency.
                    let span = spans.get(&done).cloned().unwrap_or_else(tracing::Span::none);
                    let check = checker
                        .route::<Ticket>(&d, TicketCall::CheckReady, "system", Admission::Paced)
                        .instrument(span);
                    if let Err(e) = check.await {
                        tracing::warn!(ticket_id = %d, error = %e, "readiness check failed");
                    }
                }
            }
        });
        // The SLA loader: every half horizon, arm what the store says is due within the horizon. (The first
        // load is the caller's: `load_due` right after start, before the service reports ready.)
        let loader = router.clone();
        let every = config.sla_horizon / 2;
        actix::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                while let Err(e) = loader.load_due_of(|_| true).await {
                    tracing::warn!(error = %e, "could not load SLA timers; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        });
        router
    }

    fn shard_of(&self, id: &str) -> &ShardRef {
        &self.shards[local_shard(id, self.shards.len())]
    }

    /// Arm every SLA instant the store has within the horizon (paged, so a million tickets never sit in
    /// memory at once) for the shards this replica serves. Returns how many were handed to the shards.
    pub async fn load_due(&self) -> Result<usize, StoreError> {
        self.load_due_of(|_| true).await
    }

    /// [`load_due`](Self::load_due) for the virtual shards `wanted` accepts (and this replica serves).
    async fn load_due_of(&self, wanted: impl Fn(u16) -> bool) -> Result<usize, StoreError> {
        const PAGE: i64 = 10_000;
        if !self.sla_loaded.load(Ordering::SeqCst) {
            // The first load arms instants that passed while the service was down: they fire at once, and their
            // events must already find the webhook subscriptions or they would commit without deliveries.
            let (store, registry) = (Arc::clone(&self.store), self.webhooks());
            crate::ports::store::detached(async move { registry.reload(&*store).await }).await?;
        }
        // Nothing wanted is served here (a replica at startup, before it holds any lease): no need to page
        // through every due instant of the store only to arm none.
        if !self.env.ownership.local_shards().into_iter().any(&wanted) {
            self.sla_loaded.store(true, Ordering::SeqCst);
            return Ok(0);
        }
        let until = self.clock.now_ms().saturating_add(self.horizon_ms);
        let mut after: Option<(Millis, String)> = None;
        let mut total = 0;
        loop {
            let page = {
                let (store, cursor) = (Arc::clone(&self.store), after.clone());
                crate::ports::store::detached(async move { store.due_before(until, PAGE, cursor.as_ref()).await })
                    .await?
            };
            let Some(last) = page.last() else { break };
            after = Some((last.1, last.0.clone()));
            let full = page.len() as i64 == PAGE;
            let mut by_shard: Vec<Vec<(String, Millis)>> = vec![Vec::new(); self.shards.len()];
            for (id, due) in page {
                let vshard = vshard_of(&id);
                if !wanted(vshard) || !self.env.ownership.is_local(vshard) {
                    continue;
                }
                total += 1;
                by_shard[usize::from(vshard) % self.shards.len()].push((id, due));
            }
            for (shard, due) in self.shards.iter().zip(by_shard) {
                if !due.is_empty() {
                    let _ = shard.addr.send(Arm(due)).await;
                }
            }
            if !full {
                break;
            }
        }
        self.sla_loaded.store(true, Ordering::SeqCst);
        Ok(total)
    }

    /// The SLA rules in force (warning points, attempt timeout factor).
    pub fn sla_policy(&self) -> &SlaPolicy {
        &self.env.sla
    }

    /// Whether the SLA timers were loaded from the store since startup (readiness).
    pub fn sla_loaded(&self) -> bool {
        self.sla_loaded.load(Ordering::SeqCst)
    }

    /// Fire every SLA instant due now, in every shard; returns how many tickets were woken once all of them
    /// answered. (Shards also do this on their own every `tick_every`; tests with a manual clock call it.)
    pub async fn tick(&self) -> usize {
        let ticks = self.shards.iter().map(|s| s.addr.send(Tick));
        futures::future::join_all(ticks).await.into_iter().map(|r| r.unwrap_or(0)).sum()
    }

    /// Every committed change from now on, made here or (cluster mode) on any replica (see [`EventBus`]).
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<TicketEvent> {
        self.watched.subscribe()
    }

    /// Cluster mode: the changes committed by this replica, for the relay that hands them to every replica's
    /// watchers.
    pub fn subscribe_local(&self) -> tokio::sync::broadcast::Receiver<TicketEvent> {
        self.events.subscribe()
    }

    /// Whether anyone here watches (cluster mode: other replicas' events need not be decoded otherwise).
    pub fn has_watchers(&self) -> bool {
        self.watched.subscribers() > 0
    }

    /// Cluster mode: hand a committed change (of this replica or another) to this replica's watchers.
    pub fn relay(&self, event: TicketEvent) {
        self.watched.publish(event);
    }

    /// `cluster_shards_owned`.
    pub fn metrics_shards_owned(&self, n: usize) {
        self.env.metrics.shards_owned.set(n as i64);
    }

    /// Which replica serves each virtual shard.
    pub fn ownership(&self) -> &Arc<ShardTable> {
        &self.env.ownership
    }

    /// Send `call` to the ticket `id` wherever its shard is served, and wait for the reply. On one process (or
    /// when this replica owns the shard) it goes to the local shard; else it is forwarded to the owner. A
    /// request that meets no owner (a hand-off or failover under way; the owner lost the shard meanwhile) waits
    /// for the leases to say who owns it and goes there, for up to `handoff_wait`: nothing of it was written.
    async fn route<T: Reply>(
        &self,
        id: &str,
        call: T::Call,
        requested_by: &str,
        admission: Admission,
    ) -> Result<T, TicketError> {
        let table = &self.env.ownership;
        if !table.is_clustered() {
            return self.local::<T>(id, call, requested_by, admission).await;
        }
        let shard = vshard_of(id);
        let deadline = tokio::time::Instant::now() + self.handoff_wait;
        loop {
            let outcome = match table.owner(shard) {
                Owner::Local { .. } => self.local::<T>(id, call.clone(), requested_by, admission).await,
                // A forward ends when the owner answers, or when its heartbeat stopped (an owner that died or paused
                // never answers; its successor will).
                Owner::Remote { address, member } => tokio::select! {
                    answer = self.remote::<T>(&address, id, call.clone(), requested_by, admission) => answer,
                    () = self.gone(&member) => {
                        Err(TicketError::NotOwner(format!("{member} stopped answering during the forward")))
                    }
                    () = tokio::time::sleep_until(deadline) => {
                        Err(TicketError::NotOwner(format!("{member} did not answer within the hand-off wait")))
                    }
                },
                // Nobody can take a lease while the database is down: fail as every request does then.
                Owner::Unknown if !table.reachable() => {
                    return Err(TicketError::Store(StoreError::Unavailable(
                        "the database is unreachable, so no replica can hold the ticket's shard".into(),
                    )))
                }
                Owner::Unknown => Err(TicketError::NotOwner(format!("shard {shard} has no owner yet"))),
            };
            let why = match outcome {
                Err(TicketError::NotOwner(why)) | Err(TicketError::Store(StoreError::NotOwner(why))) => why,
                other => return other,
            };
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(ticket_id = %id, shard, reason = %why, "no replica serves the ticket's shard in time");
                return Err(TicketError::NotOwner(why));
            }
            tracing::debug!(ticket_id = %id, shard, reason = %why, "shard moving; asking again");
            table.request_refresh();
            table.changed(Duration::from_millis(100)).await;
        }
    }

    /// Resolves once `member`'s heartbeat stopped (crashed, paused, cut off: it may never answer). A member that
    /// merely handed the shard off still answers what it was asked (it may have committed it), so it is waited for.
    async fn gone(&self, member: &str) {
        let table = &self.env.ownership;
        while !table.is_dead(member) {
            table.changed(Duration::from_millis(500)).await;
        }
    }

    /// Forward `call` to the replica at `address` (see [`route`](Self::route)).
    async fn remote<T: Reply>(
        &self,
        address: &str,
        id: &str,
        call: T::Call,
        requested_by: &str,
        admission: Admission,
    ) -> Result<T, TicketError> {
        let encoded = serde_json::to_vec(&T::wrap(call))
            .map_err(|e| TicketError::Store(StoreError::Rejected(format!("request not encodable: {e}"))))?;
        let request = Forwarded {
            ticket_id: id.to_owned(),
            requested_by: requested_by.to_owned(),
            paced: admission == Admission::Paced,
            call: encoded,
            traceparent: (self.env.traceparent)(&tracing::Span::current()),
        };
        self.env.metrics.forwarded.inc();
        match self.env.forwarder.forward(address, request).await {
            Ok(bytes) => decode_answer::<T>(&bytes).unwrap_or_else(|e| {
                Err(TicketError::Store(StoreError::Rejected(format!("undecodable answer from {address}: {e}"))))
            }),
            Err(crate::ports::forward::ForwardError::Unreachable { address, reason }) => {
                Err(TicketError::NotOwner(format!("owner at {address} unreachable: {reason}")))
            }
            Err(e) => Err(TicketError::Store(StoreError::Unavailable(e.to_string()))),
        }
    }

    /// Run a request forwarded by another replica, here: never forwarded again (the sender asks again once
    /// the leases moved). Returns the encoded `Result` of its reply.
    pub async fn serve_forwarded(&self, request: Forwarded) -> Vec<u8> {
        let Forwarded { ticket_id, requested_by, paced, call, .. } = request;
        let admission = if paced { Admission::Paced } else { Admission::Bounded };
        let call: Call = match serde_json::from_slice(&call) {
            Ok(call) => call,
            Err(e) => {
                let refused: Result<(), TicketError> =
                    Err(TicketError::Store(StoreError::Rejected(format!("undecodable forwarded request: {e}"))));
                return encode_answer(&refused);
            }
        };
        if !self.env.ownership.is_local(vshard_of(&ticket_id)) {
            let moved: Result<(), TicketError> =
                Err(TicketError::NotOwner(format!("{} does not own the ticket's shard", self.env.ownership.member())));
            return encode_answer(&moved);
        }
        let id = ticket_id.as_str();
        match call {
            Call::Ticket(c) => encode_answer(&self.local::<Ticket>(id, c, &requested_by, admission).await),
            Call::Create(c) => encode_answer(&self.local::<Created>(id, c, &requested_by, admission).await),
            Call::Compensate(c) => encode_answer(&self.local::<Compensated>(id, c, &requested_by, admission).await),
        }
    }

    /// This replica's shards moved (the lease manager says so): drop the actors and timers of the lost ones at
    /// once, and load the SLA instants of the gained ones from the store.
    pub async fn shards_moved(&self, moved: &Moved) -> Result<usize, StoreError> {
        if !moved.lost.is_empty() {
            let lost: Arc<[u16]> = moved.lost.iter().copied().collect();
            for shard in self.shards.iter() {
                let _ = shard.addr.send(Release(Arc::clone(&lost))).await;
            }
        }
        if moved.gained.is_empty() {
            return Ok(0);
        }
        let gained: std::collections::HashSet<u16> = moved.gained.iter().copied().collect();
        self.load_due_of(|s| gained.contains(&s)).await
    }

    /// Send the request `call` makes to the ticket `id`'s local shard, and wait for the reply.
    async fn local<T: Reply>(
        &self,
        id: &str,
        call: T::Call,
        requested_by: &str,
        admission: Admission,
    ) -> Result<T, TicketError> {
        let shard = self.shard_of(id);
        let _client = match admission {
            Admission::Bounded => {
                if shard.clients.fetch_add(1, Ordering::Relaxed) >= self.capacity {
                    shard.clients.fetch_sub(1, Ordering::Relaxed);
                    return Err(TicketError::Overloaded);
                }
                Some(Slot(&shard.clients))
            }
            Admission::Paced => None,
        };
        shard.depth.fetch_add(1, Ordering::Relaxed);
        let _slot = Slot(&shard.depth);
        let (reply, answer) = tokio::sync::oneshot::channel();
        let (died, restarted) = tokio::sync::oneshot::channel();
        let envelope = Envelope {
            req: T::request(call, reply),
            requested_by: Arc::from(requested_by),
            span: tracing::Span::current(),
            died: Some(died),
        };
        shard.addr.do_send(Route { id: id.to_owned(), envelope });
        match answer.await {
            Ok(result) => result,
            // The ticket actor died with the request (a panic): the shard says so once it restarted the actor.
            Err(_) => Err(restarted.await.unwrap_or_else(|_| TicketError::ActorFailed(id.to_owned()))),
        }
    }

    /// Requests in flight per shard (`actor_mailbox_depth{shard}`).
    pub fn mailbox_depths(&self) -> Vec<usize> {
        self.shards.iter().map(|s| s.depth.load(Ordering::Relaxed)).collect()
    }

    /// Validate and create a ticket. `Ok((ticket, true))` when created, `Ok((existing, false))` when the same
    /// ticket already existed (idempotent create). `requested_by` is who asks (a token subject, `kafka`, `system`).
    /// The ticket is shared with the copy its shard keeps for the ticket's first request, not copied.
    pub async fn create(&self, new: NewTicket, requested_by: &str) -> Result<(Arc<Ticket>, bool), TicketError> {
        self.create_as(new, requested_by, Admission::Bounded).await
    }

    /// [`create`](Self::create) for a consumer that bounds its own requests in flight (Kafka ingestion): never
    /// refused as overloaded, so a flood of client requests cannot starve it.
    pub async fn ingest(&self, new: NewTicket, requested_by: &str) -> Result<(Arc<Ticket>, bool), TicketError> {
        self.create_as(new, requested_by, Admission::Paced).await
    }

    async fn create_as(
        &self,
        new: NewTicket,
        requested_by: &str,
        admission: Admission,
    ) -> Result<(Arc<Ticket>, bool), TicketError> {
        let valid = new.validate(self.clock.now_ms(), || uuid::Uuid::new_v4().to_string())?;
        let id = valid.ticket.ticket_id.clone();
        let call = CreateCall { ticket: valid.ticket, created_at_given: valid.created_at_given };
        let Created { ticket, created } = self.route::<Created>(&id, call, requested_by, admission).await?;
        Ok((ticket, created))
    }

    pub async fn get(&self, ticket_id: &str) -> Result<Ticket, TicketError> {
        self.get_shared(ticket_id).await.map(Arc::unwrap_or_clone)
    }

    /// [`get`](Self::get) for a caller that only reads the ticket (to encode it): a live ticket's snapshot
    /// is shared, not copied.
    pub async fn get_shared(&self, ticket_id: &str) -> Result<Arc<Ticket>, TicketError> {
        match self.snapshot(ticket_id) {
            Some(t) => Ok(t),
            None => self.ticket(ticket_id, TicketCall::Get, "reader").await.map(Arc::new),
        }
    }

    /// Whether an actor of `ticket_id` still holds its state here. A passivated actor stops a moment after its
    /// shard let it go, and reads are served from its state until then (tests wait for that).
    #[doc(hidden)]
    pub fn is_live_here(&self, ticket_id: &str) -> bool {
        self.snapshot(ticket_id).is_some()
    }

    /// The committed state of a live ticket this replica serves, without asking its actor (see
    /// [`crate::system::snapshots`]). None when no actor holds it here: the actor (or the owner) is asked.
    fn snapshot(&self, ticket_id: &str) -> Option<Arc<Ticket>> {
        let table = &self.env.ownership;
        if table.is_clustered() && !table.is_local(vshard_of(ticket_id)) {
            return None;
        }
        self.env.snapshots.get(ticket_id)
    }

    pub async fn update_status(
        &self,
        ticket_id: &str,
        update: StatusUpdate,
        requested_by: &str,
    ) -> Result<Ticket, TicketError> {
        update.validate()?;
        let cmd = Command::SetStatus {
            to: update.status,
            error_message: update.error_message,
            actual_duration_ms: update.actual_duration_ms,
            retry_if_failed: update.retry_if_failed,
        };
        let expected_version = update.expected_version;
        let details = update.metadata.map(|m| serde_json::json!({ "metadata": m }));
        self.ticket(ticket_id, TicketCall::Apply { cmd, expected_version, details }, requested_by).await
    }

    /// Manual retry of a FAILED ticket.
    pub async fn retry(
        &self,
        ticket_id: &str,
        expected_version: Option<i64>,
        requested_by: &str,
    ) -> Result<Ticket, TicketError> {
        let cmd = Command::ManualRetry;
        let details = None;
        self.ticket(ticket_id, TicketCall::Apply { cmd, expected_version, details }, requested_by).await
    }

    /// A worker's heartbeat for a RUNNING ticket; answers the ticket.
    pub async fn heartbeat(&self, ticket_id: &str, requested_by: &str) -> Result<Ticket, TicketError> {
        self.ticket(ticket_id, TicketCall::Heartbeat, requested_by).await
    }

    /// A worker's progress report for a RUNNING ticket, announced to watchers; answers the ticket.
    pub async fn progress(
        &self,
        ticket_id: &str,
        progress: f64,
        message: Option<String>,
        requested_by: &str,
    ) -> Result<Ticket, TicketError> {
        if let Some(m) = &message {
            validate_progress_message(m)?;
        }
        self.ticket(ticket_id, TicketCall::Progress { progress, message }, requested_by).await
    }

    async fn ticket(&self, id: &str, call: TicketCall, requested_by: &str) -> Result<Ticket, TicketError> {
        self.ticket_as(id, call, requested_by, Admission::Bounded).await
    }

    async fn ticket_as(
        &self,
        id: &str,
        call: TicketCall,
        requested_by: &str,
        admission: Admission,
    ) -> Result<Ticket, TicketError> {
        validate_ticket_id(id).map_err(|_| not_found(id))?;
        self.route::<Ticket>(id, call, requested_by, admission).await
    }

    /// Create the compensation ticket and move the original to COMPENSATING, in one transaction.
    /// Returns (original, compensation ticket, created); a repeat returns the existing one with `false`.
    pub async fn compensate(
        &self,
        req: CompensationRequest,
        requested_by: &str,
    ) -> Result<(Ticket, Ticket, bool), TicketError> {
        let id = req.original_ticket_id.clone();
        validate_ticket_id(&id).map_err(|e| TicketError::Invalid(e.with_field("original_ticket_id")))?;
        req.validate()?;
        let Compensated { original, compensation, created } =
            self.route::<Compensated>(&id, req, requested_by, Admission::Bounded).await?;
        Ok((original, compensation, created))
    }

    /// List from the store (every acknowledged write is committed there).
    pub async fn list(&self, query: &ListQuery) -> Result<TicketPage, TicketError> {
        query.validate()?;
        let mut page = self.store.list(query).await?;
        // Tickets are bounded one by one (free text, `parameters`, `metadata`), but a page of the largest ones
        // would still be hundreds of MB: cut the page at `MAX_PAGE_BYTES` (at least one ticket), and say so in
        // its `limit`, so a client that pages by `offset + limit` misses nothing.
        let mut bytes = 0;
        if let Some(cut) = page.tickets.iter().position(|t| {
            bytes += crate::domain::validation::json_size(t);
            bytes > MAX_PAGE_BYTES
        }) {
            page.tickets.truncate(cut.max(1));
            page.limit = page.tickets.len() as i64;
        }
        Ok(page)
    }

    /// The tickets `ticket_id` depends on, in the order it lists them; those no longer stored are left out.
    /// Unknown ticket: `NotFound`. Read from the store (every acknowledged write is committed there).
    pub async fn dependencies(&self, ticket_id: &str) -> Result<Vec<Ticket>, TicketError> {
        let ticket = self.get_shared(ticket_id).await?;
        let wanted = &ticket.spec.dependencies;
        if wanted.is_empty() {
            return Ok(Vec::new());
        }
        let mut found: std::collections::HashMap<String, Ticket> =
            self.store.get_many(wanted).await?.into_iter().map(|t| (t.ticket_id.clone(), t)).collect();
        Ok(wanted.iter().filter_map(|id| found.remove(id)).collect())
    }

    /// The tickets of the plans `plan_ids` (id, plan, status), a page of them (see [`Tickets::by_plans`]).
    /// More than [`MAX_PLAN_IDS`](crate::domain::validation::MAX_PLAN_IDS) plans, or an id that is no storable
    /// text: `Invalid`.
    ///
    /// [`Tickets::by_plans`]: crate::ports::store::Tickets::by_plans
    pub async fn by_plans(
        &self,
        plan_ids: Vec<String>,
        offset: i64,
        limit: i64,
    ) -> Result<PlanTicketPage, TicketError> {
        let plan_ids = plan_id_list(plan_ids)?;
        Ok(self.store.by_plans(&plan_ids, offset.max(0), limit.clamp(1, 1000)).await?)
    }

    /// One ticket's audit trail, oldest first (read from the store's outbox, which holds every record
    /// whether or not it was shipped yet). Unknown ticket: `NotFound`.
    pub async fn history(&self, ticket_id: &str, offset: i64, limit: i64) -> Result<HistoryPage, TicketError> {
        validate_ticket_id(ticket_id).map_err(|_| not_found(ticket_id))?;
        let page = self.store.history(ticket_id, offset.max(0), limit.clamp(1, 1000)).await?;
        if page.total == 0 && self.store.get(ticket_id).await?.is_none() {
            return Err(TicketError::NotFound(ticket_id.to_owned()));
        }
        Ok(page)
    }

    /// Record an audit event that changes no ticket (a minted token), durably, through the group commit.
    pub async fn record(&self, event: AuditEvent) -> Result<(), TicketError> {
        let writers = &self.env.persistence;
        let writer = &writers[slot_of(&event.ticket_id, writers.len())];
        persist(writer, WriteUnit(vec![Write::Audit(event)]), tracing::Span::current()).await.map_err(|e| match e {
            UnitError::Store(e) => TicketError::Store(e),
            UnitError::Conflict(c) => TicketError::Store(StoreError::Rejected(c.to_string())),
        })
    }

    /// The webhook subscriptions every ticket actor matches against.
    pub fn webhooks(&self) -> WebhookRegistry {
        self.env.webhooks.clone()
    }

    /// Ask a PENDING ticket with dependencies to announce `ticket.ready` / `ticket.blocked` if they decided.
    pub async fn check_ready(&self, ticket_id: &str) -> Result<Ticket, TicketError> {
        self.ticket_as(ticket_id, TicketCall::CheckReady, "system", Admission::Paced).await
    }

    /// The store, for adapters that run beside the actors (the audit shipper).
    pub fn store(&self) -> Arc<dyn TicketStore> {
        Arc::clone(&self.store)
    }

    /// Now, by the system's clock.
    pub fn now_ms(&self) -> Millis {
        self.clock.now_ms()
    }

    /// Whether the store answers.
    pub async fn ping_store(&self) -> Result<(), StoreError> {
        self.store.ping().await
    }

    pub fn store_backend(&self) -> &'static str {
        self.store.backend()
    }

    /// Passivate idle actors in every shard now; returns how many stopped.
    pub async fn sweep(&self) -> usize {
        let mut n = 0;
        for s in self.shards.iter() {
            n += s.addr.send(Sweep).await.unwrap_or(0);
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_found_cuts_a_huge_id_to_the_longest_valid_one() {
        let TicketError::NotFound(id) = not_found(&"é".repeat(100_000)) else { panic!("not NotFound") };
        assert_eq!(id.chars().count(), MAX_ID_LEN + 1, "255 characters and an ellipsis");
        let TicketError::NotFound(id) = not_found("a b") else { panic!("not NotFound") };
        assert_eq!(id, "a b");
    }
}
