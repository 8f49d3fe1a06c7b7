//! The gRPC decode path: any bytes, decoded as the protobuf request the first byte picks (as tonic decodes a
//! request body), then read by the service's own `src/grpc/decode.rs` (included as it is) and checked by the
//! same content rules the router applies. Whatever the bytes: a command or INVALID_ARGUMENT with a message,
//! never a panic, and a command that passes is one every store can hold (no NUL anywhere, JSON bounded in
//! depth and size, so that a webhook delivery row wrapping the ticket still decodes).
#![no_main]

use actors::validation::{self, MAX_ERROR_MESSAGE_LEN, MAX_JSON_DEPTH, MAX_METADATA_BYTES, MAX_PARAMETERS_BYTES};
use libfuzzer_sys::fuzz_target;
use prost::Message;
use serde_json::Value;
use tonic::{Code, Status};

/// The generated messages, where `decode.rs` looks for them (`super::pb`); the responses go unused here.
#[allow(dead_code)]
mod pb {
    include!(concat!(env!("OUT_DIR"), "/ticket_service.rs"));
}

#[allow(dead_code)]
#[path = "../../src/grpc/decode.rs"]
mod decode;

const NOW: i64 = 1_700_000_000_000;

fn refused(status: Status) {
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(!status.message().is_empty());
}

/// How deep `v` nests (a scalar is 0).
fn depth(v: &Value) -> usize {
    match v {
        Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
        Value::Object(o) => 1 + o.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

fn no_nul(v: &Value) {
    match v {
        Value::String(s) => assert!(!s.contains('\0'), "NUL accepted in {s:?}"),
        Value::Array(a) => a.iter().for_each(no_nul),
        Value::Object(o) => o.iter().for_each(|(k, v)| {
            assert!(!k.contains('\0'), "NUL accepted in key {k:?}");
            no_nul(v)
        }),
        _ => {}
    }
}

fn bounded_object(map: &serde_json::Map<String, Value>, max_bytes: usize) {
    let v = Value::Object(map.clone());
    assert!(depth(&v) <= MAX_JSON_DEPTH, "nested {} deep", depth(&v));
    assert!(validation::json_size(&v) <= max_bytes);
    no_nul(&v);
}

fn create(bytes: &[u8]) {
    let Ok(r) = pb::CreateTicketRequest::decode(bytes) else { return };
    let new = match decode::create(r) {
        Ok(new) => new,
        Err(status) => return refused(status),
    };
    let t = match new.validate(NOW, || "generated".into()) {
        Ok(valid) => valid.ticket,
        Err(e) => return assert!(!e.field.is_empty() && !e.message.is_empty(), "{e:?}"),
    };
    let stored = serde_json::to_value(&t).expect("a ticket serializes");
    no_nul(&stored);
    bounded_object(&t.spec.parameters, MAX_PARAMETERS_BYTES);
    assert!(validation::json_size(&t.spec.metadata) <= MAX_METADATA_BYTES);
    // A webhook delivery row holds `{"ticket": …}` inside its own document: it must read back.
    let row = serde_json::json!({"data": {"ticket": stored}}).to_string();
    serde_json::from_str::<Value>(&row).expect("a delivery row wrapping an accepted ticket decodes");
}

fn status_update(update: Result<actors::StatusUpdate, Status>) {
    let update = match update {
        Ok(u) => u,
        Err(status) => return refused(status),
    };
    if update.validate().is_ok() {
        let m = update.error_message.as_deref().unwrap_or_default();
        assert!(!m.contains('\0') && m.len() <= MAX_ERROR_MESSAGE_LEN);
        assert!(update.actual_duration_ms.unwrap_or(0) >= 0);
    }
}

fn update(bytes: &[u8]) {
    let Ok(r) = pb::UpdateTicketStatusRequest::decode(bytes) else { return };
    status_update(decode::status_update(&r.status, r.error_message, r.actual_duration_ms, r.expected_version));
}

fn cancel(bytes: &[u8]) {
    let Ok(r) = pb::CancelTicketRequest::decode(bytes) else { return };
    status_update(decode::cancellation(r));
}

fn list(bytes: &[u8]) {
    let Ok(r) = pb::ListTicketsRequest::decode(bytes) else { return };
    let query = match decode::list_query(r) {
        Ok(q) => q,
        Err(status) => return refused(status),
    };
    assert!(query.offset >= 0 && (1..=i64::from(decode::MAX_LIST_LIMIT)).contains(&query.limit), "{query:?}");
    if query.validate().is_ok() {
        assert!(!query.plan_id.unwrap_or_default().contains('\0'));
    }
}

fn compensate(bytes: &[u8]) {
    let Ok(r) = pb::CompensateTicketRequest::decode(bytes) else { return };
    let request = match decode::compensation(r) {
        Ok(c) => c,
        Err(status) => return refused(status),
    };
    if request.validate().is_ok() {
        assert!(!request.reason.trim().is_empty() && !request.reason.contains('\0'));
        if let Some(p) = &request.parameters {
            bounded_object(p, MAX_PARAMETERS_BYTES);
        }
    }
}

fn worker(bytes: &[u8]) {
    let Ok(m) = pb::WorkerUpdate::decode(bytes) else { return };
    match decode::worker_update(&m) {
        Ok(decode::WorkerCommand::Status(u)) => status_update(Ok(u)),
        Ok(decode::WorkerCommand::Heartbeat) => {}
        Ok(decode::WorkerCommand::Progress { progress, message }) => {
            assert!((0.0..=1.0).contains(&progress));
            if let Some(text) = message {
                if actors::router::validate_progress_message(&text).is_ok() {
                    assert!(!text.contains('\0') && text.len() <= MAX_ERROR_MESSAGE_LEN);
                }
            }
        }
        Err(status) => refused(status),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else { return };
    match which % 6 {
        0 => create(rest),
        1 => update(rest),
        2 => cancel(rest),
        3 => list(rest),
        4 => compensate(rest),
        _ => worker(rest),
    }
});
