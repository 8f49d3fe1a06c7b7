//! Hostile input through every front end (REST, gRPC, the worker stream) against both stores: it is refused
//! with a client error naming the field, and nothing else is affected — no 503 for other clients, `/ready`
//! stays up. Also what a ticket token may do, the metric label set an anonymous client can grow, and one
//! process per PostgreSQL database.

use crate::common;

use common::{authed, fresh_store, spawn_app, ticket, TestApp};
use serde_json::{json, Value};
use ticket_supervisor::grpc::pb::{self, worker_update::Kind};
use tonic::Code;

crate::on_both_stores!(
    a_nul_character_is_refused_everywhere_and_harms_no_one_else,
    deep_or_large_free_form_json_is_refused_on_every_front_end,
    a_ticket_token_reports_work_but_does_not_compensate_or_cancel,
);

async fn app(postgres: bool) -> (TestApp, Option<tempfile::TempDir>) {
    let (store, dir) = fresh_store(postgres).await;
    (spawn_app(&store).await, dir)
}

/// The service is fine for everybody else: ready, and a normal create works.
async fn assert_unharmed(app: &TestApp, id: &str) {
    let (code, body) = app.get("/ready").await;
    assert_eq!(code, 200, "/ready: {body}");
    let (code, body) = app.post("/api/v1/tickets", &ticket(id)).await;
    assert_eq!(code, 201, "an ordinary create after the abuse: {body}");
}

fn detail(body: &Value) -> &str {
    body["detail"].as_str().unwrap_or_default()
}

async fn a_nul_character_is_refused_everywhere_and_harms_no_one_else(pg: bool) {
    let (app, _dir) = app(pg).await;
    let nul = "bad\u{0}value";
    // Creates: every kind of field.
    for (field, value) in [
        ("description", json!(nul)),
        ("plan_id", json!(nul)),
        ("error_message", json!(nul)),
        ("metadata", json!({ "team": nul })),
        ("parameters", json!({ "a": [{ "b": nul }] })),
        ("parameters", json!({ nul: 1 })),
    ] {
        let mut t = ticket("nul-create");
        t[field] = value;
        let (code, body) = app.post("/api/v1/tickets", &t).await;
        assert_eq!(code, 422, "{field}: {body}");
        assert!(detail(&body).contains("NUL"), "{field}: {body}");
    }
    let (code, _) = app.get("/api/v1/tickets/nul-create").await;
    assert_eq!(code, 404, "nothing was stored");

    // A worker's status update, with its own ticket token, once a second in the finding; here several in a row.
    assert_eq!(app.post("/api/v1/tickets", &ticket("nul-1")).await.0, 201);
    let token = app.ticket_token("nul-1").await;
    for _ in 0..5 {
        let res = app
            .client
            .patch(app.url("/api/v1/tickets/nul-1/status"))
            .bearer_auth(&token)
            .json(&json!({"status": "RUNNING", "error_message": nul}))
            .send()
            .await
            .unwrap();
        let (code, body) = common::status_json(res).await;
        assert_eq!(code, 422, "{body}");
        assert!(detail(&body).contains("error_message"), "{body}");
    }
    // A list filter.
    let (code, body) = app.get("/api/v1/tickets?plan_id=%00").await;
    assert_eq!(code, 422, "{body}");
    assert_unharmed(&app, "ok-after-rest").await;

    // gRPC: the unary update, a list, a create, a compensation.
    let mut grpc = app.grpc().await;
    let update = pb::UpdateTicketStatusRequest {
        ticket_id: "nul-1".into(),
        status: "RUNNING".into(),
        error_message: nul.into(),
        ..Default::default()
    };
    let e = grpc.update_ticket_status(authed(update, &token)).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    let list = pb::ListTicketsRequest { plan_id: nul.into(), ..Default::default() };
    let e = grpc.list_tickets(authed(list, &app.token)).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    let t = pb::ExecutionTicketProto { description: nul.into(), ..common::proto_ticket("nul-grpc") };
    let e = grpc.create_ticket(authed(pb::CreateTicketRequest { ticket: Some(t) }, &app.token)).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    let (code, body) =
        app.post("/api/v1/tickets/compensation", &json!({"original_ticket_id": "nul-1", "reason": nul})).await;
    assert_eq!(code, 422, "{body}");

    // The worker stream: the bad message is answered with its own error, the next one goes through.
    let bad = pb::WorkerUpdate {
        request_id: "1".into(),
        ticket_id: "nul-1".into(),
        kind: Kind::Status as i32,
        status: "RUNNING".into(),
        error_message: nul.into(),
        ..Default::default()
    };
    let mut progress = bad.clone();
    (progress.request_id, progress.kind, progress.progress, progress.message) =
        ("2".into(), Kind::Progress as i32, 0.5, nul.into());
    let mut good = bad.clone();
    (good.request_id, good.error_message) = ("3".into(), String::new());
    let stream = grpc.stream_status_updates(authed(futures::stream::iter(vec![bad, progress, good]), &token)).await;
    let mut results = stream.unwrap().into_inner();
    let mut got = Vec::new();
    while let Some(r) = results.message().await.unwrap() {
        got.push((r.request_id, r.ok, r.error_code));
    }
    let s = |v: &str| v.to_owned();
    assert_eq!(
        got,
        vec![(s("1"), false, s("INVALID_ARGUMENT")), (s("2"), false, s("INVALID_ARGUMENT")), (s("3"), true, s(""))]
    );
    assert_unharmed(&app, "ok-after-grpc").await;
}

/// `{"a": [[…[1]…]]}`, `depth` levels deep counting the object itself.
fn nested(depth: usize) -> Value {
    let mut v = json!(1);
    for _ in 1..depth {
        v = json!([v]);
    }
    json!({ "a": v })
}

async fn deep_or_large_free_form_json_is_refused_on_every_front_end(pg: bool) {
    let (app, _dir) = app(pg).await;
    let limit = actors::validation::MAX_JSON_DEPTH;
    // 125 deep (the finding), and one past the limit: refused with the field named.
    for depth in [125, limit + 1] {
        let mut t = ticket(&format!("deep-{depth}"));
        t["parameters"] = nested(depth);
        let (code, body) = app.post("/api/v1/tickets", &t).await;
        assert_eq!(code, 422, "{depth}: {body}");
        assert!(detail(&body).starts_with("parameters"), "{body}");
    }
    // At the limit: accepted, and read back whole.
    let mut t = ticket("deep-ok");
    t["parameters"] = nested(limit);
    let (code, body) = app.post("/api/v1/tickets", &t).await;
    assert_eq!(code, 201, "{body}");
    let (code, got) = app.get("/api/v1/tickets/deep-ok").await;
    assert_eq!((code, &got["parameters"]), (200, &nested(limit)));

    // Size: parameters and metadata beyond their bounds.
    let mut t = ticket("big-params");
    t["parameters"] = json!({ "blob": "x".repeat(actors::validation::MAX_PARAMETERS_BYTES) });
    let (code, body) = app.post("/api/v1/tickets", &t).await;
    assert_eq!((code, detail(&body).starts_with("parameters")), (422, true), "{body}");
    let mut t = ticket("big-meta");
    t["metadata"] = json!({ "blob": "x".repeat(actors::validation::MAX_METADATA_BYTES) });
    let (code, body) = app.post("/api/v1/tickets", &t).await;
    assert_eq!((code, detail(&body).starts_with("metadata")), (422, true), "{body}");

    // gRPC: the same rules (parameters as JSON text, metadata as a map of up to 4 MB).
    let mut grpc = app.grpc().await;
    let mut deep = common::proto_ticket("deep-grpc");
    deep.parameters_json = nested(limit + 1).to_string();
    let e = grpc.create_ticket(authed(pb::CreateTicketRequest { ticket: Some(deep.clone()) }, &app.token)).await;
    assert_eq!(e.unwrap_err().code(), Code::InvalidArgument);
    deep.parameters_json = "{}".into();
    deep.metadata = [("blob".to_owned(), "x".repeat(3 * 1024 * 1024))].into();
    let mut client = grpc.clone().max_encoding_message_size(8 << 20);
    let e = client.create_ticket(authed(pb::CreateTicketRequest { ticket: Some(deep) }, &app.token)).await;
    assert_eq!(e.unwrap_err().code(), Code::InvalidArgument);
    // A compensation's parameters too.
    let (code, body) = app
        .post(
            "/api/v1/tickets/compensation",
            &json!({"original_ticket_id": "deep-ok", "reason": "undo", "parameters": nested(limit + 1)}),
        )
        .await;
    assert_eq!(code, 422, "{body}");
    assert_unharmed(&app, "ok-after-json").await;
}

async fn a_ticket_token_reports_work_but_does_not_compensate_or_cancel(pg: bool) {
    let (app, _dir) = app(pg).await;
    assert_eq!(app.post("/api/v1/tickets", &ticket("worker-1")).await.0, 201);
    let token = app.ticket_token("worker-1").await;
    let patch = |status: &'static str| {
        let req = app.client.patch(app.url("/api/v1/tickets/worker-1/status")).bearer_auth(&token);
        async move { common::status_json(req.json(&json!({ "status": status })).send().await.unwrap()).await }
    };
    assert_eq!(patch("RUNNING").await.0, 200);
    for status in ["COMPENSATING", "COMPENSATED", "CANCELLED", "PENDING"] {
        let (code, body) = patch(status).await;
        assert_eq!(code, 403, "{status}: {body}");
        assert!(detail(&body).contains("service token"), "{body}");
    }
    let mut grpc = app.grpc().await;
    let req = pb::UpdateTicketStatusRequest {
        ticket_id: "worker-1".into(),
        status: "CANCELLED".into(),
        ..Default::default()
    };
    let e = grpc.update_ticket_status(authed(req.clone(), &token)).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    let msg = pb::WorkerUpdate {
        request_id: "c".into(),
        ticket_id: "worker-1".into(),
        kind: Kind::Status as i32,
        status: "COMPENSATING".into(),
        ..Default::default()
    };
    let stream = grpc.stream_status_updates(authed(futures::stream::iter(vec![msg]), &token)).await;
    let r = stream.unwrap().into_inner().message().await.unwrap().unwrap();
    assert_eq!((r.ok, r.error_code.as_str()), (false, "PERMISSION_DENIED"));
    // The worker finishes its work; the orchestrator (a service token) may still decide anything.
    let (code, body) = patch("COMPLETED").await;
    assert_eq!((code, body["status"].as_str()), (200, Some("COMPLETED")), "{body}");
    assert_eq!(app.post("/api/v1/tickets", &ticket("worker-2")).await.0, 201);
    let req = pb::UpdateTicketStatusRequest { ticket_id: "worker-2".into(), ..req };
    let t = grpc.update_ticket_status(authed(req, &app.token)).await.unwrap().into_inner().ticket.unwrap();
    assert_eq!(t.status, "CANCELLED");
}

/// Any token is a valid HTTP method: an anonymous client sending odd ones must not grow the metric label set.
#[tokio::test]
async fn odd_http_methods_share_one_metric_label() {
    let (app, _dir) = app(false).await;
    for i in 0..50 {
        let method = reqwest::Method::from_bytes(format!("PROBE{i}{}", "X".repeat(200)).as_bytes()).unwrap();
        let res = app.client.request(method, app.url("/api/v1/tickets")).send().await.unwrap();
        assert!(res.status().is_client_error(), "{}", res.status());
    }
    let scrape = app.client.get(format!("{}/metrics", app.metrics_base)).send().await.unwrap().text().await.unwrap();
    assert!(!scrape.contains("PROBE"), "an odd method became a label");
    let other: Vec<&str> =
        scrape.lines().filter(|l| l.starts_with("api_requests_total{") && l.contains("method=\"OTHER\"")).collect();
    assert!(!other.is_empty(), "odd methods are counted as OTHER");
}

/// The embedded store is single-node: a second process on the same `DATA_DIR` refuses to start with a clear
/// message (cluster mode needs PostgreSQL), and starts once the first has stopped.
#[tokio::test]
async fn a_second_process_on_one_data_dir_refuses_to_start() {
    let (store, _dir) = fresh_store(false).await;
    let first = spawn_app(&store).await;
    let err = common::try_spawn_app_with(&store, |_| {}).await.err().expect("a second process must not start");
    assert!(err.contains("single-node") && err.contains("PostgreSQL"), "{err}");
    assert_eq!(first.get("/ready").await.0, 200, "the first goes on");
    drop(first);
    // The first's runtime ends with its thread, a moment after the drop.
    let mut second = None;
    for _ in 0..50 {
        if let Ok(app) = common::try_spawn_app_with(&store, |_| {}).await {
            second = Some(app);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let second = second.expect("starts once the first stopped");
    assert_eq!(second.post("/api/v1/tickets", &ticket("after-the-first")).await.0, 201);
}

/// Wrong configuration fails at once with a clear message and a non-zero exit; `--help` and `--version` answer
/// without starting the service.
#[test]
fn the_server_binary_refuses_wrong_arguments_and_configuration() {
    use std::process::Command;
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ticket-supervisor"));
        cmd.args(args).env_clear().env("DATA_DIR", dir.path()).env("HTTP_PORT", "0").env("GRPC_PORT", "0");
        cmd.env("PROMETHEUS_PORT", "0").envs(env.iter().copied());
        // Every case here must end by itself: a service that starts would hang the test, so bound it.
        let mut child = cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while child.try_wait().unwrap().is_none() {
            if std::time::Instant::now() > deadline {
                child.kill().unwrap();
                panic!("{args:?} {env:?} started the service instead of exiting");
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let out = child.wait_with_output().unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        (out.status.code(), text)
    };
    let (code, help) = run(&["--help"], &[]);
    assert_eq!(code, Some(0), "{help}");
    for name in ["--http-port", "--database-url", "--log-level", "--sla-start-limit-critical-seconds", "8000"] {
        assert!(help.contains(name), "--help lists {name}: {help}");
    }
    let (code, version) = run(&["--version"], &[]);
    assert_eq!((code, version.trim()), (Some(0), format!("ticket-supervisor {}", env!("CARGO_PKG_VERSION")).as_str()));
    let (code, text) = run(&["--no-such-flag"], &[]);
    assert_eq!(code, Some(2), "{text}");
    for (env, says) in [
        (("LOG_LEVEL", "verbose"), "LOG_LEVEL"),
        (("DATABASE_URL", "mysql://u@db/tickets"), "DATABASE_URL must be a PostgreSQL URL"),
        (("ENVIRONMENT", "prod "), "JWT_SECRET_KEY must be set"),
    ] {
        let (code, text) = run(&[], &[env]);
        assert_ne!(code, Some(0), "{env:?}: {text}");
        assert!(text.contains(says), "{env:?}: {text}");
    }
    // A flag is the same as its variable.
    let (code, text) = run(&["--environment", "prodution"], &[]);
    assert!(code != Some(0) && text.contains("ENVIRONMENT=\"prodution\" is not known"), "{text}");
}

/// Each ticket is bounded, and so is a list page: a page of the largest tickets is cut at 8 MiB, its `limit`
/// saying how many it holds, so paging by `offset + limit` still reaches every ticket.
#[tokio::test]
async fn a_list_page_of_large_tickets_is_bounded_in_bytes() {
    let (app, _dir) = app(false).await;
    let blob = "x".repeat(actors::validation::MAX_PARAMETERS_BYTES - 100);
    for i in 0..40 {
        let mut t = ticket(&format!("big-{i:02}"));
        t["parameters"] = json!({ "blob": blob });
        assert_eq!(app.post("/api/v1/tickets", &t).await.0, 201);
    }
    let (mut offset, mut seen, mut pages) = (0, std::collections::BTreeSet::new(), 0);
    loop {
        let res = app.req(reqwest::Method::GET, &format!("/api/v1/tickets?limit=1000&offset={offset}")).send();
        let res = res.await.unwrap();
        let bytes = res.bytes().await.unwrap();
        assert!(bytes.len() <= actors::router::MAX_PAGE_BYTES + 64 * 1024, "a page of {} bytes", bytes.len());
        let page: Value = serde_json::from_slice(&bytes).unwrap();
        let tickets = page["tickets"].as_array().unwrap();
        let (limit, total) = (page["limit"].as_i64().unwrap(), page["total"].as_i64().unwrap());
        let last = offset + tickets.len() as i64 == total;
        assert!(limit == tickets.len() as i64 || (last && limit == 1000), "limit {limit} for {}", tickets.len());
        seen.extend(tickets.iter().map(|t| t["ticket_id"].as_str().unwrap().to_owned()));
        pages += 1;
        if tickets.is_empty() || offset + tickets.len() as i64 >= page["total"].as_i64().unwrap() {
            break;
        }
        offset += page["limit"].as_i64().unwrap();
    }
    assert_eq!(seen.len(), 40, "every ticket, once");
    assert!(pages > 1, "the tickets did not fit one page");
}

/// A process of a release before cluster mode holds its database alone (an exclusive advisory lock) and knows
/// nothing of leases or fences: a replica refuses to start beside it, saying how to get out, and starts once it
/// is gone.
#[tokio::test]
async fn a_replica_refuses_to_start_beside_a_process_of_the_release_before_cluster_mode() {
    use sqlx::{ConnectOptions as _, Connection as _};
    let (store, _dir) = fresh_store(true).await;
    let common::Store::Postgres(options) = &store else { unreachable!() };
    let mut old = options.connect().await.unwrap();
    let key = i64::from_be_bytes(*b"ticketsv");
    sqlx::query("SELECT pg_advisory_lock($1)").bind(key).execute(&mut old).await.unwrap();
    let err = common::try_spawn_app_with(&store, |_| {}).await.err().expect("refused beside the old process");
    assert!(err.contains("before cluster mode") && err.contains("Recreate"), "{err}");
    old.close().await.unwrap();
    let app = spawn_app(&store).await;
    assert_eq!(app.post("/api/v1/tickets", &ticket("after-the-old-one")).await.0, 201);
}
