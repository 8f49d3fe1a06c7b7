//! The platform's real clients (issue #18, items 2, 3, 5, 6, 7): each caller's exact request, and the answer
//! it needs — on REST (both stores), gRPC and Kafka where the front end is involved.
//!
//! - flow-C's integration library falls back to `"correlation_id": ""` and `"intent_id": ""`;
//! - callers put any JSON in `metadata` (`{"policy_decisions": {…}, "attempt": 2, "note": null}`);
//! - code-forge's `get_dependencies`: `GET /api/v1/tickets/{id}/dependencies` → a JSON array of tickets;
//! - the specialists' business-metrics collector: `POST /api/v1/tickets/by-plans {"plan_ids": [...]}`;
//! - the e2e scripts send timestamps as RFC 3339 strings.

use crate::common;

use std::time::Duration;

use common::servers::Kafka;
use common::{authed, eventually, fresh_store, spawn_app, spawn_app_with, ticket, TestApp};
use serde_json::{json, Value};
use ticket_supervisor::grpc::pb;
use ticket_supervisor::kafka::decode::encode_confluent;

crate::on_both_stores!(
    flow_c_fallback_with_empty_ids_is_stored,
    free_form_metadata_is_kept_as_json_and_compared_by_value,
    metadata_values_keep_the_hardening_limits,
    dependencies_are_an_array_of_the_existing_dependency_tickets,
    tickets_by_plans_are_bounded_and_paged,
    rfc3339_timestamps_are_accepted_and_answered_as_epoch_millis,
);

async fn app(postgres: bool) -> (TestApp, Option<tempfile::TempDir>) {
    let (store, dir) = fresh_store(postgres).await;
    (spawn_app(&store).await, dir)
}

/// What flow-C's integration library sends when the plan has no intent or correlation id.
fn flow_c_fallback(id: &str) -> Value {
    let mut t = ticket(id);
    t["intent_id"] = json!("");
    t["correlation_id"] = json!("");
    t
}

/// The metadata of the issue, plus numbers whose form a store may change (`1e19`, a float).
fn free_form_metadata() -> Value {
    json!({
        "policy_decisions": {"allowed": true, "rules": ["r-1", {"id": "r-2", "weight": 0.25}], "score": 1e19},
        "attempt": 2,
        "note": null,
        "team": "core"
    })
}

async fn flow_c_fallback_with_empty_ids_is_stored(pg: bool) {
    let (app, _dir) = app(pg).await;
    let (code, created) = app.post("/api/v1/tickets", &flow_c_fallback("fc-1")).await;
    assert_eq!(code, 201, "{created}");
    assert_eq!(created["intent_id"], "", "an empty intent id is kept as given");
    assert_eq!(created["correlation_id"], Value::Null, "an empty correlation id is no correlation id");
    let (code, got) = app.get("/api/v1/tickets/fc-1").await;
    assert_eq!((code, &got), (200, &created));
    // The library retries: the same request is the same ticket.
    let (code, again) = app.post("/api/v1/tickets", &flow_c_fallback("fc-1")).await;
    assert_eq!((code, &again), (200, &created));
    // Only the empty string is special: blank is still refused, and a missing intent id too.
    let mut blank = flow_c_fallback("fc-2");
    blank["intent_id"] = json!("   ");
    let (code, body) = app.post("/api/v1/tickets", &blank).await;
    assert_eq!((code, body["detail"].as_str().map(|d| d.starts_with("intent_id"))), (422, Some(true)), "{body}");
    let mut missing = flow_c_fallback("fc-2");
    missing.as_object_mut().unwrap().remove("intent_id");
    let (code, body) = app.post("/api/v1/tickets", &missing).await;
    assert_eq!(code, 422, "{body}");
}

async fn free_form_metadata_is_kept_as_json_and_compared_by_value(pg: bool) {
    let (app, _dir) = app(pg).await;
    let mut request = ticket("md-1");
    request["metadata"] = free_form_metadata();
    let (code, created) = app.post("/api/v1/tickets", &request).await;
    assert_eq!(code, 201, "{created}");
    assert_eq!(created["metadata"]["attempt"], 2);
    assert_eq!(created["metadata"]["note"], Value::Null);
    assert!(created["metadata"].as_object().unwrap().contains_key("note"), "a null value is kept");
    assert_eq!(created["metadata"]["policy_decisions"]["rules"][1]["weight"], 0.25);
    assert_eq!(created["metadata"]["team"], "core");
    let (_, stored) = app.get("/api/v1/tickets/md-1").await;
    assert_eq!(stored["metadata"]["policy_decisions"]["allowed"], true);
    assert_eq!(stored["metadata"]["policy_decisions"]["score"].as_f64(), Some(1e19));
    // Redelivered: the stored row (PostgreSQL's jsonb gives 1e19 back as an integer) is the same request.
    let (code, again) = app.post("/api/v1/tickets", &request).await;
    assert_eq!((code, again["version"].as_i64()), (200, Some(1)), "{again}");
    // Keys in another order are the same metadata; another value is not.
    let mut reordered = request.clone();
    reordered["metadata"] = json!({
        "team": "core", "note": null, "attempt": 2,
        "policy_decisions": {"score": 10_000_000_000_000_000_000_u64, "rules": ["r-1", {"weight": 0.25, "id": "r-2"}], "allowed": true}
    });
    assert_eq!(app.post("/api/v1/tickets", &reordered).await.0, 200);
    let mut changed = request.clone();
    changed["metadata"]["attempt"] = json!("2");
    assert_eq!(app.post("/api/v1/tickets", &changed).await.0, 409, "a string is not a number");

    // The SLA engine reads `heartbeat_timeout_ms` as a number or as a string.
    let policy = actors::sla::SlaPolicy::default();
    for value in [json!(45_000), json!("45000"), json!(4.5e4)] {
        let mut t = ticket("hb");
        t["metadata"] = json!({ "heartbeat_timeout_ms": value });
        let new: actors::validation::NewTicket = serde_json::from_value(t).unwrap();
        let valid = new.validate(1_000, || unreachable!()).unwrap();
        assert_eq!(policy.heartbeat_timeout(&valid.ticket), Some(45_000), "{value}");
    }
}

async fn metadata_values_keep_the_hardening_limits(pg: bool) {
    let (app, _dir) = app(pg).await;
    let mut deep = json!("bottom");
    for _ in 0..40 {
        deep = json!([deep]);
    }
    let cases = [
        (json!({"policy_decisions": {"rules": ["a\u{0}b"]}}), "metadata.policy_decisions"),
        (json!({"policy_decisions": {"k\u{0}": 1}}), "metadata.policy_decisions"),
        (json!({"nested": deep}), "metadata.nested"),
        (json!({"big": ["x".repeat(64 * 1024)]}), "metadata"),
    ];
    for (i, (metadata, field)) in cases.into_iter().enumerate() {
        let mut t = ticket(&format!("lim-{i}"));
        t["metadata"] = metadata;
        let (code, body) = app.post("/api/v1/tickets", &t).await;
        assert_eq!(code, 422, "{body}");
        assert!(body["detail"].as_str().unwrap().starts_with(&format!("{field}:")), "{field}: {body}");
        assert_eq!(app.get(&format!("/api/v1/tickets/lim-{i}")).await.0, 404, "nothing stored");
    }
}

async fn dependencies_are_an_array_of_the_existing_dependency_tickets(pg: bool) {
    let (app, _dir) = app(pg).await;
    for id in ["dep-a", "dep-b"] {
        assert_eq!(app.post("/api/v1/tickets", &ticket(id)).await.0, 201);
    }
    app.set_status("dep-b", "RUNNING").await;
    let mut child = ticket("dep-child");
    child["dependencies"] = json!(["dep-b", "dep-gone", "dep-a"]);
    assert_eq!(app.post("/api/v1/tickets", &child).await.0, 201);

    // code-forge's `get_dependencies`.
    let (code, deps) = app.get("/api/v1/tickets/dep-child/dependencies").await;
    assert_eq!(code, 200, "{deps}");
    let deps = deps.as_array().expect("a JSON array");
    let ids: Vec<&str> = deps.iter().map(|t| t["ticket_id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["dep-b", "dep-a"], "in the order listed; a dependency that does not exist is left out");
    assert_eq!(deps[0]["status"], "RUNNING", "current state");
    let (_, b) = app.get("/api/v1/tickets/dep-b").await;
    assert_eq!(deps[0], b, "whole tickets, as GET answers them");
    assert_eq!(app.get("/api/v1/tickets/dep-child/dependencies/").await.1.as_array().map(Vec::len), Some(2));

    let (code, none) = app.get("/api/v1/tickets/dep-a/dependencies").await;
    assert_eq!((code, none), (200, json!([])));
    let (code, body) = app.get("/api/v1/tickets/dep-unknown/dependencies").await;
    assert_eq!((code, body["detail"].is_string()), (404, true), "{body}");

    // Read access as for the ticket itself: its own ticket token may, another ticket's may not.
    let url = app.url("/api/v1/tickets/dep-child/dependencies");
    let own = app.ticket_token("dep-child").await;
    assert_eq!(app.client.get(&url).bearer_auth(&own).send().await.unwrap().status(), 200);
    let other = app.ticket_token("dep-a").await;
    assert_eq!(app.client.get(&url).bearer_auth(&other).send().await.unwrap().status(), 403);
    assert_eq!(app.client.get(&url).send().await.unwrap().status(), 401);
}

async fn tickets_by_plans_are_bounded_and_paged(pg: bool) {
    let (app, _dir) = app(pg).await;
    let plans = [("plan-x", 3), ("plan-y", 2), ("plan-z", 1)];
    let mut created_at = 1_800_000_000_000_i64;
    for (plan, n) in plans {
        for i in 0..n {
            let mut t = ticket(&format!("{plan}-t{i}"));
            t["plan_id"] = json!(plan);
            t["created_at"] = json!(created_at);
            created_at -= 1_000; // later tickets older: the answer still follows creation
            assert_eq!(app.post("/api/v1/tickets", &t).await.0, 201);
        }
    }
    app.set_status("plan-y-t0", "RUNNING").await;

    // The business-metrics collector's request.
    let (code, body) =
        app.post("/api/v1/tickets/by-plans", &json!({"plan_ids": ["plan-y", "plan-x", "plan-none", "plan-x"]})).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        (body["total"].as_i64(), body["offset"].as_i64(), body["limit"].as_i64()),
        (Some(5), Some(0), Some(1000))
    );
    let tickets = body["tickets"].as_array().unwrap();
    let got: Vec<(&str, &str, &str)> = tickets
        .iter()
        .map(|t| (t["ticket_id"].as_str().unwrap(), t["plan_id"].as_str().unwrap(), t["status"].as_str().unwrap()))
        .collect();
    assert_eq!(
        got,
        [
            ("plan-x-t2", "plan-x", "PENDING"),
            ("plan-x-t1", "plan-x", "PENDING"),
            ("plan-x-t0", "plan-x", "PENDING"),
            ("plan-y-t1", "plan-y", "PENDING"),
            ("plan-y-t0", "plan-y", "RUNNING"),
        ],
        "by plan, then creation"
    );
    assert_eq!(tickets[0].as_object().unwrap().len(), 3, "ticket_id, plan_id, status: {}", tickets[0]);

    // Paged: offset + limit walks the same list.
    let mut walked = Vec::new();
    for offset in [0, 2, 4] {
        let path = format!("/api/v1/tickets/by-plans?offset={offset}&limit=2");
        let (code, page) = app.post(&path, &json!({"plan_ids": ["plan-x", "plan-y"]})).await;
        assert_eq!((code, page["total"].as_i64(), page["limit"].as_i64()), (200, Some(5), Some(2)), "{page}");
        walked.extend(page["tickets"].as_array().unwrap().iter().map(|t| t["ticket_id"].clone()));
    }
    assert_eq!(walked, tickets.iter().map(|t| t["ticket_id"].clone()).collect::<Vec<_>>());

    // Bounded: 1000 plan ids are fine, 1001 are refused naming the field.
    let many: Vec<String> = (0..1000).map(|i| format!("plan-{i}")).collect();
    let (code, body) = app.post("/api/v1/tickets/by-plans", &json!({ "plan_ids": many })).await;
    assert_eq!((code, body["total"].as_i64()), (200, Some(0)), "{body}");
    let too_many: Vec<String> = (0..1001).map(|i| format!("plan-{i}")).collect();
    let (code, body) = app.post("/api/v1/tickets/by-plans", &json!({ "plan_ids": too_many })).await;
    assert_eq!(code, 422, "{body}");
    assert!(body["detail"].as_str().unwrap().starts_with("plan_ids:"), "{body}");
    let (code, body) = app.post("/api/v1/tickets/by-plans", &json!({"plan_ids": []})).await;
    assert_eq!((code, body["tickets"].clone(), body["total"].as_i64()), (200, json!([]), Some(0)));
    for (path, bad, what) in [
        ("/api/v1/tickets/by-plans", json!({}), "plan_ids"),
        ("/api/v1/tickets/by-plans", json!({"plan_ids": "plan-x"}), "plan_ids"),
        ("/api/v1/tickets/by-plans", json!({"plan_ids": ["ok", "a\u{0}b"]}), "plan_ids[1]"),
        ("/api/v1/tickets/by-plans?limit=0", json!({"plan_ids": ["plan-x"]}), "limit"),
        ("/api/v1/tickets/by-plans?offset=-1", json!({"plan_ids": ["plan-x"]}), "offset"),
    ] {
        let (code, body) = app.post(path, &bad).await;
        assert_eq!(code, 422, "{path} {bad}: {body}");
        assert!(body["detail"].as_str().unwrap().contains(what), "{what}: {body}");
    }
    // A service call: a ticket token may not list plans.
    let token = app.ticket_token("plan-x-t0").await;
    let res = app
        .client
        .post(app.url("/api/v1/tickets/by-plans"))
        .bearer_auth(token)
        .json(&json!({"plan_ids": ["plan-x"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    // `by-plans` is an API path, so no ticket may take it as its id.
    let (code, body) = app.post("/api/v1/tickets", &ticket("by-plans")).await;
    assert_eq!(code, 422, "{body}");
}

async fn rfc3339_timestamps_are_accepted_and_answered_as_epoch_millis(pg: bool) {
    let (app, _dir) = app(pg).await;
    // What the e2e scripts send.
    let mut request = ticket("ts-1");
    request["sla"]["deadline"] = json!("2026-12-05T23:28:01Z");
    request["created_at"] = json!("2026-12-05T20:28:01.250-03:00");
    let (code, created) = app.post("/api/v1/tickets", &request).await;
    assert_eq!(code, 201, "{created}");
    assert_eq!(created["sla"]["deadline"], 1_796_513_281_000_i64, "answered as epoch milliseconds");
    assert_eq!(created["created_at"], 1_796_513_281_250_i64);
    let (_, got) = app.get("/api/v1/tickets/ts-1").await;
    assert_eq!(got["sla"]["deadline"], 1_796_513_281_000_i64);
    // The same instants as epoch milliseconds, or in another offset, are the same request.
    let mut as_millis = request.clone();
    as_millis["sla"]["deadline"] = json!(1_796_513_281_000_i64);
    as_millis["created_at"] = json!("2026-12-05T23:28:01.250000+00:00");
    let (code, again) = app.post("/api/v1/tickets", &as_millis).await;
    // (Only the spec is compared: that deadline may be past, and its breach may have been recorded meanwhile.)
    assert_eq!((code, &again["created_at"], &again["sla"]), (200, &created["created_at"], &created["sla"]), "{again}");
    let mut fractional = ticket("ts-2");
    fractional["sla"]["deadline"] = json!("2026-12-05T23:28:01.123456789z");
    let (code, body) = app.post("/api/v1/tickets", &fractional).await;
    assert_eq!((code, body["sla"]["deadline"].as_i64()), (201, Some(1_796_513_281_123)), "{body}");

    for (field, value) in [
        ("sla.deadline", json!("2026-12-05T23:28:01")),
        ("sla.deadline", json!("2026-12-05")),
        ("sla.deadline", json!("5 Dec 2026")),
        ("created_at", json!("2026-13-05T23:28:01Z")),
        ("created_at", json!("1969-12-31T23:59:59Z")),
    ] {
        let mut t = ticket("ts-bad");
        match field.strip_prefix("sla.") {
            Some(key) => t["sla"][key] = value.clone(),
            None => t[field] = value.clone(),
        }
        let (code, body) = app.post("/api/v1/tickets", &t).await;
        assert_eq!(code, 422, "{value}: {body}");
        assert!(body["detail"].as_str().unwrap().starts_with(&format!("{field}:")), "{value}: {body}");
    }
    assert_eq!(app.get("/api/v1/tickets/ts-bad").await.0, 404);
}

/// gRPC: the empty ids of the fallback are accepted; metadata that is not a string is answered as its JSON text
/// (the proto's `map<string, string>`), strings unchanged.
#[tokio::test]
async fn grpc_accepts_empty_ids_and_answers_metadata_as_strings() {
    let (app, _dir) = app(false).await;
    let mut c = app.grpc().await;
    let mut fallback = common::proto_ticket("gc-1");
    fallback.intent_id = String::new();
    fallback.correlation_id = Some(String::new());
    let req = pb::CreateTicketRequest { ticket: Some(fallback) };
    let created = c.create_ticket(authed(req, &app.token)).await.expect("created").into_inner();
    let t = created.ticket.unwrap();
    assert!(created.created);
    assert_eq!((t.intent_id.as_str(), t.correlation_id.as_deref()), ("", None));
    let (_, rest) = app.get("/api/v1/tickets/gc-1").await;
    assert_eq!((rest["intent_id"].as_str(), &rest["correlation_id"]), (Some(""), &Value::Null));

    let mut request = ticket("gc-2");
    request["metadata"] = free_form_metadata();
    assert_eq!(app.post("/api/v1/tickets", &request).await.0, 201);
    let got = c.get_ticket(authed(pb::GetTicketRequest { ticket_id: "gc-2".into() }, &app.token)).await.unwrap();
    let metadata = got.into_inner().ticket.unwrap().metadata;
    assert_eq!(metadata["team"], "core", "strings stay strings");
    assert_eq!(metadata["attempt"], "2");
    assert_eq!(metadata["note"], "null");
    let decisions: Value = serde_json::from_str(&metadata["policy_decisions"]).expect("JSON text");
    assert_eq!(decisions, free_form_metadata()["policy_decisions"]);
    let listed = c
        .list_tickets(authed(pb::ListTicketsRequest { plan_id: "plan-1".into(), ..Default::default() }, &app.token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.tickets[0].metadata["attempt"], "2", "every answer carries the same form");
}

/// Kafka: a JSON ticket as flow-C's fallback and the e2e scripts write it (empty ids, free-form metadata, RFC
/// 3339 deadline), and an Avro one with empty ids and metadata written by the rule (non-strings as JSON text).
#[tokio::test]
async fn kafka_json_and_avro_tickets_with_empty_ids_and_free_form_metadata() {
    let kafka = Kafka::start();
    kafka.create_topic("tickets-c", 1).await;
    kafka.create_topic("tickets-c.dlq", 1).await;
    let (store, _dir) = fresh_store(true).await;
    let app = spawn_app_with(&store, |s| s.kafka = Some(kafka.consumer_settings("tickets-c", "svc-c"))).await;
    let producer = kafka.producer();

    let mut json_ticket = flow_c_fallback("kc-json");
    json_ticket["metadata"] = free_form_metadata();
    json_ticket["sla"]["deadline"] = json!("2026-12-05T23:28:01Z");
    kafka.produce(&producer, "tickets-c", "kc-json", &serde_json::to_vec(&json_ticket).unwrap()).await;

    let mut avro_ticket = flow_c_fallback("kc-avro");
    avro_ticket["metadata"] = json!({"attempt": 2, "team": "core"});
    for (k, v) in [("task_type", json!("DEPLOY")), ("priority", json!("HIGH")), ("status", json!("PENDING"))] {
        avro_ticket[k] = v;
    }
    avro_ticket["created_at"] = json!(1_800_000_000_000_i64);
    let avro = encode_confluent(1, &avro_ticket).unwrap();
    kafka.produce(&producer, "tickets-c", "kc-avro", &avro).await;

    eventually("both tickets stored", 30, || async {
        app.get("/api/v1/tickets/kc-json").await.0 == 200 && app.get("/api/v1/tickets/kc-avro").await.0 == 200
    })
    .await;
    let (_, j) = app.get("/api/v1/tickets/kc-json").await;
    assert_eq!((j["intent_id"].as_str(), &j["correlation_id"]), (Some(""), &Value::Null));
    // Numbers by value: PostgreSQL's jsonb gives `1e19` back as `10000000000000000000`.
    assert!(actors::model::same_json(&j["metadata"], &free_form_metadata()), "JSON on Kafka keeps JSON: {j}");
    assert_eq!(j["sla"]["deadline"], 1_796_513_281_000_i64);
    let (_, a) = app.get("/api/v1/tickets/kc-avro").await;
    assert_eq!((a["intent_id"].as_str(), &a["correlation_id"]), (Some(""), &Value::Null));
    assert_eq!(a["metadata"], json!({"attempt": "2", "team": "core"}), "Avro carries strings");
    assert!(kafka.read_all("tickets-c.dlq", 1, Duration::from_secs(3)).is_empty(), "nothing dead-lettered");
}

/// The OpenAPI document lists the new routes and the timestamp rule.
#[tokio::test]
async fn openapi_lists_the_new_routes_and_rules() {
    let (app, _dir) = app(false).await;
    let (code, doc) = app.get("/openapi.json").await;
    assert_eq!(code, 200);
    let deps = &doc["paths"]["/api/v1/tickets/{ticket_id}/dependencies"]["get"];
    assert_eq!(deps["responses"]["200"]["content"]["application/json"]["schema"]["type"], "array", "{deps}");
    assert!(deps["responses"]["404"].is_object());
    assert!(deps["description"].as_str().unwrap_or_default().contains("left out"), "{deps}");
    let by_plans = &doc["paths"]["/api/v1/tickets/by-plans"]["post"];
    assert!(by_plans["requestBody"].is_object() && by_plans["responses"]["422"].is_object(), "{by_plans}");
    let schemas = &doc["components"]["schemas"];
    assert!(schemas["PlanTicketPage"].is_object() && schemas["ByPlansBody"].is_object());
    let timestamp = schemas["TimestampInput"]["oneOf"].as_array().expect("TimestampInput: integer or string");
    assert_eq!(timestamp[1]["format"], "date-time");
    assert_eq!(
        schemas["NewSla"]["properties"]["deadline"]["oneOf"][1]["$ref"]
            .as_str()
            .or(schemas["NewSla"]["properties"]["deadline"]["$ref"].as_str()),
        Some("#/components/schemas/TimestampInput"),
        "{}",
        schemas["NewSla"]
    );
    // A history record's `details` is null when a change has none: the document says so too (issue #20).
    let details = &schemas["AuditEvent"]["properties"]["details"];
    let types = details["type"].as_array().cloned().unwrap_or_default();
    assert!(types.contains(&json!("null")) || details["nullable"] == true, "{details}");
    let (_, created) = app.post("/api/v1/tickets", &ticket("doc-1")).await;
    assert_eq!(created["ticket_id"], "doc-1");
    let (_, history) = app.get("/api/v1/tickets/doc-1/history").await;
    assert!(history["events"].as_array().unwrap().iter().any(|e| e["details"].is_null()), "{history}");
}
