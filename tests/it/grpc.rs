//! The gRPC front end with a tonic client generated from `proto/`: every RPC and its status codes, the worker
//! stream, watchers (including one that connects after the changes), health and reflection.

use crate::common;

use std::time::Duration;

use common::{authed, fresh_store, spawn_app, spawn_app_with, TestApp};
use ticket_supervisor::grpc::pb::{self, worker_update::Kind};
use tonic::Code;

fn proto_ticket(id: &str) -> pb::ExecutionTicketProto {
    pb::ExecutionTicketProto {
        ticket_id: id.into(),
        plan_id: "plan-g".into(),
        intent_id: "intent-g".into(),
        decision_id: "decision-g".into(),
        task_id: "task-g".into(),
        task_type: "test".into(),
        description: "run the tests".into(),
        priority: "7".into(),
        risk_band: "LOW".into(),
        sla: Some(pb::Sla { deadline: 1_900_000_000_000, timeout_ms: 30_000, max_retries: 2 }),
        qos: Some(pb::Qos {
            delivery_mode: "AT_LEAST_ONCE".into(),
            consistency: "EVENTUAL".into(),
            durability: "PERSISTENT".into(),
        }),
        parameters_json: r#"{"suite": "all"}"#.into(),
        security_level: "PUBLIC".into(),
        metadata: [("team".to_owned(), "qa".to_owned())].into(),
        ..Default::default()
    }
}

async fn app() -> (TestApp, Option<tempfile::TempDir>) {
    let (store, dir) = fresh_store(false).await;
    (spawn_app(&store).await, dir)
}

async fn create(app: &TestApp, id: &str) -> pb::ExecutionTicketProto {
    let req = pb::CreateTicketRequest { ticket: Some(proto_ticket(id)) };
    app.grpc().await.create_ticket(authed(req, &app.token)).await.unwrap().into_inner().ticket.unwrap()
}

fn status_req(id: &str, status: &str) -> pb::UpdateTicketStatusRequest {
    pb::UpdateTicketStatusRequest { ticket_id: id.into(), status: status.into(), ..Default::default() }
}

#[tokio::test]
async fn unary_rpcs_and_their_codes() {
    let (app, _dir) = app().await;
    let t = &app.token;
    let mut c = app.grpc().await;

    let created = c.create_ticket(authed(pb::CreateTicketRequest { ticket: Some(proto_ticket("g-1")) }, t)).await;
    let created = created.unwrap().into_inner();
    assert!(created.created);
    let ticket = created.ticket.unwrap();
    assert_eq!(
        (ticket.status.as_str(), ticket.priority.as_str(), ticket.task_type.as_str()),
        ("PENDING", "HIGH", "TEST")
    );
    assert_eq!((ticket.version, ticket.parameters_json.as_str()), (1, r#"{"suite":"all"}"#));
    assert!(ticket.created_at > 0);

    let again = c.create_ticket(authed(pb::CreateTicketRequest { ticket: Some(proto_ticket("g-1")) }, t)).await;
    assert!(!again.unwrap().into_inner().created, "idempotent");
    let mut different = proto_ticket("g-1");
    different.description = "other".into();
    let err = c.create_ticket(authed(pb::CreateTicketRequest { ticket: Some(different) }, t)).await.unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    let mut invalid = proto_ticket("g-2");
    invalid.plan_id.clear();
    let err = c.create_ticket(authed(pb::CreateTicketRequest { ticket: Some(invalid) }, t)).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("plan_id"), "{}", err.message());

    let got = c.get_ticket(authed(pb::GetTicketRequest { ticket_id: "g-1".into() }, t)).await.unwrap();
    assert_eq!(got.into_inner().ticket.unwrap(), ticket);
    let err = c.get_ticket(authed(pb::GetTicketRequest { ticket_id: "nope".into() }, t)).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    let err = c.update_ticket_status(authed(status_req("g-1", "SIDEWAYS"), t)).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = c.update_ticket_status(authed(status_req("g-1", "COMPLETED"), t)).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("RUNNING"), "names the allowed moves: {}", err.message());
    let running = c.update_ticket_status(authed(status_req("g-1", "running"), t)).await.unwrap();
    assert_eq!(running.into_inner().ticket.unwrap().version, 2);
    let mut stale = status_req("g-1", "COMPLETED");
    stale.expected_version = Some(1);
    assert_eq!(c.update_ticket_status(authed(stale, t)).await.unwrap_err().code(), Code::Aborted);

    let token = c.generate_token(authed(pb::GenerateTokenRequest { ticket_id: "g-1".into() }, t)).await.unwrap();
    let token = token.into_inner();
    assert!(!token.access_token.is_empty() && token.expires_at > 1_700_000_000);

    let mut failed = status_req("g-1", "FAILED");
    failed.error_message = "boom".into();
    c.update_ticket_status(authed(failed, t)).await.unwrap();
    let err = c.generate_token(authed(pb::GenerateTokenRequest { ticket_id: "g-1".into() }, t)).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "no token for a finished ticket");
    let retried = c.retry_ticket(authed(pb::RetryTicketRequest { ticket_id: "g-1".into(), ..Default::default() }, t));
    let retried = retried.await.unwrap().into_inner().ticket.unwrap();
    assert_eq!((retried.status.as_str(), retried.retry_count), ("PENDING", 1));
    assert_eq!(retried.error_message.as_deref(), Some("boom"));

    let cancel =
        pb::CancelTicketRequest { ticket_id: "g-1".into(), reason: "plan aborted".into(), ..Default::default() };
    let cancelled = c.cancel_ticket(authed(cancel, t)).await.unwrap().into_inner().ticket.unwrap();
    assert_eq!((cancelled.status.as_str(), cancelled.error_message.as_deref()), ("CANCELLED", Some("plan aborted")));

    create(&app, "g-3").await;
    c.update_ticket_status(authed(status_req("g-3", "RUNNING"), t)).await.unwrap();
    let comp = pb::CompensateTicketRequest {
        original_ticket_id: "g-3".into(),
        reason: "bad data".into(),
        parameters_json: r#"{"undo": true}"#.into(),
        ..Default::default()
    };
    let comp = c.compensate_ticket(authed(comp, t)).await.unwrap().into_inner();
    assert!(comp.created);
    assert_eq!((comp.status.as_str(), comp.action.as_str(), comp.reason.as_str()), ("PENDING", "rollback", "bad data"));
    assert_eq!(comp.compensation_ticket.unwrap().parameters_json, r#"{"undo":true}"#);

    let history = |offset, limit| pb::GetTicketHistoryRequest { ticket_id: "g-3".into(), offset, limit };
    let all = c.get_ticket_history(authed(history(0, 0), t)).await.unwrap().into_inner();
    let kinds: Vec<&str> = all.entries.iter().map(|e| e.event_type.as_str()).collect();
    let expected = ["ticket.created", "ticket.ready", "ticket.started", "ticket.compensating"];
    assert_eq!(kinds, expected, "the audit trail, in order");
    let versions: Vec<i64> = all.entries.iter().map(|e| e.version).collect();
    assert_eq!((all.total, versions), (4, vec![1, 1, 2, 3]));
    assert_eq!((all.entries[3].from_status.as_str(), all.entries[3].status.as_str()), ("RUNNING", "COMPENSATING"));
    assert!(all.entries.iter().all(|e| !e.event_id.is_empty() && !e.actor.is_empty()));
    let page = c.get_ticket_history(authed(history(1, 1), t)).await.unwrap().into_inner();
    assert_eq!((page.total, page.entries[0].event_type.as_str()), (4, "ticket.ready"), "paged");
    let bad = c.get_ticket_history(authed(history(0, 5000), t)).await.unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    let missing = pb::GetTicketHistoryRequest { ticket_id: "nope".into(), ..Default::default() };
    assert_eq!(c.get_ticket_history(authed(missing, t)).await.unwrap_err().code(), Code::NotFound);

    let page = c.list_tickets(authed(pb::ListTicketsRequest::default(), t)).await.unwrap().into_inner();
    assert_eq!((page.total, page.tickets.len()), (3, 3), "empty filters, limit 0 → 100");
    let filtered = pb::ListTicketsRequest { plan_id: "plan-g".into(), status: "cancelled".into(), offset: 0, limit: 1 };
    let page = c.list_tickets(authed(filtered, t)).await.unwrap().into_inner();
    assert_eq!((page.total, page.tickets[0].ticket_id.as_str()), (1, "g-1"));
    let bad = pb::ListTicketsRequest { status: "LOST".into(), ..Default::default() };
    assert_eq!(c.list_tickets(authed(bad, t)).await.unwrap_err().code(), Code::InvalidArgument);
}

fn update(request_id: &str, ticket_id: &str, kind: Kind, status: &str) -> pb::WorkerUpdate {
    pb::WorkerUpdate {
        request_id: request_id.into(),
        ticket_id: ticket_id.into(),
        kind: kind as i32,
        status: status.into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_worker_stream_answers_every_message_and_survives_bad_ones() {
    let (app, _dir) = app().await;
    create(&app, "w-1").await;
    create(&app, "w-2").await;
    let mut progress = update("5", "w-1", Kind::Progress, "");
    progress.progress = 0.5;
    let messages = vec![
        update("1", "w-1", Kind::Status, "RUNNING"),
        update("2", "w-1", Kind::Status, "NOT-A-STATUS"),
        update("3", "missing", Kind::Status, "RUNNING"),
        update("4", "w-1", Kind::Heartbeat, ""),
        progress,
        update("6", "w-2", Kind::Heartbeat, ""),
        update("7", "w-1", Kind::Status, "COMPLETED"),
        update("8", "w-2", Kind::Status, "RUNNING"),
    ];
    let stream = app.grpc().await.stream_status_updates(authed(futures::stream::iter(messages), &app.token)).await;
    let mut results = stream.unwrap().into_inner();
    let mut got = Vec::new();
    while let Some(r) = results.message().await.unwrap() {
        got.push((r.request_id, r.ok, r.version, r.status, r.error_code));
    }
    let s = |v: &str| v.to_owned();
    assert_eq!(
        got,
        vec![
            (s("1"), true, 2, s("RUNNING"), s("")),
            (s("2"), false, 0, s(""), s("INVALID_ARGUMENT")),
            (s("3"), false, 0, s(""), s("NOT_FOUND")),
            (s("4"), true, 2, s("RUNNING"), s("")),
            (s("5"), true, 2, s("RUNNING"), s("")),
            (s("6"), false, 0, s(""), s("FAILED_PRECONDITION")),
            (s("7"), true, 3, s("COMPLETED"), s("")),
            (s("8"), true, 2, s("RUNNING"), s("")),
        ]
    );
    // A ticket-scoped token may only drive its own ticket on the stream.
    create(&app, "w-3").await;
    let token = app.ticket_token("w-3").await;
    let messages = vec![update("a", "w-2", Kind::Status, "COMPLETED"), update("b", "w-3", Kind::Status, "RUNNING")];
    let stream = app.grpc().await.stream_status_updates(authed(futures::stream::iter(messages), &token)).await;
    let mut results = stream.unwrap().into_inner();
    let a = results.message().await.unwrap().unwrap();
    let b = results.message().await.unwrap().unwrap();
    assert_eq!((a.ok, a.error_code.as_str()), (false, "PERMISSION_DENIED"));
    assert_eq!((b.ok, b.status.as_str()), (true, "RUNNING"));
}

/// The next event that is not a readiness announcement (those have a test of their own).
async fn next_event(stream: &mut tonic::Streaming<pb::TicketEvent>) -> pb::TicketEvent {
    loop {
        let e = tokio::time::timeout(Duration::from_secs(5), stream.message())
            .await
            .expect("an event within 5 s")
            .unwrap()
            .unwrap();
        if e.event_type != "ticket.ready" {
            return e;
        }
    }
}

#[tokio::test]
async fn watchers_see_the_current_state_then_every_change() {
    let (app, _dir) = app().await;
    let mut c = app.grpc().await;
    let watch = pb::WatchTicketsRequest { plan_id: "plan-g".into(), ..Default::default() };
    // (No snapshot for this one: the store is empty, and the create below may race the snapshot read.)
    let early_watch = pb::WatchTicketsRequest { skip_snapshot: true, ..watch.clone() };
    let mut early = c.watch_tickets(authed(early_watch, &app.token)).await.unwrap().into_inner();

    create(&app, "v-1").await;
    c.update_ticket_status(authed(status_req("v-1", "RUNNING"), &app.token)).await.unwrap();
    let e = next_event(&mut early).await;
    assert_eq!((e.event_type.as_str(), e.actor.as_str()), ("ticket.created", "orchestrator"));
    let e = next_event(&mut early).await;
    assert_eq!((e.event_type.as_str(), e.from_status.as_str()), ("ticket.started", "PENDING"));

    // A watcher that connects after those changes starts from the current state.
    let mut late = c.watch_tickets(authed(watch, &app.token)).await.unwrap().into_inner();
    let snap = next_event(&mut late).await;
    assert_eq!((snap.event_type.as_str(), snap.ticket.unwrap().status.as_str()), ("snapshot", "RUNNING"));

    // A worker drives the ticket to COMPLETED over its stream; both watchers see it.
    let done = update("1", "v-1", Kind::Status, "COMPLETED");
    let worker = c.stream_status_updates(authed(futures::stream::iter(vec![done]), &app.token)).await.unwrap();
    assert!(worker.into_inner().message().await.unwrap().unwrap().ok);
    for stream in [&mut early, &mut late] {
        let e = next_event(stream).await;
        assert_eq!((e.event_type.as_str(), e.ticket.unwrap().status.as_str()), ("ticket.completed", "COMPLETED"));
    }
    // Other plans are filtered out; a status filter works.
    let mut other = proto_ticket("v-2");
    other.plan_id = "plan-other".into();
    c.create_ticket(authed(pb::CreateTicketRequest { ticket: Some(other) }, &app.token)).await.unwrap();
    create(&app, "v-3").await;
    assert_eq!(next_event(&mut early).await.ticket.unwrap().ticket_id, "v-3");
    let by_status = pb::WatchTicketsRequest { statuses: vec!["completed".into()], ..Default::default() };
    let mut completed = c.watch_tickets(authed(by_status, &app.token)).await.unwrap().into_inner();
    assert_eq!(next_event(&mut completed).await.ticket.unwrap().ticket_id, "v-1");
    let bad = pb::WatchTicketsRequest { statuses: vec!["LOST".into()], ..Default::default() };
    assert_eq!(c.watch_tickets(authed(bad, &app.token)).await.unwrap_err().code(), Code::InvalidArgument);
}

/// A one-CPU container serves gRPC on a single-threaded runtime (`GRPC_WORKER_THREADS=1`, its default): a watcher
/// and a worker stream held open do not keep the unary calls of other connections waiting, nor the reverse.
#[tokio::test]
async fn one_grpc_thread_serves_streams_and_calls_side_by_side() {
    let (store, _dir) = fresh_store(false).await;
    let app = spawn_app_with(&store, |s| s.grpc_threads = 1).await;
    let mut c = app.grpc().await;
    let watch = pb::WatchTicketsRequest { skip_snapshot: true, ..Default::default() };
    let mut watcher = c.watch_tickets(authed(watch, &app.token)).await.unwrap().into_inner();
    let (to_worker, rx) = tokio::sync::mpsc::channel(4);
    let worker = tokio_stream::wrappers::ReceiverStream::new(rx);
    let mut answers = c.stream_status_updates(authed(worker, &app.token)).await.unwrap().into_inner();

    // 64 creates at once over 8 connections of their own, then 64 reads at once.
    let mut conns = Vec::new();
    for _ in 0..8 {
        conns.push(app.grpc().await);
    }
    let ids: Vec<String> = (0..64).map(|i| format!("one-{i}")).collect();
    let creates = ids.iter().enumerate().map(|(i, id)| {
        let (mut conn, token) = (conns[i % 8].clone(), &app.token);
        async move {
            let req = pb::CreateTicketRequest { ticket: Some(proto_ticket(id)) };
            conn.create_ticket(authed(req, token)).await.map(|r| r.into_inner().created)
        }
    });
    let created = futures::future::join_all(creates).await;
    assert!(created.iter().all(|r| matches!(r, Ok(true))), "{created:?}");
    let reads = ids.iter().enumerate().map(|(i, id)| {
        let (mut conn, token) = (conns[i % 8].clone(), &app.token);
        async move {
            let req = pb::GetTicketRequest { ticket_id: id.clone() };
            conn.get_ticket(authed(req, token)).await.map(|r| r.into_inner().ticket.unwrap().status)
        }
    });
    let read = futures::future::join_all(reads).await;
    assert!(read.iter().all(|r| matches!(r, Ok(s) if s == "PENDING")), "{read:?}");

    // The worker stream, open all along, still answers; the watcher saw every create, then the start.
    to_worker.send(update("1", "one-7", Kind::Status, "RUNNING")).await.unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(5), answers.message()).await.expect("an answer in 5 s");
    let answer = answer.unwrap().unwrap();
    assert_eq!((answer.ok, answer.status.as_str()), (true, "RUNNING"));
    let mut seen = std::collections::BTreeSet::new();
    while seen.len() < 64 {
        let e = next_event(&mut watcher).await;
        assert_eq!(e.event_type, "ticket.created");
        seen.insert(e.ticket.unwrap().ticket_id);
    }
    assert_eq!(seen, ids.iter().cloned().collect());
    let e = next_event(&mut watcher).await;
    assert_eq!((e.event_type.as_str(), e.ticket.unwrap().ticket_id.as_str()), ("ticket.started", "one-7"));
}

#[tokio::test]
async fn a_slow_watcher_is_dropped_with_resource_exhausted() {
    let (store, _dir) = fresh_store(false).await;
    let app = spawn_app_with(&store, |s| s.actors.event_buffer = 16).await;
    let mut c = app.grpc().await;
    let req = pb::WatchTicketsRequest { skip_snapshot: true, ..Default::default() };
    let mut slow = c.watch_tickets(authed(req, &app.token)).await.unwrap().into_inner();
    // Far more events than the watcher's buffers hold, while it reads nothing. The creates share one connection
    // of their own (600 connections would pass GRPC_MAX_CONNECTIONS; the watcher's unread data would stall its).
    let writer = app.grpc().await;
    let creates = (0..600).map(|i| {
        let (mut writer, token) = (writer.clone(), &app.token);
        async move {
            let req = pb::CreateTicketRequest { ticket: Some(proto_ticket(&format!("s-{i}"))) };
            writer.create_ticket(authed(req, token)).await.unwrap();
        }
    });
    futures::future::join_all(creates).await;
    let mut received = 0;
    let status = loop {
        match tokio::time::timeout(Duration::from_secs(5), slow.message()).await.expect("stream ends") {
            Ok(Some(_)) => received += 1,
            Ok(None) => panic!("the stream ended without a status after {received} events"),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(received < 600, "it was dropped before seeing everything ({received})");
    // The tickets themselves were not slowed down or lost.
    let page = c.list_tickets(authed(pb::ListTicketsRequest { limit: 1000, ..Default::default() }, &app.token)).await;
    assert_eq!(page.unwrap().into_inner().total, 600);
}

#[tokio::test]
async fn health_and_reflection() {
    let (app, _dir) = app().await;
    let channel = tonic::transport::Channel::from_shared(format!("http://127.0.0.1:{}", app.grpc_port))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    for service in ["", "ticket_service.TicketService"] {
        let req = tonic_health::pb::HealthCheckRequest { service: service.into() };
        let status = health.check(req).await.unwrap().into_inner().status;
        assert_eq!(status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32, "{service:?}");
    }
    use tonic_reflection::pb::v1::{
        server_reflection_client::ServerReflectionClient, server_reflection_request::MessageRequest,
        server_reflection_response::MessageResponse, ServerReflectionRequest,
    };
    let mut reflection = ServerReflectionClient::new(channel);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = reflection.server_reflection_info(futures::stream::iter(vec![req])).await.unwrap().into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) = answers.message().await.unwrap().unwrap().message_response
    else {
        panic!("expected a service list")
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(names.contains(&"ticket_service.TicketService".to_owned()), "{names:?}");
    assert!(names.contains(&"grpc.health.v1.Health".to_owned()), "{names:?}");
}

#[tokio::test]
async fn watchers_see_sla_events() {
    let (app, _dir) = app().await;
    let mut c = app.grpc().await;
    let watch = pb::WatchTicketsRequest { ticket_ids: vec!["sla-1".into()], skip_snapshot: true, ..Default::default() };
    let mut events = c.watch_tickets(authed(watch, &app.token)).await.unwrap().into_inner();
    let mut t = proto_ticket("sla-1");
    t.sla = Some(pb::Sla { deadline: 1_900_000_000_000, timeout_ms: 300, max_retries: 0 });
    c.create_ticket(authed(pb::CreateTicketRequest { ticket: Some(t) }, &app.token)).await.unwrap();
    c.update_ticket_status(authed(status_req("sla-1", "RUNNING"), &app.token)).await.unwrap();
    assert_eq!(next_event(&mut events).await.event_type, "ticket.created");
    assert_eq!(next_event(&mut events).await.event_type, "ticket.started");
    let e = next_event(&mut events).await;
    assert_eq!((e.event_type.as_str(), e.actor.as_str(), e.from_status.as_str()), ("ticket.failed", "sla", "RUNNING"));
    assert!(e.details.contains("attempt_timeout"), "{}", e.details);
    let ticket = e.ticket.unwrap();
    assert!(ticket.error_message.unwrap().starts_with("timed out after 1 attempts"));
    assert!(ticket.sla_state_json.contains("timed_out_attempt"));
}
