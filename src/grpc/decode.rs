//! From protobuf requests to the actor system's commands: every field a gRPC client sends is read here, and a
//! malformed one is INVALID_ARGUMENT naming the field. The content rules shared with REST (lengths, NUL, JSON
//! depth) are the router's, applied after. Nothing here touches the server, the caller or the network, so
//! `fuzz/fuzz_targets/grpc_decode.rs` runs this very file (and then those rules) on arbitrary bytes.

use actors::compensation::CompensationRequest;
use actors::enums::{RequestedStatus, TicketStatus};
use actors::model::Metadata;
use actors::store::ListQuery;
use actors::validation::{NewQos, NewSla, NewTicket};
use actors::StatusUpdate;
use serde_json::Value;
use tonic::Status;

use super::pb;

/// Default and largest page of `ListTickets`.
pub const DEFAULT_LIST_LIMIT: i32 = 100;
pub const MAX_LIST_LIMIT: i32 = 1_000;

fn non_empty(s: String) -> Option<String> {
    Some(s).filter(|s| !s.is_empty())
}

/// Parse a `*_json` field that must hold a JSON object ("" means none).
pub fn json_object(field: &str, raw: &str) -> Result<Option<serde_json::Map<String, Value>>, Status> {
    if raw.trim().is_empty() {
        return Ok(None);
    }
    match serde_json::from_str::<Value>(raw) {
        Ok(Value::Object(map)) => Ok(Some(map)),
        Ok(_) => Err(Status::invalid_argument(format!("{field}: must be a JSON object"))),
        Err(e) => Err(Status::invalid_argument(format!("{field}: not valid JSON: {e}"))),
    }
}

/// A proto ticket as a create request: empty strings and zero timestamps count as absent. Each enum is read by
/// the same parser as REST's JSON string (so the same leniency and message, named by its field). Built field by
/// field: going through a JSON document first (as it once did) was an eighth of a create's CPU.
pub fn proto_to_new(p: pb::ExecutionTicketProto) -> Result<NewTicket, Status> {
    let qos = match p.qos {
        Some(q) => Some(NewQos {
            delivery_mode: symbol("qos.delivery_mode", q.delivery_mode)?,
            consistency: symbol("qos.consistency", q.consistency)?,
            durability: symbol("qos.durability", q.durability)?,
        }),
        None => None,
    };
    Ok(NewTicket {
        parameters: json_object("parameters_json", &p.parameters_json)?,
        ticket_id: non_empty(p.ticket_id),
        plan_id: non_empty(p.plan_id),
        // Kept as given, also "" (the integration library's fallback; REST and Kafka accept it too).
        intent_id: Some(p.intent_id),
        decision_id: non_empty(p.decision_id),
        correlation_id: p.correlation_id,
        trace_id: p.trace_id,
        span_id: p.span_id,
        task_id: non_empty(p.task_id),
        task_type: symbol("task_type", p.task_type)?,
        description: non_empty(p.description),
        dependencies: Some(p.dependencies),
        status: symbol("status", p.status)?,
        priority: symbol("priority", p.priority)?,
        risk_band: symbol("risk_band", p.risk_band)?,
        sla: p.sla.map(|s| NewSla {
            deadline: Some(s.deadline),
            timeout_ms: Some(s.timeout_ms),
            max_retries: Some(s.max_retries),
        }),
        qos,
        required_capabilities: Some(p.required_capabilities),
        security_level: symbol("security_level", p.security_level)?,
        created_at: Some(p.created_at).filter(|v| *v > 0),
        started_at: p.started_at,
        completed_at: p.completed_at,
        estimated_duration_ms: p.estimated_duration_ms,
        actual_duration_ms: p.actual_duration_ms,
        retry_count: Some(p.retry_count),
        error_message: p.error_message,
        compensation_ticket_id: p.compensation_ticket_id,
        metadata: Some(Metadata(p.metadata.into_iter().map(|(k, v)| (k, Value::String(v))).collect())),
        schema_version: Some(p.schema_version).filter(|v| *v > 0),
    })
}

/// An enum field: "" is absent; anything else is parsed as REST parses the JSON string.
fn symbol<T: serde::de::DeserializeOwned>(field: &str, s: String) -> Result<Option<T>, Status> {
    if s.is_empty() {
        return Ok(None);
    }
    let d = serde::de::value::StringDeserializer::<serde::de::value::Error>::new(s);
    T::deserialize(d).map(Some).map_err(|e| Status::invalid_argument(format!("{field}: {e}")))
}

/// `CreateTicket`: the ticket it carries, as a create request.
pub fn create(r: pb::CreateTicketRequest) -> Result<NewTicket, Status> {
    proto_to_new(r.ticket.ok_or_else(|| Status::invalid_argument("ticket: field required"))?)
}

/// A status change (`UpdateTicketStatus`, a worker stream's STATUS message): empty strings count as absent.
pub fn status_update(
    status: &str,
    error_message: String,
    actual_duration_ms: Option<i64>,
    expected_version: Option<i64>,
) -> Result<StatusUpdate, Status> {
    let status: RequestedStatus = status.parse().map_err(|e| Status::invalid_argument(format!("status: {e}")))?;
    // The gRPC request has no metadata, and a PENDING there stays a status move (RetryTicket is the retry).
    let update = StatusUpdate {
        status,
        error_message: non_empty(error_message),
        actual_duration_ms,
        expected_version,
        retry_if_failed: false,
        metadata: None,
    };
    Ok(update)
}

/// `CancelTicket`: a change to CANCELLED, its reason recorded as the error message.
pub fn cancellation(r: pb::CancelTicketRequest) -> Result<StatusUpdate, Status> {
    let update = StatusUpdate {
        status: RequestedStatus::Status(TicketStatus::Cancelled),
        error_message: non_empty(r.reason),
        actual_duration_ms: None,
        expected_version: r.expected_version,
        retry_if_failed: false,
        metadata: None,
    };
    Ok(update)
}

/// `ListTickets`: the query; limit 0 means the default, larger than the maximum means the maximum.
pub fn list_query(r: pb::ListTicketsRequest) -> Result<ListQuery, Status> {
    if r.offset < 0 {
        return Err(Status::invalid_argument("offset: must be ≥ 0"));
    }
    let status = match non_empty(r.status) {
        None => None,
        Some(s) => Some(s.parse::<TicketStatus>().map_err(|e| Status::invalid_argument(format!("status: {e}")))?),
    };
    let limit = match r.limit {
        0 => DEFAULT_LIST_LIMIT,
        n if n < 0 => return Err(Status::invalid_argument("limit: must be ≥ 0")),
        n => n.min(MAX_LIST_LIMIT),
    };
    let query = ListQuery {
        plan_id: non_empty(r.plan_id),
        status,
        offset: i64::from(r.offset),
        limit: i64::from(limit),
        ..ListQuery::default()
    };
    Ok(query)
}

/// `CompensateTicket`: the compensation request.
pub fn compensation(r: pb::CompensateTicketRequest) -> Result<CompensationRequest, Status> {
    Ok(CompensationRequest {
        original_ticket_id: r.original_ticket_id,
        reason: r.reason,
        compensation_action: non_empty(r.compensation_action),
        parameters: json_object("parameters_json", &r.parameters_json)?,
    })
}

/// What one worker stream message asks for.
#[derive(Debug)]
pub enum WorkerCommand {
    Status(StatusUpdate),
    Heartbeat,
    Progress { progress: f64, message: Option<String> },
}

/// A worker stream message as a command (its ticket id is the message's).
pub fn worker_update(m: &pb::WorkerUpdate) -> Result<WorkerCommand, Status> {
    use pb::worker_update::Kind;
    match Kind::try_from(m.kind) {
        Ok(Kind::Status) => Ok(WorkerCommand::Status(status_update(
            &m.status,
            m.error_message.clone(),
            m.actual_duration_ms,
            m.expected_version,
        )?)),
        Ok(Kind::Heartbeat) => Ok(WorkerCommand::Heartbeat),
        Ok(Kind::Progress) => {
            if !(0.0..=1.0).contains(&m.progress) {
                return Err(Status::invalid_argument("progress: must be between 0.0 and 1.0"));
            }
            Ok(WorkerCommand::Progress { progress: m.progress, message: non_empty(m.message.clone()) })
        }
        Err(_) => Err(Status::invalid_argument(format!("kind: unknown value {}", m.kind))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// How a proto ticket was read before: as the JSON document a REST client would send (the reference the
    /// field-by-field reading must agree with, values and messages).
    fn via_json(p: pb::ExecutionTicketProto) -> Result<NewTicket, Status> {
        let text = |s: String| if s.is_empty() { Value::Null } else { Value::String(s) };
        let doc = json!({
            "ticket_id": text(p.ticket_id), "plan_id": text(p.plan_id), "intent_id": p.intent_id,
            "decision_id": text(p.decision_id), "correlation_id": p.correlation_id, "trace_id": p.trace_id,
            "span_id": p.span_id, "task_id": text(p.task_id), "task_type": text(p.task_type),
            "description": text(p.description), "dependencies": p.dependencies, "status": text(p.status),
            "priority": text(p.priority), "risk_band": text(p.risk_band),
            "sla": p.sla.map(|s| json!({"deadline": s.deadline, "timeout_ms": s.timeout_ms, "max_retries": s.max_retries})),
            "qos": p.qos.map(|q| json!({"delivery_mode": text(q.delivery_mode), "consistency": text(q.consistency),
                "durability": text(q.durability)})),
            "parameters": json_object("parameters_json", &p.parameters_json)?,
            "required_capabilities": p.required_capabilities, "security_level": text(p.security_level),
            "created_at": if p.created_at > 0 { json!(p.created_at) } else { Value::Null },
            "started_at": p.started_at, "completed_at": p.completed_at,
            "estimated_duration_ms": p.estimated_duration_ms, "actual_duration_ms": p.actual_duration_ms,
            "retry_count": p.retry_count, "error_message": p.error_message,
            "compensation_ticket_id": p.compensation_ticket_id, "metadata": p.metadata,
            "schema_version": if p.schema_version > 0 { json!(p.schema_version) } else { Value::Null },
        });
        serde_path_to_error::deserialize(doc).map_err(|e| {
            let path = e.path().to_string();
            Status::invalid_argument(format!("{path}: {}", e.into_inner()))
        })
    }

    fn full() -> pb::ExecutionTicketProto {
        pb::ExecutionTicketProto {
            ticket_id: "t-1".into(),
            plan_id: "p".into(),
            intent_id: "".into(),
            task_id: "task".into(),
            task_type: "deploy".into(),
            description: "d".into(),
            status: "pending".into(),
            priority: "7".into(),
            created_at: 1_700_000_000_000,
            decision_id: "dec".into(),
            correlation_id: Some("c".into()),
            trace_id: Some(String::new()),
            dependencies: vec!["a".into()],
            risk_band: "HIGH".into(),
            sla: Some(pb::Sla { deadline: 1_900_000_000_000, timeout_ms: 1_000, max_retries: 2 }),
            qos: Some(pb::Qos {
                delivery_mode: "exactly_once".into(),
                consistency: String::new(),
                durability: "PERSISTENT".into(),
            }),
            parameters_json: r#"{"n": [1, {"x": null}]}"#.into(),
            required_capabilities: vec!["k8s".into()],
            security_level: "internal".into(),
            started_at: Some(5),
            estimated_duration_ms: Some(10),
            retry_count: 1,
            error_message: Some("e".into()),
            metadata: [("team".to_owned(), "core".to_owned())].into(),
            schema_version: 2,
            ..Default::default()
        }
    }

    fn same(p: pb::ExecutionTicketProto) {
        let (direct, reference) = (proto_to_new(p.clone()), via_json(p));
        match (direct, reference) {
            (Ok(a), Ok(b)) => assert_eq!(format!("{a:?}"), format!("{b:?}")),
            (Err(a), Err(b)) => assert_eq!((a.code(), a.message()), (b.code(), b.message())),
            (a, b) => panic!("{a:?} vs {b:?}"),
        }
    }

    #[test]
    fn reading_field_by_field_agrees_with_reading_the_json_form() {
        same(full());
        same(pb::ExecutionTicketProto::default());
        for bad in [
            pb::ExecutionTicketProto { task_type: "nap".into(), ..full() },
            pb::ExecutionTicketProto { priority: "0".into(), ..full() },
            pb::ExecutionTicketProto { priority: "urgent".into(), ..full() },
            pb::ExecutionTicketProto { status: "DONE".into(), ..full() },
            pb::ExecutionTicketProto { risk_band: "x".into(), ..full() },
            pb::ExecutionTicketProto { security_level: "x".into(), ..full() },
            pb::ExecutionTicketProto { qos: Some(pb::Qos { consistency: "x".into(), ..Default::default() }), ..full() },
            pb::ExecutionTicketProto { parameters_json: "[1]".into(), ..full() },
        ] {
            assert!(proto_to_new(bad.clone()).is_err(), "{bad:?}");
            same(bad);
        }
    }
}
