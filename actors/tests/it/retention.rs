//! Retention: the `Pruner` deletes finished tickets, taken outbox rows and finished deliveries once they are
//! older than their period by the system's clock, in batches, and never what is still needed. The store's own
//! rules are tested against PostgreSQL and SQLite in the service crate (`tests/it/store.rs`); here the in-memory
//! double follows the same rules and the tests are about the actor: the clock, the policy, batches, metrics.

use crate::common;

use std::time::Duration;

use actix::Actor as _;
use actors::enums::TicketStatus;
use actors::pruner::{PruneNow, Pruned, Pruner, RetentionPolicy};
use actors::store::Outbox;
use actors::webhooks::{Delivery, DeliveryStatus};
use common::{harness, new_ticket, to, Harness};

const DAY: i64 = 86_400_000;

fn policy(taken_by: Vec<Outbox>) -> RetentionPolicy {
    RetentionPolicy {
        taken_by,
        batch: 2,
        pause: Duration::ZERO,
        first_after: Duration::from_secs(3600),
        ..RetentionPolicy::default()
    }
}

async fn finish(h: &Harness, id: &str) {
    h.router.create(new_ticket(id), "test").await.unwrap();
    h.router.update_status(id, to(TicketStatus::Running), "test").await.unwrap();
    h.router.update_status(id, to(TicketStatus::Completed), "test").await.unwrap();
}

fn pruner(h: &Harness, policy: RetentionPolicy) -> actix::Addr<Pruner> {
    Pruner::new(h.store.clone(), std::sync::Arc::new(h.clock.clone()), policy, h.metrics.clone()).start()
}

fn taken_by_all(h: &Harness) {
    let len = h.store.outbox.lock().unwrap().len();
    *h.store.cursors.lock().unwrap() = [len, len];
}

#[actix_rt::test]
async fn finished_tickets_past_retention_go_and_the_needed_ones_stay() {
    let h = harness();
    for id in ["old-1", "old-2", "old-3", "dep"] {
        finish(&h, id).await;
    }
    let mut waiter = new_ticket("waiter");
    waiter.dependencies = Some(vec!["dep".into()]);
    h.router.create(waiter, "test").await.unwrap();
    h.router.create(new_ticket("live"), "test").await.unwrap();
    taken_by_all(&h);
    let p = pruner(&h, policy(Outbox::ALL.to_vec()));

    h.clock.advance(29 * DAY);
    assert_eq!(p.send(PruneNow).await.unwrap().unwrap(), Pruned::default(), "nothing is 30 days old yet");

    h.clock.advance(2 * DAY);
    let pruned = p.send(PruneNow).await.unwrap().unwrap();
    assert_eq!(pruned.tickets, 3, "three finished tickets, in batches of two; `dep` is needed by `waiter`");
    let mut left: Vec<String> = h.store.rows.lock().unwrap().keys().cloned().collect();
    left.sort();
    assert_eq!(left, ["dep", "live", "waiter"]);
    // Their history went too (every consumer took it); the unfinished tickets keep theirs whole.
    assert_eq!(h.router.store().history("old-1", 0, 100).await.unwrap().total, 0);
    assert!(h.router.history("waiter", 0, 100).await.unwrap().total >= 1);
    assert!(h.router.history("live", 0, 100).await.unwrap().total >= 1);
    assert_eq!(h.metrics.pruned.with_label_values(&["tickets"]).get(), 3);
    assert_eq!(h.metrics.pruned.with_label_values(&["events"]).get(), pruned.events);

    // Once `waiter` finished, `dep` is no longer needed — but `waiter` itself is young.
    h.router.update_status("waiter", to(TicketStatus::Cancelled), "test").await.unwrap();
    taken_by_all(&h);
    assert_eq!(p.send(PruneNow).await.unwrap().unwrap().tickets, 1, "dep");
    h.clock.advance(31 * DAY);
    assert_eq!(p.send(PruneNow).await.unwrap().unwrap().tickets, 1, "waiter");
    assert_eq!(h.store.rows.lock().unwrap().len(), 1, "only `live` is left");
}

#[actix_rt::test]
async fn outbox_rows_wait_for_every_consumer_that_runs() {
    let h = harness();
    finish(&h, "t").await;
    let recorded = h.store.outbox.lock().unwrap().len();
    assert!(recorded >= 3);
    *h.store.cursors.lock().unwrap() = [recorded, 1];
    h.clock.advance(31 * DAY);
    let keep_tickets = RetentionPolicy { tickets: None, ..policy(Outbox::ALL.to_vec()) };

    let both = pruner(&h, keep_tickets.clone());
    assert_eq!(both.send(PruneNow).await.unwrap().unwrap().events, 1, "only what the slower consumer took");
    *h.store.cursors.lock().unwrap() = [recorded, recorded];
    assert_eq!(both.send(PruneNow).await.unwrap().unwrap().events as usize, recorded - 1);
    assert_eq!(h.router.history("t", 0, 100).await.unwrap().total, 0);
    assert!(h.store.rows.lock().unwrap().contains_key("t"), "RETENTION_TICKETS_DAYS=0 keeps the ticket");

    // Without the Kafka publisher (Events), only the audit cursor holds rows back.
    finish(&h, "u").await;
    let len = h.store.outbox.lock().unwrap().len();
    *h.store.cursors.lock().unwrap() = [len, 0];
    h.clock.advance(31 * DAY);
    let audit_only = pruner(&h, RetentionPolicy { tickets: None, ..policy(vec![Outbox::Audit]) });
    assert_eq!(audit_only.send(PruneNow).await.unwrap().unwrap().events as usize, len - recorded);
}

#[actix_rt::test]
async fn zero_days_keeps_for_ever_and_young_rows_stay() {
    let h = harness();
    finish(&h, "t").await;
    taken_by_all(&h);
    h.clock.advance(3650 * DAY);
    let keep = RetentionPolicy { tickets: None, events: None, deliveries: None, ..policy(Outbox::ALL.to_vec()) };
    assert!(!keep.enabled());
    assert_eq!(pruner(&h, keep).send(PruneNow).await.unwrap().unwrap(), Pruned::default());
    assert!(h.store.rows.lock().unwrap().contains_key("t"));
    assert!(h.router.history("t", 0, 100).await.unwrap().total >= 3);
}

#[actix_rt::test]
async fn only_finished_deliveries_past_retention_go() {
    let h = harness();
    let now = actors::clock::Clock::now_ms(&h.clock);
    let delivery = |id: &str, status: DeliveryStatus, created_at: i64, delivered_at: Option<i64>| Delivery {
        id: id.into(),
        subscription_id: Some("sub".into()),
        url: "https://example.com/hook".into(),
        event_type: "ticket.created".into(),
        ticket_id: "t".into(),
        at: created_at,
        data: serde_json::json!({}),
        status,
        attempts: 1,
        last_status: None,
        last_error: None,
        next_attempt_at: None,
        created_at,
        delivered_at,
        traceparent: None,
    };
    *h.store.deliveries.lock().unwrap() = vec![
        delivery("delivered-old", DeliveryStatus::Delivered, now - 8 * DAY, Some(now - 8 * DAY)),
        delivery("failed-old", DeliveryStatus::Failed, now - 9 * DAY, None),
        delivery("pending-old", DeliveryStatus::Pending, now - 30 * DAY, None),
        delivery("redelivered-lately", DeliveryStatus::Delivered, now - 30 * DAY, Some(now - DAY)),
        delivery("delivered-young", DeliveryStatus::Delivered, now - DAY, Some(now - DAY)),
    ];
    let only_deliveries = RetentionPolicy { tickets: None, events: None, ..policy(Outbox::ALL.to_vec()) };
    assert_eq!(pruner(&h, only_deliveries).send(PruneNow).await.unwrap().unwrap().deliveries, 2);
    let left: Vec<String> = h.store.deliveries.lock().unwrap().iter().map(|d| d.id.clone()).collect();
    assert_eq!(left, ["pending-old", "redelivered-lately", "delivered-young"]);
    assert_eq!(h.metrics.pruned.with_label_values(&["deliveries"]).get(), 2);
}

#[actix_rt::test]
async fn a_failing_store_ends_the_round_with_what_it_did() {
    let h = harness();
    finish(&h, "t").await;
    h.clock.advance(31 * DAY);
    h.store.down.store(true, std::sync::atomic::Ordering::SeqCst);
    let e = pruner(&h, policy(Outbox::ALL.to_vec())).send(PruneNow).await.unwrap().unwrap_err();
    assert_eq!(e.pruned, Pruned::default());
    assert!(matches!(e.error, actors::store::StoreError::Unavailable(_)));
}
