//! Cluster-wide events: every replica's watchers see every replica's commits, and a change of webhook
//! subscriptions reaches every replica at once.
//!
//! Each replica relays what it commits (its actors' `EventBus`) to its own watchers and, through PostgreSQL
//! `NOTIFY ticket_events`, to the others, which `LISTEN` and hand what they hear to their watchers. A
//! notification carries the whole event when it fits PostgreSQL's 8 000-byte payload; a larger one carries the
//! ticket's id and the receivers read the ticket from the store (it may then show a later version: a watcher
//! wants the latest anyway). Delivery to watchers is live and best-effort, as on one process: a watcher that
//! falls behind, or an event announced by a replica that died right after committing it, is not replayed — the
//! audit trail (`…/history`) is the complete record.
//!
//! A replica alone (no other live member in the lease manager's last round: [`ShardTable::has_peers`]) relays
//! to its own watchers only: each `NOTIFY` costs PostgreSQL and this process about a tenth of a status update's
//! CPU, for nobody to hear. A member the others may have thought absent (new, or back from a pause) announces
//! `joined:<member>` as soon as its heartbeat is stored — before its own listener starts — and the others relay
//! from the moment they hear it.
//!
//! The same listener hears `ticket_cluster`: `leases` (another replica moved shards: the lease manager looks
//! again now), `joined:<member>` (above) and `webhooks:<member>` (another replica changed subscriptions: reload
//! them).
//!
//! [`ShardTable::has_peers`]: actors::ownership::ShardTable::has_peers

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use actors::enums::{EventKind, TicketStatus};
use actors::events::TicketEvent;
use actors::Router;
use serde::{Deserialize, Serialize};
use sqlx::postgres::PgListener;
use sqlx::PgPool;

use super::leases::{CHANNEL, JOINED, WEBHOOKS};

const EVENTS: &str = "ticket_events";
/// PostgreSQL refuses payloads of 8 000 bytes or more.
const MAX_PAYLOAD: usize = 7_900;
/// Most notifications sent in one statement.
const BATCH: usize = 256;
/// Most events a replica alone hands on after one gathering (then it looks again at once).
const DRAIN: usize = 4 * BATCH;
/// How long the relay gathers events before it sends them (or, alone and unwatched, drops them).
const GATHER: std::time::Duration = std::time::Duration::from_millis(5);

/// One notification: sent borrowed from the event (every commit is relayed, so copying its ticket first cost a
/// tenth of a create's CPU), received owned.
#[derive(Serialize, Deserialize)]
struct Wire<'a> {
    /// The replica that committed it (its own listener skips it). The first field: see [`own_prefix`].
    member: Cow<'a, str>,
    kind: Cow<'a, str>,
    ticket_id: Cow<'a, str>,
    /// None when it did not fit: read from the store.
    ticket: Option<Cow<'a, actors::Ticket>>,
    from: Option<TicketStatus>,
    actor: Cow<'a, str>,
    at: i64,
    details: Cow<'a, serde_json::Value>,
}

/// How this replica's own notifications begin (`member` is serialized first). PostgreSQL sends every
/// notification to every listener, the sender too: with watchers here, each of this replica's commits came back
/// and was parsed whole (a ticket's JSON) only to be dropped. Now it is recognized by its first bytes.
fn own_prefix(member: &str) -> String {
    let quoted = serde_json::to_string(member).unwrap_or_default();
    format!("{{\"member\":{quoted},")
}

fn encode(member: &str, e: &TicketEvent) -> Option<String> {
    let mut wire = Wire {
        member: Cow::Borrowed(member),
        kind: Cow::Borrowed(e.kind.as_str()),
        ticket_id: Cow::Borrowed(&e.ticket.ticket_id),
        ticket: Some(Cow::Borrowed(&e.ticket)),
        from: e.from,
        actor: Cow::Borrowed(&e.actor),
        at: e.at,
        details: Cow::Borrowed(&e.details),
    };
    let text = serde_json::to_string(&wire).ok()?;
    if text.len() <= MAX_PAYLOAD {
        return Some(text);
    }
    wire.ticket = None;
    if wire.details.to_string().len() > MAX_PAYLOAD / 2 {
        wire.details = Cow::Owned(serde_json::Value::Null);
    }
    serde_json::to_string(&wire).ok().filter(|t| t.len() <= MAX_PAYLOAD)
}

/// Relay this replica's commits to its watchers and to the other replicas (see the module docs). A replica alone
/// hands its commits to its watchers here too, though the actors could publish to them directly: that was tried
/// (twenty-fourth session, BENCHMARKS.md) and cost Kafka ingest 17 %, since this task's thread is also the one that
/// frees the events' copies of each ticket, off the actors' threads.
///
/// Events are gathered for `GATHER` (5 ms) before they go on, except to this replica's own watchers while it is
/// alone: with peers, so that one `NOTIFY` transaction carries a batch; alone with nobody watching, because then this
/// task only frees the events, and waking its thread for every commit was half of that thread's context switches
/// at 8 clients (twenty-seventh session, BENCHMARKS.md). A watcher that subscribes meanwhile still gets them, a
/// few milliseconds late (it skips what its snapshot already showed).
pub fn start_relay(router: Router, pool: PgPool) {
    let member = router.ownership().member().to_owned();
    tokio::spawn(async move {
        let mut local = router.subscribe_local();
        loop {
            let first = match local.recv().await {
                Ok(e) => e,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "event relay fell behind; events were not relayed");
                    continue;
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            };
            if !router.ownership().has_peers() && router.has_watchers() {
                router.relay(first);
                continue;
            }
            tokio::time::sleep(GATHER).await;
            if !router.ownership().has_peers() {
                // Alone: what was gathered goes to the watchers (one may have come meanwhile) or is freed, here.
                router.relay(first);
                for _ in 0..DRAIN {
                    match local.try_recv() {
                        Ok(e) => router.relay(e),
                        Err(_) => break,
                    }
                }
                continue;
            }
            let mut batch = vec![first];
            while batch.len() < BATCH {
                match local.try_recv() {
                    Ok(e) => batch.push(e),
                    Err(_) => break,
                }
            }
            let payloads: Vec<String> = batch.iter().filter_map(|e| encode(&member, e)).collect();
            for e in batch {
                router.relay(e);
            }
            let sent = sqlx::query("SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p")
                .bind(EVENTS)
                .bind(&payloads)
                .execute(&pool)
                .await;
            if let Err(e) = sent {
                tracing::warn!(error = %e, events = payloads.len(), "could not relay events to the other replicas");
            }
        }
    });
}

/// Listen to the other replicas (see the module docs): reconnects until the process ends.
pub fn start_listener(router: Router, pool: PgPool) {
    tokio::spawn(async move {
        loop {
            if let Err(e) = listen(&router, &pool).await {
                tracing::warn!(error = %e, "cluster listener lost its connection; listening again");
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            // Whatever was announced meanwhile was missed: look again, and relay until the round says alone.
            router.ownership().peer_joined();
            router.ownership().request_refresh();
            reload_webhooks(&router).await;
        }
    });
}

async fn listen(router: &Router, pool: &PgPool) -> Result<(), sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen_all([EVENTS, CHANNEL]).await?;
    let me = router.ownership().member().to_owned();
    let own = own_prefix(&me);
    loop {
        let n = listener.recv().await?;
        match n.channel() {
            // Nobody watches here: nothing to decode (PostgreSQL sends every notification to every listener).
            EVENTS if !router.has_watchers() => {}
            // This replica's own commit, already delivered to its watchers.
            EVENTS if n.payload().starts_with(&own) => {}
            EVENTS => {
                let Ok(wire) = serde_json::from_str::<Wire>(n.payload()) else { continue };
                if wire.member != me {
                    deliver(router, wire).await;
                }
            }
            _ if n.payload() == "leases" => router.ownership().request_refresh(),
            _ if n.payload().strip_prefix(JOINED).is_some_and(|who| who != me) => router.ownership().peer_joined(),
            _ if n.payload().strip_prefix(WEBHOOKS).is_some_and(|from| from != me) => reload_webhooks(router).await,
            _ => {}
        }
    }
}

async fn deliver(router: &Router, wire: Wire<'_>) {
    let Ok(kind) = wire.kind.parse::<EventKind>() else { return };
    let ticket = match wire.ticket {
        Some(t) => t.into_owned(),
        None => match router.store().get(&wire.ticket_id).await {
            Ok(Some(t)) => t,
            _ => return,
        },
    };
    router.relay(TicketEvent {
        kind,
        ticket: Arc::new(ticket),
        from: wire.from,
        actor: Arc::from(wire.actor.as_ref()),
        at: wire.at,
        details: wire.details.into_owned(),
    });
}

async fn reload_webhooks(router: &Router) {
    if let Err(e) = router.webhooks().reload(&*router.store()).await {
        tracing::warn!(error = %e, "could not reload webhook subscriptions");
    }
}

/// Tell the other replicas this one changed webhook subscriptions (they reload theirs).
pub async fn announce_webhooks(pool: &PgPool, member: &str) {
    super::leases::announce(pool, &format!("{WEBHOOKS}{member}")).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(description: &str) -> TicketEvent {
        let new: actors::validation::NewTicket = serde_json::from_value(serde_json::json!({
            "ticket_id": "t-1", "plan_id": "p", "intent_id": "i", "decision_id": "d", "task_id": "task",
            "task_type": "build", "description": description, "priority": "high", "risk_band": "low",
            "sla": {"deadline": 1_900_000_000_000i64, "timeout_ms": 60_000, "max_retries": 1},
            "qos": {"delivery_mode": "AT_LEAST_ONCE", "consistency": "STRONG", "durability": "PERSISTENT"},
            "security_level": "INTERNAL"
        }))
        .unwrap();
        let ticket = new.validate(1_000, String::new).unwrap().ticket;
        TicketEvent {
            kind: EventKind::Created,
            ticket: Arc::new(ticket),
            from: None,
            actor: Arc::from("orchestrator"),
            at: 1_000,
            details: serde_json::json!({"n": 1}),
        }
    }

    #[test]
    fn a_notification_carries_the_event_and_a_large_one_its_ticket_id() {
        let e = event("small");
        let text = encode("me", &e).unwrap();
        // Its sender recognizes it unparsed; a replica whose name starts the same does not.
        assert!(text.starts_with(&own_prefix("me")), "{text}");
        assert!(!text.starts_with(&own_prefix("m")) && !encode("me2", &e).unwrap().starts_with(&own_prefix("me")));
        let wire: Wire = serde_json::from_str(&text).unwrap();
        assert_eq!((&*wire.member, &*wire.kind, &*wire.ticket_id), ("me", "ticket.created", "t-1"));
        assert_eq!(wire.ticket.as_deref(), Some(&*e.ticket));
        assert_eq!((&*wire.actor, wire.at, &*wire.details), ("orchestrator", 1_000, &e.details));

        let big = event(&"x".repeat(MAX_PAYLOAD));
        let text = encode("me", &big).unwrap();
        assert!(text.len() <= MAX_PAYLOAD);
        let wire: Wire = serde_json::from_str(&text).unwrap();
        assert_eq!((wire.ticket, &*wire.ticket_id), (None, "t-1"), "read from the store by the receiver");
    }
}
