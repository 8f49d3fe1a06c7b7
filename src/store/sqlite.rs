//! Embedded ticket store: a SQLite file under `DATA_DIR`, so the service runs with zero setup.
//!
//! WAL journal with `synchronous = FULL`: a commit is on disk before the caller is answered, the same promise
//! the PostgreSQL store makes.

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::SqlitePool;

/// See the module docs.
#[derive(Clone)]
pub struct SqliteTicketStore {
    pool: SqlitePool,
}

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
        Ok(SqliteTicketStore { pool })
    }
}

impl SqliteTicketStore {
    /// Plain updates, one statement each (SQLite is in-process: a statement costs no round trip).
    async fn update_many(
        tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
        rows: &[(&actors::Ticket, i64)],
    ) -> Result<std::collections::HashSet<String>, sqlx::Error> {
        use super::row::{bind_lifecycle, LifecycleRow, UPDATE};
        let mut updated = std::collections::HashSet::with_capacity(rows.len());
        for (ticket, expected) in rows {
            let q = bind_lifecycle!(sqlx::query::<sqlx::Sqlite>(&UPDATE), LifecycleRow::from(*ticket)).bind(*expected);
            if q.execute(&mut **tx).await?.rows_affected() == 1 {
                updated.insert(ticket.ticket_id.clone());
            }
        }
        Ok(updated)
    }
}

super::sql_store!(SqliteTicketStore, sqlx::Sqlite, "embedded");
