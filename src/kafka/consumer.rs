//! The `execution.tickets` consumer: at-least-once into an idempotent sink.
//!
//! - Every message is decoded on its own ([`decode`](super::decode)) and created through the same actor path
//!   as REST and gRPC (`Router::create`, actor `kafka`): one validation, one status machine. A redelivered
//!   message is an idempotent create (same id, same content): success, not a second ticket.
//! - Messages are handled concurrently (the ticket actors' group commit turns many creates into one
//!   transaction); a partition's offset is *stored* for commit only up to the first message not yet durably
//!   handled ([`PartitionOffsets`]); librdkafka commits stored offsets every second, on rebalance and on close.
//! - Poison (undecodable, invalid, conflicting with a different ticket of the same id) goes to the DLQ with
//!   headers saying why and where it came from; then the offset moves on.
//! - Transient failures (store down, service overloaded, registry or DLQ unreachable) are retried with a
//!   back-off, never dead-lettered, and hold the offset back. At `KAFKA_MAX_IN_FLIGHT` messages in flight
//!   the consumer stops receiving; after a second of that it pauses the partitions (and keeps polling, so it
//!   stays in its group).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actors::{Router, TicketError};
use anyhow::Context as _;
use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Headers, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::statistics::Statistics;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::{mpsc, watch};
use tracing::Instrument as _;

use super::decode::{DecodeError, Decoder};
use super::offsets::PartitionOffsets;
use crate::config::KafkaSettings;
use crate::metrics::Metrics;
use crate::tracecontext::spans::recording_ticket_id;

/// What `/ready` shows of the consumer.
#[derive(Clone, Default)]
pub struct KafkaHealth {
    inner: Arc<Mutex<HealthState>>,
}

#[derive(Default)]
struct HealthState {
    /// The last client error while no message has arrived since (broker unreachable, …).
    degraded: Option<String>,
    /// The consumer loop ended with an error: ingestion is stopped.
    failed: Option<String>,
    assigned: usize,
}

impl KafkaHealth {
    /// `("ok" | "degraded" | "failed", detail)`.
    pub fn status(&self) -> (&'static str, String) {
        let s = self.inner.lock().expect("not poisoned");
        match (&s.failed, &s.degraded) {
            (Some(e), _) => ("failed", e.clone()),
            (None, Some(e)) => ("degraded", e.clone()),
            (None, None) => ("ok", format!("{} partitions assigned", s.assigned)),
        }
    }

    fn update(&self, f: impl FnOnce(&mut HealthState)) {
        f(&mut self.inner.lock().expect("not poisoned"));
    }
}

/// librdkafka callbacks: statistics (consumer lag), client errors (health), rebalances.
struct IngestContext {
    metrics: Metrics,
    health: KafkaHealth,
    /// Bumped after every rebalance: offsets tracked before it no longer count.
    generation: Arc<AtomicU64>,
}

impl ClientContext for IngestContext {
    fn stats(&self, statistics: Statistics) {
        // An error marks the consumer degraded until a message arrives; an idle consumer clears it when the
        // statistics show a broker connection up again (else one blip would leave it degraded for good).
        if statistics.brokers.values().any(|b| b.state == "UP" && b.nodeid >= 0) {
            self.health.update(|s| s.degraded = None);
        }
        for topic in statistics.topics.values() {
            for (partition, p) in &topic.partitions {
                if *partition >= 0 && p.consumer_lag >= 0 {
                    self.metrics.consumer_lag.with_label_values(&[&partition.to_string()]).set(p.consumer_lag);
                }
            }
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(error = %error, reason, "Kafka client error");
        // `/ready` is unauthenticated: broker addresses and client text stay in the log.
        self.health.update(|s| {
            s.degraded = Some("the brokers are unreachable or failing (details in the service log)".into())
        });
    }
}

impl ConsumerContext for IngestContext {
    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        let assigned = consumer.assignment().map(|a| a.count()).unwrap_or(0);
        self.health.update(|s| s.assigned = assigned);
        match rebalance {
            Rebalance::Assign(tpl) => tracing::info!(partitions = tpl.count(), "Kafka partitions assigned"),
            Rebalance::Revoke(tpl) => tracing::info!(partitions = tpl.count(), "Kafka partitions revoked"),
            Rebalance::Error(e) => tracing::warn!(error = %e, "Kafka rebalance error"),
        }
    }
}

/// The running consumer.
pub struct KafkaIngest {
    stop: watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<()>>,
    health: KafkaHealth,
}

/// How long the consumer may stop receiving (at `KAFKA_MAX_IN_FLIGHT`) before it pauses its partitions and
/// polls again; well under any sane `max.poll.interval.ms`.
const PAUSE_AFTER: Duration = Duration::from_secs(1);

/// A message handled (stored, or dead-lettered).
struct Done {
    generation: u64,
    topic: String,
    partition: i32,
    offset: i64,
}

impl KafkaIngest {
    /// Subscribe and start consuming on a thread of its own (its own Tokio runtime, so ingestion never
    /// competes with request handling for an executor).
    pub fn start(settings: KafkaSettings, router: Router, metrics: Metrics) -> anyhow::Result<Self> {
        let health = KafkaHealth::default();
        let generation = Arc::new(AtomicU64::new(0));
        let context =
            IngestContext { metrics: metrics.clone(), health: health.clone(), generation: Arc::clone(&generation) };
        let mut config = settings.client_config();
        config
            .set("group.id", &settings.group_id)
            .set("enable.auto.commit", "true")
            .set("auto.commit.interval.ms", "1000")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", &settings.auto_offset_reset)
            .set("statistics.interval.ms", "5000")
            // Larger fetches: a ticket is ~1 KB, and the default 1 MB per partition per fetch caps ingestion
            // at one fetch round trip per thousand tickets.
            .set("max.partition.fetch.bytes", "16777216")
            .set("fetch.max.bytes", "67108864")
            .set("fetch.wait.max.ms", "100");
        if let Some(ms) = settings.session_timeout_ms {
            config.set("session.timeout.ms", ms.to_string());
        }
        if let Some(ms) = settings.max_poll_interval_ms {
            config.set("max.poll.interval.ms", ms.to_string());
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("kafka-ingest")
            .enable_all()
            .build()
            .context("starting the Kafka runtime")?;
        let consumer: StreamConsumer<IngestContext> = {
            let _guard = runtime.enter();
            config.create_with_context(context).context("creating the Kafka consumer")?
        };
        consumer.subscribe(&[&settings.topic]).with_context(|| format!("subscribing to {}", settings.topic))?;
        let producer: FutureProducer = {
            let _guard = runtime.enter();
            let mut producer_config = settings.client_config();
            producer_config.set("enable.idempotence", "true").set("message.timeout.ms", "30000");
            producer_config.create().context("creating the Kafka DLQ producer")?
        };
        let (stop, stopped) = watch::channel(false);
        let loop_health = health.clone();
        tracing::info!(topic = %settings.topic, group = %settings.group_id, dlq = %settings.dlq_topic, "Kafka consumer started");
        let thread = std::thread::Builder::new().name("kafka-ingest".into()).spawn(move || {
            let ingest = Ingest {
                decoder: Decoder::new(settings.schema_registry_url.clone()),
                settings,
                router,
                metrics,
                producer,
                generation,
            };
            if let Err(e) = runtime.block_on(ingest.run(consumer, stopped)) {
                tracing::error!(error = %e, "Kafka consumer stopped");
                loop_health.update(|s| s.failed = Some("the consumer stopped (details in the service log)".into()));
            }
        })?;
        Ok(KafkaIngest { stop, thread: Some(thread), health })
    }

    pub fn health(&self) -> KafkaHealth {
        self.health.clone()
    }

    /// Stop consuming, let messages in flight finish (up to 10 s), commit what is stored, leave the group.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if let Some(thread) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}

impl Drop for KafkaIngest {
    /// A consumer whose service goes away leaves its group (the loop ends when the stop channel closes).
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

struct Ingest {
    settings: KafkaSettings,
    decoder: Decoder,
    router: Router,
    metrics: Metrics,
    producer: FutureProducer,
    generation: Arc<AtomicU64>,
}

impl Ingest {
    async fn run(self, consumer: StreamConsumer<IngestContext>, mut stop: watch::Receiver<bool>) -> anyhow::Result<()> {
        let this = Arc::new(self);
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Done>();
        let mut partitions: HashMap<(String, i32), PartitionOffsets> = HashMap::new();
        let mut generation = this.generation.load(Ordering::SeqCst);
        let mut in_flight = 0usize;
        let mut paused = false;
        // Since when `max` messages are in flight (the consumer stopped taking more).
        let mut full_since: Option<tokio::time::Instant> = None;
        let max = this.settings.max_in_flight.max(1);
        loop {
            this.follow_rebalance(&mut generation, &mut partitions, &mut paused);
            // Back-pressure: at `max` in flight the loop stops receiving and only waits for messages to finish;
            // what librdkafka prefetched stays queued. Only when that lasts (the store is down or very slow) are
            // the partitions paused, so the loop can poll again and the consumer stays in its group — a pause
            // drops the prefetched messages (they are fetched again on resume), too costly for a moment's
            // back-pressure under load.
            let full = in_flight >= max;
            if !full {
                full_since = None;
            }
            let pause_at = full.then(|| *full_since.get_or_insert_with(tokio::time::Instant::now) + PAUSE_AFTER);
            if !paused && pause_at.is_some_and(|at| tokio::time::Instant::now() >= at) {
                if let Ok(assignment) = consumer.assignment() {
                    let _ = consumer.pause(&assignment);
                }
                paused = true;
            } else if paused && in_flight <= max / 2 {
                if let Ok(assignment) = consumer.assignment() {
                    let _ = consumer.resume(&assignment);
                }
                paused = false;
            }
            tokio::select! {
                biased;
                _ = stop.changed() => break,
                Some(done) = done_rx.recv() => {
                    // Everything finished meanwhile, then one offset store for the partitions that moved.
                    let mut moved = Vec::new();
                    in_flight -= 1;
                    finished(&mut partitions, generation, done, &mut moved);
                    while let Ok(done) = done_rx.try_recv() {
                        in_flight -= 1;
                        finished(&mut partitions, generation, done, &mut moved);
                    }
                    store_offsets(&consumer, &partitions, &moved);
                }
                _ = tokio::time::sleep_until(pause_at.unwrap_or_else(tokio::time::Instant::now)),
                    if pause_at.is_some() && !paused => {}
                msg = consumer.recv(), if !full || paused => {
                    let msg = match msg {
                        Ok(m) => m.detach(),
                        Err(e) => {
                            tracing::warn!(error = %e, "Kafka receive error");
                            tokio::time::sleep(Duration::from_millis(200)).await;
                            continue;
                        }
                    };
                    // The rebalance callback runs inside `recv`: a message it returns after an assignment
                    // belongs to the new generation. Tracked under the old one, its offset was never stored (the
                    // last messages before a pause in traffic stayed uncommitted, and the lag unknown).
                    this.follow_rebalance(&mut generation, &mut partitions, &mut paused);
                    consumer.context().health.update(|s| s.degraded = None);
                    this.metrics.consumed.inc();
                    let key = (msg.topic().to_owned(), msg.partition());
                    partitions.entry(key).or_default().started(msg.offset());
                    in_flight += 1;
                    let (this, done_tx) = (Arc::clone(&this), done_tx.clone());
                    tokio::spawn(async move {
                        let done = Done {
                            generation,
                            topic: msg.topic().to_owned(),
                            partition: msg.partition(),
                            offset: msg.offset(),
                        };
                        let span = crate::tracecontext::spans::kafka_message_span(&msg);
                        this.handle(msg).instrument(span).await;
                        let _ = done_tx.send(done);
                    });
                }
            }
        }
        // Graceful stop: let what is in flight finish, store its offsets, commit.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while in_flight > 0 {
            match tokio::time::timeout_at(deadline, done_rx.recv()).await {
                Ok(Some(done)) => {
                    in_flight -= 1;
                    let mut moved = Vec::new();
                    finished(&mut partitions, generation, done, &mut moved);
                    store_offsets(&consumer, &partitions, &moved);
                }
                _ => break,
            }
        }
        if let Err(e) = consumer.commit_consumer_state(rdkafka::consumer::CommitMode::Sync) {
            // Nothing stored since the last commit is not an error worth more than a note.
            tracing::info!(error = %e, "final Kafka commit");
        }
        tracing::info!(unfinished = in_flight, "Kafka consumer stopped");
        Ok(())
    }

    /// After a rebalance the group restarts every partition from its committed offset: what was tracked before
    /// is delivered again (and handled idempotently), so tracking starts afresh, in the new generation.
    fn follow_rebalance(
        &self,
        generation: &mut u64,
        partitions: &mut HashMap<(String, i32), PartitionOffsets>,
        paused: &mut bool,
    ) {
        let now = self.generation.load(Ordering::SeqCst);
        if std::mem::replace(generation, now) != now {
            partitions.clear();
            *paused = false;
        }
    }

    /// Handle one message until it is stored or dead-lettered, retrying transient failures forever (with a
    /// capped back-off): an at-least-once consumer must never skip a message it could not store.
    async fn handle(&self, msg: OwnedMessage) {
        let mut backoff = Duration::from_millis(100);
        loop {
            let outcome = match self.decoder.decode(msg.payload()).await {
                Err(DecodeError::Invalid(e)) => Err(Poison { reason: "decode", error: e }),
                Err(DecodeError::RegistryUnavailable(e)) => Ok(Err(("schema_registry", e))),
                Ok(new) => match self.router.ingest(recording_ticket_id(new), "kafka").await {
                    Ok((ticket, created)) => {
                        tracing::debug!(ticket_id = %ticket.ticket_id, created, offset = msg.offset(), "ticket ingested");
                        return;
                    }
                    Err(TicketError::Invalid(e)) => Err(Poison { reason: "validation", error: e.to_string() }),
                    Err(e @ TicketError::AlreadyExists(_)) => Err(Poison { reason: "conflict", error: e.to_string() }),
                    Err(TicketError::Store(actors::store::StoreError::Rejected(e))) => {
                        Err(Poison { reason: "rejected", error: e })
                    }
                    Err(e @ (TicketError::Overloaded | TicketError::Store(_) | TicketError::ActorFailed(_))) => {
                        Ok(Err(("store", e.to_string())))
                    }
                    Err(e) => Err(Poison { reason: "unexpected", error: e.to_string() }),
                },
            };
            let transient = match outcome {
                Err(poison) => match self.dead_letter(&msg, &poison).await {
                    Ok(()) => return,
                    Err(e) => ("dlq", e),
                },
                Ok(Err(transient)) => (transient.0, transient.1),
                Ok(Ok(())) => unreachable!("success returns above"),
            };
            self.metrics.processing_errors.with_label_values(&[transient.0]).inc();
            tracing::warn!(
                partition = msg.partition(),
                offset = msg.offset(),
                reason = transient.0,
                error = %transient.1,
                retry_in_ms = backoff.as_millis() as u64,
                "transient failure; the message will be retried"
            );
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    /// Publish a poison message to the DLQ with why and where it came from.
    async fn dead_letter(&self, msg: &OwnedMessage, poison: &Poison) -> Result<(), String> {
        self.metrics.processing_errors.with_label_values(&[poison.reason]).inc();
        let partition = msg.partition().to_string();
        let offset = msg.offset().to_string();
        let timestamp = msg.timestamp().to_millis().unwrap_or(-1).to_string();
        let failed_at = chrono::Utc::now().timestamp_millis().to_string();
        let mut headers = OwnedHeaders::new();
        if let Some(original) = msg.headers() {
            for h in original.iter() {
                headers = headers.insert(Header { key: h.key, value: h.value });
            }
        }
        let headers = headers
            .insert(Header { key: "error", value: Some(poison.error.as_str()) })
            .insert(Header { key: "error_reason", value: Some(poison.reason) })
            .insert(Header { key: "original_topic", value: Some(msg.topic()) })
            .insert(Header { key: "original_partition", value: Some(partition.as_str()) })
            .insert(Header { key: "original_offset", value: Some(offset.as_str()) })
            .insert(Header { key: "original_timestamp", value: Some(timestamp.as_str()) })
            .insert(Header { key: "failed_at", value: Some(failed_at.as_str()) });
        let mut record: FutureRecord<'_, [u8], [u8]> =
            FutureRecord::to(&self.settings.dlq_topic).payload(msg.payload().unwrap_or_default()).headers(headers);
        if let Some(key) = msg.key() {
            record = record.key(key);
        }
        match self.producer.send(record, Duration::from_secs(10)).await {
            Ok(_) => {
                self.metrics.dlq.inc();
                tracing::warn!(
                    partition = msg.partition(),
                    offset = msg.offset(),
                    reason = poison.reason,
                    error = %poison.error,
                    dlq = %self.settings.dlq_topic,
                    "poison message dead-lettered"
                );
                Ok(())
            }
            Err((e, _)) => Err(format!("publishing to {}: {e}", self.settings.dlq_topic)),
        }
    }
}

/// Record a handled message; note its partition in `moved` if the partition's committable offset moved.
fn finished(
    partitions: &mut HashMap<(String, i32), PartitionOffsets>,
    generation: u64,
    done: Done,
    moved: &mut Vec<(String, i32)>,
) {
    if done.generation != generation {
        return;
    }
    let key = (done.topic, done.partition);
    let Some(p) = partitions.get_mut(&key) else { return };
    if p.finished(done.offset).is_some() && !moved.contains(&key) {
        moved.push(key);
    }
}

/// Store the committable offsets of the partitions that moved, in one call (librdkafka commits them).
fn store_offsets(
    consumer: &StreamConsumer<IngestContext>,
    partitions: &HashMap<(String, i32), PartitionOffsets>,
    moved: &[(String, i32)],
) {
    let mut tpl = TopicPartitionList::new();
    for key in moved {
        if let Some(next) = partitions.get(key).and_then(PartitionOffsets::committable) {
            if let Err(e) = tpl.add_partition_offset(&key.0, key.1, Offset::Offset(next)) {
                tracing::warn!(error = %e, partition = key.1, "offset not stored");
            }
        }
    }
    if tpl.count() > 0 {
        if let Err(e) = consumer.store_offsets(&tpl) {
            // A partition was revoked meanwhile: its new owner starts from the committed offset.
            tracing::debug!(error = %e, "offsets not stored");
        }
    }
}

/// A message no retry will fix.
struct Poison {
    reason: &'static str,
    error: String,
}

impl KafkaSettings {
    /// Connection and security properties shared by the consumer and the DLQ producer.
    pub fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.bootstrap_servers).set("client.id", "execution-ticket-service");
        for (key, value) in &self.client_properties {
            config.set(key, value);
        }
        config
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// librdkafka statistics with one broker in `state` (node id 1) besides a bootstrap entry (node id -1,
    /// shown UP here: it is not a broker of the cluster, so it must not count).
    fn stats_with_broker(state: &str) -> Statistics {
        serde_json::from_value(serde_json::json!({
            "name": "c", "client_id": "c", "type": "consumer", "ts": 0, "time": 0, "age": 0, "replyq": 0,
            "msg_cnt": 0, "msg_size": 0, "msg_max": 0, "msg_size_max": 0, "simple_cnt": 0, "metadata_cache_cnt": 0,
            "tx": 0, "tx_bytes": 0, "rx": 0, "rx_bytes": 0, "txmsgs": 0, "txmsg_bytes": 0, "rxmsgs": 0,
            "rxmsg_bytes": 0,
            "brokers": {
                "bootstrap": broker("UP", -1),
                "127.0.0.1:9092/1": broker(state, 1),
            },
            "topics": {}
        }))
        .expect("valid statistics")
    }

    fn broker(state: &str, nodeid: i32) -> serde_json::Value {
        serde_json::json!({
            "name": "b", "nodeid": nodeid, "nodename": "b", "source": "configured", "state": state, "stateage": 0,
            "outbuf_cnt": 0, "outbuf_msg_cnt": 0, "waitresp_cnt": 0, "waitresp_msg_cnt": 0, "tx": 0, "txbytes": 0,
            "txerrs": 0, "txretries": 0, "txidle": 0, "req_timeouts": 0, "rx": 0, "rxbytes": 0, "rxerrs": 0, "rxcorriderrs": 0,
            "rxpartial": 0, "rxidle": 0, "zbuf_grow": 0, "buf_grow": 0, "req": {}, "toppars": {}
        })
    }

    #[test]
    fn an_idle_consumer_is_healthy_again_once_a_broker_is_up() {
        let context = IngestContext {
            metrics: Metrics::new().unwrap(),
            health: KafkaHealth::default(),
            generation: Arc::default(),
        };
        context.error(KafkaError::Global(rdkafka::types::RDKafkaErrorCode::BrokerTransportFailure), "refused");
        assert_eq!(context.health.status().0, "degraded");
        context.stats(stats_with_broker("DOWN"));
        assert_eq!(context.health.status().0, "degraded", "still no broker: still degraded");
        context.stats(stats_with_broker("UP"));
        assert_eq!(context.health.status().0, "ok", "a broker is up again, without a message having arrived");
    }
}
