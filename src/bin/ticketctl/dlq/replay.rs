//! `ticketctl dlq replay`: decode each message of the dead-letter topic as the consumer does, and create its
//! ticket through gRPC, printing what became of each message.
//!
//! It never publishes to Kafka and commits no offsets (see `topic.rs`): a replay can be repeated, and since a
//! create is idempotent, a message already replayed shows as `exists`. It stops at the end of every partition,
//! after `--limit` messages, or when nothing arrived for `--idle-timeout` seconds.

use serde::Serialize;
use ticket_supervisor::kafka::decode::Decoder;

use super::topic::Topic;
use super::ReplayArgs;
use crate::request::new_to_proto;
use crate::Client;

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
    /// The message could not be replayed (in a dry run: would not be).
    pub fn failed(&self) -> bool {
        matches!(self.outcome, "undecodable" | "refused")
    }
}

/// Replay the topic (`client`: None for a dry run, which needs no service); one result per message read, in
/// the order read.
pub async fn replay(mut client: Option<&mut Client>, args: &ReplayArgs) -> anyhow::Result<Vec<Replayed>> {
    let mut topic = Topic::open(&args.kafka)?;
    topic.read_all()?;
    let decoder = Decoder::new(args.kafka.schema_registry.clone());
    let mut results = Vec::new();
    while args.limit.is_none_or(|limit| results.len() < limit) {
        let Some(msg) = topic.next()? else { break };
        let mut result = Replayed {
            partition: msg.partition,
            offset: msg.offset,
            reason: msg.header("error_reason"),
            ticket_id: None,
            outcome: "skipped",
            detail: String::new(),
        };
        match decoder.decode(msg.payload.as_deref()).await {
            Err(e) => (result.outcome, result.detail) = ("undecodable", e.to_string()),
            Ok(new) => {
                result.ticket_id = new.ticket_id.clone();
                match client.as_deref_mut() {
                    None => result.detail = "decoded; not sent (--dry-run)".into(),
                    Some(client) => {
                        let ticket = Some(new_to_proto(new));
                        let req = ticket_supervisor::grpc::pb::CreateTicketRequest { ticket };
                        match client.create_ticket(req).await {
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
        }
        results.push(result);
    }
    Ok(results)
}
