//! The operator console (`/console`), the API reference (`/docs`) and the API the console added (keyset paging,
//! dependents, the event stream, `me`, `system`). The browser tests drive a real headless Chromium
//! (`common::browser`) against the real service; screenshots land in `target/console-screenshots/`.

use std::time::{Duration, Instant};

use fantoccini::key::Key;
use fantoccini::Locator;
use futures::StreamExt as _;
use serde_json::{json, Value};
use ticket_supervisor::config::AuthMode;
use ticket_supervisor::grpc::pb;

use crate::common::browser::browser;
use crate::common::{authed, fresh_store, spawn_app, spawn_app_with, ticket, TestApp};

fn with(id: &str, plan: &str, deps: &[&str]) -> Value {
    let mut t = ticket(id);
    t["plan_id"] = json!(plan);
    t["dependencies"] = json!(deps);
    // Due in ten minutes: the countdown and the SLA timeline have something ahead.
    t["sla"]["deadline"] = json!(chrono::Utc::now().timestamp_millis() + 600_000);
    t
}

async fn create(app: &TestApp, t: &Value) {
    let (code, body) = app.post("/api/v1/tickets", t).await;
    assert_eq!(code, 201, "{body}");
}

fn row(id: &str) -> String {
    format!("#tickets-table tr[data-ticket-id='{id}']")
}

/// Sign in with a service token; the table shows tickets created through REST; a status change made through
/// gRPC shows in the open table within a second, without a reload.
async fn table_follows_grpc_changes_live(postgres: bool) {
    let (store, _dir) = fresh_store(postgres).await;
    let app = spawn_app(&store).await;
    for id in ["live-1", "live-2", "live-3"] {
        create(&app, &with(id, "plan-live", &[])).await;
    }
    let b = browser().await;
    b.sign_in(&app.base, &app.token).await;
    b.wait_text(&format!("{} td:nth-child(3)", row("live-2")), "PENDING").await;
    b.wait_text(&row("live-1"), "live-1").await;
    b.wait_text("h1 .live", "live").await;
    b.screenshot(&format!("tickets-{}", if postgres { "postgres" } else { "embedded" })).await;
    // A marker a reload would lose.
    b.client.execute("window.__notReloaded = true; return true;", vec![]).await.unwrap();

    let mut grpc = app.grpc().await;
    let req =
        pb::UpdateTicketStatusRequest { ticket_id: "live-2".into(), status: "RUNNING".into(), ..Default::default() };
    grpc.update_ticket_status(authed(req, &app.token)).await.expect("gRPC status change");
    let changed = Instant::now();
    let cell = format!("{} td:nth-child(3)", row("live-2"));
    loop {
        let text = b.client.find(Locator::Css(&cell)).await.ok();
        let text = match text {
            Some(e) => e.text().await.unwrap_or_default(),
            None => String::new(),
        };
        if text.contains("RUNNING") {
            break;
        }
        // Nothing but the event stream refreshes this table, so a missed event never shows; 5 s leaves room for a
        // loaded machine.
        assert!(changed.elapsed() < Duration::from_secs(5), "the row still says {text:?} 5 s after the change");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let kept = b.client.execute("return window.__notReloaded === true;", vec![]).await.unwrap();
    assert_eq!(kept, json!(true), "the page was reloaded");
    b.close().await;
}

/// The ticket page shows the history in order; retry on a FAILED ticket moves it to PENDING.
#[tokio::test]
async fn ticket_page_shows_the_history_and_retries_a_failed_ticket() {
    let (store, _dir) = fresh_store(false).await;
    let app = spawn_app(&store).await;
    create(&app, &with("page-1", "plan-page", &[])).await;
    create(&app, &with("page-2", "plan-page", &["page-1"])).await;
    for status in ["RUNNING", "FAILED"] {
        assert_eq!(app.set_status("page-1", status).await.0, 200);
    }
    let b = browser().await;
    b.sign_in(&app.base, &app.token).await;
    b.client.goto(&format!("{}/console#/tickets/page-1", app.base)).await.unwrap();
    b.wait_text("#history", "ticket.failed").await;
    let entries = b.client.find_all(Locator::Css("#history > li")).await.unwrap();
    let mut kinds = Vec::new();
    for e in entries {
        let text = e.text().await.unwrap();
        kinds.push(text.split_whitespace().nth(2).unwrap_or_default().to_owned());
    }
    let wanted = ["ticket.created", "ticket.started", "ticket.failed"];
    let order: Vec<usize> = wanted
        .iter()
        .map(|k| kinds.iter().position(|x| x == k).unwrap_or_else(|| panic!("{k} in {kinds:?}")))
        .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "history out of order: {kinds:?}");
    // Dependents, as links with their status.
    b.wait_text(".related", "page-2").await;
    b.screenshot("ticket").await;

    b.click_confirmed("Retry").await;
    b.wait_text(".actions .message", "Retried: now PENDING").await;
    let (_, t) = app.get("/api/v1/tickets/page-1").await;
    assert_eq!(t["status"], "PENDING", "{t}");
    b.wait_text(".fields", "PENDING").await;
    b.close().await;
}

/// An action the API refuses shows the API's own message.
#[tokio::test]
async fn a_refused_action_shows_the_apis_message() {
    let (store, _dir) = fresh_store(false).await;
    let app = spawn_app(&store).await;
    create(&app, &with("refused-1", "plan-r", &[])).await;
    // What the API says to a retry of a PENDING ticket.
    let (code, body) = app.post("/api/v1/tickets/refused-1/retry", &json!({})).await;
    assert_eq!(code, 409, "{body}");
    let detail = body["detail"].as_str().unwrap().to_owned();
    let b = browser().await;
    b.sign_in(&app.base, &app.token).await;
    b.client.goto(&format!("{}/console#/tickets/refused-1", app.base)).await.unwrap();
    b.wait_text(".fields", "PENDING").await;
    b.click_confirmed("Retry").await;
    let shown = b.wait_text(".actions .message.error", "Refused (409)").await;
    assert!(shown.contains(&detail), "{shown:?} lacks the API's message {detail:?}");
    b.close().await;
}

/// A ticket token sees its own ticket, read only, and nothing else.
#[tokio::test]
async fn a_ticket_token_sees_only_its_ticket() {
    let (store, _dir) = fresh_store(false).await;
    let app = spawn_app(&store).await;
    create(&app, &with("mine", "plan-t", &[])).await;
    create(&app, &with("other", "plan-t", &[])).await;
    let token = app.ticket_token("mine").await;
    let b = browser().await;
    b.sign_in(&app.base, &token).await;
    b.wait_text("h1", "mine").await;
    b.wait_text(".fields", "PENDING").await;
    b.wait_text(".note", "read only").await;
    assert!(b.client.find(Locator::Css(".actions")).await.is_err(), "a ticket token was offered actions");
    assert!(!b.client.find(Locator::Css("#nav")).await.unwrap().is_displayed().await.unwrap(), "sections shown");
    // The tickets list is not offered: its address shows the token's own ticket.
    b.client.goto(&format!("{}/console#/tickets", app.base)).await.unwrap();
    b.wait_text("h1", "mine").await;
    // Another ticket: the API refuses, and the page says so.
    b.client.goto(&format!("{}/console#/tickets/other", app.base)).await.unwrap();
    b.wait_text(".message.error", "Refused (403)").await;
    b.screenshot("ticket-token").await;
    b.close().await;
}

/// Every action of the ticket page is reached with the Tab key, and Enter on one opens its confirmation.
#[tokio::test]
async fn keyboard_navigation_reaches_every_action() {
    let (store, _dir) = fresh_store(false).await;
    let app = spawn_app(&store).await;
    create(&app, &with("keys-1", "plan-k", &[])).await;
    let b = browser().await;
    b.sign_in(&app.base, &app.token).await;
    b.client.goto(&format!("{}/console#/tickets/keys-1", app.base)).await.unwrap();
    b.wait_text(".actions", "Mint worker token").await;
    let mut wanted: Vec<&str> = vec!["Retry", "Cancel", "compensation-reason", "Compensate", "Mint worker token"];
    for _ in 0..80 {
        b.client.active_element().await.unwrap().send_keys(&char::from(Key::Tab).to_string()).await.unwrap();
        let active = b.client.active_element().await.unwrap();
        let label = match active.attr("id").await.unwrap() {
            Some(id) if !id.is_empty() => id,
            _ => active.text().await.unwrap_or_default(),
        };
        wanted.retain(|w| *w != label.trim());
        if wanted.is_empty() {
            break;
        }
    }
    assert!(wanted.is_empty(), "not reached with Tab: {wanted:?}");
    // Focus is on the last action (Mint worker token): Enter opens the confirmation, Escape cancels it.
    b.client.active_element().await.unwrap().send_keys(&char::from(Key::Enter).to_string()).await.unwrap();
    b.client.wait().at_most(crate::common::browser::WAIT).for_element(Locator::Css("#confirm[open]")).await.unwrap();
    b.client.active_element().await.unwrap().send_keys(&char::from(Key::Escape).to_string()).await.unwrap();
    let deadline = Instant::now() + crate::common::browser::WAIT;
    while b.client.find(Locator::Css("#confirm[open]")).await.is_ok() {
        assert!(Instant::now() < deadline, "Escape did not close the confirmation");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let (_, t) = app.get("/api/v1/tickets/keys-1").await;
    assert_eq!(t["version"], 1, "a cancelled confirmation changed the ticket: {t}");
    b.close().await;
}

/// With AUTH_MODE=disabled the console opens without sign-in; `/docs` renders the API; every page renders.
#[tokio::test]
async fn docs_and_every_page_render_without_sign_in_when_auth_is_disabled() {
    let (store, _dir) = fresh_store(false).await;
    let app = spawn_app_with(&store, |s| {
        s.auth.mode = AuthMode::Disabled;
        s.webhooks.allowed_networks = "127.0.0.0/8".into();
    })
    .await;
    create(&app, &with("all-1", "plan-all", &[])).await;
    create(&app, &with("all-2", "plan-all", &["all-1"])).await;
    create(&app, &with("all-3", "plan-all", &["all-1", "all-2"])).await;
    let (code, body) =
        app.post("/api/v1/webhooks", &json!({"url": "http://127.0.0.1:9/hook", "events": ["ticket.completed"]})).await;
    assert_eq!(code, 201, "{body}");
    let b = browser().await;
    b.client.goto(&format!("{}/console", app.base)).await.unwrap();
    b.wait_text("#who", "AUTH_MODE=disabled").await;
    b.wait_text(&row("all-3"), "all-3").await;
    let pages = [
        ("plans", "#/plans/plan-all", "svg.graph", "all-3"),
        ("risk", "#/risk", "#risk-table", "all-1"),
        ("webhooks", "#/webhooks", ".subscription", "127.0.0.1:9/hook"),
        ("system", "#/system", "main", "Replicas and shards"),
    ];
    for (name, hash, css, text) in pages {
        b.client.goto(&format!("{}/console{hash}", app.base)).await.unwrap();
        b.wait_text(css, text).await;
        b.screenshot(name).await;
    }
    // A delivery that fails (nothing listens on port 9): each attempt with its error and latency.
    assert_eq!(app.set_status("all-1", "RUNNING").await.0, 200);
    assert_eq!(app.set_status("all-1", "COMPLETED").await.0, 200);
    let sub = body["id"].as_str().unwrap().to_owned();
    crate::common::eventually("an attempt recorded", 20, || async {
        let (_, page) = app.get(&format!("/api/v1/webhooks/{sub}/deliveries")).await;
        page["deliveries"][0]["attempts"].as_i64() >= Some(1)
    })
    .await;
    b.client.goto(&format!("{}/console#/webhooks", app.base)).await.unwrap();
    b.click("Recent deliveries").await;
    b.click("Attempts").await;
    let attempt = b.text_where("table.attempts", |t| t.contains(" ms")).await;
    assert!(attempt.contains("refused") || attempt.contains("error"), "the attempt's error: {attempt}");
    b.screenshot("webhook-attempts").await;
    // Both pages hold the caller's token: neither may be framed or have its types sniffed.
    for page in ["/console", "/docs", "/docs/init.js"] {
        let res = app.client.get(app.url(page)).send().await.unwrap();
        let csp = res.headers().get("content-security-policy").map(|v| v.to_str().unwrap().to_owned());
        assert!(csp.as_deref().is_some_and(|c| c.contains("frame-ancestors 'none'")), "{page}: {csp:?}");
        assert_eq!(res.headers()["x-content-type-options"], "nosniff", "{page}");
    }
    b.client.goto(&format!("{}/docs", app.base)).await.unwrap();
    b.wait_text(".swagger-ui .info .title", "Execution Ticket Service").await;
    b.wait_text(".swagger-ui", "/api/v1/events/stream").await;
    b.screenshot("docs").await;
    b.close().await;
}

crate::on_both_stores!(table_follows_grpc_changes_live, keyset_paging_and_filters);

/// Keyset pages cover every ticket once, in list order, ties included; `id_prefix`, `order=next_due` and
/// `/dependents` select what they say; bad cursors are 422; offset paging still answers `total`.
async fn keyset_paging_and_filters(postgres: bool) {
    let (store, _dir) = fresh_store(postgres).await;
    let app = spawn_app(&store).await;
    // Same created_at for all: the order and the cursor rest on the id tie-break.
    let at = chrono::Utc::now().timestamp_millis();
    let mut ids = Vec::new();
    for i in 0..7 {
        let mut t = with(&format!("k-{i}"), "plan-k", if i > 0 { &["k-0"] } else { &[] });
        t["created_at"] = json!(at);
        create(&app, &t).await;
        ids.push(format!("k-{i}"));
    }
    create(&app, &with("other-1", "plan-o", &[])).await;
    let mut seen = Vec::new();
    let mut cursor = String::new();
    loop {
        let (code, page) = app.get(&format!("/api/v1/tickets?plan_id=plan-k&limit=3&cursor={cursor}")).await;
        assert_eq!(code, 200, "{page}");
        assert!(page.get("total").is_none(), "keyset pages are not counted: {page}");
        seen.extend(page["tickets"].as_array().unwrap().iter().map(|t| t["ticket_id"].as_str().unwrap().to_owned()));
        match page["next_cursor"].as_str() {
            Some(c) => cursor = c.to_owned(),
            None => break,
        }
    }
    assert_eq!(seen, ids, "keyset pages, in order, each ticket once");
    let (_, page) = app.get("/api/v1/tickets?plan_id=plan-k&limit=3").await;
    assert_eq!((page["total"].as_i64(), page["tickets"].as_array().unwrap().len()), (Some(7), 3), "{page}");
    let (_, page) = app.get("/api/v1/tickets?id_prefix=other").await;
    let got: Vec<&str> = page["tickets"].as_array().unwrap().iter().map(|t| t["ticket_id"].as_str().unwrap()).collect();
    assert_eq!(got, ["other-1"]);
    let (_, page) = app.get("/api/v1/tickets?order=next_due&limit=1000").await;
    let dues: Vec<i64> =
        page["tickets"].as_array().unwrap().iter().map(|t| t["sla_state"]["next_due_at"].as_i64().unwrap()).collect();
    assert_eq!(dues.len(), 8, "{page}");
    assert!(dues.windows(2).all(|w| w[0] <= w[1]), "soonest first: {dues:?}");
    let (code, deps) = app.get("/api/v1/tickets/k-0/dependents").await;
    assert_eq!((code, deps.as_array().map(Vec::len)), (200, Some(6)), "{deps}");
    assert_eq!(app.get("/api/v1/tickets/nope/dependents").await.0, 404);
    for bad in ["cursor=x", "cursor=&offset=3", "order=sideways", "order=next_due&cursor="] {
        let (code, body) = app.get(&format!("/api/v1/tickets?{bad}")).await;
        assert_eq!(code, 422, "{bad}: {body}");
    }
}

/// The event stream: snapshot then changes, as server-sent events; a ticket token may follow only its own
/// ticket; `me` says who the caller is; `system` is for service tokens.
#[tokio::test]
async fn event_stream_me_and_system() {
    let (store, _dir) = fresh_store(false).await;
    let app = spawn_app(&store).await;
    create(&app, &with("sse-1", "plan-s", &[])).await;
    create(&app, &with("sse-2", "plan-s", &[])).await;
    let mut res = app.req(reqwest::Method::GET, "/api/v1/events/stream?ticket_id=sse-1").send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "text/event-stream");
    let mut text = String::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !text.contains("event: snapshot") {
        let chunk = tokio::time::timeout_at(deadline.into(), res.chunk()).await.expect("snapshot in time").unwrap();
        text.push_str(&String::from_utf8_lossy(&chunk.expect("stream open")));
    }
    assert_eq!(app.set_status("sse-2", "RUNNING").await.0, 200);
    assert_eq!(app.set_status("sse-1", "RUNNING").await.0, 200);
    while !text.contains("event: ticket.started") {
        let chunk = tokio::time::timeout_at(deadline.into(), res.chunk()).await.expect("event in time").unwrap();
        text.push_str(&String::from_utf8_lossy(&chunk.expect("stream open")));
    }
    let data: Vec<Value> =
        text.lines().filter_map(|l| l.strip_prefix("data: ")).map(|d| serde_json::from_str(d).unwrap()).collect();
    assert!(data.iter().all(|d| d["ticket"]["ticket_id"] == "sse-1"), "only the followed ticket: {data:?}");
    let started = data.iter().find(|d| d["event_type"] == "ticket.started").unwrap();
    assert_eq!((&started["from_status"], &started["actor"]), (&json!("PENDING"), &json!("orchestrator")));
    drop(res);

    let token = app.ticket_token("sse-1").await;
    let follow = |q: &str| app.client.get(app.url(&format!("/api/v1/events/stream?{q}"))).bearer_auth(&token).send();
    assert_eq!(follow("ticket_id=sse-2").await.unwrap().status(), 403);
    assert_eq!(follow("plan_id=plan-s").await.unwrap().status(), 403);
    assert_eq!(follow("ticket_id=sse-1").await.unwrap().status(), 200);
    let (code, body) = app.get("/api/v1/events/stream?status=SIDEWAYS").await;
    assert_eq!(code, 422, "{body}");
    assert_eq!(app.client.get(app.url("/api/v1/events/stream")).send().await.unwrap().status(), 401);

    let me = |t: &str| app.client.get(app.url("/api/v1/me")).bearer_auth(t.to_owned()).send();
    let body: Value = me(&token).await.unwrap().json().await.unwrap();
    assert_eq!((&body["kind"], &body["ticket_id"]), (&json!("ticket"), &json!("sse-1")), "{body}");
    let body: Value = me(&app.token).await.unwrap().json().await.unwrap();
    assert_eq!(body["kind"], "service", "{body}");
    let (code, system) = app.get("/api/v1/system").await;
    assert_eq!(code, 200, "{system}");
    assert_eq!(system["replicas"][0]["shards"].as_array().unwrap().len(), 256, "{system}");
    assert_eq!(system["readiness"]["checks"]["store"]["status"], "ok", "{system}");
    let res = app.client.get(app.url("/api/v1/system")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(res.status(), 403);
    // The document lists the new operations.
    let (_, doc) = app.get("/openapi.json").await;
    for path in ["/api/v1/events/stream", "/api/v1/me", "/api/v1/system", "/api/v1/tickets/{ticket_id}/dependents"] {
        assert!(doc["paths"].get(path).is_some(), "{path} missing from /openapi.json");
    }
    assert!(doc["paths"]["/api/v1/events/stream"]["get"]["responses"]["200"]["content"]
        .get("text/event-stream")
        .is_some());
}

/// A graceful stop ends an open event stream with an `error` event (UNAVAILABLE: reconnect elsewhere) instead
/// of holding the stop or cutting the stream without a word.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_ends_the_event_stream_with_unavailable() {
    let (store, _dir) = fresh_store(false).await;
    let app = spawn_app(&store).await;
    create(&app, &with("bye-1", "plan-b", &[])).await;
    let mut res = app.req(reqwest::Method::GET, "/api/v1/events/stream?ticket_id=bye-1").send().await.unwrap();
    assert_eq!(res.status(), 200);
    let mut text = String::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !text.contains("event: snapshot") {
        let chunk = tokio::time::timeout_at(deadline.into(), res.chunk()).await.expect("snapshot in time").unwrap();
        text.push_str(&String::from_utf8_lossy(&chunk.expect("stream open")));
    }
    // Stop the service (dropping the app stops it as SIGTERM does, and waits) while the stream is read.
    let stopped = Instant::now();
    let stop = tokio::task::spawn_blocking(move || drop(app));
    while let Ok(Some(chunk)) = tokio::time::timeout_at(deadline.into(), res.chunk()).await.expect("ended in time") {
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    stop.await.unwrap();
    let last = text.split("\n\n").filter(|f| !f.trim().is_empty()).last().unwrap_or_default().to_owned();
    assert!(last.contains("event: error") && last.contains("UNAVAILABLE"), "the last frame: {last:?}\n{text}");
    assert!(stopped.elapsed() < Duration::from_secs(15), "the stream held the stop for {:?}", stopped.elapsed());
}

/// The event stream's snapshot covers every matching ticket when they span several pages (keyset pages of
/// 1 000: none skipped, none twice).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_snapshot_spans_pages() {
    let (store, _dir) = fresh_store(false).await;
    let app = spawn_app(&store).await;
    let n = 1_050;
    let creates = (0..n).map(|i| {
        let app = &app;
        async move { create(app, &with(&format!("snap-{i:04}"), "plan-snap", &[])).await }
    });
    // 64 at a time: connections beyond HTTP_MAX_CONNECTIONS (256) are refused 503.
    futures::stream::iter(creates).buffer_unordered(64).collect::<Vec<()>>().await;
    let mut res = app.req(reqwest::Method::GET, "/api/v1/events/stream?plan_id=plan-snap").send().await.unwrap();
    assert_eq!(res.status(), 200);
    let (mut text, mut seen) = (String::new(), std::collections::HashSet::new());
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen.len() < n {
        let chunk = tokio::time::timeout_at(deadline.into(), res.chunk()).await.expect("the snapshot in time").unwrap();
        text.push_str(&String::from_utf8_lossy(&chunk.expect("stream open")));
        while let Some(end) = text.find("\n\n") {
            let frame: String = text.drain(..end + 2).collect();
            if let Some(data) = frame.lines().find_map(|l| l.strip_prefix("data: ")) {
                let event: Value = serde_json::from_str(data).unwrap();
                assert_eq!(event["event_type"], "snapshot", "{event}");
                let id = event["ticket"]["ticket_id"].as_str().unwrap().to_owned();
                assert!(seen.insert(id.clone()), "{id} sent twice");
            }
        }
    }
    assert_eq!(seen.len(), n);
}
