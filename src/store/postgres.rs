//! PostgreSQL ticket store (production). Migrations from `migrations/postgres` are embedded and applied at
//! startup (sqlx takes an advisory lock, so replicas starting together do not race).

use std::time::Duration;

use anyhow::Context as _;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;

/// See the module docs.
#[derive(Clone)]
pub struct PgTicketStore {
    pool: PgPool,
}

impl PgTicketStore {
    /// Connect (retrying for up to `connect_timeout` while the server comes up) and migrate.
    pub async fn connect(options: PgConnectOptions, pool_size: u32, connect_timeout: Duration) -> anyhow::Result<Self> {
        let deadline = tokio::time::Instant::now() + connect_timeout;
        let pool = loop {
            let attempt = PgPoolOptions::new()
                .max_connections(pool_size.max(1))
                .acquire_timeout(Duration::from_secs(5))
                .connect_with(options.clone())
                .await;
            match attempt {
                Ok(pool) => break pool,
                Err(e) if tokio::time::Instant::now() < deadline => {
                    tracing::warn!(error = %e, "PostgreSQL not reachable yet; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(e) => return Err(e).context("connecting to PostgreSQL"),
            }
        };
        sqlx::migrate!("./migrations/postgres").run(&pool).await.context("applying PostgreSQL migrations")?;
        Ok(PgTicketStore { pool })
    }
}

impl PgTicketStore {
    /// All plain updates of a group commit in one statement (`UPDATE … FROM (VALUES …)`), each guarded by its
    /// expected version: one round trip instead of one per ticket.
    async fn update_many(
        tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
        rows: &[(&actors::Ticket, i64)],
    ) -> Result<std::collections::HashSet<String>, sqlx::Error> {
        use super::row::{LifecycleRow, LIFECYCLE};
        if rows.is_empty() {
            return Ok(Default::default());
        }
        let sets: Vec<String> = LIFECYCLE.iter().map(|c| format!("{c} = v.{c}")).collect();
        let mut q = sqlx::QueryBuilder::<sqlx::Postgres>::new(format!(
            "UPDATE execution_tickets AS t SET {} FROM (",
            sets.join(", ")
        ));
        q.push_values(rows, |mut b, (ticket, expected)| {
            let r = LifecycleRow::from(*ticket);
            b.push_bind(r.ticket_id).push_unseparated("::text");
            b.push_bind(r.status).push_unseparated("::text");
            b.push_bind(r.started_at).push_unseparated("::timestamptz");
            b.push_bind(r.completed_at).push_unseparated("::timestamptz");
            b.push_bind(r.actual_duration_ms).push_unseparated("::bigint");
            b.push_bind(r.retry_count).push_unseparated("::integer");
            b.push_bind(r.error_message).push_unseparated("::text");
            b.push_bind(r.compensation_ticket_id).push_unseparated("::text");
            b.push_bind(r.version).push_unseparated("::bigint");
            b.push_bind(r.updated_at).push_unseparated("::timestamptz");
            b.push_bind(r.sla_state).push_unseparated("::jsonb");
            b.push_bind(r.next_due_at).push_unseparated("::timestamptz");
            b.push_bind(*expected).push_unseparated("::bigint");
        });
        q.push(format!(
            ") AS v(ticket_id, {}, expected_version) \
             WHERE t.ticket_id = v.ticket_id AND t.version = v.expected_version RETURNING t.ticket_id",
            LIFECYCLE.join(", ")
        ));
        let ids: Vec<(String,)> = q.build_query_as().fetch_all(&mut **tx).await?;
        Ok(ids.into_iter().map(|(id,)| id).collect())
    }
}

super::sql_store!(PgTicketStore, sqlx::Postgres, "postgres");
