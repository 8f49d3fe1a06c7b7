//! Kafka ingestion: the orchestrator publishes tickets to `execution.tickets`; this service consumes them
//! (never publishes there). [`decode`] turns a payload into a create request, [`offsets`] decides what may be
//! committed, [`consumer`] runs the loop. Off unless `KAFKA_BOOTSTRAP_SERVERS` is set.

pub mod consumer;
pub mod decode;
pub mod offsets;

pub use consumer::{KafkaHealth, KafkaIngest};
