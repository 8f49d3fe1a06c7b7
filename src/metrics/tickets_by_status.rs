//! `tickets_by_status{status}`: how many tickets the store holds in each status.
//!
//! A true count from the store (`TicketStore::count_by_status`), not a tally of this replica's events, so
//! every replica reports the same store-wide figure (aggregate with `max`, not `sum`). It is sampled when
//! `/metrics` is scraped, at most once per [`MAX_AGE`]: concurrent or frequent scrapes share one query. A
//! query that fails or takes longer than [`QUERY_TIMEOUT`] leaves the previous values in place (logged),
//! so a slow store cannot hold up the scrape of every other metric.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actors::enums::TicketStatus;
use actors::store::TicketStore;
use prometheus::{IntGaugeVec, Opts, Registry};
use tokio::sync::Mutex;

/// The longest a sample is served before the store is asked again — unless counting takes long: a sample is
/// then served for `COST_FACTOR` times what the last count took (a full scan: ≈ 0.5 s at a million
/// tickets), so frequent scrapes cannot keep more than ≈ 5 % of a database core busy counting.
pub const MAX_AGE: Duration = Duration::from_secs(5);
const COST_FACTOR: u32 = 20;
/// The longest a scrape waits for the count.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(2);

/// The gauge and when it was last sampled.
#[derive(Clone)]
pub struct TicketsByStatus {
    gauge: IntGaugeVec,
    max_age: Duration,
    /// A sample is served at least this many times as long as its query took ([`COST_FACTOR`]).
    cost_factor: u32,
    /// When the last query was made (`None`: never) and how long the sample is served. Held across the
    /// query, so one scrape queries and the others wait for its result.
    sampled: Arc<Mutex<Option<(Instant, Duration)>>>,
}

impl TicketsByStatus {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        Self::register_with(registry, MAX_AGE, COST_FACTOR)
    }

    fn register_with(registry: &Registry, max_age: Duration, cost_factor: u32) -> prometheus::Result<Self> {
        let gauge = IntGaugeVec::new(
            Opts::new("tickets_by_status", "Tickets in the store by status (store-wide, sampled at most every 5 s, less often when counting is slow)"),
            &["status"],
        )?;
        registry.register(Box::new(gauge.clone()))?;
        Ok(TicketsByStatus { gauge, max_age, cost_factor, sampled: Arc::default() })
    }

    /// Query `store` unless the current sample is younger than the maximum age. Every status is set (0 when
    /// the store has none), so a status that empties drops to 0 instead of keeping its last count.
    pub async fn refresh(&self, store: &dyn TicketStore) {
        let mut sampled = self.sampled.lock().await;
        if sampled.is_some_and(|(at, age)| at.elapsed() < age) {
            return;
        }
        let started = Instant::now();
        *sampled = Some((started, self.max_age));
        match tokio::time::timeout(QUERY_TIMEOUT, store.count_by_status()).await {
            Ok(Ok(counts)) => {
                *sampled = Some((started, self.max_age.max(started.elapsed() * self.cost_factor)));
                for status in TicketStatus::ALL {
                    let n = counts.iter().filter(|(s, _)| s == status).map(|(_, n)| *n).sum();
                    self.gauge.with_label_values(&[status.as_str()]).set(n);
                }
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "tickets_by_status: counting tickets failed; keeping the last sample")
            }
            Err(_) => {
                *sampled = Some((started, self.max_age.max(QUERY_TIMEOUT * self.cost_factor)));
                tracing::warn!(
                    timeout_ms = QUERY_TIMEOUT.as_millis() as u64,
                    "tickets_by_status: counting tickets timed out; keeping the last sample"
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sqlite::SqliteTicketStore;
    use actors::store::{Write, WriteUnit};
    use actors::validation::NewTicket;

    fn gauge(registry: &Registry, status: &str) -> Option<i64> {
        let families = registry.gather();
        let family = families.iter().find(|f| f.get_name() == "tickets_by_status")?;
        let m = family.get_metric().iter().find(|m| m.get_label()[0].get_value() == status)?;
        Some(m.get_gauge().get_value() as i64)
    }

    async fn insert(store: &dyn TicketStore, id: &str, status: &str) {
        let new: NewTicket = serde_json::from_value(serde_json::json!({
            "ticket_id": id, "plan_id": "p", "intent_id": "i", "decision_id": "d", "task_id": "t",
            "task_type": "EXECUTE", "description": "work", "priority": "NORMAL", "risk_band": "low",
            "status": status,
            "sla": {"deadline": 4_000_000_000_000i64, "timeout_ms": 1000, "max_retries": 1},
            "qos": {"delivery_mode": "AT_LEAST_ONCE", "consistency": "STRONG", "durability": "PERSISTENT"},
            "security_level": "INTERNAL"
        }))
        .unwrap();
        let ticket = new.validate(1_700_000_000_000, || unreachable!()).unwrap().ticket;
        let outcome = store.commit(&[WriteUnit(vec![Write::Insert(ticket)])], None).await;
        assert!(outcome.iter().all(Result::is_ok), "{outcome:?}");
    }

    #[tokio::test]
    async fn counts_every_status_and_serves_a_cached_sample_until_it_is_old() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteTicketStore::open(dir.path()).await.unwrap();
        insert(&store, "a", "PENDING").await;
        insert(&store, "b", "PENDING").await;
        insert(&store, "c", "RUNNING").await;

        let registry = Registry::new();
        let cached = TicketsByStatus::register_with(&registry, Duration::from_secs(3600), COST_FACTOR).unwrap();
        assert_eq!(gauge(&registry, "PENDING"), None, "nothing before the first scrape");
        cached.refresh(&store).await;
        assert_eq!(gauge(&registry, "PENDING"), Some(2));
        assert_eq!(gauge(&registry, "RUNNING"), Some(1));
        assert_eq!(gauge(&registry, "COMPLETED"), Some(0), "every status is exported");

        insert(&store, "d", "PENDING").await;
        cached.refresh(&store).await;
        assert_eq!(gauge(&registry, "PENDING"), Some(2), "a young sample is served from the cache");

        let other = Registry::new();
        // No minimum age and no spacing by cost: every refresh queries.
        let fresh = TicketsByStatus::register_with(&other, Duration::ZERO, 0).unwrap();
        fresh.refresh(&store).await;
        insert(&store, "e", "PENDING").await;
        fresh.refresh(&store).await;
        assert_eq!(gauge(&other, "PENDING"), Some(4), "an old sample is taken again");
    }
}
