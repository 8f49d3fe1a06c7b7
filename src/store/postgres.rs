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

super::sql_store!(PgTicketStore, sqlx::Postgres, "postgres");
