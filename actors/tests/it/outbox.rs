//! One outbox, two consumers: an `OutboxShipper` per `Outbox` (the audit trail and the event stream), each with
//! its own flag per row and its own sink. A failing sink holds back only its own consumer, which catches up,
//! in outbox order, once the sink works again.

use crate::common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::Actor as _;
use actors::enums::TicketStatus;
use actors::history::AuditEvent;
use actors::outbox_sink::{OutboxSink, SinkError};
use actors::shipper::{OutboxShipper, ShipperConfig, ShipperHealth};
use actors::store::Outbox;
use async_trait::async_trait;
use common::{harness, new_ticket, to};

/// A sink that records what it took, fails while `failing`, and (like the Kafka publisher) may pass over
/// records that are not ticket events.
#[derive(Default)]
struct FakeSink {
    taken: Mutex<Vec<String>>,
    failing: AtomicBool,
    only_ticket_events: bool,
}

#[async_trait]
impl OutboxSink for FakeSink {
    async fn ship(&self, events: &[AuditEvent]) -> Result<usize, SinkError> {
        if self.failing.load(Ordering::SeqCst) {
            return Err(SinkError("down".into()));
        }
        let used: Vec<String> = events
            .iter()
            .filter(|e| !self.only_ticket_events || e.kind.starts_with("ticket."))
            .map(|e| e.event_id.clone())
            .collect();
        let n = used.len();
        self.taken.lock().unwrap().extend(used);
        Ok(n)
    }

    fn name(&self) -> &'static str {
        "fake"
    }
}

fn quick() -> ShipperConfig {
    ShipperConfig {
        batch: 2,
        idle: Duration::from_millis(10),
        backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(40),
        held_warning: Duration::from_millis(200),
        leader: Default::default(),
    }
}

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..500 {
        if check() {
            return;
        }
        actix_rt::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for: {what}");
}

#[actix_rt::test]
async fn each_outbox_consumer_keeps_its_own_cursor() {
    let h = harness();
    h.router.create(new_ticket("a"), "test").await.unwrap();
    h.router.create(new_ticket("b"), "test").await.unwrap();
    h.router.update_status("a", to(TicketStatus::Running), "test").await.unwrap();
    let ids = |store: &common::MemoryStore| -> Vec<String> {
        store.outbox.lock().unwrap().iter().map(|e| e.event_id.clone()).collect()
    };
    let recorded = ids(&h.store);
    assert_eq!(recorded.len(), 5, "created and ready of two tickets, started");

    let audit = Arc::new(FakeSink::default());
    let events = Arc::new(FakeSink { failing: AtomicBool::new(true), only_ticket_events: true, ..FakeSink::default() });
    let (audit_health, events_health) = (ShipperHealth::unregistered(), ShipperHealth::unregistered());
    let (store, sink, health) = (h.store.clone(), audit.clone(), audit_health.clone());
    OutboxShipper::new(store, sink, Outbox::Audit, health, quick()).start();
    let (store, sink, health) = (h.store.clone(), events.clone(), events_health.clone());
    OutboxShipper::new(store, sink, Outbox::Events, health, quick()).start();

    eventually("the audit trail shipped while the event sink fails", || {
        *audit.taken.lock().unwrap() == recorded && events_health.status().is_err()
    })
    .await;
    assert!(events.taken.lock().unwrap().is_empty());
    assert!(audit_health.status().is_ok());
    assert_eq!(*h.store.cursors.lock().unwrap(), [5, 0], "the audit trail's cursor moved, the event stream's did not");

    // A record the event sink passes over still counts as taken, so it does not block the ones after it.
    let first = h.store.outbox.lock().unwrap()[0].clone();
    let token = AuditEvent { event_id: "token-1".into(), kind: "token.minted".into(), ..first };
    h.store.outbox.lock().unwrap().push(token);
    h.router.update_status("a", to(TicketStatus::Completed), "test").await.unwrap();
    let recorded = ids(&h.store);
    events.failing.store(false, Ordering::SeqCst);
    eventually("the event sink caught up, in outbox order", || {
        let len = h.store.outbox.lock().unwrap().len();
        events_health.status().is_ok() && *h.store.cursors.lock().unwrap() == [len, len]
    })
    .await;
    let mut ticket_events = recorded.clone();
    ticket_events.remove(5); // the token record
    assert_eq!(*events.taken.lock().unwrap(), ticket_events);
    assert_eq!(*audit.taken.lock().unwrap(), recorded, "the audit trail took everything once");
    assert_eq!((audit_health.shipped(), events_health.shipped()), (7, 6), "what each sink used");
}

/// Records a store holds back (an old transaction still running on the database) are not lost, and not silently
/// late: after `held_warning` the shipping shows degraded with why, and recovers once they can be taken.
#[actix_rt::test]
async fn records_held_back_too_long_show_as_degraded_then_ship() {
    let h = harness();
    *h.store.horizon.lock().unwrap() = Some(0);
    h.router.create(new_ticket("held"), "test").await.unwrap();
    let audit = Arc::new(FakeSink::default());
    let health = ShipperHealth::unregistered();
    OutboxShipper::new(h.store.clone(), audit.clone(), Outbox::Audit, health.clone(), quick()).start();

    eventually("degraded, saying why", || health.status().is_err_and(|e| e.contains("2 records wait behind"))).await;
    assert!(audit.taken.lock().unwrap().is_empty());
    *h.store.horizon.lock().unwrap() = None;
    eventually("shipped and healthy again", || health.status().is_ok() && audit.taken.lock().unwrap().len() == 2).await;
}

/// Cluster mode: only the replica that owns shard 0 ships (two shippers on one cursor would ship records twice).
/// A shipper that is not the leader ships nothing; it starts once the leases make it the leader.
#[actix_rt::test]
async fn only_the_leader_ships() {
    use actors::ownership::{Leader, Owner, ShardTable, VIRTUAL_SHARDS};
    let h = harness();
    h.router.create(new_ticket("a"), "test").await.unwrap();
    let table = ShardTable::clustered("me");
    let other = Owner::Remote { member: Arc::from("other"), address: Arc::from("http://other") };
    table.set(vec![other; usize::from(VIRTUAL_SHARDS)], std::time::Instant::now() + Duration::from_secs(60));
    let sink = Arc::new(FakeSink::default());
    let config = ShipperConfig { leader: Leader::of(&table), ..quick() };
    OutboxShipper::new(h.store.clone(), sink.clone(), Outbox::Audit, ShipperHealth::unregistered(), config).start();
    actix_rt::time::sleep(Duration::from_millis(700)).await;
    assert!(sink.taken.lock().unwrap().is_empty(), "not the leader: nothing shipped");

    let mut owners = vec![Owner::Unknown; usize::from(VIRTUAL_SHARDS)];
    owners[0] = Owner::Local { epoch: 1 };
    table.set(owners, std::time::Instant::now() + Duration::from_secs(60));
    eventually("the new leader ships", || sink.taken.lock().unwrap().len() == 2).await;
}
