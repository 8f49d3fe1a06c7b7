//! Which replica owns each virtual shard of tickets: the one table every routing and commit decision reads.
//!
//! Tickets are spread over [`VIRTUAL_SHARDS`] virtual shards (`vshard_of`), a number fixed for good and
//! independent of how many replicas or local shard actors there are. In cluster mode (PostgreSQL) each virtual
//! shard has one owning replica at a time, holding a lease at an *epoch* that grows on every change of owner;
//! the service's lease manager (`src/cluster/`) keeps this table in step with the leases and tells the router
//! which shards it gained or lost. A replica serves a shard only while its lease is valid by its own monotonic
//! clock (renewed before `valid_until`); after that it answers as if it did not own it, so a paused or cut-off
//! replica stops answering from memory before anyone else can take the shard over. Every commit of a ticket
//! carries the epoch this table gives for its shard, and the store refuses it unless the lease is still held at
//! that epoch (the fence; see `Tickets::commit`).
//!
//! On the embedded store (one process) the table is [`ShardTable::single`]: every shard is local, epoch 0,
//! forever, and nothing is fenced.

use std::sync::{Arc, RwLock};
use std::time::Instant;

use crate::system::routing::slot_of;

/// Virtual shards of tickets, for ever: a ticket's shard is `fnv1a(id) % 256`, so changing this number would
/// move every ticket.
pub const VIRTUAL_SHARDS: u16 = 256;

/// The virtual shard of ticket `id`.
pub fn vshard_of(id: &str) -> u16 {
    slot_of(id, VIRTUAL_SHARDS as usize) as u16
}

/// The index, among `n` local shard actors, of the one for ticket `id`: its virtual shard modulo `n`, so a
/// virtual shard lives in one shard actor and can be dropped from it at once.
pub fn local_shard(id: &str, n: usize) -> usize {
    usize::from(vshard_of(id)) % n.max(1)
}

/// Who serves a virtual shard, as this replica knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    /// This replica, with its lease at this epoch.
    Local { epoch: i64 },
    /// Another replica, reached at `address` (its internal gRPC endpoint).
    Remote { member: Arc<str>, address: Arc<str> },
    /// Nobody holds a valid lease (a hand-off or a failover is under way), or this replica's lease lapsed.
    Unknown,
}

#[derive(Debug, Clone)]
struct Slot {
    owner: Owner,
    /// Local leases only: serve until then (None: for ever, the embedded store).
    valid_until: Option<Instant>,
}

/// See the module docs. Shared by the router, the shards, the persistence actors and the lease manager.
#[derive(Debug)]
pub struct ShardTable {
    member: Arc<str>,
    clustered: bool,
    slots: RwLock<Vec<Slot>>,
    /// Bumped on every change, so a request waiting for an owner wakes up when one is known.
    changed: tokio::sync::watch::Sender<u64>,
    /// Asks the lease manager to look at the leases again now (a forward met a replica that no longer owns).
    refresh: tokio::sync::Notify,
    /// Whether the lease manager's last round reached the database. While it does not, a request for a shard
    /// without an owner fails at once (as every request does during a database outage) instead of waiting.
    reachable: std::sync::atomic::AtomicBool,
    /// Shards given up (hand-off) whose actors and timers are still in memory: the next [`set`](Self::set)
    /// reports them lost, so the router drops them.
    given_up: std::sync::Mutex<Vec<u16>>,
    /// Members whose heartbeat stopped (crashed, paused, cut off): a forward to one of them is not waited for.
    dead: RwLock<std::collections::HashSet<Arc<str>>>,
    /// Whether other replicas may be running (bit 0, see [`has_peers`](Self::has_peers)), and above it a count of
    /// the newcomers heard, so that a lease round that read the members before one joined cannot undo it.
    peers: std::sync::atomic::AtomicU64,
    /// Set once this replica leaves: nothing becomes local again.
    leaving: std::sync::atomic::AtomicBool,
}

/// What a change of the table did to this replica.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Moved {
    /// Shards this replica serves from now on (its SLA instants must be loaded).
    pub gained: Vec<u16>,
    /// Shards it no longer serves (its actors and timers must go at once).
    pub lost: Vec<u16>,
}

impl ShardTable {
    /// One process owns everything (the embedded store).
    pub fn single() -> Arc<Self> {
        let slot = Slot { owner: Owner::Local { epoch: 0 }, valid_until: None };
        Self::with(Arc::from("single"), false, slot)
    }

    /// A cluster member `member` that owns nothing yet.
    pub fn clustered(member: &str) -> Arc<Self> {
        Self::with(Arc::from(member), true, Slot { owner: Owner::Unknown, valid_until: None })
    }

    fn with(member: Arc<str>, clustered: bool, slot: Slot) -> Arc<Self> {
        Arc::new(ShardTable {
            member,
            clustered,
            slots: RwLock::new(vec![slot; VIRTUAL_SHARDS as usize]),
            changed: tokio::sync::watch::channel(0).0,
            refresh: tokio::sync::Notify::new(),
            reachable: std::sync::atomic::AtomicBool::new(true),
            given_up: std::sync::Mutex::new(Vec::new()),
            dead: RwLock::new(std::collections::HashSet::new()),
            peers: std::sync::atomic::AtomicU64::new(1),
            leaving: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// This replica's member id.
    pub fn member(&self) -> &str {
        &self.member
    }

    /// Whether ownership is shared with other replicas (and commits are fenced).
    pub fn is_clustered(&self) -> bool {
        self.clustered
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Vec<Slot>> {
        self.slots.read().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Vec<Slot>> {
        self.slots.write().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Who serves `shard` now. A local lease past its `valid_until` reads as `Unknown`.
    pub fn owner(&self, shard: u16) -> Owner {
        let slots = self.read();
        let slot = &slots[usize::from(shard) % slots.len()];
        match (&slot.owner, slot.valid_until) {
            (Owner::Local { .. }, Some(until)) if Instant::now() >= until => Owner::Unknown,
            (owner, _) => owner.clone(),
        }
    }

    /// The epoch of this replica's valid lease on `shard`, if it has one.
    pub fn local_epoch(&self, shard: u16) -> Option<i64> {
        match self.owner(shard) {
            Owner::Local { epoch } => Some(epoch),
            _ => None,
        }
    }

    /// Whether this replica serves `shard` now.
    pub fn is_local(&self, shard: u16) -> bool {
        self.local_epoch(shard).is_some()
    }

    /// Replace the whole table (the lease manager, after reading the leases): `owners[s]` for every shard, local
    /// ones valid until `valid_until`. Returns what moved for this replica.
    pub fn set(&self, owners: Vec<Owner>, valid_until: Instant) -> Moved {
        let mut moved = Moved::default();
        let leaving = self.leaving.load(std::sync::atomic::Ordering::SeqCst);
        let mut given_up =
            std::mem::take(&mut *self.given_up.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
        let mut any_change = !given_up.is_empty();
        {
            let mut slots = self.write();
            for (shard, (slot, owner)) in slots.iter_mut().zip(owners).enumerate() {
                let shard = shard as u16;
                // A replica that leaves serves nothing again, whatever a round that began before says.
                let owner = match owner {
                    Owner::Local { .. } if leaving => Owner::Unknown,
                    owner => owner,
                };
                // A lapsed lease still counts as held here: its actors are still in memory, and if the lease
                // comes back at the same epoch nobody else wrote meanwhile, so they are still right.
                let was = match &slot.owner {
                    Owner::Local { epoch } => Some(*epoch),
                    _ => None,
                };
                let now = match &owner {
                    Owner::Local { epoch } => Some(*epoch),
                    _ => None,
                };
                // Given up earlier (its actors still in memory): lost now, and gained again if it came back.
                let was = if given_up.contains(&shard) {
                    moved.lost.push(shard);
                    None
                } else {
                    was
                };
                any_change |= slot.owner != owner;
                match (was, now) {
                    (None, Some(_)) => moved.gained.push(shard),
                    (Some(_), None) => moved.lost.push(shard),
                    // A new epoch is a new lease: whatever was in memory may be stale.
                    (Some(a), Some(b)) if a != b => {
                        moved.lost.push(shard);
                        moved.gained.push(shard);
                    }
                    _ => {}
                }
                let valid_until = now.map(|_| valid_until);
                *slot = Slot { owner, valid_until };
            }
        }
        given_up.clear();
        // Only a real change wakes the requests waiting for one (a renewal changes nothing they wait for).
        if any_change {
            self.changed.send_modify(|n| *n = n.wrapping_add(1));
        }
        moved
    }

    /// Whether this replica holds `shard` in memory (its lease may have lapsed locally and come back at the same
    /// epoch): its SLA instants are still this replica's to fire once it is served again.
    pub fn held(&self, shard: u16) -> bool {
        let slots = self.read();
        matches!(slots[usize::from(shard) % slots.len()].owner, Owner::Local { .. })
    }

    /// The members whose heartbeat stopped, as the lease manager last saw them.
    pub fn set_dead(&self, dead: std::collections::HashSet<Arc<str>>) {
        *self.dead.write().unwrap_or_else(std::sync::PoisonError::into_inner) = dead;
    }

    /// Whether `member`'s heartbeat stopped.
    pub fn is_dead(&self, member: &str) -> bool {
        self.dead.read().unwrap_or_else(std::sync::PoisonError::into_inner).contains(member)
    }

    /// Whether another replica may be running: a live member besides this one in the lease manager's last round,
    /// or one heard of since ([`peer_joined`](Self::peer_joined)). While there is none, this replica's commits are
    /// not relayed to the others (`cluster/events.rs`). True until the first round says otherwise.
    pub fn has_peers(&self) -> bool {
        self.peers.load(std::sync::atomic::Ordering::Acquire) & 1 == 1
    }

    /// What a lease round notes before it reads the members, to hand back to [`set_peers`](Self::set_peers).
    pub fn peers_seen(&self) -> u64 {
        self.peers.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The lease round's answer: whether it read another live member. "None" counts only if nobody joined since
    /// `seen` ([`peers_seen`](Self::peers_seen), taken before the members were read).
    pub fn set_peers(&self, peers: bool, seen: u64) {
        use std::sync::atomic::Ordering;
        if peers {
            self.peers.fetch_or(1, Ordering::AcqRel);
        } else {
            let _ = self.peers.compare_exchange(seen, seen & !1, Ordering::AcqRel, Ordering::Acquire);
        }
    }

    /// Another replica announced itself (or announcements may have been missed): relay to it from now on.
    pub fn peer_joined(&self) {
        use std::sync::atomic::Ordering;
        let _ = self.peers.fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| Some(v.wrapping_add(2) | 1));
    }

    /// This replica leaves the cluster: it gives up everything and takes nothing from now on.
    pub fn leave(&self) {
        self.leaving.store(true, std::sync::atomic::Ordering::SeqCst);
        self.give_up(&self.local_shards());
    }

    /// Stop serving `shards` at once (before their leases are given up), and say so to waiting requests. The
    /// next [`set`](Self::set) reports them lost, so their actors and timers are dropped.
    pub fn give_up(&self, shards: &[u16]) {
        {
            let mut slots = self.write();
            for &s in shards {
                slots[usize::from(s)] = Slot { owner: Owner::Unknown, valid_until: None };
            }
        }
        self.given_up.lock().unwrap_or_else(std::sync::PoisonError::into_inner).extend_from_slice(shards);
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// The shards this replica serves now.
    pub fn local_shards(&self) -> Vec<u16> {
        (0..VIRTUAL_SHARDS).filter(|&s| self.is_local(s)).collect()
    }

    /// Wait until the table changes (or `timeout` passes).
    pub async fn changed(&self, timeout: std::time::Duration) {
        let mut rx = self.changed.subscribe();
        let _ = tokio::time::timeout(timeout, rx.changed()).await;
    }

    /// Whether the leases could be read and renewed lately (see the field).
    pub fn reachable(&self) -> bool {
        self.reachable.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn set_reachable(&self, reachable: bool) {
        self.reachable.store(reachable, std::sync::atomic::Ordering::Relaxed);
    }

    /// Ask the lease manager to read the leases again now.
    pub fn request_refresh(&self) {
        self.refresh.notify_one();
    }

    /// The lease manager's wait between rounds: ends early when someone asked for a refresh.
    pub async fn refresh_requested(&self, timeout: std::time::Duration) {
        let _ = tokio::time::timeout(timeout, self.refresh.notified()).await;
    }
}

/// Whether this replica should run the work of which the cluster needs exactly one copy (outbox shipping,
/// retention): the owner of virtual shard 0 does it. Always true on one process.
#[derive(Clone, Default)]
pub struct Leader(Option<Arc<ShardTable>>);

impl Leader {
    pub fn of(table: &Arc<ShardTable>) -> Self {
        Leader(Some(Arc::clone(table)))
    }

    pub fn is_leader(&self) -> bool {
        self.0.as_ref().is_none_or(|t| t.is_local(0))
    }
}

impl std::fmt::Debug for Leader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() { "Leader(owner of shard 0)" } else { "Leader(always)" })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_newcomer_heard_during_a_round_is_not_undone_by_it() {
        let t = ShardTable::clustered("a");
        assert!(t.has_peers(), "relays until a round says it is alone");
        t.set_peers(false, t.peers_seen());
        assert!(!t.has_peers());
        // A round reads the members; a newcomer announces itself before the round is done.
        let seen = t.peers_seen();
        t.peer_joined();
        t.set_peers(false, seen);
        assert!(t.has_peers(), "the round read the members before the newcomer joined");
        // The next round reads it (or not: it left again).
        t.set_peers(true, t.peers_seen());
        assert!(t.has_peers());
        t.set_peers(false, t.peers_seen());
        assert!(!t.has_peers());
    }

    #[test]
    fn a_ticket_keeps_its_virtual_shard_and_the_local_shard_follows_from_it() {
        assert!((0..1000).all(|i| vshard_of(&format!("t-{i}")) < VIRTUAL_SHARDS));
        // 16 local shards divide 256 virtual ones: the local shard of a ticket is the one it always had.
        for i in 0..1000 {
            let id = format!("t-{i}");
            assert_eq!(usize::from(vshard_of(&id)) % 16, slot_of(&id, 16));
        }
    }

    #[test]
    fn the_table_reports_what_moved_and_a_lapsed_lease_is_not_served() {
        let t = ShardTable::clustered("a");
        assert_eq!(t.owner(3), Owner::Unknown);
        let remote = Owner::Remote { member: Arc::from("b"), address: Arc::from("http://b") };
        let mut owners = vec![remote.clone(); VIRTUAL_SHARDS as usize];
        owners[3] = Owner::Local { epoch: 7 };
        let moved = t.set(owners.clone(), Instant::now() + Duration::from_secs(60));
        assert_eq!(moved, Moved { gained: vec![3], lost: vec![] });
        assert_eq!(t.local_epoch(3), Some(7));
        assert_eq!(t.owner(4), remote);
        // The same lease again: nothing moved. A new epoch: lost and gained (memory may be stale).
        assert_eq!(t.set(owners.clone(), Instant::now() + Duration::from_secs(60)), Moved::default());
        owners[3] = Owner::Local { epoch: 9 };
        let moved = t.set(owners.clone(), Instant::now() + Duration::from_secs(60));
        assert_eq!(moved, Moved { gained: vec![3], lost: vec![3] });
        // A lease not renewed in time is not served.
        t.set(owners.clone(), Instant::now());
        assert_eq!(t.owner(3), Owner::Unknown);
        assert!(!Leader::of(&t).is_leader());
        t.give_up(&[3]);
        assert_eq!(t.local_shards(), Vec::<u16>::new());
        // Given up, then leased again: lost (its actors go) and gained (loaded afresh) in one round.
        owners[3] = Owner::Local { epoch: 9 };
        let moved = t.set(owners.clone(), Instant::now() + Duration::from_secs(60));
        assert_eq!(moved, Moved { gained: vec![3], lost: vec![3] });
        // Leaving: nothing is local again.
        t.leave();
        let moved = t.set(owners, Instant::now() + Duration::from_secs(60));
        assert_eq!((moved.lost, t.local_shards()), (vec![3], vec![]));
    }

    #[test]
    fn one_process_owns_everything() {
        let t = ShardTable::single();
        assert!(!t.is_clustered());
        assert_eq!(t.local_shards().len(), VIRTUAL_SHARDS as usize);
        assert!(Leader::default().is_leader() && Leader::of(&t).is_leader());
    }
}
