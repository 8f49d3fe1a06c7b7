//! Issue #17 ("Hardening"): what one client — with a token or without — may hold on to. Cancelled watches end at
//! once and watchers are bounded; streams end when their token expires; silent connections are closed and the
//! number of connections is bounded on both ports; a REST body that trickles in is answered 408.

use crate::common;

use std::time::{Duration, Instant};

use common::{authed, eventually, fresh_store, proto_ticket, spawn_app_with, TestApp};
use ticket_supervisor::config::Settings;
use ticket_supervisor::grpc::pb::{self, worker_update::Kind};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tonic::Code;

async fn app_with(adjust: impl FnOnce(&mut Settings)) -> (TestApp, Option<tempfile::TempDir>) {
    let (store, dir) = fresh_store(false).await;
    (spawn_app_with(&store, adjust).await, dir)
}

async fn create(app: &TestApp, id: &str) {
    let req = pb::CreateTicketRequest { ticket: Some(proto_ticket(id)) };
    app.grpc().await.create_ticket(authed(req, &app.token)).await.expect("create");
}

/// The value of the gauge (or counter) `name` on the metrics port.
async fn gauge(app: &TestApp, name: &str) -> i64 {
    let text = app.client.get(format!("{}/metrics", app.metrics_base)).send().await.unwrap().text().await.unwrap();
    let prefix = format!("{name} ");
    text.lines().find_map(|l| l.strip_prefix(&prefix)?.trim().parse().ok()).unwrap_or_else(|| panic!("no {name}"))
}

fn watch_one(id: &str) -> pb::WatchTicketsRequest {
    pb::WatchTicketsRequest { ticket_ids: vec![id.into()], ..Default::default() }
}

/// Open a watch and wait for its snapshot: the watcher is then running on the server.
async fn open_watch(
    c: &mut pb::ticket_service_client::TicketServiceClient<tonic::transport::Channel>,
    id: &str,
    token: &str,
) -> Result<tonic::Streaming<pb::TicketEvent>, tonic::Status> {
    let mut stream = c.watch_tickets(authed(watch_one(id), token)).await?.into_inner();
    let first = tokio::time::timeout(Duration::from_secs(5), stream.message()).await.expect("a snapshot");
    assert_eq!(first.expect("no error").expect("an event").event_type, "snapshot");
    Ok(stream)
}

/// The probe of finding 3: a ticket token opening and cancelling watches of its own finished ticket. Every
/// cancelled watcher must end on the server (no event will ever come to notice it by).
#[tokio::test]
async fn cancelled_watches_of_a_finished_ticket_end_at_once() {
    let (app, _dir) = app_with(|_| {}).await;
    create(&app, "done-1").await;
    let token = app.ticket_token("done-1").await;
    for status in ["RUNNING", "COMPLETED"] {
        assert_eq!(app.set_status("done-1", status).await.0, 200);
    }
    let mut c = app.grpc().await;
    for round in 0..4 {
        let mut open = Vec::new();
        for _ in 0..50 {
            open.push(open_watch(&mut c, "done-1", &token).await.expect("under the limit"));
        }
        assert_eq!(gauge(&app, "grpc_watchers").await, 50, "round {round}");
        drop(open);
        eventually("the cancelled watchers to end", 5, || async { gauge(&app, "grpc_watchers").await == 0 }).await;
    }
}

/// Watchers are bounded per principal (token subject) and in all: RESOURCE_EXHAUSTED beyond, room again once
/// one ends.
#[tokio::test]
async fn watchers_are_bounded_per_principal_and_in_all() {
    let (app, _dir) = app_with(|s| {
        s.limits.watchers_per_principal = 3;
        s.limits.watchers_max = 5;
    })
    .await;
    create(&app, "lim-1").await;
    let token = app.ticket_token("lim-1").await;
    let mut c = app.grpc().await;
    let mut mine = Vec::new();
    for _ in 0..3 {
        mine.push(open_watch(&mut c, "lim-1", &token).await.expect("within the principal's limit"));
    }
    let refused = open_watch(&mut c, "lim-1", &token).await.expect_err("a fourth watcher of one principal");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{}", refused.message());
    assert!(refused.message().contains("limit 3"), "{}", refused.message());

    // Another principal has its own allowance, up to the total.
    let mut others = Vec::new();
    for _ in 0..2 {
        others.push(open_watch(&mut c, "lim-1", &app.token).await.expect("another principal"));
    }
    let refused = open_watch(&mut c, "lim-1", &app.token).await.expect_err("a sixth watcher in all");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{}", refused.message());
    assert!(refused.message().contains("limit 5"), "{}", refused.message());

    // A watcher that ends gives its place back.
    drop(mine.pop());
    eventually("a place to come free", 5, || async { gauge(&app, "grpc_watchers").await == 4 }).await;
    mine.push(open_watch(&mut c, "lim-1", &token).await.expect("room again"));
    assert_eq!(gauge(&app, "grpc_watchers").await, 5);
}

/// Await the status a stream ends with, within `secs` seconds; the events before it are skipped.
async fn end_of<T>(stream: &mut tonic::Streaming<T>, secs: u64) -> tonic::Status {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.message()).await.expect("the stream to end in time") {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("the stream ended without an error"),
            Err(status) => return status,
        }
    }
}

/// Finding 8: a worker stream and a watch opened with a short-lived token end, UNAUTHENTICATED, at the token's
/// exp + JWT_LEEWAY_SECONDS, however busy or idle they are.
#[tokio::test]
async fn streams_end_unauthenticated_when_their_token_expires() {
    let (app, _dir) = app_with(|s| {
        s.jwt.expiration_seconds = 2;
        s.auth.leeway_seconds = 1;
    })
    .await;
    create(&app, "exp-1").await;
    let token = app.ticket_token("exp-1").await;
    let opened = Instant::now();
    let mut c = app.grpc().await;
    let mut watch = open_watch(&mut c, "exp-1", &token).await.expect("a watch while the token is valid");

    // The worker stream is fed one heartbeat every 200 ms until it ends.
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let feeder = tokio::spawn(async move {
        let running = pb::WorkerUpdate {
            request_id: "start".into(),
            ticket_id: "exp-1".into(),
            kind: Kind::Status as i32,
            status: "RUNNING".into(),
            ..Default::default()
        };
        if tx.send(running).await.is_err() {
            return;
        }
        for i in 0.. {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let beat = pb::WorkerUpdate {
                request_id: format!("beat-{i}"),
                ticket_id: "exp-1".into(),
                kind: Kind::Heartbeat as i32,
                ..Default::default()
            };
            if tx.send(beat).await.is_err() {
                return;
            }
        }
    });
    let updates = tokio_stream::wrappers::ReceiverStream::new(rx);
    let mut worker = c.stream_status_updates(authed(updates, &token)).await.expect("the stream opens").into_inner();
    let first = worker.message().await.expect("an answer").expect("an answer");
    assert!(first.ok, "the worker works while its token is valid: {first:?}");

    for (what, status) in [("worker", end_of(&mut worker, 8).await), ("watch", end_of(&mut watch, 8).await)] {
        assert_eq!(status.code(), Code::Unauthenticated, "{what}: {}", status.message());
        assert!(status.message().contains("expired"), "{what}: {}", status.message());
    }
    // exp is whole seconds from the minting (≤ 2 s before the open) plus 1 s of leeway.
    let lived = opened.elapsed();
    assert!(lived >= Duration::from_millis(1_500) && lived < Duration::from_secs(6), "{lived:?}");
    feeder.abort();
    eventually("the watcher to be gone", 5, || async { gauge(&app, "grpc_watchers").await == 0 }).await;
}

/// Whether the server closed `conn` within `within` (EOF or a reset; data would be a protocol answer, not a close).
async fn closed_within(conn: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 256];
    let deadline = Instant::now() + within;
    loop {
        match tokio::time::timeout(deadline.saturating_duration_since(Instant::now()), conn.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

/// Finding 6: a connection to the gRPC port that never sends the HTTP/2 preface is closed after the handshake
/// timeout (no token needed to hold one open before).
#[tokio::test]
async fn silent_grpc_connections_are_closed_after_the_handshake_timeout() {
    let (app, _dir) = app_with(|s| s.limits.grpc_handshake_timeout = Duration::from_millis(1_000)).await;
    let addr = format!("127.0.0.1:{}", app.grpc_port);
    let started = Instant::now();
    let mut silent = TcpStream::connect(&addr).await.unwrap();
    let mut partial = TcpStream::connect(&addr).await.unwrap();
    partial.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    assert!(closed_within(&mut silent, Duration::from_secs(4)).await, "a silent connection is held");
    assert!(closed_within(&mut partial, Duration::from_secs(1)).await, "half a preface is held");
    assert!(started.elapsed() >= Duration::from_millis(900), "closed before the timeout: {:?}", started.elapsed());
    // Real clients are unaffected.
    create(&app, "after-silence").await;
}

/// Finding 6: at GRPC_MAX_CONNECTIONS open connections a new one is closed at once, while the open ones keep
/// working; once some close, new ones are served again.
#[tokio::test]
async fn grpc_connections_beyond_the_limit_are_closed_while_open_ones_work() {
    let (app, _dir) = app_with(|s| {
        s.limits.grpc_max_connections = 3;
        s.limits.grpc_handshake_timeout = Duration::from_secs(30);
    })
    .await;
    let addr = format!("127.0.0.1:{}", app.grpc_port);
    let mut working = app.grpc().await;
    working
        .create_ticket(authed(pb::CreateTicketRequest { ticket: Some(proto_ticket("cap-1")) }, &app.token))
        .await
        .unwrap();
    let mut silent = Vec::new();
    for _ in 0..2 {
        silent.push(TcpStream::connect(&addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    for i in 0..3 {
        let mut surplus = TcpStream::connect(&addr).await.unwrap();
        assert!(closed_within(&mut surplus, Duration::from_secs(1)).await, "connection {} beyond the limit", 4 + i);
    }
    let get = pb::GetTicketRequest { ticket_id: "cap-1".into() };
    working.get_ticket(authed(get, &app.token)).await.expect("the open connection keeps working");

    drop(silent);
    eventually("new connections to be served again", 5, || async {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap();
        let Ok(channel) = channel.connect_timeout(Duration::from_secs(1)).connect().await else { return false };
        let mut c = pb::ticket_service_client::TicketServiceClient::new(channel);
        let get = pb::GetTicketRequest { ticket_id: "cap-1".into() };
        tokio::time::timeout(Duration::from_secs(1), c.get_ticket(authed(get, &app.token)))
            .await
            .is_ok_and(|r| r.is_ok())
    })
    .await;
}

/// Finding 6: an authenticated REST request whose body trickles in (a byte every 300 ms) is answered 408 at the
/// body timeout and its connection closed.
#[tokio::test]
async fn a_rest_body_that_trickles_in_is_answered_408() {
    let (app, _dir) = app_with(|s| s.limits.http_body_timeout = Duration::from_millis(1_000)).await;
    let addr = app.base.trim_start_matches("http://").to_owned();
    let mut conn = TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST /api/v1/tickets HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{",
        app.token
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    let started = Instant::now();
    let (mut read, mut write) = conn.into_split();
    let trickle = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(300)).await;
            if write.write_all(b" ").await.is_err() {
                return;
            }
        }
    });
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(5), read.read(&mut buf))
            .await
            .expect("an answer (or a close) within the body timeout")
            .unwrap_or(0);
        if n == 0 {
            break;
        }
        answer.extend_from_slice(&buf[..n]);
    }
    trickle.abort();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("did not arrive within"), "{answer}");
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(900) && took < Duration::from_secs(3), "{took:?}");
    // A body sent at once is unaffected.
    assert_eq!(app.post("/api/v1/tickets", &common::ticket("rest-after")).await.0, 201);
}

/// Finding 6 and issue #21 (overload): HTTP_MAX_CONNECTIONS bounds the REST connections served. A connection
/// beyond it is answered 503 with `Retry-After` at once, before authentication or its body, and closed (it used to
/// wait in the listen backlog, and under a flood in SYN retransmissions for seconds); nothing it sent is acted on.
/// A place a served connection frees goes to the next connection, even while refused ones are still open.
#[tokio::test]
async fn rest_connections_beyond_the_limit_are_refused_at_once() {
    let (app, _dir) = app_with(|s| s.limits.http_max_connections = 2).await;
    let addr = app.base.trim_start_matches("http://").to_owned();
    let mut served = Vec::new();
    for _ in 0..2 {
        served.push(TcpStream::connect(&addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // A third connection that has sent nothing yet: it will be refused, and it stays open meanwhile.
    let refused_silent = TcpStream::connect(&addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    // A create on a fourth: refused without being read, so the ticket is not created.
    let body = serde_json::to_string(&common::ticket("beyond-the-limit")).unwrap();
    let request = format!(
        "POST /api/v1/tickets HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        app.token,
        body.len()
    );
    let started = std::time::Instant::now();
    let mut beyond = TcpStream::connect(&addr).await.unwrap();
    beyond.write_all(request.as_bytes()).await.unwrap();
    // The answer, and then the end of the connection (read to EOF), at once: a held connection would never end.
    // (3 s, not less: a loaded CI machine can take a second to schedule the call.)
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(3), beyond.read_to_end(&mut answer))
        .await
        .expect("answered and closed at once")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer).to_lowercase();
    assert!(answer.starts_with("http/1.1 503"), "{answer}");
    assert!(answer.contains("retry-after: 1") && answer.contains("connection: close"), "{answer}");
    assert!(answer.contains("too many open connections"), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
    assert_eq!(gauge(&app, "http_connections_refused_total").await, 1);
    // One served connection closes: the next connection is served, though the silent refused one is open.
    drop(served.pop());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (status, body) = app.get("/api/v1/tickets/beyond-the-limit").await;
    assert_eq!(status, 404, "served in the freed place, and the refused create was not acted on: {body}");
    assert_eq!(app.post("/api/v1/tickets", &common::ticket("beyond-the-limit")).await.0, 201);
    drop((served, refused_silent));
}
