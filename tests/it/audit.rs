//! The audit trail: every change is recorded with the change (the outbox), the history endpoints read it in
//! order, and the OutboxShipper ships it to a real MongoDB-wire server (nx-27017) — through an outage of that
//! server, with every record arriving exactly once.

use crate::common;

use std::collections::HashSet;

use common::servers::Mongo;
use common::{eventually, fresh_store, spawn_app, spawn_app_with, ticket, Store, TestApp};
use futures::TryStreamExt;
use mongodb::bson::Document;
use serde_json::{json, Value};
use ticket_supervisor::config::MongoSettings;

async fn history(app: &TestApp, id: &str) -> Value {
    let (code, body) = app.get(&format!("/api/v1/tickets/{id}/history?limit=1000")).await;
    assert_eq!(code, 200, "{body}");
    body
}

async fn history_in_order_on(postgres: bool) {
    let (store, _dir) = fresh_store(postgres).await;
    let app = spawn_app(&store).await;
    assert_eq!(app.post("/api/v1/tickets", &ticket("h-1")).await.0, 201);
    assert_eq!(app.post("/api/v1/tickets", &ticket("h-1")).await.0, 200, "an idempotent repeat records nothing");
    assert_eq!(app.set_status("h-1", "RUNNING").await.0, 200);
    assert_eq!(app.get("/api/v1/tickets/h-1/token").await.0, 200);
    let failed = json!({"status": "FAILED", "error_message": "disk full"});
    assert_eq!(app.patch("/api/v1/tickets/h-1/status", &failed).await.0, 200);
    assert_eq!(app.post("/api/v1/tickets/h-1/retry", &json!({})).await.0, 200);
    assert_eq!(app.set_status("h-1", "COMPLETED").await.0, 409, "a refused change records nothing");

    let h = history(&app, "h-1").await;
    let kinds: Vec<&str> = h["events"].as_array().unwrap().iter().map(|e| e["kind"].as_str().unwrap()).collect();
    let expected = [
        "ticket.created",
        "ticket.ready",
        "ticket.started",
        "token.minted",
        "ticket.failed",
        "ticket.retry",
        "ticket.ready",
    ];
    assert_eq!(kinds, expected, "a ticket without dependencies is ready with each PENDING spell");
    assert_eq!(h["total"], 7);
    let e = &h["events"];
    assert_eq!(
        (e[0]["from_status"].clone(), e[0]["to_status"].as_str(), e[0]["version"].as_i64()),
        (Value::Null, Some("PENDING"), Some(1))
    );
    assert_eq!(
        (e[4]["from_status"].as_str(), e[4]["to_status"].as_str(), e[4]["version"].as_i64()),
        (Some("RUNNING"), Some("FAILED"), Some(3))
    );
    assert!(e[3]["details"]["scopes"].as_array().unwrap().contains(&json!("ticket:update")), "{}", e[3]);
    assert!(!e[3].to_string().contains("eyJ"), "the token's scopes are recorded, never the token: {}", e[3]);
    let by_client = e.as_array().unwrap().iter().filter(|e| e["kind"] != "ticket.ready");
    assert!(by_client.clone().all(|e| e["actor"] == "orchestrator" && e["at"].as_i64().unwrap() > 0));
    assert_eq!(e[1]["actor"], "system", "readiness is announced by the service");
    let ids: HashSet<&str> = e.as_array().unwrap().iter().map(|e| e["event_id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 7, "every record has its own id");

    let (code, page) = app.get("/api/v1/tickets/h-1/history?offset=4&limit=1").await;
    assert_eq!(
        (code, page["total"].as_i64(), page["events"][0]["kind"].as_str()),
        (200, Some(7), Some("ticket.failed"))
    );
    assert_eq!(app.get("/api/v1/tickets/h-1/history?limit=0").await.0, 422);
    assert_eq!(app.get("/api/v1/tickets/nope/history").await.0, 404);
    let token = app.ticket_token("h-1").await;
    let res = app.client.get(app.url("/api/v1/tickets/h-1/history")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(res.status(), 200, "a ticket token reads its own history");
}

#[tokio::test]
async fn history_lists_every_change_in_order_embedded() {
    history_in_order_on(false).await;
}

#[tokio::test]
async fn history_lists_every_change_in_order_postgres() {
    history_in_order_on(true).await;
}

async fn mongo_docs(mongo: &Mongo) -> Result<Vec<Document>, mongodb::error::Error> {
    let client = mongodb::Client::with_uri_str(mongo.uri()).await?;
    let coll = client.database("audit_test").collection::<Document>("ticket_audit_log");
    coll.find(mongodb::bson::doc! {}).await?.try_collect().await
}

async fn ready_audit(app: &TestApp) -> Value {
    app.get("/ready").await.1["checks"]["audit"].clone()
}

#[tokio::test]
async fn the_outbox_drains_to_mongodb_exactly_once_across_an_outage() {
    let mut mongo = Mongo::start();
    let (store, _dir) = fresh_store(true).await;
    let settings =
        MongoSettings { uri: mongo.uri(), database: "audit_test".into(), collection: "ticket_audit_log".into() };
    let app = spawn_app_with(&store, |s| s.mongo = Some(settings)).await;
    for i in 0..5 {
        assert_eq!(app.post("/api/v1/tickets", &ticket(&format!("m-{i}"))).await.0, 201);
        assert_eq!(app.set_status(&format!("m-{i}"), "RUNNING").await.0, 200);
    }
    eventually("created, ready and started of five tickets in MongoDB", 40, || async {
        mongo_docs(&mongo).await.is_ok_and(|d| d.len() == 15)
    })
    .await;

    mongo.stop();
    for i in 0..5 {
        assert_eq!(app.set_status(&format!("m-{i}"), "COMPLETED").await.0, 200, "changes go on while MongoDB is down");
        assert_eq!(app.post("/api/v1/tickets", &ticket(&format!("n-{i}"))).await.0, 201);
    }
    eventually("readiness shows the audit trail degraded with a backlog", 40, || async {
        let audit = ready_audit(&app).await;
        audit["status"] == "degraded" && audit["backlog"].as_i64().unwrap_or(0) == 15
    })
    .await;
    let (code, _) = app.get("/ready").await;
    assert_eq!(code, 200, "a failing audit sink loses nothing and does not take the service out of rotation");
    // `/ready` needs no token: the driver's text (the server's address) stays in the log.
    let error = ready_audit(&app).await["error"].as_str().unwrap_or_default().to_owned();
    assert!(error.contains("details in the service log") && !error.contains("127.0.0.1"), "{error}");

    mongo.resume();
    eventually("the outbox drained", 40, || async {
        let audit = ready_audit(&app).await;
        audit["status"] == "ok" && audit["backlog"] == 0
    })
    .await;
    let docs = mongo_docs(&mongo).await.unwrap();
    let mut expected = HashSet::new();
    for id in (0..5).map(|i| format!("m-{i}")).chain((0..5).map(|i| format!("n-{i}"))) {
        for e in history(&app, &id).await["events"].as_array().unwrap() {
            expected.insert(e["event_id"].as_str().unwrap().to_owned());
        }
    }
    let shipped: Vec<String> = docs.iter().map(|d| d.get_str("event_id").unwrap().to_owned()).collect();
    assert_eq!(shipped.len(), 30, "every record once: {} documents", shipped.len());
    assert_eq!(shipped.iter().cloned().collect::<HashSet<_>>(), expected, "exactly the recorded events");
    let completed = docs.iter().find(|d| d.get_str("kind") == Ok("ticket.completed")).unwrap();
    assert_eq!(completed.get_str("from_status"), Ok("RUNNING"));
    // (nx-27017 hands small integers back as int32; MongoDB keeps the int64 written.)
    let version = completed.get("version").and_then(|v| v.as_i64().or(v.as_i32().map(i64::from)));
    assert_eq!(version, Some(3));
    assert_eq!(completed.get_str("actor"), Ok("orchestrator"));
}

#[tokio::test]
async fn without_mongodb_the_store_keeps_the_audit_log() {
    let (store, _dir) = fresh_store(false).await;
    let app = spawn_app(&store).await;
    assert!(matches!(store, Store::Embedded(_)));
    assert_eq!(app.post("/api/v1/tickets", &ticket("e-1")).await.0, 201);
    assert_eq!(history(&app, "e-1").await["total"], 2, "created and ready");
    assert_eq!(ready_audit(&app).await, Value::Null, "no audit check when no sink is configured");
}
