//! [`CircuitStore`]: while the database is known to be unreachable, store calls fail at once.
//!
//! Why: with the database down, every call that needs a new connection waits the pool's acquire timeout
//! before it fails, so a request answered 503 still took seconds, and requests piled up meanwhile. Once a call
//! fails with [`StoreError::Unavailable`] the circuit opens: calls are answered `Unavailable` without touching
//! the pool. After `open_for`, one call is let through as a trial (the rest still fail at once); its success
//! closes the circuit, its failure opens it for another `open_for`. So recovery needs no restart and no
//! background task (a task spawned on an actor's runtime could die with it and leave the circuit stuck), and
//! at most one caller per window pays the acquire timeout. `/ready` pings through the circuit, so it answers
//! 503 at once during an outage and its own pings serve as trials when no other traffic comes.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actors::enums::TicketStatus;
use actors::history::{AuditEvent, HistoryPage};
use actors::store::{ListQuery, Outbox, OutboxPosition, StoreError, TicketPage, TicketStore, UnitError, WriteUnit};
use actors::webhooks::{AttemptRecord, ClaimBudget, Delivery, Subscription};
use actors::{Millis, Ticket};
use async_trait::async_trait;

/// The answer of every call refused while the circuit is open.
const OPEN: &str = "the database was unreachable moments ago; retrying the connection in the background";

/// The circuit's state, shared by every caller.
struct Circuit {
    /// Milliseconds since `epoch` (+1) when it last opened; 0 while closed.
    opened: AtomicU64,
    /// A trial call is running.
    trial: AtomicBool,
    epoch: Instant,
    open_for: Duration,
}

/// How a call was let through.
enum Pass<'a> {
    Closed,
    /// The one trial call; the guard frees the trial slot however the call ends (a cancelled caller too).
    Trial(TrialGuard<'a>),
}

struct TrialGuard<'a>(&'a AtomicBool);

impl Drop for TrialGuard<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

impl Circuit {
    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX - 1) + 1
    }

    fn admit(&self) -> Result<Pass<'_>, StoreError> {
        let opened = self.opened.load(Ordering::Acquire);
        if opened == 0 {
            return Ok(Pass::Closed);
        }
        let waited = self.now().saturating_sub(opened);
        if waited >= self.open_for.as_millis() as u64 && !self.trial.swap(true, Ordering::AcqRel) {
            return Ok(Pass::Trial(TrialGuard(&self.trial)));
        }
        Err(StoreError::Unavailable(OPEN.into()))
    }

    /// Record how a call that was let through ended: `unreachable` when it failed with `Unavailable`.
    fn record(&self, pass: Pass<'_>, unreachable: bool) {
        match (pass, unreachable) {
            (Pass::Closed, true) => {
                if self.opened.compare_exchange(0, self.now(), Ordering::AcqRel, Ordering::Acquire).is_ok() {
                    tracing::warn!(
                        open_ms = self.open_for.as_millis() as u64,
                        "ticket store unreachable: failing store calls at once until a trial call succeeds"
                    );
                }
            }
            (Pass::Trial(_guard), true) => self.opened.store(self.now(), Ordering::Release),
            (Pass::Trial(_guard), false) => {
                self.opened.store(0, Ordering::Release);
                tracing::info!("ticket store reachable again: circuit closed");
            }
            // A call that started before the circuit opened proves nothing about now; only a trial closes it.
            (Pass::Closed, false) => {}
        }
    }

    async fn call<T>(&self, call: impl std::future::Future<Output = Result<T, StoreError>>) -> Result<T, StoreError> {
        let pass = self.admit()?;
        let result = call.await;
        self.record(pass, matches!(result, Err(StoreError::Unavailable(_))));
        result
    }
}

/// A [`TicketStore`] that fails fast while the store behind it is unreachable (see the module docs).
pub struct CircuitStore {
    inner: Arc<dyn TicketStore>,
    circuit: Circuit,
}

impl CircuitStore {
    /// `inner`, behind a circuit that stays open `open_for` after each failure.
    pub fn new(inner: Arc<dyn TicketStore>, open_for: Duration) -> Self {
        let circuit =
            Circuit { opened: AtomicU64::new(0), trial: AtomicBool::new(false), epoch: Instant::now(), open_for };
        CircuitStore { inner, circuit }
    }

    /// `inner` behind a circuit, as a trait object; `inner` itself when `open_for` is zero (circuit off).
    pub fn wrap(inner: Arc<dyn TicketStore>, open_for: Duration) -> Arc<dyn TicketStore> {
        if open_for.is_zero() {
            inner
        } else {
            Arc::new(CircuitStore::new(inner, open_for))
        }
    }
}

#[async_trait]
impl TicketStore for CircuitStore {
    async fn get(&self, ticket_id: &str) -> Result<Option<Ticket>, StoreError> {
        self.circuit.call(self.inner.get(ticket_id)).await
    }

    async fn get_many(&self, ids: &[String]) -> Result<Vec<Ticket>, StoreError> {
        self.circuit.call(self.inner.get_many(ids)).await
    }

    async fn list(&self, query: &ListQuery) -> Result<TicketPage, StoreError> {
        self.circuit.call(self.inner.list(query)).await
    }

    async fn commit(&self, units: &[WriteUnit]) -> Vec<Result<(), UnitError>> {
        let pass = match self.circuit.admit() {
            Ok(pass) => pass,
            Err(e) => return vec![Err(e.into()); units.len()],
        };
        let outcomes = self.inner.commit(units).await;
        let unreachable = outcomes.iter().any(|o| matches!(o, Err(UnitError::Store(StoreError::Unavailable(_)))));
        self.circuit.record(pass, unreachable);
        outcomes
    }

    async fn due_before(
        &self,
        before: Millis,
        limit: i64,
        after: Option<&(Millis, String)>,
    ) -> Result<Vec<(String, Millis)>, StoreError> {
        self.circuit.call(self.inner.due_before(before, limit, after)).await
    }

    async fn audit_pending(&self, outbox: Outbox, limit: i64) -> Result<Vec<(OutboxPosition, AuditEvent)>, StoreError> {
        self.circuit.call(self.inner.audit_pending(outbox, limit)).await
    }

    async fn audit_advance(&self, outbox: Outbox, upto: OutboxPosition) -> Result<(), StoreError> {
        self.circuit.call(self.inner.audit_advance(outbox, upto)).await
    }

    async fn audit_backlog(&self, outbox: Outbox) -> Result<i64, StoreError> {
        self.circuit.call(self.inner.audit_backlog(outbox)).await
    }

    async fn history(&self, ticket_id: &str, offset: i64, limit: i64) -> Result<HistoryPage, StoreError> {
        self.circuit.call(self.inner.history(ticket_id, offset, limit)).await
    }

    async fn dependents(&self, ticket_id: &str) -> Result<Vec<String>, StoreError> {
        self.circuit.call(self.inner.dependents(ticket_id)).await
    }

    async fn webhook_subscriptions(&self) -> Result<Vec<Subscription>, StoreError> {
        self.circuit.call(self.inner.webhook_subscriptions()).await
    }

    async fn webhook_put(&self, subscription: &Subscription) -> Result<(), StoreError> {
        self.circuit.call(self.inner.webhook_put(subscription)).await
    }

    async fn webhook_delete(&self, id: &str) -> Result<bool, StoreError> {
        self.circuit.call(self.inner.webhook_delete(id)).await
    }

    async fn webhook_claim(
        &self,
        now: Millis,
        lease_until: Millis,
        budgets: &[ClaimBudget],
    ) -> Result<Vec<Delivery>, StoreError> {
        self.circuit.call(self.inner.webhook_claim(now, lease_until, budgets)).await
    }

    async fn webhook_record(&self, records: &[AttemptRecord]) -> Result<(), StoreError> {
        self.circuit.call(self.inner.webhook_record(records)).await
    }

    async fn webhook_deliveries(
        &self,
        subscription_id: &str,
        offset: i64,
        limit: i64,
    ) -> Result<(Vec<Delivery>, i64), StoreError> {
        self.circuit.call(self.inner.webhook_deliveries(subscription_id, offset, limit)).await
    }

    async fn webhook_redeliver(
        &self,
        subscription_id: &str,
        delivery_id: &str,
        now: Millis,
    ) -> Result<bool, StoreError> {
        self.circuit.call(self.inner.webhook_redeliver(subscription_id, delivery_id, now)).await
    }

    async fn count_by_status(&self) -> Result<Vec<(TicketStatus, i64)>, StoreError> {
        self.circuit.call(self.inner.count_by_status()).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.circuit.call(self.inner.ping()).await
    }

    fn backend(&self) -> &'static str {
        self.inner.backend()
    }
}
