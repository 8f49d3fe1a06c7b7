//! A sweep of bad gRPC requests over every RPC: empty and huge ids, unknown enum values, negative and extreme
//! numbers, missing fields, bad tokens. Each must be answered with the right status code and a message that
//! says what was wrong (never INTERNAL, never a panic), and the service must keep working afterwards.

use crate::common;

use common::{authed, fresh_store, spawn_app, TestApp};
use ticket_supervisor::grpc::pb::{self, worker_update::Kind};
use tonic::Code;

fn proto_ticket(id: &str) -> pb::ExecutionTicketProto {
    pb::ExecutionTicketProto {
        ticket_id: id.into(),
        plan_id: "plan-bad".into(),
        intent_id: "intent-bad".into(),
        decision_id: "decision-bad".into(),
        task_id: "task-bad".into(),
        task_type: "EXECUTE".into(),
        description: "bad input sweep".into(),
        priority: "NORMAL".into(),
        risk_band: "low".into(),
        sla: Some(pb::Sla { deadline: 1_900_000_000_000, timeout_ms: 60_000, max_retries: 1 }),
        qos: Some(pb::Qos {
            delivery_mode: "AT_LEAST_ONCE".into(),
            consistency: "STRONG".into(),
            durability: "PERSISTENT".into(),
        }),
        security_level: "INTERNAL".into(),
        ..Default::default()
    }
}

/// Assert that `result` failed with `code` and a non-empty message of sane length.
fn expect<T: std::fmt::Debug>(what: &str, code: Code, result: Result<tonic::Response<T>, tonic::Status>) {
    let status = match result {
        Ok(r) => panic!("{what}: expected {code:?}, got OK {:?}", r.into_inner()),
        Err(s) => s,
    };
    assert_eq!(status.code(), code, "{what}: {}", status.message());
    assert!(!status.message().trim().is_empty(), "{what}: empty message");
    assert!(status.message().len() < 1_000, "{what}: a {}-byte message", status.message().len());
}

/// Ids that cannot name a ticket.
fn bad_ids() -> Vec<String> {
    vec![String::new(), " ".into(), "a/b".into(), "nul\0id".into(), "x".repeat(10_000), "é".repeat(300)]
}

fn create_req(t: pb::ExecutionTicketProto) -> pb::CreateTicketRequest {
    pb::CreateTicketRequest { ticket: Some(t) }
}

async fn setup() -> (TestApp, Option<tempfile::TempDir>) {
    let (store, dir) = fresh_store(false).await;
    (spawn_app(&store).await, dir)
}

#[tokio::test]
async fn every_rpc_answers_bad_input_with_the_right_code_and_keeps_serving() {
    let (app, _dir) = setup().await;
    let t = app.token.clone();
    let mut c = app.grpc().await;
    c.create_ticket(authed(create_req(proto_ticket("ok-1")), &t)).await.expect("a valid create");

    // Bad and unknown ids: NOT_FOUND for ticket lookups, INVALID_ARGUMENT where the id is a request field.
    for id in bad_ids().into_iter().chain(["unknown-ticket".to_owned()]) {
        let short: String = id.chars().take(20).collect();
        let get = pb::GetTicketRequest { ticket_id: id.clone() };
        expect(&format!("GetTicket {short:?}"), Code::NotFound, c.get_ticket(authed(get, &t)).await);
        let upd =
            pb::UpdateTicketStatusRequest { ticket_id: id.clone(), status: "RUNNING".into(), ..Default::default() };
        expect(&format!("UpdateTicketStatus {short:?}"), Code::NotFound, c.update_ticket_status(authed(upd, &t)).await);
        let retry = pb::RetryTicketRequest { ticket_id: id.clone(), expected_version: None };
        expect(&format!("RetryTicket {short:?}"), Code::NotFound, c.retry_ticket(authed(retry, &t)).await);
        let cancel = pb::CancelTicketRequest { ticket_id: id.clone(), ..Default::default() };
        expect(&format!("CancelTicket {short:?}"), Code::NotFound, c.cancel_ticket(authed(cancel, &t)).await);
        let token = pb::GenerateTokenRequest { ticket_id: id.clone() };
        expect(&format!("GenerateToken {short:?}"), Code::NotFound, c.generate_token(authed(token, &t)).await);
        let history = pb::GetTicketHistoryRequest { ticket_id: id.clone(), offset: 0, limit: 0 };
        expect(&format!("GetTicketHistory {short:?}"), Code::NotFound, c.get_ticket_history(authed(history, &t)).await);
        let comp =
            pb::CompensateTicketRequest { original_ticket_id: id.clone(), reason: "r".into(), ..Default::default() };
        let code = if id == "unknown-ticket" { Code::NotFound } else { Code::InvalidArgument };
        expect(&format!("CompensateTicket {short:?}"), code, c.compensate_ticket(authed(comp, &t)).await);
    }

    // Create: missing fields, unknown enum values, out-of-range numbers, bad JSON.
    let mut cases: Vec<(&str, pb::ExecutionTicketProto)> = Vec::new();
    let mut add = |what: &'static str, change: fn(&mut pb::ExecutionTicketProto)| {
        let mut p = proto_ticket("bad-create");
        change(&mut p);
        cases.push((what, p));
    };
    add("no sla", |p| p.sla = None);
    add("no qos", |p| p.qos = None);
    add("empty plan_id", |p| p.plan_id.clear());
    add("empty task_type", |p| p.task_type.clear());
    add("unknown task_type", |p| p.task_type = "DANCE".into());
    add("unknown status", |p| p.status = "SOON".into());
    add("priority 0", |p| p.priority = "0".into());
    add("priority -5", |p| p.priority = "-5".into());
    add("unknown priority", |p| p.priority = "urgent".into());
    add("unknown risk_band", |p| p.risk_band = "extreme".into());
    add("unknown delivery_mode", |p| p.qos.as_mut().unwrap().delivery_mode = "TWICE".into());
    add("unknown security_level", |p| p.security_level = "TOP".into());
    add("deadline i64::MAX", |p| p.sla.as_mut().unwrap().deadline = i64::MAX);
    add("deadline i64::MIN", |p| p.sla.as_mut().unwrap().deadline = i64::MIN);
    add("timeout 0", |p| p.sla.as_mut().unwrap().timeout_ms = 0);
    add("timeout i64::MIN", |p| p.sla.as_mut().unwrap().timeout_ms = i64::MIN);
    add("max_retries -1", |p| p.sla.as_mut().unwrap().max_retries = -1);
    add("created_at i64::MAX", |p| p.created_at = i64::MAX);
    add("started_at i64::MIN", |p| p.started_at = Some(i64::MIN));
    add("completed before started", |p| (p.started_at, p.completed_at) = (Some(2_000), Some(1_000)));
    add("estimated_duration -1", |p| p.estimated_duration_ms = Some(-1));
    add("actual_duration i64::MIN", |p| p.actual_duration_ms = Some(i64::MIN));
    add("retry_count -1", |p| p.retry_count = -1);
    add("parameters not JSON", |p| p.parameters_json = "{".into());
    add("parameters an array", |p| p.parameters_json = "[1]".into());
    add("duplicate dependency", |p| p.dependencies = vec!["d".into(), "d".into()]);
    add("depends on itself", |p| p.dependencies = vec!["bad-create".into()]);
    add("empty dependency", |p| p.dependencies = vec![String::new()]);
    add("huge id", |p| p.ticket_id = "x".repeat(10_000));
    add("id with a slash", |p| p.ticket_id = "a/b".into());
    add("huge description", |p| p.description = "d".repeat(70_000));
    for (what, p) in cases {
        expect(
            &format!("CreateTicket {what}"),
            Code::InvalidArgument,
            c.create_ticket(authed(create_req(p), &t)).await,
        );
    }
    let empty = pb::CreateTicketRequest { ticket: None };
    expect("CreateTicket without a ticket", Code::InvalidArgument, c.create_ticket(authed(empty, &t)).await);

    // Status changes: unknown statuses, negative durations, illegal moves.
    for status in ["", "SOON", "running; drop table", "PREEMPTED "] {
        let req =
            pb::UpdateTicketStatusRequest { ticket_id: "ok-1".into(), status: status.into(), ..Default::default() };
        let code = if status == "PREEMPTED " { Code::FailedPrecondition } else { Code::InvalidArgument };
        expect(&format!("UpdateTicketStatus {status:?}"), code, c.update_ticket_status(authed(req, &t)).await);
    }
    for d in [-1, i64::MIN] {
        let req = pb::UpdateTicketStatusRequest {
            ticket_id: "ok-1".into(),
            status: "CANCELLED".into(),
            actual_duration_ms: Some(d),
            ..Default::default()
        };
        expect(
            &format!("UpdateTicketStatus duration {d}"),
            Code::InvalidArgument,
            c.update_ticket_status(authed(req, &t)).await,
        );
    }
    let req =
        pb::UpdateTicketStatusRequest { ticket_id: "ok-1".into(), status: "COMPLETED".into(), ..Default::default() };
    expect("PENDING → COMPLETED", Code::FailedPrecondition, c.update_ticket_status(authed(req, &t)).await);
    let req = pb::UpdateTicketStatusRequest {
        ticket_id: "ok-1".into(),
        status: "RUNNING".into(),
        expected_version: Some(i64::MIN),
        ..Default::default()
    };
    expect("UpdateTicketStatus stale version", Code::Aborted, c.update_ticket_status(authed(req, &t)).await);
    let retry = pb::RetryTicketRequest { ticket_id: "ok-1".into(), expected_version: None };
    expect("RetryTicket of a PENDING ticket", Code::FailedPrecondition, c.retry_ticket(authed(retry, &t)).await);

    // The largest retry count the validation accepts: a manual retry is refused, not overflowed.
    let mut max = proto_ticket("max-retries");
    max.status = "FAILED".into();
    max.retry_count = i32::MAX;
    max.sla = Some(pb::Sla { deadline: 253_402_300_799_999, timeout_ms: i64::MAX, max_retries: i32::MAX });
    c.create_ticket(authed(create_req(max), &t)).await.expect("the largest accepted values");
    let retry = pb::RetryTicketRequest { ticket_id: "max-retries".into(), expected_version: None };
    expect("RetryTicket at i32::MAX", Code::FailedPrecondition, c.retry_ticket(authed(retry, &t)).await);

    // Lists, history, compensation, watch: bad paging, filters and bodies.
    for (what, req) in [
        ("offset -1", pb::ListTicketsRequest { offset: -1, ..Default::default() }),
        ("limit -1", pb::ListTicketsRequest { limit: -1, ..Default::default() }),
        ("unknown status", pb::ListTicketsRequest { status: "SOON".into(), ..Default::default() }),
    ] {
        expect(&format!("ListTickets {what}"), Code::InvalidArgument, c.list_tickets(authed(req, &t)).await);
    }
    let far = pb::ListTicketsRequest { offset: i32::MAX, limit: i32::MAX, ..Default::default() };
    assert!(c.list_tickets(authed(far, &t)).await.expect("the farthest page").into_inner().tickets.is_empty());
    for (offset, limit) in [(-1, 0), (0, -1), (0, 1_001), (i64::MIN, i64::MAX)] {
        let req = pb::GetTicketHistoryRequest { ticket_id: "ok-1".into(), offset, limit };
        expect(
            &format!("GetTicketHistory {offset}/{limit}"),
            Code::InvalidArgument,
            c.get_ticket_history(authed(req, &t)).await,
        );
    }
    let far = pb::GetTicketHistoryRequest { ticket_id: "ok-1".into(), offset: i64::MAX, limit: 1_000 };
    assert!(c.get_ticket_history(authed(far, &t)).await.expect("the farthest page").into_inner().entries.is_empty());
    for (what, reason, params) in
        [("empty reason", "", ""), ("parameters not JSON", "r", "{"), ("parameters a number", "r", "1")]
    {
        let req = pb::CompensateTicketRequest {
            original_ticket_id: "ok-1".into(),
            reason: reason.into(),
            parameters_json: params.into(),
            ..Default::default()
        };
        expect(&format!("CompensateTicket {what}"), Code::InvalidArgument, c.compensate_ticket(authed(req, &t)).await);
    }
    let req =
        pb::CompensateTicketRequest { original_ticket_id: "ok-1".into(), reason: "r".into(), ..Default::default() };
    expect(
        "CompensateTicket of a PENDING ticket",
        Code::FailedPrecondition,
        c.compensate_ticket(authed(req, &t)).await,
    );
    let watch = pb::WatchTicketsRequest { statuses: vec!["SOON".into()], ..Default::default() };
    expect("WatchTickets unknown status", Code::InvalidArgument, c.watch_tickets(authed(watch, &t)).await);

    // Tokens: none, malformed, wrong scheme, and a ticket token used for another ticket.
    let get = || pb::GetTicketRequest { ticket_id: "ok-1".into() };
    expect("no token", Code::Unauthenticated, c.get_ticket(tonic::Request::new(get())).await);
    expect("garbage token", Code::Unauthenticated, c.get_ticket(authed(get(), "not.a.jwt")).await);
    let mut basic = tonic::Request::new(get());
    basic.metadata_mut().insert("authorization", "Basic dXNlcjpwYXNz".parse().unwrap());
    expect("Basic scheme", Code::Unauthenticated, c.get_ticket(basic).await);
    let ticket_token = app.ticket_token("ok-1").await;
    let other = pb::GetTicketRequest { ticket_id: "max-retries".into() };
    expect("ticket token for another ticket", Code::PermissionDenied, c.get_ticket(authed(other, &ticket_token)).await);
    let list = pb::ListTicketsRequest::default();
    expect("ticket token lists", Code::PermissionDenied, c.list_tickets(authed(list, &ticket_token)).await);

    // The service is unharmed.
    let got = c.get_ticket(authed(get(), &t)).await.expect("still serving").into_inner().ticket.unwrap();
    assert_eq!((got.status.as_str(), got.version), ("PENDING", 1), "no bad request changed the ticket");
    c.create_ticket(authed(create_req(proto_ticket("ok-2")), &t)).await.expect("new work still goes through");
}

#[tokio::test]
async fn the_worker_stream_answers_each_bad_message_and_stays_open() {
    let (app, _dir) = setup().await;
    let t = app.token.clone();
    let mut c = app.grpc().await;
    c.create_ticket(authed(create_req(proto_ticket("w-1")), &t)).await.expect("a valid create");
    let msg = |id: &str, kind: i32, status: &str| pb::WorkerUpdate {
        request_id: format!("{id}:{kind}:{status}"),
        ticket_id: id.into(),
        kind,
        status: status.into(),
        ..Default::default()
    };
    let status = Kind::Status as i32;
    let progress = |p: f64| pb::WorkerUpdate { progress: p, ..msg("w-1", Kind::Progress as i32, "") };
    let huge = "x".repeat(10_000);
    let sweep: Vec<(pb::WorkerUpdate, &str)> = vec![
        (msg("w-1", 99, "RUNNING"), "INVALID_ARGUMENT"),
        (msg("w-1", -1, "RUNNING"), "INVALID_ARGUMENT"),
        (msg("w-1", status, "SOON"), "INVALID_ARGUMENT"),
        (msg("w-1", status, ""), "INVALID_ARGUMENT"),
        (msg("", status, "RUNNING"), "NOT_FOUND"),
        (msg(&huge, status, "RUNNING"), "NOT_FOUND"),
        (msg("w-unknown", status, "RUNNING"), "NOT_FOUND"),
        (msg("w-1", status, "COMPLETED"), "FAILED_PRECONDITION"),
        (msg("w-1", Kind::Heartbeat as i32, ""), "FAILED_PRECONDITION"),
        (msg("w-1", status, "RUNNING"), ""),
        (pb::WorkerUpdate { actual_duration_ms: Some(-1), ..msg("w-1", status, "COMPLETED") }, "INVALID_ARGUMENT"),
        (pb::WorkerUpdate { actual_duration_ms: Some(i64::MIN), ..msg("w-1", status, "FAILED") }, "INVALID_ARGUMENT"),
        (pb::WorkerUpdate { expected_version: Some(-7), ..msg("w-1", status, "COMPLETED") }, "ABORTED"),
        (progress(f64::NAN), "INVALID_ARGUMENT"),
        (progress(f64::INFINITY), "INVALID_ARGUMENT"),
        (progress(-0.5), "INVALID_ARGUMENT"),
        (progress(1.5), "INVALID_ARGUMENT"),
        (progress(0.5), ""),
        (pb::WorkerUpdate { actual_duration_ms: Some(5), ..msg("w-1", status, "COMPLETED") }, ""),
    ];
    let expected: Vec<&str> = sweep.iter().map(|(_, code)| *code).collect();
    let requests: Vec<pb::WorkerUpdate> = sweep.into_iter().map(|(m, _)| m).collect();
    let stream = futures::stream::iter(requests.clone());
    let mut answers = c.stream_status_updates(authed(stream, &t)).await.expect("stream opens").into_inner();
    for (i, want) in expected.iter().enumerate() {
        let got = answers.message().await.expect("the stream stays open").expect("one answer per message");
        assert_eq!(got.request_id, requests[i].request_id, "answers in order");
        if want.is_empty() {
            assert!(got.ok, "message {i} ({}): {} {}", got.request_id, got.error_code, got.error_message);
        } else {
            assert!(!got.ok, "message {i} ({}) was accepted", got.request_id);
            assert_eq!(got.error_code, *want, "message {i} ({}): {}", got.request_id, got.error_message);
            assert!(
                !got.error_message.is_empty() && got.error_message.len() < 1_000,
                "message {i}: {}",
                got.error_message
            );
        }
    }
    let done = c.get_ticket(authed(pb::GetTicketRequest { ticket_id: "w-1".into() }, &t)).await.unwrap();
    let done = done.into_inner().ticket.unwrap();
    assert_eq!((done.status.as_str(), done.actual_duration_ms), ("COMPLETED", Some(5)));
}

/// Sends and receives message bodies as they are, so that a request can hold bytes that are no protobuf message.
#[derive(Clone, Copy, Default)]
struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }
    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut tonic::codec::EncodeBuf<'_>) -> Result<(), tonic::Status> {
        prost::bytes::BufMut::put_slice(dst, &item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut tonic::codec::DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        let n = prost::bytes::Buf::remaining(src);
        Ok(Some(prost::bytes::Buf::copy_to_bytes(src, n).to_vec()))
    }
}

/// `grpc_server_handled_total` of `path` (`package.Service/Method`) with `code`, scraped from the metrics port.
async fn handled(app: &TestApp, path: &str, code: &str) -> u64 {
    let text = app.client.get(format!("{}/metrics", app.metrics_base)).send().await.unwrap().text().await.unwrap();
    let (service, method) = path.split_once('/').unwrap();
    let labels =
        [format!("grpc_code=\"{code}\""), format!("grpc_service=\"{service}\""), format!("grpc_method=\"{method}\"")];
    text.lines()
        .filter(|l| l.starts_with("grpc_server_handled_total{") && labels.iter().all(|x| l.contains(x.as_str())))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// Bytes that are no protobuf message (a truncated varint, a field of wire type 7, a length past the end), with
/// and without a token, on unary and server-streaming calls and the health service: INVALID_ARGUMENT, counted as
/// such; never INTERNAL, which would page whoever watches server errors.
#[tokio::test]
async fn undecodable_messages_answer_invalid_argument_not_internal() {
    let (app, _dir) = setup().await;
    let channel =
        tonic::transport::Channel::from_shared(format!("http://127.0.0.1:{}", app.grpc_port)).unwrap().connect().await;
    let mut grpc = tonic::client::Grpc::new(channel.unwrap());
    let path = |p: &'static str| tonic::codegen::http::uri::PathAndQuery::from_static(p);
    let garbage: [&[u8]; 3] = [&[0x0a, 0xff], &[0x0f, 0x01], &[0x0a, 0x20, b'x']];
    for token in [Some(app.token.as_str()), None] {
        for bytes in garbage {
            let request = |bytes: &[u8]| match token {
                Some(t) => authed(bytes.to_vec(), t),
                None => tonic::Request::new(bytes.to_vec()),
            };
            for method in [
                "/ticket_service.TicketService/GetTicket",
                "/ticket_service.TicketService/CreateTicket",
                "/grpc.health.v1.Health/Check",
            ] {
                grpc.ready().await.unwrap();
                let status = grpc.unary(request(bytes), path(method), RawCodec).await.unwrap_err();
                let what = format!("{method} {bytes:?} token={}", token.is_some());
                assert_eq!(status.code(), Code::InvalidArgument, "{what}: {}", status.message());
                assert!(status.message().contains("not a valid gRPC message"), "{what}: {}", status.message());
            }
            grpc.ready().await.unwrap();
            let watch = "/ticket_service.TicketService/WatchTickets";
            let status = grpc.server_streaming(request(bytes), path(watch), RawCodec).await.unwrap_err();
            assert_eq!(status.code(), Code::InvalidArgument, "WatchTickets {bytes:?}: {}", status.message());
        }
    }
    // A unary call whose body holds no message at all.
    grpc.ready().await.unwrap();
    let empty = authed(futures::stream::empty::<Vec<u8>>(), &app.token);
    let status =
        grpc.client_streaming(empty, path("/ticket_service.TicketService/GetTicket"), RawCodec).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "no message: {}", status.message());

    let get = "ticket_service.TicketService/GetTicket";
    assert_eq!(handled(&app, get, "InvalidArgument").await, 7, "counted as client errors");
    assert_eq!(handled(&app, "grpc.health.v1.Health/Check", "InvalidArgument").await, 6);
    for method in [get, "ticket_service.TicketService/CreateTicket", "ticket_service.TicketService/WatchTickets"] {
        assert_eq!(handled(&app, method, "Internal").await, 0, "{method}: no server error counted");
    }
    // The service is unharmed.
    let mut c = app.grpc().await;
    c.create_ticket(authed(create_req(proto_ticket("after-garbage")), &app.token)).await.expect("still serving");
}
