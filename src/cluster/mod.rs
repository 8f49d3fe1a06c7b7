//! Cluster mode: several replicas on one PostgreSQL database, each virtual shard of tickets served by exactly
//! one of them at a time (see `docs/ARCHITECTURE.md`, "Cluster").
//!
//! - `leases.rs`: membership and shard leases (with fencing epochs), balanced by rendezvous hashing;
//! - `forward.rs` / `service.rs`: a request for another replica's shard is forwarded to it over the internal
//!   gRPC service (`proto/cluster.proto`), on the gRPC port;
//! - `events.rs`: every replica's watchers see every commit; subscription changes reach every replica.
//!
//! The actor system sees only the `ShardTable` and the `Forwarder` port (`actors::ownership`,
//! `actors::forward`); every ticket write is fenced by the store (`ticket_fence`).

pub mod events;
pub mod forward;
pub mod leases;
pub mod service;

use std::sync::Arc;
use std::time::Duration;

use actors::ownership::Moved;
use actors::Router;
use sqlx::PgPool;

use crate::config::ClusterSettings;
use leases::Leases;

pub mod pb {
    tonic::include_proto!("ticket_cluster");
}

/// The shortest pause between two lease rounds.
const MIN_ROUND_GAP: Duration = Duration::from_millis(100);

/// Metadata key of the shared secret on forwarded calls.
pub const SECRET_HEADER: &str = "x-cluster-secret";

/// The advisory lock a process of a release before cluster mode holds alone for its whole life (its
/// `store/instance_lock.rs`; the first 8 bytes of "ticketsv").
const LEGACY_LOCK: i64 = i64::from_be_bytes(*b"ticketsv");

/// Keep processes of a release before cluster mode out: they hold the database alone and know nothing of leases or
/// fences, so one running beside the cluster would answer from stale copies and fire timers twice. Every replica
/// holds the legacy lock *shared* on a connection of its own for its life: an old process (which takes it
/// exclusively) waits, and a replica that finds an old one running refuses to start, naming the way out.
pub async fn keep_legacy_processes_out(
    options: &sqlx::postgres::PgConnectOptions,
) -> anyhow::Result<sqlx::PgConnection> {
    use anyhow::Context as _;
    use sqlx::ConnectOptions as _;
    let mut conn = options.connect().await.context("connecting to PostgreSQL for the legacy lock")?;
    let shared: bool =
        sqlx::query_scalar("SELECT pg_try_advisory_lock_shared($1)").bind(LEGACY_LOCK).fetch_one(&mut conn).await?;
    if !shared {
        anyhow::bail!(
            "a ticket-supervisor process of a release before cluster mode serves this database (it holds the \
             database alone and is not fenced): stop it first — scale the old Deployment to 0, or roll out once \
             with the Recreate strategy — then start the replicas"
        );
    }
    Ok(conn)
}

/// This replica's membership, while it lasts.
pub struct Cluster {
    leases: Arc<Leases>,
    task: tokio::task::JoinHandle<()>,
    /// Holds the legacy lock shared (see [`keep_legacy_processes_out`]).
    _legacy: sqlx::PgConnection,
}

impl Cluster {
    /// Join the cluster: register, take the shards that are this replica's (all of them when it is alone),
    /// load their SLA instants, and keep the leases renewed and balanced from now on.
    pub async fn join(
        pool: PgPool,
        events_pool: PgPool,
        legacy: sqlx::PgConnection,
        router: Router,
        settings: &ClusterSettings,
        address: String,
    ) -> anyhow::Result<Cluster> {
        let table = Arc::clone(router.ownership());
        let leases = Arc::new(Leases::new(pool.clone(), Arc::clone(&table), address.clone(), settings.lease_ttl));
        let moved = leases.round().await?;
        router.shards_moved(&moved).await?;
        router.metrics_shards_owned(table.local_shards().len());
        tracing::info!(member = %table.member(), %address, shards = moved.gained.len(), "joined the cluster");
        // Events on a pool of their own: the listener holds one connection for good, and the relay's NOTIFYs must
        // not delay a lease renewal.
        events::start_relay(router.clone(), events_pool.clone());
        events::start_listener(router.clone(), events_pool.clone());
        let mut changes = router.webhooks().changes_here();
        let (announcer, member) = (events_pool, table.member().to_owned());
        tokio::spawn(async move {
            while changes.changed().await.is_ok() {
                events::announce_webhooks(&announcer, &member).await;
            }
        });
        let every = settings.renew_every;
        let round = Arc::clone(&leases);
        let task = tokio::spawn(async move {
            loop {
                table.refresh_requested(every).await;
                // Asked for by every request that met a moving shard: at most one extra round per 100 ms.
                tokio::time::sleep(MIN_ROUND_GAP).await;
                match round.round().await {
                    Ok(moved) => {
                        router.metrics_shards_owned(table.local_shards().len());
                        if moved.gained.is_empty() && moved.lost.is_empty() {
                            continue;
                        }
                        tracing::info!(gained = moved.gained.len(), lost = moved.lost.len(), "shards moved");
                        // Lost shards' actors and timers go now; the gained shards' SLA instants load off the lease
                        // loop (it may take longer than a lease), retried alone (a retry must not drop a shard
                        // gained again meanwhile).
                        let lost = Moved { lost: moved.lost, gained: Vec::new() };
                        let _ = router.shards_moved(&lost).await;
                        let gained = Moved { lost: Vec::new(), gained: moved.gained };
                        let router = router.clone();
                        tokio::spawn(async move {
                            while let Err(e) = router.shards_moved(&gained).await {
                                tracing::warn!(error = %e, "could not load the SLA timers of gained shards; retrying");
                                tokio::time::sleep(Duration::from_secs(1)).await;
                            }
                        });
                    }
                    Err(e) => tracing::warn!(error = %e, "could not renew shard leases"),
                }
            }
        });
        Ok(Cluster { leases, task, _legacy: legacy })
    }

    /// Leave: hand every shard off (successors take them at once) and deregister. Rounds go on reading the leases
    /// until the process ends, so requests still arriving here are forwarded to the successors.
    pub async fn leave(&self) {
        if let Err(e) = self.leases.leave().await {
            tracing::warn!(error = %e, "could not hand shards off; they move when their leases expire");
        }
        self.leases.table().request_refresh();
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.task.abort();
    }
}
