//! The persistence port: what the actor system needs from a durable ticket store.
//!
//! Implementations live in the service crate (PostgreSQL, embedded SQLite); the actor system only sees this
//! trait. Writes come in [`WriteUnit`]s — the writes that must commit together (a compensation changes two
//! tickets) — and [`Tickets::commit`] takes many units at once so that one transaction (one fsync) serves
//! many callers: that is the group commit the [`crate::system::persistence::PersistenceActor`] drives.

use async_trait::async_trait;
use serde::Serialize;
use utoipa::ToSchema;

use crate::domain::enums::{Priority, TaskType, TicketStatus};
use crate::domain::history::{AuditEvent, HistoryPage};
use crate::domain::model::{Millis, Ticket};
use crate::domain::subscription::{AttemptRecord, ClaimBudget, Delivery, Subscription};

/// One write to one ticket row.
#[derive(Debug, Clone)]
pub enum Write {
    /// A new ticket; fails with [`UnitConflict::AlreadyExists`] if the id is taken.
    Insert(Ticket),
    /// Replace a ticket whose stored version is `expected_version`; else [`UnitConflict::VersionMismatch`].
    Update { ticket: Ticket, expected_version: i64 },
    /// An audit record into the outbox (never conflicts).
    Audit(AuditEvent),
    /// A webhook delivery into its outbox (never conflicts).
    Delivery(Delivery),
}

/// Writes that commit together or not at all.
#[derive(Debug, Clone)]
pub struct WriteUnit(pub Vec<Write>);

impl WriteUnit {
    /// The ticket the unit is about, whose shard fences it: the one it updates (a compensation updates the
    /// original and inserts its compensation ticket), else the one it inserts. None for a unit of audit
    /// records only (a minted token), which changes no ticket.
    pub fn home(&self) -> Option<&str> {
        let updated = self.0.iter().find_map(|w| match w {
            Write::Update { ticket, .. } => Some(ticket.ticket_id.as_str()),
            _ => None,
        });
        updated.or_else(|| {
            self.0.iter().find_map(|w| match w {
                Write::Insert(t) => Some(t.ticket_id.as_str()),
                _ => None,
            })
        })
    }
}

/// Cluster mode: the leases a group commit is written under. The store commits unit `i` only if `member` still
/// holds the lease of shard `shards[i].0` at epoch `shards[i].1`, checked in the commit's own transaction so
/// that a takeover of the shard waits for it (unit `i` fails with [`StoreError::NotOwner`] otherwise, and
/// nothing of it is written). `None` for a unit: not fenced.
#[derive(Debug, Clone)]
pub struct Fence {
    pub member: String,
    pub shards: Vec<Option<(u16, i64)>>,
}

/// The consumers of the audit outbox (`ticket_events`). Each has its own cursor, a [`OutboxPosition`] up to which
/// it has taken the rows, so one being down never holds the other back.
///
/// Why a cursor over (writing transaction, seq) and not a per-row flag: flipping a flag rewrote every outbox row
/// once per consumer (in PostgreSQL a new row version and new entries in its indexes, as the flag was in a
/// partial index), about a third of the database's work under ingest. Why not `seq` alone: sequence numbers are
/// taken before commit, so rows commit out of `seq` order and a `seq` high-water mark would skip a row that
/// committed after a later one was taken. A store hands out only rows of transactions older than every
/// transaction still running (PostgreSQL: below the snapshot's `xmin`; the embedded store has one writer at a
/// time, so its rows commit in `seq` order): no row can appear behind the cursor afterwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outbox {
    /// The audit trail, shipped to the [`OutboxSink`](crate::ports::outbox_sink::OutboxSink) (MongoDB): cursor `audit`.
    Audit,
    /// The ticket event stream, published to Kafka: cursor `events`.
    Events,
}

/// Where an outbox row stands in the order consumers take them: its writing transaction, then its `seq`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct OutboxPosition {
    /// The writing transaction's id (PostgreSQL `pg_current_xact_id()`; 0 in the embedded store, and for rows
    /// written before the cursors existed).
    pub txid: i64,
    pub seq: i64,
}

impl Outbox {
    pub const ALL: [Outbox; 2] = [Outbox::Audit, Outbox::Events];

    /// For logs: `audit` or `events`.
    pub fn name(self) -> &'static str {
        match self {
            Outbox::Audit => "audit",
            Outbox::Events => "events",
        }
    }
}

/// Why one unit of a batch was not written (the rest of the batch is unaffected).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnitConflict {
    #[error("ticket {0} already exists")]
    AlreadyExists(String),
    #[error("ticket {0} was changed concurrently (version mismatch)")]
    VersionMismatch(String),
}

/// The store could not do what was asked at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub enum StoreError {
    /// Unreachable, timed out, or failed: retryable. Nothing of the failed call was committed.
    #[error("ticket store unavailable: {0}")]
    Unavailable(String),
    /// The store refused a write that passed validation (a bug, not a client error).
    #[error("ticket store refused the write: {0}")]
    Rejected(String),
    /// A row that does not decode into a ticket.
    #[error("ticket store holds an invalid row: {0}")]
    Corrupt(String),
    /// Cluster mode: the writer no longer holds the lease of the ticket's shard at the epoch it wrote with (it
    /// lost the shard to another replica); nothing was written. The owner must be asked instead.
    #[error("this replica no longer owns the ticket's shard: {0}")]
    NotOwner(String),
}

/// Why one unit of a batch was not committed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnitError {
    #[error(transparent)]
    Conflict(#[from] UnitConflict),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Filters of a list query; `None` means "any".
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    pub plan_id: Option<String>,
    pub intent_id: Option<String>,
    pub status: Option<TicketStatus>,
    pub priority: Option<Priority>,
    pub task_type: Option<TaskType>,
    /// Only tickets whose id starts with this text (a range of the primary key, so it stays cheap at any size).
    pub id_prefix: Option<String>,
    /// Only tickets that list this id among their dependencies (its dependents, in any status).
    pub depends_on: Option<String>,
    /// Keyset paging: only the tickets that come after this one in list order ([`ListOrder::Newest`] only).
    /// Unlike `offset`, the cost of a page does not grow with its depth.
    pub after: Option<ListCursor>,
    /// Do not count the matches (`TicketPage::total` is then None): at a million rows the count costs more than
    /// the page itself.
    pub skip_total: bool,
    pub order: ListOrder,
    pub offset: i64,
    pub limit: i64,
}

/// The order (and the selection that goes with it) of a list query.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ListOrder {
    /// Every matching ticket, newest first, then by id.
    #[default]
    Newest,
    /// Only tickets with an SLA instant ahead (a warning point, the deadline, an attempt's timeout), the soonest
    /// first: the tickets closest to a breach. A finished ticket has none.
    NextDue,
}

/// Where a keyset page starts: the last ticket of the previous page, by its list-order key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListCursor {
    pub created_at: crate::domain::model::Millis,
    pub ticket_id: String,
}

impl ListQuery {
    /// Filters are compared with stored text, so they must be storable text too (no NUL).
    pub fn validate(&self) -> Result<(), crate::domain::validation::ValidationError> {
        let after = self.after.as_ref().map(|c| c.ticket_id.clone());
        for (field, value) in [
            ("plan_id", &self.plan_id),
            ("intent_id", &self.intent_id),
            ("id_prefix", &self.id_prefix),
            ("cursor", &after),
            ("depends_on", &self.depends_on),
        ] {
            if let Some(v) = value {
                crate::domain::validation::storable(v, field)?;
            }
        }
        Ok(())
    }
}

/// A page of tickets, newest first, and how many match in all.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TicketPage {
    pub tickets: Vec<Ticket>,
    /// How many tickets match in all; left out with keyset paging (`cursor`), which does not count.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total: Option<i64>,
    /// Keyset paging: pass this as `cursor` for the next page; null when this page is the last.
    pub next_cursor: Option<String>,
    pub offset: i64,
    pub limit: i64,
}

/// One ticket of a plan, as `POST /api/v1/tickets/by-plans` answers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct PlanTicket {
    pub ticket_id: String,
    pub plan_id: String,
    pub status: TicketStatus,
}

/// A page of the tickets of some plans, ordered by plan, then creation, then id, and how many there are in all.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PlanTicketPage {
    pub tickets: Vec<PlanTicket>,
    pub total: i64,
    pub offset: i64,
    pub limit: i64,
}

/// The ticket rows: what the actors read and the group commit writes.
#[async_trait]
pub trait Tickets: Send + Sync + 'static {
    /// The ticket as last committed.
    async fn get(&self, ticket_id: &str) -> Result<Option<Ticket>, StoreError>;
    /// Several tickets at once (any order; missing ids are left out). Used to wake many passivated tickets.
    async fn get_many(&self, ids: &[String]) -> Result<Vec<Ticket>, StoreError>;
    /// Tickets matching `query`, newest `created_at` first.
    async fn list(&self, query: &ListQuery) -> Result<TicketPage, StoreError>;
    /// The tickets of any of `plan_ids` (id, plan, status), ordered by (plan, `created_at`, id), `limit` of them
    /// after `offset`, and how many there are in all. Callers bound `plan_ids` (the router: at most
    /// `MAX_PLAN_IDS`).
    async fn by_plans(&self, plan_ids: &[String], offset: i64, limit: i64) -> Result<PlanTicketPage, StoreError>;
    /// Commit many units in as few transactions as possible: one result per unit, in order; every `Ok` unit
    /// is durable when this returns, and a failed unit left nothing behind.
    async fn commit(&self, units: &[WriteUnit], fence: Option<&Fence>) -> Vec<Result<(), UnitError>>;
    /// Tickets whose next SLA instant is before `before`, ordered by (instant, id), after the cursor `after`.
    async fn due_before(
        &self,
        before: Millis,
        limit: i64,
        after: Option<&(Millis, String)>,
    ) -> Result<Vec<(String, Millis)>, StoreError>;
    /// The PENDING tickets that list one of `finished` among their dependencies, as (finished, dependent) pairs,
    /// each pair once (a dependent of two of them comes twice). One call for many finished tickets: a busy
    /// service finishes thousands a second, and one round trip each left the readiness checks behind.
    async fn dependents(&self, finished: &[String]) -> Result<Vec<(String, String)>, StoreError>;
    /// How many tickets are in each status (a status without tickets may be left out). Sampled for the
    /// `tickets_by_status` gauge, so it must stay one cheap aggregate query.
    async fn count_by_status(&self) -> Result<Vec<(TicketStatus, i64)>, StoreError>;
}

/// The audit outbox (`ticket_events`): its consumers' cursors, and one ticket's history read from it.
#[async_trait]
pub trait AuditOutbox: Send + Sync + 'static {
    /// Up to `limit` audit records after `outbox`'s cursor, in cursor order, with their positions. Only rows that
    /// no running transaction can precede (see [`Outbox`]).
    async fn audit_pending(&self, outbox: Outbox, limit: i64) -> Result<Vec<(OutboxPosition, AuditEvent)>, StoreError>;
    /// Move `outbox`'s cursor to `upto` (every row up to it is taken); never backwards, so a slower replica's
    /// shipper cannot undo a faster one's. The other consumer's cursor is left alone.
    async fn audit_advance(&self, outbox: Outbox, upto: OutboxPosition) -> Result<(), StoreError>;
    /// How many audit records wait for `outbox` (after its cursor, committed or not yet visible).
    async fn audit_backlog(&self, outbox: Outbox) -> Result<i64, StoreError>;
    /// One ticket's audit records in commit order.
    async fn history(&self, ticket_id: &str, offset: i64, limit: i64) -> Result<HistoryPage, StoreError>;
}

/// Webhook subscriptions and their delivery outbox.
#[async_trait]
pub trait WebhookStore: Send + Sync + 'static {
    /// Every webhook subscription, with its health.
    async fn webhook_subscriptions(&self) -> Result<Vec<Subscription>, StoreError>;
    /// Create or replace a subscription (its owner's part: url, events, filters, paused, secrets).
    async fn webhook_put(&self, subscription: &Subscription) -> Result<(), StoreError>;
    /// Delete a subscription and its pending deliveries; false when there was none.
    async fn webhook_delete(&self, id: &str) -> Result<bool, StoreError>;
    /// Lease pending deliveries due at `now` until `lease_until`: for each budget, up to its `limit` of its
    /// subscription's (oldest due first). Each subscription has its own budget so that one endpoint's backlog
    /// never fills a claim meant for the others.
    async fn webhook_claim(
        &self,
        now: Millis,
        lease_until: Millis,
        budgets: &[ClaimBudget],
    ) -> Result<Vec<Delivery>, StoreError>;
    /// Record attempts (delivery state, their audit records, subscription health) in one transaction.
    async fn webhook_record(&self, records: &[AttemptRecord]) -> Result<(), StoreError>;
    /// A subscription's deliveries, newest first, and how many there are in all.
    async fn webhook_deliveries(
        &self,
        subscription_id: &str,
        offset: i64,
        limit: i64,
    ) -> Result<(Vec<Delivery>, i64), StoreError>;
    /// Make a delivery of `subscription_id` pending again, due at `now`; false when that subscription has no
    /// such delivery.
    async fn webhook_redeliver(
        &self,
        subscription_id: &str,
        delivery_id: &str,
        now: Millis,
    ) -> Result<bool, StoreError>;
}

/// What retention deletes, one kind per setting (`RETENTION_*_DAYS`): the `kind` label of
/// `tickets_pruned_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PruneKind {
    /// Finished tickets (COMPLETED, CANCELLED, COMPENSATED).
    Tickets,
    /// Audit outbox rows (`ticket_events`).
    Events,
    /// Finished webhook deliveries (delivered or failed).
    Deliveries,
}

impl PruneKind {
    pub const ALL: [PruneKind; 3] = [PruneKind::Tickets, PruneKind::Events, PruneKind::Deliveries];

    /// `tickets`, `events` or `deliveries`.
    pub fn name(self) -> &'static str {
        match self {
            PruneKind::Tickets => "tickets",
            PruneKind::Events => "events",
            PruneKind::Deliveries => "deliveries",
        }
    }
}

/// One batch of [`Retention::prune_events`]: the store looked at a window of outbox rows in cursor order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EventsPruned {
    /// Rows deleted.
    pub deleted: u64,
    /// The last row of the window (the next batch starts after it); `None`: the window was empty.
    pub window_end: Option<OutboxPosition>,
    /// Whether the window was full and held a row older than the cut-off: worth looking further.
    pub more: bool,
}

/// Deleting what is old and finished, in small batches (each its own short transaction), so that tables and
/// their indexes stop growing for ever. Every method deletes at most `limit` rows and never touches:
/// - a ticket that is not finished (FAILED is not: it can be retried or compensated), nor a finished one that an
///   unfinished ticket lists among its dependencies or as its compensation;
/// - an outbox row that one of the consumers in `taken_by` has not taken (see [`Outbox`]), nor any row of a
///   ticket that is not finished (its history stays whole while it can change);
/// - a pending webhook delivery.
///
/// A store that serves several replicas lets only one of them prune at a time: a batch that finds another
/// replica pruning deletes nothing and reports nothing more to do.
#[async_trait]
pub trait Retention: Send + Sync + 'static {
    /// Finished tickets last changed before `before`; how many were deleted (fewer than `limit`: the rest wait).
    async fn prune_tickets(&self, before: Millis, limit: i64) -> Result<u64, StoreError>;
    /// Outbox rows recorded before `before` in a window of up to `limit` rows after `after`, in cursor order,
    /// among the rows every consumer of `taken_by` has taken (no consumer: every committed row).
    async fn prune_events(
        &self,
        before: Millis,
        taken_by: &[Outbox],
        after: OutboxPosition,
        limit: i64,
    ) -> Result<EventsPruned, StoreError>;
    /// Webhook deliveries that finished (delivered or failed) and were created before `before`.
    async fn prune_deliveries(&self, before: Millis, limit: i64) -> Result<u64, StoreError>;
}

/// Whether the store answers, and which one it is.
#[async_trait]
pub trait StoreHealth: Send + Sync + 'static {
    /// Cheap liveness check for `/ready`.
    async fn ping(&self) -> Result<(), StoreError>;
    /// "postgres" or "embedded", for logs and readiness output.
    fn backend(&self) -> &'static str;
}

/// A durable ticket store: every part of it, as the service wires it once into the actor system
/// ([`Env`](crate::system::env::Env) holds one `Arc<dyn TicketStore>`). Code that needs only one part takes that
/// part ([`Tickets`], [`AuditOutbox`], [`WebhookStore`], [`Retention`], [`StoreHealth`]); anything implementing
/// all five is a `TicketStore`.
pub trait TicketStore: Tickets + AuditOutbox + WebhookStore + Retention + StoreHealth {}

impl<T: Tickets + AuditOutbox + WebhookStore + Retention + StoreHealth + ?Sized> TicketStore for T {}

/// Run a store call as a task of the current thread's Tokio runtime instead of inside an actor's context, and
/// wait for it.
///
/// Why: when an arbiter stops (service shutdown, a test's app going away), the futures held by its actors are
/// dropped outside any runtime context, and a database connection dropped there panics (sqlx returns it to
/// its pool with a spawned task: "this functionality requires a Tokio context") — a panic during cleanup that
/// aborts the process. A task of the runtime is dropped inside the runtime's own shutdown, where that works.
pub async fn detached<F>(call: F) -> F::Output
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    match tokio::spawn(call).await {
        Ok(output) => output,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        // Cancelled: only while the runtime shuts down, when whoever waits here is being dropped as well.
        Err(_) => std::future::pending().await,
    }
}
