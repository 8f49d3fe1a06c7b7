//! WatchTickets: the current state of the matching tickets, then every change as it commits.
//!
//! The watcher subscribes to the event bus *before* reading the snapshot, so nothing that commits in between
//! is missed; events older than what the snapshot already showed are skipped. Its buffer is the bus's
//! per-subscriber backlog: a watcher that falls further behind than that is ended with RESOURCE_EXHAUSTED
//! instead of slowing anyone down.
//!
//! A watcher ends as soon as its client goes away (cancelled call, closed connection), not at the next event that
//! would have matched: a watch on a finished ticket never sees another event. It also ends, UNAUTHENTICATED, when
//! the token that opened it expires. How many watchers are open is bounded per principal and in all
//! ([`Watchers`]; RESOURCE_EXHAUSTED beyond) and shown as the gauge `grpc_watchers`.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use actors::enums::TicketStatus;
use actors::events::{EventKind, TicketEvent};
use actors::store::{ListCursor, ListQuery};
use actors::{Router, Ticket};
use prometheus::IntGauge;
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
        Self::of(r.plan_id, r.ticket_ids, &r.statuses, !r.skip_snapshot)
            .map_err(|e| Status::invalid_argument(format!("statuses: {e}")))
    }

    /// The filter of any front end (gRPC's request, the REST event stream's query): empty plan id = any plan,
    /// no ids = any ticket, no statuses = any status. An unknown status is refused.
    pub fn of(
        plan_id: String,
        ticket_ids: Vec<String>,
        statuses: &[String],
        snapshot: bool,
    ) -> Result<Self, actors::enums::UnknownVariant> {
        let statuses = statuses.iter().map(|s| s.parse::<TicketStatus>()).collect::<Result<_, _>>()?;
        Ok(Filter {
            plan_id: Some(plan_id).filter(|p| !p.is_empty()),
            ticket_ids: ticket_ids.into_iter().collect(),
            statuses,
            snapshot,
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

/// Turns what a watcher sends (the event's kind, the ticket, the event unless it is a snapshot) into the front
/// end's message.
pub type Convert<T> = fn(&str, &Ticket, Option<&TicketEvent>) -> T;

/// gRPC's [`Convert`].
pub fn event(kind: &str, t: &Ticket, e: Option<&TicketEvent>) -> pb::TicketEvent {
    pb::TicketEvent {
        event_type: kind.to_owned(),
        ticket: Some(ticket_to_proto(t)),
        from_status: e.and_then(|e| e.from).map(|s| s.as_str().to_owned()).unwrap_or_default(),
        at: e.map_or(t.updated_at, |e| e.at),
        actor: e.map(|e| e.actor.to_string()).unwrap_or_default(),
        details: e.filter(|e| !e.details.is_null()).map(|e| e.details.to_string()).unwrap_or_default(),
    }
}

type Tx<T> = mpsc::Sender<Result<T, Status>>;

/// Send the current state of every matching ticket; returns the versions sent, or None if the client left.
async fn snapshot<T>(
    router: &Router,
    filter: &Filter,
    tx: &Tx<T>,
    convert: Convert<T>,
) -> Result<HashMap<String, i64>, Status> {
    let mut sent = HashMap::new();
    if !filter.ticket_ids.is_empty() {
        for id in &filter.ticket_ids {
            match router.get_shared(id).await {
                Ok(t) if filter.matches(&t) => {
                    sent.insert(t.ticket_id.clone(), t.version);
                    tx.send(Ok(convert("snapshot", &t, None))).await.map_err(|_| Status::cancelled("watcher left"))?;
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
        // Keyset pages, uncounted: each costs the same at any depth, a page cut short by the byte cap (its
        // `limit` then says how many it holds) goes on from its last ticket, and no ticket is skipped when
        // another is deleted meanwhile (as offset paging would).
        let mut query = ListQuery {
            plan_id: filter.plan_id.clone(),
            status,
            limit: 1000,
            skip_total: true,
            ..ListQuery::default()
        };
        loop {
            let page = router.list(&query).await.map_err(super::convert::status_of)?;
            for t in &page.tickets {
                sent.insert(t.ticket_id.clone(), t.version);
                tx.send(Ok(convert("snapshot", t, None))).await.map_err(|_| Status::cancelled("watcher left"))?;
            }
            match page.tickets.last() {
                Some(last) if page.tickets.len() as i64 >= page.limit => {
                    query.after = Some(ListCursor { created_at: last.created_at, ticket_id: last.ticket_id.clone() });
                }
                _ => break,
            }
        }
    }
    Ok(sent)
}

/// The open watchers, in all and per principal (token subject), with their bounds.
#[derive(Clone)]
pub struct Watchers {
    inner: Arc<WatchersInner>,
}

struct WatchersInner {
    per_principal: usize,
    max: usize,
    /// (open in all, open per subject); a subject without watchers has no entry.
    open: Mutex<(usize, HashMap<String, usize>)>,
    gauge: IntGauge,
    /// True once the server shuts down: every watcher ends with UNAVAILABLE, so clients reconnect to another
    /// replica and no open stream holds the process.
    closing: tokio::sync::watch::Sender<bool>,
}

impl Watchers {
    /// At most `per_principal` watchers per subject and `max` in all; `gauge` follows the number open.
    pub fn new(per_principal: usize, max: usize, gauge: IntGauge) -> Self {
        let closing = tokio::sync::watch::channel(false).0;
        let open = Mutex::new((0, HashMap::new()));
        Watchers { inner: Arc::new(WatchersInner { per_principal, max, open, gauge, closing }) }
    }

    /// End every watcher, now and from now on, with UNAVAILABLE (graceful shutdown).
    pub fn close_all(&self) {
        self.inner.closing.send_replace(true);
    }

    /// A place for one more watcher of `subject`, held until the watcher ends; RESOURCE_EXHAUSTED when full.
    pub fn open(&self, subject: &str) -> Result<WatcherSlot, Status> {
        let mut open = self.inner.open.lock().unwrap_or_else(|e| e.into_inner());
        let (total, by_subject) = &mut *open;
        let mine = by_subject.get(subject).copied().unwrap_or(0);
        if mine >= self.inner.per_principal {
            tracing::warn!(subject, open = mine, "refusing a watcher: the principal's limit is reached");
            return Err(Status::resource_exhausted(format!(
                "this principal already has {mine} open watchers (limit {}); close one first",
                self.inner.per_principal
            )));
        }
        if *total >= self.inner.max {
            tracing::warn!(open = *total, "refusing a watcher: the server's limit is reached");
            return Err(Status::resource_exhausted(format!(
                "the server has {total} open watchers (limit {}); retry later",
                self.inner.max
            )));
        }
        *total += 1;
        by_subject.insert(subject.to_owned(), mine + 1);
        self.inner.gauge.inc();
        Ok(WatcherSlot { inner: Arc::clone(&self.inner), subject: subject.to_owned() })
    }
}

/// One open watcher's place in [`Watchers`]; given back when dropped.
pub struct WatcherSlot {
    inner: Arc<WatchersInner>,
    subject: String,
}

impl Drop for WatcherSlot {
    fn drop(&mut self) {
        let mut open = self.inner.open.lock().unwrap_or_else(|e| e.into_inner());
        let (total, by_subject) = &mut *open;
        *total = total.saturating_sub(1);
        if let Some(n) = by_subject.get_mut(&self.subject) {
            *n -= 1;
            if *n == 0 {
                by_subject.remove(&self.subject);
            }
        }
        self.inner.gauge.dec();
    }
}

/// Follow the bus for one watcher until it must end: Ok when the bus closed or the client left, Err with the
/// status to end the stream with otherwise.
async fn follow<T>(
    router: &Router,
    filter: &Filter,
    tx: &Tx<T>,
    convert: Convert<T>,
    mut events: broadcast::Receiver<TicketEvent>,
) -> Result<(), Status> {
    let mut seen = if filter.snapshot { snapshot(router, filter, tx, convert).await? } else { HashMap::new() };
    loop {
        match events.recv().await {
            Ok(e) => {
                if !filter.matches(&e.ticket) {
                    continue;
                }
                if e.kind != EventKind::Progress {
                    match seen.get(&e.ticket.ticket_id) {
                        Some(v) if *v >= e.ticket.version => continue,
                        Some(_) => {
                            seen.remove(&e.ticket.ticket_id);
                        }
                        None => {}
                    }
                }
                if tx.send(Ok(convert(e.kind.as_str(), &e.ticket, Some(&e)))).await.is_err() {
                    return Ok(());
                }
            }
            Err(broadcast::error::RecvError::Lagged(n)) => {
                tracing::warn!(missed = n, "dropping a slow watcher");
                return Err(Status::resource_exhausted(format!(
                    "watcher fell {n} events behind and was dropped; reconnect to resume"
                )));
            }
            Err(broadcast::error::RecvError::Closed) => return Ok(()),
        }
    }
}

/// Start one watcher, holding `slot` while it runs and ending at `valid_until` (the caller's token expiry); the
/// receiver carries its events, each made by `convert` (gRPC: [`event`]; the REST event stream has its own).
pub fn serve<T: Send + 'static>(
    router: Router,
    filter: Filter,
    slot: WatcherSlot,
    valid_until: Option<i64>,
    convert: Convert<T>,
) -> mpsc::Receiver<Result<T, Status>> {
    let (tx, rx) = mpsc::channel(256);
    let events = router.subscribe();
    let mut closing = slot.inner.closing.subscribe();
    tokio::spawn(async move {
        let _slot = slot;
        let shutdown = async move {
            let _ = closing.wait_for(|closing| *closing).await;
            Status::unavailable("the server is shutting down; reconnect (another replica serves the stream)")
        };
        // `closed` resolves as soon as the response stream is dropped (the client cancelled or disconnected), also
        // while `follow` waits for an event that may never come.
        let end = tokio::select! {
            _ = tx.closed() => return,
            status = shutdown => Err(status),
            status = super::expiry::token_expired(valid_until) => Err(status),
            r = follow(&router, &filter, &tx, convert, events) => r,
        };
        if let Err(status) = end {
            super::expiry::send_last(&tx, status).await;
        }
    });
    rx
}
