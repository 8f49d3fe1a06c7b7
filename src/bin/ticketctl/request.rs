//! Create requests: a JSON file (the REST create body) or a decoded DLQ payload, as the proto ticket of a
//! `CreateTicket` call.
//!
//! The file is read as a [`NewTicket`] first, so a misspelt enum or a wrong type is reported here, with the
//! same message the service would give, before anything is sent; the service still validates the whole
//! ticket (required fields, deadlines, …).

use std::path::Path;

use actors::validation::NewTicket;
use anyhow::Context as _;
use ticket_supervisor::grpc::pb;

/// Read a create request from `path` (`-`: standard input).
pub fn read_new_ticket(path: &Path) -> anyhow::Result<NewTicket> {
    let text = if path.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin()).context("reading standard input")?
    } else {
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?
    };
    let source = if path.as_os_str() == "-" { "standard input".into() } else { path.display().to_string() };
    let de = &mut serde_json::Deserializer::from_str(&text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let at = e.path().to_string();
        anyhow::anyhow!("{source}: not a ticket create request: {at}: {}", e.into_inner())
    })
}

/// The proto form of a create request; absent fields become the proto's "absent" (empty string, 0), which
/// the service reads back as absent.
pub fn new_to_proto(n: NewTicket) -> pb::ExecutionTicketProto {
    let text = |s: Option<String>| s.unwrap_or_default();
    let name = |s: Option<&'static str>| s.unwrap_or_default().to_owned();
    pb::ExecutionTicketProto {
        ticket_id: text(n.ticket_id),
        plan_id: text(n.plan_id),
        intent_id: text(n.intent_id),
        task_id: text(n.task_id),
        task_type: name(n.task_type.map(|v| v.as_str())),
        description: text(n.description),
        status: name(n.status.map(|v| v.as_str())),
        priority: name(n.priority.map(|v| v.as_str())),
        created_at: n.created_at.unwrap_or(0),
        decision_id: text(n.decision_id),
        correlation_id: n.correlation_id,
        trace_id: n.trace_id,
        span_id: n.span_id,
        dependencies: n.dependencies.unwrap_or_default(),
        risk_band: name(n.risk_band.map(|v| v.as_str())),
        sla: n.sla.map(|s| pb::Sla {
            deadline: s.deadline.unwrap_or(0),
            timeout_ms: s.timeout_ms.unwrap_or(0),
            max_retries: s.max_retries.unwrap_or(0),
        }),
        qos: n.qos.map(|q| pb::Qos {
            delivery_mode: name(q.delivery_mode.map(|v| v.as_str())),
            consistency: name(q.consistency.map(|v| v.as_str())),
            durability: name(q.durability.map(|v| v.as_str())),
        }),
        parameters_json: n.parameters.map(|p| serde_json::Value::Object(p).to_string()).unwrap_or_default(),
        required_capabilities: n.required_capabilities.unwrap_or_default(),
        security_level: name(n.security_level.map(|v| v.as_str())),
        started_at: n.started_at,
        completed_at: n.completed_at,
        estimated_duration_ms: n.estimated_duration_ms,
        actual_duration_ms: n.actual_duration_ms,
        retry_count: n.retry_count.unwrap_or(0),
        error_message: n.error_message,
        compensation_ticket_id: n.compensation_ticket_id,
        // gRPC carries strings: other values as their JSON text (see `actors::model::Metadata`).
        metadata: n.metadata.unwrap_or_default().to_strings().collect(),
        schema_version: n.schema_version.unwrap_or(0),
        version: 0,
        updated_at: 0,
        sla_state_json: String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ticket_supervisor::grpc::decode::proto_to_new;

    #[test]
    fn a_request_survives_the_trip_through_the_proto() {
        let json = serde_json::json!({
            "ticket_id": "t-1", "plan_id": "p", "intent_id": "i", "decision_id": "d", "task_id": "t",
            "task_type": "deploy", "description": "ship it", "priority": 3, "risk_band": "LOW",
            "sla": {"deadline": 1_900_000_000_000i64, "timeout_ms": 60_000, "max_retries": 2},
            "qos": {"delivery_mode": "AT_LEAST_ONCE", "consistency": "STRONG", "durability": "PERSISTENT"},
            "parameters": {"image": "svc:1"}, "metadata": {"team": "core"}, "security_level": "internal",
            "dependencies": ["t-0"], "correlation_id": "c-1"
        });
        let now = 1_800_000_000_000;
        let direct: NewTicket = serde_json::from_value(json).unwrap();
        let via_proto = proto_to_new(new_to_proto(direct.clone())).unwrap();
        let (a, b) = (direct.validate(now, String::new).unwrap(), via_proto.validate(now, String::new).unwrap());
        assert_eq!(a.ticket, b.ticket);
        assert!(!b.created_at_given, "an absent created_at stays absent");
    }
}
