//! Kafka ingestion against a real broker (tansu) and PostgreSQL: JSON and Confluent-Avro tickets produced by a
//! real producer end up stored; redelivery creates nothing twice; poison goes to the DLQ with its headers and
//! the consumer keeps going; a store outage holds the committed offset back and loses nothing.

use crate::common;

use std::time::Duration;

use common::servers::{header, Kafka};
use common::{eventually, fresh_database, spawn_app_with, ticket, Store, TestApp};
use serde_json::Value;
use sqlx::{ConnectOptions, Executor};
use ticket_supervisor::kafka::decode::encode_confluent;

async fn stored(app: &TestApp, id: &str) -> bool {
    app.get(&format!("/api/v1/tickets/{id}")).await.0 == 200
}

async fn metric(app: &TestApp, name: &str) -> f64 {
    let text = app.client.get(format!("{}/metrics", app.metrics_base)).send().await.unwrap().text().await.unwrap();
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A full Avro-schema ticket (every field, as the orchestrator's producer writes it).
fn avro_ticket(id: &str) -> Value {
    let mut t = ticket(id);
    let o = t.as_object_mut().unwrap();
    for (k, v) in [("task_type", "DEPLOY"), ("priority", "HIGH"), ("status", "PENDING")] {
        o.insert(k.into(), Value::String(v.into()));
    }
    o.insert("created_at".into(), Value::from(1_800_000_000_000_i64));
    o.insert("retry_count".into(), Value::from(0));
    o.insert("schema_version".into(), Value::from(1));
    for k in [
        "correlation_id",
        "trace_id",
        "span_id",
        "started_at",
        "completed_at",
        "estimated_duration_ms",
        "actual_duration_ms",
        "error_message",
        "compensation_ticket_id",
    ] {
        o.insert(k.into(), Value::Null);
    }
    t
}

#[tokio::test]
async fn json_and_avro_tickets_are_stored_once_even_when_delivered_twice() {
    let kafka = Kafka::start();
    kafka.create_topic("tickets-a", 1).await;
    kafka.create_topic("tickets-a.dlq", 1).await;
    let store = Store::Postgres(Box::new(fresh_database().await));
    let app = spawn_app_with(&store, |s| s.kafka = Some(kafka.consumer_settings("tickets-a", "svc-a"))).await;
    let producer = kafka.producer();

    let json = serde_json::to_vec(&ticket("kj-1")).unwrap();
    kafka.produce(&producer, "tickets-a", "kj-1", &json).await;
    let avro = encode_confluent(1, &avro_ticket("ka-1")).unwrap();
    kafka.produce(&producer, "tickets-a", "ka-1", &avro).await;
    // The same messages again (a producer retry, a replay): success, nothing new.
    kafka.produce(&producer, "tickets-a", "kj-1", &json).await;
    kafka.produce(&producer, "tickets-a", "ka-1", &avro).await;

    eventually("both tickets stored", 30, || async { stored(&app, "kj-1").await && stored(&app, "ka-1").await }).await;
    eventually("all four messages handled and committed", 30, || async {
        kafka.committed("svc-a", "tickets-a") == Some(4)
    })
    .await;
    let (_, page) = app.get("/api/v1/tickets?plan_id=plan-1").await;
    assert_eq!(page["total"], 2, "redelivery created nothing: {page}");
    let (_, t) = app.get("/api/v1/tickets/ka-1").await;
    assert_eq!((t["task_type"].as_str(), t["status"].as_str()), (Some("DEPLOY"), Some("PENDING")));
    assert_eq!(t["created_at"], 1_800_000_000_000_i64, "the Avro record's own created_at");
    let (_, history) = app.get("/api/v1/tickets/kj-1/history").await;
    assert_eq!(history["total"], 2, "one ticket.created (and its ticket.ready): {history}");
    assert_eq!(
        (history["events"][0]["kind"].as_str(), history["events"][0]["actor"].as_str()),
        (Some("ticket.created"), Some("kafka"))
    );
    assert_eq!(metric(&app, "tickets_consumed_total").await, 4.0);
    assert_eq!(metric(&app, "kafka_messages_dlq_total").await, 0.0);
    assert!(kafka.read_all("tickets-a.dlq", 1, Duration::from_secs(6)).is_empty(), "nothing dead-lettered");
    let (code, ready) = app.get("/ready").await;
    assert_eq!((code, ready["checks"]["kafka"]["status"].as_str()), (200, Some("ok")), "{ready}");
}

#[tokio::test]
async fn poison_goes_to_the_dlq_with_its_headers_and_the_consumer_keeps_going() {
    let kafka = Kafka::start();
    kafka.create_topic("tickets-p", 1).await;
    kafka.create_topic("tickets-p.dlq", 1).await;
    let store = Store::Postgres(Box::new(fresh_database().await));
    let app = spawn_app_with(&store, |s| s.kafka = Some(kafka.consumer_settings("tickets-p", "svc-p"))).await;
    let producer = kafka.producer();

    kafka.produce(&producer, "tickets-p", "g", b"\x00\x00\x00\x00\x01garbage").await;
    let mut invalid = ticket("kp-bad");
    invalid["sla"]["timeout_ms"] = Value::from(0);
    kafka.produce(&producer, "tickets-p", "kp-bad", &serde_json::to_vec(&invalid).unwrap()).await;
    // Same id as a stored ticket, different content: a conflict, not a duplicate.
    kafka.produce(&producer, "tickets-p", "kp-1", &serde_json::to_vec(&ticket("kp-1")).unwrap()).await;
    let mut other = ticket("kp-1");
    other["description"] = Value::from("something else");
    kafka.produce(&producer, "tickets-p", "kp-1", &serde_json::to_vec(&other).unwrap()).await;
    kafka.produce(&producer, "tickets-p", "kp-2", &serde_json::to_vec(&ticket("kp-2")).unwrap()).await;
    // What PostgreSQL cannot store (U+0000), and parameters nested past the limit: refused once, not retried
    // for ever as a store failure.
    let mut nul = ticket("kp-nul");
    nul["description"] = Value::from("a\u{0}b");
    kafka.produce(&producer, "tickets-p", "kp-nul", &serde_json::to_vec(&nul).unwrap()).await;
    let mut deep = ticket("kp-deep");
    let mut nested = Value::from(1);
    for _ in 0..100 {
        nested = Value::Array(vec![nested]);
    }
    deep["parameters"] = serde_json::json!({ "a": nested });
    kafka.produce(&producer, "tickets-p", "kp-deep", &serde_json::to_vec(&deep).unwrap()).await;
    kafka.produce(&producer, "tickets-p", "kp-3", &serde_json::to_vec(&ticket("kp-3")).unwrap()).await;

    eventually("the good tickets are stored", 30, || async {
        stored(&app, "kp-1").await && stored(&app, "kp-2").await && stored(&app, "kp-3").await
    })
    .await;
    let dlq = kafka.read_all("tickets-p.dlq", 5, Duration::from_secs(30));
    assert_eq!(dlq.len(), 5, "garbage, invalid, conflicting, NUL and too deep messages are dead-lettered");
    // Messages that need no store round trip are dead-lettered first: compare by key, not by position.
    let by_key = |key: &str| {
        let m = dlq.iter().find(|m| rdkafka::Message::key(*m) == Some(key.as_bytes())).expect(key);
        (header(m, "error_reason").unwrap(), header(m, "error").unwrap())
    };
    let reasons: Vec<String> = ["g", "kp-bad", "kp-1", "kp-nul", "kp-deep"].iter().map(|k| by_key(k).0).collect();
    assert_eq!(reasons, ["decode", "validation", "conflict", "validation", "validation"]);
    assert!(by_key("kp-nul").1.contains("NUL"), "{:?}", by_key("kp-nul"));
    assert!(by_key("kp-deep").1.contains("parameters"), "{:?}", by_key("kp-deep"));
    let first = dlq.iter().find(|m| rdkafka::Message::key(*m) == Some(&b"g"[..])).unwrap();
    assert_eq!(header(first, "original_topic").as_deref(), Some("tickets-p"));
    assert_eq!(header(first, "original_partition").as_deref(), Some("0"));
    assert_eq!(header(first, "original_offset").as_deref(), Some("0"));
    assert!(header(first, "original_timestamp").unwrap().parse::<i64>().unwrap() > 0);
    assert!(header(first, "error").unwrap().contains("Avro"), "{:?}", header(first, "error"));
    assert!(by_key("kp-bad").1.contains("sla.timeout_ms"));
    assert!(header(first, "traceparent").is_some(), "the original headers travel along");
    assert_eq!(rdkafka::Message::payload(first), Some(&b"\x00\x00\x00\x00\x01garbage"[..]), "payload kept as sent");
    let (_, t) = app.get("/api/v1/tickets/kp-1").await;
    assert_eq!(t["description"], "deploy the service", "the conflicting message changed nothing");
    eventually("every message committed", 30, || async { kafka.committed("svc-p", "tickets-p") == Some(8) }).await;
    assert_eq!(metric(&app, "kafka_messages_dlq_total").await, 5.0);
}

#[tokio::test]
async fn a_store_outage_holds_the_offset_back_and_loses_nothing() {
    let kafka = Kafka::start();
    kafka.create_topic("tickets-o", 1).await;
    kafka.create_topic("tickets-o.dlq", 1).await;
    let db = fresh_database().await;
    let name = db.get_database().unwrap().to_owned();
    let store = Store::Postgres(Box::new(db.clone()));
    // Two messages in flight at most: the outage below fills that, so the consumer stops taking messages.
    let settings =
        ticket_supervisor::config::KafkaSettings { max_in_flight: 2, ..kafka.consumer_settings("tickets-o", "svc-o") };
    let app = spawn_app_with(&store, |s| s.kafka = Some(settings)).await;
    let producer = kafka.producer();
    let send = |i: usize| {
        let body = serde_json::to_vec(&ticket(&format!("ko-{i}"))).unwrap();
        let (kafka, producer) = (&kafka, &producer);
        async move { kafka.produce(producer, "tickets-o", &format!("ko-{i}"), &body).await }
    };
    for i in 0..5 {
        send(i).await;
    }
    eventually("the first five committed", 30, || async { kafka.committed("svc-o", "tickets-o") == Some(5) }).await;

    // Take the database away, then produce five more.
    let mut admin = db.clone().database("postgres").connect().await.unwrap();
    admin.execute(format!("ALTER DATABASE \"{name}\" ALLOW_CONNECTIONS false").as_str()).await.unwrap();
    admin
        .execute(format!("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'").as_str())
        .await
        .unwrap();
    for i in 5..10 {
        send(i).await;
    }
    eventually("the consumer saw the failures", 30, || async {
        metric(&app, "tickets_processing_errors_total{reason=\"store\"}").await > 0.0
    })
    .await;
    // A few auto-commit rounds; meanwhile the consumer, full, stops receiving and then pauses its partitions.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(kafka.committed("svc-o", "tickets-o"), Some(5), "no commit past a message that is not stored");

    admin.execute(format!("ALTER DATABASE \"{name}\" ALLOW_CONNECTIONS true").as_str()).await.unwrap();
    eventually("everything stored after the outage", 30, || async {
        let mut all = true;
        for i in 5..10 {
            all &= stored(&app, &format!("ko-{i}")).await;
        }
        all
    })
    .await;
    eventually("committed to the end", 30, || async { kafka.committed("svc-o", "tickets-o") == Some(10) }).await;
    assert!(
        kafka.read_all("tickets-o.dlq", 1, Duration::from_secs(6)).is_empty(),
        "a transient failure is never poison"
    );
    let (_, page) = app.get("/api/v1/tickets?plan_id=plan-1").await;
    assert_eq!(page["total"], 10);
}
