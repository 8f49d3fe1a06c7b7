//! Kafka: ingestion and event publication, off unless `KAFKA_BOOTSTRAP_SERVERS` is set.
//!
//! Ingestion: the orchestrator publishes tickets to `execution.tickets`; this service consumes them (never
//! publishes there). [`decode`] turns a payload into a create request, [`offsets`] decides what may be
//! committed, [`consumer`] runs the loop. Publication: [`publisher`] sends every ticket event from the outbox
//! to `execution.ticket.events`, and SLA violations also to `sla.violations`.

pub mod consumer;
pub mod decode;
pub mod offsets;
pub mod publisher;

pub use consumer::{KafkaHealth, KafkaIngest};
