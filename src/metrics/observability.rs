//! The metrics of the observability work, kept out of `metrics.rs` so that [`super::Metrics`] only holds
//! them: store calls ([`StoreMetrics`]). Registered in the one registry of [`super::Metrics`].

use prometheus::Registry;

use crate::store::metered::StoreMetrics;

/// Metrics recorded by decorators and layers around the service rather than by the service itself.
#[derive(Clone)]
pub struct ObservabilityMetrics {
    /// `postgres_queries_total{operation}`, `postgres_query_duration_seconds{operation}`.
    pub store: StoreMetrics,
}

impl ObservabilityMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        Ok(ObservabilityMetrics { store: StoreMetrics::register(registry)? })
    }
}
