//! Retention (issue #20) against real PostgreSQL and SQLite: what each `prune_*` deletes and, above all, what it
//! never deletes — unfinished tickets, tickets an unfinished one depends on or is compensated by, outbox rows a
//! running consumer has not taken, rows of unfinished tickets, pending deliveries — and the service pruning on
//! its own (`tickets_pruned_total{kind}`).

use crate::common;

use std::sync::Arc;
use std::time::Duration;

use actors::enums::TicketStatus;
use actors::history::AuditEvent;
use actors::store::{Outbox, OutboxPosition, TicketStore, Write, WriteUnit};
use actors::validation::NewTicket;
use actors::webhooks::{Delivery, DeliveryStatus};
use actors::Ticket;
use serde_json::json;
use ticket_supervisor::store::postgres::PgTicketStore;
use ticket_supervisor::store::sqlite::SqliteTicketStore;

const OLD: i64 = 1_800_000_000_000;
const CUTOFF: i64 = OLD + 60_000;
const YOUNG: i64 = CUTOFF + 60_000;

async fn stores() -> (Vec<Arc<dyn TicketStore>>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let pg = PgTicketStore::connect(common::fresh_database().await, 4, Duration::from_secs(10)).await.unwrap();
    let lite = SqliteTicketStore::open(dir.path()).await.unwrap();
    (vec![Arc::new(pg), Arc::new(lite)], dir)
}

fn ticket(id: &str, status: TicketStatus, updated_at: i64, dependencies: &[&str]) -> Ticket {
    let mut v = common::ticket(id);
    v["dependencies"] = json!(dependencies);
    let mut t =
        serde_json::from_value::<NewTicket>(v).unwrap().validate(updated_at - 1000, String::new).unwrap().ticket;
    t.status = status;
    t.updated_at = updated_at;
    t
}

fn record(ticket_id: &str, at: i64) -> AuditEvent {
    AuditEvent {
        event_id: uuid::Uuid::new_v4().to_string(),
        ticket_id: ticket_id.into(),
        kind: "ticket.created".into(),
        from_status: None,
        to_status: Some("PENDING".into()),
        version: Some(1),
        actor: "test".into(),
        at,
        details: json!(null),
        traceparent: None,
    }
}

async fn prune_all_tickets(store: &dyn TicketStore, before: i64) -> u64 {
    let mut n = 0;
    loop {
        let batch = store.prune_tickets(before, 2).await.unwrap();
        n += batch;
        if batch < 2 {
            return n;
        }
    }
}

async fn prune_all_events(store: &dyn TicketStore, taken_by: &[Outbox]) -> u64 {
    let (mut n, mut after) = (0, OutboxPosition::default());
    loop {
        let batch = store.prune_events(CUTOFF, taken_by, after, 2).await.unwrap();
        n += batch.deleted;
        after = batch.window_end.unwrap_or(after);
        if !batch.more {
            return n;
        }
    }
}

/// Move `outbox`'s cursor over everything committed (PostgreSQL offers rows once no older transaction runs).
async fn take_everything(store: &dyn TicketStore, outbox: Outbox) {
    for _ in 0..100 {
        let pending = store.audit_pending(outbox, 10_000).await.unwrap();
        if let Some((last, _)) = pending.last() {
            store.audit_advance(outbox, *last).await.unwrap();
        }
        if store.audit_backlog(outbox).await.unwrap() == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{outbox:?}: the backlog never emptied");
}

#[tokio::test]
async fn finished_tickets_go_and_needed_ones_stay() {
    let (stores, _dir) = stores().await;
    use TicketStatus::*;
    for store in stores {
        let backend = store.backend();
        let mut compensating = ticket("compensating", Compensating, YOUNG, &[]);
        compensating.compensation_ticket_id = Some("its-compensation".into());
        let tickets = vec![
            ticket("completed", Completed, OLD, &["needed-by-finished"]),
            ticket("cancelled", Cancelled, OLD, &[]),
            ticket("compensated", Compensated, OLD, &[]),
            ticket("needed-by-finished", Completed, OLD, &[]),
            ticket("failed", Failed, OLD, &[]),
            ticket("pending", Pending, OLD, &[]),
            ticket("running", Running, OLD, &[]),
            ticket("needed", Completed, OLD, &[]),
            ticket("waiter", Pending, YOUNG, &["needed"]),
            ticket("needed-by-failed", Completed, OLD, &[]),
            ticket("failed-waiter", Failed, YOUNG, &["needed-by-failed"]),
            ticket("its-compensation", Completed, OLD, &[]),
            compensating,
            ticket("completed-young", Completed, YOUNG, &[]),
            ticket("completed-at-cutoff", Completed, CUTOFF, &[]),
        ];
        let units: Vec<WriteUnit> = tickets.iter().map(|t| WriteUnit(vec![Write::Insert(t.clone())])).collect();
        assert!(store.commit(&units, None).await.iter().all(Result::is_ok), "{backend}");

        assert_eq!(prune_all_tickets(&*store, CUTOFF).await, 4, "{backend}");
        for id in ["completed", "cancelled", "compensated", "needed-by-finished"] {
            assert_eq!(store.get(id).await.unwrap(), None, "{backend}: {id} pruned");
        }
        for t in &tickets[4..] {
            assert!(store.get(&t.ticket_id).await.unwrap().is_some(), "{backend}: {} kept", t.ticket_id);
        }
        assert_eq!(prune_all_tickets(&*store, CUTOFF).await, 0, "{backend}: nothing left to prune");
    }
}

#[tokio::test]
async fn outbox_rows_go_only_once_every_running_consumer_took_them() {
    let (stores, _dir) = stores().await;
    for store in stores {
        let backend = store.backend();
        let mut unit = vec![
            Write::Insert(ticket("done", TicketStatus::Completed, OLD, &[])),
            Write::Insert(ticket("live", TicketStatus::Pending, OLD, &[])),
        ];
        // Old rows of a finished ticket, of one pruned already (no row), of a live one; a young row.
        let old = [record("done", OLD), record("done", OLD + 1), record("gone", OLD), record("live", OLD)];
        unit.extend(old.iter().cloned().map(Write::Audit));
        unit.push(Write::Audit(record("done", YOUNG)));
        assert_eq!(store.commit(&[WriteUnit(unit)], None).await, vec![Ok(())], "{backend}");

        assert_eq!(prune_all_events(&*store, &Outbox::ALL).await, 0, "{backend}: nobody took anything yet");
        take_everything(&*store, Outbox::Audit).await;
        assert_eq!(prune_all_events(&*store, &Outbox::ALL).await, 0, "{backend}: the event stream did not take them");
        assert_eq!(store.history("done", 0, 10).await.unwrap().total, 3);

        // Without the Kafka publisher running, its cursor holds nothing back.
        assert_eq!(prune_all_events(&*store, &[Outbox::Audit]).await, 3, "{backend}");
        let done = store.history("done", 0, 10).await.unwrap();
        assert_eq!(done.events.iter().map(|e| e.at).collect::<Vec<_>>(), [YOUNG], "{backend}: the young row stays");
        assert_eq!(store.history("gone", 0, 10).await.unwrap().total, 0, "{backend}");
        assert_eq!(store.history("live", 0, 10).await.unwrap().total, 1, "{backend}: a live ticket's history stays");
        // Both consumers took everything: still nothing more (young, or a live ticket's).
        take_everything(&*store, Outbox::Events).await;
        assert_eq!(prune_all_events(&*store, &Outbox::ALL).await, 0, "{backend}");
        assert_eq!(store.audit_backlog(Outbox::Events).await.unwrap(), 0, "{backend}: cursors unaffected");
    }
}

fn delivery(id: &str, status: DeliveryStatus, created_at: i64, delivered_at: Option<i64>) -> Delivery {
    Delivery {
        id: id.into(),
        subscription_id: Some("sub".into()),
        url: "http://127.0.0.1:1/hook".into(),
        event_type: "ticket.created".into(),
        ticket_id: "t".into(),
        at: created_at,
        data: json!({}),
        status,
        attempts: 1,
        last_status: None,
        last_error: None,
        next_attempt_at: (status == DeliveryStatus::Pending).then_some(created_at),
        created_at,
        delivered_at,
        traceparent: None,
    }
}

#[tokio::test]
async fn only_finished_deliveries_go() {
    let (stores, _dir) = stores().await;
    use DeliveryStatus::*;
    for store in stores {
        let backend = store.backend();
        let deliveries = [
            delivery("delivered-old", Delivered, OLD, Some(OLD)),
            delivery("failed-old", Failed, OLD, None),
            delivery("pending-old", Pending, OLD, None),
            delivery("redelivered-lately", Delivered, OLD, Some(YOUNG)),
            delivery("delivered-young", Delivered, YOUNG, Some(YOUNG)),
        ];
        let unit = WriteUnit(deliveries.iter().cloned().map(Write::Delivery).collect());
        assert_eq!(store.commit(&[unit], None).await, vec![Ok(())], "{backend}");
        assert_eq!(store.prune_deliveries(CUTOFF, 1).await.unwrap(), 1, "{backend}: one batch of one");
        assert_eq!(store.prune_deliveries(CUTOFF, 10).await.unwrap(), 1, "{backend}");
        assert_eq!(store.prune_deliveries(CUTOFF, 10).await.unwrap(), 0, "{backend}");
        let (left, total) = store.webhook_deliveries("sub", 0, 10).await.unwrap();
        let mut left: Vec<String> = left.into_iter().map(|d| d.id).collect();
        left.sort();
        assert_eq!(
            (left, total),
            (vec!["delivered-young".into(), "pending-old".into(), "redelivered-lately".into()], 3)
        );
    }
}

/// The advisory lock key of the PostgreSQL store's pruning guard (`PRUNE_GUARD` in `src/store/postgres.rs`).
const PRUNE_LOCK: i64 = 8388345093869039730;

/// PostgreSQL: one replica prunes at a time (a transaction-scoped advisory lock per batch).
#[tokio::test]
async fn a_replica_finding_another_pruning_deletes_nothing() {
    use sqlx::{Connection as _, Executor as _};
    let options = common::fresh_database().await;
    let store: Arc<dyn TicketStore> =
        Arc::new(PgTicketStore::connect(options.clone(), 2, Duration::from_secs(10)).await.unwrap());
    let old = ticket("old", TicketStatus::Completed, OLD, &[]);
    assert_eq!(store.commit(&[WriteUnit(vec![Write::Insert(old)])], None).await, vec![Ok(())]);
    let mut other = sqlx::PgConnection::connect_with(&options).await.unwrap();
    other.execute("BEGIN").await.unwrap();
    sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(PRUNE_LOCK).execute(&mut other).await.unwrap();
    assert_eq!(store.prune_tickets(CUTOFF, 10).await.unwrap(), 0, "another replica is pruning");
    other.execute("COMMIT").await.unwrap();
    assert_eq!(store.prune_tickets(CUTOFF, 10).await.unwrap(), 1);
}

/// PostgreSQL: a pruning call that found nothing to prune leaves the lock free at once (a dropped transaction
/// kept it until its connection was back in the pool, so the next call could prune nothing).
#[tokio::test]
async fn an_empty_pruning_window_leaves_the_lock_free() {
    use sqlx::Connection as _;
    let options = common::fresh_database().await;
    let store: Arc<dyn TicketStore> =
        Arc::new(PgTicketStore::connect(options.clone(), 2, Duration::from_secs(10)).await.unwrap());
    let mut other = sqlx::PgConnection::connect_with(&options).await.unwrap();
    for _ in 0..20 {
        let nothing = store.prune_events(CUTOFF, &Outbox::ALL, OutboxPosition::default(), 10).await.unwrap();
        assert_eq!(nothing.window_end, None, "nothing was taken, so there is no window");
        let free: bool =
            sqlx::query_scalar("SELECT pg_try_advisory_lock($1)").bind(PRUNE_LOCK).fetch_one(&mut other).await.unwrap();
        assert!(free, "the pruning lock is still held after the call returned");
        sqlx::query("SELECT pg_advisory_unlock($1)").bind(PRUNE_LOCK).execute(&mut other).await.unwrap();
    }
}

/// The service prunes on its own, on both stores, and counts it.
#[tokio::test]
async fn the_service_prunes_finished_tickets_and_counts_them() {
    for postgres in [true, false] {
        let (store, _guard) = common::fresh_store(postgres).await;
        let app = common::spawn_app_with(&store, |s| {
            s.retention.tickets = Some(Duration::from_millis(1));
            s.retention.events = None;
            s.retention.first_after = Duration::from_millis(200);
            s.retention.every = Duration::from_millis(200);
            // A ticket actor still live answers from memory: passivate them quickly (in service a finished
            // ticket's actor is gone long before its retention ends, after ACTOR_PASSIVATE_AFTER_SECONDS).
            s.actors.passivate_after = Duration::from_millis(50);
            s.actors.sweep_every = Duration::from_millis(50);
        })
        .await;
        for id in ["ret-1", "ret-2"] {
            let (code, body) = app.post("/api/v1/tickets", &common::ticket(id)).await;
            assert_eq!(code, 201, "postgres={postgres}: {body}");
        }
        for status in ["RUNNING", "COMPLETED"] {
            let (code, body) = app.set_status("ret-1", status).await;
            assert_eq!(code, 200, "{body}");
        }
        let mut pruned = false;
        for _ in 0..100 {
            let metrics = app.client.get(format!("{}/metrics", app.metrics_base)).send().await.unwrap();
            let text = metrics.text().await.unwrap();
            if text.contains("tickets_pruned_total{kind=\"tickets\"} 1") {
                pruned = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(pruned, "postgres={postgres}: tickets_pruned_total{{kind=\"tickets\"}} reached 1");
        assert_eq!(app.get("/api/v1/tickets/ret-1").await.0, 404, "the finished ticket is gone");
        assert_eq!(app.get("/api/v1/tickets/ret-2").await.0, 200, "the PENDING one stays");
    }
}
