//! The lease manager: membership, shard leases and their balance, in PostgreSQL.
//!
//! Every `renew_every` (or at once when another replica announces a change, or a request met a replica that no
//! longer owns its shard) one round:
//! 1. heartbeat this member's row (`cluster_members`);
//! 2. renew every lease it holds (`expires_at = now() + ttl`; a lease taken over meanwhile is not renewed);
//! 3. read the live members (heartbeat within the TTL) and all 256 leases (a member the others may have thought
//!    absent announces `joined:<member>` after its heartbeat; whether others are live decides whether commits
//!    are relayed to them, see `cluster/events.rs`);
//! 4. decide who should own each shard: the live member with the highest rendezvous score
//!    `fnv1a(member ∥ shard)` — every replica computes the same answer, shards spread evenly, and when a member
//!    joins or leaves only its share moves;
//! 5. give up the shards that should be another live member's (locally first, then `expires_at = -infinity`,
//!    keeping the owner, so the successor knows whose in-flight commits to wait for), and take those that should
//!    be its own and are free (released or expired): in one transaction, the lease rows `FOR UPDATE`, then the
//!    previous owners' member rows `FOR UPDATE` (which waits for their commits in flight: each holds a
//!    KEY SHARE lock on its member row, see `ticket_fence`), then `epoch = epoch + 1`;
//! 6. publish the result in the [`ShardTable`] (local leases valid until the round's start + TTL − margin, by
//!    this process's monotonic clock) and tell the router what moved.
//!
//! A round that fails (database unreachable) changes nothing; the local leases lapse on their own when no round
//! renews them, and the router then stops serving their shards.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actors::ownership::{Moved, Owner, ShardTable, VIRTUAL_SHARDS};
use actors::routing::fnv1a;
use sqlx::PgPool;

/// Channel of cluster announcements (`leases`, `joined:<member>`, `webhooks:<member>`); see `cluster/events.rs`.
pub const CHANNEL: &str = "ticket_cluster";

/// Announced by a member the others may have thought absent (new, or back from a pause): they relay their
/// commits to it from now on.
pub const JOINED: &str = "joined:";

/// Announced by a member that changed webhook subscriptions: the others reload theirs.
pub const WEBHOOKS: &str = "webhooks:";

/// Local leases end this long before the database's `expires_at` could, measured from before the renewal was
/// sent: room for the two clocks' rates to differ.
const MARGIN: Duration = Duration::from_millis(500);

/// See the module docs.
pub struct Leases {
    pool: PgPool,
    table: Arc<ShardTable>,
    address: String,
    ttl: Duration,
    /// Set by [`leave`](Self::leave): rounds then only read the leases (so requests still arriving here are
    /// forwarded to the successors), never heartbeat, renew or take.
    leaving: std::sync::atomic::AtomicBool,
    /// One round or leave at a time: a round that began before a leave must not take or serve anything after it.
    turn: tokio::sync::Mutex<()>,
}

/// The member that should own `shard` among `members` (rendezvous hashing: the highest score wins). The score
/// mixes the member's hash with the shard through SplitMix64's finalizer: FNV alone barely changes its high bits
/// for the last bytes of a key, so members with similar ids would win every shard.
pub fn desired_owner<'a>(shard: u16, members: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    members
        .into_iter()
        .max_by_key(|m| (mix(fnv1a(m.as_bytes()) ^ u64::from(shard).wrapping_mul(0x9e37_79b9_7f4a_7c15)), *m))
}

/// SplitMix64's finalizer: every input bit moves every output bit.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl Leases {
    pub fn new(pool: PgPool, table: Arc<ShardTable>, address: String, ttl: Duration) -> Self {
        Leases {
            pool,
            table,
            address,
            ttl,
            leaving: std::sync::atomic::AtomicBool::new(false),
            turn: tokio::sync::Mutex::new(()),
        }
    }

    fn me(&self) -> &str {
        self.table.member()
    }

    pub fn table(&self) -> &ShardTable {
        &self.table
    }

    /// Register (or re-register) this member. True when the others saw it as absent until now: it is new, or its
    /// last heartbeat was older than the TTL (a pause, a database outage).
    async fn heartbeat(&self) -> Result<bool, sqlx::Error> {
        // The CTE reads the row as it was before this statement.
        sqlx::query_scalar(
            "WITH before AS (SELECT heartbeat_at FROM cluster_members WHERE member_id = $1) \
             INSERT INTO cluster_members (member_id, address) VALUES ($1, $2) \
             ON CONFLICT (member_id) DO UPDATE SET heartbeat_at = now(), address = EXCLUDED.address \
             RETURNING coalesce((SELECT heartbeat_at <= now() - $3 * interval '1 millisecond' FROM before), true)",
        )
        .bind(self.me())
        .bind(&self.address)
        .bind(millis(self.ttl))
        .fetch_one(&self.pool)
        .await
    }

    /// One round (see the module docs); what moved for this replica.
    pub async fn round(&self) -> Result<Moved, sqlx::Error> {
        let _turn = self.turn.lock().await;
        let outcome = self.try_round().await;
        self.table.set_reachable(outcome.is_ok());
        outcome
    }

    async fn try_round(&self) -> Result<Moved, sqlx::Error> {
        let started = Instant::now();
        let me = self.me().to_owned();
        let ttl_ms = millis(self.ttl);
        let leaving = self.leaving.load(std::sync::atomic::Ordering::SeqCst);
        if leaving {
            let leases = self.leases().await?;
            let members: Vec<(String, String)> =
                sqlx::query_as("SELECT member_id, address FROM cluster_members").fetch_all(&self.pool).await?;
            let address: HashMap<&str, &str> = members.iter().map(|m| (m.0.as_str(), m.1.as_str())).collect();
            return Ok(self.table.set(owners(&leases, "", &address), started));
        }
        if self.heartbeat().await? {
            // The others stop relaying their commits to a replica they think absent: tell them at once.
            self.announce(&format!("{JOINED}{me}")).await;
        }
        sqlx::query(
            "UPDATE shard_leases SET expires_at = now() + $2 * interval '1 millisecond' \
             WHERE owner = $1 AND expires_at > '-infinity'",
        )
        .bind(&me)
        .bind(ttl_ms)
        .execute(&self.pool)
        .await?;
        let peers_seen = self.table.peers_seen();
        let members: Vec<(String, String, bool)> = sqlx::query_as(
            "SELECT member_id, address, heartbeat_at > now() - $1 * interval '1 millisecond' FROM cluster_members",
        )
        .bind(ttl_ms)
        .fetch_all(&self.pool)
        .await?;
        let live: Vec<&str> = members.iter().filter(|m| m.2).map(|m| m.0.as_str()).collect();
        self.table.set_peers(live.iter().any(|m| *m != me), peers_seen);
        self.table.set_dead(members.iter().filter(|m| !m.2).map(|m| Arc::from(m.0.as_str())).collect());
        let address: HashMap<&str, &str> = members.iter().map(|m| (m.0.as_str(), m.1.as_str())).collect();
        let leases = self.leases().await?;
        let mut release = Vec::new();
        let mut take = Vec::new();
        for (shard, owner, _, valid) in &leases {
            let shard = *shard as u16;
            let should = desired_owner(shard, live.iter().copied()).unwrap_or(&me);
            let mine = owner.as_deref() == Some(me.as_str()) && *valid;
            if mine && should != me {
                release.push(shard);
            } else if !*valid && should == me {
                take.push(i32::from(shard));
            }
        }
        if !release.is_empty() {
            self.release(&release).await?;
        }
        // A take that fails (a previous owner's commit holds its member row past the lock timeout) is tried again
        // next round; the renewals above still count.
        if !take.is_empty() {
            if let Err(e) = self.take(&take).await {
                tracing::warn!(error = %e, shards = take.len(), "could not take free shards yet; trying again next round");
            }
        }
        let leases = if release.is_empty() && take.is_empty() { leases } else { self.leases().await? };
        Ok(self.table.set(owners(&leases, &me, &address), started + self.ttl.saturating_sub(MARGIN)))
    }

    /// Every lease: (shard, owner, epoch, valid now).
    async fn leases(&self) -> Result<Vec<(i32, Option<String>, i64, bool)>, sqlx::Error> {
        let leases: Vec<(i32, Option<String>, i64, bool)> =
            sqlx::query_as("SELECT shard, owner, epoch, expires_at > now() FROM shard_leases ORDER BY shard")
                .fetch_all(&self.pool)
                .await?;
        if leases.len() != usize::from(VIRTUAL_SHARDS) {
            return Err(sqlx::Error::Protocol(format!("shard_leases has {} rows, not 256", leases.len())));
        }
        Ok(leases)
    }

    /// Give up `shards`: stop serving them here at once, then mark the leases free for the successor.
    async fn release(&self, shards: &[u16]) -> Result<(), sqlx::Error> {
        self.table.give_up(shards);
        let ids: Vec<i32> = shards.iter().map(|s| i32::from(*s)).collect();
        sqlx::query("UPDATE shard_leases SET expires_at = '-infinity' WHERE owner = $1 AND shard = ANY($2)")
            .bind(self.me())
            .bind(&ids)
            .execute(&self.pool)
            .await?;
        tracing::info!(shards = shards.len(), "shards handed off");
        self.announce("leases").await;
        Ok(())
    }

    /// Take the free ones of `shards` (see the module docs, step 5).
    async fn take(&self, shards: &[i32]) -> Result<(), sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        // A replica paused in the middle of a commit holds its member row: do not wait for it for ever (its
        // session ends by `idle_in_transaction_session_timeout`; the next round tries again).
        sqlx::query("SET LOCAL lock_timeout = '2s'").execute(&mut *tx).await?;
        let free: Vec<(i32, Option<String>)> = sqlx::query_as(
            "SELECT shard, owner FROM shard_leases WHERE shard = ANY($1) AND expires_at <= now() FOR UPDATE",
        )
        .bind(shards)
        .fetch_all(&mut *tx)
        .await?;
        if free.is_empty() {
            return Ok(());
        }
        let mut previous: Vec<String> = free.iter().filter_map(|(_, o)| o.clone()).collect();
        previous.sort();
        previous.dedup();
        sqlx::query("SELECT 1 FROM cluster_members WHERE member_id = ANY($1) ORDER BY member_id FOR UPDATE")
            .bind(&previous)
            .execute(&mut *tx)
            .await?;
        let ids: Vec<i32> = free.iter().map(|(s, _)| *s).collect();
        sqlx::query(
            "UPDATE shard_leases SET owner = $1, epoch = epoch + 1, \
             expires_at = now() + $2 * interval '1 millisecond' WHERE shard = ANY($3)",
        )
        .bind(self.me())
        .bind(millis(self.ttl))
        .bind(&ids)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        tracing::info!(shards = ids.len(), from = ?previous, "shards taken over");
        Ok(())
    }

    /// Leave the cluster (graceful shutdown): give up every shard, announce it, and remove this member's row
    /// (which waits for this replica's commits still in flight). Rounds go on reading the leases.
    pub async fn leave(&self) -> Result<(), sqlx::Error> {
        let _turn = self.turn.lock().await;
        self.leaving.store(true, std::sync::atomic::Ordering::SeqCst);
        let mine = self.table.local_shards();
        self.table.leave();
        sqlx::query("UPDATE shard_leases SET expires_at = '-infinity' WHERE owner = $1")
            .bind(self.me())
            .execute(&self.pool)
            .await?;
        self.announce("leases").await;
        sqlx::query("DELETE FROM cluster_members WHERE member_id = $1").bind(self.me()).execute(&self.pool).await?;
        self.announce("leases").await;
        tracing::info!(shards = mine.len(), "left the cluster: shards handed off");
        Ok(())
    }

    /// Tell the other replicas (`LISTEN ticket_cluster`) to look again now.
    async fn announce(&self, what: &str) {
        announce(&self.pool, what).await;
    }
}

/// Announce `what` on the cluster channel (`leases`, `joined:<member>`, `webhooks:<member>`; see `cluster/events.rs`).
pub async fn announce(pool: &PgPool, what: &str) {
    if let Err(e) = sqlx::query("SELECT pg_notify($1, $2)").bind(CHANNEL).bind(what).execute(pool).await {
        tracing::warn!(error = %e, what, "could not announce a cluster change");
    }
}

/// The table's view of `leases`: this member's valid leases local, other members' remote (at their address).
fn owners(leases: &[(i32, Option<String>, i64, bool)], me: &str, address: &HashMap<&str, &str>) -> Vec<Owner> {
    leases
        .iter()
        .map(|(_, owner, epoch, valid)| match owner.as_deref() {
            Some(o) if *valid && o == me => Owner::Local { epoch: *epoch },
            Some(o) if *valid => match address.get(o) {
                Some(a) => Owner::Remote { member: Arc::from(o), address: Arc::from(*a) },
                None => Owner::Unknown,
            },
            _ => Owner::Unknown,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_spread_evenly_and_a_leaving_member_moves_only_its_own() {
        // Ids as the service makes them: the host name and a random suffix.
        let three = ["replica-583e2734", "replica-583e2f10", "replica-9a0b1c2d"];
        let mut count: HashMap<&str, usize> = HashMap::new();
        for s in 0..VIRTUAL_SHARDS {
            *count.entry(desired_owner(s, three).unwrap()).or_default() += 1;
        }
        assert!(count.values().all(|n| (60..=110).contains(n)), "{count:?}");
        for s in 0..VIRTUAL_SHARDS {
            let before = desired_owner(s, three).unwrap();
            let after = desired_owner(s, [three[0], three[2]]).unwrap();
            assert!(before == three[1] || before == after, "shard {s} moved from {before} to {after}");
        }
        assert_eq!(desired_owner(0, []), None);
    }
}
