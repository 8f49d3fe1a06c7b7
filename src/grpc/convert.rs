//! From the actor system's types to the protobuf messages, and from `TicketError` to gRPC status codes (the
//! other way, requests to commands, is [`super::decode`]).

use actors::store::StoreError;
use actors::{Ticket, TicketError};
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
        // Serialized in place: the map is not copied into a `Value` first.
        parameters_json: serde_json::to_string(&s.parameters).unwrap_or_default(),
        required_capabilities: s.required_capabilities.clone(),
        security_level: s.security_level.as_str().to_owned(),
        started_at: t.started_at,
        completed_at: t.completed_at,
        estimated_duration_ms: s.estimated_duration_ms,
        actual_duration_ms: t.actual_duration_ms,
        retry_count: t.retry_count,
        error_message: t.error_message.clone(),
        compensation_ticket_id: t.compensation_ticket_id.clone(),
        // Non-string values as their JSON text (see `actors::model::Metadata`).
        metadata: s.metadata.to_strings().collect(),
        schema_version: s.schema_version,
        version: t.version,
        updated_at: t.updated_at,
        sla_state_json: serde_json::to_string(&t.sla_state).unwrap_or_default(),
    }
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
        // A hand-off or failover outlasted the wait: another try (after a moment) finds the new owner.
        TicketError::NotOwner(_) | TicketError::Store(StoreError::NotOwner(_)) => Status::unavailable(message),
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
