//! The two SQL stores against real PostgreSQL and SQLite: every field round-trips, a group commit keeps its
//! units independent (a conflicting unit, even one of several writes, leaves nothing behind and does not
//! affect the others), and the outbox's consumers (audit trail, event stream) keep independent flags.

use crate::common;

use std::sync::Arc;
use std::time::Duration;

use actors::enums::TicketStatus;
use actors::history::AuditEvent;
use actors::store::{
    AuditOutbox, ListQuery, Outbox, OutboxPosition, StoreError, StoreHealth, TicketStore, Tickets, UnitConflict,
    UnitError, Write, WriteUnit,
};
use actors::validation::NewTicket;
use actors::Ticket;
use serde_json::json;
use ticket_supervisor::store::postgres::PgTicketStore;
use ticket_supervisor::store::sqlite::SqliteTicketStore;

async fn stores() -> (Vec<Arc<dyn TicketStore>>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let pg = PgTicketStore::connect(common::fresh_database().await, 4, Duration::from_secs(10)).await.unwrap();
    let lite = SqliteTicketStore::open(dir.path()).await.unwrap();
    (vec![Arc::new(pg), Arc::new(lite)], dir)
}

/// A ticket with every optional field set.
fn full_ticket(id: &str) -> Ticket {
    let mut v = common::ticket(id);
    v["correlation_id"] = json!("corr");
    v["trace_id"] = json!("0af7651916cd43dd8448eb211c80319c");
    v["span_id"] = json!("b7ad6b7169203331");
    v["dependencies"] = json!(["dep-a", "dep-b"]);
    v["parameters"] = json!({"nested": {"list": [1, 2.5, "x", null]}, "flag": true});
    v["estimated_duration_ms"] = json!(5_000);
    v["created_at"] = json!(1_800_000_000_123i64);
    v["started_at"] = json!(1_800_000_001_000i64);
    v["completed_at"] = json!(1_800_000_002_000i64);
    v["actual_duration_ms"] = json!(1_000);
    v["status"] = json!("FAILED");
    v["retry_count"] = json!(2);
    v["error_message"] = json!("exit code 137 — OOM (ünïcode)");
    v["compensation_ticket_id"] = json!("comp-x");
    v["schema_version"] = json!(2);
    serde_json::from_value::<NewTicket>(v).unwrap().validate(1_800_000_003_000, String::new).unwrap().ticket
}

#[tokio::test]
async fn every_field_round_trips() {
    let (stores, _dir) = stores().await;
    for store in stores {
        let mut t = full_ticket("rt-1");
        t.sla_state.warnings_fired = vec![500];
        t.sla_state.next_due_at = Some(1_800_000_009_000);
        let outcomes = store.commit(&[WriteUnit(vec![Write::Insert(t.clone())])], None).await;
        assert_eq!(outcomes, vec![Ok(())], "{}", store.backend());
        assert_eq!(store.get("rt-1").await.unwrap(), Some(t.clone()), "{}", store.backend());
        let due = store.due_before(1_800_000_009_001, 10, None).await.unwrap();
        assert_eq!(due, vec![("rt-1".to_owned(), 1_800_000_009_000)], "{}", store.backend());
        assert!(store.due_before(1_800_000_009_000, 10, None).await.unwrap().is_empty(), "strictly before");
        let after = (1_800_000_009_000, "rt-1".to_owned());
        assert!(store.due_before(1_900_000_000_000, 10, Some(&after)).await.unwrap().is_empty(), "keyset cursor");
        assert_eq!(store.get("missing").await.unwrap(), None);
        let many = store.get_many(&["rt-1".to_owned(), "missing".to_owned()]).await.unwrap();
        assert_eq!(many, vec![t], "{}", store.backend());
    }
}

#[tokio::test]
async fn units_of_one_group_commit_are_independent() {
    let (stores, _dir) = stores().await;
    for store in stores {
        let backend = store.backend();
        let a = full_ticket("a");
        let b = full_ticket("b");
        assert!(store.commit(&[WriteUnit(vec![Write::Insert(b.clone())])], None).await[0].is_ok());

        let mut b2 = b.clone();
        b2.status = TicketStatus::Pending;
        b2.version = 2;
        let mut stale = b.clone();
        stale.version = 2;
        let outcomes = store
            .commit(
                &[
                    WriteUnit(vec![Write::Insert(a.clone())]),
                    WriteUnit(vec![Write::Insert(b.clone())]),
                    // Two writes, the second conflicting: the first must be undone too.
                    WriteUnit(vec![
                        Write::Insert(full_ticket("orphan")),
                        Write::Update { ticket: stale, expected_version: 7 },
                    ]),
                    WriteUnit(vec![Write::Update { ticket: b2.clone(), expected_version: 1 }]),
                ],
                None,
            )
            .await;
        assert_eq!(
            outcomes,
            vec![
                Ok(()),
                Err(UnitError::Conflict(UnitConflict::AlreadyExists("b".into()))),
                Err(UnitError::Conflict(UnitConflict::VersionMismatch("b".into()))),
                Ok(()),
            ],
            "{backend}"
        );
        assert_eq!(store.get("a").await.unwrap(), Some(a.clone()), "{backend}");
        assert_eq!(store.get("orphan").await.unwrap(), None, "{backend}: half a unit was written");
        assert_eq!(store.get("b").await.unwrap(), Some(b2), "{backend}");
        let page =
            store.list(&ListQuery { status: Some(TicketStatus::Failed), limit: 10, ..ListQuery::default() }).await;
        assert_eq!(page.unwrap().total, Some(1), "{backend}");

        // A batch large enough to go in by COPY (PostgreSQL), one of its ids already stored: the rest land.
        let units: Vec<WriteUnit> = (0..40)
            .map(|i| {
                WriteUnit(vec![Write::Insert(if i == 17 { a.clone() } else { full_ticket(&format!("bulk-{i}")) })])
            })
            .collect();
        let outcomes = store.commit(&units, None).await;
        for (i, outcome) in outcomes.iter().enumerate() {
            match i {
                17 => assert_eq!(outcome, &Err(UnitConflict::AlreadyExists("a".into()).into()), "{backend}"),
                _ => assert_eq!(outcome, &Ok(()), "{backend}: unit {i}"),
            }
        }
        assert!(store.get("bulk-39").await.unwrap().is_some(), "{backend}");
    }
}

/// A pending delivery for `subscription` (None: a legacy `metadata.webhook_url` target), due at `due`.
fn delivery(id: &str, subscription: Option<&str>, due: i64) -> actors::webhooks::Delivery {
    actors::webhooks::Delivery {
        id: id.to_owned(),
        subscription_id: subscription.map(str::to_owned),
        url: "http://127.0.0.1:1/hook".into(),
        event_type: "ticket.created".into(),
        ticket_id: format!("t-{id}"),
        at: due,
        data: json!({}),
        status: actors::webhooks::DeliveryStatus::Pending,
        attempts: 0,
        last_status: None,
        last_error: None,
        next_attempt_at: Some(due),
        created_at: due,
        delivered_at: None,
        traceparent: None,
    }
}

#[tokio::test]
async fn a_claim_takes_each_subscription_s_budget_oldest_first() {
    use actors::webhooks::ClaimBudget;
    let (stores, _dir) = stores().await;
    for store in stores {
        let b = store.backend();
        // "slow" has a backlog of 50 older than everything "fast" has; one legacy row; one not yet due.
        let mut writes: Vec<Write> =
            (0..50).map(|i| Write::Delivery(delivery(&format!("s{i:02}"), Some("slow"), 100 + i))).collect();
        writes.extend((0..5).map(|i| Write::Delivery(delivery(&format!("f{i}"), Some("fast"), 200 + i))));
        writes.push(Write::Delivery(delivery("legacy", None, 150)));
        writes.push(Write::Delivery(delivery("later", Some("fast"), 1_000_000)));
        assert_eq!(store.commit(&[WriteUnit(writes)], None).await, vec![Ok(())], "{b}");

        let budget = |s: Option<&str>, limit| ClaimBudget { subscription_id: s.map(str::to_owned), limit };
        let budgets = [budget(Some("slow"), 3), budget(Some("fast"), 10), budget(None, 1)];
        let mut ids: Vec<String> =
            store.webhook_claim(1_000, 61_000, &budgets).await.unwrap().into_iter().map(|d| d.id).collect();
        ids.sort();
        assert_eq!(
            ids,
            ["f0", "f1", "f2", "f3", "f4", "legacy", "s00", "s01", "s02"],
            "{b}: the slow backlog takes only its budget"
        );
        // Leased: claimed rows are not claimed again until the lease ends; the rest of the backlog is.
        let again = store.webhook_claim(1_000, 61_000, &budgets).await.unwrap();
        let mut ids: Vec<&str> = again.iter().map(|d| d.id.as_str()).collect();
        ids.sort();
        assert_eq!(ids, ["s03", "s04", "s05"], "{b}");
        assert!(store.webhook_claim(1_000, 61_000, &[budget(Some("slow"), 0)]).await.unwrap().is_empty(), "{b}");
        let after_lease = store.webhook_claim(61_000, 121_000, &[budget(Some("fast"), 100)]).await.unwrap();
        assert_eq!(after_lease.len(), 5, "{b}: leases that ran out are claimed again (\"later\" is still not due)");
    }
}

fn audit_record(ticket: &Ticket, kind: &str) -> AuditEvent {
    AuditEvent {
        event_id: uuid::Uuid::new_v4().to_string(),
        ticket_id: ticket.ticket_id.clone(),
        kind: kind.into(),
        from_status: None,
        to_status: Some("PENDING".into()),
        version: Some(1),
        actor: "test".into(),
        at: 1_800_000_000_000,
        details: json!({"n": 1}),
        traceparent: actors::trace::ticket_traceparent(ticket.spec.trace_id.as_deref()),
    }
}

async fn pending(store: &dyn TicketStore, outbox: Outbox) -> Vec<(OutboxPosition, AuditEvent)> {
    store.audit_pending(outbox, 100).await.unwrap()
}

/// What `outbox` offers once it offers at least `n` records. Rows become visible to a consumer only when no
/// transaction that could precede them is still running; a test reads committed rows through this (bounded: 10 s)
/// rather than asserting on the first read.
async fn pending_at_least(store: &dyn TicketStore, outbox: Outbox, n: usize) -> Vec<(OutboxPosition, AuditEvent)> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let got = pending(store, outbox).await;
        if got.len() >= n || std::time::Instant::now() > deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn the_audit_and_event_cursors_are_independent() {
    let (stores, _dir) = stores().await;
    for store in stores {
        let backend = store.backend();
        let t = full_ticket("ob-1");
        let records: Vec<AuditEvent> =
            ["ticket.created", "ticket.ready", "token.minted"].iter().map(|k| audit_record(&t, k)).collect();
        let mut unit = vec![Write::Insert(t.clone())];
        unit.extend(records.iter().cloned().map(Write::Audit));
        assert_eq!(store.commit(&[WriteUnit(unit)], None).await, vec![Ok(())], "{backend}");

        for outbox in Outbox::ALL {
            let got = pending_at_least(&*store, outbox, 3).await;
            let events: Vec<AuditEvent> = got.iter().map(|(_, e)| e.clone()).collect();
            assert_eq!(events, records, "{backend} {outbox:?}: every record, in order, with its trace id");
            assert_eq!(store.audit_backlog(outbox).await.unwrap(), 3, "{backend} {outbox:?}");
        }
        let positions: Vec<OutboxPosition> = pending(&*store, Outbox::Audit).await.iter().map(|(p, _)| *p).collect();
        assert!(positions.windows(2).all(|w| w[0] < w[1]), "{backend}: {positions:?}");

        // Shipping to MongoDB takes nothing from the event stream, and the other way round.
        store.audit_advance(Outbox::Audit, positions[1]).await.unwrap();
        let left: Vec<OutboxPosition> =
            pending_at_least(&*store, Outbox::Audit, 1).await.iter().map(|(p, _)| *p).collect();
        assert_eq!(left, &positions[2..], "{backend}");
        assert_eq!(pending_at_least(&*store, Outbox::Events, 3).await.len(), 3, "{backend}: shipped is not published");
        assert_eq!(store.audit_backlog(Outbox::Audit).await.unwrap(), 1, "{backend}");
        assert_eq!(store.audit_backlog(Outbox::Events).await.unwrap(), 3, "{backend}");
        store.audit_advance(Outbox::Events, positions[2]).await.unwrap();
        assert!(pending(&*store, Outbox::Events).await.is_empty(), "{backend}");
        // A cursor never moves back (a slower replica's shipper finishing an older batch).
        store.audit_advance(Outbox::Events, positions[0]).await.unwrap();
        assert!(pending(&*store, Outbox::Events).await.is_empty(), "{backend}: the cursor stayed");
        let still: Vec<OutboxPosition> =
            pending_at_least(&*store, Outbox::Audit, 1).await.iter().map(|(p, _)| *p).collect();
        assert_eq!(left, still, "{backend}");
        assert_eq!(store.audit_backlog(Outbox::Events).await.unwrap(), 0, "{backend}");

        // New records wait for both again; the history is unaffected by either flag.
        let later = audit_record(&t, "ticket.started");
        assert!(store.commit(&[WriteUnit(vec![Write::Audit(later.clone())])], None).await[0].is_ok());
        for outbox in Outbox::ALL {
            let n = if outbox == Outbox::Audit { 2 } else { 1 };
            let got = pending_at_least(&*store, outbox, n).await;
            assert_eq!(got.last().map(|(_, e)| e.clone()), Some(later.clone()), "{backend} {outbox:?}");
        }
        assert_eq!(store.history("ob-1", 0, 10).await.unwrap().total, 4, "{backend}");
    }
}

/// Why the cursor is over (transaction, seq) and held at the oldest running transaction, not a `seq > last
/// published` high-water mark: a transaction takes its sequence number when it inserts, and may commit after a
/// later one. Its row must still be published, and nothing published twice.
#[tokio::test]
async fn a_row_that_commits_after_a_later_one_is_still_published() {
    use sqlx::{Connection as _, Executor as _};
    let options = common::fresh_database().await;
    let store = PgTicketStore::connect(options.clone(), 2, Duration::from_secs(10)).await.unwrap();
    let t = full_ticket("late-1");
    assert!(store.commit(&[WriteUnit(vec![Write::Insert(t.clone())])], None).await[0].is_ok());

    let mut slow = sqlx::PgConnection::connect_with(&options).await.unwrap();
    slow.execute("BEGIN").await.unwrap();
    let early: (i64,) = sqlx::query_as(
        "INSERT INTO ticket_events (event_id, ticket_id, kind, actor, at) \
         VALUES ('early', 'late-1', 'ticket.started', 'test', 1) RETURNING seq",
    )
    .fetch_one(&mut slow)
    .await
    .unwrap();
    let later = audit_record(&t, "ticket.completed");
    assert!(store.commit(&[WriteUnit(vec![Write::Audit(later.clone())])], None).await[0].is_ok());
    assert!(
        pending(&store, Outbox::Events).await.is_empty(),
        "the committed row waits while an older transaction is still running"
    );
    assert_eq!(store.audit_backlog(Outbox::Events).await.unwrap(), 1, "but it counts as waiting");

    slow.execute("COMMIT").await.unwrap();
    let both = pending_at_least(&store, Outbox::Events, 2).await;
    let ids: Vec<&str> = both.iter().map(|(_, e)| e.event_id.as_str()).collect();
    assert_eq!(ids, vec!["early", later.event_id.as_str()], "in transaction order");
    assert!(both[1].0.seq > early.0, "the later transaction has the later sequence number");
    store.audit_advance(Outbox::Events, both[1].0).await.unwrap();
    assert!(pending(&store, Outbox::Events).await.is_empty());
}

/// The outbox horizon is this database's, not the server's: a writing transaction of another application, in
/// another database of the same PostgreSQL server, does not hold shipping back however long it runs; one in this
/// database still does (the test above).
#[tokio::test]
async fn a_long_transaction_in_another_database_does_not_hold_shipping_back() {
    use sqlx::{Connection as _, Executor as _};
    let options = common::fresh_database().await;
    let store = PgTicketStore::connect(options.clone(), 2, Duration::from_secs(10)).await.unwrap();

    // Another application's batch job: a transaction holding a transaction id, open for the whole test.
    let mut other = sqlx::PgConnection::connect_with(&common::fresh_database().await).await.unwrap();
    other.execute("CREATE TABLE big (x int)").await.unwrap();
    other.execute("BEGIN").await.unwrap();
    other.execute("INSERT INTO big VALUES (1)").await.unwrap();

    let t = full_ticket("other-db-1");
    let records: Vec<AuditEvent> = ["ticket.created", "ticket.started"].iter().map(|k| audit_record(&t, k)).collect();
    let mut unit = vec![Write::Insert(t.clone())];
    unit.extend(records.iter().cloned().map(Write::Audit));
    assert_eq!(store.commit(&[WriteUnit(unit)], None).await, vec![Ok(())]);
    for outbox in Outbox::ALL {
        let got = pending_at_least(&store, outbox, 2).await;
        let events: Vec<AuditEvent> = got.into_iter().map(|(_, e)| e).collect();
        assert_eq!(events, records, "{outbox:?}: shipped while another database's transaction runs");
    }

    // A later record too, and the cursor moves over them while that transaction is still open.
    let later = audit_record(&t, "ticket.completed");
    assert!(store.commit(&[WriteUnit(vec![Write::Audit(later.clone())])], None).await[0].is_ok());
    let got = pending_at_least(&store, Outbox::Events, 3).await;
    assert_eq!(got.last().map(|(_, e)| e.event_id.clone()), Some(later.event_id.clone()));
    store.audit_advance(Outbox::Events, got.last().unwrap().0).await.unwrap();
    assert_eq!(store.audit_backlog(Outbox::Events).await.unwrap(), 0);
    let held: Option<(i64,)> = sqlx::query_as("SELECT count(*) FROM big").fetch_optional(&mut other).await.unwrap();
    assert_eq!(held, Some((1,)), "the other transaction was open all along");
    other.execute("COMMIT").await.unwrap();
}

/// The migrations of `driver` (`postgres`, `sqlite`) before the outbox cursors: a copy of the directory
/// without that one.
async fn migrations_before_cursors(driver: &str) -> (sqlx::migrate::Migrator, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut left_out = 0;
    for entry in std::fs::read_dir(format!("migrations/{driver}")).unwrap() {
        let path = entry.unwrap().path();
        if path.file_name().unwrap().to_string_lossy().ends_with("_outbox_cursors.sql") {
            left_out += 1;
        } else {
            std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
        }
    }
    assert_eq!(left_out, 1, "{driver}");
    (sqlx::migrate::Migrator::new(dir.path()).await.unwrap(), dir)
}

/// Four outbox rows as the flag-era schema held them: 1 and 2 taken by both consumers; 3 shipped to MongoDB but
/// not published; 4 taken by neither.
const FLAGGED_ROWS: [(bool, bool); 4] = [(true, true), (true, true), (true, false), (false, false)];
const INSERT_FLAGGED: &str = "INSERT INTO ticket_events (event_id, ticket_id, kind, actor, at, shipped, published) \
                              VALUES ($1, 'm', 'ticket.created', 'test', 1, $2, $3)";

/// After the upgrade each consumer is offered what it had not taken yet (in order), and nothing every consumer
/// had taken.
async fn assert_offered_what_waited(store: &dyn TicketStore) {
    let backend = store.backend();
    let ids = |rows: Vec<(OutboxPosition, AuditEvent)>| rows.into_iter().map(|(_, e)| e.event_id).collect::<Vec<_>>();
    assert_eq!(ids(pending_at_least(store, Outbox::Audit, 1).await), vec!["e4"], "{backend}");
    assert_eq!(ids(pending_at_least(store, Outbox::Events, 2).await), vec!["e3", "e4"], "{backend}");
}

/// Upgrading a database whose outbox used per-row flags keeps what waited, on both stores.
#[tokio::test]
async fn the_cursor_migration_keeps_what_waited() {
    use sqlx::ConnectOptions as _;
    let options = common::fresh_database().await;
    let mut conn = options.connect().await.unwrap();
    let (old, _dir) = migrations_before_cursors("postgres").await;
    old.run(&mut conn).await.unwrap();
    for (i, (shipped, published)) in FLAGGED_ROWS.iter().enumerate() {
        let q = sqlx::query(INSERT_FLAGGED).bind(format!("e{}", i + 1)).bind(shipped).bind(published);
        q.execute(&mut conn).await.unwrap();
    }
    assert_offered_what_waited(&PgTicketStore::connect(options, 2, Duration::from_secs(10)).await.unwrap()).await;

    let data = tempfile::tempdir().unwrap();
    let lite =
        sqlx::sqlite::SqliteConnectOptions::new().filename(data.path().join("tickets.db")).create_if_missing(true);
    let mut conn = lite.connect().await.unwrap();
    let (old, _dir) = migrations_before_cursors("sqlite").await;
    old.run(&mut conn).await.unwrap();
    for (i, (shipped, published)) in FLAGGED_ROWS.iter().enumerate() {
        let q = sqlx::query(INSERT_FLAGGED).bind(format!("e{}", i + 1)).bind(shipped).bind(published);
        q.execute(&mut conn).await.unwrap();
    }
    drop(conn);
    assert_offered_what_waited(&SqliteTicketStore::open(data.path()).await.unwrap()).await;
}

/// The dependents lookup (every COMPLETED/FAILED status change makes one) stays an index probe: the GIN index
/// on `dependencies` has no pending list (fastupdate off), which every search would otherwise scan in full —
/// ~3 ms per lookup after 60 000 fresh tickets instead of ~0.03 ms, found by `ticket-bench crud` (P2). It holds
/// only tickets with dependencies (so the many without are no shared hot entry for every insert), and the
/// lookup's own predicate must let the planner use it.
#[tokio::test]
async fn the_dependents_lookup_uses_a_partial_index_without_pending_list() {
    use sqlx::{ConnectOptions as _, Executor as _};
    let db = common::fresh_database().await;
    PgTicketStore::connect(db.clone(), 2, Duration::from_secs(10)).await.unwrap(); // applies the migrations
    let mut conn = db.connect().await.unwrap();
    let (options, definition): (Option<Vec<String>>, String) = sqlx::query_as(
        "SELECT reloptions, pg_get_indexdef(oid) FROM pg_class WHERE relname = 'execution_tickets_dependencies_idx'",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert!(options.unwrap_or_default().contains(&"fastupdate=off".to_owned()), "GIN fastupdate must be off");
    assert!(definition.contains("WHERE"), "only tickets with dependencies are indexed: {definition}");
    // Many PENDING tickets without dependencies, one with: the lookup must not walk the PENDING ones, even
    // when the statistics are stale. They are analyzed while every ticket is RUNNING, so the planner believes
    // PENDING rare and the status index the cheapest way in (a burst of creates since the last ANALYZE).
    let store = PgTicketStore::connect(db.clone(), 2, Duration::from_secs(10)).await.unwrap();
    let units: Vec<WriteUnit> = (0..2_000)
        .map(|i| {
            let mut t = full_ticket(&format!("p-{i}"));
            t.status = TicketStatus::Running;
            match i {
                0 => {}                                              // dep-a, dep-b
                1 | 2 => t.spec.dependencies = vec!["dep-b".into()], // p-2 finishes below
                _ => t.spec.dependencies.clear(),
            }
            WriteUnit(vec![Write::Insert(t)])
        })
        .collect();
    assert!(store.commit(&units, None).await.iter().all(Result::is_ok));
    conn.execute("ANALYZE execution_tickets").await.unwrap();
    conn.execute("UPDATE execution_tickets SET status = CASE ticket_id WHEN 'p-2' THEN 'COMPLETED' ELSE 'PENDING' END")
        .await
        .unwrap();
    let explain = format!("EXPLAIN {}", PgTicketStore::DEPENDENTS.replace("$1", r#"'["x", "y"]'"#));
    let plan: Vec<String> = sqlx::query_scalar(&explain).fetch_all(&mut conn).await.unwrap();
    let plan = plan.join("\n");
    assert!(plan.contains("execution_tickets_dependencies_idx"), "lookup must use the index: {plan}");
    assert!(!plan.contains("status_priority"), "lookup must not walk the PENDING tickets: {plan}");
    // Many finished tickets in one call (a duplicate, one without dependents): each PENDING dependent once per
    // finished ticket it waits for, the finished p-2 not.
    let finished: Vec<String> = ["dep-a", "dep-b", "nothing", "dep-a"].map(String::from).to_vec();
    let expected = [("dep-a", "p-0"), ("dep-b", "p-0"), ("dep-b", "p-1")].map(|(f, d)| (f.to_owned(), d.to_owned()));
    let mut found = store.dependents(&finished).await.unwrap();
    found.sort();
    assert_eq!(found, expected);
    assert_eq!(store.dependents(&[]).await.unwrap(), []);
    // The embedded store answers the same.
    let data = tempfile::tempdir().unwrap();
    let embedded = SqliteTicketStore::open(data.path()).await.unwrap();
    let units: Vec<WriteUnit> = (0..4)
        .map(|i| {
            let mut t = full_ticket(&format!("p-{i}"));
            t.status = TicketStatus::Pending;
            match i {
                0 => {}
                1 => t.spec.dependencies = vec!["dep-b".into()],
                2 => (t.spec.dependencies, t.status) = (vec!["dep-b".into()], TicketStatus::Completed),
                _ => t.spec.dependencies.clear(),
            }
            WriteUnit(vec![Write::Insert(t)])
        })
        .collect();
    assert!(embedded.commit(&units, None).await.iter().all(Result::is_ok));
    let mut found = embedded.dependents(&finished).await.unwrap();
    found.sort();
    assert_eq!(found, expected);
}

/// Wait (bounded) until `counter` has counted at least `n`: a connection the kernel accepted reaches the
/// counting task a moment later.
async fn settled(counter: &std::sync::atomic::AtomicUsize, n: usize) -> usize {
    use std::sync::atomic::Ordering;
    for _ in 0..100 {
        if counter.load(Ordering::SeqCst) >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    counter.load(Ordering::SeqCst)
}

/// The count of `counter` once it has not moved for half a second: connection attempts a failed call made may
/// reach the counting task late on a loaded machine.
async fn quiet(counter: &std::sync::atomic::AtomicUsize) -> usize {
    use std::sync::atomic::Ordering;
    let mut seen = counter.load(Ordering::SeqCst);
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = counter.load(Ordering::SeqCst);
        if now == seen {
            break;
        }
        seen = now;
    }
    seen
}

fn inserts(prefix: &str, n: usize) -> Vec<WriteUnit> {
    (0..n).map(|i| WriteUnit(vec![Write::Insert(full_ticket(&format!("{prefix}-{i}")))])).collect()
}

fn unavailable<T: std::fmt::Debug>(r: &Result<T, UnitError>) -> bool {
    matches!(r, Err(UnitError::Store(StoreError::Unavailable(_))))
}

/// `POSTGRES_POOL_SIZE` bounds the connections a store opens, though group commits run on connections each
/// committing thread opens for itself, outside the pool (`store/commit_conn.rs`): commits from many threads at
/// once, beside reads, never hold more, and every one lands. (One broken while idle is replaced:
/// `a_kept_connection_broken_while_idle_is_replaced`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn group_commits_from_many_threads_stay_within_the_pool_size() {
    use sqlx::ConnectOptions;
    let options = common::fresh_database().await;
    let name = options.get_database().unwrap().to_owned();
    let store = Arc::new(PgTicketStore::connect(options.clone(), 4, Duration::from_secs(10)).await.unwrap());
    let mut admin = options.clone().database("postgres").connect().await.unwrap();
    let count = "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND backend_type = 'client backend'";
    let tasks: Vec<_> = (0..16)
        .map(|t| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                for i in 0..20 {
                    let prefix = format!("bound-{t}-{i}");
                    let outcomes = store.commit(&inserts(&prefix, 3), None).await;
                    assert!(outcomes.iter().all(Result::is_ok), "{outcomes:?}");
                    assert!(store.get(&format!("{prefix}-0")).await.unwrap().is_some());
                }
            })
        })
        .collect();
    let mut most = 0;
    while !tasks.iter().all(|t| t.is_finished()) {
        let (n,): (i64,) = sqlx::query_as(count).bind(&name).fetch_one(&mut admin).await.unwrap();
        most = most.max(n);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert!(most <= 4, "{most} connections open at once with a pool size of 4");
    let listed = store.list(&ListQuery { limit: 1, ..ListQuery::default() }).await.unwrap();
    assert_eq!(listed.total, Some(16 * 20 * 3), "every commit landed");
}

/// While the database cannot be reached, a group commit gives up after one connection attempt, not one per
/// unit (each would wait the acquire timeout again: a batch of 1 000 units would hold its callers for hours).
#[tokio::test]
async fn a_group_commit_without_a_connection_fails_every_unit_at_once() {
    let host = common::link::SilentServer::start().await;
    let store = PgTicketStore::lazy(host.options(), 4, Duration::from_millis(200));
    let outcomes = store.commit(&inserts("g", 8), None).await;
    assert_eq!(outcomes.len(), 8, "one outcome per unit");
    assert!(outcomes.iter().all(unavailable), "every unit is told the store is unavailable: {outcomes:?}");
    assert_eq!(settled(&host.accepted, 1).await, 1, "one connection attempt for the whole group");
}

/// Behind the circuit, once a call found the database unreachable, the next calls fail without trying to
/// connect (at once, instead of each waiting the acquire timeout), and nothing of them is written.
#[tokio::test]
async fn behind_the_circuit_calls_fail_without_connecting_while_the_database_is_down() {
    use ticket_supervisor::store::circuit::CircuitStore;
    let (options, link, pg) = store_behind_a_link(2, Duration::from_millis(300)).await;
    let store = CircuitStore::new(Arc::new(pg), Duration::from_secs(3600));
    assert!(store.commit(&inserts("before", 1), None).await[0].is_ok(), "the link carries traffic");

    link.down();
    // The proxy cuts its open connections within 20 ms: a call in that window may still get through.
    let mut seen = false;
    for _ in 0..100 {
        if matches!(store.get("before-0").await, Err(StoreError::Unavailable(_))) {
            seen = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(seen, "the outage is seen");
    let tried = quiet(&link.accepted).await;
    let outcomes = store.commit(&inserts("during", 5), None).await;
    assert!(outcomes.iter().all(unavailable), "{outcomes:?}");
    assert!(matches!(store.ping().await, Err(StoreError::Unavailable(_))));
    assert!(matches!(
        store.list(&ListQuery { limit: 10, ..ListQuery::default() }).await,
        Err(StoreError::Unavailable(_))
    ));
    assert_eq!(quiet(&link.accepted).await, tried, "no connection was attempted while the circuit is open");

    link.up();
    let direct = PgTicketStore::connect(options, 1, Duration::from_secs(10)).await.unwrap();
    assert_eq!(direct.get("during-0").await.unwrap(), None, "a refused unit left nothing behind");
    assert!(direct.get("before-0").await.unwrap().is_some());
}

/// The circuit lets one trial call through after its open window; once the database answers again the
/// circuit closes and calls go through, without restarting anything.
#[tokio::test]
async fn the_circuit_closes_by_itself_once_the_database_is_back() {
    use ticket_supervisor::store::circuit::CircuitStore;
    let (_, link, pg) = store_behind_a_link(2, Duration::from_millis(300)).await;
    let store = CircuitStore::new(Arc::new(pg), Duration::from_millis(50));

    link.down();
    assert!(matches!(store.ping().await, Err(StoreError::Unavailable(_))));
    link.up();
    let mut recovered = false;
    for _ in 0..200 {
        if store.ping().await.is_ok() {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(recovered, "a trial call closed the circuit once the database was back");
    let outcomes = store.commit(&inserts("after", 3), None).await;
    assert!(outcomes.iter().all(Result::is_ok), "{outcomes:?}");
    assert!(store.get("after-2").await.unwrap().is_some());
}

/// Data the database refuses (a NUL character, SQLSTATE 22021 / 22P05) is a refused write of that unit alone:
/// the store circuit stays closed, so no other client gets a 503 for it. (Validation refuses such data first;
/// this is the backstop behind it.)
#[tokio::test]
async fn data_the_database_refuses_is_a_refused_write_not_an_outage() {
    use ticket_supervisor::store::circuit::CircuitStore;
    let options = common::fresh_database().await;
    let pg = PgTicketStore::connect(options, 2, Duration::from_secs(10)).await.unwrap();
    let store = CircuitStore::new(Arc::new(pg), Duration::from_secs(3600));
    let mut text = full_ticket("nul-text");
    text.spec.description = "a\u{0}b".into();
    let mut json = full_ticket("nul-json");
    json.spec.parameters.insert("k".into(), json!("a\u{0}b"));
    let fine = full_ticket("fine");
    let units: Vec<WriteUnit> = [text, json, fine].into_iter().map(|t| WriteUnit(vec![Write::Insert(t)])).collect();
    let outcomes = store.commit(&units, None).await;
    for o in &outcomes[..2] {
        assert!(matches!(o, Err(UnitError::Store(StoreError::Rejected(_)))), "{outcomes:?}");
    }
    assert_eq!(outcomes[2], Ok(()), "the other unit of the batch is written");
    // Refused writes are not an outage: the circuit stays closed and the next call goes to the database.
    assert!(store.get("fine").await.unwrap().is_some());
    assert!(store.ping().await.is_ok());
}

/// A delivery row that does not decode (a payload nested deeper than serde_json's limit, written before
/// payloads were bounded) fails alone: it is marked failed with the reason, the rest of the claim goes on, and
/// the subscription's delivery list still answers.
#[tokio::test]
async fn an_undecodable_delivery_fails_alone() {
    use actors::webhooks::{ClaimBudget, DeliveryStatus};
    use sqlx::ConnectOptions as _;
    let deep = format!("{}1{}", "[".repeat(200), "]".repeat(200));
    // Written as such a row was: straight into the table (the store's own writes are bounded now).
    let set_bad = "UPDATE webhook_deliveries SET data = CAST($1 AS JSON_TYPE) WHERE id = 'bad'";
    let options = common::fresh_database().await;
    let pg = PgTicketStore::connect(options.clone(), 2, Duration::from_secs(10)).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let lite = SqliteTicketStore::open(dir.path()).await.unwrap();
    let stores: Vec<Arc<dyn TicketStore>> = vec![Arc::new(pg), Arc::new(lite)];
    for store in stores {
        let b = store.backend();
        let writes = ["good-1", "bad", "good-2"].iter().enumerate();
        let writes = writes.map(|(i, id)| Write::Delivery(delivery(id, Some("sub"), 100 + i as i64))).collect();
        assert_eq!(store.commit(&[WriteUnit(writes)], None).await, vec![Ok(())], "{b}");
        if b == "postgres" {
            let mut conn = options.connect().await.unwrap();
            sqlx::query(&set_bad.replace("JSON_TYPE", "jsonb")).bind(&deep).execute(&mut conn).await.unwrap();
        } else {
            let lite = sqlx::sqlite::SqliteConnectOptions::new().filename(dir.path().join("tickets.db"));
            let mut conn = lite.connect().await.unwrap();
            sqlx::query(&set_bad.replace("JSON_TYPE", "TEXT")).bind(&deep).execute(&mut conn).await.unwrap();
        }

        let budgets = [ClaimBudget { subscription_id: Some("sub".into()), limit: 10 }];
        let mut claimed: Vec<String> =
            store.webhook_claim(1_000, 61_000, &budgets).await.unwrap().into_iter().map(|d| d.id).collect();
        claimed.sort();
        assert_eq!(claimed, ["good-1", "good-2"], "{b}");
        let (listed, total) = store.webhook_deliveries("sub", 0, 10).await.unwrap();
        assert_eq!(total, 3, "{b}");
        let bad = listed.iter().find(|d| d.id == "bad").expect("still listed");
        assert_eq!(bad.status, DeliveryStatus::Failed, "{b}");
        assert!(bad.last_error.as_deref().unwrap_or_default().contains("recursion limit"), "{b}: {bad:?}");
        assert!(bad.data.get("undecodable").is_some(), "{b}: {:?}", bad.data);
        // Failed: not claimed again once the others' leases run out.
        let again = store.webhook_claim(61_000, 121_000, &budgets).await.unwrap();
        assert!(again.iter().all(|d| d.id != "bad") && again.len() == 2, "{b}: {again:?}");
    }
}

/// An admin connection to a database whose cluster has members "a" and "b", "a" holding every lease at epoch 1.
async fn every_lease_held_by_a(options: &sqlx::postgres::PgConnectOptions) -> sqlx::PgConnection {
    use sqlx::{Connection as _, Executor as _};
    let mut admin = sqlx::PgConnection::connect_with(options).await.unwrap();
    admin.execute("INSERT INTO cluster_members (member_id, address) VALUES ('a', 'x'), ('b', 'y')").await.unwrap();
    admin
        .execute("UPDATE shard_leases SET owner = 'a', epoch = 1, expires_at = now() + interval '1 hour'")
        .await
        .unwrap();
    admin
}

/// Cluster mode's fence: a group commit lands only for shards its writer still holds at the epoch it wrote
/// with. After a takeover (the epoch moved on) the old owner's unit is refused and nothing of it is written,
/// while a unit of a shard it still holds, in the same batch, commits; and a takeover waits for a commit that
/// holds the fence.
#[tokio::test]
async fn a_commit_under_a_lost_lease_is_refused() {
    use actors::ownership::vshard_of;
    use actors::store::Fence;
    use sqlx::{Connection as _, Executor as _};
    let options = common::fresh_database().await;
    let store = PgTicketStore::connect(options.clone(), 2, Duration::from_secs(10)).await.unwrap();
    let mut admin = every_lease_held_by_a(&options).await;
    // Two tickets of different shards.
    let (one, two) = (full_ticket("fence-1"), {
        let mut i = 2;
        loop {
            let t = full_ticket(&format!("fence-{i}"));
            if vshard_of(&t.ticket_id) != vshard_of("fence-1") {
                break t;
            }
            i += 1;
        }
    });
    let fence = |epochs: [i64; 2]| Fence {
        member: "a".into(),
        shards: vec![Some((vshard_of(&one.ticket_id), epochs[0])), Some((vshard_of(&two.ticket_id), epochs[1]))],
    };
    let insert =
        |t: &Ticket| WriteUnit(vec![Write::Insert(t.clone()), Write::Audit(audit_record(t, "ticket.created"))]);
    let outcomes = store.commit(&[insert(&one), insert(&two)], Some(&fence([1, 1]))).await;
    assert!(outcomes.iter().all(Result::is_ok), "{outcomes:?}");

    // "b" takes over the first ticket's shard: epoch 2.
    sqlx::query("UPDATE shard_leases SET owner = 'b', epoch = 2 WHERE shard = $1")
        .bind(i32::from(vshard_of(&one.ticket_id)))
        .execute(&mut admin)
        .await
        .unwrap();
    let mut moved = [one.clone(), two.clone()];
    for t in &mut moved {
        t.status = TicketStatus::Running;
        t.version = 2;
    }
    let update = |t: &Ticket| WriteUnit(vec![Write::Update { ticket: t.clone(), expected_version: 1 }]);
    let outcomes = store.commit(&[update(&moved[0]), update(&moved[1])], Some(&fence([1, 1]))).await;
    assert!(matches!(&outcomes[0], Err(UnitError::Store(StoreError::NotOwner(_)))), "{outcomes:?}");
    assert!(outcomes[1].is_ok(), "the shard still held commits: {outcomes:?}");
    assert_eq!(store.get("fence-1").await.unwrap().unwrap().version, 1, "nothing of the refused unit was written");
    assert_eq!(store.get(&two.ticket_id).await.unwrap().unwrap().version, 2);

    // The same answers for a batch of a few shards (looked up one by one) and of many (one pass over the
    // leases): a shard taken over, and one held but asked at a stale epoch, are lost; the rest are held.
    let taken = i32::from(vshard_of(&one.ticket_id));
    for n in [3, 40] {
        let shards: Vec<i32> = (0..256).filter(|s| *s != taken).take(n - 1).chain([taken]).collect();
        let mut epochs = vec![1i64; n];
        epochs[0] = 0;
        let mut lost: Vec<i32> = sqlx::query_scalar("SELECT ticket_fence('a', $1, $2)")
            .bind(&shards)
            .bind(&epochs)
            .fetch_one(&mut admin)
            .await
            .unwrap();
        lost.sort_unstable();
        let mut expected = vec![shards[0], taken];
        expected.sort_unstable();
        assert_eq!(lost, expected, "{n} shards");
    }

    // A commit in flight holds the writer's member row: a takeover of its shards waits for it.
    let mut writer = sqlx::PgConnection::connect_with(&options).await.unwrap();
    writer.execute("BEGIN").await.unwrap();
    let lost: Vec<i32> = sqlx::query_scalar("SELECT ticket_fence('a', ARRAY[$1]::int[], ARRAY[1]::bigint[])")
        .bind(i32::from(vshard_of(&two.ticket_id)))
        .fetch_one(&mut writer)
        .await
        .unwrap();
    assert!(lost.is_empty());
    admin.execute("SET lock_timeout = '300ms'").await.unwrap();
    let takeover = admin.execute("SELECT 1 FROM cluster_members WHERE member_id = 'a' FOR UPDATE").await;
    assert!(takeover.is_err(), "the takeover waits for the commit that holds the fence");
    writer.execute("COMMIT").await.unwrap();
    admin.execute("SELECT 1 FROM cluster_members WHERE member_id = 'a' FOR UPDATE").await.unwrap();
}

/// PostgreSQL writes a group commit of plain units (one insert or one update each, with its audit records, or
/// audit records alone) as one statement: the statement itself answers for every unit as a transaction would.
/// A conflicting unit's rows and audit records are left out, a fenced-out unit's too, and the rest land.
#[tokio::test]
async fn a_group_commit_of_plain_units_is_one_statement() {
    use actors::ownership::vshard_of;
    use actors::store::Fence;
    use sqlx::Connection as _;
    use ticket_supervisor::store::{Dialect as _, Plain};
    let options = common::fresh_database().await;
    let store = PgTicketStore::connect(options.clone(), 2, Duration::from_secs(10)).await.unwrap();
    let mut conn = sqlx::PgConnection::connect_with(&options).await.unwrap();
    let mut admin = every_lease_held_by_a(&options).await;
    // Six tickets of different shards; the last one's shard is taken over by "b".
    let mut tickets: Vec<Ticket> = Vec::new();
    for i in 0.. {
        let t = full_ticket(&format!("one-{i}"));
        if tickets.iter().all(|o| vshard_of(&o.ticket_id) != vshard_of(&t.ticket_id)) {
            tickets.push(t);
        }
        if tickets.len() == 6 {
            break;
        }
    }
    let [fresh, taken, updated, stale, lost_update, lost_insert] = <[Ticket; 6]>::try_from(tickets).unwrap();
    for t in [&taken, &updated, &stale, &lost_update] {
        assert!(store.commit(&[WriteUnit(vec![Write::Insert(t.clone())])], None).await[0].is_ok());
    }
    for t in [&lost_update, &lost_insert] {
        sqlx::query("UPDATE shard_leases SET owner = 'b', epoch = 2 WHERE shard = $1")
            .bind(i32::from(vshard_of(&t.ticket_id)))
            .execute(&mut admin)
            .await
            .unwrap();
    }
    let next = |t: &Ticket| {
        let mut t = t.clone();
        t.status = TicketStatus::Running;
        t.version = 2;
        t
    };
    let audit = |t: &Ticket| Write::Audit(audit_record(t, "test.one_statement"));
    let token = full_ticket("one-token");
    let units = vec![
        WriteUnit(vec![Write::Insert(fresh.clone()), audit(&fresh)]),
        WriteUnit(vec![Write::Insert(taken.clone()), audit(&taken)]),
        WriteUnit(vec![Write::Update { ticket: next(&updated), expected_version: 1 }, audit(&updated)]),
        WriteUnit(vec![Write::Update { ticket: next(&stale), expected_version: 7 }, audit(&stale)]),
        WriteUnit(vec![Write::Update { ticket: next(&lost_update), expected_version: 1 }, audit(&lost_update)]),
        WriteUnit(vec![Write::Insert(lost_insert.clone()), audit(&lost_insert)]),
        WriteUnit(vec![audit(&token)]),
    ];
    let homes = units.iter().map(|u| u.home().map(|id| (vshard_of(id), 1))).collect();
    let fence = Fence { member: "a".into(), shards: homes };
    let batch = Plain::of(&units, Some(&fence)).expect("plain units");
    assert!(sqlx::Postgres::fits_one_statement(&batch));
    let (lost, inserted, updated_ids) = sqlx::Postgres::commit_statement(&mut conn, &batch).await.unwrap();
    let lost_shards: std::collections::HashSet<u16> =
        [&lost_update, &lost_insert].iter().map(|t| vshard_of(&t.ticket_id)).collect();
    assert_eq!(lost, lost_shards);
    assert_eq!(inserted, [fresh.ticket_id.clone()].into(), "the taken id and the fenced-out insert are not");
    assert_eq!(updated_ids, [updated.ticket_id.clone()].into(), "the stale and the fenced-out update are not");

    let version = |id: String| {
        let store = &store;
        async move { store.get(&id).await.unwrap().map(|t| t.version) }
    };
    assert_eq!(version(fresh.ticket_id.clone()).await, Some(1));
    assert_eq!(version(updated.ticket_id.clone()).await, Some(2));
    assert_eq!(version(stale.ticket_id.clone()).await, Some(1));
    assert_eq!(version(lost_update.ticket_id.clone()).await, Some(1));
    assert_eq!(version(lost_insert.ticket_id.clone()).await, None);
    for (t, written) in
        [(&fresh, 1), (&taken, 0), (&updated, 1), (&stale, 0), (&lost_update, 0), (&lost_insert, 0), (&token, 1)]
    {
        let history = store.history(&t.ticket_id, 0, 10).await.unwrap();
        let ours = history.events.iter().filter(|e| e.kind == "test.one_statement").count();
        assert_eq!(ours, written, "audit records of {}", t.ticket_id);
    }

    // The other shapes, each a statement of its own: updates alone, new tickets alone, audit records alone.
    let later = full_ticket("one-later");
    for (units, inserted, updated) in [
        (vec![WriteUnit(vec![Write::Update { ticket: next(&fresh), expected_version: 1 }, audit(&fresh)])], 0, 1),
        (vec![WriteUnit(vec![Write::Insert(later.clone()), audit(&later)])], 1, 0),
        (vec![WriteUnit(vec![audit(&token)])], 0, 0),
    ] {
        let batch = Plain::of(&units, None).expect("plain units");
        assert!(sqlx::Postgres::fits_one_statement(&batch));
        let written = sqlx::Postgres::commit_statement(&mut conn, &batch).await.unwrap();
        assert_eq!((written.0.len(), written.1.len(), written.2.len()), (0, inserted, updated), "{units:?}");
    }
    for (t, written) in [(&fresh, 2), (&later, 1), (&token, 2)] {
        let history = store.history(&t.ticket_id, 0, 10).await.unwrap();
        let ours = history.events.iter().filter(|e| e.kind == "test.one_statement").count();
        assert_eq!(ours, written, "audit records of {}", t.ticket_id);
    }

    // Through the store, the same shapes get the same answers, unit by unit.
    let again = vec![
        WriteUnit(vec![Write::Insert(fresh.clone()), audit(&fresh)]),
        WriteUnit(vec![Write::Update { ticket: next(&stale), expected_version: 1 }, audit(&stale)]),
        WriteUnit(vec![Write::Update { ticket: next(&lost_update), expected_version: 1 }, audit(&lost_update)]),
    ];
    let homes = again.iter().map(|u| u.home().map(|id| (vshard_of(id), 1))).collect();
    let outcomes = store.commit(&again, Some(&Fence { member: "a".into(), shards: homes })).await;
    assert_eq!(outcomes[0], Err(UnitConflict::AlreadyExists(fresh.ticket_id.clone()).into()));
    assert_eq!(outcomes[1], Ok(()));
    assert!(matches!(&outcomes[2], Err(UnitError::Store(StoreError::NotOwner(_)))), "{outcomes:?}");
}

/// The connections a store keeps between group commits (so that sqlx does not ping each on its return to the
/// pool) do not turn a database restart into failed writes: after every connection was cut while idle, the next
/// write lands (the kept connection is found broken by its idle ping, or failing that by the statement, whose
/// batch then goes through a transaction on a fresh connection).
#[tokio::test]
async fn a_kept_connection_broken_while_idle_is_replaced() {
    let (options, link, store) = store_behind_a_link(4, Duration::from_secs(2)).await;
    for round in 0..3 {
        let outcomes = store.commit(&inserts(&format!("kept-{round}"), 3), None).await;
        assert!(outcomes.iter().all(Result::is_ok), "round {round}: {outcomes:?}");
        // Every connection of the last round is cut, as by a database restart, while idle.
        link.down();
        tokio::time::sleep(Duration::from_millis(100)).await;
        link.up();
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    let direct = PgTicketStore::connect(options, 1, Duration::from_secs(10)).await.unwrap();
    assert!(direct.get("kept-2-2").await.unwrap().is_some());
}

/// A migrated fresh database, and a store (`pool` connections, `acquire` timeout) that reaches it only through a
/// link the test can cut. The database's own options come back too, for a look past the link.
async fn store_behind_a_link(
    pool: u32,
    acquire: Duration,
) -> (sqlx::postgres::PgConnectOptions, common::link::Switch, PgTicketStore) {
    let options = common::fresh_database().await;
    PgTicketStore::connect(options.clone(), 1, Duration::from_secs(10)).await.unwrap(); // migrate
    let link = common::link::Switch::start((options.get_host().to_owned(), options.get_port())).await;
    let store = PgTicketStore::lazy(common::link::via(&options, link.port), pool, acquire);
    (options, link, store)
}
