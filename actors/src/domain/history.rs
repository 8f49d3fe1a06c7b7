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
    /// Kind-specific facts (SLA fraction, error message, token scopes); `null` when none.
    #[schema(value_type = Object)]
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
            kind: event.kind.to_owned(),
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
