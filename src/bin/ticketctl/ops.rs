//! The ticket commands beyond get/list/create/update: `retry`, `cancel`, `compensate`, `history`, and `watch`
//! that survives the service going away.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use serde_json::{json, Value};
use ticket_supervisor::grpc::pb;

use super::exit::{call_error, coded, Exit};
use super::{connect, output, print_json, print_ticket, say, Cli, Client};

/// `retry ID`: a FAILED ticket back to PENDING (even with its retry budget spent).
pub async fn retry(
    cli: &Cli,
    client: &mut Client,
    ticket_id: &str,
    expected_version: Option<i64>,
) -> anyhow::Result<()> {
    let req = pb::RetryTicketRequest { ticket_id: ticket_id.to_owned(), expected_version };
    let res = client.retry_ticket(req).await.map_err(call_error("RetryTicket"))?.into_inner();
    print_ticket(cli, res.ticket)
}

/// `cancel ID [--reason R]`.
pub async fn cancel(
    cli: &Cli,
    client: &mut Client,
    ticket_id: &str,
    reason: Option<String>,
    expected_version: Option<i64>,
) -> anyhow::Result<()> {
    let req = pb::CancelTicketRequest {
        ticket_id: ticket_id.to_owned(),
        reason: reason.unwrap_or_default(),
        expected_version,
    };
    let res = client.cancel_ticket(req).await.map_err(call_error("CancelTicket"))?.into_inner();
    print_ticket(cli, res.ticket)
}

/// `compensate ID [--reason R] [--action A] [--parameters JSON]`: start (or show) the ticket's compensation.
pub async fn compensate(
    cli: &Cli,
    client: &mut Client,
    ticket_id: &str,
    reason: Option<String>,
    action: Option<String>,
    parameters: Option<String>,
) -> anyhow::Result<()> {
    if let Some(p) = &parameters {
        let parsed: Value =
            serde_json::from_str(p).map_err(|e| coded(Exit::Usage, format!("--parameters is not JSON: {e}")))?;
        if !parsed.is_object() {
            return Err(coded(Exit::Usage, "--parameters must be a JSON object"));
        }
    }
    let req = pb::CompensateTicketRequest {
        original_ticket_id: ticket_id.to_owned(),
        reason: reason.unwrap_or_default(),
        compensation_action: action.unwrap_or_default(),
        parameters_json: parameters.unwrap_or_default(),
    };
    let res = client.compensate_ticket(req).await.map_err(call_error("CompensateTicket"))?.into_inner();
    if cli.json {
        return print_json(&json!({
            "ticket_id": res.ticket_id, "original_ticket_id": res.original_ticket_id, "status": res.status,
            "action": res.action, "reason": res.reason, "created": res.created,
            "compensation_ticket": res.compensation_ticket.as_ref().map(output::ticket_json),
        }));
    }
    say(if res.created {
        format!("compensation {} created for {}", res.ticket_id, res.original_ticket_id)
    } else {
        format!("{} is already being compensated by {}", res.original_ticket_id, res.ticket_id)
    });
    print_ticket(cli, res.compensation_ticket)
}

/// Every history entry of a ticket, in commit order (pages of 500).
async fn all_history(client: &mut Client, ticket_id: &str) -> anyhow::Result<Vec<pb::HistoryEntry>> {
    let mut entries = Vec::new();
    loop {
        let req =
            pb::GetTicketHistoryRequest { ticket_id: ticket_id.to_owned(), offset: entries.len() as i64, limit: 500 };
        let page = client.get_ticket_history(req).await.map_err(call_error("GetTicketHistory"))?.into_inner();
        let got = page.entries.len();
        entries.extend(page.entries);
        if got == 0 || entries.len() as i64 >= page.total {
            return Ok(entries);
        }
    }
}

fn entry_json(e: &pb::HistoryEntry) -> Value {
    json!({
        "event_id": e.event_id, "at": e.at, "event_type": e.event_type,
        "from_status": if e.from_status.is_empty() { Value::Null } else { e.from_status.clone().into() },
        "status": e.status, "version": e.version, "actor": e.actor,
        "details": if e.details.is_empty() { Value::Null } else { serde_json::from_str(&e.details).unwrap_or(Value::Null) },
    })
}

/// `history ID`: the ticket's audit records, a table or `--json`.
pub async fn history(cli: &Cli, client: &mut Client, ticket_id: &str) -> anyhow::Result<()> {
    let entries = all_history(client, ticket_id).await?;
    if cli.json {
        let events: Vec<Value> = entries.iter().map(entry_json).collect();
        return print_json(&json!({ "ticket_id": ticket_id, "events": events, "total": entries.len() }));
    }
    let dash = |s: &str| if s.is_empty() { "-".to_owned() } else { s.to_owned() };
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|e| {
            vec![
                output::time(Some(e.at)),
                e.event_type.clone(),
                dash(&e.from_status),
                dash(&e.status),
                if e.version > 0 { e.version.to_string() } else { "-".into() },
                e.actor.clone(),
                if e.details.is_empty() || e.details == "null" { "-".into() } else { e.details.clone() },
            ]
        })
        .collect();
    say(output::table(&["AT", "EVENT", "FROM", "STATUS", "VERSION", "ACTOR", "DETAILS"], &rows));
    say(format_args!("({} records)", entries.len()));
    Ok(())
}

/// What `watch` follows.
pub struct WatchArgs {
    pub plan: Option<String>,
    pub statuses: Vec<String>,
    pub tickets: Vec<String>,
    pub skip_snapshot: bool,
    pub max_backoff: Duration,
}

/// One line of `watch`.
struct Line<'a> {
    event_type: &'a str,
    ticket_id: &'a str,
    from_status: &'a str,
    status: &'a str,
    version: i64,
    at: i64,
    actor: &'a str,
    details: &'a str,
    ticket: Option<&'a pb::ExecutionTicketProto>,
    recovered: bool,
}

fn print_line(json: bool, l: Line<'_>) {
    if json {
        let mut v = json!({
            "event_type": l.event_type, "ticket_id": l.ticket_id, "status": l.status, "version": l.version,
            "at": l.at, "from_status": l.from_status, "actor": l.actor, "details": l.details,
        });
        if let Some(t) = l.ticket {
            v["ticket"] = output::ticket_json(t);
        }
        if l.recovered {
            v["recovered"] = true.into();
        }
        say(v);
    } else {
        let from = if l.from_status.is_empty() { "-" } else { l.from_status };
        let mark = if l.recovered { "  (recovered)" } else { "" };
        say(format_args!(
            "{}  {:<24}  {}  {from} -> {}  v{}  {}{mark}",
            output::time(Some(l.at)),
            l.event_type,
            l.ticket_id,
            l.status,
            l.version,
            l.actor
        ));
    }
}

/// Whether a broken watch is worth opening again (the service went away, restarts, or dropped a slow watcher).
fn transient(code: tonic::Code) -> bool {
    use tonic::Code::*;
    matches!(code, Unavailable | ResourceExhausted | Unknown | Internal | Cancelled | DeadlineExceeded | Aborted)
}

/// `watch`: a snapshot of the matching tickets, then every change, until interrupted. When the stream breaks
/// (the service restarts, a network cut, a watcher dropped for lagging) it connects again with an exponential
/// back-off and resumes: the changes of the tickets it had shown that happened meanwhile are read from their
/// history and printed (marked recovered), tickets that newly match are shown as a snapshot, and nothing is
/// printed twice. A first connection that fails, and errors that another try would not fix (the token expired:
/// UNAUTHENTICATED), end it with their exit status.
pub async fn watch(cli: &Cli, args: WatchArgs) -> anyhow::Result<()> {
    // The last version shown per ticket.
    let mut shown: HashMap<String, i64> = HashMap::new();
    let mut reconnected = false;
    let mut backoff = Duration::from_millis(200);
    loop {
        // Err((error, worth another try)).
        let opened = async {
            let unavailable = |e: anyhow::Error| {
                let again = super::exit::status_of(&e) == Exit::Unavailable as i32;
                (e, again)
            };
            let mut client = connect(cli).await.map_err(unavailable)?;
            let req = pb::WatchTicketsRequest {
                plan_id: args.plan.clone().unwrap_or_default(),
                ticket_ids: args.tickets.clone(),
                statuses: args.statuses.clone(),
                // After a reconnect the snapshot tells which tickets newly match.
                skip_snapshot: args.skip_snapshot && !reconnected,
            };
            match client.watch_tickets(req).await {
                Ok(stream) => Ok((client, stream.into_inner())),
                Err(s) => {
                    let again = transient(s.code());
                    Err((call_error("WatchTickets")(s), again))
                }
            }
        }
        .await;
        let (mut client, mut stream) = match opened {
            Ok(opened) => opened,
            Err((e, true)) if reconnected => {
                eprintln!("ticketctl: watch: {e:#}; trying again in {:.1} s", backoff.as_secs_f64());
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(args.max_backoff);
                continue;
            }
            Err((e, _)) => return Err(e),
        };
        // Events printed while recovering: the stream may carry them again.
        let mut recovered: HashSet<(String, String, i64)> = HashSet::new();
        if reconnected {
            eprintln!("ticketctl: watch: connected again; recovering what changed meanwhile");
            let mut ids: Vec<(String, i64)> = shown.iter().map(|(k, v)| (k.clone(), *v)).collect();
            ids.sort();
            for (id, last) in ids {
                let entries = match all_history(&mut client, &id).await {
                    Ok(entries) => entries,
                    // Pruned by retention meanwhile: nothing left to recover.
                    Err(e) if super::exit::status_of(&e) == Exit::NotFound as i32 => continue,
                    Err(e) => return Err(e.context(format!("recovering the history of {id}"))),
                };
                for e in entries.iter().filter(|e| e.event_type.starts_with("ticket.") && e.version > last) {
                    print_line(
                        cli.json,
                        Line {
                            event_type: &e.event_type,
                            ticket_id: &id,
                            from_status: &e.from_status,
                            status: &e.status,
                            version: e.version,
                            at: e.at,
                            actor: &e.actor,
                            details: &e.details,
                            ticket: None,
                            recovered: true,
                        },
                    );
                    recovered.insert((id.clone(), e.event_type.clone(), e.version));
                    shown.insert(id.clone(), e.version);
                }
            }
        }
        backoff = Duration::from_millis(200);
        let broke = loop {
            match stream.message().await {
                Ok(Some(event)) => {
                    let t = event.ticket.unwrap_or_default();
                    let id = t.ticket_id.clone();
                    let snapshot = event.event_type == "snapshot";
                    if snapshot && reconnected && shown.contains_key(&id) {
                        continue; // recovered above
                    }
                    if recovered.contains(&(id.clone(), event.event_type.clone(), t.version)) {
                        continue;
                    }
                    shown.insert(id.clone(), t.version.max(shown.get(&id).copied().unwrap_or(0)));
                    print_line(
                        cli.json,
                        Line {
                            event_type: &event.event_type,
                            ticket_id: &id,
                            from_status: &event.from_status,
                            status: &t.status,
                            version: t.version,
                            at: event.at,
                            actor: &event.actor,
                            details: &event.details,
                            ticket: Some(&t),
                            recovered: false,
                        },
                    );
                }
                Ok(None) => break "the service ended the stream".to_owned(),
                Err(s) if transient(s.code()) => break format!("{:?}: {}", s.code(), s.message()),
                Err(s) => return Err(call_error("WatchTickets")(s)),
            }
        };
        eprintln!("ticketctl: watch interrupted ({broke}); reconnecting in {:.1} s", backoff.as_secs_f64());
        tokio::time::sleep(backoff).await;
        reconnected = true;
    }
}
