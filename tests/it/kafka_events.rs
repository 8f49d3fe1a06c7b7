//! Ticket events published to a real broker (tansu) from the outbox, read back with a plain consumer: every
//! ticket event once, in order per ticket, keyed by ticket id, with W3C trace headers; SLA violations (a
//! deadline breached at creation, a start overdue, a final timeout) also on `sla.violations`, nothing else
//! there; nothing on the consumed tickets topic; and a broker outage loses nothing.

use crate::common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use common::servers::{header, Kafka};
use common::{eventually, fresh_database, spawn_app_with, ticket, Store, TestApp};
use rdkafka::message::OwnedMessage;
use rdkafka::Message as _;
use serde_json::{json, Value};
use ticket_supervisor::config::{KafkaEventsSettings, KafkaSettings};

const EVENTS: &str = "execution.ticket.events";
const VIOLATIONS: &str = "sla.violations";
/// The trace id the orchestrator gave one of the tickets.
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

fn kafka_settings(kafka: &Kafka, consumed: &str) -> KafkaSettings {
    KafkaSettings {
        events: Some(KafkaEventsSettings {
            topic: EVENTS.into(),
            sla_violations_topic: VIOLATIONS.into(),
            delivery_timeout: Duration::from_secs(3),
        }),
        ..kafka.consumer_settings(consumed, &format!("svc-{consumed}"))
    }
}

async fn metric(app: &TestApp, name: &str) -> f64 {
    let text = app.client.get(format!("{}/metrics", app.metrics_base)).send().await.unwrap().text().await.unwrap();
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A ticket's audit records, oldest first.
async fn history(app: &TestApp, id: &str) -> Vec<Value> {
    let (code, body) = app.get(&format!("/api/v1/tickets/{id}/history?limit=1000")).await;
    assert_eq!(code, 200, "{body}");
    body["events"].as_array().unwrap().clone()
}

/// The records of a ticket that are ticket events (the ones published).
async fn ticket_events(app: &TestApp, id: &str) -> Vec<Value> {
    history(app, id).await.into_iter().filter(|e| e["kind"].as_str().unwrap().starts_with("ticket.")).collect()
}

async fn has_kind(app: &TestApp, id: &str, kind: &str) -> bool {
    history(app, id).await.iter().any(|e| e["kind"] == kind)
}

async fn kafka_events_check(app: &TestApp) -> Value {
    app.get("/ready").await.1["checks"]["kafka_events"].clone()
}

/// Every message of `topic` until `n` arrived or `timeout` (see `Kafka::read_all`), off the async threads.
fn read_topic(kafka: &Kafka, topic: &str, n: usize, timeout: Duration) -> Vec<OwnedMessage> {
    tokio::task::block_in_place(|| kafka.read_all(topic, n, timeout))
}

/// Every message of `topic` until the `n` expected arrived (30 s at most), then 2 s more so that a duplicate or
/// an extra message would show (see `Kafka::read_expecting`).
fn read_expecting(kafka: &Kafka, topic: &str, n: usize) -> Vec<OwnedMessage> {
    let (timeout, linger) = (Duration::from_secs(30), Duration::from_secs(2));
    tokio::task::block_in_place(|| kafka.read_expecting(topic, n, timeout, linger))
}

fn body(m: &OwnedMessage) -> Value {
    serde_json::from_slice(m.payload().expect("a payload")).expect("a JSON payload")
}

fn key(m: &OwnedMessage) -> String {
    String::from_utf8(m.key().expect("a key").to_vec()).unwrap()
}

/// `00-<32 hex>-<16 hex>-<2 hex>`, lower case, ids not all zero: the trace id.
fn trace_of(traceparent: &str) -> String {
    let parts: Vec<&str> = traceparent.split('-').collect();
    let hex = |p: &str, n: usize| p.len() == n && p.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    assert!(
        parts.len() == 4
            && parts[0] == "00"
            && hex(parts[1], 32)
            && hex(parts[2], 16)
            && hex(parts[3], 2)
            && parts[1] != "0".repeat(32)
            && parts[2] != "0".repeat(16),
        "malformed traceparent {traceparent:?}"
    );
    parts[1].to_owned()
}

/// Messages by key (ticket id), each ticket's in the order read (its partition's order).
fn by_ticket(messages: &[OwnedMessage]) -> HashMap<String, Vec<&OwnedMessage>> {
    let mut out: HashMap<String, Vec<&OwnedMessage>> = HashMap::new();
    for m in messages {
        out.entry(key(m)).or_default().push(m);
    }
    out
}

fn event_ids(records: &[Value]) -> Vec<String> {
    records.iter().map(|e| e["event_id"].as_str().unwrap().to_owned()).collect()
}

// Multi-threaded: reading a topic blocks a thread for seconds, and the HTTP client's pooled connections must
// meanwhile notice the server closing them (or the next request fails on a dead keep-alive connection).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_ticket_event_is_published_once_in_order_and_violations_also_on_their_topic() {
    let kafka = Kafka::start();
    for topic in ["tickets-ev", "tickets-ev.dlq", VIOLATIONS] {
        kafka.create_topic(topic, 1).await;
    }
    kafka.create_topic(EVENTS, 3).await;
    let store = Store::Postgres(Box::new(fresh_database().await));
    let app = spawn_app_with(&store, |s| {
        s.kafka = Some(kafka_settings(&kafka, "tickets-ev"));
        s.actors.sla.start_limits_ms[3] = 300; // a CRITICAL ticket is overdue after 0.3 s PENDING
    })
    .await;

    // ev-late: its deadline passed before it was created (breached at once), then it runs and completes.
    let mut late = ticket("ev-late");
    late["sla"]["deadline"] = json!(chrono::Utc::now().timestamp_millis() - 60_000);
    late["trace_id"] = json!(TRACE_ID);
    assert_eq!(app.post("/api/v1/tickets", &late).await.0, 201);
    eventually("ev-late breached", 20, || has_kind(&app, "ev-late", "ticket.sla_breached")).await;
    assert_eq!(app.set_status("ev-late", "RUNNING").await.0, 200);
    assert_eq!(app.set_status("ev-late", "COMPLETED").await.0, 200);
    // ev-plain: no SLA trouble, and a minted token (an audit record, not a ticket event).
    assert_eq!(app.post("/api/v1/tickets", &ticket("ev-plain")).await.0, 201);
    assert_eq!(app.set_status("ev-plain", "RUNNING").await.0, 200);
    app.ticket_token("ev-plain").await;
    assert_eq!(app.set_status("ev-plain", "COMPLETED").await.0, 200);
    // ev-timeout: its only attempt times out, so the SLA engine fails it (a final timeout).
    let mut short = ticket("ev-timeout");
    short["sla"]["timeout_ms"] = json!(300);
    short["sla"]["max_retries"] = json!(0);
    assert_eq!(app.post("/api/v1/tickets", &short).await.0, 201);
    assert_eq!(app.set_status("ev-timeout", "RUNNING").await.0, 200);
    // ev-overdue: CRITICAL and left PENDING past its start limit.
    let mut overdue = ticket("ev-overdue");
    overdue["priority"] = json!("critical");
    assert_eq!(app.post("/api/v1/tickets", &overdue).await.0, 201);
    eventually("ev-timeout failed by the SLA engine", 20, || has_kind(&app, "ev-timeout", "ticket.failed")).await;
    eventually("ev-overdue overdue", 20, || has_kind(&app, "ev-overdue", "ticket.start_overdue")).await;

    let ids = ["ev-late", "ev-plain", "ev-timeout", "ev-overdue"];
    let mut expected = HashMap::new();
    for id in ids {
        expected.insert(id, ticket_events(&app, id).await);
    }
    assert!(has_kind(&app, "ev-plain", "token.minted").await);
    let total: usize = expected.values().map(Vec::len).sum();
    eventually("every ticket event published", 30, || async {
        metric(&app, "kafka_events_published_total").await == total as f64
    })
    .await;

    let messages = read_expecting(&kafka, EVENTS, total);
    assert_eq!(messages.len(), total, "each ticket event exactly once");
    let read = by_ticket(&messages);
    let mut bodies: HashMap<String, Value> = HashMap::new();
    for id in ids {
        let got = &read[id];
        assert_eq!(
            got.iter().map(|m| body(m)["event_id"].as_str().unwrap().to_owned()).collect::<Vec<_>>(),
            event_ids(&expected[id]),
            "{id}: every event once, in commit order"
        );
        for (m, record) in got.iter().zip(&expected[id]) {
            let b = body(m);
            for field in
                ["event_id", "ticket_id", "kind", "from_status", "to_status", "version", "actor", "at", "details"]
            {
                assert_eq!(b[field], record[field], "{id}: {field} of {b}");
            }
            assert_eq!(b["ticket_id"], id, "keyed by ticket id");
            assert!(b["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')), "{b}");
            assert_eq!(header(m, "event-id").as_deref(), b["event_id"].as_str());
            assert_eq!(header(m, "event-type").as_deref(), b["kind"].as_str());
            assert_eq!(header(m, "content-type").as_deref(), Some("application/json"));
            assert_eq!(m.timestamp().to_millis(), b["at"].as_i64(), "the message time is the commit time");
            let trace = trace_of(&header(m, "traceparent").expect("a traceparent header"));
            if id == "ev-late" {
                assert_eq!(trace, TRACE_ID, "the ticket's own trace");
                assert_eq!(b["traceparent"], header(m, "traceparent").unwrap(), "the stored traceparent is sent");
            }
            bodies.insert(b["event_id"].as_str().unwrap().to_owned(), b);
        }
    }
    let kinds =
        |id: &str| -> Vec<String> { read[id].iter().map(|m| body(m)["kind"].as_str().unwrap().to_owned()).collect() };
    assert_eq!(kinds("ev-plain"), ["ticket.created", "ticket.ready", "ticket.started", "ticket.completed"]);
    assert_eq!(kinds("ev-timeout"), ["ticket.created", "ticket.ready", "ticket.started", "ticket.failed"]);
    assert!(kinds("ev-late").contains(&"ticket.sla_breached".to_owned()), "{:?}", kinds("ev-late"));
    let done = body(read["ev-late"].last().unwrap());
    assert_eq!(
        (done["kind"].as_str(), done["from_status"].as_str(), done["to_status"].as_str(), done["actor"].as_str()),
        (Some("ticket.completed"), Some("RUNNING"), Some("COMPLETED"), Some("orchestrator"))
    );
    let (_, stored) = app.get("/api/v1/tickets/ev-late").await;
    assert_eq!(done["version"], stored["version"], "the completed event carries the ticket's final version");
    let traces: HashSet<String> =
        ["ev-plain", "ev-timeout"].iter().map(|id| trace_of(&header(read[*id][0], "traceparent").unwrap())).collect();
    assert_eq!(traces.len(), 2, "tickets without a trace id each get a new trace");

    // The violations, and only they, also on sla.violations: same event, same headers.
    let violations = read_expecting(&kafka, VIOLATIONS, 3);
    let mut seen: Vec<(String, String, String)> = violations
        .iter()
        .map(|m| {
            let b = body(m);
            assert_eq!(key(m), b["ticket_id"].as_str().unwrap());
            assert_eq!(Some(&b), bodies.get(b["event_id"].as_str().unwrap()), "the same message as on {EVENTS}");
            assert_eq!(header(m, "event-id").as_deref(), b["event_id"].as_str());
            trace_of(&header(m, "traceparent").unwrap());
            (key(m), b["kind"].as_str().unwrap().to_owned(), b["sla_violation"].as_str().unwrap().to_owned())
        })
        .collect();
    seen.sort();
    let strings = |v: [&str; 3]| (v[0].to_owned(), v[1].to_owned(), v[2].to_owned());
    assert_eq!(
        seen,
        vec![
            strings(["ev-late", "ticket.sla_breached", "deadline_breached"]),
            strings(["ev-overdue", "ticket.start_overdue", "start_overdue"]),
            strings(["ev-timeout", "ticket.failed", "final_timeout"]),
        ]
    );
    let timeout = bodies.values().find(|b| b["ticket_id"] == "ev-timeout" && b["kind"] == "ticket.failed").unwrap();
    assert_eq!(
        (timeout["actor"].as_str(), timeout["details"]["reason"].as_str()),
        (Some("sla"), Some("attempt_timeout"))
    );
    assert!(bodies.values().filter(|b| b.get("sla_violation").is_some()).count() == 3, "only violations are marked");

    // Longer than a group join (about 3 s), or the read could not see a message if there were one.
    assert!(read_topic(&kafka, "tickets-ev", 1, Duration::from_secs(6)).is_empty(), "never on the consumed topic");
    eventually("readiness shows the publisher caught up", 20, || async {
        let check = kafka_events_check(&app).await;
        check["status"] == "ok" && check["backlog"] == 0
    })
    .await;
}

// Multi-threaded: reading a topic blocks a thread for seconds, and the HTTP client's pooled connections must
// meanwhile notice the server closing them (or the next request fails on a dead keep-alive connection).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_outage_loses_no_event() {
    let mut kafka = Kafka::start();
    for topic in ["tickets-eo", "tickets-eo.dlq", EVENTS, VIOLATIONS] {
        kafka.create_topic(topic, 1).await;
    }
    let store = Store::Postgres(Box::new(fresh_database().await));
    let app = spawn_app_with(&store, |s| s.kafka = Some(kafka_settings(&kafka, "tickets-eo"))).await;
    assert_eq!(app.post("/api/v1/tickets", &ticket("eo-0")).await.0, 201);
    assert_eq!(read_topic(&kafka, EVENTS, 2, Duration::from_secs(30)).len(), 2, "created and ready, published");
    let before: HashSet<String> = event_ids(&ticket_events(&app, "eo-0").await).into_iter().collect();

    kafka.stop();
    assert_eq!(app.set_status("eo-0", "RUNNING").await.0, 200, "changes go on while Kafka is down");
    assert_eq!(app.set_status("eo-0", "COMPLETED").await.0, 200);
    for i in 1..4 {
        assert_eq!(app.post("/api/v1/tickets", &ticket(&format!("eo-{i}"))).await.0, 201);
    }
    let mut late = ticket("eo-late");
    late["sla"]["deadline"] = json!(chrono::Utc::now().timestamp_millis() - 1_000);
    assert_eq!(app.post("/api/v1/tickets", &late).await.0, 201);
    eventually("eo-late breached", 20, || has_kind(&app, "eo-late", "ticket.sla_breached")).await;
    eventually("readiness shows the publisher degraded, with a backlog", 40, || async {
        let check = kafka_events_check(&app).await;
        check["status"] == "degraded" && check["backlog"].as_i64().unwrap_or(0) >= 11
    })
    .await;
    let (code, ready) = app.get("/ready").await;
    assert_eq!(code, 200, "Kafka down loses nothing and keeps the service in rotation: {ready}");
    // `/ready` needs no token: it says what fails, the client's text (the brokers' addresses) stays in the log.
    eventually("readiness shows the consumer degraded too", 40, || async {
        app.get("/ready").await.1["checks"]["kafka"]["status"] == "degraded"
    })
    .await;
    let (_, ready) = app.get("/ready").await;
    for text in [&ready["checks"]["kafka_events"]["error"], &ready["checks"]["kafka"]["detail"]] {
        let text = text.as_str().unwrap_or_default();
        assert!(text.contains("details in the service log") && !text.contains("127.0.0.1"), "{ready}");
    }

    // A new, empty broker on the same port (tansu keeps its topics in memory): the publisher's messages
    // create the topics again, and everything recorded during the outage arrives.
    kafka.resume();
    eventually("the backlog drained", 90, || async {
        let check = kafka_events_check(&app).await;
        check["status"] == "ok" && check["backlog"] == 0
    })
    .await;
    let ids = ["eo-0", "eo-1", "eo-2", "eo-3", "eo-late"];
    let mut expected = HashMap::new();
    for id in ids {
        let records = ticket_events(&app, id).await;
        expected.insert(id, event_ids(&records).into_iter().filter(|e| !before.contains(e)).collect::<Vec<_>>());
    }
    let total: usize = expected.values().map(Vec::len).sum();
    assert_eq!(total, 11, "started and completed; created and ready of three; created, ready, breached");
    let messages = read_expecting(&kafka, EVENTS, total);
    let read = by_ticket(&messages);
    for id in ids {
        let mut first_seen = Vec::new();
        for m in read.get(id).map(Vec::as_slice).unwrap_or_default() {
            let event_id = body(m)["event_id"].as_str().unwrap().to_owned();
            trace_of(&header(m, "traceparent").unwrap());
            if !first_seen.contains(&event_id) {
                first_seen.push(event_id);
            }
        }
        assert_eq!(first_seen, expected[id], "{id}: every event of the outage, in order (de-duplicated by event id)");
    }
    eprintln!("{} messages for {total} events after the outage", messages.len());
    let violations = read_topic(&kafka, VIOLATIONS, 1, Duration::from_secs(10));
    assert_eq!(violations.len(), 1);
    assert_eq!(
        (key(&violations[0]), body(&violations[0])["kind"].clone()),
        ("eo-late".into(), json!("ticket.sla_breached"))
    );
}
