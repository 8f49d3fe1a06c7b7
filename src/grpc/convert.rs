//! Between the actor system's types and the protobuf messages, and from `TicketError` to gRPC status codes.

use actors::store::StoreError;
use actors::validation::NewTicket;
use actors::{Ticket, TicketError};
use serde_json::{json, Value};
use tonic::Status;

use super::pb;
use crate::auth::verify::AuthError;

pub fn ticket_to_proto(t: &Ticket) -> pb::ExecutionTicketProto {
    let s = &t.spec;
    pb::ExecutionTicketProto {
        ticket_id: t.ticket_id.clone(),
        plan_id: s.plan_id.clone(),
        intent_id: s.intent_id.clone(),
        task_id: s.task_id.clone(),
        task_type: s.task_type.as_str().to_owned(),
        description: s.description.clone(),
        status: t.status.as_str().to_owned(),
        priority: s.priority.as_str().to_owned(),
        created_at: t.created_at,
        decision_id: s.decision_id.clone(),
        correlation_id: s.correlation_id.clone(),
        trace_id: s.trace_id.clone(),
        span_id: s.span_id.clone(),
        dependencies: s.dependencies.clone(),
        risk_band: s.risk_band.as_str().to_owned(),
        sla: Some(pb::Sla { deadline: s.sla.deadline, timeout_ms: s.sla.timeout_ms, max_retries: s.sla.max_retries }),
        qos: Some(pb::Qos {
            delivery_mode: s.qos.delivery_mode.as_str().to_owned(),
            consistency: s.qos.consistency.as_str().to_owned(),
            durability: s.qos.durability.as_str().to_owned(),
        }),
        parameters_json: Value::Object(s.parameters.clone()).to_string(),
        required_capabilities: s.required_capabilities.clone(),
        security_level: s.security_level.as_str().to_owned(),
        started_at: t.started_at,
        completed_at: t.completed_at,
        estimated_duration_ms: s.estimated_duration_ms,
        actual_duration_ms: t.actual_duration_ms,
        retry_count: t.retry_count,
        error_message: t.error_message.clone(),
        compensation_ticket_id: t.compensation_ticket_id.clone(),
        metadata: s.metadata.clone().into_iter().collect(),
        schema_version: s.schema_version,
        version: t.version,
        updated_at: t.updated_at,
        sla_state_json: serde_json::to_string(&t.sla_state).unwrap_or_default(),
    }
}

fn text(s: String) -> Value {
    if s.is_empty() {
        Value::Null
    } else {
        Value::String(s)
    }
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
        "intent_id": text(p.intent_id),
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

/// The gRPC code for a failed ticket command; the message says what was wrong.
pub fn status_of(e: TicketError) -> Status {
    let message = e.to_string();
    match e {
        TicketError::NotFound(_) => Status::not_found(message),
        TicketError::Invalid(_) => Status::invalid_argument(message),
        TicketError::IllegalTransition(t) => {
            let allowed: Vec<&str> = t.allowed.iter().map(|s| s.as_str()).collect();
            Status::failed_precondition(format!("{message} (allowed from {}: [{}])", t.from, allowed.join(", ")))
        }
        TicketError::AlreadyExists(_) => Status::already_exists(message),
        TicketError::VersionMismatch { .. } => Status::aborted(message),
        TicketError::Overloaded => Status::resource_exhausted(message),
        // Driver and database text stays in the log; the client gets what it can act on.
        TicketError::Store(StoreError::Unavailable(_)) => {
            tracing::warn!(error = %message, "gRPC call failed: store unavailable");
            Status::unavailable("the ticket store is unavailable; retry")
        }
        TicketError::Store(_) | TicketError::ActorFailed(_) => {
            tracing::error!(error = %message, "gRPC call failed");
            Status::internal("internal error; it has been logged")
        }
    }
}

pub fn auth_status(e: AuthError) -> Status {
    match e {
        AuthError::Unauthenticated(m) => Status::unauthenticated(m),
        AuthError::Forbidden(m) => Status::permission_denied(m),
    }
}

/// A gRPC status code's canonical name (for per-message errors on streams).
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}
