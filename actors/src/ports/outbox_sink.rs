//! The outbox sink port: where shipped outbox records end up (MongoDB, Kafka). The adapters are the
//! service's; the shipper that drives them is [`crate::system::shipper::OutboxShipper`].

use async_trait::async_trait;

use crate::domain::history::AuditEvent;

/// Why a batch could not be shipped; the batch stays in the outbox and is retried.
#[derive(Debug, Clone, thiserror::Error)]
#[error("sink unavailable: {0}")]
pub struct SinkError(pub String);

/// Where shipped outbox records end up: MongoDB (the audit trail), Kafka (the ticket event stream).
#[async_trait]
pub trait OutboxSink: Send + Sync + 'static {
    /// Take `events` (in outbox order); `Ok` only when every one of them is durably taken — then the batch is
    /// behind the cursor and never offered again. A sink may pass over records it has no use for (they count as
    /// taken); `Ok(n)`: the records it stored or published, for its metrics. The same records may come again after a
    /// crash: a sink stores an `event_id` once (MongoDB), or passes them on for its readers to de-duplicate
    /// (Kafka).
    async fn ship(&self, events: &[AuditEvent]) -> Result<usize, SinkError>;
    /// For logs: "mongodb", "kafka".
    fn name(&self) -> &'static str;
}
