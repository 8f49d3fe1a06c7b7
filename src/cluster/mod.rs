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

use actors::Router;
use sqlx::PgPool;

use crate::config::ClusterSettings;
use leases::Leases;

pub mod pb {
    tonic::include_proto!("ticket_cluster");
}

/// Metadata key of the shared secret on forwarded calls.
pub const SECRET_HEADER: &str = "x-cluster-secret";

/// This replica's membership, while it lasts.
pub struct Cluster {
    leases: Arc<Leases>,
    task: tokio::task::JoinHandle<()>,
}

impl Cluster {
    /// Join the cluster: register, take the shards that are this replica's (all of them when it is alone),
    /// load their SLA instants, and keep the leases renewed and balanced from now on.
    pub async fn join(
        pool: PgPool,
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
        events::start_relay(router.clone(), pool.clone());
        events::start_listener(router.clone(), pool.clone());
        let mut changes = router.webhooks().changes_here();
        let (announcer, member) = (pool.clone(), table.member().to_owned());
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
                match round.round().await {
                    Ok(moved) => {
                        router.metrics_shards_owned(table.local_shards().len());
                        if moved.gained.is_empty() && moved.lost.is_empty() {
                            continue;
                        }
                        tracing::info!(gained = moved.gained.len(), lost = moved.lost.len(), "shards moved");
                        // Off the lease loop: loading the gained shards' SLA instants may take longer than a lease.
                        let router = router.clone();
                        tokio::spawn(async move {
                            while let Err(e) = router.shards_moved(&moved).await {
                                tracing::warn!(error = %e, "could not load the SLA timers of gained shards; retrying");
                                tokio::time::sleep(Duration::from_secs(1)).await;
                            }
                        });
                    }
                    Err(e) => tracing::warn!(error = %e, "could not renew shard leases"),
                }
            }
        });
        Ok(Cluster { leases, task })
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
