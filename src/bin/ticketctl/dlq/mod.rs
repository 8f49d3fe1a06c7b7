//! `ticketctl dlq list|show|replay`: the Kafka dead-letter topic. `list` and `show` only read it; `replay`
//! also creates the tickets over gRPC. None of them publishes or commits anything (see `topic.rs`).
//!
//! Exit statuses: an empty DLQ is not an error (0), nor is a dry run, whatever it found; a replay that left
//! messages unreplayed is (1). A topic or message that does not exist is 3, a broker out of reach 6.

mod replay;
mod topic;

use base64::Engine as _;
use clap::{Args, Subcommand};
use serde::Serialize;
use serde_json::{json, Value};
use ticket_supervisor::kafka::decode::Decoder;

use crate::request::new_to_proto;
use crate::{output, print_json, say, Cli};
use topic::{DlqMessage, KafkaArgs, Topic};

#[derive(Subcommand)]
pub enum DlqCommand {
    /// The messages of the dead-letter topic: where, when, why, and their ticket id when they decode.
    List(ListArgs),
    /// One message, decoded, with its headers.
    Show(ShowArgs),
    /// Create the tickets of dead-lettered messages again (reads the DLQ; never publishes).
    Replay(ReplayArgs),
}

#[derive(Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// Show at most this many messages.
    #[arg(long, default_value_t = 1000)]
    pub limit: usize,
}

#[derive(Args)]
pub struct ShowArgs {
    /// `PARTITION:OFFSET`, as `dlq list` shows them.
    #[arg(value_name = "PARTITION:OFFSET", value_parser = position)]
    pub position: (i32, i64),
    #[command(flatten)]
    pub kafka: KafkaArgs,
}

#[derive(Args)]
pub struct ReplayArgs {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// Stop after this many messages.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Decode and report, create nothing (needs no connection to the service).
    #[arg(long)]
    pub dry_run: bool,
}

fn position(s: &str) -> Result<(i32, i64), String> {
    let bad = || format!("{s:?} is not PARTITION:OFFSET (e.g. 0:42)");
    let (p, o) = s.split_once(':').ok_or_else(bad)?;
    let (p, o) = (p.trim().parse::<i32>().map_err(|_| bad())?, o.trim().parse::<i64>().map_err(|_| bad())?);
    if p < 0 || o < 0 {
        return Err(bad());
    }
    Ok((p, o))
}

pub async fn run(cli: &Cli, command: &DlqCommand) -> anyhow::Result<()> {
    match command {
        DlqCommand::List(args) => list(cli, args).await,
        DlqCommand::Show(args) => show(cli, args).await,
        DlqCommand::Replay(args) => run_replay(cli, args).await,
    }
}

/// One line of `dlq list`.
#[derive(Debug, Serialize)]
struct Listed {
    partition: i32,
    offset: i64,
    timestamp: Option<i64>,
    key: Option<String>,
    /// The `error_reason` header: the kind of failure (`invalid`, `conflict`, …).
    reason: Option<String>,
    /// The `error` header: the failure in words.
    error: Option<String>,
    ticket_id: Option<String>,
    /// Why the payload does not decode as a ticket, if it does not.
    decode_error: Option<String>,
}

fn text(bytes: &Option<Vec<u8>>) -> Option<String> {
    bytes.as_deref().map(|b| String::from_utf8_lossy(b).into_owned())
}

async fn list(cli: &Cli, args: &ListArgs) -> anyhow::Result<()> {
    let mut topic = Topic::open(&args.kafka)?;
    topic.read_all()?;
    let decoder = Decoder::new(args.kafka.schema_registry.clone());
    let mut listed = Vec::new();
    while listed.len() < args.limit {
        let Some(msg) = topic.next()? else { break };
        let decoded = decoder.decode(msg.payload.as_deref()).await;
        listed.push(Listed {
            partition: msg.partition,
            offset: msg.offset,
            timestamp: msg.timestamp,
            key: text(&msg.key),
            reason: msg.header("error_reason"),
            error: msg.header("error"),
            ticket_id: decoded.as_ref().ok().and_then(|t| t.ticket_id.clone()),
            decode_error: decoded.err().map(|e| e.to_string()),
        });
    }
    // Partitions are read side by side; shown in their order.
    listed.sort_by_key(|m| (m.partition, m.offset));
    // Cut short by --limit or by a broker gone quiet: more messages may follow.
    let complete = !topic.unfinished();
    if cli.json {
        return print_json(&json!({
            "topic": topic.name, "shown": listed.len(), "complete": complete, "messages": listed,
        }));
    }
    if listed.is_empty() && complete {
        say(format_args!("topic {} holds no messages", topic.name));
        return Ok(());
    }
    let dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    let rows: Vec<Vec<String>> = listed
        .iter()
        .map(|m| {
            vec![
                m.partition.to_string(),
                m.offset.to_string(),
                output::time(m.timestamp),
                dash(&m.reason),
                m.ticket_id
                    .clone()
                    .unwrap_or_else(|| if m.decode_error.is_some() { "(undecodable)" } else { "-" }.into()),
                output::shorten(&dash(&m.error), 80),
            ]
        })
        .collect();
    say(output::table(&["PARTITION", "OFFSET", "TIMESTAMP", "REASON", "TICKET_ID", "ERROR"], &rows));
    let more = if complete { "" } else { "; stopped early: more may follow" };
    say(format_args!("({} shown{more})", listed.len()));
    Ok(())
}

/// A payload as JSON: itself when it is JSON, else its text, else (binary, e.g. Avro) base64.
fn payload_json(payload: Option<&[u8]>) -> Value {
    match payload {
        None => Value::Null,
        Some(bytes) => match (serde_json::from_slice::<Value>(bytes), std::str::from_utf8(bytes)) {
            (Ok(v), _) => v,
            (Err(_), Ok(s)) => Value::String(s.to_owned()),
            (Err(_), Err(_)) => json!({ "base64": base64::engine::general_purpose::STANDARD.encode(bytes) }),
        },
    }
}

async fn show(cli: &Cli, args: &ShowArgs) -> anyhow::Result<()> {
    let (partition, offset) = args.position;
    let mut topic = Topic::open(&args.kafka)?;
    let msg: DlqMessage = topic.read_one(partition, offset)?;
    let decoded = Decoder::new(args.kafka.schema_registry.clone()).decode(msg.payload.as_deref()).await;
    let ticket = decoded.as_ref().ok().map(|n| output::ticket_json(&new_to_proto(n.clone())));
    let headers: Vec<Value> = msg.headers.iter().map(|(k, v)| json!({ "key": k, "value": text(v) })).collect();
    let payload = payload_json(msg.payload.as_deref());
    if cli.json {
        return print_json(&json!({
            "topic": topic.name, "partition": msg.partition, "offset": msg.offset, "timestamp": msg.timestamp,
            "key": text(&msg.key), "reason": msg.header("error_reason"), "error": msg.header("error"),
            "ticket_id": decoded.as_ref().ok().and_then(|t| t.ticket_id.clone()),
            "decode_error": decoded.as_ref().err().map(|e| e.to_string()),
            "headers": headers, "payload": payload, "ticket": ticket,
        }));
    }
    let dash = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    let rows = vec![
        vec!["position".to_owned(), format!("{}:{}", msg.partition, msg.offset)],
        vec!["timestamp".to_owned(), output::time(msg.timestamp)],
        vec!["key".to_owned(), dash(text(&msg.key))],
        vec!["reason".to_owned(), dash(msg.header("error_reason"))],
        vec!["error".to_owned(), dash(msg.header("error"))],
        vec![
            "decoded".to_owned(),
            match &decoded {
                Ok(t) => format!("yes: ticket {}", t.ticket_id.as_deref().unwrap_or("(no ticket_id)")),
                Err(e) => format!("no: {e}"),
            },
        ],
    ];
    say(output::table(&["FIELD", "VALUE"], &rows));
    say("");
    let header_rows: Vec<Vec<String>> = msg.headers.iter().map(|(k, v)| vec![k.clone(), dash(text(v))]).collect();
    say(output::table(&["HEADER", "VALUE"], &header_rows));
    say("");
    say("payload:");
    say(match &payload {
        Value::String(s) => s.clone(),
        other => serde_json::to_string_pretty(other)?,
    });
    // A binary payload (Confluent-framed Avro) is unreadable as such: the ticket it decodes to is.
    if let (Some(ticket), Value::Object(framed)) = (&ticket, &payload) {
        if framed.contains_key("base64") {
            say("decoded ticket:");
            say(serde_json::to_string_pretty(ticket)?);
        }
    }
    Ok(())
}

pub async fn run_replay(cli: &Cli, args: &ReplayArgs) -> anyhow::Result<()> {
    // A dry run creates nothing: it needs no service, and a service out of reach does not stop it.
    let mut client = if args.dry_run { None } else { Some(crate::connect(cli).await?) };
    let results = replay::replay(client.as_mut(), args).await?;
    let failed = results.iter().filter(|r| r.failed()).count();
    if cli.json {
        print_json(&json!({ "results": results, "read": results.len(), "failed": failed, "dry_run": args.dry_run }))?;
    } else {
        let dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
        let rows: Vec<Vec<String>> = results
            .iter()
            .map(|r| {
                let (p, o) = (r.partition.to_string(), r.offset.to_string());
                vec![p, o, dash(&r.reason), dash(&r.ticket_id), r.outcome.to_owned(), r.detail.clone()]
            })
            .collect();
        let headers = ["PARTITION", "OFFSET", "REASON", "TICKET_ID", "OUTCOME", "DETAIL"];
        say(output::table(&headers, &rows));
        if args.dry_run {
            say(format_args!("({} read, {failed} undecodable; dry run: nothing sent)", results.len()));
        } else {
            say(format_args!("({} read, {failed} not replayed)", results.len()));
        }
    }
    if args.dry_run {
        return Ok(());
    }
    if failed > 0 {
        // A plain failure (1): the messages are reported above, each with its reason.
        return Err(anyhow::anyhow!("{failed} of {} DLQ messages were not replayed", results.len()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_partition_colon_offset() {
        assert_eq!(position("0:42"), Ok((0, 42)));
        assert_eq!(position(" 3 : 7 "), Ok((3, 7)));
        for bad in ["42", "a:1", "1:b", "-1:0", "0:-5", ""] {
            assert!(position(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn payloads_show_as_json_text_or_base64() {
        assert_eq!(payload_json(Some(br#"{"a":1}"#)), json!({"a": 1}));
        assert_eq!(payload_json(Some(b"{not json")), json!("{not json"));
        assert_eq!(payload_json(Some(&[0, 0, 0, 0, 1, 0xff])), json!({"base64": "AAAAAAH/"}));
        assert_eq!(payload_json(None), Value::Null);
    }
}
