//! WatchTickets: the current state of the matching tickets, then every change as it commits.
//!
//! The watcher subscribes to the event bus *before* reading the snapshot, so nothing that commits in between
//! is missed; events older than what the snapshot already showed are skipped. Its buffer is the bus's
//! per-subscriber backlog: a watcher that falls further behind than that is ended with RESOURCE_EXHAUSTED
//! instead of slowing anyone down.

use std::collections::{HashMap, HashSet};

use actors::enums::TicketStatus;
use actors::events::TicketEvent;
use actors::store::ListQuery;
use actors::{Router, Ticket};
use tokio::sync::{broadcast, mpsc};
use tonic::Status;

use super::convert::ticket_to_proto;
use super::pb;
use crate::auth::verify::{AuthError, Principal, READ};

/// Which tickets a watcher follows.
pub struct Filter {
    plan_id: Option<String>,
    ticket_ids: HashSet<String>,
    statuses: HashSet<TicketStatus>,
    snapshot: bool,
}

impl Filter {
    pub fn new(r: pb::WatchTicketsRequest) -> Result<Self, Status> {
        let statuses = r
            .statuses
            .iter()
            .map(|s| s.parse::<TicketStatus>().map_err(|e| Status::invalid_argument(format!("statuses: {e}"))))
            .collect::<Result<_, _>>()?;
        Ok(Filter {
            plan_id: Some(r.plan_id).filter(|p| !p.is_empty()),
            ticket_ids: r.ticket_ids.into_iter().collect(),
            statuses,
            snapshot: !r.skip_snapshot,
        })
    }

    /// Service tokens watch anything; a ticket token only its own ticket.
    pub fn authorize(&self, caller: &Principal) -> Result<(), AuthError> {
        if caller.require_service().is_ok() {
            return Ok(());
        }
        match self.ticket_ids.iter().next() {
            Some(id) if self.ticket_ids.len() == 1 => caller.require_ticket(id, READ),
            _ => Err(AuthError::Forbidden(
                "a ticket-scoped token may only watch its own ticket (ticket_ids = [it])".into(),
            )),
        }
    }

    fn matches(&self, t: &Ticket) -> bool {
        self.plan_id.as_ref().is_none_or(|p| *p == t.spec.plan_id)
            && (self.ticket_ids.is_empty() || self.ticket_ids.contains(&t.ticket_id))
            && (self.statuses.is_empty() || self.statuses.contains(&t.status))
    }
}

fn event(kind: &str, t: &Ticket, e: Option<&TicketEvent>) -> pb::TicketEvent {
    pb::TicketEvent {
        event_type: kind.to_owned(),
        ticket: Some(ticket_to_proto(t)),
        from_status: e.and_then(|e| e.from).map(|s| s.as_str().to_owned()).unwrap_or_default(),
        at: e.map_or(t.updated_at, |e| e.at),
        actor: e.map(|e| e.actor.to_string()).unwrap_or_default(),
        details: e.filter(|e| !e.details.is_null()).map(|e| e.details.to_string()).unwrap_or_default(),
    }
}

type Tx = mpsc::Sender<Result<pb::TicketEvent, Status>>;

/// Send the current state of every matching ticket; returns the versions sent, or None if the client left.
async fn snapshot(router: &Router, filter: &Filter, tx: &Tx) -> Result<HashMap<String, i64>, Status> {
    let mut sent = HashMap::new();
    if !filter.ticket_ids.is_empty() {
        for id in &filter.ticket_ids {
            match router.get(id).await {
                Ok(t) if filter.matches(&t) => {
                    sent.insert(t.ticket_id.clone(), t.version);
                    tx.send(Ok(event("snapshot", &t, None))).await.map_err(|_| Status::cancelled("watcher left"))?;
                }
                Ok(_) | Err(actors::TicketError::NotFound(_)) => {}
                Err(e) => return Err(super::convert::status_of(e)),
            }
        }
        return Ok(sent);
    }
    let statuses: Vec<Option<TicketStatus>> =
        if filter.statuses.is_empty() { vec![None] } else { filter.statuses.iter().copied().map(Some).collect() };
    for status in statuses {
        let mut query =
            ListQuery { plan_id: filter.plan_id.clone(), status, limit: 1000, offset: 0, ..ListQuery::default() };
        loop {
            let page = router.list(&query).await.map_err(super::convert::status_of)?;
            for t in &page.tickets {
                sent.insert(t.ticket_id.clone(), t.version);
                tx.send(Ok(event("snapshot", t, None))).await.map_err(|_| Status::cancelled("watcher left"))?;
            }
            if page.tickets.len() < query.limit as usize {
                break;
            }
            query.offset += query.limit;
        }
    }
    Ok(sent)
}

/// Start one watcher; the receiver carries its events.
pub fn serve(router: Router, filter: Filter) -> mpsc::Receiver<Result<pb::TicketEvent, Status>> {
    let (tx, rx) = mpsc::channel(256);
    let mut events = router.subscribe();
    tokio::spawn(async move {
        let mut seen = if filter.snapshot {
            match snapshot(&router, &filter, &tx).await {
                Ok(seen) => seen,
                Err(status) => {
                    let _ = tx.send(Err(status)).await;
                    return;
                }
            }
        } else {
            HashMap::new()
        };
        loop {
            match events.recv().await {
                Ok(e) => {
                    if !filter.matches(&e.ticket) {
                        continue;
                    }
                    if e.kind != "ticket.progress" {
                        match seen.get(&e.ticket.ticket_id) {
                            Some(v) if *v >= e.ticket.version => continue,
                            Some(_) => {
                                seen.remove(&e.ticket.ticket_id);
                            }
                            None => {}
                        }
                    }
                    if tx.send(Ok(event(e.kind, &e.ticket, Some(&e)))).await.is_err() {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    let message = format!("watcher fell {n} events behind and was dropped; reconnect to resume");
                    tracing::warn!(missed = n, "dropping a slow watcher");
                    let _ = tx.send(Err(Status::resource_exhausted(message))).await;
                    return;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    });
    rx
}
