//! kill -9 right after an acknowledged write: the real binary, restarted on the same store, still has it.
//! A deadline that passes while the service is down is breached once after the restart, and never again, and
//! the breach reaches the webhook subscribed to it.
//! Also the outage path: PostgreSQL refusing connections makes /ready and ticket calls answer 503, and the
//! service recovers by itself when the database is back.

use crate::common;

use std::time::Duration;

use common::{fresh_database, status_json, ticket};
use serde_json::{json, Value};
use sqlx::{ConnectOptions, Executor};
use ticket_supervisor::grpc::pb;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Child;
use tonic_health::pb::health_check_response::ServingStatus;

/// The service binary with `env`, and the HTTP port it logged.
async fn start_binary(env: &[(&str, String)]) -> (Child, u16) {
    let (child, ports) = common::binary::start(env).await;
    (child, ports.http)
}

/// An HTTP client that sends a service token.
fn service_client() -> reqwest::Client {
    let settings = common::settings(&common::Store::Embedded(std::path::PathBuf::new()));
    let token =
        ticket_supervisor::auth::token::service_token(common::SERVICE_SECRET, &settings.auth, "crash", 600).unwrap();
    let auth = format!("Bearer {token}").parse().unwrap();
    reqwest::Client::builder()
        .default_headers([(reqwest::header::AUTHORIZATION, auth)].into_iter().collect())
        .build()
        .unwrap()
}

/// How many SLA rules of `kind` this process fired, from its /metrics.
async fn sla_fired(client: &reqwest::Client, port: u16, kind: &str) -> u64 {
    let text = client.get(format!("http://127.0.0.1:{port}/metrics")).send().await.unwrap().text().await.unwrap();
    let label = format!("kind=\"{kind}\"");
    text.lines()
        .filter(|l| l.starts_with("ticket_sla_events_total{") && l.contains(&label))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum()
}

async fn kill_after_acknowledged_writes(env: Vec<(&str, String)>) {
    let client = service_client();
    let (mut child, port) = start_binary(&env).await;
    let base = format!("http://127.0.0.1:{port}/api/v1/tickets");
    let mut acknowledged = Vec::new();
    for i in 0..20 {
        let res = client.post(&base).json(&ticket(&format!("crash-{i}"))).send().await.unwrap();
        assert_eq!(res.status().as_u16(), 201);
        acknowledged.push(status_json(res).await.1);
    }
    let res = client.patch(format!("{base}/crash-0/status")).json(&json!({"status": "RUNNING"})).send().await.unwrap();
    let (code, running) = status_json(res).await;
    assert_eq!(code, 200);
    acknowledged[0] = running;
    child.start_kill().expect("SIGKILL");
    child.wait().await.unwrap();

    let (_child, port) = start_binary(&env).await;
    let base = format!("http://127.0.0.1:{port}/api/v1/tickets");
    for expected in &acknowledged {
        let id = expected["ticket_id"].as_str().unwrap();
        let (code, got) = status_json(client.get(format!("{base}/{id}")).send().await.unwrap()).await;
        assert_eq!((code, &got), (200, expected), "acknowledged write of {id} lost");
    }
    let (_, page) = status_json(client.get(format!("{base}?limit=1000")).send().await.unwrap()).await;
    assert_eq!(page["total"], 20, "no duplicates, nothing half-written");
}

async fn deadline_passes_while_down(env: Vec<(&str, String)>) {
    let client = service_client();
    let mut env = env;
    env.push(("SLA_WARNING_FRACTIONS", String::new()));
    let (mut child, port) = start_binary(&env).await;
    let now = chrono::Utc::now().timestamp_millis();
    let mut t = ticket("breach-1");
    // Far enough ahead that a slow machine still kills the service before the deadline.
    t["sla"]["deadline"] = json!(now + 5_000);
    let res = client.post(format!("http://127.0.0.1:{port}/api/v1/tickets")).json(&t).send().await.unwrap();
    assert_eq!(res.status().as_u16(), 201);
    child.start_kill().unwrap();
    child.wait().await.unwrap();
    assert!(chrono::Utc::now().timestamp_millis() < now + 5_000, "killed after the deadline: the test proves nothing");
    // The service is down while the deadline passes.
    sleep_until(now + 5_500).await;

    let (mut child, port) = start_binary(&env).await;
    let url = format!("http://127.0.0.1:{port}/api/v1/tickets/breach-1");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let breached_at = loop {
        let (_, got) = status_json(client.get(&url).send().await.unwrap()).await;
        if let Some(at) = got["sla_state"]["breached_at"].as_i64() {
            break at;
        }
        assert!(std::time::Instant::now() < deadline, "no breach after the restart: {got}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(breached_at >= now + 5_000, "never early");
    assert_eq!(sla_fired(&client, port, "breach").await, 1, "fired once after the restart");
    child.start_kill().unwrap();
    child.wait().await.unwrap();

    // Another restart: recorded as fired, so nothing fires again.
    let (_child, port) = start_binary(&env).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let url = format!("http://127.0.0.1:{port}/api/v1/tickets/breach-1");
    let (_, got) = status_json(client.get(&url).send().await.unwrap()).await;
    assert_eq!(got["sla_state"]["breached_at"].as_i64(), Some(breached_at));
    assert_eq!(sla_fired(&client, port, "breach").await, 0);
}

/// A loopback webhook receiver: answers 200 to every request and keeps each request's event type and ticket.
pub(crate) async fn hook_receiver() -> (u16, std::sync::Arc<std::sync::Mutex<Vec<(String, String)>>>) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = std::sync::Arc::clone(&got);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let seen = std::sync::Arc::clone(&seen);
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let mut read = BufReader::new(read);
                loop {
                    let mut line = String::new();
                    if read.read_line(&mut line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    let mut length = 0;
                    loop {
                        let mut header = String::new();
                        read.read_line(&mut header).await.unwrap();
                        match header.trim_end().split_once(':') {
                            Some((k, v)) if k.eq_ignore_ascii_case("content-length") => {
                                length = v.trim().parse().unwrap()
                            }
                            Some(_) => {}
                            None => break,
                        }
                    }
                    let mut body = vec![0; length];
                    read.read_exact(&mut body).await.unwrap();
                    let body: Value = serde_json::from_slice(&body).unwrap_or_default();
                    let ticket = body["data"]["ticket"]["ticket_id"].as_str().unwrap_or_default().to_owned();
                    seen.lock().unwrap().push((body["type"].as_str().unwrap_or_default().to_owned(), ticket));
                    write.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").await.unwrap();
                }
            });
        }
    });
    (port, got)
}

/// Deadlines pass while the service is down; the breaches fired right after the restart (as soon as the timers
/// are armed) must find the webhook subscriptions already loaded, or they commit without a delivery.
async fn breaches_at_restart_are_delivered(env: Vec<(&str, String)>) {
    const TICKETS: usize = 50;
    let client = service_client();
    let mut env = env;
    env.push(("SLA_WARNING_FRACTIONS", String::new()));
    env.push(("WEBHOOK_ALLOWED_NETWORKS", "127.0.0.0/8".into()));
    let (hook_port, received) = hook_receiver().await;
    let (mut child, port) = start_binary(&env).await;
    let api = format!("http://127.0.0.1:{port}/api/v1");
    let body = json!({"url": format!("http://127.0.0.1:{hook_port}/hook"), "events": ["ticket.sla_breached"]});
    let (code, sub) = posted(&client, &format!("{api}/webhooks"), &body).await;
    assert_eq!(code, 201, "{sub}");
    // Far enough ahead that a slow machine still creates them all and kills the service before the deadline.
    let deadline = chrono::Utc::now().timestamp_millis() + 10_000;
    for i in 0..TICKETS {
        let mut t = ticket(&format!("hooked-{i}"));
        t["sla"]["deadline"] = json!(deadline);
        let (code, body) = posted(&client, &format!("{api}/tickets"), &t).await;
        assert_eq!(code, 201, "{body}");
    }
    child.start_kill().unwrap();
    child.wait().await.unwrap();
    assert!(chrono::Utc::now().timestamp_millis() < deadline, "killed after the deadline: the test proves nothing");
    // The service is down while the deadlines pass.
    sleep_until(deadline + 500).await;

    let (_child, port) = start_binary(&env).await;
    let api = format!("http://127.0.0.1:{port}/api/v1");
    let breached = |i: usize| {
        let (client, url) = (client.clone(), format!("{api}/tickets/hooked-{i}"));
        async move { status_json(client.get(url).send().await.unwrap()).await.1["sla_state"]["breached_at"].is_i64() }
    };
    common::eventually("every deadline breached after the restart", 20, || async {
        for i in 0..TICKETS {
            if !breached(i).await {
                return false;
            }
        }
        true
    })
    .await;
    assert_eq!(sla_fired(&client, port, "breach").await, TICKETS as u64, "each fired once, after the restart");
    let deliveries = format!("{api}/webhooks/{}/deliveries?limit=1000", sub["id"].as_str().unwrap());
    let (_, page) = status_json(client.get(&deliveries).send().await.unwrap()).await;
    assert_eq!(page["total"], TICKETS, "one delivery enqueued per breach: {page}");
    common::eventually("every breach received by the subscriber", 20, || async {
        received.lock().unwrap().iter().collect::<std::collections::HashSet<_>>().len() == TICKETS
    })
    .await;
    assert!(received.lock().unwrap().iter().all(|(kind, _)| kind == "ticket.sla_breached"));
}

#[tokio::test]
async fn breaches_fired_at_restart_get_their_webhook_deliveries() {
    let dir = tempfile::tempdir().unwrap();
    breaches_at_restart_are_delivered(embedded(&dir)).await;
}

#[tokio::test]
async fn breaches_fired_at_restart_get_their_webhook_deliveries_on_postgres() {
    breaches_at_restart_are_delivered(postgres().await).await;
}

/// POST `body` as a client should: a 503 (a store call that found no free connection in time, on a loaded
/// machine) says to retry after a pause, and the client does, a few times. What the tests assert is what the
/// service did with the requests it accepted.
/// A create repeated after a 503 may meet its own first attempt (committed, the answer lost): then 200, the
/// idempotent repeat, stands for 201.
async fn posted(client: &reqwest::Client, url: &str, body: &Value) -> (u16, Value) {
    let mut retried = false;
    for _ in 0..5 {
        let (code, answer) = status_json(client.post(url).json(body).send().await.unwrap()).await;
        match code {
            503 => retried = true,
            200 if retried => return (201, answer),
            _ => return (code, answer),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    status_json(client.post(url).json(body).send().await.unwrap()).await
}

/// The binary's environment for an embedded store in `dir`.
fn embedded(dir: &tempfile::TempDir) -> Vec<(&'static str, String)> {
    vec![("DATA_DIR", dir.path().display().to_string())]
}

/// The binary's environment for a fresh PostgreSQL database.
async fn postgres() -> Vec<(&'static str, String)> {
    let db = fresh_database().await;
    let url = format!("postgres://postgres@{}:{}/{}", db.get_host(), db.get_port(), db.get_database().unwrap());
    vec![("DATABASE_URL", url)]
}

#[tokio::test]
async fn a_deadline_that_passes_while_down_is_breached_once_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    deadline_passes_while_down(embedded(&dir)).await;
}

#[tokio::test]
async fn a_deadline_that_passes_while_down_is_breached_once_after_restart_on_postgres() {
    deadline_passes_while_down(postgres().await).await;
}

#[tokio::test]
async fn kill_9_loses_no_acknowledged_write_on_the_embedded_store() {
    let dir = tempfile::tempdir().unwrap();
    kill_after_acknowledged_writes(embedded(&dir)).await;
}

#[tokio::test]
async fn kill_9_loses_no_acknowledged_write_on_postgres() {
    kill_after_acknowledged_writes(postgres().await).await;
}

/// The gRPC health status of the service, once it changed from the last one seen (it is refreshed every 5 s).
/// Sleep until the wall clock reads `epoch_ms`.
async fn sleep_until(epoch_ms: i64) {
    let left = epoch_ms - chrono::Utc::now().timestamp_millis();
    tokio::time::sleep(Duration::from_millis(left.max(0) as u64)).await;
}

/// The gRPC health status of the ticket service once it is `expected`, or the last one seen after 20 s (the
/// server re-checks its store every 5 s, with a ping of up to 2 s).
async fn grpc_health(app: &common::TestApp, expected: ServingStatus) -> i32 {
    let channel = tonic::transport::Channel::from_shared(format!("http://127.0.0.1:{}", app.grpc_port))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let mut watch = health
        .watch(tonic_health::pb::HealthCheckRequest { service: "ticket_service.TicketService".into() })
        .await
        .unwrap()
        .into_inner();
    let mut last = watch.message().await.unwrap().unwrap().status;
    let until = tokio::time::Instant::now() + Duration::from_secs(20);
    while last != expected as i32 {
        match tokio::time::timeout_at(until, watch.message()).await {
            Ok(Ok(Some(next))) => last = next.status,
            _ => break,
        }
    }
    last
}

#[tokio::test]
async fn a_postgres_outage_answers_503_and_recovers_without_restart() {
    let db = fresh_database().await;
    let name = db.get_database().unwrap().to_owned();
    let app = common::spawn_app(&common::Store::Postgres(Box::new(db.clone()))).await;
    assert_eq!(app.post("/api/v1/tickets", &ticket("out-1")).await.0, 201);

    // Take the database away: refuse new connections and cut the service's existing ones.
    let mut admin = db.clone().database("postgres").connect().await.unwrap();
    admin.execute(format!("ALTER DATABASE \"{name}\" ALLOW_CONNECTIONS false").as_str()).await.unwrap();
    admin
        .execute(format!("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'").as_str())
        .await
        .unwrap();

    let (code, body) = app.get("/ready").await;
    assert_eq!(code, 503, "{body}");
    assert_eq!(body["checks"]["store"]["status"], "error");
    // The driver's text (host, database, server messages) stays in the log; no caller is shown it.
    let no_driver_text = |body: &Value| {
        let text = body.to_string();
        !text.contains(&name) && !text.contains("127.0.0.1") && !text.contains("does not allow connections")
    };
    assert!(no_driver_text(&body), "{body}");
    let started = std::time::Instant::now();
    let (code, body) = app.post("/api/v1/tickets", &ticket("out-2")).await;
    assert_eq!(code, 503, "{body}");
    assert!(no_driver_text(&body), "{body}");
    assert!(body["detail"].as_str().unwrap().contains("retry"), "{body}");
    let (code, _) = app.set_status("out-1", "RUNNING").await;
    assert_eq!(code, 503);
    assert!(started.elapsed() < Duration::from_secs(15), "fails fast, took {:?}", started.elapsed());
    let req = common::authed(pb::GetTicketRequest { ticket_id: "out-3".into() }, &app.token);
    let err = app.grpc().await.get_ticket(req).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "gRPC says UNAVAILABLE: {err:?}");
    assert!(!err.message().contains(&name) && !err.message().contains("127.0.0.1"), "{err:?}");
    assert_eq!(
        grpc_health(&app, ServingStatus::NotServing).await,
        ServingStatus::NotServing as i32,
        "gRPC health follows the store"
    );

    admin.execute(format!("ALTER DATABASE \"{name}\" ALLOW_CONNECTIONS true").as_str()).await.unwrap();
    assert_eq!(grpc_health(&app, ServingStatus::Serving).await, ServingStatus::Serving as i32);
    let (code, _) = app.get("/ready").await;
    assert_eq!(code, 200);
    assert_eq!(app.post("/api/v1/tickets", &ticket("out-2")).await.0, 201);
    let (code, t) = app.set_status("out-1", "RUNNING").await;
    assert_eq!((code, t["version"].as_i64()), (200, Some(2)), "the refused update left nothing behind");
}
