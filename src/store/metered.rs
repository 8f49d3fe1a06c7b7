//! [`MeteredStore`]: a [`TicketStore`] decorator that counts and times every store call.
//!
//! It wraps whichever backend is configured, so the series describe SQLite calls on the embedded store too;
//! the names say `postgres_*` only because that is what the dashboards and the observability issue ask for.
//! The `operation` label is the trait method (`get`, `commit`, …), never a SQL text: one `commit` is one group
//! commit (possibly many tickets, and a retry unit by unit when the batch failed), and the label set stays
//! small and fixed.

use std::sync::Arc;
use std::time::Instant;

use actors::store::{StoreError, TicketStore};
use prometheus::{Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry};

use super::layer::{Layered, Op, StoreLayer};

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
pub struct CallTimer<'a> {
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
pub type MeteredStore = Layered<StoreMetrics>;

impl MeteredStore {
    pub fn new(inner: Arc<dyn TicketStore>, metrics: StoreMetrics) -> Self {
        Layered::with_layer(inner, metrics)
    }

    /// `inner`, metered, as the trait object the actor system takes.
    pub fn wrap(inner: Arc<dyn TicketStore>, metrics: &StoreMetrics) -> Arc<dyn TicketStore> {
        Arc::new(MeteredStore::new(inner, metrics.clone()))
    }
}

/// Every call is let through and timed, however it ends.
impl StoreLayer for StoreMetrics {
    type Pass<'a> = CallTimer<'a>;

    fn enter(&self, op: Op) -> Result<CallTimer<'_>, StoreError> {
        Ok(self.start(op))
    }

    fn leave(&self, timer: CallTimer<'_>, _unreachable: bool) {
        drop(timer);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sqlite::SqliteTicketStore;
    use actors::store::ListQuery;

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
        assert!(store.commit(&[], None).await.iter().all(Result::is_ok));

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
