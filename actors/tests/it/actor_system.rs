//! The actor system against an in-memory store double (the real stores are tested in the service crate):
//! idempotent create, persisted transitions, passivation and rehydration, restart after a panic, overload,
//! store outages and group commit.

use crate::common;

use std::sync::atomic::Ordering;

use actors::compensation::CompensationRequest;
use actors::enums::TicketStatus;
use actors::ownership::{vshard_of, Moved};
use actors::store::StoreError;
use actors::{SystemConfig, TicketError};
use common::{harness, harness_with, new_ticket, to, MemoryStore};

#[actix_rt::test]
async fn create_is_durable_and_idempotent() {
    let h = harness();
    let (t, created) = h.router.create(new_ticket("a"), "test").await.unwrap();
    assert!(created);
    assert_eq!(h.store.rows.lock().unwrap()["a"], *t, "acknowledged create is in the store");
    let (again, created) = h.router.create(new_ticket("a"), "test").await.unwrap();
    assert!(!created);
    assert_eq!(again, t);
    let mut different = new_ticket("a");
    different.description = Some("other".into());
    assert!(matches!(h.router.create(different, "test").await, Err(TicketError::AlreadyExists(_))));
}

/// A new ticket is created by its shard without an actor; what arrives for it meanwhile (a repeat of the
/// create, a read) waits for that insert, then sees the committed ticket.
#[actix_rt::test]
async fn requests_for_a_ticket_being_created_wait_for_the_insert() {
    let store = MemoryStore { commit_delay_ms: 50, ..MemoryStore::default() };
    let h = harness_with(store, common::test_config());
    let (created, again, read) = futures::join!(
        h.router.create(new_ticket("x"), "test"),
        h.router.create(new_ticket("x"), "test"),
        h.router.get("x"),
    );
    let (t, first) = created.unwrap();
    let (t2, second) = again.unwrap();
    assert!(first && !second, "one create creates, its repeat is idempotent");
    assert_eq!(t2, t);
    assert_eq!(read.unwrap(), *t, "the read waited for the insert instead of finding nothing");
    let outbox = h.store.outbox.lock().unwrap();
    let created_records = outbox.iter().filter(|e| e.ticket_id == "x" && e.kind == "ticket.created").count();
    assert_eq!(created_records, 1, "one ticket, one creation record");
}

#[actix_rt::test]
async fn transitions_are_persisted_before_they_are_answered() {
    let h = harness();
    h.router.create(new_ticket("b"), "test").await.unwrap();
    h.clock.advance(500);
    let running = h.router.update_status("b", to(TicketStatus::Running), "test").await.unwrap();
    assert_eq!(running.version, 2);
    assert_eq!(h.store.rows.lock().unwrap()["b"].status, TicketStatus::Running);
    let err = h.router.update_status("b", to(TicketStatus::Compensated), "test").await.unwrap_err();
    assert!(matches!(err, TicketError::IllegalTransition(_)), "{err:?}");
    let same = h.router.update_status("b", to(TicketStatus::Running), "test").await.unwrap();
    assert_eq!(same.version, 2, "repeating the status is a no-op");
    let mut stale = to(TicketStatus::Completed);
    stale.expected_version = Some(1);
    assert!(matches!(
        h.router.update_status("b", stale, "test").await,
        Err(TicketError::VersionMismatch { expected: 1, actual: 2, .. })
    ));
    assert!(matches!(h.router.get("nope").await, Err(TicketError::NotFound(_))));
}

/// A read of a live ticket does not queue behind the ticket's writes: while an update is still committing, the
/// read answers with the last committed state (never the one being written); once the update is answered, or
/// announced to watchers, reads return it.
#[actix_rt::test]
async fn reads_of_a_live_ticket_see_committed_state_without_waiting_for_writes() {
    let h = harness();
    h.router.create(new_ticket("r"), "test").await.unwrap();
    h.router.update_status("r", to(TicketStatus::Running), "test").await.unwrap();
    let mut events = h.router.subscribe();
    let held = h.store.gate.lock().await;
    let begun = h.store.commits_begun.load(Ordering::SeqCst);
    let router = h.router.clone();
    let update = tokio::spawn(async move { router.update_status("r", to(TicketStatus::Completed), "test").await });
    while h.store.commits_begun.load(Ordering::SeqCst) == begun {
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    let read = tokio::time::timeout(std::time::Duration::from_secs(5), h.router.get("r"))
        .await
        .expect("a read must not wait for the write in flight")
        .unwrap();
    assert_eq!((read.status, read.version), (TicketStatus::Running, 2), "the committed state, not the one in flight");
    drop(held);
    // A watcher that reads as soon as it hears of the change sees it.
    loop {
        let e = events.recv().await.unwrap();
        if e.ticket.ticket_id == "r" && e.ticket.status == TicketStatus::Completed {
            assert_eq!(h.router.get("r").await.unwrap().version, 3, "announced before it could be read");
            break;
        }
    }
    let done = update.await.unwrap().unwrap();
    assert_eq!(h.router.get("r").await.unwrap(), done, "read-your-writes");
}

/// A ticket's first request after its create starts the ticket's actor from the copy its shard just committed:
/// nothing is read back from the store. Once the shard no longer keeps that copy (kept as long as an idle actor
/// would be, and dropped when the ticket's shard is handed to another replica), the next actor reads the store.
#[actix_rt::test]
async fn the_first_update_after_a_create_reads_nothing_from_the_store() {
    let h = harness();
    let (created, _) = h.router.create(new_ticket("f"), "test").await.unwrap();
    assert_eq!(h.metrics.live.get(), 0, "created without an actor");
    let before = h.store.reads.load(Ordering::SeqCst);
    let running = h.router.update_status("f", to(TicketStatus::Running), "worker").await.unwrap();
    assert_eq!((running.version, running.created_at), (2, created.created_at));
    assert_eq!(h.router.get("f").await.unwrap(), running);
    assert_eq!(h.store.reads.load(Ordering::SeqCst), before, "started from the committed copy");

    h.router.create(new_ticket("g"), "test").await.unwrap();
    h.clock.advance(SystemConfig::default().passivate_after.as_millis() as i64);
    h.router.sweep().await;
    let running = h.router.update_status("g", to(TicketStatus::Running), "worker").await.unwrap();
    assert_eq!(running.version, 2);
    assert_eq!(h.store.reads.load(Ordering::SeqCst), before + 1, "no longer kept: read from the store");

    // Handed off (and, here, served again at once): another replica may have changed it meanwhile.
    h.router.create(new_ticket("h"), "test").await.unwrap();
    let lost = Moved { gained: vec![], lost: vec![vshard_of("h")] };
    h.router.shards_moved(&lost).await.unwrap();
    h.router.update_status("h", to(TicketStatus::Running), "worker").await.unwrap();
    assert_eq!(h.store.reads.load(Ordering::SeqCst), before + 2, "dropped at the hand-off: read from the store");
}

/// Actors that start together read their tickets together: the first status update of each of 100 tickets
/// created without an actor (long enough ago that their shard no longer keeps them) starts 100 actors, and
/// while one read is in flight the others queue and go to the store as one call (it was one call each). Every
/// update still sees its own ticket.
#[actix_rt::test]
async fn actors_starting_together_load_their_tickets_in_one_store_call() {
    let h = harness();
    let ids: Vec<String> = (0..100).map(|i| format!("cold-{i}")).collect();
    for id in &ids {
        h.router.create(new_ticket(id), "test").await.unwrap();
    }
    assert_eq!(h.metrics.live.get(), 0, "created without actors");
    h.clock.advance(SystemConfig::default().passivate_after.as_millis() as i64);
    h.router.sweep().await;
    let held = h.store.read_gate.lock().await;
    let before = h.store.reads.load(Ordering::SeqCst);
    let updates: Vec<_> = ids
        .iter()
        .map(|id| {
            let (router, id) = (h.router.clone(), id.clone());
            tokio::spawn(async move { router.update_status(&id, to(TicketStatus::Running), "test").await })
        })
        .collect();
    // Every actor started and asked for its ticket; one read is at the store, held there.
    while h.metrics.live.get() < 100 || h.store.reads.load(Ordering::SeqCst) == before {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    drop(held);
    for (id, update) in ids.iter().zip(updates) {
        let t = update.await.unwrap().unwrap();
        assert_eq!((t.ticket_id.as_str(), t.status, t.version), (id.as_str(), TicketStatus::Running, 2));
    }
    let reads = h.store.reads.load(Ordering::SeqCst) - before;
    assert!(reads <= 3, "100 actors read their tickets in {reads} store calls");
}

#[actix_rt::test]
async fn idle_actors_passivate_and_rehydrate_from_the_store() {
    let h = harness();
    h.router.create(new_ticket("c"), "test").await.unwrap();
    h.router.update_status("c", to(TicketStatus::Running), "test").await.unwrap();
    assert_eq!(h.metrics.live.get(), 1);
    assert_eq!(h.router.sweep().await, 0, "not idle yet");
    h.clock.advance(SystemConfig::default().passivate_after.as_millis() as i64);
    assert_eq!(h.router.sweep().await, 1);
    assert_eq!(h.metrics.live.get(), 0);
    // The passivated actor stops a moment later; until then a read is answered from its state, not the store.
    for _ in 0..1000 {
        if !h.router.is_live_here("c") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    assert!(!h.router.is_live_here("c"), "the passivated actor stopped");
    let t = h.router.get("c").await.unwrap();
    assert_eq!((t.status, t.version), (TicketStatus::Running, 2));
    assert_eq!(h.metrics.live.get(), 1);
}

#[actix_rt::test]
async fn a_panicking_actor_is_restarted_from_the_stored_state() {
    let h = harness();
    h.router.create(new_ticket("d"), "test").await.unwrap();
    h.armed.store(1, Ordering::SeqCst);
    let err = h.router.update_status("d", to(TicketStatus::Running), "test").await.unwrap_err();
    assert!(matches!(err, TicketError::ActorFailed(_)), "{err:?}");
    assert_eq!(h.metrics.restarts.get(), 1);
    let t = h.router.get("d").await.unwrap();
    assert_eq!((t.status, t.version), (TicketStatus::Pending, 1), "state comes back from the store");
    let t = h.router.update_status("d", to(TicketStatus::Running), "test").await.unwrap();
    assert_eq!(t.version, 2);
    // Other tickets were never affected.
    h.router.create(new_ticket("e"), "test").await.unwrap();
}

#[actix_rt::test]
async fn a_store_outage_fails_calls_without_changing_state() {
    let h = harness();
    h.router.create(new_ticket("f"), "test").await.unwrap();
    h.store.down.store(true, Ordering::SeqCst);
    let err = h.router.update_status("f", to(TicketStatus::Running), "test").await.unwrap_err();
    assert!(matches!(err, TicketError::Store(StoreError::Unavailable(_))), "{err:?}");
    assert!(matches!(h.router.create(new_ticket("g"), "test").await, Err(TicketError::Store(_))));
    h.store.down.store(false, Ordering::SeqCst);
    let t = h.router.get("f").await.unwrap();
    assert_eq!((t.status, t.version), (TicketStatus::Pending, 1), "the failed write is not visible");
    assert!(h.router.create(new_ticket("g"), "test").await.unwrap().1, "recovers without restart");
}

#[actix_rt::test]
async fn concurrent_writes_share_transactions() {
    let store = MemoryStore { commit_delay_ms: 20, ..MemoryStore::default() };
    let config = SystemConfig { shards: 4, arbiters: 2, persist_in_flight: 1, ..SystemConfig::default() };
    let h = harness_with(store, config);
    let creates = (0..200).map(|i| h.router.create(new_ticket(&format!("batch-{i}")), "test"));
    let results = futures::future::join_all(creates).await;
    assert!(results.iter().all(|r| r.as_ref().is_ok_and(|(_, created)| *created)));
    assert_eq!(h.store.rows.lock().unwrap().len(), 200);
    let commits = h.store.commits.load(Ordering::SeqCst);
    assert!(commits < 50, "200 creates took {commits} transactions");
}

/// Two writers (one per arbiter) under a steady trickle of writes: their small commits take turns, so while
/// one commits the other's queue fills, and nothing waits for good (`commit_turn`).
#[actix_rt::test]
async fn small_commits_of_several_writers_take_turns() {
    let store = MemoryStore { commit_delay_ms: 5, ..MemoryStore::default() };
    let config = SystemConfig { shards: 4, arbiters: 2, persist_in_flight: 1, ..SystemConfig::default() };
    let h = harness_with(store, config);
    // Eight callers at a time, each one create after another: every queue stays far below a large batch.
    let callers = (0..8).map(|c| {
        let router = h.router.clone();
        async move {
            for i in 0..10 {
                let (_, created) = router.create(new_ticket(&format!("turn-{c}-{i}")), "test").await.unwrap();
                assert!(created);
            }
        }
    });
    futures::future::join_all(callers).await;
    assert_eq!(h.store.rows.lock().unwrap().len(), 80, "every write committed: no writer was left waiting");
    assert_eq!(h.store.most_committing.load(Ordering::SeqCst), 1, "two writers, one small commit at a time");
    let commits = h.store.commits.load(Ordering::SeqCst);
    assert!(commits < 80, "the writes were grouped: 80 creates took {commits} transactions");
}

#[actix_rt::test]
async fn a_full_mailbox_sheds_load() {
    let store = MemoryStore { commit_delay_ms: 200, ..MemoryStore::default() };
    let config = SystemConfig { shards: 1, arbiters: 1, mailbox_capacity: 4, ..SystemConfig::default() };
    let h = harness_with(store, config);
    let creates = (0..10).map(|i| h.router.create(new_ticket(&format!("load-{i}")), "test"));
    let results = futures::future::join_all(creates).await;
    let shed = results.iter().filter(|r| matches!(r, Err(TicketError::Overloaded))).count();
    assert_eq!(shed, 6, "capacity 4: the rest is refused at once");
    assert_eq!(h.store.rows.lock().unwrap().len(), 4);
    assert!(h.router.create(new_ticket("load-after"), "test").await.is_ok(), "recovers once drained");
}

/// Kafka ingestion bounds its own in-flight messages; a flood of client requests that fills the admission
/// bound must not refuse it (it would only retry with back-off, and ingestion would starve).
#[actix_rt::test]
async fn a_client_flood_does_not_shed_ingestion() {
    let store = MemoryStore { commit_delay_ms: 200, ..MemoryStore::default() };
    let config = SystemConfig { shards: 1, arbiters: 1, mailbox_capacity: 4, ..SystemConfig::default() };
    let h = harness_with(store, config);
    let clients =
        futures::future::join_all((0..10).map(|i| h.router.create(new_ticket(&format!("client-{i}")), "test")));
    let ingested =
        futures::future::join_all((0..10).map(|i| h.router.ingest(new_ticket(&format!("kafka-{i}")), "kafka")));
    let (clients, ingested) = futures::join!(clients, ingested);
    let shed = clients.iter().filter(|r| matches!(r, Err(TicketError::Overloaded))).count();
    assert_eq!(shed, 6, "clients beyond the bound are refused");
    assert!(ingested.iter().all(|r| r.as_ref().is_ok_and(|(_, created)| *created)), "{ingested:?}");
    assert_eq!(h.store.rows.lock().unwrap().len(), 14);
}

#[actix_rt::test]
async fn compensation_links_both_tickets_atomically() {
    let h = harness();
    h.router.create(new_ticket("orig"), "test").await.unwrap();
    h.router.update_status("orig", to(TicketStatus::Running), "test").await.unwrap();
    let req = CompensationRequest {
        original_ticket_id: "orig".into(),
        reason: "deploy broke prod".into(),
        compensation_action: None,
        parameters: None,
    };
    let (original, comp, created) = h.router.compensate(req.clone(), "test").await.unwrap();
    assert!(created);
    assert_eq!(original.status, TicketStatus::Compensating);
    assert_eq!(original.compensation_ticket_id.as_deref(), Some(comp.ticket_id.as_str()));
    assert_eq!(comp.spec.metadata["original_ticket_id"], "orig");
    assert_eq!(h.router.get(&comp.ticket_id).await.unwrap(), comp, "the compensation ticket is stored");
    let (_, again, created) = h.router.compensate(req, "test").await.unwrap();
    assert_eq!((again.ticket_id.as_str(), created), (comp.ticket_id.as_str(), false), "repeating is idempotent");
    let pending_req = CompensationRequest { original_ticket_id: "nope".into(), ..again_req() };
    assert!(matches!(h.router.compensate(pending_req, "test").await, Err(TicketError::NotFound(_))));
}

fn again_req() -> CompensationRequest {
    CompensationRequest {
        original_ticket_id: String::new(),
        reason: "r".into(),
        compensation_action: None,
        parameters: None,
    }
}

#[actix_rt::test]
async fn committed_changes_are_announced_with_who_made_them() {
    let h = harness();
    let mut events = h.router.subscribe();
    h.router.create(new_ticket("ev"), "orchestrator").await.unwrap();
    h.router.update_status("ev", to(TicketStatus::Running), "worker-7").await.unwrap();
    h.router.progress("ev", 0.5, Some("half".into()), "worker-7").await.unwrap();
    h.router.update_status("ev", to(TicketStatus::Running), "worker-7").await.unwrap(); // no-op: no event
    h.store.down.store(true, Ordering::SeqCst);
    assert!(h.router.update_status("ev", to(TicketStatus::Completed), "worker-7").await.is_err());
    h.store.down.store(false, Ordering::SeqCst);
    h.clock.advance(10);
    h.router.update_status("ev", to(TicketStatus::Pending), "worker-7").await.unwrap();

    let mut seen = Vec::new();
    while let Ok(e) = events.try_recv() {
        seen.push((e.kind.as_str(), e.actor.to_string(), e.ticket.version, e.from));
    }
    assert_eq!(
        seen,
        vec![
            ("ticket.created", "orchestrator".to_owned(), 1, None),
            ("ticket.ready", "system".to_owned(), 1, None),
            ("ticket.started", "worker-7".to_owned(), 2, Some(TicketStatus::Pending)),
            ("ticket.progress", "worker-7".to_owned(), 2, Some(TicketStatus::Running)),
            ("ticket.retry", "worker-7".to_owned(), 3, Some(TicketStatus::Running)),
            ("ticket.ready", "system".to_owned(), 3, None),
        ],
        "an uncommitted change is never announced"
    );
    let err = h.router.heartbeat("ev", "worker-7").await.unwrap_err();
    assert!(matches!(err, TicketError::IllegalTransition(_)), "heartbeat for a PENDING ticket: {err:?}");
}

type Announcement = (&'static str, String, serde_json::Value);

fn announcement(e: &actors::events::TicketEvent) -> Option<Announcement> {
    let ours = matches!(e.kind.as_str(), "ticket.ready" | "ticket.blocked")
        && ["w", "z"].contains(&e.ticket.ticket_id.as_str());
    ours.then(|| (e.kind.as_str(), e.ticket.ticket_id.clone(), e.details.clone()))
}

/// The next `ticket.ready` / `ticket.blocked` of w or z (10 s at most).
async fn next_announcement(events: &mut tokio::sync::broadcast::Receiver<actors::events::TicketEvent>) -> Announcement {
    loop {
        let e = tokio::time::timeout(std::time::Duration::from_secs(10), events.recv())
            .await
            .expect("an announcement within 10 s")
            .unwrap();
        if let Some(a) = announcement(&e) {
            return a;
        }
    }
}

/// The announcements of w or z published so far and not yet seen.
fn pending_announcements(
    events: &mut tokio::sync::broadcast::Receiver<actors::events::TicketEvent>,
) -> Vec<Announcement> {
    std::iter::from_fn(|| events.try_recv().ok()).filter_map(|e| announcement(&e)).collect()
}

#[actix_rt::test]
async fn a_ticket_is_ready_the_moment_its_last_dependency_completes() {
    let h = harness();
    let mut events = h.router.subscribe();
    for id in ["d1", "d2", "x1"] {
        h.router.create(new_ticket(id), "o").await.unwrap();
    }
    let mut waiting = new_ticket("w");
    waiting.dependencies = Some(vec!["d1".into(), "d2".into()]);
    h.router.create(waiting, "o").await.unwrap();
    let mut doomed = new_ticket("z");
    doomed.dependencies = Some(vec!["x1".into()]);
    h.router.create(doomed, "o").await.unwrap();
    for id in ["d1", "d2", "x1"] {
        h.router.update_status(id, to(TicketStatus::Running), "worker").await.unwrap();
    }
    h.router.update_status("d1", to(TicketStatus::Completed), "worker").await.unwrap();
    h.router.update_status("x1", to(TicketStatus::Failed), "worker").await.unwrap();
    // The readiness checks of finished tickets run after their change was answered: wait for what they announce.
    let blocked = next_announcement(&mut events).await;
    assert_eq!((blocked.0, blocked.1.as_str()), ("ticket.blocked", "z"));
    assert_eq!(blocked.2["blocked_by"][0]["status"], "FAILED");
    // w still waits for d2: a check of its own announces nothing (it publishes before it answers).
    assert_eq!(h.router.check_ready("w").await.unwrap().version, 1);
    assert_eq!(pending_announcements(&mut events), [], "w still waits for d2; z blocked once");

    h.router.update_status("d2", to(TicketStatus::Completed), "worker").await.unwrap();
    let ready = next_announcement(&mut events).await;
    assert_eq!((ready.0, ready.1.as_str()), ("ticket.ready", "w"));
    // Announced once per PENDING spell: asking again announces nothing.
    let w = h.router.check_ready("w").await.unwrap();
    assert_eq!(w.version, 1, "the announcement is not a new version of the ticket");
    assert_eq!(pending_announcements(&mut events), []);
    let stored = h.store.rows.lock().unwrap()["w"].sla_state.ready_for;
    assert_eq!(stored, h.store.rows.lock().unwrap()["w"].sla_state.pending_since, "recorded with the ticket");
}
