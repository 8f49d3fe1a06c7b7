//! Embedded ticket store: a SQLite file under `DATA_DIR`, so the service runs with zero setup.
//!
//! WAL journal with `synchronous = FULL`: a commit is on disk before the caller is answered, the same promise
//! the PostgreSQL store makes.

use std::path::Path;
use std::sync::LazyLock;
use std::time::Duration;

use anyhow::Context as _;
use sqlx::query::{Query, QueryAs};
use sqlx::sqlite::{
    SqliteArguments, SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteQueryResult, SqliteSynchronous,
};
use sqlx::Sqlite;

use super::row::{bind_lifecycle, bind_row, LifecycleRow, TicketRow, AUDIT_COLUMNS, COLUMNS, UPDATE};
use super::{Dialect, SqlStore};

/// See the module docs.
pub type SqliteTicketStore = SqlStore<Sqlite>;

impl SqliteTicketStore {
    /// Open (creating if needed) `dir/tickets.db` and migrate it.
    pub async fn open(dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating data directory {}", dir.display()))?;
        let options = SqliteConnectOptions::new()
            .filename(dir.join("tickets.db"))
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(5));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await
            .with_context(|| format!("opening the embedded store in {}", dir.display()))?;
        sqlx::migrate!("./migrations/sqlite").run(&pool).await.context("applying SQLite migrations")?;
        Ok(SqlStore::new(pool, 0))
    }
}

impl Dialect for Sqlite {
    const BACKEND: &'static str = "embedded";

    /// One writer at a time: rows commit in `seq` order, every `txid` is 0, and nothing needs holding back.
    const OUTBOX_HORIZON: &'static str = "9223372036854775807";

    const DEPENDENTS: &'static str = "SELECT DISTINCT f.value, t.ticket_id FROM json_each($1) f \
        JOIN execution_tickets t ON t.status = 'PENDING' \
        AND EXISTS (SELECT 1 FROM json_each(t.dependencies) d WHERE d.value = f.value)";
    const DEPENDS_ON: (&'static str, &'static str) =
        ("EXISTS (SELECT 1 FROM json_each(execution_tickets.dependencies) WHERE value = ", ")");

    fn select_many_sql() -> &'static str {
        static SQL: LazyLock<String> =
            LazyLock::new(|| format!("{} WHERE ticket_id IN (SELECT value FROM json_each($1))", *super::row::SELECT));
        &SQL
    }

    fn audit_pending_sql() -> &'static str {
        static SQL: LazyLock<String> = LazyLock::new(|| super::audit_pending_sql(Sqlite::OUTBOX_HORIZON));
        &SQL
    }

    /// Without a JSON index, the ids every unfinished ticket depends on are read once per statement (unfinished
    /// tickets are found by the status index) rather than searched for each candidate.
    fn prune_tickets_sql() -> &'static str {
        static SQL: LazyLock<String> = LazyLock::new(|| {
            use super::retention::UNFINISHED;
            super::retention::prune_tickets_sql(&format!(
                "c.ticket_id NOT IN (SELECT j.value FROM execution_tickets d, json_each(d.dependencies) j \
                 WHERE d.status IN {UNFINISHED} AND d.dependencies <> '[]') \
                 AND c.ticket_id NOT IN (SELECT o.compensation_ticket_id FROM execution_tickets o \
                 WHERE o.status = 'COMPENSATING' AND o.compensation_ticket_id IS NOT NULL)",
                UNFINISHED = *UNFINISHED
            ))
        });
        &SQL
    }

    /// One process per file.
    const PRUNE_GUARD: Option<&'static str> = None;

    /// Plain updates, one statement each (SQLite is in-process: a statement costs no round trip).
    async fn update_many(
        tx: &mut sqlx::Transaction<'_, Sqlite>,
        rows: &[(&actors::Ticket, i64)],
    ) -> Result<std::collections::HashSet<String>, sqlx::Error> {
        let mut updated = std::collections::HashSet::with_capacity(rows.len());
        for (ticket, expected) in rows {
            let q = bind_lifecycle(sqlx::query::<Sqlite>(&UPDATE), LifecycleRow::from(*ticket)).bind(*expected);
            if q.execute(&mut **tx).await?.rows_affected() == 1 {
                updated.insert(ticket.ticket_id.clone());
            }
        }
        Ok(updated)
    }

    /// New tickets in multi-row `INSERT … ON CONFLICT DO NOTHING RETURNING ticket_id`: the ids inserted
    /// (an id missing from the answer was taken).
    async fn insert_many(
        tx: &mut sqlx::Transaction<'_, Sqlite>,
        rows: &[(usize, &actors::Ticket)],
    ) -> Result<std::collections::HashSet<String>, sqlx::Error> {
        let mut inserted = std::collections::HashSet::with_capacity(rows.len());
        // SQLite caps the parameters of one statement at 32 766.
        for chunk in rows.chunks(800) {
            let mut q =
                sqlx::QueryBuilder::<Sqlite>::new(format!("INSERT INTO execution_tickets ({}) ", COLUMNS.join(", ")));
            q.push_values(chunk, |mut b, (_, t)| {
                bind_row(&mut b, TicketRow::from(*t));
            });
            q.push(" ON CONFLICT (ticket_id) DO NOTHING RETURNING ticket_id");
            let ids: Vec<(String,)> = q.build_query_as().fetch_all(&mut **tx).await?;
            inserted.extend(ids.into_iter().map(|(id,)| id));
        }
        Ok(inserted)
    }

    /// One process per `DATA_DIR` (`store/data_dir_lock.rs`): nothing is ever fenced out.
    async fn fenced_out(
        _: &mut sqlx::Transaction<'_, Sqlite>,
        _: &actors::store::Fence,
    ) -> Result<std::collections::HashSet<u16>, sqlx::Error> {
        Ok(std::collections::HashSet::new())
    }

    /// Audit records into the outbox, many per statement.
    async fn insert_audits(
        tx: &mut sqlx::Transaction<'_, Sqlite>,
        events: &[&actors::history::AuditEvent],
    ) -> Result<(), sqlx::Error> {
        for chunk in events.chunks(2000) {
            let mut q = sqlx::QueryBuilder::<Sqlite>::new(format!("INSERT INTO ticket_events ({AUDIT_COLUMNS}) "));
            q.push_values(chunk, |mut b, e| {
                b.push_bind(e.event_id.clone())
                    .push_bind(e.ticket_id.clone())
                    .push_bind(e.kind.clone())
                    .push_bind(e.from_status.clone())
                    .push_bind(e.to_status.clone())
                    .push_bind(e.version)
                    .push_bind(e.actor.clone())
                    .push_bind(e.at)
                    .push_bind(sqlx::types::Json(e.details.clone()))
                    .push_bind(e.traceparent.clone());
            });
            q.build().execute(&mut **tx).await?;
        }
        Ok(())
    }

    fn rows_affected(result: &SqliteQueryResult) -> u64 {
        result.rows_affected()
    }

    fn shorten<'q, 'a: 'q>(query: Query<'q, Sqlite, SqliteArguments<'a>>) -> Query<'q, Sqlite, SqliteArguments<'q>> {
        query
    }

    fn shorten_as<'q, 'a: 'q, O>(
        query: QueryAs<'q, Sqlite, O, SqliteArguments<'a>>,
    ) -> QueryAs<'q, Sqlite, O, SqliteArguments<'q>> {
        query
    }
}
