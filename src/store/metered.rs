//! [`MeteredStore`]: a [`TicketStore`] decorator that counts and times every store call.
//!
//! It wraps whichever backend is configured, so the series describe SQLite calls on the embedded store too;
//! the names say `postgres_*` only because that is what the dashboards and the observability issue ask for.
//! The `operation` label is the trait method (`get`, `commit`, …), never a SQL text: one `commit` is one group
//! commit (possibly many tickets, and a retry unit by unit when the batch failed), and the label set stays
//! small and fixed.

use std::sync::Arc;
use std::time::Instant;

use actors::enums::TicketStatus;
use actors::history::{AuditEvent, HistoryPage};
use actors::store::{ListQuery, Outbox, OutboxPosition, StoreError, TicketPage, TicketStore, UnitError, WriteUnit};
use actors::webhooks::{AttemptRecord, ClaimBudget, Delivery, Subscription};
use actors::{Millis, Ticket};
use async_trait::async_trait;
use prometheus::{Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry};

/// One `TicketStore` method, as an `operation` label value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Get,
    GetMany,
    List,
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
}

impl Op {
    const ALL: [Op; 19] = [
        Op::Get,
        Op::GetMany,
        Op::List,
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
    ];

    fn label(self) -> &'static str {
        match self {
            Op::Get => "get",
            Op::GetMany => "get_many",
            Op::List => "list",
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
        }
    }
}

/// `postgres_queries_total{operation}` and `postgres_query_duration_seconds{operation}`.
///
/// The children of every operation are resolved once, here: a store call then costs two atomic updates and
/// no label hashing (commits and gets are on the ingest hot path), and every operation is exported from the
/// start (at 0), so rate() works before its first call.
#[derive(Clone)]
pub struct StoreMetrics {
    calls: Arc<[(IntCounter, Histogram)]>,
}

impl StoreMetrics {
    /// Create the two metric families and register them in `registry`.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let total = IntCounterVec::new(
            Opts::new("postgres_queries_total", "Ticket store calls by store operation (any backend)"),
            &["operation"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new("postgres_query_duration_seconds", "Ticket store call latency by store operation")
                .buckets(vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
            &["operation"],
        )?;
        registry.register(Box::new(total.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        let calls = Op::ALL
            .iter()
            .map(|op| (total.with_label_values(&[op.label()]), duration.with_label_values(&[op.label()])))
            .collect();
        Ok(StoreMetrics { calls })
    }

    fn start(&self, op: Op) -> CallTimer<'_> {
        CallTimer { metrics: &self.calls[op as usize], started: Instant::now() }
    }
}

/// Records one call when dropped, so that a call abandoned by its caller (a timed-out ping, a cancelled
/// request) is still counted with the time it took until then: a slow store is exactly what these series
/// must show.
struct CallTimer<'a> {
    metrics: &'a (IntCounter, Histogram),
    started: Instant,
}

impl Drop for CallTimer<'_> {
    fn drop(&mut self) {
        self.metrics.0.inc();
        self.metrics.1.observe(self.started.elapsed().as_secs_f64());
    }
}

/// A [`TicketStore`] that records [`StoreMetrics`] around another one.
pub struct MeteredStore {
    inner: Arc<dyn TicketStore>,
    metrics: StoreMetrics,
}

impl MeteredStore {
    pub fn new(inner: Arc<dyn TicketStore>, metrics: StoreMetrics) -> Self {
        MeteredStore { inner, metrics }
    }

    /// `inner`, metered, as the trait object the actor system takes.
    pub fn wrap(inner: Arc<dyn TicketStore>, metrics: &StoreMetrics) -> Arc<dyn TicketStore> {
        Arc::new(MeteredStore::new(inner, metrics.clone()))
    }
}

#[async_trait]
impl TicketStore for MeteredStore {
    async fn get(&self, ticket_id: &str) -> Result<Option<Ticket>, StoreError> {
        let _t = self.metrics.start(Op::Get);
        self.inner.get(ticket_id).await
    }

    async fn get_many(&self, ids: &[String]) -> Result<Vec<Ticket>, StoreError> {
        let _t = self.metrics.start(Op::GetMany);
        self.inner.get_many(ids).await
    }

    async fn list(&self, query: &ListQuery) -> Result<TicketPage, StoreError> {
        let _t = self.metrics.start(Op::List);
        self.inner.list(query).await
    }

    async fn commit(&self, units: &[WriteUnit]) -> Vec<Result<(), UnitError>> {
        let _t = self.metrics.start(Op::Commit);
        self.inner.commit(units).await
    }

    async fn due_before(
        &self,
        before: Millis,
        limit: i64,
        after: Option<&(Millis, String)>,
    ) -> Result<Vec<(String, Millis)>, StoreError> {
        let _t = self.metrics.start(Op::DueBefore);
        self.inner.due_before(before, limit, after).await
    }

    // One label per method whichever outbox consumer calls it: the label set stays fixed.
    async fn audit_pending(&self, outbox: Outbox, limit: i64) -> Result<Vec<(OutboxPosition, AuditEvent)>, StoreError> {
        let _t = self.metrics.start(Op::AuditPending);
        self.inner.audit_pending(outbox, limit).await
    }

    async fn audit_advance(&self, outbox: Outbox, upto: OutboxPosition) -> Result<(), StoreError> {
        let _t = self.metrics.start(Op::AuditAdvance);
        self.inner.audit_advance(outbox, upto).await
    }

    async fn audit_backlog(&self, outbox: Outbox) -> Result<i64, StoreError> {
        let _t = self.metrics.start(Op::AuditBacklog);
        self.inner.audit_backlog(outbox).await
    }

    async fn history(&self, ticket_id: &str, offset: i64, limit: i64) -> Result<HistoryPage, StoreError> {
        let _t = self.metrics.start(Op::History);
        self.inner.history(ticket_id, offset, limit).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let _t = self.metrics.start(Op::Ping);
        self.inner.ping().await
    }

    async fn count_by_status(&self) -> Result<Vec<(TicketStatus, i64)>, StoreError> {
        let _t = self.metrics.start(Op::CountByStatus);
        self.inner.count_by_status().await
    }

    async fn dependents(&self, ticket_id: &str) -> Result<Vec<String>, StoreError> {
        let _t = self.metrics.start(Op::Dependents);
        self.inner.dependents(ticket_id).await
    }

    async fn webhook_subscriptions(&self) -> Result<Vec<Subscription>, StoreError> {
        let _t = self.metrics.start(Op::WebhookSubscriptions);
        self.inner.webhook_subscriptions().await
    }

    async fn webhook_put(&self, subscription: &Subscription) -> Result<(), StoreError> {
        let _t = self.metrics.start(Op::WebhookPut);
        self.inner.webhook_put(subscription).await
    }

    async fn webhook_delete(&self, id: &str) -> Result<bool, StoreError> {
        let _t = self.metrics.start(Op::WebhookDelete);
        self.inner.webhook_delete(id).await
    }

    async fn webhook_claim(
        &self,
        now: Millis,
        lease_until: Millis,
        budgets: &[ClaimBudget],
    ) -> Result<Vec<Delivery>, StoreError> {
        let _t = self.metrics.start(Op::WebhookClaim);
        self.inner.webhook_claim(now, lease_until, budgets).await
    }

    async fn webhook_record(&self, records: &[AttemptRecord]) -> Result<(), StoreError> {
        let _t = self.metrics.start(Op::WebhookRecord);
        self.inner.webhook_record(records).await
    }

    async fn webhook_deliveries(
        &self,
        subscription_id: &str,
        offset: i64,
        limit: i64,
    ) -> Result<(Vec<Delivery>, i64), StoreError> {
        let _t = self.metrics.start(Op::WebhookDeliveries);
        self.inner.webhook_deliveries(subscription_id, offset, limit).await
    }

    async fn webhook_redeliver(
        &self,
        subscription_id: &str,
        delivery_id: &str,
        now: Millis,
    ) -> Result<bool, StoreError> {
        let _t = self.metrics.start(Op::WebhookRedeliver);
        self.inner.webhook_redeliver(subscription_id, delivery_id, now).await
    }

    fn backend(&self) -> &'static str {
        self.inner.backend()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sqlite::SqliteTicketStore;

    fn sample(registry: &Registry, family: &str, op: &str) -> Option<prometheus::proto::Metric> {
        let families = registry.gather();
        let family = families.iter().find(|f| f.get_name() == family)?;
        family.get_metric().iter().find(|m| m.get_label().iter().any(|l| l.get_value() == op)).cloned()
    }

    fn count(registry: &Registry, op: &str) -> u64 {
        sample(registry, "postgres_queries_total", op).map_or(0, |m| m.get_counter().get_value() as u64)
    }

    #[tokio::test]
    async fn each_call_is_counted_and_timed_under_its_method() {
        let dir = tempfile::tempdir().unwrap();
        let registry = Registry::new();
        let metrics = StoreMetrics::register(&registry).unwrap();
        let store = MeteredStore::wrap(Arc::new(SqliteTicketStore::open(dir.path()).await.unwrap()), &metrics);
        assert_eq!(count(&registry, "get"), 0);
        assert!(sample(&registry, "postgres_queries_total", "audit_advance").is_some(), "exported at 0");

        assert_eq!(store.get("nope").await.unwrap(), None);
        store.get("nope").await.unwrap();
        store.ping().await.unwrap();
        store.list(&ListQuery { limit: 10, ..ListQuery::default() }).await.unwrap();
        assert!(store.commit(&[]).await.iter().all(Result::is_ok));

        assert_eq!(count(&registry, "get"), 2);
        assert_eq!(count(&registry, "ping"), 1);
        assert_eq!(count(&registry, "list"), 1);
        assert_eq!(count(&registry, "commit"), 1);
        assert_eq!(count(&registry, "history"), 0);
        let timed = sample(&registry, "postgres_query_duration_seconds", "get").unwrap();
        assert_eq!(timed.get_histogram().get_sample_count(), 2);
        assert!(timed.get_histogram().get_sample_sum() > 0.0);
        assert_eq!(store.backend(), "embedded", "the backend shows through");
    }

    #[tokio::test]
    async fn an_abandoned_call_is_still_recorded() {
        let registry = Registry::new();
        let metrics = StoreMetrics::register(&registry).unwrap();
        // A call that never finishes, dropped by its caller's timeout.
        let call = async {
            let _t = metrics.start(Op::Ping);
            std::future::pending::<()>().await
        };
        assert!(tokio::time::timeout(std::time::Duration::from_millis(20), call).await.is_err());
        assert_eq!(count(&registry, "ping"), 1);
        let timed = sample(&registry, "postgres_query_duration_seconds", "ping").unwrap();
        // The timeout's deadline is fixed just before the call's clock starts, so allow a millisecond.
        assert!(timed.get_histogram().get_sample_sum() >= 0.019, "timed until abandoned");
    }
}
