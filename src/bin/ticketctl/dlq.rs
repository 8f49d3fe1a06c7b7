//! `ticketctl dlq-replay`: read the dead-letter topic from its beginning, decode each message as the
//! consumer does, and create its ticket through gRPC, printing what became of each message.
//!
//! It never publishes to Kafka and commits no offsets (it reads with manual partition assignment, outside
//! any consumer group): a replay can be repeated, and since a create is idempotent, a message already
//! replayed shows as `exists`. It stops at the end of every partition, after `--limit` messages, or when
//! nothing arrived for `--idle-timeout` seconds.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers as _, Message as _};
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;
use ticket_supervisor::kafka::decode::Decoder;

use crate::request::new_to_proto;
use crate::{Client, ReplayArgs};

/// What became of one DLQ message.
#[derive(Debug, Serialize)]
pub struct Replayed {
    pub partition: i32,
    pub offset: i64,
    /// Why it was dead-lettered (its `error_reason` header).
    pub reason: Option<String>,
    pub ticket_id: Option<String>,
    /// `created`, `exists`, `undecodable`, `refused` (the service said no), `skipped` (dry run).
    pub outcome: &'static str,
    pub detail: String,
}

impl Replayed {
    pub fn failed(&self) -> bool {
        matches!(self.outcome, "undecodable" | "refused")
    }
}

fn header(msg: &rdkafka::message::BorrowedMessage<'_>, key: &str) -> Option<String> {
    let headers = msg.headers()?;
    headers.iter().find(|h| h.key == key).and_then(|h| h.value).map(|v| String::from_utf8_lossy(v).into_owned())
}

/// Replay the topic; one result per message read, in the order read.
pub async fn replay(client: &mut Client, args: &ReplayArgs) -> anyhow::Result<Vec<Replayed>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &args.bootstrap)
        .set("group.id", "ticketctl-dlq-replay")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("client.id", "ticketctl")
        .create()
        .context("creating the Kafka consumer")?;
    let metadata = consumer
        .fetch_metadata(Some(&args.topic), Duration::from_secs(10))
        .with_context(|| format!("reading the metadata of {}", args.topic))?;
    let partitions: Vec<i32> = metadata.topics().iter().flat_map(|t| t.partitions().iter().map(|p| p.id())).collect();
    anyhow::ensure!(!partitions.is_empty(), "topic {} has no partitions (does it exist?)", args.topic);
    let mut assignment = TopicPartitionList::new();
    for p in &partitions {
        assignment.add_partition_offset(&args.topic, *p, Offset::Beginning)?;
    }
    consumer.assign(&assignment).context("assigning the DLQ partitions")?;

    let decoder = Decoder::new(args.schema_registry.clone());
    let mut at_end = HashSet::new();
    let mut results = Vec::new();
    let mut last_message = Instant::now();
    while at_end.len() < partitions.len() && args.limit.is_none_or(|limit| results.len() < limit) {
        if last_message.elapsed() > Duration::from_secs(args.idle_timeout) {
            tracing::warn!(idle_seconds = args.idle_timeout, "no DLQ message arrived for a while; stopping");
            break;
        }
        let msg = match consumer.poll(Duration::from_millis(200)) {
            None => continue,
            Some(Err(KafkaError::PartitionEOF(p))) => {
                at_end.insert(p);
                continue;
            }
            Some(Err(e)) => return Err(e).context("reading the DLQ"),
            Some(Ok(msg)) => msg,
        };
        last_message = Instant::now();
        at_end.remove(&msg.partition());
        let mut result = Replayed {
            partition: msg.partition(),
            offset: msg.offset(),
            reason: header(&msg, "error_reason"),
            ticket_id: None,
            outcome: "skipped",
            detail: String::new(),
        };
        match decoder.decode(msg.payload()).await {
            Err(e) => (result.outcome, result.detail) = ("undecodable", e.to_string()),
            Ok(new) => {
                result.ticket_id = new.ticket_id.clone();
                if args.dry_run {
                    result.detail = "decoded; not sent (--dry-run)".into();
                } else {
                    let ticket = Some(new_to_proto(new));
                    match client.create_ticket(ticket_supervisor::grpc::pb::CreateTicketRequest { ticket }).await {
                        Ok(res) => {
                            let res = res.into_inner();
                            result.ticket_id = res.ticket.map(|t| t.ticket_id).or(result.ticket_id);
                            result.outcome = if res.created { "created" } else { "exists" };
                        }
                        Err(status) => {
                            result.outcome = "refused";
                            result.detail = format!("{:?}: {}", status.code(), status.message());
                        }
                    }
                }
            }
        }
        results.push(result);
    }
    Ok(results)
}
