//! Shared by the actor-system tests: an in-memory store double (the real stores are tested in the service
//! crate), a clock that can be made to panic, and a harness that starts the actor system over them.
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actors::clock::{Clock, ManualClock};
use actors::enums::{RequestedStatus, TicketStatus};
use actors::history::{AuditEvent, HistoryPage};
use actors::metrics::ActorMetrics;
use actors::model::Millis;
use actors::store::{
    AuditOutbox, EventsPruned, Fence, ListQuery, Outbox, OutboxPosition, PlanTicket, PlanTicketPage, Retention,
    StoreError, StoreHealth, TicketPage, Tickets, UnitConflict, UnitError, WebhookStore, Write, WriteUnit,
};
use actors::validation::NewTicket;
use actors::webhooks::{AttemptRecord, ClaimBudget, Delivery, DeliveryStatus, Subscription};
use actors::{Router, StatusUpdate, SystemConfig, Ticket};
use async_trait::async_trait;

#[derive(Default)]
pub struct MemoryStore {
    pub rows: Mutex<HashMap<String, Ticket>>,
    pub down: AtomicBool,
    pub commits: AtomicUsize,
    /// Commits begun (counted before the delay): a test can wait until a write is in flight.
    pub commits_begun: AtomicUsize,
    /// Slows commits so that concurrent writes pile up into batches.
    pub commit_delay_ms: u64,
    /// Commits running now (during the delay), and the most seen at once.
    pub committing: AtomicUsize,
    pub most_committing: AtomicUsize,
    /// Commits wait for this lock (after counting themselves begun): a test holds it to keep a write in flight.
    pub gate: tokio::sync::Mutex<()>,
    /// Ticket reads (`get` and `get_many` calls) begun.
    pub reads: AtomicUsize,
    /// Reads wait for this lock (after counting themselves): a test holds it to keep a read in flight.
    pub read_gate: tokio::sync::Mutex<()>,
    /// The audit outbox, in commit order (the index + 1 is the sequence number).
    pub outbox: Mutex<Vec<AuditEvent>>,
    /// Each `Outbox` consumer's cursor: how many records of `outbox` it has taken.
    pub cursors: Mutex<[usize; 2]>,
    /// Records from this index on are held back from the consumers, as a store does while an older transaction
    /// is still running; `None`: none held.
    pub horizon: Mutex<Option<usize>>,
    pub subscriptions: Mutex<Vec<Subscription>>,
    pub deliveries: Mutex<Vec<Delivery>>,
    /// Sequence numbers of outbox records deleted by retention (the vector keeps its positions, so cursors as
    /// counts stay right; a pruned record is always behind every cursor that counts).
    pub pruned: Mutex<std::collections::HashSet<i64>>,
}

impl MemoryStore {
    fn check(&self) -> Result<(), StoreError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable("down".into()));
        }
        Ok(())
    }
}

#[async_trait]
impl Tickets for MemoryStore {
    async fn get(&self, id: &str) -> Result<Option<Ticket>, StoreError> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        drop(self.read_gate.lock().await);
        if self.down.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable("down".into()));
        }
        Ok(self.rows.lock().unwrap().get(id).cloned())
    }
    async fn get_many(&self, ids: &[String]) -> Result<Vec<Ticket>, StoreError> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        drop(self.read_gate.lock().await);
        if self.down.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable("down".into()));
        }
        let rows = self.rows.lock().unwrap();
        Ok(ids.iter().filter_map(|id| rows.get(id).cloned()).collect())
    }
    async fn list(&self, _: &ListQuery) -> Result<TicketPage, StoreError> {
        unreachable!("not used by these tests")
    }
    async fn by_plans(&self, plan_ids: &[String], offset: i64, limit: i64) -> Result<PlanTicketPage, StoreError> {
        self.check()?;
        let rows = self.rows.lock().unwrap();
        let mut all: Vec<&Ticket> = rows.values().filter(|t| plan_ids.contains(&t.spec.plan_id)).collect();
        all.sort_by(|a, b| {
            (&a.spec.plan_id, a.created_at, &a.ticket_id).cmp(&(&b.spec.plan_id, b.created_at, &b.ticket_id))
        });
        let tickets = all
            .iter()
            .skip(offset as usize)
            .take(limit as usize)
            .map(|t| PlanTicket { ticket_id: t.ticket_id.clone(), plan_id: t.spec.plan_id.clone(), status: t.status })
            .collect();
        Ok(PlanTicketPage { tickets, total: all.len() as i64, offset, limit })
    }
    async fn commit(&self, units: &[WriteUnit], _fence: Option<&Fence>) -> Vec<Result<(), UnitError>> {
        self.commits_begun.fetch_add(1, Ordering::SeqCst);
        drop(self.gate.lock().await);
        let now = self.committing.fetch_add(1, Ordering::SeqCst) + 1;
        self.most_committing.fetch_max(now, Ordering::SeqCst);
        if self.commit_delay_ms > 0 {
            tokio::time::sleep(Duration::from_millis(self.commit_delay_ms)).await;
        }
        self.committing.fetch_sub(1, Ordering::SeqCst);
        if self.down.load(Ordering::SeqCst) {
            return units.iter().map(|_| Err(StoreError::Unavailable("down".into()).into())).collect();
        }
        self.commits.fetch_add(1, Ordering::SeqCst);
        let mut rows = self.rows.lock().unwrap();
        let mut outbox = self.outbox.lock().unwrap();
        units
            .iter()
            .map(|unit| {
                let mut staged = rows.clone();
                let mut audits = Vec::new();
                let mut deliveries = Vec::new();
                for w in &unit.0 {
                    match w {
                        Write::Insert(t) if staged.contains_key(&t.ticket_id) => {
                            return Err(UnitConflict::AlreadyExists(t.ticket_id.clone()).into())
                        }
                        Write::Insert(t) => {
                            staged.insert(t.ticket_id.clone(), t.clone());
                        }
                        Write::Update { ticket, expected_version } => {
                            match staged.get(&ticket.ticket_id) {
                                Some(cur) if cur.version == *expected_version => {}
                                _ => return Err(UnitConflict::VersionMismatch(ticket.ticket_id.clone()).into()),
                            }
                            staged.insert(ticket.ticket_id.clone(), ticket.clone());
                        }
                        Write::Audit(event) => audits.push(event.clone()),
                        Write::Delivery(d) => deliveries.push(d.clone()),
                    }
                }
                *rows = staged;
                outbox.extend(audits);
                self.deliveries.lock().unwrap().extend(deliveries);
                Ok(())
            })
            .collect()
    }
    async fn due_before(
        &self,
        before: Millis,
        limit: i64,
        after: Option<&(Millis, String)>,
    ) -> Result<Vec<(String, Millis)>, StoreError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable("down".into()));
        }
        let rows = self.rows.lock().unwrap();
        let mut due: Vec<(Millis, String)> = rows
            .values()
            .filter_map(|t| t.sla_state.next_due_at.map(|d| (d, t.ticket_id.clone())))
            .filter(|(d, id)| *d < before && after.is_none_or(|(ad, aid)| (*d, id) > (*ad, aid)))
            .collect();
        due.sort();
        Ok(due.into_iter().take(limit as usize).map(|(d, id)| (id, d)).collect())
    }
    async fn dependents(&self, finished: &[String]) -> Result<Vec<(String, String)>, StoreError> {
        self.check()?;
        let rows = self.rows.lock().unwrap();
        let mut pairs: Vec<(String, String)> = finished
            .iter()
            .flat_map(|f| {
                rows.values()
                    .filter(|t| t.status == TicketStatus::Pending && t.spec.dependencies.contains(f))
                    .map(|t| (f.clone(), t.ticket_id.clone()))
            })
            .collect();
        pairs.sort();
        pairs.dedup();
        Ok(pairs)
    }
    async fn count_by_status(&self) -> Result<Vec<(TicketStatus, i64)>, StoreError> {
        self.check()?;
        let mut counts = std::collections::BTreeMap::new();
        for t in self.rows.lock().unwrap().values() {
            *counts.entry(t.status).or_insert(0) += 1;
        }
        Ok(counts.into_iter().collect())
    }
}

#[async_trait]
impl AuditOutbox for MemoryStore {
    async fn audit_pending(&self, which: Outbox, limit: i64) -> Result<Vec<(OutboxPosition, AuditEvent)>, StoreError> {
        self.check()?;
        let outbox = self.outbox.lock().unwrap();
        let taken = self.cursors.lock().unwrap()[which as usize];
        let visible = self.horizon.lock().unwrap().unwrap_or(usize::MAX).min(outbox.len());
        let pending = outbox[..visible].iter().enumerate().skip(taken).take(limit as usize);
        Ok(pending.map(|(i, e)| (OutboxPosition { txid: 0, seq: i as i64 + 1 }, e.clone())).collect())
    }
    async fn audit_advance(&self, which: Outbox, upto: OutboxPosition) -> Result<(), StoreError> {
        self.check()?;
        let mut cursors = self.cursors.lock().unwrap();
        cursors[which as usize] = cursors[which as usize].max(upto.seq as usize);
        Ok(())
    }
    async fn audit_backlog(&self, which: Outbox) -> Result<i64, StoreError> {
        self.check()?;
        Ok((self.outbox.lock().unwrap().len() - self.cursors.lock().unwrap()[which as usize]) as i64)
    }
    async fn history(&self, ticket_id: &str, offset: i64, limit: i64) -> Result<HistoryPage, StoreError> {
        self.check()?;
        let outbox = self.outbox.lock().unwrap();
        let pruned = self.pruned.lock().unwrap();
        let all: Vec<AuditEvent> = outbox
            .iter()
            .enumerate()
            .filter(|(i, e)| e.ticket_id == ticket_id && !pruned.contains(&(*i as i64 + 1)))
            .map(|(_, e)| e.clone())
            .collect();
        let total = all.len() as i64;
        let events = all.into_iter().skip(offset as usize).take(limit as usize).collect();
        Ok(HistoryPage { ticket_id: ticket_id.to_owned(), events, total, offset, limit })
    }
}

#[async_trait]
impl WebhookStore for MemoryStore {
    async fn webhook_subscriptions(&self) -> Result<Vec<Subscription>, StoreError> {
        self.check()?;
        Ok(self.subscriptions.lock().unwrap().clone())
    }
    async fn webhook_put(&self, s: &Subscription) -> Result<(), StoreError> {
        self.check()?;
        let mut subs = self.subscriptions.lock().unwrap();
        subs.retain(|x| x.id != s.id);
        subs.push(s.clone());
        Ok(())
    }
    async fn webhook_delete(&self, id: &str) -> Result<bool, StoreError> {
        self.check()?;
        let mut subs = self.subscriptions.lock().unwrap();
        let before = subs.len();
        subs.retain(|x| x.id != id);
        Ok(subs.len() < before)
    }
    async fn webhook_claim(
        &self,
        now: Millis,
        lease_until: Millis,
        budgets: &[ClaimBudget],
    ) -> Result<Vec<Delivery>, StoreError> {
        self.check()?;
        let mut all = self.deliveries.lock().unwrap();
        let mut claimed = Vec::new();
        for b in budgets {
            let mut due: Vec<&mut Delivery> = all
                .iter_mut()
                .filter(|d| d.status == DeliveryStatus::Pending && d.next_attempt_at.is_some_and(|t| t <= now))
                .filter(|d| d.subscription_id == b.subscription_id)
                .collect();
            due.sort_by_key(|d| d.next_attempt_at);
            for d in due.into_iter().take(b.limit.max(0) as usize) {
                claimed.push(d.clone());
                d.next_attempt_at = Some(lease_until);
            }
        }
        Ok(claimed)
    }
    async fn webhook_record(&self, records: &[AttemptRecord]) -> Result<(), StoreError> {
        self.check()?;
        let mut all = self.deliveries.lock().unwrap();
        for r in records {
            if let Some(d) = all.iter_mut().find(|d| d.id == r.delivery_id) {
                d.status = r.status;
                d.attempts = r.attempts;
                d.last_status = r.last_status;
                d.last_error = r.last_error.clone();
                d.next_attempt_at = r.next_attempt_at;
                d.delivered_at = r.delivered_at;
            }
        }
        Ok(())
    }
    async fn webhook_deliveries(&self, id: &str, offset: i64, limit: i64) -> Result<(Vec<Delivery>, i64), StoreError> {
        self.check()?;
        let all: Vec<Delivery> = self
            .deliveries
            .lock()
            .unwrap()
            .iter()
            .filter(|d| d.subscription_id.as_deref() == Some(id))
            .cloned()
            .collect();
        let total = all.len() as i64;
        Ok((all.into_iter().rev().skip(offset as usize).take(limit as usize).collect(), total))
    }
    async fn webhook_redeliver(&self, subscription: &str, id: &str, now: Millis) -> Result<bool, StoreError> {
        self.check()?;
        let mut all = self.deliveries.lock().unwrap();
        Ok(all
            .iter_mut()
            .find(|d| d.id == id && d.subscription_id.as_deref() == Some(subscription))
            .map(|d| {
                d.status = DeliveryStatus::Pending;
                d.next_attempt_at = Some(now);
            })
            .is_some())
    }
}

/// The same rules as the SQL stores (`src/store/retention.rs`), over the maps.
#[async_trait]
impl Retention for MemoryStore {
    async fn prune_tickets(&self, before: Millis, limit: i64) -> Result<u64, StoreError> {
        self.check()?;
        let mut rows = self.rows.lock().unwrap();
        let needed: std::collections::HashSet<String> = rows
            .values()
            .filter(|t| !t.status.is_terminal())
            .flat_map(|t| {
                let compensation = t.compensation_ticket_id.clone().filter(|_| t.status == TicketStatus::Compensating);
                t.spec.dependencies.iter().cloned().chain(compensation)
            })
            .collect();
        let mut doomed: Vec<String> = rows
            .values()
            .filter(|t| t.status.is_terminal() && t.updated_at < before && !needed.contains(&t.ticket_id))
            .map(|t| t.ticket_id.clone())
            .collect();
        doomed.sort();
        doomed.truncate(limit.max(0) as usize);
        for id in &doomed {
            rows.remove(id);
        }
        Ok(doomed.len() as u64)
    }
    async fn prune_events(
        &self,
        before: Millis,
        taken_by: &[Outbox],
        after: OutboxPosition,
        limit: i64,
    ) -> Result<EventsPruned, StoreError> {
        self.check()?;
        let outbox = self.outbox.lock().unwrap();
        let cursors = *self.cursors.lock().unwrap();
        let upto = taken_by.iter().map(|o| cursors[*o as usize]).min().unwrap_or(outbox.len()) as i64;
        let rows = self.rows.lock().unwrap();
        let mut pruned = self.pruned.lock().unwrap();
        let window: Vec<i64> =
            (after.seq + 1..=upto).filter(|seq| !pruned.contains(seq)).take(limit.max(0) as usize).collect();
        let Some(&end) = window.last() else { return Ok(EventsPruned::default()) };
        let event = |seq: i64| &outbox[seq as usize - 1];
        let old = window.iter().any(|seq| event(*seq).at < before);
        let mut deleted = 0;
        for seq in &window {
            let e = event(*seq);
            let live = rows.get(&e.ticket_id).is_some_and(|t| !t.status.is_terminal());
            if e.at < before && !live {
                pruned.insert(*seq);
                deleted += 1;
            }
        }
        Ok(EventsPruned {
            deleted,
            window_end: Some(OutboxPosition { txid: 0, seq: end }),
            more: old && window.len() as i64 >= limit,
        })
    }
    async fn prune_deliveries(&self, before: Millis, limit: i64) -> Result<u64, StoreError> {
        self.check()?;
        let mut all = self.deliveries.lock().unwrap();
        let mut n = 0;
        all.retain(|d| {
            let finished = d.status != DeliveryStatus::Pending;
            let old = d.created_at < before && d.delivered_at.is_none_or(|t| t < before);
            let gone = finished && old && n < limit;
            n += i64::from(gone);
            !gone
        });
        Ok(n as u64)
    }
}

#[async_trait]
impl StoreHealth for MemoryStore {
    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
    fn backend(&self) -> &'static str {
        "memory"
    }
}

/// A clock that panics on the n-th reading *by a ticket actor* after being armed: the way these tests make a
/// ticket actor die mid-request. Readings elsewhere (a shard forwarding the request, or still arming the SLA
/// instant of a create whose answer the test already has) do not count: counting every reading made the
/// panic land in whichever component read the clock next, which depended on scheduling.
#[derive(Clone)]
pub struct PanickyClock {
    pub inner: ManualClock,
    pub armed: Arc<AtomicUsize>,
}
impl Clock for PanickyClock {
    fn now_ms(&self) -> i64 {
        if self.armed.load(Ordering::SeqCst) > 0 && in_ticket_actor() && self.armed.fetch_sub(1, Ordering::SeqCst) == 1
        {
            panic!("injected failure");
        }
        self.inner.now_ms()
    }
}

/// Whether the caller runs in `actors::system::ticket_actor` (from the stack's symbol names: test binaries keep them).
fn in_ticket_actor() -> bool {
    std::backtrace::Backtrace::force_capture().to_string().contains("actors::system::ticket_actor::")
}

pub struct Harness {
    pub router: Router,
    pub store: Arc<MemoryStore>,
    pub clock: ManualClock,
    pub armed: Arc<AtomicUsize>,
    pub metrics: ActorMetrics,
}

pub fn harness_with(store: MemoryStore, config: SystemConfig) -> Harness {
    restart_with(Arc::new(store), ManualClock::new(START), config)
}

/// Epoch ms at which every test clock starts.
pub const START: Millis = 1_700_000_000_000;

/// A new actor system (a "restarted service") over an existing store and clock.
pub fn restart_with(store: Arc<MemoryStore>, clock: ManualClock, config: SystemConfig) -> Harness {
    let armed = Arc::new(AtomicUsize::new(0));
    let metrics = ActorMetrics::unregistered();
    let router = Router::start(
        &config,
        store.clone(),
        Arc::new(PanickyClock { inner: clock.clone(), armed: armed.clone() }),
        metrics.clone(),
    );
    Harness { router, store, clock, armed, metrics }
}

/// Shards never tick on their own in these tests: the test advances the manual clock and calls `tick`.
pub fn test_config() -> SystemConfig {
    SystemConfig { shards: 4, arbiters: 2, tick_every: Duration::from_secs(3600), ..SystemConfig::default() }
}

pub fn harness() -> Harness {
    harness_with(MemoryStore::default(), test_config())
}

pub fn new_ticket(id: &str) -> NewTicket {
    serde_json::from_value(serde_json::json!({
        "ticket_id": id, "plan_id": "p", "intent_id": "i", "decision_id": "d", "task_id": "t",
        "task_type": "EXECUTE", "description": "work", "priority": "NORMAL", "risk_band": "low",
        "sla": {"deadline": 1_800_000_000_000i64, "timeout_ms": 1000, "max_retries": 1},
        "qos": {"delivery_mode": "AT_LEAST_ONCE", "consistency": "STRONG", "durability": "PERSISTENT"},
        "security_level": "INTERNAL"
    }))
    .unwrap()
}

pub fn to(status: TicketStatus) -> StatusUpdate {
    StatusUpdate {
        status: RequestedStatus::Status(status),
        error_message: None,
        actual_duration_ms: None,
        expected_version: None,
        retry_if_failed: false,
        metadata: None,
    }
}
