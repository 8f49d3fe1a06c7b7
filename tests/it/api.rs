//! The REST API end to end: the real application, on the embedded store and on PostgreSQL.

use crate::common;

use common::{eventually, fresh_store, spawn_app, ticket, TestApp, JWT_SECRET};
use serde_json::{json, Value};

crate::on_both_stores!(
    lifecycle_walk,
    create_is_idempotent_and_detects_different_content,
    validation_errors_name_the_field_and_store_nothing,
    illegal_transitions_are_409_with_the_allowed_moves,
    retries_spend_the_budget_and_manual_retry_does_not_need_it,
    the_self_healing_engine_reallocates_a_failed_ticket_with_a_patch,
    a_timed_out_attempts_late_result_counts_until_a_new_attempt_starts,
    list_filters_and_pages,
    compensation_creates_a_linked_ticket,
    tokens_are_scoped_to_active_tickets,
    if_match_guards_updates,
    acknowledged_writes_survive_a_restart,
    concurrent_creates_of_one_id_create_it_once,
    operational_endpoints,
    edge_values_and_malformed_bodies_are_client_errors,
);

async fn app(postgres: bool) -> (TestApp, common::Store, Option<tempfile::TempDir>) {
    let (store, dir) = fresh_store(postgres).await;
    (spawn_app(&store).await, store, dir)
}

async fn lifecycle_walk(pg: bool) {
    let (app, _, _dir) = app(pg).await;
    let (code, created) = app.post("/api/v1/tickets", &ticket("walk-1")).await;
    assert_eq!(code, 201, "{created}");
    assert_eq!((created["status"].as_str(), created["version"].as_i64()), (Some("PENDING"), Some(1)));
    assert_eq!((created["task_type"].as_str(), created["priority"].as_str()), (Some("DEPLOY"), Some("HIGH")));
    assert!(created["created_at"].as_i64().unwrap() > 1_700_000_000_000, "epoch milliseconds");

    let (code, got) = app.get("/api/v1/tickets/walk-1").await;
    assert_eq!((code, &got), (200, &created));

    let (code, running) = app.set_status("walk-1", "running").await;
    assert_eq!(code, 200, "{running}");
    assert_eq!((running["status"].as_str(), running["version"].as_i64()), (Some("RUNNING"), Some(2)));
    assert!(running["started_at"].as_i64().is_some());

    let (code, done) =
        app.patch("/api/v1/tickets/walk-1", &json!({"status": "COMPLETED", "actual_duration_ms": 1234})).await;
    assert_eq!(code, 200, "{done}");
    assert_eq!(done["status"], "COMPLETED");
    assert_eq!(done["actual_duration_ms"], 1234);
    assert!(done["completed_at"].as_i64() >= done["started_at"].as_i64());
    let (_, again) = app.get("/api/v1/tickets/walk-1/").await;
    assert_eq!(again, done, "trailing slash serves the same resource");

    let (code, body) = app.get("/api/v1/tickets/does-not-exist").await;
    assert_eq!((code, body["detail"].is_string()), (404, true));
}

async fn create_is_idempotent_and_detects_different_content(pg: bool) {
    let (app, _, _dir) = app(pg).await;
    let (code, first) = app.post("/api/v1/tickets/", &ticket("idem-1")).await;
    assert_eq!(code, 201, "trailing slash, no redirect: {first}");
    let (code, second) = app.post("/api/v1/tickets", &ticket("idem-1")).await;
    assert_eq!((code, &second), (200, &first));
    let mut changed = ticket("idem-1");
    changed["description"] = json!("something else");
    let (code, body) = app.post("/api/v1/tickets", &changed).await;
    assert_eq!(code, 409);
    assert!(body["detail"].as_str().unwrap().contains("idem-1"), "{body}");
    // A redelivered create still matches after the ticket moved on.
    app.set_status("idem-1", "RUNNING").await;
    let (code, body) = app.post("/api/v1/tickets", &ticket("idem-1")).await;
    assert_eq!((code, body["status"].as_str()), (200, Some("RUNNING")));
}

async fn validation_errors_name_the_field_and_store_nothing(pg: bool) {
    let (app, _, _dir) = app(pg).await;
    type Mutation = Box<dyn Fn(&mut Value)>;
    let cases: Vec<(Mutation, &str)> = vec![
        (
            Box::new(|t| {
                t.as_object_mut().unwrap().remove("plan_id");
            }),
            "plan_id",
        ),
        (Box::new(|t| t["sla"]["timeout_ms"] = json!(0)), "sla.timeout_ms"),
        (Box::new(|t| t["sla"]["max_retries"] = json!(-1)), "sla.max_retries"),
        (Box::new(|t| t["dependencies"] = json!(["bad-1"])), "dependencies"),
        (Box::new(|t| t["task_type"] = json!("DANCE")), "task_type"),
        (
            Box::new(|t| {
                t["started_at"] = json!(2_000);
                t["completed_at"] = json!(1_000);
            }),
            "completed_at",
        ),
        (Box::new(|t| t["intent_id"] = json!("x".repeat(300))), "intent_id"),
        (Box::new(|t| t["sla"]["timeout_ms"] = json!("soon")), "sla.timeout_ms"),
        (Box::new(|t| t["qos"] = json!({"delivery_mode": "AT_MOST_ONCE"})), "qos.consistency"),
    ];
    for (mutate, field) in cases {
        let mut body = ticket("bad-1");
        mutate(&mut body);
        let (code, err) = app.post("/api/v1/tickets", &body).await;
        assert_eq!(code, 422, "{field}: {err}");
        let detail = err["detail"].as_str().unwrap();
        assert!(detail.starts_with(field), "expected the message to name {field}: {detail}");
    }
    let res = app.req(reqwest::Method::POST, "/api/v1/tickets").body("{not json").send().await.unwrap();
    assert_eq!(res.status().as_u16(), 422);
    let (_, page) = app.get("/api/v1/tickets").await;
    assert_eq!(page["total"], 0, "nothing half-written: {page}");
}

async fn illegal_transitions_are_409_with_the_allowed_moves(pg: bool) {
    let (app, _, _dir) = app(pg).await;
    app.post("/api/v1/tickets", &ticket("ill-1")).await;
    let (code, body) = app.set_status("ill-1", "COMPLETED").await;
    assert_eq!(code, 409);
    assert_eq!(body["from"], "PENDING");
    assert_eq!(body["to"], "COMPLETED");
    assert_eq!(body["allowed"], json!(["RUNNING", "CANCELLED"]));
    assert!(body["detail"].as_str().unwrap().contains("PENDING"));
    let (code, body) = app.set_status("ill-1", "SOMEWHERE").await;
    assert_eq!(code, 422, "{body}");
    let (code, same) = app.set_status("ill-1", "pending").await;
    assert_eq!((code, same["version"].as_i64()), (200, Some(1)), "repeating the status is a no-op");
    app.set_status("ill-1", "CANCELLED").await;
    let (code, body) = app.set_status("ill-1", "RUNNING").await;
    assert_eq!((code, body["allowed"].clone()), (409, json!([])), "terminal");
    let (_, stored) = app.get("/api/v1/tickets/ill-1").await;
    assert_eq!(stored["status"], "CANCELLED");
}

async fn retries_spend_the_budget_and_manual_retry_does_not_need_it(pg: bool) {
    let (app, _, _dir) = app(pg).await;
    app.post("/api/v1/tickets", &ticket("re-1")).await; // max_retries 1
    app.set_status("re-1", "RUNNING").await;
    let (code, t) = app.set_status("re-1", "PENDING").await;
    assert_eq!((code, t["retry_count"].as_i64()), (200, Some(1)));
    app.set_status("re-1", "RUNNING").await;
    let (code, body) = app.set_status("re-1", "PENDING").await;
    assert_eq!(code, 409, "budget spent: {body}");
    let (code, t) = app.set_status("re-1", "PREEMPTED").await;
    assert_eq!((code, t["status"].as_str(), t["retry_count"].as_i64()), (200, Some("PENDING"), Some(1)));
    app.set_status("re-1", "RUNNING").await;
    let (code, t) =
        app.patch("/api/v1/tickets/re-1/status", &json!({"status": "FAILED", "error_message": "disk full"})).await;
    assert_eq!((code, t["error_message"].as_str()), (200, Some("disk full")));
    let (code, t) = app.post("/api/v1/tickets/re-1/retry", &json!({})).await;
    assert_eq!((code, t["status"].as_str(), t["retry_count"].as_i64()), (200, Some("PENDING"), Some(2)));
    assert_eq!(t["error_message"], "disk full", "kept until replaced");
    let (code, _) = app.post("/api/v1/tickets/re-1/retry", &json!({})).await;
    assert_eq!(code, 409, "only FAILED tickets are retried manually");
}

/// The history records of a ticket, oldest first.
async fn history(app: &TestApp, id: &str) -> Vec<Value> {
    let (code, page) = app.get(&format!("/api/v1/tickets/{id}/history")).await;
    assert_eq!(code, 200, "{page}");
    page["events"].as_array().cloned().unwrap_or_default()
}

/// The self-healing engine's call (issue #18): `PATCH /api/v1/tickets/{id}` with PENDING and its reallocation
/// metadata on a FAILED ticket is the manual retry, with the metadata in the history record.
async fn the_self_healing_engine_reallocates_a_failed_ticket_with_a_patch(pg: bool) {
    let (app, _, _dir) = app(pg).await;
    for id in ["heal-1", "heal-2"] {
        app.post("/api/v1/tickets", &ticket(id)).await;
        app.set_status(id, "RUNNING").await;
        app.set_status(id, "FAILED").await;
    }
    let reallocation = json!({"reallocation_id": "realloc-7", "from_agent": "a-1", "attempt": 2, "note": null});
    let (code, t) =
        app.patch("/api/v1/tickets/heal-1", &json!({"status": "pending", "metadata": reallocation.clone()})).await;
    assert_eq!((code, t["status"].as_str(), t["retry_count"].as_i64()), (200, Some("PENDING"), Some(1)), "{t}");
    let (code, by_post) = app.post("/api/v1/tickets/heal-2/retry", &json!({})).await;
    assert_eq!(code, 200, "{by_post}");
    let (patched, posted) = (history(&app, "heal-1").await, history(&app, "heal-2").await);
    let retry = |records: &[Value]| records.iter().find(|e| e["from_status"] == "FAILED").cloned().unwrap();
    let (patched, posted) = (retry(&patched), retry(&posted));
    for field in ["kind", "from_status", "to_status", "version"] {
        assert_eq!(patched[field], posted[field], "the same history record as POST …/retry: {field}");
    }
    assert_eq!(patched["details"]["metadata"], reallocation, "the reallocation metadata is kept");

    // Still the machine's rules: PENDING is no way out of a COMPLETED ticket, and metadata must be an object.
    app.post("/api/v1/tickets", &ticket("heal-3")).await;
    app.set_status("heal-3", "RUNNING").await;
    app.set_status("heal-3", "COMPLETED").await;
    let (code, body) = app.patch("/api/v1/tickets/heal-3", &json!({"status": "pending"})).await;
    assert_eq!(code, 409, "{body}");
    let (code, body) = app.patch("/api/v1/tickets/heal-1", &json!({"status": "running", "metadata": [1]})).await;
    assert_eq!(code, 422, "{body}");
}

/// Worker agents report the result of an attempt the service already timed out (issue #18): taken while the
/// ticket waits PENDING for its retry, refused once a new attempt runs. (The exact multipliers of the timeout
/// are in actors/tests/sla.rs, on a manual clock.)
async fn a_timed_out_attempts_late_result_counts_until_a_new_attempt_starts(pg: bool) {
    let (app, _, _dir) = app(pg).await;
    for id in ["late-1", "late-2"] {
        let mut t = ticket(id);
        t["sla"] = json!({"deadline": 1_900_000_000_000i64, "timeout_ms": 1_000, "max_retries": 2});
        app.post("/api/v1/tickets", &t).await;
        app.set_status(id, "RUNNING").await;
    }
    for id in ["late-1", "late-2"] {
        eventually("the attempt timed out (1.5 × timeout_ms)", 20, || async {
            let (_, t) = app.get(&format!("/api/v1/tickets/{id}")).await;
            t["status"] == "PENDING" && t["retry_count"] == 1
        })
        .await;
    }
    let result = json!({"status": "COMPLETED", "actual_duration_ms": 5_000});
    let (code, t) = app.patch("/api/v1/tickets/late-1/status", &result).await;
    assert_eq!((code, t["status"].as_str(), t["retry_count"].as_i64()), (200, Some("COMPLETED"), Some(0)), "{t}");
    let done = history(&app, "late-1").await.into_iter().find(|e| e["kind"] == "ticket.completed").unwrap();
    assert_eq!(done["details"]["late_result"]["attempt"], 1, "{done}");
    assert!(done["details"]["late_result"]["late_ms"].as_i64().is_some_and(|ms| ms >= 0), "{done}");

    app.set_status("late-2", "RUNNING").await; // the retry started
    let (code, body) = app.patch("/api/v1/tickets/late-2/status", &result).await;
    assert_eq!(code, 409, "the old attempt's result, after a new attempt started: {body}");
    let (_, t) = app.get("/api/v1/tickets/late-2").await;
    assert_eq!((t["status"].as_str(), t["retry_count"].as_i64()), (Some("RUNNING"), Some(1)));
}

async fn list_filters_and_pages(pg: bool) {
    let (app, _, _dir) = app(pg).await;
    for i in 0..5 {
        let mut t = ticket(&format!("list-{i}"));
        t["plan_id"] = json!(if i < 3 { "plan-a" } else { "plan-b" });
        t["created_at"] = json!(1_800_000_000_000i64 + i);
        t["priority"] = json!(if i == 0 { 9 } else { 4 });
        app.post("/api/v1/tickets", &t).await;
    }
    app.set_status("list-1", "RUNNING").await;
    let (code, page) = app.get("/api/v1/tickets?plan_id=plan-a&limit=2").await;
    assert_eq!(code, 200);
    assert_eq!((page["total"].as_i64(), page["limit"].as_i64(), page["offset"].as_i64()), (Some(3), Some(2), Some(0)));
    let ids: Vec<&str> = page["tickets"].as_array().unwrap().iter().map(|t| t["ticket_id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["list-2", "list-1"], "newest first");
    let (_, page) = app.get("/api/v1/tickets/?plan_id=plan-a&limit=2&offset=2").await;
    assert_eq!(page["tickets"][0]["ticket_id"], "list-0");
    let (_, page) = app.get("/api/v1/tickets?status=running").await;
    assert_eq!((page["total"].as_i64(), page["tickets"][0]["ticket_id"].as_str()), (Some(1), Some("list-1")));
    let (_, page) = app.get("/api/v1/tickets?priority=CRITICAL&task_type=deploy").await;
    assert_eq!(page["total"], 1);
    let (_, page) = app.get("/api/v1/tickets?priority=4").await;
    assert_eq!(page["total"], 4, "legacy integer priority filter");
    for bad in ["limit=0", "limit=1001", "offset=-1", "status=LOST", "limit=abc"] {
        let (code, body) = app.get(&format!("/api/v1/tickets?{bad}")).await;
        assert_eq!(code, 422, "{bad}: {body}");
    }
}

async fn compensation_creates_a_linked_ticket(pg: bool) {
    let (app, _, _dir) = app(pg).await;
    app.post("/api/v1/tickets", &ticket("comp-1")).await;
    let req = json!({"original_ticket_id": "comp-1", "reason": "rollout broke checkout"});
    let (code, body) = app.post("/api/v1/tickets/compensation", &req).await;
    assert_eq!(code, 409, "a PENDING ticket has nothing to compensate: {body}");
    app.set_status("comp-1", "RUNNING").await;
    let (code, body) = app.post("/api/v1/tickets/compensation", &req).await;
    assert_eq!(code, 201, "{body}");
    assert_eq!((body["original_ticket_id"].as_str(), body["status"].as_str()), (Some("comp-1"), Some("PENDING")));
    assert_eq!((body["action"].as_str(), body["reason"].as_str()), (Some("rollback"), Some("rollout broke checkout")));
    let comp_id = body["ticket_id"].as_str().unwrap().to_owned();
    let (_, original) = app.get("/api/v1/tickets/comp-1").await;
    assert_eq!(original["status"], "COMPENSATING");
    assert_eq!(original["compensation_ticket_id"], comp_id.as_str());
    let (code, comp) = app.get(&format!("/api/v1/tickets/{comp_id}")).await;
    assert_eq!(code, 200);
    assert_eq!(comp["task_type"], "COMPENSATE");
    assert_eq!(comp["metadata"]["original_ticket_id"], "comp-1");
    assert_eq!(comp["plan_id"], "plan-1");
    let (code, again) = app.post("/api/v1/tickets/compensation", &req).await;
    assert_eq!((code, again["ticket_id"].as_str()), (200, Some(comp_id.as_str())), "idempotent");
    let (code, _) = app.set_status("comp-1", "COMPENSATED").await;
    assert_eq!(code, 200);
    let (code, body) =
        app.post("/api/v1/tickets/compensation", &json!({"original_ticket_id": "nope", "reason": "x"})).await;
    assert_eq!(code, 404, "{body}");
}

async fn tokens_are_scoped_to_active_tickets(pg: bool) {
    let (app, _, _dir) = app(pg).await;
    app.post("/api/v1/tickets", &ticket("tok-1")).await;
    let (code, body) = app.post("/api/v1/tickets/tok-1/token", &json!({})).await;
    assert_eq!(code, 200, "{body}");
    let (code, body) = app.get("/api/v1/tickets/tok-1/token").await;
    assert_eq!(code, 200);
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["access_token"], body["token"]);
    assert_eq!(body["scopes"], json!(["ticket:read", "ticket:update", "task:deploy", "security:elevated"]));
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    validation.set_issuer(&["neural-hive-mind"]);
    validation.set_audience(&["worker-agents"]);
    let claims = jsonwebtoken::decode::<Value>(
        body["access_token"].as_str().unwrap(),
        &jsonwebtoken::DecodingKey::from_secret(JWT_SECRET.as_bytes()),
        &validation,
    )
    .expect("token verifies with JWT_SECRET_KEY")
    .claims;
    assert_eq!((claims["sub"].as_str(), claims["ticket_id"].as_str()), (Some("tok-1"), Some("tok-1")));
    assert_eq!(claims["exp"].as_i64(), body["expires_at"].as_i64());
    assert_eq!(body["expires_in"], 3600);
    app.set_status("tok-1", "CANCELLED").await;
    let (code, body) = app.get("/api/v1/tickets/tok-1/token").await;
    assert_eq!(code, 403, "{body}");
    let (code, _) = app.get("/api/v1/tickets/nope/token").await;
    assert_eq!(code, 404);
}

async fn if_match_guards_updates(pg: bool) {
    let (app, _, _dir) = app(pg).await;
    let res = app.req(reqwest::Method::POST, "/api/v1/tickets").json(&ticket("etag-1")).send().await.unwrap();
    assert_eq!(res.headers()["etag"], "\"1\"");
    let stale = app
        .req(reqwest::Method::PATCH, "/api/v1/tickets/etag-1/status")
        .header("if-match", "\"7\"")
        .json(&json!({"status": "RUNNING"}))
        .send()
        .await
        .unwrap();
    assert_eq!(stale.status().as_u16(), 412);
    let fresh = app
        .req(reqwest::Method::PATCH, "/api/v1/tickets/etag-1/status")
        .header("if-match", "\"1\"")
        .json(&json!({"status": "RUNNING"}))
        .send()
        .await
        .unwrap();
    assert_eq!(fresh.status().as_u16(), 200);
    assert_eq!(fresh.headers()["etag"], "\"2\"");
}

async fn acknowledged_writes_survive_a_restart(pg: bool) {
    let (store, _dir) = fresh_store(pg).await;
    let app = spawn_app(&store).await;
    app.post("/api/v1/tickets", &ticket("dur-1")).await;
    let (_, running) = app.set_status("dur-1", "RUNNING").await;
    drop(app);
    let app = spawn_app(&store).await;
    let (code, t) = app.get("/api/v1/tickets/dur-1").await;
    assert_eq!((code, &t), (200, &running));
    let (code, t) = app.set_status("dur-1", "COMPLETED").await;
    assert_eq!((code, t["version"].as_i64()), (200, Some(3)));
}

async fn concurrent_creates_of_one_id_create_it_once(pg: bool) {
    let (app, _, _dir) = app(pg).await;
    let body = ticket("race-1");
    let creates = (0..40).map(|_| app.post("/api/v1/tickets", &body));
    let codes: Vec<u16> = futures::future::join_all(creates).await.into_iter().map(|(c, _)| c).collect();
    assert_eq!(codes.iter().filter(|c| **c == 201).count(), 1, "{codes:?}");
    assert_eq!(codes.iter().filter(|c| **c == 200).count(), 39, "{codes:?}");
    let updates = (0..20).map(|_| app.set_status("race-1", "RUNNING"));
    let versions: Vec<i64> =
        futures::future::join_all(updates).await.into_iter().map(|(_, t)| t["version"].as_i64().unwrap()).collect();
    assert!(versions.iter().all(|v| *v == 2), "one transition, the rest no-ops: {versions:?}");
    let (_, page) = app.get("/api/v1/tickets").await;
    assert_eq!(page["total"], 1);
}

async fn operational_endpoints(pg: bool) {
    let (app, _, _dir) = app(pg).await;
    let (code, body) = app.get("/health").await;
    assert_eq!((code, body["status"].as_str()), (200, Some("healthy")));
    let (code, body) = app.get("/ready").await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["checks"]["store"]["backend"], if pg { "postgres" } else { "embedded" });
    let (code, spec) = app.get("/openapi.json").await;
    assert_eq!(code, 200);
    for path in [
        "/api/v1/tickets",
        "/api/v1/tickets/{ticket_id}",
        "/api/v1/tickets/{ticket_id}/status",
        "/api/v1/tickets/{ticket_id}/retry",
        "/api/v1/tickets/{ticket_id}/token",
        "/api/v1/tickets/compensation",
        "/health",
        "/ready",
    ] {
        assert!(spec["paths"][path].is_object(), "{path} missing from /openapi.json");
    }
    assert!(spec["components"]["schemas"]["Ticket"].is_object());
    app.post("/api/v1/tickets", &ticket("m-1")).await;
    app.get("/api/v1/tickets/m-1").await;
    let text = app.client.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(
        text.contains(r#"api_requests_total{endpoint="/api/v1/tickets/{ticket_id}",method="GET",status_code="200"} 1"#),
        "{text}"
    );
    assert!(text.contains("tickets_persisted_total 1"), "{text}");
    let scraped = app.client.get(format!("{}/metrics", app.metrics_base)).send().await.unwrap().text().await.unwrap();
    assert!(scraped.contains("ticket_actors_live"), "PROMETHEUS_PORT serves the same registry");
}

/// Send raw bytes (not necessarily JSON) with the service token.
async fn send_raw(app: &TestApp, method: reqwest::Method, path: &str, body: &'static [u8]) -> (u16, Value) {
    let res = app.req(method, path).header("content-type", "application/json").body(body).send().await.unwrap();
    common::status_json(res).await
}

/// Bad input found by fuzzing and schemathesis: every answer is a 4xx with a `detail`, never a 5xx, and the
/// extreme values the validation accepts (largest retry count, deadline, timeout) never overflow anything.
async fn edge_values_and_malformed_bodies_are_client_errors(pg: bool) {
    use reqwest::Method;
    let (app, _, _dir) = app(pg).await;
    let client_error = |what: &str, code: u16, body: &Value| {
        assert!((400..500).contains(&code), "{what}: {code} {body}");
        assert!(body["detail"].as_str().is_some_and(|d| !d.is_empty()), "{what}: no detail: {body}");
    };

    // Malformed bodies, on every endpoint that parses one.
    let bodies: [&'static [u8]; 6] = [b"{", b"[]", b"null", b"\xff\xfe", b"{\"status\": 5}", b"{\"url\": []}"];
    for (method, path) in [
        (Method::POST, "/api/v1/tickets"),
        (Method::PATCH, "/api/v1/tickets/x/status"),
        (Method::POST, "/api/v1/tickets/compensation"),
        (Method::POST, "/api/v1/webhooks"),
        (Method::PATCH, "/api/v1/webhooks/wh_missing"),
    ] {
        for body in bodies {
            let (code, answer) = send_raw(&app, method.clone(), path, body).await;
            if path.starts_with("/api/v1/webhooks/") && body == b"{\"status\": 5}" {
                // Unknown fields are ignored: an empty patch, so the subscription is looked up.
                assert_eq!(code, 404, "{answer}");
                continue;
            }
            client_error(&format!("{method} {path} {}", String::from_utf8_lossy(body)), code, &answer);
            assert_eq!(code, 422, "{method} {path}: {answer}");
        }
    }

    // Out-of-range numbers are 422 naming the field.
    for (pointer, value, field) in [
        ("/sla/deadline", json!(253_402_300_800_000i64), "sla.deadline"),
        ("/sla/deadline", json!(-1), "sla.deadline"),
        ("/sla/deadline", json!(1e300), "sla.deadline"),
        ("/sla/timeout_ms", json!(0), "sla.timeout_ms"),
        ("/sla/max_retries", json!(i64::from(i32::MAX) + 1), "sla.max_retries"),
        ("/retry_count", json!(-1), "retry_count"),
        ("/priority", json!(0), "priority"),
        ("/ticket_id", json!("x".repeat(256)), "ticket_id"),
    ] {
        let mut t = ticket("edge-bad");
        match t.pointer_mut(pointer) {
            Some(slot) => *slot = value,
            None => t[pointer.trim_start_matches('/')] = value,
        }
        let (code, body) = app.post("/api/v1/tickets", &t).await;
        client_error(pointer, code, &body);
        assert!(body["detail"].as_str().unwrap().contains(field), "{pointer}: {body}");
    }

    // The largest accepted values: a manual retry at the largest retry count is refused (409), not overflowed.
    let mut t = ticket("edge-max");
    t["status"] = json!("FAILED");
    t["retry_count"] = json!(i32::MAX);
    t["sla"] = json!({"deadline": 253_402_300_799_999i64, "timeout_ms": i64::MAX, "max_retries": i32::MAX});
    let (code, body) = app.post("/api/v1/tickets", &t).await;
    assert_eq!(code, 201, "{body}");
    let (code, body) = app.post("/api/v1/tickets/edge-max/retry", &json!({})).await;
    assert_eq!(code, 409, "{body}");
    assert!(body["detail"].as_str().unwrap().contains("maximum"), "{body}");
    let (code, body) =
        app.post("/api/v1/tickets/compensation", &json!({"original_ticket_id": "edge-max", "reason": "r"})).await;
    assert_eq!(code, 201, "{body}");
    let (code, comp) = app.get(&format!("/api/v1/tickets/{}", body["ticket_id"].as_str().unwrap())).await;
    assert_eq!(code, 200, "{comp}");
    assert_eq!(comp["sla"]["deadline"], 253_402_300_799_999i64, "capped at the latest timestamp");

    // A RUNNING ticket with a huge timeout, and status changes with bad fields.
    let mut t = ticket("edge-run");
    t["sla"] = json!({"deadline": 253_402_300_799_999i64, "timeout_ms": i64::MAX, "max_retries": 0});
    assert_eq!(app.post("/api/v1/tickets", &t).await.0, 201);
    assert_eq!(app.set_status("edge-run", "RUNNING").await.0, 200);
    for (body, field) in [
        (json!({"status": "COMPLETED", "actual_duration_ms": -1}), "actual_duration_ms"),
        (json!({"status": "COMPLETED", "actual_duration_ms": 1e20}), "actual_duration_ms"),
        (json!({"status": "SOON"}), "status"),
        (json!({}), "status"),
    ] {
        let (code, answer) = app.patch("/api/v1/tickets/edge-run/status", &body).await;
        assert_eq!(code, 422, "{body}: {answer}");
        assert!(answer["detail"].as_str().unwrap().contains(field), "{body}: {answer}");
    }
    let res = app.req(Method::PATCH, "/api/v1/tickets/edge-run/status").header("if-match", "\"x\"");
    let (code, body) = common::status_json(res.json(&json!({"status": "COMPLETED"})).send().await.unwrap()).await;
    assert_eq!(code, 422, "{body}");

    // Ids that cannot name a ticket: 404, and the answer does not echo a huge id whole.
    let huge = "a".repeat(4_000);
    let (code, body) = app.get(&format!("/api/v1/tickets/{huge}")).await;
    client_error("huge id", code, &body);
    assert_eq!(code, 404);
    assert!(body["detail"].as_str().unwrap().len() < 400, "{body}");
    let (code, body) = app.get("/api/v1/tickets/a%20b/history?offset=-1").await;
    client_error("history", code, &body);
    for query in ["offset=-1", "limit=0", "limit=abc", "offset=99999999999999999999"] {
        let (code, body) = app.get(&format!("/api/v1/tickets?{query}")).await;
        assert_eq!(code, 422, "{query}: {body}");
    }

    // The service is unharmed: the tickets are intact and new work goes through.
    let (code, body) = app.get("/api/v1/tickets/edge-run").await;
    assert_eq!((code, body["status"].as_str()), (200, Some("RUNNING")));
    assert_eq!(app.set_status("edge-run", "COMPLETED").await.0, 200);
}
