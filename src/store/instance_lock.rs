//! One service process per PostgreSQL database, until cluster mode.
//!
//! Why: each process keeps live tickets in memory and arms their SLA timers itself. Two processes on one
//! database answer from stale copies (one answered RUNNING for a ticket the other had COMPLETED), fire each
//! timer twice and publish every event twice. So a process takes a PostgreSQL session-level advisory lock
//! before it migrates or serves anything, and holds it for its whole life on a connection of its own. A second
//! process waits for it (a standby, up to `INSTANCE_LOCK_WAIT_SECONDS`: long enough for the previous pod of a
//! `Recreate` rollout to finish stopping), then refuses to start with a message naming the holder.
//!
//! PostgreSQL releases the lock when the holding session ends: a process that is killed, or whose connection
//! drops, gives it up at once. If this process's lock connection drops, it takes the lock again on a new one;
//! if another process took it meanwhile, this one stops (exit code 70) rather than serve beside it.

use std::time::Duration;

use anyhow::Context as _;
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions as _, Connection as _, PgConnection};

/// The advisory lock key: the first 8 bytes of "ticketsv" — fixed, so every version of the service agrees.
pub const KEY: i64 = i64::from_be_bytes(*b"ticketsv");

/// How often the holder checks that its lock connection is still there.
const CHECK_EVERY: Duration = Duration::from_secs(5);

/// The lock, held while this value lives (dropping it ends the session, which releases the lock).
pub struct InstanceLock {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for InstanceLock {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Who holds the lock, as PostgreSQL knows them (for the message).
async fn holder(conn: &mut PgConnection) -> String {
    let row: Option<(i32, Option<String>, Option<String>)> = sqlx::query_as(
        "SELECT a.pid, a.application_name, host(a.client_addr) FROM pg_locks l JOIN pg_stat_activity a USING (pid) \
         WHERE l.locktype = 'advisory' AND l.granted AND l.database = (SELECT oid FROM pg_database \
         WHERE datname = current_database()) AND l.classid = ($1 >> 32)::oid AND l.objid = ($1 & 4294967295)::oid \
         AND l.objsubid = 1",
    )
    .bind(KEY)
    .fetch_optional(conn)
    .await
    .unwrap_or(None);
    match row {
        Some((pid, app, addr)) => format!(
            "PostgreSQL backend pid {pid}, application {:?}, client {}",
            app.unwrap_or_default(),
            addr.unwrap_or_else(|| "local socket".into())
        ),
        None => "a session that just ended or is not visible to this role".into(),
    }
}

/// Try to take the lock on a new connection: the connection holding it, or `None` when another session holds it.
async fn try_take(options: &PgConnectOptions) -> anyhow::Result<Result<PgConnection, String>> {
    let mut conn = options.connect().await.context("connecting to PostgreSQL for the instance lock")?;
    let taken: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)").bind(KEY).fetch_one(&mut conn).await?;
    if taken {
        return Ok(Ok(conn));
    }
    let who = holder(&mut conn).await;
    let _ = conn.close().await;
    Ok(Err(who))
}

/// Take the lock, waiting up to `connect_timeout` for PostgreSQL to come up and up to `wait` for another
/// process to give the lock up.
pub async fn acquire(
    options: &PgConnectOptions,
    connect_timeout: Duration,
    wait: Duration,
) -> anyhow::Result<InstanceLock> {
    let options = options.clone().application_name(&application_name());
    let started = tokio::time::Instant::now();
    let deadline = started + wait;
    let mut announced = false;
    let conn = loop {
        let attempt = match try_take(&options).await {
            Err(e) if started.elapsed() < connect_timeout => {
                tracing::warn!(error = %format!("{e:#}"), "PostgreSQL not reachable yet; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            attempt => attempt?,
        };
        match attempt {
            Ok(conn) => break conn,
            Err(who) if tokio::time::Instant::now() < deadline => {
                if !announced {
                    tracing::warn!(holder = %who, wait_s = wait.as_secs(), "another ticket-supervisor process uses \
                        this database; waiting as a standby until it stops (one process per database until \
                        cluster mode)");
                    announced = true;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(who) => anyhow::bail!(
                "another ticket-supervisor process uses this database ({who}); until cluster mode only one \
                 process may serve a database: stop the other one (or run one replica with a Recreate rollout), \
                 then start this one"
            ),
        }
    };
    tracing::info!(key = KEY, "instance lock taken: this process serves the database");
    Ok(InstanceLock { task: tokio::spawn(hold(options, conn)) })
}

/// Keep the lock's session alive; take the lock again if the connection drops, and stop the process if
/// another one took it meanwhile.
async fn hold(options: PgConnectOptions, mut conn: PgConnection) {
    loop {
        tokio::time::sleep(CHECK_EVERY).await;
        if conn.ping().await.is_ok() {
            continue;
        }
        tracing::error!("the instance lock's connection dropped; taking the lock again");
        conn = loop {
            match try_take(&options).await {
                Ok(Ok(conn)) => break conn,
                Ok(Err(who)) => {
                    tracing::error!(holder = %who, "another process took the instance lock; stopping this one");
                    actix_rt::System::current().stop_with_code(70);
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "cannot take the instance lock again yet; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        };
        tracing::info!("instance lock taken again");
    }
}

/// `ticket-supervisor@<host>` for `pg_stat_activity`, so the holder of the lock can be found.
fn application_name() -> String {
    let host = std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()).unwrap_or_else(|| "unknown-host".into());
    format!("ticket-supervisor@{host}")
}
