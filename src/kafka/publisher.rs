//! The ticket event publisher: an [`OutboxSink`] over an idempotent Kafka producer, driven by an
//! [`OutboxShipper`](actors::shipper::OutboxShipper) on the outbox's `events` cursor ([`Outbox::Events`]) — the same
//! outbox, written in each change's own transaction, that the audit trail is shipped from.
//!
//! - Every outbox record of a ticket event (`ticket.*`) becomes one JSON message on the events topic
//!   (`execution.ticket.events`); an SLA violation ([`AuditEvent::sla_violation`], decided in the domain:
//!   deadline breached, start overdue, final timeout) also one on the violations topic (`sla.violations`), the
//!   same bytes and headers. Records of minted tokens (`token.*`) and webhook attempts (`webhook.*`) are passed
//!   over: they are the service's own bookkeeping (audit trail and history), not ticket events.
//! - Key: the ticket id, so a ticket's events share a partition and keep their outbox order. Headers:
//!   `traceparent` (the one stored with the change — see `actors::trace` — or a new trace), `event-type` (the
//!   kind), `event-id`, `content-type`. Timestamp: when the change committed.
//! - A batch counts as published only when the brokers acknowledged every message (`acks=all`); otherwise it
//!   stays in the outbox and is published again, whole, by a new producer (see `KafkaEventSink::renew`).
//!   Idempotence (`enable.idempotence`) keeps the producer's own retries from duplicating or reordering; a
//!   batch published again after a failure or a crash does repeat messages: delivery is at least once, and
//!   consumers de-duplicate by `event-id`.
//! - Never to the consumed tickets topic: [`KafkaSettings::check_event_topics`] refuses such a configuration.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use actors::history::AuditEvent;
use actors::history::SlaViolation;
use actors::outbox_sink::{OutboxSink, SinkError};
#[cfg(doc)]
use actors::store::Outbox;
use anyhow::Context as _;
use async_trait::async_trait;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::future_producer::DeliveryFuture;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};

use crate::config::{KafkaEventsSettings, KafkaSettings};

/// The message body: the record as `GET …/history` shows it, plus `timestamp` (RFC 3339) and, for a
/// violation, `sla_violation`.
///
/// Written straight from the record (no intermediate `serde_json::Value`: at ingest rates the publisher
/// serializes two of these per ticket created).
pub fn payload(e: &AuditEvent) -> Vec<u8> {
    #[derive(serde::Serialize)]
    struct Payload<'a> {
        #[serde(flatten)]
        record: &'a AuditEvent,
        timestamp: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        sla_violation: Option<SlaViolation>,
    }
    let timestamp = chrono::DateTime::from_timestamp_millis(e.at).unwrap_or_default();
    let body = Payload {
        record: e,
        timestamp: timestamp.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        sla_violation: e.sla_violation(),
    };
    serde_json::to_vec(&body).expect("an audit record serializes")
}

/// See the module docs.
pub struct KafkaEventSink {
    client: ClientConfig,
    topics: KafkaEventsSettings,
    /// Replaced after a failed batch ([`KafkaEventSink::renew`]).
    producer: Mutex<FutureProducer>,
}

impl KafkaEventSink {
    /// A producer for the topics of `settings.events` (connecting lazily: brokers that are down at startup
    /// only delay publishing). Fails when publishing is off or would go to a forbidden topic.
    pub fn new(settings: &KafkaSettings) -> anyhow::Result<Self> {
        settings.check_event_topics()?;
        let topics = settings.events.clone().context("Kafka event publishing is off (KAFKA_EVENTS_ENABLED)")?;
        let mut client = settings.client_config();
        client
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("message.timeout.ms", topics.delivery_timeout.as_millis().max(1).to_string());
        let producer = client.create().context("creating the Kafka event producer")?;
        Ok(KafkaEventSink { client, topics, producer: Mutex::new(producer) })
    }

    fn producer(&self) -> FutureProducer {
        self.producer.lock().expect("not poisoned").clone()
    }

    /// After a failed batch, the retry gets a new producer. An idempotent producer can be stuck for good: after
    /// the brokers lost its producer id (a broker restarted without its state) librdkafka bumps the epoch and
    /// is refused again, without ever reporting a fatal error; and one in a fatal state refuses everything. A
    /// new producer starts clean; it costs a reconnect only while publishing fails anyway, and nothing of the
    /// old one is lost — every message of the failed batch was settled before the batch failed.
    fn renew(&self, failed: FutureProducer) {
        if let Some((code, reason)) = failed.client().fatal_error() {
            tracing::warn!(error = %code, reason, "the Kafka event producer hit a fatal error");
        }
        match self.client.create::<FutureProducer>() {
            Ok(fresh) => {
                let old = std::mem::replace(&mut *self.producer.lock().expect("not poisoned"), fresh);
                // Dropping a producer purges, flushes for up to 0.5 s and joins its thread: not on this thread.
                tokio::task::spawn_blocking(move || drop((old, failed)));
            }
            Err(e) => tracing::warn!(error = %e, "could not create a new Kafka event producer; retrying later"),
        }
    }

    /// Hand one message to librdkafka, waiting while its queue is full (at most the delivery timeout).
    async fn enqueue(
        producer: &FutureProducer,
        mut record: FutureRecord<'_, str, [u8]>,
        deadline: Instant,
    ) -> Result<DeliveryFuture, KafkaError> {
        loop {
            match producer.send_result(record) {
                Ok(delivery) => return Ok(delivery),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back))
                    if Instant::now() < deadline =>
                {
                    record = back;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err((e, _)) => return Err(e),
            }
        }
    }

    /// Enqueue every message of the batch in outbox order, then wait for all acknowledgements. Every message
    /// enqueued is awaited, also when the batch fails (each resolves within the delivery timeout), so that
    /// nothing of this attempt is still under way when the batch is published again.
    async fn publish(&self, producer: &FutureProducer, events: &[AuditEvent]) -> Result<usize, String> {
        let deadline = Instant::now() + self.topics.delivery_timeout;
        let mut deliveries = Vec::new();
        let mut published = 0;
        let mut failed = None;
        'batch: for e in events.iter().filter(|e| e.is_ticket_event()) {
            let body = payload(e);
            let traceparent = e.traceparent.clone().unwrap_or_else(|| actors::trace::traceparent_in(None));
            let violation = e.sla_violation().map(|_| self.topics.sla_violations_topic.as_str());
            for topic in std::iter::once(self.topics.topic.as_str()).chain(violation) {
                let headers = OwnedHeaders::new_with_capacity(4)
                    .insert(Header { key: "traceparent", value: Some(traceparent.as_str()) })
                    .insert(Header { key: "event-type", value: Some(e.kind.as_str()) })
                    .insert(Header { key: "event-id", value: Some(e.event_id.as_str()) })
                    .insert(Header { key: "content-type", value: Some("application/json") });
                let record = FutureRecord::to(topic)
                    .key(e.ticket_id.as_str())
                    .payload(body.as_slice())
                    .timestamp(e.at)
                    .headers(headers);
                match Self::enqueue(producer, record, deadline).await {
                    Ok(delivery) => deliveries.push((topic, delivery)),
                    Err(err) => {
                        failed = Some(format!("producing to {topic}: {err}"));
                        break 'batch;
                    }
                }
            }
            published += 1;
        }
        for (topic, delivery) in deliveries {
            let error = match delivery.await {
                Ok(Ok(_)) => continue,
                Ok(Err((err, _))) => format!("publishing to {topic}: {err}"),
                Err(_) => format!("publishing to {topic}: the producer was closed"),
            };
            failed.get_or_insert(error);
        }
        failed.map_or(Ok(published), Err)
    }
}

#[async_trait]
impl OutboxSink for KafkaEventSink {
    async fn ship(&self, events: &[AuditEvent]) -> Result<usize, SinkError> {
        let producer = self.producer();
        match self.publish(&producer, events).await {
            Ok(published) => Ok(published),
            Err(e) => {
                self.renew(producer);
                Err(SinkError(e))
            }
        }
    }

    fn name(&self) -> &'static str {
        "kafka"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn record(kind: &str, actor: &str, details: Value) -> AuditEvent {
        AuditEvent {
            event_id: "e-1".into(),
            ticket_id: "t-1".into(),
            kind: kind.into(),
            from_status: Some("RUNNING".into()),
            to_status: Some("FAILED".into()),
            version: Some(4),
            actor: actor.into(),
            at: 1_800_000_000_123,
            details,
            traceparent: None,
        }
    }

    #[test]
    fn the_payload_is_the_history_record_with_a_timestamp() {
        let mut e = record("ticket.sla_breached", "sla", json!({"late_ms": 5}));
        e.traceparent = Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into());
        let body: Value = serde_json::from_slice(&payload(&e)).unwrap();
        assert_eq!(
            body,
            json!({
                "event_id": "e-1", "ticket_id": "t-1", "kind": "ticket.sla_breached", "from_status": "RUNNING",
                "to_status": "FAILED", "version": 4, "actor": "sla", "at": 1_800_000_000_123i64,
                "details": {"late_ms": 5},
                "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                "timestamp": "2027-01-15T08:00:00.123Z", "sla_violation": "deadline_breached",
            })
        );
        let plain: Value = serde_json::from_slice(&payload(&record("ticket.completed", "o", Value::Null))).unwrap();
        assert!(plain.get("sla_violation").is_none() && plain.get("traceparent").is_none(), "{plain}");
    }

    #[test]
    fn a_forbidden_topic_is_refused_when_the_publisher_starts() {
        let mut settings = KafkaSettings {
            bootstrap_servers: "127.0.0.1:9".into(),
            group_id: "g".into(),
            topic: "execution.tickets".into(),
            dlq_topic: "execution.tickets.dlq".into(),
            auto_offset_reset: "earliest".into(),
            schema_registry_url: None,
            client_properties: Vec::new(),
            session_timeout_ms: None,
            max_poll_interval_ms: None,
            max_in_flight: 1,
            events: Some(KafkaEventsSettings {
                topic: "execution.tickets".into(),
                sla_violations_topic: "sla.violations".into(),
                delivery_timeout: Duration::from_secs(1),
            }),
        };
        let err = KafkaEventSink::new(&settings).err().expect("refused").to_string();
        assert!(err.contains("consumes"), "{err}");
        settings.events.as_mut().unwrap().topic = "execution.ticket.events".into();
        assert!(KafkaEventSink::new(&settings).is_ok());
        settings.events = None;
        assert!(KafkaEventSink::new(&settings).is_err(), "publishing is off");
    }
}
