//! The metrics of the observability work, kept out of `metrics.rs` so that [`super::Metrics`] only holds them:
//! store calls ([`StoreMetrics`]), gRPC calls ([`GrpcMetrics`]) and tickets by status ([`TicketsByStatus`]). Registered in the one registry of [`super::Metrics`].

use prometheus::Registry;

use super::tickets_by_status::TicketsByStatus;
use crate::grpc::metrics_layer::GrpcMetrics;
use crate::store::metered::StoreMetrics;

/// Metrics recorded by decorators and layers around the service rather than by the service itself.
#[derive(Clone)]
pub struct ObservabilityMetrics {
    /// `postgres_queries_total{operation}`, `postgres_query_duration_seconds{operation}`.
    pub store: StoreMetrics,
    /// `grpc_server_started_total`, `grpc_server_handled_total` (with `grpc_code`) and `grpc_server_handling_seconds`,
    /// labelled `grpc_type`, `grpc_service`, `grpc_method` as go-grpc-prometheus does.
    pub grpc: GrpcMetrics,
    /// `tickets_by_status{status}`, sampled from the store when scraped.
    pub tickets_by_status: TicketsByStatus,
}

impl ObservabilityMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        Ok(ObservabilityMetrics {
            store: StoreMetrics::register(registry)?,
            grpc: GrpcMetrics::register(registry)?,
            tickets_by_status: TicketsByStatus::register(registry)?,
        })
    }
}
