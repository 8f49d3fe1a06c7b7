//! [`Layered`]: one store wrapped in a [`StoreLayer`], something done around every call (metrics, the
//! circuit breaker). The store traits are forwarded here once; a layer only says what happens before and after
//! a call.

use std::future::Future;
use std::sync::Arc;

use actors::enums::TicketStatus;
use actors::history::{AuditEvent, HistoryPage};
use actors::store::{
    AuditOutbox, EventsPruned, Fence, ListQuery, Outbox, OutboxPosition, PlanTicketPage, Retention, StoreError,
    StoreHealth, TicketPage, TicketStore, Tickets, UnitError, WebhookStore, WriteUnit,
};
use actors::webhooks::{AttemptRecord, ClaimBudget, Delivery, Subscription};
use actors::{Millis, Ticket};
use async_trait::async_trait;

/// One store method, as the layers tell calls apart (the `operation` label of the store metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Get,
    GetMany,
    List,
    ByPlans,
    Commit,
    DueBefore,
    AuditPending,
    AuditAdvance,
    AuditBacklog,
    History,
    Ping,
    CountByStatus,
    Dependents,
    WebhookSubscriptions,
    WebhookPut,
    WebhookDelete,
    WebhookClaim,
    WebhookRecord,
    WebhookDeliveries,
    WebhookRedeliver,
    PruneTickets,
    PruneEvents,
    PruneDeliveries,
}

impl Op {
    /// Every method, in declaration order (`op as usize` is its index here).
    pub const ALL: [Op; 23] = [
        Op::Get,
        Op::GetMany,
        Op::List,
        Op::ByPlans,
        Op::Commit,
        Op::DueBefore,
        Op::AuditPending,
        Op::AuditAdvance,
        Op::AuditBacklog,
        Op::History,
        Op::Ping,
        Op::CountByStatus,
        Op::Dependents,
        Op::WebhookSubscriptions,
        Op::WebhookPut,
        Op::WebhookDelete,
        Op::WebhookClaim,
        Op::WebhookRecord,
        Op::WebhookDeliveries,
        Op::WebhookRedeliver,
        Op::PruneTickets,
        Op::PruneEvents,
        Op::PruneDeliveries,
    ];

    /// The method's name (`get`, `commit`, …).
    pub fn label(self) -> &'static str {
        match self {
            Op::Get => "get",
            Op::GetMany => "get_many",
            Op::List => "list",
            Op::ByPlans => "by_plans",
            Op::Commit => "commit",
            Op::DueBefore => "due_before",
            Op::AuditPending => "audit_pending",
            Op::AuditAdvance => "audit_advance",
            Op::AuditBacklog => "audit_backlog",
            Op::History => "history",
            Op::Ping => "ping",
            Op::CountByStatus => "count_by_status",
            Op::Dependents => "dependents",
            Op::WebhookSubscriptions => "webhook_subscriptions",
            Op::WebhookPut => "webhook_put",
            Op::WebhookDelete => "webhook_delete",
            Op::WebhookClaim => "webhook_claim",
            Op::WebhookRecord => "webhook_record",
            Op::WebhookDeliveries => "webhook_deliveries",
            Op::WebhookRedeliver => "webhook_redeliver",
            Op::PruneTickets => "prune_tickets",
            Op::PruneEvents => "prune_events",
            Op::PruneDeliveries => "prune_deliveries",
        }
    }
}

/// What is done around each store call (except [`StoreHealth::backend`], which is no call).
pub trait StoreLayer: Send + Sync + 'static {
    /// What a call that was let through holds while it runs (a timer, the circuit's trial slot). When the caller
    /// gives up on the call it is dropped without [`leave`](Self::leave): its `Drop` is the place for what must
    /// happen however the call ends.
    type Pass<'a>: Send
    where
        Self: 'a;

    /// Before the call: let it through, or answer it at once with this error.
    fn enter(&self, op: Op) -> Result<Self::Pass<'_>, StoreError>;

    /// After a call that was let through; `unreachable` when it failed with [`StoreError::Unavailable`] (for a
    /// commit: when any of its units did).
    fn leave(&self, pass: Self::Pass<'_>, unreachable: bool);
}

/// A store seen through a [`StoreLayer`].
pub struct Layered<L> {
    inner: Arc<dyn TicketStore>,
    layer: L,
}

impl<L: StoreLayer> Layered<L> {
    /// `inner`, each call through `layer`.
    pub fn with_layer(inner: Arc<dyn TicketStore>, layer: L) -> Self {
        Layered { inner, layer }
    }

    async fn call<T>(&self, op: Op, call: impl Future<Output = Result<T, StoreError>>) -> Result<T, StoreError> {
        let pass = self.layer.enter(op)?;
        let result = call.await;
        self.layer.leave(pass, matches!(result, Err(StoreError::Unavailable(_))));
        result
    }
}

#[async_trait]
impl<L: StoreLayer> Tickets for Layered<L> {
    async fn get(&self, ticket_id: &str) -> Result<Option<Ticket>, StoreError> {
        self.call(Op::Get, self.inner.get(ticket_id)).await
    }

    async fn get_many(&self, ids: &[String]) -> Result<Vec<Ticket>, StoreError> {
        self.call(Op::GetMany, self.inner.get_many(ids)).await
    }

    async fn list(&self, query: &ListQuery) -> Result<TicketPage, StoreError> {
        self.call(Op::List, self.inner.list(query)).await
    }

    async fn by_plans(&self, plan_ids: &[String], offset: i64, limit: i64) -> Result<PlanTicketPage, StoreError> {
        self.call(Op::ByPlans, self.inner.by_plans(plan_ids, offset, limit)).await
    }

    async fn commit(&self, units: &[WriteUnit], fence: Option<&Fence>) -> Vec<Result<(), UnitError>> {
        let pass = match self.layer.enter(Op::Commit) {
            Ok(pass) => pass,
            Err(e) => return vec![Err(e.into()); units.len()],
        };
        let outcomes = self.inner.commit(units, fence).await;
        let unreachable = outcomes.iter().any(|o| matches!(o, Err(UnitError::Store(StoreError::Unavailable(_)))));
        self.layer.leave(pass, unreachable);
        outcomes
    }

    async fn due_before(
        &self,
        before: Millis,
        limit: i64,
        after: Option<&(Millis, String)>,
    ) -> Result<Vec<(String, Millis)>, StoreError> {
        self.call(Op::DueBefore, self.inner.due_before(before, limit, after)).await
    }

    async fn dependents(&self, finished: &[String]) -> Result<Vec<(String, String)>, StoreError> {
        self.call(Op::Dependents, self.inner.dependents(finished)).await
    }

    async fn count_by_status(&self) -> Result<Vec<(TicketStatus, i64)>, StoreError> {
        self.call(Op::CountByStatus, self.inner.count_by_status()).await
    }
}

// One operation per method whichever outbox consumer calls it: the metrics' label set stays fixed.
#[async_trait]
impl<L: StoreLayer> AuditOutbox for Layered<L> {
    async fn audit_pending(&self, outbox: Outbox, limit: i64) -> Result<Vec<(OutboxPosition, AuditEvent)>, StoreError> {
        self.call(Op::AuditPending, self.inner.audit_pending(outbox, limit)).await
    }

    async fn audit_advance(&self, outbox: Outbox, upto: OutboxPosition) -> Result<(), StoreError> {
        self.call(Op::AuditAdvance, self.inner.audit_advance(outbox, upto)).await
    }

    async fn audit_backlog(&self, outbox: Outbox) -> Result<i64, StoreError> {
        self.call(Op::AuditBacklog, self.inner.audit_backlog(outbox)).await
    }

    async fn history(&self, ticket_id: &str, offset: i64, limit: i64) -> Result<HistoryPage, StoreError> {
        self.call(Op::History, self.inner.history(ticket_id, offset, limit)).await
    }
}

#[async_trait]
impl<L: StoreLayer> WebhookStore for Layered<L> {
    async fn webhook_subscriptions(&self) -> Result<Vec<Subscription>, StoreError> {
        self.call(Op::WebhookSubscriptions, self.inner.webhook_subscriptions()).await
    }

    async fn webhook_put(&self, subscription: &Subscription) -> Result<(), StoreError> {
        self.call(Op::WebhookPut, self.inner.webhook_put(subscription)).await
    }

    async fn webhook_delete(&self, id: &str) -> Result<bool, StoreError> {
        self.call(Op::WebhookDelete, self.inner.webhook_delete(id)).await
    }

    async fn webhook_claim(
        &self,
        now: Millis,
        lease_until: Millis,
        budgets: &[ClaimBudget],
    ) -> Result<Vec<Delivery>, StoreError> {
        self.call(Op::WebhookClaim, self.inner.webhook_claim(now, lease_until, budgets)).await
    }

    async fn webhook_record(&self, records: &[AttemptRecord]) -> Result<(), StoreError> {
        self.call(Op::WebhookRecord, self.inner.webhook_record(records)).await
    }

    async fn webhook_deliveries(
        &self,
        subscription_id: &str,
        offset: i64,
        limit: i64,
    ) -> Result<(Vec<Delivery>, i64), StoreError> {
        self.call(Op::WebhookDeliveries, self.inner.webhook_deliveries(subscription_id, offset, limit)).await
    }

    async fn webhook_redeliver(
        &self,
        subscription_id: &str,
        delivery_id: &str,
        now: Millis,
    ) -> Result<bool, StoreError> {
        self.call(Op::WebhookRedeliver, self.inner.webhook_redeliver(subscription_id, delivery_id, now)).await
    }
}

#[async_trait]
impl<L: StoreLayer> Retention for Layered<L> {
    async fn prune_tickets(&self, before: Millis, limit: i64) -> Result<u64, StoreError> {
        self.call(Op::PruneTickets, self.inner.prune_tickets(before, limit)).await
    }

    async fn prune_events(
        &self,
        before: Millis,
        taken_by: &[Outbox],
        after: OutboxPosition,
        limit: i64,
    ) -> Result<EventsPruned, StoreError> {
        self.call(Op::PruneEvents, self.inner.prune_events(before, taken_by, after, limit)).await
    }

    async fn prune_deliveries(&self, before: Millis, limit: i64) -> Result<u64, StoreError> {
        self.call(Op::PruneDeliveries, self.inner.prune_deliveries(before, limit)).await
    }
}

#[async_trait]
impl<L: StoreLayer> StoreHealth for Layered<L> {
    async fn ping(&self) -> Result<(), StoreError> {
        self.call(Op::Ping, self.inner.ping()).await
    }

    fn backend(&self) -> &'static str {
        self.inner.backend()
    }
}
