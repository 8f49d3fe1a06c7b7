//! Ticket store adapters: PostgreSQL for production, SQLite under `DATA_DIR` as the zero-setup default.
//!
//! Both speak the same SQL (`$N` parameters, `ON CONFLICT`, savepoints) over the same row layout
//! (`row`), so the store is written once, as [`SqlStore`], generic over the driver; a [`Dialect`] carries what
//! differs between the two (the fastest way each writes many rows at once, the outbox horizon).

pub mod circuit;
mod commit_conn;
mod copy;
pub mod data_dir_lock;
pub mod layer;
pub mod metered;
pub mod postgres;
mod retention;
mod row;
pub mod sqlite;
mod webhooks;

use std::collections::HashSet;
use std::future::Future;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use actors::enums::TicketStatus;
use actors::history::{AuditEvent, HistoryPage};
use actors::model::Metadata;
use actors::sla::SlaState;
use actors::store::{
    AuditOutbox, Fence, ListOrder, ListQuery, Outbox, OutboxPosition, PlanTicket, PlanTicketPage, StoreError,
    StoreHealth, TicketPage, Tickets, UnitConflict, UnitError, WebhookStore, Write, WriteUnit,
};
use actors::webhooks::{AttemptRecord, ClaimBudget, Delivery, Subscription};
use actors::{Millis, Ticket};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::query::{Query, QueryAs};
use sqlx::types::Json;
use sqlx::{ColumnIndex, Database, Decode, Encode, Executor, IntoArguments, Pool, QueryBuilder, Transaction, Type};

use commit_conn::CommitConnections;
use row::{audit_event, bind_lifecycle, bind_row, to_time, AuditRow, LifecycleRow, TicketRow, AUDIT_COLUMNS};
use webhooks::{insert_deliveries, DeliveryRow, SubscriptionRow, DELIVERY_SELECT};

/// Map a driver error. Only a failure to reach or use the database is `Unavailable` — it opens the store
/// circuit and fails readiness, so one client's data must never produce it. The database refusing the data
/// (SQLSTATE class 22 "data exception", e.g. U+0000 in text, and class 23 "integrity constraint violation")
/// is a `Rejected` write, and a value that does not decode is `Corrupt`: both fail that call only. Validation
/// should have caught either first.
fn store_error(e: sqlx::Error) -> StoreError {
    match e {
        sqlx::Error::Database(db) if refused_data(db.code().as_deref(), db.kind()) => {
            StoreError::Rejected(db.to_string())
        }
        e @ (sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_) | sqlx::Error::Encode(_)) => {
            StoreError::Corrupt(e.to_string())
        }
        other => StoreError::Unavailable(other.to_string()),
    }
}

/// Whether a database error is about the data of the statement, not about the database being usable.
fn refused_data(code: Option<&str>, kind: sqlx::error::ErrorKind) -> bool {
    kind != sqlx::error::ErrorKind::Other || code.is_some_and(|c| c.starts_with("22") || c.starts_with("23"))
}

/// What differs between the drivers under the shared SQL of [`SqlStore`]: three functions that write many rows
/// at once, each the fastest way its driver allows, and a few constants.
pub trait Dialect: Database {
    /// "postgres" or "embedded", for [`StoreHealth::backend`].
    const BACKEND: &'static str;
    /// An SQL expression below which every outbox row's `txid` is final (its transaction ended, so no row of it
    /// can still appear).
    const OUTBOX_HORIZON: &'static str;
    /// (finished, dependent) pairs, each once: the PENDING tickets that list one of the ids of `$1` (a JSON
    /// array of ticket ids, as text) among their dependencies.
    const DEPENDENTS: &'static str;
    /// A condition "the ticket lists the bound id among its dependencies", as the text before and after the bound
    /// parameter (the list filter `depends_on`; the same index as [`DEPENDENTS`](Self::DEPENDENTS)).
    const DEPENDS_ON: (&'static str, &'static str);

    /// `get_many`'s statement: the tickets whose id is one of `$1` (a JSON array of ticket ids, as text).
    fn select_many_sql() -> &'static str;

    /// `audit_pending`'s statement, with [`OUTBOX_HORIZON`](Self::OUTBOX_HORIZON), built once. Each driver keeps it
    /// in a `static` of its own: one in the generic code would be shared by both.
    fn audit_pending_sql() -> &'static str;

    /// `prune_tickets`' statement (`$1` the cut-off, `$2` the batch size), built once per driver: what differs is
    /// how "an unfinished ticket depends on it" is looked up (see `retention.rs`).
    fn prune_tickets_sql() -> &'static str;

    /// A statement answering whether this transaction may prune (PostgreSQL: a transaction-scoped advisory lock,
    /// so one replica prunes at a time); `None`: always.
    const PRUNE_GUARD: Option<&'static str>;

    /// Plain updates, guarded by version; the ids it updated.
    fn update_many(
        tx: &mut Transaction<'_, Self>,
        rows: &[(&Ticket, i64)],
    ) -> impl Future<Output = Result<HashSet<String>, sqlx::Error>> + Send;

    /// New tickets, `ON CONFLICT DO NOTHING`; the ids it inserted (a missing id was taken).
    fn insert_many(
        tx: &mut Transaction<'_, Self>,
        rows: &[(usize, &Ticket)],
    ) -> impl Future<Output = Result<HashSet<String>, sqlx::Error>> + Send;

    /// Cluster mode: the shards of `fence` that `fence.member` no longer holds at the given epochs, checked so
    /// that a takeover of any of them waits for this transaction (see `migrations/postgres/*_cluster.sql`,
    /// `ticket_fence`). The embedded store has one process: nothing to check.
    fn fenced_out(
        tx: &mut Transaction<'_, Self>,
        fence: &Fence,
    ) -> impl Future<Output = Result<HashSet<u16>, sqlx::Error>> + Send;

    /// Whether the dialect has [`commit_statement`](Self::commit_statement); without it (SQLite: one writer, no
    /// round trips, so a transaction costs what a statement would) a batch is not even sorted into [`Plain`].
    const ONE_STATEMENT_COMMIT: bool = false;

    /// Whether [`commit_statement`](Self::commit_statement) writes `batch`. No: the batch is better written another
    /// way (bulk rows by COPY); the caller then runs a transaction.
    fn fits_one_statement(_batch: &Plain<'_>) -> bool {
        false
    }

    /// The whole group commit as one statement, in that statement's own implicit transaction: one round trip,
    /// where a transaction takes BEGIN, a statement per kind of row and COMMIT (each round trip is a wake-up of
    /// both processes). Returns the shards the fence found lost and the ids inserted and updated.
    fn commit_statement(
        _conn: &mut Self::Connection,
        _batch: &Plain<'_>,
    ) -> impl Future<Output = Result<Written, sqlx::Error>> + Send {
        std::future::ready(Err(sqlx::Error::Configuration("this store commits in transactions".into())))
    }

    /// Outbox rows.
    fn insert_audits(
        tx: &mut Transaction<'_, Self>,
        events: &[&AuditEvent],
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send;

    /// How many rows a statement changed (each driver's result type has it as an inherent method, not through a
    /// trait).
    fn rows_affected(result: &Self::QueryResult) -> u64;

    /// A query built by a [`QueryBuilder`], its arguments' lifetime shortened to the query's own: a no-op.
    ///
    /// Why: the built query borrows the builder, and running it needs arguments of that borrow's lifetime. Each
    /// driver's arguments type is covariant in its lifetime, so its own code shortens it without a word; generic
    /// code sees only `Self::Arguments<'a>`, which Rust must treat as invariant, and could not run the query.
    fn shorten<'q, 'a: 'q>(query: Query<'q, Self, Self::Arguments<'a>>) -> Query<'q, Self, Self::Arguments<'q>>;

    /// [`shorten`](Self::shorten), for a query whose rows decode into `O`.
    fn shorten_as<'q, 'a: 'q, O>(
        query: QueryAs<'q, Self, O, Self::Arguments<'a>>,
    ) -> QueryAs<'q, Self, O, Self::Arguments<'q>>;
}

/// A group commit of plain units, for [`Dialect::commit_statement`]: each unit is one new ticket, or one update of
/// a ticket guarded by its expected version, with its audit records; or audit records alone.
pub struct Plain<'a> {
    /// New tickets, each with its unit's fence shard (-1: not fenced).
    pub inserts: Vec<(&'a Ticket, i32)>,
    /// Updates: the ticket, the version it must still have, its unit's fence shard (-1: not fenced).
    pub updates: Vec<(&'a Ticket, i64, i32)>,
    /// Audit records, each with the ticket whose insert or update it rides on: written only if that write is (no
    /// ticket is both inserted and updated in a batch, see [`Plain::of`]). A record of a unit of audit records
    /// alone (None) always is.
    pub audits: Vec<(&'a AuditEvent, Option<&'a str>)>,
    /// Cluster mode: this replica and the distinct (shard, epoch) pairs its units are written under.
    pub fence: Option<(&'a str, Vec<i32>, Vec<i64>)>,
}

/// What [`Dialect::commit_statement`] did: the shards the fence found lost, the ids inserted, the ids updated.
pub type Written = (HashSet<u16>, HashSet<String>, HashSet<String>);

impl<'a> Plain<'a> {
    /// The batch as plain units; `None` if a unit has another shape (a compensation writes two tickets, a webhook
    /// delivery rides along) or a ticket is both inserted and updated in it (one statement's parts do not see each
    /// other's rows; the actor never sends both before the first committed, but a transaction would not care).
    pub fn of(units: &'a [WriteUnit], fence: Option<&'a Fence>) -> Option<Plain<'a>> {
        let mut plain = Plain { inserts: Vec::new(), updates: Vec::new(), audits: Vec::new(), fence: None };
        for (i, unit) in units.iter().enumerate() {
            let shard = fence.and_then(|f| f.shards.get(i).copied().flatten()).map_or(-1, |(s, _)| i32::from(s));
            let (home, rest) = match unit.0.split_first() {
                Some((Write::Insert(t), rest)) => {
                    plain.inserts.push((t, shard));
                    (Some(t.ticket_id.as_str()), rest)
                }
                Some((Write::Update { ticket, expected_version }, rest)) => {
                    plain.updates.push((ticket, *expected_version, shard));
                    (Some(ticket.ticket_id.as_str()), rest)
                }
                _ => (None, unit.0.as_slice()),
            };
            for w in rest {
                match w {
                    Write::Audit(a) => plain.audits.push((a, home)),
                    _ => return None,
                }
            }
        }
        if !plain.inserts.is_empty() && !plain.updates.is_empty() {
            let new: HashSet<&str> = plain.inserts.iter().map(|(t, _)| t.ticket_id.as_str()).collect();
            if plain.updates.iter().any(|(t, _, _)| new.contains(t.ticket_id.as_str())) {
                return None;
            }
        }
        plain.fence = fence.map(|f| {
            let (shards, epochs) = fence_pairs(f);
            (f.member.as_str(), shards, epochs)
        });
        Some(plain)
    }

    /// Each unit's outcome from what the statement wrote.
    fn outcomes(
        units: &[WriteUnit],
        fence: Option<&Fence>,
        (lost, inserted, updated): &Written,
    ) -> Vec<Result<(), UnitError>> {
        let unit_outcome = |(i, unit): (usize, &WriteUnit)| {
            if let Some(f) = fence {
                if let Some((s, epoch)) = f.shards.get(i).copied().flatten().filter(|(s, _)| lost.contains(s)) {
                    return Err(lost_lease(f, s, epoch));
                }
            }
            match unit.0.first() {
                Some(Write::Insert(t)) if !inserted.contains(&t.ticket_id) => {
                    Err(UnitConflict::AlreadyExists(t.ticket_id.clone()).into())
                }
                Some(Write::Update { ticket, .. }) if !updated.contains(&ticket.ticket_id) => {
                    Err(UnitConflict::VersionMismatch(ticket.ticket_id.clone()).into())
                }
                _ => Ok(()),
            }
        };
        units.iter().enumerate().map(unit_outcome).collect()
    }
}

/// The distinct (shard, epoch) pairs a fence holds, as the two arrays `ticket_fence` takes.
fn fence_pairs(fence: &Fence) -> (Vec<i32>, Vec<i64>) {
    let pairs: std::collections::BTreeSet<(i32, i64)> =
        fence.shards.iter().flatten().map(|(s, e)| (i32::from(*s), *e)).collect();
    pairs.into_iter().unzip()
}

/// A unit refused because its writer no longer holds the lease it was written under.
fn lost_lease(fence: &Fence, shard: u16, epoch: i64) -> UnitError {
    StoreError::NotOwner(format!("{} lost the lease of shard {shard} (epoch {epoch})", fence.member)).into()
}

/// A Rust type that a driver binds as a parameter and decodes from a column.
pub trait Column<DB: Database>: for<'q> Encode<'q, DB> + for<'r> Decode<'r, DB> + Type<DB> + Send + 'static {}

impl<DB: Database, T> Column<DB> for T where
    T: for<'q> Encode<'q, DB> + for<'r> Decode<'r, DB> + Type<DB> + Send + 'static
{
}

/// The ticket store over one SQL driver: [`PgTicketStore`](postgres::PgTicketStore) or
/// [`SqliteTicketStore`](sqlite::SqliteTicketStore).
///
/// Its impls carry the same `where` clause (the health check's is shorter): what the shared SQL needs of the
/// driver, executing on a connection and binding and decoding the column types. Rust does not infer a trait's
/// `where` clauses from a bound on it, so a [`Dialect`] bound alone cannot carry them.
pub struct SqlStore<DB: Database> {
    pool: Pool<DB>,
    /// The connections of one-statement group commits, outside the pool (see [`commit_conn`]).
    commits: Arc<CommitConnections<DB>>,
}

impl<DB: Database> SqlStore<DB> {
    /// `commit_connections`: how many connections of its own the store may open for group commits, besides
    /// `pool`'s.
    fn new(pool: Pool<DB>, commit_connections: usize) -> Self {
        SqlStore { pool, commits: Arc::new(CommitConnections::new(commit_connections)) }
    }
}

impl<DB: Database> Clone for SqlStore<DB> {
    fn clone(&self) -> Self {
        SqlStore { pool: self.pool.clone(), commits: Arc::clone(&self.commits) }
    }
}

/// A connection idle at least this long is pinged before it is used: one idle across a database restart is
/// found broken before a call fails on it (see `postgres::pool_options`, and [`commit_conn`]).
const PING_IF_IDLE_FOR: Duration = Duration::from_secs(1);

/// Append the list filters of a `ListQuery` as `WHERE … AND …` to a `QueryBuilder`.
fn push_filters<'q, DB: Dialect>(qb: &mut QueryBuilder<'q, DB>, q: &ListQuery)
where
    String: Column<DB>,
    DateTime<Utc>: Column<DB>,
{
    let mut sep = " WHERE ";
    let filters: [(&str, Option<String>); 5] = [
        ("plan_id", q.plan_id.clone()),
        ("intent_id", q.intent_id.clone()),
        ("status", q.status.map(|s| s.as_str().to_owned())),
        ("priority", q.priority.map(|s| s.as_str().to_owned())),
        ("task_type", q.task_type.map(|s| s.as_str().to_owned())),
    ];
    for (column, value) in filters {
        if let Some(value) = value {
            qb.push(sep).push(column).push(" = ").push_bind(value);
            sep = " AND ";
        }
    }
    // A prefix as a range of the primary key (both stores compare ids byte by byte: COLLATE "C" on PostgreSQL,
    // BINARY on SQLite), where `LIKE` would need escaping and, with a bound parameter, may not use the index.
    if let Some(prefix) = q.id_prefix.as_deref().filter(|p| !p.is_empty()) {
        qb.push(sep).push("ticket_id >= ").push_bind(prefix.to_owned());
        sep = " AND ";
        if let Some(end) = prefix_end(prefix) {
            qb.push(sep).push("ticket_id < ").push_bind(end);
        }
    }
    if let Some(id) = &q.depends_on {
        let (before, after) = DB::DEPENDS_ON;
        qb.push(sep).push(before).push_bind(id.clone()).push(after);
        sep = " AND ";
    }
    if q.order == ListOrder::NextDue {
        qb.push(sep).push("next_due_at IS NOT NULL");
        sep = " AND ";
    }
    // Keyset: after (created_at, id) in the order `created_at DESC, ticket_id`. The first comparison is a range
    // of the `(created_at DESC, ticket_id)` index; the second only sorts out the ties of that one instant.
    if let Some(after) = &q.after {
        let at = row::to_time(after.created_at);
        qb.push(sep).push("created_at <= ").push_bind(at);
        qb.push(" AND (created_at < ").push_bind(at);
        qb.push(" OR ticket_id > ").push_bind(after.ticket_id.clone()).push(")");
    }
}

/// The least text greater than every text that starts with `prefix` (byte order, which for UTF-8 is code point
/// order): `prefix` with its last character moved to the next one. None when there is no such text (every
/// character is the last code point).
fn prefix_end(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        if let Some(next) = (last as u32 + 1..=char::MAX as u32).find_map(char::from_u32) {
            chars.push(next);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

/// `audit_pending`'s statement with a driver's [`Dialect::OUTBOX_HORIZON`]: a range of the `(txid, seq)` index
/// after the cursor, up to the horizon, rows of transactions older than every one still running (see `Outbox`).
fn audit_pending_sql(horizon: &str) -> String {
    format!(
        "SELECT txid, seq, {AUDIT_COLUMNS} FROM ticket_events WHERE (txid, seq) > ($1, $2) \
         AND txid < {horizon} ORDER BY txid, seq LIMIT $3"
    )
}

impl<DB> SqlStore<DB>
where
    DB: Dialect,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'s> &'s str: Encode<'s, DB> + Type<DB> + ColumnIndex<DB::Row>,
    usize: ColumnIndex<DB::Row>,
    String: Column<DB>,
    i64: Column<DB>,
    i32: Column<DB>,
    DateTime<Utc>: Column<DB>,
    Option<String>: Column<DB>,
    Option<i64>: Column<DB>,
    Option<i32>: Column<DB>,
    Option<DateTime<Utc>>: Column<DB>,
    Json<serde_json::Value>: Column<DB>,
    Json<Vec<String>>: Column<DB>,
    Json<serde_json::Map<String, serde_json::Value>>: Column<DB>,
    Json<Metadata>: Column<DB>,
    Json<SlaState>: Column<DB>,
{
    /// Where `outbox`'s consumer stands (the migration creates both cursors).
    async fn outbox_cursor(&self, outbox: Outbox) -> Result<OutboxPosition, StoreError> {
        let (txid, seq): (i64, i64) = sqlx::query_as("SELECT txid, seq FROM outbox_cursors WHERE consumer = $1")
            .bind(outbox.name())
            .fetch_optional(&self.pool)
            .await
            .map_err(store_error)?
            .ok_or_else(|| StoreError::Corrupt(format!("no outbox cursor {:?}", outbox.name())))?;
        Ok(OutboxPosition { txid, seq })
    }

    /// All units in one transaction, `tx`. The common shapes — one insert or one update, plus its audit
    /// records — are batched into multi-row statements (one round trip for the whole group); any other
    /// unit (a compensation writes two tickets) runs statement by statement inside a savepoint, so that
    /// its conflict undoes only that unit.
    async fn commit_together(
        &self,
        mut tx: Transaction<'_, DB>,
        units: &[WriteUnit],
        fence: Option<&Fence>,
    ) -> Result<Vec<Result<(), UnitError>>, StoreError> {
        use row::{INSERT, UPDATE};
        let err = store_error;
        // Audit records and webhook deliveries ride along with the unit that caused them.
        let audits_of = |w: &[Write]| w.iter().all(|w| matches!(w, Write::Audit(_) | Write::Delivery(_)));
        let mut outcomes: Vec<Option<Result<(), UnitError>>> = vec![None; units.len()];
        // First the fence (cluster mode): a unit of a shard this replica lost is not written at all.
        if let Some(fence) = fence {
            let lost = DB::fenced_out(&mut tx, fence).await.map_err(err)?;
            for (outcome, shard) in outcomes.iter_mut().zip(&fence.shards) {
                if let Some((s, epoch)) = shard.filter(|(s, _)| lost.contains(s)) {
                    *outcome = Some(Err(lost_lease(fence, s, epoch)));
                }
            }
        }
        let mut inserts: Vec<(usize, &Ticket)> = Vec::new();
        let mut updates: Vec<(usize, &Ticket, i64)> = Vec::new();
        let mut complex = Vec::new();
        for (i, unit) in units.iter().enumerate() {
            if outcomes[i].is_some() {
                continue;
            }
            match unit.0.split_first() {
                Some((Write::Insert(t), rest)) if audits_of(rest) => inserts.push((i, t)),
                Some((Write::Update { ticket, expected_version }, rest)) if audits_of(rest) => {
                    updates.push((i, ticket, *expected_version))
                }
                _ if audits_of(&unit.0) => outcomes[i] = Some(Ok(())),
                _ => complex.push(i),
            }
        }
        let inserted = DB::insert_many(&mut tx, &inserts).await.map_err(err)?;
        for (i, t) in &inserts {
            outcomes[*i] = Some(if inserted.contains(&t.ticket_id) {
                Ok(())
            } else {
                Err(UnitConflict::AlreadyExists(t.ticket_id.clone()).into())
            });
        }
        let plain: Vec<(&Ticket, i64)> = updates.iter().map(|(_, t, v)| (*t, *v)).collect();
        let updated = DB::update_many(&mut tx, &plain).await.map_err(err)?;
        for (i, t, _) in &updates {
            outcomes[*i] = Some(if updated.contains(&t.ticket_id) {
                Ok(())
            } else {
                Err(UnitConflict::VersionMismatch(t.ticket_id.clone()).into())
            });
        }
        // The audit records of every batched unit that committed, in one statement.
        let audits: Vec<&AuditEvent> = units
            .iter()
            .zip(&outcomes)
            .filter(|(_, o)| matches!(o, Some(Ok(()))))
            .flat_map(|(u, _)| u.0.iter())
            .filter_map(|w| match w {
                Write::Audit(a) => Some(a),
                _ => None,
            })
            .collect();
        DB::insert_audits(&mut tx, &audits).await.map_err(err)?;
        let deliveries: Vec<&Delivery> = units
            .iter()
            .zip(&outcomes)
            .filter(|(_, o)| matches!(o, Some(Ok(()))))
            .flat_map(|(u, _)| u.0.iter())
            .filter_map(|w| match w {
                Write::Delivery(d) => Some(d),
                _ => None,
            })
            .collect();
        insert_deliveries(&mut tx, &deliveries).await.map_err(err)?;
        for i in complex {
            let unit = &units[i];
            sqlx::query("SAVEPOINT unit").execute(&mut *tx).await.map_err(err)?;
            let mut outcome = Ok(());
            for write in &unit.0 {
                let (done, conflict) = match write {
                    Write::Insert(t) => {
                        let q = bind_row(sqlx::query::<DB>(&INSERT), TicketRow::from(t));
                        (q.execute(&mut *tx).await, UnitConflict::AlreadyExists(t.ticket_id.clone()))
                    }
                    Write::Update { ticket, expected_version } => {
                        let q = bind_lifecycle(sqlx::query::<DB>(&UPDATE), LifecycleRow::from(ticket));
                        let q = q.bind(*expected_version);
                        (q.execute(&mut *tx).await, UnitConflict::VersionMismatch(ticket.ticket_id.clone()))
                    }
                    Write::Audit(a) => {
                        DB::insert_audits(&mut tx, &[a]).await.map_err(err)?;
                        continue;
                    }
                    Write::Delivery(d) => {
                        insert_deliveries(&mut tx, &[d]).await.map_err(err)?;
                        continue;
                    }
                };
                if DB::rows_affected(&done.map_err(err)?) == 0 {
                    outcome = Err(conflict.into());
                    break;
                }
            }
            let end = if outcome.is_ok() { "RELEASE SAVEPOINT unit" } else { "ROLLBACK TO SAVEPOINT unit" };
            sqlx::query(end).execute(&mut *tx).await.map_err(err)?;
            outcomes[i] = Some(outcome);
        }
        tx.commit().await.map_err(err)?;
        Ok(outcomes.into_iter().map(|o| o.expect("every unit has an outcome")).collect())
    }
}

#[async_trait]
impl<DB> Tickets for SqlStore<DB>
where
    DB: Dialect,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'s> &'s str: Encode<'s, DB> + Type<DB> + ColumnIndex<DB::Row>,
    usize: ColumnIndex<DB::Row>,
    String: Column<DB>,
    i64: Column<DB>,
    i32: Column<DB>,
    DateTime<Utc>: Column<DB>,
    Option<String>: Column<DB>,
    Option<i64>: Column<DB>,
    Option<i32>: Column<DB>,
    Option<DateTime<Utc>>: Column<DB>,
    Json<serde_json::Value>: Column<DB>,
    Json<Vec<String>>: Column<DB>,
    Json<serde_json::Map<String, serde_json::Value>>: Column<DB>,
    Json<Metadata>: Column<DB>,
    Json<SlaState>: Column<DB>,
{
    async fn get(&self, ticket_id: &str) -> Result<Option<Ticket>, StoreError> {
        static SELECT_ONE: LazyLock<String> = LazyLock::new(|| format!("{} WHERE ticket_id = $1", *row::SELECT));
        let row = sqlx::query_as::<DB, TicketRow>(&SELECT_ONE)
            .bind(ticket_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(store_error)?;
        row.map(Ticket::try_from).transpose()
    }

    async fn get_many(&self, ids: &[String]) -> Result<Vec<Ticket>, StoreError> {
        // One statement whatever the number of ids (the ids as one JSON array): a list of placeholders was a new
        // statement, parsed and planned again, for every batch size.
        let mut tickets = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(500) {
            let chunk = serde_json::to_string(chunk).map_err(|e| StoreError::Rejected(e.to_string()))?;
            let rows = sqlx::query_as::<DB, TicketRow>(DB::select_many_sql())
                .bind(chunk)
                .fetch_all(&self.pool)
                .await
                .map_err(store_error)?;
            for row in rows {
                tickets.push(Ticket::try_from(row)?);
            }
        }
        Ok(tickets)
    }

    async fn list(&self, q: &ListQuery) -> Result<TicketPage, StoreError> {
        let total = if q.skip_total {
            None
        } else {
            let mut count = QueryBuilder::<DB>::new("SELECT COUNT(*) FROM execution_tickets");
            push_filters(&mut count, q);
            let (total,): (i64,) =
                DB::shorten_as(count.build_query_as()).fetch_one(&self.pool).await.map_err(store_error)?;
            Some(total)
        };
        let mut page = QueryBuilder::<DB>::new(&*row::SELECT);
        push_filters(&mut page, q);
        match q.order {
            ListOrder::Newest => page.push(" ORDER BY created_at DESC, ticket_id LIMIT ").push_bind(q.limit),
            ListOrder::NextDue => page.push(" ORDER BY next_due_at, ticket_id LIMIT ").push_bind(q.limit),
        };
        page.push(" OFFSET ").push_bind(q.offset);
        let rows =
            DB::shorten_as(page.build_query_as::<TicketRow>()).fetch_all(&self.pool).await.map_err(store_error)?;
        let tickets = rows.into_iter().map(Ticket::try_from).collect::<Result<Vec<_>, _>>()?;
        Ok(TicketPage { tickets, total, next_cursor: None, offset: q.offset, limit: q.limit })
    }

    async fn by_plans(&self, plan_ids: &[String], offset: i64, limit: i64) -> Result<PlanTicketPage, StoreError> {
        let page = |tickets, total| PlanTicketPage { tickets, total, offset, limit };
        if plan_ids.is_empty() {
            return Ok(page(Vec::new(), 0));
        }
        // `plan_id IN (…)`: one range of the (plan_id, created_at) index per plan, in that order, so the page is
        // read in index order.
        let in_plans = |q: &mut QueryBuilder<'_, DB>| {
            q.push(" WHERE plan_id IN (");
            let mut list = q.separated(", ");
            for id in plan_ids {
                list.push_bind(id.clone());
            }
            q.push(")");
        };
        let mut count = QueryBuilder::<DB>::new("SELECT COUNT(*) FROM execution_tickets");
        in_plans(&mut count);
        let (total,): (i64,) =
            DB::shorten_as(count.build_query_as()).fetch_one(&self.pool).await.map_err(store_error)?;
        let mut q = QueryBuilder::<DB>::new("SELECT ticket_id, plan_id, status FROM execution_tickets");
        in_plans(&mut q);
        q.push(" ORDER BY plan_id, created_at, ticket_id LIMIT ").push_bind(limit);
        q.push(" OFFSET ").push_bind(offset);
        let rows: Vec<(String, String, String)> =
            DB::shorten_as(q.build_query_as()).fetch_all(&self.pool).await.map_err(store_error)?;
        let corrupt = |e: actors::enums::UnknownVariant| StoreError::Corrupt(e.to_string());
        let tickets = rows
            .into_iter()
            .map(|(ticket_id, plan_id, status)| {
                Ok(PlanTicket { ticket_id, plan_id, status: status.parse().map_err(corrupt)? })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        Ok(page(tickets, total))
    }

    async fn commit(&self, units: &[WriteUnit], fence: Option<&Fence>) -> Vec<Result<(), UnitError>> {
        // Without a connection no unit can commit: fail them all at once. (Retrying unit by unit would
        // make each one wait the pool's acquire timeout again while the database is down.)
        let no_connection = |e: sqlx::Error, remaining: usize| {
            let e = store_error(e);
            tracing::warn!(error = %e, units = remaining, "no database connection; failing the group commit");
            std::iter::repeat_n(Err::<(), UnitError>(e.into()), remaining)
        };
        let batch = DB::ONE_STATEMENT_COMMIT.then(|| Plain::of(units, fence)).flatten();
        if let Some(batch) = batch.filter(|b| DB::fits_one_statement(b)) {
            let mut conn = match self.commits.take(&self.pool).await {
                Ok(conn) => conn,
                Err(e) => return no_connection(e, units.len()).collect(),
            };
            match DB::commit_statement(&mut conn, &batch).await {
                Ok(written) => {
                    self.commits.keep(conn);
                    return Plain::outcomes(units, fence, &written);
                }
                // Nothing of it was written (one statement, one transaction) — or, if only its answer was lost,
                // the transaction meets its rows as conflicts, which the actor settles by reading them back, as
                // after a lost COMMIT answer. A transaction tells which unit failed and lets the others land.
                Err(e) => {
                    tracing::warn!(error = %e, units = units.len(), "group commit statement failed; retrying in a transaction");
                    // The server refused the statement: the connection itself is fine. Any other failure may have
                    // broken it, so it is dropped (closed).
                    if matches!(e, sqlx::Error::Database(_)) {
                        self.commits.keep(conn);
                    }
                }
            }
        }
        let tx = match self.pool.begin().await {
            Ok(tx) => tx,
            Err(e) => return no_connection(e, units.len()).collect(),
        };
        match self.commit_together(tx, units, fence).await {
            Ok(outcomes) => outcomes,
            Err(e) if units.len() > 1 => {
                // One unit may have poisoned the transaction: give each its own, so the others land.
                tracing::warn!(error = %e, units = units.len(), "group commit failed; committing units one by one");
                let mut outcomes = Vec::with_capacity(units.len());
                for (i, unit) in units.iter().enumerate() {
                    let tx = match self.pool.begin().await {
                        Ok(tx) => tx,
                        Err(e) => {
                            outcomes.extend(no_connection(e, units.len() - i));
                            break;
                        }
                    };
                    let one = fence.map(|f| Fence { member: f.member.clone(), shards: vec![f.shards[i]] });
                    outcomes.push(match self.commit_together(tx, std::slice::from_ref(unit), one.as_ref()).await {
                        Ok(mut one) => one.pop().unwrap_or(Ok(())),
                        Err(e) => Err(e.into()),
                    });
                }
                outcomes
            }
            Err(e) => vec![Err(e.into())],
        }
    }

    async fn due_before(
        &self,
        before: Millis,
        limit: i64,
        after: Option<&(Millis, String)>,
    ) -> Result<Vec<(String, Millis)>, StoreError> {
        let rows: Vec<(String, DateTime<Utc>)> = match after {
            None => {
                sqlx::query_as::<DB, _>(
                    "SELECT ticket_id, next_due_at FROM execution_tickets \
                     WHERE next_due_at IS NOT NULL AND next_due_at < $1 \
                     ORDER BY next_due_at, ticket_id LIMIT $2",
                )
                .bind(to_time(before))
                .bind(limit)
                .fetch_all(&self.pool)
                .await
            }
            Some((due, id)) => {
                sqlx::query_as::<DB, _>(
                    "SELECT ticket_id, next_due_at FROM execution_tickets \
                     WHERE next_due_at IS NOT NULL AND next_due_at < $1 \
                     AND (next_due_at, ticket_id) > ($2, $3) \
                     ORDER BY next_due_at, ticket_id LIMIT $4",
                )
                .bind(to_time(before))
                .bind(to_time(*due))
                .bind(id.clone())
                .bind(limit)
                .fetch_all(&self.pool)
                .await
            }
        }
        .map_err(store_error)?;
        Ok(rows.into_iter().map(|(id, due)| (id, due.timestamp_millis())).collect())
    }

    async fn dependents(&self, finished: &[String]) -> Result<Vec<(String, String)>, StoreError> {
        if finished.is_empty() {
            return Ok(Vec::new());
        }
        // A JSON array of the ids: both drivers take it as one text parameter.
        let ids = serde_json::to_string(finished).map_err(|e| StoreError::Rejected(e.to_string()))?;
        sqlx::query_as(DB::DEPENDENTS).bind(ids).fetch_all(&self.pool).await.map_err(store_error)
    }

    async fn count_by_status(&self) -> Result<Vec<(TicketStatus, i64)>, StoreError> {
        let rows: Vec<(String, i64)> = sqlx::query_as("SELECT status, COUNT(*) FROM execution_tickets GROUP BY status")
            .fetch_all(&self.pool)
            .await
            .map_err(store_error)?;
        let corrupt = |e: actors::enums::UnknownVariant| StoreError::Corrupt(e.to_string());
        rows.into_iter().map(|(status, n)| Ok((status.parse().map_err(corrupt)?, n))).collect()
    }
}

#[async_trait]
impl<DB> AuditOutbox for SqlStore<DB>
where
    DB: Dialect,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'s> &'s str: Encode<'s, DB> + Type<DB> + ColumnIndex<DB::Row>,
    usize: ColumnIndex<DB::Row>,
    String: Column<DB>,
    i64: Column<DB>,
    i32: Column<DB>,
    DateTime<Utc>: Column<DB>,
    Option<String>: Column<DB>,
    Option<i64>: Column<DB>,
    Option<i32>: Column<DB>,
    Option<DateTime<Utc>>: Column<DB>,
    Json<serde_json::Value>: Column<DB>,
    Json<Vec<String>>: Column<DB>,
    Json<serde_json::Map<String, serde_json::Value>>: Column<DB>,
    Json<Metadata>: Column<DB>,
    Json<SlaState>: Column<DB>,
{
    async fn audit_pending(&self, outbox: Outbox, limit: i64) -> Result<Vec<(OutboxPosition, AuditEvent)>, StoreError> {
        let cursor = self.outbox_cursor(outbox).await?;
        let rows: Vec<AuditRow> = sqlx::query_as(DB::audit_pending_sql())
            .bind(cursor.txid)
            .bind(cursor.seq)
            .bind(limit)
            .fetch_all(&self.pool)
            .await
            .map_err(store_error)?;
        Ok(rows.into_iter().map(|r| (OutboxPosition { txid: r.0, seq: r.1 }, audit_event(r))).collect())
    }

    async fn audit_advance(&self, outbox: Outbox, upto: OutboxPosition) -> Result<(), StoreError> {
        sqlx::query("UPDATE outbox_cursors SET txid = $2, seq = $3 WHERE consumer = $1 AND (txid, seq) < ($2, $3)")
            .bind(outbox.name())
            .bind(upto.txid)
            .bind(upto.seq)
            .execute(&self.pool)
            .await
            .map_err(store_error)?;
        Ok(())
    }

    async fn audit_backlog(&self, outbox: Outbox) -> Result<i64, StoreError> {
        let cursor = self.outbox_cursor(outbox).await?;
        sqlx::query_scalar("SELECT COUNT(*) FROM ticket_events WHERE (txid, seq) > ($1, $2)")
            .bind(cursor.txid)
            .bind(cursor.seq)
            .fetch_one(&self.pool)
            .await
            .map_err(store_error)
    }

    async fn history(&self, ticket_id: &str, offset: i64, limit: i64) -> Result<HistoryPage, StoreError> {
        let err = store_error;
        let total: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM ticket_events WHERE ticket_id = $1")
            .bind(ticket_id)
            .fetch_one(&self.pool)
            .await
            .map_err(err)?;
        let rows: Vec<AuditRow> = sqlx::query_as(&format!(
            "SELECT txid, seq, {AUDIT_COLUMNS} FROM ticket_events WHERE ticket_id = $1 \
             ORDER BY seq LIMIT $2 OFFSET $3"
        ))
        .bind(ticket_id)
        .bind(limit)
        .bind(offset)
        .fetch_all(&self.pool)
        .await
        .map_err(err)?;
        let events = rows.into_iter().map(audit_event).collect();
        Ok(HistoryPage { ticket_id: ticket_id.to_owned(), events, total, offset, limit })
    }
}

#[async_trait]
impl<DB> WebhookStore for SqlStore<DB>
where
    DB: Dialect,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'s> &'s str: Encode<'s, DB> + Type<DB> + ColumnIndex<DB::Row>,
    usize: ColumnIndex<DB::Row>,
    String: Column<DB>,
    i64: Column<DB>,
    i32: Column<DB>,
    DateTime<Utc>: Column<DB>,
    Option<String>: Column<DB>,
    Option<i64>: Column<DB>,
    Option<i32>: Column<DB>,
    Option<DateTime<Utc>>: Column<DB>,
    Json<serde_json::Value>: Column<DB>,
    Json<Vec<String>>: Column<DB>,
    Json<serde_json::Map<String, serde_json::Value>>: Column<DB>,
    Json<Metadata>: Column<DB>,
    Json<SlaState>: Column<DB>,
{
    async fn webhook_subscriptions(&self) -> Result<Vec<Subscription>, StoreError> {
        let rows: Vec<SubscriptionRow> = sqlx::query_as(
            "SELECT id, body, consecutive_failures, failing_since, disabled_reason, created_at \
             FROM webhook_subscriptions ORDER BY created_at, id",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(store_error)?;
        rows.into_iter().map(webhooks::subscription).collect()
    }

    async fn webhook_put(&self, s: &Subscription) -> Result<(), StoreError> {
        let body = serde_json::to_value(s).map_err(|e| StoreError::Rejected(e.to_string()))?;
        sqlx::query(
            "INSERT INTO webhook_subscriptions (id, body, consecutive_failures, failing_since, disabled_reason, \
             created_at) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (id) DO UPDATE SET body = excluded.body, \
             consecutive_failures = excluded.consecutive_failures, failing_since = excluded.failing_since, \
             disabled_reason = excluded.disabled_reason",
        )
        .bind(&s.id)
        .bind(Json(body))
        .bind(s.consecutive_failures)
        .bind(s.failing_since)
        .bind(&s.disabled_reason)
        .bind(s.created_at)
        .execute(&self.pool)
        .await
        .map_err(store_error)?;
        Ok(())
    }

    async fn webhook_delete(&self, id: &str) -> Result<bool, StoreError> {
        let err = store_error;
        let mut tx = self.pool.begin().await.map_err(err)?;
        let gone = sqlx::query("DELETE FROM webhook_subscriptions WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(err)?;
        let gone = DB::rows_affected(&gone);
        sqlx::query("DELETE FROM webhook_deliveries WHERE subscription_id = $1 AND status = 'pending'")
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(err)?;
        tx.commit().await.map_err(err)?;
        Ok(gone > 0)
    }

    async fn webhook_claim(
        &self,
        now: Millis,
        lease_until: Millis,
        budgets: &[ClaimBudget],
    ) -> Result<Vec<Delivery>, StoreError> {
        let budgets: Vec<_> = budgets.iter().filter(|b| b.limit > 0).collect();
        if budgets.is_empty() {
            return Ok(Vec::new());
        }
        // One index range per subscription ((subscription_id, next_attempt_at) WHERE pending), so a
        // subscription's backlog is never scanned for another's claim. The outer condition is checked
        // again on the row as locked, so two replicas claiming at once do not both take the same
        // delivery (PostgreSQL re-evaluates it after waiting for the lock).
        let mut q = QueryBuilder::<DB>::new("UPDATE webhook_deliveries SET next_attempt_at = ");
        q.push_bind(lease_until);
        q.push(" WHERE status = 'pending' AND next_attempt_at <= ").push_bind(now);
        q.push(" AND id IN (");
        for (i, b) in budgets.iter().enumerate() {
            if i > 0 {
                q.push(" UNION ALL ");
            }
            q.push("SELECT id FROM (SELECT id FROM webhook_deliveries WHERE status = 'pending' AND ");
            match &b.subscription_id {
                Some(id) => q.push("subscription_id = ").push_bind(id.clone()),
                None => q.push("subscription_id IS NULL"),
            };
            q.push(" AND next_attempt_at <= ").push_bind(now);
            q.push(" ORDER BY next_attempt_at LIMIT ").push_bind(b.limit);
            q.push(format!(") AS budget{i}"));
        }
        q.push(format!(") RETURNING {DELIVERY_SELECT}"));
        let rows: Vec<DeliveryRow> =
            DB::shorten_as(q.build_query_as()).fetch_all(&self.pool).await.map_err(store_error)?;
        // A row that does not decode fails alone: it is marked failed with the reason (an operator can
        // see it in the subscription's deliveries), and the rest of the claim goes on.
        let mut claimed = Vec::with_capacity(rows.len());
        for row in rows {
            let id = row.0.clone();
            match webhooks::delivery(row) {
                Ok(d) => claimed.push(d),
                Err(e) => {
                    tracing::error!(delivery = %id, error = %e, "webhook delivery cannot be read; marked failed");
                    sqlx::query(
                        "UPDATE webhook_deliveries SET status = 'failed', last_error = $2, \
                         next_attempt_at = NULL WHERE id = $1",
                    )
                    .bind(&id)
                    .bind(e.to_string())
                    .execute(&self.pool)
                    .await
                    .map_err(store_error)?;
                }
            }
        }
        Ok(claimed)
    }

    async fn webhook_record(&self, records: &[AttemptRecord]) -> Result<(), StoreError> {
        let err = store_error;
        let mut tx = self.pool.begin().await.map_err(err)?;
        for r in records {
            sqlx::query(
                "UPDATE webhook_deliveries SET status = $2, attempts = $3, last_status = $4, last_error = $5, \
                 next_attempt_at = $6, delivered_at = $7 WHERE id = $1",
            )
            .bind(&r.delivery_id)
            .bind(r.status.as_str())
            .bind(r.attempts)
            .bind(r.last_status)
            .bind(&r.last_error)
            .bind(r.next_attempt_at)
            .bind(r.delivered_at)
            .execute(&mut *tx)
            .await
            .map_err(err)?;
            if let Some((id, failures, since, reason)) = &r.health {
                sqlx::query(
                    "UPDATE webhook_subscriptions SET consecutive_failures = $2, failing_since = $3, \
                     disabled_reason = $4 WHERE id = $1",
                )
                .bind(id)
                .bind(*failures)
                .bind(*since)
                .bind(reason)
                .execute(&mut *tx)
                .await
                .map_err(err)?;
            }
        }
        let audits: Vec<&AuditEvent> = records.iter().flat_map(|r| r.audit.iter()).collect();
        DB::insert_audits(&mut tx, &audits).await.map_err(err)?;
        tx.commit().await.map_err(err)?;
        Ok(())
    }

    async fn webhook_deliveries(
        &self,
        subscription_id: &str,
        offset: i64,
        limit: i64,
    ) -> Result<(Vec<Delivery>, i64), StoreError> {
        let err = store_error;
        let total: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM webhook_deliveries WHERE subscription_id = $1")
            .bind(subscription_id)
            .fetch_one(&self.pool)
            .await
            .map_err(err)?;
        let rows: Vec<DeliveryRow> = sqlx::query_as(&format!(
            "SELECT {DELIVERY_SELECT} FROM webhook_deliveries WHERE subscription_id = $1 \
             ORDER BY created_at DESC, id LIMIT $2 OFFSET $3"
        ))
        .bind(subscription_id)
        .bind(limit)
        .bind(offset)
        .fetch_all(&self.pool)
        .await
        .map_err(err)?;
        let deliveries = rows.into_iter().map(webhooks::delivery_or_placeholder).collect();
        Ok((deliveries, total))
    }

    async fn webhook_redeliver(
        &self,
        subscription_id: &str,
        delivery_id: &str,
        now: Millis,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE webhook_deliveries SET status = 'pending', next_attempt_at = $2, delivered_at = NULL \
             WHERE id = $1 AND subscription_id = $3",
        )
        .bind(delivery_id)
        .bind(now)
        .bind(subscription_id)
        .execute(&self.pool)
        .await
        .map_err(store_error)?;
        Ok(DB::rows_affected(&done) > 0)
    }
}

#[async_trait]
impl<DB> StoreHealth for SqlStore<DB>
where
    DB: Dialect,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
{
    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await.map(|_| ()).map_err(store_error)
    }

    fn backend(&self) -> &'static str {
        DB::BACKEND
    }
}

#[cfg(test)]
mod prefix_tests {
    use super::prefix_end;

    /// Every text starting with the prefix sorts below the end, and the next text that does not start with it
    /// does not (byte order = code point order in UTF-8).
    #[test]
    fn the_end_of_a_prefix_range_is_its_last_character_plus_one() {
        assert_eq!(prefix_end("ab").as_deref(), Some("ac"));
        assert_eq!(prefix_end("a\u{D7FF}").as_deref(), Some("a\u{E000}"), "surrogates are no characters");
        assert_eq!(prefix_end("a\u{10FFFF}").as_deref(), Some("b"));
        assert_eq!(prefix_end("\u{10FFFF}"), None);
        let end = prefix_end("t-1").unwrap();
        assert!("t-1\u{10FFFF}zz" < end.as_str() && "t-2" >= end.as_str());
    }
}
