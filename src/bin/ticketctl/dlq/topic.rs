//! Reading the dead-letter topic, shared by `dlq list`, `dlq show` and `dlq replay`.
//!
//! The topic is read with manual partition assignment, outside any consumer group, and nothing is committed:
//! reading changes nothing on the broker, so every command can be repeated. A reading ends when each partition
//! reported its end (librdkafka's partition EOF, from the fetches themselves). The partitions' watermarks,
//! taken first, only tell which partitions are empty (not read at all) and where a partition starts: the high
//! watermark is not trusted as the end, since a broker may report it short (tansu, the test broker, answers
//! ListOffsets with one past the last batch's first offset, not past its last record).
//!
//! librdkafka reports on its own (a broker it cannot reach, a connection it reopens) through the client
//! context's log and error callbacks, which by default print warnings on stderr. [`Quiet`] sends them to
//! `tracing` at debug level instead (shown with `TICKETCTL_LOG=librdkafka=debug`): what matters to the
//! operator reaches them as this command's own error, with its exit status.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Args;
use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, Consumer as _, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers as _, Message as _};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};

use crate::exit::{coded, Exit};

/// Where the dead-letter topic is, and how to read it.
#[derive(Args)]
pub struct KafkaArgs {
    /// Kafka bootstrap servers (the service's KAFKA_BOOTSTRAP_SERVERS).
    #[arg(long, env = "KAFKA_BOOTSTRAP_SERVERS")]
    pub bootstrap: String,
    /// The dead-letter topic (the service's KAFKA_DLQ_TOPIC).
    #[arg(long, env = "KAFKA_DLQ_TOPIC", default_value = "execution.tickets.dlq")]
    pub topic: String,
    /// Writer schemas of Confluent-framed Avro messages (as KAFKA_SCHEMA_REGISTRY_URL).
    #[arg(long, env = "KAFKA_SCHEMA_REGISTRY_URL")]
    pub schema_registry: Option<String>,
    /// A librdkafka client property, e.g. `security.protocol=SASL_SSL` (repeatable).
    #[arg(long = "kafka-property", value_name = "KEY=VALUE", value_parser = key_value)]
    pub properties: Vec<(String, String)>,
    /// Give up when the broker answered nothing for this many seconds (no metadata, no message).
    #[arg(long, default_value_t = 10)]
    pub idle_timeout: u64,
}

fn key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.to_owned())),
        _ => Err(format!("{s:?} is not KEY=VALUE")),
    }
}

/// The client context of ticketctl's Kafka reads: librdkafka's own reports go to `tracing` at debug level,
/// not to stderr (see the module docs).
pub struct Quiet;

impl ClientContext for Quiet {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        tracing::debug!(target: "librdkafka", ?level, facility = fac, "{log_message}");
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::debug!(target: "librdkafka", %error, "{reason}");
    }
}

impl ConsumerContext for Quiet {}

/// One message of the dead-letter topic, owned (it outlives the poll that read it).
#[derive(Debug, Clone)]
pub struct DlqMessage {
    pub partition: i32,
    pub offset: i64,
    /// Epoch milliseconds (when it was dead-lettered, for the service's DLQ producer).
    pub timestamp: Option<i64>,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    /// In their order on the message (the original message's headers first, then the service's own).
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

impl DlqMessage {
    /// The value of header `key`, as text. The last one wins: the service copies the original message's
    /// headers before adding its own, so a message dead-lettered again carries its older reasons first.
    pub fn header(&self, key: &str) -> Option<String> {
        self.headers
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .and_then(|(_, v)| v.as_deref())
            .map(|v| String::from_utf8_lossy(v).into_owned())
    }

    fn of(msg: &rdkafka::message::BorrowedMessage<'_>) -> DlqMessage {
        let headers = msg
            .headers()
            .map(|h| h.iter().map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec))).collect())
            .unwrap_or_default();
        DlqMessage {
            partition: msg.partition(),
            offset: msg.offset(),
            timestamp: msg.timestamp().to_millis(),
            key: msg.key().map(<[u8]>::to_vec),
            payload: msg.payload().map(<[u8]>::to_vec),
            headers,
        }
    }
}

/// One partition's watermarks when the topic was opened: `low` is its first offset; `high == low` when empty.
#[derive(Debug, Clone, Copy)]
pub struct Range {
    pub partition: i32,
    pub low: i64,
    pub high: i64,
}

/// The dead-letter topic, opened: its partitions' extent, and a reading in progress.
pub struct Topic {
    consumer: BaseConsumer<Quiet>,
    pub name: String,
    pub ranges: Vec<Range>,
    idle_timeout: Duration,
    /// Partitions being read that have not reported their end yet.
    pending: HashSet<i32>,
    last_message: Instant,
    /// The reading stopped at `--idle-timeout`, short of the ends.
    pub stalled: bool,
}

/// An error of the broker connection: the broker is down or out of reach (exit 6). The error's own text only:
/// its source is the same code again.
fn unreachable(e: KafkaError, what: String) -> anyhow::Error {
    coded(Exit::Unavailable, format!("{what}: {e}"))
}

impl Topic {
    /// Connect, check the topic exists, and take each partition's watermarks.
    pub fn open(args: &KafkaArgs) -> anyhow::Result<Topic> {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &args.bootstrap)
            .set("group.id", "ticketctl-dlq")
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "true")
            .set("client.id", "ticketctl");
        for (k, v) in &args.properties {
            config.set(k, v);
        }
        let consumer: BaseConsumer<Quiet> =
            config.create_with_context(Quiet).map_err(|e| coded(Exit::Usage, format!("the Kafka settings: {e}")))?;
        let timeout = Duration::from_secs(args.idle_timeout.max(1));
        let metadata = consumer.fetch_metadata(Some(&args.topic), timeout).map_err(|e| {
            let what =
                format!("reading the metadata of topic {} from {} (is the broker up?)", args.topic, args.bootstrap);
            unreachable(e, what)
        })?;
        let topic = metadata.topics().iter().find(|t| t.name() == args.topic);
        let partitions: Vec<i32> = topic.map(|t| t.partitions().iter().map(|p| p.id()).collect()).unwrap_or_default();
        let unknown = topic.and_then(|t| t.error()).map(RDKafkaErrorCode::from);
        if unknown == Some(RDKafkaErrorCode::UnknownTopicOrPartition) || partitions.is_empty() {
            return Err(coded(Exit::NotFound, format!("topic {} does not exist on {}", args.topic, args.bootstrap)));
        }
        if let Some(e) = unknown {
            anyhow::bail!("the metadata of topic {}: {e}", args.topic);
        }
        let mut ranges = Vec::with_capacity(partitions.len());
        for partition in partitions {
            let (low, high) = consumer.fetch_watermarks(&args.topic, partition, timeout).map_err(|e| {
                unreachable(e, format!("reading the extent of partition {partition} of {}", args.topic))
            })?;
            ranges.push(Range { partition, low, high });
        }
        ranges.sort_by_key(|r| r.partition);
        tracing::debug!(topic = %args.topic, ?ranges, "watermarks");
        Ok(Topic {
            consumer,
            name: args.topic.clone(),
            ranges,
            idle_timeout: timeout,
            pending: HashSet::new(),
            last_message: Instant::now(),
            stalled: false,
        })
    }

    /// Start reading every message of the topic (its empty partitions skipped); then [`Topic::next`] until
    /// `None`.
    pub fn read_all(&mut self) -> anyhow::Result<()> {
        let starts: Vec<(i32, i64)> =
            self.ranges.iter().filter(|r| r.high > r.low).map(|r| (r.partition, r.low)).collect();
        self.assign(&starts)
    }

    /// Partitions not read to their end yet (after [`Topic::next`] stopped early: more may follow).
    pub fn unfinished(&self) -> bool {
        !self.pending.is_empty()
    }

    /// The message at `partition`:`offset`; a [`Exit::NotFound`] error when there is none (an offset outside the
    /// partition, removed by retention, or a gap of a compacted or transactional topic).
    pub fn read_one(&mut self, partition: i32, offset: i64) -> anyhow::Result<DlqMessage> {
        let range = self.ranges.iter().find(|r| r.partition == partition).copied().ok_or_else(|| {
            coded(
                Exit::NotFound,
                format!("topic {} has no partition {partition} ({} partitions)", self.name, self.ranges.len()),
            )
        })?;
        let missing = || {
            let held = if range.high > range.low {
                format!("starts at offset {}", range.low)
            } else {
                "holds no messages".to_owned()
            };
            coded(Exit::NotFound, format!("no message at {partition}:{offset} (partition {partition} {held})"))
        };
        if offset < range.low || range.high == range.low {
            return Err(missing());
        }
        // Read from the requested offset, or from the last one the broker admits to if that is earlier: a
        // fetch past the end is out of range (librdkafka then jumps to the end, or the broker answers nothing
        // until the idle timeout), while from there the partition's end is reported. Starting earlier also finds a message past a high watermark reported
        // short (see the module docs).
        self.assign(&[(partition, offset.min(range.high - 1))])?;
        loop {
            match self.next()? {
                Some(m) if m.offset < offset => continue,
                Some(m) if m.offset == offset => return Ok(m),
                Some(_) => return Err(missing()), // a gap: compacted, or a transaction's marker
                None if self.stalled => {
                    let waited = self.idle_timeout;
                    return Err(coded(Exit::Unavailable, format!("no answer from the broker within {waited:?}")));
                }
                None => return Err(missing()),
            }
        }
    }

    fn assign(&mut self, starts: &[(i32, i64)]) -> anyhow::Result<()> {
        let mut assignment = TopicPartitionList::new();
        for (partition, from) in starts {
            assignment.add_partition_offset(&self.name, *partition, Offset::Offset(*from))?;
        }
        self.consumer.assign(&assignment).context("assigning the DLQ partitions")?;
        self.pending = starts.iter().map(|(p, _)| *p).collect();
        self.last_message = Instant::now();
        self.stalled = false;
        Ok(())
    }

    /// The next message of the reading started by [`Topic::read_all`] or [`Topic::read_one`]; `None` once each
    /// partition reached its end, or after `--idle-timeout` without a message (then [`Topic::stalled`]).
    pub fn next(&mut self) -> anyhow::Result<Option<DlqMessage>> {
        loop {
            if self.pending.is_empty() {
                return Ok(None);
            }
            if self.last_message.elapsed() > self.idle_timeout {
                tracing::warn!(
                    idle_seconds = self.idle_timeout.as_secs(),
                    topic = %self.name,
                    "no DLQ message arrived for a while; stopping short of the end"
                );
                self.stalled = true;
                return Ok(None);
            }
            let msg = match self.consumer.poll(Duration::from_millis(200)) {
                None => continue,
                Some(Err(KafkaError::PartitionEOF(p))) => {
                    self.pending.remove(&p);
                    continue;
                }
                Some(Err(e)) => return Err(e).context("reading the DLQ"),
                Some(Ok(msg)) => msg,
            };
            self.last_message = Instant::now();
            if !self.pending.contains(&msg.partition()) {
                continue; // a partition already read to its end: this one was dead-lettered since
            }
            return Ok(Some(DlqMessage::of(&msg)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_header_of_a_name_wins() {
        let m = DlqMessage {
            partition: 0,
            offset: 0,
            timestamp: None,
            key: None,
            payload: None,
            headers: vec![
                ("error_reason".into(), Some(b"invalid".to_vec())),
                ("traceparent".into(), None),
                ("error_reason".into(), Some(b"conflict".to_vec())),
            ],
        };
        assert_eq!(m.header("error_reason").as_deref(), Some("conflict"));
        assert_eq!((m.header("traceparent"), m.header("nope")), (None, None));
    }

    #[test]
    fn properties_are_key_value() {
        assert_eq!(key_value("a.b=c=d"), Ok(("a.b".into(), "c=d".into())));
        assert!(key_value("novalue").is_err() && key_value("=x").is_err());
    }
}
