//! From protobuf requests to the actor system's commands: every field a gRPC client sends is read here, and a
//! malformed one is INVALID_ARGUMENT naming the field. The content rules shared with REST (lengths, NUL, JSON
//! depth) are the router's, applied after. Nothing here touches the server, the caller or the network, so
//! `fuzz/fuzz_targets/grpc_decode.rs` runs this very file (and then those rules) on arbitrary bytes.

use actors::compensation::CompensationRequest;
use actors::enums::{RequestedStatus, TicketStatus};
use actors::store::ListQuery;
use actors::validation::NewTicket;
use actors::StatusUpdate;
use serde_json::{json, Value};
use tonic::Status;

use super::pb;

/// Default and largest page of `ListTickets`.
pub const DEFAULT_LIST_LIMIT: i32 = 100;
pub const MAX_LIST_LIMIT: i32 = 1_000;

fn text(s: String) -> Value {
    if s.is_empty() {
        Value::Null
    } else {
        Value::String(s)
    }
}

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

/// A proto ticket as a create request. It goes through the same JSON form (and so the same parsing and
/// messages) as a REST create; empty strings and zero timestamps count as absent.
pub fn proto_to_new(p: pb::ExecutionTicketProto) -> Result<NewTicket, Status> {
    let parameters = json_object("parameters_json", &p.parameters_json)?;
    let positive = |v: i64| if v > 0 { json!(v) } else { Value::Null };
    let doc = json!({
        "ticket_id": text(p.ticket_id),
        "plan_id": text(p.plan_id),
        // Kept as given, also "" (the integration library's fallback; REST and Kafka accept it too).
        "intent_id": p.intent_id,
        "decision_id": text(p.decision_id),
        "correlation_id": p.correlation_id,
        "trace_id": p.trace_id,
        "span_id": p.span_id,
        "task_id": text(p.task_id),
        "task_type": text(p.task_type),
        "description": text(p.description),
        "dependencies": p.dependencies,
        "status": text(p.status),
        "priority": text(p.priority),
        "risk_band": text(p.risk_band),
        "sla": p.sla.map(|s| json!({"deadline": s.deadline, "timeout_ms": s.timeout_ms, "max_retries": s.max_retries})),
        "qos": p.qos.map(|q| json!({
            "delivery_mode": text(q.delivery_mode), "consistency": text(q.consistency), "durability": text(q.durability)
        })),
        "parameters": parameters,
        "required_capabilities": p.required_capabilities,
        "security_level": text(p.security_level),
        "created_at": positive(p.created_at),
        "started_at": p.started_at,
        "completed_at": p.completed_at,
        "estimated_duration_ms": p.estimated_duration_ms,
        "actual_duration_ms": p.actual_duration_ms,
        "retry_count": p.retry_count,
        "error_message": p.error_message,
        "compensation_ticket_id": p.compensation_ticket_id,
        "metadata": p.metadata,
        "schema_version": if p.schema_version > 0 { json!(p.schema_version) } else { Value::Null },
    });
    serde_path_to_error::deserialize(doc).map_err(|e| {
        let path = e.path().to_string();
        Status::invalid_argument(format!("{path}: {}", e.into_inner()))
    })
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
