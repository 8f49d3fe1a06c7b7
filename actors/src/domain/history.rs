//! A ticket's history as the audit trail records it: one [`AuditEvent`] per change, written to the outbox in
//! the change's own transaction, and the pages of them the API answers.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::domain::events::TicketEvent;
use crate::domain::model::Millis;

/// One audit record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AuditEvent {
    /// Unique id (UUID v4); the sink de-duplicates on it.
    pub event_id: String,
    pub ticket_id: String,
    /// `ticket.created`, `ticket.started`, …, `ticket.sla_breached`, `token.minted`.
    pub kind: String,
    pub from_status: Option<String>,
    pub to_status: Option<String>,
    /// The ticket's version after the change (None for records that change no ticket, e.g. a minted token).
    pub version: Option<i64>,
    /// Who caused it: a token subject, `kafka`, `sla`, `system`.
    pub actor: String,
    /// When, in Unix milliseconds.
    pub at: Millis,
    /// Kind-specific facts (SLA fraction, error message, token scopes); `null` when none (so the schema says
    /// nullable: the answers and the document agree).
    #[schema(value_type = Option<Object>)]
    pub details: serde_json::Value,
    /// W3C `traceparent` of the work that made the change (absent when spans are not exported): outgoing
    /// events join the trace of the request that caused them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

impl AuditEvent {
    /// The audit record of a committed ticket event, made in the trace `traceparent`.
    pub fn of(event: &TicketEvent, traceparent: Option<String>) -> Self {
        AuditEvent {
            event_id: uuid::Uuid::new_v4().to_string(),
            ticket_id: event.ticket.ticket_id.clone(),
            kind: event.kind.as_str().to_owned(),
            from_status: event.from.map(|s| s.as_str().to_owned()),
            to_status: Some(event.ticket.status.as_str().to_owned()),
            version: Some(event.ticket.version),
            actor: event.actor.to_string(),
            at: event.at,
            details: event.details.clone(),
            traceparent,
        }
    }
}

/// The kind of SLA violation a record is (the `sla_violation` field of its published message).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SlaViolation {
    /// `ticket.sla_breached`: the deadline passed.
    DeadlineBreached,
    /// `ticket.start_overdue`: still PENDING too long.
    StartOverdue,
    /// The SLA engine failed the ticket because its last attempt timed out or lost its heartbeat.
    FinalTimeout,
    /// `ticket.sla_timeout`: a timeout the status machine could not act on.
    Timeout,
}

impl AuditEvent {
    /// Whether this record is an SLA violation, and which. Warnings and timeouts that lead to a retry are not;
    /// a failure is a final timeout only when the SLA engine (actor `sla`) made it for a timeout reason.
    pub fn sla_violation(&self) -> Option<SlaViolation> {
        match self.kind.as_str() {
            "ticket.sla_breached" => Some(SlaViolation::DeadlineBreached),
            "ticket.start_overdue" => Some(SlaViolation::StartOverdue),
            "ticket.sla_timeout" => Some(SlaViolation::Timeout),
            "ticket.failed"
                if self.actor == crate::domain::sla::SLA_ACTOR
                    && matches!(self.details["reason"].as_str(), Some("attempt_timeout" | "heartbeat_timeout")) =>
            {
                Some(SlaViolation::FinalTimeout)
            }
            _ => None,
        }
    }

    /// Whether this record is a ticket event (`ticket.*`) rather than the service's bookkeeping (`token.*`,
    /// `webhook.*`).
    pub fn is_ticket_event(&self) -> bool {
        self.kind.starts_with("ticket.")
    }
}

/// A page of one ticket's audit records, oldest first.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct HistoryPage {
    pub ticket_id: String,
    pub events: Vec<AuditEvent>,
    /// Records of this ticket in all.
    pub total: i64,
    pub offset: i64,
    pub limit: i64,
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::*;

    fn record(kind: &str, actor: &str, details: Value) -> AuditEvent {
        AuditEvent {
            event_id: "e-1".into(),
            ticket_id: "t-1".into(),
            kind: kind.into(),
            from_status: Some("RUNNING".into()),
            to_status: Some("FAILED".into()),
            version: Some(4),
            actor: actor.into(),
            at: 1_800_000_000_123,
            details,
            traceparent: None,
        }
    }

    #[test]
    fn breaches_start_overdue_and_final_timeouts_are_violations() {
        use SlaViolation::*;
        let timeout = json!({"reason": "attempt_timeout", "attempt": 2, "timeout_ms": 100});
        let heartbeat = json!({"reason": "heartbeat_timeout", "attempt": 1, "timeout_ms": 60_000});
        let cases = [
            (record("ticket.sla_breached", "sla", json!({"deadline": 1})), Some(DeadlineBreached)),
            (record("ticket.start_overdue", "sla", Value::Null), Some(StartOverdue)),
            (record("ticket.failed", "sla", timeout.clone()), Some(FinalTimeout)),
            (record("ticket.failed", "sla", heartbeat), Some(FinalTimeout)),
            (record("ticket.sla_timeout", "sla", timeout.clone()), Some(Timeout)),
            // A timeout that leads to a retry, a warning, a failure reported by the worker: not violations.
            (record("ticket.retry", "sla", timeout.clone()), None),
            (record("ticket.sla_warning", "sla", json!({"fraction": 0.5})), None),
            (record("ticket.failed", "worker-7", json!({"reason": "attempt_timeout"})), None),
            (record("ticket.failed", "sla", json!({"deadline": 1})), None),
            (record("ticket.completed", "orchestrator", Value::Null), None),
        ];
        for (e, expected) in cases {
            assert_eq!(e.sla_violation(), expected, "{} by {} {}", e.kind, e.actor, e.details);
        }
        assert_eq!(serde_json::to_value(FinalTimeout).unwrap(), "final_timeout");
    }

    #[test]
    fn only_ticket_events_are_ticket_events() {
        assert!(record("ticket.created", "kafka", Value::Null).is_ticket_event());
        assert!(record("ticket.ready", "system", Value::Null).is_ticket_event());
        for kind in ["token.minted", "webhook.delivered", "webhook.failed", "webhook.disabled"] {
            assert!(!record(kind, "webhooks", Value::Null).is_ticket_event(), "{kind}");
        }
    }
}
